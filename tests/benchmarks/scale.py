#!/usr/bin/env python3
"""Cost against the number of partitions (issue 23): real ``twistd sprawl`` nodes on 127.0.0.1.

    PYTHONPATH=tests python -m benchmarks.scale [--nodes 1,3] [--topics 100,1000,3000,10000]
                                               [--idle-seconds 10] [--plot DIR] [--json FILE]

For each cluster size (replication factor ``min(3, nodes)``; the first node
founds the cluster, the others join it) it grows the cluster to each count of
single-partition topics in turn (``PUT /v1/topics/tNNNNN`` from one keep-alive
client on the first node) and measures at each count:

* **create**: ms per ``PUT`` of the last ``--batch`` topics created (creation is
  answered once the topic is committed through Raft and applied on that node);
* **describe**, **list**: ms per ``GET /v1/topics/{topic}`` (of random topics)
  and per ``GET /v1/topics?limit=100`` page (the first page);
* **delete**: ms per ``DELETE`` of ``--batch`` extra topics made for it;
* **idle CPU**: % of one core each node's process used over ``--idle-seconds``
  with no traffic, after ``--settle`` seconds (``/proc/PID/stat``), the
  highest of the nodes (the JSON row names in ``idle_scrubbing`` the nodes
  whose background scrub ran in the window: a pass reads every partition, so
  such a node's figure is the scrub's, not the idle node's);
* **memory per replica**: the growth of the nodes' resident set (``VmRSS``)
  since the empty cluster, over the partition replicas each node holds (KB).

At the largest count it then measures:

* **failover** (several nodes; at the largest count, or at each of
  ``--failover-at``): ``kill -9`` of the node that is not the Raft leader and
  leads the most partitions (with none led by such a node, extra topics are
  made until one is), then the time until every partition has a live leader
  -- the survivors' ``/v1/cluster`` ``partitions.leading`` add up to every
  partition -- that accepts a publish (one to a random partition the victim
  led, through a survivor); after it, a publish to each of ``--failover-probes``
  more of those partitions must succeed, and whether the survivors kept their
  Raft leader and term through it is recorded; the node is restarted after;
* **restart**: ``kill -9`` of a node, started again on its data dir, the time
  until its ``/readyz`` answers 200 and it serves a publish to a partition it
  holds (the median of ``--restarts`` tries; ``--restart-each``: at every
  count, not only the largest).

A 503 (``no_leader`` while Raft elects, a proposal that timed out) is sent
again for up to 30 s, waiting its ``Retry-After`` or a backoff doubling from
0.1 to 2 s (:func:`send_retrying`); the retries and the seconds waited are
counted in each row (``retried``, ``retry_wait_s``; the table's last column).
The table's ``load avg`` is the 1-minute load average when the row was
measured (the machine is shared: read the times beside it).

Prints a Markdown table per cluster size; ``--plot DIR`` draws the curves as
PNG files there (needs matplotlib: ``pip install .[bench]``), ``--json`` saves
the figures, ``--replot FILE`` prints and draws (with ``--plot``) the rows of
such a file without starting a node.

Building 10,000 topics on 3 nodes takes minutes: ``--reuse DIR`` keeps the
cluster's data dirs in ``DIR`` and, when ``DIR`` already holds them, starts
the nodes on them and creates only the topics still missing;
``--failover-only`` measures nothing but the failover (for example
``--nodes 3 --topics 1,10000 --failover-at 1,10000 --failover-only``: the
1-topic figure on a fresh cluster is not comparable with a reused one, so
give each its own ``--reuse`` dir, or none).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.failover_timeline import parse as timeline_parse
from benchmarks.failover_timeline import table as timeline_table
from benchmarks.plots import panel_curves
from harness import NodeCluster, poll_until

JSON = {"content-type": "application/json"}


class Conn:
    """One keep-alive HTTP/1.1 connection to a node (reopened after an error)."""

    def __init__(self, port: int, timeout: float = 60.0) -> None:
        self.port = port
        self.timeout = timeout
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.retry_after: float | None = None

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        """One request; (status, body).  A ``Retry-After`` of the answer (seconds)
        is kept in :attr:`retry_after` (None without one)."""
        data = json.dumps(body).encode() if body is not None else None
        self.retry_after = None
        for attempt in range(2):
            try:
                self.c.request(method, path, body=data, headers=JSON if data is not None else {})
                r = self.c.getresponse()
                self.retry_after = retry_after_seconds(r.getheader("retry-after"))
                return r.status, r.read()
            except (OSError, http.client.HTTPException):
                self.c.close()
                self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                if attempt:
                    raise
        raise AssertionError("unreachable")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    """Resident set size of a process, KB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (None when absent or not a number
    of seconds: the HTTP-date form is not used by Sprawl)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


#: Requests answered 503 and sent again (a proposal that timed out may still apply;
#: PUT and DELETE of a topic are safe to repeat), by method.
RETRIED: dict[str, int] = {}
#: Seconds spent waiting between those tries, by method.
RETRY_WAIT: dict[str, float] = {}

#: A 503 is sent again for up to this many seconds (a Raft election under load takes a few).
RETRY_FOR = 30.0
#: The first wait after a 503 and the longest (doubling in between), seconds.
RETRY_FIRST, RETRY_MOST = 0.1, 2.0


def send_retrying(
    send: Callable[[], tuple[int, bytes, float | None]],
    label: str,
    retry_for: float = RETRY_FOR,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.monotonic,
) -> tuple[int, bytes]:
    """``send()`` (status, body, Retry-After seconds or None) until it is not
    a 503 or ``retry_for`` seconds have passed; between tries it waits the
    answer's Retry-After, else a backoff doubling from :data:`RETRY_FIRST`
    to :data:`RETRY_MOST` -- never past the deadline.  Each retry is counted
    in :data:`RETRIED` and its wait in :data:`RETRY_WAIT` under ``label``;
    the last answer is returned."""
    deadline = now() + retry_for
    backoff = RETRY_FIRST
    while True:
        status, text, after = send()
        left = deadline - now()
        if status != 503 or left <= 0:
            return status, text
        wait = min(after if after is not None else backoff, left)
        backoff = min(backoff * 2, RETRY_MOST)
        RETRIED[label] = RETRIED.get(label, 0) + 1
        RETRY_WAIT[label] = RETRY_WAIT.get(label, 0.0) + wait
        print(f"{label}: 503 {text[:200]!r}; again in {wait:.1f}s", flush=True)
        sleep(wait)


def timed(
    conn: Conn, method: str, paths: list[str], body: Any = None, ok: tuple[int, ...] = (200, 201)
) -> float:
    """Mean ms per request of ``paths`` (a 503 is sent again with a bounded
    backoff, :func:`send_retrying`, and counted in :data:`RETRIED`); raises on
    an unexpected status."""
    t0 = time.perf_counter()

    def sender(p: str) -> Callable[[], tuple[int, bytes, float | None]]:
        def send() -> tuple[int, bytes, float | None]:
            status, text = conn.call(method, p, body)
            return status, text, conn.retry_after

        return send

    for p in paths:
        status, text = send_retrying(sender(p), method)
        if status not in ok and not (method == "DELETE" and status == 404 and RETRIED.get(method)):
            raise SystemExit(f"{method} {p}: {status} {text[:300]!r}")
    return (time.perf_counter() - t0) / max(len(paths), 1) * 1000


def create(conn: Conn, names: list[str], rf: int) -> float:
    """Create single-partition topics; mean ms per create."""
    return timed(conn, "PUT", [f"/v1/topics/{n}" for n in names], {"partitions": 1, "replication_factor": rf})


def idle_cpu(cluster: NodeCluster, seconds: float) -> dict[str, float]:
    """% of a core each node used over ``seconds`` of no traffic."""
    pids = {n: cluster.nodes[n].proc.pid for n in cluster.up()}  # type: ignore[union-attr]
    before = {n: cpu_seconds(p) for n, p in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    took = time.monotonic() - t0
    return {n: (cpu_seconds(p) - before[n]) / took * 100 for n, p in pids.items()}


def scrub_state(cluster: NodeCluster) -> dict[str, tuple[int, bool]]:
    """Each node's scrub (passes done, a pass running now), from ``GET /v1/damage``."""
    out = {}
    for n in cluster.up():
        status, body = cluster.get(n, "/v1/damage")
        sc = body.get("scrub", {}) if status == 200 and isinstance(body, dict) else {}
        out[n] = (int(sc.get("passes", 0)), bool(sc.get("running", False)))
    return out


def scrubbed(before: dict[str, tuple[int, bool]], after: dict[str, tuple[int, bool]]) -> list[str]:
    """The nodes whose background scrub ran during a window (a pass running at
    either end of it, or one done within it): a pass reads every partition,
    so an idle-CPU window holding one measures the scrub, not the idle node."""
    return sorted(n for n, (p, run) in after.items() if run or n not in before or before[n] != (p, False))


def leaders_of(cluster: NodeCluster, via: str) -> dict[str, str | None]:
    """topic -> leader of its partition 0, from a node's placement."""
    return {t: (parts.get("0") or {}).get("leader") or None for t, parts in cluster.placement(via).items()}


def publish_status(cluster: NodeCluster, via: str, topic: str) -> int:
    """The status of one publish with acks=quorum through ``via`` (0: no answer within 3 s)."""
    try:
        status, _ = Conn(cluster.nodes[via].http_port, timeout=3).call(
            "POST", f"/v1/topics/{topic}/messages?acks=quorum", {"messages": [{"payload": "x"}]}
        )
    except (OSError, http.client.HTTPException):
        return 0
    return status


def publish_ok(cluster: NodeCluster, via: str, topic: str) -> bool:
    """One publish with acks=quorum succeeds through ``via``."""
    return publish_status(cluster, via, topic) in (200, 201)


def partitions_view(cluster: NodeCluster, name: str) -> dict[str, Any]:
    """The ``partitions`` block of a node's ``/v1/cluster`` (empty when it does not answer)."""
    got = cluster.cluster_view(name).get("partitions")
    return got if isinstance(got, dict) else {}


def raft_of(cluster: NodeCluster, names: list[str]) -> dict[str, tuple[str | None, int]]:
    """(Raft leader, term) as each of ``names`` sees it."""
    out = {}
    for n in names:
        raft = cluster.cluster_view(n).get("raft", {})
        out[n] = (raft.get("leader") or None, int(raft.get("term") or 0))
    return out


def failover(cluster: NodeCluster, conn: Conn, rf: int, a: argparse.Namespace) -> dict[str, Any]:
    """Kill the node that leads the most partitions and is not the Raft
    leader; seconds until every partition has a live leader that takes a
    publish (see the module docstring), and what else was seen."""
    raft = cluster.raft_leader()
    others = [n for n in cluster.names if n != raft]
    view = leaders_of(cluster, others[0])
    extra: list[str] = []
    for i in range(20):
        if any(view.get(t) in others for t in view):
            break
        # No partition led by a node other than the Raft leader (1 topic):
        # one more topic, until one is.
        extra.append(f"fo{i:02d}")
        create(conn, extra[-1:], rf)
        poll_until(lambda: extra[-1] in leaders_of(cluster, others[0]), a.bound)
        view = leaders_of(cluster, others[0])
    victim = max(others, key=lambda n: sum(1 for lead in view.values() if lead == n))
    survivors = [n for n in cluster.names if n != victim]
    led = sorted(t for t, lead in view.items() if lead == victim)
    total = len(view)
    rng = random.Random(len(led))
    probe = rng.choice(led)
    raft_before = raft_of(cluster, survivors)
    t0 = time.monotonic()
    kill_at = time.time()  # (the nodes' timeline lines are in time.time())
    cluster.kill(victim)
    seen: dict[str, float] = {}
    tries: list[tuple[float, float, int]] = []  # (sent at, answered at, status) of each probe publish

    def moved() -> bool:
        leading = sum(int(partitions_view(cluster, n).get("leading") or 0) for n in survivors)
        if leading < total:
            return False
        seen.setdefault("leaders_s", time.monotonic() - t0)
        sent = time.monotonic() - t0
        status = publish_status(cluster, survivors[0], probe)
        tries.append((round(sent, 2), round(time.monotonic() - t0, 2), status))
        return status in (200, 201)

    # Every 0.2 s, not faster: each look asks both survivors' /v1/cluster,
    # which walks every replica -- polled every 0.05 s it was 6-11 % of a
    # survivor's CPU in the middle of the failover it measures (py-spy).
    took = poll_until(moved, a.bound, step=0.2)
    if took is None:
        raise SystemExit(f"failover: the partitions {victim} led did not move within {a.bound}s")
    elapsed = time.monotonic() - t0
    sample = rng.sample(led, min(len(led), a.failover_probes))
    failed = [t for t in sample if not publish_ok(cluster, survivors[1 % len(survivors)], t)]
    raft_after = raft_of(cluster, survivors)
    row = {
        "failover_s": elapsed,
        "failover_leaders_s": seen.get("leaders_s", elapsed),
        "failover_partitions": len(led),
        "failover_topics": total,
        "failover_extra_topics": len(extra),
        "failover_probes_failed": len(failed),
        "failover_publish_tries": tries,
        "failover_raft_kept": all(raft_after[n] == raft_before[n] for n in survivors),
        "failover_raft": {"before": raft_before, "after": raft_after},
        "failover_load": os.getloadavg()[0],
        "failover_kill_at": kill_at,
    }
    print(json.dumps({"failover": row}), flush=True)
    # Each node logs its phases at most once a second: wait for the last lines.
    time.sleep(1.5)
    texts = {n: cluster.nodes[n].log_text() for n in survivors}
    print(timeline_table(timeline_parse(texts, kill_at, elapsed + 5), kill_at), flush=True)
    cluster.restart(victim)
    return row


def restart(cluster: NodeCluster, bound: float) -> float:
    """Kill a node and start it again; seconds until it is ready and serves a publish."""
    victim = cluster.names[-1]
    topic = next(iter(cluster.placement(cluster.names[0])), None)
    cluster.kill(victim)
    t0 = time.monotonic()
    cluster.restart(victim)

    def serving() -> bool:
        status, _ = cluster.get(victim, "/readyz", timeout=2)
        return status == 200 and (topic is None or publish_ok(cluster, victim, topic))

    if poll_until(serving, bound, step=0.1) is None:
        raise SystemExit(f"restart: {victim} was not serving within {bound}s")
    return time.monotonic() - t0


def restarts(cluster: NodeCluster, row: dict[str, Any], a: argparse.Namespace) -> None:
    """``--restarts`` restarts (:func:`restart`) into ``row``: the median
    seconds, each try's, and the load average beside them."""
    took = []
    for _ in range(a.restarts):
        took.append(restart(cluster, a.bound))
        poll_until(lambda: cluster.formed(), a.bound)
        time.sleep(a.settle)
    row["restart_s"] = statistics.median(took)
    row["restart_each_s"] = [round(t, 2) for t in took]
    row["restart_load"] = os.getloadavg()[0]
    print(json.dumps({"topics": row["topics"], "restart_s": took, "load": row["restart_load"]}), flush=True)


def run_size(nodes: int, counts: list[int], a: argparse.Namespace) -> list[dict[str, Any]]:
    """Every figure for one cluster size."""
    rf = min(3, nodes)
    rows: list[dict[str, Any]] = []
    if a.reuse is not None:
        tmp = str(a.reuse / f"{nodes}-nodes")
        Path(tmp).mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="sprawl-scale-", dir=a.data_dir)
    cluster = NodeCluster(Path(tmp), nodes, startup_timeout=120)
    failover_at = {int(x) for x in a.failover_at.split(",")} if a.failover_at else {counts[-1]}
    try:
        cluster.start(form_bound=a.bound)
        first = cluster.names[0]
        conn = Conn(cluster.nodes[first].http_port)
        time.sleep(a.settle)
        base_rss = {n: rss_kb(cluster.nodes[n].proc.pid) for n in cluster.names}  # type: ignore[union-attr]
        existing = set(cluster.placement(first))
        made = 0
        for count in counts:
            bulk = [f"t{i:05d}" for i in range(made, max(made, count - a.batch))]
            create(conn, [t for t in bulk if t not in existing], rf)
            last = [f"t{i:05d}" for i in range(max(made, count - a.batch), count)]
            create_ms = create(conn, [t for t in last if t not in existing] or last, rf)
            made = count
            if a.failover_only:
                row: dict[str, Any] = {
                    "nodes": nodes,
                    "topics": count,
                    "replicas_per_node": int(count * rf / nodes),
                }
                rows.append(row)
                if nodes > 1 and count in failover_at:
                    time.sleep(a.settle)
                    row.update(failover(cluster, conn, rf, a))
                    poll_until(lambda: cluster.formed(), a.bound)
                continue
            rng = random.Random(count)
            describe_ms = timed(
                conn, "GET", [f"/v1/topics/t{rng.randrange(made):05d}" for _ in range(a.batch)]
            )
            list_ms = timed(conn, "GET", ["/v1/topics?limit=100"] * 10)
            extra = [f"x{count:05d}-{i}" for i in range(a.batch)]
            create(conn, extra, rf)
            delete_ms = timed(conn, "DELETE", [f"/v1/topics/{n}" for n in extra], ok=(200, 204))
            time.sleep(a.settle)
            scrub0 = scrub_state(cluster)
            cpu = idle_cpu(cluster, a.idle_seconds)
            scrubbing = scrubbed(scrub0, scrub_state(cluster))
            rss = {n: rss_kb(cluster.nodes[n].proc.pid) for n in cluster.names}  # type: ignore[union-attr]
            replicas_per_node = count * rf / nodes
            kb = max((rss[n] - base_rss[n]) / replicas_per_node for n in cluster.names)
            row = {
                "nodes": nodes,
                "topics": count,
                "replicas_per_node": int(replicas_per_node),
                "create_ms": create_ms,
                "describe_ms": describe_ms,
                "list_ms": list_ms,
                "delete_ms": delete_ms,
                "idle_cpu": max(cpu.values()),
                "idle_cpu_nodes": cpu,
                "idle_scrubbing": scrubbing,
                "rss_mb": max(rss.values()) / 1024,
                "kb_per_replica": kb,
                "load": os.getloadavg()[0],
                "retried": dict(RETRIED),
                "retry_wait_s": {k: round(v, 1) for k, v in RETRY_WAIT.items()},
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            if nodes > 1 and count in failover_at:
                row.update(failover(cluster, conn, rf, a))
                poll_until(lambda: cluster.formed(), a.bound)
                time.sleep(a.settle)
            if a.restart_each and count != counts[-1]:
                restarts(cluster, row, a)
        if not a.failover_only:
            top = rows[-1]
            restarts(cluster, top, a)
            print(json.dumps(top), flush=True)
    finally:
        cluster.close()
        if a.keep or a.reuse is not None:
            print(f"data dirs and logs kept under {tmp}", flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The issue's table, one row per topic count."""
    out = [
        "| nodes | topics | replicas/node | create ms | describe ms | list ms (page of 100) | delete ms "
        "| idle CPU % (max node) | RSS MB | KB/replica | failover s | restart s | load avg | 503s retried (so far) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    if rows and all("create_ms" not in r for r in rows):
        return failover_table(rows)
    for r in rows:
        fo = f"{r['failover_s']:.1f} ({r['failover_partitions']} partitions)" if "failover_s" in r else "-"
        rs = f"{r['restart_s']:.1f}" if "restart_s" in r else "-"
        if "restart_load" in r:
            rs += f" (load {r['restart_load']:.1f})"
        retried = sum(r.get("retried", {}).values())
        out.append(
            f"| {r['nodes']} | {r['topics']:,} | {r['replicas_per_node']:,} | {r['create_ms']:.1f} "
            f"| {r['describe_ms']:.1f} | {r['list_ms']:.1f} | {r['delete_ms']:.1f} | {r['idle_cpu']:.1f} "
            f"| {r['rss_mb']:.0f} | {r['kb_per_replica']:.1f} | {fo} | {rs} | {r.get('load', 0):.1f} | {retried} |"
        )
    return "\n".join(out)


def failover_table(rows: list[dict[str, Any]]) -> str:
    """The failover figures alone (``--failover-only``), one row per topic count."""
    out = [
        "| nodes | topics | partitions the victim led | every partition led again, s "
        "| ... and a publish taken, s | probes failed | survivors kept their Raft leader | load avg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "failover_s" not in r:
            continue
        out.append(
            f"| {r['nodes']} | {r['failover_topics']:,} | {r['failover_partitions']:,} "
            f"| {r['failover_leaders_s']:.2f} | {r['failover_s']:.2f} | {r['failover_probes_failed']} "
            f"| {'yes' if r['failover_raft_kept'] else 'no'} | {r['failover_load']:.1f} |"
        )
    return "\n".join(out)


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    """Curves against the topic count, one line per cluster size: ms per
    operation, idle CPU, KB per replica, and the failover and restart times
    at the counts they were measured at (``--failover-at``, ``--restart-each``;
    by default the largest only)."""
    panels = [
        ("create_ms", "ms per topic create"),
        ("describe_ms", "ms per topic describe"),
        ("list_ms", "ms per list page (100 topics)"),
        ("delete_ms", "ms per topic delete"),
        ("idle_cpu", "idle CPU, % of a core (busiest node)"),
        ("kb_per_replica", "memory per partition replica, KB"),
        ("failover_s", "failover: a publish taken, s"),
        ("restart_s", "restart of a node: serving, s"),
    ]
    panel_curves(
        rows,
        panels,
        out / "scale.png",
        x="topics",
        xlabel="single-partition topics",
        label=lambda n: f"{n} node(s), RF {min(3, n)}",
    )


def main() -> None:
    """Run the sizes and counts asked, print the tables."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="1,3", help="cluster sizes, comma-separated")
    ap.add_argument("--topics", default="100,1000,3000,10000", help="topic counts, ascending")
    ap.add_argument("--batch", type=int, default=100, help="operations timed per figure")
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds of quiet before measuring")
    ap.add_argument("--bound", type=float, default=120.0, help="give up waiting after this many seconds")
    ap.add_argument("--plot", type=Path, help="write the curves (PNG) to this directory")
    ap.add_argument("--json", type=Path, help="save the figures to this file")
    ap.add_argument(
        "--replot",
        type=Path,
        help="start nothing: print the table and draw --plot from the rows an earlier --json run saved",
    )
    ap.add_argument("--data-dir", type=Path, help="where the nodes' data dirs go (default: the temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the nodes' data dirs and logs")
    ap.add_argument("--restarts", type=int, default=1, help="restarts measured (their median is the figure)")
    ap.add_argument("--failover-at", help="topic counts to measure the failover at (default: the largest)")
    ap.add_argument("--failover-only", action="store_true", help="measure only the failover")
    ap.add_argument("--failover-probes", type=int, default=50, help="publishes checked after a failover")
    ap.add_argument("--reuse", type=Path, help="keep the clusters' data dirs here and start on them if there")
    ap.add_argument(
        "--restart-each",
        action="store_true",
        help="measure the restart at every topic count, not only the last",
    )
    a = ap.parse_args()
    if a.replot:
        saved: list[dict[str, Any]] = json.loads(a.replot.read_text())
        print(table(saved))
        if a.plot:
            plot(saved, a.plot)
        return
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    counts = [int(x) for x in a.topics.split(",")]
    rows: list[dict[str, Any]] = []
    for n in (int(x) for x in a.nodes.split(",")):
        got = run_size(n, counts, a)
        rows += got
        print(table(got), flush=True)
    print(table(rows))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    if a.plot:
        plot(rows, a.plot)


if __name__ == "__main__":
    main()
