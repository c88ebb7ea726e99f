"""The metadata seam: :class:`LocalControl` (straight to the broker, used by
in-process HTTP tests) and :class:`ClusterControl` (every change a Raft
proposal on a real LMDB, used by real nodes) pass the same contract.

The cluster side is a one-voter Raft group on the real reactor; a restart
of it on the same data dir replays the log into a fresh broker view.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import defer

from harness import the_reactor
from sprawl.cluster.control import ClusterControl
from sprawl.cluster.local import LocalControl
from sprawl.config import NodeConfig
from sprawl.errors import BadRequest, Conflict, NotFound
from sprawl.peer.tcp import PeerChannel
from sprawl.pubsub import Broker
from sprawl.storage.lmdb import LmdbStore


class Side:
    """A broker on its own LMDB with one of the two controls in front."""

    def __init__(self, path: Path, kind: str) -> None:
        self.path = path
        self.kind = kind
        reactor = the_reactor()
        self.store = LmdbStore(str(path / "lmdb"), reactor=reactor, map_size=64 * 1024**2)
        self.store.open()
        self.broker = Broker(NodeConfig(data_dir=str(path)), self.store, reactor, "n1")
        self.broker.recover()
        self.channel = PeerChannel("n1", reactor, random.Random(1))
        self.control: Any
        if kind == "local":
            self.control = LocalControl(self.broker)
        else:
            self.control = ClusterControl(
                "n1", self.broker, self.store, reactor, self.channel, rng=random.Random(1), snapshot_entries=4
            )

    async def start(self) -> None:
        if isinstance(self.control, ClusterControl):
            await self.control.start()
            await self.control.leader_known()
            self.broker.links.bind(creator=self.control)

    async def close(self) -> None:
        if isinstance(self.control, ClusterControl):
            self.control.stop()
        await self.broker.stop()
        await self.store.close()


@pytest_twisted.async_yield_fixture(params=["local", "raft"])
async def side(request: Any, tmp_path: Path) -> AsyncIterator[Side]:
    """Each contract test runs against both implementations."""
    s = Side(tmp_path, request.param)
    await s.start()
    yield s
    await s.close()


async def _fails(d: Callable[[], Any], exc: type[Exception]) -> Exception:
    try:
        await defer.maybeDeferred(d)
    except exc as e:
        return e
    raise AssertionError(f"expected {exc.__name__}")


@pytest_twisted.ensureDeferred
async def test_topics_create_update_refuse_and_delete(side: Side) -> None:
    """put_topic creates (created=True) then updates (False); shrinking is a
    409, bad config a 400 with nothing created; delete removes; a second
    delete is a 404."""
    c = side.control
    t, created = await c.put_topic("orders", {"partitions": 2})
    assert created and t.config.partitions == 2
    t, created = await c.put_topic("orders", {"partitions": 3, "retention_ms": 60000})
    assert not created and t.config.partitions == 3 and t.config.retention_ms == 60000
    assert len(side.broker.topics["orders"].logs) == 3
    e = await _fails(lambda: c.put_topic("orders", {"partitions": 1}), Conflict)
    assert getattr(e, "code", "") == "partitions_shrink"
    await _fails(lambda: c.put_topic("bad", {"partitions": 0}), BadRequest)
    assert "bad" not in side.broker.topics
    await c.delete_topic("orders")
    assert "orders" not in side.broker.topics
    await _fails(lambda: c.delete_topic("orders"), NotFound)


@pytest_twisted.ensureDeferred
async def test_groups_and_auto_created_topics(side: Side) -> None:
    """ensure_topic auto-creates once; put_group creates then updates; delete_group forgets."""
    c = side.control
    t = await c.ensure_topic("auto")
    assert t is side.broker.topics["auto"]
    assert await c.ensure_topic("auto") is t
    g, created = await c.put_group(t, "g1", {"ack_deadline_ms": 5000})
    assert created and g.config.ack_deadline_ms == 5000
    g, created = await c.put_group(t, "g1", {"max_deliveries": 3})
    assert not created and g.config.max_deliveries == 3 and g.config.ack_deadline_ms == 5000
    await c.delete_group(t, "g1")
    assert "g1" not in side.broker.topics["auto"].groups
    await _fails(lambda: c.delete_group(t, "g1"), NotFound)
    await c.linearizable()


@pytest_twisted.ensureDeferred
async def test_raft_changes_survive_a_restart_past_snapshots(tmp_path: Path) -> None:
    """On the Raft side, a restart on the same data dir restores the metadata
    from the latest snapshot plus the log after it (snapshots every 4
    entries here), and the broker agrees with it."""
    s = Side(tmp_path, "raft")
    await s.start()
    try:
        for i in range(10):
            await s.control.put_topic(f"t{i}", {"partitions": 1 + i % 3})
        await s.control.delete_topic("t3")
        t = s.broker.topics["t1"]
        await s.control.put_group(t, "g", {})
        assert s.control.driver.storage.snapshot().meta.index > 1
        before = s.control.metadata.copy()
    finally:
        await s.close()
    s2 = Side(tmp_path, "raft")
    await s2.start()
    try:
        # everything committed before the restart is applied again by now
        await s2.control.linearizable()
        assert s2.control.metadata == before
        assert sorted(s2.broker.topics) == sorted(before.topics)
        assert "g" in s2.broker.topics["t1"].groups
        assert s2.control.metadata.topics["t2"]["config"]["partitions"] == 3
    finally:
        await s2.close()


@pytest_twisted.ensureDeferred
async def test_proposal_without_leader_is_503(tmp_path: Path) -> None:
    """A node that did not bootstrap and was never added has no leader: a
    change is refused at once with 503 ``no_leader``, and nothing is created."""
    reactor = the_reactor()
    store = LmdbStore(str(tmp_path / "lmdb"), reactor=reactor, map_size=64 * 1024**2)
    store.open()
    broker = Broker(NodeConfig(data_dir=str(tmp_path)), store, reactor, "lonely")
    broker.recover()
    ctl = ClusterControl(
        "lonely", broker, store, reactor, PeerChannel("lonely", reactor, random.Random(2)), bootstrap=False
    )
    await ctl.start()
    try:
        e = await _fails(lambda: ctl.put_topic("x", {}), Exception)
        assert getattr(e, "status", None) == 503 and getattr(e, "code", "") == "no_leader"
        assert "x" not in broker.topics
    finally:
        ctl.stop()
        await broker.stop()
        await store.close()


@pytest_twisted.ensureDeferred
async def test_concurrent_auto_creates_share_one_change(side: Side) -> None:
    """Twenty publishes racing to a new topic all get the same topic; on the
    Raft side they share a single proposal."""
    c = side.control
    before = c.driver.stats.proposals if side.kind == "raft" else 0
    got = await defer.gatherResults([c.ensure_topic("racy") for _ in range(20)])
    assert all(t is side.broker.topics["racy"] for t in got)
    if side.kind == "raft":
        assert c.driver.stats.proposals - before == 1


@pytest_twisted.ensureDeferred
async def test_wait_topic_fires_once_the_topic_is_created_here(side: Side) -> None:
    """``wait_topic`` fires once the topic exists here -- made by ``put_topic`` or auto-created
    by ``ensure_topic`` -- and not for other names; a cancelled wait is forgotten."""
    from harness import bounded

    put = side.control.wait_topic("later")
    auto = side.control.wait_topic("auto")
    other = side.control.wait_topic("never")
    dropped = side.control.wait_topic("later")
    dropped.cancel()
    assert isinstance(await _fails(lambda: dropped, defer.CancelledError), defer.CancelledError)
    assert not put.called and not auto.called
    await side.control.put_topic("later", {"partitions": 2})
    await bounded(put)
    assert "later" in side.broker.topics
    await side.broker.ensure_topic("auto")
    await bounded(auto)
    assert "auto" in side.broker.topics
    assert not other.called
    other.cancel()
    assert isinstance(await _fails(lambda: other, defer.CancelledError), defer.CancelledError)
