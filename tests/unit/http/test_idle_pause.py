"""The HTTP channel's idle timeout paused while a request is handled without a timer
cancelled and another scheduled per request (sprawl/http/server.py, issue 16 lean1): the
timeout's behaviour is twisted.web's -- an idle kept-alive connection closes ``timeout``
seconds after its last answer, a request being handled is never cut -- and a request that
arrives whole schedules no timer at all."""

from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from sprawl.http.server import make_site

ADDR = IPv4Address("TCP", "127.0.0.1", 40001)
GET = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
HANG = b"GET /hang HTTP/1.1\r\nHost: a\r\n\r\n"


class _App(Resource):
    """``/hang`` is answered when the test says (a long-poll); anything else at once."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.hanging: list[Any] = []

    def render(self, request: Any) -> Any:
        if request.path == b"/hang":
            self.hanging.append(request)
            return NOT_DONE_YET
        return b"ok"


class _Clock(task.Clock):
    """A clock that counts the calls scheduled on it."""

    scheduled = 0

    def callLater(self, delay: float, fn: Any, *a: Any, **kw: Any) -> Any:
        self.scheduled += 1
        return super().callLater(delay, fn, *a, **kw)


def _open(timeout: float | None = 75.0) -> tuple[_Clock, _App, Any, StringTransport]:
    clock, app = _Clock(), _App()
    site = make_site(app, max_body=1000, reactor=clock, timeout=timeout)  # type: ignore[arg-type]
    proto = site.buildProtocol(ADDR)
    transport = StringTransport()
    proto.makeConnection(transport)
    return clock, app, proto, transport


def test_an_idle_connection_closes_its_timeout_after_the_last_answer() -> None:
    """Answered at t: open at t + 74.9 s, closed by t + 75.1 s -- after quick requests and after
    one handled for longer than the timeout (never cut while it was handled)."""
    clock, app, proto, transport = _open()
    proto.dataReceived(GET)
    clock.advance(50)
    proto.dataReceived(GET)  # answered at 50: the idle clock restarts there
    clock.advance(74.9)
    assert not transport.disconnecting
    proto.dataReceived(HANG)
    clock.advance(300)  # handled for 300 s: the timeout came due meanwhile and closed nothing
    assert not transport.disconnecting and len(app.hanging) == 1
    app.hanging[0].write(b"late")
    app.hanging[0].finish()
    clock.advance(74.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting
    assert transport.value().count(b"HTTP/1.1 200 OK") == 3


def test_a_whole_request_schedules_no_timer() -> None:
    """After the connection's first timers, requests that arrive whole schedule nothing (before,
    each cancelled the idle timer and scheduled a new one)."""
    clock, _app, proto, transport = _open()
    proto.dataReceived(GET)
    before = clock.scheduled
    for _ in range(20):
        proto.dataReceived(GET)
    assert clock.scheduled == before, clock.scheduled - before
    assert transport.value().count(b"HTTP/1.1 200 OK") == 21
    assert len([c for c in clock.getDelayedCalls() if c.active()]) == 1  # the one idle timer


def test_a_socket_taken_over_or_closed_cancels_the_timer() -> None:
    """``setTimeout(None)`` other than twisted.web's pause (a WebSocket taking the socket, the
    connection's end) cancels the idle timer: nothing is left on the clock."""
    clock, app, proto, _transport = _open()
    proto.dataReceived(HANG)
    proto.setTimeout(None)  # as SprawlWSResource does when it takes the socket over
    assert [c for c in clock.getDelayedCalls() if c.active()] == []
    app.hanging[0].finish()
    clock2, _app2, proto2, _t2 = _open()
    proto2.dataReceived(GET)
    proto2.connectionLost(None)
    assert [c for c in clock2.getDelayedCalls() if c.active()] == []


def test_without_an_idle_timeout_nothing_is_paused() -> None:
    """A site without an idle timeout: requests are answered and no timer is ever scheduled
    for idleness; a later ``setTimeout(None)`` is not mistaken for the pause."""
    clock, app, proto, transport = _open(timeout=None)
    proto.dataReceived(GET)
    proto.dataReceived(HANG)
    proto.setTimeout(None)
    assert not proto._idle_paused
    app.hanging[0].finish()
    clock.advance(1000)
    assert not transport.disconnecting and transport.value().count(b"HTTP/1.1 200 OK") == 2
