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

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall

from sprawl.config import NodeConfig
from sprawl.interfaces import Clock
from sprawl.metrics import NodeMetrics
from sprawl.pubsub.links import ClusterLinks
from sprawl.pubsub.views import Views
from sprawl.storage.lmdb import LmdbStore
from sprawl.storage.remote_log import LocalRemoteLog
from sprawl.storage.tiering import S3Tier


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

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start periodic work (leases, retention, budgets)."""
        self._ticker.start(0.1, now=False)

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
        """Leases, dirty group state, retention, the memory budget, checkpoints."""
        now_s = self.clock.seconds()
        # Per tick, only what has work: topics with groups, windows holding
        # ids, and the memory budget when it may be near (issue 23: an idle
        # node's tick must not cost per partition).
        if now_s - self._grouped_at >= 1.0 or any(t.deleted for t in self._grouped):
            # Which topics have groups, found once a second (a group made
            # meanwhile on a topic without one waits at most that long for
            # its first tick: its leases are at least that long).
            self._grouped_at = now_s
            self._grouped = [t for t in self.topics.values() if t.groups]
        for t in self._grouped:
            for g in list(t.groups.values()):
                self._run_group_tick(t, g)
        self._flush_dirty_groups()
        if now_s - self._last_retention >= 1.0:
            self._last_retention = now_s
            self.apply_retention()
            now = self.now_ms()
            for t in self.topics.values():
                if len(t.dedup):
                    t.dedup.expire(now)
                if len(t.recent):
                    t.recent.expire(now)
            self._checkpoint_ephemeral()
        if self.hot_total_seen * 2 >= self.config.memory_budget or now_s - self._hot_checked >= 1.0:
            # Far below the budget the sum over every partition waits a second.
            self._hot_checked = now_s
            self.enforce_memory_budget()
        self.measure_memory_baseline()
        if self.tier is not None and now_s - self._last_spill >= 0.5:
            self._last_spill = now_s
            self.tier_tick()
