"""Periodic loops started in phase (sprawl.ticks, issue 23): loops started at
scattered moments fire in the same reactor turns, so an idle node wakes once
per tick instead of once per loop.  Counted on a ``task.Clock``: the distinct
moments at which the loops run."""

from __future__ import annotations

from twisted.internet import task

from sprawl.ticks import start_in_phase


def _moments(in_phase: bool) -> tuple[set[float], int]:
    """Four 0.1 s loops and two 0.5 s loops started at scattered moments, run
    for 10 s after a second; the distinct moments at which any ran after that
    first second, and how many calls."""
    clock = task.Clock()
    seen: list[float] = []

    def start(interval: float) -> None:
        loop = task.LoopingCall(lambda: seen.append(round(clock.seconds(), 6)))
        loop.clock = clock
        if in_phase:
            start_in_phase(loop, interval)
        else:
            loop.start(interval, now=False)

    for i, interval in enumerate((0.1, 0.1, 0.1, 0.1, 0.5, 0.5)):
        clock.advance(0.0137 * (i + 1))
        start(interval)
    for _ in range(11_000):
        clock.advance(0.001)
    later = [t for t in seen if 1.0 <= t < 11.0]
    return set(later), len(later)


def test_loops_started_in_phase_wake_the_reactor_once_per_tick() -> None:
    """Scattered, the six loops run at ~44 distinct moments a second; in
    phase at 10 (the 0.5 s loops with the 0.1 s ones), each loop still as
    often as before."""
    scattered, calls_scattered = _moments(False)
    aligned, calls_aligned = _moments(True)
    assert abs(calls_aligned - calls_scattered) <= 6  # (a call per loop at the window's edges)
    assert calls_aligned >= 4 * 100 + 2 * 20
    assert len(scattered) >= 4 * 100
    assert len(aligned) == 100  # ten moments a second over 10 s


def test_a_loop_keeps_its_interval_and_its_first_call() -> None:
    """The first two calls come as ``start`` schedules them (``now``
    honoured), every later one at a whole multiple of the interval."""
    clock = task.Clock()
    clock.advance(0.037)
    calls: list[float] = []
    loop = task.LoopingCall(lambda: calls.append(round(clock.seconds(), 6)))
    loop.clock = clock
    start_in_phase(loop, 0.5, now=True)
    for t in (0.3, 0.536, 0.537, 0.9, 1.0, 1.2, 1.5):
        clock.advance(t - clock.seconds())
    assert calls == [0.037, 0.537, 1.0, 1.5]
    loop.stop()
