"""The Broker adapter on a real LMDB and the real reactor, with a task.Clock for
its own time: publish/read, durability, consumer groups, retention, the memory
budget, ephemeral spill, recovery, topic deletion and storage failure."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import DeferredList, DeferredQueue
from twisted.internet.task import Clock

from harness import the_reactor
from harness.counting import count_calls
from sprawl.config import NodeConfig
from sprawl.errors import BadRequest, InsufficientStorage, Unavailable
from sprawl.log.record import Record
from sprawl.pubsub import Broker, PublishResult
from sprawl.pubsub.links import ClusterLinks
from sprawl.storage import keys
from sprawl.storage.lmdb import LmdbStore
from sprawl.topics import Topic

T0 = 1_700_000_000.0  # the Clock's start, in seconds


class Node:
    """A store + broker pair on one data dir (like node.NodeService, minus HTTP)."""

    def __init__(self, path: Path, clock: Clock, links: ClusterLinks | None = None, **cfg: Any):
        self.path = path
        self.clock = clock
        self.config = NodeConfig(data_dir=str(path), **cfg)
        self.store = LmdbStore(str(path / "lmdb"), reactor=the_reactor(), map_size=256 * 1024**2)
        self.store.open()
        self.broker = Broker(self.config, self.store, clock, "node-1", links=links)
        self.broker.recover()

    async def close(self) -> None:
        """Checkpoint and flush like a clean shutdown, then close LMDB."""
        if self.store.env is not None:
            await self.broker.stop()
            await self.store.close()

    async def synced(self) -> None:
        """Wait until every write queued so far is committed (writes commit in order)
        and the disk budget's measure (``used_bytes``, otherwise up to USED_EVERY
        late) has followed them."""
        await self.store.write([])
        await self.store.measure_used()


@pytest_twisted.async_yield_fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Callable[..., Node]]:
    """Opens nodes on tmp_path (one Clock shared, so restarts keep time); closes all at the end."""
    clock = Clock()
    clock.advance(T0)
    opened: list[Node] = []

    def make(links: ClusterLinks | None = None, **cfg: Any) -> Node:
        n = Node(tmp_path, clock, links, **cfg)
        opened.append(n)
        return n

    yield make
    for n in opened:
        await n.close()


def msg(
    payload: str | bytes, *, id: str | None = None, key: str | None = None, headers: dict | None = None
) -> Record:
    """A message as the HTTP layer builds it (offset and timestamp unassigned)."""
    if isinstance(payload, str):
        return Record(-1, 0, 0, id, key, headers, payload.encode(), True)
    return Record(-1, 0, 0, id, key, headers, payload, False)


async def topic(n: Node, name: str, **body: Any) -> Topic:
    """Create (or update) a topic and wait until it is persisted."""
    t, _created = await n.broker.put_topic(name, body)
    return t


async def read_all(n: Node, t: Topic, p: int = 0, start: int = 0) -> list[Record]:
    """Every visible record of a partition from ``start``, page by page (bounded)."""
    out: list[Record] = []
    for _ in range(1000):
        got = await n.broker.read(t, p, start, 50)
        if not got:
            return out
        out.extend(got)
        start = got[-1].offset + 1
    raise AssertionError("read did not finish")


class WriterGate:
    """Holds every LMDB commit on the writer thread until the test releases it."""

    def __init__(self, store: LmdbStore):
        self.entered: DeferredQueue[None] = DeferredQueue()  # one item per held commit
        self._go = threading.Semaphore(0)
        self._passthrough = False
        self._orig = store._commit
        store._commit = self._commit  # type: ignore[method-assign]

    def _commit(self, ops: list[Any]) -> None:
        if not self._passthrough:
            the_reactor().callFromThread(self.entered.put, None)
            assert self._go.acquire(timeout=30), "commit never released"
        self._orig(ops)

    def release(self) -> None:
        """Let one held commit go."""
        self._go.release()

    def open(self) -> None:
        """Stop holding commits (and let a held one go)."""
        self._passthrough = True
        self._go.release()


# -- publish and read ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_publish_read_round_trip(nodes: Callable[..., Node]) -> None:
    """Published messages (text and binary, keys, headers, ids) read back in order
    with dense offsets and the broker's timestamp."""
    n = nodes()
    t = await topic(n, "orders")
    res = await n.broker.publish(
        t, [msg("a", id="x1", key="k", headers={"h": "1"}), msg(b"\x00\xff"), msg("c")], "quorum"
    )
    assert res.offsets == [0, 1, 2] and res.partitions == [0, 0, 0] and res.stored == "lmdb"
    assert res.ids[0] == "x1" and all(res.ids) and len(set(res.ids)) == 3
    got = await read_all(n, t)
    assert [(r.offset, r.payload, r.is_text) for r in got] == [
        (0, b"a", True),
        (1, b"\x00\xff", False),
        (2, b"c", True),
    ]
    assert got[0].key == "k" and got[0].headers == {"h": "1"} and got[0].timestamp == int(T0 * 1000)
    assert t.logs[0].high_watermark == 3
    assert [r.offset for r in n.store.read_records_sync(t.config.uid, 0, 0, 10, 10)] == [0, 1, 2]
    res = await n.broker.publish(t, [msg("d")], "leader")
    assert res.offsets == [3]


@pytest_twisted.ensureDeferred
async def test_durable_publish_fires_only_after_commit(nodes: Callable[..., Node]) -> None:
    """The publish Deferred does not fire, and readers see nothing, until the
    writer thread has committed the records."""
    n = nodes()
    t = await topic(n, "d")
    gate = WriterGate(n.store)
    commits = n.store.commits
    d = n.broker.publish(t, [msg("one"), msg("two")], "quorum")
    await gate.entered.get()
    try:
        assert not d.called, "acked before the commit"
        assert await n.broker.read(t, 0, 0, 10) == [], "visible before the commit"
    finally:
        gate.open()
    res = await d
    assert n.store.commits == commits + 1
    assert res.offsets == [0, 1]
    assert len(await read_all(n, t)) == 2


@pytest_twisted.ensureDeferred
async def test_concurrent_publishes_share_commits(nodes: Callable[..., Node]) -> None:
    """100 publishes issued together are committed in far fewer transactions."""
    n = nodes()
    t = await topic(n, "g", partitions=3)
    before = n.store.commits
    ds = [n.broker.publish(t, [msg(f"m{i}", key=str(i))], "quorum") for i in range(100)]
    results = await DeferredList(ds, fireOnOneErrback=True)
    assert n.store.commits - before < 100
    assert n.store.commits - before <= 2
    offs = sorted((r.partitions[0], r.offsets[0]) for _ok, r in results)
    by_part: dict[int, list[int]] = {}
    for p, o in offs:
        by_part.setdefault(p, []).append(o)
    assert all(v == list(range(len(v))) for v in by_part.values()), "dense offsets per partition"
    assert sum(len(v) for v in by_part.values()) == 100


@pytest_twisted.ensureDeferred
async def test_a_group_commits_records_reach_the_watchers_at_once_before_any_answer(
    nodes: Callable[..., Node],
) -> None:
    """The publishes of one group commit are settled together: the partition's
    watchers (its streams) are woken once, seeing every record of the group, before
    the first of those publishes is answered -- a record's event does not wait for
    the answers of the writes committed before it (issue 16)."""
    n = nodes()
    t = await topic(n, "grp")
    lg = t.logs[0]
    seen: list[tuple[str, int]] = []
    n.broker.watch("grp", 0, lambda: seen.append(("woken", lg.high_watermark)))
    gate = WriterGate(n.store)
    first = n.broker.publish(t, [msg("a")], "quorum")
    await gate.entered.get()  # the first commit is held; the next two queue behind it
    later = [n.broker.publish(t, [msg(x)], "quorum") for x in ("b", "c")]
    for d in later:
        d.addCallback(lambda r: seen.append(("answered", r.offsets[0])))
    gate.open()
    await first
    await DeferredList(later, fireOnOneErrback=True)
    assert n.store.commits >= 2
    assert seen[-3:] == [("woken", 3), ("answered", 1), ("answered", 2)], seen


@pytest_twisted.ensureDeferred
async def test_duplicate_ids_return_the_first_offset(nodes: Callable[..., Node]) -> None:
    """An id seen within the dedup window (earlier or in the same batch) gets the
    first offset and is not stored again; after the window it is new."""
    n = nodes(dedup_window=60)
    t = await topic(n, "dd")
    a = await n.broker.publish(t, [msg("x", id="A"), msg("y", id="B"), msg("x2", id="A")], "quorum")
    assert a.offsets == [0, 1, 0] and a.duplicates == [False, False, True]
    b = await n.broker.publish(t, [msg("again", id="B")], "quorum")
    assert b.offsets == [1] and b.duplicates == [True]
    assert t.logs[0].next_offset == 2
    n.clock.advance(61)
    c = await n.broker.publish(t, [msg("late", id="A")], "quorum")
    assert c.offsets == [2] and c.duplicates == [False]


# -- consumer groups ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_group_pull_ack_and_lag(nodes: Callable[..., Node]) -> None:
    """Pull leases messages with attempt 1; acks commit; lag counts the rest."""
    n = nodes()
    t = await topic(n, "work")
    await n.broker.publish(t, [msg(f"job{i}") for i in range(5)], "quorum")
    g, created = await n.broker.put_group(t, "workers", {"ack_deadline_ms": 10_000})
    assert created
    got = await n.broker.pull(t, g, 3, 0)
    assert [(dv.offset, dv.attempt, r.payload) for dv, r in got] == [
        (0, 1, b"job0"),
        (1, 1, b"job1"),
        (2, 1, b"job2"),
    ]
    refused = await n.broker.ack(t, g, [got[0][0].ack_id, got[1][0].ack_id, "0-99-1", "junk"])
    assert refused == {"0-99-1": "unknown", "junk": "malformed"}
    desc = g.describe(t.high_watermarks())
    assert desc["committed"] == {"0": 2} and desc["lag"] == 3 and desc["in_flight"] == 1
    rest = await n.broker.pull(t, g, 10, 0)
    assert [dv.offset for dv, _r in rest] == [3, 4]
    await n.broker.ack(t, g, [dv.ack_id for dv, _ in [got[2], *rest]])
    assert g.lag(t.high_watermarks()) == 0
    assert await n.broker.pull(t, g, 10, 0) == []


@pytest_twisted.ensureDeferred
async def test_lease_expiry_redelivers_with_attempt_two(nodes: Callable[..., Node]) -> None:
    """After the ack deadline (Clock advanced, broker.tick()), the message comes
    back as attempt 2 and the first attempt's ack is refused."""
    n = nodes()
    t = await topic(n, "lease")
    await n.broker.publish(t, [msg("m")], "quorum")
    g, _ = await n.broker.put_group(t, "g", {"ack_deadline_ms": 5000})
    ((first, _r),) = await n.broker.pull(t, g, 1, 0)
    n.clock.advance(4.999)
    n.broker.tick()
    assert await n.broker.pull(t, g, 1, 0) == [], "still leased"
    n.clock.advance(0.001)
    n.broker.tick()
    ((second, rec),) = await n.broker.pull(t, g, 1, 0)
    assert (second.offset, second.attempt, rec.payload) == (0, 2, b"m")
    assert await n.broker.ack(t, g, [first.ack_id]) == {first.ack_id: "unknown"}
    assert await n.broker.ack(t, g, [second.ack_id]) == {}
    assert g.committed() == {0: 1}


@pytest_twisted.ensureDeferred
async def test_ack_after_deadline_is_refused_as_expired(nodes: Callable[..., Node]) -> None:
    """An ack arriving after the deadline is refused with "expired"."""
    n = nodes()
    t = await topic(n, "exp")
    await n.broker.publish(t, [msg("m")], "quorum")
    g, _ = await n.broker.put_group(t, "g", {"ack_deadline_ms": 1000})
    ((dv, _r),) = await n.broker.pull(t, g, 1, 0)
    n.clock.advance(2)
    assert await n.broker.ack(t, g, [dv.ack_id]) == {dv.ack_id: "expired"}
    assert g.committed() == {0: 0}


@pytest_twisted.ensureDeferred
async def test_nack_with_delay(nodes: Callable[..., Node]) -> None:
    """A nacked message is not redelivered before delay_ms, then comes back as attempt 2."""
    n = nodes()
    t = await topic(n, "nack")
    await n.broker.publish(t, [msg("m")], "quorum")
    g, _ = await n.broker.put_group(t, "g", {})
    ((dv, _r),) = await n.broker.pull(t, g, 1, 0)
    assert await n.broker.nack(t, g, [dv.ack_id], 3000) == {}
    assert await n.broker.nack(t, g, [dv.ack_id], 0) == {dv.ack_id: "unknown"}
    n.clock.advance(2.9)
    assert await n.broker.pull(t, g, 1, 0) == []
    n.clock.advance(0.1)
    ((again, _r),) = await n.broker.pull(t, g, 1, 0)
    assert (again.offset, again.attempt) == (0, 2)


@pytest_twisted.ensureDeferred
async def test_long_poll_pull_wakes_on_publish_and_times_out(nodes: Callable[..., Node]) -> None:
    """pull(wait_ms) waits for data: a publish wakes it; with none, the Clock ends it."""
    n = nodes()
    t = await topic(n, "lp")
    g, _ = await n.broker.put_group(t, "g", {})
    d = n.broker.pull(t, g, 5, 10_000)
    assert not d.called
    await n.broker.publish(t, [msg("hello")], "quorum")
    got = await d
    assert [r.payload for _dv, r in got] == [b"hello"]
    d2 = n.broker.pull(t, g, 5, 10_000)
    n.clock.advance(9.9)
    assert not d2.called
    n.clock.advance(0.2)
    assert await d2 == []
    assert not n.clock.getDelayedCalls(), "the wait left no timers behind"


@pytest_twisted.ensureDeferred
async def test_max_deliveries_dead_letters_with_headers(nodes: Callable[..., Node]) -> None:
    """After max_deliveries failed deliveries (nack or lease expiry) the message is
    copied once to the dead-letter topic with sprawl-dlq-* headers and settled."""
    n = nodes()
    t = await topic(n, "jobs")
    await n.broker.publish(t, [msg("bad", key="k1", headers={"orig": "yes"}), msg("slow")], "quorum")
    g, _ = await n.broker.put_group(
        t, "g", {"max_deliveries": 2, "dead_letter_topic": "jobs.dlq", "ack_deadline_ms": 1000}
    )
    for attempt in (1, 2):
        got = await n.broker.pull(t, g, 2, 0)
        assert [dv.attempt for dv, _ in got] == [attempt, attempt]
        bad = [dv for dv, _ in got if dv.offset == 0]
        await n.broker.nack(t, g, [bad[0].ack_id], 0)
        if attempt == 1:
            n.clock.advance(1)
            n.broker.tick()  # "slow" (offset 1) expires: attempt 2 next
    n.clock.advance(1)
    n.broker.tick()  # "slow" expires a second time: dead-lettered by the tick
    await n.synced()
    assert await n.broker.pull(t, g, 10, 0) == []
    assert g.committed() == {0: 2} and g.dead_lettered == 2
    dlq = n.broker.get_topic("jobs.dlq")
    dead = await read_all(n, dlq)
    assert sorted(r.payload for r in dead) == [b"bad", b"slow"]
    by_payload = {r.payload: r for r in dead}
    h = by_payload[b"bad"].headers
    assert h["orig"] == "yes" and by_payload[b"bad"].key == "k1"
    assert h["sprawl-dlq-topic"] == "jobs" and h["sprawl-dlq-group"] == "g"
    assert (h["sprawl-dlq-partition"], h["sprawl-dlq-offset"], h["sprawl-dlq-attempts"]) == ("0", "0", "2")
    assert by_payload[b"slow"].headers["sprawl-dlq-offset"] == "1"
    assert g.describe(t.high_watermarks())["lag"] == 0


class _Upstairs:
    """A cluster layer stand-in that does the work through the broker itself
    and records what the broker asked of it."""

    def __init__(self, broker: Broker, owned: set[int]) -> None:
        self.broker = broker
        self.mine = owned
        self.created: list[str] = []
        self.published: list[str] = []

    def ensure_topic(self, name: str) -> Any:
        self.created.append(name)
        return self.broker.put_topic(name, {}).addCallback(lambda r: r[0])

    def publish(self, topic: Topic, records: list[Record], acks: str, partition: int | None = None) -> Any:
        self.published.append(topic.name)
        d: Any = self.broker.publish(topic, records, acks, partition)
        return d

    def owned(self, topic: Topic) -> set[int]:
        return self.mine


@pytest_twisted.ensureDeferred
async def test_cluster_links_route_creation_dead_letters_and_group_ownership(
    nodes: Callable[..., Node],
) -> None:
    """Bound links take over what a lone broker does itself: auto-creation
    goes through the creator, dead letters through the publisher, and a pull
    leases only from the partitions the group owner names."""
    links = ClusterLinks()
    n = nodes(links=links)
    up = _Upstairs(n.broker, {1})
    assert n.broker.remote_log is None  # nothing moves to S3 until the cluster binds its list
    links.bind(creator=up, publisher=up, group_owner=up)
    t = await n.broker.ensure_topic("auto")
    assert up.created == ["auto"] and t is n.broker.get_topic("auto")
    t, _ = await n.broker.put_topic("two", {"partitions": 2})
    res: PublishResult = await n.broker.publish(t, [msg("p0")], "quorum", partition=0)
    await n.broker.publish(t, [msg("p1")], "quorum", partition=1)
    assert res.partitions == [0]
    g, _ = await n.broker.put_group(t, "g", {"max_deliveries": 1, "dead_letter_topic": "two.dlq"})
    got = await n.broker.pull(t, g, 10, 0)
    assert [(dv.partition, r.payload) for dv, r in got] == [(1, b"p1")]
    await n.broker.nack(t, g, [got[0][0].ack_id], 0)
    await n.synced()
    assert up.created == ["auto", "two.dlq"] and up.published == ["two.dlq"]
    assert [r.payload for r in await read_all(n, n.broker.get_topic("two.dlq"))] == [b"p1"]


# -- retention, memory budget, ephemeral spill ----------------------------------


async def fill(n: Node, t: Topic, count: int, size: int = 100, start: int = 0) -> None:
    """Publish ``count`` messages of ``size`` payload bytes, numbered from ``start``."""
    await n.broker.publish(
        t, [msg(f"{i:08d}".ljust(size, "-")) for i in range(start, start + count)], "quorum"
    )


def lmdb_offsets(n: Node, t: Topic, p: int = 0) -> list[int]:
    """Offsets of the partition's records in LMDB."""
    return [r.offset for r in n.store.read_records_sync(t.config.uid, p, 0, 10**6, 2**62)]


def lmdb_segment_bases(n: Node, t: Topic, p: int = 0) -> list[int]:
    """Base offsets of the partition's segment metadata in LMDB."""
    return [
        keys.parse_record_key(k)[2]
        for k, _v in n.store.scan("segments", keys.partition_prefix(t.config.uid, p))
    ]


@pytest_twisted.ensureDeferred
async def test_retention_by_bytes_deletes_whole_oldest_segments(nodes: Callable[..., Node]) -> None:
    """Size retention deletes whole oldest segments (never the active one) from
    memory and LMDB; reads start at the new low; the rest is intact."""
    n = nodes()
    t = await topic(n, "sized", segment_bytes=1000, retention_bytes=3000)
    await fill(n, t, 60)
    lg = t.logs[0]
    assert len(lg.segments) > 4
    bases_before = [s.base for s in lg.segments]
    deleted = n.broker.apply_retention()
    await n.synced()
    assert deleted > 0
    assert lg.log_start in bases_before and lg.log_start == lg.segments[0].base > 0
    assert sum(s.bytes for s in lg.segments) <= 3000 and len(lg.segments) >= 1
    assert lmdb_offsets(n, t) == list(range(lg.log_start, 60))
    assert lmdb_segment_bases(n, t) == [s.base for s in lg.segments]
    got = await read_all(n, t)
    assert [r.offset for r in got] == list(range(lg.log_start, 60))
    assert got[0].payload.startswith(f"{lg.log_start:08d}".encode())
    assert n.broker.apply_retention() == 0, "nothing more to delete"


@pytest_twisted.ensureDeferred
async def test_retention_by_age_via_tick(nodes: Callable[..., Node]) -> None:
    """Age retention (run by tick) deletes segments whose newest message is older
    than retention_ms, eventually the active one too; offsets keep counting."""
    n = nodes()
    t = await topic(n, "aged", segment_bytes=1000, retention_ms=5000)
    lg = t.logs[0]
    await fill(n, t, 20)
    n.clock.advance(3)
    await fill(n, t, 20, start=20)
    n.clock.advance(3)
    n.broker.tick()
    await n.synced()
    cutoff = n.broker.now_ms() - 5000
    assert lg.log_start > 0 and all(s.last_ts >= cutoff for s in lg.segments)
    assert lmdb_offsets(n, t) == list(range(lg.log_start, 40))
    n.clock.advance(10)
    n.broker.tick()
    await n.synced()
    assert lg.segments == [] and lg.log_start == 40 == lg.high_watermark
    assert lmdb_offsets(n, t) == [] and lmdb_segment_bases(n, t) == []
    assert await read_all(n, t) == []
    res = await n.broker.publish(t, [msg("after")], "quorum")
    assert res.offsets == [40]
    assert [r.payload for r in await read_all(n, t)] == [b"after"]


@pytest_twisted.ensureDeferred
async def test_memory_budget_evicts_and_reads_fall_back_to_lmdb(nodes: Callable[..., Node]) -> None:
    """Past the memory budget the hot tail shrinks, and reads across the
    LMDB/memory boundary still return every message in order."""
    n = nodes(memory_budget=5000)
    t = await topic(n, "big")
    await fill(n, t, 100)
    lg = t.logs[0]
    assert lg.hot_bytes > 5000
    n.broker.tick()
    assert lg.hot_bytes <= 5000 and lg.hot_start > 0
    got = await read_all(n, t)
    assert [r.offset for r in got] == list(range(100))
    assert all(r.payload.startswith(f"{r.offset:08d}".encode()) for r in got)
    one = await n.broker.read(t, 0, lg.hot_start - 2, 4)
    assert [r.offset for r in one] == list(range(lg.hot_start - 2, lg.hot_start + 2))


@pytest_twisted.ensureDeferred
async def test_ephemeral_topic_spills_past_the_memory_budget(nodes: Callable[..., Node]) -> None:
    """An ephemeral topic acks from memory without writing LMDB; past the budget its
    records spill to LMDB, are evicted from memory, and stay readable."""
    n = nodes(memory_budget=20_000)
    t = await topic(n, "eph", storage="ephemeral")
    lg = t.logs[0]
    res = await n.broker.publish(t, [msg(f"{i:08d}".ljust(200, "-")) for i in range(100)], "quorum")
    assert res.stored == "memory" and res.offsets == list(range(100))
    assert lg.high_watermark == 100
    assert lmdb_offsets(n, t) == []
    n.broker.tick()  # nothing stored to evict: spill
    await n.synced()
    assert lmdb_offsets(n, t) == list(range(100))
    assert lg.unstored() == []
    n.broker.tick()  # now stored records can be evicted
    assert lg.hot_bytes <= 20_000 and lg.hot_start > 0
    got = await read_all(n, t)
    assert [r.offset for r in got] == list(range(100))
    assert all(r.payload.startswith(f"{r.offset:08d}".encode()) for r in got)


@pytest_twisted.ensureDeferred
async def test_a_spill_in_flight_is_not_repeated(nodes: Callable[..., Node]) -> None:
    """Ticks while a spill is queued or committing do not queue the same records again."""
    n = nodes(memory_budget=20_000)
    t = await topic(n, "eph3", storage="ephemeral")
    await n.broker.publish(t, [msg("x" * 200) for _ in range(100)], "quorum")
    spill = sum(r.size for r in t.logs[0].hot)
    pending = n.store.pending_bytes
    n.broker.tick()
    assert n.store.pending_bytes == pending + spill
    n.broker.tick()
    n.broker.tick()
    assert n.store.pending_bytes == pending + spill, "the same records were spilled twice"
    await n.synced()
    await n.broker.publish(t, [msg("y" * 200) for _ in range(100)], "quorum")
    n.broker.tick()
    assert t.logs[0].hot_start == 100, "the spilled records were evicted"
    assert n.store.pending_bytes == spill, "only the new records spill next"
    await n.synced()
    assert lmdb_offsets(n, t) == list(range(200))


@pytest_twisted.ensureDeferred
async def test_a_spill_is_written_in_bounded_writes(nodes: Callable[..., Node], monkeypatch: Any) -> None:
    """A spill goes to LMDB as writes of at most TXN_BYTES of records each (one
    transaction each when queued apart: LMDB keeps the pages of its biggest
    transaction), every record once, in order, all readable after."""
    import sprawl.pubsub.memory as memory

    monkeypatch.setattr(memory, "TXN_BYTES", 3000)
    n = nodes(memory_budget=20_000)
    t = await topic(n, "eph4", storage="ephemeral")
    await n.broker.publish(t, [msg(f"{i:08d}".ljust(200, "-")) for i in range(100)], "quorum")
    writes: list[int] = []
    real = n.store.write

    def write(ops: list[Any], nbytes: int = 0) -> Any:
        writes.append(nbytes)
        return real(ops, nbytes)

    monkeypatch.setattr(n.store, "write", write)
    n.broker.tick()
    await n.synced()
    spilled = [w for w in writes if w]
    assert len(spilled) == 10 and max(spilled) <= 3000  # 100 records of 264 bytes, 11 a write
    assert lmdb_offsets(n, t) == list(range(100))
    assert t.logs[0].unstored() == []


@pytest_twisted.ensureDeferred
async def test_ephemeral_topic_under_budget_never_touches_lmdb_records(nodes: Callable[..., Node]) -> None:
    """Below the budget an ephemeral topic writes no records to LMDB."""
    n = nodes()
    t = await topic(n, "eph2", storage="ephemeral")
    await n.broker.publish(t, [msg("a"), msg("b")], "none")
    n.broker.tick()
    await n.synced()
    assert lmdb_offsets(n, t) == []
    assert [r.payload for r in await read_all(n, t)] == [b"a", b"b"]


@pytest_twisted.ensureDeferred
async def test_disk_budget_refuses_then_retention_makes_room(nodes: Callable[..., Node]) -> None:
    """Past --disk-budget publishes are refused with 507 and nothing is written;
    once retention deletes data, publishes are accepted again."""
    n = nodes(disk_budget=400_000)
    t = await topic(n, "full", segment_bytes=1000)
    refused = None
    for i in range(50):
        try:
            await fill(n, t, 100, size=1000, start=i * 100)
        except InsufficientStorage as e:
            refused = e
            break
    assert refused is not None and refused.status == 507
    end = t.logs[0].next_offset
    assert end == t.logs[0].high_watermark, "nothing of the refused batch was appended"
    await topic(n, "full", retention_bytes=5000)
    assert n.broker.apply_retention() > 0
    await n.synced()
    res = await n.broker.publish(t, [msg("room again")], "quorum")
    assert res.offsets == [end]


# -- recovery -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_restart_recovers_topics_offsets_segments_groups_and_dedup(nodes: Callable[..., Node]) -> None:
    """Close and reopen on the same directory: topic configs, offsets, segments,
    retention low, group committed offsets and attempts, and the dedup window
    are all as they were; offsets continue; ephemeral offsets are not reused."""
    n = nodes()
    t = await topic(n, "keep", partitions=2, segment_bytes=1000, retention_bytes=4000)
    await n.broker.publish(
        t, [msg(f"{i:04d}".ljust(100, "."), id=f"id{i}", key=str(i)) for i in range(80)], "quorum"
    )
    n.broker.apply_retention()
    e = await topic(n, "eph", storage="ephemeral")
    await n.broker.publish(e, [msg("e1"), msg("e2")], "quorum")
    g, _ = await n.broker.put_group(t, "g", {"ack_deadline_ms": 60_000, "max_deliveries": 5})
    got = await n.broker.pull(t, g, 6, 0)
    await n.broker.ack(t, g, [dv.ack_id for dv, _ in got[:3]])
    leased = {(dv.partition, dv.offset): dv.attempt for dv, _ in got[3:]}
    before = {
        "logs": [
            (lg.log_start, lg.next_offset, lg.high_watermark, [s.to_tuple() for s in lg.segments])
            for lg in t.logs
        ],
        "committed": g.committed(),
        "config": t.config.to_dict(),
        "group": g.config.to_dict(),
    }
    await n.close()

    n2 = nodes()
    t2 = n2.broker.get_topic("keep")
    g2 = t2.groups["g"]
    after = {
        "logs": [
            (lg.log_start, lg.next_offset, lg.high_watermark, [s.to_tuple() for s in lg.segments])
            for lg in t2.logs
        ],
        "committed": g2.committed(),
        "config": t2.config.to_dict(),
        "group": g2.config.to_dict(),
    }
    assert after == before
    again = await n2.broker.pull(t2, g2, 10, 0)
    redelivered = {
        (dv.partition, dv.offset): dv.attempt for dv, _ in again if (dv.partition, dv.offset) in leased
    }
    assert redelivered == {k: a + 1 for k, a in leased.items()}, (
        "leased offsets come back with the next attempt"
    )
    acked = {(dv.partition, dv.offset) for dv, _ in got[:3]}
    assert not acked & {(dv.partition, dv.offset) for dv, _ in again}
    # Dedup window: an id published before the restart returns its first offset.
    last_id = "id79"
    res = await n2.broker.publish(t2, [msg("dup", id=last_id, key="79")], "quorum")
    assert res.duplicates == [True]
    rec_79 = [r for lg in t2.logs for r in await read_all(n2, t2, lg.partition) if r.id == last_id]
    assert len(rec_79) == 1 and res.offsets == [rec_79[0].offset]
    fresh = await n2.broker.publish(t2, [msg("new", key="0")], "quorum")
    p = fresh.partitions[0]
    assert fresh.offsets == [before["logs"][p][1]], "offsets continue after the restart"
    e2 = n2.broker.get_topic("eph")
    assert e2.config.storage == "ephemeral"
    res = await n2.broker.publish(e2, [msg("e3")], "quorum")
    assert res.offsets == [2], "ephemeral offsets are not reused after a restart"


@pytest_twisted.ensureDeferred
async def test_delete_topic_removes_all_data(nodes: Callable[..., Node]) -> None:
    """Deleting a topic removes its records, segments, groups and partition
    metadata; a topic recreated with the same name starts empty, also after a restart."""
    n = nodes()
    t = await topic(n, "gone", segment_bytes=1000, retention_bytes=2000)
    await fill(n, t, 40)
    n.broker.apply_retention()
    await n.broker.put_group(t, "g", {})
    old_uid = t.config.uid
    await n.broker.delete_topic("gone")
    pre = keys.topic_prefix(old_uid)
    assert list(n.store.scan("records", pre)) == []
    assert list(n.store.scan("segments", pre)) == []
    assert list(n.store.scan("meta", b"group/" + pre)) == []
    assert list(n.store.scan("meta", b"part/" + pre)) == []
    assert n.store.get("meta", keys.topic_meta_key("gone")) is None
    t2 = await topic(n, "gone")
    assert t2.config.uid != old_uid
    assert t2.logs[0].high_watermark == 0 and t2.groups == {}
    assert await read_all(n, t2) == []
    await n.close()
    n2 = nodes()
    t3 = n2.broker.get_topic("gone")
    assert t3.logs[0].next_offset == 0 and t3.logs[0].log_start == 0 and t3.groups == {}
    assert (await n2.broker.publish(t3, [msg("fresh")], "quorum")).offsets == [0]


@pytest_twisted.ensureDeferred
async def test_recreated_topic_is_not_acked_by_the_deleted_topics_commit(nodes: Callable[..., Node]) -> None:
    """A commit of the deleted topic that lands after a same-name topic was
    recreated must not mark the new topic's unstored records as stored."""
    n = nodes()
    t = await topic(n, "re")
    gate = WriterGate(n.store)
    old = n.broker.publish(t, [msg(f"old{i}") for i in range(5)], "quorum")
    old.addErrback(lambda f: None)  # fails: its topic is deleted below
    await gate.entered.get()  # the old topic's commit is in flight
    n.broker.delete_topic("re").addErrback(lambda f: None)
    created = n.broker.put_topic("re", {})
    t2 = n.broker.topics["re"]
    new = n.broker.publish(t2, [msg("new0"), msg("new1")], "quorum")
    gate.release()
    await gate.entered.get()  # the old commit's callbacks ran; the next commit is held
    try:
        assert not new.called, "the new topic's publish was acked before its commit"
        assert t2.logs[0].high_watermark == 0
    finally:
        gate.open()
    await created
    res = await new
    assert res.offsets == [0, 1]
    assert [r.payload for r in await read_all(n, t2)] == [b"new0", b"new1"]


# -- storage failure ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_storage_failure_fails_publishes_cleanly(nodes: Callable[..., Node], tmp_path: Path) -> None:
    """A failing commit fails the publish with Unavailable; later publishes are
    refused at once; nothing unacked becomes visible and what was stored stays intact."""
    n = nodes()
    t = await topic(n, "fragile")
    await n.broker.publish(t, [msg("ok0"), msg("ok1")], "quorum")

    def broken(ops: list[Any]) -> None:
        raise OSError(5, "Input/output error")

    n.store._commit = broken  # type: ignore[method-assign]
    with pytest.raises(Unavailable) as e:
        await n.broker.publish(t, [msg("lost")], "quorum")
    assert e.value.code == "storage_failed"
    with pytest.raises(Unavailable):
        n.broker.publish(t, [msg("refused")], "quorum")
    assert t.logs[0].high_watermark == 2
    assert [r.payload for r in await read_all(n, t)] == [b"ok0", b"ok1"]
    assert n.broker.backlog == {}  # (released with the failed write)
    n.broker.tick()  # periodic work must not blow up on a failed store
    await n.close()
    n2 = nodes()
    t2 = n2.broker.get_topic("fragile")
    assert t2.logs[0].next_offset == 2
    assert [r.payload for r in await read_all(n2, t2)] == [b"ok0", b"ok1"]


@pytest_twisted.ensureDeferred
async def test_read_skips_an_ephemeral_gap_left_by_a_restart(nodes: Callable[..., Node]) -> None:
    """An ephemeral topic's unspilled tail is lost in a restart; a reader below the
    gap gets the spilled records, then continues after the gap instead of stalling."""
    n = nodes(memory_budget=20_000)
    t = await topic(n, "gap", storage="ephemeral")
    await n.broker.publish(t, [msg("a" * 200) for _ in range(100)], "quorum")
    n.broker.tick()  # spill 0..99
    await n.synced()
    await n.broker.publish(t, [msg("b" * 50) for _ in range(5)], "quorum")  # 100..104 in memory only
    await n.close()
    n2 = nodes(memory_budget=20_000)
    t2 = n2.broker.topics["gap"]
    lg = t2.logs[0]
    assert lg.next_offset == 105, "offsets are not reused after a restart"
    res = await n2.broker.publish(t2, [msg("c")], "quorum")
    assert res.offsets == [105]
    got = await read_all(n2, t2)
    assert [r.offset for r in got] == [*range(100), 105]
    # A reader starting inside the gap moves past it at once.
    inside = await n2.broker.read(t2, 0, 102, 10)
    assert [r.offset for r in inside] == [105]


@pytest_twisted.ensureDeferred
async def test_group_body_is_validated_before_touching_state(nodes: Callable[..., Node]) -> None:
    """group_config_from refuses bad bodies without creating anything, and refuses a
    dead-letter topic that cannot exist when auto-creation is off."""
    n = nodes(auto_create_topics=False)
    t = await topic(n, "src")
    with pytest.raises(BadRequest):
        n.broker.group_config_from("src", "g", {"start": "middle"}, None)
    with pytest.raises(BadRequest) as e:
        await n.broker.put_group(t, "g", {"max_deliveries": 2, "dead_letter_topic": "missing.dlq"})
    assert e.value.code == "dead_letter_topic_not_found"
    assert "g" not in t.groups and "missing.dlq" not in n.broker.topics
    await topic(n, "present.dlq")
    g, created = await n.broker.put_group(t, "g", {"max_deliveries": 2, "dead_letter_topic": "present.dlq"})
    assert created and g.config.dead_letter_topic == "present.dlq"


@pytest_twisted.ensureDeferred
async def test_follower_append_and_truncate_on_lmdb(nodes: Callable[..., Node]) -> None:
    """A follower stores a leader's batch at the leader's offsets; on a
    replicated partition the high watermark moves only when told (what a
    majority stored); truncation drops the uncommitted suffix from memory and
    LMDB in one transaction, and a restart recovers exactly the kept prefix."""
    leader = nodes()
    t = (await leader.broker.put_topic("rep", {}))[0]
    await leader.broker.publish(
        t, [Record(0, 0, 0, None, None, None, b"m%d" % i, True) for i in range(10)], "leader"
    )
    batch = await leader.broker.read(t, 0, 0, 100)
    assert [r.offset for r in batch] == list(range(10))
    await leader.close()

    follower = Node(leader.path / "follower", leader.clock)
    try:
        ft = (await follower.broker.put_topic("rep", {}))[0]
        lg = ft.logs[0]
        lg.replicated = True
        copies = [
            Record(r.offset, 0, r.timestamp, r.id, r.key, r.headers, r.payload, r.is_text) for r in batch
        ]
        await follower.broker.append_replicated(ft, 0, copies)
        assert lg.stored_end == 10 and lg.high_watermark == 0  # stored here, not yet committed
        with pytest.raises(ValueError):
            follower.broker.append_replicated(ft, 0, copies[:1])  # does not continue the log
        assert lg.advance_high_watermark(5) and lg.high_watermark == 5
        assert not lg.advance_high_watermark(3)  # never backwards
        with pytest.raises(ValueError):
            follower.broker.truncate_partition(ft, 0, 4)  # below the high watermark
        await follower.broker.truncate_partition(ft, 0, 7)
        assert lg.next_offset == 7 and [r.offset for r in lg.hot] == list(range(7))
        await follower.synced()
    finally:
        await follower.close()
    again = Node(leader.path / "follower", leader.clock)
    try:
        rt = again.broker.topics["rep"]
        assert rt.logs[0].next_offset == 7
        got = await again.broker.read(rt, 0, 0, 100)
        assert [r.payload for r in got] == [b"m%d" % i for i in range(7)]
    finally:
        await again.close()


@pytest_twisted.ensureDeferred
async def test_follower_reset_on_lmdb_survives_a_restart(nodes: Callable[..., Node]) -> None:
    """A reset drops the partition's records and segment rows from memory and
    LMDB in one transaction with the caller's ops; a restart brings the log
    back empty at the new start, a follower's batch continues it there, and
    a second restart keeps exactly that.  Never below the high watermark."""
    n = nodes()
    t = (await n.broker.put_topic("rep", {"segment_bytes": 200}))[0]
    lg = t.logs[0]
    lg.replicated = True
    recs = [Record(i, 0, 0, None, None, None, b"m%d" % i, True) for i in range(10)]
    await n.broker.append_replicated(t, 0, recs)
    lg.advance_high_watermark(4)
    assert len(lmdb_segment_bases(n, t)) > 1
    with pytest.raises(ValueError):
        n.broker.reset_partition(t, 0, 3)  # below the high watermark
    assert lg.next_offset == 10 and lmdb_offsets(n, t) == list(range(10))
    await n.broker.reset_partition(t, 0, 50, [("p", "meta", b"test/marker", b"reset")])
    assert lg.log_start == lg.next_offset == lg.high_watermark == 50 and not lg.segments
    assert lmdb_offsets(n, t) == [] and lmdb_segment_bases(n, t) == []
    assert n.store.get("meta", b"test/marker") == b"reset"
    await n.close()

    again = nodes()
    rt = again.broker.topics["rep"]
    rl = rt.logs[0]
    assert (rl.log_start, rl.next_offset, rl.high_watermark) == (50, 50, 50) and not rl.segments
    assert await again.broker.read(rt, 0, 0, 100) == []
    rl.replicated = True
    more = [Record(50 + i, 0, 0, None, None, None, b"n%d" % i, True) for i in range(3)]
    await again.broker.append_replicated(rt, 0, more)
    rl.advance_high_watermark(53)
    await again.close()

    third = nodes()
    tt = third.broker.topics["rep"]
    assert (tt.logs[0].log_start, tt.logs[0].next_offset) == (50, 53)
    got = await read_all(third, tt)
    assert [(r.offset, r.payload) for r in got] == [(50 + i, b"n%d" % i) for i in range(3)]


@pytest_twisted.ensureDeferred
async def test_retention_of_a_replicated_partition_keeps_what_is_not_committed(
    nodes: Callable[..., Node],
) -> None:
    """On a replicated partition retention deletes only segments below the
    high watermark (what a majority stored), however old or large."""
    n = nodes()
    t = await topic(n, "rep", segment_bytes=300, retention_bytes=300)
    lg = t.logs[0]
    lg.replicated = True
    recs = [Record(i, 0, 0, None, None, None, b"m%d" % i, True) for i in range(40)]
    await n.broker.append_replicated(t, 0, recs)
    assert len(lg.segments) > 3
    assert n.broker.apply_retention() == 0  # nothing committed yet
    lg.advance_high_watermark(lg.segments[2].base)
    assert n.broker.apply_retention() == 2
    await n.synced()
    assert lg.log_start == lg.segments[0].base <= lg.high_watermark
    assert lmdb_offsets(n, t) == list(range(lg.log_start, 40))


@pytest_twisted.ensureDeferred
async def test_a_reset_without_the_s3_tier_deletes_nothing_in_s3(nodes: Callable[..., Node]) -> None:
    """A node without the S3 tier cannot serve remote segments: a reset
    drops its manifest with the rest of the log, but deletes no object --
    the remote copy is shared with the partition's other replicas (a restart
    does not bring the segments back either)."""
    from sprawl.log.manifest import Manifest, RemoteObject, encode_manifest

    n = nodes()
    t = (await n.broker.put_topic("rep", {"segment_bytes": 200}))[0]
    lg = t.logs[0]
    lg.replicated = True
    recs = [Record(i, 0, 0, None, None, None, b"m%d" % i, True) for i in range(10)]
    await n.broker.append_replicated(t, 0, recs)
    seg = lg.segments[0]
    seg.remote = RemoteObject(seg.base, seg.last, seg.bytes, 0, 0, "k.seg", 1, "00", "k.idx", 1, "00")
    mkey = keys.manifest_key(t.config.uid, 0)
    await n.store.write([("p", "meta", mkey, encode_manifest(Manifest(0, [seg.remote])))])
    deleted: list[Any] = []
    n.broker._delete_remote = deleted.extend  # type: ignore[method-assign]
    await n.broker.reset_partition(t, 0, 20)
    await n.synced()
    assert n.store.get("meta", mkey) is None and deleted == []
    await n.close()
    again = nodes()
    rl = again.broker.topics["rep"].logs[0]
    assert (rl.log_start, rl.next_offset, rl.segments) == (20, 20, [])


# -- the links a publish adds to Deferreds (issue 16, lat40b) ------------------------


@pytest_twisted.ensureDeferred
async def test_a_publish_adds_no_link_and_a_replicated_append_one(
    nodes: Callable[..., Node], monkeypatch: Any
) -> None:
    """A durable one-partition publish (acks=leader) adds no link: its write is
    answered by a plain call (``LmdbStore.write_then``, lat41; one ``addBoth`` before,
    four before lat40b) -- the backlog's release, the stored end and a failed
    commit's waiters all in it -- and its answer is what the stored-end waiter fires
    with; a follower's append none either (its write answered by a plain call too,
    qfollow42; one link before, two before lat40b).
    Counted, each a run of ``_runCallbacks`` a message on the reactor.  The
    answers, the high watermark and the backlog are as before."""
    from twisted.internet.defer import Deferred

    n = nodes()
    t = await topic(n, "links")
    r = await topic(n, "replicated")
    links: list[str] = []
    for name in ("addCallbacks", "addCallback", "addErrback", "addBoth"):
        count_calls(monkeypatch, Deferred, name, links)
    made: list[int] = []
    for i in range(10):
        before = len(links)
        d = n.broker.publish(t, [msg(f"m{i}")], "leader")
        made.append(len(links) - before)
        res = await d
        assert isinstance(res, PublishResult) and res.offsets == [i] and res.stored == "lmdb"
        assert t.logs[0].high_watermark == i + 1
    assert made == [0] * 10, made
    assert n.broker.backlog == {}
    appended: list[int] = []
    for o in range(5):
        before = len(links)
        rec = Record(o, 0, 1000 + o, f"id{o}", None, None, b"x" * 10, True)
        d2 = n.broker.append_replicated(r, 0, [rec])
        appended.append(len(links) - before)
        await d2
        assert r.logs[0].stored_end == o + 1
    assert appended == [0] * 5, appended


@pytest_twisted.ensureDeferred
async def test_a_replicated_append_whose_write_fails_fails(
    nodes: Callable[..., Node], monkeypatch: Any
) -> None:
    """A follower's append whose LMDB commit fails: the Deferred its replica waits on
    fails (the replica's chain stops, no answer claims the records) and the stored
    end stays; the stored-end waiters fail as before.  Before qfollow42 the failure
    was swallowed (the Deferred fired with None)."""
    n = nodes()
    r = await topic(n, "replfail")
    waiting = n.broker.wait_stored("replfail", 0, 0, "v")

    def broken(ops: list[Any], *rest: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(n.store, "_commit", broken)
    rec = Record(0, 0, 1000, "id0", None, None, b"x" * 10, True)
    with pytest.raises(RuntimeError, match="disk on fire"):
        await n.broker.append_replicated(r, 0, [rec])
    assert r.logs[0].stored_end == 0
    with pytest.raises(Exception, match="storage failed"):
        await waiting
