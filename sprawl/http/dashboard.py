"""The dashboard: its static files and its live feed.

``GET /`` serves ``static/index.html``; ``GET /static/<name>`` serves the
stylesheet and script from a fixed allow-list.  ``GET /v1/dashboard/stream``
is a ``text/event-stream`` that sends a compact JSON snapshot of the node
(cluster members, Raft, topics with per-partition figures, publish and deliver
counters, consumer-group lag) every ``interval`` seconds on the injected clock.
Rates are computed by the browser from the counters of consecutive snapshots,
so the server keeps no history.

A :class:`DashboardStream` is an ``IPushProducer`` on its request: while the
client's socket is full it skips snapshots (each one supersedes the last, so
nothing queues up), and a client paused for ``slow_timeout`` is disconnected.
It stops on disconnect (Klein cancels the request's Deferred), when the node
is stopping, and on :meth:`DashboardStream.close`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import msgspec
from prometheus_client.registry import Collector
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.server import Request
from zope.interface import implementer

from sprawl import __version__
from sprawl.http.status import NodeStatus
from sprawl.interfaces import Clock, TrafficView
from sprawl.metrics import NodeMetrics
from sprawl.pubsub.memory_report import memory_status

log = Logger()

#: Seconds between two snapshots.
INTERVAL = 1.0
#: Open dashboard streams a node serves at once (each costs a snapshot a second).
MAX_STREAMS = 32
#: Topics a snapshot describes (sorted by name); ``topics_total`` says how many exist.
MAX_TOPICS = 500

#: Anomaly events a snapshot lists (newest first).
MAX_ANOMALIES = 20

#: The static files the node serves: name -> content type.
STATIC_FILES: dict[str, bytes] = {
    "dashboard.css": b"text/css; charset=utf-8",
    "dashboard.js": b"text/javascript; charset=utf-8",
}

#: Nothing the page loads may come from anywhere but this node.
CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    b"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_encode = msgspec.json.Encoder().encode


def static_bytes(name: str) -> bytes:
    """The packaged file ``sprawl/http/static/<name>``."""
    return resources.files("sprawl.http").joinpath("static").joinpath(name).read_bytes()


def etag(data: bytes) -> bytes:
    """A strong validator for ``data``."""
    return b'"' + hashlib.sha256(data).hexdigest()[:20].encode() + b'"'


def asset_version() -> str:
    """A short hash of the stylesheet and script: the cache-busting ``?v=`` of index.html."""
    h = hashlib.sha256()
    for name in sorted(STATIC_FILES):
        h.update(static_bytes(name))
    return h.hexdigest()[:12]


def index_html() -> bytes:
    """index.html with its asset links pinned to the current files' version."""
    return static_bytes("index.html").replace(b"__ASSET_VERSION__", asset_version().encode())


def counter_by_topic(counter: Collector) -> dict[str, float]:
    """Sum a counter with a ``topic`` label over its other labels."""
    out: dict[str, float] = {}
    for family in counter.collect():
        for s in family.samples:
            if not s.name.endswith("_total"):
                continue
            topic = s.labels.get("topic")
            if topic is not None:
                out[topic] = out.get(topic, 0.0) + s.value
    return out


def snapshot(
    status: NodeStatus, metrics: NodeMetrics | None, clock: Clock, traffic: TrafficView | None = None
) -> dict[str, Any]:
    """The dashboard's view of the node ``status`` describes (with each
    topic's ``forecast`` band and the latest ``anomalies`` when ``traffic``
    forecasts run)."""
    broker = status.broker
    info = status.info
    published = counter_by_topic(metrics.published_messages) if metrics is not None else None
    delivered = counter_by_topic(metrics.delivered_messages) if metrics is not None else None
    cluster = status.cluster()
    ready, reason = status.readiness()
    topics = []
    names = sorted(broker.topics)
    for name in names[:MAX_TOPICS]:
        t = broker.topics[name]
        desc = broker.describe_topic(t)
        hws = t.high_watermarks()
        parts = []
        for d in desc["partition_details"]:
            tiers = d["tiers"]
            parts.append(
                {
                    "p": d["partition"],
                    "leader": d["leader"],
                    "replicas": d["replicas"],
                    "epoch": d["epoch"],
                    "low": d["low"],
                    "hw": d["high_watermark"],
                    "bytes": {k: tiers[k]["bytes"] for k in ("memory", "lmdb", "s3")},
                }
            )
        groups: list[dict[str, Any]] = [
            {
                "name": g.name,
                "lag": g.lag(hws),
                "in_flight": g.in_flight,
                "dead_lettered": g.dead_lettered,
                "delivered": g.delivered_total,
            }
            for _, g in sorted(t.groups.items())
        ]
        # Without metrics the counters fall back to what the broker keeps:
        # every offset ever assigned, and what groups handed out.
        pub = published.get(name, 0.0) if published is not None else sum(hws.values())
        dlv = delivered.get(name, 0.0) if delivered is not None else sum(g["delivered"] for g in groups)
        topics.append(
            {
                "name": name,
                "storage": desc.get("storage"),
                "replication_factor": desc.get("replication_factor"),
                "messages": desc["messages"],
                "bytes": {k: sum(p["bytes"][k] for p in parts) for k in ("memory", "lmdb", "s3")},
                "published": int(pub),
                "delivered": int(dlv),
                "partitions": parts,
                "groups": groups,
            }
        )
    if traffic is not None:
        bands = traffic.dashboard_view([view["name"] for view in topics])
        for view in topics:
            view["forecast"] = bands.get(view["name"])
    return {
        "forecast": traffic is not None,
        "anomalies": traffic.anomalies()[:MAX_ANOMALIES] if traffic is not None else [],
        "ts": round(clock.seconds(), 3),
        "node_id": info.node_id,
        "version": __version__,
        "ready": ready,
        "reason": reason,
        "uptime_s": round(max(0.0, time.time() - info.started), 1),
        "cluster": {
            "leader": cluster.get("leader"),
            "term": cluster.get("term"),
            "mode": cluster.get("mode"),
            "raft": cluster.get("raft"),
            "members": cluster["members"],
            "drained": cluster.get("drained", []),
        },
        "topics_total": len(names),
        "topics": topics,
        "faults": status.faults()["faults"],
        "memory": memory_status(broker),
        "pipelines": pipeline_rows(status),
    }


def pipeline_rows(status: NodeStatus) -> list[dict[str, Any]]:
    """The declared pipelines (derived topics) with their lag as this node sees it
    (exact for the source partitions it leads, the last checkpoint's for the others)."""
    raft = status.info.raft
    declared = raft.metadata.pipelines if raft is not None else {}
    stalled = status.info.pipeline_stalled
    rows = []
    for name, spec in sorted(declared.items())[:MAX_TOPICS]:
        t = status.broker.topics.get(spec["source"])
        g = t.groups.get(f"pipeline.{name}") if t is not None else None
        lag = g.lag(t.high_watermarks()) if t is not None and g is not None else None
        rows.append(
            {
                "name": name,
                "source": spec["source"],
                "target": spec["target"],
                "filter": spec.get("filter"),
                "lag": lag,
                "on_reject": spec.get("on_reject") or "stall",
                "stalled": stalled(name) if stalled is not None else None,
            }
        )
    return rows


@implementer(IPushProducer)
class DashboardStream:
    """One browser's live feed: a snapshot event every ``interval`` seconds."""

    def __init__(
        self,
        request: Request,
        clock: Clock,
        make_snapshot: Callable[[], bytes],
        *,
        registry: set[DashboardStream],
        stopping: Callable[[], bool] = lambda: False,
        interval: float = INTERVAL,
        slow_timeout: float = 30.0,
    ):
        self.request = request
        self.clock = clock
        self.make_snapshot = make_snapshot
        self.registry = registry
        self.stopping = stopping
        self.interval = interval
        self.slow_timeout = slow_timeout
        self.paused = False
        self.paused_since: float | None = None
        self.closed = False
        self.sent = 0
        self.done: Deferred[None] = Deferred(lambda _: self.close())
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock  # type: ignore[assignment]  # an IReactorTime

    def start(self) -> Deferred[None]:
        """Send the headers and the first snapshot; then one per interval."""
        req = self.request
        req.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        req.setHeader(b"cache-control", b"no-cache")
        req.setHeader(b"x-accel-buffering", b"no")
        req.registerProducer(self, True)
        req.write(b": sprawl dashboard\nretry: 2000\n\n")
        self.registry.add(self)
        self._loop.start(self.interval, now=True)
        return self.done

    def _tick(self) -> None:
        if self.closed:
            return
        if self.stopping():
            self._end(b'event: error\ndata: {"code":"stopping","message":"node is stopping"}\n\n')
            return
        if self.paused:
            since = self.paused_since if self.paused_since is not None else self.clock.seconds()
            if self.clock.seconds() - since >= self.slow_timeout:
                self._end(b"")
            return
        try:
            body = self.make_snapshot()
        except Exception:
            log.failure("dashboard snapshot failed")
            body = b'{"error":{"code":"internal_error","message":"snapshot failed; see the node\'s log"}}'
        self.request.write(b"data: " + body + b"\n\n")
        self.sent += 1

    # IPushProducer

    def pauseProducing(self) -> None:
        """The client's socket is full: skip snapshots until it drains."""
        if not self.paused:
            self.paused = True
            self.paused_since = self.clock.seconds()

    def resumeProducing(self) -> None:
        """The socket drained: the next tick writes again."""
        self.paused = False
        self.paused_since = None

    def stopProducing(self) -> None:
        """The connection is gone."""
        self.close()

    def end_stopping(self) -> None:
        """End the feed with a ``stopping`` error event (node shutdown)."""
        self._end(b'event: error\ndata: {"code":"stopping","message":"node is stopping"}\n\n')

    def _end(self, last: bytes) -> None:
        if self.closed:
            return
        try:
            if last:
                self.request.write(last)
            self.request.unregisterProducer()
            self.request.finish()
        except Exception:
            pass
        self.close()

    def close(self) -> None:
        """Stop the timer and forget the client (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.registry.discard(self)
        if self._loop.running:
            self._loop.stop()
        # Unregister before ``done`` fires: the HTTP layer finishes the request
        # then, and finishing with a producer still registered is an error.
        if getattr(self.request, "producer", None) is self:
            try:
                self.request.unregisterProducer()
            except Exception:  # the connection is already gone
                pass
        if not self.done.called:
            self.done.callback(None)


def encode_snapshot(
    status: NodeStatus, metrics: NodeMetrics | None, clock: Clock, traffic: TrafficView | None = None
) -> bytes:
    """:func:`snapshot` as compact JSON."""
    return _encode(snapshot(status, metrics, clock, traffic))
