#!/usr/bin/env python3
"""Idle CPU of each node of a kept cluster (issue 23): CPU seconds per wall second, and a profile.

    PYTHONPATH=tests python -m benchmarks.scale --nodes 3 --topics 10000 --keep --data-dir D
    PYTHONPATH=tests python -m benchmarks.idle_cpu D/sprawl-scale-XXXX --nodes 3 \\
        [--settle 60] [--seconds 60] [--rounds 2] [--profile DIR] [--cluster-gets 50]

Starts the nodes ``n0`` .. ``n{N-1}`` kept under the directory given
(``benchmarks.scale --keep``; build once, measure many times: creating
10,000 topics on 3 nodes takes many minutes) -- ``n0`` first, the others
seeded from it, on new ports -- waits until they form one cluster and every
node is ready, lets them settle ``--settle`` seconds, then measures each
node's CPU over ``--seconds`` of no traffic (user + system seconds of its
process from ``/proc/PID/stat`` over the wall seconds: the figure another
job's load moves least), ``--rounds`` times.  With ``--profile DIR`` it then
records each node with py-spy (``--idle`` off, so only the samples where the
node's threads run count) for ``--seconds`` more, all nodes at once, as
speedscope JSON ``DIR/nK.json`` and a top-of-stack summary printed per node.
With ``--cluster-gets N`` it then asks each node ``GET /v1/cluster`` N times
(one after the other) and prints the node's CPU milliseconds per answer (what
a poller of the cluster view, or a metrics scrape, costs it).
The nodes are stopped at the end (SIGKILL: their data stays as kept).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.scale import Conn, cpu_seconds, send_retrying
from harness import NodeCluster, poll_until


def measure(cluster: NodeCluster, seconds: float) -> dict[str, float]:
    """% of a core each node used over ``seconds`` (CPU seconds / wall seconds)."""
    pids = {n: cluster.nodes[n].proc.pid for n in cluster.names}  # type: ignore[union-attr]
    before = {n: cpu_seconds(p) for n, p in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    took = time.monotonic() - t0
    return {n: round((cpu_seconds(p) - before[n]) / took * 100, 2) for n, p in pids.items()}


def cluster_get_cost(cluster: NodeCluster, gets: int) -> dict[str, float]:
    """Each node's CPU milliseconds per ``GET /v1/cluster``, over ``gets`` in a row."""
    out = {}
    for n in cluster.names:
        pid = cluster.nodes[n].proc.pid  # type: ignore[union-attr]
        before = cpu_seconds(pid)
        for _ in range(gets):
            status, _body = cluster.get(n, "/v1/cluster", timeout=30.0)
            if status != 200:
                raise SystemExit(f"GET /v1/cluster on {n}: {status}")
        out[n] = round((cpu_seconds(pid) - before) / gets * 1000, 2)
    return out


def fill(cluster: NodeCluster, topics: int, rf: int, bound: float) -> int:
    """Create the topics ``t00000`` .. of ``benchmarks.scale`` that are missing
    below ``topics`` (a build stopped short: a 503 past its retries), one
    partition each, through the Raft leader; how many were created."""
    leader = cluster.raft_leader() or cluster.names[0]
    conn = Conn(cluster.nodes[leader].http_port)
    made = 0
    for i in range(topics):
        path = f"/v1/topics/t{i:05d}"
        if conn.call("GET", path)[0] == 200:
            continue

        def send(path: str = path) -> tuple[int, bytes, float | None]:
            status, text = conn.call("PUT", path, {"partitions": 1, "replication_factor": rf})
            return status, text, conn.retry_after

        status, text = send_retrying(send, "PUT", retry_for=bound)
        if status not in (200, 201):
            raise SystemExit(f"PUT {path}: {status} {text[:300]!r}")
        made += 1
    return made


def py_spy() -> str:
    """The py-spy beside this interpreter, or the one on ``PATH``."""
    exe = Path(sys.executable).parent / "py-spy"
    found = str(exe) if exe.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("py-spy is not installed (pip install py-spy)")
    return found


def profile(cluster: NodeCluster, seconds: float, out: Path) -> dict[str, Path]:
    """py-spy of every node at once over ``seconds``; speedscope files by node."""
    out.mkdir(parents=True, exist_ok=True)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    files: dict[str, Path] = {}
    for n in cluster.names:
        pid = cluster.nodes[n].proc.pid  # type: ignore[union-attr]
        files[n] = out / f"{n}.json"
        cmd = [py_spy(), "record", "--pid", str(pid), "--duration", str(int(seconds))]
        cmd += ["--format", "speedscope", "--rate", "100", "-o", str(files[n])]
        procs[n] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for n, p in procs.items():
        try:
            _, err = p.communicate(timeout=seconds * 4 + 60)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate(timeout=10)
        if p.returncode:
            print(f"py-spy of {n} failed: {err.decode(errors='replace')[-500:]}", flush=True)
    return files


#: Leaf frames of a thread waiting, not working (py-spy counts some of them as active).
WAITING = ("doPoll (epollreactor.py", "Condition.wait (threading.py", "Queue.get (queue.py")


def summary(path: Path, top: int = 25) -> dict[str, Any]:
    """From a speedscope file: the reactor thread's busy samples (its waits in
    ``epoll`` left out) and the frames (function file:line) most often on
    their stack (inclusive) and on top (self), as shares of them."""
    doc = json.loads(path.read_text())
    frames = doc["shared"]["frames"]
    incl: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0.0
    for prof in doc["profiles"]:
        if "MainThread" not in prof.get("name", "MainThread"):
            continue
        for stack, weight in zip(prof["samples"], prof["weights"], strict=True):
            names = [
                f"{frames[i]['name']} ({Path(frames[i].get('file', '')).name}:{frames[i].get('line', '')})"
                for i in stack
            ]
            if not names or any(w in names[-1] for w in WAITING):
                continue
            total += weight
            for nm in set(names):
                incl[nm] += weight
            own[names[-1]] += weight
    share = lambda c: [(k, round(v / max(total, 1e-9) * 100, 1)) for k, v in c.most_common(top)]  # noqa: E731
    return {"busy_seconds": round(total, 2), "inclusive": share(incl), "self": share(own)}


def main() -> None:
    """Start the kept cluster, measure each node's idle CPU, profile it if asked."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "base", type=Path, help="a directory kept by benchmarks.scale --keep (holds n0/, n1/, ...)"
    )
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--settle", type=float, default=60.0, help="seconds after the cluster formed")
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds of each measurement")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument(
        "--topics", type=int, default=0, help="first create the scale topics missing below this count"
    )
    ap.add_argument("--profile", type=Path, help="record each node with py-spy into this directory")
    ap.add_argument(
        "--cluster-gets", type=int, default=0, help="then time this many GET /v1/cluster per node"
    )
    ap.add_argument("--bound", type=float, default=300.0, help="give up waiting after this many seconds")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    cluster = NodeCluster(a.base, a.nodes, startup_timeout=a.bound)
    try:
        t0 = time.monotonic()
        cluster.start(form_bound=a.bound)
        if poll_until(lambda: cluster.formed(), a.bound) is None:
            raise SystemExit(f"the cluster did not form within {a.bound}s")
        print(json.dumps({"formed_s": round(time.monotonic() - t0, 1)}), flush=True)
        if a.topics:
            made = fill(cluster, a.topics, min(3, a.nodes), a.bound)
            print(json.dumps({"created": made}), flush=True)
        time.sleep(a.settle)
        for _ in range(a.rounds):
            cpu = measure(cluster, a.seconds)
            row = {"idle_cpu": cpu, "seconds": a.seconds, "load": round(os.getloadavg()[0], 1)}
            row["leader"] = cluster.raft_leader()
            print(json.dumps(row), flush=True)
        if a.cluster_gets:
            row = {"cluster_get_cpu_ms": cluster_get_cost(cluster, a.cluster_gets), "gets": a.cluster_gets}
            print(json.dumps(row), flush=True)
        if a.profile:
            for n, f in profile(cluster, a.seconds, a.profile).items():
                if f.exists():
                    print(json.dumps({"node": n, "profile": str(f), **summary(f)}, indent=1), flush=True)
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
