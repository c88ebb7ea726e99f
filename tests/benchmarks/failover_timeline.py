#!/usr/bin/env python3
"""One failover's phases on every node, merged into one table (issue 23).

    PYTHONPATH=tests python -m benchmarks.failover_timeline DIR --kill-at T

Every node logs its failover phases as ``timeline:`` lines (first and last
time, and a count, at most one line per phase a second:
:mod:`sprawl.replication.timeline`); the nodes of a benchmark run on one
machine, so their times (``time.time()``) are one clock.  This reads the
``n*.log`` files in ``DIR`` (the cluster's data dir: ``benchmarks.scale
--reuse DIR`` keeps them in ``DIR/3-nodes``), keeps the lines of the phases
that began after ``T`` (the ``kill -9``'s time, which ``benchmarks.scale``
prints as ``failover_kill_at``), and prints for each phase and node the
seconds after the kill of its first and last mark, and the count --
sorted by first mark:

* ``found_silent`` (controller): the dead node's leaderships failed over, n = partitions;
* ``fence_sent`` / ``fence_heard`` / ``fence_answered``: the controller's
  fences, their receipt on each replica's node, their answers back;
* ``choice``: a core chose the new leader (a majority answered);
* ``proposed`` / ``committed`` (controller): the ``set_partitions`` Raft
  entries proposed and answered (n = partitions in them);
* ``choice_committed``: the cores told their choice is committed (they send Assigns);
* ``applied`` (every node): the entry applied to the node's replicas;
* ``assign_heard``: replicas told of the new epoch (the controller's Assign
  or the node's own apply: each twice);
* ``leading``: replicas here that became leader;
* ``leader_confirmed`` (controller): the new leaders' first word to it;
* ``followers_hold``: new leaders here whose followers hold their control
  record (a publish can be acknowledged with ``acks=quorum``).

``benchmarks.scale --failover-only`` prints this table after its failover.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

LINE = re.compile(r"timeline: (?P<phase>\w+) first=(?P<first>[\d.]+) last=(?P<last>[\d.]+) n=(?P<n>\d+)")

#: (node, phase) -> (first, last, n) for one failover.
Phases = dict[tuple[str, str], tuple[float, float, int]]


def parse(texts: dict[str, str], kill_at: float, window: float = 60.0) -> Phases:
    """The phases of each node's log text that began within ``window``
    seconds after ``kill_at``.  A phase's lines of one wave carry the same
    first mark (the last line holds its last mark and count); a phase quiet
    for a while within the window starts a new wave, which is added (first
    of the first wave, last of the last, the counts summed)."""
    waves: dict[tuple[str, str, float], tuple[float, int]] = {}
    for node, text in texts.items():
        for m in LINE.finditer(text):
            first, last, n = float(m["first"]), float(m["last"]), int(m["n"])
            if kill_at - 0.5 <= first <= kill_at + window:
                waves[(node, m["phase"], first)] = (last, n)  # a later line of the wave replaces it
    out: Phases = {}
    for (node, phase, first), (last, n) in sorted(waves.items()):
        prev = out.get((node, phase))
        out[(node, phase)] = (first, last, n) if prev is None else (prev[0], max(prev[1], last), prev[2] + n)
    return out


def table(phases: Phases, kill_at: float) -> str:
    """The phases as a Markdown table, seconds after the kill, by first mark."""
    rows = [
        "| phase | node | first, s | last, s | n |",
        "|---|---|---|---|---|",
    ]
    for (node, phase), (first, last, n) in sorted(phases.items(), key=lambda kv: (kv[1][0], kv[0][0])):
        rows.append(f"| {phase} | {node} | {first - kill_at:.2f} | {last - kill_at:.2f} | {n:,} |")
    return "\n".join(rows)


def read_logs(directory: Path) -> dict[str, str]:
    """Each node's log text (``n*.log`` in ``directory``), by node name."""
    return {p.stem: p.read_text(errors="replace") for p in sorted(directory.glob("n*.log"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path, help="the directory of the nodes' n*.log files")
    ap.add_argument("--kill-at", type=float, required=True, help="time.time() of the kill")
    ap.add_argument("--window", type=float, default=60.0, help="phases that began this long after it")
    a = ap.parse_args()
    print(table(parse(read_logs(a.dir), a.kill_at, a.window), a.kill_at))


if __name__ == "__main__":
    main()
