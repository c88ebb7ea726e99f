"""Raft figures on this machine: metadata proposal latency and throughput,
and election time after ``kill -9`` of the leader, on 3 real twistd nodes
on 127.0.0.1.

    python -m benchmarks.raft [--nodes 3] [--changes 2000] [--clients 32] [--kills 5]

A "change" is ``PUT /v1/topics/{name}`` (a new topic, 1 partition): the
proposal, its commit on a majority (each voter fsyncs the entry), and its
application on the node that took the request -- the broker's own LMDB
write included -- before the 201.  Sequential changes give latency; many
clients at once give throughput (the driver batches whatever arrives while
a Ready is being persisted).  Election time is from the SIGKILL to the
moment every survivor names the same new leader (polled every 20 ms).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness import NodeProcess


def _get(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def _put(url: str) -> int:
    req = urllib.request.Request(url, data=b"{}", method="PUT", headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()
        return r.status


def _raft(node: NodeProcess) -> dict[str, Any]:
    body = _get(node.url + "/v1/cluster")
    return body["raft"] if body else {}


def _wait(cond: Any, bound: float, step: float = 0.02) -> float:
    pause = threading.Event()
    t0 = time.monotonic()
    while time.monotonic() - t0 < bound:
        if cond():
            return time.monotonic() - t0
        pause.wait(step)
    raise SystemExit(f"condition not reached in {bound} s")


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--changes", type=int, default=2000)
    ap.add_argument("--sequential", type=int, default=300)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--kills", type=int, default=5)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="sprawl-raft-bench-"))
    names = [f"b{i}" for i in range(args.nodes)]
    nodes: list[NodeProcess] = []
    try:
        first = NodeProcess(base / names[0], "--node-id", names[0]).start()
        nodes.append(first)
        for nm in names[1:]:
            nodes.append(
                NodeProcess(base / nm, "--node-id", nm, "--seeds", f"127.0.0.1:{first.peer_port}").start()
            )

        def formed() -> bool:
            views = [_raft(n) for n in nodes]
            ls = {v.get("leader") for v in views}
            return (
                len(ls) == 1
                and "" not in ls
                and None not in ls
                and all(v.get("voters") == names for v in views)
            )

        _wait(formed, 60, 0.2)
        leader_name = _raft(nodes[0])["leader"]
        leader = nodes[names.index(leader_name)]
        follower = next(n for n in nodes if n is not leader)
        print(f"{args.nodes} voters, leader {leader_name}; payload: one new 1-partition topic per change")

        for label, node in (("via leader", leader), ("via follower", follower)):
            lat = []
            for i in range(args.sequential):
                t0 = time.perf_counter()
                _put(f"{node.url}/v1/topics/seq-{label[4]}-{i}")
                lat.append(time.perf_counter() - t0)
            print(
                f"sequential {label:13s} n={len(lat)}  p50 {_pct(lat, 50) * 1000:.2f} ms"
                f"  p99 {_pct(lat, 99) * 1000:.2f} ms  max {max(lat) * 1000:.2f} ms"
            )

        lat2: list[float] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            node = nodes[i % len(nodes)]
            t0 = time.perf_counter()
            _put(f"{node.url}/v1/topics/par-{i}")
            with lock:
                lat2.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(one, range(args.changes)))
        took = time.perf_counter() - t0
        print(
            f"concurrent {args.clients} clients over all nodes: {args.changes} changes in {took:.2f} s"
            f" = {args.changes / took:.0f} changes/s  p50 {_pct(lat2, 50) * 1000:.1f} ms"
            f"  p99 {_pct(lat2, 99) * 1000:.1f} ms"
        )

        elections = []
        for _ in range(args.kills):
            leader_name = _raft(nodes[0])["leader"] or _raft(nodes[1])["leader"]
            i = names.index(leader_name)
            victim = nodes[i]
            survivors = [n for n in nodes if n is not victim]
            victim.kill()
            t0 = time.monotonic()

            def new_leader(survivors: list[NodeProcess] = survivors, leader_name: str = leader_name) -> bool:
                ls = {_raft(s).get("leader") for s in survivors}
                return len(ls) == 1 and None not in ls and "" not in ls and leader_name not in ls

            _wait(new_leader, 30)
            elections.append(time.monotonic() - t0)
            nodes[i] = NodeProcess(
                victim.data_dir, "--node-id", leader_name, "--seeds", f"127.0.0.1:{survivors[0].peer_port}"
            ).start()
            _wait(formed, 60, 0.1)
        if elections:
            print(
                f"election after kill -9 of the leader, {len(elections)} runs: "
                f"median {statistics.median(elections):.2f} s, min {min(elections):.2f} s,"
                f" max {max(elections):.2f} s"
            )
    finally:
        for n in nodes:
            n.kill()


if __name__ == "__main__":
    main()
