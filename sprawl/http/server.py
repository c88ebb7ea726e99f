"""The HTTP server side: a request class that bounds bodies, a channel that
bounds time, a cap on connections, and the Site.

* **Bodies** are held in memory up to ``max_body`` bytes; past that the rest
  is read and discarded and the request answered 413 with the JSON error
  shape, so an oversize upload costs the node no memory and hurts no other
  request.
* **Time** (:class:`GuardedChannel`): a request's line and headers must
  arrive within ``header_timeout`` seconds (counted from the connection's
  start for its first request, from the first byte for later ones), and its
  body within ``body_timeout`` plus its size at ``body_min_rate`` bytes/s --
  so a client sending a byte a second is answered 408 and closed instead of
  holding a connection forever.  Once a request is whole, nothing here times
  it: long-polls, SSE streams and WebSockets run as long as they need.
* **Connections**: at most ``max_connections`` open at once (counted by the
  channel, per site); one more is answered 503 ``too_many_connections`` and
  closed.  A WebSocket that takes a socket over keeps its place until it
  closes (:meth:`GuardedChannel.hand_over`).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

import msgspec
from twisted.internet import tcp
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.iweb import INonQueuedRequestFactory
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from sprawl.direct_send import send_first
from sprawl.http.lean_http import HotRequest, parse_hot
from sprawl.metrics import NodeMetrics
from sprawl.storage import timeline


class BoundedRequest(Request):
    """A :class:`twisted.web.server.Request` with a body size limit."""

    max_body = 8 * 1000**2
    metrics: NodeMetrics | None = None
    _oversize = False
    _received = 0
    #: Called with the reason when the connection is lost before the request is answered,
    #: ahead of every ``notifyFinish`` watcher and with the request already marked
    #: disconnected, as the first such watcher would be: the hot routes' answer
    #: (:class:`sprawl.http.hot._Gone`) watches the connection this way, without a
    #: ``Deferred`` per request (issue 16, lat40).  Cleared once it is called, or by its
    #: owner once the request is finished.
    on_lost: Callable[[Failure], None] | None = None

    def __init__(self, *args: Any, **kw: Any) -> None:
        # Form bodies are message payloads here, never request arguments: no
        # multipart parsing (memory, and a bare 400 without the JSON shape).
        kw.setdefault("parsePOSTFormSubmission", False)
        super().__init__(*args, **kw)

    def write(self, data: bytes) -> None:
        """As twisted.web writes (headers first, then ``data``), and any headers still held
        by the channel (an answer without a body) leave with this call."""
        super().write(data)
        channel = getattr(self, "channel", None)
        flush = getattr(channel, "flush_head", None)
        if flush is not None:
            flush()

    def connectionLost(self, reason: Failure) -> None:
        """As twisted.web's, with :attr:`on_lost` told first."""
        watch = self.on_lost
        if watch is not None:
            self.on_lost = None
            self._disconnected = True
            self.channel = None  # type: ignore[assignment]  # (as twisted.web does)
            watch(reason)
        super().connectionLost(reason)

    def send_now(self) -> None:
        """Send what this request's connection holds now, in this reactor turn
        (:func:`send_now`; an SSE stream calls it after writing an event)."""
        channel = getattr(self, "channel", None)  # (gone once the request is finished)
        if channel is not None:
            send_now(channel.transport)

    def gotLength(self, length: int | None) -> None:
        """Keep bodies in memory (never a temp file); flag declared oversize."""
        if length is not None and length > self.max_body:
            self._oversize = True
        self.content = io.BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        """Accumulate up to ``max_body`` bytes; discard the rest."""
        if self._oversize:
            return
        self._received += len(data)
        if self._received > self.max_body:
            self._oversize = True
            self.content = io.BytesIO()
            return
        assert self.content is not None
        self.content.write(data)

    def process(self) -> None:
        """Answer 413 for oversize bodies without routing them."""
        if self._oversize:
            if self.metrics is not None:
                self.metrics.rejected_requests.labels("oversize").inc()
            self.setResponseCode(413)
            self.setHeader(b"content-type", b"application/json")
            self.setHeader(b"connection", b"close")
            self.write(
                msgspec.json.encode(
                    {
                        "error": {
                            "code": "payload_too_large",
                            "message": f"request body exceeds {self.max_body} bytes",
                        }
                    }
                )
            )
            self.finish()
            return
        super().process()


def send_now(transport: Any) -> None:
    """Send what a plain TCP connection holds for its peer now, in this reactor turn,
    instead of when the reactor next polls: an answer or an event written as a commit
    completes leaves with it (issue 16), and the reactor is spared a poll round and two
    ``epoll_ctl`` calls per write.  Anything unusual is left to the reactor as before:
    TLS, a closing or half-closed connection, a paused producer, or bytes already waiting
    for a full socket.  A failed send is left too: the reactor finds the error again on
    its own write and closes the connection as it always does."""
    if type(transport) is not tcp.Server or transport.TLS:
        return
    if transport.disconnecting or transport._writeDisconnecting or transport.producerPaused:
        return
    if not transport._tempDataLen or len(transport.dataBuffer) > transport.offset:
        return
    transport.doWrite()


class _HostCache:
    """The channel's local address, asked of the socket once (twisted.web asks for it with
    every request: a ``getsockname`` system call each)."""

    _host: Any = None

    def getHost(self) -> Any:
        host = self._host
        if host is None:
            host = self._host = self.transport.getHost()  # type: ignore[attr-defined]
        return host


def _raw_error(status: bytes, code: str, message: str, extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 error response with the JSON error shape, closing the connection."""
    body = msgspec.json.encode({"error": {"code": code, "message": message}})
    return (
        b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n%s\r\n%s" % (status, len(body), extra, body)
    )


# Where a connection is in its current request.
_IDLE = 0  # between requests (the channel's idle timeout applies)
_HEADERS = 1  # receiving a request line and headers
_BODY = 2  # receiving a body
_HANDLING = 3  # the request is whole and being answered (no limit here)
_CLOSED = 4


class GuardedChannel(_HostCache, HTTPChannel):
    """An HTTP/1.1 channel whose requests must arrive in bounded time (see
    the module docstring).  Timers are armed only when a request does not
    arrive in one read, so a request that does costs nothing extra."""

    #: Seconds for a request's line and headers.
    header_timeout = 10.0
    #: Seconds a body gets on top of its size at :attr:`body_min_rate`.
    body_timeout = 10.0
    #: Bytes/s a body must keep up on average (past :attr:`body_timeout`).
    body_min_rate = 64_000
    metrics: NodeMetrics | None = None
    site: Any

    _phase = _HEADERS
    _guard: Any = None
    _body_start = 0.0

    def _seconds(self) -> float:
        return float(self.site.reactor.seconds())

    def _arm(self, delay: float) -> None:
        self._guard = self.callLater(max(0.0, delay), self._expired)

    def _cancel(self) -> None:
        g, self._guard = self._guard, None
        if g is not None and g.active():
            g.cancel()

    _counted = False

    def connectionMade(self) -> None:
        """Take a place among the site's connections (or answer 503 past the
        cap); the first request's headers are due ``header_timeout`` after
        the connection opens."""
        site = self.site
        cap = getattr(site, "max_connections", None)
        if cap is not None:
            if site.open_connections >= cap:
                self._refuse()
                return
            site.open_connections += 1
            self._counted = True
        super().connectionMade()
        self._arm(self.header_timeout)

    def _refuse(self) -> None:
        site = self.site
        site.refused_connections += 1
        if self.metrics is not None:
            self.metrics.rejected_requests.labels("connections").inc()
        self._phase = _CLOSED
        transport: Any = self.transport
        transport.write(
            _raw_error(
                b"503 Service Unavailable",
                "too_many_connections",
                "the node has as many connections open as it allows (--max-connections); retry shortly",
                b"retry-after: 1\r\n",
            )
        )
        transport.loseConnection()

    def hand_over(self) -> Callable[[], None]:
        """The socket is handed to another protocol (a WebSocket upgrade; this
        channel never hears it close): it keeps its place among the site's
        connections until the returned function is called."""
        if not self._counted:
            return lambda: None
        self._counted = False
        site = self.site
        done: list[bool] = []

        def release() -> None:
            if not done:
                done.append(True)
                site.open_connections -= 1

        return release

    #: An answer's status line and headers, held by :meth:`writeHeaders` until the first
    #: write of its body so both leave in one send (:meth:`flush_head` sends it alone).
    _head = b""

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        """Hold the status line and headers (plain TCP): the body's first write takes them
        along.  What twisted.web writes is unchanged (its own loop, over the same
        sanitized :class:`Headers`); TLS and any other transport as before."""
        if type(self.transport) is not tcp.Server or not isinstance(headers, Headers):
            self.flush_head()
            super().writeHeaders(version, code, reason, headers)
            return
        seq = [self._head, version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                seq.extend((name, b": ", value, b"\r\n"))
        seq.append(b"\r\n")
        self._head = b"".join(seq)

    def flush_head(self) -> None:
        """Send held headers now (an answer without a body, or headers written alone)."""
        if self._head:
            self.write(b"")

    def write(self, data: bytes) -> None:
        """Send an answer's bytes (:func:`send_first`), the rest through the transport."""
        transport: Any = self.transport
        head = self._head
        if head:
            self._head = b""
            if type(data) is bytes:
                data = head + data
            else:  # not bytes: the transport refuses it as before, after the headers
                transport.write(head)
        if not data:
            return
        sent = send_first(transport, data)
        if sent < len(data):
            transport.write(data[sent:] if sent else data)

    def writeSequence(self, iovec: list[bytes]) -> None:
        """As :meth:`write`, for the pieces twisted.web writes an answer's head or an
        SSE event's chunk in (one system call for all of them)."""
        transport: Any = self.transport
        if type(transport) is not tcp.Server or any(type(i) is not bytes for i in iovec):
            self.flush_head()
            transport.writeSequence(iovec)  # (TLS; or what twisted.web refuses, as before)
            return
        self.write(b"".join(iovec))

    def dataReceived(self, data: bytes) -> None:
        """Start timing a new request at its first byte; arm a timer if it is not whole yet."""
        phase = self._phase
        if phase == _IDLE:
            self._phase = _HEADERS
        elif phase == _CLOSED:
            return
        if timeline.TIMELINE is not None:
            timeline.READ_AT = time.time()
        if self.lean_parse and self._parser_idle():
            found = parse_hot(data)
            if found is not None:
                self._take(found, data)
                data = data[found.end :]
        if data:
            super().dataReceived(data)
        if self._guard is None:
            if self._phase == _HEADERS:
                self._arm(self.header_timeout)
            elif self._phase == _BODY:
                # The body's clock starts with the read that ended the headers.
                self._body_start = self._seconds()
                self._arm(self.body_timeout)

    #: Parse a whole hot-route request from one read with :func:`parse_hot` (False:
    #: twisted.web's parser reads everything, as the tests compare).
    lean_parse = True

    def _parser_idle(self) -> bool:
        """twisted.web's parser is between requests, holding nothing: a request read
        here leaves it exactly as its own parse of the same bytes would."""
        return bool(
            self.line_mode
            and not self._buffer
            and not self._handlingRequest
            and not self.requests
            and self.persistent
            and self._HTTPChannel__first_line == 1  # type: ignore[attr-defined]
            and not self._HTTPChannel__header  # type: ignore[attr-defined]
            and self._transferDecoder is None
            and not getattr(self, "paused", False)
        )

    def _take(self, found: HotRequest, data: bytes) -> None:
        """Hand a request :func:`parse_hot` read to the request methods twisted.web's
        parser calls (``lineReceived``, ``headerReceived``, the body's decoder): the same
        request object, headers, length, body and state changes, without the per-line work."""
        self.resetTimeout()
        factory: Any = self.requestFactory
        if INonQueuedRequestFactory.providedBy(factory):
            request = factory(self)
        else:
            request = factory(self, len(self.requests))
        self.requests.append(request)
        self._command = found.method
        self._path = found.target  # type: ignore[assignment]  # (twisted's stubs say Request)
        self._version = b"HTTP/1.1"
        add = request.requestHeaders.addRawHeader
        for name, value in found.headers:
            add(name, value)
        self.length = found.length
        self.allHeadersReceived()
        if found.length:
            request.handleContentChunk(data[found.body_start : found.end])
        self.allContentReceived()

    def allHeadersReceived(self) -> None:
        """Headers are whole: a body, if one follows, gets its own time."""
        super().allHeadersReceived()
        if self._guard is not None:
            self._cancel()
        if self.length != 0:  # Content-Length > 0, or chunked (None)
            self._phase = _BODY

    def allContentReceived(self) -> None:
        """The request is whole: no more limits on it."""
        if self._phase != _HANDLING:
            self._phase = _HANDLING
            self.site.active_requests += 1  # answered later: a graceful stop waits for it
        if self._guard is not None:
            self._cancel()
        # (twisted.web's first act, if an idle timeout is set: the idle timer's pause)
        self._pausing_idle = bool(self.timeOut)
        super().allContentReceived()
        self._pausing_idle = False

    # The idle timeout (``TimeoutMixin``), paused while a request is handled without a
    # timer cancelled and another scheduled per request (issue 16, lean1): twisted.web
    # calls ``setTimeout(None)`` as a request is whole and ``setTimeout(period)`` when it
    # is answered.  The first leaves the pending call in place, marked paused (a call
    # that comes due then closes nothing); the second pushes the same call back by the
    # period, which the reactor does without touching its heap.  Any other
    # ``setTimeout(None)`` (a WebSocket taking the socket, the connection's end) cancels.
    _pausing_idle = False
    _idle_paused = False

    def setTimeout(self, period: float | None) -> float | None:
        """As ``TimeoutMixin.setTimeout``, with the pause described above."""
        if period is None and self._pausing_idle:
            self._pausing_idle = False
            prev: float | None = self.timeOut
            self.timeOut = None  # (resetTimeout does nothing while paused, as before)
            self._idle_paused = True
            return prev
        self._pausing_idle = False
        self._idle_paused = False
        return super().setTimeout(period)  # type: ignore[no-any-return]

    def timeoutConnection(self) -> None:
        """Close an idle connection; a paused timer that comes due closes nothing (it is
        scheduled anew when the request is answered)."""
        if self._idle_paused:
            return
        super().timeoutConnection()

    def requestDone(self, request: Any) -> None:
        """The answer is done: the next request's clock starts at its first byte."""
        if self._phase == _HANDLING:
            self.site.active_requests -= 1
        if self.persistent and self._phase != _CLOSED:
            self._phase = _IDLE
        super().requestDone(request)

    def connectionLost(self, reason: Any = None) -> None:
        """Release the timer and the connection's place."""
        if self._phase == _HANDLING:
            self.site.active_requests -= 1
        self._phase = _CLOSED
        self._cancel()
        if self._counted:
            self._counted = False
            self.site.open_connections -= 1
        super().connectionLost(reason)

    def _body_left(self) -> float:
        # Body bytes received so far (the bounded request counts them).
        received = getattr(self.requests[-1], "_received", 0) if self.requests else 0
        allowed = self.body_timeout + received / self.body_min_rate
        return self._body_start + allowed - self._seconds()

    def _expired(self) -> None:
        self._guard = None
        if self._phase == _BODY:
            left = self._body_left()
            if left > 0:
                self._arm(left)  # it kept up the minimum rate so far
                return
            why = (
                f"the request body did not arrive in time ({self.body_timeout:g} s plus its size "
                f"at {self.body_min_rate} bytes/s)"
            )
        elif self._phase == _HEADERS:
            why = f"the request line and headers did not arrive within {self.header_timeout:g} s"
        else:
            return
        self._phase = _CLOSED
        transport: Any = self.transport
        if transport is None or getattr(transport, "disconnecting", False):
            return
        if self.metrics is not None:
            self.metrics.rejected_requests.labels("timeout").inc()
        transport.write(_raw_error(b"408 Request Timeout", "request_timeout", why))
        # As timeoutConnection, without its log line per client (a flood of
        # slow clients would flood the log): close once written, abort if the
        # client does not read it in time.
        self.loseConnection()
        if self.abortTimeout is not None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)


class QuietSite(Site):
    """A Site without a per-request access log line (the hot path stays quiet;
    request counts and latencies are in /metrics)."""

    access_log = False
    #: Open connections at most (None: no cap); open now; refused past the cap.
    max_connections: int | None = None
    open_connections = 0
    refused_connections = 0
    #: Requests received whole and not answered yet (a graceful stop waits for them).
    active_requests = 0

    def buildProtocol(self, addr: Any) -> Any:
        """Connections send small frames (acks, SSE events) at once: no Nagle delay."""
        proto = super().buildProtocol(addr)
        if proto is None:
            return None
        make_connection = proto.makeConnection

        def with_nodelay(transport: Any) -> None:
            set_nodelay = getattr(transport, "setTcpNoDelay", None)
            if set_nodelay is not None:
                try:
                    set_nodelay(True)
                except OSError:
                    pass
            make_connection(transport)

        proto.makeConnection = with_nodelay
        return proto

    def log(self, request: Any) -> None:
        """Write an access-log line only when asked for."""
        if self.access_log:
            super().log(request)


def make_site(
    resource: Resource,
    *,
    max_body: int,
    metrics: NodeMetrics | None = None,
    timeout: float = 75.0,
    access_log: bool = False,
    header_timeout: float = 10.0,
    body_timeout: float = 10.0,
    body_min_rate: int = 64_000,
    max_connections: int | None = None,
    reactor: IReactorTime | None = None,
) -> Site:
    """A Site whose requests bound their bodies and the time they take to
    arrive (see the module docstring), and whose idle connections time out."""

    class _Request(BoundedRequest):
        pass

    _Request.max_body = max_body
    _Request.metrics = metrics

    class _Channel(GuardedChannel):
        pass

    _Channel.header_timeout = header_timeout
    _Channel.body_timeout = body_timeout
    _Channel.body_min_rate = max(1, body_min_rate)
    _Channel.metrics = metrics
    site = QuietSite(resource, requestFactory=_Request, timeout=timeout, reactor=reactor)
    # HTTP/1.1 only (no h2 here); the channel bounds request time and counts connections.
    site.protocol = _Channel  # type: ignore[method-assign,assignment]
    site.max_connections = max_connections
    site.access_log = access_log
    site.displayTracebacks = False
    site.noisy = False
    return site
