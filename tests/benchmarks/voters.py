"""Time to the Raft voter target on a forming cluster, on real twistd nodes on 127.0.0.1.

    PYTHONPATH=. python -m benchmarks.voters [--sizes 3,5] [--repeat 5]

Each run starts N fresh nodes (the first founds the cluster, the others are
seeded from it, started together) with ``--log-format json`` and measures,
from the nodes' own log timestamps (:func:`harness.time_to_voters`),
the time from the last member's gossip join (the first node to log it) to
the first node logging a configuration of the target's voters (3 for 3
nodes, 5 for 5).  It also shows the leader's own figure (``raft.time_to_target_s``
in ``GET /v1/cluster``: from the last join it saw to the target, applied) and
how long after the last node started every node answered
``/readyz?fault_tolerant=1`` (what ``bin/sprawl-cluster`` waits for).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness import NodeCluster, http_json, poll_until, time_to_voters
from sprawl.cluster.voters import target_voters


def one_run(base: Path, n: int) -> dict[str, Any]:
    """Form one cluster of ``n``; its figures."""
    c = NodeCluster(base, n, "--log-format", "json")
    try:
        first = c.names[0]
        c._launch(first, None)
        seeds = f"127.0.0.1:{c.nodes[first].peer_port}"
        with ThreadPoolExecutor(max(1, n - 1)) as pool:
            list(pool.map(lambda nm: c._launch(nm, seeds), c.names[1:]))

        def ready() -> bool:
            return all(http_json(c.url(x) + "/readyz?fault_tolerant=1", timeout=2)[0] == 200 for x in c.names)

        to_ready = poll_until(ready, 60.0, step=0.02)
        status, body = http_json(c.url(first) + "/v1/cluster")
        leader_view = body.get("raft", {}) if status == 200 else {}
    finally:
        c.close()
    want = target_voters(n)
    return {
        "from_logs": time_to_voters([c.nodes[x].log_path for x in c.names], want),
        "leader": leader_view.get("time_to_target_s"),
        "ready_after_start": to_ready,
    }


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    ms = sorted(v * 1000 for v in values)
    return f"median {statistics.median(ms):.0f} ms ({ms[0]:.0f}-{ms[-1]:.0f})"


def main() -> None:
    """Run and print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="3,5", help="cluster sizes [3,5]")
    ap.add_argument("--repeat", type=int, default=5, help="runs per size [5]")
    args = ap.parse_args()
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        runs = []
        for k in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix=f"sprawl-voters-{n}-") as d:
                r = one_run(Path(d), n)
            runs.append(r)
            print(f"{n} nodes, run {k + 1}: {r}", file=sys.stderr, flush=True)
        logs = [r["from_logs"] for r in runs if r["from_logs"] is not None]
        leader = [r["leader"] for r in runs if r["leader"] is not None]
        ready = [r["ready_after_start"] for r in runs if r["ready_after_start"] is not None]
        rows.append((n, target_voters(n), _fmt(logs), _fmt(leader), _fmt(ready)))
    print(
        "| nodes | voters | last join → target voters (logs) | leader's own figure | all nodes fault-tolerant after the last start |"
    )
    print("|---|---|---|---|---|")
    for n, v, logs_s, leader_s, ready_s in rows:
        print(f"| {n} | {v} | {logs_s} | {leader_s} | {ready_s} |")


if __name__ == "__main__":
    main()
