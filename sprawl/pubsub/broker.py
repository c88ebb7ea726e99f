"""The single-node broker: topics, the publish path, reads, consumer groups,
retention and the memory budget, on top of the LMDB tier.

This is an adapter: it owns time (an injected ``Clock``) and storage
(:class:`~sprawl.storage.lmdb.LmdbStore`) and drives the pure cores
(:class:`~sprawl.log.partition.PartitionLog`,
:class:`~sprawl.delivery.groups.ConsumerGroup`, retention policy).  Every
partition has a leader, an epoch and replicas even with one node, so the
replication issue extends this rather than replacing it.

Its parts live in the modules of :mod:`sprawl.pubsub`, each a layer on the
one below (:mod:`~sprawl.pubsub.core` the shared state, then reads, the
memory budget, publish, the topic catalog, replica writes, consumer groups,
retention and the views); :class:`Broker` is the top one and adds the
lifecycle (start, the periodic tick, stop).

Why layers of one object rather than separate objects: the parts share one
state (the topics, the store, the S3 bookkeeping of each partition) and
call each other's methods, but only downwards -- publish evicts through the
memory budget, groups read and dead-letter through publish, retention runs
the group ticks and the replica follow.  A method of a lower layer cannot
call a higher one (the type checker refuses it), so the order is the
dependency order, as the package layers are.  The callers (HTTP, the data
plane, replication, the S3 tier) use one ``Broker``; what the adapters
below it need of it is a Protocol in :mod:`sprawl.interfaces`.
"""

from __future__ import annotations

import sys

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall

from sprawl.config import NodeConfig
from sprawl.interfaces import Clock
from sprawl.metrics import NodeMetrics
from sprawl.pubsub.housekeeping import Deadlines, Pools, PoolTally, drain
from sprawl.pubsub.links import ClusterLinks
from sprawl.pubsub.memory import PENDING_MEMORY_FACTOR
from sprawl.pubsub.views import Views
from sprawl.storage.lmdb import LmdbStore
from sprawl.storage.remote_log import LocalRemoteLog
from sprawl.storage.tiering import S3Tier
from sprawl.ticks import start_in_phase
from sprawl.topics import Topic


class Broker(Views):
    """Topics and their partitions on one node."""

    def __init__(
        self,
        config: NodeConfig,
        store: LmdbStore,
        clock: Clock,
        node_id: str,
        metrics: NodeMetrics | None = None,
        *,
        tier: S3Tier | None = None,
        links: ClusterLinks | None = None,
    ):
        super().__init__(config, store, clock, node_id, metrics, tier=tier, links=links or ClusterLinks())
        if links is None:
            # A lone broker: the shared remote lists are its own manifests.
            self.links.bind_remote_log(LocalRemoteLog(self))
        self._ticker = LoopingCall(self.tick)
        self._ticker.clock = clock  # type: ignore[assignment]  # the part of IReactorTime it uses
        #: What the periodic jobs look at (see :mod:`sprawl.pubsub.housekeeping`):
        #: topics changed since the once-a-second jobs and the memory tally last ran,
        #: each topic's retention deadline, the topics whose dedup windows hold ids.
        self._changed = self.touched.subscribe()
        self._mem_changed = self.touched.subscribe()
        self._retention_due = Deadlines()
        self._holding_ids: set[str] = set()
        self.pool_tally = PoolTally()
        self._process_seen = 0
        #: For the gossiped load (:meth:`load_counters`): topics changed since
        #: its last sample, and the partitions of each topic led here.
        self._load_changed = self.touched.subscribe()
        self._led: dict[str, list[int]] = {}
        self._led_total = 0
        #: Topics the once-a-second jobs looked at so far (the tests count an idle tick's work).
        self.housekeeping_looked = 0

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start periodic work (leases, retention, budgets)."""
        start_in_phase(self._ticker, 0.1)

    def begin_stop(self) -> None:
        """Refuse new work from now on (the node is stopping); :meth:`stop` finishes."""
        self.stopping = True

    def stop(self) -> Deferred[None]:
        """Stop taking work; checkpoint; wait for queued commits."""
        self.stopping = True
        if self._ticker.running:
            self._ticker.stop()
        self._checkpoint_ephemeral(force=True)
        self._flush_dirty_groups()
        d: Deferred[None] = self.store.write([], 0)
        d.addErrback(lambda f: None)
        return d

    # -- periodic work -----------------------------------------------------------

    def tick(self) -> None:
        """Leases, dirty group state, retention, the memory budget, checkpoints.

        Per tick, only what has work (issue 23: an idle node's tick must not
        cost per partition): topics with groups, and of the others only those
        written to since (:attr:`touched`) or due (retention by age, a
        deadline per topic); the memory pools are recounted for the changed
        topics and a fixed slice of the rest (:class:`PoolTally`), the full
        count only near the budget."""
        now_s = self.clock.seconds()
        for t in self.grouped_topics():
            for g in list(t.groups.values()):
                self._run_group_tick(t, g)
        self._flush_dirty_groups()
        if now_s - self._last_retention >= 1.0:
            self._last_retention = now_s
            self._housekeep_changed()
        self._check_memory(now_s)
        self.measure_memory_baseline()
        if self.tier is not None and now_s - self._last_spill >= 0.5:
            self._last_spill = now_s
            self.tier_tick()

    def grouped_topics(self) -> list[Topic]:
        """The topics that have consumer groups (or had one since they were
        last found): found again only when a group is made (``_grouped_at``
        reset) or one of them is deleted -- not a walk over every topic each
        time it is asked (issue 23)."""
        if self._grouped_at == float("-inf") or any(t.deleted for t in self._grouped):
            self._grouped_at = self.clock.seconds()
            self._grouped = [t for t in self.topics.values() if t.groups]
        return self._grouped

    def _housekeep_changed(self) -> None:
        """Once a second: retention, dedup expiry and ephemeral checkpoints
        of the topics written to since, or whose oldest segment is due."""
        now = self.now_ms()
        changed = drain(self._changed)
        names = sorted(set(changed).union(self._retention_due.pop_due(now)))
        topics = [t for n in names if (t := self.topics.get(n)) is not None]
        self.housekeeping_looked += len(topics)
        if topics:
            self.apply_retention(topics)
            for t in topics:
                self._retention_due.set(t.name, retention_due(t))
        self._holding_ids.update(changed)
        for name in sorted(self._holding_ids):
            t = self.topics.get(name)
            self.housekeeping_looked += 1
            if t is None:
                self._holding_ids.discard(name)
                continue
            if len(t.dedup):
                t.dedup.expire(now)
            if len(t.recent):
                t.recent.expire(now)
            if not len(t.dedup) and not len(t.recent):
                self._holding_ids.discard(name)
        if len(self._holding_ids) <= 64 and sys.getsizeof(self._holding_ids) > 8192:
            # (a set keeps its table as names go, and the sorted walk above walks it: the
            # start touches every topic, so 10,000 names' table walked each second for good)
            self._holding_ids = set(self._holding_ids)
        self._checkpoint_ephemeral(topics=[t for t in topics if not t.config.durable])

    def _check_memory(self, now_s: float) -> None:
        """The memory budget: the tally of the pools kept current (changed
        topics each tick, a slice of the others once a second) and the
        process's memory read once a second; the full count and eviction
        (:meth:`enforce_memory_budget`) once either is over the budget.
        Within half of it and not over, nothing is evicted: the tally
        stands in for the full count -- which walks every partition's pools
        -- and the allocator's free pages are given back as the full count
        would (issue 23: a node of 10,000 partitions takes more than half of
        the default budget beyond its baseline in replicas and metadata, no
        pool of them, and walked every pool ten times a second)."""
        tally = self.pool_tally
        tally.recount(drain(self._mem_changed), self._pools_of)
        sampled = now_s - self._hot_checked >= 1.0
        if sampled:
            self._hot_checked = now_s
            tally.sweep(self._pools_of)
            self._process_seen = self._process_beyond_baseline()
        budget = self.config.memory_budget
        pools = tally.total + self.store.pending_bytes * PENDING_MEMORY_FACTOR
        if max(pools, self._process_seen, self.hot_total_seen) > budget:
            self.enforce_memory_budget()
            return
        if sampled and max(pools, self._process_seen) * 2 >= budget:
            self._process_seen = self.give_back_free_memory(pools, self._process_seen)
        self.hot_total_seen = max(pools, self._process_seen)

    def load_counters(
        self, node_id: str
    ) -> tuple[int, dict[tuple[str, int], tuple[int, int]], list[tuple[str, int]]]:
        """For the gossiped load figures: how many partitions ``node_id``
        leads here, the ``(appended_total, appended_bytes_total)`` counters of
        those in topics changed since the last call, and the partitions it no
        longer leads (a topic deleted) -- work in proportion to the changes."""
        moved: dict[tuple[str, int], tuple[int, int]] = {}
        gone: list[tuple[str, int]] = []
        for name in drain(self._load_changed):
            t = self.topics.get(name)
            old = self._led.pop(name, [])
            self._led_total -= len(old)
            led = [] if t is None else [p for p, lg in enumerate(t.logs) if lg.leader == node_id]
            gone.extend((name, p) for p in old if p not in led)
            if t is None or not led:
                continue
            self._led[name] = led
            self._led_total += len(led)
            for p in led:
                lg = t.logs[p]
                moved[(name, p)] = (lg.appended_total, lg.appended_bytes_total)
        return self._led_total, moved, gone

    def _pools_of(self, name: str) -> Pools | None:
        """One topic's memory pools (None once it is gone)."""
        t = self.topics.get(name)
        if t is None:
            return None
        records = encodings = hot = 0
        for lg in t.logs:
            records += lg.hot_records_memory
            encodings += lg.account.encoded
            hot += lg.hot_bytes
        return records, encodings, t.dedup.memory + t.recent.memory, hot


def retention_due(t: Topic) -> int | None:
    """When (ms) retention by age can first delete a segment of ``t``: its
    oldest segments' newest message past ``retention_ms`` (None without one;
    retention by bytes changes only with a write, which touches the topic)."""
    ms = t.config.retention_ms
    if ms is None:
        return None
    firsts = [lg.segments[0].last_ts for lg in t.logs if lg.segments]
    return min(firsts) + ms + 1 if firsts else None
