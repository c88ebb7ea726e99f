"""What earned-trust balancing's profiles cost the controller's node (issue 18).

    PYTHONPATH=tests python -m benchmarks.earned_profiles [--partitions 1024 10000] [--repeat 5]

With ``--earned-trust`` the controller gets each partition's profile over one
season (:meth:`~sprawl.forecast.traffic.TrafficForecaster.partition_profiles`,
24 points over a day at the node's default model: one-minute steps, daily
season), recomputed at most once a minute by the feed
(:meth:`~sprawl.forecast.feed.TrafficFeed.partition_profiles`).  For each
``--partitions`` count, a forecaster holding that many warm partition series
(``max_series`` raised to fit; the node's default keeps 1,024), it times on
this thread, in CPU seconds (best of ``--repeat``):

* one ``partition_profiles`` (once a minute with the option on);
* one ``partition_forecasts`` (every balancer decision, 10 s, option or not);

and prints the share of one core the profiles take at once a minute.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from functools import partial

from sprawl.forecast.earned import earned_trust
from sprawl.forecast.holtwinters import ForecastConfig
from sprawl.forecast.traffic import TrafficForecaster, partition_key

DAY = 86400.0


def _warm(n: int, rng: random.Random) -> tuple[TrafficForecaster, float]:
    fc = TrafficForecaster(ForecastConfig(), max_series=n, horizon=900.0, distrust=DAY)
    base = [rng.uniform(10, 500) for _ in range(n)]
    t = 1_000_000.0 * 60
    for _step in range(30):  # 30 one-minute steps: warm (past the model's warm-up)
        for p in range(n):
            fc.observe(
                t, partition_key(f"topic-{p % 64}", p), base[p] * (1 + rng.gauss(0, 0.05)), detect=False
            )
        t += 60.0
    return fc, t


def _cpu(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    """Print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--partitions", type=int, nargs="+", default=[1024, 10_000])
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args(argv)
    e = earned_trust(DAY)
    with open("/proc/loadavg") as f:
        print(f"load average: {f.read().split()[0]}")
    print(
        "| partitions | profiles (CPU ms) | rows | forecasts (CPU ms) | profiles' share of a core at 1/min |"
    )
    print("|---|---|---|---|---|")
    for n in a.partitions:
        fc, now = _warm(n, random.Random(n))
        rows = len(fc.partition_profiles(now, e.profile_horizon, e.profile_points))
        prof = _cpu(partial(fc.partition_profiles, now, e.profile_horizon, e.profile_points), a.repeat)
        fore = _cpu(partial(fc.partition_forecasts, now), a.repeat)
        share = prof / e.profile_every
        print(f"| {n} | {prof * 1000:.1f} | {rows} | {fore * 1000:.1f} | {share * 100:.3f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
