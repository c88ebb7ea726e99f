#!/usr/bin/env python3
"""CPU cost of the wire formats, in process: JSON against the lean formats, both directions.

    PYTHONPATH=tests python -m benchmarks.wire_codec [--repeat 7]

No server, no disk: each step runs on 100-byte text messages in batches of 100, the JSON and
lean variants interleaved ``--repeat`` times; the minimum, median and maximum per message are printed:

* the node decoding a publish body: the JSON batch (:func:`sprawl.http.codec.fast_publish`),
  msgpack and NDJSON (:mod:`sprawl.http.lean_wire`);
* the node encoding a write to a subscriber: one SSE event per message (the records' cached
  frames joined, :func:`sprawl.delivery.frames.batch`) or one ``batch`` event
  (:func:`sprawl.delivery.frames.batch_event`);
* a Python client decoding what it receives into message dicts: the default stream through
  :class:`sprawl.client.sse.SseParser` and ``msgspec.json.decode`` per event, the batch stream
  through :class:`sprawl.client.wire.BatchStreamDecoder`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import msgspec

from sprawl.client import wire
from sprawl.client.sse import SseParser
from sprawl.delivery.frames import batch, batch_event
from sprawl.http.codec import fast_publish
from sprawl.http.lean_wire import parse_msgpack, parse_ndjson
from sprawl.log.record import Record

N = 100  # messages per batch
ROUNDS = 200  # batches per timing


def per_message_us(fn: Callable[[], object]) -> float:
    """Microseconds per message of ``fn`` (which handles one batch of N)."""
    t = time.perf_counter()
    for _ in range(ROUNDS):
        fn()
    return (time.perf_counter() - t) / (ROUNDS * N) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    a = ap.parse_args()
    msgs = [{"payload": f"{i:019d}" + "x" * 81} for i in range(N)]
    json_body = msgspec.json.encode({"messages": msgs, "acks": "leader"})
    pack_body = wire.encode_publish(msgs, acks="leader")
    nd_body = wire.encode_ndjson(msgs)
    recs = [
        Record(i, 0, 1_700_000_000_000, f"id-{i}", None, None, m["payload"].encode(), True)
        for i, m in enumerate(msgs)
    ]
    for r in recs:
        r.to_sse()  # the hot tail's records carry their frames once encoded
    sse_stream = b"".join(batch(recs, Record.to_sse, 1 << 30)[0])
    batch_stream = batch_event(0, recs, 1 << 30)[0]

    def read_sse() -> None:
        [msgspec.json.decode(e.data) for e in SseParser().feed(sse_stream)]

    def read_batch() -> None:
        [m for b in wire.BatchStreamDecoder().feed(batch_stream) for m in b.messages]

    steps: list[tuple[str, Callable[[], object]]] = [
        ("publish decode, JSON batch", lambda: fast_publish(json_body, 10_000)),
        ("publish decode, msgpack", lambda: parse_msgpack(pack_body, 10_000, "quorum")),
        ("publish decode, NDJSON", lambda: parse_ndjson(nd_body, 10_000)),
        ("stream encode, an SSE event per message", lambda: b"".join(batch(recs, Record.to_sse, 1 << 30)[0])),
        ("stream encode, one batch event", lambda: batch_event(0, recs, 1 << 30)),
        ("client decode, an SSE event per message", read_sse),
        ("client decode, one batch event", read_batch),
    ]
    times: dict[str, list[float]] = {name: [] for name, _ in steps}
    for _ in range(a.repeat):
        for name, fn in steps:
            times[name].append(per_message_us(fn))
    # On a shared machine the minimum is the run least disturbed by other work.
    print("| step | us per message: min | median | max |")
    print("|---|---|---|---|")
    for name, xs in times.items():
        print(f"| {name} | {min(xs):.2f} | {statistics.median(xs):.2f} | {max(xs):.2f} |")


if __name__ == "__main__":
    main()
