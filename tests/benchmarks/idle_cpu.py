#!/usr/bin/env python3
"""Idle CPU of each node of a kept cluster (issue 23): CPU seconds per wall second, and a profile.

    PYTHONPATH=tests python -m benchmarks.scale --nodes 3 --topics 10000 --keep --data-dir D
    PYTHONPATH=tests python -m benchmarks.idle_cpu D/sprawl-scale-XXXX --nodes 3 \\
        [--settle 60] [--seconds 60] [--rounds 2] [--profile DIR] [--cluster-gets 50] [--ready-bound 180] \\
        [--counts]

Starts the nodes ``n0`` .. ``n{N-1}`` kept under the directory given
(``benchmarks.scale --keep``; build once, measure many times: creating
10,000 topics on 3 nodes takes many minutes) -- ``n0`` first, the others
seeded from it, on new ports -- waits until they form one cluster and every
node is ready, lets them settle ``--settle`` seconds, then measures each
node's CPU over ``--seconds`` of no traffic (user + system seconds of its
process from ``/proc/PID/stat`` over the wall seconds: the figure another
job's load moves least), ``--rounds`` times, each node's CPU by thread beside
it (``/proc/PID/task``) and the nodes whose scrub ran in the window.  With
``--ready-bound S`` it waits for one Raft leader with every node a voter,
then at most ``S`` wall seconds for every ``/readyz``, and measures even if
a node is still not ready (a replica that never catches up).  With ``--counts`` each window
also prints each node's peer frames sent and received, peer connects, gossip packets and GC
CPU per second (``/metrics`` read just before and after it: the work a cut removes, which
the machine's load does not move).  With ``--profile DIR`` it then
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

from benchmarks.scale import Conn, cpu_seconds, scrub_state, scrubbed, send_retrying
from harness import NodeCluster, poll_until


def measure(cluster: NodeCluster, seconds: float, threads: dict[str, Any] | None = None) -> dict[str, float]:
    """% of a core each node used over ``seconds`` (CPU seconds / wall seconds);
    ``threads``, when given, gets each node's CPU milliseconds per second by
    thread name (the reactor is ``twistd``; LMDB's writer and readers, the
    thread pools), user and system time apart."""
    pids = {n: cluster.nodes[n].proc.pid for n in cluster.names}  # type: ignore[union-attr]
    before = {n: cpu_seconds(p) for n, p in pids.items()}
    by_thread = {n: thread_ticks(p) for n, p in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    took = time.monotonic() - t0
    if threads is not None:
        hz = os.sysconf("SC_CLK_TCK")
        for n, p in pids.items():
            now = thread_ticks(p)
            threads[n] = {
                name: {
                    "user": round((u - by_thread[n].get(name, (0, 0))[0]) / hz / took * 1000, 1),
                    "sys": round((sy - by_thread[n].get(name, (0, 0))[1]) / hz / took * 1000, 1),
                }
                for name, (u, sy) in sorted(now.items())
                if (u, sy) != by_thread[n].get(name)
            }
    return {n: round((cpu_seconds(p) - before[n]) / took * 100, 2) for n, p in pids.items()}


def thread_ticks(pid: int) -> dict[str, tuple[int, int]]:
    """(user, system) clock ticks of a process's threads so far, summed by
    thread name (numbered pool threads together)."""
    out: dict[str, tuple[int, int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # (the thread ended)
        name = stat[stat.index("(") + 1 : stat.rindex(")")].rstrip("0123456789-")
        fields = stat.rsplit(")", 1)[1].split()
        u, sy = out.get(name, (0, 0))
        out[name] = (u + int(fields[11]), sy + int(fields[12]))
    return out


#: The counters ``--counts`` reads from each node's ``/metrics`` around a window.
COUNTED = (
    "sprawl_peer_frames_sent_total",
    "sprawl_peer_frames_received_total",
    "sprawl_peer_connects_total",
    "sprawl_gossip_packets_sent_total",
    "sprawl_gossip_packets_received_total",
    "sprawl_gc_cpu_seconds_total",
)


def counters(cluster: NodeCluster) -> dict[str, dict[str, float]]:
    """Each node's :data:`COUNTED` counters now (summed over their labels)."""
    from harness.nodes import metrics_text

    out: dict[str, dict[str, float]] = {}
    for n in cluster.names:
        got = dict.fromkeys(COUNTED, 0.0)
        # (only these lines: a node of 10,000 partitions exposes many more)
        for line in metrics_text(cluster.url(n), timeout=30.0).splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in got:
                got[name] += float(line.rsplit(" ", 1)[1])
        out[n] = got
    return out


def rates(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], seconds: float) -> Any:
    """Per second between two :func:`counters` readings (``_total`` left off the names)."""
    return {
        n: {k.removesuffix("_total"): round((after[n][k] - before[n][k]) / seconds, 3) for k in COUNTED}
        for n in after
    }


def start_kept(cluster: NodeCluster, bound: float, ready_bound: float) -> None:
    """Start a kept cluster's nodes -- ``n0`` first, the others seeded from it --, wait at most
    ``bound`` seconds for one Raft leader with every node a voter (else ``SystemExit``), then at
    most ``ready_bound`` wall seconds for every ``/readyz``; the nodes still not ready are
    printed (a replica that never catches up), not waited for."""
    t0 = time.monotonic()
    first, rest = cluster.names[0], cluster.names[1:]
    cluster._launch(first, None)
    for n in rest:
        cluster._launch(n, f"127.0.0.1:{cluster.nodes[first].peer_port}")
    if poll_until(lambda: agreed(cluster), bound, step=1.0) is None:
        raise SystemExit(f"no Raft leader with every node a voter within {bound}s")
    print(json.dumps({"leader_s": round(time.monotonic() - t0, 1)}), flush=True)
    ready_by = time.monotonic() + ready_bound
    while time.monotonic() < ready_by:  # (wall seconds, not stretched by the load)
        if all(cluster.get(n, "/readyz", timeout=5)[0] == 200 for n in cluster.names):
            break
        time.sleep(2.0)
    answers = {n: cluster.get(n, "/readyz", timeout=5) for n in cluster.names}
    unready = {n: body for n, (status, body) in answers.items() if status != 200}
    if unready:
        print(json.dumps({"not_ready": unready}), flush=True)


def agreed(cluster: NodeCluster) -> bool:
    """Every node names the same Raft leader and sees all of them as voters
    (readiness not asked: see ``--ready-bound``)."""
    views = cluster.raft_views()
    leaders = {v.get("leader") for v in views.values()}
    return (
        len(views) == len(cluster.names)
        and len(leaders) == 1
        and None not in leaders
        and all(sorted(v.get("voters") or ()) == sorted(cluster.names) for v in views.values())
    )


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
    ap.add_argument(
        "--counts",
        action="store_true",
        help="also print each node's peer frames, peer connects, gossip packets and GC CPU per second "
        "over each window (from /metrics, read just before and after it)",
    )
    ap.add_argument("--bound", type=float, default=300.0, help="give up waiting after this many seconds")
    ap.add_argument(
        "--ready-bound",
        type=float,
        help="wait for one Raft leader, then at most this many seconds for every node's /readyz "
        "(and measure even if some node is not ready: a replica that never catches up)",
    )
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    cluster = NodeCluster(a.base, a.nodes, startup_timeout=a.bound)
    try:
        t0 = time.monotonic()
        if a.ready_bound is None:
            cluster.start(form_bound=a.bound)
            if poll_until(lambda: cluster.formed(), a.bound) is None:
                raise SystemExit(f"the cluster did not form within {a.bound}s")
        else:
            start_kept(cluster, a.bound, a.ready_bound)
        print(json.dumps({"formed_s": round(time.monotonic() - t0, 1)}), flush=True)
        if a.topics:
            made = fill(cluster, a.topics, min(3, a.nodes), a.bound)
            print(json.dumps({"created": made}), flush=True)
        time.sleep(a.settle)
        for _ in range(a.rounds):
            scrub0 = scrub_state(cluster)
            threads: dict[str, Any] = {}
            counts0 = counters(cluster) if a.counts else None
            t0 = time.monotonic()
            cpu = measure(cluster, a.seconds, threads)
            row = {"idle_cpu": cpu, "seconds": a.seconds, "load": round(os.getloadavg()[0], 1)}
            if counts0 is not None:
                row["per_second"] = rates(counts0, counters(cluster), time.monotonic() - t0)
            row["leader"] = cluster.raft_leader()
            row["scrubbing"] = scrubbed(scrub0, scrub_state(cluster))
            row["threads_ms_per_s"] = threads
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
