#!/usr/bin/env python3
"""The client library's wires side by side, against one real node on loopback:

    PYTHONPATH=tests python -m benchmarks.client_wire [--messages 50000] [--repeat 3]

* ``SprawlClient.publish_batch`` (batches of 100 payloads of 100 bytes, ``acks=leader`` on a
  durable one-partition topic, one request at a time): ``wire="json"`` (a JSON batch) against
  ``wire="lean"`` (one msgpack body), msgs/s and request body bytes per message;
* ``SprawlClient.subscribe`` reading every message from ``earliest``: ``json`` (one SSE event
  per message) against ``lean`` (``?format=batch``), msgs/s decoded by the client;
* ``TxSprawlClient``: ``publish_batch`` awaited one after the other against
  ``publish_many`` (the same batches pipelined on one WebSocket, ``window=16``), with JSON
  frames (``wire="json"``) and msgpack frames (``wire="lean"``), msgs/s (by payload size and
  kind: ``benchmarks.ws_publish``).

Medians of ``--repeat`` runs; the load average is printed with each (this machine is shared).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from harness import NodeProcess
from sprawl.client import SprawlClient, calls
from sprawl.client.messages import outgoing
from sprawl.client.txclient import TxSprawlClient

SIZE = 100
BATCH = 100


def batches(n: int, tag: str) -> list[list[dict[str, Any]]]:
    """``n`` messages of ``SIZE`` bytes in batches of ``BATCH``."""
    pad = "x" * (SIZE - 12)
    return [[outgoing(f"{tag}{b:06d}{i:04d}{pad}"[:SIZE]) for i in range(BATCH)] for b in range(n // BATCH)]


def blocking_publish(url: str, wire: str, n: int) -> tuple[float, float]:
    """(msgs/s, request body bytes per message) of SprawlClient.publish_batch."""
    c = SprawlClient(url, wire=wire)
    topic = f"cw-{wire}-{time.time_ns()}"
    c.create_topic(topic, partitions=1, storage="durable")
    work = batches(n, "p")
    call = calls.publish(topic, work[0], "leader", wire == "lean")
    size = len(call.lean) if call.lean is not None else len(_json(call.body))
    t0 = time.perf_counter()
    for b in work:
        c.publish_batch(topic, b, acks="leader")
    return n / (time.perf_counter() - t0), size / BATCH


def _json(body: Any) -> bytes:
    import json

    return json.dumps(body).encode()


def blocking_subscribe(url: str, wire: str, n: int) -> float:
    """msgs/s SprawlClient.subscribe decodes, reading ``n`` stored messages."""
    c = SprawlClient(url, wire="lean")
    topic = f"cs-{wire}-{time.time_ns()}"
    c.create_topic(topic, partitions=1, storage="durable")
    for b in batches(n, "s"):
        c.publish_batch(topic, b, acks="leader")
    reader = SprawlClient(url, wire=wire)
    t0 = time.perf_counter()
    got = 0
    with reader.subscribe(topic, start="earliest", idle_timeout=30) as sub:
        for _ in sub:
            got += 1
            if got == n:
                break
    return n / (time.perf_counter() - t0)


def twisted_publish(url: str, many: bool, n: int, wire: str = "lean") -> float:
    """msgs/s of TxSprawlClient: publish_batch one at a time, or publish_many (window 16;
    ``wire="lean"``: msgpack frames, ``"json"``: JSON frames)."""
    from twisted.internet import reactor as r

    reactor: Any = r

    async def main() -> float:
        c = TxSprawlClient(url, reactor=reactor, wire=wire)
        topic = f"ct-{int(many)}-{time.time_ns()}"
        await c.create_topic(topic, partitions=1, storage="durable")
        work = batches(n, "t")
        t0 = time.perf_counter()
        if many:
            await c.publish_many(topic, work, acks="leader", window=16)
        else:
            for b in work:
                await c.publish_batch(topic, b, acks="leader")
        return n / (time.perf_counter() - t0)

    return run_once(reactor, main())


def run_once(reactor: Any, work: Coroutine[Any, Any, float]) -> float:
    """Run the reactor (once per process) until ``work`` is done; its result."""
    from twisted.internet.defer import Deferred

    out: list[Any] = []
    d: Deferred[Any] = Deferred.fromCoroutine(work)
    d.addBoth(out.append)
    d.addBoth(lambda _: reactor.stop() if reactor.running else None)
    reactor.run()
    if not out or not isinstance(out[0], float):
        raise RuntimeError(f"the Twisted client's run failed: {out}")
    return out[0]


def _child(fn: str, *args: Any) -> Any:
    """Run one measurement in a fresh process (a Twisted reactor runs once per process)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(globals()[fn], args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    n = a.messages
    rows: dict[str, list[float]] = {}
    sizes: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        node = NodeProcess(Path(tmp) / "n").start()
        try:
            for i in range(a.repeat):
                load = os.getloadavg()[0]
                for wire in ("json", "lean"):
                    rate, size = blocking_publish(node.url, wire, n)
                    rows.setdefault(f"SprawlClient.publish_batch, wire={wire}", []).append(rate)
                    sizes[wire] = size
                for wire in ("json", "lean"):
                    rows.setdefault(f"SprawlClient.subscribe, wire={wire}", []).append(
                        blocking_subscribe(node.url, wire, n)
                    )
                for many, wire in ((False, "lean"), (True, "json"), (True, "lean")):
                    name = f"publish_many (window 16), wire={wire}" if many else "publish_batch one at a time"
                    rows.setdefault(f"TxSprawlClient.{name}", []).append(
                        _child("twisted_publish", node.url, many, n, wire)
                    )
                print(
                    f"run {i + 1}/{a.repeat} (load {load:.1f} -> {os.getloadavg()[0]:.1f})", file=sys.stderr
                )
        finally:
            node.stop()
    print(f"| client call ({n:,} messages of {SIZE} B, batches of {BATCH}) | msgs/s (median of {a.repeat}) |")
    print("|---|---|")
    for name, xs in rows.items():
        print(f"| {name} | {statistics.median(xs) / 1000:.1f}k |")
    print(f"\nrequest body per message: json {sizes['json']:.0f} B, lean {sizes['lean']:.0f} B")


if __name__ == "__main__":
    main()
