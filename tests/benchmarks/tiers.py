#!/usr/bin/env python3
"""Replay throughput from each storage tier: memory, LMDB and S3.

    python -m benchmarks.tiers --messages 50000 --size 1000

Starts its own SeaweedFS S3 server and ``twistd sprawl`` node on 127.0.0.1
(ports from the OS, data in a temporary directory, both stopped at the end),
publishes ``--messages`` messages to one partition, then replays the whole
partition from ``earliest`` with ``GET .../messages?limit=1000`` (one
keep-alive connection) four times:

1. **memory**: right after publishing (every record is in the hot tail);
2. **lmdb**: after a restart (hot tail empty, records in LMDB; the OS page
   cache is warm, as on a busy node);
3. **s3 (cold)**: after a restart with ``--disk-to-s3-age 0s``, once every
   sealed segment moved to S3, and another restart (empty chunk cache):
   every chunk is a ranged GET;
4. **s3 (cached)**: the same replay again, served from the chunk cache.

Warm tiers are replayed ``--runs`` times and the median is printed; the cold
S3 replay happens once (it needs a restart to empty the cache).
"""

from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import NodeProcess, SeaweedProcess


def request(conn: http.client.HTTPConnection, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers={"content-type": "application/json"})
    r = conn.getresponse()
    raw = r.read()
    if r.status >= 300:
        raise RuntimeError(f"{method} {path}: {r.status} {raw[:300]!r}")
    return json.loads(raw) if raw else None


def replay(port: int, topic: str, expect: int) -> tuple[float, float]:
    """Seconds and MB/s of payload to read the whole partition from earliest."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    started = time.perf_counter()
    cursor: Any = "earliest"
    n = 0
    nbytes = 0
    while True:
        body = request(conn, "GET", f"/v1/topics/{topic}/messages?from={cursor}&limit=1000")
        for m in body["messages"]:
            if m["offset"] != n:
                raise RuntimeError(f"out of order: {m['offset']} where {n} was due")
            n += 1
            nbytes += len(m["payload"])
        if body["next"] >= body["high_watermark"]:
            break
        cursor = body["next"]
    secs = time.perf_counter() - started
    conn.close()
    if n != expect:
        raise RuntimeError(f"replayed {n} of {expect}")
    return secs, nbytes / secs / 1e6


def partition(port: int, topic: str) -> dict[str, Any]:
    """Partition 0 of the topic description (with its ``tiers``)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    d = request(conn, "GET", f"/v1/topics/{topic}")["partition_details"][0]
    conn.close()
    return dict(d)


def tiers(port: int, topic: str) -> dict[str, Any]:
    """Partition 0's ``tiers``."""
    return dict(partition(port, topic)["tiers"])


def median_of(runs: int, port: int, topic: str, n: int) -> tuple[float, float]:
    """The median (by time) of ``runs`` replays."""
    results = sorted(replay(port, topic, n) for _ in range(runs))
    return results[len(results) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--segment-bytes", default="2MB")
    ap.add_argument("--runs", type=int, default=3, help="replays per warm tier (the median is shown)")
    args = ap.parse_args()
    topic = "replay"
    with tempfile.TemporaryDirectory(prefix="sprawl-tiers-") as tmp:
        base = Path(tmp)
        s3 = SeaweedProcess(base / "weed").start()
        node: NodeProcess | None = None
        try:
            common = [
                "--s3-endpoint",
                s3.endpoint,
                "--s3-bucket",
                "bench",
                "--segment-bytes",
                args.segment_bytes,
                "--memory-budget",
                "1GB",
            ]
            # test nodes inherit no SPRAWL_* variable: the keys go to each node
            keys = {"SPRAWL_S3_ACCESS_KEY": s3.ACCESS_KEY, "SPRAWL_S3_SECRET_KEY": s3.SECRET_KEY}
            node = NodeProcess(base / "node", *common, "--disk-to-s3-age", "1h", env=keys).start()
            conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=120)
            payload = "x" * args.size
            for i in range(0, args.messages, 500):
                k = min(500, args.messages - i)
                request(
                    conn, "POST", f"/v1/topics/{topic}/messages", {"messages": [{"payload": payload}] * k}
                )
            conn.close()
            n = args.messages
            rows = []
            t = tiers(node.http_port, topic)
            assert t["memory"]["messages"] == n, t
            rows.append(("memory (hot tail)", *median_of(args.runs, node.http_port, topic, n)))
            node.stop()
            node = NodeProcess(base / "node", *common, "--disk-to-s3-age", "1h", env=keys).start()
            t = tiers(node.http_port, topic)
            assert t["memory"]["messages"] == 0 and t["lmdb"]["messages"] == n, t
            rows.append(("lmdb", *median_of(args.runs, node.http_port, topic, n)))
            node.stop()
            node = NodeProcess(base / "node", *common, "--disk-to-s3-age", "0s", env=keys).start()
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                d = partition(node.http_port, topic)
                if d["tiers"]["s3"]["segments"] == d["segments"] - 1:  # all but the active one
                    break
                time.sleep(0.5)
            else:
                raise RuntimeError(f"segments did not move to S3: {d}")
            node.stop()
            node = NodeProcess(base / "node", *common, "--disk-to-s3-age", "1h", env=keys).start()
            t = tiers(node.http_port, topic)
            in_s3 = t["s3"]["messages"]
            rows.append((f"s3, cold cache ({in_s3} of {n} in S3)", *replay(node.http_port, topic, n)))
            rows.append(
                (f"s3, cached ({in_s3} of {n} in S3)", *median_of(args.runs, node.http_port, topic, n))
            )
        finally:
            if node is not None:
                node.stop()
            s3.stop()
    print(f"{n} messages of {args.size} B, segments of {args.segment_bytes}, fetch limit 1000")
    print(f"median of {args.runs} replays, except s3 cold (one replay after a restart)")
    print(f"{'tier':<36} {'seconds':>8} {'msgs/s':>10} {'MB/s':>7}")
    for name, secs, mbps in rows:
        print(f"{name:<36} {secs:8.2f} {n / secs:10.0f} {mbps:7.1f}")


if __name__ == "__main__":
    main()
