"""What a stream delivered, offset by offset: :class:`OffsetTrack` records each delivered
``(partition, offset)`` and finds the duplicates (an offset at or below one already delivered
on its partition: a stream delivers each offset once, in order) and the gaps (offsets skipped
between two deliveries; a gap may still be control records, which take no frame -- the run
checks each against the log, :mod:`sprawl.client.bench.run`)."""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass, field

#: Every message's offset, partition, timestamp (the leader's, ms) and send time (the payload's
#: first 19 digits, ns) in a block of stream text (SSE, ``batch`` or ``ndjson``: each message's
#: JSON has them in this order, :meth:`sprawl.log.record.Record.to_dict`).
OFFSET_RE = re.compile(
    rb'"offset": ?(\d+), ?"partition": ?(\d+),[^\n]*?"timestamp": ?(\d+),[^\n]*?"payload": ?"(\d{19})'
)

#: The slowest deliveries a track keeps (:attr:`OffsetTrack.slowest`).
SLOWEST = 5

#: Duplicates and gaps listed one by one in a report (the counts cover all of them).
MAX_LISTED = 20


@dataclass
class PartitionDeliveries:
    """One partition's deliveries on one stream."""

    partition: int
    first: int
    last: int
    count: int = 1
    #: Deliveries of an offset at or below the highest one delivered before it.
    duplicates: int = 0
    #: The first :data:`MAX_LISTED` such offsets.
    duplicate_offsets: list[int] = field(default_factory=list)
    #: Offsets skipped, in all.
    skipped: int = 0
    #: The first :data:`MAX_LISTED` skipped ranges, ``[lo, hi)``.
    gaps: list[tuple[int, int]] = field(default_factory=list)


class OffsetTrack:
    """The deliveries of one stream, per partition (see the module docstring)."""

    def __init__(self) -> None:
        self.partitions: dict[int, PartitionDeliveries] = {}
        #: The :data:`SLOWEST` slowest deliveries: ``(send -> received ms, partition, offset,
        #: send -> the leader's timestamp ms)``, a min-heap (:meth:`slowest_first` sorts them).
        self.slowest: list[tuple[float, int, int, float]] = []

    def feed(self, block: bytes, now_ns: int) -> None:
        """Note every message in a block of stream text received at ``now_ns``."""
        slowest = self.slowest
        for off, part, ts, stamp in OFFSET_RE.findall(block):
            p, o = int(part), int(off)
            self.add(p, o)
            sent = int(stamp)
            late = (now_ns - sent) / 1e6
            if len(slowest) < SLOWEST or late > slowest[0][0]:
                item = (late, p, o, int(ts) - sent / 1e6)
                if len(slowest) < SLOWEST:
                    heapq.heappush(slowest, item)
                else:
                    heapq.heapreplace(slowest, item)

    def slowest_first(self) -> list[tuple[float, int, int, float]]:
        """:attr:`slowest`, the slowest first."""
        return sorted(self.slowest, reverse=True)

    def add(self, partition: int, offset: int) -> None:
        """Note one delivered message."""
        d = self.partitions.get(partition)
        if d is None:
            self.partitions[partition] = PartitionDeliveries(partition, offset, offset)
            return
        d.count += 1
        if offset <= d.last:
            d.duplicates += 1
            if len(d.duplicate_offsets) < MAX_LISTED:
                d.duplicate_offsets.append(offset)
            return
        if offset > d.last + 1:
            d.skipped += offset - d.last - 1
            if len(d.gaps) < MAX_LISTED:
                d.gaps.append((d.last + 1, offset))
        d.last = offset

    def report(self) -> list[PartitionDeliveries]:
        """Every partition's deliveries, by partition."""
        return [self.partitions[p] for p in sorted(self.partitions)]
