"""The broker on a store with the write-ahead log on: publishes are answered and
delivered once the log is synced, while LMDB's commit is still held; a hot tail
evicted before LMDB has its records is read back whole once LMDB does -- never short."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest_twisted
from test_broker import T0, Node, WriterGate, msg, read_all, topic
from twisted.internet.task import Clock

from harness import until
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
