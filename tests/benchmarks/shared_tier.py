#!/usr/bin/env python3
"""The S3 tier of a replicated partition: what the bucket holds, what each
replica keeps in LMDB, and replay from a follower.

    python -m benchmarks.shared_tier --messages 20000 --size 1000

Starts its own SeaweedFS S3 server and three ``twistd sprawl`` nodes on
127.0.0.1 (ports from the OS, data in a temporary directory, all stopped at
the end), every node with the S3 tier on (``--disk-to-s3-age 0s``, one
bucket and prefix), makes a topic of one partition with replication factor 3,
publishes ``--messages`` messages with ``acks=quorum``, and waits until every
sealed segment is in S3 on the partition's leader and on both followers.
Then it reports the ``.seg`` objects and bytes in the bucket per segment in
S3 (1.0 when the replicas share one copy, the replication factor when each
uploads its own), how many messages each replica still holds in LMDB, the
uploads each node made, and one replay of the partition from ``earliest`` on
a follower restarted for it (through S3 for the moved part, with an empty
hot tail and chunk cache).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import NodeCluster, SeaweedProcess, http_json


def describe(cluster: NodeCluster, name: str, topic: str) -> dict[str, Any]:
    status, body = http_json(cluster.url(name) + f"/v1/topics/{topic}", timeout=30)
    if status != 200:
        raise RuntimeError(f"describe on {name}: {status} {body}")
    return dict(body["partition_details"][0])


def replay(port: int, topic: str, expect: int) -> float:
    """Seconds to read the whole partition from earliest, every offset checked in order."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    started = time.perf_counter()
    cursor: Any = "earliest"
    seen = 0
    last = -1
    for _ in range(100_000):
        conn.request("GET", f"/v1/topics/{topic}/messages?from={cursor}&limit=1000")
        r = conn.getresponse()
        body = json.loads(r.read())
        if r.status != 200:
            raise RuntimeError(f"replay: {r.status} {body}")
        for m in body["messages"]:
            if m["offset"] <= last:
                raise RuntimeError(f"out of order at {m['offset']}")
            last = m["offset"]
            seen += 1
        if body["next"] >= body["high_watermark"]:
            break
        cursor = body["next"]
    conn.close()
    if seen != expect:
        raise RuntimeError(f"replayed {seen} of {expect}")
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--segment-bytes", default="1MB")
    args = ap.parse_args()
    topic, bucket, prefix = "shared", "bench", "b"
    with tempfile.TemporaryDirectory(prefix="sprawl-shared-") as tmp:
        base = Path(tmp)
        s3 = SeaweedProcess(base / "weed").start()
        os.environ["SPRAWL_S3_ACCESS_KEY"] = s3.ACCESS_KEY
        os.environ["SPRAWL_S3_SECRET_KEY"] = s3.SECRET_KEY
        extra = ["--s3-endpoint", s3.endpoint, "--s3-bucket", bucket, "--s3-prefix", prefix]
        extra += ["--segment-bytes", args.segment_bytes, "--disk-to-s3-age", "0s", "--memory-budget", "256MB"]
        cluster = NodeCluster(base / "c", 3, *extra, prefix="n")
        try:
            cluster.start()
            names = cluster.names
            status, body = http_json(
                cluster.url(names[0]) + f"/v1/topics/{topic}",
                "PUT",
                {"partitions": 1, "replication_factor": 3},
                timeout=30,
            )
            if status not in (200, 201):
                raise RuntimeError(f"create: {status} {body}")
            deadline = time.monotonic() + 60
            while len(cluster.placement().get(topic, {}).get("0", {}).get("replicas", [])) < 3:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not placed: {cluster.placement()}")
                time.sleep(0.2)
            leader = str(cluster.placement()[topic]["0"]["leader"])
            payload = "x" * args.size
            started = time.perf_counter()
            for i in range(0, args.messages, 500):
                k = min(500, args.messages - i)
                msgs = {"messages": [{"payload": payload}] * k, "acks": "quorum"}
                status, body = http_json(
                    cluster.url(leader) + f"/v1/topics/{topic}/messages", "POST", msgs, timeout=60
                )
                if status != 200:
                    raise RuntimeError(f"publish: {status} {body}")
            published = time.perf_counter() - started

            def moved(name: str) -> bool:
                d = describe(cluster, name, topic)
                return bool(d["tiers"]["s3"]["segments"] == d["segments"] - 1 and d["segments"] > 1)

            deadline = time.monotonic() + 600
            while not all(moved(n) for n in names):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"segments did not move: {[describe(cluster, n, topic) for n in names]}"
                    )
                time.sleep(0.5)
            settled = time.perf_counter() - started
            views = {n: describe(cluster, n, topic) for n in names}
            c = s3.client()
            objs = [
                o
                for page in c.get_paginator("list_objects_v2").paginate(
                    Bucket=bucket, Prefix=f"{prefix}/{topic}/"
                )
                for o in page.get("Contents", [])
            ]
            segs = [o for o in objs if o["Key"].endswith(".seg")]
            in_s3 = views[leader]["tiers"]["s3"]["segments"]
            uploads = {n: http_json(cluster.url(n) + "/store", timeout=30)[1]["s3"]["uploads"] for n in names}
            # A follower restarted: nothing in its hot tail or chunk cache.
            follower = next(n for n in names if n != leader)
            cluster.kill(follower)
            cluster.restart(follower)
            deadline = time.monotonic() + 120
            while describe(cluster, follower, topic)["high_watermark"] < views[follower]["high_watermark"]:
                if time.monotonic() > deadline:
                    raise RuntimeError("the restarted follower did not catch up")
                time.sleep(0.2)
            took = replay(cluster.nodes[follower].http_port, topic, args.messages)
        finally:
            cluster.close()
            s3.stop()
    print(f"{args.messages} messages of {args.size} B, acks=quorum, RF 3, segments of {args.segment_bytes}")
    print(f"published in {published:.1f} s; every sealed segment in S3 on all replicas after {settled:.1f} s")
    print(
        f"segments in S3: {in_s3}; .seg objects in the bucket: {len(segs)} ({len(segs) / in_s3:.2f} per segment)"
    )
    print(f"bytes in the bucket: {sum(o['Size'] for o in objs) / 1e6:.1f} MB")
    for n in names:
        lm = views[n]["tiers"]["lmdb"]
        role = "leader" if n == leader else "follower"
        print(f"  {n} ({role}): {uploads[n]} uploads, {lm['messages']} messages left in LMDB")
    print(
        f"replay from earliest on follower {follower} (restarted): {took:.2f} s ({args.messages / took:.0f} msgs/s)"
    )


if __name__ == "__main__":
    main()
