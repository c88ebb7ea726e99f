"""Segment bookkeeping for a partition log.

A partition log is a sequence of segments: contiguous offset ranges closed by
size or age.  Retention and tiering act on whole segments.  Pure: no Twisted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sprawl.log.manifest import RemoteObject


@dataclass
class Segment:
    """One contiguous range ``[base, last]`` of a partition log."""

    base: int
    last: int
    bytes: int
    first_ts: int
    last_ts: int
    sealed: bool = False
    #: Where the segment lives in the object store once spilled (None: in LMDB).
    remote: RemoteObject | None = None

    @property
    def count(self) -> int:
        """Number of offsets in the segment."""
        return self.last - self.base + 1

    def to_tuple(self) -> tuple[int, int, int, int, int, bool]:
        """Compact form for storage (the LMDB ``segments`` database; not ``remote``)."""
        return (self.base, self.last, self.bytes, self.first_ts, self.last_ts, self.sealed)

    @classmethod
    def from_tuple(cls, t: list | tuple) -> Segment:
        """Inverse of :meth:`to_tuple`."""
        base, last, nbytes, first_ts, last_ts, sealed = t
        return cls(int(base), int(last), int(nbytes), int(first_ts), int(last_ts), bool(sealed))


def expired_segments(
    segments: list[Segment],
    now_ms: int,
    retention_ms: int | None,
    retention_bytes: int | None,
) -> int:
    """How many of the oldest segments retention deletes now.

    Whole segments only.  By age: a segment goes when its newest message is
    older than ``retention_ms``; this may include the active segment (the log
    then becomes empty, its offsets keep counting).  By bytes: the oldest
    sealed segments go while the total exceeds ``retention_bytes``; the active
    segment is never deleted for size.
    """
    n = 0
    if retention_ms is not None:
        while n < len(segments) and segments[n].last_ts < now_ms - retention_ms:
            n += 1
    if retention_bytes is not None:
        total = sum(s.bytes for s in segments[n:])
        while n < len(segments) - 1 and total > retention_bytes:
            total -= segments[n].bytes
            n += 1
    return n
