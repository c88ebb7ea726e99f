"""An in-process node serving the API on a loopback port, and a raw SSE client that can stop reading
(to play a slow consumer): the shared fixtures of the stream, WebSocket and HTTP tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.protocol import Protocol
from twisted.logger import formatEvent
from twisted.web.client import HTTPConnectionPool

from harness import WAIT, bounded, the_reactor
from sprawl.client.sse import SseParser
from sprawl.config import NodeConfig
from sprawl.http.api import NodeInfo, SprawlAPI
from sprawl.http.server import make_site
from sprawl.metrics import NodeMetrics
from sprawl.pubsub import Broker
from sprawl.storage.lmdb import LmdbStore

T0 = 1_700_000_000.0


class SSEClient(Protocol):
    """A raw HTTP/1.0 SSE client that parses frames as they arrive (with the clients'
    parser, :class:`sprawl.client.sse.SseParser`, keeping the comments)."""

    def __init__(self, path: str, headers: dict[str, str] | None = None):
        self.path = path
        self.extra = headers or {}
        self.buf = b""
        self.head: str | None = None
        self.status: int | None = None
        self.events: list[dict[str, Any]] = []
        self.parser = SseParser(keep_comments=True)
        assert self.parser.comments is not None
        #: The stream's comment lines so far (the parser's own list).
        self.comments: list[str] = self.parser.comments
        self.body = b""
        self.lost = False
        self.stream: Any = None  # the server's SSEStream, once known
        self.closed: Deferred[None] = Deferred()
        self._waits: list[tuple[Callable[[], bool], Deferred[None]]] = []

    def connectionMade(self) -> None:
        lines = [f"GET {self.path} HTTP/1.0", "Host: 127.0.0.1", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in self.extra.items()]
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        if self.head is None:
            if b"\r\n\r\n" not in self.buf:
                return
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            self.head = head.decode("latin-1")
            self.status = int(self.head.split()[1])
        if self.status != 200:
            self.body += self.buf
            self.buf = b""
            return
        for e in self.parser.feed(self.buf):
            self.events.append({"event": e.event, "id": e.id, "data": json.loads(e.data)})
        self.buf = b""
        self._check()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True
        self._check()
        waits, self._waits = self._waits, []
        for _pred, d in waits:
            if not d.called:
                d.errback(AssertionError(f"connection lost first; events so far: {self.events[-3:]}"))
        self.closed.callback(None)

    def _check(self) -> None:
        for item in list(self._waits):
            pred, d = item
            if pred():
                self._waits.remove(item)
                if not d.called:
                    d.callback(None)

    def when(self, pred: Callable[[], bool], timeout: float = WAIT) -> Deferred[None]:
        """Fires once ``pred()`` holds after some frame arrived (bounded)."""
        d: Deferred[None] = Deferred()
        self._waits.append((pred, d))
        self._check()
        return bounded(d, timeout)

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Message events (not error events)."""
        return [e for e in self.events if e["event"] == "message"]

    def offsets(self) -> list[int]:
        return [e["data"]["offset"] for e in self.messages]

    def hello(self) -> Deferred[None]:
        """Fires when the stream's opening comment arrived: the server is watching."""
        return self.when(lambda: bool(self.comments) or self.status not in (None, 200))

    def wait_messages(self, n: int) -> Deferred[None]:
        return self.when(lambda: len(self.messages) >= n)

    def wait_event(self, kind: str) -> Deferred[None]:
        return self.when(lambda: any(e["event"] == kind for e in self.events))

    async def disconnect(self) -> None:
        if not self.lost:
            self.transport.loseConnection()
        await bounded(self.closed)


class Server:
    """A node serving its API on a real loopback port."""

    def __init__(self, tmp_path: Path):
        self.clock = task.Clock()
        self.clock.advance(T0)
        config = NodeConfig(data_dir=str(tmp_path)).validate()
        # (the write-ahead log as the node's config says: on by default, as a real node's;
        # segments of 1 MiB, not 8: each node's first is zero-filled and fsynced at its start)
        lmdb = str(tmp_path / "lmdb")
        self.store = LmdbStore(
            lmdb, reactor=the_reactor(), map_size=1 << 30, wal=config.wal, wal_segment_bytes=1 << 20
        )
        self.store.open()
        self.metrics = NodeMetrics()
        self.broker = Broker(config, self.store, self.clock, "node-a", self.metrics)
        self.broker.recover()
        self.broker.start()
        self.info = NodeInfo("node-a")
        self.info.ready = True
        self.api = SprawlAPI(self.broker, self.info, self.clock, self.metrics)
        self.metrics.watch_state(self.broker, self.api.streams)
        self.site = make_site(self.api.resource(), max_body=config.max_body_bytes, metrics=self.metrics)
        self.port: Any = None
        self.clients: list[SSEClient] = []
        self.pool = HTTPConnectionPool(the_reactor(), persistent=False)

    async def listen(self) -> None:
        self.port = await serverFromString(the_reactor(), "tcp:0:interface=127.0.0.1").listen(self.site)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}"

    async def connect(
        self,
        path: str,
        headers: dict[str, str] | None = None,
        hello: bool = True,
        client: type[SSEClient] | None = None,
    ) -> SSEClient:
        """Open an SSE connection (or one of ``client``, a subclass reading another stream
        format); by default wait until the server is streaming."""
        c = (client or SSEClient)(path, headers)
        self.clients.append(c)
        before = set(self.api.streams.streams)
        await bounded(
            connectProtocol(TCP4ClientEndpoint(the_reactor(), "127.0.0.1", self.port.getHost().port), c)
        )
        if hello:
            await c.hello()
            assert c.status == 200, (c.head, c.body)
            (c.stream,) = set(self.api.streams.streams) - before
        return c

    async def publish(self, topic: str, payloads: list[str]) -> dict[str, Any]:
        """POST a batch over HTTP (acked once fsynced); the answer."""
        r = await bounded(
            treq.post(
                f"{self.url}/v1/topics/{topic}/messages",
                json={"messages": [{"payload": p} for p in payloads]},
                pool=self.pool,
            )
        )
        body = await bounded(r.json())
        assert r.code == 200, body
        return body

    async def request(self, method: str, path: str, **kw: Any) -> tuple[int, bytes]:
        r = await bounded(treq.request(method, self.url + path, pool=self.pool, **kw))
        return r.code, await bounded(r.content())

    async def close(self) -> None:
        for c in self.clients:
            if not c.lost:
                c.transport.resumeProducing()
                c.transport.loseConnection()
        self.api.streams.close_all()
        for c in self.clients:
            await bounded(c.closed)
        if self.port is not None:
            await bounded(self.port.stopListening())
        await bounded(self.pool.closeCachedConnections())
        await bounded(self.broker.stop())
        await bounded(self.store.close())


@pytest_twisted.async_yield_fixture
async def server(tmp_path: Path, logged_failures: list[dict[str, Any]]) -> AsyncIterator[Server]:
    """A node on a loopback port; every client and the node are closed afterwards, and nothing
    may have logged an error meanwhile."""
    s = Server(tmp_path)
    await s.listen()
    try:
        yield s
    finally:
        await s.close()
    assert not logged_failures, [formatEvent(e) + str(e.get("log_failure", "")) for e in logged_failures]
