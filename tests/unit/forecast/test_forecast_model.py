"""The online Holt-Winters model (sprawl.forecast.holtwinters): seasons, trend,
interval, robustness, bad input and its memory bound."""

from __future__ import annotations

import math
import random

import pytest

from sprawl.forecast.holtwinters import DAILY, ForecastConfig, Series, series_bytes

HOURLY_CFG = ForecastConfig(bucket=60.0, seasons=(60,))


def wave(t: float) -> float:
    """100 +- 60 msgs/s over an hour."""
    return 100.0 + 60.0 * math.sin(2 * math.pi * t / 3600.0)


def feed(
    s: Series, fn, start: float, end: float, step: float = 5.0, noise: float = 0.0, seed: int = 1
) -> None:
    rng = random.Random(seed)
    t = start
    while t < end:
        s.observe(t, max(0.0, fn(t) * (1 + rng.gauss(0, noise))))
        t += step


def test_not_ready_before_warmup() -> None:
    """No forecast before ``warmup`` steps closed."""
    s = Series(HOURLY_CFG)
    assert s.forecast(0.0) is None
    feed(s, lambda t: 50.0, 0, 4 * 60)
    assert s.forecast(300.0) is None
    feed(s, lambda t: 50.0, 4 * 60, 8 * 60)
    assert s.forecast(600.0) is not None


def test_learns_the_season_and_forecasts_ahead() -> None:
    """After three cycles, the forecast 10 minutes ahead follows the wave (within 10%)
    and the true rate lies inside the interval; a flat model would be far off."""
    s = Series(HOURLY_CFG)
    feed(s, wave, 0, 3 * 3600, noise=0.03)
    now = 3 * 3600.0
    for ahead in (300.0, 600.0, 900.0):
        band = s.forecast(now + ahead)
        assert band is not None
        truth = wave(now + ahead)
        assert abs(band.point - truth) / truth < 0.1, (ahead, band, truth)
        assert band.low <= truth <= band.high
    # the season itself, not the level: 15 minutes on, the rate is at the top of the wave
    assert s.forecast(now + 900.0).point > s.forecast(now + 60.0).point + 40  # type: ignore[union-attr]


def test_follows_a_trend() -> None:
    """A ramp of 1 msg/s per minute: the forecast 5 minutes ahead is above the present."""
    s = Series(ForecastConfig(bucket=60.0, seasons=(), phi=1.0))
    feed(s, lambda t: 20.0 + t / 60.0, 0, 3600)
    band = s.forecast(3600.0 + 300.0)
    assert band is not None
    assert band.point == pytest.approx(20.0 + 65.0, rel=0.05)


def test_interval_widens_with_the_horizon_and_with_noise() -> None:
    """Further ahead is less certain; a noisier series has a wider interval."""
    calm, noisy = Series(HOURLY_CFG), Series(HOURLY_CFG)
    feed(calm, lambda t: 100.0, 0, 7200, noise=0.02)
    feed(noisy, lambda t: 100.0, 0, 7200, noise=0.3)
    near, far = calm.forecast(7200 + 60.0), calm.forecast(7200 + 1800.0)
    assert near is not None and far is not None
    assert far.high - far.low > near.high - near.low
    wide = noisy.forecast(7200 + 60.0)
    assert wide is not None and wide.high - wide.low > 2 * (near.high - near.low)


def test_a_spike_is_not_learnt_as_the_new_normal() -> None:
    """One minute at 20x moves the forecast by a bounded amount (errors are clipped)."""
    s = Series(HOURLY_CFG)
    feed(s, lambda t: 100.0, 0, 7200, noise=0.02)
    feed(s, lambda t: 2000.0, 7200, 7260)
    feed(s, lambda t: 100.0, 7260, 7320, noise=0.02)
    band = s.forecast(7400.0)
    assert band is not None and band.point < 200.0


def test_bad_samples_are_ignored() -> None:
    """NaN, infinite, negative values and samples older than the open step change nothing."""
    s = Series(HOURLY_CFG)
    feed(s, lambda t: 100.0, 0, 1200)
    before = s.forecast(1300.0)
    for t, y in ((1200.0, math.nan), (1200.0, math.inf), (1200.0, -5.0), (math.nan, 1.0), (10.0, 1e9)):
        s.observe(t, y)
    assert s.forecast(1300.0) == before


def test_a_long_gap_restarts_the_level_but_keeps_the_seasons() -> None:
    """Past ``max_gap`` steps without samples the level starts again (no stale trend)."""
    s = Series(ForecastConfig(bucket=60.0, seasons=(60,), max_gap=5))
    feed(s, lambda t: 100.0, 0, 3600)
    feed(s, lambda t: 10.0, 3600 + 3600, 3600 + 3600 + 600)
    band = s.forecast(7800.0)
    assert band is not None and band.point < 40.0


def test_config_is_validated() -> None:
    """Nonsense tuning is refused with a clear error."""
    for bad in (
        {"bucket": 0},
        {"seasons": (1,)},
        {"alpha": 2.0},
        {"phi": 0.0},
        {"warmup": 0},
        {"seasons": (60, 60)},
    ):
        with pytest.raises(ValueError):
            ForecastConfig(**bad)  # type: ignore[arg-type]


def test_memory_per_series_is_bounded() -> None:
    """A series with the daily season holds at most ~7 KB, however long it runs."""
    s = Series(ForecastConfig(seasons=(DAILY,)))
    feed(s, wave, 0, 2 * 86400, step=60.0)
    assert series_bytes(s) < 7000


def test_a_step_marked_not_seasonal_does_not_teach_the_seasons() -> None:
    """A 15-minute 4x surge in the first hour, marked ``seasonal=False`` (an
    anomaly under way), is not forecast again an hour (a season) later; the
    same surge learnt into the season comes back as a ghost surge."""

    def surge(t: float) -> float:
        return 4.0 * wave(t) if 1200.0 <= t % 3600.0 < 2100.0 and t < 3600.0 else wave(t)

    learnt, held = Series(HOURLY_CFG), Series(HOURLY_CFG)
    t = 0.0
    while t < 3000.0:  # the first hour up to after the surge
        y = surge(t)
        learnt.observe(t, y)
        held.observe(t, y, seasonal=not 1200.0 <= t < 2100.0)
        t += 5.0
    feed(learnt, wave, 3000.0, 3600.0 + 1000.0)
    feed(held, wave, 3000.0, 3600.0 + 1000.0)
    at = 3600.0 + 1500.0  # the surge's minute, one season later
    a, b = learnt.forecast(at), held.forecast(at)
    assert a is not None and b is not None
    assert a.point > 2 * wave(at)  # the ghost
    assert b.point == pytest.approx(wave(at), rel=0.25)


def test_first_seasons_withholds_the_forecast_until_a_whole_season_passed() -> None:
    """``first_seasons=1``: no forecast during the first season (anomaly
    detection's ``expect`` still answers), one as soon as a season has passed."""
    s = Series(ForecastConfig(bucket=60.0, seasons=(60,), first_seasons=1))
    feed(s, wave, 0, 3540.0)  # 59 steps: the season is not complete
    assert s.seasons_passed() == 0
    assert s.forecast(3600.0) is None
    assert s.expect(3540.0) is not None
    feed(s, wave, 3540.0, 3605.0)  # the 60th step closes
    assert s.seasons_passed() == 1
    assert s.forecast(3700.0) is not None


def test_recur_drops_a_bucket_learnt_in_one_season_only() -> None:
    """``recur=2``: a surge learnt into the season in the first hour is not
    forecast a season later (its time has passed once), nor is the rest of the
    season: the forecast is level and trend; a season later still, the wave
    (passed twice) is forecast again; ``recur=1`` forecasts the ghost."""

    def surge(t: float) -> float:
        return 4.0 * wave(t) if 1200.0 <= t < 2100.0 else wave(t)

    once, twice = Series(HOURLY_CFG), Series(ForecastConfig(bucket=60.0, seasons=(60,), recur=2))
    for s in (once, twice):
        feed(s, surge, 0.0, 3600.0 + 1000.0)
    at = 3600.0 + 1500.0  # the surge's minute, one season later
    a, b = once.forecast(at), twice.forecast(at)
    assert a is not None and b is not None
    assert a.point > 2 * wave(at)  # the ghost
    assert b.point < 1.5 * wave(at)
    # level and trend only: the same for every minute ahead with phi's damping aside
    b2 = twice.forecast(3600.0 + 1100.0)
    assert b2 is not None and abs(b.point - b2.point) < 10.0
    # two whole seasons passed: every bucket counts again, as with recur=1
    for s in (once, twice):
        feed(s, wave, 3600.0 + 1000.0, 2 * 3600.0 + 300.0)
    at = 2 * 3600.0 + 900.0
    assert twice.forecast(at) == once.forecast(at)


def test_passed_counts_the_times_a_time_of_season_went_by() -> None:
    """The count behind ``recur``: from the first step up to the last closed one."""
    s = Series(ForecastConfig(bucket=60.0, seasons=(10,)))
    for k in range(3, 26):  # steps 3..25 sampled; 24 closed (25 open)
        s.observe(k * 60.0, 1.0)
    assert s._passed(26, 10) == 2  # steps 6 and 16 (26 not yet)
    assert s._passed(24, 10) == 3  # 4, 14, 24
    assert s._passed(32, 10) == 2  # 12, 22 (2 before the first step)
    assert s.seasons_passed() == 2
