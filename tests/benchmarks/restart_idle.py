#!/usr/bin/env python3
"""Idle CPU of a node killed and restarted, beside the others (issue 23).

    PYTHONPATH=tests python -m benchmarks.restart_idle [--before 100] [--topics 3000] \\
        [--settle 2] [--seconds 5] [--rounds 30] [--node-arg=--scrub-rate=0] [--profile OUT.json]

Starts 3 nodes, creates ``--before`` single-partition RF 3 topics, kills
(``kill -9``) ``n1`` (``n2`` if ``n1`` is the Raft leader), waits 8 s for
the failover, restarts it, creates topics up to ``--topics``, lets the
cluster settle ``--settle`` seconds and prints, ``--rounds`` times, each
node's CPU % of a core over ``--seconds`` of no traffic (``/proc/PID/stat``),
the Raft index each node applied, and the nodes whose background scrub ran
in the window (``scrubbing``: :func:`benchmarks.scale.scrubbed`).  Short
windows in a row show when a node is busy, not only how much.  With
``--profile`` the restarted node runs under ``py-spy record --idle``
(speedscope JSON into the file given; samples in time order, 100 a second,
so a window of the run is a slice of them), stopped with SIGINT at the end;
its CPU is read from the node process, py-spy's child.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import harness.nodes
from benchmarks.scale import Conn, cpu_seconds, create, partitions_view, scrub_state, scrubbed
from harness import NodeCluster, poll_until


def node_pid(pid: int) -> int:
    """The node's own pid: ``pid`` itself, or its child when ``pid`` is py-spy."""
    kids = Path(f"/proc/{pid}/task/{pid}/children")
    if "py-spy" in Path(f"/proc/{pid}/cmdline").read_text() and kids.exists():
        first = kids.read_text().split()
        if first:
            return int(first[0])
    return pid


def measure(cluster: NodeCluster, seconds: float) -> dict[str, float]:
    """% of a core each node used over ``seconds``."""
    pids = {n: node_pid(cluster.nodes[n].proc.pid) for n in cluster.names}  # type: ignore[union-attr]
    before = {n: cpu_seconds(p) for n, p in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    took = time.monotonic() - t0
    return {n: round((cpu_seconds(p) - before[n]) / took * 100, 2) for n, p in pids.items()}


def main() -> None:
    """Build, kill and restart n1, measure every node's idle CPU."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=int, default=100, help="topics created before the kill")
    ap.add_argument("--topics", type=int, default=3000, help="topics in all")
    ap.add_argument("--settle", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--node-arg", action="append", default=[], help="an argument of every node")
    ap.add_argument("--profile", type=Path, default=None, help="py-spy raw output of the restarted node")
    a = ap.parse_args()
    plain = harness.nodes.twistd_command
    with tempfile.TemporaryDirectory() as tmp:
        cluster = NodeCluster(Path(tmp), 3, *a.node_arg, startup_timeout=120.0)
        try:
            cluster.start(form_bound=120.0)
            conn = Conn(cluster.nodes[cluster.raft_leader() or "n0"].http_port)
            names = [f"t{i:05d}" for i in range(a.topics)]
            ms = create(conn, names[: a.before], 3)
            print(json.dumps({"created": a.before, "ms": round(ms, 2)}), flush=True)
            victim = "n1" if cluster.raft_leader() != "n1" else "n2"
            cluster.kill(victim)
            survivors = [n for n in cluster.names if n != victim]

            def failed_over() -> bool:  # every partition led by a survivor again
                return (
                    sum(int(partitions_view(cluster, n).get("leading") or 0) for n in survivors) >= a.before
                )

            # (benchmarks.scale measures the failover; here it only has to happen)
            if poll_until(failed_over, 120.0) is None:
                raise SystemExit("the survivors did not take every leadership over within 120 s")
            if a.profile is not None:
                spy = str(Path(sys.executable).parent / "py-spy")
                rec = [spy, "record", "--nonblocking", "--idle", "-r", "100", "-f", "speedscope"]
                rec += ["-o", str(a.profile)]
                harness.nodes.twistd_command = lambda: [*rec, "--", *plain()]
            cluster.restart(victim)
            harness.nodes.twistd_command = plain
            poll_until(lambda: cluster.formed(), 120.0)
            conn = Conn(cluster.nodes[cluster.raft_leader() or "n0"].http_port)
            ms = create(conn, names[a.before :], 3)
            row0 = {
                "created": a.topics,
                "ms": round(ms, 2),
                "restarted": victim,
                "t": time.strftime("%H:%M:%S"),
            }
            print(json.dumps(row0), flush=True)
            time.sleep(a.settle)
            for _ in range(a.rounds):
                scrub0 = scrub_state(cluster)
                row: dict[str, object] = {"idle_cpu": measure(cluster, a.seconds)}
                row["scrubbing"] = scrubbed(scrub0, scrub_state(cluster))
                row["applied"] = {n: v.get("applied") for n, v in cluster.raft_views().items()}
                row["load"] = round(os.getloadavg()[0], 1)
                row["t"] = time.strftime("%H:%M:%S")
                print(json.dumps(row), flush=True)
            proc = cluster.nodes[victim].proc
            if a.profile is not None and proc is not None:
                proc.send_signal(signal.SIGINT)  # py-spy writes its file, then ends the node
                proc.wait(timeout=120)
        finally:
            cluster.close()


if __name__ == "__main__":
    main()
