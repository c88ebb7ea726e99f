"""The leader-epoch cache of one replica's log.  Pure.

A log written by several leaders is a sequence of runs: offsets
``[start_i, start_{i+1})`` written in epoch ``epoch_i``.  Keeping only the run
starts (as Kafka's leader-epoch checkpoint does) answers "which epoch wrote
offset o" without reading records, which is all replication needs to find
where two logs diverge.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field


@dataclass
class EpochCache:
    """Runs of ``(epoch, start_offset)``, epochs and starts strictly increasing;
    the log holds offsets ``[log_start, end)``."""

    runs: list[tuple[int, int]] = field(default_factory=list)
    log_start: int = 0
    end: int = 0
    #: Epoch of the record just before ``log_start`` (0: none / unknown).
    base_epoch: int = 0

    def epoch_at(self, offset: int) -> int:
        """The epoch of the record at ``offset`` (``log_start - 1`` gives the
        base epoch; anything else outside the log gives -1)."""
        if offset == self.log_start - 1:
            return self.base_epoch
        if offset < self.log_start or offset >= self.end:
            return -1
        runs = self.runs
        if runs and offset >= runs[-1][1]:
            return runs[-1][0]  # (the last run: most asks, several a replicated message)
        starts = [s for _, s in runs]
        i = bisect.bisect_right(starts, offset) - 1
        return self.runs[i][0] if i >= 0 else -1

    @property
    def last_epoch(self) -> int:
        """The epoch of the last record (the base epoch for an empty log)."""
        return self.runs[-1][0] if self.runs and self.end > self.log_start else self.base_epoch

    def append(self, epoch: int, count: int) -> None:
        """``count`` records of ``epoch`` appended at the end."""
        if count <= 0:
            return
        if self.runs and epoch < self.runs[-1][0]:
            raise ValueError(f"epoch {epoch} appended after epoch {self.runs[-1][0]}")
        if not self.runs or self.runs[-1][0] != epoch:
            self.runs.append((epoch, self.end))
        self.end += count

    def truncate(self, offset: int) -> None:
        """Drop the records at ``offset`` and after."""
        if offset >= self.end:
            return
        offset = max(offset, self.log_start)
        self.runs = [(e, s) for e, s in self.runs if s < offset]
        self.end = offset

    def advance_start(self, offset: int) -> None:
        """Retention removed the records below ``offset`` (at most the end):
        the log now starts there, and the base epoch is the epoch of the
        record just before it.  Never moves the start backwards."""
        offset = min(offset, self.end)
        if offset <= self.log_start:
            return
        base = self.epoch_at(offset - 1)
        self.base_epoch = base if base >= 0 else self.base_epoch
        kept = [(e, s) for e, s in self.runs if s >= offset]
        if offset < self.end and (not kept or kept[0][1] > offset):
            kept.insert(0, (self.epoch_at(offset), offset))
        self.runs = kept
        self.log_start = offset

    def first_offset_of(self, epoch: int) -> int:
        """The first offset written in ``epoch`` (``end`` if none)."""
        for e, s in self.runs:
            if e == epoch:
                return s
        return self.end

    def end_of_epoch(self, epoch: int) -> int:
        """One past the last offset of any epoch <= ``epoch`` (Kafka's
        OffsetsForLeaderEpoch): where a log that knows ``epoch`` ends it."""
        out = self.log_start
        for i, (e, s) in enumerate(self.runs):
            if e > epoch:
                return max(out, s)
            out = self.runs[i + 1][1] if i + 1 < len(self.runs) else self.end
        return out
