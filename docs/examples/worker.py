"""A consumer-group worker: lease messages, handle each, ack what worked and nack what did
not (it comes again after a delay; after the group's max_deliveries it is dead-lettered).
Stops after --idle seconds without work.

    python docs/examples/worker.py --url http://localhost:8080 --topic orders --group billing
"""

from __future__ import annotations

import argparse
import os
import time

from sprawl.client import Message, SprawlClient


def handle(message: Message) -> bool:
    """The work: True when the message was handled (here: a JSON order with a total)."""
    try:
        order = message.json()
    except ValueError:
        return False
    print(f"order {order['order']} of {message.key}: total {order['total']}", flush=True)
    return True


def main() -> None:
    """Create the group if need be, then pull, handle, ack or nack until idle."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://localhost:8080")
    ap.add_argument("--topic", default="orders")
    ap.add_argument("--group", default="billing")
    ap.add_argument("--idle", type=float, default=5.0, help="stop after this many idle seconds")
    args = ap.parse_args()
    client = SprawlClient(args.url, token=os.environ.get("SPRAWL_TOKEN"))
    client.create_group(args.topic, args.group, start="earliest", max_deliveries=5)
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < args.idle:
        messages = client.pull(args.topic, args.group, 50, wait_ms=1000)
        if not messages:
            continue
        idle_since = time.monotonic()
        done = [m for m in messages if handle(m)]
        failed = [m for m in messages if m not in done]
        if done:
            client.ack(args.topic, args.group, done)
        if failed:
            client.nack(args.topic, args.group, failed, delay_ms=1000)


if __name__ == "__main__":
    main()
