"""Earned trust's profiles off the reactor's long turns (issue 18, trust35):
:meth:`sprawl.forecast.feed.TrafficFeed.partition_profiles` forecasts
``profile_slice`` partition series per reactor turn, on a ``task.Clock``; the
result is the single pass's; the feed's samples wait for a pass's end; while
a pass is under way the controller gets the last profiles, or
``PROFILES_PENDING`` and then decides on the present alone."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import task

from harness.rate_gossip import RateGossip, rate_plane
from sprawl.cluster.balance import PROFILES_PENDING, PartitionLoad
from sprawl.forecast.earned import EarnedTrust
from sprawl.forecast.feed import PROFILE_SLICE, TrafficFeed
from sprawl.forecast.holtwinters import ForecastConfig
from sprawl.forecast.traffic import TrafficForecaster, partition_key
from sprawl.node.binding import bind_earned_trust

STEP = 5.0
TRUST = EarnedTrust(distrust=600.0, profile_horizon=600.0, profile_points=6)


def _warm(n: int, clock: task.Clock) -> TrafficForecaster:
    """A forecaster of ``n`` warm partition series (and a node's and a topic's
    series, which a profile pass skips), fed up to the clock's time."""
    fc = TrafficForecaster(
        ForecastConfig(bucket=STEP, seasons=(12,), warmup=3), horizon=60.0, max_series=n + 8
    )
    t = clock.seconds() - 40 * STEP
    while t < clock.seconds():
        for p in range(n):
            fc.observe(
                t, partition_key(f"t{p % 7}", p), 50.0 + p + 20.0 * math.sin(t / 30.0 + p), detect=False
            )
        fc.observe(t, ("node", "a"), 1000.0, detect=False)
        fc.observe(t, ("topic", "t0", "publish"), 10.0, detect=False)
        t += STEP
    return fc


def _feed(n: int, slice_: int = PROFILE_SLICE) -> tuple[TrafficFeed, task.Clock]:
    clock = task.Clock()
    clock.advance(1_000_000.0)
    fc = _warm(n, clock)
    return TrafficFeed(fc, clock, None, interval=STEP, earned=TRUST, profile_slice=slice_), clock


def _turns(clock: task.Clock, feed: TrafficFeed, limit: int = 1000) -> int:
    """Run the pass's next slices one reactor turn at a time until it ends
    (``task.Clock.advance(0)`` would run a call scheduled by a call in the
    same advance: a real reactor runs it on its next turn); how many turns.
    Each turn has exactly one slice waiting."""
    turns = 0
    while feed._pass is not None:
        assert turns < limit, "the pass does not end"
        (delayed,) = clock.getDelayedCalls()
        call: Any = delayed
        assert call.getTime() == clock.seconds()  # callLater(0): the next turn
        clock.calls.remove(call)
        call.func(*call.args, **call.kw)
        turns += 1
    return turns


@pytest.mark.parametrize(("n", "slices"), [(100, [32, 32, 32, 4]), (64, [32, 32, 0]), (5, [5])])
def test_a_pass_runs_in_slices_of_profile_slice_series_and_gives_the_single_passs_result(
    n: int, slices: list[int]
) -> None:
    """A pass forecasts at most ``profile_slice`` partition series per reactor
    turn (the first slice in the call, the next ones on later turns; a pass
    of fewer series ends in the call, as before); its profiles are exactly
    :meth:`~sprawl.forecast.traffic.TrafficForecaster.partition_profiles`'s
    at the same time, every warm partition present."""
    feed, clock = _feed(n)
    now = clock.seconds()
    expected = feed.forecaster.partition_profiles(now, TRUST.profile_horizon, TRUST.profile_points)
    assert len(expected) == n
    first = feed.partition_profiles(now)
    assert feed.last_slices == slices[:1]
    if len(slices) == 1:
        assert first == expected
    else:
        assert first is PROFILES_PENDING  # nothing computed before
        assert _turns(clock, feed) == len(slices) - 1
    assert feed.last_slices == slices
    assert max(feed.last_slices) <= PROFILE_SLICE
    assert feed.profiles_computed == 1
    assert feed.partition_profiles(now) == expected
    assert feed.partition_profiles(now + TRUST.profile_every - 1) == expected  # cached, no new pass
    assert feed.profiles_computed == 1


def test_the_slice_is_counted_in_series() -> None:
    """``profile_slice`` sets the slice: 1,000 series in slices of 100 take ten turns."""
    feed, clock = _feed(1000, slice_=100)
    assert feed.partition_profiles(clock.seconds()) is PROFILES_PENDING
    _turns(clock, feed)
    assert feed.last_slices == [100] * 10 + [0]
    with pytest.raises(ValueError):
        TrafficFeed(feed.forecaster, clock, None, profile_slice=0)


def test_a_sample_due_during_a_pass_waits_for_its_end() -> None:
    """The feed's sample (its loop's tick) that falls due while a pass is under
    way is taken when the pass ends, so the series do not change under the
    pass: its result is the single pass's at its start, though the rates
    changed meanwhile."""
    clock = task.Clock()
    clock.advance(1_000_000.0)
    fc = _warm(100, clock)
    rates = {"a": {(f"t{p % 7}", p): 500.0 for p in range(100)}}  # far from what the model knows
    feed = TrafficFeed(fc, clock, RateGossip(rates), interval=STEP, earned=TRUST)
    now = clock.seconds()
    expected = fc.partition_profiles(now, TRUST.profile_horizon, TRUST.profile_points)
    feed.start()
    assert feed.partition_profiles(now) is PROFILES_PENDING  # slice 1 of 4; slice 2 waits at ``now``
    # One advance runs slice 2 (due at now), the loop's tick (due at now + STEP,
    # before slice 3, which slice 2 scheduled then), slices 3 and 4: the tick
    # waits for the pass's end, then samples.
    clock.advance(STEP)
    assert feed.last_slices == [32, 32, 32, 4]
    assert feed._profiles == expected
    assert feed.ticks == 1  # taken at the pass's end
    assert fc.last(partition_key("t0", 0)) == (now + STEP, 500.0)
    clock.advance(STEP)
    assert feed.ticks == 2  # and the loop goes on as before
    feed.stop()


def test_a_refresh_serves_the_last_profiles_up_to_two_periods_old() -> None:
    """While a refresh is under way the controller gets the last profiles if
    they are under two ``profile_every`` old; older (or none, or none warm),
    ``PROFILES_PENDING``.  ``stop`` ends a pass under way."""
    feed, clock = _feed(100)
    t0 = clock.seconds()
    feed.partition_profiles(t0)
    _turns(clock, feed)
    first = feed._profiles
    refresh = t0 + TRUST.profile_every
    assert feed.partition_profiles(refresh) is first  # a new pass started, the last one stands in
    assert feed._pass is not None
    _turns(clock, feed)
    assert feed.profiles_computed == 2
    late = refresh + 2 * TRUST.profile_every
    assert feed.partition_profiles(late) is PROFILES_PENDING
    feed.stop()
    assert feed._pass is None and not clock.getDelayedCalls()


def test_a_pending_decision_acts_on_the_present_alone() -> None:
    """The controller handed ``PROFILES_PENDING`` builds its view without
    forecasts or profiles (the reactive rule: forecasts without their
    profiles would shed unchecked) and counts it; the next decision, the
    pass over, gets the profiles."""
    rates = {"a": {("t", 0): 60.0, ("t", 1): 20.0}, "b": {("t", 2): 30.0, ("t", 3): 10.0}}
    gossip = RateGossip(rates)
    clock = task.Clock()
    clock.advance(1_000_000.0)
    fc = TrafficForecaster(ForecastConfig(bucket=STEP, seasons=(), warmup=3), horizon=60.0)
    feed = TrafficFeed(fc, clock, gossip, interval=STEP, earned=TRUST, profile_slice=1)
    plane = rate_plane(gossip, clock)
    plane.controller.forecasts = feed.partition_forecasts
    bind_earned_trust(plane.controller, feed)
    seen: list[list[PartitionLoad]] = []
    decide = plane.balancer.decide

    def spy(now: float, parts: list[PartitionLoad], *a: Any, **k: Any) -> Any:
        seen.append(list(parts))
        return decide(now, parts, *a, **k)

    plane.balancer.decide = spy  # type: ignore[method-assign,assignment]
    for _ in range(6):  # the model warms up
        feed.tick()
        clock.advance(STEP)
    while not seen:
        plane.controller.tick()
        clock.advance(0.1)
    assert plane.controller.profiles_pending == 1
    assert all(p.forecast is None and p.profile is None for p in seen[0])
    assert feed._pass is None  # the pass (four slices of one) ended on the turns since
    while len(seen) < 2:
        plane.controller.tick()
        clock.advance(0.1)
    assert plane.controller.profiles_pending == 1
    assert all(p.forecast is not None and p.profile is not None for p in seen[1])


def test_a_pass_that_fails_ends_and_the_waiting_sample_is_taken() -> None:
    """A pass whose forecast raises is logged and dropped (the next ask
    starts another), and a sample that waited for it is taken then: a bad
    series cannot stop the feed's sampling."""
    feed, clock = _feed(10, slice_=1)

    def broken(now: float, horizon: float, points: int, out: dict[Any, Any]) -> Iterator[None]:
        yield
        raise RuntimeError("a series that cannot be forecast")

    feed.forecaster.profile_steps = broken  # type: ignore[method-assign,assignment]
    assert feed.partition_profiles(clock.seconds()) is PROFILES_PENDING
    feed._tick()  # the loop's tick, due mid-pass: it waits
    assert feed.ticks == 0
    _turns(clock, feed)
    assert feed._pass is None and feed.profiles_computed == 0
    assert feed.ticks == 1
