"""High watermarks saved on their own (``sprawl/replication/partition.py``,
:class:`_HighWatermarkSaves`): one timer a store for every partition due, one
write a reactor turn for every state gathered, a failed write told to every
partition in it -- kept per store object (gone with the store), not by an
``id`` another store could be given later."""

from __future__ import annotations

import gc
from types import SimpleNamespace
from typing import Any

from twisted.internet import defer, task

from sprawl.replication import partition
from sprawl.replication.partition import HW_SAVE_SECONDS, _saves_of


class _Store:
    """Records each write; fails them when told to."""

    def __init__(self) -> None:
        self.writes: list[list[Any]] = []
        self.fail = False

    def write(self, ops: list[Any]) -> defer.Deferred[None]:
        self.writes.append(list(ops))
        return defer.fail(RuntimeError("disk")) if self.fail else defer.succeed(None)


class _Partition:
    """What the saves call back: its save, and a failed write."""

    def __init__(self, store: _Store, clock: task.Clock, name: str) -> None:
        self.broker = SimpleNamespace(store=store, clock=clock)
        self.name = name
        self.saved = 0
        self.failed: list[Any] = []

    def _save_hw(self) -> None:
        self.saved += 1
        _saves_of(self).save(self, [("p", "meta", self.name)])  # type: ignore[arg-type]

    def _hw_save_failed(self, f: Any) -> None:
        self.failed.append(f)


def test_partitions_due_share_one_timer_and_one_write_per_store() -> None:
    """Three partitions of one store due within the period: one timer, one write
    of their three states; another store's partition: its own timer and write."""
    clock = task.Clock()
    a, b = _Store(), _Store()
    ps = [_Partition(a, clock, f"a{i}") for i in range(3)] + [_Partition(b, clock, "b0")]
    timers = [_saves_of(p).due(p) for p in ps]  # type: ignore[arg-type]
    assert timers[0] is timers[1] is timers[2] and timers[3] is not timers[0]
    assert len(clock.getDelayedCalls()) == 2
    clock.advance(HW_SAVE_SECONDS)
    clock.advance(0)
    assert [p.saved for p in ps] == [1, 1, 1, 1]
    assert a.writes == [[("p", "meta", "a0"), ("p", "meta", "a1"), ("p", "meta", "a2")]]
    assert b.writes == [[("p", "meta", "b0")]]
    assert not clock.getDelayedCalls()
    # (due again: a new timer)
    _saves_of(ps[0]).due(ps[0])  # type: ignore[arg-type]
    assert len(clock.getDelayedCalls()) == 1


def test_a_failed_save_is_told_to_every_partition_in_it() -> None:
    """The gathered write fails: each partition whose state was in it hears it."""
    clock = task.Clock()
    store = _Store()
    store.fail = True
    ps = [_Partition(store, clock, f"p{i}") for i in range(2)]
    for p in ps:
        p._save_hw()
    clock.advance(0)
    assert len(store.writes) == 1 and [len(p.failed) for p in ps] == [1, 1]


def test_the_saves_go_with_their_store() -> None:
    """Kept by the store object itself: a store dropped takes its saves with it,
    so a later store (perhaps at the same address) starts with none."""
    import weakref

    clock = task.Clock()
    store = _Store()
    p = _Partition(store, clock, "x")
    saves = _saves_of(p)  # type: ignore[arg-type]
    assert partition._SAVES[store] is saves
    gone = weakref.ref(store)
    del p, store, saves
    gc.collect()
    assert gone() is None  # (the saves do not keep their store alive)
    assert all(v.store() is not None for v in partition._SAVES.values())
