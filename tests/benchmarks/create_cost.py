#!/usr/bin/env python3
"""What a topic creation, deletion, description and list page cost (issue 23):
real ``twistd sprawl`` nodes on 127.0.0.1.

    PYTHONPATH=tests python -m benchmarks.create_cost [--nodes 3] [--topics 100,1000,10000]
                                                      [--batch 100] [--clients 8] [--table]
                                                      [--settle 2] [--idle 2]
                                                      [--reuse DIR] [--py-spy DIR] [--strace DIR]
                                                      [--node-arg=--wal ...]

It grows a cluster (replication factor ``min(3, nodes)``) to each count of
single-partition topics and, at each count, measures ``--batch`` operations
of each kind from one keep-alive client on the first node:

* **create**: ``PUT /v1/topics/NAME`` of new topics, ms per create;
* **describe**: ``GET /v1/topics/NAME`` of random existing topics;
* **list**: ``GET /v1/topics?limit=100&after=NAME`` -- one page of the
  paginated list, after a random existing name;
* **delete**: ``DELETE /v1/topics/NAME`` of the topics the create step made
  (so the count stays where it was);

and for each kind the **LMDB commits** per operation on each node
(``sprawl_lmdb_commit_duration_seconds`` from ``/metrics``: count and
seconds -- every commit is an fsync) and each node's **CPU ms** per
operation (``/proc/PID/stat``): ``cpu_ms`` all of it, ``cpu_ms_net`` less the
node's idle rate (measured over ``--idle`` seconds after ``--settle`` seconds
of rest at each count) times the batch's seconds.  Then **concurrent** creates: ``--clients`` clients on the
nodes in turn, ``--batch`` creates between them at once; wall ms per create
(Raft puts the proposals that wait for one Ready into one append, and the
store groups their writes into one commit).

Prints one JSON line per count; ``--table`` adds a Markdown table of them.

``--reuse DIR`` starts the nodes on the data dirs in ``DIR/N-nodes`` (a
kept data set, e.g. one ``benchmarks.scale --reuse`` grew to 10,000 topics)
and creates only the ``tNNNNN`` topics still missing; the dirs are left
there (run on a *copy*: the run changes them).  ``--py-spy DIR`` samples the
Raft leader and the answering node with ``py-spy record --format raw``
during each count's creates (``DIR/create-COUNT-NODE.txt``: collapsed
stacks, one line per stack with its sample count); ``--py-spy-all`` samples
every node.  ``--strace DIR`` traces every node's writes, syncs and sends
during each count's creates (``strace -f``: wall times under it mean
nothing, the counts are exact) and adds ``syscalls_per_create`` to the row:
per node, fsyncs (``fdatasync``/``fsync``), bytes written to LMDB's
``data.mdb`` and to the write-ahead log, and socket writes (peer frames and
HTTP answers, each a hop).  ``--spy-native`` adds C frames to py-spy's stacks.
Each node's row also has ``gc_ms`` (the garbage collector's CPU per
operation, and by generation with the collections run: ``gc_ms_by_gen``,
``gc_runs_by_gen``) and ``holds`` / ``holds_joined`` (the LMDB store's holds
begun per operation, and those an urgent write ended), from ``/metrics``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.scale import Conn, cpu_seconds, create, timed
from harness import NodeCluster
from harness.nodes import node_pythonpath

_COUNT = re.compile(r"^sprawl_lmdb_commit_duration_seconds_count (\S+)", re.M)
_SUM = re.compile(r"^sprawl_lmdb_commit_duration_seconds_sum (\S+)", re.M)
_HOLDS = re.compile(r"^sprawl_lmdb_holds_total (\S+)", re.M)
_JOINED = re.compile(r"^sprawl_lmdb_holds_joined_total (\S+)", re.M)
_GC = re.compile(r'^sprawl_gc_cpu_seconds_total\{generation="(\d)"\} (\S+)', re.M)
_GC_RUNS = re.compile(r'^sprawl_gc_pause_seconds_count\{generation="(\d)"\} (\S+)', re.M)


#: Each node's garbage collector at its last read: CPU seconds of generations 0, 1, 2,
#: then collections of each (:func:`commits` keeps them; :func:`snapshot` takes them).
_GC_SEEN: dict[str, list[float]] = {}


def commits(cluster: NodeCluster, node: str) -> tuple[float, float, float, float, float]:
    """(LMDB commits so far, their seconds, the garbage collector's CPU seconds
    of every generation, the store's holds begun and holds joined) of ``node``."""
    _, body = Conn(cluster.nodes[node].http_port).call("GET", "/metrics")
    text = body.decode()
    count, total = _COUNT.search(text), _SUM.search(text)
    assert count is not None and total is not None, "no LMDB commit histogram in /metrics"
    gc_cpu = sum(float(m.group(2)) for m in _GC.finditer(text))
    gc_by_gen = {m.group(1): float(m.group(2)) for m in _GC.finditer(text)}
    runs = {m.group(1): float(m.group(2)) for m in _GC_RUNS.finditer(text)}
    _GC_SEEN[node] = [gc_by_gen.get(g, 0.0) for g in "012"] + [runs.get(g, 0.0) for g in "012"]
    holds, joined = _HOLDS.search(text), _JOINED.search(text)
    return (
        float(count.group(1)),
        float(total.group(1)),
        gc_cpu,
        float(holds.group(1)) if holds else 0.0,
        float(joined.group(1)) if joined else 0.0,
    )


def cpu_split(pid: int) -> tuple[float, float, float]:
    """A process's CPU seconds so far: (the main thread's user, its system,
    the other threads' user + system)."""
    tick = os.sysconf("SC_CLK_TCK")
    main_u = main_s = others = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # (a thread that ended meanwhile)
        u, s = int(fields[11]) / tick, int(fields[12]) / tick
        if task.name == str(pid):
            main_u, main_s = u, s
        else:
            others += u + s
    return main_u, main_s, others


def snapshot(cluster: NodeCluster, closing: bool = False) -> dict[str, tuple[float, ...]]:
    """Per node: (commits, commit seconds, CPU seconds, :func:`cpu_split`, the
    garbage collector's CPU seconds, holds begun, holds joined) so far.

    A window's opening snapshot reads ``/metrics`` before the CPU, its
    ``closing`` one after: rendering ``/metrics`` costs a node CPU that grows
    with its partitions (0.5-0.67 s of it for 5 MB of text at 10,400 topics),
    which must not count as the window's (2.5-3.3 ms per create of a 200-create
    batch there, on every node)."""
    out: dict[str, tuple[float, ...]] = {}
    for n in cluster.names:
        proc = cluster.nodes[n].proc
        assert proc is not None
        if closing:
            cpu = (cpu_seconds(proc.pid), *cpu_split(proc.pid))
            c, s, gc_cpu, holds, joined = commits(cluster, n)
        else:
            c, s, gc_cpu, holds, joined = commits(cluster, n)
            cpu = (cpu_seconds(proc.pid), *cpu_split(proc.pid))
        out[n] = (c, s, *cpu, gc_cpu, holds, joined, *_GC_SEEN.get(n, [0.0] * 6))
    return out


def per_create(
    before: dict[str, Any],
    after: dict[str, Any],
    n: int,
    idle: dict[str, float] | None = None,
    seconds: float = 0.0,
) -> dict[str, dict[str, float]]:
    """Each node's commits, commit ms and CPU ms per operation between two
    snapshots; with ``idle`` (each node's CPU seconds per second with no
    traffic) and the ``seconds`` between the snapshots, also ``cpu_ms_net``:
    the CPU less what the node would have spent idle meanwhile."""
    out = {}
    for node in before:
        cpu = after[node][2] - before[node][2]
        row = {
            "commits": round((after[node][0] - before[node][0]) / n, 2),
            "commit_ms": round((after[node][1] - before[node][1]) * 1000 / n, 1),
            "cpu_ms": round(cpu * 1000 / n, 2),
            # (the reactor thread's user / system CPU, and the other threads')
            "cpu_split_ms": [round((after[node][i] - before[node][i]) * 1000 / n, 2) for i in (3, 4, 5)],
            # (of it, the garbage collector's, on the reactor thread)
            "gc_ms": round((after[node][6] - before[node][6]) * 1000 / n, 3),
            # (by generation 0 / 1 / 2: CPU ms and collections, per operation)
            "gc_ms_by_gen": [round((after[node][i] - before[node][i]) * 1000 / n, 3) for i in (9, 10, 11)],
            "gc_runs_by_gen": [round((after[node][i] - before[node][i]) / n, 3) for i in (12, 13, 14)],
            # (the store's holds begun per operation, and of them those an urgent write ended)
            "holds": round((after[node][7] - before[node][7]) / n, 2),
            "holds_joined": round((after[node][8] - before[node][8]) / n, 2),
        }
        if idle is not None:
            row["cpu_ms_net"] = round(max(0.0, cpu - idle[node] * seconds) * 1000 / n, 2)
        out[node] = row
    return out


def idle_rates(cluster: NodeCluster, seconds: float) -> dict[str, float]:
    """Each node's CPU seconds per second over ``seconds`` of no traffic."""
    before = snapshot(cluster)
    t0 = time.monotonic()
    time.sleep(seconds)
    after = snapshot(cluster, closing=True)
    took = time.monotonic() - t0
    return {n: (after[n][2] - before[n][2]) / took for n in before}


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


def measured(
    cluster: NodeCluster,
    n: int,
    run: Callable[[], float],
    idle: dict[str, float],
    spy: Callable[[], list[subprocess.Popen[bytes]]] | None = None,
) -> tuple[float, dict[str, dict[str, float]]]:
    """Run ``run`` (``n`` operations; returns ms per operation) between two
    snapshots: (ms per operation, each node's figures per operation); with
    ``spy``, the samplers it starts run while ``run`` does."""
    before = snapshot(cluster)
    samplers = spy() if spy is not None else []
    t0 = time.monotonic()
    try:
        ms = run()
    finally:
        took = time.monotonic() - t0
        for proc in samplers:
            proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for proc in samplers:
            proc.wait(timeout=60)
    return ms, per_create(before, snapshot(cluster, closing=True), n, idle, took)


def py_spy(
    cluster: NodeCluster,
    nodes: list[str],
    out: Path,
    label: str,
    rate: int = 200,
    idle: bool = False,
    native: bool = False,
) -> list[subprocess.Popen[bytes]]:
    """Start ``py-spy record`` (raw collapsed stacks, ``rate`` samples a second,
    idle frames left out unless ``idle``, C frames too with ``native``) on each
    of ``nodes``, writing ``out/LABEL-NODE.txt``."""
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    for name in dict.fromkeys(nodes):
        proc = cluster.nodes[name].proc
        assert proc is not None
        cmd = ["py-spy", "record", "--pid", str(proc.pid), "--format", "raw", "--rate", str(rate)]
        cmd += ["--idle"] if idle else []
        cmd += ["--native"] if native else []
        cmd += ["--output", str(out / f"{label}-{name}.txt")]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1.0)  # (py-spy attaches before the operations start)
    return procs


#: The system calls ``--strace`` traces: the disk's writes and syncs, the sockets' sends.
TRACED = "pwrite64,pwritev,pwritev2,write,writev,fdatasync,fsync,sendmsg,sendto"
_OFFSET = re.compile(r",\s*(\d+)\)\s+=")
_CALL = re.compile(r"^(?:[\d.]+ )?(\w+)\((\d+)(?:<([^>]*)>)?.*\)\s+=\s+(-?\d+)")


def straces(cluster: NodeCluster, out: Path, label: str) -> list[subprocess.Popen[bytes]]:
    """Start ``strace -ff -y`` of :data:`TRACED` on every node, writing
    ``out/LABEL-NODE.strace.TID`` (one file per thread: no call split by another's)."""
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    for name in cluster.names:
        proc = cluster.nodes[name].proc
        assert proc is not None
        cmd = ["strace", "-ff", "-y", "-qq", "-ttt", "-T", "-e", f"trace={TRACED}", "-p", str(proc.pid)]
        cmd += ["-o", str(out / f"{label}-{name}.strace")]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1.0)  # (attached before the operations start)
    return procs


def syscall_counts(path: Path, n: int) -> dict[str, float]:
    """Per operation, from one node's trace (``path``: its files' prefix):
    ``fsyncs``, ``lmdb_meta_syncs`` (LMDB's meta page writes, each synchronous), ``lmdb_kb`` (bytes written to ``data.mdb``), ``wal_kb`` (to the
    write-ahead log), ``socket_writes``."""
    fsyncs = lmdb = wal = sends = metas = 0
    lines = [
        x
        for f in sorted(path.parent.glob(path.name + ".*"))
        for x in f.read_text(errors="replace").splitlines()
    ]
    for line in lines:
        m = _CALL.match(line)
        if m is None:
            continue
        call, target, ret = m.group(1), m.group(3) or "", int(m.group(4))
        if call in ("fdatasync", "fsync"):
            fsyncs += 1
        elif ret <= 0:
            continue
        elif target.endswith("data.mdb"):
            lmdb += ret
            off = _OFFSET.search(line)
            if call == "pwrite64" and off is not None and int(off.group(1)) < 8192:
                metas += 1  # (LMDB's meta page: written on its O_DSYNC descriptor, a sync)
        elif ".log" in target and "-wal/" in target:
            wal += ret
        elif target.startswith(("socket:", "TCP", "UDP", "UNIX")) or call in ("sendmsg", "sendto"):
            sends += 1
    return {
        "fsyncs": round(fsyncs / n, 2),
        "lmdb_meta_syncs": round(metas / n, 2),
        "lmdb_kb": round(lmdb / n / 1024, 1),
        "wal_kb": round(wal / n / 1024, 1),
        "socket_writes": round(sends / n, 2),
    }


#: The line probe (``--lines``): a ``sitecustomize`` a node loads when its directory is on its path.
LINE_PROBE = Path(__file__).resolve().parent.parent / "harness" / "line_probe"


def lines_counted(
    cluster: NodeCluster, out: Path, run: Callable[[], object], n: int, label: str
) -> dict[str, Any]:
    """Run ``run`` (``n`` operations) with every node's line probe counting
    (SIGUSR1 .. SIGUSR2): per node, Python lines per operation (all, and in
    ``sprawl/``) and the 15 functions that ran the most lines per operation."""
    pids = {name: cluster.nodes[name].proc.pid for name in cluster.names}  # type: ignore[union-attr]
    for pid in pids.values():
        for p in (out / f"lines-{pid}.json", out / f"lines-{pid}.started"):
            if p.exists():
                p.unlink()
        os.kill(pid, signal.SIGUSR1)
    for pid in pids.values():  # each node's handler runs when its main thread next runs Python
        started = out / f"lines-{pid}.started"
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not started.exists():
            raise SystemExit(f"node {pid} did not start counting within 30 s (is LINE_PROBE_OUT set?)")
    try:
        run()
    finally:
        for pid in pids.values():
            os.kill(pid, signal.SIGUSR2)
    result: dict[str, Any] = {}
    for name, pid in pids.items():
        p = out / f"lines-{pid}.json"
        deadline = time.monotonic() + 30
        while not p.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        got = json.loads(p.read_text())
        top = sorted(got["funcs"].items(), key=lambda kv: -kv[1])[:15]
        result[name] = {
            "lines": round(got["total"] / n, 1),
            "sprawl_lines": round(got["sprawl"] / n, 1),
            "store": {k: round(v / n, 2) for k, v in got.get("store", {}).items()},
            "top": {k.split("/sprawl/")[-1].split("/site-packages/")[-1]: round(v / n, 1) for k, v in top},
        }
        (out / f"lines-{name}-{label}.json").write_text(json.dumps(got))
    return result


def counted_run(
    row: dict[str, Any], cluster: NodeCluster, out: Path, run: Callable[[], float], n: int
) -> float:
    """``run()`` with the nodes' lines counted into ``row["lines_per_create"]``."""
    ms: list[float] = []
    row["lines_per_create"] = lines_counted(cluster, out, lambda: ms.append(run()), n, str(row["topics"]))
    return ms[0]


def summary(per_node: dict[str, dict[str, float]]) -> dict[str, float]:
    """Commits per operation (mean of the nodes, and the most of one node)
    and CPU ms per operation (all nodes together)."""
    commits = [v["commits"] for v in per_node.values()]
    return {
        "commits_mean": round(sum(commits) / len(commits), 2),
        "commits_max": max(commits),
        "cpu_ms_all": round(sum(v["cpu_ms"] for v in per_node.values()), 2),
        "cpu_ms_net_all": round(sum(v.get("cpu_ms_net", v["cpu_ms"]) for v in per_node.values()), 2),
    }


def measure_count(
    cluster: NodeCluster,
    conn: Conn,
    count: int,
    batch: int,
    clients: int,
    rng: random.Random,
    settle: float = 2.0,
    idle_seconds: float = 2.0,
    spy_dir: Path | None = None,
    spy_all: bool = False,
    strace_dir: Path | None = None,
    spy_rate: int = 200,
    spy_idle: bool = False,
    lines_dir: Path | None = None,
    spy_native: bool = False,
) -> dict[str, Any]:
    """Every figure at one count of topics (``t00000`` .. already made),
    after ``settle`` seconds and ``idle_seconds`` of measuring the nodes'
    idle CPU (subtracted from the operations' CPU: ``cpu_ms_net``); with
    ``spy_dir``, the creates are sampled by py-spy (:func:`py_spy`)."""
    time.sleep(settle)
    idle = idle_rates(cluster, idle_seconds)
    rf = min(3, len(cluster.names))
    made = [f"t{i:05d}" for i in range(count)]
    fresh = [f"s{count:05d}-{i}" for i in range(batch)]
    row: dict[str, Any] = {
        "nodes": len(cluster.names),
        "topics": count,
        "raft_leader": cluster.raft_leader(),
        "idle_cpu_pct": {n: round(r * 100, 1) for n, r in idle.items()},
    }
    ops: list[tuple[str, Callable[[], float]]] = [
        ("create", lambda: create(conn, fresh, rf)),
        ("describe", lambda: timed(conn, "GET", [f"/v1/topics/{rng.choice(made)}" for _ in range(batch)])),
        (
            "list",
            lambda: timed(
                conn, "GET", [f"/v1/topics?limit=100&after={rng.choice(made)}" for _ in range(batch)]
            ),
        ),
        ("delete", lambda: timed(conn, "DELETE", [f"/v1/topics/{n}" for n in fresh], ok=(200, 204))),
    ]
    leader = row["raft_leader"] or cluster.names[0]
    spied = list(cluster.names) if spy_all else [leader, cluster.names[0]]
    for kind, run in ops:
        spy = None
        if spy_dir is not None and kind == "create":
            spy = functools.partial(
                py_spy, cluster, spied, spy_dir, f"create-{count}", spy_rate, spy_idle, spy_native
            )
        elif strace_dir is not None and kind == "create":
            spy = functools.partial(straces, cluster, strace_dir, f"create-{count}")
        if lines_dir is not None and kind == "create":
            run = functools.partial(counted_run, row, cluster, lines_dir, run, batch)
        ms, per_node = measured(cluster, batch, run, idle, spy)
        if spy is not None and strace_dir is not None and spy_dir is None:
            row["syscalls_per_create"] = {
                n: syscall_counts(strace_dir / f"create-{count}-{n}.strace", batch) for n in cluster.names
            }
        row[f"{kind}_ms"] = round(ms, 2)
        row[kind] = summary(per_node)
        row[f"{kind}_per_node"] = per_node
    each = max(batch // clients, 1)
    before = snapshot(cluster)
    t0 = time.monotonic()
    conc_ms, errors = concurrent(cluster, f"c{count:05d}", clients, each)
    took = time.monotonic() - t0
    row[f"concurrent_{clients}_ms"] = round(conc_ms, 2)
    row["concurrent"] = summary(
        per_create(before, snapshot(cluster, closing=True), clients * each, idle, took)
    )
    row["errors"] = errors[:3]
    row["load_avg"] = os.getloadavg()[0]
    return row


def table(rows: list[dict[str, Any]], clients: int) -> str:
    """The rows as a Markdown table."""
    head = (
        "| topics | create ms | commits per create (mean / most of a node) | CPU ms per create (3 nodes, less idle) "
        f"| delete ms | commits per delete | describe ms | list ms (page of 100) | {clients} clients: ms per create "
        "| load avg |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        c, d = r["create"], r["delete"]
        lines.append(
            f"| {r['topics']:,} | {r['create_ms']:.1f} | {c['commits_mean']:.2f} / {c['commits_max']:.2f} "
            f"| {c['cpu_ms_net_all']:.1f} | {r['delete_ms']:.1f} | {d['commits_mean']:.2f} "
            f"| {r['describe_ms']:.2f} | {r['list_ms']:.2f} | {r[f'concurrent_{clients}_ms']:.1f} "
            f"| {r['load_avg']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Grow the cluster, measure at each count, print JSON lines (and a table)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--topics", default="100,1000", help="topic counts, ascending")
    ap.add_argument("--batch", type=int, default=100, help="operations measured per figure")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1, help="seeds the choice of topics described and listed")
    ap.add_argument("--table", action="store_true", help="print a Markdown table at the end")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds of rest before each count's figures")
    ap.add_argument("--idle", type=float, default=2.0, help="seconds of idle CPU measured (and subtracted)")
    ap.add_argument("--reuse", type=Path, help="start on the data dirs in DIR/N-nodes (a copy: they change)")
    ap.add_argument("--py-spy", type=Path, dest="py_spy", help="sample the creates with py-spy into DIR")
    ap.add_argument("--py-spy-all", action="store_true", help="with --py-spy: sample every node")
    ap.add_argument("--strace", type=Path, help="trace the creates' writes, syncs and sends into DIR")
    ap.add_argument("--spy-rate", type=int, default=200, help="with --py-spy: samples a second")
    ap.add_argument("--spy-idle", action="store_true", help="with --py-spy: idle frames too")
    ap.add_argument("--spy-native", action="store_true", help="with --py-spy: C frames too")
    ap.add_argument("--lines", type=Path, help="count each node's Python lines per create (files into DIR)")
    ap.add_argument("--node-arg", action="append", default=[], help="an argument for every node (e.g. --wal)")
    a = ap.parse_args()
    rf = min(3, a.nodes)
    rng = random.Random(a.seed)
    if a.reuse is not None:
        tmp = str(a.reuse / f"{a.nodes}-nodes")
        Path(tmp).mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="sprawl-create-")
    env = None
    if a.lines is not None:
        a.lines.mkdir(parents=True, exist_ok=True)
        env = {"PYTHONPATH": f"{LINE_PROBE}{os.pathsep}{node_pythonpath()}", "LINE_PROBE_OUT": str(a.lines)}
    cluster = NodeCluster(Path(tmp), a.nodes, *a.node_arg, startup_timeout=120, env=env)
    rows: list[dict[str, Any]] = []
    try:
        cluster.start(form_bound=120)
        conn = Conn(cluster.nodes[cluster.names[0]].http_port)
        existing = set(cluster.placement(cluster.names[0]))
        made = 0
        for count in (int(x) for x in a.topics.split(",")):
            create(conn, [f"t{i:05d}" for i in range(made, count) if f"t{i:05d}" not in existing], rf)
            made = count
            row = measure_count(
                cluster,
                conn,
                count,
                a.batch,
                a.clients,
                rng,
                a.settle,
                a.idle,
                a.py_spy,
                a.py_spy_all,
                a.strace,
                a.spy_rate,
                a.spy_idle,
                a.lines,
                a.spy_native,
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        cluster.close()
        if a.reuse is None:
            shutil.rmtree(tmp, ignore_errors=True)
    if a.table and rows:
        print(table(rows, a.clients))


if __name__ == "__main__":
    main()
