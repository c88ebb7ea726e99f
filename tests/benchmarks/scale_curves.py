#!/usr/bin/env python3
"""Throughput and memory of one node against partitions, topics and idle subscribers (issue 16).

    PYTHONPATH=tests python -m benchmarks.scale_curves [--partitions 1,10,100,1000]
        [--topics 1,10,100,1000,10000] [--subscribers 1,10,100,1000,5000]
        [--messages 20000] [--plot DIR] [--json FILE]

Starts one real ``twistd sprawl`` node on 127.0.0.1 per curve (a fresh data
dir, ports from the OS) and measures:

* **partitions per node**: for each count, a new topic with that many
  partitions; ``--messages`` unkeyed 100-byte messages published to it by
  :func:`sprawl.client.bench.run_bench` (4 publishers, batches of 100,
  ``acks=leader``: after the fsync; no subscriber); msgs/s, and the node's
  resident set (``VmRSS``) after;
* **topics**: the node grown to each count of single-partition topics, then
  ``--messages`` 100-byte messages published from one keep-alive connection
  in batches of 100, each batch to the next topic in turn (``acks=leader``);
  msgs/s, and the resident set after;
* **idle SSE subscribers**: the node's resident set with each count of open
  ``GET /v1/topics/{topic}/stream`` connections on one topic (counted by the
  node's ``sprawl_stream_subscribers``), no traffic; memory per subscriber
  is the growth over the count.

Prints a Markdown table per curve; ``--plot DIR`` draws ``scale_curves.png``
(needs matplotlib), ``--json`` saves the figures.  Figures of time scale with
the machine's load and its fsync; the memory figures much less.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.scale import Conn, create, rss_kb
from harness import NodeCluster, metric_value, poll_until
from sprawl.client.bench import BenchConfig, run_bench

PAYLOAD = "x" * 100


def one_node(a: argparse.Namespace) -> tuple[NodeCluster, str]:
    """A started one-node cluster in a fresh temporary directory (and that directory)."""
    tmp = tempfile.mkdtemp(prefix="sprawl-curves-", dir=a.data_dir)
    cluster = NodeCluster(Path(tmp), 1, startup_timeout=120)
    cluster.start()
    time.sleep(a.settle)
    return cluster, tmp


def close(cluster: NodeCluster, tmp: str) -> None:
    """Stop the node and remove its data."""
    cluster.close()
    shutil.rmtree(tmp, ignore_errors=True)


def node_rss_mb(cluster: NodeCluster) -> float:
    """The node's resident set, MB."""
    return rss_kb(cluster.nodes[cluster.names[0]].proc.pid) / 1024  # type: ignore[union-attr]


def partitions_curve(counts: list[int], a: argparse.Namespace) -> list[dict[str, Any]]:
    """msgs/s and RSS against the partitions of one topic."""
    cluster, tmp = one_node(a)
    rows = []
    try:
        url = cluster.url(cluster.names[0])
        for n in counts:
            r = run_bench(
                BenchConfig(
                    urls=[url],
                    topic=f"parts{n}",
                    messages=a.messages,
                    size=100,
                    batch=100,
                    publishers=4,
                    subscribers=0,
                    acks="leader",
                    partitions=n,
                    replication_factor=1,
                    keep_topic=True,
                    timeout=120.0,
                )
            )
            rows.append({"partitions": n, "msgs_s": r.publish_msgs_per_s, "rss_mb": node_rss_mb(cluster)})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        close(cluster, tmp)
    return rows


def topics_curve(counts: list[int], a: argparse.Namespace) -> list[dict[str, Any]]:
    """msgs/s (batches to each topic in turn) and RSS against the number of topics."""
    cluster, tmp = one_node(a)
    rows = []
    try:
        conn = Conn(cluster.nodes[cluster.names[0]].http_port)
        made = 0
        body = json.dumps({"messages": [{"payload": PAYLOAD}] * 100}).encode()
        for n in counts:
            create(conn, [f"t{i:05d}" for i in range(made, n)], 1)
            made = n
            batches = max(1, a.messages // 100)
            t0 = time.perf_counter()
            for b in range(batches):
                conn.c.request(
                    "POST",
                    f"/v1/topics/t{b % n:05d}/messages?acks=leader",
                    body=body,
                    headers={"content-type": "application/json"},
                )
                resp = conn.c.getresponse()
                resp.read()
                if resp.status not in (200, 201):
                    raise SystemExit(f"publish: {resp.status}")
            took = time.perf_counter() - t0
            rows.append({"topics": n, "msgs_s": batches * 100 / took, "rss_mb": node_rss_mb(cluster)})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        close(cluster, tmp)
    return rows


def subscribers_curve(counts: list[int], a: argparse.Namespace) -> list[dict[str, Any]]:
    """RSS against the number of idle SSE subscribers of one topic."""
    cluster, tmp = one_node(a)
    socks: list[socket.socket] = []
    rows = []
    try:
        name = cluster.names[0]
        port = cluster.nodes[name].http_port
        url = cluster.url(name)
        Conn(port).call("PUT", "/v1/topics/idle", {"partitions": 1})
        base = node_rss_mb(cluster)
        request = (
            b"GET /v1/topics/idle/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
        )
        for n in counts:
            while len(socks) < n:
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                s.sendall(request)
                socks.append(s)

            def all_open(n: int = n) -> bool:
                try:
                    return metric_value(url, "sprawl_stream_subscribers") >= n
                except (OSError, http.client.HTTPException):
                    return False

            if poll_until(all_open, a.bound, step=0.5) is None:
                raise SystemExit(f"{n} subscribers were not all open within {a.bound}s")
            time.sleep(a.settle)
            rss = node_rss_mb(cluster)
            rows.append(
                {
                    "subscribers": n,
                    "rss_mb": rss,
                    "kb_per_subscriber": (rss - base) * 1024 / n,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    finally:
        for s in socks:
            s.close()
        close(cluster, tmp)
    return rows


def tables(fig: dict[str, list[dict[str, Any]]]) -> str:
    """The three curves as Markdown tables."""
    out = []
    if fig.get("partitions"):
        out += ["| partitions (one topic) | msgs/s | RSS MB |", "|---|---|---|"]
        out += [
            f"| {r['partitions']:,} | {r['msgs_s']:,.0f} | {r['rss_mb']:.0f} |" for r in fig["partitions"]
        ]
        out.append("")
    if fig.get("topics"):
        out += ["| topics | msgs/s | RSS MB |", "|---|---|---|"]
        out += [f"| {r['topics']:,} | {r['msgs_s']:,.0f} | {r['rss_mb']:.0f} |" for r in fig["topics"]]
        out.append("")
    if fig.get("subscribers"):
        out += ["| idle SSE subscribers | RSS MB | KB per subscriber |", "|---|---|---|"]
        out += [
            f"| {r['subscribers']:,} | {r['rss_mb']:.0f} | {r['kb_per_subscriber']:.1f} |"
            for r in fig["subscribers"]
        ]
    return "\n".join(out)


def plot(fig: dict[str, list[dict[str, Any]]], out: Path) -> None:
    """msgs/s and RSS against partitions and topics; RSS and KB per subscriber against subscribers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    panels = [
        ("partitions", "msgs_s", "msgs/s against partitions (one topic)"),
        ("partitions", "rss_mb", "RSS MB against partitions"),
        ("topics", "msgs_s", "msgs/s against topics (batches round robin)"),
        ("topics", "rss_mb", "RSS MB against topics"),
        ("subscribers", "rss_mb", "RSS MB against idle SSE subscribers"),
        ("subscribers", "kb_per_subscriber", "KB per idle SSE subscriber"),
    ]
    fig_, axes = plt.subplots(3, 2, figsize=(9, 9))
    for ax, (curve, key, title) in zip(axes.flat, panels, strict=True):
        rows = fig.get(curve) or []
        ax.plot([r[curve] for r in rows], [r[key] for r in rows], marker="o")
        ax.set_title(title, fontsize=9)
        ax.set_xscale("log")
        ax.set_xlabel(curve)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig_.tight_layout()
    fig_.savefig(out / "scale_curves.png", dpi=110)
    plt.close(fig_)


def counts(text: str) -> list[int]:
    """``1,10,100`` -> [1, 10, 100] (empty: the curve is skipped)."""
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    """Run the curves asked, print the tables."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--partitions", default="1,10,100,1000", help="partition counts ('' skips the curve)")
    ap.add_argument("--topics", default="1,10,100,1000,10000", help="topic counts, ascending ('' skips)")
    ap.add_argument(
        "--subscribers", default="1,10,100,1000,5000", help="subscriber counts, ascending ('' skips)"
    )
    ap.add_argument("--messages", type=int, default=20_000, help="messages published per point")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds of quiet before measuring")
    ap.add_argument("--bound", type=float, default=120.0, help="give up waiting after this many seconds")
    ap.add_argument("--plot", type=Path, help="write scale_curves.png to this directory")
    ap.add_argument("--json", type=Path, help="save the figures to this file")
    ap.add_argument("--data-dir", type=Path, help="where the node's data dir goes (default: the temp dir)")
    a = ap.parse_args()
    fig: dict[str, list[dict[str, Any]]] = {}
    if counts(a.partitions):
        fig["partitions"] = partitions_curve(counts(a.partitions), a)
    if counts(a.topics):
        fig["topics"] = topics_curve(counts(a.topics), a)
    if counts(a.subscribers):
        fig["subscribers"] = subscribers_curve(counts(a.subscribers), a)
    print(tables(fig))
    if a.json:
        a.json.write_text(json.dumps(fig, indent=1))
    if a.plot:
        plot(fig, a.plot)


if __name__ == "__main__":
    main()
