"""The garbage collector paused during a node's start (issue 23: restart time)."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sprawl.node.collector import (
    SWITCH_INTERVAL,
    FreezeAfterSlowCollections,
    collector_paused,
    shorten_switch_interval,
)


@pytest.fixture
def collections() -> Iterator[list[int]]:
    """The generations of the automatic and explicit collections that run while the test does."""
    seen: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    was_on = gc.isenabled()
    gc.enable()
    gc.callbacks.append(count)
    try:
        yield seen
    finally:
        gc.callbacks.remove(count)
        if not was_on:
            gc.disable()


def build(n: int) -> list[dict[str, list[int]]]:
    """``n`` small containers (tracked by the collector), like a start's per-topic objects."""
    return [{"offsets": [i]} for i in range(n)]


def test_a_start_sized_allocation_runs_no_collection_while_paused(collections: list[int]) -> None:
    """Building 200,000 tracked objects runs the collector hundreds of times
    normally and not once with it paused; it is on again afterwards."""
    kept = build(200_000)
    normally = len(collections)
    del kept
    with collector_paused():
        assert not gc.isenabled()
        collections.clear()  # (entering may have run one, before the pause)
        kept = build(200_000)
        during = list(collections)  # (read inside: the first allocation after it may collect)
    assert during == []
    assert normally > 100
    assert gc.isenabled()
    del kept


def test_an_explicit_collection_still_runs_while_paused(collections: list[int]) -> None:
    """The start ends with its own ``gc.collect()``: that one is not paused."""
    with collector_paused():
        gc.collect()
    assert collections == [2]


def test_the_collector_is_on_again_after_a_failed_start(collections: list[int]) -> None:
    """A start that raises leaves the collector on."""
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("start refused")
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    """The pause restores what it found: off stays off."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        if was_on:
            gc.enable()


def test_the_node_s_switch_interval_replaces_cpython_s_default() -> None:
    """``shorten_switch_interval`` (called once the node has started) sets
    the interval a thread waiting for the GIL lets the holder run -- 0.5 ms
    instead of CPython's 5 ms, the LMDB writer's hand-back of a commit to a
    busy reactor (the wait itself is measured in docs/benchmarks.md, not
    timed here) -- and returns the one it replaced."""
    before = sys.getswitchinterval()
    try:
        assert shorten_switch_interval() == before
        assert sys.getswitchinterval() == SWITCH_INTERVAL < before
    finally:
        sys.setswitchinterval(before)


def _timed_hook(
    now: list[float], freezes: list[float], later: Any, first_every: float
) -> tuple[FreezeAfterSlowCollections, Callable[[int, float], None]]:
    """A freeze hook (a 2 ms CPU bar, a 60 s period) on the clock ``now[0]``, its freezes
    noted in ``freezes``, and a function that runs a collection of a generation taking
    that many CPU seconds through it."""
    cpu = [0.0]
    hook = FreezeAfterSlowCollections(
        later,
        min_cpu=0.002,
        every=60.0,
        first_every=first_every,
        clock=lambda: now[0],
        cpu_clock=lambda: cpu[0],
        freeze=lambda: freezes.append(now[0]),
    )

    def collection(generation: int, cpu_seconds: float) -> None:
        hook("start", {"generation": generation})
        cpu[0] += cpu_seconds
        hook("stop", {"generation": generation, "collected": 0, "uncollectable": 0})

    return hook, collection


def test_a_slow_full_collection_is_followed_by_one_freeze_at_most_every_period() -> None:
    """Only a full collection over the CPU bar schedules a freeze -- outside
    the collection, once until it ran -- and another comes only a period
    later; young collections never do."""
    now: list[float] = [0.0]
    scheduled: list[object] = []
    freezes: list[float] = []
    hook, collection = _timed_hook(now, freezes, lambda delay, fn: scheduled.append(fn), first_every=60.0)

    collection(0, 0.05)  # young: never
    collection(2, 0.001)  # cheap: no
    assert scheduled == []
    collection(2, 0.007)
    collection(2, 0.007)  # (scheduled already)
    assert len(scheduled) == 1 and freezes == []  # not inside the collection
    scheduled.pop()()  # type: ignore[operator]
    assert freezes == [0.0] and hook.frozen == 1
    now[0] = 30.0
    collection(2, 0.007)
    assert scheduled == []  # within the period
    now[0] = 61.0
    collection(2, 0.007)
    scheduled.pop()()  # type: ignore[operator]
    assert freezes == [0.0, 61.0]


def test_the_period_between_freezes_starts_short_and_doubles() -> None:
    """A restarted node's first minute: slow full collections every second
    freeze at 0, 5, 15, 35 and 75 s (the period 5 s, doubling to the 60 s
    bar), then every 60 s -- not once a minute from the start, which left a
    10,000-partition node's catch-up objects to every full collection of its
    first minute (issue 23, create40)."""
    now: list[float] = [0.0]
    freezes: list[float] = []
    hook, collection = _timed_hook(now, freezes, lambda delay, fn: fn(), first_every=5.0)
    for second in range(200):
        now[0] = float(second)
        collection(2, 0.01)
    assert freezes == [0.0, 5.0, 15.0, 35.0, 75.0, 135.0, 195.0]
    assert hook.frozen == 7 and hook.period == 60.0


def test_a_frozen_container_is_not_walked_by_the_next_full_collections() -> None:
    """Why it pays: a big container of untracked items (a hot tail's deque of
    records) is walked item by item by every full collection until a freeze
    moves it to the permanent generation, which collections skip."""
    from collections import deque

    tail = deque(range(1000))
    assert any(o is tail for o in gc.get_objects())  # walked by collections
    hook = FreezeAfterSlowCollections(lambda delay, fn: fn(), min_cpu=0.0, every=0.0)
    hook.install()
    try:
        gc.collect(2)
        assert hook.frozen == 1 and gc.get_freeze_count() > 0
        assert not any(o is tail for o in gc.get_objects())  # permanent: skipped from now on
    finally:
        hook.remove()
        gc.unfreeze()
