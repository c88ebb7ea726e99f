"""The spill policy: which sealed segments move from LMDB to the object store now.

Pure: no Twisted, no I/O, no clock of its own.  The tiering adapter describes
each partition's oldest local segment and the node's disk use; this module
answers which partitions spill that segment, and when a partition whose
upload failed may try again.

Rules:

* Only a *sealed* segment whose records are all stored (``last < stored_end``)
  can move; a partition moves its oldest local segment first, one at a time,
  so the remote segments are always a prefix of the log.
* **Age**: a segment moves once its newest message is ``age_ms`` old.
* **Budget**: while LMDB uses more than ``budget`` bytes, the oldest segments
  (by newest message) move until the expected use is back under
  ``LOW_WATER`` * budget.
* At most ``slots`` uploads start (bounded concurrency); a partition in
  back-off after a failure is skipped until its retry time.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from sprawl.log.segments import Segment

#: Spilling for the budget continues until LMDB is expected below this share of it.
LOW_WATER = 0.9
#: Back-off after a failed upload: first retry after this many ms, doubling.
RETRY_BASE_MS = 1_000
#: ... up to this many ms.
RETRY_MAX_MS = 30_000


@dataclass(frozen=True)
class Candidate:
    """One partition's oldest segment still in LMDB."""

    partition: Hashable
    segment: Segment
    #: Offsets below this are durably stored in LMDB.
    stored_end: int
    #: Wall-clock ms before which the partition must not retry (after a failure).
    retry_at_ms: int = 0


@dataclass(frozen=True)
class Spill:
    """Move ``partition``'s oldest local segment; ``reason`` is ``age`` or ``budget``."""

    partition: Hashable
    segment: Segment
    reason: str


def movable(c: Candidate, now_ms: int) -> bool:
    """Sealed, fully stored, not remote already, not in back-off."""
    s = c.segment
    return s.sealed and s.remote is None and s.last < c.stored_end and c.retry_at_ms <= now_ms


def choose_spills(
    candidates: list[Candidate],
    *,
    used_bytes: int,
    budget: int,
    age_ms: int,
    now_ms: int,
    slots: int,
) -> list[Spill]:
    """The uploads to start now (at most ``slots``), oldest data first."""
    if slots <= 0:
        return []
    ready = sorted((c for c in candidates if movable(c, now_ms)), key=lambda c: c.segment.last_ts)
    out: list[Spill] = []
    excess = used_bytes - int(budget * LOW_WATER) if used_bytes > budget else 0
    for c in ready:
        if len(out) >= slots:
            break
        if now_ms - c.segment.last_ts >= age_ms:
            out.append(Spill(c.partition, c.segment, "age"))
            excess -= c.segment.bytes
        elif excess > 0:
            out.append(Spill(c.partition, c.segment, "budget"))
            excess -= c.segment.bytes
    return out


def retry_at(failures: int, now_ms: int) -> int:
    """When a partition may retry after ``failures`` consecutive failed uploads."""
    if failures <= 0:
        return now_ms
    return now_ms + min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** min(failures - 1, 20))


def hard_limit(budget: int, tiered: bool, configured: int | None = None) -> int:
    """LMDB bytes past which publishes are refused (507).

    Without an object store the budget itself is the limit.  With one, the
    budget is where spilling starts, and the hard limit (default 1.5x the
    budget) is the room left for an object store that is down.
    """
    if configured is not None:
        return configured
    return budget + budget // 2 if tiered else budget
