#!/usr/bin/env python3
"""The single-node benchmark set of docs/benchmarks.md, against a fresh node.

    python -m benchmarks.run [--repeat 3] [--quick]

Starts one ``twistd sprawl`` on 127.0.0.1 with a fresh data dir (ports from the
OS), runs each row of the table ``--repeat`` times with ``sprawl.client.bench``
(the engine behind ``sprawlctl bench``), runs tests/benchmarks/latency.py for
the steady-rate latency row, prints a Markdown table of medians (with the
range), and stops the node.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness import NodeProcess
from sprawl.client.bench import BenchConfig, run_bench

HERE = Path(__file__).resolve().parent

ROWS: list[tuple[str, dict[str, Any], str]] = [
    (
        "durable ingest, batch 100, 16 publishers, no subscriber",
        dict(batch=100, publishers=16, subscribers=0),
        "publish",
    ),
    (
        "durable ingest, batch 1, 16 publishers, no subscriber",
        dict(batch=1, publishers=16, subscribers=0),
        "publish",
    ),
    (
        "end-to-end to 1 SSE subscriber, batch 100, 16 publishers",
        dict(batch=100, publishers=16, subscribers=1),
        "deliver",
    ),
    (
        "fan-out to 10 SSE subscribers, batch 100, 8 publishers",
        dict(batch=100, publishers=8, subscribers=10),
        "deliver",
    ),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="fewer messages (a smoke run)")
    a = ap.parse_args()
    scale = 0.1 if a.quick else 1.0
    with tempfile.TemporaryDirectory() as tmp:
        node = NodeProcess(Path(tmp) / "node").start()
        try:
            print(
                "| run (100-byte payloads, durable topic, acks=leader, RF=1) | msgs/s (median) | range | e2e p50 / p99 ms |"
            )
            print("|---|---|---|---|")
            for title, kw, measure in ROWS:
                n = int((200_000 if kw["batch"] == 1 else 1_000_000) * scale)
                if kw["subscribers"] >= 10:
                    n //= 2
                rates, p50s, p99s = [], [], []
                for _ in range(a.repeat):
                    r = run_bench(BenchConfig(urls=[node.url], messages=n, acks="leader", **kw))
                    rates.append(r.publish_msgs_per_s if measure == "publish" else r.delivered_msgs_per_s)
                    if r.e2e_latency_ms:
                        p50s.append(r.e2e_latency_ms.p50)
                        p99s.append(r.e2e_latency_ms.p99)
                lat = f"{statistics.median(p50s):.1f} / {statistics.median(p99s):.1f}" if p50s else "-"
                print(
                    f"| {title} | {statistics.median(rates):,.0f} | {min(rates):,.0f}-{max(rates):,.0f} | {lat} |",
                    flush=True,
                )
            for _ in range(a.repeat):
                subprocess.run(
                    [
                        sys.executable,
                        str(HERE / "latency.py"),
                        "--url",
                        node.url,
                        "--rate",
                        "1000",
                        "--seconds",
                        str(20 * scale),
                    ],
                    check=True,
                )
        finally:
            node.stop()


if __name__ == "__main__":
    main()
