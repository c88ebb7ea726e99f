"""The garbage collector during a node's start (issue 23: restart time).

A node's start allocates a few long-lived objects per topic and partition
(recovered logs, placements, housekeeping entries) and hardly any cycles.
With the collector on, CPython runs a full (generation 2) collection each
time the young objects outnumber a quarter of the old ones, so a start that
builds millions of objects walks all of them again and again: a third of
the start of a 10,000-topic node (0.2-0.5 s per full collection, six of
them, measured in docs/benchmarks.md).  The start runs with automatic
collections paused and ends with one collection and ``gc.freeze()`` (in
:meth:`sprawl.node.service.NodeService._start`), which frees the same
garbage once.

The node then runs with a shorter thread switch interval
(:func:`shorten_switch_interval`, issue 16): besides the reactor, a node runs
the LMDB writer thread (every commit's fsync) and the reader pool.  A thread
that wants the GIL waits for the switch interval (CPython's default 5 ms)
before it asks the holder to let go, so while the reactor runs Python a
commit's hand-back to it waited up to 5 ms after its fsync, and the reactor
waited as long after each of its own syscalls (every socket write) whenever
a reader was decoding records.  At 1,000 single-message publishes a second
on 3 nodes (``benchmarks.quorum_latency``) those waits were the p99.

And a node freezes its heap again after a full collection that cost it
much (:class:`FreezeAfterSlowCollections`, issue 16).  What a full
collection walks is not only the objects it tracks: every tracked container
it holds is traversed item by item, and a partition's hot tail is one deque
of up to hundreds of thousands of (untracked) records -- after 200,000
messages of warm-up each node's full collection took 6-8 ms of CPU with
only 2,500-4,500 objects tracked outside the start-up's frozen heap (0.1 ms
before the warm-up).  Containers in the permanent generation are never
traversed, so one ``gc.freeze()`` once such containers exist makes the next
full collections cheap again.  The cost: cyclic garbage among the objects
frozen then (the requests in flight at that moment) is never collected, so
a freeze follows only a full collection over :data:`FREEZE_AFTER_SECONDS`
of CPU, at most one per :data:`FREEZE_EVERY_SECONDS` -- after a freeze the
next full collections are cheap, so freezes stay rare.

The period starts short and doubles (:data:`FREEZE_FIRST_SECONDS`, then twice
that, up to :data:`FREEZE_EVERY_SECONDS`): a restarted node's first minute
allocates a partition's worth of long-lived objects per partition after the
start's freeze (segments, a leader's followers as the catch-up settles: 60,000-
100,000 objects at 10,000 partitions), and with one freeze a minute every full
collection of that minute walked them, 34-58 ms each (issue 23, create40).
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

#: A full collection that took this much CPU (seconds) is followed by a freeze.
FREEZE_AFTER_SECONDS = 0.002
#: Seconds between two such freezes at least, once the period has grown.
FREEZE_EVERY_SECONDS = 60.0
#: The first period (after the first freeze); each freeze doubles it up to
#: :data:`FREEZE_EVERY_SECONDS`.
FREEZE_FIRST_SECONDS = 5.0

#: Seconds a thread waiting for the GIL lets its holder run before asking it
#: to let go (CPython's default: 0.005; see the module docstring).
SWITCH_INTERVAL = 0.0005


@contextmanager
def collector_paused() -> Iterator[None]:
    """No automatic garbage collection inside the block (explicit
    ``gc.collect()`` still works); the collector is on again after it --
    also when the block raises -- unless it was off before."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def shorten_switch_interval(seconds: float = SWITCH_INTERVAL) -> float:
    """Set the interpreter's thread switch interval to ``seconds`` (see the
    module docstring); returns the one it replaces."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    return before


class FreezeAfterSlowCollections:
    """A ``gc.callbacks`` hook: after a full (generation 2) collection that
    took at least ``min_cpu`` seconds of this thread's CPU, ``freeze`` (by
    default ``gc.freeze``) runs once through ``schedule(0, fn)`` -- outside
    the collection -- at most once per period: ``first_every`` seconds after
    the first freeze, doubling with each freeze up to ``every`` (see the module
    docstring).  ``frozen`` counts the freezes."""

    def __init__(
        self,
        schedule: Callable[[float, Callable[[], None]], Any],
        *,
        min_cpu: float = FREEZE_AFTER_SECONDS,
        every: float = FREEZE_EVERY_SECONDS,
        first_every: float = FREEZE_FIRST_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.thread_time,
        freeze: Callable[[], None] = gc.freeze,
    ) -> None:
        self.schedule = schedule
        self.min_cpu = min_cpu
        self.every = every
        #: Seconds after the last freeze before the next may come.
        self.period = min(first_every, every)
        self.clock = clock
        self.cpu_clock = cpu_clock
        self.freeze = freeze
        self.frozen = 0
        self._cpu_started = 0.0
        self._last = float("-inf")
        self._pending = False

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._cpu_started = self.cpu_clock()
            return
        took = self.cpu_clock() - self._cpu_started
        now = self.clock()
        if took >= self.min_cpu and not self._pending and now - self._last >= self.period:
            self._pending = True
            self._last = now
            self.schedule(0, self._freeze)

    def _freeze(self) -> None:
        self._pending = False
        if self.frozen:
            self.period = min(self.period * 2, self.every)
        self.frozen += 1
        self.freeze()

    def install(self) -> None:
        """Start watching full collections (once per process)."""
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def remove(self) -> None:
        """Stop watching."""
        if self in gc.callbacks:
            gc.callbacks.remove(self)
