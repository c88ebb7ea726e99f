"""The state the broker's parts share, and the commit bookkeeping they all use.

:class:`BrokerCore` holds the topics, the store, the clock and what
publishes, reads, replica writes, groups and retention keep between calls;
each part (:mod:`~sprawl.pubsub.reads`, :mod:`~sprawl.pubsub.memory`,
:mod:`~sprawl.pubsub.publish`, :mod:`~sprawl.pubsub.catalog`,
:mod:`~sprawl.pubsub.replica`, :mod:`~sprawl.pubsub.groups`,
:mod:`~sprawl.pubsub.retention`, :mod:`~sprawl.pubsub.views`) extends the one
below it, in that order, and :class:`~sprawl.pubsub.broker.Broker` is the top.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import msgspec
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from sprawl.config import NodeConfig
from sprawl.delivery.topic_waiters import TopicWaiters
from sprawl.errors import NotFound, Unavailable
from sprawl.interfaces import Clock
from sprawl.log.dedup import DedupWindow
from sprawl.log.manifest import RemoteObject
from sprawl.log.partition import PartitionLog
from sprawl.log.segments import Segment
from sprawl.metrics import NodeMetrics
from sprawl.pubsub.housekeeping import Touched
from sprawl.pubsub.links import ClusterLinks
from sprawl.pubsub.names import NameIndex, check_topic_name
from sprawl.pubsub.watchers import PartitionWatchers
from sprawl.storage import keys, timeline
from sprawl.storage.integrity import Integrity
from sprawl.storage.lmdb import LmdbStore, Op
from sprawl.storage.remote_log import RemoteLog
from sprawl.storage.tiering import S3Tier
from sprawl.topics import Topic, TopicConfig

log = Logger()

_json_encode = msgspec.json.encode


class IdSource:
    """Cheap unique message ids for messages published without one."""

    def __init__(self) -> None:
        self.prefix = os.urandom(6).hex()
        self.n = 0

    def next(self) -> str:
        self.n += 1
        return f"{self.prefix}{self.n:x}"


class BrokerCore:
    """Topics and their partitions on one node: the shared state."""

    def __init__(
        self,
        config: NodeConfig,
        store: LmdbStore,
        clock: Clock,
        node_id: str,
        metrics: NodeMetrics | None = None,
        *,
        tier: S3Tier | None = None,
        links: ClusterLinks,
    ):
        self.config = config
        self.store = store
        self.clock = clock
        self.node_id = node_id
        self.metrics = metrics
        #: By name, names kept sorted (a page of the topic list does not scan them all).
        self.topics: NameIndex[Topic] = NameIndex()
        #: Who waits for a partition to move (:meth:`watch`, :meth:`wait_any`).
        self.watchers = PartitionWatchers(clock)
        #: Topics written to, for the periodic jobs that look only at what changed.
        self.touched = Touched()
        #: (name, partition) -> (offset, Deferred, what it fires with) of :meth:`wait_stored`.
        self._stored_waiters: dict[tuple[str, int], list[tuple[int, Deferred[Any], Any]]] = {}
        #: Partitions stored by the commit firing now, not yet settled (:meth:`_committed`):
        #: whether their stored end moved.
        self._unsettled: dict[tuple[str, int], bool] = {}
        self._ids = IdSource()
        self._next_uid = 1
        self._last_retention = 0.0
        self._dirty_groups: set[tuple[str, str]] = set()
        self._ephemeral_checkpoint: dict[tuple[int, int], int] = {}
        self._spilling: dict[tuple[int, int], int] = {}  # (uid, p) → end of the spill queued
        self.stopping = False
        # Unflushed data counts against --memory-budget: half of it at most
        # (records queued for LMDB take about twice their sizes: see
        # pubsub.memory.PENDING_MEMORY_FACTOR), a quarter per partition
        # unless --partition-backlog says otherwise.
        self.max_pending_bytes = config.memory_budget // 4
        self.partition_backlog = config.partition_backlog or max(64 * 1000, config.memory_budget // 4)
        # With the write-ahead log on, writes past half of that not yet in LMDB wait
        # for LMDB (see ``LmdbStore.write``).
        store.wal_lag_bytes = self.max_pending_bytes // 2
        #: (topic uid, partition) → bytes appended and queued for LMDB, not yet committed.
        self.backlog: dict[tuple[int, int], int] = {}
        self._hot_added = 0
        self.published_total = 0
        self.published_bytes_total = 0
        self.deduplicated_total = 0
        #: The S3 tier, None when S3 is off.
        self.tier = tier
        #: Subscribers waiting for a topic to be created here (see ``LocalControl.wait_topic``).
        self.new_topics = TopicWaiters()
        #: Damaged ranges found by reads, the start-time check and the scrub.
        self.integrity = Integrity(self)
        if tier is not None:
            tier.on_damage = self.integrity.note
            tier.raced = self.integrity.raced
        self._last_spill = 0.0
        #: Hot-tail bytes over every partition when the budget was last
        #: enforced, and when (far below the budget, it waits a second).
        self.hot_total_seen = 0
        self._hot_checked = float("-inf")
        #: Topics with consumer groups (their ticks), as found at ``_grouped_at``.
        self._grouped: list[Any] = []
        self._grouped_at = float("-inf")
        #: What the broker asks of the cluster above it (auto-creation, routed
        #: publishes, group ownership, the shared remote lists; see
        #: :mod:`sprawl.pubsub.links`).
        self.links = links
        #: (uid, partition) -> this node's own uploads under the old per-node
        #: keys that no shared list names (yet).
        self._legacy: dict[tuple[int, int], list[RemoteObject]] = {}
        #: Partitions with a retention trim of the shared list in flight.
        self._trimming: set[tuple[int, int]] = set()
        #: What each partition's log last followed (see :meth:`_needs_follow`).
        self._followed: dict[tuple[int, int], Any] = {}

    @property
    def remote_log(self) -> RemoteLog | None:
        """Where the partitions' shared remote-segment lists live and how they
        change (:mod:`sprawl.storage.remote_log`): this node's own on a lone
        broker; the cluster's Raft-replicated one (None until it is bound:
        nothing moves to or is trimmed from S3)."""
        return self.links.remote_log

    def now_ms(self) -> int:
        """Wall-clock milliseconds (message timestamps, leases, retention)."""
        return int(self.clock.seconds() * 1000)

    def new_message_id(self) -> str:
        """A new unique message id (for a message published without one)."""
        return self._ids.next()

    # -- watching ----------------------------------------------------------------

    def watch(self, name: str, partition: int, fn: Callable[[], None]) -> Callable[[], None]:
        """Call ``fn`` whenever the partition's high watermark moves (or it is deleted).

        Returns a function that stops watching.
        """
        return self.watchers.watch(name, partition, fn)

    def notify(self, name: str, partition: int) -> None:
        """Wake the partition's watchers (e.g. a remote feed brought records)."""
        self.touched.touch(name)
        self.watchers.notify(name, partition)

    def wait_any(self, topic: Topic, seconds: float) -> Deferred[None]:
        """Fires when any partition of ``topic`` gets new data, or after ``seconds``."""
        return self.watchers.wait_any(topic.name, len(topic.logs), seconds)

    def _make_topic(self, cfg: TopicConfig) -> Topic:
        logs = [
            PartitionLog(
                cfg.name,
                p,
                durable=cfg.durable,
                leader=self.node_id,
                epoch=1,
                replicas=[self.node_id],
                segment_bytes=cfg.segment_bytes,
                segment_age_ms=cfg.segment_ms,
            )
            for p in range(cfg.partitions)
        ]
        window = DedupWindow(int(self.config.dedup_window * 1000))
        return Topic(cfg, logs, window)

    def get_topic(self, name: str) -> Topic:
        """The topic, or :class:`NotFound`."""
        t = self.topics.get(name)
        if t is None:
            check_topic_name(name)
            raise NotFound(f"topic {name!r} does not exist", code="topic_not_found")
        return t

    def _delete_remote(self, objects: list[RemoteObject]) -> None:
        """Delete S3 objects no manifest names any more (after that manifest is committed)."""
        if self.tier is not None:
            self.tier.delete_objects(objects)
        else:
            log.warn("{n} S3 object(s) left behind: the S3 tier is off on this node", n=len(objects))

    @staticmethod
    def _log_start_op(uid: int, partition: int, lg: PartitionLog) -> Op:
        return (
            "p",
            "meta",
            keys.partition_meta_key(uid, partition),
            _json_encode({"log_start": lg.log_start, "next_offset": lg.next_offset}),
        )

    @staticmethod
    def _segment_ops(uid: int, partition: int, segments: list[Segment]) -> list[Op]:
        return [
            ("p", "segments", keys.segment_key(uid, partition, seg.base), _json_encode(seg.to_tuple()))
            for seg in segments
        ]

    def _committed(self, _: object, name: str, ends: dict[int, int], uid: int | None = None) -> None:
        t = self.topics.get(name)
        if t is None or (uid is not None and t.config.uid != uid):
            return  # deleted (maybe recreated under the same name): not this topic's records
        for p, end in ends.items():
            lg = t.logs[p]
            if timeline.TIMELINE is not None:
                timeline.TIMELINE.mark("stored", lg.stored_end, end)
            moved = lg.stored(end)
            if moved or (name, p) in self._stored_waiters:
                # Settled once the commit's other writes are stored too (at once
                # outside a commit's callbacks): the partition's subscribers are
                # woken once for all of them, before any publish is answered.
                first = not self._unsettled
                self._unsettled[(name, p)] = moved or self._unsettled.get((name, p), False)
                if first:
                    self.store.after_callbacks(self._settle)

    def _settle(self) -> None:
        """Wake the subscribers of the partitions whose stored end moved, then fire
        the writes' waiters it covers (see :meth:`_committed`)."""
        unsettled, self._unsettled = self._unsettled, {}
        for (name, p), moved in unsettled.items():
            t = self.topics.get(name)
            if t is not None and moved:
                self.notify(name, p)
        for name, p in unsettled:
            t = self.topics.get(name)
            waiters = self._stored_waiters.get((name, p))
            if t is not None and waiters:
                end = t.logs[p].stored_end
                # The list is settled before any waiter fires: a waiter's
                # callbacks run synchronously and may wait again (a waiter
                # appended meanwhile was lost) or delete the topic (which
                # fails the waiters still listed: one fired already).
                done = [w for w in waiters if w[0] < end]
                self._stored_waiters[(name, p)] = [w for w in waiters if w[0] >= end]
                for _off, d, value in done:
                    d.callback(value)

    def _committed_or_failed(
        self, result: object, name: str, ends: dict[int, int], uid: int | None = None
    ) -> None:
        """A write of records is done (one ``addBoth`` link, not a callback and an
        errback): :meth:`_committed`, or :meth:`_commit_failed` when it failed --
        or when :meth:`_committed` itself raised, as a separate errback would have
        seen it."""
        if isinstance(result, Failure):
            self._commit_failed(result, name, list(ends))
            return
        try:
            self._committed(None, name, ends, uid)
        except Exception:
            self._commit_failed(Failure(), name, list(ends))

    def _commit_failed(self, f: Failure, name: str, partitions: list[int]) -> None:
        err = Unavailable(f"storage failed: {f.value}", code="storage_failed")
        for key, waiters in list(self._stored_waiters.items()):
            self._stored_waiters[key] = []  # settled before any fires (see _committed)
            for w in waiters:
                w[1].errback(err)

    def _storage_error(self, f: Failure) -> Any:
        if f.check(Unavailable, NotFound):
            return f
        raise Unavailable(f"storage failed: {f.value}", code="storage_failed")

    def wait_stored(self, name: str, partition: int, offset: int, value: Any = None) -> Deferred[Any]:
        """Fires (with ``value``) once ``offset`` of the partition is fsynced."""
        t = self.topics.get(name)
        if t is None:
            return succeed(value)
        lg = t.logs[partition]
        if offset < lg.stored_end:
            return succeed(value)
        d: Deferred[Any] = Deferred()
        self._stored_waiters.setdefault((name, partition), []).append((offset, d, value))
        return d


def first_failure(f: Any) -> Any:
    """Unwrap the failure of a ``fireOnOneErrback`` DeferredList."""
    return f.value.subFailure


def then(_: object, fn: Callable[..., Any], *args: Any) -> Any:
    """A callback that ignores the result and calls ``fn(*args)``."""
    return fn(*args)
