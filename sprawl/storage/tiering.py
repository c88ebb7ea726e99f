"""The S3 tier: the spill pipeline (LMDB → object store), remote reads and
the upkeep of the bucket.  The tier is shared by a partition's replicas: one
object per segment, uploaded by the partition's leader, named in one list that
every replica follows (:mod:`sprawl.storage.remote_log`).

An adapter: it owns the object store (:class:`~sprawl.storage.s3.S3Client`),
reads LMDB through :class:`~sprawl.storage.lmdb.LmdbStore` (its reader pool)
and asks the pure policy (:mod:`sprawl.log.spill`) what to move.

Moving one sealed segment of a partition this node *leads*, in order (the
rule: never delete a local copy before the remote one is verified and named):

1. read its records from LMDB and frame them (:mod:`sprawl.storage.segment_format`)
   on a reader thread;
2. upload the segment object and its index under keys that name the topic's
   incarnation and the leader epoch (never a node), each with
   ``Content-MD5`` (the store refuses a body that does not match) and its
   SHA-256 as metadata;
3. ``HEAD`` both and check size, MD5 ETag and SHA-256 metadata;
4. commit the segment to the partition's shared remote list as the leader of
   that epoch (in a cluster: a Raft entry the metadata refuses from a
   deposed leader); every replica's log then follows the list -- the
   segment becomes remote and its LMDB copy goes, on the leader and on each
   follower once the segment is below its high watermark.

A failure at any step leaves the records in LMDB; the partition retries with
back-off, and the failure shows in ``/v1/topics/{t}``, ``/store``, metrics
and the log.  An upload that was never named (its leader died or was deposed
between steps 2 and 4) is an orphan: the leader's bounded *sweep* of the
partition's prefix deletes objects no shared list names once they are older
than the grace age, and only those of an epoch no later than its own (a
newer leader's uploads are not its to judge).  Objects of the old per-node
layout are deleted only by the node that wrote them, once the shared list
covers them (:class:`~sprawl.log.manifest.Manifest`); a leader that still
has such objects *adopts* them into the shared list first.

This module holds the tier's state and the spill pipeline; the read side is
:mod:`sprawl.storage.tier_reads`, the sweep, adoption and deletes are
:mod:`sprawl.storage.tier_upkeep` (both parts of :class:`S3Tier`).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from sprawl.errors import SprawlError
from sprawl.interfaces import Clock
from sprawl.log.damage import DamagedRange
from sprawl.log.manifest import RemoteObject, RemoteState, object_keys
from sprawl.log.partition import PartitionLog
from sprawl.log.segments import Segment
from sprawl.log.spill import Candidate, choose_spills, retry_at
from sprawl.storage.lmdb import LmdbStore
from sprawl.storage.s3 import S3Client, S3Failure
from sprawl.storage.segment_format import (
    DEFAULT_CHUNK_BYTES,
    SegmentIndex,
    encode_segment,
)
from sprawl.storage.tier_reads import ByteLRU, TierReads
from sprawl.storage.tier_upkeep import SWEEP_MAX_SECONDS, TierUpkeep, adoption

if TYPE_CHECKING:
    from sprawl.metrics import NodeMetrics
    from sprawl.storage.remote_log import RemoteLog
    from sprawl.topics import Topic

log = Logger()


#: Partitions (whole topics, at least one) a tier tick looks at in turn beside
#: those with work (:meth:`S3Tier.due_topics`; issue 23).
TICK_SLICE = 64

#: A partition's consecutive failed uploads logged as warnings before the next
#: are errors: a first failure is most often a failover's (the shared list's
#: proposal timed out with the Raft leader, or this node's epoch went stale)
#: and the retry succeeds -- a chaos run of stop 46 logged 47 such errors, none
#: lasting.  The status (``failing``) and ``sprawl_s3_upload_failures_total``
#: count every one.
ERROR_AFTER = 3


class _PartState:
    __slots__ = ("busy", "failures", "last_error", "retry_at_ms")

    def __init__(self) -> None:
        self.busy = False
        self.failures = 0
        self.retry_at_ms = 0
        self.last_error: str | None = None


class S3Tier(TierReads, TierUpkeep):
    """Spill and read segments of durable topics to and from one bucket/prefix."""

    def __init__(
        self,
        client: S3Client,
        store: LmdbStore,
        clock: Clock,
        *,
        budget: int,
        age_ms: int,
        concurrency: int = 2,
        cache_bytes: int = 64 * 1000**2,
        metrics: NodeMetrics | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        orphan_grace: float = 3600.0,
    ):
        self.client = client
        self.store = store
        self.clock = clock
        self.budget = budget
        self.age_ms = age_ms
        self.concurrency = concurrency
        self.metrics = metrics
        self.chunk_bytes = chunk_bytes
        self.cache = ByteLRU(cache_bytes)
        self._indexes: OrderedDict[str, SegmentIndex] = OrderedDict()
        self._parts: dict[tuple[int, int], _PartState] = {}
        self._pending_deletes: list[str] = []
        #: Wall-clock seconds before which failed deletes are not retried.
        self._delete_retry_at = 0.0
        self.in_flight = 0
        self.uploads = 0
        self.uploaded_bytes = 0
        self.failures = 0
        self.deleted_objects = 0
        self.cache_hits = 0
        self.cache_misses = 0
        self.last_error: str | None = None
        self.bucket_ready = False
        #: ``(topic, partition, DamagedRange)``: damage met reading a segment
        #: from LMDB to upload it (the broker's integrity notes it).
        self.on_damage: Callable[[Topic, int, DamagedRange], object] | None = None
        #: ``(topic, partition, DamagedRange)``: whether such a read raced a change
        #: of the log rather than met damage (the broker's ``Integrity.raced``).
        self.raced: Callable[[Topic, int, DamagedRange], bool] | None = None
        #: Objects fetched again after a checksum mismatch.
        self.refetches = 0
        #: Seconds an object no shared list names must have existed before
        #: the sweep deletes it (an upload between its PUT and its commit is
        #: younger than that).
        self.orphan_grace = orphan_grace
        self.sweep_every = max(1.0, min(SWEEP_MAX_SECONDS, orphan_grace))
        self._swept_at: dict[tuple[int, int], float] = {}
        self._sweep_cursor: dict[tuple[int, int], str] = {}
        self.sweeping = False
        self.sweeps = 0
        self.orphans_deleted = 0
        self.adopted = 0
        #: Topics a tick has work for: a partition holding a sealed segment not
        #: in the object store, an upload's state (running, failing) or old
        #: objects to adopt (:meth:`due_topics` looks at them every tick).
        self._holding: set[str] = set()
        #: The other topics, looked at a slice per tick in turn.
        self._order: deque[str] = deque()
        self._looked_all = False
        #: Partitions ticks looked at so far (the tests count an idle tick's work).
        self.looked = 0

    # -- state -----------------------------------------------------------------

    def _state(self, uid: int, p: int) -> _PartState:
        st = self._parts.get((uid, p))
        if st is None:
            st = self._parts[(uid, p)] = _PartState()
        return st

    def partition_status(self, uid: int, p: int) -> dict[str, Any]:
        """``status`` (``ok`` / ``failing``), ``uploading`` and the last error of a partition."""
        st = self._parts.get((uid, p))
        if st is None:
            return {"status": "ok", "uploading": False, "last_error": None}
        return {
            "status": "failing" if st.failures else "ok",
            "uploading": st.busy,
            "last_error": st.last_error,
        }

    @property
    def failing(self) -> bool:
        """True while some partition's last upload attempt failed."""
        return any(st.failures for st in self._parts.values())

    def describe(self) -> dict[str, Any]:
        """The node-wide view for ``/store``."""
        s = self.client.settings
        return {
            "enabled": True,
            "endpoint": s.endpoint,
            "bucket": s.bucket,
            "prefix": s.prefix,
            "status": "failing" if self.failing else "ok",
            "last_error": self.last_error,
            "uploads": self.uploads,
            "uploaded_bytes": self.uploaded_bytes,
            "upload_failures": self.failures,
            "uploads_in_flight": self.in_flight,
            "deleted_objects": self.deleted_objects,
            "pending_deletes": len(self._pending_deletes),
            "sweeps": self.sweeps,
            "orphans_deleted": self.orphans_deleted,
            "orphan_grace_seconds": self.orphan_grace,
            "legacy_adopted": self.adopted,
            "cache_bytes": self.cache.bytes,
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
        }

    def _looks(self, t: Any, uid: int, legacy: Callable[[Any, int], list[RemoteObject]]) -> bool:
        """Whether a tick has work for topic ``t`` (see :meth:`due_topics`)."""
        for lg in t.logs:
            if lg.next_offset == 0:
                continue
            st = self._parts.get((uid, lg.partition))
            if st is not None and (st.busy or st.failures):
                return True
            if any(s.sealed and s.remote is None for s in lg.segments) or legacy(t, lg.partition):
                return True
        return False

    def forget(self, uid: int, p: int) -> None:
        """Drop the bookkeeping of a deleted partition."""
        self._parts.pop((uid, p), None)
        self._swept_at.pop((uid, p), None)
        self._sweep_cursor.pop((uid, p), None)

    # -- the spill pipeline ----------------------------------------------------

    def due_topics(self, topics: Mapping[str, Any], changed: Iterable[str]) -> list[Any]:
        """The topics a :meth:`tick` looks at (of ``topics``, by name): every
        one the first time; then those written to since the last tick
        (``changed``: a write is what seals a segment), those it has work for
        (see :attr:`_holding`: a sealed segment waits for its upload whoever
        leads it, so a leadership gained without a write is seen at once),
        and a slice of the others in turn -- at least :data:`TICK_SLICE`
        partitions, whole topics -- so an adoption, a sweep or a segment
        sealed without a write announced is found within ``partitions /
        TICK_SLICE`` ticks, and an idle node's tick does not walk every
        partition (issue 23: it asked who leads each one twice a second)."""
        if not self._looked_all:
            self._looked_all = True
            return list(topics.values())
        names = set(changed)
        for name in list(self._holding):
            if name in topics:
                names.add(name)
            else:
                self._holding.discard(name)  # deleted
        order = self._order
        if not order:
            order.extend(topics)  # the next round of slices (a copy of the names once a round)
        count = 0
        while order and count < TICK_SLICE:
            name = order.popleft()
            t = topics.get(name)
            if t is not None:
                names.add(name)
                count += len(t.logs)
        return [t for name in sorted(names) if (t := topics.get(name)) is not None]

    def tick(
        self,
        topics: Iterable[Any],
        used_bytes: int,
        now_ms: int,
        remote_log: RemoteLog | None,
        legacy: Callable[[Any, int], list[RemoteObject]] = lambda t, p: [],
    ) -> int:
        """Start the uploads the policy asks for (and an adoption or a sweep)
        on the partitions this node leads; returns how many uploads started.

        ``remote_log`` is where the shared remote lists live
        (:class:`~sprawl.storage.remote_log.RemoteLog`; None: nothing moves
        yet); ``legacy`` gives this node's own uploads of the old layout."""
        self._retry_deletes()
        if remote_log is None:
            return 0
        cands: list[Candidate] = []
        where: dict[tuple[int, int], tuple[Any, PartitionLog, int]] = {}
        sweep: tuple[Any, PartitionLog, int] | None = None
        now = self.clock.seconds()
        for t in topics:
            if not t.config.durable or t.deleted:
                self._holding.discard(t.name)
                continue
            uid = t.config.uid
            if self._looks(t, uid, legacy):
                self._holding.add(t.name)
            else:
                self._holding.discard(t.name)
            for lg in t.logs:
                self.looked += 1
                if lg.next_offset == 0:
                    # Nothing was ever stored here (an uploaded segment holds
                    # committed records, which every later leader holds too):
                    # nothing to upload, adopt or sweep -- and no lookups, so
                    # thousands of idle partitions cost a tick nothing (issue 23).
                    continue
                st = self._state(uid, lg.partition)
                if st.busy:
                    continue
                epoch = remote_log.leader_epoch(t, lg.partition)
                if epoch is None:
                    if st.failures:  # another node uploads this partition now
                        st.failures, st.retry_at_ms, st.last_error = 0, 0, None
                    continue
                shared: RemoteState = remote_log.state(t, lg.partition)
                own = legacy(t, lg.partition)
                if own:
                    objs = adoption(shared, own, epoch)
                    if objs and self.in_flight < self.concurrency and st.retry_at_ms <= now_ms:
                        self._start(st, self._adopt(t, lg, epoch, objs, remote_log), t, lg, None)
                    elif (
                        not objs
                        and shared.objects
                        and min(o.base for o in own) > shared.end
                        and st.last_error is None
                    ):
                        # Its old objects start past where the shared list ends:
                        # nobody holds what lies between, so neither they nor
                        # later segments can join the list.  Said once.
                        st.last_error = (
                            f"segments {shared.end}-{min(o.base for o in own) - 1} are in no "
                            "shared list nor in this node's old objects; old objects not adopted"
                        )
                        log.warn(
                            "S3: {topic}/{partition}: {error}",
                            topic=t.name,
                            partition=lg.partition,
                            error=st.last_error,
                        )
                    continue  # this node's old uploads join the shared list first
                # (first swept a sweep interval after this node is seen leading it)
                last_sweep = self._swept_at.setdefault((uid, lg.partition), now)
                if sweep is None and not self.sweeping and now - last_sweep >= self.sweep_every:
                    sweep = (t, lg, epoch)  # its turn to be swept: no upload this round
                    continue
                seg = next((s for s in lg.segments if s.remote is None), None)
                if seg is not None and (seg.base == shared.end or not shared.objects):
                    cands.append(
                        Candidate(
                            (uid, lg.partition), seg, min(lg.stored_end, lg.high_watermark), st.retry_at_ms
                        )
                    )
                    where[(uid, lg.partition)] = (t, lg, epoch)
        spills = choose_spills(
            cands,
            used_bytes=used_bytes,
            budget=self.budget,
            age_ms=self.age_ms,
            now_ms=now_ms,
            slots=self.concurrency - self.in_flight,
        )
        for sp in spills:
            t, lg, epoch = where[sp.partition]  # type: ignore[index]
            st = self._state(t.config.uid, lg.partition)
            self._start(st, self._spill(t, lg, sp.segment, sp.reason, epoch, remote_log), t, lg, sp.segment)
        if sweep is not None:
            # At most one sweep at a time, beside the uploads (one listing
            # page: the S3 pool has room for it); the partition is busy
            # meanwhile, so none of its uploads races the sweep.
            t, lg, epoch = sweep
            self._swept_at[(t.config.uid, lg.partition)] = now
            self.sweeping = True
            st = self._state(t.config.uid, lg.partition)
            st.busy = True
            d = ensureDeferred(self._sweep(t, lg, epoch, remote_log))
            d.addErrback(self._sweep_failed, t, lg)
            d.addBoth(self._sweep_done, st)
        return len(spills)

    def _start(self, st: _PartState, coro: Any, t: Topic, lg: PartitionLog, seg: Segment | None) -> None:
        st.busy = True
        self.in_flight += 1
        d = ensureDeferred(coro)
        d.addErrback(self._spill_failed, t, lg, seg)
        d.addBoth(self._spill_done, st)

    def _spill_done(self, _: object, st: _PartState) -> None:
        st.busy = False
        self.in_flight -= 1

    def _sweep_done(self, _: object, st: _PartState) -> None:
        self.sweeping = False
        st.busy = False

    def _spill_failed(self, f: Failure, t: Topic, lg: PartitionLog, seg: Segment | None) -> None:
        if isinstance(f.value, DamagedRange) and seg is not None and self._taken(t, lg, seg, f.value):
            # Not damage: retention, the shared segments or a topic delete took
            # the segment while its records were read for the upload (they drop
            # it here first, then delete it from LMDB).  Nothing is left to upload.
            log.info(
                "S3 upload of {topic}/{partition} segment {base}-{last} dropped: the segment was "
                "deleted (retention or the shared segments) while it was read",
                topic=t.name,
                partition=lg.partition,
                base=seg.base,
                last=seg.last,
            )
            return
        if isinstance(f.value, DamagedRange) and self.on_damage is not None:
            # The local copy is damaged: it is not uploaded (the range is
            # repaired or skipped first) and stays in LMDB.
            self.on_damage(t, lg.partition, f.value)
        st = self._state(t.config.uid, lg.partition)
        st.failures += 1
        st.retry_at_ms = retry_at(st.failures, int(self.clock.seconds() * 1000))
        st.last_error = f"{type(f.value).__name__}: {f.value}"
        self.last_error = st.last_error
        self.failures += 1
        if self.metrics is not None:
            self.metrics.s3_upload_failures.inc()
        transient = st.failures < ERROR_AFTER and not isinstance(f.value, DamagedRange)
        log.emit(
            LogLevel.warn if transient else LogLevel.error,
            "S3 upload of {topic}/{partition} segment {base}-{last} failed (attempt {n}); "
            "the segment stays in LMDB: {error}",
            topic=t.name,
            partition=lg.partition,
            base=seg.base if seg is not None else "legacy",
            last=seg.last if seg is not None else "adoption",
            n=st.failures,
            error=st.last_error,
        )

    def _taken(self, t: Topic, lg: PartitionLog, seg: Segment, d: DamagedRange) -> bool:
        """Whether records an upload's read found missing were deleted, not damaged:
        the segment left the log on the reactor (retention, the shared segments, a
        truncation, a topic delete -- each drops it there before its LMDB write), or
        the read raced such a change as any read may (:attr:`raced`)."""
        if t.deleted or not any(s is seg for s in lg.segments):
            return True
        return self.raced is not None and self.raced(t, lg.partition, d)

    async def _spill(
        self, t: Topic, lg: PartitionLog, seg: Segment, reason: str, epoch: int, remote_log: RemoteLog
    ) -> None:
        uid, p = t.config.uid, lg.partition
        base, last = seg.base, seg.last
        await self._ensure_bucket()
        blob, index = await self.store.call_reader(self._encode, uid, p, seg)
        idx_bytes = index.to_bytes()
        seg_key, idx_key = object_keys(
            self.client.settings.prefix, t.name, p, base, last, remote_log.incarnation(t), epoch
        )
        idx_sha = hashlib.sha256(idx_bytes).hexdigest()
        idx_md5 = hashlib.md5(idx_bytes).hexdigest()
        meta = {"sha256": index.sha256, "first-offset": str(base), "last-offset": str(last)}
        await self.client.put(seg_key, blob, index.md5, meta)
        await self.client.put(idx_key, idx_bytes, idx_md5, {"sha256": idx_sha})
        await self._verify(seg_key, len(blob), index.md5, index.sha256)
        await self._verify(idx_key, len(idx_bytes), idx_md5, idx_sha)
        remote = RemoteObject(
            base,
            last,
            seg.bytes,
            seg.first_ts,
            seg.last_ts,
            seg_key,
            len(blob),
            index.sha256,
            idx_key,
            len(idx_bytes),
            idx_sha,
            epoch,
        )
        if (t.deleted or seg.base != base or not any(s is seg for s in lg.segments)) and (
            seg_key not in remote_log.state(t, p).keys()
        ):
            # Retention or a topic delete took the segment while it was
            # uploading: nothing will ever name these keys (they carry this
            # leader's epoch, and it will not upload this range again).
            self.delete_objects([remote])
            return
        try:
            # Committed to the shared list and followed here: the segment is
            # remote in this log and its LMDB copy is gone.  A refusal (a new
            # leader: stale epoch) leaves the objects to the sweep -- a
            # proposal that timed out may still commit them.
            await remote_log.add(t, p, epoch, [remote])
        except SprawlError as e:
            gone = t.deleted or not any(s is seg for s in lg.segments)
            if gone and seg_key not in remote_log.state(t, p).keys():
                # Refused because retention (or a topic delete) took the
                # segment meanwhile: as above, nothing will name these keys.
                self.delete_objects([remote])
                return
            raise S3Failure(
                f"segment uploaded but not committed to the shared list ({e.code}): {e.message}"
            ) from None
        self.index_cached(seg_key, index)
        st = self._state(uid, p)
        if st.failures:
            log.info(
                "S3 uploads of {topic}/{partition} work again after {n} failure(s)",
                topic=t.name,
                partition=p,
                n=st.failures,
            )
        st.failures, st.retry_at_ms, st.last_error = 0, 0, None
        if not self.failing:
            self.last_error = None
        self.uploads += 1
        self.uploaded_bytes += len(blob)
        if self.metrics is not None:
            self.metrics.s3_uploads.inc()
            self.metrics.s3_uploaded_bytes.inc(len(blob))
        log.info(
            "moved {topic}/{partition} segment {base}-{last} ({size} bytes) to S3 ({reason}, epoch {epoch})",
            topic=t.name,
            partition=p,
            base=base,
            last=last,
            size=len(blob),
            reason=reason,
            epoch=epoch,
        )

    def _encode(self, uid: int, p: int, seg: Segment) -> tuple[bytes, SegmentIndex]:
        """Reader thread: the segment's records from LMDB, checked (every
        offset present, every checksum sound: a damaged record is never
        uploaded -- :class:`DamagedRange` instead), and framed."""
        env = self.store.env
        if env is None:
            raise S3Failure("LMDB is closed")
        rows = self.store.scan_sync(
            uid, p, seg.base, seg.last + 1, dense=[(seg.base, seg.last)], collect="raw"
        ).raw
        blob, index = encode_segment(rows, self.chunk_bytes)
        if index.base != seg.base or index.last != seg.last:
            raise S3Failure(
                f"LMDB holds {index.base}-{index.last} of segment {seg.base}-{seg.last}; not uploading"
            )
        return blob, index

    async def _verify(self, key: str, size: int, md5_hex: str, sha: str) -> None:
        h = await self.client.head(key)
        if h["size"] != size:
            raise S3Failure(f"verify {key}: size {h['size']}, expected {size}")
        if h["etag"] and "-" not in h["etag"] and h["etag"] != md5_hex:
            raise S3Failure(f"verify {key}: ETag {h['etag']} is not the MD5 {md5_hex}")
        if h["metadata"].get("sha256") != sha:
            raise S3Failure(f"verify {key}: sha256 metadata does not match")
