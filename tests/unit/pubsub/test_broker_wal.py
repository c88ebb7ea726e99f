"""The broker on a store with the write-ahead log on: publishes are answered and
delivered once the log is synced, while LMDB's commit is still held; a hot tail
evicted before LMDB has its records is read back whole once LMDB does -- never short."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest_twisted
from test_broker import T0, Node, WriterGate, msg, read_all, topic
from twisted.internet import defer
from twisted.internet.task import Clock

from harness import until
from sprawl.log.record import Record
from sprawl.storage.lmdb import LmdbStore


class WalNode(Node):
    """A store (log on) + broker pair on one data dir."""

    def __init__(self, path: Path, clock: Clock, **cfg: Any):
        orig = LmdbStore.__init__

        def with_wal(store: LmdbStore, *a: Any, **kw: Any) -> None:
            orig(store, *a, wal=True, **kw)

        LmdbStore.__init__ = with_wal  # type: ignore[method-assign]
        try:
            super().__init__(path, clock, **cfg)
        finally:
            LmdbStore.__init__ = orig  # type: ignore[method-assign]


@pytest_twisted.async_yield_fixture
async def wal_nodes(tmp_path: Path) -> AsyncIterator[Callable[..., WalNode]]:
    """Opens nodes with the log on; closes them at the end."""
    clock = Clock()
    clock.advance(T0)
    opened: list[WalNode] = []

    def make(**cfg: Any) -> WalNode:
        n = WalNode(tmp_path, clock, **cfg)
        opened.append(n)
        return n

    yield make
    for n in opened:
        await n.close()


@pytest_twisted.ensureDeferred
async def test_publishes_are_answered_and_read_while_lmdb_is_held(wal_nodes: Callable[..., WalNode]) -> None:
    """With every LMDB commit held, a publish is answered ``stored: lmdb`` (the log's
    fsync), its records are visible (high watermark) and read from the hot tail."""
    n = wal_nodes()
    t = await topic(n, "w")
    assert n.store.wal is not None
    gate = WriterGate(n.store)
    try:
        res = await n.broker.publish(t, [msg("a"), msg("b")], "leader")
        assert res.stored == "lmdb" and res.offsets == [0, 1]
        assert t.logs[0].high_watermark == 2
        assert [r.payload for r in await read_all(n, t)] == [b"a", b"b"]
        assert n.store.wal_synced >= 1 and n.store.wal_applied < n.store.wal_synced
    finally:
        gate.open()


@pytest_twisted.ensureDeferred
async def test_an_evicted_tail_is_read_whole_once_lmdb_has_it(wal_nodes: Callable[..., WalNode]) -> None:
    """Records acked through the log and evicted from the hot tail (the memory budget)
    before LMDB committed them: a read waits for LMDB and returns every one of them
    in order -- no short read, no damage reported."""
    n = wal_nodes(memory_budget=5000)
    t = await topic(n, "ev")
    gate = WriterGate(n.store)
    released = False
    try:
        await n.broker.publish(t, [msg(f"{i:04d}".ljust(100, "-")) for i in range(100)], "leader")
        lg = t.logs[0]
        n.broker.tick()
        assert lg.hot_start > 0, "nothing was evicted"
        got: list[Any] = []
        d = n.broker.read(t, 0, 0, 100)
        d.addBoth(got.append)
        assert not got, f"read LMDB before it held the records: {got}"
        gate.open()
        released = True
        await until(lambda: bool(got), "the read")
        assert isinstance(got[0], list), got[0]
        assert [r.offset for r in got[0]] == list(range(len(got[0])))
        assert len(got[0]) >= lg.hot_start
        assert [r.offset for r in await read_all(n, t)] == list(range(100))
    finally:
        if not released:
            gate.open()


@pytest_twisted.ensureDeferred
async def test_a_replicas_append_stays_on_lmdbs_commit(wal_nodes: Callable[..., WalNode]) -> None:
    """A replica's append (a follower's copy of its leader's records, or a leader's own)
    does not go through the log even with the log on (issue 16, wal37: on the 3-node
    path the log cost each node's threads ~200 us more CPU a message): it is durable
    when LMDB's commit is -- with LMDB's commits held its Deferred has not fired, and
    no frame is written for it.  A truncation made after it is applied after it, so a
    restart finds the log as truncated, with the records before the cut."""
    n = wal_nodes()
    t = (await n.broker.put_topic("rep", {}))[0]
    lg = t.logs[0]
    lg.replicated = True
    copies = [Record(i, 0, T0, f"id{i}", None, None, b"m%d" % i, True) for i in range(10)]
    synced = n.store.wal_synced
    gate = WriterGate(n.store)
    released = False
    try:
        done: list[Any] = []
        n.broker.append_replicated(t, 0, copies).addBoth(done.append)
        cut: list[Any] = []
        n.broker.truncate_partition(t, 0, 7).addBoth(cut.append)
        await gate.entered.get()  # (the writer thread holds a commit)
        assert not done and not cut, (done, cut)
        gate.open()
        released = True
        await until(lambda: bool(done) and bool(cut), "the append and the truncation")
        assert done == [None] and cut == [None] and lg.stored_end == 7
        assert n.store.wal_synced == synced, "a frame was written for the replica's writes"
        await n.synced()
    finally:
        if not released:
            gate.open()
    await n.close()
    again = wal_nodes()
    rt = again.broker.topics["rep"]
    assert rt.logs[0].next_offset == 7
    assert [r.payload for r in await read_all(again, rt)] == [b"m%d" % i for i in range(7)]


@pytest_twisted.ensureDeferred
async def test_a_metadata_hold_holds_no_publish_and_no_replicas_append(
    wal_nodes: Callable[..., WalNode],
) -> None:
    """A create's hold (``LmdbStore.hold``: its writes wait up to the hold for the
    node's next Raft append, issue 23) never holds a client's message: a publish (the
    log's frame waits for every LMDB write made before it) and a replica's append
    (durable at LMDB's commit) are urgent -- each ends the hold, and the held write
    commits with or before it.  With them not urgent, both wait out the minute."""
    n = wal_nodes()
    t = await topic(n, "w")
    rt = (await n.broker.put_topic("rep", {}))[0]
    rt.logs[0].replicated = True
    await n.synced()

    n.store.hold(60.0)
    held = n.store.write([("p", "meta", b"held-1", b"x")])
    published = defer.ensureDeferred(n.broker.publish(t, [msg("a")], "leader"))
    await until(lambda: published.called and held.called, "the publish through a hold", timeout=5.0)
    assert (await published).offsets == [0]

    n.store.hold(60.0)
    held = n.store.write([("p", "meta", b"held-2", b"x")])
    copies = [Record(i, 0, T0, f"id{i}", None, None, b"m%d" % i, True) for i in range(3)]
    appended = n.broker.append_replicated(rt, 0, copies)
    await until(lambda: appended.called and held.called, "the replica's append through a hold", timeout=5.0)
    assert n.store.holds == 2 and n.store.holds_joined == 2
