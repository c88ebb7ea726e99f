"""Record a real per-partition publish-rate trace from a local Sprawl cluster.

    PYTHONPATH=tests python -m benchmarks.forecast_record --seconds 2400 -o tests/data/forecast_trace.csv

Starts a 3-node cluster on 127.0.0.1 (``python -m sprawl.localcluster
--ports-auto`` in a temporary directory), creates four topics, and drives
them with ``sprawlctl bench`` runs of 10 s each whose ``--rate`` follows a
schedule (below) for ``--seconds``; every 5 s it reads ``GET /v1/cluster``
on node 1 and writes the publish rate of every partition as the members
gossip it (``partition_rates``: msgs/s and bytes/s measured at the leader,
the figures the controller's balancer reads) to a CSV file::

    t,topic,partition,leader,msgs_s,bytes_s

The schedule compresses a day into ``--cycle`` seconds (600 by default):

* ``day`` (3 partitions): 40 to 200 msgs/s and back, one cosine cycle per ``--cycle``;
* ``ramp`` (2 partitions): from 10 to 200 msgs/s over the run;
* ``surge`` (2 partitions): 30 msgs/s, 300 for two minutes at 62% of the
  run, silent for 100 s at 83% (a producer gone);
* ``base`` (3 partitions): 60 msgs/s.

The rates in the file are what the cluster measured and gossiped, not the
schedule: bench start-up gaps, batching and the gossip's 20% change rule are
in them.  ``PYTHONPATH=tests python -m benchmarks.forecast_sim --trace FILE`` replays the file.

``tests/data/forecast_trace.csv`` was recorded with ``--seconds 900
--cycle 300`` (2026-12-05, 15 minutes, 1,781 rows, 56 KB), and
``tests/data/forecast_trace_1.csv`` with the same arguments (2026-12-06,
1,748 rows: the recorded family's second draw, ``benchmarks.forecast_sim.RECORDINGS``;
docs/benchmarks.md, trust40).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

TOPICS = {"day": 3, "ramp": 2, "surge": 2, "base": 3}


def schedule(seconds: float, cycle: float) -> dict[str, Callable[[float], float]]:
    """msgs/s per topic at time ``t`` (seconds from the start)."""

    def day(t: float) -> float:
        return 40 + 160 * (1 - math.cos(2 * math.pi * t / cycle)) / 2

    def ramp(t: float) -> float:
        return 10 + 190 * min(1.0, t / seconds)

    def surge(t: float) -> float:
        if 0.62 * seconds <= t < 0.62 * seconds + 120:
            return 300.0
        if 0.83 * seconds <= t < 0.83 * seconds + 100:
            return 0.0
        return 30.0

    return {"day": day, "ramp": ramp, "surge": surge, "base": lambda t: 60.0}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _request(method: str, url: str, body: dict[str, object] | None = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        raw = r.read()
    return json.loads(raw) if raw else None


def _urls(base: Path, n: int, deadline: float) -> list[str]:
    out = []
    for k in range(1, n + 1):
        f = base / f"node{k}" / "ports.json"
        while True:
            try:
                out.append(f"http://127.0.0.1:{int(json.loads(f.read_text())['http'])}")
                break
            except (OSError, ValueError, KeyError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node{k} never wrote {f}") from None
                time.sleep(0.2)
    return out


def _drive(urls: list[str], topic: str, rate: Callable[[float], float], t0: float, end: float) -> None:
    """Run 10 s bench chunks at the scheduled rate until ``end`` (monotonic)."""
    while time.monotonic() < end:
        t = time.monotonic() - t0
        r = rate(t)
        if r < 1:
            time.sleep(min(10.0, max(0.0, end - time.monotonic())))
            continue
        cmd = [
            sys.executable,
            str(ROOT / "bin" / "sprawlctl"),
            "-n",
            ",".join(urls),
            "bench",
            "--topic",
            topic,
            "--rate",
            f"{r:.1f}",
            "--messages",
            str(max(1, round(r * 10))),
            "--subscribers",
            "0",
            "--size",
            "100",
            "--batch",
            "10",
            "--publishers",
            "1",
            "--acks",
            "leader",
            "--json",
        ]
        subprocess.run(cmd, env=_env(), capture_output=True, timeout=120, check=False)


def record(seconds: float, cycle: float, out: Path) -> int:
    """Run the cluster, the load and the sampler; write the CSV; return the rows written."""
    with tempfile.TemporaryDirectory(prefix="sprawl-trace-") as tmp:
        base = Path(tmp)
        log = open(base / "cluster.out", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "sprawl.localcluster", "3", "--ports-auto", "--data-dir", str(base)],
            env=_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        rows = 0
        try:
            deadline = time.monotonic() + 120
            while b"cluster ready" not in (base / "cluster.out").read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the local cluster did not start; see " + str(base / "cluster.out"))
                time.sleep(0.5)
            urls = _urls(base, 3, deadline)
            for name, n in TOPICS.items():
                _request("PUT", f"{urls[0]}/v1/topics/{name}", {"partitions": n, "replication_factor": 2})
            t0 = time.monotonic()
            end = t0 + seconds
            rates = schedule(seconds, cycle)
            threads = [
                threading.Thread(target=_drive, args=(urls, name, rates[name], t0, end), daemon=True)
                for name in TOPICS
            ]
            for th in threads:
                th.start()
            with open(out, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["t", "topic", "partition", "leader", "msgs_s", "bytes_s"])
                tick = 0
                while time.monotonic() < end:
                    tick += 1
                    time.sleep(max(0.0, t0 + tick * 5.0 - time.monotonic()))
                    t = round(time.monotonic() - t0)
                    try:
                        view = _request("GET", f"{urls[0]}/v1/cluster")
                    except OSError:
                        continue
                    assert isinstance(view, dict)
                    for m in view.get("members", []):
                        if m.get("state") not in ("alive", "suspect"):
                            continue
                        for e in m.get("partition_rates") or []:
                            w.writerow([t, e["topic"], e["partition"], m["id"], e["msgs_s"], e["bytes_s"]])
                            rows += 1
                    f.flush()
            for th in threads:
                th.join(timeout=150)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            log.close()
        return rows


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2400.0, help="length of the recording [2400]")
    ap.add_argument("--cycle", type=float, default=600.0, help="seconds of one compressed 'day' [600]")
    ap.add_argument("-o", "--out", type=Path, default=ROOT / "tests" / "data" / "forecast_trace.csv")
    a = ap.parse_args(argv)
    rows = record(a.seconds, a.cycle, a.out)
    print(f"{rows} rows written to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
