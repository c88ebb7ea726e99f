#!/usr/bin/env python3
"""What the cluster key costs on the peer channel: frames per second and MB/s
between two real :class:`~sprawl.peer.tcp.PeerChannel` s on loopback in one
process, without a key and with one (every frame tagged by the sender and
checked by the receiver), for a few frame sizes.

    python -m benchmarks.peer_channel [--seconds 3] [--rounds 3]

The sender keeps up to 256 frames in flight (refilled as they arrive); each
size runs ``--rounds`` times alternating no key / key, and the best round of
each is printed (the machine is shared: the best is the least disturbed).
Also prints the cost of tagging alone (seal + check) per frame, measured
without the network.  Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from typing import Any

from twisted.internet import defer, task

from harness import the_reactor
from sprawl.peer.frames import REPLICATION, FrameOpener, FrameSealer, frame_limits
from sprawl.peer.tcp import PeerChannel

KEY = b"benchmark-cluster-key-0123456789"
SIZES = (200, 16_000, 1_000_000)
WINDOW = 256


async def one_run(size: int, key: bytes | None, seconds: float) -> tuple[float, float]:
    """(frames/s, MB/s) of payloads of ``size`` bytes from a to b for about ``seconds``."""
    limits = frame_limits()
    a = PeerChannel("a", the_reactor(), random.Random(1), key, limits=limits)
    b = PeerChannel("b", the_reactor(), random.Random(2), key, limits=limits)
    port = the_reactor().listenTCP(0, b.server_factory(), interface="127.0.0.1")
    a.set_address("b", "127.0.0.1", port.getHost().port)
    payload = os.urandom(size)
    got = [0]
    sent = [0]
    done: defer.Deferred[None] = defer.Deferred()
    deadline = [float("inf")]

    def fill() -> None:
        while sent[0] - got[0] < WINDOW:
            if not a.send("b", REPLICATION, payload):
                break
            sent[0] += 1

    def on_frame(peer: str, data: bytes) -> None:
        got[0] += 1
        if time.perf_counter() >= deadline[0]:
            if not done.called:
                done.callback(None)
            return
        if sent[0] - got[0] < WINDOW // 2:
            fill()

    b.handlers[REPLICATION] = on_frame
    # warm up: connect and deliver one frame first
    a.send("b", REPLICATION, b"x")
    for _ in range(1000):
        if got[0]:
            break
        await task.deferLater(the_reactor(), 0.01, lambda: None)
    got[0] = sent[0] = 0
    t0 = time.perf_counter()
    deadline[0] = t0 + seconds
    fill()
    await done
    took = time.perf_counter() - t0
    n = got[0]
    await a.close()
    await b.close()
    await port.stopListening()
    return n / took, n * size / took / 1e6


def tag_cost(size: int) -> float:
    """Microseconds to seal and check one frame of ``size`` bytes (best of 5)."""
    payload = os.urandom(size)
    n = max(20, min(20_000, 50_000_000 // max(size, 1)))
    best = float("inf")
    for _ in range(5):
        s, o = FrameSealer(KEY), FrameOpener(KEY)
        t0 = time.perf_counter()
        for _ in range(n):
            frame = s.seal(REPLICATION, payload)
            o.open(REPLICATION, frame[5:])
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


async def main(a: argparse.Namespace) -> None:
    rows = []
    for size in SIZES:
        best: dict[bool, tuple[float, float]] = {False: (0.0, 0.0), True: (0.0, 0.0)}
        for _ in range(a.rounds):
            for keyed in (False, True):
                r = await one_run(size, KEY if keyed else None, a.seconds)
                print(
                    f"{size} B {'key' if keyed else 'no key'}: {r[0]:,.0f} frames/s, {r[1]:,.1f} MB/s",
                    flush=True,
                )
                if r[1] > best[keyed][1]:
                    best[keyed] = r
        rows.append((size, best[False], best[True], tag_cost(size)))
    print()
    print("| frame payload | no key | cluster key | change | seal + check, alone |")
    print("|---|---|---|---|---|")
    for size, plain, with_key, cost in rows:
        change = (with_key[1] / plain[1] - 1) * 100 if plain[1] else 0.0
        print(
            f"| {size:,} B | {plain[0]:,.0f} frames/s, {plain[1]:,.1f} MB/s | "
            f"{with_key[0]:,.0f} frames/s, {with_key[1]:,.1f} MB/s | {change:+.0f}% | {cost:,.1f} µs/frame |"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per run [3]")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each (size, key) [3]")
    args = ap.parse_args()
    out: list[Any] = []

    def run() -> defer.Deferred[None]:
        d = defer.ensureDeferred(main(args))
        d.addErrback(lambda f: out.append(f))
        d.addBoth(lambda _: the_reactor().stop())
        return d

    the_reactor().callWhenRunning(run)
    the_reactor().run()
    if out:
        out[0].raiseException()
