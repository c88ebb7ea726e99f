"""What earned-trust balancing's profiles cost the controller's node (issue 18).

    PYTHONPATH=tests python -m benchmarks.earned_profiles [--partitions 1024 10000] [--repeat 5]
        [--stall] [--slices 8 32 128]

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

``--stall`` measures instead what one computation does to the reactor (the
real one, epoll): a lag probe (a ``LoopingCall`` every millisecond) records
the gaps between its runs while the profiles are computed three ways --
in one call on the reactor (as before trust35), in slices of N series per
reactor turn (:class:`~sprawl.forecast.feed.TrafficFeed`, each of
``--slices``), and in a thread (``deferToThread``, the result back on the
reactor; the thread holds the GIL as it computes) -- and prints per way the
most CPU the process spent between two probe runs (the stall a quiet machine
would see: on a loaded one the wall-clock gaps add the waits for a core), the
longest gap, the 99th percentile gap, the probe runs missed (a gap of 1 ms
is none), and the wall and CPU time to the result (``--repeat`` rounds,
each way in turn).
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from collections.abc import Callable
from functools import partial
from typing import Any

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


def _stall(partitions: list[int], slices: list[int], repeat: int) -> None:
    """``--stall``: the reactor's gaps while one computation runs, each way."""
    from twisted.internet import defer, task, threads
    from twisted.internet import reactor as the_reactor

    reactor: Any = the_reactor

    from sprawl.forecast.feed import TrafficFeed

    e = earned_trust(DAY)
    rows: list[str] = []

    @defer.inlineCallbacks
    def one(fc: TrafficForecaster, now: float, way: str) -> Any:
        gaps: list[float] = []
        gc_pauses: list[float] = []
        began = [0.0]

        def on_gc(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                began[0] = time.process_time()
            else:
                gc_pauses.append(time.process_time() - began[0])

        gc.callbacks.append(on_gc)
        cpu_gaps: list[float] = []
        last = [time.perf_counter(), time.process_time()]

        def probe() -> None:
            t, c = time.perf_counter(), time.process_time()
            gaps.append(t - last[0])
            cpu_gaps.append(c - last[1])
            last[:] = [t, c]

        loop = task.LoopingCall(probe)
        loop.start(0.001)
        yield task.deferLater(reactor, 0.05, lambda: None)  # the probe's own rhythm first
        del gaps[:], cpu_gaps[:], gc_pauses[:]
        w0, c0 = time.perf_counter(), time.process_time()
        if way == "one call":
            yield task.deferLater(reactor, 0, fc.partition_profiles, now, e.profile_horizon, e.profile_points)
        elif way == "thread":
            yield threads.deferToThread(fc.partition_profiles, now, e.profile_horizon, e.profile_points)
        else:
            feed = TrafficFeed(fc, reactor, None, earned=e, profile_slice=int(way.split()[0]))
            feed.partition_profiles(now)
            while feed._pass is not None:
                yield task.deferLater(reactor, 0.001, lambda: None)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        yield task.deferLater(reactor, 0.005, lambda: None)
        loop.stop()
        gc.callbacks.remove(on_gc)
        gaps.sort()
        p99 = gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))] if gaps else 0.0
        missed = sum(max(0, round(g / 0.001) - 1) for g in gaps)
        top_cpu = max(cpu_gaps, default=0.0)
        return (
            1000 * (gaps[-1] if gaps else 0.0),
            1000 * top_cpu,
            1000 * p99,
            missed,
            1000 * wall,
            1000 * cpu,
            1000 * max(gc_pauses, default=0.0),
        )

    @defer.inlineCallbacks
    def run() -> Any:
        ways = ["one call", *(f"{n} series" for n in slices), "thread"]
        try:
            for n in partitions:
                fc, now = _warm(n, random.Random(n))
                gc.collect()
                gc.freeze()  # as a node does after its full collections (sprawl.node.collector)
                best: dict[str, list[tuple[float, float, float, int, float, float, float]]] = {
                    w: [] for w in ways
                }
                for _ in range(repeat):
                    for w in ways:
                        best[w].append((yield one(fc, now, w)))
                for w in ways:
                    worst = max(r[0] for r in best[w])
                    worst_cpu = max(r[1] for r in best[w])
                    worst_gc = max(r[6] for r in best[w])
                    med = sorted(best[w])[len(best[w]) // 2]
                    rows.append(
                        f"| {n} | {w} | {worst_cpu:.1f} | {worst:.1f} | {med[0]:.1f} | {med[2]:.1f} | "
                        f"{med[3]} | {med[4]:.0f} | {med[5]:.0f} | {worst_gc:.1f} |"
                    )
        finally:
            reactor.stop()

    def start() -> None:
        run().addErrback(lambda f: print(f.getTraceback()))

    reactor.callWhenRunning(start)
    reactor.run()
    with open("/proc/loadavg") as f:
        print(f"load average at the end: {f.read().split()[0]}")
    print(
        "| partitions | way | most CPU between two probe runs, all rounds (ms) | longest gap, all rounds "
        "(ms) | longest gap, median round (ms) | p99 gap (ms) | probe runs missed | wall to result (ms) "
        "| CPU (ms) | longest GC collection (CPU ms) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


def main(argv: list[str] | None = None) -> int:
    """Print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--partitions", type=int, nargs="+", default=[1024, 10_000])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--stall", action="store_true", help="the reactor's gaps while profiles are computed")
    ap.add_argument("--slices", type=int, nargs="+", default=[8, 32, 128])
    a = ap.parse_args(argv)
    if a.stall:
        _stall(a.partitions, a.slices, a.repeat)
        return 0
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
