#!/usr/bin/env python3
"""3 nodes, RF=3, ``acks=quorum``: publish -> SSE latency on a warm heap, with the GC pauses.

    PYTHONPATH=tests python -m benchmarks.quorum_latency [--warmup 200000] [--rate 1000]
                                                         [--seconds 20] [--wire json|lean]
                                                         [--publish http|ws]
                                                         [--timeline EVERY]
                                                         [--nodes 3] [--sse last|leader|follower|no-replica]
                                                         [--lag N] [--slow F] [--pause S]
                                                         [--node-arg=--wal ...] [--profile DIR]

Starts three ``twistd sprawl`` nodes on 127.0.0.1 (ports from the OS, fresh data dirs), creates
one durable topic of one partition with three replicas, warms the heap with ``--warmup``
messages (batches of 100, 16 publishers, ``acks=quorum``), then publishes single messages at
``--rate`` msg/s from ``--publishers`` connections spread over the three nodes while one SSE
subscriber reads on the third (:mod:`sprawl.client.bench`; ``--publish ws``: each publisher a
publish-only WebSocket sending one msgpack publish frame per message, each waiting for its
answer as a POST does -- the warm-up stays on HTTP), and prints the end-to-end p50/p99
with every node's garbage-collection pauses during that phase, read from
``sprawl_gc_pause_seconds`` on ``/metrics`` before and after it (collections per generation,
their total time, how many took over 10 ms, and -- ``sprawl_gc_cpu_seconds`` -- their CPU
time: a pause far longer than its CPU time was the thread waiting, not the collector).  The
issue-16 goal: p50 <= 4 ms, p99 <= 10 ms and no pause over 10 ms.

Then, per node, where the phase's time and work went, from the same scrapes (per message of
the phase): CPU (``process_cpu_seconds_total``), LMDB commits and their mean time, peer frames
sent, and the hops of ``sprawl_replication_hop_seconds`` -- ``forward`` (an entry node's
publish to the leader and back), ``quorum`` (the leader's append to a majority holding it),
``visible`` (a follower's receipt of records to its high watermark passing them, what the SSE
subscriber on a follower waits) -- as count, mean and the p50/p99 bucket bounds.  And per node, from
``/proc/PID/task/*/schedstat`` over the same phase: the reactor thread's CPU, time spent
runnable but waiting for a core, and wake-ups per message, and the other threads' (at steady
state the LMDB writer) per LMDB commit -- on a machine whose cores the nodes share, what a
thread hand-off or the wake-up after an fsync waits, which CPU seconds do not show.  Under load
(other jobs on the machine) judge by these counts and hops, not the wall-clock latency.

What the stream delivered is checked offset by offset (:mod:`sprawl.client.bench.offsets`):
the first and last offset, duplicates and gaps (each read back: a gap holding messages is a
skip), with every node's high watermark / log end when the stream opened and at the end, and
the slowest deliveries; a duplicate or a skipped message prints ``!!!`` lines and the script
exits 1.  ``--sse`` picks the subscriber's node (``no-replica`` needs ``--nodes 5``: its remote
feed); ``--lag N`` stops the SSE follower while the warm-up's last N messages are published,
``--slow F`` stops it F of every 100 ms during the warm-up: a follower behind at the open.

``--profile DIR`` records every node with py-spy over the measured phase (speedscope files in
DIR) and prints, per node, the reactor thread's busy frames (:func:`benchmarks.idle_cpu.summary`).

``--timeline EVERY`` turns on the nodes' timeline (:mod:`sprawl.storage.timeline`): every
EVERY-th offset's events on each node (forward sent, leader took it, own write submitted /
fsynced, append sent per follower, follower received / submitted / fsynced / answered, the
publish answered (``acked``: a majority holds it on disk), visible on the leader (``quorum``: its
own copy durable too), high watermark sent, follower's visible high watermark passed it) and every LMDB commit's
steps.  The nodes share ``time.time()``, so the script merges them per offset and prints the
per-hop table (p50 / p99 / mean over the sampled offsets of the measured phase) and, per node,
where the LMDB group commits' time went: waiting for the writer thread, the operations, the
commit with its fsyncs, and the hand-back to the reactor.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

from benchmarks import thread_table
from benchmarks.cluster import FORM_BOUND, create_topic
from benchmarks.idle_cpu import profile, summary
from benchmarks.latency_profile import LINE_PROBE, probe_start, probe_stop
from harness import NodeCluster
from harness.nodes import node_pythonpath, partition_views
from sprawl.client.bench import BenchConfig, BenchResult, run_bench
from sprawl.client.blocking import Client

_LINE = re.compile(
    r'^sprawl_gc_(?:pause_seconds_(count|sum|bucket)|(cpu)_seconds_total)\{generation="(\d)"(?:,le="([^"]+)")?\} (\S+)$'
)


def gc_pauses(url: str) -> dict[tuple[str, str, str], float]:
    """The node's ``sprawl_gc_pause_seconds`` series: {(kind, generation, le): value}."""
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    out: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            out[(m.group(1) or m.group(2), m.group(3), m.group(4) or "")] = float(m.group(5))
    return out


def during(before: dict[tuple[str, str, str], float], after: dict[tuple[str, str, str], float]) -> str:
    """Collections per generation in the phase: count, total ms, how many took over 10 ms, and
    their CPU ms (``sprawl_gc_cpu_seconds``, when the node has it)."""
    parts = []
    for g in "012":
        n = after.get(("count", g, ""), 0) - before.get(("count", g, ""), 0)
        s = after.get(("sum", g, ""), 0) - before.get(("sum", g, ""), 0)
        fast = after.get(("bucket", g, "0.01"), 0) - before.get(("bucket", g, "0.01"), 0)
        cpu = after.get(("cpu", g, ""), 0) - before.get(("cpu", g, ""), 0)
        parts.append(f"gen{g} {n:.0f} ({s * 1000:.1f} ms, {n - fast:.0f} > 10 ms; CPU {cpu * 1000:.1f} ms)")
    return ", ".join(parts)


_SAMPLE = re.compile(r"^([a-z_]+)(?:\{([^}]*)\})? (\S+)$")

#: Series read from ``/metrics`` for the per-node report (name -> label filter).
_REPORTED = (
    "process_cpu_seconds_total",
    "sprawl_lmdb_commits_total",
    "sprawl_lmdb_commit_duration_seconds_sum",
    "sprawl_lmdb_commit_duration_seconds_count",
    "sprawl_lmdb_commit_ops_sum",
    "sprawl_lmdb_commit_ops_count",
    "sprawl_peer_frames_sent_total",
    "sprawl_replication_hop_seconds_bucket",
    "sprawl_replication_hop_seconds_sum",
    "sprawl_replication_hop_seconds_count",
    "sprawl_gc_cpu_seconds_total",
)


def scrape(url: str) -> dict[tuple[str, str], float]:
    """The node's series this benchmark reports: {(name, labels): value}."""
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(1) in _REPORTED:
            out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def _hop(delta: dict[tuple[str, str], float], hop: str) -> str:
    """A hop's count, mean and p50/p99 bucket bounds in the phase, or '-'."""
    n = delta.get(("sprawl_replication_hop_seconds_count", f'hop="{hop}"'), 0.0)
    if n <= 0:
        return "-"
    mean = delta.get(("sprawl_replication_hop_seconds_sum", f'hop="{hop}"'), 0.0) / n * 1000
    buckets = sorted(
        (float(labels.split('le="')[1].rstrip('"')), v)
        for (name, labels), v in delta.items()
        if name == "sprawl_replication_hop_seconds_bucket" and f'hop="{hop}"' in labels
    )

    def bound(q: float) -> str:
        for le, cum in buckets:
            if cum >= q * n:
                return f"{le * 1000:g}"
        return "inf"

    return f"{n:,.0f} x {mean:.2f} ms (p50 <= {bound(0.5)}, p99 <= {bound(0.99)} ms)"


def node_report(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float], messages: int
) -> str:
    """Where one node's share of the phase went, per message of the phase (see the module docstring)."""
    d = {k: v - before.get(k, 0.0) for k, v in after.items()}
    per = max(messages, 1)
    cpu = d.get(("process_cpu_seconds_total", ""), 0.0)
    commits = d.get(("sprawl_lmdb_commits_total", ""), 0.0)
    ncommit = d.get(("sprawl_lmdb_commit_duration_seconds_count", ""), 0.0)
    commit_ms = (
        d.get(("sprawl_lmdb_commit_duration_seconds_sum", ""), 0.0) / ncommit * 1000 if ncommit else 0.0
    )
    nops = d.get(("sprawl_lmdb_commit_ops_count", ""), 0.0)
    ops = d.get(("sprawl_lmdb_commit_ops_sum", ""), 0.0) / nops if nops else 0.0
    frames = d.get(("sprawl_peer_frames_sent_total", ""), 0.0)
    gc_cpu = sum(v for (name, _l), v in d.items() if name == "sprawl_gc_cpu_seconds_total") * 1000
    return (
        f"CPU {cpu:.2f} s ({cpu / per * 1000:.2f} ms/msg), LMDB commits {commits / per:.2f}/msg "
        f"(mean {commit_ms:.2f} ms, {ops:.1f} ops), peer frames sent {frames / per:.2f}/msg, GC CPU {gc_cpu:.1f} ms; "
        f"hops: forward {_hop(d, 'forward')}; quorum {_hop(d, 'quorum')}; visible {_hop(d, 'visible')}"
    )


#: Per thread of a node: {tid: (cpu ns, run-queue wait ns, times it ran)} (``/proc/PID/task/*/schedstat``).
Sched = dict[int, tuple[int, int, int]]


def thread_sched(pid: int) -> Sched:
    """Every thread of process ``pid``: CPU time, time spent runnable but waiting for a core,
    and how many times it was put on a core (each wake-up is one) -- what a busy machine adds
    to a thread hand-off or a wake-up after an fsync, which CPU seconds do not show."""
    out: Sched = {}
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path, encoding="ascii") as f:
                cpu, wait, runs = (int(x) for x in f.read().split()[:3])
        except (OSError, ValueError):
            continue
        out[int(path.split("/")[4])] = (cpu, wait, runs)
    return out


def sched_report(pid: int, before: Sched, after: Sched, messages: int, commits: float) -> str:
    """The phase's CPU, run-queue wait and wake-ups of a node's reactor thread (per message)
    and of its other threads together (per LMDB commit: at steady state they are the LMDB
    writer; the reader pool idles while the stream reads from memory)."""
    per = max(messages, 1)
    react = [b - a for a, b in zip(before.get(pid, (0, 0, 0)), after.get(pid, (0, 0, 0)), strict=True)]
    rest = [0, 0, 0]
    for tid, now in after.items():
        if tid != pid:
            was = before.get(tid, (0, 0, 0))
            rest = [r + b - a for r, a, b in zip(rest, was, now, strict=True)]
    c = max(commits, 1.0)
    return (
        f"reactor thread {react[0] / per / 1e3:.0f} us CPU, {react[1] / per / 1e3:.0f} us waiting for a core "
        f"and {react[2] / per:.2f} wake-ups per message ({react[1] / max(react[2], 1) / 1e3:.0f} us each); "
        f"other threads {rest[0] / c / 1e3:.0f} us CPU, {rest[1] / c / 1e3:.0f} us waiting for a core and "
        f"{rest[2] / c:.2f} wake-ups per LMDB commit ({rest[1] / max(rest[2], 1) / 1e3:.0f} us each)"
    )


#: A merged timeline: {offset: {(node, event): seconds}} and {node: [commit steps]}.
Events = dict[int, dict[tuple[str, str], float]]
Commits = dict[str, list[tuple[float, ...]]]


def read_timeline(base: str, names: dict[int, str]) -> tuple[Events, Commits]:
    """The nodes' timeline files (``base.PID``), merged; ``names``: pid -> node name."""
    events: Events = defaultdict(dict)
    commits: Commits = defaultdict(list)
    for path in glob.glob(base + ".*"):
        node = names.get(int(path.rsplit(".", 1)[1]), path)
        with open(path, encoding="ascii") as f:
            for line in f:
                parts = line.split()
                if parts[1] == "commit":
                    commits[node].append(tuple(float(x) for x in parts[2:]))
                else:
                    events[int(parts[0])].setdefault((node, parts[1]), float(parts[2]))
    return events, commits


def _stats(xs: list[float]) -> str:
    if not xs:
        return "-"
    xs = sorted(xs)
    n = len(xs)
    return (
        f"{n:>5} x p50 {xs[n // 2] * 1000:6.2f}  p99 {xs[min(n - 1, int(n * 0.99))] * 1000:6.2f}  "
        f"mean {sum(xs) / n * 1000:6.2f} ms"
    )


def timeline_table(
    events: Events, commits: Commits, since: float, until: float, leader: str, names: list[str]
) -> str:
    """The per-hop table of the sampled offsets published in ``[since, until]`` and every
    node's commit steps there (see the module docstring)."""
    followers = [n for n in names if n != leader]
    sse = names[-1]
    rows: dict[str, list[float]] = {}

    def hop(label: str, a: tuple[str, str] | None, b: tuple[str, str] | None, ev: dict) -> None:
        xs = rows.setdefault(label, [])
        if a is not None and b is not None and a in ev and b in ev:
            xs.append(ev[b] - ev[a])

    L = leader
    for _off, ev in sorted(events.items()):
        t = ev.get((L, "pub"))
        if t is None or not since <= t <= until:
            continue
        entry = next((n for n in names if (n, "fwd_sent") in ev), None)
        hop(
            "entry -> leader (forward sent -> leader took it)",
            (entry, "fwd_sent") if entry else None,
            (L, "pub"),
            ev,
        )
        hop("leader: took it -> own write submitted", (L, "pub"), (L, "lw_sub"), ev)
        hop("leader: own write submitted -> fsynced", (L, "lw_sub"), (L, "lw_sync"), ev)
        for F in followers:
            hop(f"leader: took it -> append sent to {F}", (L, "pub"), (L, f"app>{F}"), ev)
        for F in followers:
            hop(f"{F}: append sent -> received", (L, f"app>{F}"), (F, "f_recv"), ev)
            hop(f"{F}: received -> write submitted", (F, "f_recv"), (F, "f_sub"), ev)
            hop(f"{F}: write submitted -> fsynced", (F, "f_sub"), (F, "f_sync"), ev)
            hop(f"{F}: fsynced -> answer sent", (F, "f_sync"), (F, "f_ack"), ev)
        acks = [ev[(F, "f_ack")] for F in followers if (F, "f_ack") in ev]
        if acks and (L, "acked") in ev:
            ev[("*", "first_ack")] = min(acks)
        hop("first follower answer sent -> leader answers", ("*", "first_ack"), (L, "acked"), ev)
        hop("leader: took it -> publish answered (a majority's disks)", (L, "pub"), (L, "acked"), ev)
        hop("leader: took it -> visible on the leader (its own disk too)", (L, "pub"), (L, "quorum"), ev)
        for F in followers:
            hop(
                f"leader: answers -> high watermark sent to {F}",
                (L, "acked"),
                (L, f"hw>{F}"),
                ev,
            )
            hop(f"{F}: high watermark sent -> visible", (L, f"hw>{F}"), (F, "f_hw"), ev)
            hop(f"{F}: received -> visible", (F, "f_recv"), (F, "f_hw"), ev)
        hop(
            "leader answers -> entry has the answer", (L, "acked"), (entry, "fwd_back") if entry else None, ev
        )
        hop(
            "entry: forward round trip",
            (entry, "fwd_sent") if entry else None,
            (entry, "fwd_back") if entry else None,
            ev,
        )
        hop(f"leader took it -> visible on {sse} (SSE)", (L, "pub"), (sse, "f_hw"), ev)
    out = [f"  timeline of the sampled offsets (leader {L}; n = samples with both events):"]
    out += [f"    {label:<62} {_stats(xs)}" for label, xs in rows.items()]
    out.append(
        "  LMDB group commits (queued -> on the writer thread -> ops done -> committed+fsynced -> back on the reactor):"
    )
    for node in names:
        cs = [c for c in commits.get(node, []) if since <= c[0] <= until]
        if not cs:
            continue
        ops = sum(c[5] for c in cs) / len(cs)
        out.append(f"    {node}: {len(cs):,} commits, {ops:.1f} ops each")
        for label, i, j in (
            ("queued -> writer thread", 0, 1),
            ("ops", 1, 2),
            ("commit (2 fsyncs)", 2, 3),
            ("-> back on the reactor", 3, 4),
            ("total", 0, 4),
        ):
            out.append(f"      {label:<26} {_stats([c[j] - c[i] for c in cs])}")
    return "\n".join(out)


def _views(views: dict[str, list[dict]], names: dict[str, str]) -> str:
    """Each node's high watermark / log end (leader, epoch) of partition 0, on one line."""
    parts = []
    for url, ps in views.items():
        p0 = next((p for p in ps if p.get("partition") == 0), None)
        if p0 is not None:
            parts.append(
                f"{names.get(url, url)} hw {p0['high_watermark']:,} / end {p0['log_end']:,}"
                f" (leader {p0['leader']}, epoch {p0['epoch']}"
                + (f", followers' match {p0['followers']}" if p0.get("followers") else "")
                + ")"
            )
    return "; ".join(parts) or "-"


def delivery_report(r: BenchResult, names: dict[str, str]) -> tuple[list[str], bool]:
    """What the stream delivered, offset by offset, and the nodes' views of the partition when
    it opened and at the end; and whether it broke the contract (an offset delivered twice, or
    a message skipped).  Offsets below the leader's log end at the stream's open were published
    before the measured phase (the warm-up's tail): a stream opened ``from=latest`` on a node
    whose high watermark lagged then."""
    out = [
        f"  partition views at the stream's open: {_views(r.views_at_open, names)}",
        f"  partition views at the end:           {_views(r.views_at_end, names)}",
    ]
    open_end = max(
        (p["log_end"] for ps in r.views_at_open.values() for p in ps if p.get("partition") == 0), default=0
    )
    bad = False
    for i, parts in enumerate(r.deliveries):
        for d in parts:
            old = max(0, min(d.last + 1, open_end) - d.first)
            out.append(
                f"  subscriber {i} partition {d.partition}: {d.count:,} delivered, offsets {d.first:,}-{d.last:,}"
                f" ({old:,} of them published before the stream opened); "
                f"{d.duplicates} duplicates, {d.skipped} offsets skipped in {len(d.gaps)}+ gaps"
            )
            if d.duplicates:
                bad = True
                out.append(
                    f"  !!! DUPLICATES: subscriber {i} partition {d.partition} delivered {d.duplicates} offsets "
                    f"twice (first: {d.duplicate_offsets[:10]})"
                )
            if d.gaps:
                out.append(f"  gaps on partition {d.partition} (first: {d.gaps[:10]})")
    for i, worst in enumerate(r.slowest):
        shown = ", ".join(
            f"{p}:{o} {late:,.0f} ms (leader took it after {lead:,.0f} ms)" for late, p, o, lead in worst
        )
        out.append(f"  subscriber {i} slowest: {shown}")
    if r.breach() is not None:
        bad = True
    if r.skipped_messages:
        out.append(
            f"  !!! SKIPPED: {r.skipped_messages} messages in the gaps are in the log but were not delivered"
        )
    return out, bad


#: Seconds the run waits after the warm-up for every replica to hold the leader's end.
CATCH_UP_BOUND = 120.0


def caught_up(urls: list[str], topic: str, bound: float) -> float:
    """Seconds until every node's view of partition 0 of ``topic`` has its high
    watermark at the highest log end any of them reports (polled every 0.1 s, at
    most ``bound`` seconds: SystemExit past it -- a follower that never catches up
    is a finding, not a run to measure)."""
    t0 = time.monotonic()
    for _ in range(int(bound / 0.1) + 1):
        views = [
            p
            for u in urls
            for p in partition_views(Client([u], timeout=10.0).request("GET", f"/v1/topics/{topic}").json())
            if p.get("partition") == 0
        ]
        ends = [int(p.get("log_end", 0)) for p in views]
        if len(views) == len(urls) and all(int(p.get("high_watermark", -1)) == max(ends) for p in views):
            return time.monotonic() - t0
        time.sleep(0.1)
    raise SystemExit(f"a replica did not catch up with the leader within {bound:.0f} s of the warm-up")


def sse_node_for(cluster: NodeCluster, topic: str, how: str) -> str:
    """The node the SSE subscriber reads on (``--sse``)."""
    if how == "last":
        return cluster.names[-1]
    placed = cluster.placement().get(topic, {}).get("0", {})
    leader = placed.get("leader")
    replicas = placed.get("replicas") or cluster.names
    if how == "leader" and leader is not None:
        return leader
    if how == "follower":
        return next(n for n in reversed(cluster.names) if n in replicas and n != leader)
    others = [n for n in cluster.names if n not in replicas]
    if not others:
        raise SystemExit("--sse no-replica needs a node holding no replica (--nodes 5)")
    return others[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warmup", type=int, default=200_000)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--publishers", type=int, default=8)
    ap.add_argument("--wire", choices=["json", "lean"], default="json")
    ap.add_argument(
        "--publish",
        choices=["http", "ws"],
        default="http",
        help="the measured phase's publish wire: http (a POST per message, the default) or ws (a "
        "msgpack frame per message on a publish-only WebSocket per publisher)",
    )
    ap.add_argument("--timeline", type=int, default=0, metavar="EVERY", help="trace every EVERY-th offset")
    ap.add_argument(
        "--nodes",
        type=int,
        default=3,
        help="nodes (RF stays 3: with 5, two hold no replica; 4 does not form: Raft keeps 3 voters)",
    )
    ap.add_argument(
        "--sse",
        choices=["last", "leader", "follower", "no-replica"],
        default="last",
        help="the SSE subscriber's node: the last started (the default), the partition's leader, "
        "a follower, or a node holding no replica (its remote feed; needs --nodes 5)",
    )
    ap.add_argument("--warmup-publishers", type=int, default=16)
    ap.add_argument("--warmup-batch", type=int, default=100)
    ap.add_argument(
        "--lag",
        type=int,
        default=0,
        help="stop (SIGSTOP) the SSE node, when a follower, while the warm-up's last LAG messages "
        "are published: it resumes behind (keep it short: a node silent for 2 s fails over)",
    )
    ap.add_argument(
        "--slow",
        type=float,
        default=0.0,
        help="stop (SIGSTOP) the SSE node this fraction of every 100 ms during the warm-up (0-0.9): "
        "a follower that falls behind it",
    )
    ap.add_argument("--pause", type=float, default=0.0, help="seconds between the warm-up and the run")
    ap.add_argument(
        "--node-arg",
        action="append",
        default=[],
        help="an extra argument of every node (e.g. --node-arg=--wal)",
    )
    ap.add_argument("--profile", type=Path, help="record every node with py-spy over the run into DIR")
    ap.add_argument(
        "--threads",
        action="store_true",
        help="print every node's threads by name over the measured phase: CPU per message, "
        "wake-ups and voluntary / involuntary context switches per LMDB commit "
        "(benchmarks.thread_table)",
    )
    ap.add_argument(
        "--node-tree",
        type=Path,
        default=None,
        help="run the nodes from the sprawl package under this source tree (e.g. a frozen copy of "
        "main), the client from this one: an A/B of the nodes with the same benchmark client",
    )
    ap.add_argument(
        "--lines",
        type=Path,
        default=None,
        help="count the Python lines every node's reactor thread runs over the measured phase "
        "(tests/harness/line_probe; its files in DIR) and print them per message, per node",
    )
    a = ap.parse_args()
    profiled: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="sprawl-quorum-") as tmp:
        tl_base = os.path.join(tmp, "timeline")
        env = {"SPRAWL_TIMELINE": f"{tl_base}:{a.timeline}"} if a.timeline else {}
        tree = str(a.node_tree.resolve()) if a.node_tree is not None else node_pythonpath()
        if a.node_tree is not None:
            env["PYTHONPATH"] = tree
        if a.lines is not None:
            a.lines.mkdir(parents=True, exist_ok=True)
            env["PYTHONPATH"] = f"{LINE_PROBE}{os.pathsep}{tree}"
            env["LINE_PROBE_OUT"] = str(a.lines)
        cluster = NodeCluster(Path(tmp), a.nodes, *a.node_arg, prefix="q", env=env or None)
        try:
            cluster.start(FORM_BOUND)
            urls = [cluster.url(n) for n in cluster.names]
            topic = "quorum-latency"
            create_topic(cluster, topic, 1, 3)
            common = dict(topic=topic, acks="quorum", keep_topic=True, timeout=60.0, wire=a.wire)
            sse_node = sse_node_for(cluster, topic, a.sse)

            def warm(messages: int, where: list[str]) -> None:
                w = run_bench(
                    BenchConfig(
                        urls=where,
                        messages=messages,
                        batch=a.warmup_batch,
                        publishers=a.warmup_publishers,
                        subscribers=0,
                        **common,
                    )
                )  # type: ignore[arg-type]
                print(f"warm-up: {w.published:,} messages at {w.publish_msgs_per_s:,.0f} msgs/s", flush=True)

            slowing = threading.Event()

            def slow_down() -> None:
                # Stop the SSE node ``--slow`` of every 100 ms while the warm-up runs: a
                # follower that cannot keep up (it still answers gossip between stops).
                node = cluster.nodes[sse_node]
                while not slowing.is_set():
                    node.signal(signal.SIGSTOP)
                    time.sleep(0.1 * a.slow)
                    node.signal(signal.SIGCONT)
                    time.sleep(0.1 * (1 - a.slow))

            slower = threading.Thread(target=slow_down, daemon=True) if a.slow > 0 else None
            if slower is not None:
                slower.start()
            lagged = min(a.lag, a.warmup) if sse_node != (cluster.partition_leaders(topic).get(0)) else 0
            if a.warmup - lagged:
                warm(a.warmup - lagged, urls)
            if lagged:
                # The SSE node is stopped while the warm-up's last ``--lag`` messages are
                # published (the leader and the other follower make the quorum): it comes back
                # behind, as a follower that could not keep up with the warm-up.
                cluster.pause(sse_node)
                try:
                    warm(lagged, [cluster.url(n) for n in cluster.names if n != sse_node])
                finally:
                    cluster.resume(sse_node)
            if slower is not None:
                slowing.set()
                slower.join()
                cluster.nodes[sse_node].signal(signal.SIGCONT)
            if not (lagged or a.slow):
                # The measured phase is the steady state after the warm-up: a follower still
                # behind the warm-up's burst (a quorum needs only one of two) would make the
                # stream opened ``from=latest`` on it deliver the warm-up's tail first (the
                # anomaly dup34 named; seen twice in the twelfth round: q2 34,332 behind).
                # ``--lag`` / ``--slow`` open it behind on purpose.
                waited = caught_up(urls, topic, CATCH_UP_BOUND)
                print(f"replicas caught up with the leader {waited:.1f} s after the warm-up", flush=True)
            if a.pause:
                time.sleep(a.pause)
            pids = {p.proc.pid: n for n, p in cluster.nodes.items() if p.proc is not None}
            before = [gc_pauses(u) for u in urls]
            counts_before = [scrape(u) for u in urls]
            sched_before = {pid: thread_sched(pid) for pid in pids}
            named_before = {pid: thread_table.snapshot(pid) for pid in pids}
            if a.lines is not None:
                for counting in pids:
                    probe_start(counting, a.lines)
            load = os.getloadavg()[0]
            since = time.time()
            spy = None
            if a.profile is not None:
                # Over most of the measured phase (py-spy takes a moment to attach).
                spy = threading.Thread(
                    target=lambda: profiled.update(profile(cluster, max(1.0, a.seconds * 0.8), a.profile)),
                    daemon=True,
                )
                spy.start()
            r = run_bench(
                BenchConfig(
                    urls=urls,
                    subscriber_urls=[cluster.url(sse_node)],
                    messages=int(a.rate * a.seconds),
                    batch=1,
                    publishers=a.publishers,
                    subscribers=1,
                    rate=a.rate,
                    publish=a.publish,
                    **common,  # type: ignore[arg-type]
                )
            )
            until = time.time()
            counted = (
                {n: probe_stop(p, a.lines, r.published) for p, n in pids.items()}
                if a.lines is not None
                else {}
            )
            if spy is not None:
                spy.join()
            sched_after = {pid: thread_sched(pid) for pid in pids}
            named_after = {pid: thread_table.snapshot(pid) for pid in pids}
            after = [gc_pauses(u) for u in urls]
            counts_after = [scrape(u) for u in urls]
            leader = cluster.partition_leaders(topic).get(0)
            replicas = cluster.placement().get(topic, {}).get("0", {}).get("replicas") or cluster.names
            url_names = {cluster.url(n): n for n in cluster.names}
        finally:
            cluster.close()
        timeline = read_timeline(tl_base, pids) if a.timeline else None
    e2e = r.e2e_latency_ms
    print(
        f"{a.nodes} nodes, RF=3, acks=quorum, 1 partition, {a.warmup:,} messages of warm-up, {a.rate:,.0f} msg/s "
        f"for {a.seconds:g} s from {a.publishers} connections over the nodes, SSE on {sse_node} "
        f"(wire {a.wire}, publish wire {a.publish}; load average {load:.1f}):"
    )
    if e2e is not None:
        print(
            f"  e2e p50 {e2e.p50:.2f} ms, p99 {e2e.p99:.2f} ms, max {e2e.max:.1f} ms; "
            f"{r.delivered:,} of {r.published:,} delivered; published at {r.publish_msgs_per_s:,.0f} msg/s "
            f"in {r.publish_seconds:.1f} s, delivered in {r.delivery_seconds:.1f} s"
        )
    if r.publish_latency_ms is not None:
        pl = r.publish_latency_ms
        print(
            f"  publish requests ({a.publish}, send -> its ack): p50 {pl.p50:.2f} ms, p99 {pl.p99:.2f} ms, max {pl.max:.1f} ms; "
            f"{r.throttled} answered 429 (each retried after its Retry-After, the send time kept)"
        )
    for w in r.warnings:
        print(f"  warning: {w}")
    for name, b, f in zip(cluster.names, before, after, strict=True):
        print(f"  {name} GC during the run: {during(b, f)}")
    for name, b2, f2 in zip(cluster.names, counts_before, counts_after, strict=True):
        role = "leader" if name == leader else "follower" if name in replicas else "no replica"
        print(f"  {name} ({role}{', SSE' if name == sse_node else ''}): {node_report(b2, f2, r.published)}")
    node_pid = {n: pid for pid, n in pids.items()}
    for name, b2, f2 in zip(cluster.names, counts_before, counts_after, strict=True):
        pid = node_pid.get(name)
        if pid is not None:
            commits = f2.get(("sprawl_lmdb_commits_total", ""), 0.0) - b2.get(
                ("sprawl_lmdb_commits_total", ""), 0.0
            )
            print(
                f"  {name} threads: {sched_report(pid, sched_before[pid], sched_after[pid], r.published, commits)}"
            )
            if a.threads:
                for line in thread_table.table(named_before[pid], named_after[pid], r.published, commits):
                    print(f"    {line}")
    for name, text in sorted(counted.items()):
        print(f"  {name} {text}".replace("\n", "\n    "))
    for name, path in sorted(profiled.items()):
        if path.exists():
            sm = summary(path, top=45)  # (the first ~15 are the reactor loop itself)
            print(f"  {name} py-spy: reactor thread busy {sm['busy_seconds']} s; inclusive %:")
            for fn, pct in sm["inclusive"]:
                print(f"    {pct:5.1f}  {fn}")
            print("    self %: " + "; ".join(f"{fn} {pct}" for fn, pct in sm["self"][:12]))
    lines, bad = delivery_report(r, url_names)
    print("\n".join(lines))
    if timeline is not None and leader is not None:
        print(timeline_table(*timeline, since, until, leader, cluster.names))
        events = timeline[0]
        for worst in r.slowest:
            for _late, _p, o, _lead in worst:
                ev = events.get(o, {})
                t0 = ev.get((leader, "pub"))
                if t0 is not None:
                    steps = sorted((t - t0, f"{n}:{e}") for (n, e), t in ev.items())
                    print(f"  offset {o}: " + ", ".join(f"{name} +{dt * 1000:.1f}" for dt, name in steps))
    if bad:
        print("!!! the stream broke its contract: an offset delivered twice or a message skipped", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
