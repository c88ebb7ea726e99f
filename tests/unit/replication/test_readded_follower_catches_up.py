"""The replica cores handle a follower removed from a partition's replicas
and added back while the whole cluster restarts, in any order of events.

The real order of things on a restart: every node applies the Raft log again
(the placement's ``Assign``s, each node at its own pace); the controller, not
hearing one node yet, takes it out of the partition's replicas (a new epoch)
and, once it is back, adds it again (another).  The node that was out
drops its replica object when it applies the removal and builds a new one
from what it stored when it applies the re-adding; messages to a partition
the node holds no replica of, or from a node not among the replicas it
applied, are dropped.  Links are FIFO per pair of nodes (TCP), deliveries
of different links and the nodes' applies interleave at random, and
replicas that are not idle are ticked.  Whatever the order, once everything
is delivered every replica of the last placement is caught up (or leads).

Here what a node stored is always what its core holds: the readiness flake
of ``test_create_answer_restart`` was a replica built from a store that
lagged the dropped one (its writes still queued), which the node no longer
does (``tests/unit/cluster/test_replica_sync_readd.py``)."""

from __future__ import annotations

import random
from collections import deque

import pytest

from sprawl.replication.epochs import EpochCache
from sprawl.replication.messages import Append, Assign, Message, Resign
from sprawl.replication.replica import Output, Replica

IDS = ("a", "b", "c")
CTRL = "ctrl"


class _Stored:
    """What a node's store holds of the partition: the log's epochs, the promise, the last led epoch, the hw."""

    def __init__(self) -> None:
        self.cache = EpochCache()
        self.fenced = 0
        self.led = 0
        self.hw = 0


class _Cluster:
    """Three nodes' replicas of one partition, FIFO links, scripted applies."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.stored = {n: _Stored() for n in IDS}
        self.replicas: dict[str, Replica | None] = {n: None for n in IDS}
        self.links: dict[tuple[str, str], deque[Message]] = {}
        self.resigned: list[tuple[str, int]] = []
        #: The replicas of the placement each node applied last (it takes
        #: replication messages only from those: ``ReplicaSync.accepts``).
        self.applied: dict[str, tuple[str, ...]] = {n: () for n in IDS}

    def build(self, n: str) -> Replica:
        """A replica built from what ``n`` stored (a restart, or a re-adding)."""
        s = self.stored[n]
        cache = EpochCache(list(s.cache.runs), s.cache.log_start, s.cache.end, s.cache.base_epoch)
        r = Replica(n, CTRL, cache=cache, fenced_epoch=s.fenced, led_epoch=s.led, hw=s.hw)
        self.replicas[n] = r
        return r

    def _store(self, n: str, r: Replica) -> None:
        s = self.stored[n]
        s.cache = EpochCache(list(r.cache.runs), r.cache.log_start, r.cache.end, r.cache.base_epoch)
        s.fenced, s.led, s.hw = r.fenced_epoch, r.led_epoch, r.hw

    def output(self, n: str, out: Output) -> None:
        r = self.replicas[n]
        if r is not None:
            self._store(n, r)  # the writes are durable before the messages go
            if r.is_leader and any(w.count for w in out.writes):
                self.output(n, r.stored(r.cache.end))
        for dst, m in out.messages:
            if dst == CTRL:
                if isinstance(m, Resign):
                    self.resigned.append((n, m.epoch))
                continue
            self.links.setdefault((n, dst), deque()).append(m)

    def apply(self, n: str, epoch: int, leader: str, reps: tuple[str, ...]) -> None:
        """Node ``n`` applies the placement ``(epoch, leader, reps)``."""
        self.applied[n] = reps
        if n not in reps:
            self.replicas[n] = None  # the node drops its replica object
            return
        r = self.replicas[n] or self.build(n)
        self.output(n, r.receive(CTRL, Assign(epoch, leader, reps)))

    def deliver_one(self) -> bool:
        busy = [k for k, q in self.links.items() if q]
        if not busy:
            return False
        src, dst = self.rng.choice(busy)
        m = self.links[(src, dst)].popleft()
        r = self.replicas[dst]
        if r is not None and src in self.applied[dst]:  # else dropped
            self.output(dst, r.receive(src, m))
        return True

    def tick(self) -> None:
        for n in IDS:
            r = self.replicas[n]
            if r is not None and not r.idle:
                self.output(n, r.tick())


def _run(seed: int) -> _Cluster:
    rng = random.Random(seed)
    c = _Cluster(rng)
    # Before the kill: a leads epoch 2 of all three; some of it reached b and c.
    for n in IDS:
        c.apply(n, 2, "a", IDS)
    a = c.replicas["a"]
    assert a is not None
    for _ in range(rng.randrange(0, 4)):
        c.output("a", a.append(1)[1])
    for _ in range(rng.randrange(0, 30)):
        if rng.random() < 0.2:
            c.tick()
        elif not c.deliver_one():
            break
    # kill -9 of every node: what is in flight is lost; each restarts from its store.
    c.links.clear()
    for n in IDS:
        c.build(n)
    # Each node applies the log again, then the removal of c and its re-adding, at its own pace.
    script = {n: [(2, "a", IDS), (3, "a", ("a", "b")), (4, "a", IDS)] for n in IDS}
    for _ in range(2000):
        todo = [n for n in IDS if script[n]]
        roll = rng.random()
        if todo and roll < 0.25:
            n = rng.choice(todo)
            c.apply(n, *script[n].pop(0))
        elif roll < 0.4:
            c.tick()
        elif not c.deliver_one() and not todo:
            c.tick()
    return c


@pytest.mark.parametrize("seed", range(100))
def test_a_readded_follower_catches_up_whatever_the_order(seed: int) -> None:
    """Whatever the interleaving, the last placement's followers end caught up."""
    c = _run(seed)
    leader = c.replicas["a"]
    assert leader is not None and leader.is_leader and leader.epoch == 4, c.resigned
    for n in ("b", "c"):
        r = c.replicas[n]
        assert r is not None
        assert r.caught_up, (
            n,
            r.epoch,
            r.fenced_epoch,
            r.leader,
            r.end,
            r.hw,
            leader.followers[n],
            c.resigned,
        )
    assert not any(isinstance(m, Append) for q in c.links.values() for m in q)
