"""The hot routes without Klein: publish, fetch and the SSE stream.

Klein (with werkzeug's router, two ``maybeDeferred`` and half a dozen
callbacks per request) cost about a third of a node's CPU for a one-message
publish (issue 16).  The three routes every message takes are matched here
by their path segments and answered with one Deferred chain; every other
request, and every request here that is not exactly one of them (a trailing
slash, ``HEAD``, a topic segment with an encoded ``/``...), goes to Klein as
before, so routing, 404/405 answers and every error shape are unchanged.

What Klein did for these routes is done here the same way: a handler's
answer is rendered by :func:`answer` (the same function the Klein routes
use: JSON, ``Content-Length``, the error shape, the request metrics), the
handler's Deferred is cancelled when the client goes away (a long-poll ends),
and the request is finished once the answer is written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from sprawl.http.codec import JSON, encode, render_error
from sprawl.http.server import BoundedRequest, send_now
from sprawl.metrics import NodeMetrics

log = Logger(namespace="sprawl.http.api")

#: (method, last path segment) of ``/v1/topics/{topic}/...`` -> the route's name
#: (the Klein endpoint's, which authorization and the metrics use too).
HOT_ROUTES: dict[tuple[bytes, bytes], str] = {
    (b"POST", b"messages"): "publish",
    (b"GET", b"messages"): "fetch",
    (b"GET", b"stream"): "stream",
}


def match(request: Request) -> tuple[str, str] | None:
    """``(route, topic)`` when the request is one of :data:`HOT_ROUTES`, else None
    (Klein routes it).  The path is read as Klein reads it: the percent-decoded
    segments (``request.postpath``) joined by ``/``, so a segment holding an
    encoded ``/`` is not a topic here either."""
    pp = request.postpath
    if pp is None or len(pp) != 4 or pp[0] != b"v1" or pp[1] != b"topics":
        return None
    name = HOT_ROUTES.get((request.method, pp[3]))
    if name is None:
        return None
    seg = pp[2]
    if not seg or b"/" in seg:
        return None
    try:
        return name, seg.decode("utf-8")
    except UnicodeDecodeError:
        return None


def answer(
    name: str,
    metrics: NodeMetrics | None,
    request: Request,
    call: Callable[[], object],
) -> Deferred[Any]:
    """Run a route's handler (``call``), time it, count its status, and render its
    result: None as is, ``str``/``bytes`` as they are, anything else as JSON; a
    failure as the JSON error shape.  Fires with the body (or None)."""
    started = time.perf_counter()
    try:
        result = call()
    except Exception as e:  # validated synchronously
        result = Failure(e)
    d: Deferred[Any]
    if isinstance(result, Deferred):
        d = result
    elif isinstance(result, Failure):
        d = fail(result)
    else:
        d = succeed(result)

    def ok(value: Any) -> Any:
        if value is None:
            return value
        if isinstance(value, str):
            value = value.encode("utf-8")
        elif not isinstance(value, bytes):
            request.setHeader(b"content-type", JSON)
            value = encode(value)
        if request.code != 204:
            # A known length: no chunked framing on every answer.
            request.setHeader(b"content-length", b"%d" % len(value))
        if metrics is not None:
            observe()
        return value

    def err(f: Failure) -> bytes | None:
        if f.check(CancelledError) and (request.finished or getattr(request, "_disconnected", False)):
            body = None  # the client went away mid long-poll: nobody to answer
        else:
            body = render_error(request, f)
        if metrics is not None:
            observe()
        return body

    def observe() -> None:
        assert metrics is not None
        metrics.request_done(
            name, request.method.decode("ascii", "replace"), request.code, time.perf_counter() - started
        )

    d.addCallbacks(ok, err)
    return d


class HotRoutes:
    """Serves :data:`HOT_ROUTES` for the API (``api``: a
    :class:`sprawl.http.api.SprawlAPI`; its ``messages``, ``fetcher`` and ``metrics``)."""

    def __init__(self, api: Any) -> None:
        self.api = api

    def render(self, request: Request) -> object:
        """Answer the request if it is a hot route (``NOT_DONE_YET``), else None."""
        found = match(request)
        if found is None:
            return None
        name, topic = found
        # Before the handler runs (as Klein): its own watchers of the connection
        # (a long-poll's) then run after this one.
        gone = _Gone(request)
        api = self.api
        d: Deferred[Any]
        if name == "publish":
            d = answer(name, api.metrics, request, lambda: api.messages.publish(request, topic))
        elif name == "fetch":
            d = answer(name, api.metrics, request, lambda: api.fetcher.fetch(request, topic))
        else:
            try:
                r = api.messages.stream(request, topic)
            except Exception:
                r = Failure()
            d = r if isinstance(r, Deferred) else (fail(r) if isinstance(r, Failure) else succeed(r))
        gone.answer(d)
        return NOT_DONE_YET


class _Gone:
    """Writes a request's answer and finishes it (as Klein does), and cancels the
    answer's Deferred if the client goes away first."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.gone = False
        self.answering: Deferred[Any] | None = None
        if isinstance(request, BoundedRequest):
            # (the node's requests: told of a lost connection without a Deferred of their own)
            request.on_lost = self._lost
        else:
            request.notifyFinish().addCallbacks(self._finished, self._lost)

    def _finished(self, _: object) -> None:
        self.gone = True

    def _lost(self, _: Failure) -> None:
        self.gone = True
        if self.answering is not None:
            self.answering.cancel()

    def answer(self, d: Deferred[Any]) -> None:
        """Write what ``d`` fires with (bytes, or None: nothing) and finish."""
        self.answering = d
        d.addCallbacks(self._write, self._failed)

    def _write(self, r: object) -> None:
        self.answering = None
        request = self.request
        channel = getattr(request, "channel", None)  # (gone once a request is finished)
        if request.finished:
            # The handler finished it (a stream ends itself: its error event or a
            # slow reader cut off): a second finish is twisted.web's "finish called
            # twice" warning, and a write after it is lost.
            self.gone = True
            if isinstance(request, BoundedRequest):
                request.on_lost = None
            return
        if isinstance(r, bytes):
            request.write(r)
        if not self.gone:
            self.gone = True
            if isinstance(request, BoundedRequest):
                request.on_lost = None
            request.finish()
            if channel is not None:
                send_now(channel.transport)  # the answer leaves in this turn

    def _failed(self, f: Failure) -> None:
        self.answering = None
        if isinstance(self.request, BoundedRequest):
            self.request.on_lost = None
        if self.gone:
            if not f.check(CancelledError):
                log.failure("unhandled error processing a request", f)
            return
        self.request.processingFailed(f)  # as Klein: twisted.web's 500
