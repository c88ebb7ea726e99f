#!/usr/bin/env python3
"""What one ``GET /metrics`` costs a node of a kept cluster, and how long it holds its reactor
(issue 23, metrics40):

    PYTHONPATH=.:tests python -m benchmarks.scrape_cost D/3-nodes --nodes 3 [--scrapes 5] \\
        [--settle 30] [--ready-bound 180]

Starts the kept cluster as :mod:`benchmarks.idle_cpu` does (``D`` from ``benchmarks.scale
--keep``; a copy: the nodes write to it), lets it settle, then on node ``n0``: its idle CPU
over ``--idle`` seconds (milliseconds a second, subtracted from each scrape), and
``--scrapes`` scrapes as Prometheus sends them (``Accept-Encoding: gzip``) and as many
without, one a second.  For each: the node's CPU milliseconds (``/proc/PID/stat`` across the
scrape, less the idle rate over its wall time), the bytes on the wire, and the longest
``GET /healthz`` answer of a prober asking one after the other meanwhile (a render holds the
reactor: the prober's longest wait is the stall a scrape causes).  The prober's longest wait
over as long a window without a scrape is printed beside it.  ``--py-spy FILE`` records
``n0`` over the first scrape (raw stacks, 250 Hz).  The nodes are stopped at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.idle_cpu import start_kept
from benchmarks.scale import cpu_seconds
from harness import NodeCluster

PY_SPY = str(Path(sys.executable).with_name("py-spy"))


class Prober(threading.Thread):
    """Asks ``GET /healthz`` one after the other until stopped; keeps each answer's wall time."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.waits: list[float] = []
        self.done = threading.Event()
        #: Set once the first ``/healthz`` is answered: the prober is asking.
        self.asking = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        deadline = time.monotonic() + 600
        while not self.done.is_set() and time.monotonic() < deadline:
            t0 = time.perf_counter()
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            self.waits.append(time.perf_counter() - t0)
            self.asking.set()
        conn.close()

    def stop(self) -> float:
        """Stop; the longest wait in milliseconds."""
        self.done.set()
        self.join(60)
        return round(max(self.waits, default=0.0) * 1000, 1)


def scrape(port: int, pid: int, idle_ms_per_s: float, gzip: bool) -> dict[str, Any]:
    """One scrape of ``/metrics`` with a prober beside it."""
    prober = Prober(port)
    prober.start()
    if not prober.asking.wait(30):
        raise SystemExit("the /healthz prober had no answer within 30 s")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Accept-Encoding": "gzip"} if gzip else {}
    c0, w0 = cpu_seconds(pid), time.perf_counter()
    conn.request("GET", "/metrics", headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    wall = time.perf_counter() - w0
    cpu = cpu_seconds(pid) - c0
    time.sleep(0.1)
    stall = prober.stop()
    conn.close()
    assert resp.status == 200, resp.status
    return {
        "cpu_ms": round(cpu * 1000 - idle_ms_per_s * wall, 1),
        "wall_ms": round(wall * 1000, 1),
        "bytes": len(body),
        "encoding": resp.getheader("Content-Encoding"),
        "healthz_max_ms": stall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", type=Path, help="a copy of a directory kept by benchmarks.scale --keep")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--scrapes", type=int, default=5)
    ap.add_argument("--settle", type=float, default=30.0)
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of the idle CPU baseline")
    ap.add_argument("--bound", type=float, default=300.0)
    ap.add_argument("--ready-bound", type=float, default=180.0)
    ap.add_argument(
        "--py-spy", type=Path, help="record n0 with py-spy over the first scrape (raw stacks) here"
    )
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    cluster = NodeCluster(a.base, a.nodes, startup_timeout=a.bound)
    try:
        t0 = time.monotonic()
        start_kept(cluster, a.bound, a.ready_bound)
        print(json.dumps({"formed_s": round(time.monotonic() - t0, 1)}), flush=True)
        time.sleep(a.settle)
        node = cluster.nodes[cluster.names[0]]
        pid = node.proc.pid  # type: ignore[union-attr]
        port = node.http_port
        c0, w0 = cpu_seconds(pid), time.monotonic()
        prober = Prober(port)
        prober.start()
        time.sleep(a.idle)
        quiet_stall = prober.stop()
        idle = (cpu_seconds(pid) - c0) * 1000 / (time.monotonic() - w0)
        print(
            json.dumps({"idle_ms_per_s": round(idle, 1), "healthz_max_ms_no_scrape": quiet_stall}), flush=True
        )
        rows: dict[str, list[dict[str, Any]]] = {"gzip": [], "plain": []}
        spy = None
        if a.py_spy:
            # (py-spy over the first scrape: what holds the reactor while every line is built)
            spy = subprocess.Popen(
                [PY_SPY, "record", "--pid", str(pid), "--rate", "250", "--duration", "3", "--format", "raw"]
                + ["--output", str(a.py_spy), "--nonblocking"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
        for i in range(a.scrapes):
            for kind in ("gzip", "plain"):
                r = scrape(port, pid, idle, kind == "gzip")
                rows[kind].append(r)
                first_one = i == 0 and kind == "gzip"  # (every partition's lines built)
                print(
                    json.dumps({"kind": kind, "first": first_one, **r, "load": round(os.getloadavg()[0], 2)}),
                    flush=True,
                )
                time.sleep(1.0)
                if spy is not None:
                    spy.wait(60)
                    spy = None
        for kind, rs in rows.items():
            print(
                json.dumps(
                    {
                        "summary": kind,
                        "cpu_ms_median": statistics.median(r["cpu_ms"] for r in rs),
                        "bytes": statistics.median(r["bytes"] for r in rs),
                        "healthz_max_ms_median": statistics.median(r["healthz_max_ms"] for r in rs),
                        "healthz_max_ms_max": max(r["healthz_max_ms"] for r in rs),
                    }
                ),
                flush=True,
            )
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
