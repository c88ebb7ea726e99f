#!/usr/bin/env python3
"""Where a topic creation's time goes (issue 23): real ``twistd sprawl`` nodes on 127.0.0.1.

    PYTHONPATH=tests python -m benchmarks.create_cost [--nodes 3] [--topics 500,1000] [--batch 100]
                                                      [--clients 8]

It grows a cluster (replication factor ``min(3, nodes)``) to each count of
single-partition topics and, at each count, creates ``--batch`` more:

* **sequential**: from one keep-alive client on the first node, ms per create;
* **LMDB commits** per create on each node (``sprawl_lmdb_commit_duration_seconds``
  from ``/metrics``: count and seconds -- every commit is an fsync), and each
  node's CPU ms per create (``/proc/PID/stat``);
* **concurrent**: ``--clients`` clients on the nodes in turn, ``--batch`` creates
  each at once; wall ms per create (Raft puts the proposals that wait for one
  Ready into one append, and the store groups their writes into one commit).

Prints one JSON line per count.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.scale import Conn, cpu_seconds, create
from harness import NodeCluster

_COUNT = re.compile(r"^sprawl_lmdb_commit_duration_seconds_count (\S+)", re.M)
_SUM = re.compile(r"^sprawl_lmdb_commit_duration_seconds_sum (\S+)", re.M)


def commits(cluster: NodeCluster, node: str) -> tuple[float, float]:
    """(LMDB commits so far, their seconds) of ``node``."""
    _, body = Conn(cluster.nodes[node].http_port).call("GET", "/metrics")
    text = body.decode()
    count, total = _COUNT.search(text), _SUM.search(text)
    assert count is not None and total is not None, "no LMDB commit histogram in /metrics"
    return float(count.group(1)), float(total.group(1))


def snapshot(cluster: NodeCluster) -> dict[str, tuple[float, float, float]]:
    """Per node: (commits, commit seconds, CPU seconds) so far."""
    out = {}
    for n in cluster.names:
        proc = cluster.nodes[n].proc
        assert proc is not None
        c, s = commits(cluster, n)
        out[n] = (c, s, cpu_seconds(proc.pid))
    return out


def per_create(before: dict[str, Any], after: dict[str, Any], n: int) -> dict[str, dict[str, float]]:
    """Each node's commits, commit ms and CPU ms per create between two snapshots."""
    return {
        node: {
            "commits": round((after[node][0] - before[node][0]) / n, 2),
            "commit_ms": round((after[node][1] - before[node][1]) * 1000 / n, 1),
            "cpu_ms": round((after[node][2] - before[node][2]) * 1000 / n, 1),
        }
        for node in before
    }


def concurrent(cluster: NodeCluster, prefix: str, clients: int, each: int) -> tuple[float, list[str]]:
    """Wall ms per create with ``clients`` clients creating ``each`` topics at once."""
    errors: list[str] = []

    def work(k: int) -> None:
        conn = Conn(cluster.nodes[cluster.names[k % len(cluster.names)]].http_port)
        try:
            create(conn, [f"{prefix}-{k}-{j}" for j in range(each)], min(3, len(cluster.names)))
        except BaseException as e:  # (SystemExit from an unexpected status, too)
            errors.append(repr(e)[:300])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (time.perf_counter() - t0) * 1000 / (clients * each), errors


def main() -> None:
    """Grow the cluster, measure at each count, print JSON lines."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--topics", default="500,1000", help="topic counts, ascending")
    ap.add_argument("--batch", type=int, default=100, help="creates measured per figure")
    ap.add_argument("--clients", type=int, default=8)
    a = ap.parse_args()
    rf = min(3, a.nodes)
    tmp = tempfile.mkdtemp(prefix="sprawl-create-")
    cluster = NodeCluster(Path(tmp), a.nodes, startup_timeout=120)
    try:
        cluster.start()
        conn = Conn(cluster.nodes[cluster.names[0]].http_port)
        made = 0
        for count in (int(x) for x in a.topics.split(",")):
            create(conn, [f"t{i:05d}" for i in range(made, count)], rf)
            made = count
            before = snapshot(cluster)
            seq_ms = create(conn, [f"s{count:05d}-{i}" for i in range(a.batch)], rf)
            after = snapshot(cluster)
            each = max(a.batch // a.clients, 1)
            conc_ms, errors = concurrent(cluster, f"c{count:05d}", a.clients, each)
            done = snapshot(cluster)
            row = {
                "nodes": a.nodes,
                "topics": count,
                "raft_leader": cluster.raft_leader(),
                "sequential_ms": round(seq_ms, 1),
                "sequential_per_node": per_create(before, after, a.batch),
                f"concurrent_{a.clients}_ms": round(conc_ms, 1),
                "concurrent_per_node": per_create(after, done, a.clients * each),
                "errors": errors[:3],
            }
            print(json.dumps(row), flush=True)
    finally:
        cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
