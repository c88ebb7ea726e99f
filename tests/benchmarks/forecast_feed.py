"""What the forecaster costs a node's reactor thread: the table of docs/benchmarks.md.

    PYTHONPATH=tests python -m benchmarks.forecast_feed [--nodes 32] [--topics 64] [--repeat 5]

A :class:`~sprawl.forecast.feed.TrafficFeed` on a ``task.Clock`` (no
sockets), fed the ``member_views()`` of ``--nodes`` nodes each gossiping its
32 hottest partitions (the gossip's cap) over ``--topics`` topics, and this
node's published/delivered counters of every topic: ``1 + 1/32`` series per
gossiped partition, plus three per topic.  After a day of 5 s samples at the
default model (one-minute steps, daily season: every seasonal bucket seen),
it times, on the thread that would be the reactor's:

* one sample of everything (``tick``: every ``--forecast-interval``, 5 s);
* ``partition_forecasts`` (the controller's balancer, every 10 s);
* ``load_view`` (``GET /v1/cluster/load``), ``dashboard_view`` of every
  topic (one dashboard snapshot, each second per open dashboard);

and the models' memory (``sprawl_forecast_memory_bytes``).  Best of
``--repeat`` runs of each.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import task

from sprawl.forecast.feed import DELIVERED, PUBLISHED, TrafficFeed
from sprawl.forecast.traffic import TrafficForecaster

PARTS_PER_NODE = 32


class _Gossip:
    def __init__(self, nodes: int, topics: int, rng: random.Random) -> None:
        self.rng = rng
        self.parts = {
            f"n{n}": [
                (f"topic-{(n * PARTS_PER_NODE + i) % topics}", n * PARTS_PER_NODE + i)
                for i in range(PARTS_PER_NODE)
            ]
            for n in range(nodes)
        }
        self.base = {key: rng.uniform(10, 500) for parts in self.parts.values() for key in parts}

    def member_views(self) -> list[dict[str, Any]]:
        g = self.rng.gauss
        return [
            {
                "id": node,
                "state": "alive",
                "partition_rates": [
                    {
                        "topic": t,
                        "partition": p,
                        "msgs_s": round(self.base[(t, p)] * (1 + g(0, 0.05))),
                        "bytes_s": 0,
                    }
                    for t, p in parts
                ],
            }
            for node, parts in self.parts.items()
        ]

    def live_member_ids(self) -> list[str]:
        return sorted(self.parts)


def _best(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> None:
    """Build the feed, warm it for a day of samples, and print the table rows."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=32)
    ap.add_argument("--topics", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--hours", type=float, default=2.0, help="virtual hours of samples before timing")
    a = ap.parse_args(argv)
    rng = random.Random(1)
    clock = task.Clock()
    clock.advance(1_700_000_000.0)
    gossip = _Gossip(a.nodes, a.topics, rng)
    topics = sorted({t for t, _ in gossip.base})
    totals = {kind: dict.fromkeys(topics, 0.0) for kind in (PUBLISHED, DELIVERED)}

    def counters() -> dict[str, dict[str, float]]:
        for kind in (PUBLISHED, DELIVERED):
            for t in topics:
                totals[kind][t] += 5 * rng.uniform(100, 200)
        return totals

    fc = TrafficForecaster(max_series=max(1024, a.nodes * (PARTS_PER_NODE + 1) + 3 * a.topics))
    feed = TrafficFeed(fc, clock, gossip, counters=counters, interval=5.0)
    samples = int(a.hours * 3600 / 5)
    t0 = time.perf_counter()
    for _ in range(samples):
        clock.advance(5.0)
        feed.tick()
    warm = time.perf_counter() - t0
    now = clock.seconds()

    def tick() -> None:
        clock.advance(5.0)
        feed.tick()

    rows = [
        ("tick (one sample of every rate)", _best(tick, a.repeat)),
        (
            "partition_forecasts (the balancer's input)",
            _best(lambda: feed.partition_forecasts(now), a.repeat),
        ),
        ("load_view (GET /v1/cluster/load)", _best(feed.load_view, a.repeat)),
        (f"dashboard_view of {len(topics)} topics", _best(lambda: feed.dashboard_view(topics), a.repeat)),
    ]
    print(
        f"{a.nodes} nodes x {PARTS_PER_NODE} gossiped partitions, {len(topics)} topics: {len(fc.keys())} series, "
        f"{fc.memory_bytes() / 1e6:.1f} MB of models; {samples} samples ({a.hours:g} h) fed in {warm:.1f} s"
    )
    print(f"| step | ms (best of {a.repeat}) |")
    print("|---|---|")
    for name, secs in rows:
        print(f"| {name} | {secs * 1000:.1f} |")


if __name__ == "__main__":
    main()
