"""The partition log core: offsets, the hot tail, the high watermark, epochs.

Pure: no Twisted import, no I/O.  The storage adapter persists what
:meth:`PartitionLog.append` assigns and reports back with
:meth:`PartitionLog.stored`; the log decides what consumers may see.

Offsets below ``log_start`` were deleted by retention.  Offsets in
``[log_start, stored_end)`` are in LMDB; the hot tail holds the newest records
in memory (some of which may not be stored yet).  ``high_watermark`` is the
first offset consumers may *not* see: for a durable topic it is the stored
(fsynced) end, so an acked message is never un-seen; for an ephemeral topic it
is the log end.  With replication (later) it becomes the offset stored on a
majority of replicas.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from sprawl.log.hot_tail import HotTail
from sprawl.log.manifest import RemoteObject
from sprawl.log.record import HotAccount, Record, join_hot
from sprawl.log.segments import Segment


@dataclass
class RemoteChange:
    """What :meth:`PartitionLog.follow_remote` changed, for the storage adapter."""

    #: Local segments removed whole (their records and rows go from LMDB).
    dropped: list[Segment] = field(default_factory=list)
    #: ``(old base, segment)``: local segments that now start later (the
    #: records before the new base go from LMDB, the row moves).
    trimmed: list[tuple[int, Segment]] = field(default_factory=list)
    #: Remote segments no longer at the front of the log.
    gone_remote: list[Segment] = field(default_factory=list)
    changed: bool = False


class PartitionLog:
    """Offsets, hot tail, high watermark and leadership of one partition."""

    def __init__(
        self,
        topic: str,
        partition: int,
        *,
        durable: bool = True,
        leader: str | None = None,
        epoch: int = 0,
        replicas: Iterable[str] = (),
        log_start: int = 0,
        next_offset: int = 0,
        segments: list[Segment] | None = None,
        segment_bytes: int = 64 * 1000**2,
        segment_age_ms: int = 3_600_000,
    ):
        self.topic = topic
        self.partition = partition
        self.durable = durable
        self.leader = leader
        self.epoch = epoch
        self.replicas = list(replicas) or ([leader] if leader else [])
        self.log_start = log_start
        self.next_offset = next_offset
        self.stored_end = next_offset
        self.high_watermark = next_offset
        self.segments: list[Segment] = segments or []
        self.segment_bytes = segment_bytes
        self.segment_age_ms = segment_age_ms
        #: The newest records (:class:`~sprawl.log.hot_tail.HotTail`: kept where a
        #: collection need not walk them one by one).
        self.hot: HotTail[Record] = HotTail()
        self.hot_bytes = 0
        #: Memory the hot tail's records take (:attr:`Record.memory`), their
        #: cached encodings aside (those are in :attr:`account`).
        self.hot_records_memory = 0
        #: The cached encodings of the hot tail's records.
        self.account = HotAccount()
        self.appended_total = 0
        self.appended_bytes_total = 0
        #: Replicated (replication factor > 1): the high watermark is what a
        #: majority of replicas stored, set by :meth:`advance_high_watermark`,
        #: not this node's own stored end.
        self.replicated = False
        #: The log follows the partition's shared remote segments (the S3 tier; :meth:`follow_remote`).
        self.follows_remote = False
        #: After a reset: the partition's log start as the leader told it,
        #: below what this replica's remote front reaches yet (a hole it
        #: answers with an error, never skips); None once covered.
        self.floor: int | None = None
        #: Bumped by every change of this log that can move a figure of it on
        #: ``/metrics`` (offsets, the high watermark, hot tail bytes, the
        #: segments' bytes and tiers: append, truncate, reset, eviction,
        #: retention, following the remote tier): the exposition keeps a
        #: partition's lines while it stands (issue 23, tidy41).  A new
        #: method that changes any of those bumps it too.
        self.changes = 0

    # -- writing -----------------------------------------------------------

    def append(self, records: list[Record], now_ms: int) -> list[Segment]:
        """Assign offsets to ``records``, add them to the hot tail.

        Returns the segments whose metadata changed (the active one, and the
        previous one when it was sealed by this append), for the storage
        adapter to persist alongside the records.
        """
        changed: list[Segment] = []
        if not records:
            return changed
        seg = self.segments[-1] if self.segments else None
        total, mem = join_hot(records, self.account)
        self.hot_records_memory += mem
        if (
            seg is not None
            and not seg.sealed
            and seg.bytes + total < self.segment_bytes
            and not self._should_roll(seg, now_ms)
        ):
            # Fast path: the whole batch fits the active segment.
            off = self.next_offset
            p = self.partition
            last_ts = seg.last_ts
            for r in records:
                r.offset = off
                r.partition = p
                off += 1
                if r.timestamp > last_ts:
                    last_ts = r.timestamp
            self.next_offset = off
            seg.last = off - 1
            seg.bytes += total
            seg.last_ts = last_ts
            self.hot.extend(records)
            self.hot_bytes += total
            self.appended_bytes_total += total
            self.appended_total += len(records)
            if not self.durable and not self.replicated:
                self.high_watermark = off
            self.changes += 1
            return [seg]
        for r in records:
            off = self.next_offset
            r.offset = off
            r.partition = self.partition
            self.next_offset = off + 1
            seg = self.segments[-1] if self.segments else None
            if seg is None or seg.sealed or self._should_roll(seg, now_ms):
                if seg is not None and not seg.sealed:
                    seg.sealed = True
                    if not changed or changed[-1] is not seg:
                        changed.append(seg)
                seg = Segment(off, off, 0, r.timestamp, r.timestamp)
                self.segments.append(seg)
            seg.last = off
            seg.bytes += r.size
            seg.last_ts = max(seg.last_ts, r.timestamp)
            if not changed or changed[-1] is not seg:
                changed.append(seg)
            self.hot.append(r)
            self.hot_bytes += r.size
            self.appended_bytes_total += r.size
        self.appended_total += len(records)
        if not self.durable and not self.replicated:
            self.high_watermark = self.next_offset
        self.changes += 1
        return changed

    def append_at(self, records: list[Record], now_ms: int) -> list[Segment]:
        """A follower's append: ``records`` already carry the leader's offsets,
        which must continue this log exactly (else ``ValueError``, nothing
        changed).  Returns the changed segments, as :meth:`append` does."""
        if not records:
            return []
        first = records[0].offset
        if first != self.next_offset or records[-1].offset != first + len(records) - 1:
            raise ValueError(
                f"records {first}..{records[-1].offset} do not continue the log at {self.next_offset}"
            )
        for i, r in enumerate(records):
            if r.offset != first + i:
                raise ValueError(f"records are not contiguous at {first + i}")
        return self.append(records, now_ms)

    def truncate(self, offset: int) -> tuple[list[Segment], list[Segment]]:
        """Drop every offset from ``offset`` on (a follower's divergent,
        uncommitted suffix, after a leader change).

        Never below the high watermark or into a segment that moved to the
        object store (``ValueError``; nothing changed).  Returns the segments
        removed whole and the one shortened (if any), for the storage adapter
        to delete and rewrite with the records at ``offset`` and after.
        """
        if offset >= self.next_offset:
            return [], []
        if offset < self.high_watermark:
            raise ValueError(f"cannot truncate at {offset}: below the high watermark {self.high_watermark}")
        if any(s.remote is not None and s.last >= offset for s in self.segments):
            raise ValueError(f"cannot truncate at {offset}: that range is in the object store")
        hot = self.hot
        dropped_bytes = 0
        while hot and hot[-1].offset >= offset:
            r = hot.pop()
            self.hot_bytes -= r.size
            self._left(r)
            dropped_bytes += r.size
        removed = [s for s in self.segments if s.base >= offset]
        self.segments = [s for s in self.segments if s.base < offset]
        changed: list[Segment] = []
        if self.segments and self.segments[-1].last >= offset:
            seg = self.segments[-1]
            kept = offset - seg.base
            # Bytes of the dropped tail are known when it was in memory;
            # otherwise scale (segment bytes drive only rolling and retention).
            gone = sum(s.bytes for s in removed)
            if dropped_bytes - gone > 0:
                seg.bytes = max(0, seg.bytes - (dropped_bytes - gone))
            else:
                seg.bytes = seg.bytes * kept // seg.count
            seg.last = offset - 1
            changed.append(seg)
        self.next_offset = offset
        self.stored_end = min(self.stored_end, offset)
        self.changes += 1
        return removed, changed

    def reset(self, start: int) -> list[Segment]:
        """Drop the whole log and restart it empty at ``start`` (a follower
        whose end is below the leader's log start: retention removed what it
        lacks).

        Afterwards ``log_start == next_offset == stored_end == high_watermark
        == start``.  Never below the high watermark (``ValueError``; nothing
        changed): consumers must not un-see records or see an offset twice.
        Returns every segment removed (those with ``remote`` set live in the
        object store), for the storage adapter to delete.
        """
        if start < self.high_watermark:
            raise ValueError(f"cannot reset to {start}: below the high watermark {self.high_watermark}")
        removed, self.segments = self.segments, []
        for r in self.hot:
            r.leave_account()
        self.hot.clear()
        self.hot_bytes = 0
        self.hot_records_memory = 0
        self.log_start = self.next_offset = self.stored_end = self.high_watermark = start
        self.changes += 1
        return removed

    def follow_remote(
        self, start: int, objects: Sequence[RemoteObject], own: Collection[str] = ()
    ) -> RemoteChange:
        """Make the front of this log the partition's shared remote segments.

        ``start`` and ``objects`` are the partition's shared remote state (the
        log start set by retention; the segments in the object store,
        contiguous).  Only what lies below this replica's high watermark is
        followed -- committed records, the same on every replica -- so a
        replica never drops a record it might still have to correct:

        * the shared segments below the high watermark become the log's
          remote prefix, replacing the one it had;
        * local segments they cover are dropped (their LMDB copy is no longer
          needed), and one they cover in part starts after them;
        * everything below ``start`` goes (retention), the log start follows.

        ``own`` names this node's legacy objects (its own uploads under the
        old per-node keys): while they reach further than the shared segments
        do, the remote prefix stays as it is (only retention applies).
        """
        hw = self.high_watermark
        eff = min(start, hw)
        n = 0
        while n < len(self.segments) and self.segments[n].remote is not None:
            n += 1
        prefix, local = self.segments[:n], self.segments[n:]
        want = [o for o in objects if eff <= o.last < hw]
        legacy = [s for s in prefix if s.remote is not None and s.remote.key in own]
        if legacy and (not want or want[-1].last < legacy[-1].last):
            new_prefix = [s for s in prefix if s.last >= eff]
        else:
            known = {s.remote: s for s in prefix}
            new_prefix = [known.get(o) or o.to_segment() for o in want]
        covered = new_prefix[-1].last + 1 if new_prefix else None
        out = RemoteChange()
        kept: list[Segment] = []
        for s in local:
            if (covered is not None and s.last < covered) or s.last < eff:
                out.dropped.append(s)
                continue
            if covered is not None and s.base < covered:
                old = s.base
                s.bytes = s.bytes * (s.last - covered + 1) // s.count
                s.base = covered
                out.trimmed.append((old, s))
            kept.append(s)
        keep_ids = {id(s) for s in new_prefix}
        out.gone_remote = [s for s in prefix if id(s) not in keep_ids]
        segs = new_prefix + kept
        if segs:
            log_start = max(eff, segs[0].base)
        else:
            log_start = min(max(self.log_start, eff), self.next_offset)
        if self.floor is not None and self.floor < log_start:
            log_start = max(eff, self.floor)
        hot = self.hot
        while hot and hot[0].offset < log_start:
            r = hot.popleft()
            self.hot_bytes -= r.size
            self._left(r)
        out.changed = bool(
            out.dropped
            or out.trimmed
            or out.gone_remote
            or len(new_prefix) != len(prefix)
            or log_start != self.log_start
        )
        if out.changed:
            self.changes += 1
        self.segments = segs
        self.log_start = log_start
        self.follows_remote = True
        if self.floor is not None and self.remote_hole() is None:
            self.floor = None
        return out

    def remote_hole(self) -> tuple[int, int] | None:
        """``(lo, hi)``: offsets of this log that this replica holds nowhere --
        after its remote front, before its first local record -- because it
        was reset past what its view of the shared remote list covers yet
        (that view lags the leader's); None when there are none."""
        if not self.follows_remote:
            return None
        n = 0
        while n < len(self.segments) and self.segments[n].remote is not None:
            n += 1
        lo = self.segments[n - 1].last + 1 if n else self.log_start
        hi = self.segments[n].base if n < len(self.segments) else self.next_offset
        return (lo, hi) if hi > lo else None

    def _should_roll(self, seg: Segment, now_ms: int) -> bool:
        return seg.bytes >= self.segment_bytes or now_ms - seg.first_ts >= self.segment_age_ms

    def stored(self, end: int) -> bool:
        """Storage reports offsets below ``end`` durably stored.

        Returns True when the high watermark moved (consumers may have new data).
        """
        if end <= self.stored_end:
            return False
        self.stored_end = min(end, self.next_offset)
        if self.durable and not self.replicated and self.stored_end > self.high_watermark:
            self.high_watermark = self.stored_end
            self.changes += 1
            return True
        return False

    def advance_high_watermark(self, hw: int) -> bool:
        """(Replicated partitions) a majority of replicas stored ``[0, hw)``;
        the high watermark only moves forward, and never past this node's
        own stored end.  Returns True when it moved."""
        hw = min(hw, self.stored_end)
        if hw <= self.high_watermark:
            return False
        self.high_watermark = hw
        self.changes += 1
        return True

    # -- reading -----------------------------------------------------------

    @property
    def hot_start(self) -> int:
        """The first offset held in memory (``next_offset`` when the tail is empty)."""
        return self.hot[0].offset if self.hot else self.next_offset

    def read_hot(self, start: int, limit: int, end: int | None = None) -> list[Record] | None:
        """Records ``start .. min(end, high_watermark)`` from memory.

        Returns None when ``start`` lies below the hot tail (read storage),
        an empty list when nothing is visible yet.
        """
        hw = self.high_watermark if end is None else min(end, self.high_watermark)
        if start >= hw:
            return []
        hs = self.hot_start
        if start < hs:
            return None
        i = start - hs
        j = min(hw - hs, i + limit)
        if i == 0 and j == len(self.hot):
            return list(self.hot)
        hot = self.hot
        return [hot[k] for k in range(i, j)]

    def unstored(self) -> list[Record]:
        """Hot records not yet stored (ephemeral records waiting for a spill)."""
        return [r for r in self.hot if r.offset >= self.stored_end]

    @property
    def hot_memory(self) -> int:
        """Memory the hot tail takes: its records and their cached encodings."""
        return self.hot_records_memory + self.account.encoded

    def _left(self, r: Record) -> None:
        """``r`` left the hot tail (its ``hot_bytes`` already taken out)."""
        self.hot_records_memory -= r.memory
        r.leave_account()

    def evict(self, target_memory: int) -> int:
        """Drop stored records from the front of the hot tail until it takes
        at most ``target_memory`` bytes of memory (:attr:`hot_memory`);
        returns the memory freed.  Unstored records stay."""
        before = self.hot_memory
        hot = self.hot
        stored_end = self.stored_end
        while hot and self.hot_memory > target_memory and hot[0].offset < stored_end:
            r = hot.popleft()
            self.hot_bytes -= r.size
            self._left(r)
            self.changes += 1
        return before - self.hot_memory

    # -- retention -----------------------------------------------------------

    def drop_segments(self, count: int) -> list[Segment]:
        """Remove the ``count`` oldest segments; advance ``log_start``.

        Returns the removed segments so storage can delete their ranges.
        """
        if count <= 0:
            return []
        gone, self.segments = self.segments[:count], self.segments[count:]
        self.changes += 1
        new_start = self.segments[0].base if self.segments else self.next_offset
        self.log_start = max(self.log_start, new_start)
        if not self.segments:
            # Everything went: the offsets keep counting from next_offset.
            self.stored_end = max(self.stored_end, self.next_offset)
            self.high_watermark = max(self.high_watermark, self.next_offset)
        elif self.high_watermark < self.log_start:
            # Retention took offsets not stored yet (a commit in flight): they
            # are gone either way, and the visible range must not start past
            # its end (log_start <= high_watermark).
            self.stored_end = max(self.stored_end, self.log_start)
            self.high_watermark = self.log_start
        hot = self.hot
        while hot and hot[0].offset < self.log_start:
            r = hot.popleft()
            self.hot_bytes -= r.size
            self._left(r)
        return gone

    # -- positions -------------------------------------------------------------

    def resolve_start(self, spec: str | int) -> int:
        """Turn ``earliest`` / ``latest`` / an offset into a start offset.

        An offset below ``log_start`` (deleted by retention) starts at
        ``log_start``; one past the end waits at the end.
        """
        if spec == "earliest":
            return self.log_start
        if spec == "latest":
            return self.high_watermark
        off = int(spec)
        if off < self.log_start:
            return self.log_start
        return min(off, self.high_watermark)

    def segment_for_time(self, ts_ms: int) -> Segment | None:
        """The first segment holding a message at or after ``ts_ms``."""
        for s in self.segments:
            if s.last_ts >= ts_ms:
                return s
        return None

    def describe(self) -> dict:
        """The partition as ``GET /v1/topics/{topic}`` shows it."""
        return {
            "partition": self.partition,
            "leader": self.leader,
            "epoch": self.epoch,
            "replicas": list(self.replicas),
            "low": self.log_start,
            "high_watermark": self.high_watermark,
            "log_end": self.next_offset,
            "segments": len(self.segments),
            "bytes": sum(s.bytes for s in self.segments),
        }
