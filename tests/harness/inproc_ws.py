"""autobahn's WebSocket client against an in-process node (:mod:`harness.inproc_sse`'s server):
:class:`WSClient`, :class:`WS` and the ``ws`` fixture."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import formatEvent

from harness import WAIT, bounded, the_reactor
from harness.inproc_sse import Server


class WSClient(WebSocketClientProtocol):
    """Collects frames; ``when(pred)`` waits (bounded) for a condition on them."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[dict[str, Any]] = []
        self.opened: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._waits: list[tuple[Callable[[], bool], Deferred[None]]] = []

    def onOpen(self) -> None:
        self.opened.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.frames.append(json.loads(payload))
        self._check()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_code, self.close_reason = code, reason
        waits, self._waits = self._waits, []
        for _p, d in waits:
            if not d.called:
                d.errback(AssertionError(f"closed first ({code} {reason}); frames: {self.frames[-3:]}"))
        if not self.opened.called:
            self.opened.errback(AssertionError(f"closed before open: {code} {reason}"))
        if not self.closed.called:
            self.closed.callback(None)

    def _check(self) -> None:
        for item in list(self._waits):
            pred, d = item
            if pred():
                self._waits.remove(item)
                d.callback(None)

    def when(self, pred: Callable[[], bool], timeout: float = WAIT) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waits.append((pred, d))
        self._check()
        return bounded(d, timeout)

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if "offset" in f]

    def offsets(self) -> list[int]:
        return [m["offset"] for m in self.messages]

    def wait_messages(self, n: int) -> Deferred[None]:
        return self.when(lambda: len(self.messages) >= n)

    def send(self, frame: Any) -> None:
        self.sendMessage(frame if isinstance(frame, bytes) else json.dumps(frame).encode())

    async def request(self, frame: dict[str, Any], ref: str) -> dict[str, Any]:
        """Send a frame with ``ref`` and wait for the answer carrying it."""
        self.send({**frame, "ref": ref})
        await self.when(lambda: any(f.get("ref") == ref for f in self.frames))
        return next(f for f in self.frames if f.get("ref") == ref)


class WS:
    """Opens autobahn clients to the server and closes them all afterwards."""

    def __init__(self, server: Server):
        self.server = server
        self.clients: list[WSClient] = []

    async def connect(self, path: str) -> WSClient:
        port = self.server.port.getHost().port
        factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}{path}")
        factory.protocol = WSClient
        factory.setProtocolOptions(closeHandshakeTimeout=2.0)
        c: WSClient = await bounded(TCP4ClientEndpoint(the_reactor(), "127.0.0.1", port).connect(factory))
        self.clients.append(c)
        await bounded(c.opened)
        return c

    async def close(self) -> None:
        for c in self.clients:
            if not c.closed.called:
                c.transport.resumeProducing()
                c.sendClose()
        for c in self.clients:
            await bounded(c.closed)


@pytest_twisted.async_yield_fixture
async def ws(tmp_path: Path, logged_failures: list[dict[str, Any]]) -> AsyncIterator[WS]:
    """A node on a loopback port plus a WebSocket client opener; everything closed afterwards, and
    nothing may have logged an error meanwhile."""
    s = Server(tmp_path)
    await s.listen()
    w = WS(s)
    try:
        yield w
    finally:
        await w.close()
        await s.close()
    assert not logged_failures, [formatEvent(e) + str(e.get("log_failure", "")) for e in logged_failures]
