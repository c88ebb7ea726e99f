"""``send_now`` (sprawl/http/server.py): an answer written by the hot routes, or an SSE event,
leaves its connection in the turn it is written instead of at the reactor's next poll --
and a connection that is closing is left to the reactor, which still delivers and closes it."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from harness import bounded, the_reactor, until
from sprawl.http.server import make_site, send_now


def _held(transport: Any) -> int:
    """Bytes the transport holds, not yet given to the socket."""
    return int(transport._tempDataLen) + len(transport.dataBuffer) - int(transport.offset)


class _Answer(Resource):
    """Answers ``hello`` and records the bytes held before and after ``send_now``."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[int, int]] = []

    def render(self, request: Any) -> Any:
        transport = request.channel.transport
        request.setHeader(b"content-length", b"5")
        request.write(b"hello")
        request.finish()
        before = _held(transport)
        send_now(transport)
        self.held.append((before, _held(transport)))
        return NOT_DONE_YET


class _Client(Protocol):
    def __init__(self) -> None:
        self.got = b""
        self.closed = False

    def dataReceived(self, data: bytes) -> None:
        self.got += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True


@pytest_twisted.ensureDeferred
async def test_an_answer_leaves_in_the_turn_it_is_written() -> None:
    """Keep-alive or ``Connection: close``: the answer (headers and body together) is handed
    to the socket by the write itself (:func:`send_first`: nothing is held in the transport
    before ``send_now`` even runs), and the closing connection still delivers and closes."""
    app = _Answer()
    site = make_site(app, max_body=1000)
    port = await serverFromString(the_reactor(), "tcp:0:interface=127.0.0.1").listen(site)
    try:
        end = TCP4ClientEndpoint(the_reactor(), "127.0.0.1", port.getHost().port)
        c = await bounded(end.connect(Factory.forProtocol(_Client)))
        c.transport.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        await until(lambda: c.got.endswith(b"hello"), "the answer")
        assert app.held[0] == (0, 0), app.held
        c.transport.write(b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await until(lambda: c.closed, "the connection to close")
        assert c.got.count(b"HTTP/1.1 200 OK\r\n") == 2 and c.got.count(b"hello") == 2
        assert app.held[1] == (0, 0), app.held
    finally:
        await port.stopListening()


class _Shapes(Resource):
    """Answers of every shape the channel's held headers must survive: ``/empty`` (204, no
    body), ``/head-first`` (headers written alone, the body a turn later), ``/big`` (a body
    larger than a socket takes at once), ``/queued`` (a body written behind bytes the transport
    already holds)."""

    isLeaf = True
    big = bytes(range(256)) * 16_384  # 4 MiB

    def render(self, request: Any) -> Any:
        path = request.path
        if path == b"/empty":
            request.setResponseCode(204)
            request.finish()
        elif path == b"/head-first":
            request.setHeader(b"content-length", b"4")
            request.write(b"")  # the headers leave now; the body follows later
            self.pending = request
        elif path == b"/big":
            request.setHeader(b"content-length", b"%d" % len(self.big))
            request.write(self.big)
            request.finish()
        elif path == b"/queued":
            request.setHeader(b"content-length", b"9")
            request.write(b"abc")  # sent at once
            request.channel.transport.write(b"def")  # held by the transport until it polls
            request.write(b"ghi")  # so this one must queue behind it, not overtake it
            request.finish()
        return NOT_DONE_YET


@pytest_twisted.ensureDeferred
async def test_held_headers_leave_with_every_answer_shape() -> None:
    """An answer without a body, headers written alone, a body the socket takes in parts,
    and HEAD: every byte arrives, in order, each answer whole."""
    app = _Shapes()
    site = make_site(app, max_body=1000)
    port = await serverFromString(the_reactor(), "tcp:0:interface=127.0.0.1").listen(site)
    try:
        end = TCP4ClientEndpoint(the_reactor(), "127.0.0.1", port.getHost().port)
        c = await bounded(end.connect(Factory.forProtocol(_Client)))
        c.transport.write(b"GET /empty HTTP/1.1\r\nHost: x\r\n\r\n")
        await until(lambda: c.got.endswith(b"\r\n\r\n"), "the 204's headers")
        assert c.got.startswith(b"HTTP/1.1 204 No Content\r\n"), c.got
        c.got = b""
        c.transport.write(b"GET /head-first HTTP/1.1\r\nHost: x\r\n\r\n")
        await until(lambda: c.got.endswith(b"\r\n\r\n"), "the headers written alone")
        assert c.got.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 4" in c.got, c.got
        app.pending.write(b"body")
        app.pending.finish()
        await until(lambda: c.got.endswith(b"\r\n\r\nbody"), "the later body")
        c.got = b""
        c.transport.write(b"HEAD /big HTTP/1.1\r\nHost: x\r\n\r\n")
        await until(lambda: c.got.endswith(b"\r\n\r\n"), "the HEAD answer")
        assert c.got.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 4194304" in c.got
        c.got = b""
        c.transport.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        await until(lambda: len(c.got) >= len(app.big) and c.got.endswith(app.big[-64:]), "the big body")
        head, _, body = c.got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and body == app.big
        c.got = b""
        c.transport.write(b"GET /queued HTTP/1.1\r\nHost: x\r\n\r\n")
        await until(lambda: c.got.endswith(b"\r\n\r\nabcdefghi"), "the queued body")
        assert c.got.count(b"HTTP/1.1 200 OK") == 1
    finally:
        await port.stopListening()


def test_send_first_leaves_unusual_transports_and_states_alone() -> None:
    """``send_first`` sends nothing (0: the caller uses the transport) for a test transport,
    text, or a plain TCP connection that is closing, paused or holds bytes already."""
    from twisted.internet import tcp
    from twisted.internet.testing import StringTransport

    from sprawl.http.server import send_first

    assert send_first(StringTransport(), b"x") == 0

    class _Sock:
        def __init__(self) -> None:
            self.sent: list[bytes] = []

        def send(self, data: bytes) -> int:
            self.sent.append(data)
            return len(data)

    def server(**state: Any) -> Any:
        t = tcp.Server.__new__(tcp.Server)
        t.TLS = False
        t.connected = True
        t.disconnecting = False
        t._writeDisconnecting = False
        t.producerPaused = False
        t._tempDataLen = 0
        t.dataBuffer = b""
        t.offset = 0
        t.socket = _Sock()
        for k, v in state.items():
            setattr(t, k, v)
        return t

    assert send_first(server(), b"abc") == 3
    assert send_first(server(), "abc") == 0  # type: ignore[arg-type]
    for state in (
        {"TLS": True},
        {"connected": False},
        {"disconnecting": True},
        {"_writeDisconnecting": True},
        {"producerPaused": True},
        {"_tempDataLen": 1},
        {"dataBuffer": b"ab", "offset": 1},
    ):
        t = server(**state)
        assert send_first(t, b"abc") == 0, state
        assert t.socket.sent == [], state

    class _Full(_Sock):
        def send(self, data: bytes) -> int:
            raise BlockingIOError()

    assert send_first(server(socket=_Full()), b"abc") == 0


def test_send_now_leaves_other_transports_alone() -> None:
    """Not a plain TCP connection (a test transport, TLS): nothing is touched."""
    from twisted.internet.testing import StringTransport

    t = StringTransport()
    t.write(b"x")
    send_now(t)
    assert t.value() == b"x"


@pytest_twisted.ensureDeferred
async def test_an_sse_event_leaves_in_the_turn_it_is_written(tmp_path: Any, monkeypatch: Any) -> None:
    """A stream's event is handed to the socket as it is written: after each ``send_now``
    of the stream's request its connection holds nothing."""
    from harness.inproc_sse import Server
    from sprawl.http.server import BoundedRequest

    held: list[int] = []
    plain = BoundedRequest.send_now

    def recorded(self: Any) -> None:
        transport = self.channel.transport
        plain(self)
        held.append(_held(transport))

    monkeypatch.setattr(BoundedRequest, "send_now", recorded)
    s = Server(tmp_path)
    await s.listen()
    try:
        await s.publish("e", ["m0"])
        c = await s.connect("/v1/topics/e/stream?from=earliest")
        await c.wait_messages(1)
        await s.publish("e", ["m1"])
        await c.wait_messages(2)
        assert len(held) >= 2 and held == [0] * len(held), held
        await c.disconnect()
    finally:
        await s.close()
