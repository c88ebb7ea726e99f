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
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager

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
