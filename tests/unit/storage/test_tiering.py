"""The S3 tier's pipeline in-process: a real LMDB and broker, a ``task.Clock`` for the broker's
time, and an in-memory object store that can lose, damage or misreport objects.

These check the ordering rules of the pipeline (nothing leaves LMDB before the remote copy is
verified; the manifest and the LMDB delete commit together) without a network.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from harness import bounded, the_reactor
from sprawl.config import NodeConfig
from sprawl.errors import CorruptData, InsufficientStorage
from sprawl.log.manifest import RemoteState
from sprawl.log.record import Record
from sprawl.pubsub import Broker
from sprawl.storage import keys
from sprawl.storage.lmdb import LmdbStore
from sprawl.storage.tier_reads import TierReadError
from sprawl.storage.tiering import ERROR_AFTER, TICK_SLICE, S3Tier
from sprawl.testing import MemoryS3
from sprawl.topics import Topic

T0 = 1_700_000_000.0


class Node:
    """Store + broker + tier on one data dir, sharing one fake object store across restarts."""

    def __init__(self, path: Path, clock: Clock, s3: MemoryS3, chunk_bytes: int = 512 * 1024, **cfg: Any):
        self.store = LmdbStore(str(path / "lmdb"), reactor=the_reactor(), map_size=256 * 1024**2)
        self.store.open()
        self.config = NodeConfig(data_dir=str(path), **cfg)
        self.tier = S3Tier(
            s3,  # type: ignore[arg-type]
            self.store,
            clock,
            budget=self.config.disk_budget,
            age_ms=int(self.config.disk_to_s3_age * 1000),
            chunk_bytes=chunk_bytes,
        )
        self.broker = Broker(self.config, self.store, clock, "node-1", tier=self.tier)
        self.broker.recover()

    async def close(self) -> None:
        if self.store.env is not None:
            await self.broker.stop()
            await self.store.close()


@pytest_twisted.async_yield_fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[Callable[..., Node], MemoryS3, Clock]]:
    """A node factory (restarts reuse the data dir and the object store), the store and the clock."""
    clock = Clock()
    clock.advance(T0)
    s3 = MemoryS3(now=clock.seconds)
    opened: list[Node] = []

    def make(**cfg: Any) -> Node:
        cfg.setdefault("segment_bytes", 2000)
        cfg.setdefault("disk_to_s3_age", 0.0)
        n = Node(tmp_path, clock, s3, **cfg)
        opened.append(n)
        return n

    yield make, s3, clock
    for n in opened:
        await n.close()


async def fill(n: Node, name: str, count: int, **topic_cfg: Any) -> Topic:
    """Create ``name`` and publish ``count`` 100-byte messages, 10 per request."""
    t, _ = await n.broker.put_topic(name, topic_cfg)
    for i in range(0, count, 10):
        recs = [Record(-1, 0, 0, None, None, None, f"{j:04d}".encode() * 25, True) for j in range(i, i + 10)]
        await bounded(n.broker.publish(t, recs, "leader"))
    return t


async def spill_all(n: Node) -> int:
    """Run the tier until nothing more moves; returns how many segments moved."""
    before = n.tier.uploads
    for _ in range(200):
        started = n.broker.tier_tick()
        while n.tier.in_flight:
            await bounded(n.store.write([]))  # let the pipeline's steps run
        if not started:
            break
    return n.tier.uploads - before


async def read_all(n: Node, t: Topic) -> list[Record]:
    out: list[Record] = []
    start = 0
    for _ in range(1000):
        got = await bounded(n.broker.read(t, 0, start, 50))
        if not got:
            return out
        out.extend(got)
        start = got[-1].offset + 1
    raise AssertionError("read did not finish")


def lmdb_offsets(n: Node, t: Topic) -> list[int]:
    return [r.offset for r in n.store.read_records_sync(t.config.uid, 0, 0, 10**6, 10**6)]


@pytest_twisted.ensureDeferred
async def test_sealed_segments_move_and_replay_after_restart(env: Any, tmp_path: Path) -> None:
    """Every sealed segment moves (object + index, manifest written, LMDB records gone); after a
    restart the manifest brings them back as remote and a replay reads every offset in order."""
    make, s3, _clock = env
    n = make()
    t = await fill(n, "t", 100)
    moved = await spill_all(n)
    segs = t.logs[0].segments
    assert moved == len(segs) - 1 >= 3
    assert all(s.remote is not None for s in segs[:-1]) and segs[-1].remote is None
    assert lmdb_offsets(n, t) == list(range(segs[-1].base, 100))
    assert len([k for k in s3.objects if k.endswith(".seg")]) == moved
    assert n.store.get("meta", keys.manifest_key(t.config.uid, 0)) is not None
    await n.close()
    n = make()
    t = n.broker.topics["t"]
    assert [s.remote is not None for s in t.logs[0].segments] == [True] * moved + [False]
    got = await read_all(n, t)
    assert [r.offset for r in got] == list(range(100))
    assert got[42].payload == b"0042" * 25


@pytest_twisted.ensureDeferred
async def test_nothing_leaves_lmdb_when_verification_fails(env: Any) -> None:
    """An object whose HEAD does not match what was sent is not trusted: records stay in LMDB,
    the partition reports ``failing`` and backs off; once verification passes, it moves."""
    make, s3, clock = env
    n = make()
    t = await fill(n, "t", 60)
    s3.lie_about_size = True
    assert await spill_all(n) == 0
    assert lmdb_offsets(n, t) == list(range(60))
    status = n.tier.partition_status(t.config.uid, 0)
    assert status["status"] == "failing" and "size" in status["last_error"]
    assert n.broker.describe_topic(t)["partition_details"][0]["tiers"]["s3"]["status"] == "failing"
    s3.lie_about_size = False
    assert await spill_all(n) == 0, "backing off: no retry before the retry time"
    clock.advance(2)
    assert await spill_all(n) >= 1
    assert n.tier.partition_status(t.config.uid, 0)["status"] == "ok"
    assert [r.offset for r in await read_all(n, t)] == list(range(60))


@pytest_twisted.ensureDeferred
async def test_a_partitions_first_failed_uploads_are_warnings_then_errors(env: Any) -> None:
    """The first ``ERROR_AFTER - 1`` consecutive failed uploads of a partition are logged as
    warnings (a failover's are retried and pass), the next as errors; every one is counted."""
    make, s3, clock = env
    n = make()
    await fill(n, "t", 60)
    s3.lie_about_size = True
    levels: list[str] = []
    for _ in range(ERROR_AFTER + 1):
        with capturedLogs() as events:
            assert await spill_all(n) == 0
        levels += [e["log_level"].name for e in events if "S3 upload of" in e.get("log_format", "")]
        clock.advance(60)  # past the backoff
    assert levels == ["warn"] * (ERROR_AFTER - 1) + ["error"] * 2, levels
    assert n.tier.failures == ERROR_AFTER + 1


@pytest_twisted.ensureDeferred
async def test_s3_down_keeps_data_and_the_hard_limit_refuses(env: Any) -> None:
    """With the store down nothing moves or is lost; past the hard limit publishes get 507
    ``disk_budget_exceeded`` naming the S3 error."""
    make, s3, _clock = env
    n = make(disk_budget=10 * 1000**2, disk_hard_limit=10 * 1000**2)
    t = await fill(n, "t", 40)
    s3.down = True
    assert await spill_all(n) == 0
    assert n.tier.failing and lmdb_offsets(n, t) == list(range(40))
    n.store.used_bytes = n.broker.disk_hard_limit + 1  # as if LMDB had filled up
    with pytest.raises(InsufficientStorage) as e:
        n.broker.check_writable()
    assert e.value.code == "disk_budget_exceeded" and "connection refused" in e.value.message


@pytest_twisted.ensureDeferred
async def test_missing_and_corrupt_objects_fail_reads(env: Any) -> None:
    """A read below LMDB never returns made-up or partial data: a missing object is
    ``s3_object_missing``; a damaged one is fetched again once, then answered
    ``corrupt_record`` naming the chunk's offsets, noted as damage (once) and
    shown in the topic's description."""
    make, s3, _clock = env
    n = make()
    await fill(n, "t", 60)
    await spill_all(n)
    await n.close()
    n = make()  # empty caches
    t = n.broker.topics["t"]
    seg_keys = sorted(k for k in s3.objects if k.endswith(".seg"))
    body, meta = s3.objects[seg_keys[0]]
    s3.objects[seg_keys[0]] = (body[:50] + bytes([body[50] ^ 1]) + body[51:], meta)
    first = t.logs[0].segments[0]
    gets = len(s3.gets)
    for _ in range(2):
        with pytest.raises(CorruptData) as e:
            await bounded(n.broker.read(t, 0, 0, 10))
        assert e.value.code == "corrupt_record" and e.value.status == 500
        assert e.value.details == {
            "topic": "t",
            "partition": 0,
            "first_offset": first.base,
            "last_offset": first.last,
            "tier": "s3",
        }
    assert s3.gets[gets:].count(seg_keys[0]) == 2, "fetched again once, then known as damaged"
    assert n.broker.integrity.found == {"lmdb": 0, "s3": 1}
    view = n.broker.describe_topic(t)["partition_details"][0]["damaged"]
    assert [(v["first_offset"], v["last_offset"], v["tier"]) for v in view] == [
        (first.base, first.last, "s3")
    ]
    second = t.logs[0].segments[1]
    del s3.objects[seg_keys[1]]
    with pytest.raises(TierReadError) as e2:
        await bounded(n.broker.read(t, 0, second.base, 10))
    assert e2.value.code == "s3_object_missing"


@pytest_twisted.ensureDeferred
async def test_a_bad_transfer_is_fetched_again(env: Any) -> None:
    """An object that fails its checksum once (a damaged transfer) is fetched
    again and served; nothing is noted as damaged."""
    make, s3, _clock = env
    n = make()
    await fill(n, "t", 60)
    await spill_all(n)
    await n.close()
    n = make()
    t = n.broker.topics["t"]
    seg_key = sorted(k for k in s3.objects if k.endswith(".seg"))[0]
    s3.flaky[seg_key] = 1
    got = await bounded(n.broker.read(t, 0, 0, 5))
    assert [r.offset for r in got] == [0, 1, 2, 3, 4]
    assert n.broker.tier.refetches == 1 and not n.broker.integrity.map


@pytest_twisted.ensureDeferred
async def test_retention_and_topic_delete_remove_remote_objects(env: Any) -> None:
    """Retention drops remote segments from the manifest first, then deletes their objects;
    deleting the topic deletes the rest."""
    make, s3, _clock = env
    n = make()
    t = await fill(n, "t", 60, retention_bytes=3000)
    await spill_all(n)
    remote_before = [s.remote for s in t.logs[0].segments if s.remote is not None]
    assert len(remote_before) >= 2
    assert n.broker.apply_retention() >= 1
    await bounded(n.store.write([]))
    kept = [s.remote for s in t.logs[0].segments if s.remote is not None]
    gone = [o for o in remote_before if o not in kept]
    assert gone and all(o.key in s3.deleted and o.index_key in s3.deleted for o in gone)
    assert all(o.key in s3.objects for o in kept)
    assert t.logs[0].log_start == t.logs[0].segments[0].base
    await bounded(n.broker.delete_topic("t"))
    assert not any(k.endswith(".seg") for k in s3.objects)


@pytest_twisted.ensureDeferred
async def test_a_segment_retention_deletes_while_it_is_read_for_upload_is_not_damage(env: Any) -> None:
    """Retention deletes the segment an upload has chosen, between the choice and the read of its
    records (the chaos run of stop 45 logged it as DAMAGED, noted it and asked the replicas for a
    repair): the upload is dropped quietly -- no damage noted, no failure counted, the tier ``ok``."""
    make, s3, _clock = env
    n = make()
    t = await fill(n, "t", 60, retention_bytes=3000)
    first = t.logs[0].segments[0]
    real = n.store.call_reader
    gate: Deferred[None] = Deferred()

    def later(fn: Any, *args: Any) -> Deferred[Any]:
        return gate.addCallback(lambda _: real(fn, *args))

    n.store.call_reader = later  # type: ignore[method-assign]
    assert n.broker.tier_tick() >= 1 and n.tier.in_flight == 1  # the first segment, chosen
    assert n.broker.apply_retention() >= 1
    await bounded(n.store.write([]))
    assert not any(s is first for s in t.logs[0].segments)
    assert lmdb_offsets(n, t)[0] > first.last  # its records left LMDB before the read
    n.store.call_reader = real  # type: ignore[method-assign]
    gate.callback(None)
    for _ in range(100):
        if not n.tier.in_flight:
            break
        await bounded(n.store.write([]))
    assert n.tier.in_flight == 0
    assert n.broker.integrity.found == {"lmdb": 0, "s3": 0}
    assert n.broker.integrity.map.entries((t.config.uid, 0)) == []
    assert n.tier.failures == 0 and n.tier.partition_status(t.config.uid, 0)["status"] == "ok"
    assert not any(k.endswith(".seg") for k in s3.objects)
    for _ in range(4):  # the next sealed segments move as usual
        recs = [Record(-1, 0, 0, None, None, None, b"late" * 25, True) for _ in range(10)]
        await bounded(n.broker.publish(t, recs, "leader"))
    assert await spill_all(n) >= 1
    assert n.tier.failures == 0 and n.broker.integrity.found == {"lmdb": 0, "s3": 0}


@pytest_twisted.ensureDeferred
async def test_find_time_below_the_hot_tail(env: Any) -> None:
    """``from_time`` inside a segment below the hot tail (in S3 or LMDB) finds its first match,
    not the first later record that happens to be in memory."""
    make, _s3, clock = env
    n = make()
    t = await fill(n, "t", 60)
    ts0 = t.logs[0].segments[0].first_ts
    await spill_all(n)
    await n.close()
    n = make()
    t = n.broker.topics["t"]
    clock.advance(10)
    await fill(n, "t", 10)  # hot tail: offsets 60..69, later timestamps
    assert await bounded(n.broker.find_time(t, 0, ts0)) == 0


@pytest_twisted.ensureDeferred
async def test_a_read_spans_chunks_and_the_cache_serves_it_again(env: Any) -> None:
    """One read returns up to ``limit`` records across the chunks of a segment, each chunk
    fetched once (ranged) and then served from the cache."""
    make, _s3, _clock = env
    n = make(chunk_bytes=300, segment_bytes=5000)
    await fill(n, "t", 60)
    await spill_all(n)
    await n.close()
    n = make(chunk_bytes=300, segment_bytes=5000)
    t = n.broker.topics["t"]
    seg = t.logs[0].segments[0]
    assert seg.remote is not None and seg.count >= 20
    got = await bounded(n.broker.read(t, 0, 3, 15))
    assert [r.offset for r in got] == list(range(3, 18))
    misses = n.tier.cache_misses
    assert misses >= 5, "one ranged GET per chunk of ~2 records"
    again = await bounded(n.broker.read(t, 0, 3, 15))
    assert [r.payload for r in again] == [r.payload for r in got]
    assert n.tier.cache_misses == misses and n.tier.cache_hits >= misses
    tail = await bounded(n.broker.read(t, 0, seg.last - 1, 100))
    assert [r.offset for r in tail] == [seg.last - 1, seg.last], "a read stops at the segment's end"


@pytest_twisted.ensureDeferred
async def test_failed_deletes_are_retried_later(env: Any) -> None:
    """Objects whose delete failed (S3 down) are retried on a later tick, after the retry delay."""
    make, s3, clock = env
    n = make()
    await fill(n, "t", 60, retention_bytes=3000)
    await spill_all(n)
    s3.down = True
    assert n.broker.apply_retention() >= 1
    await bounded(n.store.write([]))
    pending = n.tier.describe()["pending_deletes"]
    assert pending >= 2 and not s3.deleted
    s3.down = False
    n.broker.tier_tick()
    assert not s3.deleted, "not before the retry delay"
    clock.advance(31)
    n.broker.tier_tick()
    assert len(s3.deleted) == pending and n.tier.describe()["pending_deletes"] == 0


async def _to_legacy(n: Node, s3: MemoryS3, t: Topic, node: str = "node-1") -> list[Any]:
    """Make a node's spilled segments look as the per-node tier wrote them:
    objects under ``...tUID.nNODE`` keys and a version 1 manifest (a stopped node)."""
    import json
    from dataclasses import replace

    legacy = []
    for seg in t.logs[0].segments:
        o = seg.remote
        if o is None:
            break
        key = o.key.replace(".e0.seg", f".n{node}.seg")
        idx = o.index_key.replace(".e0.idx", f".n{node}.idx")
        s3.objects[key] = s3.objects.pop(o.key)
        s3.objects[idx] = s3.objects.pop(o.index_key)
        s3.modified[key] = s3.modified[idx] = s3.now()
        legacy.append(replace(o, key=key, index_key=idx))
    doc = {"v": 1, "segments": [o.to_row()[:11] for o in legacy]}
    await bounded(
        n.store.write([("p", "meta", keys.manifest_key(t.config.uid, 0), json.dumps(doc).encode())])
    )
    return legacy


async def upgraded(make: Callable[..., Node], s3: MemoryS3) -> tuple[Node, Topic, list[Any]]:
    """The node restarted with its spilled segments as the per-node layout left them (``_to_legacy``)."""
    n = make()
    legacy = await _to_legacy(n, s3, n.broker.topics["t"])
    await n.close()
    n = make()
    return n, n.broker.topics["t"], legacy


@pytest_twisted.ensureDeferred
async def test_objects_of_the_per_node_layout_stay_readable_and_are_adopted(env: Any) -> None:
    """Segments a node spilled under its own keys (``...tUID.nNODE.seg``, a
    version 1 manifest) read back after the upgrade, and the first tier round
    adopts them into the shared list as they are: nothing re-uploaded,
    nothing deleted; later segments continue under the new keys."""
    make, s3, _clock = env
    n = make()
    t = await fill(n, "t", 80)
    await spill_all(n)
    await n.close()
    n, t, legacy = await upgraded(make, s3)
    assert n.broker.legacy_objects(t, 0) == legacy and len(legacy) >= 3
    assert [r.offset for r in await read_all(n, t)] == list(range(80)), "readable as they are"
    puts = len(s3.puts)
    await spill_all(n)
    assert n.tier.adopted == len(legacy) and n.broker.legacy_objects(t, 0) == []
    assert not s3.deleted and all(o.key in s3.objects for o in legacy)
    front = [s.remote for s in t.logs[0].segments if s.remote is not None]
    assert [o.key for o in front[: len(legacy)]] == [o.key for o in legacy]
    for i in range(0, 40, 10):
        recs = [
            Record(-1, 0, 0, None, None, None, f"{j:04d}".encode() * 25, True) for j in range(80 + i, 90 + i)
        ]
        await bounded(n.broker.publish(t, recs, "leader"))
    await spill_all(n)
    new_keys = s3.puts[puts:]
    assert new_keys and all(".e0." in k for k in new_keys)
    await n.close()
    n = make()
    t = n.broker.topics["t"]
    got = await read_all(n, t)
    assert [r.offset for r in got] == list(range(120))


@pytest_twisted.ensureDeferred
async def test_a_replica_deletes_its_own_old_objects_once_the_shared_list_covers_them(env: Any) -> None:
    """A replica that is not the leader keeps serving its own old-layout
    objects while the shared list does not reach past them; once it does, the
    log follows the shared segments and the node deletes its own objects --
    and never a shared one."""
    from dataclasses import replace

    from sprawl.log.manifest import RemoteState

    make, s3, _clock = env
    n = make()
    t = await fill(n, "t", 80)
    await spill_all(n)
    legacy_src = [s.remote for s in t.logs[0].segments if s.remote is not None]
    # The leader's copies of the same ranges, under its own (shared) keys.
    shared = []
    for o in legacy_src:
        key, idx = o.key.replace(".e0.", ".e3."), o.index_key.replace(".e0.", ".e3.")
        s3.objects[key], s3.objects[idx] = s3.objects[o.key], s3.objects[o.index_key]
        s3.modified[key] = s3.modified[idx] = s3.now()
        shared.append(replace(o, key=key, index_key=idx, epoch=3))
    await n.close()
    n, t, legacy = await upgraded(make, s3)
    n.broker.links.bind_remote_log(None)  # a follower: nothing moves, nothing is adopted
    part = RemoteState(0, tuple(shared[:-1]))
    await bounded(n.broker.follow_remote(t, 0, part))
    assert [s.remote for s in t.logs[0].segments if s.remote is not None] == legacy, (
        "kept: it reaches further"
    )
    assert not s3.deleted
    await bounded(n.broker.follow_remote(t, 0, RemoteState(0, tuple(shared))))
    assert [s.remote for s in t.logs[0].segments if s.remote is not None] == shared
    await bounded(n.store.write([]))
    assert sorted(s3.deleted) == sorted(k for o in legacy for k in (o.key, o.index_key))
    assert n.broker.legacy_objects(t, 0) == []
    assert [r.offset for r in await read_all(n, t)] == list(range(80))


@pytest_twisted.ensureDeferred
async def test_damage_of_the_lmdb_copy_goes_with_it_once_the_shared_segment_covers_it(env: Any) -> None:
    """A replica's LMDB copy of a range was noted damaged; once the shared list
    names a segment covering it, the log reads that range from S3 and the
    damage of the dropped LMDB copy is forgotten (reads no longer meet it);
    damage noted in S3 itself stays."""
    from sprawl.log.damage import DamagedRange
    from sprawl.log.manifest import RemoteState

    make, _s3, _clock = env
    n = make()
    t = await fill(n, "t", 80)
    await spill_all(n)
    shared = RemoteState(0, tuple(s.remote for s in t.logs[0].segments if s.remote is not None))
    recs = await read_all(n, t)
    # A follower of the same partition that still holds it all in LMDB.
    first_local = shared.end
    t, _ = await n.broker.put_topic("u", {})
    lg = t.logs[0]
    lg.replicated = True
    copies = [Record(r.offset, 0, r.timestamp, r.id, r.key, r.headers, r.payload, r.is_text) for r in recs]
    await bounded(n.broker.append_replicated(t, 0, copies))
    lg.advance_high_watermark(len(copies))
    lg.evict(0)  # reads go to storage
    assert not any(s.remote for s in lg.segments)
    n.broker.integrity.note(t, 0, DamagedRange(3, 5, "checksum mismatch"))
    n.broker.integrity.note(t, 0, DamagedRange(first_local - 2, first_local - 1, "bad chunk", tier="s3"))
    with pytest.raises(CorruptData):
        await bounded(n.broker.read(t, 0, 3, 1, repair=False))
    await bounded(n.broker.follow_remote(t, 0, shared))
    assert [s.remote for s in lg.segments if s.remote is not None] == list(shared.objects)
    got = await bounded(n.broker.read(t, 0, 3, 1, repair=False))
    assert [r.offset for r in got] == [3], "read from S3, the LMDB copy's damage forgotten"
    assert [(e["first_offset"], e["tier"]) for e in n.broker.integrity.partition_view(t, 0)] == [
        (first_local - 2, "s3")
    ]


class CountingRemoteLog:
    """A cluster's shared remote lists as a node sees them: only ``tiered``
    partitions have a shared state (empty here), the node leads only
    ``leads``; counts the lookups a tier tick makes."""

    def __init__(self, tiered: set[tuple[str, int]], leads: set[str]) -> None:
        self._tiered = tiered
        self.leads = leads
        self.states = 0
        self.epochs = 0

    def state(self, topic: Topic, partition: int) -> RemoteState:
        self.states += 1
        return RemoteState()

    def tiered(self) -> list[tuple[str, int]]:
        return sorted(self._tiered)

    def leader_epoch(self, topic: Topic, partition: int) -> int | None:
        self.epochs += 1
        return 1 if topic.name in self.leads else None

    def incarnation(self, topic: Topic) -> int:
        return int(topic.config.uid)

    def add(self, topic: Topic, partition: int, epoch: int, objects: Any) -> Any:
        raise AssertionError("nothing is sealed: nothing is uploaded")

    def trim(self, topic: Topic, partition: int, epoch: int, start: int) -> Any:
        raise AssertionError("no retention here")


@pytest_twisted.ensureDeferred
async def test_a_tier_tick_follows_only_partitions_with_a_shared_state(env: Any) -> None:
    """Issue 23: a node with the S3 tier on ticks it every 0.5 s.  The
    2,000-partition chaos run spent a third of its nodes' CPU there, walking
    every partition with a lookup of its shared remote list.  Now 10,000
    partitions with records (in a cluster every partition holds at least its
    leader's control record) but nothing in the object store cost the
    following no lookup, and those that never held a record cost the upload
    pass none either; a partition with a shared state is looked at as before."""
    make, _, _ = env
    n = make(segment_bytes=10**6)
    rl = CountingRemoteLog({("busy", 0)}, leads={"busy"})
    n.broker.links.bind_remote_log(rl)
    await fill(n, "busy", 20)
    n.broker.tier_tick()
    rl.states = rl.epochs = 0
    n.broker.tier_tick()
    states, epochs = rl.states, rl.epochs
    assert states and epochs  # the busy partition: followed and considered for upload
    for i in range(10):
        await n.broker.put_topic(f"idle-{i}", {"partitions": 1000})
    assert sum(len(t.logs) for t in n.broker.topics.values()) == 10_001
    rl.states = rl.epochs = 0
    n.broker.tier_tick()
    assert rl.states <= states and rl.epochs <= epochs  # never written: nothing to look up
    for t in n.broker.topics.values():
        for lg in t.logs:
            lg.next_offset = max(lg.next_offset, 1)  # as a new leader's control record leaves them
    rl.states = rl.epochs = 0
    n.broker.tier_tick()
    assert 1 <= rl.states <= states  # the following: still only the busy partition
    # The upload pass asks who leads a slice in turn (here one topic of 1,000), not all 10,000.
    assert epochs < rl.epochs <= 1_000 + epochs


async def _idle_topics(n: Node, topics: int) -> CountingRemoteLog:
    """``topics`` topics of 10 partitions, each holding a record (a leader's control
    record, in a cluster) and nothing sealed, all led here; a tier tick has run once."""
    for i in range(topics):
        await n.broker.put_topic(f"idle-{i:04d}", {"partitions": 10})
    for t in n.broker.topics.values():
        for lg in t.logs:
            lg.next_offset = max(lg.next_offset, 1)
    rl = CountingRemoteLog(set(), leads=set(n.broker.topics))
    n.broker.links.bind_remote_log(rl)
    n.broker.tier_tick()  # the first looks at every partition
    return rl


@pytest_twisted.ensureDeferred
async def test_an_idle_tier_tick_looks_at_a_slice_of_the_partitions(env: Any) -> None:
    """Issue 23: after its first tick, the tier's tick looks at the topics
    written to, those it has work for, and a slice of the others in turn --
    about TICK_SLICE partitions and as many leadership lookups with 1,000
    partitions as with 10,000; every partition is still looked at within a
    round of slices."""
    make, _, _ = env
    looked = []
    for topics in (100, 1_000):
        n = make(segment_bytes=10**6)
        rl = await _idle_topics(n, topics)
        assert n.tier.looked >= topics * 10
        before, epochs = n.tier.looked, rl.epochs
        for _ in range(5):
            n.broker.tier_tick()
        looked.append(((n.tier.looked - before) // 5, (rl.epochs - epochs) // 5))
        seen: set[str] = set()
        for _ in range(topics):
            seen.update(t.name for t in n.tier.due_topics(n.broker.topics, []))
            if len(seen) == topics:
                break
        assert len(seen) == topics
        await n.close()
    assert looked[0] == looked[1]
    assert TICK_SLICE <= looked[1][0] < TICK_SLICE + 10 and looked[1][1] == looked[1][0]


class RecordingRemoteLog(CountingRemoteLog):
    """A :class:`CountingRemoteLog` that takes uploads (and keeps them)."""

    def __init__(self, tiered: set[tuple[str, int]], leads: set[str]) -> None:
        super().__init__(tiered, leads)
        self.added: list[tuple[str, int]] = []

    def add(self, topic: Topic, partition: int, epoch: int, objects: Any) -> Any:
        self.added.append((topic.name, partition))
        return succeed(None)


@pytest_twisted.ensureDeferred
async def test_a_sealed_segment_is_looked_at_every_tick_until_it_is_uploaded(env: Any) -> None:
    """A partition holding a sealed segment another node leads is looked at
    on every tick (not only in its turn): once its leadership moves here,
    without a write, the next tick starts its upload."""
    make, _, _ = env
    n = make()  # (segments of 2,000 bytes)
    rl = await _idle_topics(n, 300)
    n.broker.links.bind_remote_log(rl := RecordingRemoteLog(set(), leads=set(n.broker.topics)))
    await fill(n, "sealed", 50)
    assert any(s.sealed for s in n.broker.topics["sealed"].logs[0].segments)
    rl.leads.discard("sealed")  # led elsewhere
    for _ in range(3):
        assert n.broker.tier_tick() == 0
    assert "sealed" in n.tier._holding
    rl.leads.add("sealed")  # the leadership moved here: no write announces it
    assert n.broker.tier_tick() == 1
    while n.tier.in_flight:
        await bounded(n.store.write([]))
    assert rl.added and rl.added[0] == ("sealed", 0)
