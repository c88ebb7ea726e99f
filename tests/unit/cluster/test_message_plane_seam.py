"""The message-plane seam (:class:`sprawl.interfaces.MessagePlane`): the HTTP API's
publishes, reads and consumer groups go through it.  :class:`LocalDataPlane` (a
lone node: the broker alone, the null object the in-process HTTP tests use) and
:class:`DataPlane` (a cluster node, here the only voter of a real one-node Raft
group with its peer RPC) pass the same contract: on a node that holds every
partition both serve everything locally, and they answer alike.

Each side is a broker on its own real LMDB with its metadata control in front
(the sides of tests/unit/cluster/test_metadata_seam.py), on the real reactor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_twisted
from test_metadata_seam import Side
from twisted.internet import defer

from harness import bounded, the_reactor
from sprawl.cluster.dataplane import DataPlane
from sprawl.cluster.local import LocalDataPlane
from sprawl.interfaces import MessagePlane
from sprawl.log.record import Record
from sprawl.peer.rpc import PeerRPC


class PlaneSide:
    """A :class:`Side` with the data plane of its kind: local, or the cluster's."""

    def __init__(self, side: Side) -> None:
        self.side = side
        self.broker = side.broker
        self.control = side.control
        reactor = the_reactor()
        self.cluster: DataPlane | None = None
        self.plane: MessagePlane
        if side.kind == "local":
            self.plane = LocalDataPlane(side.broker, reactor)
        else:
            # Every partition placed on this node alone: served here, no replica to sync.
            rpc = PeerRPC(side.channel, reactor)
            self.cluster = DataPlane("n1", side.broker, side.control, side.channel, rpc, reactor)
            self.plane = self.cluster

    async def start(self) -> None:
        await self.side.start()
        self.broker.start()
        if self.cluster is not None:
            self.cluster.start()

    async def close(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        await self.side.close()


@pytest_twisted.async_yield_fixture(params=["local", "raft"])
async def side(request: Any, tmp_path: Path) -> AsyncIterator[PlaneSide]:
    """Each contract test runs against both implementations."""
    s = PlaneSide(Side(tmp_path, request.param))
    await s.start()
    yield s
    await s.close()


def _records(*payloads: str, key: str | None = None) -> list[Record]:
    return [Record(-1, 0, 0, None, key, None, p.encode(), True) for p in payloads]


@pytest_twisted.ensureDeferred
async def test_publish_lands_in_the_broker_and_every_read_is_local(side: PlaneSide) -> None:
    """A publish is stored in this node's broker (offsets in order, ids assigned), and
    every partition is read here: no read source, nothing to fetch elsewhere."""
    t, _ = await side.control.put_topic("orders", {"partitions": 2})
    res = await bounded(side.plane.publish(t, _records("a", "b", key="k"), "leader"))
    assert res.offsets == [0, 1] and len(set(res.ids)) == 2 and res.duplicates == [False, False]
    (p,) = set(res.partitions)
    got = await side.broker.read(t, p, 0, 10)
    assert [r.payload for r in got] == [b"a", b"b"]
    assert all(side.plane.read_source("orders", q) is None for q in range(2))
    if side.cluster is not None:  # placed by Raft, on this node alone
        assert [side.cluster.placement("orders", q)["replicas"] for q in range(2)] == [["n1"], ["n1"]]
    assert isinstance(side.plane.partition_view("orders", p), dict)
    assert side.plane.summary() is None or isinstance(side.plane.summary(), dict)


@pytest_twisted.ensureDeferred
async def test_changed_fires_on_a_publish_or_at_the_deadline(side: PlaneSide) -> None:
    """``changed`` fires when the partition's high watermark moves, else after ``seconds``."""
    t, _ = await side.control.put_topic("ticks", {"partitions": 1})
    waiting = side.plane.changed("ticks", 0, 60.0)
    assert not waiting.called
    await bounded(side.plane.publish(t, _records("x"), "leader"))
    await bounded(waiting)  # long before its 60 s
    await bounded(side.plane.changed("ticks", 0, 0.01))  # nothing moves: the deadline


@pytest_twisted.ensureDeferred
async def test_group_pull_ack_nack_and_describe(side: PlaneSide) -> None:
    """Pulls lease messages once; acks and nacks answer the refused ids; a nacked message
    comes again; the description counts what was acked."""
    t, _ = await side.control.put_topic("jobs", {"partitions": 1})
    await side.control.put_group(t, "workers", {"start": "earliest"})
    await bounded(side.plane.publish(t, _records("j0", "j1", "j2"), "leader"))
    groups = side.plane.groups
    got = await bounded(defer.ensureDeferred(groups.pull(t, "workers", 2, 0)))
    assert [r.payload for _, r in got] == [b"j0", b"j1"]
    (d0, _), (d1, _) = got
    refused = await bounded(defer.ensureDeferred(groups.settle(t, "workers", [d0.ack_id], False)))
    assert refused == {}
    refused = await bounded(defer.ensureDeferred(groups.settle(t, "workers", [d1.ack_id], True, 0)))
    assert refused == {}
    again = await bounded(defer.ensureDeferred(groups.pull(t, "workers", 10, 0)))
    assert sorted(r.payload for _, r in again) == [b"j1", b"j2"]
    refused = await bounded(defer.ensureDeferred(groups.settle(t, "workers", [d0.ack_id], False)))
    assert list(refused) == [d0.ack_id]  # acked once already
    desc = await bounded(defer.ensureDeferred(groups.describe(t, "workers")))
    assert desc["group"] == "workers" and desc["acked_total"] == 1 and desc["in_flight"] == 2
    assert desc["committed"] == {"0": 1} and desc["lag"] == 2


@pytest_twisted.ensureDeferred
async def test_group_extend_moves_live_leases_and_refuses_the_rest(side: PlaneSide) -> None:
    """``extend`` answers each live lease's new deadline (now + extend_ms) and
    refuses settled, malformed and out-of-range ids with their reason."""
    t, _ = await side.control.put_topic("slow", {"partitions": 1})
    await side.control.put_group(t, "g", {"ack_deadline_ms": 1000})
    await bounded(side.plane.publish(t, _records("a", "b"), "leader"))
    groups = side.plane.groups
    (d0, _), (d1, _) = await bounded(defer.ensureDeferred(groups.pull(t, "g", 2, 0)))
    assert await bounded(defer.ensureDeferred(groups.settle(t, "g", [d1.ack_id], False))) == {}
    before = side.broker.now_ms()
    refused, deadlines = await bounded(
        defer.ensureDeferred(groups.extend(t, "g", [d0.ack_id, d1.ack_id, "junk", "7-0-1"], 60_000))
    )
    assert refused == {d1.ack_id: "unknown", "junk": "malformed", "7-0-1": "unknown"}
    assert list(deadlines) == [d0.ack_id]
    assert before + 60_000 <= deadlines[d0.ack_id] <= side.broker.now_ms() + 60_000
    assert await bounded(defer.ensureDeferred(groups.settle(t, "g", [d0.ack_id], False))) == {}


@pytest_twisted.ensureDeferred
async def test_a_long_poll_pull_is_answered_by_a_publish(side: PlaneSide) -> None:
    """A pull that waits is answered as soon as a message arrives."""
    t, _ = await side.control.put_topic("late", {"partitions": 1})
    await side.control.put_group(t, "g", {})
    pulling = defer.ensureDeferred(side.plane.groups.pull(t, "g", 5, 20_000))
    assert not pulling.called
    await bounded(side.plane.publish(t, _records("hello"), "leader"))
    got = await bounded(pulling)
    assert [r.payload for _, r in got] == [b"hello"]
