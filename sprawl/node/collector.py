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
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


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
