"""The transmit-limited broadcast queue (memberlist's ``TransmitLimitedQueue``).

Membership updates are disseminated by piggybacking them on outgoing packets
(probes, acks, gossip rounds).  Each update is sent a limited number of times
-- :func:`retransmit_limit`, ``retransmit_mult * ceil(log10(N + 1))`` -- which
is enough for an epidemic to reach all ``N`` members with high probability
while keeping the per-packet cost bounded.

Updates are keyed by the node they are about: queueing a newer update about
a node drops the older one still waiting (it would be ignored anyway, and
would waste space).  Updates that have been sent the fewest times go first;
among equals, the one that reached that count last (a new update, or one
just sent again).
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

#: No encoded update is smaller than this; below it, stop looking for room.
_MIN_UPDATE = 8


def retransmit_limit(retransmit_mult: int, n_members: int) -> int:
    """How many times one update is transmitted in a cluster of ``n_members``."""
    return retransmit_mult * max(1, math.ceil(math.log10(n_members + 1)))


@dataclass(slots=True)
class _Item:
    key: str
    payload: bytes
    seq: int
    size: int
    transmits: int = 0
    #: When it entered its current bucket (the walk's order: latest first).
    stamp: int = 0


#: A bucket: payload size -> {seq: item}, each dict in the order the items
#: entered the bucket (their ``stamp``), with the sizes also kept sorted.
_Groups = dict[int, dict[int, _Item]]


@dataclass
class BroadcastQueue:
    """Encoded updates waiting to be piggybacked, with their transmit counts.

    ``max_items`` bounds the queue: when full, the most-transmitted items are
    dropped first.

    Cost: items are grouped by transmit count, then by encoded size, so
    :meth:`take` looks only at the groups whose size still fits the packet
    (the latest item of each, in a heap) and never walks the items that do
    not fit: its work grows with the number of distinct sizes (at most the
    packet size) and with what it takes, not with the queue's length.  (A
    plain walk of the queue makes the same choice, but a packet
    with room left for a small update and a queue of a thousand large ones
    -- every member's ``Alive`` after a join storm -- walks all of them for
    every packet.)  :attr:`examined` counts that work, for tests.
    """

    max_items: int = 4096
    _by_key: dict[str, _Item] = field(default_factory=dict)
    # transmit count -> size -> {seq: item}
    _buckets: dict[int, _Groups] = field(default_factory=dict)
    # transmit count -> the sizes of its groups, ascending
    _sizes: dict[int, list[int]] = field(default_factory=dict)
    _seq: int = 0
    _stamp: int = 0
    #: Group heads looked at by :meth:`take` so far (a work counter).
    examined: int = 0

    def __len__(self) -> int:
        return len(self._by_key)

    def __bool__(self) -> bool:
        return bool(self._by_key)

    def queue(self, key: str, payload: bytes) -> None:
        """Queue ``payload`` (an encoded update about ``key``), invalidating any
        older update about the same key."""
        old = self._by_key.pop(key, None)
        if old is not None:
            self._unbucket(old)
        self._seq += 1
        item = _Item(key, payload, self._seq, len(payload))
        self._by_key[key] = item
        self._bucket(item)
        while len(self._by_key) > self.max_items:
            self._drop_most_transmitted()

    def take(self, budget: int, limit: int) -> list[bytes]:
        """Updates whose encodings fit in ``budget`` bytes together, fewest
        transmits (then newest into their bucket) first.  Each one taken counts as transmitted;
        those reaching ``limit`` transmits leave the queue.

        The choice is the greedy walk -- bucket by bucket, the update that
        entered its bucket last first (a new update, or one just sent one
        time more), take each that still fits, stop once fewer than a
        minimal update's bytes are left -- made without visiting what does
        not fit: the next update that walk takes is the latest among those
        whose size fits the bytes left, and a size that no longer fits never
        will again.
        """
        out: list[bytes] = []
        if budget <= 0 or not self._by_key:
            return out
        chosen: list[_Item] = []
        for transmits in sorted(self._buckets):
            groups = self._buckets[transmits]
            sizes = self._sizes[transmits]
            heap: list[tuple[int, int, _Item, Iterator[_Item]]] = []
            for size in sizes[: bisect.bisect_right(sizes, budget)]:
                it = reversed(groups[size].values())
                head = next(it)
                heap.append((-head.stamp, size, head, it))
            heapq.heapify(heap)
            self.examined += len(heap)
            while heap:
                _, size, head, it = heap[0]
                if size > budget:  # this size is out for good: budget only shrinks
                    heapq.heappop(heap)
                    continue
                chosen.append(head)
                budget -= size
                if budget < _MIN_UPDATE:
                    break
                nxt = next(it, None)
                self.examined += 1
                if nxt is None:
                    heapq.heappop(heap)
                else:
                    heapq.heapreplace(heap, (-nxt.stamp, size, nxt, it))
            if budget < _MIN_UPDATE:
                break
        for item in chosen:
            self._unbucket(item)
            item.transmits += 1
            out.append(item.payload)
            if item.transmits >= limit:
                del self._by_key[item.key]
            else:
                self._bucket(item)
        return out

    def clear(self) -> None:
        """Drop every queued update."""
        self._by_key.clear()
        self._buckets.clear()
        self._sizes.clear()

    def _bucket(self, item: _Item) -> None:
        groups = self._buckets.get(item.transmits)
        if groups is None:
            groups = self._buckets[item.transmits] = {}
            self._sizes[item.transmits] = []
        group = groups.get(item.size)
        if group is None:
            group = groups[item.size] = {}
            bisect.insort(self._sizes[item.transmits], item.size)
        self._stamp += 1
        item.stamp = self._stamp
        group[item.seq] = item

    def _unbucket(self, item: _Item) -> None:
        groups = self._buckets.get(item.transmits)
        if groups is None:
            return
        group = groups.get(item.size)
        if group is None or group.pop(item.seq, None) is None or group:
            return
        del groups[item.size]
        sizes = self._sizes[item.transmits]
        del sizes[bisect.bisect_left(sizes, item.size)]
        if not groups:
            del self._buckets[item.transmits]
            del self._sizes[item.transmits]

    def _drop_most_transmitted(self) -> None:
        groups = self._buckets[max(self._buckets)]
        # the oldest among the most transmitted
        item = min((next(iter(g.values())) for g in groups.values()), key=lambda i: i.stamp)
        self._unbucket(item)
        del self._by_key[item.key]
