"""The S3 tier shared by a partition's replicas, in one process: real brokers on
their own LMDB, real replication over loopback TCP, one in-memory object store
(:class:`~sprawl.testing.MemoryS3`, which passes the S3 client's contract
tests), and the real cluster metadata state machine behind the real
:class:`~sprawl.cluster.shared_tier.ClusterRemoteLog` on each node.

Raft itself is replaced by :class:`Log`: one list of committed metadata
commands that each node applies in order to its own ``Metadata`` and then
makes its broker follow, as ``ClusterControl._apply`` does
(``tests/integration/test_integration_raft.py`` and the real-process tests run the real
one).  A node can be held back (``behind``) to show what a replica does
while its metadata lags.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.task import Clock

from harness import WAIT, bounded, the_reactor
from harness.replication_nodes import stop_parts
from sprawl.cluster.metadata import Metadata
from sprawl.cluster.shared_tier import ClusterRemoteLog
from sprawl.config import NodeConfig
from sprawl.errors import SprawlError, Unavailable
from sprawl.log.manifest import parse_key
from sprawl.log.record import Record
from sprawl.peer.tcp import PeerChannel
from sprawl.pubsub import Broker
from sprawl.replication.failover import FailoverCore
from sprawl.replication.replica import LEADER
from sprawl.replication.service import ReplicationService
from sprawl.storage.lmdb import LmdbStore
from sprawl.storage.tiering import S3Tier
from sprawl.testing import MemoryS3

IDS = ("r0", "r1", "r2")
CTL = "ctl"
TOPIC = "orders"


class Log:
    """Committed metadata commands, applied by every member in order."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.members: dict[str, Control] = {}

    def propose(self, origin: str, cmd: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
        self.entries.append(cmd)
        answer: defer.Deferred[dict[str, Any]] = defer.Deferred()
        for nid, c in list(self.members.items()):
            if c.behind and nid != origin:
                continue
            for d, result, index in c.catch_up():
                if nid == origin and index == len(self.entries):
                    d.addCallback(lambda _, r=result: r).chainDeferred(answer)
        return answer


class Control:
    """One node's metadata, applied from :class:`Log` (the part of ClusterControl the tier uses)."""

    def __init__(self, node_id: str, log: Log, broker: Any) -> None:
        self.node_id = node_id
        self.log = log
        self.broker = broker
        self.metadata = Metadata()
        self.applied = 0
        self.behind = False
        log.members[node_id] = self

    def propose(self, cmd: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
        return self.log.propose(self.node_id, cmd)

    def catch_up(self) -> list[tuple[defer.Deferred[Any], dict[str, Any], int]]:
        out = []
        while self.applied < len(self.log.entries):
            cmd = self.log.entries[self.applied]
            self.applied += 1
            result = self.metadata.apply(self.applied, cmd)
            d: defer.Deferred[Any] = defer.succeed(None)
            if "error" not in result and cmd["op"] in ("remote_add", "remote_trim") and self.broker:
                t = self.broker.topics.get(cmd["topic"])
                if t is not None:
                    d = self.broker.follow_remote(t, int(cmd["partition"]))
            out.append((d, result, self.applied))
        return out


class Plane:
    """The part of the DataPlane the tier asks: the applied placement and the local replicas."""

    def __init__(self, node_id: str, control: Control, service: ReplicationService) -> None:
        self.node_id = node_id
        self.control = control
        self.service = service

    def placement(self, topic: str, partition: int) -> dict[str, Any] | None:
        parts = self.control.metadata.placement.get(topic)
        return parts[partition] if parts is not None and 0 <= partition < len(parts) else None


class Node:
    """A broker with the S3 tier, its replication service and its metadata."""

    def __init__(self, nid: str, path: Path, log: Log, s3: MemoryS3, clock: Any = None, **tier: Any) -> None:
        reactor = the_reactor()
        clock = clock or reactor
        self.id = nid
        self.store: Any = None
        self.broker: Any = None
        self.tier: Any = None
        if nid != CTL:
            self.store = LmdbStore(str(path / "lmdb"), reactor=reactor, map_size=64 * 1024**2)
            self.store.open()
            config = NodeConfig(data_dir=str(path), disk_to_s3_age=0.0)
            self.tier = S3Tier(s3, self.store, clock, budget=config.disk_budget, age_ms=0, **tier)  # type: ignore[arg-type]
            self.broker = Broker(config, self.store, clock, nid, tier=self.tier)
            self.broker.recover()
        self.channel = PeerChannel(nid, reactor, random.Random(1), backoff_base=0.01, backoff_max=0.05)
        self.port = reactor.listenTCP(0, self.channel.server_factory(), interface="127.0.0.1")
        self.service = ReplicationService(nid, self.channel, reactor, tick_seconds=0.02)
        self.control = Control(nid, log, self.broker)
        if self.broker is not None:
            self.broker.links.bind_remote_log(
                ClusterRemoteLog(self.control, Plane(nid, self.control, self.service))
            )
        self.alive = True

    async def join(self, cluster: dict[str, Node], replica: bool = True) -> None:
        """Addresses both ways, the topic, the metadata so far, the replica, ticks."""
        cluster[self.id] = self
        for other in cluster.values():
            if other is not self and other.alive:
                other.channel.set_address(self.id, "127.0.0.1", other_port(self))
                self.channel.set_address(other.id, "127.0.0.1", other_port(other))
        if self.broker is not None:
            if TOPIC not in self.broker.topics:
                await self.broker.put_topic(TOPIC, {"segment_bytes": 1000})
            if replica:
                self.service.replica(TOPIC, 0, self.broker, CTL)
        if not self.control.behind:
            for d, _r, _i in self.control.catch_up():
                await d
        self.service.start()

    async def close(self) -> None:
        if not self.alive:
            return
        self.alive = False
        self.control.log.members.pop(self.id, None)
        await stop_parts(self)

    def log(self) -> Any:
        return self.broker.topics[TOPIC].logs[0]

    def leads(self) -> bool:
        r = self.service.replicas.get((TOPIC, 0))
        return self.alive and r is not None and r.core.role == LEADER


def other_port(n: Node) -> int:
    return int(n.port.getHost().port)


async def until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(the_reactor(), 0.01, lambda: None)


@pytest_twisted.async_yield_fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[dict[str, Node], Log, MemoryS3, Path]]:
    log = Log()
    s3 = MemoryS3()
    nodes: dict[str, Node] = {}
    try:
        log.entries.append(
            {"op": "put_topic", "name": TOPIC, "config": {"partitions": 1}, "placement": [list(IDS)]}
        )
        for nid in (*IDS, CTL):
            await Node(nid, tmp_path / nid, log, s3).join(nodes)
        ctl = nodes[CTL]
        ctl.service.controllers[(TOPIC, 0)] = FailoverCore(IDS, epoch=1, beat_timeout_ticks=10)

        def commit(topic: str, partition: int, c: Any) -> defer.Deferred[None]:
            cmd = {
                "op": "set_partition",
                "topic": topic,
                "partition": partition,
                "epoch": c.epoch,
                "leader": c.leader,
                "replicas": list(c.replicas),
            }

            def check(result: dict[str, Any]) -> None:
                if "error" in result:
                    raise SprawlError(str(result["error"]))

            return log.propose(CTL, cmd).addCallback(check)

        ctl.service.commit = commit
        yield nodes, log, s3, tmp_path
    finally:
        for n in nodes.values():
            await n.close()


def leader_of(nodes: dict[str, Node]) -> Node | None:
    ls = [n for n in nodes.values() if n.broker is not None and n.leads()]
    return ls[0] if len(ls) == 1 else None


def msgs(n: int, start: int) -> list[Record]:
    return [
        Record(-1, 0, 0, None, None, None, b"m%04d" % i + b"." * 90, True) for i in range(start, start + n)
    ]


async def publish(node: Node, start: int, n: int) -> None:
    await bounded(node.service.replicas[(TOPIC, 0)].publish(msgs(n, start)), WAIT)


async def tier_round(nodes: list[Node]) -> int:
    """One tier tick on each node, waiting for what it started; returns uploads started."""
    started = 0
    for n in nodes:
        if n.alive:
            started += n.broker.tier_tick()
    for n in nodes:
        for _ in range(1000):
            if not n.alive or not n.tier.in_flight:
                break
            await bounded(n.store.write([]))
            await task.deferLater(the_reactor(), 0.001, lambda: None)
    return started


async def settle(nodes: list[Node]) -> None:
    """Tier rounds until nothing more moves."""
    for _ in range(100):
        if not await tier_round(nodes):
            await tier_round(nodes)  # the followers follow what the last round committed
            for n in nodes:
                await bounded(n.store.write([]))  # and their LMDB deletes are committed
            return
    raise AssertionError("uploads never stopped")


async def replay(node: Node) -> list[bytes]:
    """Every payload of the partition from offset 0, through every tier (control records skipped)."""
    t = node.broker.topics[TOPIC]
    out: list[bytes] = []
    start = 0
    for _ in range(1000):
        got = await bounded(node.broker.read(t, 0, start, 50))
        if not got:
            return out
        out.extend(r.payload[:5] for r in got if not r.control)
        start = got[-1].offset + 1
    raise AssertionError("replay did not end")


def lmdb_offsets(node: Node) -> list[int]:
    t = node.broker.topics[TOPIC]
    return [r.offset for r in node.store.read_records_sync(t.config.uid, 0, 0, 10**6, 10**6)]


def segs_in(s3: MemoryS3) -> list[str]:
    return sorted(k for k in s3.objects if k.endswith(".seg"))


@pytest_twisted.ensureDeferred
async def test_one_upload_per_segment_and_every_replica_reads_the_shared_copy(cluster: Any) -> None:
    """Only the leader uploads, once per sealed segment, under keys naming no
    node; every replica's log starts where the partition's does (the shared
    segments at its front, served from S3) and drops its own LMDB copy of
    them; after the uploader is gone the new leader serves the whole history
    and continues the list; a replica that comes back empty copies only what
    is not in S3 and reads the rest from there."""
    nodes, log, s3, path = cluster
    replicas = [nodes[n] for n in IDS]
    await until(lambda: leader_of(nodes) is not None, "a first leader")
    first = leader_of(nodes)
    assert first is not None
    for k in range(12):
        await publish(first, 10 * k, 10)
    want = [b"m%04d" % i for i in range(120)]
    await until(
        lambda: all(n.log().high_watermark == first.log().next_offset for n in replicas), "followers in sync"
    )
    await settle(replicas)

    shared = first.control.metadata.remote_state(TOPIC, 0)
    assert len(shared.objects) >= 8, "the sealed segments moved"
    assert segs_in(s3) == sorted(o.key for o in shared.objects), "one object per segment, not per replica"
    assert all(parse_key(k).node is None for k in s3.objects)  # type: ignore[union-attr]
    assert first.tier.uploads == len(shared.objects)
    for n in replicas:
        if n is not first:
            assert n.tier.uploads == 0, "followers never upload"
        lg = n.log()
        front = [s.remote for s in lg.segments if s.remote is not None]
        assert front == list(shared.objects) and lg.log_start == 0
        assert lmdb_offsets(n) == list(range(shared.end, lg.next_offset)), "the local copy is gone"
        assert await replay(n) == want

    epoch0 = int(first.service.replicas[(TOPIC, 0)].core.epoch)
    await first.close()  # the uploading node is gone for good
    await until(lambda: leader_of(nodes) not in (None, first), "a new leader")
    new = leader_of(nodes)
    assert new is not None
    assert await replay(new) == want
    for k in range(12, 18):
        await publish(new, 10 * k, 10)
    want += [b"m%04d" % i for i in range(120, 180)]
    live = [n for n in replicas if n.alive]
    await until(lambda: all(n.log().high_watermark == new.log().next_offset for n in live), "in sync")
    await settle(live)
    after = new.control.metadata.remote_state(TOPIC, 0)
    assert after.objects[: len(shared.objects)] == shared.objects and after.end > shared.end
    assert segs_in(s3) == sorted(o.key for o in after.objects)
    assert {o.epoch for o in after.objects[len(shared.objects) :]} == {
        new.service.replicas[(TOPIC, 0)].core.epoch
    }
    assert all(o.epoch == epoch0 for o in shared.objects)

    # The first node comes back with an empty data dir: reset to what the
    # leader can send, the shared segments at the front of its log.
    fresh = Node(first.id, path / "fresh", log, s3)
    await fresh.join(nodes)
    await until(lambda: fresh.log().high_watermark == new.log().next_offset, "the fresh replica caught up")
    await tier_round([*live, fresh])
    await bounded(fresh.store.write([]))  # its follow's LMDB deletes are committed
    flg = fresh.log()
    assert flg.log_start == 0 and [s.remote for s in flg.segments if s.remote is not None] == list(
        after.objects
    )
    assert lmdb_offsets(fresh)[0] >= after.end, "it copied only what is not in S3"
    assert await replay(fresh) == want
    assert fresh.tier.uploads == 0


@pytest_twisted.ensureDeferred
async def test_a_replica_whose_metadata_lags_does_not_skip_offsets(cluster: Any) -> None:
    """A replica reset past what its (lagging) view of the shared list covers
    knows from the leader where the partition starts: it answers reads in
    between with a retryable 503 ``catching_up`` -- never by skipping them,
    ``earliest`` included -- and serves them once its metadata catches up."""
    nodes, log, s3, path = cluster
    replicas = [nodes[n] for n in IDS]
    await until(lambda: leader_of(nodes) is not None, "a first leader")
    leader = leader_of(nodes)
    assert leader is not None
    follower = next(n for n in replicas if n is not leader)
    await follower.close()
    for k in range(8):
        await publish(leader, 10 * k, 10)
    await settle([n for n in replicas if n.alive])
    end = leader.control.metadata.remote_state(TOPIC, 0).end
    assert end > 20

    # The leader drops its own copy of what the list names in a later round than
    # the commit that names it: the reset below copies from where the leader's
    # local segments start, so wait (in rounds, bounded) until that is past the
    # list's end.
    def local_start() -> int:
        return next(g.base for g in leader.log().segments if g.remote is None)

    for _ in range(20):
        if local_start() >= end:
            break
        await tier_round([n for n in replicas if n.alive])
    assert local_start() >= end, (local_start(), end)
    back = Node(follower.id, path / "back", log, s3)
    back.control.behind = True  # has applied nothing of the metadata yet
    await back.join(nodes)
    blg = back.log()
    await until(lambda: blg.high_watermark == leader.log().next_offset, "the reset replica caught up")
    # Where the reset replica's own copy starts depends on how far the leader's
    # stream had got when it joined (the leader reads older records from S3 too):
    # somewhere above 0 and at most the list's end -- a hole its view cannot cover.
    hole_end = blg.segments[0].base
    assert blg.log_start == 0 and 0 < hole_end <= end and blg.remote_hole() == (0, hole_end)
    t = back.broker.topics[TOPIC]
    assert blg.resolve_start("earliest") == 0
    for at in (0, hole_end - 1):
        with pytest.raises(Unavailable) as e:
            await bounded(back.broker.read(t, 0, at, 10))
        assert e.value.code == "catching_up"
    assert [r.offset for r in await bounded(back.broker.read(t, 0, hole_end, 1))] == [hole_end]
    back.control.behind = False
    for d, _r, _i in back.control.catch_up():
        await d
    await tier_round([back])
    assert blg.remote_hole() is None and blg.floor is None
    assert await replay(back) == [b"m%04d" % i for i in range(80)]


@pytest_twisted.ensureDeferred
async def test_a_leader_change_during_an_upload_leaves_an_orphan_the_sweep_deletes(tmp_path: Path) -> None:
    """An upload whose leader epoch ends before its commit is refused by the
    metadata (a deposed leader never names an object); the segment stays in
    LMDB and moves again in the new epoch, under a new key -- one named copy,
    nothing lost.  The leader's sweep then deletes what no list names, once
    older than the grace age, of its own or an earlier epoch or an older life
    of the topic name -- never a later epoch's upload, an object of the old
    per-node layout, or anything not shaped like a segment object."""
    clock = Clock()
    clock.advance(1_700_000_000)
    s3 = MemoryS3(now=clock.seconds)
    log = Log()
    log.entries.append({"op": "put_topic", "name": TOPIC, "config": {"partitions": 1}, "placement": [["r0"]]})
    nodes: dict[str, Node] = {}
    node = Node("r0", tmp_path, log, s3, clock=clock, orphan_grace=60.0)
    try:
        await node.join(nodes, replica=False)  # its only replica: the broker serves it
        t = node.broker.topics[TOPIC]
        for k in range(6):
            recs = msgs(10, 10 * k)
            await bounded(node.broker.publish(t, recs, "leader"))
        assert node.broker.tier_tick() == 1  # the first segment's upload is under way ...
        log.propose(
            "r0",
            {
                "op": "set_partition",
                "topic": TOPIC,
                "partition": 0,
                "epoch": 2,
                "leader": "r0",
                "replicas": ["r0"],
            },
        )
        await until(lambda: not node.tier.in_flight, "the upload ended")
        assert node.tier.failures == 1 and "stale_epoch" in (node.tier.last_error or "")
        orphan = segs_in(s3)
        assert len(orphan) == 1 and ".e1." in orphan[0]
        assert lmdb_offsets(node)[0] == 0 and node.control.metadata.remote_state(TOPIC, 0).objects == ()
        clock.advance(2)  # past the back-off
        for _ in range(20):
            if not await tier_round([node]):
                break
        shared = node.control.metadata.remote_state(TOPIC, 0)
        assert len(shared.objects) >= 3 and {o.epoch for o in shared.objects} == {2}
        assert await replay(node) == [b"m%04d" % i for i in range(60)]
        assert set(segs_in(s3)) == {o.key for o in shared.objects} | set(orphan)

        inc = node.control.metadata.topics[TOPIC]["created_index"]
        pre = "pre/orders/0/"
        planted = {
            "later": f"{pre}{0:020d}-{9:020d}.t{inc}.e7.seg",
            "legacy": f"{pre}{0:020d}-{9:020d}.t{inc}.nother-node.seg",
            "old_life": f"{pre}{0:020d}-{9:020d}.t{inc - 1 if inc > 1 else 0}.e5.idx",
            "stranger": f"{pre}notes.txt",
        }
        for k in planted.values():
            await s3.put(k, b"x", "9dd4e461268c8034f5c8564e155c67a6", {})
        young = f"{pre}{0:020d}-{9:020d}.t{inc}.e2.seg"
        assert node.tier.orphan_grace == node.tier.sweep_every == 60.0
        clock.advance(40)
        await s3.put(young, b"x", "9dd4e461268c8034f5c8564e155c67a6", {})
        await tier_round([node])
        assert node.tier.sweeps == 0, "a partition is first swept a sweep interval after it is led here"
        for k in range(6, 8):  # segments ready to move: the sweep still gets its turn
            await bounded(node.broker.publish(t, msgs(10, 10 * k), "leader"))
        clock.advance(20)  # the orphan and the planted keys are 60 s old, `young` 20 s
        await tier_round([node])
        assert node.tier.sweeps == 1
        gone = {orphan[0], orphan[0][:-4] + ".idx", planted["old_life"]}
        assert not gone & set(s3.objects) and node.tier.orphans_deleted == 3
        for k in ("later", "legacy", "stranger"):
            assert planted[k] in s3.objects, k
        assert young in s3.objects, "younger than the grace age"
        assert {k for k in s3.objects if k.endswith(".seg") and ".e2." in k} >= {
            o.key for o in shared.objects
        } | {young}
        clock.advance(59)
        await tier_round([node])
        assert node.tier.sweeps == 1 and young in s3.objects, "one sweep per interval"
        clock.advance(1)
        await tier_round([node])
        assert node.tier.sweeps == 2 and young not in s3.objects and node.tier.orphans_deleted == 4
        shared = node.control.metadata.remote_state(TOPIC, 0)
        assert shared.end > 60, "the new segments moved too"
        assert set(segs_in(s3)) == {o.key for o in shared.objects} | {planted["later"], planted["legacy"]}
        assert await replay(node) == [b"m%04d" % i for i in range(80)]
    finally:
        await node.close()


@pytest_twisted.ensureDeferred
async def test_an_upload_whose_segment_retention_took_before_its_commit_is_deleted(tmp_path: Path) -> None:
    """Retention commits a later log start while a segment's upload waits for
    its own commit: the commit is refused (below the start) and the uploader
    deletes the objects at once -- nothing names them, nothing ever will --
    instead of leaving them to the sweep."""
    s3 = MemoryS3()
    log = Log()
    log.entries.append({"op": "put_topic", "name": TOPIC, "config": {"partitions": 1}, "placement": [["r0"]]})
    node = Node("r0", tmp_path, log, s3)
    try:
        await node.join({}, replica=False)
        t = node.broker.topics[TOPIC]
        for k in range(4):
            await bounded(node.broker.publish(t, msgs(10, 10 * k), "leader"))
        first = t.logs[0].segments[0]
        inner = node.control.propose

        def propose(cmd: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
            if cmd["op"] == "remote_add":  # retention got there first
                trim = {k: cmd[k] for k in ("topic", "partition", "created_index", "epoch")}
                inner({"op": "remote_trim", "start": first.last + 1, **trim})
            return inner(cmd)

        node.control.propose = propose  # type: ignore[method-assign]
        assert node.broker.tier_tick() == 1
        await until(lambda: not node.tier.in_flight, "the upload ended")
        assert node.tier.failures == 0 and node.tier.uploads == 0
        assert segs_in(s3) == [] and len(s3.deleted) == 2, "the segment and its index, deleted at once"
        assert t.logs[0].log_start == first.last + 1
    finally:
        await node.close()


@pytest_twisted.ensureDeferred
async def test_retention_removes_remote_segments_once_and_every_replica_follows(cluster: Any) -> None:
    """Retention of a tiered partition is its leader's: one trim of the shared
    list, which every replica follows (their remote front and LMDB copies
    below the new start go), and each dropped object deleted once -- by the
    leader; followers' retention does nothing on its own.  Deleting the topic
    then deletes the rest."""
    nodes, _log, s3, _path = cluster
    replicas = [nodes[n] for n in IDS]
    await until(lambda: leader_of(nodes) is not None, "a first leader")
    leader = leader_of(nodes)
    assert leader is not None
    for k in range(10):
        await publish(leader, 10 * k, 10)
    await until(lambda: all(n.log().high_watermark == leader.log().next_offset for n in replicas), "in sync")
    await settle(replicas)
    before = leader.control.metadata.remote_state(TOPIC, 0)
    assert len(before.objects) >= 6
    for n in replicas:
        await n.broker.put_topic(TOPIC, {"segment_bytes": 1000, "retention_bytes": 3000})
    followers = [n for n in replicas if n is not leader]
    for n in followers:
        n.broker.apply_retention()
    assert leader.control.metadata.remote_state(TOPIC, 0) == before, "followers never trim"
    assert leader.broker.apply_retention() > 0
    await until(lambda: leader.control.metadata.remote_state(TOPIC, 0).start > 0, "the trim committed")
    after = leader.control.metadata.remote_state(TOPIC, 0)
    await tier_round(replicas)
    gone = [o for o in before.objects if o not in after.objects]
    assert gone and all(o.last < after.start for o in gone)
    assert not after.objects or after.objects[0].last >= after.start
    await until(lambda: all(o.key in s3.deleted for o in gone), "the dropped objects deleted")
    assert sorted(s3.deleted) == sorted(k for o in gone for k in (o.key, o.index_key)), "each once"
    for n in replicas:
        lg = n.log()
        assert lg.log_start == after.start
        assert [s.remote for s in lg.segments if s.remote is not None] == list(after.objects)
        got = await replay(n)
        assert got[0] == b"m%04d" % (after.start - 1) and len(got) == 100 - after.start + 1
    for n in replicas:
        await n.broker.delete_topic(TOPIC)
    await bounded(leader.store.write([]))
    assert segs_in(s3) == [] and not [k for k in s3.objects if k.endswith(".idx")]
