"""WebSocket delivery: ``GET /v1/topics/{topic}/ws`` (autobahn on Twisted).

One socket carries, both ways, JSON text frames:

* server → client: every message as the same JSON object SSE and fetch use
  (plus ``ack_id``/``delivery_attempt``/``ack_deadline`` in group mode);
  answers to client requests (``{"published": ...}``, ``{"acked": ...}``,
  ``{"nacked": ...}``, ``{"extended": ...}``) and errors (``{"error": {"code", "message"}}``), each
  echoing the request's ``ref`` when it had one;
* client → server: ``{"publish": {message fields..., "acks"?}}`` or
  ``{"publish": {"messages": [...], "acks"?}}``; ``{"ack": [ids]}`` or
  ``{"ack": {"ack_ids": [...]}}``; ``{"nack": {"ack_ids": [...], "delay_ms"?}}``;
  ``{"extend": {"ack_ids": [...], "extend_ms"?}}`` (as ``POST .../extend``).

Two subscription modes, chosen by the query when the socket opens: cursors
(``?from=``/``?partition=``/``?last_event_id=``, like SSE: a client resumes
without loss by reconnecting with ``from`` = last offset seen + 1) or a
consumer group (``?group=G``: leases, at most ``max_in_flight`` unacked
messages on the socket).

Flow control: the feed is an ``IPushProducer`` on the TCP transport.  When
the socket buffer fills, Twisted pauses it and the node stops reading from
the broker (cursors stay put, no pull is made); a client paused for longer
than ``slow_timeout`` gets close code 4008 with the reason (its cursor) and
is dropped once it has read the close frame, or after :data:`SLOW_CLOSE_GRACE`
(at least ``slow_timeout``) if it never does: the frames queued ahead of the
close are its to read, and a consumer that is only slow still learns where to
resume.
Inbound, publishes are pipelined: a client may send many ``publish`` frames
without waiting, each answered (in any order) with its own ``ref``.  A socket
with :data:`MAX_PENDING_PUBLISHES` publishes (or :data:`MAX_PENDING_PUBLISH_BYTES`
of their frames) in flight stops being read until they are answered; a frame
that arrives beyond the hard bounds (:data:`MAX_INFLIGHT_PUBLISHES`,
:data:`MAX_INFLIGHT_PUBLISH_BYTES`: frames already read when reading paused)
is refused with the error frame ``too_many_in_flight`` (nothing stored; send
it again after an answer).  A bad frame gets an error frame; it never closes
the socket or touches state.

The lean publish frame: a *binary* frame holding a msgpack map
``{"publish": {"messages": [{"payload": str | bin, ...}], "acks"?}, "ref"?}`` (the
body of a msgpack ``POST .../messages``, :mod:`sprawl.http.lean_wire`) publishes
its messages with no base64 and no JSON; it is answered, like every frame, with
a JSON text frame.  A binary frame whose first byte is not a msgpack map is read
as JSON, as before.  The upgrade answer names the frames the node reads in
:data:`FRAMES_HEADER` (``json, msgpack``), so a client sends msgpack frames only
to a node that reads them.

The lean wire both ways (issue 16, lat40): a read that is nothing but whole, masked,
unfragmented binary frames each holding a msgpack map -- the lean publish frames -- is
unmasked and read here (:func:`lean_frames`) and goes straight to :meth:`onMessage`;
autobahn reads every other read as before (text frames and their UTF-8 check, control
frames, fragments, a frame split over reads, anything over the frame limit, every
protocol error).  And an answer frame is written here as one unmasked text frame, sent at
once when nothing waits before it (:func:`sprawl.http.server.send_first`): no autobahn
``sendMessage``, whose every send formats a debug log line's arguments (~190 Python lines
a frame) and leaves the bytes for the reactor's next poll round.

The msgpack publish frames one read of the socket brings (a pipelining client's
burst) are published as one batch -- one append, one storage write, one stream
event -- and each is answered with its own part of the result (its offsets,
ids, duplicates), as if published alone in that order.  Only frames whose
failure can only be the whole batch's are held so (the socket's topic exists,
the principal may publish, every message is within the size limit, same
``acks``); any other frame is published alone, after the held ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from sprawl.auth import Principal
from sprawl.delivery.groups import MAX_EXTEND_MS, ConsumerGroup
from sprawl.delivery.streams import StreamRegistry
from sprawl.errors import BadRequest, PayloadTooLarge, SprawlError
from sprawl.http.codec import ack_ids, encode, parse_message, publish_answer
from sprawl.http.lean_wire import PACK_MAP_START, parse_msgpack, parse_pack_frame
from sprawl.http.server import send_first
from sprawl.http.ws_feeds import CLOSE_SLOW_CONSUMER, GroupFeed, Pull, WSStream, text_frame
from sprawl.interfaces import Clock, MessagePlane
from sprawl.log.record import DEFAULT_READ_BYTES, Record
from sprawl.metrics import NodeMetrics
from sprawl.pubsub import ACKS, Broker, PublishResult
from sprawl.pubsub.filters import Selection
from sprawl.pubsub.groups import nothing_extended
from sprawl.topics import Topic

log = Logger()

#: Seconds a slow consumer (close 4008) has to read what was queued ahead of its
#: close frame and answer it before the socket is dropped (at least its
#: ``slow_timeout``); other closes keep autobahn's close handshake timeout.
SLOW_CLOSE_GRACE = 10.0

#: Publishes a socket may have in flight before the node stops reading it.
MAX_PENDING_PUBLISHES = 64
#: Bytes of publish frames a socket may have in flight before the node stops reading it.
MAX_PENDING_PUBLISH_BYTES = 16 * 1000**2
#: Publishes in flight beyond which a socket's publish frame is refused (``too_many_in_flight``).
MAX_INFLIGHT_PUBLISHES = 256
#: Bytes of publish frames in flight beyond which a frame is refused (one frame always fits).
MAX_INFLIGHT_PUBLISH_BYTES = 64 * 1000**2
MAX_ACK_IDS = 10_000
#: The longest frame :func:`lean_frames` reads when the socket sets no frame limit.
MAX_LEAN_FRAME = 65535
#: The upgrade answer's header naming the publish frames the node reads.
FRAMES_HEADER = "Sprawl-Publish-Frames"


def lean_frames(data: bytes, max_bytes: int) -> list[bytes] | None:
    """The payloads of ``data`` when it is nothing but whole lean publish frames from a
    client -- each final (no fragments), binary, without reserved bits, masked, at most
    ``max_bytes`` long with its length in the shortest form, its payload starting with a
    msgpack map -- unmasked, in order; else None (autobahn reads ``data`` as it always did).
    Pure: no state, no I/O."""
    out: list[bytes] = []
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 6 or data[pos] != 0x82:
            return None
        b1 = data[pos + 1]
        if not b1 & 0x80:
            return None
        n = b1 & 0x7F
        at = pos + 2
        if n == 126:
            if end - at < 2:
                return None
            n = (data[at] << 8) | data[at + 1]
            if n < 126:
                return None
            at += 2
        elif n == 127:
            return None  # (64 KiB and more: autobahn's)
        if n == 0 or n > max_bytes or end - at < 4 + n:
            return None
        key = data[at : at + 4]
        body = data[at + 4 : at + 4 + n]
        stream = key * (n // 4 + 1)
        payload = (int.from_bytes(body, "little") ^ int.from_bytes(stream[:n], "little")).to_bytes(
            n, "little"
        )
        if payload[0] not in PACK_MAP_START:
            return None
        out.append(payload)
        pos = at + 4 + n
    return out or None


@dataclass
class SocketParts:
    """What the node's sockets use of it (built once by the HTTP API)."""

    broker: Broker
    #: Publishes, group pulls and acks go through it (to partition leaders in a cluster).
    plane: MessagePlane
    clock: Clock
    #: Every open feed (the node closes them all when it stops).
    streams: StreamRegistry
    metrics: NodeMetrics | None = None
    #: Socket options: ``slow_timeout``, ``ping_interval``, ``max_frame_bytes``.
    options: dict[str, float] = field(default_factory=dict)


class SprawlWSProtocol(WebSocketServerProtocol):
    """One client socket: a feed (cursors or group) plus publish/ack requests."""

    factory: SprawlWSFactory
    transport: Any
    feed: WSStream | GroupFeed | None = None
    _pending = 0
    _pending_bytes = 0
    _reading_paused = False
    _gone = False
    #: msgpack publish frames read in this ``dataReceived``, published together at its end.
    _held: list[tuple[list[Record], str, Any, int]] | None = None
    _reading = False

    def onConnect(self, request: Any) -> tuple[None, dict[str, str]]:
        """Accept the upgrade (the route checked it), naming the publish frames read here."""
        return None, {FRAMES_HEADER: "json, msgpack"}

    def onOpen(self) -> None:
        """Start the feed chosen by the query the route validated."""
        f = self.factory
        parts = f.parts
        if f.group is not None and f.topic is not None:
            self.feed = GroupFeed(
                self,
                parts.broker,
                f.topic,
                f.group,
                parts.clock,
                registry=parts.streams,
                max_in_flight=f.max_in_flight,
                slow_timeout=f.slow_timeout,
                pull=_group_pull(parts.plane, f.topic, f.group),
                max_bytes=f.max_bytes,
                expires=f.expires,
            )
            self.feed.start()
        elif f.cursors is not None or f.appearing is not None:
            self.feed = WSStream(
                self,
                parts.broker,
                f.topic,
                f.cursors or {},
                None,
                parts.clock,
                registry=parts.streams,
                slow_timeout=f.slow_timeout,
                feeds=parts.plane.feeds,
                name=f.name,
                max_bytes=f.max_bytes,
                expires=f.expires,
                select=f.select,
            )
            if f.appearing is not None:  # opened before the topic exists
                self.feed.wait_for_topic(f.appearing())
            else:
                self.feed.start()
        m = parts.metrics
        if m is not None:
            m.http_requests.labels("websocket", "GET", "101").inc()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """The socket is gone: free its place among the node's connections."""
        try:
            super().connectionLost(reason)
        finally:
            self.factory.release_place()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """Release the feed (its leases lapse and are redelivered)."""
        self._gone = True
        if self.feed is not None:
            self.feed.close()

    def can_write_raw(self) -> bool:
        """Whether message frames may be written to the transport directly: the
        socket is open, and no extension (compression) changes the framing."""
        return self.state == WebSocketServerProtocol.STATE_OPEN and self._perMessageCompress is None

    def close_feed(self, code: int, reason: str) -> None:
        """The feed ended (slow client, topic deleted, shutdown): close the socket with why."""
        if self._gone:
            return
        try:
            self.transport.unregisterProducer()
        except Exception:
            pass
        if code == CLOSE_SLOW_CONSUMER:
            # autobahn arms its close handshake timer from this attribute in sendClose.
            grace = max(SLOW_CLOSE_GRACE, float(getattr(self.factory, "slow_timeout", 0.0)))
            current = float(getattr(self, "closeHandshakeTimeout", 0.0))
            setattr(self, "closeHandshakeTimeout", max(current, grace))  # noqa: B010 (autobahn's untyped option)
        try:
            self.sendClose(code, reason)
        except Exception:
            log.failure("closing a websocket failed; dropping it")
            self.dropConnection(abort=True)

    # -- client frames --------------------------------------------------------

    def _reply(self, body: dict[str, Any], ref: Any) -> None:
        if self._gone:
            return
        if ref is not None:
            body["ref"] = ref
        if self.can_write_raw() and not self.send_queue:
            # One ready-made text frame, sent at once when nothing waits before it
            # (the rest, if the socket took less, through the transport as usual).
            frame = text_frame(encode(body))
            sent = send_first(self.transport, frame)
            if sent < len(frame):
                self.transport.write(frame[sent:] if sent else frame)
            return
        self.sendMessage(encode(body), isBinary=False)

    def _error(self, e: SprawlError, ref: Any) -> None:
        body: dict[str, Any] = {"error": {"code": e.code, "message": e.message}}
        retry = getattr(e, "retry_after", None)
        if retry is not None:
            body["error"]["retry_after"] = retry
        self._reply(body, ref)

    def dataReceived(self, data: bytes) -> None:
        """Read frames as autobahn does -- or, when the read is nothing but lean publish
        frames and autobahn holds no part of a frame, read them here (:func:`lean_frames`)
        -- then publish the msgpack publish frames they held (:meth:`_hold`)."""
        self._reading = True
        try:
            payloads = None
            if (
                self.state == WebSocketServerProtocol.STATE_OPEN
                and not self.data
                and self.current_frame is None
                and not self.inside_message
                and self._perMessageCompress is None
            ):
                payloads = lean_frames(data, self.maxFramePayloadSize or MAX_LEAN_FRAME)
            if payloads is None:
                super().dataReceived(data)
            else:
                for payload in payloads:
                    self.onMessage(payload, True)
        finally:
            self._reading = False
            self._release()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """One client request; a bad one gets an error frame and changes nothing."""
        ref: Any = None
        try:
            if isBinary and payload[:1] and payload[0] in PACK_MAP_START:
                ref, body = parse_pack_frame(payload)
                self._check_room(len(payload))
                records, acks = parse_msgpack(
                    body, self.factory.parts.broker.config.max_batch_messages, "quorum"
                )
                if acks not in ACKS:
                    raise BadRequest("acks must be one of quorum, leader, none", code="invalid_acks")
                if not self._hold(records, acks, ref, len(payload)):
                    self._release()
                    self._publish_records(records, acks, ref, len(payload))
                return
            self._release()  # (publishes keep their order: the held ones go first)
            try:
                frame = msgspec.json.decode(payload)
            except (msgspec.DecodeError, UnicodeDecodeError):
                raise BadRequest("frame is not valid JSON", code="invalid_json") from None
            except RecursionError:
                raise BadRequest("frame is nested too deeply", code="invalid_json") from None
            if not isinstance(frame, dict):
                raise BadRequest("frame must be a JSON object", code="invalid_frame")
            ref = frame.pop("ref", None)
            if ref is not None and not isinstance(ref, (str, int)):
                ref = None
                raise BadRequest("ref must be a string or an integer", code="invalid_frame")
            if len(frame) != 1:
                raise BadRequest(
                    "frame must have exactly one of publish, ack, nack, extend", code="invalid_frame"
                )
            ((op, body),) = frame.items()
            if op == "publish":
                self._publish(body, ref, len(payload))
            elif op in ("ack", "nack"):
                self._settle(op, body, ref)
            elif op == "extend":
                self._extend(body, ref)
            else:
                raise BadRequest(
                    f"unknown operation {op!r}; use publish, ack, nack or extend", code="invalid_frame"
                )
        except SprawlError as e:
            self._error(e, ref)
        except Exception:
            log.failure("websocket frame handling failed")
            self._error(SprawlError("internal error; see the node's log"), ref)

    def _hold(self, records: list[Record], acks: str, ref: Any, size: int) -> bool:
        """Keep a checked msgpack publish frame for :meth:`_release`, which publishes the
        frames one read brought as one batch (one append, one storage write, one stream
        event for them all) and answers each with its own part.  Only frames whose failure
        can only be the whole batch's are held: the socket's topic exists, the frame is
        allowed and its messages are within the size limit (checked here, so a too-large
        message is still its own frame's error).  False: publish it alone."""
        t = self.factory.topic
        broker = self.factory.parts.broker
        if not self._reading or t is None or broker.topics.get(t.name) is not t:
            return False
        if self.factory.principal is not None:
            self.factory.principal.require("publish", t.name)
        broker.check_message_sizes(records, t.config.max_message_bytes)
        held = self._held
        if held is None:
            held = self._held = []
        elif (
            held[0][1] != acks
            or sum(len(h[0]) for h in held) + len(records) > broker.config.max_batch_messages
        ):
            self._release()
            held = self._held = []
        held.append((records, acks, ref, size))
        self._inflight(1, size)
        return True

    def _release(self) -> None:
        """Publish the held frames as one batch; answer each frame with its slice."""
        held, self._held = self._held, None
        if not held:
            return
        parts = self.factory.parts
        t = self.factory.topic
        assert t is not None
        acks = held[0][1]
        if len(held) == 1:
            records = held[0][0]
        else:
            records = [r for h in held for r in h[0]]
        try:
            if parts.broker.topics.get(t.name) is not t:
                raise SprawlError("the topic was deleted", code="topic_deleted", status=410)
            d = parts.plane.publish(t, records, acks)
        except Exception:
            d = defer.fail()

        def done(res: PublishResult | Failure) -> None:
            try:
                if isinstance(res, Failure):
                    if isinstance(res.value, SprawlError):
                        for h in held:
                            self._error(res.value, h[2])
                    else:
                        log.failure("websocket publish failed", res)
                        for h in held:
                            self._error(SprawlError("internal error; see the node's log"), h[2])
                elif len(held) == 1:  # (a lone frame: the whole result is its own)
                    self._reply({"published": publish_answer(res, acks)}, held[0][2])
                else:
                    at = 0
                    for recs, _, ref, _ in held:
                        n = len(recs)
                        part = PublishResult(
                            res.offsets[at : at + n],
                            res.ids[at : at + n],
                            res.partitions[at : at + n],
                            res.duplicates[at : at + n],
                            res.stored,
                        )
                        at += n
                        self._reply({"published": publish_answer(part, acks)}, ref)
            finally:
                for h in held:  # (the frames' room, settled after their answers)
                    self._inflight(-1, -h[3])

        # (one link -- addBoth, cheaper to add than a callback pair -- answering either way)
        d.addBoth(done)

    def _check_room(self, size: int) -> None:
        """Refuse a publish frame beyond the socket's hard in-flight bounds."""
        if self._pending >= MAX_INFLIGHT_PUBLISHES or (
            self._pending and self._pending_bytes + size > MAX_INFLIGHT_PUBLISH_BYTES
        ):
            raise SprawlError(
                f"more than {MAX_INFLIGHT_PUBLISHES} publishes or {MAX_INFLIGHT_PUBLISH_BYTES} bytes "
                "of them in flight on this socket; send it again after an answer",
                code="too_many_in_flight",
                status=429,
            )

    def _publish(self, body: Any, ref: Any, size: int = 0) -> None:
        broker = self.factory.parts.broker
        self._check_room(size)
        if not isinstance(body, dict):
            raise BadRequest("publish must be an object", code="invalid_frame")
        body = dict(body)
        acks = body.pop("acks", "quorum")
        if acks not in ACKS:
            raise BadRequest("acks must be one of quorum, leader, none", code="invalid_acks")
        if "messages" in body:
            msgs = body.pop("messages")
            if body:
                raise BadRequest(f"unknown field(s): {', '.join(sorted(body))}", code="invalid_field")
            if not isinstance(msgs, list) or not msgs:
                raise BadRequest("messages must be a non-empty array", code="invalid_messages")
            if len(msgs) > broker.config.max_batch_messages:
                raise PayloadTooLarge("too many messages in one publish", code="batch_too_large")
            records = [parse_message(m, i) for i, m in enumerate(msgs)]
        else:
            records = [parse_message(body, 0)]
        self._publish_records(records, acks, ref, size)

    def _publish_records(self, records: list[Record], acks: str, ref: Any, size: int) -> None:
        """Publish a frame's checked records; its answer (or error) frame carries ``ref``."""
        parts = self.factory.parts
        broker = parts.broker
        t = self.factory.topic
        if t is None and isinstance(self.feed, WSStream):
            t = self.feed.topic  # opened before the topic existed: None until it appears
        name = t.name if t is not None else self.factory.name
        if self.factory.principal is not None:
            self.factory.principal.require("publish", name)
        if t is None:
            # As POST .../messages: checked before the publish creates the topic.
            broker.check_writable()
            broker.check_message_sizes(records, broker.config.max_message_bytes)
            d = broker.ensure_topic(name).addCallback(lambda t: parts.plane.publish(t, records, acks))
        elif broker.topics.get(t.name) is not t:
            raise SprawlError("the topic was deleted", code="topic_deleted", status=410)
        else:
            d = parts.plane.publish(t, records, acks)
        self._inflight(1, size)

        def ok(res: PublishResult) -> None:
            self._reply({"published": publish_answer(res, acks)}, ref)

        def failed(f: Failure) -> None:
            if isinstance(f.value, SprawlError):
                self._error(f.value, ref)
            else:
                log.failure("websocket publish failed", f)
                self._error(SprawlError("internal error; see the node's log"), ref)

        d.addCallbacks(ok, failed)
        d.addBoth(lambda _: self._inflight(-1, -size))

    def _inflight(self, delta: int, nbytes: int = 0) -> None:
        self._pending += delta
        self._pending_bytes += nbytes
        if self._gone:
            return
        full = self._pending >= MAX_PENDING_PUBLISHES or self._pending_bytes >= MAX_PENDING_PUBLISH_BYTES
        if full and not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()
        elif (
            self._reading_paused
            and self._pending < MAX_PENDING_PUBLISHES // 2
            and self._pending_bytes < MAX_PENDING_PUBLISH_BYTES // 2
        ):
            self._reading_paused = False
            self.transport.resumeProducing()

    def _settle(self, op: str, body: Any, ref: Any) -> None:
        delay: Any = 0
        ids: Any
        if isinstance(body, list):
            ids = body
        elif isinstance(body, dict):
            unknown = set(body) - {"ack_ids"} - ({"delay_ms"} if op == "nack" else set())
            if unknown:
                raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}", code="invalid_field")
            ids = body.get("ack_ids")
            delay = body.get("delay_ms", 0)
            if not isinstance(delay, int) or isinstance(delay, bool) or not 0 <= delay <= 86_400_000:
                raise BadRequest("delay_ms must be an integer 0..86400000", code="invalid_field")
        else:
            raise BadRequest(
                f"{op} must be an array of ack ids or {{'ack_ids': [...]}}", code="invalid_frame"
            )
        if not isinstance(ids, list) or not all(isinstance(a, str) for a in ids):
            raise BadRequest("ack_ids must be an array of strings", code="invalid_field")
        if len(ids) > MAX_ACK_IDS:
            raise PayloadTooLarge(f"at most {MAX_ACK_IDS} ack ids per frame", code="batch_too_large")
        feed = self.feed
        if not isinstance(feed, GroupFeed):
            raise BadRequest(f"{op} needs a socket opened with ?group=", code="no_group")
        t, g = feed.topic, feed.group
        if t.groups.get(g.name) is not g:
            raise SprawlError("the group was deleted", code="group_not_found", status=404)
        # Each ack id goes to the node owning its partition's group state.
        d = defer.ensureDeferred(self.factory.parts.plane.groups.settle(t, g.name, ids, op != "ack", delay))
        key = "acked" if op == "ack" else "nacked"

        def ok(refused: dict[str, str]) -> None:
            feed.settled([a for a in ids if a not in refused])
            self._reply({key: len(ids) - len(refused), "refused": refused}, ref)

        def failed(f: Failure) -> None:
            e = f.value
            self._error(e if isinstance(e, SprawlError) else SprawlError("internal error"), ref)

        d.addCallbacks(ok, failed)

    def _extend(self, body: Any, ref: Any) -> None:
        """Extend leases of this socket's group (``POST .../extend``'s body and answer)."""
        if not isinstance(body, dict):
            raise BadRequest("extend must be {'ack_ids': [...], 'extend_ms'?}", code="invalid_frame")
        ids = ack_ids(body, {"extend_ms"})
        if len(ids) > MAX_ACK_IDS:
            raise PayloadTooLarge(f"at most {MAX_ACK_IDS} ack ids per frame", code="batch_too_large")
        feed = self.feed
        if not isinstance(feed, GroupFeed):
            raise BadRequest("extend needs a socket opened with ?group=", code="no_group")
        t, g = feed.topic, feed.group
        if t.groups.get(g.name) is not g:
            raise SprawlError("the group was deleted", code="group_not_found", status=404)
        extend_ms = body.get("extend_ms", g.config.ack_deadline_ms)
        if (
            not isinstance(extend_ms, int)
            or isinstance(extend_ms, bool)
            or not 1 <= extend_ms <= MAX_EXTEND_MS
        ):
            raise BadRequest(f"extend_ms must be an integer 1..{MAX_EXTEND_MS}", code="invalid_field")
        d = defer.ensureDeferred(self.factory.parts.plane.groups.extend(t, g.name, ids, extend_ms))

        def ok(r: tuple[dict[str, str], dict[str, int]]) -> None:
            refused, deadlines = r
            if ids and not deadlines:
                self._error(nothing_extended(refused), ref)
                return
            self._reply({"extended": len(deadlines), "refused": refused, "ack_deadlines": deadlines}, ref)

        def failed(f: Failure) -> None:
            e = f.value
            self._error(e if isinstance(e, SprawlError) else SprawlError("internal error"), ref)

        d.addCallbacks(ok, failed)


def _group_pull(plane: MessagePlane, topic: Topic, group: ConsumerGroup) -> Pull:
    """Group pulls through the data plane (from every partition's owner in a cluster)."""
    return lambda n, wait, mb: defer.ensureDeferred(plane.groups.pull(topic, group.name, n, wait, mb))


class SprawlWSFactory(WebSocketServerFactory):
    """Built per upgrade request, carrying what the route validated."""

    protocol = SprawlWSProtocol  # type: ignore[assignment]

    def __init__(
        self,
        parts: SocketParts,
        topic: Topic | None,
        *,
        cursors: dict[int, int] | None = None,
        group: ConsumerGroup | None = None,
        max_in_flight: int = 100,
        principal: Principal | None = None,
        name: str | None = None,
        appearing: Callable[[], Deferred[tuple[Topic, dict[int, int]]]] | None = None,
        max_bytes: int = DEFAULT_READ_BYTES,
        select: Selection | None = None,
    ):
        super().__init__()
        #: Cursor mode's ``?filter=``/``?fields=`` (None: every message).
        self.select = select
        options = parts.options
        slow_timeout = float(options.get("slow_timeout", 30.0))
        ping_interval = float(options.get("ping_interval", 20.0))
        max_frame_bytes = int(options.get("max_frame_bytes", 8 * 1000**2))
        #: Frees the socket's place among the node's connections (set when
        #: the HTTP channel hands the socket over; see SprawlWSResource).
        self.release_place: Callable[[], None] = lambda: None
        #: Who opened the socket (None while authentication is off).
        self.principal = principal
        #: When the principal's token expires (a JWT's ``exp``), or None.
        self.expires: float | None = getattr(principal, "expires", None)
        #: Bytes of frames one write of the feed may carry (at least one message).
        self.max_bytes = max_bytes
        self.parts = parts
        #: The topic, or None when the socket opens before it exists: then
        #: ``appearing()`` (called once the socket is open) gives a Deferred
        #: firing with ``(topic, cursors)`` when it is created.
        self.topic = topic
        self.name: str = topic.name if topic is not None else str(name)
        self.appearing = appearing
        self.cursors = cursors
        self.group = group
        self.max_in_flight = max_in_flight
        self.slow_timeout = slow_timeout
        self.setProtocolOptions(
            autoPingInterval=ping_interval,
            autoPingTimeout=2 * ping_interval,
            maxMessagePayloadSize=max_frame_bytes,
            maxFramePayloadSize=max_frame_bytes,
            closeHandshakeTimeout=2.0,
            # The node is reachable by any name the operator gives it.
            allowedOrigins=["*"],
        )


class SprawlWSResource(WebSocketResource):
    """autobahn's resource, plus: the HTTP channel's idle timeout and its
    producer registration are released with the transport it hands over, and
    its place among the node's connections (``--max-connections``) goes to
    the socket, freed when the socket closes."""

    def render(self, request: Request) -> Any:
        """Take the connection over from twisted.web."""
        channel = request.channel
        transport = channel.transport
        if transport is not None:
            channel.setTimeout(None)
            # The HTTPChannel registered itself as the transport's producer;
            # the feed registers instead once the handshake is done.
            transport.unregisterProducer()
            hand_over = getattr(channel, "hand_over", None)
            if hand_over is not None:
                self._factory.release_place = hand_over()
        return super().render(request)


def ws_resource(
    parts: SocketParts,
    topic: Topic | None,
    *,
    cursors: dict[int, int] | None = None,
    group: ConsumerGroup | None = None,
    max_in_flight: int = 100,
    principal: Principal | None = None,
    name: str | None = None,
    appearing: Callable[[], Deferred[tuple[Topic, dict[int, int]]]] | None = None,
    max_bytes: int = DEFAULT_READ_BYTES,
    select: Selection | None = None,
) -> SprawlWSResource:
    """The resource that upgrades this request to a WebSocket feed of ``topic``."""
    return SprawlWSResource(
        SprawlWSFactory(
            parts,
            topic,
            cursors=cursors,
            group=group,
            max_in_flight=max_in_flight,
            principal=principal,
            name=name,
            appearing=appearing,
            max_bytes=max_bytes,
            select=select,
        )
    )
