"""Idempotent publish: remember message ids for a time window.

Pure: no Twisted import.  A message whose ``id`` was seen within the window
gets the first occurrence's partition and offset back instead of a new offset.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict, deque

#: Memory one remembered id takes beyond its characters: the ordered dict's
#: entry, the ``(partition, offset, timestamp)`` tuple and its ints, the
#: order deque's ``(offset, id)`` tuple and the id's ``str`` header (measured
#: with ``tracemalloc``; ``tests/unit/log/test_record_memory.py``).
ID_MEMORY = 340


class DedupWindow:
    """Message id → (partition, offset) for ids seen in the last ``window_ms``."""

    def __init__(self, window_ms: int, max_ids: int = 1_000_000):
        self.window_ms = window_ms
        self.max_ids = max_ids
        self._seen: OrderedDict[str, tuple[int, int, int]] = OrderedDict()
        #: Per partition, (offset, id) in the order remembered -- offsets
        #: ascending, as a partition's records are stored -- so forgetting a
        #: truncated suffix costs what it drops, not a scan of the window.
        #: May hold entries the window already dropped (trimmed in :meth:`expire`).
        self._order: dict[int, deque[tuple[int, str]]] = {}
        #: Characters of the ids remembered.
        self._id_chars = 0

    def __len__(self) -> int:
        return len(self._seen)

    @property
    def memory(self) -> int:
        """Bytes the window takes: :data:`ID_MEMORY` per id plus its characters."""
        return len(self._seen) * ID_MEMORY + self._id_chars

    def lookup(self, msg_id: str, now_ms: int) -> tuple[int, int] | None:
        """The (partition, offset) of ``msg_id`` if seen within the window."""
        hit = self._seen.get(msg_id)
        if hit is None or hit[2] < now_ms - self.window_ms:
            return None
        return hit[0], hit[1]

    def remember(self, msg_id: str, partition: int, offset: int, ts_ms: int) -> None:
        """Record an id's first occurrence."""
        if msg_id not in self._seen:
            self._id_chars += len(msg_id)
        self._seen[msg_id] = (partition, offset, ts_ms)
        self._seen.move_to_end(msg_id)
        order = self._order.get(partition)
        if order is None:
            order = self._order[partition] = deque()
        order.append((offset, msg_id))
        if len(self._seen) > self.max_ids:
            self._id_chars -= len(self._seen.popitem(last=False)[0])

    def expire(self, now_ms: int) -> int:
        """Forget ids older than the window; returns how many were dropped."""
        n = 0
        cutoff = now_ms - self.window_ms
        seen = self._seen
        while seen:
            _k, v = next(iter(seen.items()))
            if v[2] >= cutoff:
                break
            self._id_chars -= len(seen.popitem(last=False)[0])
            n += 1
        self._trim()
        return n

    def trim_to(self, memory: int) -> int:
        """Forget the oldest ids until the window takes at most ``memory``
        bytes (the memory budget's share for dedup is full); returns the
        bytes freed."""
        before = self.memory
        seen = self._seen
        while seen and self.memory > memory:
            self._id_chars -= len(seen.popitem(last=False)[0])
        self._trim()
        return before - self.memory

    def forget_from(self, partition: int, offset: int) -> int:
        """Forget the ids stored at ``offset`` or later in ``partition`` (a
        replica truncated them: the offsets will hold other records).  Returns
        how many were dropped; costs what it drops."""
        order = self._order.get(partition)
        n = 0
        while order and order[-1][0] >= offset:
            off, mid = order.pop()
            hit = self._seen.get(mid)
            if hit is not None and hit[0] == partition and hit[1] == off:
                del self._seen[mid]
                self._id_chars -= len(mid)
                n += 1
        return n

    def _trim(self) -> None:
        """Drop order entries whose id the window no longer holds there."""
        seen = self._seen
        for p, order in list(self._order.items()):
            while order:
                off, mid = order[0]
                hit = seen.get(mid)
                if hit is not None and hit[0] == p and hit[1] == off:
                    break
                order.popleft()
            if not order:
                del self._order[p]


#: Memory one run of :class:`RecentIds` takes (its list of five ints, their
#: objects, and the slot in the producer's lists).
RUN_MEMORY = 240
_HEX = frozenset("0123456789abcdef")


def server_id(msg_id: str) -> tuple[str, int] | None:
    """``(producer, sequence)`` of an id a node named (``IdSource``: 12 hex
    digits of the process, then the sequence in lowercase hex without
    leading zeros), None for any other id.  The mapping is one-to-one, so a
    client id that happens to look the same is told apart exactly too."""
    if not 13 <= len(msg_id) <= 28 or msg_id[12] == "0" or not _HEX.issuperset(msg_id):
        return None
    return msg_id[:12], int(msg_id[12:], 16)


class RecentIds(DedupWindow):
    """A window of recent ids whose memory grows with producers and batches,
    not with messages: ids a node named (:func:`server_id`) are kept as runs
    -- consecutive sequence numbers of one producer stored at consecutive
    offsets of one partition -- and any other id as :class:`DedupWindow`
    keeps it.  A batch the entry node named and a replica stored is one run.
    """

    def __init__(self, window_ms: int, max_ids: int = 1_000_000):
        super().__init__(window_ms, max_ids)
        #: producer -> runs ``[first_seq, last_seq, partition, first_offset, ts_ms]``, ascending.
        self._runs: dict[str, list[list[int]]] = {}
        self._firsts: dict[str, list[int]] = {}
        self._run_ids = 0
        self._nruns = 0

    def __len__(self) -> int:
        return super().__len__() + self._run_ids

    @property
    def memory(self) -> int:
        """Bytes the window takes: its runs, and the ids kept one by one."""
        return super().memory + self._nruns * RUN_MEMORY

    def lookup(self, msg_id: str, now_ms: int) -> tuple[int, int] | None:
        """The (partition, offset) of ``msg_id`` if seen within the window."""
        sid = server_id(msg_id)
        if sid is None:
            return super().lookup(msg_id, now_ms)
        firsts = self._firsts.get(sid[0])
        if firsts:
            i = bisect.bisect_right(firsts, sid[1]) - 1
            if i >= 0:
                first, last, p, off, ts = self._runs[sid[0]][i]
                if sid[1] <= last and ts >= now_ms - self.window_ms:
                    return p, off + sid[1] - first
        return super().lookup(msg_id, now_ms)

    def remember(self, msg_id: str, partition: int, offset: int, ts_ms: int) -> None:
        """Record an id's first occurrence (extending its producer's last run when it continues it)."""
        sid = server_id(msg_id)
        if sid is None:
            return super().remember(msg_id, partition, offset, ts_ms)
        prod, seq = sid
        runs = self._runs.get(prod)
        if runs:
            run = runs[-1]
            if seq == run[1] + 1 and partition == run[2] and offset == run[3] + seq - run[0]:
                run[1] = seq
                run[4] = ts_ms
                self._run_ids += 1
                return
            if seq <= run[1]:
                return super().remember(msg_id, partition, offset, ts_ms)  # out of order: one by one
        else:
            runs = self._runs[prod] = []
            self._firsts[prod] = []
        runs.append([seq, seq, partition, offset, ts_ms])
        self._firsts[prod].append(seq)
        self._run_ids += 1
        self._nruns += 1
        if len(self) > self.max_ids:
            self._drop_oldest_run()

    def _drop_run(self, prod: str, i: int) -> None:
        run = self._runs[prod].pop(i)
        self._firsts[prod].pop(i)
        self._run_ids -= run[1] - run[0] + 1
        self._nruns -= 1
        if not self._runs[prod]:
            del self._runs[prod], self._firsts[prod]

    def _drop_oldest_run(self) -> bool:
        if not self._runs:
            return False
        prod = min(self._runs, key=lambda k: self._runs[k][0][4])
        self._drop_run(prod, 0)
        return True

    def expire(self, now_ms: int) -> int:
        """Forget ids older than the window; returns how many were dropped."""
        n = super().expire(now_ms)
        cutoff = now_ms - self.window_ms
        for prod in list(self._runs):
            runs = self._runs[prod]
            while prod in self._runs and runs and runs[0][4] < cutoff:
                n += runs[0][1] - runs[0][0] + 1
                self._drop_run(prod, 0)
        return n

    def forget_from(self, partition: int, offset: int) -> int:
        """Forget the ids stored at ``offset`` or later in ``partition`` (truncated on a replica)."""
        n = super().forget_from(partition, offset)
        for prod in list(self._runs):
            runs = self._runs[prod]
            for i in range(len(runs) - 1, -1, -1):
                first, last, p, off, _ts = runs[i]
                if p != partition or off + last - first < offset:
                    continue
                if off >= offset:
                    n += last - first + 1
                    self._drop_run(prod, i)
                    if prod not in self._runs:
                        break
                else:
                    keep = offset - off  # ids first .. first + keep - 1 stay
                    n += last - first + 1 - keep
                    self._run_ids -= last - first + 1 - keep
                    runs[i][1] = first + keep - 1
        return n

    def trim_to(self, memory: int) -> int:
        """Forget the oldest ids (one by one first, then runs) until the window takes at most ``memory`` bytes."""
        before = self.memory
        super().trim_to(max(0, memory - self._nruns * RUN_MEMORY))
        while self.memory > memory and self._drop_oldest_run():
            pass
        return before - self.memory
