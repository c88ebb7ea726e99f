"""Publish N JSON orders to a topic, keyed by customer, each with an id (so a retry never
duplicates) and a header; print where each landed.

    python docs/examples/producer.py --url http://localhost:8080 --topic orders --count 10
"""

from __future__ import annotations

import argparse
import json
import os

from sprawl.client import SprawlClient, outgoing


def main() -> None:
    """Parse the arguments and publish the batch."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://localhost:8080", help="node URL(s), comma-separated")
    ap.add_argument("--topic", default="orders")
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--run", default="run1", help="prefix of the message ids")
    args = ap.parse_args()
    client = SprawlClient(args.url, token=os.environ.get("SPRAWL_TOKEN"))
    batch = [
        outgoing(
            json.dumps({"order": i, "total": 10 * i}),
            key=f"customer-{i % 3}",
            headers={"kind": "order"},
            id=f"{args.run}-{i}",
        )
        for i in range(args.count)
    ]
    published = client.publish_batch(args.topic, batch, acks="quorum")
    for msg_id, partition, offset in zip(published.ids, published.partitions, published.offsets, strict=True):
        print(f"{msg_id} -> partition {partition} offset {offset} ({published.stored})")


if __name__ == "__main__":
    main()
