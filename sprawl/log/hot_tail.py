"""A partition's hot tail: the newest records, in order, held where the cyclic
garbage collector need not walk them one by one.

A ``collections.deque`` of records is a tracked container, and a collection of
the generation it sits in visits every item, tracked or not (records are not:
:class:`~sprawl.log.record.Record` is a ``gc=False`` struct).  A tail of 200,000
records cost ~8 ms of CPU in each such collection -- the generation-1 and full
collections of 10-27 ms in the 3-node quorum run (docs/benchmarks.md, the
sixteenth round).  Here the records sit in sealed chunks of :data:`CHUNK`:
tuples, which the collector untracks the first time it sees one hold only
untracked items, so a collection walks one item a chunk -- ~800 for 200,000
records -- plus the two open ends (lists of fewer than :data:`CHUNK` records).

It offers what the log core asks of a deque: ``append``, ``extend``, ``pop``
(the newest), ``popleft`` (the oldest), indexing (``[i]``, ``[-1]``), ``len``,
iteration and ``clear``; a record taken off either end is no longer held.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Generic, TypeVar

T = TypeVar("T")

#: Records a sealed chunk holds.
CHUNK = 256


class HotTail(Generic[T]):
    """Records in order: ``front`` (the oldest, taken from its index ``head`` on),
    ``sealed`` chunks of exactly :data:`CHUNK`, ``back`` (the newest, fewer than
    :data:`CHUNK`).  See the module docstring."""

    __slots__ = ("_back", "_front", "_head", "_len", "_sealed")

    def __init__(self, items: Iterable[T] = ()) -> None:
        self._front: list[T | None] = []
        self._head = 0
        self._sealed: deque[tuple[T, ...]] = deque()
        self._back: list[T] = []
        self._len = 0
        self.extend(items)

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def append(self, item: T) -> None:
        """Add ``item`` as the newest."""
        back = self._back
        back.append(item)
        self._len += 1
        if len(back) >= CHUNK:
            self._sealed.append(tuple(back))
            back.clear()

    def extend(self, items: Iterable[T]) -> None:
        """Add ``items``, in order, as the newest."""
        back = self._back
        n = len(back)
        back.extend(items)
        self._len += len(back) - n
        if len(back) >= CHUNK:
            sealed = self._sealed
            full = len(back) - len(back) % CHUNK
            for i in range(0, full, CHUNK):
                sealed.append(tuple(back[i : i + CHUNK]))
            del back[:full]

    def popleft(self) -> T:
        """Take the oldest record off; IndexError when empty."""
        if not self._len:
            raise IndexError("pop from an empty hot tail")
        front = self._front
        if self._head == len(front):
            if self._sealed:
                front = self._front = list(self._sealed.popleft())
            else:
                front, self._back = self._back, []  # type: ignore[assignment]
                self._front = front
            self._head = 0
        item = front[self._head]
        front[self._head] = None  # (no longer held)
        self._head += 1
        self._len -= 1
        if self._head == len(front):
            front.clear()
            self._head = 0
        return item  # type: ignore[return-value]

    def pop(self) -> T:
        """Take the newest record off; IndexError when empty."""
        if not self._len:
            raise IndexError("pop from an empty hot tail")
        self._len -= 1
        if self._back:
            return self._back.pop()
        if self._sealed:
            back = self._back = list(self._sealed.pop())
            return back.pop()
        front = self._front
        item = front.pop()
        if len(front) == self._head:
            front.clear()
            self._head = 0
        return item  # type: ignore[return-value]

    def __getitem__(self, i: int) -> T:
        n = self._len
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("hot tail index out of range")
        live = len(self._front) - self._head
        if i < live:
            return self._front[self._head + i]  # type: ignore[return-value]
        i -= live
        c, k = divmod(i, CHUNK)
        sealed = self._sealed
        if c < len(sealed):
            return sealed[c][k]
        return self._back[i - len(sealed) * CHUNK]

    def __iter__(self) -> Iterator[T]:
        yield from islice(self._front, self._head, None)  # type: ignore[misc]
        for chunk in self._sealed:
            yield from chunk
        yield from self._back

    def clear(self) -> None:
        """Hold nothing."""
        self._front = []
        self._head = 0
        self._sealed.clear()
        self._back = []
        self._len = 0

    def __repr__(self) -> str:
        return f"HotTail({self._len} records)"
