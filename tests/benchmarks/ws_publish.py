#!/usr/bin/env python3
"""Pipelined WebSocket publish: JSON text frames against msgpack binary frames, one real
node on loopback:

    PYTHONPATH=tests python -m benchmarks.ws_publish [--messages 40000] [--repeat 3]
        [--sizes 100,1000] [--batch 100] [--window 16] [--kinds text,binary]

``TxSprawlClient.publish_many`` (``window`` frames in flight on one ``feed=none`` socket,
batches of ``--batch`` messages, ``acks=leader`` on a durable one-partition topic) with
``wire="json"`` (JSON text frames: a binary payload as base64) and ``wire="lean"`` (binary
msgpack frames: raw bytes), for each payload size and kind (``text``: ASCII payloads;
``binary``: random bytes, which the JSON frame carries as base64).  ``--codec``: only the
in-process cost per message of building a frame (client) and reading it into records (the
node), JSON against msgpack, no server.  Reports msgs/s, payload
MB/s and frame bytes per message; medians of ``--repeat`` runs, the load average with each
(this machine is shared: compare the two wires within one run).  The client runs in a child
process (a Twisted reactor runs once per process; ``--child``), the node in another.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.client_wire import run_once
from harness import NodeProcess
from sprawl.client.messages import outgoing
from sprawl.client.txclient import TxSprawlClient
from sprawl.client.txsocket import publish_frame

WIRES = {"json": "JSON text frames", "lean": "msgpack binary frames"}


def batches(n: int, size: int, kind: str, batch: int) -> list[list[dict[str, Any]]]:
    """``n`` messages of ``size`` bytes (text: ASCII; binary: random) in batches of ``batch``."""
    out = []
    for b in range(max(1, n // batch)):
        items = []
        for i in range(batch):
            if kind == "binary":
                items.append(outgoing(os.urandom(size)))
            else:
                items.append(outgoing(f"{b:06d}{i:04d}".ljust(size, "x")[:size]))
        out.append(items)
    return out


def frame_bytes(work: list[list[dict[str, Any]]], wire: str) -> float:
    """Frame bytes per message of the first batch on ``wire``."""
    return len(publish_frame(0, work[0], "leader", wire == "lean")) / len(work[0])


def run_wire(url: str, wire: str, n: int, size: int, kind: str, batch: int, window: int) -> float:
    """Seconds ``publish_many`` takes for ``n`` messages (in this child process)."""
    from twisted.internet import reactor as r

    reactor: Any = r
    work = batches(n, size, kind, batch)

    async def main() -> float:
        c = TxSprawlClient(url, reactor=reactor, wire=wire, timeout=60)
        topic = f"wsp-{wire}-{kind}-{size}-{time.time_ns()}"
        await c.create_topic(topic, partitions=1, storage="durable")
        t0 = time.perf_counter()
        got = await c.publish_many(topic, work, acks="leader", window=window)
        took = time.perf_counter() - t0
        assert sum(len(p.offsets) for p in got) == len(work) * batch
        return took

    return run_once(reactor, main())


def _child(url: str, wire: str, n: int, size: int, kind: str, batch: int, window: int) -> float:
    """One measurement in a fresh process (a Twisted reactor runs once per process), bounded
    in time: a child that does not answer is killed and the run fails."""
    args = [url, wire, str(n), str(size), kind, str(batch), str(window)]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.ws_publish", "--child", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the client failed: {done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def codec_costs(size: int, kind: str, batch: int, repeat: int = 15) -> dict[str, tuple[float, float]]:
    """In process, no server: us per message to build a frame (the client) and to read it
    into records (the node's WebSocket path), JSON against msgpack; (min, median) of
    ``repeat`` interleaved rounds -- the minimum is the round least disturbed by the rest
    of the machine."""
    import msgspec

    from sprawl.http.codec import parse_message
    from sprawl.http.lean_wire import parse_msgpack, parse_pack_frame

    items = batches(batch, size, kind, batch)[0]
    frames = {w: publish_frame(0, items, "leader", w == "lean") for w in WIRES}

    def read_json(raw: bytes) -> int:
        body = msgspec.json.decode(raw)["publish"]
        return len([parse_message(m, i) for i, m in enumerate(body["messages"])])

    def read_pack(raw: bytes) -> int:
        _, body = parse_pack_frame(raw)
        return len(parse_msgpack(body, 10_000, "quorum")[0])

    steps = {
        "json": (lambda: publish_frame(0, items, "leader", False), lambda: read_json(frames["json"])),
        "lean": (lambda: publish_frame(0, items, "leader", True), lambda: read_pack(frames["lean"])),
    }
    got: dict[str, list[float]] = {}
    for _ in range(repeat):
        for wire, (enc, dec) in steps.items():
            for name, fn in (("encode", enc), ("decode", dec)):
                t0 = time.perf_counter()
                for _ in range(20):
                    fn()
                got.setdefault(f"{wire} {name}", []).append((time.perf_counter() - t0) / 20 / batch * 1e6)
    return {k: (min(v), statistics.median(v)) for k, v in got.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=40_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sizes", default="100,1000")
    ap.add_argument("--kinds", default="text,binary")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    ap.add_argument("--codec", action="store_true", help="only the in-process encode/decode cost per message")
    a = ap.parse_args()
    if a.codec:
        print(
            "| payload | client encode, us/msg: JSON / msgpack | node decode, us/msg: JSON / msgpack |  (min; median)"
        )
        print("|---|---|---|")
        for kind in a.kinds.split(","):
            for size in (int(x) for x in a.sizes.split(",")):
                c = codec_costs(size, kind, a.batch)
                print(
                    f"| {size} B {kind} | {c['json encode'][0]:.2f} / {c['lean encode'][0]:.2f} "
                    f"({c['json encode'][1]:.2f} / {c['lean encode'][1]:.2f}) | "
                    f"{c['json decode'][0]:.2f} / {c['lean decode'][0]:.2f} "
                    f"({c['json decode'][1]:.2f} / {c['lean decode'][1]:.2f}) |"
                )
        return
    if a.child:
        url, wire, n_, size_, kind, batch_, window_ = a.child
        print(run_wire(url, wire, int(n_), int(size_), kind, int(batch_), int(window_)))
        return
    sizes = [int(s) for s in a.sizes.split(",")]
    kinds = a.kinds.split(",")
    n = (a.messages // a.batch) * a.batch
    took: dict[tuple[str, int, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        node = NodeProcess(Path(tmp) / "n").start()
        try:
            for i in range(a.repeat):
                load = os.getloadavg()[0]
                for kind in kinds:
                    for size in sizes:
                        for wire in WIRES:
                            t = _child(node.url, wire, n, size, kind, a.batch, a.window)
                            took.setdefault((kind, size, wire), []).append(t)
                print(
                    f"run {i + 1}/{a.repeat} (load {load:.1f} -> {os.getloadavg()[0]:.1f})", file=sys.stderr
                )
        finally:
            node.stop()
    print(
        f"| payload | frames | msgs/s | payload MB/s | frame B/msg | vs JSON |  "
        f"({n:,} msgs, batches of {a.batch}, window {a.window}, acks=leader; median of {a.repeat})"
    )
    print("|---|---|---|---|---|---|")
    for kind in kinds:
        for size in sizes:
            base = 0.0
            for wire, name in WIRES.items():
                t = statistics.median(took[(kind, size, wire)])
                rate = n / t
                base = base or rate
                per = frame_bytes(batches(a.batch, size, kind, a.batch), wire)
                print(
                    f"| {size} B {kind} | {name} | {rate / 1000:.1f}k | {rate * size / 1e6:.1f} | "
                    f"{per:.0f} | {rate / base:.2f}x |"
                )


if __name__ == "__main__":
    main()
