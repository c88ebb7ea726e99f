"""The broadcast queue: the same choice as the plain walk, without the walk.

:class:`BroadcastQueue` picks the updates piggybacked on every packet.  The
plain way -- walk every bucket, latest first, take what fits -- looks at
every queued update on every packet once the room left is smaller than the
queued updates (after a join storm, a thousand members' ``Alive``s), which
made a probe period's work grow with the member count.  These tests hold the
queue to the plain walk's choices (a reference copy below) and count its
work at 1,000 members.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from sprawl.gossip.broadcast import BroadcastQueue, retransmit_limit


@dataclass
class _RefItem:
    key: str
    payload: bytes
    seq: int
    transmits: int = 0


@dataclass
class PlainWalk:
    """The queue as it was: a bucket per transmit count in insertion order,
    walked latest first for every packet (the reference for the choices)."""

    max_items: int = 4096
    by_key: dict[str, _RefItem] = field(default_factory=dict)
    buckets: dict[int, dict[int, _RefItem]] = field(default_factory=dict)
    seq: int = 0
    looked_at: int = 0

    def queue(self, key: str, payload: bytes) -> None:
        old = self.by_key.pop(key, None)
        if old is not None:
            self._unbucket(old)
        self.seq += 1
        item = _RefItem(key, payload, self.seq)
        self.by_key[key] = item
        self.buckets.setdefault(0, {})[item.seq] = item
        while len(self.by_key) > self.max_items:
            top = max(self.buckets)
            bucket = self.buckets[top]
            dropped = bucket.pop(next(iter(bucket)))
            if not bucket:
                del self.buckets[top]
            del self.by_key[dropped.key]

    def take(self, budget: int, limit: int) -> list[bytes]:
        out: list[bytes] = []
        if budget <= 0 or not self.by_key:
            return out
        chosen: list[_RefItem] = []
        for transmits in sorted(self.buckets):
            for item in reversed(self.buckets[transmits].values()):
                self.looked_at += 1
                if len(item.payload) <= budget:
                    chosen.append(item)
                    budget -= len(item.payload)
                    if budget < 8:
                        break
            if budget < 8:
                break
        for item in chosen:
            self._unbucket(item)
            item.transmits += 1
            out.append(item.payload)
            if item.transmits >= limit:
                del self.by_key[item.key]
            else:
                self.buckets.setdefault(item.transmits, {})[item.seq] = item
        return out

    def _unbucket(self, item: _RefItem) -> None:
        bucket = self.buckets.get(item.transmits)
        if bucket is not None:
            bucket.pop(item.seq, None)
            if not bucket:
                del self.buckets[item.transmits]


ops = st.lists(
    st.one_of(
        st.tuples(st.just("queue"), st.integers(0, 30), st.integers(8, 300)),
        st.tuples(st.just("take"), st.integers(-5, 1400), st.integers(1, 6)),
    ),
    max_size=200,
)


@settings(max_examples=300)
@given(ops, st.integers(1, 40))
def test_takes_exactly_what_the_plain_walk_takes(script: list[tuple[str, int, int]], max_items: int) -> None:
    """Any mix of queued updates (sizes 8-300 B, keys replaced, the bound
    reached) and takes (any budget and limit): every take returns the same
    updates in the same order as the plain walk, and both hold the same
    updates afterwards."""
    q, ref = BroadcastQueue(max_items=max_items), PlainWalk(max_items=max_items)
    for n, (op, a, b) in enumerate(script):
        if op == "queue":
            payload = bytes([n % 256]) * b
            q.queue(f"k{a}", payload)
            ref.queue(f"k{a}", payload)
        else:
            assert q.take(a, b) == ref.take(a, b)
        assert len(q) == len(ref.by_key)
    assert q.take(10**6, 100) == ref.take(10**6, 100)


def alive_like(i: int) -> bytes:
    """A member's Alive-sized update (150-181 B: addresses and figures vary)."""
    return bytes([i % 256]) * (150 + i % 32)


def test_a_packet_looks_at_a_bounded_number_of_updates_at_1000_members() -> None:
    """After a join storm every member's Alive waits (1,000 of 150-181 B);
    a probe packet's piggyback takes what fits in 1,375 B and then has room
    for no Alive: the queue looks at group heads (32 sizes) and what it
    takes, never at the thousand updates -- the plain walk looks at them all,
    for every packet."""
    n = 1000
    limit = retransmit_limit(4, n)
    q, ref = BroadcastQueue(), PlainWalk()
    for i in range(n):
        q.queue(f"node-{i:03d}", alive_like(i))
        ref.queue(f"node-{i:03d}", alive_like(i))
    packets = 0
    while q:
        before = q.examined
        assert q.take(1375, limit) == ref.take(1375, limit)
        packets += 1
        assert q.examined - before <= 2 * 32 + 10
    assert not ref.by_key
    # Every update was taken `limit` times, about 8 per packet.
    assert packets <= math.ceil(n * limit / 7)
    assert ref.looked_at > 10 * q.examined  # the walk: most of the queue per packet


def test_a_small_update_behind_many_large_ones_is_found_without_walking_them() -> None:
    """A Suspect (30 B) queued before 1,000 Alives still rides in the room an
    Alive cannot use, found at once."""
    q = BroadcastQueue()
    q.queue("suspect", b"s" * 30)
    for i in range(1000):
        q.queue(f"node-{i:03d}", b"a" * 160)
    got = q.take(1375 - 160 * 8 + 1, 16)  # room for no Alive
    assert got == [b"s" * 30]
    assert q.examined <= 4


def test_the_bound_drops_the_most_transmitted_oldest_first() -> None:
    """Past ``max_items`` the update sent most often goes; among those, the
    one that reached that count first."""
    q = BroadcastQueue(max_items=3)
    for k in "abc":
        q.queue(k, k.encode() * 10)
    assert q.take(20, 10) == [b"c" * 10, b"b" * 10]  # c, b: sent once
    q.queue("d", b"d" * 10)  # over the bound: c (first to reach one send) goes
    assert sorted(q.take(1000, 10)) == [b"a" * 10, b"b" * 10, b"d" * 10]
