#!/usr/bin/env python3
"""3 nodes, RF=3, ``acks=quorum``: publish -> SSE latency on a warm heap, with the GC pauses.

    PYTHONPATH=tests python -m benchmarks.quorum_latency [--warmup 200000] [--rate 1000]
                                                         [--seconds 20] [--wire json|lean]

Starts three ``twistd sprawl`` nodes on 127.0.0.1 (ports from the OS, fresh data dirs), creates
one durable topic of one partition with three replicas, warms the heap with ``--warmup``
messages (batches of 100, 16 publishers, ``acks=quorum``), then publishes single messages at
``--rate`` msg/s from ``--publishers`` connections spread over the three nodes while one SSE
subscriber reads on the third (:mod:`sprawl.client.bench`), and prints the end-to-end p50/p99
with every node's garbage-collection pauses during that phase, read from
``sprawl_gc_pause_seconds`` on ``/metrics`` before and after it (collections per generation,
their total time, how many took over 10 ms).  The issue-16 goal: p50 <= 4 ms, p99 <= 10 ms and
no pause over 10 ms.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import urllib.request
from pathlib import Path

from benchmarks.cluster import FORM_BOUND, create_topic
from harness import NodeCluster
from sprawl.client.bench import BenchConfig, run_bench

_LINE = re.compile(
    r'^sprawl_gc_pause_seconds_(count|sum|bucket)\{generation="(\d)"(?:,le="([^"]+)")?\} (\S+)$'
)


def gc_pauses(url: str) -> dict[tuple[str, str, str], float]:
    """The node's ``sprawl_gc_pause_seconds`` series: {(kind, generation, le): value}."""
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    out: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            out[(m.group(1), m.group(2), m.group(3) or "")] = float(m.group(4))
    return out


def during(before: dict[tuple[str, str, str], float], after: dict[tuple[str, str, str], float]) -> str:
    """Collections per generation in the phase: count, total ms, and how many took over 10 ms."""
    parts = []
    for g in "012":
        n = after.get(("count", g, ""), 0) - before.get(("count", g, ""), 0)
        s = after.get(("sum", g, ""), 0) - before.get(("sum", g, ""), 0)
        fast = after.get(("bucket", g, "0.01"), 0) - before.get(("bucket", g, "0.01"), 0)
        parts.append(f"gen{g} {n:.0f} ({s * 1000:.1f} ms, {n - fast:.0f} > 10 ms)")
    return ", ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warmup", type=int, default=200_000)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--publishers", type=int, default=8)
    ap.add_argument("--wire", choices=["json", "lean"], default="json")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sprawl-quorum-") as tmp:
        cluster = NodeCluster(Path(tmp), 3, prefix="q")
        try:
            cluster.start(FORM_BOUND)
            urls = [cluster.url(n) for n in cluster.names]
            topic = "quorum-latency"
            create_topic(cluster, topic, 1, 3)
            common = dict(topic=topic, acks="quorum", keep_topic=True, timeout=60.0, wire=a.wire)
            if a.warmup:
                w = run_bench(
                    BenchConfig(
                        urls=urls, messages=a.warmup, batch=100, publishers=16, subscribers=0, **common
                    )
                )  # type: ignore[arg-type]
                print(f"warm-up: {w.published:,} messages at {w.publish_msgs_per_s:,.0f} msgs/s", flush=True)
            before = [gc_pauses(u) for u in urls]
            load = os.getloadavg()[0]
            r = run_bench(
                BenchConfig(
                    urls=urls,
                    subscriber_urls=[urls[-1]],
                    messages=int(a.rate * a.seconds),
                    batch=1,
                    publishers=a.publishers,
                    subscribers=1,
                    rate=a.rate,
                    **common,  # type: ignore[arg-type]
                )
            )
            after = [gc_pauses(u) for u in urls]
        finally:
            cluster.close()
    e2e = r.e2e_latency_ms
    print(
        f"3 nodes, RF=3, acks=quorum, 1 partition, {a.warmup:,} messages of warm-up, {a.rate:,.0f} msg/s "
        f"for {a.seconds:g} s from {a.publishers} connections over the nodes, SSE on the third "
        f"(wire {a.wire}; load average {load:.1f}):"
    )
    if e2e is not None:
        print(
            f"  e2e p50 {e2e.p50:.2f} ms, p99 {e2e.p99:.2f} ms, max {e2e.max:.1f} ms; "
            f"{r.delivered:,} of {r.published:,} delivered at {r.publish_msgs_per_s:,.0f} msg/s"
        )
    for name, b, f in zip(cluster.names, before, after, strict=True):
        print(f"  {name} GC during the run: {during(b, f)}")


if __name__ == "__main__":
    main()
