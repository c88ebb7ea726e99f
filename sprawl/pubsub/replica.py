"""A follower's writes (append at the leader's offsets, truncate, reset) and
the shared remote segments a partition's log follows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from sprawl.log.manifest import Manifest, RemoteObject, RemoteState, encode_manifest
from sprawl.log.record import Record
from sprawl.pubsub.catalog import Catalog
from sprawl.pubsub.core import then
from sprawl.storage import keys
from sprawl.storage.lmdb import Op
from sprawl.topics import Topic

log = Logger()


class ReplicaWrites(Catalog):
    """Writes that replication and the S3 tier drive."""

    def append_replicated(
        self,
        topic: Topic,
        partition: int,
        records: list[Record],
        extra_ops: Sequence[Op] = (),
        urgent: bool = True,
    ) -> Deferred[None]:
        """Store a leader's batch at its offsets (a follower's write) -- with
        ``extra_ops`` in the same transaction -- and fire once it is durable.
        ``ValueError`` if the records do not continue the log.  ``urgent``
        false: no ack waits for it (an epoch's control record, issue 23,
        create41) -- it joins a metadata apply's hold instead of ending it."""
        self.check_writable()
        if not records:
            return succeed(None)
        ops = self.stage_replicated(topic, partition, records)
        ops.extend(extra_ops)
        cfg = topic.config
        # Not through the write-ahead log: durable -- and answered, or counted
        # towards the high watermark -- at LMDB's commit.  quorum36 logged it; on
        # the 3-node path that cost each node's threads ~200 us more CPU a message
        # (more wake-ups per commit) for no latency won (issue 16, wal37).
        # (urgent: an ack or the high watermark waits for it -- it ends a metadata
        # apply's hold, LmdbStore.hold, rather than wait behind it)
        # (answered by a plain call, LmdbStore.write_then: the stored end moves, then the
        # Deferred the replica waits on fires -- no link on the store's side, issue 16,
        # qfollow42)
        d: Deferred[None] = Deferred()
        self.store.write_then(
            ops,
            sum(r.size for r in records),
            self._replicated_written,
            d,
            cfg.name,
            {partition: records[-1].offset + 1},
            cfg.uid,
            urgent=urgent,
        )
        return d

    def append_replicated_then(
        self,
        topic: Topic,
        partition: int,
        records: list[Record],
        extra_ops: Sequence[Op],
        then: Callable[[Failure | None], object],
        urgent: bool = True,
    ) -> None:
        """:meth:`append_replicated` answered by a plain call: ``then(None)`` once the
        records are durable (the stored end moved first), ``then(failure)`` if the write
        failed -- where :meth:`append_replicated`'s Deferred would fire or fail, without
        the Deferred (a follower's lone append, issue 16, qfollow42).  ``ValueError`` (at
        once) if the records do not continue the log; at least one record."""
        self.check_writable()
        ops = self.stage_replicated(topic, partition, records)
        ops.extend(extra_ops)
        cfg = topic.config
        n = sum(r.size for r in records)
        end = {partition: records[-1].offset + 1}
        self.store.write_then(ops, n, self._replicated_then, then, cfg.name, end, cfg.uid, urgent=urgent)

    def _replicated_then(
        self,
        result: Failure | None,
        then: Callable[[Failure | None], object],
        name: str,
        ends: dict[int, int],
        uid: int,
    ) -> None:
        self._committed_or_failed(result, name, ends, uid)
        then(result)

    def _replicated_written(
        self, result: Failure | None, d: Deferred[None], name: str, ends: dict[int, int], uid: int
    ) -> None:
        """A replicated append's write is done: the stored end moved (or the stored-end
        waiters failed), then ``d`` fires -- or fails: a follower whose write failed
        must not answer as if it held the records (the replica's chain stops)."""
        self._committed_or_failed(result, name, ends, uid)
        if result is None:
            d.callback(None)
        else:
            d.errback(result)

    def stage_replicated(self, topic: Topic, partition: int, records: list[Record]) -> list[Op]:
        """:meth:`append_replicated`'s first half, for a caller that stores
        many partitions' records in one transaction (a failover's new
        leaders' control records, issue 23): the records (at least one)
        join the partition's log in memory now; returns the ops that store
        them.  Write them (with :meth:`check_writable` first), then call
        :meth:`replicated_stored` once they are durable.  ``ValueError`` if the
        records do not continue the log."""
        lg = topic.logs[partition]
        cfg = topic.config
        before = lg.hot_records_memory
        changed = lg.append_at(records, self.now_ms())
        self.touched.touch(topic.name)
        self.note_hot_added(lg.hot_records_memory - before)
        ops: list[Op] = list(self.store.put_records(cfg.uid, partition, records))
        ops.extend(self._segment_ops(cfg.uid, partition, changed))
        return ops

    def replicated_stored(self, topic: Topic, partition: int, end: int) -> None:
        """Records staged with :meth:`stage_replicated` are durable up to ``end``."""
        self._committed(None, topic.config.name, {partition: end}, topic.config.uid)

    def truncate_partition(
        self, topic: Topic, partition: int, offset: int, extra_ops: Sequence[Op] = ()
    ) -> Deferred[None]:
        """Drop the records from ``offset`` on, in memory and in LMDB, in one
        transaction with ``extra_ops`` (a follower's divergent, uncommitted
        suffix).  Never below the high watermark (``ValueError``)."""
        lg = topic.logs[partition]
        uid = topic.config.uid
        removed, changed = lg.truncate(offset)
        self.touched.touch(topic.name)
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
        self.notify(topic.name, partition)
        d: Deferred[Any] = self.store.write(ops)
        if gone_legacy:
            d.addCallback(then, self._delete_remote, gone_legacy)
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
            d.addCallback(then, self._delete_remote, gone_legacy)
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
            self.notify(topic.name, partition)
        return ops, gone, change.changed or legacy_changed
