"""The node's clock through steps of the system clock (:mod:`sprawl.steady_time`,
:mod:`sprawl.node.clock`): never backwards, never frozen, back on the wall
clock once a step back is slewed away."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import task

from sprawl.node.clock import LOOK_EVERY, install_steady_clock
from sprawl.steady_time import SteadyClock


class Clocks:
    """A system's two clocks, moved by hand: real time passes on both; a step moves the wall clock only."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = 1_800_000_000.0

    def run(self, seconds: float) -> None:
        """Real time passes."""
        self.mono += seconds
        self.wall += seconds

    def step(self, seconds: float) -> None:
        """The wall clock is set (NTP, ``date -s``)."""
        self.wall += seconds

    def steady(self, slew: float = 0.1) -> SteadyClock:
        """A steady clock on these two."""
        return SteadyClock(wall=lambda: self.wall, mono=lambda: self.mono, slew=slew)


def test_in_step_it_is_the_wall_clock() -> None:
    """With no step, the clock reads the wall clock."""
    c = Clocks()
    s = c.steady()
    for _ in range(10):
        c.run(0.25)
        assert s.seconds() == pytest.approx(c.wall)
    assert s.steps_back == 0 and s.ahead == 0.0


def test_a_step_back_is_slewed_away_without_stopping() -> None:
    """60 s back: the clock goes on at 90 % of real time -- each second of
    real time moves it 0.9 s, never less -- and meets the wall clock after
    about 600 s, on which it stays.  The step is counted once."""
    c = Clocks()
    s = c.steady(slew=0.1)
    before = s.seconds()
    c.step(-60.0)
    assert s.seconds() == pytest.approx(before)  # not backwards
    assert s.steps_back == 1 and s.largest_step_back == pytest.approx(60.0)
    last = s.seconds()
    for _ in range(599):
        c.run(1.0)
        now = s.seconds()
        assert now - last == pytest.approx(0.9)
        last = now
    assert s.ahead == pytest.approx(0.1, abs=1e-3)  # (float error of 1.8e9 s clocks over 600 steps)
    c.run(2.0)
    assert s.seconds() == pytest.approx(c.wall) and s.ahead == 0.0
    c.run(5.0)
    assert s.seconds() == pytest.approx(c.wall)
    assert s.steps_back == 1


def test_a_step_forward_is_taken_at_once() -> None:
    """A step forward: the clock jumps with the wall clock (a stall, to the timers)."""
    c = Clocks()
    s = c.steady()
    s.seconds()
    c.step(30.0)
    assert s.seconds() == pytest.approx(c.wall) and s.steps_back == 0


def test_a_step_forward_while_slewing_ends_the_slew() -> None:
    """10 s back, then 30 s forward before the slew ended: in step again at once."""
    c = Clocks()
    s = c.steady()
    s.seconds()
    c.step(-10.0)
    c.run(1.0)
    assert s.seconds() > c.wall
    c.step(30.0)
    assert s.seconds() == pytest.approx(c.wall) and s.ahead == 0.0


def test_slew_must_be_a_fraction() -> None:
    """A slew of 0 would freeze nothing away; 1 would stop the clock."""
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError):
            Clocks().steady(slew=bad)


@given(st.lists(st.tuples(st.floats(0.0, 5.0), st.floats(-100.0, 100.0)), max_size=40))
def test_never_backwards_never_slower_than_the_slew(moves: list[tuple[float, float]]) -> None:
    """Any mix of real time and steps: never backwards, never behind the wall
    clock, ahead of it only by what is left of steps back; and each reading
    is at least the last plus ``1 - slew`` of the real time between them,
    less the step back between them (a step back smaller than the time
    between two readings is not seen as one: the wall clock still went
    forward, by less -- the node reads its clock at least every 0.1 s)."""
    c = Clocks()
    s = c.steady(slew=0.1)
    last, last_mono = s.seconds(), c.mono
    for run, step in moves:
        c.run(run)
        c.step(step)
        now = s.seconds()
        assert now >= last - 1e-6
        assert now >= last + 0.9 * (c.mono - last_mono) - max(0.0, -step) - 1e-6
        assert now >= c.wall - 1e-6
        assert s.ahead == pytest.approx(max(0.0, now - c.wall), abs=1e-6)
        last, last_mono = now, c.mono


def test_the_reactor_runs_its_timers_through_a_step_back() -> None:
    """``install_steady_clock``: the reactor's ``seconds`` is the steady
    clock's, so a timer set before a 60 s step back fires after its delay
    of real time (slewed: 1 s at 90 %), not a minute later; the step is
    logged once; installing twice keeps the first clock."""
    c = Clocks()
    steady = c.steady()
    reactor: Any = task.Clock()
    started: list[Any] = []
    reactor.callWhenRunning = lambda f, *a: started.append((f, a))
    assert install_steady_clock(reactor, steady) is steady
    assert install_steady_clock(reactor) is steady
    assert reactor.seconds() == pytest.approx(c.wall)
    fired: list[float] = []
    reactor.callLater(1.0, lambda: fired.append(c.mono))
    t0 = c.mono
    c.step(-60.0)
    for _ in range(20):
        c.run(0.1)
        reactor.advance(0)  # (task.Clock runs what is due by its seconds(): the steady clock's)
    # (the reading that sees the step loses the 0.1 s before it; then 90 %; 0.1 s steps)
    assert fired and fired[0] - t0 <= 0.1 + 1.0 / 0.9 + 0.1 + 1e-6, fired
    # the look that logs the step
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        f, a = started[0]
        f(*a)
        c.run(LOOK_EVERY / 0.9 + 0.1)  # (still slewing: 90 % of real time)
        reactor.advance(0)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [e for e in events if "stepped back" in e.get("log_format", "")], events
