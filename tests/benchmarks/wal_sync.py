"""The disk's part of a durable ack, in process: an LMDB commit (``sync=True,
metasync=True``, the node's) of one one-record write against a write-ahead-log append of
the same write (one frame, one ``fdatasync``), one at a time.

    PYTHONPATH=tests python -m benchmarks.wal_sync --n 2000 --rounds 3

Prints per round and way: wall p50/p99 per ack and the CPU per ack (this thread's
``thread_time``), the two ways interleaved round by round (the machine is shared)."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import lmdb

from sprawl.log.record import Record, storage_items
from sprawl.storage.lmdb import DBS
from sprawl.storage.wal import WriteAheadLog
from sprawl.storage.wal_format import encode_body

_INDEX = {n: i for i, n in enumerate(DBS)}


def _items(i: int) -> list[tuple[bytes, bytes]]:
    return storage_items(1, 0, [Record(i, 0, 1000 + i, f"id{i}", None, {}, b"x" * 100, True)])


def lmdb_round(path: str, n: int) -> tuple[list[float], float]:
    """``n`` one-record commits: their wall seconds and the CPU seconds of all."""
    env = lmdb.open(path, map_size=1 << 30, max_dbs=8, sync=True, metasync=True, readahead=False)
    db = env.open_db(b"records")
    walls = []
    c0 = time.thread_time()
    for i in range(n):
        items = _items(i)
        t0 = time.perf_counter()
        with env.begin(write=True) as txn:
            txn.cursor(db=db).putmulti(items)
        walls.append(time.perf_counter() - t0)
    cpu = time.thread_time() - c0
    env.close()
    return walls, cpu


def wal_round(path: str, n: int) -> tuple[list[float], float]:
    """``n`` one-record frames (encoded and appended): wall seconds each, CPU of all."""
    wal = WriteAheadLog(path)
    list(wal.recover(0))
    walls = []
    c0 = time.thread_time()
    for i in range(n):
        items = _items(i)
        t0 = time.perf_counter()
        wal.append(encode_body([("m", "records", items)], _INDEX))
        walls.append(time.perf_counter() - t0)
    cpu = time.thread_time() - c0
    wal.close()
    return walls, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    for r in range(a.rounds):
        for name, fn in (("lmdb", lmdb_round), ("wal", wal_round)):
            with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
                load = os.getloadavg()[0]
                walls, cpu = fn(os.path.join(tmp, "x"), a.n)
            q = statistics.quantiles(walls, n=100)
            print(
                f"round {r + 1} {name:4}: p50 {q[49] * 1e6:7.0f} us, p99 {q[98] * 1e6:7.0f} us, "
                f"CPU {cpu / a.n * 1e6:5.0f} us/ack, load {load:.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
