"""Remote reads of the S3 tier: a segment's records from its object, one
chunk at a time, checked against its index (fetched again once after a
checksum mismatch), with a byte-bounded cache of raw chunks and a bounded
cache of indexes.  :class:`TierReads` is a part of
:class:`~sprawl.storage.tiering.S3Tier` (its state lives there).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from sprawl.errors import SprawlError
from sprawl.log.damage import DamagedRange
from sprawl.log.manifest import RemoteObject
from sprawl.log.record import Record
from sprawl.log.segments import Segment
from sprawl.storage.s3 import ObjectMissing, S3Client, S3Failure
from sprawl.storage.segment_format import CorruptSegment, SegmentIndex, decode_chunk

if TYPE_CHECKING:
    from sprawl.metrics import NodeMetrics

#: The log lines keep the namespace they had before the module was split out.
log = Logger(namespace="sprawl.storage.tiering")


class TierReadError(SprawlError):
    """Data below the LMDB range could not be read from the object store."""

    status = 502
    code = "s3_read_failed"


class ByteLRU:
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


class TierReads:
    """The read side of :class:`~sprawl.storage.tiering.S3Tier`."""

    client: S3Client
    metrics: NodeMetrics | None
    cache: ByteLRU
    _indexes: OrderedDict[str, SegmentIndex]
    cache_hits: int
    cache_misses: int
    refetches: int

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
