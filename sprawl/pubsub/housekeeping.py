"""What the broker's periodic housekeeping looks at: the topics that changed,
not every topic (issue 23: an idle node's tick must not cost per partition).
Pure: no Twisted, no clock of its own (times are passed in).

* :class:`Touched` -- the topics written to (a publish, a follower's append,
  a truncate, a watcher woken) since each periodic job last drained its set;
  every job has its own set (:meth:`Touched.subscribe`), so one draining
  does not hide a change from another.
* :class:`Deadlines` -- one heap of (due time, topic): retention by age of a
  topic is looked at when its oldest segment can first expire, not every
  second.
* :class:`PoolTally` -- the memory pools of every topic as last counted, and
  their totals: a recount of the changed topics and of a fixed-size slice of
  the others (in turn, so a change no write announced -- an encoding cached
  by a late reader -- is counted within ``topics / slice`` recounts) keeps
  the totals near the truth at a cost that does not grow with the topics.

The tests count the work of an idle tick (``tests/unit/pubsub/test_housekeeping_cost.py``).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable


class Touched:
    """Topics written to, fanned out to each periodic job's own set."""

    def __init__(self) -> None:
        self._sets: list[set[str]] = []

    def subscribe(self) -> set[str]:
        """A new set that every later :meth:`touch` adds to (the job drains it)."""
        s: set[str] = set()
        self._sets.append(s)
        return s

    def touch(self, name: str) -> None:
        """``name`` changed: every job looks at it on its next round."""
        for s in self._sets:
            s.add(name)

    def touch_all(self, names: Iterable[str]) -> None:
        """Every one of ``names`` changed (e.g. all topics once recovered)."""
        names = list(names)
        for s in self._sets:
            s.update(names)


def drain(s: set[str]) -> list[str]:
    """The members of ``s``, sorted (a stable order), and ``s`` emptied."""
    out = sorted(s)
    s.clear()
    return out


class Deadlines:
    """One due time per topic on a heap (entries replaced lazily)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._due)

    def set(self, name: str, due: float | None) -> None:
        """``name`` is due at ``due`` (None: never, until set again)."""
        if due is None:
            self._due.pop(name, None)
            return
        if self._due.get(name) == due:
            return
        self._due[name] = due
        heapq.heappush(self._heap, (due, name))
        if len(self._heap) > 2 * len(self._due) + 64:
            # Replaced entries pile up: rebuild from the live ones.
            self._heap = [(d, n) for n, d in self._due.items()]
            heapq.heapify(self._heap)

    def pop_due(self, now: float) -> list[str]:
        """The topics due at ``now`` (each removed: set it again once looked at)."""
        out: list[str] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, name = heapq.heappop(heap)
            if self._due.get(name) == due:
                del self._due[name]
                out.append(name)
        return out


#: A topic's pools as counted: (hot records, encodings, dedup ids, hot bytes).
Pools = tuple[int, int, int, int]
ZERO: Pools = (0, 0, 0, 0)


class PoolTally:
    """Each topic's memory pools as last counted, and their running totals."""

    def __init__(self, slice_size: int = 64) -> None:
        self.slice_size = slice_size
        self._counted: dict[str, Pools] = {}
        self._order: deque[str] = deque()
        self._listed: set[str] = set()  # the names in _order
        self.records = self.encodings = self.dedup = self.hot_bytes = 0
        #: Topics counted so far (the tests count an idle tick's work with it).
        self.counted_total = 0

    @property
    def total(self) -> int:
        """Hot records, encodings and dedup ids together (bytes)."""
        return self.records + self.encodings + self.dedup

    def _set(self, name: str, new: Pools) -> None:
        old = self._counted.get(name, ZERO)
        if name not in self._listed:
            self._listed.add(name)
            self._order.append(name)
        self._counted[name] = new
        self.records += new[0] - old[0]
        self.encodings += new[1] - old[1]
        self.dedup += new[2] - old[2]
        self.hot_bytes += new[3] - old[3]

    def forget(self, name: str) -> None:
        """``name`` was deleted: its pools leave the totals."""
        if name in self._counted:
            self._set(name, ZERO)
            del self._counted[name]  # (its place in the order goes when the sweep reaches it)

    def recount(self, names: Iterable[str], measure: Callable[[str], Pools | None]) -> None:
        """Count ``names`` again (``measure`` returns None for a topic gone)."""
        for name in names:
            self.counted_total += 1
            pools = measure(name)
            if pools is None:
                self.forget(name)
            else:
                self._set(name, pools)

    def sweep(self, measure: Callable[[str], Pools | None]) -> None:
        """Count the next ``slice_size`` topics in turn again."""
        order = self._order
        for _ in range(min(self.slice_size, len(order))):
            name = order.popleft()
            if name not in self._counted:
                self._listed.discard(name)  # forgotten
                continue
            order.append(name)
            self.recount((name,), measure)
