"""The topic catalog: create, configure, auto-create and delete topics, and
rebuild them (partitions, groups, dedup windows) from LMDB at start."""

from __future__ import annotations

from typing import Any

import msgspec
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from sprawl.delivery.groups import ConsumerGroup
from sprawl.errors import (
    BadRequest,
    Conflict,
    NotFound,
    Unavailable,
)
from sprawl.log.damage import DamagedRange
from sprawl.log.manifest import decode_manifest
from sprawl.log.partition import PartitionLog
from sprawl.log.segments import Segment
from sprawl.pubsub.core import then
from sprawl.pubsub.names import check_topic_name
from sprawl.pubsub.publish import Publishing
from sprawl.storage import keys
from sprawl.storage.lmdb import Op
from sprawl.topics import STORAGE_KINDS, Topic, TopicConfig

log = Logger()

_json_encode = msgspec.json.encode
_json_decode = msgspec.json.decode


class Catalog(Publishing):
    """Topic CRUD, configs and recovery."""

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
        self.touched.touch_all(self.topics)  # the periodic jobs look at each once
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
        self.touched.touch(name)  # (its retention may have changed)
        d: Deferred[Any] = self.store.write(ops)
        if created:
            d.addCallback(then, self.new_topics.fire, name)
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
        creator = self.links.creator
        if creator is not None:
            return creator.ensure_topic(name)
        d: Deferred[Any] = self.put_topic(name, {})
        d.addCallback(lambda r: r[0])
        return d

    def delete_topic(self, name: str) -> Deferred[None]:
        """Delete a topic with all its data and groups, in one transaction."""
        t = self.get_topic(name)
        del self.topics[name]
        t.deleted = True
        if self.metrics is not None:
            self.metrics.forget_topic(name)
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
            self.notify(name, lg.partition)
            for w in self._stored_waiters.pop((name, lg.partition), []):
                w[1].errback(NotFound(f"topic {name!r} was deleted", code="topic_not_found"))
        d = self.store.write(ops)
        if remote:
            d.addCallback(lambda _: self._delete_remote(remote))
        d.addErrback(self._storage_error)
        return d
