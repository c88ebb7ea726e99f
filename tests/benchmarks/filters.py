"""Server-side filters: a topic of N JSON messages read from the start over the SSE stream
with no filter, a filter selecting 50% and one selecting 1% (and the 1% with a projection);
for each, the time until the last selected message arrived, messages scanned and delivered
per second, and the bytes the client received (what the filter saved on the wire).

    PYTHONPATH=tests python -m benchmarks.filters [--messages 100000] [--size 200]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from harness import NodeProcess
from sprawl.client import SprawlClient, outgoing
from sprawl.client.sse import SseParser

CASES = [
    ("no filter", None, None, 100),
    ("50%", "payload.bucket < `50`", None, 50),
    ("1%", "payload.bucket < `1`", None, 1),
    ("1% + fields=n", "payload.bucket < `1`", "n", 1),
]


def read_stream(
    client: SprawlClient, topic: str, expr: str | None, fields: str | None, want: int
) -> tuple[float, int]:
    """Seconds until ``want`` events arrived, and the body bytes received."""
    query = {"from": "earliest", "filter": expr, "fields": fields}
    t0 = time.perf_counter()
    conn, resp = client.http.stream(f"/v1/topics/{topic}/stream", query, read_timeout=60)
    parser = SseParser()
    got = nbytes = 0
    try:
        while got < want:
            chunk = resp.read1(1 << 16)
            if not chunk:
                raise RuntimeError(f"stream ended after {got} of {want}")
            nbytes += len(chunk)
            got += sum(1 for e in parser.feed(chunk) if e.event == "message")
    finally:
        conn.close()
    return time.perf_counter() - t0, nbytes


def main() -> None:
    """Publish the topic, then print one line per case (best of 3)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=200, help="approximate payload bytes")
    args = ap.parse_args()
    n = args.messages - args.messages % 100
    with NodeProcess(Path(tempfile.mkdtemp(prefix="sprawl-filters-")) / "n") as node:
        c = SprawlClient(node.url, timeout=60)
        c.create_topic("flt", partitions=1)
        pad = "x" * max(0, args.size - 60)
        for i in range(0, n, 1000):
            batch = [
                outgoing(json.dumps({"n": j, "bucket": j % 100, "pad": pad})) for j in range(i, i + 1000)
            ]
            c.publish_batch("flt", batch, acks="leader")
        print(f"{n} messages of ~{args.size} B, one partition, SSE from earliest, best of 3")
        base = None
        for label, expr, fields, pct in CASES:
            want = n * pct // 100
            secs, nbytes = min(read_stream(c, "flt", expr, fields, want) for _ in range(3))
            base = base or nbytes
            print(
                f"{label:14} delivered {want:7} in {secs:6.2f} s: scanned {n / secs:9.0f} msgs/s,"
                f" delivered {want / secs:9.0f} msgs/s, {nbytes / 1e6:8.2f} MB on the wire"
                f" ({100 * (1 - nbytes / base):5.1f}% saved)"
            )


if __name__ == "__main__":
    main()
