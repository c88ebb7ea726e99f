#!/usr/bin/env python3
"""Restart time of one node on a kept data dir (issue 23): wall and CPU seconds to ready.

    PYTHONPATH=tests python -m benchmarks.scale --nodes 1 --topics 10000 --keep --data-dir D
    PYTHONPATH=tests python -m benchmarks.restart_time D/sprawl-scale-XXXX [--restarts 3]

Starts the node ``n0`` kept under the directory given (``benchmarks.scale
--keep``) again and again, each time until its ``/readyz`` answers 200 and a
publish to one of its topics succeeds (as ``benchmarks.scale`` measures a
restart), then ``kill -9``.  Prints per start the wall seconds, the CPU
seconds the node's process had used by then (``/proc/PID/stat``: the figure
a loaded machine moves least) and the reasons ``/readyz`` gave meanwhile;
then the medians and the load average.  Comparing two versions of the code:
run this from each tree in turn on copies of the same data dir.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from benchmarks.scale import cpu_seconds, publish_ok
from harness import NodeCluster, poll_until


def one_start(cluster: NodeCluster, topic: str, bound: float) -> tuple[float, float, list[tuple[float, str]]]:
    """Start the killed ``n0``; wall and CPU seconds until it serves, and
    what ``/readyz`` said meanwhile (seconds since the start, reason)."""
    t0 = time.monotonic()
    cluster.restart("n0", same_ports=False)
    reasons: list[tuple[float, str]] = []

    def serving() -> bool:
        status, body = cluster.get("n0", "/readyz", timeout=2)
        if status != 200:
            why = str(body.get("reason") if isinstance(body, dict) else body)[:100]
            if not reasons or reasons[-1][1] != why:
                reasons.append((round(time.monotonic() - t0, 2), why))
            return False
        return publish_ok(cluster, "n0", topic)

    if poll_until(serving, bound, step=0.1) is None:
        raise SystemExit(f"n0 was not serving within {bound}s")
    wall = time.monotonic() - t0
    proc = cluster.nodes["n0"].proc
    assert proc is not None
    return wall, cpu_seconds(proc.pid), reasons


def main() -> None:
    """Restart the kept node ``--restarts`` times; print each start and the medians."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", type=Path, help="a directory kept by benchmarks.scale --keep (holds n0/)")
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--topic", default="t00000", help="the topic a publish must reach")
    ap.add_argument("--bound", type=float, default=120.0, help="give up waiting after this many seconds")
    a = ap.parse_args()
    cluster = NodeCluster(a.base, 1, startup_timeout=a.bound)
    walls: list[float] = []
    cpus: list[float] = []
    try:
        for _ in range(a.restarts):
            wall, cpu, reasons = one_start(cluster, a.topic, a.bound)
            walls.append(wall)
            cpus.append(cpu)
            print(
                json.dumps({"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "unready": reasons}), flush=True
            )
            cluster.kill("n0")
    finally:
        cluster.close()
    print(
        json.dumps(
            {
                "wall_s_median": round(statistics.median(walls), 2),
                "cpu_s_median": round(statistics.median(cpus), 2),
                "wall_s": [round(w, 2) for w in walls],
                "cpu_s": [round(c, 2) for c in cpus],
                "load": round(os.getloadavg()[0], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
