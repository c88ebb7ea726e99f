"""Segment bookkeeping for a partition log.

A partition log is a sequence of segments: contiguous offset ranges closed by
size or age.  Retention and tiering act on whole segments.  A segment moved
to the object store is described by a :class:`RemoteObject`, defined here
because the two refer to each other (:mod:`sprawl.log.manifest` builds the
shared remote state from them).  Pure: no Twisted.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, replace


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


#: A remote segment's row: base, last, bytes, first_ts, last_ts, key, size,
#: sha256, index_key, index_size, index_sha256[, epoch].
_ROW_TYPES = (int, int, int, int, int, str, int, str, str, int, str, int)


@dataclass(frozen=True)
class RemoteObject:
    """One segment in the object store: its offsets, its two objects and their checksums."""

    base: int
    last: int
    #: Logical bytes of the segment's records (as counted in LMDB).
    bytes: int
    first_ts: int
    last_ts: int
    key: str
    size: int
    sha256: str
    index_key: str
    index_size: int
    index_sha256: str
    #: The leader epoch it was uploaded (or adopted) in; 0 on a single node
    #: and for objects of the old per-node layout.
    epoch: int = 0

    def to_segment(self) -> Segment:
        """The sealed segment this object holds, marked remote."""
        return Segment(self.base, self.last, self.bytes, self.first_ts, self.last_ts, True, self)

    def to_row(self) -> list[int | str]:
        """The compact form stored in manifests and the cluster metadata."""
        return list(astuple(self))

    @classmethod
    def from_row(cls, row: object) -> RemoteObject:
        """Inverse of :meth:`to_row` (11 fields: the old layout, epoch 0);
        ``ValueError`` on anything malformed."""
        if not isinstance(row, list | tuple) or len(row) not in (11, 12):
            raise ValueError(f"a remote segment is a row of 11 or 12 fields, not {row!r:.80}")
        for v, t in zip(row, _ROW_TYPES, strict=False):
            if not isinstance(v, t) or isinstance(v, bool):
                raise ValueError(f"a remote segment field is {type(v).__name__}, not {t.__name__}")
        o = cls(*row)
        if not 0 <= o.base <= o.last or o.size < 0 or o.index_size < 0 or o.epoch < 0 or not o.key:
            raise ValueError(f"remote segment {o.base}-{o.last} is out of range")
        return o

    def starting_at(self, base: int) -> RemoteObject:
        """The same object serving offsets from ``base`` on (``base`` within it):
        readers skip the records before ``base``, which the object still holds."""
        if base <= self.base:
            return self
        kept = self.last - base + 1
        return replace(self, base=base, bytes=self.bytes * kept // (self.last - self.base + 1))


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
