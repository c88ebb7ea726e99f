"""Rate traces for :func:`sprawl.forecast.replay.simulate`: synthetic and recorded.  Pure.

Synthetic traces are seeded (``random.Random``): the same seed gives the
same rates.  All of them run 12 partitions on 4 nodes, each partition
replicated on 3 consecutive nodes, and start with leaderships grouped so that
partitions peaking together share a leader (the placement a cluster has when
topics were made one after the other):

* :func:`daily`: three groups of partitions (think time zones) with a daily
  cycle each, peaking 8 hours apart, plus 5% noise;
* :func:`ramp`: steady partitions and a launch: one topic's partitions grow
  from 20 to 400 msgs/s over two hours, on top of a daily cycle;
* :func:`surges`: a daily cycle with unannounced surges (a partition at 4x
  for 5-20 minutes, a few times a day) and producers that go silent;
* :func:`hourly`: the daily trace's shape with a one-hour period (hours of
  simulation instead of days: the test's short run).

:func:`recorded` reads a CSV recorded from a real cluster
(``tests/benchmarks/forecast_record.py``).
"""

from __future__ import annotations

import csv
import math
import random
from bisect import bisect_right
from collections.abc import Iterable
from pathlib import Path

from sprawl.forecast.holtwinters import DAILY, HOURLY, ForecastConfig
from sprawl.forecast.replay import PartKey, Trace

DAY = 86400.0
HOUR = 3600.0
NODES = ("n0", "n1", "n2", "n3")
#: Partitions per zone of the zone traces.
PER_ZONE = 8


def _replicas(keys: list[PartKey], leaders: list[int]) -> dict[PartKey, tuple[str, ...]]:
    """Three consecutive nodes from each partition's first leader."""
    n = len(NODES)
    return {
        k: tuple(NODES[(first + j) % n] for j in range(3)) for k, first in zip(keys, leaders, strict=True)
    }


def _noise(seed: int, t: float, keys: Iterable[PartKey], sd: float) -> dict[PartKey, float]:
    rng = random.Random(seed * 1_000_003 + int(t * 1000))
    return {k: max(0.0, 1.0 + rng.gauss(0.0, sd)) for k in keys}


def _cycle(t: float, period: float, peak: float) -> float:
    """0..1, 1 at ``peak`` seconds into the period, a smooth hump."""
    x = math.cos(2 * math.pi * (t - peak) / period)
    return ((1 + x) / 2) ** 2


def _zones(period: float, seed: int, days: float, name: str) -> Trace:
    keys = [(f"z{z}", p) for z in range(3) for p in range(PER_ZONE)]
    # zone z's partitions are led by node z, but for the last two: by n3
    leaders = [z if p < PER_ZONE - 2 else 3 for z in range(3) for p in range(PER_ZONE)]
    peaks = {f"z{z}": (z * period / 3 + period * 0.4) % period for z in range(3)}
    base = {k: 15.0 + 4.0 * k[1] for k in keys}
    amp = {k: 50.0 + 8.0 * k[1] for k in keys}

    def rates(t: float) -> dict[PartKey, tuple[float, float]]:
        noise = _noise(seed, t, keys, 0.05)
        return {k: ((base[k] + amp[k] * _cycle(t, period, peaks[k[0]])) * noise[k], 0.0) for k in keys}

    season = DAILY if period == DAY else round(period / 60.0)
    return Trace(
        name,
        NODES,
        _replicas(keys, leaders),
        days * period,
        rates,
        ForecastConfig(bucket=60.0, seasons=(season,)),
    )


def daily(seed: int = 1, days: float = 3.0) -> Trace:
    """Three zones' daily cycles (see the module docstring)."""
    return _zones(DAY, seed, days, "daily")


def hourly(seed: int = 1, hours: float = 4.0) -> Trace:
    """The daily trace's shape with a one-hour period."""
    t = _zones(HOUR, seed, hours, "hourly")
    return Trace(
        t.name, t.nodes, t.replicas, t.seconds, t.rates, ForecastConfig(bucket=60.0, seasons=(HOURLY,))
    )


def ramp(seed: int = 2, days: float = 2.0, start: float = 30 * HOUR, length: float = 2 * HOUR) -> Trace:
    """Steady partitions, a daily cycle, and a launch that ramps up."""
    keys = (
        [("steady", p) for p in range(6)]
        + [("cycle", p) for p in range(3)]
        + [("launch", p) for p in range(3)]
    )
    leaders = [p % 4 for p in range(6)] + [1, 2, 3] + [0, 0, 0]

    def rates(t: float) -> dict[PartKey, tuple[float, float]]:
        noise = _noise(seed, t, keys, 0.05)
        grow = min(1.0, max(0.0, (t - start) / length))
        out = {}
        for k in keys:
            if k[0] == "steady":
                r = 120.0
            elif k[0] == "cycle":
                r = 40.0 + 160.0 * _cycle(t, DAY, 14 * HOUR)
            else:
                r = 20.0 + 380.0 * grow
            out[k] = (r * noise[k], 0.0)
        return out

    return Trace("ramp", NODES, _replicas(keys, leaders), days * DAY, rates, ForecastConfig(seasons=(DAILY,)))


def surges(seed: int = 3, days: float = 2.0, per_day: int = 6) -> Trace:
    """A daily cycle with unannounced surges and silences."""
    base = _zones(DAY, seed, days, "surges")
    keys = sorted(base.replicas)
    rng = random.Random(seed)
    events: list[tuple[float, float, PartKey, float]] = []
    for _ in range(int(per_day * days)):
        t0 = rng.uniform(0, days * DAY)
        factor = 4.0 if rng.random() < 0.8 else 0.0
        events.append((t0, t0 + rng.uniform(300, 1200), rng.choice(keys), factor))

    def rates(t: float) -> dict[PartKey, tuple[float, float]]:
        out = base.rates(t)
        for t0, t1, k, factor in events:
            if t0 <= t < t1:
                out[k] = (out[k][0] * factor, out[k][1] * factor)
        return out

    return Trace("surges", NODES, base.replicas, base.seconds, rates, base.forecast)


def recorded(path: str | Path, *, period: float = 600.0, bucket: float = 10.0) -> Trace:
    """A trace recorded by ``tests/benchmarks/forecast_record.py``: rows of
    ``t,topic,partition,leader,msgs_s,bytes_s``.  Each partition's rate holds
    from one row to its next (0 before its first); its first leader leads at
    the start, replicated on the next node of the recording's nodes (RF 2,
    as recorded).  The forecaster's season is ``period`` seconds in
    ``bucket``-second steps (the recording compresses a day into 600 s)."""
    rows: dict[PartKey, list[tuple[float, float, float]]] = {}
    first: dict[PartKey, str] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            k = (row["topic"], int(row["partition"]))
            t = float(row["t"])
            rows.setdefault(k, []).append((t, float(row["msgs_s"]), float(row["bytes_s"])))
            first.setdefault(k, row["leader"])
    nodes = tuple(sorted(set(first.values()) | {"node1", "node2", "node3"}))
    replicas: dict[PartKey, tuple[str, ...]] = {
        k: (ld, nodes[(nodes.index(ld) + 1) % len(nodes)]) for k, ld in first.items()
    }
    times = {k: [r[0] for r in v] for k, v in rows.items()}
    end = max(r[-1][0] for r in rows.values())

    def rates(t: float) -> dict[PartKey, tuple[float, float]]:
        out = {}
        for k, v in rows.items():
            i = bisect_right(times[k], t) - 1
            out[k] = (v[i][1], v[i][2]) if i >= 0 else (0.0, 0.0)
        return out

    season = max(2, round(period / bucket))
    return Trace(
        "recorded",
        nodes,
        replicas,
        end,
        rates,
        ForecastConfig(bucket=bucket, seasons=(season,), max_gap=max(30, season // 4)),
    )
