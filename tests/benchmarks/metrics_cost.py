#!/usr/bin/env python3
"""The CPU and Python calls of one metric update, prometheus_client against the node's cells
(issue 16, :mod:`sprawl.metrics.cells`):

    PYTHONPATH=tests python -m benchmarks.metrics_cost [--n 200000] [--repeat 7]

Each row times ``--n`` updates of an existing series with ``time.thread_time`` (this thread's
CPU: other jobs' load hardly moves it), the minimum of ``--repeat`` runs, and counts the
Python calls (and C built-ins) of one update under cProfile.  Rows: a labelled counter child's
``inc``, a histogram child's ``observe`` (a value in the 4th bucket), and the node's hot-path
updates per publish (``published``, ``delivered``, ``request_done``, ``committed``) as they
were (prometheus_client children, cached) and as they are (:class:`~sprawl.metrics.NodeMetrics`).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from sprawl.metrics import LATENCY_BUCKETS, NodeMetrics
from sprawl.metrics.cells import CounterFamily, HistogramFamily


def cpu_ns(f: Callable[[], None], n: int, repeat: int) -> float:
    """Best per-call CPU nanoseconds of ``f`` over ``repeat`` runs of ``n`` calls."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.thread_time_ns()
        for _ in range(n):
            f()
        best = min(best, (time.thread_time_ns() - t0) / n)
    return best


def calls(f: Callable[[], None]) -> tuple[int, int]:
    """(Python calls, C built-in calls) of one ``f()`` (``f`` itself not counted)."""
    prof = cProfile.Profile()
    prof.enable()
    f()
    prof.disable()
    stats: dict[Any, Any] = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    py = builtin = 0
    for (file, _, fn), (_, nc, *_rest) in stats.items():
        if "disable" in fn or fn == "<lambda>" or file.endswith("metrics_cost.py"):
            continue
        if file == "~":
            builtin += nc
        else:
            py += nc
    return py, builtin


def old_updates() -> dict[str, Callable[[], None]]:
    """The per-publish updates as main had them: prometheus_client children, cached."""
    r = CollectorRegistry()
    pm = Counter("pm", "d", ["topic"], registry=r).labels("t")
    pb = Counter("pb", "d", ["topic"], registry=r).labels("t")
    dm = Counter("dm", "d", ["topic", "mode"], registry=r).labels("t", "stream")
    db = Counter("db", "d", ["topic", "mode"], registry=r).labels("t", "stream")
    rq = Counter("rq", "d", ["route", "method", "status"], registry=r).labels("publish", "POST", "200")
    rd = Histogram("rd", "d", ["route", "method"], buckets=LATENCY_BUCKETS, registry=r).labels(
        "publish", "POST"
    )
    cd = Histogram("cd", "d", buckets=LATENCY_BUCKETS, registry=r)
    co = Histogram("co", "d", buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000), registry=r)
    cache: dict[Any, Any] = {("pm", "t"): (pm, pb), ("dm", "t", "stream"): (dm, db)}
    cache[("rd", "publish", "POST")] = (rd,)
    cache[("rq", "publish", "POST", "200")] = (rq,)

    def published() -> None:
        c = cache[("pm", "t")]
        c[0].inc(1)
        c[1].inc(100)

    def delivered() -> None:
        c = cache[("dm", "t", "stream")]
        c[0].inc(1)
        c[1].inc(100)

    def request_done() -> None:
        cache[("rd", "publish", "POST")][0].observe(0.004)
        cache[("rq", "publish", "POST", str(200))][0].inc()

    def committed() -> None:
        cd.observe(0.004)
        co.observe(1)

    return {
        "published": published,
        "delivered": delivered,
        "request_done": request_done,
        "committed": committed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=7)
    a = ap.parse_args()
    r = CollectorRegistry()
    pc = Counter("c", "d", ["a"], registry=r).labels("x")
    ph = Histogram("h", "d", ["a"], buckets=LATENCY_BUCKETS, registry=r).labels("x")
    cc = CounterFamily("c2", "d", ["a"], registry=r).labels("x")
    ch = HistogramFamily("h2", "d", ["a"], buckets=LATENCY_BUCKETS, registry=r).labels("x")
    m = NodeMetrics()
    new = {
        "published": lambda: m.published("t", 1, 100),
        "delivered": lambda: m.delivered("t", "stream", 1, 100),
        "request_done": lambda: m.request_done("publish", "POST", 200, 0.004),
        "committed": lambda: m.committed(0.004, 1),
    }
    for f in new.values():
        f()
    old = old_updates()
    rows: list[tuple[str, Callable[[], None], Callable[[], None]]] = [
        ("counter child inc()", lambda: pc.inc(1), lambda: cc.inc(1)),
        ("histogram child observe()", lambda: ph.observe(0.004), lambda: ch.observe(0.004)),
        *((f"NodeMetrics.{k}", old[k], new[k]) for k in new),
    ]
    print(f"load {os.getloadavg()[0]:.1f}; {a.n} updates, best of {a.repeat}")
    print(f"{'update':30s} {'prometheus_client':>26s} {'cells':>26s}")
    for name, f_old, f_new in rows:
        o_ns, n_ns = cpu_ns(f_old, a.n, a.repeat), cpu_ns(f_new, a.n, a.repeat)
        (o_py, o_c), (n_py, n_c) = calls(f_old), calls(f_new)
        print(
            f"{name:30s} {o_ns:7.0f} ns {o_py:3d} py {o_c:3d} C calls {n_ns:7.0f} ns {n_py:3d} py {n_c:3d} C calls"
        )


if __name__ == "__main__":
    main()
