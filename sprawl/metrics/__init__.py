"""Prometheus metrics of one node, on a registry of its own.

Counters on the hot path are incremented once per request (never per
message), into lock-free cells read at scrape time (:mod:`sprawl.metrics.cells`:
the reactor thread updates them; the garbage collector's figures, updated from
any thread, stay prometheus_client's, as do the rare storage ones); gauges that describe state (high watermarks, tier bytes, lag) are
read from the broker at scrape time by a custom collector.  A cluster node's
figures (gossip, Raft and the peer channel, balancing, the data plane) are
read by the collectors of :mod:`sprawl.metrics.cluster` built on those parts
and registered with :meth:`NodeMetrics.register` once the parts exist.
"""

from __future__ import annotations

import gzip
from bisect import bisect_left
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.internet.defer import Deferred, succeed

from sprawl.metrics.cells import CounterFamily, HistogramCell, HistogramFamily
from sprawl.metrics.exposition import GZIP_LEVEL, SLICE, PartitionExposition, accepts_gzip

if TYPE_CHECKING:
    from sprawl.delivery.streams import StreamRegistry
    from sprawl.delivery.topic_waiters import TopicWaiters
    from sprawl.interfaces import Clock
    from sprawl.pubsub import Broker

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class NodeMetrics:
    """All metrics of one node; ``render()`` gives the text exposition.

    ``cluster_waiters``: a cluster node's subscriptions waiting for a topic to
    be created (counted with the broker's own)."""

    def __init__(self, *, cluster_waiters: TopicWaiters | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        #: Labelled cells of the hot-path metrics, cached (see :func:`_children`).
        self.label_children: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.published_messages = CounterFamily(
            "sprawl_published_messages", "Messages appended, by topic", ["topic"], registry=r
        )
        self.published_bytes = CounterFamily(
            "sprawl_published_bytes",
            "Message bytes (payload, key and headers) appended, by topic",
            ["topic"],
            registry=r,
        )
        self.delivered_messages = CounterFamily(
            "sprawl_delivered_messages",
            "Messages delivered to consumers, by topic and mode (fetch, stream, group)",
            ["topic", "mode"],
            registry=r,
        )
        self.delivered_bytes = CounterFamily(
            "sprawl_delivered_bytes",
            "Message bytes (payload, key and headers) delivered to consumers, by topic and mode",
            ["topic", "mode"],
            registry=r,
        )
        self.dead_lettered_messages = CounterFamily(
            "sprawl_dead_lettered_messages",
            "Messages that used up max_deliveries, by topic and group",
            ["topic", "group"],
            registry=r,
        )
        self.http_requests = CounterFamily(
            "sprawl_http_requests",
            "HTTP requests, by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_request_duration = HistogramFamily(
            "sprawl_http_request_duration_seconds",
            "Time from request to response (streams: to the first byte), by route",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rejected_requests = CounterFamily(
            "sprawl_rejected_requests",
            "Requests refused before any work, by reason (oversize, overloaded, bad_request)",
            ["reason"],
            registry=r,
        )
        self.slow_consumers_disconnected = Counter(
            "sprawl_slow_consumers_disconnected", "Stream clients cut off for being too slow", registry=r
        )
        self.lmdb_commit_duration = HistogramFamily(
            "sprawl_lmdb_commit_duration_seconds",
            "Time from queueing a group commit to its fsynced completion",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.lmdb_commit_ops = HistogramFamily(
            "sprawl_lmdb_commit_ops",
            "Write operations per group commit",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=r,
        )
        self.s3_uploads = Counter(
            "sprawl_s3_uploads", "Segments moved to S3 (uploaded, verified, deleted from LMDB)", registry=r
        )
        self.s3_uploaded_bytes = Counter(
            "sprawl_s3_uploaded_bytes", "Bytes of segment objects uploaded to S3 and verified", registry=r
        )
        self.s3_upload_failures = Counter(
            "sprawl_s3_upload_failures",
            "Segment uploads that failed (the segment stayed in LMDB)",
            registry=r,
        )
        self.s3_deleted_objects = Counter(
            "sprawl_s3_deleted_objects", "S3 objects deleted by retention or topic deletes", registry=r
        )
        self.s3_orphans_deleted = Counter(
            "sprawl_s3_orphans_deleted",
            "S3 objects no shared remote list named (uploads whose commit never came), deleted by the sweep",
            registry=r,
        )
        self.s3_read_duration = Histogram(
            "sprawl_s3_read_duration_seconds",
            "Time of one ranged GET of a segment chunk from S3",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.s3_read_failures = Counter(
            "sprawl_s3_read_failures",
            "Reads below LMDB that failed (missing, corrupt, unreachable)",
            registry=r,
        )
        self.s3_cache_hits = Counter(
            "sprawl_s3_cache_hits", "Reads below LMDB served from the local chunk cache", registry=r
        )
        self.s3_cache_misses = Counter(
            "sprawl_s3_cache_misses", "Reads below LMDB that fetched a chunk from S3", registry=r
        )
        self.damage_found = Counter(
            "sprawl_damage_found",
            "Damaged ranges found (a checksum mismatch, a damaged key, a gap, an unreadable page), by tier",
            ["tier"],
            registry=r,
        )
        self.damage_repaired = Counter(
            "sprawl_damage_repaired", "Damaged ranges rewritten from a healthy replica", registry=r
        )
        self.damage_skipped = Counter(
            "sprawl_damage_skipped", "Damaged ranges an operator skipped (readers pass over them)", registry=r
        )
        self.scrub_bytes = Counter(
            "sprawl_scrub_scanned_bytes",
            "Bytes of stored records the background scrub read back and checked",
            registry=r,
        )
        self.scrub_passes = Counter(
            "sprawl_scrub_passes", "Scrub passes finished over every partition", registry=r
        )
        #: What the gauges read at scrape time (set by :meth:`watch_state`).
        self.broker: Broker | None = None
        self.streams: StreamRegistry | None = None
        self.cluster_waiters = cluster_waiters
        self.raft_proposal_duration = HistogramFamily(
            "sprawl_raft_proposal_duration_seconds",
            "Time from proposing a metadata change on this node to applying it here",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.gc_pause = Histogram(
            "sprawl_gc_pause_seconds",
            "Pauses of the Python garbage collector (the reactor does nothing meanwhile), by generation",
            ["generation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.replication_hop = HistogramFamily(
            "sprawl_replication_hop_seconds",
            "Hops of a replicated publish (issue 16), by hop: forward (an entry node's publish sent to "
            "the partition's leader, to its answer), quorum (the leader's append, to a majority holding "
            "it), visible (a follower's receipt of records, to its high watermark passing them)",
            ["hop"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.gc_cpu = Counter(
            "sprawl_gc_cpu_seconds",
            "CPU time of the garbage collector's collections, by generation (a pause far longer was the "
            "thread waiting: preempted, or for the GIL)",
            ["generation"],
            registry=r,
        )
        self._state = _StateCollector(self)
        r.register(self._state)
        #: Collectors with work to do in steps before they collect (``steps()``, a
        #: generator: each ``next()`` one reactor turn's worth), run by :meth:`scrape_in_steps`.
        self._stepped: list[Any] = []
        self._commit_seconds: HistogramCell = self.lmdb_commit_duration.cell
        self._commit_ops: HistogramCell = self.lmdb_commit_ops.cell

    def watch_state(self, broker: Broker, streams: StreamRegistry | None = None) -> None:
        """Read the broker's state (and the count of open streams) at every scrape.

        Called once by the composition root (:mod:`sprawl.node`): the broker
        is built on these metrics (it counts into them), and the streams by
        the HTTP API built on the broker, so neither can be handed to the
        constructor."""
        self.broker = broker
        self.streams = streams

    def register(self, *collectors: Any) -> None:
        """Read these collectors at every scrape too (a cluster node's:
        :class:`GossipCollector`, :class:`RaftCollector`, :class:`BalanceCollector`,
        :class:`DataPlaneCollector`)."""
        for c in collectors:
            self.registry.register(c)
            if hasattr(c, "steps"):
                self._stepped.append(c)

    # The hot-path updates below touch the cells directly (no lock, no argument checks, one
    # Python call each): they run on the reactor thread only (see :mod:`sprawl.metrics.cells`).

    def committed(self, seconds: float, ops: int) -> None:
        """Record one LMDB group commit."""
        h = self._commit_seconds
        h.sum += seconds
        if seconds == seconds:
            h.counts[bisect_left(h.bounds, seconds)] += 1
        h = self._commit_ops
        h.sum += ops
        h.counts[bisect_left(h.bounds, ops)] += 1

    def hop(self, name: str, seconds: float) -> None:
        """Time one hop of a replicated publish (``sprawl_replication_hop_seconds``)."""
        c = self.label_children.get((self.replication_hop, name)) or _children(
            self, (name,), self.replication_hop
        )
        h = c[0]
        h.sum += seconds
        if seconds == seconds:
            h.counts[bisect_left(h.bounds, seconds)] += 1

    def published(self, topic: str, n: int, nbytes: int) -> None:
        """Count one publish request's messages."""
        c = self.label_children.get((self.published_messages, topic)) or _children(
            self, (topic,), self.published_messages, self.published_bytes
        )
        c[0].value += n
        c[1].value += nbytes

    def delivered(self, topic: str, mode: str, n: int, nbytes: int) -> None:
        """Count messages handed to consumers."""
        c = self.label_children.get((self.delivered_messages, topic, mode)) or _children(
            self, (topic, mode), self.delivered_messages, self.delivered_bytes
        )
        c[0].value += n
        c[1].value += nbytes

    def request_done(self, route: str, method: str, code: int, seconds: float) -> None:
        """Time and count one answered API request."""
        cache = self.label_children
        c = cache.get((self.http_request_duration, route, method)) or _children(
            self, (route, method), self.http_request_duration
        )
        h = c[0]
        h.sum += seconds
        if seconds == seconds:
            h.counts[bisect_left(h.bounds, seconds)] += 1
        c = cache.get((self.http_requests, route, method, code)) or _children(
            self, (route, method, code), self.http_requests
        )
        c[0].value += 1

    def dead_lettered(self, topic: str, group: str, n: int) -> None:
        """Count dead-lettered messages."""
        self.dead_lettered_messages.labels(topic, group).inc(n)

    def forget_topic(self, topic: str) -> None:
        """Drop a deleted topic's labelled counters: without this every topic
        ever created on the node kept its series (and their memory) in
        ``/metrics``, the dashboard and the traffic forecaster's feed for the
        node's life -- the memory soak's drift (docs/benchmarks.md)."""
        cache = self.label_children
        topical = (self.published_messages, self.delivered_messages)
        for key in [k for k in cache if k[0] in topical and k[1] == topic]:
            del cache[key]  # (a topic's cached children, see _children)
        for family in (
            self.published_messages,
            self.published_bytes,
            self.delivered_messages,
            self.delivered_bytes,
            self.dead_lettered_messages,
        ):
            at = family.labelnames.index("topic")
            for labels in [k for k in family.children if k[at] == topic]:
                del family.children[labels]

    def render(self) -> bytes:
        """Prometheus text exposition format 0.0.4.

        The per-partition and per-group families are written by the state collector's
        :class:`~sprawl.metrics.exposition.PartitionExposition` (after the rest, each
        partition's lines kept while its figures stand); the rest by prometheus_client.
        The same series, labels and values as ``generate_latest(self.registry)``, which
        still writes everything through prometheus_client."""
        return self._with_rest(self._state.partition_text())

    def _with_rest(self, partitions: bytes) -> bytes:
        """The families prometheus_client writes, then ``partitions`` (the state collector's
        families, written already: left out of the rest)."""
        state = self._state
        state.written = True
        try:
            rest = generate_latest(self.registry)
        finally:
            state.written = False
        return rest + partitions

    def walked_pools(self) -> tuple[int, int, int] | None:
        """While a render's collectors run: the memory pools (hot records, encodings,
        dedup) its walk over the partitions summed (see
        :meth:`~sprawl.metrics.exposition.PartitionExposition.pools`); None otherwise (a
        collector then counts them itself)."""
        state = self._state
        return state.exposition.pools() if state.written else None

    def scrape(self, accept_encoding: bytes | str | None = None) -> tuple[bytes, bytes | None]:
        """``GET /metrics``'s body and its ``Content-Encoding`` (None: as is): gzipped
        (:data:`~sprawl.metrics.exposition.GZIP_LEVEL`) when ``accept_encoding`` takes
        gzip, as Prometheus's scrapes do -- 5.5 MB at 10,000 partitions, 315 kB gzipped."""
        return _packed(self.render(), accept_encoding)

    def scrape_in_steps(
        self, accept_encoding: bytes | str | None, clock: Clock, slice_size: int = SLICE
    ) -> Deferred[tuple[bytes, bytes | None]]:
        """:meth:`scrape` with the reactor let turn between the per-partition lines of every
        ``slice_size`` partitions built (``clock.callLater(0, ...)``; see
        :meth:`~sprawl.metrics.exposition.PartitionExposition.steps`): no scrape holds the
        reactor for every partition's lines at once -- the first one after a start built
        10,000 partitions' in one turn, 185-775 ms (issue 23, tidy41) --, then the registered
        collectors' own steps, each a turn (the data plane's led partitions judged again,
        :meth:`~sprawl.metrics.cluster.DataPlaneCollector.steps`).  The rest (the
        collectors, the join, gzip) is one turn, the last."""
        broker = self.broker
        if broker is None:
            return succeed(self.scrape(accept_encoding))
        steps = self._steps(broker, slice_size)
        done: Deferred[tuple[bytes, bytes | None]] = Deferred()

        def step() -> None:
            try:
                next(steps)
            except StopIteration as last:
                try:
                    done.callback(_packed(self._with_rest(last.value), accept_encoding))
                except Exception:
                    done.errback()
                return
            except Exception:
                done.errback()
                return
            clock.callLater(0, step)

        step()
        return done

    def _steps(self, broker: Broker, slice_size: int) -> Generator[None, None, bytes]:
        """The partition families in steps, then the steps of the collectors that have some
        (:attr:`_stepped`); returns the partition families' text."""
        text = yield from self._state.exposition.steps(broker.topics.values(), slice_size)
        for c in self._stepped:
            for _ in c.steps():
                yield
        return text


def _packed(body: bytes, accept_encoding: bytes | str | None) -> tuple[bytes, bytes | None]:
    """``body`` gzipped if ``accept_encoding`` takes gzip, and its ``Content-Encoding``."""
    if accepts_gzip(accept_encoding):
        return gzip.compress(body, GZIP_LEVEL, mtime=0), b"gzip"
    return body, None


#: The most labelled children :func:`_children` keeps (beyond it, looked up each time).
MAX_CACHED_CHILDREN = 4096


def _children(m: NodeMetrics, labels: tuple[Any, ...], *metrics: Any) -> tuple[Any, ...]:
    """The cells of ``metrics`` for ``labels``, cached on ``m`` (``labels()`` turns each value
    into a string and builds a key each call).  Keyed by the first metric and the labels as
    given (the hot paths look the key up themselves and call this on a miss);
    :meth:`NodeMetrics.forget_topic` drops a topic's entries with its series."""
    cache = m.label_children
    key = (metrics[0], *labels)
    c = cache.get(key)
    if c is None:
        c = tuple(x.labels(*labels) for x in metrics)
        if len(cache) < MAX_CACHED_CHILDREN:
            cache[key] = c
    return c


class _StateCollector:
    """Gauges read from the broker and storage at scrape time."""

    def __init__(self, metrics: NodeMetrics):
        self.metrics = metrics
        #: Writes the per-partition and per-group families for :meth:`NodeMetrics.render`.
        self.exposition = PartitionExposition()
        #: Set by :meth:`NodeMetrics.render` while it runs: those families were written
        #: by :meth:`partition_text` already (and the hot bytes summed), so
        #: :meth:`collect` leaves them out.
        self.written = False

    def describe(self) -> list:
        return []

    def partition_text(self) -> bytes:
        """The per-partition and per-group families as UTF-8 text (b"" without a broker)."""
        broker = self.metrics.broker
        if broker is None:
            return b""
        return self.exposition.render(broker.topics.values())

    def collect(self) -> Any:
        broker = self.metrics.broker
        if broker is None:
            return
        if not self.written:
            yield from self._partition_families(broker)
        yield from self._node_families(broker)

    def _partition_families(self, broker: Broker) -> Any:
        """The per-partition and per-group families through prometheus_client (the
        reference :class:`PartitionExposition` is tested against)."""
        hw = GaugeMetricFamily(
            "sprawl_partition_high_watermark",
            "First offset consumers cannot see yet",
            labels=["topic", "partition"],
        )
        low = GaugeMetricFamily(
            "sprawl_partition_log_start_offset", "Oldest offset still stored", labels=["topic", "partition"]
        )
        end = GaugeMetricFamily(
            "sprawl_partition_log_end_offset",
            "Next offset the leader will assign",
            labels=["topic", "partition"],
        )
        repl_lag = GaugeMetricFamily(
            "sprawl_partition_replication_lag_messages",
            "Messages appended but not yet below the high watermark (log end - HW): "
            "not yet durable here, or (a replicated partition) not yet on a quorum",
            labels=["topic", "partition"],
        )
        tier = GaugeMetricFamily(
            "sprawl_partition_tier_bytes",
            "Bytes of a partition per storage tier",
            labels=["topic", "partition", "tier"],
        )
        lag = GaugeMetricFamily(
            "sprawl_group_lag_messages", "Visible messages a group has not acked", labels=["topic", "group"]
        )
        inflight = GaugeMetricFamily(
            "sprawl_group_in_flight_messages",
            "Messages leased to a group's consumers",
            labels=["topic", "group"],
        )
        for t in broker.topics.values():
            hws = t.high_watermarks()
            for lg in t.logs:
                p = str(lg.partition)
                hw.add_metric([t.name, p], lg.high_watermark)
                low.add_metric([t.name, p], lg.log_start)
                end.add_metric([t.name, p], lg.next_offset)
                repl_lag.add_metric([t.name, p], max(0, lg.next_offset - lg.high_watermark))
                tier.add_metric([t.name, p, "memory"], lg.hot_bytes)
                tier.add_metric([t.name, p, "lmdb"], sum(s.bytes for s in lg.segments if s.remote is None))
                tier.add_metric([t.name, p, "s3"], sum(s.bytes for s in lg.segments if s.remote is not None))
            for g in t.groups.values():
                lag.add_metric([t.name, g.name], g.lag(hws))
                inflight.add_metric([t.name, g.name], g.in_flight)
        yield hw
        yield low
        yield end
        yield repl_lag
        yield tier
        yield lag
        yield inflight

    def _node_families(self, broker: Broker) -> Any:
        """The node's own gauges and counters read from the broker and its store."""
        topics = GaugeMetricFamily("sprawl_topics", "Topics on this node")
        topics.add_metric([], len(broker.topics))
        yield topics
        store = broker.store
        used = GaugeMetricFamily("sprawl_lmdb_used_bytes", "Bytes of the LMDB map in use")
        used.add_metric([], store.used_bytes)
        yield used
        budget = GaugeMetricFamily("sprawl_disk_budget_bytes", "The --disk-budget")
        budget.add_metric([], broker.config.disk_budget)
        yield budget
        mem = GaugeMetricFamily("sprawl_memory_hot_bytes", "Bytes held in hot tails in memory")
        if self.written:  # (summed by the exposition's pass over the partitions)
            mem.add_metric([], self.exposition.hot_bytes)
        else:
            mem.add_metric([], sum(lg.hot_bytes for t in broker.topics.values() for lg in t.logs))
        yield mem
        mbudget = GaugeMetricFamily("sprawl_memory_budget_bytes", "The --memory-budget")
        mbudget.add_metric([], broker.config.memory_budget)
        yield mbudget
        pend = GaugeMetricFamily("sprawl_lmdb_pending_bytes", "Bytes queued for the next LMDB commit")
        pend.add_metric([], store.pending_bytes)
        yield pend
        backlog = getattr(broker, "backlog", None)
        if backlog is not None:
            worst = GaugeMetricFamily(
                "sprawl_partition_backlog_max_bytes",
                "Largest unflushed backlog of any partition (429 backpressure past --partition-backlog)",
            )
            worst.add_metric([], max(backlog.values(), default=0))
            yield worst
            limit = GaugeMetricFamily("sprawl_partition_backlog_limit_bytes", "The --partition-backlog")
            limit.add_metric([], broker.partition_backlog)
            yield limit
        commits = CounterMetricFamily("sprawl_lmdb_commits", "LMDB write transactions committed (fsynced)")
        commits.add_metric([], store.commits)
        yield commits
        holds = CounterMetricFamily(
            "sprawl_lmdb_holds",
            "Holds begun: a topic create or delete applied here let its writes wait for the next "
            "urgent write (a Raft append) to commit with",
        )
        holds.add_metric([], getattr(store, "holds", 0))
        yield holds
        joined = CounterMetricFamily(
            "sprawl_lmdb_holds_joined",
            "Holds an urgent write ended (its held writes committed with it; the rest ran out and "
            "committed alone)",
        )
        joined.add_metric([], getattr(store, "holds_joined", 0))
        yield joined
        integrity = getattr(broker, "integrity", None)
        if integrity is not None:
            ranges = GaugeMetricFamily(
                "sprawl_damaged_ranges",
                "Ranges of stored records known damaged (reads answer corrupt_record) or skipped, by state",
                labels=["state"],
            )
            for state in ("damaged", "skipped"):
                ranges.add_metric([state], integrity.map.count(state))
            yield ranges
            scrub = getattr(integrity, "scrubber", None)
            if scrub is not None and scrub.enabled:
                prog = GaugeMetricFamily(
                    "sprawl_scrub_progress_ratio",
                    "Fraction of the current scrub pass done (1 between passes)",
                )
                prog.add_metric([], scrub.progress)
                yield prog
        dup = CounterMetricFamily("sprawl_deduplicated_messages", "Publishes answered from the dedup window")
        dup.add_metric([], broker.deduplicated_total)
        yield dup
        streams = self.metrics.streams
        if streams is not None:
            subs = GaugeMetricFamily("sprawl_stream_subscribers", "Open SSE / long-poll stream clients")
            subs.add_metric([], streams.count())
            yield subs
        waiters = GaugeMetricFamily(
            "sprawl_topic_waiting_subscribers",
            "Subscriptions (SSE, WebSocket, long-poll) waiting for their topic to be created",
        )
        cluster_waiters = self.metrics.cluster_waiters
        waiters.add_metric(
            [], broker.new_topics.count() + (cluster_waiters.count() if cluster_waiters else 0)
        )
        yield waiters


class GCPauses:
    """Times each garbage collection into ``histogram`` (``gc.callbacks``)."""

    def __init__(
        self,
        histogram: Histogram,
        clock: Callable[[], float] | None = None,
        cpu: Counter | None = None,
        cpu_clock: Callable[[], float] | None = None,
    ) -> None:
        import time

        self.histogram = histogram
        self.clock = clock or time.perf_counter
        self._started = 0.0
        #: Counts each collection's CPU time of this thread (``sprawl_gc_cpu_seconds``), if given.
        self.cpu = cpu
        self.cpu_clock = cpu_clock or time.thread_time
        self._cpu_started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self.clock()
            if self.cpu is not None:
                self._cpu_started = self.cpu_clock()
        else:
            gen = str(info.get("generation", "?"))
            self.histogram.labels(gen).observe(self.clock() - self._started)
            if self.cpu is not None:
                self.cpu.labels(gen).inc(max(0.0, self.cpu_clock() - self._cpu_started))

    def install(self) -> None:
        """Start timing collections (once per process)."""
        import gc

        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def remove(self) -> None:
        """Stop timing collections."""
        import gc

        if self in gc.callbacks:
            gc.callbacks.remove(self)
