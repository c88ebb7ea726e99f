#!/usr/bin/env python3
"""What one Raft append costs on disk, in process (issue 23): the Ready's write
a leader or follower waits for (one entry of a topic creation's size and the
hard state) as an LMDB commit, and through the write-ahead log (``logged``:
one frame, one ``fdatasync``; LMDB applies it afterwards).

    PYTHONPATH=.:tests python -m benchmarks.raft_append [--n 300] [--rounds 3] [--apply]

A real :class:`LmdbStore` with the log on and :class:`LmdbRaftStorage` on the
real reactor, the two ways interleaved round by round (the machine is
shared).  ``--apply`` queues, just before each append, a write standing for
the previous creation's applied transaction (the broker's topic record, a
replica's records: an LMDB commit), as a client's back-to-back creates do:
a logged append is then acknowledged once its frame is synced *and* that
earlier write is durable (the store keeps the order).  Prints, per round and
way, the wall p50 / p90 / mean per append.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

from twisted.internet import defer, task

from sprawl.raft.lmdb_storage import LmdbRaftStorage
from sprawl.raft.messages import ConfState, Entry, EntryType, HardState
from sprawl.storage.lmdb import LmdbStore


async def one_round(
    reactor: Any, storage: LmdbRaftStorage, store: LmdbStore, n: int, logged: bool, apply: bool
) -> list[float]:
    """``n`` appends of one entry (``logged`` or not): wall seconds each."""
    walls = []
    payload = os.urandom(200)
    for _ in range(n):
        index = storage.last_index() + 1
        if apply:
            store.write(
                [("p", "meta", b"bench/topic/%d" % index, payload), ("p", "meta", b"bench/uid", b"1")]
            )
        t0 = time.perf_counter()
        entry = Entry(2, index, EntryType.NORMAL, payload)
        await storage.save(HardState(2, 1, index - 1), [entry], None, logged=logged)
        walls.append(time.perf_counter() - t0)
    await store.write([])  # (whatever LMDB still applies is done before the next round)
    return walls


async def run(reactor: Any, a: argparse.Namespace) -> None:
    """Open a store with the log on, bootstrap a one-voter Raft storage, interleave the ways."""
    with tempfile.TemporaryDirectory(prefix="sprawl-raft-append-") as tmp:
        store = LmdbStore(os.path.join(tmp, "lmdb"), reactor=reactor, map_size=256 * 1024**2, wal=True)
        store.open()
        try:
            storage = await LmdbRaftStorage.open(store, ConfState((1,)))
            for r in range(1, a.rounds + 1):
                for name, logged in (("lmdb", False), ("wal", True)):
                    walls = sorted(await one_round(reactor, storage, store, a.n, logged, a.apply))
                    p50, p90 = walls[len(walls) // 2], walls[int(len(walls) * 0.9)]
                    print(
                        f"round {r} {name:4s}: p50 {p50 * 1e6:6.0f} us, p90 {p90 * 1e6:6.0f} us, "
                        f"mean {statistics.mean(walls) * 1e6:6.0f} us, load {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
        finally:
            await store.close()


def main() -> None:
    """Parse the arguments and run on the reactor."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="appends per round and way")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--apply", action="store_true", help="queue an applied transaction before each append")
    a = ap.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, a)))


if __name__ == "__main__":
    main()
