"""Request/response calls over the peer channel (forwarding to partition
leaders, replication catch-up).  An adapter on :class:`PeerChannel`.

A call is a :data:`REQUEST` frame ``{id, method, hops, body}``; the answer is
a :data:`RESPONSE` frame ``{id, ok, body}`` sent back on the answering node's
own connection to the caller (connections are one-way).  Bodies are anything
msgpack carries.  Every call has a deadline; calls to a peer whose connection
fails are failed at once; the number of calls waiting is bounded; a request
that has been forwarded ``max_hops`` times is refused (routing loops end).
The deadlines share one timer, armed for the earliest (issue 16, turn44: a
timer a call, cancelled once answered, was a timed call built, pushed on the
reactor's heap and cancelled there for every forwarded publish).

Requests are taken only from peers :attr:`PeerRPC.allow` admits (the node's
cluster members), and a method registered with a body type gets its body
checked against it first (a 400 answer otherwise).  Neither a request nor an
answer ever becomes a frame too large to send: a request that would is
refused at the caller (413), an answer that would is replaced by an error
answer (and logged) -- the handlers bound what they return.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

import msgspec
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from sprawl.errors import Overloaded, PayloadTooLarge, SprawlError, Unavailable
from sprawl.interfaces import Clock
from sprawl.peer.frames import REQUEST, RESPONSE
from sprawl.peer.rpc_bodies import BODIES
from sprawl.peer.tcp import PeerChannel

log = Logger()

Handler = Callable[[str, Any, int], Any]


class _NoAnswer:
    """The type of :data:`NO_ANSWER`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_ANSWER"


#: What a handler returns (or fires with) to send no answer (see the module docstring).
NO_ANSWER: Any = _NoAnswer()


class RemoteError(SprawlError):
    """The peer answered with an error (its status, code and message)."""


class _Request(msgspec.Struct, frozen=True, array_like=True):
    id: int
    method: str
    hops: int
    body: Any


class _Response(msgspec.Struct, frozen=True, array_like=True):
    id: int
    ok: bool
    body: Any


_req_decoder = msgspec.msgpack.Decoder(_Request)
_resp_decoder = msgspec.msgpack.Decoder(_Response)


class PeerRPC:
    """Calls to and from peers (see the module docstring)."""

    def __init__(
        self,
        channel: PeerChannel,
        reactor: Clock,
        *,
        timeout: float = 10.0,
        max_pending: int = 10_000,
        max_hops: int = 3,
        max_serving: int = 2048,
    ) -> None:
        self.channel = channel
        self.reactor = reactor
        self.timeout = timeout
        self.max_pending = max_pending
        self.max_hops = max_hops
        #: Requests from one peer being answered at once at most (long polls included).
        self.max_serving = max_serving
        self._serving: dict[str, int] = {}
        self.handlers: dict[str, Handler] = {}
        #: Each method's body type (the cluster's methods by default).
        self.bodies: dict[str, type[Any]] = dict(BODIES)
        #: Whether requests from a peer are taken (the node admits its cluster's members).
        self.allow: Callable[[str], bool] = lambda peer: True
        #: Requests refused: from a peer not admitted, or with a body of the wrong shape.
        self.refused = 0
        #: Answers replaced by an error because they would not fit a frame.
        self.oversized_answers = 0
        self._ids = itertools.count(1)
        #: The calls in flight: their peer, Deferred and deadline, by id.
        self._pending: dict[int, tuple[str, defer.Deferred[Any], float]] = {}
        #: (deadline, id) of the calls, a heap; an answered call's entry stays
        #: until it reaches the top or the heap is rebuilt (:meth:`start`).
        self._deadlines: list[tuple[float, int]] = []
        #: The one timer of the deadlines, and the time it is armed for.
        self._timer: Any = None
        self._timer_due = 0.0
        #: Timers asked of the reactor for the deadlines (tests count them).
        self.timers = 0
        self.dropped = 0
        channel.handlers[REQUEST] = self._on_request
        channel.handlers[RESPONSE] = self._on_response
        previous = channel.on_unreachable

        def unreachable(peer: str) -> None:
            previous(peer)
            self._fail_peer(peer)

        channel.on_unreachable = unreachable

    def register(self, method: str, handler: Handler, body: type[Any] | None = None) -> None:
        """Answer ``method`` with ``handler(caller, body, hops)`` (a value or a
        Deferred).  Only bodies that convert to the method's type reach it:
        ``body``, else the type :data:`~sprawl.peer.rpc_bodies.BODIES` names."""
        self.handlers[method] = handler
        if body is not None:
            self.bodies[method] = body

    def call(
        self, peer: str, method: str, body: Any, *, hops: int = 0, timeout: float | None = None
    ) -> defer.Deferred[Any]:
        """Call ``method`` on ``peer``; fires with its answer's body, or fails
        with :class:`RemoteError`, or 503 ``peer_unreachable`` / ``peer_timeout``.
        Cancelled, the call is forgotten (a late answer is dropped)."""
        return self.start(peer, method, body, hops=hops, timeout=timeout)[0]

    def start(
        self, peer: str, method: str, body: Any, *, hops: int = 0, timeout: float | None = None
    ) -> tuple[defer.Deferred[Any], int]:
        """As :meth:`call`, with the call's id for :meth:`drop` (0 when the call
        failed at once)."""
        pending = self._pending
        if len(pending) >= self.max_pending:
            return defer.fail(Overloaded("too many calls to peers in flight", retry_after=1)), 0
        rid = next(self._ids)
        # Cancelled, the call is forgotten: a late answer is dropped.
        d: defer.Deferred[Any] = defer.Deferred(lambda _: self._forget(rid))
        payload = msgspec.msgpack.encode(_Request(rid, method, hops, body))
        if not self.channel.fits(REQUEST, len(payload)):
            too_large = PayloadTooLarge(
                f"a {method} request of {len(payload)} bytes is too large for the peer channel",
                code="request_too_large",
            )
            return defer.fail(too_large), 0
        if not self.channel.send(peer, REQUEST, payload):
            return defer.fail(Unavailable(f"peer {peer} cannot be reached now", code="peer_unreachable")), 0
        due = self.reactor.seconds() + (timeout if timeout is not None else self.timeout)
        pending[rid] = (peer, d, due)
        deadlines = self._deadlines
        if len(deadlines) > 64 and len(deadlines) > 2 * len(pending):
            # (mostly answered calls' entries: rebuilt from the calls in flight)
            deadlines = self._deadlines = [(e[2], i) for i, e in pending.items()]
            heapq.heapify(deadlines)
        else:
            heapq.heappush(deadlines, (due, rid))
        if self._timer is None or due < self._timer_due:
            self._arm(due)
        return d, rid

    def drop(self, rid: int) -> None:
        """Forget the call ``rid`` (from :meth:`start`) without firing its
        Deferred: the caller has its outcome from elsewhere and waits no more
        (issue 16, turn44: a cancel built a ``CancelledError`` Failure, traceback
        included, to fail a Deferred nothing waited on).  A late answer is
        dropped; its deadline passes without a word."""
        self._pending.pop(rid, None)

    def _forget(self, rid: int) -> None:
        self._pending.pop(rid, None)

    def _arm(self, due: float) -> None:
        """(Re)arm the deadlines' timer for ``due``."""
        timer = self._timer
        if timer is not None and timer.active():
            timer.cancel()
        self.timers += 1
        self._timer_due = due
        self._timer = self.reactor.callLater(max(0.0, due - self.reactor.seconds()), self._expire_due)

    def _expire_due(self) -> None:
        """The deadlines' timer fired: fail the calls due, arm it for the next one in flight."""
        self._timer = None
        # (fired for its time: what is due by then is due, whatever the float sums gave)
        now = max(self.reactor.seconds(), self._timer_due)
        deadlines, pending = self._deadlines, self._pending
        while deadlines and deadlines[0][0] <= now:
            entry = pending.pop(heapq.heappop(deadlines)[1], None)
            if entry is not None:
                entry[1].errback(Unavailable(f"peer {entry[0]} did not answer in time", code="peer_timeout"))
        deadlines = self._deadlines  # (a call an errback above made may have rebuilt it)
        while deadlines and deadlines[0][1] not in pending:
            heapq.heappop(deadlines)
        if deadlines and (self._timer is None or deadlines[0][0] < self._timer_due):
            self._arm(deadlines[0][0])

    def _fail_peer(self, peer: str) -> None:
        for rid, (p, d, _due) in list(self._pending.items()):
            if p == peer:
                del self._pending[rid]
                d.errback(Unavailable(f"connection to peer {peer} failed", code="peer_unreachable"))

    def _on_response(self, peer: str, payload: bytes) -> None:
        try:
            r = _resp_decoder.decode(payload)
        except msgspec.DecodeError:
            self.dropped += 1
            return
        entry = self._pending.get(r.id)
        if entry is None or entry[0] != peer:
            self.dropped += 1  # late (timed out), or not ours
            return
        del self._pending[r.id]
        if r.ok:
            entry[1].callback(r.body)
            return
        err = r.body if isinstance(r.body, dict) else {}
        entry[1].errback(
            RemoteError(
                str(err.get("message", "peer error")),
                code=str(err.get("code", "peer_error")),
                status=int(err.get("status", 502)),
            )
        )

    def _on_request(self, peer: str, payload: bytes) -> None:
        try:
            req = _req_decoder.decode(payload)
        except msgspec.DecodeError:
            self.dropped += 1
            return
        if not self.allow(peer):
            self.refused += 1
            self._answer(
                peer, req.id, False, _err(403, "not_a_member", "this node takes requests from members only")
            )
            return
        handler = self.handlers.get(req.method)
        if handler is None:
            self._answer(
                peer, req.id, False, _err(400, "unknown_method", f"no peer method {req.method!r}"[:200])
            )
            return
        shape = self.bodies.get(req.method)
        if shape is not None:
            try:
                msgspec.convert(req.body, shape)
            except msgspec.ValidationError as e:
                self.refused += 1
                self._answer(
                    peer, req.id, False, _err(400, "bad_request", f"malformed {req.method}: {e}"[:300])
                )
                return
        if req.hops > self.max_hops:
            self._answer(peer, req.id, False, _err(508, "routing_loop", "request forwarded too many times"))
            return
        serving = self._serving.get(peer, 0)
        if serving >= self.max_serving:
            self._answer(
                peer, req.id, False, _err(429, "overloaded", "too many requests from this peer in flight")
            )
            return
        self._serving[peer] = serving + 1
        d = defer.maybeDeferred(handler, peer, req.body, req.hops)
        # One link (issue 16, qlead42: a forwarded publish's answer ran a link more
        # on the leader, ``served`` before the answer): the request is no longer
        # being served once it is answered either way.
        d.addCallbacks(
            self._served_ok,
            self._served_failed,
            callbackArgs=(peer, req.id),
            errbackArgs=(peer, req.id, req.method),
        )

    def _served(self, peer: str) -> None:
        left = self._serving.get(peer, 1) - 1
        if left > 0:
            self._serving[peer] = left
        else:
            self._serving.pop(peer, None)

    def _served_ok(self, body: Any, peer: str, rid: int) -> None:
        self._served(peer)
        if body is not NO_ANSWER:
            self._answer(peer, rid, True, body)

    def _served_failed(self, f: Failure, peer: str, rid: int, method: str) -> None:
        self._served(peer)
        e = f.value
        if isinstance(e, SprawlError):
            self._answer(peer, rid, False, _err(e.status, e.code, e.message))
        else:
            log.failure("peer method {method} failed", f, method=method)
            self._answer(peer, rid, False, _err(500, "internal_error", "the peer failed to answer"))

    def _answer(self, peer: str, rid: int, ok: bool, body: Any) -> None:
        try:
            payload = msgspec.msgpack.encode(_Response(rid, ok, body))
        except (TypeError, msgspec.EncodeError):
            payload = msgspec.msgpack.encode(
                _Response(rid, False, _err(500, "internal_error", "unencodable answer"))
            )
        if not self.channel.fits(RESPONSE, len(payload)):
            self.oversized_answers += 1
            log.error(
                "a peer answer of {size} bytes to {peer} does not fit a frame; answering an error instead",
                size=len(payload),
                peer=peer,
            )
            payload = msgspec.msgpack.encode(
                _Response(rid, False, _err(507, "answer_too_large", "the answer does not fit a peer frame"))
            )
        self.channel.send(peer, RESPONSE, payload)

    def close(self) -> None:
        """Fail every call in flight (the node is stopping)."""
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self._deadlines = []
        for rid, (_p, d, _due) in list(self._pending.items()):
            del self._pending[rid]
            d.errback(Unavailable("node is stopping", code="stopping"))


def _err(status: int, code: str, message: str) -> dict[str, Any]:
    return {"status": status, "code": code, "message": message}
