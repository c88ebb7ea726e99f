"""Retention at every tier and the S3 tier's periodic round (logs follow
their shared remote lists, then uploads start)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from sprawl.log.manifest import Manifest, RemoteObject, RemoteState, encode_manifest
from sprawl.log.partition import PartitionLog
from sprawl.log.segments import expired_segments
from sprawl.pubsub.core import then
from sprawl.pubsub.groups import Groups
from sprawl.pubsub.housekeeping import drain
from sprawl.storage import keys
from sprawl.storage.lmdb import Op
from sprawl.storage.remote_log import LocalRemoteLog, RemoteLog
from sprawl.topics import Topic

log = Logger()

_json_encode = msgspec.json.encode


class Retention(Groups):
    """Deletes expired segments; drives the S3 tier."""

    #: Topics written to since the last tier tick (subscribed at the first).
    _tier_changed: set[str] | None = None

    def tier_tick(self) -> int:
        """One round of the S3 tier: logs follow their shared remote lists,
        then uploads (of partitions this node leads) start; returns how many."""
        if self.tier is None:
            return 0
        self.follow_all_remote()
        if self._tier_changed is None:
            self._tier_changed = self.touched.subscribe()  # (the first tick looks at every topic)
        started: int = self.tier.tick(
            self.tier.due_topics(self.topics, drain(self._tier_changed)),
            self.store.used_bytes,
            self.now_ms(),
            self.remote_log,
            self.legacy_objects,
        )
        return started

    def apply_retention(self, topics: Iterable[Topic] | None = None) -> int:
        """Delete whole expired segments at every tier (of ``topics``, by
        default every topic); returns segments deleted."""
        now = self.now_ms()
        total = 0
        for t in list(self.topics.values()) if topics is None else list(topics):
            cfg = t.config
            if cfg.retention_ms is None and cfg.retention_bytes is None:
                continue
            ops: list[Op] = []
            remote: list[RemoteObject] = []
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
                    rl = self.remote_log
                    if rl is not None:
                        total += self._retain_shared(rl, t, lg, n)
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
                    d.addCallback(then, self._delete_remote, remote)
                d.addErrback(lambda f: log.failure("retention commit failed", f))
        return total

    def _retain_shared(self, rl: RemoteLog, t: Topic, lg: PartitionLog, n: int) -> int:
        """Retention of an S3-tiered partition: as its leader, commit the new
        log start to the shared remote list (every replica follows it); then
        delete the remote objects the list dropped -- once, here.  Returns
        the segments it will delete (0 when not leading or already trimming)."""
        key = (t.config.uid, lg.partition)
        if key in self._trimming:
            return 0
        epoch = rl.leader_epoch(t, lg.partition)
        if epoch is None:
            return 0
        start = lg.segments[n].base if n < len(lg.segments) else lg.next_offset
        self._trimming.add(key)
        d: Deferred[Any] = rl.trim(t, lg.partition, epoch, start)

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

        def failed(f: Failure) -> None:
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
        watermark changed.  (A lone broker's changes apply at once.)

        Only the partitions with a shared remote state are looked at
        (:meth:`RemoteLog.tiered`): following the empty state changes nothing
        (no segment to install, the log start stays), and a change of the
        state itself is followed by the apply path -- so thousands of
        partitions with nothing in the object store cost the tick nothing
        (issue 23)."""
        rl = self.remote_log
        if self.tier is None or rl is None or isinstance(rl, LocalRemoteLog):
            return
        for name, partition in list(rl.tiered()):
            t = self.topics.get(name)
            if t is None or t.deleted or not t.config.durable or not 0 <= partition < len(t.logs):
                continue
            if self._needs_follow(rl, t, t.logs[partition]):
                self.follow_remote(t, partition).addErrback(self._follow_failed, t.name, partition)

    @staticmethod
    def _follow_failed(f: Failure, name: str, partition: int) -> None:
        log.warn(
            "following the remote segments of {topic}/{partition} failed: {err}",
            topic=name,
            partition=partition,
            err=str(f.value),
        )

    def _needs_follow(self, rl: RemoteLog, t: Topic, lg: PartitionLog) -> bool:
        """Whether the partition's shared state, or the part of it below the
        log's high watermark, changed since it was last followed."""
        state: RemoteState = rl.state(t, lg.partition)
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
