"""The forecast's trust (sprawl.forecast.traffic.TrafficForecaster(distrust=...)):
after the model was grossly wrong about a partition -- a sudden surge or a
producer gone silent -- the balancer gets no forecast for a while, so it runs
the reactive rule alone; ordinary misses (a rise a little out of the interval)
do not cost the trust."""

from __future__ import annotations

import itertools
import math

from sprawl.forecast.holtwinters import ForecastConfig
from sprawl.forecast.traffic import TrafficForecaster, partition_key

#: A 60-step season of 10 s buckets: one "day" is 600 s.
CFG = ForecastConfig(bucket=10.0, seasons=(60,), warmup=3)


def hump(t: float) -> float:
    """100 at the season's start, 300 at its middle."""
    return 200.0 - 100.0 * math.cos(2 * math.pi * t / 600.0)


def fed(distrust: float, until: float = 1800.0) -> tuple[TrafficForecaster, float]:
    """Two partitions, three seasons of the hump learnt."""
    fc = TrafficForecaster(CFG, horizon=30.0, distrust=distrust)
    t = 0.0
    while t < until:
        for p in (0, 1):
            fc.observe(t, partition_key("t", p), hump(t))
        t += 5.0
    return fc, t


def run(fc: TrafficForecaster, t: float, seconds: float, rate: dict[int, float]) -> float:
    """``seconds`` with partition p at ``rate[p]`` times the hump; returns the time after."""
    end = t + seconds
    while t < end:
        for p in (0, 1):
            fc.observe(t, partition_key("t", p), rate.get(p, 1.0) * hump(t))
        t += 5.0
    return t


def test_a_sudden_surge_withdraws_every_forecast_for_the_distrust_window() -> None:
    """A 4x surge on one partition: no forecast for either partition (paths,
    forecasts and profiles) until ``distrust`` seconds after it began, then
    both are back; with ``distrust`` 0 nothing is withdrawn."""
    fc, t = fed(distrust=300.0)
    assert fc.trusted(t) and set(fc.partition_forecasts(t)) == {("t", 0), ("t", 1)}
    began = t
    t = run(fc, t, 60.0, {0: 4.0})
    assert fc.surprised_at >= began and not fc.trusted(t)
    assert fc.partition_forecasts(t) == {} and fc.partition_paths(t) == {}
    assert fc.partition_profiles(t, 600.0) == {}
    t = run(fc, t, 300.0, {})
    assert fc.trusted(t) and set(fc.partition_forecasts(t)) == {("t", 0), ("t", 1)}
    off, t = fed(distrust=0.0)
    t = run(off, t, 60.0, {0: 4.0})
    assert off.trusted(t) and set(off.partition_forecasts(t)) == {("t", 0), ("t", 1)}


def test_a_producer_gone_silent_is_a_surprise_too() -> None:
    """A partition dropping to 0 withdraws the forecasts as well."""
    fc, t = fed(distrust=300.0)
    t = run(fc, t, 60.0, {1: 0.0})
    assert not fc.trusted(t) and fc.partition_forecasts(t) == {}


def test_a_rise_a_little_out_of_the_interval_keeps_the_trust() -> None:
    """A partition at 1.5x its usual rate is an anomaly but no surprise: the
    forecasts stay (the hourly trace's model misses by that much all the time)."""
    fc, t = fed(distrust=300.0)
    opened = sum(fc.anomalies_total.values())
    t = run(fc, t, 60.0, {0: 1.5})
    assert sum(fc.anomalies_total.values()) > opened  # it is an anomaly
    assert fc.trusted(t) and fc.surprised_at == -math.inf
    assert set(fc.partition_forecasts(t)) == {("t", 0), ("t", 1)}


def test_distrust_per_partition_withholds_only_the_surprised_partition() -> None:
    """``distrust_partition=True`` (an option, off; docs/benchmarks.md trust39):
    a 4x surge on partition 0 withholds partition 0's forecast (paths,
    forecasts, profiles) but not partition 1's, for ``distrust`` seconds
    after the surge's event *closed* (not after it opened): still withheld
    290 s after the close, back 300 s after it."""
    fc = TrafficForecaster(CFG, horizon=30.0, distrust=300.0, distrust_partition=True)
    t = 0.0
    t = run(fc, t, 1800.0, {})
    began = t
    t = run(fc, t, 120.0, {0: 4.0})
    assert fc.trusted(t)
    assert set(fc.partition_forecasts(t)) == {("t", 1)} and set(fc.partition_paths(t)) == {("t", 1)}
    assert set(fc.partition_profiles(t, 600.0)) == {("t", 1)}
    t = run(fc, t, 90.0, {})  # the surge is over (its event closed once the model took it in)
    tr = fc._series[partition_key("t", 0)]
    assert not tr.surprising and began + 60.0 < tr.surprised < t  # from the close, not the open
    closed = tr.surprised
    t = run(fc, t, closed + 290.0 - t, {})
    assert set(fc.partition_forecasts(t)) == {("t", 1)}
    t = run(fc, t, closed + 300.0 - t, {})
    assert set(fc.partition_forecasts(t)) == {("t", 0), ("t", 1)}


def test_distrust_per_partition_keeps_the_surprised_partitions_profile() -> None:
    """Earned trust's form since trust40 (``distrust_profiles=False``): after
    a 4x surge on partition 0 its short forecasts (paths, forecasts) stay
    withheld for the distrust, but its profile reaches the balancer: the
    model's seasonal shape, the hump partition 1 has too (withheld, the
    balancer would take the partition's present load as its load at every
    point of the season: its cycle flattened).  With ``distrust_profiles``
    (trust39's form) the profile is withheld too."""
    for keep in (True, False):
        fc = TrafficForecaster(
            CFG, horizon=30.0, distrust=300.0, distrust_partition=True, distrust_profiles=not keep
        )
        t = run(fc, 0.0, 1800.0, {})
        t = run(fc, t, 120.0, {0: 4.0})
        t = run(fc, t, 120.0, {})  # the surge is over; the distrust is not
        assert set(fc.partition_paths(t)) == {("t", 1)}
        assert set(fc.partition_forecasts(t)) == {("t", 1)}
        profiles = fc.partition_profiles(t, 600.0, points=6)
        if not keep:
            assert set(profiles) == {("t", 1)}
            continue
        assert set(profiles) == {("t", 0), ("t", 1)}
        # the hump over the season (not flat at the present load), rising and
        # falling where partition 1's does (its level still low after the surge)
        ours, other = profiles[("t", 0)], profiles[("t", 1)]
        assert max(ours) - min(ours) > 100.0
        assert [b > a for a, b in itertools.pairwise(ours)] == [b > a for a, b in itertools.pairwise(other)]
