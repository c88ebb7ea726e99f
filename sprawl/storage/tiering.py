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
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from sprawl.errors import SprawlError
from sprawl.log.damage import DamagedRange
from sprawl.log.manifest import RemoteObject, RemoteState, object_keys, parse_key, partition_key_prefix
from sprawl.log.partition import PartitionLog
from sprawl.log.record import Record
from sprawl.log.segments import Segment
from sprawl.log.spill import Candidate, choose_spills, retry_at
from sprawl.storage.lmdb import LmdbStore
from sprawl.storage.s3 import ObjectMissing, S3Client, S3Failure
from sprawl.storage.segment_format import (
    DEFAULT_CHUNK_BYTES,
    CorruptSegment,
    SegmentIndex,
    decode_chunk,
    encode_segment,
)

log = Logger()

#: Seconds between retries of object deletes that failed.
DELETE_RETRY_SECONDS = 30.0
#: Keys listed per sweep of a partition's prefix (one page; the next sweep goes on from there).
SWEEP_PAGE = 1000
#: The longest pause between two sweeps of a partition this node leads.
SWEEP_MAX_SECONDS = 300.0


class TierReadError(SprawlError):
    """Data below the LMDB range could not be read from the object store."""

    status = 502
    code = "s3_read_failed"


class _ByteLRU:
    """A byte-bounded LRU cache."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.items: OrderedDict[Any, bytes] = OrderedDict()

    def get(self, key: Any) -> bytes | None:
        v = self.items.get(key)
        if v is not None:
            self.items.move_to_end(key)
        return v

    def put(self, key: Any, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        old = self.items.pop(key, None)
        if old is not None:
            self.bytes -= len(old)
        self.items[key] = value
        self.bytes += len(value)
        while self.bytes > self.max_bytes and self.items:
            _k, v = self.items.popitem(last=False)
            self.bytes -= len(v)

    def discard_prefix(self, key: str) -> None:
        for k in [k for k in self.items if k[0] == key]:
            self.bytes -= len(self.items.pop(k))


class _PartState:
    __slots__ = ("busy", "failures", "last_error", "retry_at_ms")

    def __init__(self) -> None:
        self.busy = False
        self.failures = 0
        self.retry_at_ms = 0
        self.last_error: str | None = None


class S3Tier:
    """Spill and read segments of durable topics to and from one bucket/prefix."""

    def __init__(
        self,
        client: S3Client,
        store: LmdbStore,
        clock: Any,
        *,
        budget: int,
        age_ms: int,
        concurrency: int = 2,
        cache_bytes: int = 64 * 1000**2,
        metrics: Any = None,
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
        self.cache = _ByteLRU(cache_bytes)
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
        self.on_damage: Any = None
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

    def forget(self, uid: int, p: int) -> None:
        """Drop the bookkeeping of a deleted partition."""
        self._parts.pop((uid, p), None)
        self._swept_at.pop((uid, p), None)
        self._sweep_cursor.pop((uid, p), None)

    # -- the spill pipeline ----------------------------------------------------

    def tick(
        self,
        topics: Iterable[Any],
        used_bytes: int,
        now_ms: int,
        remote_log: Any,
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
                continue
            uid = t.config.uid
            for lg in t.logs:
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

    def _start(self, st: _PartState, coro: Any, t: Any, lg: PartitionLog, seg: Segment | None) -> None:
        st.busy = True
        self.in_flight += 1
        d = ensureDeferred(coro)
        d.addErrback(self._spill_failed, t, lg, seg)
        d.addBoth(self._spill_done, st)

    def _spill_done(self, _: object, st: _PartState) -> None:
        st.busy = False
        self.in_flight -= 1

    def _spill_failed(self, f: Any, t: Any, lg: PartitionLog, seg: Segment | None) -> None:
        if f.check(DamagedRange) and self.on_damage is not None:
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
        log.error(
            "S3 upload of {topic}/{partition} segment {base}-{last} failed (attempt {n}); "
            "the segment stays in LMDB: {error}",
            topic=t.name,
            partition=lg.partition,
            base=seg.base if seg is not None else "legacy",
            last=seg.last if seg is not None else "adoption",
            n=st.failures,
            error=st.last_error,
        )

    async def _ensure_bucket(self) -> None:
        if not self.bucket_ready:
            created = await self.client.ensure_bucket()
            self.bucket_ready = True
            if created:
                log.info("created S3 bucket {bucket}", bucket=self.client.settings.bucket)

    async def _spill(
        self, t: Any, lg: PartitionLog, seg: Segment, reason: str, epoch: int, remote_log: Any
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

    async def _adopt(
        self, t: Any, lg: PartitionLog, epoch: int, objs: list[RemoteObject], remote_log: Any
    ) -> None:
        """Name this node's own uploads of the old per-node layout in the
        shared list (as the leader), so every replica reads them."""
        try:
            await remote_log.add(t, lg.partition, epoch, objs)
        except SprawlError as e:
            raise S3Failure(
                f"adopting segments of the old layout was refused ({e.code}): {e.message}"
            ) from None
        self.adopted += len(objs)
        log.info(
            "adopted {n} segment(s) of {topic}/{partition} ({base}-{last}) written under this node's "
            "old keys into the shared remote list",
            n=len(objs),
            topic=t.name,
            partition=lg.partition,
            base=objs[0].base,
            last=objs[-1].last,
        )

    async def _sweep(self, t: Any, lg: PartitionLog, epoch: int, remote_log: Any) -> None:
        """One bounded page of the partition's prefix: delete the objects no
        shared list names that are older than the grace age -- of an older
        incarnation of the topic name, or of this or an earlier leader epoch
        (an upload whose commit never came).  Never an object of the old
        per-node layout (its node deletes it) or of a later epoch."""
        uid, p = t.config.uid, lg.partition
        await self._ensure_bucket()
        prefix = partition_key_prefix(self.client.settings.prefix, t.name, p)
        page, more = await self.client.list_page(prefix, self._sweep_cursor.get((uid, p)), SWEEP_PAGE)
        self.sweeps += 1
        if more and page:
            self._sweep_cursor[(uid, p)] = page[-1][0]
        else:
            self._sweep_cursor.pop((uid, p), None)
        inc = remote_log.incarnation(t)
        for key, modified in page:
            info = parse_key(key)
            if info is None or info.epoch is None or info.incarnation > inc:
                continue
            if info.incarnation == inc and info.epoch > epoch:
                continue
            if self.clock.seconds() - modified < self.orphan_grace:
                continue
            # Still this epoch's leader, and still unnamed (the list may have moved on).
            if t.deleted or remote_log.leader_epoch(t, p) != epoch:
                return
            if info.incarnation == inc and key in remote_log.state(t, p).keys():
                continue
            log.info(
                "deleting orphan object {key} of {topic}/{partition} (no shared list names it)",
                key=key,
                topic=t.name,
                partition=p,
            )
            self.orphans_deleted += 1
            if self.metrics is not None:
                self.metrics.s3_orphans_deleted.inc()
            self._delete(key)

    def _sweep_failed(self, f: Any, t: Any, lg: PartitionLog) -> None:
        log.warn(
            "sweeping the S3 prefix of {topic}/{partition} failed (tried again later): {error}",
            topic=t.name,
            partition=lg.partition,
            error=f"{type(f.value).__name__}: {f.value}",
        )

    def _sweep_done(self, _: object, st: _PartState) -> None:
        self.sweeping = False
        st.busy = False

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

    # -- deletes ---------------------------------------------------------------

    def delete_objects(self, objects: Iterable[RemoteObject]) -> None:
        """Delete the objects of segments gone from every manifest (retried on later ticks)."""
        for o in objects:
            self._indexes.pop(o.key, None)
            self.cache.discard_prefix(o.key)
            for k in (o.key, o.index_key):
                self._delete(k)

    def _delete(self, key: str) -> None:
        d = self.client.delete(key)

        def done(_: object) -> None:
            self.deleted_objects += 1
            if self.metrics is not None:
                self.metrics.s3_deleted_objects.inc()

        def failed(f: Any) -> None:
            first = not self._pending_deletes
            self._pending_deletes.append(key)
            self._delete_retry_at = self.clock.seconds() + DELETE_RETRY_SECONDS
            if first:  # one line per failing round, not one per object
                log.warn(
                    "S3 delete of {key} failed, retrying failed deletes every {every}s: {error}",
                    key=key,
                    every=DELETE_RETRY_SECONDS,
                    error=str(f.value),
                )

        d.addCallbacks(done, failed)

    def _retry_deletes(self) -> None:
        if not self._pending_deletes or self.clock.seconds() < self._delete_retry_at:
            return
        keys_, self._pending_deletes = self._pending_deletes, []
        for k in keys_:
            self._delete(k)

    # -- reads -----------------------------------------------------------------

    def index_cached(self, key: str, index: SegmentIndex) -> None:
        """Remember a segment's index (bounded count)."""
        self._indexes[key] = index
        self._indexes.move_to_end(key)
        while len(self._indexes) > 4096:
            self._indexes.popitem(last=False)

    def read(self, seg: Segment, partition: int, start: int, limit: int) -> Deferred[list[Record]]:
        """Records of a remote segment from ``start``: at most ``limit``, up to the segment's end."""
        return ensureDeferred(self._read(seg, partition, start, limit))

    async def _read(self, seg: Segment, partition: int, start: int, limit: int) -> list[Record]:
        """Read once; an object that fails a checksum is fetched again once
        (a bad transfer), and if it fails again its range is damaged:
        :class:`DamagedRange` (tier ``s3``) for the chunk's offsets, or the
        whole segment's when its index is bad."""
        remote = seg.remote
        assert remote is not None
        where = [remote.base, remote.last]
        try:
            return await self._read_checked(remote, partition, start, limit, where)
        except (CorruptSegment, ValueError) as e:
            self.refetches += 1
            log.warn(
                "S3 object {key} failed its checksum ({error}); fetching it again",
                key=remote.key,
                error=str(e),
            )
            self._indexes.pop(remote.key, None)
            self.cache.discard_prefix(remote.key)
        try:
            return await self._read_checked(remote, partition, start, limit, where)
        except (CorruptSegment, ValueError) as e:
            self._read_failed(remote, str(e))
            raise DamagedRange(
                where[0], where[1], f"S3 object {remote.key} fails its checksum twice: {e}", "s3"
            ) from None

    async def _read_checked(
        self, remote: RemoteObject, partition: int, start: int, limit: int, where: list[int]
    ) -> list[Record]:
        out: list[Record] = []
        where[:] = [remote.base, remote.last]
        try:
            index = await self._index(remote)
            i = index.chunk_for(start)
            while i < len(index.chunks) and len(out) < limit:
                where[:] = [
                    index.chunks[i][0],
                    index.chunks[i + 1][0] - 1 if i + 1 < len(index.chunks) else index.last,
                ]
                for off, value in await self._chunk(remote, index, i):
                    if off < start:
                        continue
                    if len(out) >= limit:
                        break
                    out.append(Record.from_storage(partition, off, value))
                i += 1
        except ObjectMissing as e:
            self._read_failed(remote, f"object missing: {e}")
            raise TierReadError(
                f"segment {remote.base}-{remote.last} is missing from S3 ({remote.key})",
                code="s3_object_missing",
            ) from None
        except S3Failure as e:
            self._read_failed(remote, str(e))
            raise TierReadError(
                f"S3 is unavailable reading segment {remote.base}-{remote.last}: {e}",
                code="s3_unavailable",
                status=503,
            ) from None
        return out

    async def _chunk(self, remote: RemoteObject, index: SegmentIndex, i: int) -> list[tuple[int, bytes]]:
        """Chunk ``i`` of a segment object, checked and split into records (cached raw)."""
        chunk = index.chunks[i]
        data = self.cache.get((remote.key, i))
        if data is not None:
            self.cache_hits += 1
            if self.metrics is not None:
                self.metrics.s3_cache_hits.inc()
            return decode_chunk(data, chunk)
        self.cache_misses += 1
        if self.metrics is not None:
            self.metrics.s3_cache_misses.inc()
        started = time.perf_counter()
        data = await self.client.get(remote.key, chunk[1], chunk[2])
        if self.metrics is not None:
            self.metrics.s3_read_duration.observe(time.perf_counter() - started)
        decoded = decode_chunk(data, chunk)
        self.cache.put((remote.key, i), data)
        return decoded

    def _read_failed(self, remote: RemoteObject, why: str) -> None:
        self._indexes.pop(remote.key, None)
        if self.metrics is not None:
            self.metrics.s3_read_failures.inc()
        log.error("S3 read of {key} failed: {error}", key=remote.key, error=why)

    async def _index(self, remote: RemoteObject) -> SegmentIndex:
        idx = self._indexes.get(remote.key)
        if idx is not None:
            return idx
        data = await self.client.get(remote.index_key)
        if len(data) != remote.index_size or hashlib.sha256(data).hexdigest() != remote.index_sha256:
            raise CorruptSegment("index object does not match the manifest's checksum")
        idx = SegmentIndex.from_bytes(data)
        if idx.size != remote.size or idx.sha256 != remote.sha256:
            raise CorruptSegment("index describes a different object than the manifest")
        self.index_cached(remote.key, idx)
        return idx


def adoption(shared: RemoteState, own: list[RemoteObject], epoch: int) -> list[RemoteObject]:
    """This node's old-layout uploads that continue the shared list (the
    first one serving offsets from where the list ends), to be named in it
    in ``epoch``; empty when none does (the list covers them already, or a
    hole lies between)."""
    out: list[RemoteObject] = []
    end = shared.end if shared.objects else None
    for o in sorted(own, key=lambda o: o.base):
        if o.last < (end if end is not None else shared.start):
            continue
        if not out:
            if end is not None and o.base > end:
                break
            first = o.starting_at(end) if end is not None else o
            out.append(replace(first, epoch=epoch))
        elif o.base == out[-1].last + 1:
            out.append(replace(o, epoch=epoch))
        else:
            break
    return out
