#!/usr/bin/env python3
"""The write-ahead log's grouping at a saturating rate: one fresh node, ``sprawlctl bench``
with one message per publish (``--batch 1``) from several connections as fast as it
goes (``--rate 0``), ``acks=leader``, a durable topic:

    PYTHONPATH=.:tests python -m benchmarks.wal_grouping [--messages 30000] [--publishers 8]
        [--repeat 1]

Prints per run the publish rate, the log's frames (one ``fdatasync`` each) a message and
a second, LMDB's commits a message and the node's CPU a message (``/proc``): whether a
change to how writes reach the log (docs/benchmarks.md, lat41) groups fewer writes per
fsync, or slows the node, when writes come faster than one fsync at a time."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.latency_profile import commit_count, cpu_seconds, histograms, wal_frames
from harness import NodeProcess

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=30_000)
    ap.add_argument("--publishers", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--size", type=int, default=100)
    a = ap.parse_args()
    for i in range(a.repeat):
        load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as tmp:
            node = NodeProcess(Path(tmp) / "n").start()
            try:
                assert node.proc is not None
                time.sleep(1)
                hist0 = histograms(node.url)
                frames0 = wal_frames(Path(tmp) / "n")
                u0, s0 = cpu_seconds(node.proc.pid)
                t0 = time.monotonic()
                out = subprocess.run(
                    [
                        sys.executable,
                        str(ROOT / "bin" / "sprawlctl"),
                        "--nodes",
                        node.url,
                        "bench",
                        "--messages",
                        str(a.messages),
                        "--batch",
                        "1",
                        "--publishers",
                        str(a.publishers),
                        "--acks",
                        "leader",
                        "--size",
                        str(a.size),
                        "--subscribers",
                        "0",
                        "--json",
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
                took = time.monotonic() - t0
                u1, s1 = cpu_seconds(node.proc.pid)
                hist1 = histograms(node.url)
                frames = wal_frames(Path(tmp) / "n") - frames0
            finally:
                node.stop()
        res = json.loads(out.stdout)
        rate = res.get("publish_msgs_per_s", 0.0)
        n = a.messages
        commits = commit_count(hist1) - commit_count(hist0)
        print(
            f"run {i + 1}: load {load:.1f}, {rate:,.0f} msg/s published, frames (fsyncs) {frames}: "
            f"{frames / n:.3f} a message, {frames / took:.0f} a second (over {took:.1f} s); LMDB commits "
            f"{commits / n:.3f} a message; node CPU {(u1 - u0 + s1 - s0) / n * 1e6:.0f} us a message",
            flush=True,
        )


if __name__ == "__main__":
    main()
