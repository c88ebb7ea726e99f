"""Replication wired end to end in one process: three brokers on their own
LMDB, three peer channels on loopback TCP, a failover core on one node.

A partition replicated on all three: the controller assigns the first
leader; publishes with acks=quorum are answered once a majority stored them
and every follower ends up with the same records; when the leader's node
goes away the controller fences a majority, picks the most up-to-date
replica and publishes continue there with every acknowledged record in
place, in order."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import task

from sprawl.broker import Broker
from sprawl.config import NodeConfig
from sprawl.errors import Overloaded
from sprawl.log.record import Record
from sprawl.peer.tcp import PeerChannel
from sprawl.replication.failover import FailoverCore
from sprawl.replication.messages import Append
from sprawl.replication.replica import LEADER
from sprawl.replication.service import ReplicationService
from sprawl.storage.lmdb import LmdbStore
from sprawl.testing import WAIT, bounded, the_reactor

IDS = ("r0", "r1", "r2")
CONTROLLER = "ctl"  # a node of its own: killing a replica never kills the controller


class Node:
    """A broker (none for the controller), its peer channel and replication service."""

    def __init__(self, nid: str, path: Path) -> None:
        reactor = the_reactor()
        self.id = nid
        self.store: Any = None
        self.broker: Any = None
        if nid != CONTROLLER:
            self.store = LmdbStore(str(path / nid / "lmdb"), reactor=reactor, map_size=64 * 1024**2)
            self.store.open()
            self.broker = Broker(NodeConfig(data_dir=str(path / nid)), self.store, reactor, nid)
            self.broker.recover()
        self.channel = PeerChannel(nid, reactor, random.Random(1), backoff_base=0.01, backoff_max=0.05)
        self.port = reactor.listenTCP(0, self.channel.server_factory(), interface="127.0.0.1")
        self.service = ReplicationService(nid, self.channel, reactor, tick_seconds=0.02)
        self.alive = True

    async def close(self) -> None:
        if not self.alive:
            return
        self.alive = False
        self.service.stop()
        await self.channel.close()
        await self.port.stopListening()
        if self.broker is not None:
            await self.broker.stop()
            await self.store.close()


async def until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(the_reactor(), 0.01, lambda: None)


@pytest_twisted.async_yield_fixture
async def cluster(tmp_path: Path) -> AsyncIterator[dict[str, Node]]:
    nodes = {nid: Node(nid, tmp_path) for nid in (*IDS, CONTROLLER)}
    try:
        for a in nodes.values():
            for b in nodes.values():
                if a is not b:
                    a.channel.set_address(b.id, "127.0.0.1", b.port.getHost().port)
        for nid in IDS:
            n = nodes[nid]
            await n.broker.put_topic("orders", {})
            n.service.replica("orders", 0, n.broker, CONTROLLER)
        nodes[CONTROLLER].service.controllers[("orders", 0)] = FailoverCore(IDS, beat_timeout_ticks=10)
        for n in nodes.values():
            n.service.start()
        yield nodes
    finally:
        for n in nodes.values():
            await n.close()


def _leader(nodes: dict[str, Node]) -> Node | None:
    ls = [
        n
        for n in nodes.values()
        if n.alive and n.broker is not None and n.service.replicas[("orders", 0)].core.role == LEADER
    ]
    return ls[0] if len(ls) == 1 else None


def _msgs(n: int, start: int) -> list[Record]:
    return [Record(-1, 0, 0, None, None, None, b"m%d" % i, True) for i in range(start, start + n)]


def _payloads(node: Node) -> list[bytes]:
    lg = node.broker.topics["orders"].logs[0]
    return [r.payload for r in lg.hot if not r.control]


@pytest_twisted.ensureDeferred
async def test_quorum_publishes_survive_the_leader(cluster: dict[str, Node]) -> None:
    """Acked publishes are on every follower; after the leader's node goes
    away a new leader takes publishes and holds every acked record at its
    acknowledged offset, in order (a control record marks each new epoch)."""
    await until(lambda: _leader(cluster) is not None, "a first leader")
    first = _leader(cluster)
    assert first is not None
    acked: dict[bytes, int] = {}
    for k in range(4):
        batch = _msgs(5, 5 * k)
        offsets = await bounded(first.service.replicas[("orders", 0)].publish(batch), WAIT)
        acked.update({r.payload: o for r, o in zip(batch, offsets, strict=True)})
    # acked = on a majority; every follower catches up with the same records
    replicas = [cluster[nid] for nid in IDS]
    await until(lambda: all(_payloads(n) == _payloads(first) for n in replicas), "followers in sync")
    assert _payloads(first) == [b"m%d" % i for i in range(20)]
    # followers see the leader's high watermark
    await until(
        lambda: all(n.broker.topics["orders"].logs[0].high_watermark >= 21 for n in replicas),
        "high watermarks everywhere",
    )

    old = first.id
    await first.close()  # the leader's node is gone
    await until(lambda: _leader(cluster) not in (None, first), "a new leader")
    new = _leader(cluster)
    assert new is not None and new.id != old
    batch = _msgs(10, 20)
    offsets = await bounded(new.service.replicas[("orders", 0)].publish(batch), WAIT)
    acked.update({r.payload: o for r, o in zip(batch, offsets, strict=True)})
    log = {r.payload: r.offset for r in new.broker.topics["orders"].logs[0].hot}
    for payload, off in acked.items():
        assert log.get(payload) == off, payload
    assert _payloads(new) == [b"m%d" % i for i in range(30)]


@pytest_twisted.ensureDeferred
async def test_no_quorum_no_ack(cluster: dict[str, Node]) -> None:
    """With both followers gone the leader still writes locally but never
    answers an acks=quorum publish: nothing is acknowledged that a majority
    does not hold."""
    await until(lambda: _leader(cluster) is not None, "a first leader")
    leader = _leader(cluster)
    assert leader is not None
    rep = leader.service.replicas[("orders", 0)]
    await bounded(rep.publish(_msgs(2, 0)), WAIT)  # acked while the followers are there
    for nid in IDS:
        if cluster[nid] is not leader:
            await cluster[nid].close()
    rep.max_waiting = 1
    d = rep.publish(_msgs(3, 2))
    with pytest.raises(Overloaded):  # bounded: a second waiting publish is refused, not queued
        rep.publish(_msgs(1, 5))
    await task.deferLater(the_reactor(), 0.5, lambda: None)  # 25 replication ticks
    assert not d.called, "acknowledged without a majority"
    assert (
        leader.broker.topics["orders"].logs[0].stored_end
        > leader.broker.topics["orders"].logs[0].high_watermark
    )
    d.addErrback(lambda _: None)


@pytest_twisted.ensureDeferred
async def test_a_restarted_replica_keeps_its_promises(cluster: dict[str, Node], tmp_path: Path) -> None:
    """The replica state is stored with the records: a follower restarted on
    its data dir comes back with its epoch runs, its fence promise and a high
    watermark no higher than what was committed, and still refuses a leader
    of an older epoch."""
    await until(lambda: _leader(cluster) is not None, "a first leader")
    leader = _leader(cluster)
    assert leader is not None
    await bounded(leader.service.replicas[("orders", 0)].publish(_msgs(5, 0)), WAIT)
    follower = next(cluster[nid] for nid in IDS if cluster[nid] is not leader)
    before = follower.service.replicas[("orders", 0)].core
    stored = follower.broker.topics["orders"].logs[0]
    await until(lambda: before.end == 6 and stored.stored_end == 6, "the follower stored the batch")
    runs, fenced = list(before.cache.runs), before.fenced_epoch
    await follower.close()
    again = Node(follower.id, tmp_path)
    try:
        rep = again.service.replica("orders", 0, again.broker, CONTROLLER)
        core = rep.core
        assert core.cache.runs == runs and core.end == 6
        assert core.fenced_epoch == fenced >= 1
        assert core.hw <= 6 and again.broker.topics["orders"].logs[0].high_watermark <= core.hw
        out = core.receive(
            "stale", Append(epoch=fenced - 1, start=6, prev_epoch=fenced, count=0, runs=(), hw=0)
        )
        assert [m.ok for _dst, m in out.messages] == [False]
    finally:
        await again.close()
