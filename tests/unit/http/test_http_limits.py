"""Connection-level limits of the HTTP server (issue 14, item 6): the time a
request may take to arrive, and the cap on open connections.

* :class:`GuardedChannel` driven byte by byte over a ``StringTransport`` with
  a ``task.Clock`` (exact: a byte a second, a slow body, a long request that
  must *not* be cut, keep-alive);
* the connection cap (``max_connections``) over ``StringTransport`` and, with a WebSocket that
  takes its socket over, on a real loopback port;
* a real ``twistd`` node with ``--header-timeout``, ``--body-timeout``,
  ``--body-min-rate`` and ``--max-connections``, over real sockets: a stalled
  request is answered 408 and closed, open SSE streams are not, and one
  connection past the cap is answered 503.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from harness import WAIT, bounded, the_reactor, until
from sprawl.http.server import make_site
from sprawl.metrics import NodeMetrics

ADDR = IPv4Address("TCP", "127.0.0.1", 40000)


class _App(Resource):
    """``/hang`` never answers (a long-poll or stream); anything else answers ``ok`` and the body size."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.hanging: list[Any] = []

    def render(self, request: Any) -> Any:
        if request.path == b"/hang":
            self.hanging.append(request)
            return NOT_DONE_YET
        return b"ok %d" % len(request.content.read())


class Conn:
    """One connection to a site over a StringTransport, on the site's clock."""

    def __init__(self, site: Any):
        self.proto = site.buildProtocol(ADDR)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    @property
    def out(self) -> bytes:
        return self.transport.value()

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)


@pytest.fixture
def guarded() -> tuple[task.Clock, Any, _App, NodeMetrics]:
    clock = task.Clock()
    app = _App()
    metrics = NodeMetrics()
    site = make_site(
        app,
        max_body=10**7,
        metrics=metrics,
        header_timeout=10,
        body_timeout=10,
        body_min_rate=1000,
        reactor=clock,
    )
    return clock, site, app, metrics


def timed_out(c: Conn) -> bool:
    return c.out.startswith(b"HTTP/1.1 408") and b'"request_timeout"' in c.out and c.closed


def test_headers_sent_a_byte_a_second_are_cut_at_the_header_timeout(guarded: Any) -> None:
    """Every byte resets the idle timeout, never the header deadline: 408 with the JSON error at
    10 s, and the connection closes."""
    clock, site, _app, metrics = guarded
    c = Conn(site)
    req = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 40 + b"\r\n\r\n"
    sent = 0
    for byte in req:
        if timed_out(c):
            break
        c.send(bytes([byte]))
        sent += 1
        clock.advance(1)
    assert timed_out(c), c.out
    assert sent == 10
    body = json.loads(c.out.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "request_timeout"
    assert metrics.rejected_requests.labels("timeout").value == 1


def test_a_silent_connection_is_cut_at_the_header_timeout(guarded: Any) -> None:
    """A connection that sends nothing gets the same deadline from its start (not the 75 s idle one)."""
    clock, site, _app, _m = guarded
    c = Conn(site)
    clock.advance(9.9)
    assert not c.closed
    clock.advance(0.2)
    assert timed_out(c)


def test_a_body_below_the_minimum_rate_is_cut(guarded: Any) -> None:
    """A body gets body_timeout plus its size at body_min_rate: ten bytes a second of a declared
    100 kB body is cut after ~10 s; the request is never handled."""
    clock, site, app, _m = guarded
    c = Conn(site)
    c.send(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(30):
        if timed_out(c):
            break
        c.send(b"b" * 10)
        clock.advance(1)
    assert timed_out(c)
    assert 10 <= clock.seconds() <= 12
    assert not app.hanging and b"ok" not in c.out


def test_a_chunked_body_below_the_minimum_rate_is_cut(guarded: Any) -> None:
    """The same for a chunked body (no length known in advance)."""
    clock, site, _app, _m = guarded
    c = Conn(site)
    c.send(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(30):
        if timed_out(c):
            break
        c.send(b"1\r\nb\r\n")
        clock.advance(1)
    assert timed_out(c)


def test_a_body_at_the_minimum_rate_is_not_cut(guarded: Any) -> None:
    """A 60 kB body at 1.5 kB/s takes 40 s -- longer than body_timeout, but its rate is above the
    minimum: it arrives whole and is answered."""
    clock, site, _app, _m = guarded
    c = Conn(site)
    c.send(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 60000\r\n\r\n")
    for _ in range(40):
        c.send(b"b" * 1500)
        clock.advance(1)
    assert c.out.startswith(b"HTTP/1.1 200") and c.out.endswith(b"ok 60000"), c.out
    assert not c.closed


def test_a_request_being_answered_is_never_cut_and_keep_alive_restarts_the_clock(guarded: Any) -> None:
    """Once a request is whole nothing here times it (long-polls, SSE, WebSockets run as long as
    they need); a kept-alive connection's next request is timed from its first byte."""
    clock, site, app, _m = guarded
    c = Conn(site)
    c.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert c.out.startswith(b"HTTP/1.1 200")
    clock.advance(60)  # idle between requests: only the 75 s idle timeout applies
    assert not c.closed
    c.send(b"GET /hang HTTP/1.1\r\nHost: a\r\n\r\n")
    assert len(app.hanging) == 1
    clock.advance(1000)
    assert not c.closed
    app.hanging[0].write(b"late")
    app.hanging[0].finish()
    n = len(c.out)
    c.send(b"GET /x HT")
    clock.advance(9)
    assert not c.closed
    clock.advance(1.1)
    assert c.closed and c.out[n:].startswith(b"HTTP/1.1 408"), c.out[n:]


def test_requests_under_way_are_counted_until_answered_or_dropped(guarded: Any) -> None:
    """``active_requests`` (what a graceful stop waits for) counts a request from
    the moment it is whole until it is answered or its connection drops; idle
    kept-alive connections and requests still arriving do not count."""
    _clock, site, app, _m = guarded
    a, b, c = Conn(site), Conn(site), Conn(site)
    a.send(b"GET /hang HTTP/1.1\r\nHost: a\r\n\r\n")
    b.send(b"GET /hang HTTP/1.1\r\nHost: a\r\n\r\n")
    c.send(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\na")  # body not whole yet
    assert site.active_requests == 2
    app.hanging[0].write(b"done")
    app.hanging[0].finish()
    assert site.active_requests == 1
    b.proto.connectionLost(Failure(ConnectionError("gone")))
    assert site.active_requests == 0
    c.send(b"bc")
    assert c.out.endswith(b"ok 3") and site.active_requests == 0
    a.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")  # the kept-alive connection's next request
    assert site.active_requests == 0
    a.proto.connectionLost(Failure(ConnectionError("gone")))
    assert site.active_requests == 0


def test_a_whole_request_in_one_read_arms_no_timer(guarded: Any) -> None:
    """The fast path: a request that arrives in one read leaves no guard timer behind."""
    _clock, site, _app, _m = guarded
    c = Conn(site)
    c.send(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
    assert c.out.endswith(b"ok 3")
    assert c.proto._guard is None


def test_connection_cap_answers_503_past_it_and_counts_closes(guarded: Any) -> None:
    """At most max_connections are open; the next is answered 503 too_many_connections with
    Retry-After and closed (and ignores what it is sent); when one closes there is room again."""
    _clock, site, _app, metrics = guarded
    site.max_connections = 2
    conns = [Conn(site) for _ in range(2)]
    assert site.open_connections == 2
    extra = Conn(site)
    assert extra.out.startswith(b"HTTP/1.1 503") and b"too_many_connections" in extra.out
    assert b"retry-after: 1" in extra.out and extra.closed
    extra.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert b"200" not in extra.out
    extra.proto.connectionLost(Failure(ConnectionError("gone")))
    assert site.open_connections == 2 and site.refused_connections == 1
    assert metrics.rejected_requests.labels("connections").value == 1
    conns[0].proto.connectionLost(Failure(ConnectionError("gone")))
    conns[0].proto.connectionLost(Failure(ConnectionError("twice")))  # counted once
    assert site.open_connections == 1
    c = Conn(site)
    c.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert c.out.startswith(b"HTTP/1.1 200")
    assert site.open_connections == 2


@pytest_twisted.ensureDeferred
async def test_a_websocket_that_takes_the_socket_over_still_frees_its_place(tmp_path: Path) -> None:
    """A WebSocket upgrade hands the socket from the HTTP channel to autobahn (the channel never
    hears it close); the socket keeps its place until it closes, then frees it."""
    from autobahn.twisted.websocket import WebSocketClientFactory
    from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString

    from harness.inproc_sse import Server
    from harness.inproc_ws import WSClient

    s = Server(tmp_path)
    site = s.site
    site.max_connections = 5
    port = await serverFromString(the_reactor(), "tcp:0:interface=127.0.0.1").listen(site)
    s.port = port
    try:
        await s.publish("w", ["m0"])
        await until(lambda: site.open_connections == 0, "the publish connection to close")
        factory = WebSocketClientFactory(f"ws://127.0.0.1:{port.getHost().port}/v1/topics/w/ws?from=earliest")
        factory.protocol = WSClient
        factory.setProtocolOptions(closeHandshakeTimeout=2.0)
        c = await bounded(
            TCP4ClientEndpoint(the_reactor(), "127.0.0.1", port.getHost().port).connect(factory)
        )
        await bounded(c.opened)
        await c.wait_messages(1)
        assert site.open_connections == 1
        c.sendClose()
        await bounded(c.closed)
        await until(lambda: site.open_connections == 0, "the websocket's place to be freed")
    finally:
        await s.close()


# -- a real node ----------------------------------------------------------------------------------


def _recv_until_closed(sock: socket.socket, deadline: float) -> bytes:
    """Read until the server closes the connection (bounded by ``deadline``, monotonic)."""
    out = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not chunk:
            return out
        out += chunk
    raise AssertionError(f"the server did not close the connection in time; got {out[:300]!r}")


def _still_open(sock: socket.socket) -> bool:
    """Whether the server has not closed ``sock`` (reads pending data, never blocks)."""
    sock.setblocking(False)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return False
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        sock.setblocking(True)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=WAIT)


def _sse(port: int, topic: str) -> socket.socket:
    """An open SSE stream (headers and preamble read)."""
    s = _connect(port)
    s.sendall(f"GET /v1/topics/{topic}/stream HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    got = b""
    while b"retry:" not in got:
        chunk = s.recv(4096)
        assert chunk, got
        got += chunk
    assert got.startswith(b"HTTP/1.1 200"), got
    return s


def _request(port: int, raw: bytes) -> bytes:
    """Send a whole request with Connection: close; the whole answer."""
    with _connect(port) as s:
        s.sendall(raw)
        return _recv_until_closed(s, time.monotonic() + WAIT)


@pytest.mark.integration
def test_real_node_cuts_stalled_requests_keeps_streams_and_caps_connections(sprawl_nodes: Any) -> None:
    """Against a real node over real sockets: a request whose headers stall, and one whose body
    stalls, are answered 408 and closed within the limits; SSE streams opened before are still
    open afterwards; with the cap reached one more connection is answered 503 and closed, and
    once a stream closes a new request is served."""
    node = sprawl_nodes(
        "--header-timeout", "1", "--body-timeout", "1", "--body-min-rate", "1000", "--max-connections", "4"
    )
    port = node.http_port
    created = _request(
        port,
        b"PUT /v1/topics/lim HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    )
    assert created.startswith(b"HTTP/1.1 201"), created
    streams = [_sse(port, "lim") for _ in range(3)]
    try:
        # Headers that never end.
        t0 = time.monotonic()
        with _connect(port) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            got = _recv_until_closed(s, t0 + WAIT)
        assert got.startswith(b"HTTP/1.1 408") and b"request_timeout" in got, got
        assert time.monotonic() - t0 >= 0.9
        # A body that stalls after 10 of 100 000 bytes.
        t0 = time.monotonic()
        with _connect(port) as s:
            s.sendall(
                b"POST /v1/topics/lim/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
                + b"b" * 10
            )
            got = _recv_until_closed(s, t0 + WAIT)
        assert got.startswith(b"HTTP/1.1 408") and b"request_timeout" in got, got
        # The streams were not cut by any of it.
        assert all(_still_open(s) for s in streams)
        # The cap: three streams + one more = 4 open; the fifth is refused.
        streams.append(_sse(port, "lim"))
        with _connect(port) as s:
            got = _recv_until_closed(s, time.monotonic() + WAIT)
        assert got.startswith(b"HTTP/1.1 503") and b"too_many_connections" in got, got
        streams.pop().close()

        def served() -> bool:
            try:
                return _request(
                    port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                ).startswith(b"HTTP/1.1 200")
            except OSError:
                return False

        from harness import poll_until

        assert poll_until(served, WAIT) is not None, "no room after a stream closed"
        metrics = _request(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert b'sprawl_rejected_requests_total{reason="timeout"} 2.0' in metrics
        assert b'sprawl_rejected_requests_total{reason="connections"}' in metrics
    finally:
        for s in streams:
            s.close()
    assert "Unhandled Error" not in node.log_text()
