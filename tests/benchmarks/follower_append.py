"""A follower's work for one replicated message, in one process (issue 16, qfollow42).

A real replication service, broker and LMDB store (on this host's disk) take
appends of one record each from a leader -- a fake peer channel -- one at a
time: each append's frame is handed to the service's handler and the next one
goes once the follower's answer (``AppendResp``) left, so every append is one
LMDB commit and nothing is grouped, whatever the host's load.  Printed per
append: the Python lines the reactor thread ran (``sys.settrace``, a phase of
its own), the reactor thread's CPU and the other threads' (the LMDB writer's:
its commit, two fsyncs), the other threads' wake-ups per LMDB commit
(``/proc/self/task/*/schedstat``) and the wall time of the round trip.

    PYTHONPATH=TREE:tests python -m benchmarks.follower_append --appends 2000 --lines 300

``TREE`` first on the path: the sprawl package measured (a frozen copy of main
for an A/B, with this script from the branch).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType, SimpleNamespace
from typing import Any

import msgspec
from twisted.internet import defer, task

from sprawl.config import NodeConfig
from sprawl.log.record import Record
from sprawl.peer.frames import REPLICATION
from sprawl.pubsub import Broker
from sprawl.replication.envelope import Envelope, pack_record
from sprawl.replication.messages import Append, AppendResp, decode, encode
from sprawl.replication.service import ReplicationService
from sprawl.storage.lmdb import LmdbStore


def _threads() -> dict[int, tuple[int, int]]:
    """Every thread of this process but the calling one: (CPU ns, schedules)."""
    me = threading.get_native_id()
    out: dict[int, tuple[int, int]] = {}
    for tid in os.listdir("/proc/self/task"):
        if int(tid) == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                run, _wait, n = f.read().split()
        except OSError:
            continue
        out[int(tid)] = (int(run), int(n))
    return out


class _Lines:
    """Python lines run by the calling thread, per function, while on."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def _local(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            c = frame.f_code
            self.counts[f"{c.co_filename}:{c.co_firstlineno}:{c.co_name}"] += 1
        return self._local

    def _global(self, frame: FrameType, event: str, arg: Any) -> Any:
        return self._local

    def start(self) -> None:
        sys.settrace(self._global)

    def stop(self) -> None:
        sys.settrace(None)


async def _run(reactor: Any, a: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="sprawl-follower-", dir=a.dir) as tmp:
        store = LmdbStore(os.path.join(tmp, "lmdb"), reactor=reactor, map_size=1024**3)
        store.open()
        broker = Broker(NodeConfig(data_dir=tmp), store, reactor, "f1")
        broker.recover()
        answers: list[AppendResp] = []
        waiting: list[defer.Deferred[None]] = []

        def send(dst: str, kind: int, payload: bytes) -> bool:
            m = decode(msgspec.msgpack.decode(payload, type=Envelope).message)
            if isinstance(m, AppendResp):
                answers.append(m)
                for d in waiting:
                    reactor.callLater(0, d.callback, None)  # (not from within the sender)
                waiting.clear()
            return True

        channel = SimpleNamespace(handlers={}, send=send)
        svc = ReplicationService("f1", channel, reactor, tick_seconds=3600)  # type: ignore[arg-type]
        try:
            await broker.put_topic("orders", {})
            svc.replica("orders", 0, broker, "ctl")
            handler = channel.handlers[REPLICATION]
            payload = b"x" * a.size

            async def append(o: int) -> None:
                m = Append(epoch=1, start=o, prev_epoch=1 if o else -1, count=1, runs=((1, o),), hw=o)
                rec = Record(o, 0, 1000 + o, f"id{o}", None, None, payload, True)
                d: defer.Deferred[None] = defer.Deferred()
                waiting.append(d)
                handler("L", msgspec.msgpack.encode(Envelope("orders", 0, encode(m), [pack_record(rec)])))
                await d

            o = 0
            for _ in range(a.warmup):
                await append(o)
                o += 1
            lines = _Lines()
            if a.lines:
                lines.start()
                for _ in range(a.lines):
                    await append(o)
                    o += 1
                lines.stop()
            c0, t0, w0, p0 = store.commits, _threads(), time.perf_counter(), time.thread_time_ns()
            for _ in range(a.appends):
                await append(o)
                o += 1
            p1, w1, t1, c1 = time.thread_time_ns(), time.perf_counter(), _threads(), store.commits
            n = a.appends
            commits = c1 - c0
            other_cpu = sum(t1[t][0] - t0.get(t, (0, 0))[0] for t in t1)
            other_n = sum(t1[t][1] - t0.get(t, (0, 0))[1] for t in t1)
            assert len(answers) == o and all(x.ok for x in answers), "an append was not answered ok"
            print(
                f"follower appends: {n} timed (after {a.warmup} + {a.lines} traced), "
                f"{commits / n:.2f} LMDB commits an append; per append: "
                f"reactor thread {(p1 - p0) / n / 1000:.1f} us CPU, "
                f"other threads {other_cpu / n / 1000:.1f} us CPU, "
                f"{other_n / max(commits, 1):.2f} other-thread wake-ups per commit, "
                f"round trip {(w1 - w0) / n * 1000:.3f} ms"
            )
            if a.lines:
                total = sum(lines.counts.values())
                files: collections.Counter[str] = collections.Counter()
                for k, v in lines.counts.items():
                    files[k.rsplit(":", 2)[0]] += v
                print(f"  reactor thread: {total / a.lines:.0f} Python lines per append; by file:")
                for f, v in files.most_common(a.top):
                    print(f"    {v / a.lines:7.1f}  {_short(f)}")
                print("  top functions:")
                for k, v in lines.counts.most_common(a.top):
                    print(f"    {v / a.lines:7.1f}  {_short(k)}")
        finally:
            svc.stop()
            await broker.stop()
            await store.close()


def _short(path: str) -> str:
    for mark in ("site-packages/", "/sprawl/"):
        if mark in path:
            tail = path.split(mark, 1)[1]
            return tail if mark == "site-packages/" else "sprawl/" + tail
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--appends", type=int, default=2000, help="appends timed")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--lines", type=int, default=0, help="appends traced for lines (before the timed ones)")
    ap.add_argument("--size", type=int, default=100, help="payload bytes a record")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--dir", type=Path, default=None, help="where the store lives (default: the temp dir)")
    a = ap.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(_run(reactor, a)))


if __name__ == "__main__":
    main()
