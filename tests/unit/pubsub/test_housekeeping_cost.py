"""What the broker's periodic housekeeping costs on an idle node (issue 23):
retention, dedup expiry, ephemeral checkpoints, the memory budget's tally and
the gossiped load counters look only at the topics written to since, or due,
so an idle tick does the same work with 1,000 topics as with 10,000.
Counted, not timed (:attr:`Broker.housekeeping_looked`,
:attr:`PoolTally.counted_total`, the calls of the full memory count).  Then
the pure parts (:mod:`sprawl.pubsub.housekeeping`) and that what changed is
still seen: a write, a segment expiring by age, an encoding no write
announced."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.task import Clock

from harness import the_reactor
from sprawl.config import NodeConfig
from sprawl.log.record import Record
from sprawl.pubsub import Broker
from sprawl.pubsub.housekeeping import Deadlines, PoolTally, Touched, drain
from sprawl.storage.lmdb import LmdbStore
from sprawl.topics import TopicConfig

T0 = 1_700_000_000.0


class Counted:
    """A broker whose full memory count (``memory_pools``) is counted."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.full_counts = 0
        inner = broker.memory_pools

        def counted() -> dict[str, int]:
            self.full_counts += 1
            return inner()

        broker.memory_pools = counted  # type: ignore[method-assign]


@pytest_twisted.async_yield_fixture
async def make(tmp_path: Path) -> AsyncIterator[Any]:
    """Brokers on a real LMDB (never written to by these idle ticks) with
    ``n`` topics made in memory as recovery makes them; closed at the end."""
    stores: list[LmdbStore] = []

    def build(n: int, **cfg: Any) -> tuple[Broker, Clock, Counted]:
        clock = Clock()
        clock.advance(T0)
        path = tmp_path / f"n{len(stores)}"
        store = LmdbStore(str(path / "lmdb"), reactor=the_reactor(), map_size=64 * 1024**2)
        store.open()
        stores.append(store)
        broker = Broker(NodeConfig(data_dir=str(path), **cfg), store, clock, "node-1")
        for i in range(n):
            name = f"t{i:05d}"
            broker.topics[name] = broker._make_topic(TopicConfig(name, i + 1, retention_ms=60_000))
        broker.touched.touch_all(broker.topics)  # as recovery does
        return broker, clock, Counted(broker)

    yield build
    for s in stores:
        await s.close()


def idle_work(broker: Broker, clock: Clock, counted: Counted, seconds: int = 5) -> tuple[int, int, int]:
    """Settle (the first round looks at every topic once), then count the
    work of ``seconds`` of idle ticks: topics looked at by the once-a-second
    jobs, topics recounted by the memory tally, full memory counts."""
    for _ in range(30):
        clock.advance(0.1)
        broker.tick()
    broker.load_counters("node-1")
    looked, counted_before, full = (
        broker.housekeeping_looked,
        broker.pool_tally.counted_total,
        counted.full_counts,
    )
    for _ in range(seconds * 10):
        clock.advance(0.1)
        broker.tick()
    _led, moved, gone = broker.load_counters("node-1")
    assert (moved, gone) == ({}, [])
    return (
        broker.housekeeping_looked - looked,
        broker.pool_tally.counted_total - counted_before,
        counted.full_counts - full,
    )


def test_an_idle_tick_does_not_grow_with_the_topics(make: Any) -> None:
    """1,000 and 10,000 idle topics: the same work per idle second (nothing
    looked at by retention/dedup/checkpoints, the memory tally's fixed slice,
    no full memory count), and the load counters list nothing."""
    small = idle_work(*make(1_000))
    large = idle_work(*make(10_000))
    assert small == large, (small, large)
    looked, recounted, full = large
    assert looked == 0
    assert recounted <= 5 * PoolTally().slice_size
    assert full == 0


def test_the_first_round_sees_every_recovered_topic(make: Any) -> None:
    """Recovered topics are looked at once (their retention deadlines set),
    and the gossip counters list each led partition once."""
    broker, clock, _ = make(100)
    led, moved, _gone = broker.load_counters("node-1")
    assert led == 100 and len(moved) == 100
    clock.advance(1.1)
    broker.tick()
    assert broker.housekeeping_looked == 2 * 100, "each once for retention, once for its dedup windows"
    assert broker.pool_tally.counted_total >= 100


def rec(i: int) -> Record:
    """A 100-byte message with an id, as the HTTP layer builds it."""
    return Record(-1, 0, 0, f"id-{i}", None, None, b"x" * 100, False)


def test_a_write_is_seen_by_each_job_and_an_old_segment_expires_on_its_deadline(make: Any) -> None:
    """A publish to one of 1,000 idle topics: the next round looks at it alone
    (its dedup ids held until they expire), the memory tally counts its
    records, the gossip counters list it; its segment goes when retention
    by age makes it due, with no other topic looked at meanwhile."""
    broker, clock, _counted = make(1_000, dedup_window=30.0)
    idle_work(broker, clock, _counted, seconds=1)
    t = broker.topics["t00007"]
    broker.publish(t, [rec(i) for i in range(3)], acks="none")
    assert broker.pool_tally.records == 0
    clock.advance(0.1)
    broker.tick()
    assert broker.pool_tally.records == t.logs[0].hot_records_memory > 0
    assert broker.pool_tally.dedup == t.dedup.memory + t.recent.memory > 0
    _led, moved, _ = broker.load_counters("node-1")
    assert list(moved) == [("t00007", 0)] and moved[("t00007", 0)][0] == 3
    looked = broker.housekeeping_looked
    clock.advance(1.0)
    broker.tick()
    assert broker.housekeeping_looked - looked <= 2, "the written topic (retention, dedup) only"
    assert t.logs[0].segments, "not expired yet"
    for _ in range(70 * 10):  # past retention_ms (60 s) and the dedup windows
        clock.advance(0.1)
        broker.tick()
    assert not t.logs[0].segments, "retention by age deleted the segment on its deadline"
    looked = broker.housekeeping_looked
    for _ in range(20):
        clock.advance(0.1)
        broker.tick()
    assert broker.housekeeping_looked == looked, "idle again: nothing looked at"


def test_an_encoding_no_write_announced_is_counted_by_the_sweep(make: Any) -> None:
    """Memory charged without a write (an encoding cached by a late reader)
    reaches the tally within ``topics / slice_size`` seconds."""
    broker, clock, counted = make(200)
    idle_work(broker, clock, counted, seconds=1)
    broker.topics["t00150"].logs[0].account.encoded += 5_000
    for _ in range((200 // broker.pool_tally.slice_size + 1) * 10):
        clock.advance(0.1)
        broker.tick()
    assert broker.pool_tally.encodings == 5_000


def test_near_the_budget_the_full_count_runs_only_once_over_it(make: Any) -> None:
    """Within half of ``--memory-budget`` and not over it nothing is evicted:
    the tally stands in for the full count (issue 23, idle23); once the
    pools are over it, the tick counts every pool and evicts as before."""
    broker, clock, counted = make(10, memory_budget=2 * 1000**2)
    idle_work(broker, clock, counted, seconds=1)
    broker.topics["t00001"].logs[0].account.encoded += 1_500_000
    broker.touched.touch("t00001")
    before = counted.full_counts
    for _ in range(5):
        clock.advance(0.1)
        broker.tick()
    assert counted.full_counts == before and broker.hot_total_seen >= 1_500_000
    broker.topics["t00001"].logs[0].account.encoded += 1_000_000
    broker.touched.touch("t00001")
    for _ in range(5):
        clock.advance(0.1)
        broker.tick()
    assert counted.full_counts - before == 5


def test_a_process_past_half_the_budget_in_unpooled_memory_walks_no_pool(make: Any) -> None:
    """A node of 10,000 partitions takes more than half of the budget beyond
    its baseline in replicas and metadata -- memory no pool counts and no
    eviction frees: its idle ticks walk no pool (they walked every pool ten
    times a second), as with 1,000 topics; the process over the budget runs
    the full count and eviction."""
    budget = 256 * 1000**2
    works = []
    for n in (1_000, 10_000):
        broker, clock, counted = make(n, memory_budget=budget)
        broker._process_beyond_baseline = lambda: int(0.6 * budget)  # type: ignore[method-assign]
        works.append(idle_work(broker, clock, counted))
    assert works[0] == works[1] and works[1][2] == 0, works
    broker._process_beyond_baseline = lambda: int(1.1 * budget)  # type: ignore[method-assign]
    before = counted.full_counts
    for _ in range(20):
        clock.advance(0.1)
        broker.tick()
    assert counted.full_counts - before >= 10


# -- the pure parts -----------------------------------------------------------------------------


def test_touched_fans_out_to_each_subscriber() -> None:
    """Each job drains its own set: one draining hides nothing from another."""
    touched = Touched()
    a, b = touched.subscribe(), touched.subscribe()
    touched.touch("x")
    touched.touch_all(["z", "y"])
    assert drain(a) == ["x", "y", "z"] and not a
    assert b == {"x", "y", "z"}


def test_deadlines_pop_only_what_is_due_and_the_latest_setting() -> None:
    """A topic set again is due at its new time only; None removes it."""
    d = Deadlines()
    d.set("a", 10)
    d.set("b", 5)
    d.set("a", 20)
    d.set("c", 1)
    d.set("c", None)
    assert d.pop_due(4) == []
    assert d.pop_due(10) == ["b"]
    assert d.pop_due(25) == ["a"]
    assert len(d) == 0
    for i in range(1000):  # replaced entries do not pile up
        d.set("a", i)
    assert len(d._heap) <= 2 * len(d) + 64


def test_pool_tally_totals_follow_recounts_and_deletions() -> None:
    """Totals are the sums of the last counts; a topic gone leaves them; the
    sweep visits each topic in turn, a fixed number per call."""
    pools = {"a": (10, 1, 2, 5), "b": (20, 0, 0, 8)}
    tally = PoolTally(slice_size=1)
    tally.recount(["a", "b"], pools.get)
    assert (tally.records, tally.encodings, tally.dedup, tally.hot_bytes, tally.total) == (30, 1, 2, 13, 33)
    pools["a"] = (0, 0, 0, 0)
    del pools["b"]
    tally.sweep(pools.get)
    assert tally.total == 0 + 20, "one topic per sweep: a"
    tally.sweep(pools.get)
    assert tally.total == 0 and tally.hot_bytes == 0
    pools["b"] = (1, 0, 0, 1)
    tally.recount(["b"], pools.get)
    assert len(tally._order) == 2


class WalkCounted(dict[str, Any]):
    """A broker's topics, counting the walks over all of them."""

    walks = 0

    def values(self) -> Any:
        WalkCounted.walks += 1
        return super().values()


def test_the_group_checkpoints_walk_no_list_of_every_topic(make: Any) -> None:
    """The cluster's group checkpoints (``GroupRoutes.tick``, once a second)
    and the broker's group ticks look only at the topics with groups, as the
    broker keeps them: with 10,000 topics and none with a group, ten idle
    seconds walk no list of every topic; a group made is found by one walk."""
    from types import SimpleNamespace

    from sprawl.cluster.group_routes import GroupRoutes

    broker, clock, _ = make(10_000)
    broker.topics = WalkCounted(broker.topics)
    plane = SimpleNamespace(
        broker=broker,
        rpc=SimpleNamespace(register=lambda *a: None),
        node_id="node-1",
        service=SimpleNamespace(replicas={}),
    )
    routes = GroupRoutes(plane)  # type: ignore[arg-type]
    broker.tick()
    routes.tick(clock.seconds())
    WalkCounted.walks = 0
    for _ in range(100):
        clock.advance(0.1)
        broker.tick()
        routes.tick(clock.seconds())
    assert WalkCounted.walks == 0
    broker.put_group(broker.topics["t00042"], "g", {})
    clock.advance(1.0)
    broker.tick()
    routes.tick(clock.seconds())
    assert WalkCounted.walks == 1
    assert [t.name for t in broker.grouped_topics()] == ["t00042"]


def test_the_topics_holding_ids_leave_once_their_windows_empty_or_they_go(make: Any) -> None:
    """The start touches every topic (10,000 names into the set of topics whose dedup
    windows hold ids), ids published to 1,000 of them expire, then they are deleted:
    after each, the set is empty and its table a small one again (a set keeps its table
    as names go, and the once-a-second walk walked it for good: 524 kB, tidy41)."""
    broker, clock, _counted = make(10_000, dedup_window=5.0)

    def seconds(n: int) -> set[str]:
        for _ in range(n):
            clock.advance(1.0)
            broker.tick()
        return broker._holding_ids

    def published() -> set[str]:
        for i in range(1_000):
            broker.publish(broker.topics[f"t{i:05d}"], [rec(i)], acks="none")
        return seconds(1)

    assert not seconds(2) and sys.getsizeof(broker._holding_ids) < 1024
    assert len(published()) == 1_000
    assert not seconds(8) and sys.getsizeof(broker._holding_ids) < 1024  # (past the window)
    assert len(published()) == 1_000
    for i in range(1_000):
        broker.topics.pop(f"t{i:05d}").deleted = True
    assert not seconds(1) and sys.getsizeof(broker._holding_ids) < 1024
