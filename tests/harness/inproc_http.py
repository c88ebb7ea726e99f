"""The HTTP API in process through ``treq.testing.StubTreq``: :class:`Node`, :class:`Http` and the
``node`` and ``nodes`` fixtures the HTTP-level tests share (see tests/unit/http/test_http_api.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest_twisted
from treq.testing import StubTreq
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.logger import formatEvent
from twisted.web.resource import Resource

from harness import WAIT, bounded, the_reactor
from sprawl.config import NodeConfig
from sprawl.http.api import NodeInfo, SprawlAPI
from sprawl.metrics import NodeMetrics
from sprawl.pubsub import Broker
from sprawl.storage.lmdb import LmdbStore

BASE = "http://sprawl.test"
T0 = 1_700_000_000.0  # the task.Clock's start, so timestamps look like real epoch milliseconds


class _Recorder(Resource):
    """A leaf wrapper that remembers every server-side request before rendering it."""

    isLeaf = True

    def __init__(self, inner: Any):
        super().__init__()
        self.inner = inner
        self.requests: list[Any] = []

    def render(self, request: Any) -> Any:
        self.requests.append(request)
        return self.inner.render(request)


class Reply:
    """A finished response: status, headers and body."""

    def __init__(self, code: int, headers: Any, body: bytes):
        self.code = code
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        """One response header (first value)."""
        v = self.headers.getRawHeaders(name)
        return v[0] if v else None

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Reply({self.code}, {self.body[:300]!r})"


class Pending:
    """A request the server has received; :meth:`result` waits for its answer."""

    def __init__(self, http: Http, server_request: Any, response: Deferred[Any]):
        self.http = http
        self.server_request = server_request
        self.response = response

    @property
    def finished(self) -> bool:
        """Whether the server has finished answering."""
        return bool(self.server_request.finished)

    async def result(self, timeout: float = WAIT) -> Reply:
        """Wait (bounded, real time) for the server to finish, then collect the reply."""
        if not self.server_request.finished:
            await bounded(self.server_request.notifyFinish(), timeout)
        self.http.stub.flush()
        resp = await bounded(self.response, timeout)
        body_d = resp.content()
        self.http.stub.flush()
        body = await bounded(body_d, timeout)
        return Reply(resp.code, resp.headers, body)


class Http:
    """An in-process HTTP client of one API resource."""

    def __init__(self, resource: Any):
        self.recorder = _Recorder(resource)
        self.stub = StubTreq(self.recorder)

    def start(self, method: str, path: str, **kw: Any) -> Pending:
        """Send a request; the server has received and started it when this returns."""
        n = len(self.recorder.requests)
        d = self.stub.request(method, BASE + path, **kw)
        assert len(self.recorder.requests) == n + 1, "the request did not reach the server"
        return Pending(self, self.recorder.requests[n], d)

    async def call(self, method: str, path: str, **kw: Any) -> Reply:
        """Send a request and wait for its answer."""
        return await self.start(method, path, **kw).result()

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> Reply:
        return await self.call("POST", path, **kw)

    async def put(self, path: str, **kw: Any) -> Reply:
        return await self.call("PUT", path, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.call("DELETE", path, **kw)


class Node:
    """A broker on a real LMDB store with a task.Clock, and its API."""

    def __init__(self, tmp_path: Path, **config: Any):
        self.clock = task.Clock()
        self.clock.advance(T0)
        self.config = NodeConfig(data_dir=str(tmp_path), **config).validate()
        # (the write-ahead log as the node's config says: on by default, as a real node's;
        # segments of 1 MiB, not 8: each node's first is zero-filled and fsynced at its start)
        lmdb = str(tmp_path / "lmdb")
        self.store = LmdbStore(
            lmdb, reactor=the_reactor(), map_size=1 << 30, wal=self.config.wal, wal_segment_bytes=1 << 20
        )
        self.store.open()
        self.metrics = NodeMetrics()
        self.broker = Broker(self.config, self.store, self.clock, "node-a", self.metrics)
        self.broker.recover()
        self.broker.start()
        self.info = NodeInfo("node-a", http="http://127.0.0.1:8080", peer="127.0.0.1:7946")
        self.info.ready = True
        self.api = SprawlAPI(self.broker, self.info, self.clock, self.metrics)
        self.metrics.watch_state(self.broker, self.api.streams)
        self.http = Http(self.api.resource())

    async def close(self) -> None:
        await bounded(self.broker.stop())
        await bounded(self.store.close())

    async def publish(self, topic: str, messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        """POST a JSON batch; assert 200; the answer."""
        r = await self.http.post(f"/v1/topics/{topic}/messages", json={"messages": messages, **extra})
        assert r.code == 200, r
        return r.json()

    async def fetch(self, topic: str, **params: Any) -> dict[str, Any]:
        """GET messages; assert 200; the answer."""
        r = await self.http.get(f"/v1/topics/{topic}/messages", params=params)
        assert r.code == 200, r
        return r.json()

    async def create(self, topic: str, **body: Any) -> dict[str, Any]:
        r = await self.http.put(f"/v1/topics/{topic}", json=body)
        assert r.code == 201, r
        return r.json()


@pytest_twisted.async_yield_fixture
async def node(tmp_path: Path, logged_failures: list[dict[str, Any]]) -> AsyncIterator[Node]:
    """A fresh in-process node; its broker and store are stopped afterwards, and nothing may
    have logged an error (an unexpected 500 logs one) meanwhile."""
    n = Node(tmp_path)
    try:
        yield n
    finally:
        await n.close()
    assert not logged_failures, [formatEvent(e) + str(e.get("log_failure", "")) for e in logged_failures]


@pytest_twisted.async_yield_fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Callable[..., Node]]:
    """A factory of in-process nodes with the given options (``NodeConfig`` fields), each in
    its own directory; every one is closed afterwards."""
    opened: list[Node] = []

    def make(**config: Any) -> Node:
        n = Node(tmp_path / str(len(opened)), **config)
        opened.append(n)
        return n

    yield make
    for n in opened:
        await n.close()


def assert_error(r: Reply, status: int, code: str) -> None:
    """The response is the documented error shape with this status and code."""
    assert r.code == status, r
    body = r.json()
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def payloads(answer: dict[str, Any]) -> list[str]:
    return [m.get("payload", m.get("payload_b64")) for m in answer["messages"]]
