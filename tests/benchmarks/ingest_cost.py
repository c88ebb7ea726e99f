#!/usr/bin/env python3
"""The node's CPU per message on the durable publish path, in process (issue 16, ingest):

    PYTHONPATH=tests python -m benchmarks.ingest_cost [--batch 100] [--commit 16] [--repeat 9]

One real LMDB store and a :class:`~sprawl.pubsub.Broker` on a fresh directory, one durable
one-partition topic; three steps timed apart, each with ``time.thread_time`` (the CPU of the
calling thread: other jobs' load hardly moves it) and the minimum of ``--repeat`` runs:

* **decode**: :func:`sprawl.http.lean_wire.parse_msgpack` of a msgpack body of ``--batch``
  100-byte text messages (what a msgpack POST or WebSocket publish frame carries);
* **publish**: :meth:`~sprawl.pubsub.Broker.publish` of those records, ``acks=leader`` --
  checks, ids, offsets, the hot tail and the storage encoding of every record; the queued
  write is taken back out, so no commit is counted here;
* **commit**: what the LMDB writer thread does with ``--commit`` such writes grouped
  (:meth:`~sprawl.storage.lmdb.LmdbStore._commit`: ``putmulti`` and the fsynced commit), run
  on this thread.

Per frame or per request costs (HTTP, WebSocket, Deferreds, the answer) are not in it:
``benchmarks.sidebyside --rows durable`` gives the whole node's CPU per message.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import msgspec
from twisted.internet.task import Clock

from sprawl.config import NodeConfig
from sprawl.http.lean_wire import parse_msgpack
from sprawl.pubsub import Broker
from sprawl.storage.lmdb import LmdbStore

PAD = "x" * 81


def body(n: int) -> bytes:
    """A msgpack publish body of ``n`` 100-byte text messages, ``acks=leader``."""
    msgs = [{"payload": f"{time.time_ns():019d}{PAD}"} for _ in range(n)]
    return msgspec.msgpack.encode({"messages": msgs, "acks": "leader"})


def cpu_us(fn: Any, number: int, repeat: int, per: int) -> float:
    """Thread CPU microseconds per message of ``fn`` (which handles ``per`` messages)."""
    return min(timeit.repeat(fn, number=number, repeat=repeat, timer=time.thread_time)) / number / per * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=100, help="messages per body")
    ap.add_argument("--commit", type=int, default=16, help="writes grouped in one commit")
    ap.add_argument("--repeat", type=int, default=9)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clock = Clock()
        clock.advance(time.time())
        from twisted.internet import reactor  # (not at import: the script runs it, tests never do)

        store = LmdbStore(str(Path(tmp) / "lmdb"), reactor=reactor, map_size=4 * 1024**3)
        store.open()
        try:
            broker = Broker(NodeConfig(data_dir=tmp), store, clock, "bench")
            broker.recover()
            # (the reactor does not run: the topic is in the broker at once, its write stays queued)
            broker.put_topic("t", {"partitions": 1, "storage": "durable"})
            store._queue.clear()
            topic = broker.topics["t"]
            raw = body(a.batch)
            writes: list[list[Any]] = []
            lg = topic.logs[0]

            def decode() -> None:
                parse_msgpack(raw, 100_000, "quorum")

            def publish() -> None:
                records, acks = parse_msgpack(raw, 100_000, "quorum")
                broker.publish(topic, records, acks)
                # Take the queued write back out (kept for the commit step) and empty the
                # hot tail, so nothing grows from run to run.
                ops, _d, _n, _w = store._queue.pop()
                store._pending_bytes = 0
                broker.backlog.clear()
                if len(writes) < a.commit:
                    writes.append(ops)
                lg.hot.clear()
                lg.hot_bytes = lg.hot_records_memory = 0

            n = max(20, 20_000 // a.batch)
            dec = cpu_us(decode, n, a.repeat, a.batch)
            pub = cpu_us(publish, n, a.repeat, a.batch) - dec
            grouped = [op for w in writes for op in w]
            com = cpu_us(lambda: store._commit(grouped), 5, a.repeat, a.batch * len(writes))
        finally:
            store._writer.stop()
            store._readers.stop()
            if store.env is not None:
                store.env.close()
    print(f"| step | CPU us per message (batch {a.batch}, {a.commit} writes per commit) |")
    print("|---|---|")
    print(f"| decode (msgpack body -> records) | {dec:.3f} |")
    print(f"| publish (checks, ids, offsets, hot tail, storage encoding) | {pub:.3f} |")
    print(f"| commit (LMDB putmulti + fsync, writer thread) | {com:.3f} |")
    print(f"| total | {dec + pub + com:.3f} |")


if __name__ == "__main__":
    main()
