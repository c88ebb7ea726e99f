"""The leader's view of one follower: match/next indexes and flow control.

A follower's progress is in one of three states (as in etcd):

* ``PROBE`` -- we do not know where its log matches ours; send one append at a
  time and wait for the answer (or a heartbeat response) before the next.
* ``REPLICATE`` -- optimistic pipelining: ``next`` advances on send, at most
  ``max_inflight`` append messages are unacknowledged.
* ``SNAPSHOT`` -- it needs a snapshot; nothing else is sent until it reports
  back (or the snapshot times out and we probe again).
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    """Replication state of one follower."""

    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class Progress:
    """Replication progress of one peer, as tracked by the leader."""

    def __init__(self, next_index: int, max_inflight: int, is_learner: bool = False) -> None:
        """A peer to probe from ``next_index``."""
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_elapsed = 0
        self.recent_active = False
        self.is_learner = is_learner
        self.max_inflight = max_inflight
        #: last index of each unacknowledged append (REPLICATE state).
        self.inflights: deque[int] = deque()

    def _reset(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_elapsed = 0
        self.state = state
        self.inflights.clear()

    def become_probe(self) -> None:
        """Back to probing (after a rejection, or a snapshot finished/failed)."""
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        """Start pipelining from ``match + 1``."""
        self._reset(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, index: int) -> None:
        """A snapshot at ``index`` was sent."""
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = index

    def maybe_update(self, n: int) -> bool:
        """The peer acknowledged ``n``; returns whether ``match`` grew."""
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.probe_sent = False
        self.next = max(self.next, n + 1)
        return updated

    def maybe_decr_to(self, rejected: int, hint: int) -> bool:
        """The peer rejected an append at ``rejected``; move ``next`` back using
        ``hint``.  Returns False for stale rejections."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, hint), self.match + 1, 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        """Whether no append should be sent now (flow control)."""
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return len(self.inflights) >= self.max_inflight
        return True

    def sent_entries(self, last: int | None) -> None:
        """An append was sent whose last entry is ``last`` (None: no entries)."""
        if self.state == ProgressState.REPLICATE:
            if last is not None:
                self.next = last + 1
                self.inflights.append(last)
        elif self.state == ProgressState.PROBE:
            self.probe_sent = True

    def free_le(self, index: int) -> None:
        """Acknowledged up to ``index``: release those inflight slots."""
        while self.inflights and self.inflights[0] <= index:
            self.inflights.popleft()

    def free_first_one(self) -> None:
        """Release one slot (a heartbeat answered while the window is full)."""
        if self.inflights:
            self.inflights.popleft()
