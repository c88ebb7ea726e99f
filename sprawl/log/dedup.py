"""Idempotent publish: remember message ids for a time window.

Pure: no Twisted import.  A message whose ``id`` was seen within the window
gets the first occurrence's partition and offset back instead of a new offset.
"""

from __future__ import annotations

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
