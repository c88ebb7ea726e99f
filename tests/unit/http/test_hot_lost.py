"""The hot routes watch their client's connection without a Deferred per request (issue 16,
lat40): the node's requests (:class:`sprawl.http.server.BoundedRequest`) tell the answer of a
lost connection through ``on_lost``, ahead of the handler's own watchers, instead of a
``notifyFinish`` Deferred made, chained and fired for every publish.  A real loopback
server (:mod:`harness.inproc_sse`); every wait bounded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from harness import bounded, the_reactor
from harness.inproc_sse import Server
from harness.inproc_sse import server as server  # (the fixture)
from sprawl.http.server import BoundedRequest


async def until(pred: Callable[[], bool], what: str) -> None:
    """Wait (at most ~10 s of 10 ms steps) for ``pred``: a condition on the real reactor."""
    for _ in range(1000):
        if pred():
            return
        await task.deferLater(the_reactor(), 0.01, lambda: None)
    raise AssertionError(f"never: {what}")


@pytest_twisted.ensureDeferred
async def test_hot_answers_watch_the_connection_without_a_deferred_each(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten publishes over real HTTP, each answered: no ``notifyFinish`` Deferred made for any
    of them (one each before)."""
    made: list[int] = []
    real = BoundedRequest.notifyFinish

    def counting(self: Any) -> Any:
        made.append(1)
        return real(self)

    monkeypatch.setattr(BoundedRequest, "notifyFinish", counting)
    for i in range(10):
        assert (await server.publish("hl", [f"m{i}"]))["offsets"] == [i]
    assert made == []


class _LongPoll(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(
            b"GET /v1/topics/lp/messages?wait_ms=30000&from=latest HTTP/1.1\r\nHost: x\r\n\r\n"
        )


@pytest_twisted.ensureDeferred
async def test_a_long_poll_whose_client_leaves_over_tcp_stops_waiting(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long-poll on the node's own requests whose client closes its socket: the fetch is
    cancelled (the partition is no longer watched), the lost request is never finished
    (twisted.web raises on that), and the node then answers as before."""
    finished_lost: list[int] = []
    real = BoundedRequest.finish

    def finish(self: Any) -> Any:
        if self._disconnected:
            finished_lost.append(1)
        return real(self)

    monkeypatch.setattr(BoundedRequest, "finish", finish)
    await server.publish("lp", ["first"])
    client = await bounded(
        connectProtocol(
            TCP4ClientEndpoint(the_reactor(), "127.0.0.1", server.port.getHost().port), _LongPoll()
        )
    )
    await until(lambda: server.broker.watchers.count("lp", 0) == 1, "the long-poll waits")
    client.transport.loseConnection()
    await until(lambda: server.broker.watchers.count("lp", 0) == 0, "the long-poll stopped waiting")
    assert (await server.publish("lp", ["second"]))["offsets"] == [1]
    assert finished_lost == []
