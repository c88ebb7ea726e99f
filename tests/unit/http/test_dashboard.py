"""The dashboard's server side in process: ``GET /v1/dashboard/stream`` over a real
loopback socket, its static files, and :class:`DashboardStream` with a fake request.

The node runs with a :class:`task.Clock` as the broker's and the API's clock, so
the stream's snapshots go out only when a test advances it.  The SSE client is a
raw HTTP/1.0 protocol (no chunked framing) that parses frames as they arrive;
every wait is on an event with a bound in real seconds; nothing sleeps.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.client import HTTPConnectionPool

from harness import bounded, inproc_sse, the_reactor
from sprawl.config import NodeConfig
from sprawl.http import dashboard
from sprawl.http.api import NodeInfo, SprawlAPI
from sprawl.http.server import make_site
from sprawl.metrics import NodeMetrics
from sprawl.pubsub import Broker
from sprawl.storage.lmdb import LmdbStore
from sprawl.testing import FakeRequest

T0 = 1_700_000_000.0
STREAM = "/v1/dashboard/stream"


class SSEClient(inproc_sse.SSEClient):
    """The harness's raw SSE client (the clients' parser), read as dashboard snapshots."""

    def snapshots(self) -> list[dict[str, Any]]:
        return [e["data"] for e in self.messages]

    def wait_snapshots(self, n: int) -> Deferred[None]:
        return self.when(lambda: len(self.snapshots()) >= n)


class Server:
    """A node serving its API on a real loopback port, on a task.Clock."""

    def __init__(self, tmp_path: Path):
        self.clock = task.Clock()
        self.clock.advance(T0)
        self.store = LmdbStore(str(tmp_path / "lmdb"), reactor=the_reactor(), map_size=1 << 30)
        self.store.open()
        self.metrics = NodeMetrics()
        config = NodeConfig(data_dir=str(tmp_path)).validate()
        self.broker = Broker(config, self.store, self.clock, "node-a", self.metrics)
        self.broker.recover()
        self.broker.start()
        self.info = NodeInfo("node-a", http="127.0.0.1:1", peer="127.0.0.1:2")
        self.info.ready = True
        self.api = SprawlAPI(self.broker, self.info, self.clock, self.metrics)
        self.site = make_site(self.api.resource(), max_body=config.max_body_bytes, metrics=self.metrics)
        self.port: Any = None
        self.clients: list[SSEClient] = []
        self.pool = HTTPConnectionPool(the_reactor(), persistent=False)

    async def listen(self) -> None:
        self.port = await serverFromString(the_reactor(), "tcp:0:interface=127.0.0.1").listen(self.site)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}"

    async def connect(self, path: str = STREAM) -> SSEClient:
        """Open the dashboard stream and wait for its first snapshot (or an error answer)."""
        c = SSEClient(path)
        self.clients.append(c)
        await bounded(
            connectProtocol(TCP4ClientEndpoint(the_reactor(), "127.0.0.1", self.port.getHost().port), c)
        )
        await c.when(lambda: bool(c.snapshots()) or (c.status not in (None, 200) and c.lost))
        return c

    async def request(self, method: str, path: str, **kw: Any) -> Any:
        r = await bounded(treq.request(method, self.url + path, pool=self.pool, **kw))
        r.body = await bounded(r.content())
        return r

    async def close(self) -> None:
        for c in self.clients:
            if not c.lost:
                c.transport.loseConnection()
        for c in self.clients:
            await bounded(c.closed)
        if self.port is not None:
            await bounded(self.port.stopListening())
        await bounded(self.pool.closeCachedConnections())
        await bounded(self.broker.stop())
        await bounded(self.store.close())


@pytest_twisted.async_yield_fixture
async def server(tmp_path: Path, logged_failures: list[dict[str, Any]]) -> AsyncIterator[Server]:
    """A node on a loopback port; closed afterwards, and nothing may have logged an error."""
    s = Server(tmp_path)
    await s.listen()
    try:
        yield s
    finally:
        await s.close()
    assert not logged_failures, [formatEvent(e) + str(e.get("log_failure", "")) for e in logged_failures]


async def publish(s: Server, topic: str, n: int) -> None:
    r = await s.request(
        "POST", f"/v1/topics/{topic}/messages", json={"messages": [{"payload": f"m{i}"} for i in range(n)]}
    )
    assert r.code == 200, r.body


# -- the stream -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_snapshot_shape(server: Server) -> None:
    """The first frame comes at once and describes members, Raft, topics with their
    partitions and tiers, the publish/deliver counters and the group lag."""
    r = await server.request("PUT", "/v1/topics/t1", json={"partitions": 2})
    assert r.code == 201, r.body
    r = await server.request("PUT", "/v1/topics/t1/groups/g1", json={"start": "earliest"})
    assert r.code == 201, r.body
    await publish(server, "t1", 5)
    r = await server.request("GET", "/v1/topics/t1/messages?from=earliest&partition=0")
    assert r.code == 200
    fetched = len(json.loads(r.body)["messages"])
    assert fetched > 0

    c = await server.connect()
    assert c.status == 200
    assert c.head is not None and "content-type: text/event-stream" in c.head.lower()
    assert "cache-control: no-cache" in c.head.lower()
    assert c.parser.retry == "2000"
    (snap,) = c.snapshots()
    assert snap["ts"] == T0
    assert snap["node_id"] == "node-a" and snap["ready"] is True and snap["reason"] == "ready"
    assert isinstance(snap["version"], str) and isinstance(snap["uptime_s"], float)
    cl = snap["cluster"]
    assert cl["leader"] == "node-a" and cl["term"] == 1 and cl["raft"]["role"] == "leader"
    assert [(m["id"], m["state"], m["http"]) for m in cl["members"]] == [("node-a", "alive", "127.0.0.1:1")]
    assert cl["drained"] == []  # a single node is never drained (the page badges the members listed)
    assert snap["topics_total"] == 1
    (t,) = snap["topics"]
    assert t["name"] == "t1" and t["messages"] == 5 and t["storage"] == "durable"
    assert t["published"] == 5 and t["delivered"] == fetched
    assert set(t["bytes"]) == {"memory", "lmdb", "s3"} and t["bytes"]["lmdb"] > 0
    assert [p["p"] for p in t["partitions"]] == [0, 1]
    assert sum(p["hw"] for p in t["partitions"]) == 5
    for p in t["partitions"]:
        assert set(p) == {"p", "leader", "replicas", "epoch", "low", "hw", "bytes"}
        assert p["leader"] == "node-a" and p["replicas"] == ["node-a"]
        assert set(p["bytes"]) == {"memory", "lmdb", "s3"}
    assert t["bytes"]["lmdb"] == sum(p["bytes"]["lmdb"] for p in t["partitions"])
    (g,) = t["groups"]
    assert g["name"] == "g1" and g["lag"] == 5 and g["in_flight"] == 0


@pytest_twisted.ensureDeferred
async def test_one_snapshot_per_interval_on_the_clock(server: Server) -> None:
    """Snapshots follow the injected clock: one per second, none in between, and
    each carries the counters as they are then."""
    c = await server.connect()
    (stream,) = server.api.dashboards
    assert stream.sent == 1 and c.snapshots()[0]["topics"] == []
    server.clock.advance(0.5)
    assert stream.sent == 1
    await publish(server, "busy", 3)
    server.clock.advance(0.5)
    assert stream.sent == 2
    await c.wait_snapshots(2)
    second = c.snapshots()[1]
    assert second["ts"] == T0 + 1.0
    assert [(t["name"], t["published"]) for t in second["topics"]] == [("busy", 3)]
    for _ in range(3):
        server.clock.advance(1.0)
    assert stream.sent == 5
    await c.wait_snapshots(5)
    assert [s["ts"] for s in c.snapshots()] == [T0 + i for i in range(5)]


@pytest_twisted.ensureDeferred
async def test_disconnect_stops_the_stream(server: Server) -> None:
    """When the client goes away the stream is forgotten and its timer stopped."""
    c = await server.connect()
    (stream,) = server.api.dashboards
    calls = len(server.clock.getDelayedCalls())
    c.transport.loseConnection()
    await bounded(c.closed)
    await bounded(stream.done)
    assert stream.closed and server.api.dashboards == set()
    assert len(server.clock.getDelayedCalls()) == calls - 1
    server.clock.advance(5.0)  # nothing left to tick: no write to a closed request
    assert stream.sent == 1


@pytest_twisted.ensureDeferred
async def test_stopping_node_ends_the_stream(server: Server) -> None:
    """A stopping node says so in an error frame and ends the stream;
    close_dashboards() does the same at once."""
    c1 = await server.connect()
    c2 = await server.connect()
    server.broker.stopping = True
    try:
        server.clock.advance(1.0)
        await bounded(c1.closed)
        await bounded(c2.closed)
    finally:
        server.broker.stopping = False
    for c in (c1, c2):
        assert c.events[-1]["event"] == "error" and c.events[-1]["data"]["code"] == "stopping"
    assert server.api.dashboards == set()
    c3 = await server.connect()
    server.api.close_dashboards()
    await bounded(c3.closed)
    assert c3.events[-1]["event"] == "error"


@pytest_twisted.ensureDeferred
async def test_too_many_dashboards_is_503(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dashboard, "MAX_STREAMS", 1)
    await server.connect()
    c = await server.connect()
    await bounded(c.closed)
    assert c.status == 503
    assert json.loads(c.body)["error"]["code"] == "too_many_dashboards"
    assert len(server.api.dashboards) == 1


# -- static files -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_index_links_versioned_assets_under_a_strict_csp(server: Server) -> None:
    r = await server.request("GET", "/")
    assert r.code == 200
    assert r.headers.getRawHeaders("content-type") == ["text/html; charset=utf-8"]
    csp = r.headers.getRawHeaders("content-security-policy")[0]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    html = r.body.decode()
    v = dashboard.asset_version()
    assert f'href="/static/dashboard.css?v={v}"' in html
    assert f'src="/static/dashboard.js?v={v}"' in html
    assert "__ASSET_VERSION__" not in html
    # Nothing from outside the node.
    assert "http://" not in html.split("<footer")[0] and "https://" not in html


@pytest_twisted.ensureDeferred
async def test_static_files_types_caching_and_allow_list(server: Server) -> None:
    for name, ctype in (
        ("dashboard.css", "text/css; charset=utf-8"),
        ("dashboard.js", "text/javascript; charset=utf-8"),
    ):
        r = await server.request("GET", f"/static/{name}?v=x")
        assert r.code == 200, name
        assert r.headers.getRawHeaders("content-type") == [ctype]
        assert r.headers.getRawHeaders("cache-control") == ["public, max-age=86400"]
        assert r.headers.getRawHeaders("x-content-type-options") == ["nosniff"]
        (tag,) = r.headers.getRawHeaders("etag")
        assert r.body == dashboard.static_bytes(name)
        again = await server.request("GET", f"/static/{name}", headers={"If-None-Match": tag})
        assert again.code == 304 and again.body == b""
    for bad in ("index.html", "dashboard.py", "..%2Fapi.py", "nope.js"):
        r = await server.request("GET", f"/static/{bad}")
        assert r.code == 404, bad
        assert json.loads(r.body)["error"]["code"] == "not_found"


def test_assets_escape_server_strings() -> None:
    """The script renders server data with textContent only: no innerHTML, no eval."""
    js = dashboard.static_bytes("dashboard.js").decode()
    for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert banned not in js, banned
    assert "http" not in dashboard.static_bytes("dashboard.css").decode()


# -- flow control, with a fake request -------------------------------------------------------------


def test_paused_stream_skips_snapshots_and_drops_a_stuck_client() -> None:
    clock = task.Clock()
    req = FakeRequest()
    registry: set[dashboard.DashboardStream] = set()
    n = iter(range(1000))
    s = dashboard.DashboardStream(
        req, clock, lambda: b'{"n":%d}' % next(n), registry=registry, slow_timeout=10.0
    )
    done = s.start()
    assert req.producer is s and registry == {s}
    assert req.written == [b": sprawl dashboard\nretry: 2000\n\n", b'data: {"n":0}\n\n']
    s.pauseProducing()
    clock.advance(5.0)
    assert s.sent == 1  # nothing queued while the socket is full
    s.resumeProducing()
    clock.advance(1.0)
    assert req.written[-1] == b'data: {"n":1}\n\n'  # the latest state, not a backlog
    s.pauseProducing()
    for _ in range(10):
        clock.advance(1.0)
    assert req.finished and s.closed and registry == set() and done.called
    assert req.producer is None
    assert clock.getDelayedCalls() == []


def test_stop_producing_and_cancel_close_the_stream() -> None:
    for how in ("stopProducing", "cancel"):
        clock = task.Clock()
        req = FakeRequest()
        registry: set[dashboard.DashboardStream] = set()
        s = dashboard.DashboardStream(req, clock, lambda: b"{}", registry=registry)
        d = s.start()
        d.addErrback(lambda f: None)
        if how == "stopProducing":
            s.stopProducing()
        else:
            d.cancel()  # what Klein does when the client disconnects
        assert s.closed and registry == set() and clock.getDelayedCalls() == []
        clock.advance(3.0)
        assert s.sent == 1


def test_a_failing_snapshot_is_logged_and_reported_not_fatal() -> None:
    clock = task.Clock()
    req = FakeRequest()

    def broken() -> bytes:
        raise RuntimeError("boom")

    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        s = dashboard.DashboardStream(req, clock, broken, registry=set())
        s.start()
        clock.advance(1.0)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert s.sent == 2 and not s.closed
    assert b'"code":"internal_error"' in req.written[-1]
    assert any("log_failure" in e for e in seen)
    s.close()
