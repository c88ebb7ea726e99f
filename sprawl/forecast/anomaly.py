"""Anomalies: a rate outside its prediction interval, debounced.  Pure.

Each sample of a series is compared with what the model expected for it
(:meth:`sprawl.forecast.holtwinters.Series.expect`).  A sample is *out*
when it is outside the interval AND differs from the expected rate by at
least ``min_delta`` units/s and ``min_ratio`` of it (a rate of 2 msgs/s
where 0.5 were expected is not news).  An event opens after ``enter``
consecutive out samples on the same side, and closes after ``leave``
consecutive samples back in (or on the other side, which closes it and may
open the opposite event), so one spike, however jagged, is one event:

* ``surge``: above the interval;
* ``drop``: below it;
* ``silent``: below it at (almost) nothing -- at most ``silence`` of the
  expected rate: a producer that went away.

The adapter logs the event when it opens and when it closes
(:data:`LOG_OPEN`, :data:`LOG_CLOSE`: constant format strings) and counts it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sprawl.forecast.holtwinters import Band

SURGE = "surge"
DROP = "drop"
SILENT = "silent"

#: twisted.logger format strings for :meth:`Anomaly.log_fields`.
LOG_OPEN = "traffic anomaly: {kind} on {series} at {observed} units/s, expected {expected} ({low}-{high})"
LOG_CLOSE = "traffic anomaly over: {kind} on {series} lasted {seconds}s (peak {peak} units/s)"


@dataclass(frozen=True)
class AnomalyConfig:
    """Debouncing and the smallest deviations that count."""

    #: Consecutive out samples that open an event.
    enter: int = 2
    #: Consecutive in samples that close it.
    leave: int = 3
    #: A deviation smaller than this (units/s) is never out.
    min_delta: float = 5.0
    #: ... nor one smaller than this share of the expected rate.
    min_ratio: float = 0.3
    #: Below the interval at most this share of the expected rate is ``silent``.
    silence: float = 0.05

    def __post_init__(self) -> None:
        if self.enter < 1 or self.leave < 1 or self.min_delta < 0 or self.min_ratio < 0:
            raise ValueError("need enter >= 1, leave >= 1, min_delta >= 0, min_ratio >= 0")


@dataclass
class Anomaly:
    """One event on one series."""

    series: str
    kind: str
    start: float
    #: The first sample that was out, and what was expected then.
    observed: float
    expected: Band
    #: Furthest from the expected rate so far (highest for a surge, lowest otherwise).
    peak: float
    #: None while the event lasts.
    end: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "series": self.series,
            "kind": self.kind,
            "start": round(self.start, 3),
            "end": None if self.end is None else round(self.end, 3),
            "observed": round(self.observed, 3),
            "expected": round(self.expected.point, 3),
            "low": round(self.expected.low, 3),
            "high": round(self.expected.high, 3),
            "peak": round(self.peak, 3),
        }

    def log_fields(self) -> dict[str, Any]:
        """Keyword arguments for :data:`LOG_OPEN` / :data:`LOG_CLOSE`."""
        d = self.as_dict()
        d["seconds"] = None if self.end is None else round(self.end - self.start, 1)
        return d


@dataclass
class AnomalyDetector:
    """The debouncing state of one series."""

    series: str
    config: AnomalyConfig = field(default_factory=AnomalyConfig)
    #: The event under way, if any.
    open: Anomaly | None = None
    #: The run of out samples not (yet) an event: (side, count, t, y, band).
    _run: tuple[int, int, float, float, Band] | None = None
    #: Consecutive samples back in while an event is open.
    _in: int = 0

    @property
    def unusual(self) -> bool:
        """Whether the last sample was out of its interval or an event is
        open (the model does not learn its seasons from such samples)."""
        return self.open is not None

    def _outside(self, y: float, band: Band) -> int:
        c = self.config
        gap = max(c.min_delta, c.min_ratio * band.point)
        if y > band.high and y - band.point >= gap:
            return 1
        if y < band.low and band.point - y >= gap:
            return -1
        return 0

    def sample(self, t: float, y: float, band: Band | None) -> list[Anomaly]:
        """Feed one sample with what was expected (None: no forecast yet, the
        sample counts as in).  Returns the events that closed and opened on
        it (at most one of each, the closed one first)."""
        side = 0 if band is None else self._outside(y, band)
        out: list[Anomaly] = []
        ev = self.open
        if ev is not None:
            if side == (1 if ev.kind == SURGE else -1):
                self._in = 0
                ev.peak = max(ev.peak, y) if ev.kind == SURGE else min(ev.peak, y)
                return out
            if side == 0:
                self._in += 1
                if self._in < self.config.leave:
                    return out
            ev.end = t
            self.open = None
            self._in = 0
            out.append(ev)
        if side == 0 or band is None:
            self._run = None
            return out
        run = self._run
        if run is None or run[0] != side:
            run = (side, 1, t, y, band)
        else:
            run = (side, run[1] + 1, run[2], run[3], run[4])
        self._run = run
        if run[1] >= self.config.enter:
            _, _, t0, y0, b0 = run
            kind = SURGE if side > 0 else (SILENT if y <= self.config.silence * b0.point else DROP)
            peak = max(y0, y) if side > 0 else min(y0, y)
            self.open = Anomaly(self.series, kind, t0, y0, b0, peak)
            self._run = None
            out.append(self.open)
        return out
