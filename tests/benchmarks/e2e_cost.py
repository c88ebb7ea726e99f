"""The cost of end-to-end encryption per message, on the client (the broker does no work for
it): sealing (``Encryptor.seal``) and opening (``Decryptor.open``) one payload, for payload
sizes, recipient counts and data-key reuse, best of 5 runs of N messages; and a real node's
publish + fetch round trip through :class:`SprawlClient` with and without ``encrypt_for``.

    PYTHONPATH=tests python -m benchmarks.e2e_cost [--messages 2000] [--no-node]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from sprawl.client import SprawlClient, outgoing
from sprawl.client.e2e import Decryptor, Encryptor, generate_key
from sprawl.client.messages import Message


def per_message_us(n: int, sizes: list[int], recipients: int, reuse: int) -> list[tuple[int, float, float]]:
    """``(size, seal µs, open µs)`` per message, best of 5."""
    keys = [generate_key() for _ in range(recipients)]
    dec = Decryptor(keys[-1:])
    out = []
    for size in sizes:
        payload = os.urandom(size)
        best_seal = best_open = float("inf")
        for _ in range(5):
            enc = Encryptor([k.public for k in keys], reuse)
            t0 = time.perf_counter()
            sealed = [enc.seal(payload, "k") for _ in range(n)]
            t1 = time.perf_counter()
            for body, headers in sealed:
                dec.open(Message("t", 0, 0, body, key="k", headers=headers))
            t2 = time.perf_counter()
            best_seal = min(best_seal, (t1 - t0) / n * 1e6)
            best_open = min(best_open, (t2 - t1) / n * 1e6)
        out.append((size, best_seal, best_open))
    return out


def node_round_trip(n: int, size: int) -> None:
    """Publish n messages in batches of 100 and fetch them back, clear and encrypted."""
    from harness import NodeProcess

    key = generate_key()
    with NodeProcess(Path(tempfile.mkdtemp(prefix="sprawl-e2e-")) / "n") as node:
        for label, kwargs in (("clear", {}), ("e2e", {"encrypt_for": [key.public], "decrypt_with": [key]})):
            c = SprawlClient(node.url, **kwargs)  # type: ignore[arg-type]
            topic = f"bench-{label}"
            c.create_topic(topic, partitions=1)
            payload = os.urandom(size)
            t0 = time.perf_counter()
            for i in range(0, n, 100):
                c.publish_batch(
                    topic, [outgoing(payload, key="k") for _ in range(min(100, n - i))], acks="leader"
                )
            t1 = time.perf_counter()
            got, start = 0, 0
            while got < n:
                page = c.fetch(topic, 0, start, limit=1000)
                got += len(page.messages)
                start = page.next
            t2 = time.perf_counter()
            print(
                f"node {label:5} {size:6} B: publish {n / (t1 - t0):8.0f} msgs/s, fetch {n / (t2 - t1):8.0f} msgs/s"
            )


def main() -> None:
    """Print the tables of docs/benchmarks.md ("End-to-end encryption")."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--no-node", action="store_true")
    args = ap.parse_args()
    sizes = [100, 1000, 16000, 1000000]
    for recipients, reuse in ((1, 1), (3, 1), (1, 100)):
        for size, seal, opened in per_message_us(args.messages, sizes, recipients, reuse):
            n = f"{recipients} recipient{'s' if recipients > 1 else ''}, data key per {reuse} msg"
            print(f"{n:36} {size:8} B: seal {seal:8.1f} µs, open {opened:8.1f} µs")
    if not args.no_node:
        for size in (100, 16000):
            node_round_trip(args.messages, size)


if __name__ == "__main__":
    main()
