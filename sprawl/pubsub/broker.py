"""The single-node broker: topics, the publish path, reads, consumer groups,
retention and the memory budget, on top of the LMDB tier.

This is an adapter: it owns time (an injected ``IReactorTime``) and storage
(:class:`~sprawl.storage.lmdb.LmdbStore`) and drives the pure cores
(:class:`~sprawl.log.partition.PartitionLog`,
:class:`~sprawl.delivery.groups.ConsumerGroup`, retention policy).  Every
partition has a leader, an epoch and replicas even with one node, so the
replication issue extends this rather than replacing it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from sprawl.config import TOPIC_NAME, NodeConfig
from sprawl.delivery.groups import ConsumerGroup, DeadLetter, Delivery, GroupConfig
from sprawl.delivery.topic_waiters import TopicWaiters
from sprawl.errors import (
    BadRequest,
    Conflict,
    InsufficientStorage,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    Unavailable,
)
from sprawl.log.damage import DamagedRange
from sprawl.log.dedup import DedupWindow
from sprawl.log.manifest import Manifest, RemoteObject, RemoteState, decode_manifest, encode_manifest
from sprawl.log.partition import PartitionLog
from sprawl.log.record import DEFAULT_READ_BYTES, RECORD_OVERHEAD, Record, take_bytes
from sprawl.log.segments import Segment, expired_segments
from sprawl.log.spill import hard_limit
from sprawl.storage import keys
from sprawl.storage.integrity import Integrity
from sprawl.storage.lmdb import LmdbStore, Op
from sprawl.storage.remote_log import LocalRemoteLog
from sprawl.topics import STORAGE_KINDS, Topic, TopicConfig

log = Logger()

_json_encode = msgspec.json.encode
_json_decode = msgspec.json.decode

ACKS = ("quorum", "leader", "none")


@dataclass
class PublishResult:
    """What a publish acknowledges, and where the data is."""

    offsets: list[int]
    ids: list[str]
    partitions: list[int]
    duplicates: list[bool]
    stored: str  # "lmdb" (fsynced), "memory" (ephemeral) or "pending" (acks=none)


class _IdSource:
    """Cheap unique message ids for messages published without one."""

    def __init__(self) -> None:
        self.prefix = os.urandom(6).hex()
        self.n = 0

    def next(self) -> str:
        self.n += 1
        return f"{self.prefix}{self.n:x}"


class Broker:
    """Topics and their partitions on one node."""

    def __init__(
        self,
        config: NodeConfig,
        store: LmdbStore,
        clock: Any,
        node_id: str,
        metrics: Any = None,
    ):
        self.config = config
        self.store = store
        self.clock = clock
        self.node_id = node_id
        self.metrics = metrics
        self.topics: dict[str, Topic] = {}
        self._watchers: dict[tuple[str, int], set[Callable[[], None]]] = {}
        self._stored_waiters: dict[tuple[str, int], list[tuple[int, Deferred[None]]]] = {}
        self._ids = _IdSource()
        self._next_uid = 1
        self._ticker = LoopingCall(self.tick)
        self._ticker.clock = clock
        self._last_retention = 0.0
        self._dirty_groups: set[tuple[str, str]] = set()
        self._ephemeral_checkpoint: dict[tuple[int, int], int] = {}
        self._spilling: dict[tuple[int, int], int] = {}  # (uid, p) → end of the spill queued
        self.stopping = False
        # Unflushed data counts against --memory-budget: half of it at most,
        # a quarter per partition unless --partition-backlog says otherwise.
        self.max_pending_bytes = config.memory_budget // 2
        self.partition_backlog = config.partition_backlog or max(64 * 1000, config.memory_budget // 4)
        #: (topic uid, partition) → bytes appended and queued for LMDB, not yet committed.
        self.backlog: dict[tuple[int, int], int] = {}
        self._hot_added = 0
        self.published_total = 0
        self.published_bytes_total = 0
        self.deduplicated_total = 0
        #: How auto-created topics come to be: None creates them here; a
        #: cluster node sets its Raft proposal path (see sprawl.cluster.control).
        self.topic_creator: Callable[[str], Deferred[Topic]] | None = None
        #: The partitions of a topic whose consumer-group state this node owns
        #: (in a cluster: those it leads; None: all, as on a single node).
        self.group_partitions: Callable[[Topic], Collection[int] | None] | None = None
        #: Where the broker's own publishes (dead letters) go: in a cluster,
        #: through each partition's leader; None: straight into this broker.
        self.publisher: Callable[[Topic, list[Record], str], Deferred[PublishResult]] | None = None
        #: The S3 tier (:class:`sprawl.storage.tiering.S3Tier`), None when S3 is off.
        self.tier: Any = None
        #: Subscribers waiting for a topic to be created here (see ``LocalControl.wait_topic``).
        self.new_topics = TopicWaiters()
        #: Damaged ranges found by reads, the start-time check and the scrub.
        self.integrity = Integrity(self)
        self._last_spill = 0.0
        #: Where the partitions' shared remote-segment lists live and how they
        #: change (:mod:`sprawl.storage.remote_log`): this node's own on a lone
        #: broker; the cluster sets its Raft-replicated one (None until then:
        #: nothing moves to or is trimmed from S3).
        self.remote_log: Any = LocalRemoteLog(self)
        #: (uid, partition) -> this node's own uploads under the old per-node
        #: keys that no shared list names (yet).
        self._legacy: dict[tuple[int, int], list[RemoteObject]] = {}
        #: Partitions with a retention trim of the shared list in flight.
        self._trimming: set[tuple[int, int]] = set()
        #: What each partition's log last followed (see :meth:`_needs_follow`).
        self._followed: dict[tuple[int, int], Any] = {}

    # -- lifecycle -------------------------------------------------------------

    def now_ms(self) -> int:
        """Wall-clock milliseconds (message timestamps, leases, retention)."""
        return int(self.clock.seconds() * 1000)

    def recover(self) -> None:
        """Rebuild topics, partitions, groups and dedup windows from LMDB."""
        store = self.store
        raw = store.get("meta", b"node/next_uid")
        if raw:
            self._next_uid = int(raw)
        now = self.now_ms()
        for _k, v in store.scan("meta", b"topic/"):
            cfg = TopicConfig.from_dict(_json_decode(v))
            self._next_uid = max(self._next_uid, cfg.uid + 1)
            topic = self._make_topic(cfg)
            self.integrity.load(topic)
            for lg in topic.logs:
                self._recover_partition(topic, lg, now)
            for _gk, gv in store.scan("meta", b"group/" + keys.topic_prefix(cfg.uid)):
                state = _json_decode(gv)
                g = ConsumerGroup.from_state(state["name"], state, now)
                g.ensure_partitions({lg.partition: lg.log_start for lg in topic.logs})
                topic.groups[g.name] = g
            self.topics[cfg.name] = topic
        log.info("recovered {n} topics from {path}", n=len(self.topics), path=store.path)

    def _recover_partition(self, topic: Topic, lg: PartitionLog, now: int) -> None:
        store = self.store
        cfg = topic.config
        uid, p = cfg.uid, lg.partition
        last = store.last_record_offset(uid, p)
        stored_end = last + 1 if last is not None else 0
        meta_raw = store.get("meta", keys.partition_meta_key(uid, p))
        meta = _json_decode(meta_raw) if meta_raw else {}
        segs = [
            Segment.from_tuple(_json_decode(v))
            for _k, v in store.scan("segments", keys.partition_prefix(uid, p))
        ]
        if cfg.durable and segs and segs[-1].last >= stored_end:
            # A durable partition writes its records and segment rows in one
            # transaction: a segment reaching past the last sound record means
            # the tail is damaged (the check below names it), not that it is gone.
            stored_end = segs[-1].last + 1
        segs = [s for s in segs if s.base < stored_end]
        if segs:
            segs[-1].last = min(segs[-1].last, stored_end - 1)
        # Segments spilled to S3 come first (the manifest and the deletion of
        # their records were one transaction, so they never overlap LMDB's).
        manifest_raw = store.get("meta", keys.manifest_key(uid, p))
        if manifest_raw:
            manifest = decode_manifest(manifest_raw)
            if manifest.legacy:
                self._legacy[(uid, p)] = list(manifest.legacy)
            remote = [o.to_segment() for o in manifest.objects]
            if remote:
                segs = [s for s in segs if s.base > remote[-1].last]
                stored_end = max(stored_end, remote[-1].last + 1)
                segs = remote + segs
        next_offset = max(stored_end, int(meta.get("next_offset", 0)))
        lg.segments = segs
        lg.next_offset = next_offset
        lg.stored_end = next_offset
        lg.high_watermark = next_offset
        lg.log_start = segs[0].base if segs else next_offset
        lg.log_start = max(lg.log_start, int(meta.get("log_start", 0)))
        if segs and next_offset > stored_end:
            segs[-1].sealed = True  # an ephemeral gap follows; start a new segment
        # Rebuild the dedup window from the newest stored records -- checked:
        # this is the start-time check of the tail the node wrote last.
        window_start = now - int(self.config.dedup_window * 1000)
        start = max(lg.log_start, stored_end - 100_000)
        dense = self.integrity.dense(topic, lg, start, stored_end)
        for _ in range(1000):
            try:
                for r in store.read_records_sync(uid, p, start, 100_000, stored_end, dense):
                    if r.id is not None and r.timestamp >= window_start:
                        topic.dedup.remember(r.id, r.partition, r.offset, r.timestamp)
                break
            except DamagedRange as d:
                self.integrity.note(topic, p, d)
                start = d.last + 1
                dense = [(max(lo, start), hi) for lo, hi in dense if hi >= start]

    def start(self) -> None:
        """Start periodic work (leases, retention, budgets)."""
        self._ticker.start(0.1, now=False)

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

    # -- topics ----------------------------------------------------------------

    def get_topic(self, name: str) -> Topic:
        """The topic, or :class:`NotFound`."""
        t = self.topics.get(name)
        if t is None:
            check_topic_name(name)
            raise NotFound(f"topic {name!r} does not exist", code="topic_not_found")
        return t

    def topic_config_from(self, name: str, body: dict[str, Any], base: TopicConfig | None) -> TopicConfig:
        """Validate a ``PUT /v1/topics/{topic}`` body into a config."""
        check_topic_name(name)
        c = self.config
        cfg = TopicConfig(
            name=name,
            uid=base.uid if base else 0,
            partitions=base.partitions if base else c.default_partitions,
            replication_factor=base.replication_factor if base else c.replication_factor,
            storage=base.storage if base else "durable",
            retention_ms=base.retention_ms if base else c.retention_ms,
            retention_bytes=base.retention_bytes if base else c.retention_bytes,
            max_message_bytes=base.max_message_bytes if base else c.max_message_bytes,
            segment_bytes=base.segment_bytes if base else c.segment_bytes,
            segment_ms=base.segment_ms if base else int(c.segment_age * 1000),
            created_ms=base.created_ms if base else self.now_ms(),
        )
        allowed = {
            "partitions",
            "replication_factor",
            "storage",
            "retention_ms",
            "retention_bytes",
            "max_message_bytes",
            "segment_bytes",
            "segment_ms",
        }
        unknown = set(body) - allowed
        if unknown:
            raise BadRequest(f"unknown topic field(s): {', '.join(sorted(unknown))}", code="invalid_field")
        for k in ("partitions", "replication_factor", "max_message_bytes", "segment_bytes", "segment_ms"):
            if k in body:
                v = body[k]
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    raise BadRequest(f"{k} must be a positive integer", code="invalid_field")
                setattr(cfg, k, v)
        for k in ("retention_ms", "retention_bytes"):
            if k in body:
                v = body[k]
                if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                    raise BadRequest(f"{k} must be a positive integer or null", code="invalid_field")
                setattr(cfg, k, v)
        if "storage" in body:
            if body["storage"] not in STORAGE_KINDS:
                raise BadRequest("storage must be 'durable' or 'ephemeral'", code="invalid_field")
            cfg.storage = body["storage"]
        if cfg.partitions > 1024:
            raise BadRequest("partitions must be at most 1024", code="invalid_field")
        if cfg.max_message_bytes > c.max_body_bytes:
            raise BadRequest(
                f"max_message_bytes must be at most the node's body limit ({c.max_body_bytes})",
                code="invalid_field",
            )
        if cfg.replication_factor > 7:
            raise BadRequest("replication_factor must be at most 7", code="invalid_field")
        if base is not None:
            if cfg.partitions < base.partitions:
                raise Conflict("partitions can only grow", code="partitions_shrink")
            if cfg.storage != base.storage:
                raise Conflict("storage of an existing topic cannot change", code="storage_change")
        return cfg

    def put_topic(self, name: str, body: dict[str, Any]) -> Deferred[tuple[Topic, bool]]:
        """Create a topic or update its config; fires with (topic, created) once persisted."""
        if self.stopping:
            raise Unavailable("node is stopping", code="stopping")
        existing = self.topics.get(name)
        cfg = self.topic_config_from(name, body, existing.config if existing else None)
        ops: list[Op] = []
        if existing is None:
            cfg.uid = self._next_uid
            self._next_uid += 1
            ops.append(("p", "meta", b"node/next_uid", str(self._next_uid).encode()))
            topic = self._make_topic(cfg)
            self.topics[name] = topic
            created = True
        else:
            topic = existing
            old_n = len(topic.logs)
            topic.config = cfg
            for lg in topic.logs:
                lg.segment_bytes = cfg.segment_bytes
                lg.segment_age_ms = cfg.segment_ms
            if cfg.partitions > old_n:
                extra = self._make_topic(cfg).logs[old_n:]
                topic.logs.extend(extra)
                for g in topic.groups.values():
                    g.ensure_partitions({lg.partition: 0 for lg in extra})
            created = False
        ops.append(("p", "meta", keys.topic_meta_key(name), _json_encode(cfg.to_dict())))
        d: Deferred[Any] = self.store.write(ops)
        if created:
            d.addCallback(_then, self.new_topics.fire, name)
        d.addCallback(lambda _: (topic, created))
        d.addErrback(self._storage_error)
        return d

    def ensure_topic(self, name: str) -> Deferred[Topic]:
        """The topic, created with defaults if auto-creation is on."""
        t = self.topics.get(name)
        if t is not None:
            return succeed(t)
        check_topic_name(name)
        if not self.config.auto_create_topics:
            raise NotFound(f"topic {name!r} does not exist", code="topic_not_found")
        if self.topic_creator is not None:
            return self.topic_creator(name)
        d: Deferred[Any] = self.put_topic(name, {})
        d.addCallback(lambda r: r[0])
        return d

    def delete_topic(self, name: str) -> Deferred[None]:
        """Delete a topic with all its data and groups, in one transaction."""
        t = self.get_topic(name)
        del self.topics[name]
        t.deleted = True
        uid = t.config.uid
        # The shared objects this node's logs name, and its own legacy ones.
        # Every replica deletes what it knows of: a DELETE of an object
        # already gone is harmless, and the objects go as long as one replica
        # of each partition is up (or comes back).
        remote = [s.remote for lg in t.logs for s in lg.segments if s.remote is not None]
        for lg in t.logs:
            self._spilling.pop((uid, lg.partition), None)
            self.integrity.map.drop((uid, lg.partition))
            self._trimming.discard((uid, lg.partition))
            own = self._legacy.pop((uid, lg.partition), [])
            remote.extend(o for o in own if o not in remote)
            if self.tier is not None:
                self.tier.forget(uid, lg.partition)
        pre = keys.topic_prefix(uid)
        nxt = keys.topic_prefix(uid + 1)
        ops: list[Op] = [
            ("d", "meta", keys.topic_meta_key(name)),
            ("r", "records", pre, nxt),
            ("r", "segments", pre, nxt),
            ("r", "meta", b"group/" + pre, b"group/" + nxt),
            ("r", "meta", b"part/" + pre, b"part/" + nxt),
            ("r", "meta", b"repl/" + pre, b"repl/" + nxt),
            ("r", "meta", b"s3m/" + pre, b"s3m/" + nxt),
            ("r", "meta", b"dmg/" + pre, b"dmg/" + nxt),
        ]
        for lg in t.logs:
            self._notify(name, lg.partition)
            for _off, w in self._stored_waiters.pop((name, lg.partition), []):
                w.errback(NotFound(f"topic {name!r} was deleted", code="topic_not_found"))
        d = self.store.write(ops)
        if remote:
            d.addCallback(lambda _: self._delete_remote(remote))
        d.addErrback(self._storage_error)
        return d

    def _delete_remote(self, objects: list[Any]) -> None:
        """Delete S3 objects no manifest names any more (after that manifest is committed)."""
        if self.tier is not None:
            self.tier.delete_objects(objects)
        else:
            log.warn("{n} S3 object(s) left behind: the S3 tier is off on this node", n=len(objects))

    def describe_topic(self, t: Topic) -> dict[str, Any]:
        """``GET /v1/topics/{topic}``."""
        parts = []
        for lg in t.logs:
            d = lg.describe()
            hs = lg.hot_start
            mem_n = max(0, lg.next_offset - hs) if lg.hot else 0
            remote = [s for s in lg.segments if s.remote is not None]
            lmdb_low = max(lg.log_start, remote[-1].last + 1) if remote else lg.log_start
            lmdb_high = lg.stored_end if t.config.durable else min(lg.stored_end, hs)
            lmdb_bytes = sum(s.bytes for s in lg.segments if s.base < lmdb_high and s.remote is None)
            d["tiers"] = {
                "memory": {
                    "low": hs if lg.hot else None,
                    "high": lg.next_offset if lg.hot else None,
                    "messages": mem_n,
                    "bytes": lg.hot_bytes,
                },
                "lmdb": {
                    "low": lmdb_low if lmdb_high > lmdb_low else None,
                    "high": lmdb_high if lmdb_high > lmdb_low else None,
                    "messages": max(0, lmdb_high - lmdb_low),
                    "bytes": lmdb_bytes,
                },
                "s3": self._s3_tier_view(t, lg, remote),
            }
            d["damaged"] = self.integrity.partition_view(t, lg.partition)
            parts.append(d)
        out = t.config.to_dict()
        out.pop("uid", None)
        out["messages"] = sum(max(0, lg.high_watermark - lg.log_start) for lg in t.logs)
        out["bytes"] = sum(p["bytes"] for p in parts)
        out["groups"] = sorted(t.groups)
        out["partition_details"] = parts
        return out

    def _s3_tier_view(self, t: Topic, lg: PartitionLog, remote: list[Segment]) -> dict[str, Any]:
        """The ``s3`` entry of a partition's ``tiers``: range, bytes, objects and upload status."""
        view: dict[str, Any] = {
            "enabled": self.tier is not None,
            "low": remote[0].base if remote else None,
            "high": remote[-1].last + 1 if remote else None,
            "messages": sum(s.count for s in remote),
            "bytes": sum(s.bytes for s in remote),
            "segments": len(remote),
            "object_bytes": sum(s.remote.size for s in remote if s.remote is not None),
        }
        if self.tier is not None:
            view.update(self.tier.partition_status(t.config.uid, lg.partition))
            # Only the partition's leader uploads (and trims); the others follow.
            rl = self.remote_log
            view["uploader"] = (
                rl is not None and t.config.durable and rl.leader_epoch(t, lg.partition) is not None
            )
            view["legacy_segments"] = len(self._legacy.get((t.config.uid, lg.partition), ()))
        return view

    def summarize_topic(self, t: Topic) -> dict[str, Any]:
        """One line of ``GET /v1/topics``."""
        return {
            "name": t.name,
            "partitions": len(t.logs),
            "replication_factor": t.config.replication_factor,
            "storage": t.config.storage,
            "messages": sum(max(0, lg.high_watermark - lg.log_start) for lg in t.logs),
            "bytes": sum(s.bytes for lg in t.logs for s in lg.segments),
            "high_watermarks": [lg.high_watermark for lg in t.logs],
            "groups": len(t.groups),
        }

    # -- publish ---------------------------------------------------------------

    def check_writable(self) -> None:
        """Refuse writes the node cannot honour: stopping, storage broken or full, backlog."""
        if self.stopping:
            raise Unavailable("node is stopping", code="stopping")
        if self.store.failed is not None:
            raise Unavailable(f"storage failed: {self.store.failed}", code="storage_failed")
        limit = self.disk_hard_limit
        if self.store.used_bytes > limit:
            why = ""
            if self.tier is not None and self.tier.failing:
                why = f" (S3 uploads are failing: {self.tier.last_error})"
            raise InsufficientStorage(
                f"disk budget exceeded: LMDB uses {self.store.used_bytes} of {limit} bytes{why}; "
                "nothing was written (raise --disk-budget, set retention, or fix the S3 tier)",
                code="disk_budget_exceeded",
            )
        if self.store.pending_bytes > self.max_pending_bytes:
            raise Overloaded("too much unflushed data; retry shortly", retry_after=1)

    @property
    def disk_hard_limit(self) -> int:
        """LMDB bytes past which publishes are refused (the budget, or more with S3 behind it)."""
        c = self.config
        return hard_limit(c.disk_budget, self.tier is not None, c.disk_hard_limit)

    @staticmethod
    def check_message_sizes(records: list[Record], max_bytes: int) -> None:
        """413 when a message (payload, key and headers) exceeds ``max_bytes``."""
        for r in records:
            if r.size - RECORD_OVERHEAD > max_bytes:
                raise _too_large(r, max_bytes)

    def publish(
        self, topic: Topic, records: list[Record], acks: str, partition: int | None = None
    ) -> Deferred[PublishResult]:
        """Append ``records`` (offsets unassigned) to ``topic`` -- all of them to
        ``partition`` when given (the cluster routed them), else by key.

        Fires once the ``acks`` level holds: for a durable topic with acks
        ``leader``/``quorum``, after the records are fsynced in LMDB (with one
        node, the quorum is this node); for an ephemeral topic, once they are
        in memory; with ``acks=none``, at once.
        """
        self.check_writable()
        cfg = topic.config
        max_bytes = cfg.max_message_bytes
        message_bytes = 0
        any_id = False
        overhead = RECORD_OVERHEAD
        for r in records:
            size = r.size - overhead  # payload, key and headers
            if size > max_bytes:
                raise _too_large(r, max_bytes)
            message_bytes += size
            if r.id is not None:
                any_id = True
        if not cfg.durable:
            unstored = sum(lg.hot_bytes for t in self.topics.values() for lg in t.logs)
            if unstored > self.config.memory_budget * 2:
                raise Overloaded("memory budget exceeded; ephemeral spill is behind", retry_after=1)
        now = self.now_ms()
        dedup = topic.dedup
        n = len(records)
        offsets = [0] * n
        parts = [0] * n
        dup = [False] * n
        by_part: dict[int, list[Record]] = {}
        batch_ids: dict[str, int] = {}
        ids = self._ids
        fast = not any_id and (len(topic.logs) == 1 or partition is not None)
        if fast:
            # The common case: one partition, no client ids, so no dedup.
            prefix, base = ids.prefix, ids.n
            for k, r in enumerate(records, base + 1):
                r.timestamp = now
                r.id = f"{prefix}{k:x}"
            ids.n = base + n
            by_part[partition or 0] = records
            if partition:
                parts = [partition] * n
        for i, r in enumerate(records if not fast else ()):
            r.timestamp = now
            if r.id is None:
                r.id = ids.next()
            else:
                hit = dedup.lookup(r.id, now)
                if hit is None and r.id in batch_ids:
                    j = batch_ids[r.id]
                    hit = (parts[j], -1 - j)
                if hit is not None:
                    parts[i], offsets[i] = hit
                    dup[i] = True
                    continue
                batch_ids[r.id] = i
            p = topic.partition_for(r.key) if partition is None else partition
            parts[i] = p
            by_part.setdefault(p, []).append(r)
        ops: list[Op] = []
        nbytes = 0
        waits: list[Deferred[None]] = []
        uid = cfg.uid
        name = cfg.name
        if cfg.durable:
            self.check_backlog(uid, name, by_part)
        put_records = self.store.put_records
        sizes: dict[int, int] = {}
        for p, recs in by_part.items():
            lg = topic.logs[p]
            changed = lg.append(recs, now)
            if cfg.durable:
                ops.extend(put_records(uid, p, recs))
                for s in changed:
                    ops.append(
                        ("p", "segments", keys.segment_key(uid, p, s.base), _json_encode(s.to_tuple()))
                    )
                size = sum(r.size for r in recs)
                sizes[p] = size
                nbytes += size
        # The memory budget holds between ticks too: a fast publisher makes the
        # eviction run as soon as an eighth of the budget was added.
        self._hot_added += nbytes if cfg.durable else sum(r.size for recs in by_part.values() for r in recs)
        if self._hot_added > self.config.memory_budget // 8:
            self._hot_added = 0
            self.enforce_memory_budget(spill=False)
        if fast:
            first = records[0].offset
            offsets = list(range(first, first + n))
            ndup = 0
        else:
            for i, r in enumerate(records):
                if not dup[i]:
                    offsets[i] = r.offset
                elif offsets[i] < 0:
                    offsets[i] = records[-1 - offsets[i]].offset
            for rid, i in batch_ids.items():
                r = records[i]
                dedup.remember(rid, r.partition, r.offset, now)
            ndup = sum(dup)
        self.published_total += n - ndup
        self.published_bytes_total += nbytes
        self.deduplicated_total += ndup
        if self.metrics is not None:
            self.metrics.published(name, n - ndup, message_bytes)
        if cfg.durable:
            if ops:
                backlog = self.backlog
                for p, size in sizes.items():
                    backlog[(uid, p)] = backlog.get((uid, p), 0) + size
                d = self.store.write(ops, nbytes)
                d.addBoth(self._release_backlog, uid, sizes)
                d.addCallback(
                    self._committed, name, {p: recs[-1].offset + 1 for p, recs in by_part.items()}, uid
                )
                d.addErrback(self._commit_failed, name, list(by_part))
            if acks != "none":
                # Wait for every offset in the answer (duplicates too) to be stored.
                high: dict[int, int] = {}
                for p, o in zip(parts, offsets, strict=False):
                    high[p] = max(high.get(p, -1), o)
                for p, o in high.items():
                    waits.append(self.wait_stored(name, p, o))
        else:
            for p in by_part:
                self._notify(name, p)
        if acks == "none":
            stored = "pending" if cfg.durable else "memory"
        else:
            stored = "lmdb" if cfg.durable else "memory"
        result = PublishResult(offsets, [r.id or "" for r in records], parts, dup, stored)
        if not waits:
            return succeed(result)
        dl: Deferred[Any] = DeferredList(waits, fireOnOneErrback=True, consumeErrors=True)
        dl.addCallback(lambda _: result)
        dl.addErrback(_first_failure)
        return dl  # type: ignore[return-value]

    def check_backlog(self, uid: int, name: str, partitions: Any) -> None:
        """429 ``backpressure`` when a partition's unflushed backlog is over its limit."""
        backlog = self.backlog
        limit = self.partition_backlog
        for p in partitions:
            if backlog.get((uid, p), 0) > limit:
                if self.metrics is not None:
                    self.metrics.rejected_requests.labels("backpressure").inc()
                raise Overloaded(
                    f"partition {name}/{p} has more than {limit} bytes waiting for storage; "
                    "retry after the Retry-After delay",
                    retry_after=1,
                    code="backpressure",
                )

    def _release_backlog(self, result: Any, uid: int, sizes: dict[int, int]) -> Any:
        backlog = self.backlog
        for p, size in sizes.items():
            left = backlog.get((uid, p), 0) - size
            if left > 0:
                backlog[(uid, p)] = left
            else:
                backlog.pop((uid, p), None)
        return result

    # -- replication: a follower's writes ------------------------------------------------

    def append_replicated(
        self, topic: Topic, partition: int, records: list[Record], extra_ops: Sequence[Op] = ()
    ) -> Deferred[None]:
        """Store a leader's batch at its offsets (a follower's write) -- with
        ``extra_ops`` in the same transaction -- and fire once it is durable.
        ``ValueError`` if the records do not continue the log."""
        self.check_writable()
        lg = topic.logs[partition]
        cfg = topic.config
        changed = lg.append_at(records, self.now_ms())
        if not records:
            return succeed(None)
        ops: list[Op] = list(self.store.put_records(cfg.uid, partition, records))
        ops.extend(self._segment_ops(cfg.uid, partition, changed))
        ops.extend(extra_ops)
        d: Deferred[Any] = self.store.write(ops, sum(r.size for r in records))
        d.addCallback(self._committed, cfg.name, {partition: records[-1].offset + 1}, cfg.uid)
        d.addErrback(self._commit_failed, cfg.name, [partition])
        return d

    def truncate_partition(
        self, topic: Topic, partition: int, offset: int, extra_ops: Sequence[Op] = ()
    ) -> Deferred[None]:
        """Drop the records from ``offset`` on, in memory and in LMDB, in one
        transaction with ``extra_ops`` (a follower's divergent, uncommitted
        suffix).  Never below the high watermark (``ValueError``)."""
        lg = topic.logs[partition]
        uid = topic.config.uid
        removed, changed = lg.truncate(offset)
        ops: list[Op] = [
            ("r", "records", keys.record_key(uid, partition, offset), keys.record_key(uid, partition + 1, 0))
        ]
        ops.extend(("d", "segments", keys.segment_key(uid, partition, seg.base)) for seg in removed)
        ops.extend(self._segment_ops(uid, partition, changed))
        ops.extend(extra_ops)
        d: Deferred[Any] = self.store.write(ops)
        d.addErrback(self._storage_error)
        return d

    def reset_partition(
        self,
        topic: Topic,
        partition: int,
        start: int,
        extra_ops: Sequence[Op] = (),
        floor: int | None = None,
    ) -> Deferred[None]:
        """Drop the partition's local log and restart it empty at ``start``
        (a follower whose end is below the leader's log start), in memory and
        in LMDB -- records, segment rows and the log start checkpoint a
        restart recovers from -- in one transaction with ``extra_ops``.
        Never below the high watermark (``ValueError``).

        The shared remote segments stay: the log starts again where the
        partition's does, with the shared segments below ``start`` at its
        front (served from the object store), and nothing in S3 is deleted --
        a replica's local delete never touches the shared copy (only this
        node's own legacy objects go, once the shared list covers them).
        ``floor`` is the partition's log start as the leader knows it: while
        this node's view of the shared list does not reach down to it, the
        offsets in between are a hole reads answer with 503 ``catching_up``
        rather than skip."""
        lg = topic.logs[partition]
        uid = topic.config.uid
        state = self._shared_state(topic, partition)
        removed = lg.reset(start)
        lg.floor = floor if floor is not None and floor < start and state is not None else None
        self._spilling.pop((uid, partition), None)
        lo, hi = keys.record_key(uid, partition, 0), keys.record_key(uid, partition + 1, 0)
        ops: list[Op] = [("r", "records", lo, hi), ("r", "segments", lo, hi)]
        gone_legacy: list[RemoteObject] = []
        if state is not None:
            follow_ops, gone_legacy, _ = self._follow_ops(topic, partition, state)
            ops.extend(follow_ops)
        else:
            ops.append(("d", "meta", keys.manifest_key(uid, partition)))
            ops.append(self._log_start_op(uid, partition, lg))
        ops.extend(self.integrity.dropped(topic, partition))
        ops.extend(extra_ops)
        log.info(
            "reset {topic}/{partition} to an empty local log at offset {start} ({n} segment(s) "
            "dropped; the log starts at {low})",
            topic=topic.name,
            partition=partition,
            start=start,
            n=len(removed),
            low=lg.log_start,
        )
        self._notify(topic.name, partition)
        d: Deferred[Any] = self.store.write(ops)
        if gone_legacy:
            d.addCallback(_then, self._delete_remote, gone_legacy)
        d.addErrback(self._storage_error)
        return d

    # -- the shared remote segments ------------------------------------------------

    def legacy_keys(self, topic: Topic, partition: int) -> set[str]:
        """Keys of this node's own uploads under the old per-node keys (not shared yet)."""
        return {o.key for o in self._legacy.get((topic.config.uid, partition), ())}

    def legacy_objects(self, topic: Topic, partition: int) -> list[RemoteObject]:
        """This node's own uploads under the old per-node keys, oldest first."""
        return list(self._legacy.get((topic.config.uid, partition), ()))

    def _shared_state(self, topic: Topic, partition: int) -> RemoteState | None:
        """The shared remote state this node follows (None: the S3 tier is off
        here or the topic is not tiered)."""
        if self.tier is None or not topic.config.durable or self.remote_log is None:
            return None
        state: RemoteState = self.remote_log.state(topic, partition)
        return state

    def follow_remote(self, topic: Topic, partition: int, state: RemoteState | None = None) -> Deferred[None]:
        """Make the partition's log follow its shared remote state (``state``,
        or the one committed): the shared segments below this replica's high
        watermark become the front of its log, its local copies of them and
        everything below the log start go from LMDB -- manifest, record and
        row deletes in one transaction (durable when this fires).  Nothing in
        S3 is deleted but this node's own legacy objects the shared list
        covers.  Idempotent: without a change nothing is written."""
        if topic.deleted or topic.name not in self.topics:
            return succeed(None)
        if state is None:
            state = self._shared_state(topic, partition)
            if state is None:
                return succeed(None)
        ops, gone_legacy, changed = self._follow_ops(topic, partition, state)
        if not changed:
            return succeed(None)
        d: Deferred[Any] = self.store.write(ops)
        if gone_legacy:
            d.addCallback(_then, self._delete_remote, gone_legacy)
        d.addErrback(self._storage_error)
        return d

    def _follow_ops(
        self, topic: Topic, partition: int, state: RemoteState
    ) -> tuple[list[Op], list[RemoteObject], bool]:
        """Follow ``state`` in memory; the LMDB ops that make it durable, this
        node's legacy objects to delete after they commit, and whether
        anything changed."""
        lg = topic.logs[partition]
        uid = topic.config.uid
        legacy = self._legacy.get((uid, partition), [])
        before = lg.log_start
        change = lg.follow_remote(state.start, state.objects, {o.key for o in legacy})
        shared = {o.key for o in state.objects}
        front = {s.remote.key for s in lg.segments if s.remote is not None}
        keep: list[RemoteObject] = []
        gone: list[RemoteObject] = []
        for o in legacy:
            if o.key in shared:
                continue  # adopted: the shared list names it now
            if o.key not in front and o.last < state.end:
                gone.append(o)  # the shared segments (or retention) cover it
            else:
                keep.append(o)
        legacy_changed = len(keep) != len(legacy)
        if keep:
            self._legacy[(uid, partition)] = keep
        else:
            self._legacy.pop((uid, partition), None)
        ops: list[Op] = []
        rk, sk = keys.record_key, keys.segment_key
        for seg in change.dropped:
            ops.append(("r", "records", rk(uid, partition, seg.base), rk(uid, partition, seg.last + 1)))
            ops.append(("d", "segments", sk(uid, partition, seg.base)))
        for old, seg in change.trimmed:
            ops.append(("r", "records", rk(uid, partition, old), rk(uid, partition, seg.base)))
            ops.append(("d", "segments", sk(uid, partition, old)))
        ops.extend(self._segment_ops(uid, partition, [seg for _old, seg in change.trimmed]))
        front_objs = [s.remote for s in lg.segments if s.remote is not None]
        ops.append(
            (
                "p",
                "meta",
                keys.manifest_key(uid, partition),
                encode_manifest(Manifest(state.start, front_objs, keep)),
            )
        )
        ops.append(self._log_start_op(uid, partition, lg))
        if change.changed:
            # Damage known below the log start is gone with the offsets, and
            # damage of this node's LMDB copy below its first local record
            # with that copy: those offsets are read from the shared segments.
            local = next((s.base for s in lg.segments if s.remote is None), lg.next_offset)
            ops.extend(self.integrity.dropped(topic, partition, below=lg.log_start))
            ops.extend(self.integrity.dropped(topic, partition, below=local, tier="lmdb"))
            log.info(
                "{topic}/{partition} follows the shared remote segments: log start {low} (was {before}), "
                "{n} remote segment(s) up to offset {high}, {d} local segment(s) dropped",
                topic=topic.name,
                partition=partition,
                low=lg.log_start,
                before=before,
                n=len(front_objs),
                high=front_objs[-1].last + 1 if front_objs else lg.log_start,
                d=len(change.dropped),
            )
            self._notify(topic.name, partition)
        return ops, gone, change.changed or legacy_changed

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
            if lg.stored(end):
                self._notify(name, p)
            waiters = self._stored_waiters.get((name, p))
            if waiters:
                keep = []
                for off, w in waiters:
                    if off < lg.stored_end:
                        w.callback(None)
                    else:
                        keep.append((off, w))
                self._stored_waiters[(name, p)] = keep

    def _commit_failed(self, f: Any, name: str, partitions: list[int]) -> None:
        err = Unavailable(f"storage failed: {f.value}", code="storage_failed")
        for key, waiters in list(self._stored_waiters.items()):
            for _off, w in waiters:
                w.errback(err)
            self._stored_waiters[key] = []

    def _storage_error(self, f: Any) -> Any:
        if f.check(Unavailable, NotFound):
            return f
        raise Unavailable(f"storage failed: {f.value}", code="storage_failed")

    def wait_stored(self, name: str, partition: int, offset: int) -> Deferred[None]:
        """Fires once ``offset`` of the partition is fsynced."""
        t = self.topics.get(name)
        if t is None:
            return succeed(None)
        lg = t.logs[partition]
        if offset < lg.stored_end:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._stored_waiters.setdefault((name, partition), []).append((offset, d))
        return d

    # -- watching and reading --------------------------------------------------

    def watch(self, name: str, partition: int, fn: Callable[[], None]) -> Callable[[], None]:
        """Call ``fn`` whenever the partition's high watermark moves (or it is deleted).

        Returns a function that stops watching.
        """
        key = (name, partition)
        self._watchers.setdefault(key, set()).add(fn)

        def unwatch() -> None:
            s = self._watchers.get(key)
            if s is not None:
                s.discard(fn)
                if not s:
                    del self._watchers[key]

        return unwatch

    def notify(self, name: str, partition: int) -> None:
        """Wake the partition's watchers (e.g. a remote feed brought records)."""
        self._notify(name, partition)

    def _notify(self, name: str, partition: int) -> None:
        fns = self._watchers.get((name, partition))
        if fns:
            for fn in list(fns):
                try:
                    fn()
                except Exception:
                    log.failure("watcher of {topic}/{partition} failed", topic=name, partition=partition)

    def read(
        self,
        topic: Topic,
        partition: int,
        start: int,
        limit: int,
        _attempt: int = 0,
        *,
        repair: bool = True,
        max_bytes: int | None = None,
    ) -> Deferred[list[Record]]:
        """Visible records from ``start`` (below the high watermark), hot tail,
        S3 or LMDB, checked: a damaged range met fails the read with
        ``corrupt_record`` -- never a short read.  In a cluster (``repair``)
        the range is first repaired from a healthy replica, or the read served
        by one.  At most ``limit`` records and, with ``max_bytes``, at most
        that many bytes of :attr:`Record.size` -- but always at least one
        record when there is one, so a record larger than the budget is still
        read."""
        lg = topic.logs[partition]
        if start < lg.log_start:
            start = lg.log_start
        got = lg.read_hot(start, limit)
        if got is not None:
            return succeed(got if max_bytes is None else take_bytes(got, max_bytes))

        def again() -> Deferred[list[Record]]:
            return self.read(topic, partition, start, limit, _attempt + 1, repair=repair, max_bytes=max_bytes)

        ig = self.integrity
        how = ig.how(topic, partition, start, limit, again, _attempt, repair)

        seg = remote_segment(lg, start)
        if seg is None:
            hole = lg.remote_hole()
            if hole is not None and hole[0] <= start < hole[1]:
                return fail(
                    Unavailable(
                        f"offsets {hole[0]}-{hole[1] - 1} of {topic.name}/{partition} are not readable on "
                        "this replica yet (its list of the partition's remote segments is behind); retry shortly",
                        code="catching_up",
                    )
                )
        end = min(lg.hot_start, lg.high_watermark, lg.stored_end)
        hi = min(seg.last + 1 if seg is not None else end, start + limit) - 1
        known = self.integrity.known(topic, partition, start, hi) if hi >= start else None
        if known is not None:
            return ig.meet(known, how)
        if seg is not None:
            try:
                d = self._read_remote(topic, lg, seg, start, limit)
            except Exception:
                return fail()
            if max_bytes is not None:
                d.addCallback(take_bytes, max_bytes)
            return d.addErrback(ig.read_failed, how)
        d = self.store.read_records(
            topic.config.uid,
            partition,
            start,
            limit,
            end,
            self.integrity.dense(topic, lg, start, end),
            max_bytes,
        )

        def fill(recs: list[Record]) -> Any:
            if (not recs or recs[0].offset > start) and remote_segment(lg, start) is not None:
                # The segment moved to S3 while this read was on its way to LMDB.
                return self.read(topic, partition, start, limit, max_bytes=max_bytes)
            if not recs and start < lg.hot_start:
                # A gap below the hot tail (an ephemeral tail lost in a
                # restart): nothing is stored there, continue at the tail.
                tail = lg.read_hot(lg.hot_start, limit) or []
                return tail if max_bytes is None else take_bytes(tail, max_bytes)
            if max_bytes is not None:
                # Go on into the hot tail only if the stored range was read to
                # its end: a scan the budget stopped must not skip past it.
                whole = not recs or recs[-1].offset + 1 >= end
                kept = take_bytes(recs, max_bytes)  # (the scan stops past the budget, not at it)
                room = max_bytes - sum(r.size for r in kept)
                if not whole or len(kept) < len(recs) or len(kept) >= limit or room <= 0:
                    return kept
                more = lg.read_hot(
                    max(lg.hot_start, kept[-1].offset + 1 if kept else start), limit - len(kept)
                )
                if more:
                    kept.extend(_fit(more, room))
                return kept
            if len(recs) < limit:
                more = lg.read_hot(
                    max(lg.hot_start, recs[-1].offset + 1 if recs else start), limit - len(recs)
                )
                if more:
                    recs.extend(more)
            return recs

        d.addCallback(fill)
        d.addErrback(ig.read_failed, how)
        return d

    def _read_remote(
        self, topic: Topic, lg: PartitionLog, seg: Segment, start: int, limit: int
    ) -> Deferred[list[Record]]:
        if self.tier is None:
            raise Unavailable(
                f"offsets {seg.base}-{seg.last} of {topic.name}/{lg.partition} are in S3, "
                "and the S3 tier is not configured on this node",
                code="s3_tier_disabled",
            )
        return self.tier.read(seg, lg.partition, start, limit)

    def find_time(self, topic: Topic, partition: int, ts_ms: int, _attempt: int = 0) -> Deferred[int]:
        """The first offset whose timestamp is at or after ``ts_ms`` (a damaged
        range on the way fails it with ``corrupt_record``, as a read)."""
        lg = topic.logs[partition]
        seg = lg.segment_for_time(ts_ms)
        if seg is None:
            return succeed(lg.high_watermark)
        if lg.hot_start <= seg.base:
            # The whole segment is in memory.  (Otherwise its start is in
            # LMDB or S3, and the hot tail would skip what lies below it.)
            for r in lg.hot:
                if r.timestamp >= ts_ms and r.offset >= seg.base:
                    return succeed(r.offset)
        uid = topic.config.uid
        end = min(lg.stored_end, seg.last + 1)
        if seg.remote is not None:
            return self._find_time_remote(topic, lg, seg, ts_ms)

        dense = self.integrity.dense(topic, lg, seg.base, end)

        def scan() -> int:
            start = seg.base
            while start < end:
                part = [(max(lo, start), hi) for lo, hi in dense if hi >= start]
                recs = self.store.read_records_sync(uid, partition, start, 1000, end, part)
                if not recs:
                    break
                for r in recs:
                    if r.timestamp >= ts_ms:
                        return r.offset
                start = recs[-1].offset + 1
            return end

        def again() -> Deferred[int]:
            return self.find_time(topic, partition, ts_ms, _attempt + 1)

        d: Deferred[int] = self.store.call_reader(scan)
        how = self.integrity.how(topic, partition, seg.base, 0, again, _attempt, repair=True)
        return d.addErrback(self.integrity.read_failed, how)

    def _find_time_remote(self, topic: Topic, lg: PartitionLog, seg: Segment, ts_ms: int) -> Deferred[int]:
        """``find_time`` inside a segment held in S3 (reads it chunk by chunk)."""

        def step(start: int) -> Any:
            if start > seg.last:
                return start
            d = self._read_remote(topic, lg, seg, start, 1_000_000)

            def got(recs: list[Record]) -> Any:
                for r in recs:
                    if r.timestamp >= ts_ms:
                        return r.offset
                return step(recs[-1].offset + 1) if recs else seg.last + 1

            return d.addCallback(got)

        return step(seg.base)

    # -- consumer groups -------------------------------------------------------

    def put_group(
        self, topic: Topic, name: str, body: dict[str, Any]
    ) -> Deferred[tuple[ConsumerGroup, bool]]:
        """Create or update a consumer group; fires once persisted."""
        g = topic.groups.get(name)
        cfg = self.group_config_from(topic.name, name, body, g.config if g else None)
        created = g is None
        if g is None:
            if cfg.start == "earliest":
                starts = {lg.partition: lg.log_start for lg in topic.logs}
            else:
                starts = {lg.partition: lg.high_watermark for lg in topic.logs}
            g = ConsumerGroup(name, cfg, starts)
            topic.groups[name] = g
        else:
            g.config = cfg
        d: Deferred[Any] = self._persist_group(topic, g)
        d.addCallback(lambda _: (g, created))
        return d

    def group_config_from(
        self, topic_name: str, name: str, body: dict[str, Any], base: GroupConfig | None
    ) -> GroupConfig:
        """Validate a ``PUT .../groups/{group}`` body; touches no state.

        A dead-letter topic must exist or be creatable (auto-create on), so a
        message that runs out of deliveries always has somewhere to go.
        """
        check_topic_name(topic_name)
        check_group_name(name)
        allowed = {"start", "ack_deadline_ms", "max_deliveries", "dead_letter_topic", "max_in_flight"}
        unknown = set(body) - allowed
        if unknown:
            raise BadRequest(f"unknown group field(s): {', '.join(sorted(unknown))}", code="invalid_field")
        cfg = GroupConfig(**base.to_dict()) if base else GroupConfig()
        if "start" in body:
            if body["start"] not in ("earliest", "latest"):
                raise BadRequest("start must be 'earliest' or 'latest'", code="invalid_field")
            cfg.start = body["start"]
        for k, lo in (("ack_deadline_ms", 1), ("max_deliveries", 0), ("max_in_flight", 1)):
            if k in body:
                v = body[k]
                if not isinstance(v, int) or isinstance(v, bool) or v < lo or v > 2**31:
                    raise BadRequest(f"{k} must be an integer >= {lo}", code="invalid_field")
                setattr(cfg, k, v)
        if "dead_letter_topic" in body:
            v = body["dead_letter_topic"]
            if v is not None:
                if not isinstance(v, str):
                    raise BadRequest("dead_letter_topic must be a topic name", code="invalid_field")
                check_topic_name(v)
                if v == topic_name:
                    raise BadRequest("dead_letter_topic must differ from the topic", code="invalid_field")
                if v not in self.topics and not self.config.auto_create_topics:
                    raise BadRequest(
                        f"dead_letter_topic {v!r} does not exist and topics are not auto-created",
                        code="dead_letter_topic_not_found",
                    )
            cfg.dead_letter_topic = v
        return cfg

    def get_group(self, topic: Topic, name: str) -> ConsumerGroup:
        """The group, or :class:`NotFound`."""
        g = topic.groups.get(name)
        if g is None:
            check_group_name(name)
            raise NotFound(f"group {name!r} does not exist on topic {topic.name!r}", code="group_not_found")
        return g

    def delete_group(self, topic: Topic, name: str) -> Deferred[None]:
        """Forget a group and its state."""
        self.get_group(topic, name)
        del topic.groups[name]
        d = self.store.write([("d", "meta", keys.group_meta_key(topic.config.uid, name))])
        d.addErrback(self._storage_error)
        return d

    def _persist_group(self, topic: Topic, g: ConsumerGroup) -> Deferred[None]:
        self._dirty_groups.discard((topic.name, g.name))
        state = g.to_state()
        state["name"] = g.name
        d = self.store.write(
            [("p", "meta", keys.group_meta_key(topic.config.uid, g.name), _json_encode(state))]
        )
        d.addErrback(self._storage_error)
        return d

    def _flush_dirty_groups(self) -> None:
        dirty, self._dirty_groups = self._dirty_groups, set()
        for tname, gname in dirty:
            t = self.topics.get(tname)
            g = t.groups.get(gname) if t else None
            if t is not None and g is not None:
                self._persist_group(t, g).addErrback(lambda f: None)

    def pull(
        self,
        topic: Topic,
        g: ConsumerGroup,
        max_count: int,
        wait_ms: int,
        partitions: Collection[int] | None = None,
        max_bytes: int = DEFAULT_READ_BYTES,
    ) -> Deferred[list[tuple[Delivery, Record]]]:
        """Lease up to ``max_count`` messages, at most ``max_bytes`` of them
        (at least one), waiting up to ``wait_ms`` for some.

        Only partitions this node owns the group state of are leased from
        (``partitions``, else :attr:`group_partitions`' answer; all of them on
        a single node): in a cluster each partition's leader owns it."""
        deadline = self.clock.seconds() + wait_ms / 1000.0
        if partitions is None and self.group_partitions is not None:
            partitions = self.group_partitions(topic)

        def attempt() -> Deferred[list[tuple[Delivery, Record]]]:
            if topic.groups.get(g.name) is not g:
                raise NotFound(f"group {g.name!r} was deleted", code="group_not_found")
            self._run_group_tick(topic, g)
            deliveries = g.pull(max_count, self.now_ms(), topic.visible(), partitions)
            if deliveries:
                self._dirty_groups.add((topic.name, g.name))
                loaded = Deferred.fromCoroutine(self._load_deliveries(topic, g, deliveries, max_bytes))
                # Only control records (settled unseen): keep waiting, if there is time.
                return loaded.addCallback(lambda got: got or again())
            remaining = deadline - self.clock.seconds()
            if remaining <= 0:
                return succeed([])
            due = g.next_due_ms()
            if due is not None:
                remaining = min(remaining, max(0.001, due / 1000.0 - self.clock.seconds()))
            return self._wait_any(topic, remaining).addCallback(lambda _: attempt())

        def again() -> Any:
            return attempt() if deadline > self.clock.seconds() else []

        return attempt()

    async def _load_deliveries(
        self, topic: Topic, g: ConsumerGroup, deliveries: list[Delivery], max_bytes: int
    ) -> list[tuple[Delivery, Record]]:
        """The leased records, read in offset order per partition until
        ``max_bytes`` of them are in hand (at least one).  Leases past the
        budget are given back unseen (:meth:`ConsumerGroup.give_back`, the
        attempt not counted); leases whose record is gone (retention) or is a
        control record are settled.  A failed read fails the pull: its leases
        run out and the messages are delivered again, never settled unread."""
        by_part: dict[int, list[int]] = {}
        for dv in deliveries:
            by_part.setdefault(dv.partition, []).append(dv.offset)
        found: dict[tuple[int, int], Record] = {}
        #: partition → the first offset not read (the budget ran out there).
        unread_from: dict[int, int] = {}
        room = max_bytes
        for p, offs in by_part.items():
            if room <= 0 and found:
                unread_from[p] = -1
                continue
            offs.sort()
            want = set(offs)
            i = 0
            while i < len(offs) and p not in unread_from:
                # A run of offsets close together is read as one span.
                j = i + 1
                while j < len(offs) and offs[j] - offs[j - 1] <= 4:
                    j += 1
                start, hi = offs[i], offs[j - 1] + 1
                i = j
                while start < hi:
                    if room <= 0 and found:
                        unread_from[p] = start
                        break
                    recs = await self.read(topic, p, start, hi - start, max_bytes=max(room, 1))
                    recs = [r for r in recs if r.offset < hi]
                    if not recs:
                        break  # nothing left below hi: deleted meanwhile
                    for r in recs:
                        if r.offset not in want:
                            continue
                        if found and r.size > room:
                            unread_from[p] = r.offset
                            break
                        found[(p, r.offset)] = r
                        room -= r.size
                    if p in unread_from:
                        break
                    start = recs[-1].offset + 1
        out: list[tuple[Delivery, Record]] = []
        now = self.now_ms()
        unseen: list[Delivery] = []
        for dv in deliveries:
            got = found.get((dv.partition, dv.offset))
            if got is not None:
                if not got.control:
                    out.append((dv, got))
                else:
                    g.ack(dv.ack_id, now)  # a control record: nothing to deliver
            elif dv.offset >= unread_from.get(dv.partition, dv.offset + 1):
                unseen.append(dv)
            else:
                g.ack(dv.ack_id, now)  # deleted by retention meanwhile: settle it
        for dv in reversed(unseen):
            g.give_back(dv.ack_id, now)
        return out

    def _read_span(self, topic: Topic, p: int, lo: int, hi: int) -> Deferred[list[Record]]:
        out: list[Record] = []

        def step(start: int) -> Deferred[list[Record]]:
            d = self.read(topic, p, start, hi - start)

            def got(recs: list[Record]) -> Any:
                recs = [r for r in recs if r.offset < hi]
                out.extend(recs)
                if not recs or recs[-1].offset + 1 >= hi:
                    return out
                return step(recs[-1].offset + 1)

            return d.addCallback(got)

        return step(lo)

    def _wait_any(self, topic: Topic, seconds: float) -> Deferred[None]:
        """Fires when any partition of ``topic`` gets new data, or after ``seconds``."""
        unwatchers: list[Callable[[], None]] = []

        def fire() -> None:
            if not d.called:
                for u in unwatchers:
                    u()
                if timer.active():
                    timer.cancel()
                d.callback(None)

        def cancel(_: Deferred[None]) -> None:
            for u in unwatchers:
                u()
            if timer.active():
                timer.cancel()

        d: Deferred[None] = Deferred(cancel)
        timer = self.clock.callLater(seconds, fire)
        for lg in topic.logs:
            unwatchers.append(self.watch(topic.name, lg.partition, fire))
        return d

    def ack(self, topic: Topic, g: ConsumerGroup, ack_ids: list[str]) -> Deferred[dict[str, str]]:
        """Ack deliveries; fires with {ack_id: refusal reason} once the state is persisted."""
        now = self.now_ms()
        self._run_group_tick(topic, g)
        refused: dict[str, str] = {}
        for a in ack_ids:
            why = g.ack(a, now)
            if why is not None:
                refused[a] = why
        d = self._persist_group(topic, g)
        return d.addCallback(lambda _: refused)

    def give_back(self, topic: Topic, g: ConsumerGroup, ack_ids: list[str]) -> Deferred[dict[str, str]]:
        """Take back leases their consumer never saw (:meth:`ConsumerGroup.give_back`)."""
        now = self.now_ms()
        refused: dict[str, str] = {}
        for a in reversed(ack_ids):
            why = g.give_back(a, now)
            if why is not None:
                refused[a] = why
        self._dirty_groups.add((topic.name, g.name))
        return succeed(refused)

    def nack(
        self, topic: Topic, g: ConsumerGroup, ack_ids: list[str], delay_ms: int
    ) -> Deferred[dict[str, str]]:
        """Nack deliveries for redelivery after ``delay_ms``."""
        now = self.now_ms()
        self._run_group_tick(topic, g)
        refused: dict[str, str] = {}
        dead: list[DeadLetter] = []
        for a in ack_ids:
            why, dl = g.nack(a, delay_ms, now)
            if why is not None:
                refused[a] = why
            if dl is not None:
                dead.append(dl)
        d = self._dead_letter(topic, g, dead) if dead else succeed(None)
        d.addCallback(lambda _: self._persist_group(topic, g))
        return d.addCallback(lambda _: refused)

    def _run_group_tick(self, topic: Topic, g: ConsumerGroup) -> None:
        dead = g.tick(self.now_ms())
        if dead:
            d = self._dead_letter(topic, g, dead)
            d.addCallback(lambda _: self._persist_group(topic, g))
            d.addErrback(lambda f: log.failure("dead-lettering failed", f))

    def _dead_letter(self, topic: Topic, g: ConsumerGroup, dead: list[DeadLetter]) -> Deferred[None]:
        """Copy exhausted messages to the group's dead-letter topic."""
        dlq = g.config.dead_letter_topic
        if self.metrics is not None:
            self.metrics.dead_lettered(topic.name, g.name, len(dead))
        if not dlq:
            return succeed(None)
        reads = [self._read_span(topic, d.partition, d.offset, d.offset + 1) for d in dead]
        attempts = {(d.partition, d.offset): d.attempts for d in dead}

        def publish(results: list[Any]) -> Any:
            recs = []
            for ok, found in results:
                if not ok:
                    continue
                for r in found:
                    headers = dict(r.headers or {})
                    headers.update(
                        {
                            "sprawl-dlq-topic": topic.name,
                            "sprawl-dlq-partition": str(r.partition),
                            "sprawl-dlq-offset": str(r.offset),
                            "sprawl-dlq-group": g.name,
                            "sprawl-dlq-attempts": str(attempts[(r.partition, r.offset)]),
                        }
                    )
                    recs.append(Record(-1, 0, 0, None, r.key, headers, r.payload, r.is_text))
            if not recs:
                return None
            d = self.ensure_topic(dlq)
            route = self.publisher or self.publish
            d.addCallback(lambda t: route(t, recs, "leader"))
            return d

        return DeferredList(reads, consumeErrors=True).addCallback(publish)

    # -- periodic work -----------------------------------------------------------

    def tick(self) -> None:
        """Leases, dirty group state, retention, the memory budget, checkpoints."""
        now_s = self.clock.seconds()
        for t in list(self.topics.values()):
            for g in list(t.groups.values()):
                self._run_group_tick(t, g)
        self._flush_dirty_groups()
        if now_s - self._last_retention >= 1.0:
            self._last_retention = now_s
            self.apply_retention()
            now = self.now_ms()
            for t in self.topics.values():
                t.dedup.expire(now)
                t.recent.expire(now)
            self._checkpoint_ephemeral()
        self.enforce_memory_budget()
        if self.tier is not None and now_s - self._last_spill >= 0.5:
            self._last_spill = now_s
            self.tier_tick()

    def tier_tick(self) -> int:
        """One round of the S3 tier: logs follow their shared remote lists,
        then uploads (of partitions this node leads) start; returns how many."""
        if self.tier is None:
            return 0
        self.follow_all_remote()
        started: int = self.tier.tick(
            list(self.topics.values()),
            self.store.used_bytes,
            self.now_ms(),
            self.remote_log,
            self.legacy_objects,
        )
        return started

    def apply_retention(self) -> int:
        """Delete whole expired segments at every tier; returns segments deleted."""
        now = self.now_ms()
        total = 0
        for t in list(self.topics.values()):
            cfg = t.config
            if cfg.retention_ms is None and cfg.retention_bytes is None:
                continue
            ops: list[Op] = []
            remote: list[Any] = []
            for lg in t.logs:
                n = expired_segments(lg.segments, now, cfg.retention_ms, cfg.retention_bytes)
                if lg.replicated:
                    # Only what a majority stored: a replica deleting an
                    # uncommitted record would reset its followers past it.
                    while n and lg.segments[n - 1].last >= lg.high_watermark:
                        n -= 1
                if not n:
                    continue
                if self.tier is not None and cfg.durable:
                    # S3-tiered: the partition's leader trims the shared list
                    # once, for every replica (they follow it).
                    if self.remote_log is not None:
                        total += self._retain_shared(t, lg, n)
                    continue
                gone = lg.drop_segments(n)
                total += len(gone)
                uid, p = cfg.uid, lg.partition
                gone_remote = [s.remote for s in gone if s.remote is not None]
                if gone_remote:
                    remote.extend(gone_remote)
                    left = [s.remote for s in lg.segments if s.remote is not None]
                    manifest = Manifest(lg.log_start, left, self._legacy.get((uid, p), []))
                    ops.append(("p", "meta", keys.manifest_key(uid, p), encode_manifest(manifest)))
                lo = keys.record_key(uid, p, gone[0].base)
                hi = keys.record_key(uid, p, gone[-1].last + 1)
                ops.append(("r", "records", lo, hi))
                ops.append(("r", "segments", lo, hi))
                ops.extend(self.integrity.dropped(t, p, below=lg.log_start))
                ops.append(
                    (
                        "p",
                        "meta",
                        keys.partition_meta_key(uid, p),
                        _json_encode({"log_start": lg.log_start, "next_offset": lg.next_offset}),
                    )
                )
                log.info(
                    "retention deleted {n} segment(s) of {topic}/{partition} below offset {low}",
                    n=len(gone),
                    topic=t.name,
                    partition=p,
                    low=lg.log_start,
                )
            if ops:
                d = self.store.write(ops)
                if remote:
                    d.addCallback(_then, self._delete_remote, remote)
                d.addErrback(lambda f: log.failure("retention commit failed", f))
        return total

    def _retain_shared(self, t: Topic, lg: PartitionLog, n: int) -> int:
        """Retention of an S3-tiered partition: as its leader, commit the new
        log start to the shared remote list (every replica follows it); then
        delete the remote objects the list dropped -- once, here.  Returns
        the segments it will delete (0 when not leading or already trimming)."""
        key = (t.config.uid, lg.partition)
        if key in self._trimming:
            return 0
        epoch = self.remote_log.leader_epoch(t, lg.partition)
        if epoch is None:
            return 0
        start = lg.segments[n].base if n < len(lg.segments) else lg.next_offset
        self._trimming.add(key)
        d: Deferred[Any] = self.remote_log.trim(t, lg.partition, epoch, start)

        def trimmed(gone: list[RemoteObject]) -> None:
            log.info(
                "retention moved the log start of {topic}/{partition} to {low} ({n} remote segment(s) dropped)",
                topic=t.name,
                partition=lg.partition,
                low=start,
                n=len(gone),
            )
            if gone:
                self._delete_remote(gone)

        def failed(f: Any) -> None:
            log.warn(
                "retention of {topic}/{partition} not committed (retried): {err}",
                topic=t.name,
                partition=lg.partition,
                err=str(f.value),
            )

        d.addCallbacks(trimmed, failed)
        d.addBoth(lambda _: self._trimming.discard(key))
        return n

    def follow_all_remote(self) -> None:
        """Every tiered partition follows its shared remote state.  The Raft
        apply path does so on every change; this catches up as high
        watermarks pass remote segments (a follower installs a segment only
        once it lies below its own high watermark).  Cheap: a partition is
        looked at again only when its state or the part below its high
        watermark changed.  (A lone broker's changes apply at once.)"""
        if self.tier is None or self.remote_log is None or isinstance(self.remote_log, LocalRemoteLog):
            return
        for t in list(self.topics.values()):
            if not t.config.durable:
                continue
            for lg in t.logs:
                if self._needs_follow(t, lg):
                    self.follow_remote(t, lg.partition).addErrback(self._follow_failed, t.name, lg.partition)

    @staticmethod
    def _follow_failed(f: Any, name: str, partition: int) -> None:
        log.warn(
            "following the remote segments of {topic}/{partition} failed: {err}",
            topic=name,
            partition=partition,
            err=str(f.value),
        )

    def _needs_follow(self, t: Topic, lg: PartitionLog) -> bool:
        """Whether the partition's shared state, or the part of it below the
        log's high watermark, changed since it was last followed."""
        state: RemoteState = self.remote_log.state(t, lg.partition)
        objs, hw = state.objects, lg.high_watermark
        i = len(objs)
        while i and objs[i - 1].last >= hw:
            i -= 1
        mark = (state, i, min(state.start, hw), lg.log_start)
        key = (t.config.uid, lg.partition)
        if self._followed.get(key) == mark:
            return False
        self._followed[key] = mark
        return True

    def enforce_memory_budget(self, spill: bool = True) -> None:
        """Keep hot tails within ``--memory-budget``: evict stored records,
        spill ephemeral ones to LMDB first (on ticks; ``spill=False`` only evicts)."""
        budget = self.config.memory_budget
        logs = [lg for t in self.topics.values() for lg in t.logs]
        total = sum(lg.hot_bytes for lg in logs)
        if total <= budget:
            return
        target = int(budget * 0.8)
        for lg in sorted(logs, key=lambda x: x.hot_bytes, reverse=True):
            if total <= target:
                break
            share = max(0, lg.hot_bytes - (total - target))
            total -= lg.evict(share)
        if total > budget and spill:
            self._spill_ephemeral()

    def _spill_ephemeral(self) -> None:
        for t in self.topics.values():
            if t.config.durable:
                continue
            uid = t.config.uid
            for lg in t.logs:
                p = lg.partition
                queued = self._spilling.get((uid, p), 0)
                recs = [r for r in lg.unstored() if r.offset >= queued]
                if not recs:
                    continue
                ops = self.store.put_records(uid, p, recs)
                for s in lg.segments:
                    if s.last >= recs[0].offset:
                        ops.append(
                            ("p", "segments", keys.segment_key(uid, p, s.base), _json_encode(s.to_tuple()))
                        )
                end = recs[-1].offset + 1
                self._spilling[(uid, p)] = end  # later ticks spill only what follows
                d = self.store.write(ops, sum(r.size for r in recs))

                def spilled(_: object, lg: PartitionLog = lg, end: int = end) -> None:
                    lg.stored(end)

                d.addCallback(spilled)
                d.addErrback(lambda f: log.failure("ephemeral spill failed", f))

    def _checkpoint_ephemeral(self, force: bool = False) -> None:
        """Remember ephemeral partitions' log ends so offsets are not reused after a restart."""
        ops: list[Op] = []
        for t in self.topics.values():
            if t.config.durable:
                continue
            for lg in t.logs:
                key = (t.config.uid, lg.partition)
                if self._ephemeral_checkpoint.get(key) != lg.next_offset or force:
                    self._ephemeral_checkpoint[key] = lg.next_offset
                    ops.append(
                        (
                            "p",
                            "meta",
                            keys.partition_meta_key(*key),
                            _json_encode({"log_start": lg.log_start, "next_offset": lg.next_offset}),
                        )
                    )
        if ops:
            self.store.write(ops).addErrback(lambda f: None)


_GROUP_NAME = TOPIC_NAME


def _fit(recs: list[Record], room: int) -> list[Record]:
    """The longest prefix of ``recs`` within ``room`` bytes (possibly none)."""
    total = 0
    for i, r in enumerate(recs):
        total += r.size
        if total > room:
            return recs[:i]
    return recs


def _too_large(r: Record, max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"message of {r.size - RECORD_OVERHEAD} bytes (payload {len(r.payload)}, key and headers "
        f"{r.size - RECORD_OVERHEAD - len(r.payload)}) exceeds max_message_bytes {max_bytes}",
        code="message_too_large",
    )


def _first_failure(f: Any) -> Any:
    """Unwrap the failure of a ``fireOnOneErrback`` DeferredList."""
    return f.value.subFailure


def check_topic_name(name: str) -> None:
    """Topic names are ``[A-Za-z0-9._-]{1,249}``, except ``.`` and ``..``
    (path segments a URL would resolve away)."""
    if not isinstance(name, str) or not TOPIC_NAME.match(name) or name in (".", ".."):
        raise BadRequest(
            "topic names are 1-249 characters of A-Z a-z 0-9 . _ -, and not . or ..",
            code="invalid_topic_name",
        )


def check_group_name(name: str) -> None:
    """Group names follow the topic name rule."""
    if not isinstance(name, str) or not _GROUP_NAME.match(name) or name in (".", ".."):
        raise BadRequest(
            "group names are 1-249 characters of A-Z a-z 0-9 . _ -, and not . or ..",
            code="invalid_group_name",
        )


def wall_clock_ms() -> int:
    """Milliseconds since the epoch (for callers without a clock)."""
    return int(time.time() * 1000)


def remote_segment(lg: PartitionLog, offset: int) -> Segment | None:
    """The S3 segment holding ``offset``, if it lies below the LMDB range (remote segments come first)."""
    for s in lg.segments:
        if s.remote is None:
            return None
        if s.base <= offset <= s.last:
            return s
        if offset < s.base:
            return None
    return None


def _then(_: object, fn: Callable[..., Any], *args: Any) -> Any:
    """A callback that ignores the result and calls ``fn(*args)``."""
    return fn(*args)
