"""Every thread of a running node, by name: CPU, wake-ups and context switches (issue 16).

``/proc/PID/task/TID/`` per thread: ``comm`` (the LMDB writer and the write-ahead log's
thread name themselves there, :mod:`sprawl.storage.writer_thread`; the reactor is the
thread whose TID is the PID), ``schedstat`` (CPU ns, ns runnable but waiting for a core,
times put on a core) and ``status`` (voluntary and involuntary context switches).  A
voluntary switch is the thread going to sleep (a queue, the GIL, an fsync's I/O wait, a
futex); each is a wake-up later -- on a machine whose cores the nodes share, a wait for a
core.  :func:`snapshot` before and after a phase, :func:`table` prints the difference per
message and per LMDB commit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ThreadSample:
    """One thread's counters at one moment."""

    name: str
    cpu_ns: int
    wait_ns: int
    runs: int
    voluntary: int
    involuntary: int


def snapshot(pid: int) -> dict[int, ThreadSample]:
    """Every thread of process ``pid`` now, by TID (threads that end meanwhile are skipped)."""
    out: dict[int, ThreadSample] = {}
    base = f"/proc/{pid}/task"
    try:
        tids = os.listdir(base)
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"{base}/{tid}/comm", encoding="utf-8", errors="replace") as f:
                name = f.read().strip()
            with open(f"{base}/{tid}/schedstat", encoding="ascii") as f:
                cpu, wait, runs = (int(x) for x in f.read().split()[:3])
            vol = inv = 0
            with open(f"{base}/{tid}/status", encoding="ascii", errors="replace") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol = int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        inv = int(line.split()[1])
        except (OSError, ValueError):
            continue
        if int(tid) == pid:
            name = "reactor"
        out[int(tid)] = ThreadSample(name, cpu, wait, runs, vol, inv)
    return out


def table(
    before: dict[int, ThreadSample], after: dict[int, ThreadSample], messages: float, commits: float
) -> list[str]:
    """One line per thread that ran in the phase (and one for the others that ran but
    have no name of their own): CPU per message, wake-ups (times put on a core), voluntary
    and involuntary switches per LMDB commit, and the time waiting for a core per message."""
    m = max(messages, 1.0)
    c = max(commits, 1.0)
    rows: dict[str, list[float]] = {}
    for tid, now in after.items():
        was = before.get(tid, ThreadSample(now.name, 0, 0, 0, 0, 0))
        d = [
            now.cpu_ns - was.cpu_ns,
            now.wait_ns - was.wait_ns,
            now.runs - was.runs,
            now.voluntary - was.voluntary,
            now.involuntary - was.involuntary,
            1,
        ]
        if d[2] == 0:
            continue
        row = rows.setdefault(now.name, [0.0] * 6)
        for i, v in enumerate(d):
            row[i] += v
    lines = []
    for name, (cpu, wait, runs, vol, inv, n) in sorted(rows.items(), key=lambda kv: -kv[1][0]):
        lines.append(
            f"{name:<16} x{n:<2.0f} {cpu / m / 1e3:6.0f} us CPU/msg {cpu / c / 1e3:6.0f} us/commit  "
            f"{runs / c:5.2f} wake-ups/commit ({vol / c:5.2f} voluntary, {inv / c:5.2f} involuntary)  "
            f"{wait / m / 1e3:5.0f} us/msg waiting for a core"
        )
    return lines
