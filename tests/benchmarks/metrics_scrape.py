#!/usr/bin/env python3
"""The CPU and bytes of one ``GET /metrics`` render at N partitions, in process (issue 23, metrics40):

    PYTHONPATH=.:tests python -m benchmarks.metrics_scrape [--partitions 100 1000 10000] [--repeat 5]

A node's metrics (:class:`~sprawl.metrics.NodeMetrics`) watch a broker-shaped object
holding N single-partition topics made of the real parts (:class:`~sprawl.topics.Topic`,
:class:`~sprawl.log.partition.PartitionLog` with an LMDB segment and a remote one) -- no
reactor, no store: the render reads only those; the node's memory collector is registered
as the node registers it.  Each row: this thread's CPU
(``time.thread_time``, the minimum of ``--repeat`` renders: other jobs' load hardly moves
it) and wall time of a render after every partition changed (``changed``), of one with
nothing changed since the last (``same``), and of one with 1 % changed (``1%``); the
bytes of the exposition, and of it gzipped (level 1, as the route sends it, and level 6),
with the CPU of that compression.  ``--profile FILE`` writes a cProfile of one changed render at the
largest N.
"""

from __future__ import annotations

import argparse
import cProfile
import gzip
import inspect
import json
import time
from types import SimpleNamespace
from typing import Any

from sprawl.log.dedup import DedupWindow
from sprawl.log.partition import PartitionLog
from sprawl.log.segments import RemoteObject, Segment
from sprawl.metrics import NodeMetrics
from sprawl.pubsub.memory import MemoryBudget
from sprawl.pubsub.memory_report import MemoryCollector
from sprawl.topics import Topic, TopicConfig


def broker_of(partitions: int) -> Any:
    """A broker-shaped object with ``partitions`` single-partition topics, each with an
    LMDB segment and one in S3, offsets and a hot tail's byte count of their own."""
    topics: dict[str, Topic] = {}
    for i in range(partitions):
        name = f"topic-{i:05d}"
        remote = RemoteObject(0, 99, 10_000 + i, 0, 0, f"k{i}", 10_000, "s", "ik", 10, "s")
        segs = [remote.to_segment(), Segment(100, 199 + i % 7, 20_000 + i, 0, 0)]
        lg = PartitionLog(name, 0, log_start=0, next_offset=200 + i % 7, segments=segs)
        lg.hot_bytes = 300 * (i % 11)
        topics[name] = Topic(TopicConfig(name, i), [lg], DedupWindow(60_000))
    store = SimpleNamespace(used_bytes=1 << 30, pending_bytes=0, commits=12345, holds=3, holds_joined=2)
    broker = SimpleNamespace(
        topics=topics,
        store=store,
        config=SimpleNamespace(disk_budget=1 << 40, memory_budget=1 << 30),
        deduplicated_total=7,
        new_topics=SimpleNamespace(count=lambda: 0),
        memory_baseline=None,
    )
    broker.memory_pools = lambda: MemoryBudget.memory_pools(broker)  # type: ignore[arg-type]
    return broker


def with_memory(m: NodeMetrics, broker: Any) -> None:
    """Register the node's memory collector on ``m`` as the node does (with the pools the
    render walked, where the tree has them: tidy41)."""
    if "walked" in inspect.signature(MemoryCollector).parameters:
        m.register(MemoryCollector(broker, walked=m.walked_pools))
    else:
        m.register(MemoryCollector(broker))


def touch(broker: Any, every: int) -> None:
    """Publish one record's worth of offsets and bytes to every ``every``-th partition."""
    for i, t in enumerate(broker.topics.values()):
        if i % every == 0:
            for lg in t.logs:
                lg.next_offset += 1
                lg.high_watermark += 1
                lg.stored_end += 1
                lg.segments[-1].last += 1
                lg.segments[-1].bytes += 100
                lg.changes = getattr(lg, "changes", 0) + 1  # (as the log's own methods do)


def timed(f: Any, repeat: int, before: Any = None) -> tuple[float, float, Any]:
    """(best CPU ms, best wall ms, last result) of ``repeat`` calls of ``f`` (``before`` untimed)."""
    cpu = wall = float("inf")
    out = None
    for _ in range(repeat):
        if before is not None:
            before()
        c0, w0 = time.thread_time(), time.perf_counter()
        out = f()
        cpu = min(cpu, (time.thread_time() - c0) * 1000)
        wall = min(wall, (time.perf_counter() - w0) * 1000)
    return cpu, wall, out


def steps_of(m: NodeMetrics, broker: Any, repeat: int) -> float | None:
    """The CPU ms of the longest step of a render in steps (``PartitionExposition.steps``,
    tidy41) after every partition changed, the best of ``repeat``; None where the tree has
    no such render (main before tidy41)."""
    exp = m._state.exposition
    if not hasattr(exp, "steps"):
        return None
    best = float("inf")
    for _ in range(repeat):
        touch(broker, 1)
        steps = exp.steps(broker.topics.values())
        longest = 0.0
        while True:
            c0 = time.thread_time()
            try:
                next(steps)
            except StopIteration:
                longest = max(longest, time.thread_time() - c0)
                break
            longest = max(longest, time.thread_time() - c0)
        best = min(best, longest)
    return round(best * 1000, 2)


def row(partitions: int, repeat: int) -> dict[str, Any]:
    """One row of the table for ``partitions``."""
    m = NodeMetrics()
    broker = broker_of(partitions)
    m.watch_state(broker)  # type: ignore[arg-type]
    with_memory(m, broker)
    m.render()
    cpu_changed, wall_changed, text = timed(m.render, repeat, lambda: touch(broker, 1))
    m.render()
    cpu_same, wall_same, _ = timed(m.render, repeat)
    cpu_1pc, _, _ = timed(m.render, repeat, lambda: touch(broker, 100))
    longest_step = steps_of(m, broker, repeat)
    cpu_gz, _, packed = timed(lambda: gzip.compress(text, 1), repeat)
    cpu_gz6, _, packed6 = timed(lambda: gzip.compress(text, 6), repeat)
    return {
        "partitions": partitions,
        "cpu_ms_changed": round(cpu_changed, 2),
        "wall_ms_changed": round(wall_changed, 2),
        "cpu_ms_same": round(cpu_same, 2),
        "wall_ms_same": round(wall_same, 2),
        "cpu_ms_1pc": round(cpu_1pc, 2),
        "longest_step_cpu_ms_changed": longest_step,
        "bytes": len(text),
        "gzip_bytes": len(packed),
        "gzip_cpu_ms": round(cpu_gz, 2),
        "gzip6_bytes": len(packed6),
        "gzip6_cpu_ms": round(cpu_gz6, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--partitions", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", help="write a cProfile of one changed render at the largest N here")
    a = ap.parse_args()
    for n in a.partitions:
        print(json.dumps(row(n, a.repeat)), flush=True)
    if a.profile:
        m = NodeMetrics()
        broker = broker_of(max(a.partitions))
        m.watch_state(broker)  # type: ignore[arg-type]
        touch(broker, 1)
        prof = cProfile.Profile()
        prof.enable()
        m.render()
        prof.disable()
        prof.dump_stats(a.profile)


if __name__ == "__main__":
    main()
