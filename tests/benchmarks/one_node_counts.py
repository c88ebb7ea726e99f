#!/usr/bin/env python3
"""Counts per message on the one-node publish -> SSE path, that load moves little:

    PYTHONPATH=.:tests python -m benchmarks.one_node_counts [--closed 3000 | --rate 1000 --seconds 10]
        [--strace /tmp/s.txt] [--node-arg=...]

Starts a fresh ``twistd sprawl`` node on loopback (as ``benchmarks.latency_profile``), runs
a closed loop of ``--closed`` one-message publishes (each sent once the last was answered,
an SSE subscriber reading) or ``benchmarks.latency`` at ``--rate``, and prints per message,
per thread of the node (from ``/proc/PID/task/*``): CPU (user + system), voluntary and
involuntary context switches (a voluntary one is a sleep: a wait for a socket, a queue, a
lock or the GIL -- each later wake-up is a hand-off), and the time spent runnable but not
running (``schedstat``: waiting for a core), and LMDB's commits per message (``/metrics``).  The reactor is the process's main thread; the
other threads are named by their share of the run (the busiest two are the write-ahead
log's thread and LMDB's writer).  With ``--strace`` the node is traced (``strace -c -f``)
for the run only and the system calls per message are printed; the trace itself costs
time, so that run's latency is not a figure.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.latency_profile import closed_loop, histograms, run_latency
from harness import NodeProcess


def thread_counts(pid: int) -> dict[int, tuple[float, int, int, float]]:
    """Per thread of ``pid``: (CPU seconds, voluntary switches, involuntary switches,
    seconds runnable and waiting for a core)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[float, int, int, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{tid}"
        try:
            fields = Path(f"{base}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"{base}/status").read_text()
            sched = Path(f"{base}/schedstat").read_text().split()
        except OSError:
            continue  # the thread ended
        vol = invol = 0
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                vol = int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                invol = int(line.split()[1])
        cpu = (int(fields[11]) + int(fields[12])) / tick
        out[int(tid)] = (cpu, vol, invol, int(sched[1]) / 1e9)
    return out


def report(pid: int, before: dict[int, Any], after: dict[int, Any], messages: int) -> str:
    """The per-message table of the threads that did anything in the run."""
    rows = []
    for tid, (cpu, vol, invol, wait) in after.items():
        b = before.get(tid, (0.0, 0, 0, 0.0))
        d = (cpu - b[0], vol - b[1], invol - b[2], wait - b[3])
        if tid == pid or d[1] or d[0]:
            rows.append((tid == pid, d, tid))
    rows.sort(key=lambda r: (not r[0], -r[1][0], -r[1][1]))
    out = [
        "| thread | CPU us/msg | voluntary switches/msg | involuntary/msg | runnable-waiting us/msg |",
        "|---|---|---|---|---|",
    ]
    tot = [0.0, 0.0, 0.0, 0.0]
    for k, (main, d, tid) in enumerate(rows):
        name = "reactor" if main else f"other #{k} ({tid})"
        vals = (d[0] * 1e6 / messages, d[1] / messages, d[2] / messages, d[3] * 1e6 / messages)
        for i, v in enumerate(vals):
            tot[i] += v
        out.append(f"| {name} | {vals[0]:.0f} | {vals[1]:.2f} | {vals[2]:.2f} | {vals[3]:.0f} |")
    out.append(f"| all | {tot[0]:.0f} | {tot[1]:.2f} | {tot[2]:.2f} | {tot[3]:.0f} |")
    return "\n".join(out)


def strace_summary(path: Path, messages: int, top: int = 14) -> str:
    """``strace -c`` output as calls per message, the most frequent first."""
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            try:
                calls = int(parts[3])
            except ValueError:
                continue
            rows.append((calls, parts[-1]))
    rows.sort(reverse=True)
    total = sum(c for c, _ in rows)
    body = ", ".join(f"{name} {c / messages:.2f}" for c, name in rows[:top])
    return f"system calls per message: {total / messages:.2f} in all; {body}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--closed", type=int, default=0, help="N publishes one after the other")
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=300, help="closed-loop publishes before counting")
    ap.add_argument(
        "--strace", type=Path, default=None, help="strace -c -f the node for the run; output here"
    )
    ap.add_argument("--node-arg", action="append", default=[], help="an extra argument of the node")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        node: Any = NodeProcess(Path(tmp) / "n", *a.node_arg).start()
        try:
            pid = node.proc.pid
            if a.warmup:
                closed_loop(node.url, a.warmup)
            tracer = None
            if a.strace is not None:
                tracer = subprocess.Popen(
                    ["strace", "-c", "-f", "-p", str(pid), "-o", str(a.strace)],
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(1.0)  # (attached to every thread before the run)
            load = os.getloadavg()[0]
            commits0 = histograms(node.url)["sprawl_lmdb_commit_duration_seconds"].get(float("inf"), 0.0)
            before = thread_counts(pid)
            t0 = time.monotonic()
            if a.closed:
                _p50, _p99, line = closed_loop(node.url, a.closed)
                messages = a.closed
            else:
                _p50, _p99, line = run_latency(node.url, a.rate, a.seconds, a.connections)
                line = line.strip().splitlines()[-3] if line.strip() else line
                messages = int(a.rate * a.seconds)
            took = time.monotonic() - t0
            after = thread_counts(pid)
            commits = (
                histograms(node.url)["sprawl_lmdb_commit_duration_seconds"].get(float("inf"), 0.0) - commits0
            )
            if tracer is not None:
                tracer.send_signal(signal.SIGINT)
                tracer.wait(30)
            print(
                f"{line}\nload {load:.1f}, {took:.1f} s, {messages} messages, {commits / messages:.3f} LMDB commits a message"
            )
            print(report(pid, before, after, messages))
            if a.strace is not None:
                print(strace_summary(a.strace, messages))
        finally:
            node.stop()


if __name__ == "__main__":
    main()
