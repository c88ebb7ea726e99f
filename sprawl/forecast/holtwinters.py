"""An online, bounded Holt-Winters forecaster of one rate series.  Pure.

The model is additive Holt-Winters with a damped trend (ETS(A,Ad,A) in the
error-correction form) over fixed *steps* of ``bucket`` seconds, with any
number of additive seasonal components -- daily (1,440 one-minute buckets),
hourly (60), or both::

    forecast(h) = level + (phi + ... + phi^h) * trend + sum_i season_i[(k + h) mod m_i]
    e           = y - forecast(1)                    (y: the mean of the step's samples)
    level      += phi * trend + alpha * e
    trend       = phi * trend + beta * e
    season_i[k mod m_i] += gamma * e                 (the first time a bucket is seen:
                                                      (1 - alpha) * e, shared out)

Samples arrive every few seconds (the gossip samples every 5 s); they are
averaged into the open step, and the state moves when a sample of a later
step arrives.  Steps with no sample (a partition that dropped out of the
gossiped top 32, a node away) are skipped: the damped trend carries on and
the seasonal buckets stay as they are; after a gap longer than ``max_gap``
steps the level and trend start again from the next sample (the seasons are
kept).

Robustness: an error beyond ``clip`` standard deviations moves the state by
``clip`` deviations only, so a spike is not learnt as the new normal; a
lasting change still is, since the deviation estimate grows with it.

Prediction interval: ``point +- z * sigma_h`` with the one-step variance
``sigma^2`` (an exponentially weighted mean of squared errors) grown for
``h`` steps as for ETS(A,Ad,A) below one season::

    sigma_h^2 = sigma^2 * (1 + sum_{j=1}^{h-1} (alpha + beta * (phi + ... + phi^j))^2)

Samples are compared with the open step's forecast using their own
deviation (samples are noisier than step means): :meth:`Series.expect`.

Memory is bounded per series: the seasonal buckets are ``float32`` arrays
(NaN marks a bucket never seen), so the daily season costs 1,440 x 4 =
5,760 bytes and the state with its Python objects about 6.3 KB
(:func:`series_bytes` reports it; ``tests/unit/forecast/test_forecast_model.py`` checks it).
"""

from __future__ import annotations

import functools
import math
import sys
from array import array
from dataclasses import dataclass
from typing import NamedTuple

#: One day and one hour in one-minute buckets.
DAILY = 1440
HOURLY = 60


@dataclass(frozen=True)
class ForecastConfig:
    """The model's tuning; the defaults suit rates sampled every 5-10 s."""

    #: Seconds per step (and per seasonal bucket).
    bucket: float = 60.0
    #: Season lengths in steps: ``(1440,)`` daily at one minute, ``(60,)``
    #: hourly, ``(1440, 60)`` both, ``()`` none (level and trend only).
    seasons: tuple[int, ...] = (DAILY,)
    #: Level smoothing.
    alpha: float = 0.3
    #: Trend smoothing (error-correction form: the trend moves by ``beta * e``).
    beta: float = 0.1
    #: Trend damping per step (1: not damped).
    phi: float = 0.95
    #: Seasonal smoothing.
    gamma: float = 0.25
    #: Half-width of the prediction interval in standard deviations (2.58: 99%).
    z: float = 2.58
    #: Weight of each new squared error in the variance estimates.
    error_weight: float = 0.05
    #: Errors beyond this many standard deviations move the state this far only.
    clip: float = 4.0
    #: The smallest standard deviation assumed (units/s): rates are counts.
    noise_floor: float = 1.0
    #: Steps seen before the series forecasts (``None`` until then).
    warmup: int = 5
    #: A gap of more steps than this restarts the level and trend.
    max_gap: int = 30
    #: :meth:`Series.forecast` answers None until this many whole longest
    #: seasons have passed since the series' first sample (0: from ``warmup``
    #: on; before a full season the forecast is level and trend only).
    #: Anomaly detection (:meth:`Series.expect`) is not affected.
    first_seasons: int = 0
    #: A seasonal bucket counts in :meth:`Series.forecast` only once its
    #: time of the season has passed at least this many times since the
    #: series' first sample (2: a recurring pattern, not a one-off learnt
    #: into the season once).  The model learns every bucket regardless;
    #: :meth:`Series.expect` uses every learnt bucket.
    recur: int = 1

    def __post_init__(self) -> None:
        if (
            self.bucket <= 0
            or any(m < 2 for m in self.seasons)
            or len(set(self.seasons)) != len(self.seasons)
        ):
            raise ValueError("need bucket > 0 and distinct season lengths >= 2")
        for name in ("alpha", "beta", "gamma", "error_weight"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if not 0.0 < self.phi <= 1.0 or self.z <= 0 or self.clip <= 0 or self.noise_floor < 0:
            raise ValueError("need 0 < phi <= 1, z > 0, clip > 0, noise_floor >= 0")
        if self.warmup < 1 or self.max_gap < 1:
            raise ValueError("need warmup >= 1 and max_gap >= 1")
        if self.first_seasons < 0 or self.recur < 1:
            raise ValueError("need first_seasons >= 0 and recur >= 1")


class Band(NamedTuple):
    """A forecast with its prediction interval (units/s, never below 0)."""

    point: float
    low: float
    high: float


def _phi_sum(phi: float, h: int) -> float:
    """phi + phi^2 + ... + phi^h."""
    if h <= 0:
        return 0.0
    if phi == 1.0:
        return float(h)
    return phi * (1.0 - phi**h) / (1.0 - phi)


@functools.lru_cache(maxsize=4096)
def _spread(alpha: float, beta: float, phi: float, h: int) -> float:
    """sigma_h / sigma for ``h`` steps ahead (cached: the same few horizons are
    asked of every series at every balancing decision)."""
    tot = 1.0
    for j in range(1, h):
        tot += (alpha + beta * _phi_sum(phi, j)) ** 2
    return math.sqrt(tot)


class Series:
    """The model of one series (see the module docstring)."""

    __slots__ = (
        "_base_weight",
        "_hold",
        "_n",
        "_sum",
        "base",
        "config",
        "first",
        "level",
        "sample_var",
        "samples",
        "seasons",
        "step",
        "steps_seen",
        "trend",
        "var",
    )

    def __init__(self, config: ForecastConfig | None = None) -> None:
        self.config = config or ForecastConfig()
        #: None until the first step closes (and after a long gap).
        self.level: float | None = None
        self.trend = 0.0
        #: The slow baseline the seasons are measured from (a mean over about
        #: the longest season); None before the first step.
        self.base: float | None = None
        self._base_weight = 1.0 / max((*self.config.seasons, 60))
        nan = float("nan")
        self.seasons: tuple[array[float], ...] = tuple(array("f", [nan]) * m for m in self.config.seasons)
        #: Variance of step means around the one-step forecast, and of samples.
        self.var = 0.0
        self.sample_var = 0.0
        #: Samples compared with a forecast (weights the first variance estimates).
        self.samples = 0
        #: Index (``floor(t / bucket)``) of the open step; None before the first sample.
        self.step: int | None = None
        #: Index of the step of the first sample (the seasons' age is counted from it).
        self.first: int | None = None
        self._sum = 0.0
        self._n = 0
        #: The open step had a sample not to learn the seasons from.
        self._hold = False
        #: Steps closed since the last restart of the level.
        self.steps_seen = 0

    # -- reading ---------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether the series has seen ``warmup`` steps and forecasts."""
        return self.level is not None and self.steps_seen >= self.config.warmup

    def _season(self, k: int, recur: int = 1) -> float:
        """The seasonal term of step ``k``: every learnt bucket, or with
        ``recur`` > 1 only those whose time has passed ``recur`` times."""
        s = 0.0
        for arr in self.seasons:
            v = arr[k % len(arr)]
            if v == v and (recur <= 1 or self._passed(k, len(arr)) >= recur):  # not NaN: seen
                s += v
        return s

    def _passed(self, k: int, m: int) -> int:
        """How many times step ``k``'s time of an ``m``-step season has passed
        from the first step up to the last closed one."""
        if self.first is None or self.step is None:
            return 0
        last = self.step - 1 if self._n else self.step
        s0 = last - (last - k) % m  # the latest step <= last with s0 = k (mod m)
        return 0 if s0 < self.first else (s0 - self.first) // m + 1

    def seasons_passed(self) -> int:
        """Whole longest seasons passed since the first sample (0 without seasons)."""
        if self.first is None or self.step is None or not self.seasons:
            return 0
        last = self.step - 1 if self._n else self.step
        return (last - self.first + 1) // max(len(a) for a in self.seasons)

    def _point(self, h: int, recur: int = 1) -> float:
        """Forecast ``h >= 1`` steps past the last closed step."""
        assert self.level is not None and self.step is not None
        last = self.step - 1 if self._n else self.step
        return self.level + _phi_sum(self.config.phi, h) * self.trend + self._season(last + h, recur)

    def _spread(self, h: int) -> float:
        """sigma_h / sigma for ``h`` steps ahead."""
        c = self.config
        return _spread(c.alpha, c.beta, c.phi, h)

    def _sigma(self, var: float) -> float:
        return max(math.sqrt(var), self.config.noise_floor)

    def _band(self, t: float, var: float, recur: int = 1) -> Band | None:
        """The forecast for ``t`` with an interval from the variance ``var``."""
        if not self.ready or self.step is None:
            return None
        c = self.config
        last = self.step - 1 if self._n else self.step
        h = max(1, math.floor(t / c.bucket) - last)
        point = self._point(h, recur)
        half = c.z * self._sigma(var) * self._spread(h)
        return Band(max(0.0, point), max(0.0, point - half), max(0.0, point + half))

    def forecast(self, t: float) -> Band | None:
        """The forecast for time ``t`` (at or after the last sample), or None
        before ``warmup`` steps (and ``first_seasons`` whole seasons) were seen;
        seasonal buckets count from ``recur`` passes on."""
        if self.seasons_passed() < self.config.first_seasons:
            return None
        return self._band(t, self.var, self.config.recur)

    def expect(self, t: float) -> Band | None:
        """What a single *sample* at ``t`` should be: the forecast of its step
        with the samples' deviation (for anomaly detection)."""
        return self._band(t, self.sample_var)

    # -- learning ----------------------------------------------------------------

    def observe(self, t: float, y: float, *, seasonal: bool = True) -> None:
        """One sample ``y`` (units/s, negative and non-finite ones are ignored)
        taken at ``t`` (seconds); samples older than the open step are ignored.
        ``seasonal`` False: the step this sample falls in does not teach the
        seasons (an anomaly under way: a surge learnt into the daily season
        would come back as a ghost surge the next day); the level and trend
        still learn it."""
        if not math.isfinite(y) or not math.isfinite(t) or y < 0:
            return
        c = self.config
        k = math.floor(t / c.bucket)
        if self.step is not None and k < self.step:
            return
        if self.level is not None and self.step is not None:
            last = self.step - 1 if self._n else self.step
            err = y - self._point(max(1, k - last))
            w = max(c.error_weight, 1.0 / (self.samples + 1))
            self.sample_var = (1 - w) * self.sample_var + w * min(err * err, self._clip_sq(self.sample_var))
            self.samples += 1
        if self.step is None:
            self.step = self.first = k
        elif k > self.step:
            if self._n:
                self._close(self._sum / self._n)
            self._skip(k - self.step - 1)
            self.step = k
            self._sum = 0.0
            self._n = 0
            self._hold = False
        self._sum += y
        self._n += 1
        self._hold = self._hold or not seasonal

    def _clip_sq(self, var: float) -> float:
        lim = self.config.clip * self._sigma(var)
        return lim * lim

    def _skip(self, gap: int) -> None:
        """Carry the state over ``gap`` steps without a sample."""
        if gap <= 0 or self.level is None:
            return
        c = self.config
        if gap > c.max_gap:
            self.level = None
            self.trend = 0.0
            self.steps_seen = 0
            return
        self.level += _phi_sum(c.phi, gap) * self.trend
        self.trend *= c.phi**gap

    def _close(self, y: float) -> None:
        """The open step ended with mean ``y``: update the state."""
        c = self.config
        k = self.step
        assert k is not None
        if self.level is None:
            self.level = y - self._season(k)
            self.trend = 0.0
            if self.base is None:
                self.base = self.level
            self.steps_seen = 1
            return
        assert self.base is not None
        pred = self.level + c.phi * self.trend + self._season(k)
        err = y - pred
        lim = c.clip * self._sigma(self.var) if self.steps_seen >= c.warmup else math.inf
        e = max(-lim, min(lim, err))
        w = (
            c.error_weight
            if self.steps_seen >= c.warmup
            else max(c.error_weight, 1.0 / (self.steps_seen + 1))
        )
        self.var = (1 - w) * self.var + w * e * e
        self.level += c.phi * self.trend + c.alpha * e
        self.trend = c.phi * self.trend + c.beta * e
        # The seasons learn against the slow baseline, not the fast level
        # (which follows whatever the seasons do not explain yet).
        self.steps_seen += 1
        if self._hold:
            return  # an anomalous step: neither the baseline nor the seasons learn it
        deseason = y - self._season(k)
        self.base += self._base_weight * max(-lim, min(lim, deseason - self.base))
        for arr in self.seasons:
            i = k % len(arr)
            v = arr[i]
            others = self._season(k) - (0.0 if v != v else v)
            target = y - self.base - others
            if v != v:
                arr[i] = target
            else:
                arr[i] = v + c.gamma * max(-lim, min(lim, target - v))


def series_bytes(s: Series) -> int:
    """Bytes one series holds (its object, its arrays, their tuple)."""
    return (
        sys.getsizeof(s)
        + sys.getsizeof(s.seasons)
        + sum(sys.getsizeof(a) for a in s.seasons)
        + sum(sys.getsizeof(x) for x in (s.level, s.trend, s.base, s.var, s.sample_var, s.step, s._sum, s._n))
    )
