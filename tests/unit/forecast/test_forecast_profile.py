"""Long-horizon load profiles (sprawl.forecast.traffic.TrafficForecaster.partition_profiles):
the learnt season over the next hours, with the present's distance from the
model fading out instead of lasting the whole horizon."""

from __future__ import annotations

import math

import pytest

from sprawl.forecast.holtwinters import ForecastConfig
from sprawl.forecast.traffic import TrafficForecaster, partition_key

#: A 60-step season of 10 s buckets: one "day" is 600 s.
CFG = ForecastConfig(bucket=10.0, seasons=(60,), warmup=3)


def hump(t: float) -> float:
    """100 at the season's start, 300 at its middle."""
    return 200.0 - 100.0 * math.cos(2 * math.pi * t / 600.0)


def learnt(seasons: int = 3) -> tuple[TrafficForecaster, float]:
    fc = TrafficForecaster(CFG, horizon=30.0)
    t = 0.0
    while t < seasons * 600.0:
        fc.observe(t, partition_key("t", 0), hump(t), detect=False)
        t += 5.0
    return fc, t


def test_the_profile_follows_the_learnt_season() -> None:
    """At a season's start the profile over the next season rises to the middle and falls back."""
    fc, t = learnt()
    (row,) = fc.partition_profiles(t, 600.0, points=6).values()
    assert len(row) == 6
    for i, v in enumerate(row):
        assert v == pytest.approx(hump(t + 100.0 * (i + 1)), abs=25.0)
    assert row[2] == max(row)


def test_a_surge_now_fades_out_of_the_profile() -> None:
    """A partition at 3x its usual rate now: the first point still carries part of
    the surge (the anchor), points past twice the short horizon carry none of it."""
    fc, t = learnt()
    fc.observe(t, partition_key("t", 0), 3 * hump(t), detect=False)
    (row,) = fc.partition_profiles(t, 600.0, points=20).values()
    assert row[0] > hump(t + 30.0) + 50.0  # 30 s ahead: half the anchor left
    assert row[-1] == pytest.approx(hump(t + 600.0), abs=40.0)
    assert max(row[2:]) < 400.0  # the season's peak, not the surge's


def test_cold_series_and_bad_arguments() -> None:
    """No profile before a series is warm; points and horizon must be positive."""
    fc = TrafficForecaster(CFG)
    fc.observe(0.0, partition_key("t", 0), 10.0)
    assert fc.partition_profiles(5.0, 600.0) == {}
    with pytest.raises(ValueError):
        fc.partition_profiles(5.0, 600.0, points=0)
    with pytest.raises(ValueError):
        fc.partition_profiles(5.0, 0.0)


def surge_then(fc: TrafficForecaster, t: float, seconds: float, factor: float = 4.0) -> float:
    """``seconds`` of ``factor`` times the usual rate from ``t`` on; returns the time after."""
    end = t + seconds
    while t < end:
        fc.observe(t, partition_key("t", 0), factor * hump(t))
        t += 5.0
    return t


def test_the_surge_guard_caps_a_surge_and_keeps_it_out_of_the_season() -> None:
    """With ``surge_guard``: during a surge the balancer's forecast stays at the
    top expected when it began (off: the surge itself), and a season later
    there is no ghost of it (off: the ghost is forecast)."""
    out = {}
    for guard in (0.0, 3600.0):
        fc = TrafficForecaster(CFG, horizon=30.0, surge_guard=guard)
        t = 0.0
        while t < 200.0:  # the first season: its buckets are being seen for the first time
            fc.observe(t, partition_key("t", 0), hump(t))
            t += 5.0
        t = surge_then(fc, t, 120.0)
        during = fc.partition_forecasts(t)[("t", 0)]
        while t < 800.0:  # back to normal until a season after the surge began
            fc.observe(t, partition_key("t", 0), hump(t))
            t += 5.0
        band = fc.forecast(partition_key("t", 0), 860.0)
        assert band is not None
        out[guard] = (during, band.point)
    (off_during, off_ghost), (on_during, on_ghost) = out[0.0], out[3600.0]
    assert off_during > 2.5 * hump(320.0) and on_during < 1.5 * hump(320.0)
    assert off_ghost > 2 * hump(860.0) and on_ghost < 1.5 * hump(860.0), out


def test_the_path_over_the_horizon_and_its_highest_point() -> None:
    """partition_paths: the anchored forecast at evenly spaced times up to the
    horizon, rising here towards the season's middle; partition_forecasts is
    its highest point."""
    fc, t = learnt()
    t += 150.0  # a quarter into the season: rising
    fc.observe(t, partition_key("t", 0), hump(t), detect=False)
    (path,) = fc.partition_paths(t, 60.0, points=3).values()
    assert len(path) == 3 and path[0] < path[1] < path[2]
    for i, v in enumerate(path):
        assert v == pytest.approx(hump(t + 20.0 * (i + 1)), abs=25.0)
    assert fc.partition_forecasts(t, 60.0, points=3) == {("t", 0): max(path)}
