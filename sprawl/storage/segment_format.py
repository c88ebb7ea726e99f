"""The object format of a spilled segment and its index.  Pure: no Twisted, no I/O.

A segment object is the segment's records in offset order, each framed as
``length u32 | offset u64 | record`` (big-endian; ``record`` is the same
value LMDB stores: ``0xC1 | crc32c | msgpack``, so every record carries its
own CRC32C inside the object and is checked when read back -- see
:mod:`sprawl.log.record`; records written before checksums carry none).  The frames are grouped into chunks of about
``chunk_bytes``; the index (a small JSON object stored beside the segment)
lists every chunk as ``[first_offset, position, length, crc32]``, so a reader
fetches only the chunk holding the offset it wants (one ranged GET) and
verifies it before decoding.  The index also carries the whole object's size,
SHA-256 and MD5, which the uploader verifies against the object store.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

FORMAT_VERSION = 1
_FRAME = struct.Struct(">IQ")
DEFAULT_CHUNK_BYTES = 512 * 1024


class CorruptSegment(ValueError):
    """An object or index does not match its checksums or its framing."""


@dataclass
class SegmentIndex:
    """Where each chunk of a segment object starts, and how to check it."""

    base: int
    last: int
    count: int
    size: int
    sha256: str
    md5: str
    #: ``[first_offset, position, length, crc32]`` per chunk, in offset order.
    chunks: list[list[int]] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        """The index object's content."""
        return json.dumps(
            {
                "v": FORMAT_VERSION,
                "base": self.base,
                "last": self.last,
                "count": self.count,
                "size": self.size,
                "sha256": self.sha256,
                "md5": self.md5,
                "chunks": self.chunks,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> SegmentIndex:
        """Parse an index object; :class:`CorruptSegment` when malformed."""
        try:
            doc = json.loads(data)
            if doc["v"] != FORMAT_VERSION:
                raise CorruptSegment(f"unknown segment index version {doc['v']!r}")
            idx = cls(
                int(doc["base"]),
                int(doc["last"]),
                int(doc["count"]),
                int(doc["size"]),
                str(doc["sha256"]),
                str(doc["md5"]),
                [[int(x) for x in c] for c in doc["chunks"]],
            )
        except CorruptSegment:
            raise
        except (ValueError, TypeError, KeyError) as e:
            raise CorruptSegment(f"corrupt segment index: {e}") from None
        if not idx.chunks or any(len(c) != 4 for c in idx.chunks):
            raise CorruptSegment("corrupt segment index: bad chunk table")
        return idx

    def chunk_for(self, offset: int) -> int:
        """The number of the chunk holding ``offset`` (the last one starting at or before it)."""
        firsts = [c[0] for c in self.chunks]
        return max(0, bisect.bisect_right(firsts, offset) - 1)


def encode_segment(
    records: Iterable[tuple[int, bytes]], chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> tuple[bytes, SegmentIndex]:
    """Frame ``(offset, record)`` pairs (ascending, contiguous) into an object and its index."""
    out = bytearray()
    chunks: list[list[int]] = []
    chunk_start = 0
    chunk_first: int | None = None
    first: int | None = None
    prev: int | None = None
    count = 0
    for off, value in records:
        if prev is not None and off != prev + 1:
            raise ValueError(f"segment records not contiguous: {prev} then {off}")
        if first is None:
            first = off
        if chunk_first is None:
            chunk_first, chunk_start = off, len(out)
        out += _FRAME.pack(len(value), off)
        out += value
        prev = off
        count += 1
        if len(out) - chunk_start >= chunk_bytes:
            chunks.append(_chunk(out, chunk_first, chunk_start))
            chunk_first = None
    if first is None or prev is None:
        raise ValueError("an empty segment has no object")
    if chunk_first is not None:
        chunks.append(_chunk(out, chunk_first, chunk_start))
    blob = bytes(out)
    index = SegmentIndex(
        first,
        prev,
        count,
        len(blob),
        hashlib.sha256(blob).hexdigest(),
        hashlib.md5(blob).hexdigest(),
        chunks,
    )
    return blob, index


def _chunk(out: bytearray, first: int, start: int) -> list[int]:
    data = bytes(out[start:])
    return [first, start, len(data), zlib.crc32(data)]


def decode_chunk(data: bytes, chunk: list[int]) -> list[tuple[int, bytes]]:
    """Check one fetched chunk against its index entry and split it into ``(offset, record)``."""
    first, _pos, length, crc = chunk
    if len(data) != length:
        raise CorruptSegment(f"chunk at offset {first}: {len(data)} bytes, index says {length}")
    if zlib.crc32(data) != crc:
        raise CorruptSegment(f"chunk at offset {first}: checksum mismatch")
    out: list[tuple[int, bytes]] = []
    i = 0
    expect = first
    n = len(data)
    while i < n:
        if i + _FRAME.size > n:
            raise CorruptSegment(f"chunk at offset {first}: truncated frame")
        size, off = _FRAME.unpack_from(data, i)
        i += _FRAME.size
        if off != expect or i + size > n:
            raise CorruptSegment(f"chunk at offset {first}: bad frame at {off}")
        out.append((off, data[i : i + size]))
        i += size
        expect += 1
    return out


def verify_object(data: bytes, index: SegmentIndex) -> None:
    """Check a whole object against its index (size and SHA-256)."""
    if len(data) != index.size:
        raise CorruptSegment(f"object is {len(data)} bytes, index says {index.size}")
    if hashlib.sha256(data).hexdigest() != index.sha256:
        raise CorruptSegment("object checksum (sha256) mismatch")
