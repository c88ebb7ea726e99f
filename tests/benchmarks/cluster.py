#!/usr/bin/env python3
"""Replicated-cluster figures: 3 real ``twistd sprawl`` nodes on 127.0.0.1.

    python -m benchmarks.cluster [--quick] [--partitions 3] [--rf 3] [--publishers 16]
                                      [--cluster-key] [--throughput-only]

Starts the nodes (fresh data dirs in a temporary directory, ports from the OS;
the first founds the cluster, the others join it), then measures, each on a
fresh topic with ``--partitions`` partitions and ``--rf`` replicas:

(a) **publish throughput**: ``--messages`` payloads of ``--size`` bytes in
    batches of ``--batch`` with ``acks=quorum`` from ``--publishers`` concurrent
    keep-alive connections spread round robin over all three nodes
    (:mod:`sprawl.client.bench`, the engine of ``sprawlctl bench``; no subscriber).
(b) **end-to-end latency** at a fixed ``--rate`` (default 1,000 msg/s in
    batches of ``--latency-batch`` = 1, ``acks=quorum``, ``--latency-publishers``
    connections; the table states the rate reached): published on node A,
    received on node C by an SSE subscriber from ``latest``; each payload
    carries its send time, latency is receive time - send time (same clock).
(c) **failover**: ``kill -9`` of the leader of partition 0 (from
    ``/v1/cluster/placement``), then the time until the first successful
    publish to partition 0 (a key that hashes to it) on a surviving node: a
    new attempt every 20 ms, overlapping (each waits up to 2 s), so one stuck
    on the dead leader does not delay the next.  The killed node is
    restarted and the cluster left to catch up between ``--kills`` runs.

With ``--cluster-key`` the nodes share a new cluster key (every peer frame
carries a session tag, gossip an HMAC); ``--throughput-only`` runs (a) alone,
for comparing the two.

Prints a Markdown table.  Needs partition replication wired into the node
for ``--rf`` > 1 (until then topic creation answers 400).  With ``--rf 1``
(every node keeps its own copy of each topic before the wiring) the
latency subscriber reads from node A instead of C.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import NodeCluster, first_success, http_json, key_for_partition, make_key_file, poll_until
from sprawl.client.bench import BenchConfig, BenchError, BenchResult, run_bench

FORM_BOUND = 60.0
CATCH_UP_BOUND = 60.0
FAILOVER_GIVE_UP = 60.0


def create_topic(cluster: NodeCluster, name: str, partitions: int, rf: int) -> None:
    """Create a topic and wait until every node has it and every partition has a
    leader in the placement (a node that has not applied the topic yet would
    answer the first publishes topic_not_found)."""
    status, body = http_json(
        cluster.url(cluster.names[0]) + f"/v1/topics/{name}",
        "PUT",
        {"partitions": partitions, "replication_factor": rf},
        timeout=15,
    )
    if status not in (200, 201):
        raise SystemExit(f"cannot create {name} with replication_factor {rf}: {status} {body}")

    def led() -> bool:
        leaders = cluster.partition_leaders(name)
        everywhere = all(cluster.get(n, f"/v1/topics/{name}")[0] == 200 for n in cluster.up())
        return everywhere and len(leaders) == partitions and all(leaders.values())

    if poll_until(led, FORM_BOUND) is None:
        raise SystemExit(f"{name}: partitions without a leader: {cluster.partition_leaders(name)}")


def throughput(cluster: NodeCluster, a: argparse.Namespace) -> BenchResult:
    """(a): publish throughput with acks=quorum to all nodes round robin."""
    return run_bench(
        BenchConfig(
            urls=[cluster.url(n) for n in cluster.names],
            messages=a.messages,
            size=a.size,
            batch=a.batch,
            publishers=a.publishers,
            subscribers=0,
            acks="quorum",
            partitions=a.partitions,
            replication_factor=a.rf,
            keep_topic=True,  # deleting it would load the nodes during the next measurement
            timeout=60.0,
        )
    )


def latency(cluster: NodeCluster, a: argparse.Namespace) -> tuple[BenchResult, str, str]:
    """(b): publish on node A at a fixed rate, SSE on node C; (result, A, C)."""
    pub = cluster.names[0]
    sub = cluster.names[-1] if a.rf > 1 else pub
    result = run_bench(
        BenchConfig(
            urls=[cluster.url(pub)],
            subscriber_urls=[cluster.url(sub)],
            messages=int(a.rate * a.seconds),
            size=a.size,
            batch=a.latency_batch,
            publishers=a.latency_publishers,
            subscribers=1,
            rate=a.rate,
            acks="quorum",
            partitions=a.partitions,
            replication_factor=a.rf,
            keep_topic=True,  # deleting it would load the nodes during the next measurement
            timeout=60.0,
        )
    )
    return result, pub, sub


def _publisher(url: str, key: str) -> Callable[[int], bool]:
    """``publish_once`` of attempt ``i`` with a 2 s timeout."""
    return lambda i: publish_once(url, key, i, 2.0)


def publish_once(url: str, key: str, i: int, timeout: float) -> bool:
    """One publish of one message with ``key`` (it hashes to partition 0); True when acked there."""
    body = {"messages": [{"payload": f"m{i}", "key": key}], "acks": "quorum"}
    status, answer = http_json(url, "POST", body, timeout)
    return status == 200 and answer.get("partitions") == [0]


def wait_caught_up(cluster: NodeCluster, topics: list[str], replicated: bool) -> list[str]:
    """Wait (bounded) until ``topics`` are fully replicated; what is still missing (empty: done)."""
    problems: list[str] = []

    def caught_up() -> bool:
        problems[:] = cluster.replication_problems(topics, replicated=replicated)
        return not problems

    poll_until(caught_up, CATCH_UP_BOUND, step=0.2)
    return problems


def failover(cluster: NodeCluster, a: argparse.Namespace) -> list[tuple[float, str]]:
    """(c): kill -9 the leader of partition 0, time until a publish to it succeeds; per kill
    (seconds, note)."""
    topic = f"failover-{int(time.time())}"
    create_topic(cluster, topic, a.partitions, a.rf)
    key = key_for_partition(0, a.partitions)
    out: list[tuple[float, str]] = []
    for k in range(a.kills):
        leader = cluster.partition_leaders(topic).get(0)
        if leader not in cluster.names:
            raise SystemExit(f"partition 0 of {topic} has no leader: {cluster.placement()}")
        survivor = next(n for n in cluster.names if n != leader)
        url = cluster.url(survivor) + f"/v1/topics/{topic}/messages"

        if not publish_once(url, key, -1, 10.0):
            raise SystemExit(f"publishing to {topic}/0 on {survivor} fails before the kill")
        was_raft_leader = cluster.raft_leader() == leader
        cluster.kill(leader)
        took = first_success(_publisher(url, key), FAILOVER_GIVE_UP, interval=0.02)
        if took is None:
            raise SystemExit(f"no publish to {topic}/0 succeeded {FAILOVER_GIVE_UP:g} s after the kill")
        note = f"killed {leader}" + (" (also the Raft leader)" if was_raft_leader else "")
        print(f"failover {k + 1}/{a.kills}: {took:.2f} s ({note}; published on {survivor})", flush=True)
        out.append((took, note))
        cluster.restart(leader)
        if poll_until(cluster.formed, FORM_BOUND) is None:
            raise SystemExit(f"cluster did not form again after restarting {leader}")
        problems = wait_caught_up(cluster, [topic], a.rf > 1)
        if problems:
            raise SystemExit(f"not caught up {CATCH_UP_BOUND:g} s after restarting {leader}: {problems[:5]}")
    return out


def ms(x: Any) -> str:
    return "-" if x is None else f"{x:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small runs: a smoke test of the script")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--rf", type=int, default=3, help="replication factor [3]")
    ap.add_argument("--size", type=int, default=100, help="payload bytes [100]")
    ap.add_argument("--batch", type=int, default=100, help="messages per publish in (a) [100]")
    ap.add_argument("--publishers", type=int, default=16, help="concurrent publishers in (a) [16]")
    ap.add_argument("--messages", type=int, default=500_000, help="messages in (a) [500000]")
    ap.add_argument("--rate", type=float, default=1000.0, help="msg/s in (b) [1000]")
    ap.add_argument("--seconds", type=float, default=20.0, help="duration of (b) [20]")
    ap.add_argument("--latency-batch", type=int, default=1, help="messages per publish in (b) [1]")
    ap.add_argument("--latency-publishers", type=int, default=64, help="connections publishing (b) [64]")
    ap.add_argument("--kills", type=int, default=5, help="failovers measured in (c) [5]")
    ap.add_argument("--data-dir", help="parent of the nodes' data dirs (default: a temporary directory)")
    ap.add_argument("--cluster-key", action="store_true", help="the nodes share a new cluster key")
    ap.add_argument("--throughput-only", action="store_true", help="measure (a) only")
    a = ap.parse_args()
    if a.quick:
        a.messages, a.seconds, a.kills = min(a.messages, 20_000), min(a.seconds, 5.0), min(a.kills, 1)

    with tempfile.TemporaryDirectory(prefix="sprawl-cluster-bench-") as tmp:
        base = Path(a.data_dir or tmp)
        extra = ["--cluster-key-file", make_key_file(base / "cluster.key")] if a.cluster_key else []
        cluster = NodeCluster(base, a.nodes, *extra, prefix="b")
        try:
            cluster.start(FORM_BOUND)
            print(
                f"{a.nodes} nodes: " + ", ".join(f"{n} {cluster.url(n)}" for n in cluster.names), flush=True
            )
            try:
                tp = throughput(cluster, a)
                pl = tp.publish_latency_ms
                print(
                    f"(a) {tp.publish_msgs_per_s:,.0f} msgs/s, {tp.publish_mb_per_s:.1f} MB/s "
                    f"(p50/p99 {ms(pl and pl.p50)} / {ms(pl and pl.p99)} ms)"
                    + (" with a cluster key" if a.cluster_key else ""),
                    flush=True,
                )
                if a.throughput_only:
                    return
                lat, pub, sub = latency(cluster, a)
            except BenchError as e:
                hint = " (replication_factor > 1 needs partition replication wired in)" if a.rf > 1 else ""
                raise SystemExit(f"error: {e}{hint}") from None
            print(f"(b) e2e {lat.e2e_latency_ms}", flush=True)
            fo = failover(cluster, a)
        finally:
            cluster.close()

    times = sorted(t for t, _ in fo)
    print()
    print(
        f"{a.nodes} nodes on one machine, replication factor {a.rf}, {a.partitions} partitions, "
        f"payload {a.size} B, acks=quorum, durable topics."
    )
    print()
    print("| measure | setting | result |")
    print("|---|---|---|")
    pl = tp.publish_latency_ms
    print(
        f"| (a) publish throughput | batches of {a.batch}, {a.publishers} publishers round robin over "
        f"{a.nodes} nodes, {tp.published:,} messages | **{tp.publish_msgs_per_s:,.0f} msgs/s**, "
        f"{tp.publish_mb_per_s:.1f} MB/s; per-request p50/p99 {ms(pl and pl.p50)} / {ms(pl and pl.p99)} ms |"
    )
    e2e = lat.e2e_latency_ms
    print(
        f"| (b) end-to-end latency | {a.rate:,.0f} msg/s for {a.seconds:g} s, batches of {a.latency_batch}, "
        f"{a.latency_publishers} connections, publish on {pub}, SSE on {sub} | "
        f"**p50 {ms(e2e and e2e.p50)} ms, p99 {ms(e2e and e2e.p99)} ms** (max {ms(e2e and e2e.max)}; "
        f"rate reached {lat.publish_msgs_per_s:,.0f} msg/s; {lat.delivered:,} of {lat.published:,} delivered) |"
    )
    print(
        f"| (c) failover: kill -9 of partition 0's leader → first acked publish to it | "
        f"{len(times)} kills, an attempt every 20 ms | **median {statistics.median(times):.2f} s** "
        f"({times[0]:.2f}-{times[-1]:.2f} s) |"
    )
    for w in tp.warnings + lat.warnings:
        print(f"warning: {w}")
    if a.rf == 1:
        print("note: --rf 1 -- no replication; (b) was consumed on the publishing node")


if __name__ == "__main__":
    main()
