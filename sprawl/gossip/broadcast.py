"""The transmit-limited broadcast queue (memberlist's ``TransmitLimitedQueue``).

Membership updates are disseminated by piggybacking them on outgoing packets
(probes, acks, gossip rounds).  Each update is sent a limited number of times
-- :func:`retransmit_limit`, ``retransmit_mult * ceil(log10(N + 1))`` -- which
is enough for an epidemic to reach all ``N`` members with high probability
while keeping the per-packet cost bounded.

Updates are keyed by the node they are about: queueing a newer update about
a node drops the older one still waiting (it would be ignored anyway, and
would waste space).  Updates that have been sent the fewest times go first;
among equals, the newest.
"""

from __future__ import annotations

import math
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
    transmits: int = 0


@dataclass
class BroadcastQueue:
    """Encoded updates waiting to be piggybacked, with their transmit counts.

    ``max_items`` bounds the queue: when full, the most-transmitted items are
    dropped first.
    """

    max_items: int = 4096
    _by_key: dict[str, _Item] = field(default_factory=dict)
    # transmit count -> {seq: item}; dict order is insertion (oldest first)
    _buckets: dict[int, dict[int, _Item]] = field(default_factory=dict)
    _seq: int = 0

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
        item = _Item(key, payload, self._seq)
        self._by_key[key] = item
        self._buckets.setdefault(0, {})[item.seq] = item
        while len(self._by_key) > self.max_items:
            self._drop_most_transmitted()

    def take(self, budget: int, limit: int) -> list[bytes]:
        """Updates whose encodings fit in ``budget`` bytes together, fewest
        transmits (then newest) first.  Each one taken counts as transmitted;
        those reaching ``limit`` transmits leave the queue."""
        out: list[bytes] = []
        if budget <= 0 or not self._by_key:
            return out
        chosen: list[_Item] = []
        for transmits in sorted(self._buckets):
            bucket = self._buckets[transmits]
            for item in reversed(bucket.values()):
                size = len(item.payload)
                if size <= budget:
                    chosen.append(item)
                    budget -= size
                    if budget < _MIN_UPDATE:
                        break
            if budget < _MIN_UPDATE:
                break
        for item in chosen:
            self._unbucket(item)
            item.transmits += 1
            out.append(item.payload)
            if item.transmits >= limit:
                del self._by_key[item.key]
            else:
                self._buckets.setdefault(item.transmits, {})[item.seq] = item
        return out

    def clear(self) -> None:
        """Drop every queued update."""
        self._by_key.clear()
        self._buckets.clear()

    def _unbucket(self, item: _Item) -> None:
        bucket = self._buckets.get(item.transmits)
        if bucket is not None:
            bucket.pop(item.seq, None)
            if not bucket:
                del self._buckets[item.transmits]

    def _drop_most_transmitted(self) -> None:
        top = max(self._buckets)
        bucket = self._buckets[top]
        seq = next(iter(bucket))  # the oldest among the most transmitted
        item = bucket.pop(seq)
        if not bucket:
            del self._buckets[top]
        del self._by_key[item.key]
