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
    """Keep-alive: the answer is handed to the socket within ``send_now`` (nothing held after
    it); with ``Connection: close`` the closing connection is left to the reactor, which
    delivers the answer and closes."""
    app = _Answer()
    site = make_site(app, max_body=1000)
    port = await serverFromString(the_reactor(), "tcp:0:interface=127.0.0.1").listen(site)
    try:
        end = TCP4ClientEndpoint(the_reactor(), "127.0.0.1", port.getHost().port)
        c = await bounded(end.connect(Factory.forProtocol(_Client)))
        c.transport.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        await until(lambda: c.got.endswith(b"hello"), "the answer")
        assert app.held[0][0] > 0 and app.held[0][1] == 0, app.held
        c.transport.write(b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await until(lambda: c.closed, "the connection to close")
        assert c.got.count(b"hello") == 2
        assert app.held[1][0] > 0 and app.held[1][1] == app.held[1][0], app.held  # left to the reactor
    finally:
        await port.stopListening()


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
