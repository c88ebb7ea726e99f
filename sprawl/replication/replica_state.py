"""A replica's durable state.

The replica state (epoch runs, fenced and led epochs, high watermark) is
stored in the LMDB ``meta`` database with the records of each write (or on
its own, before any message, when only a promise changed) and restored when
the partition's replica is built again.
"""

from __future__ import annotations

import msgspec

from sprawl.replication.epochs import EpochCache
from sprawl.replication.replica import Replica


def dump_state(core: Replica, cached: tuple[list[tuple[int, int]], int, int] | None = None) -> bytes:
    """A replica's durable state as JSON bytes; ``cached`` (runs, log start,
    base epoch) instead of the core's epoch cache when given."""
    c = core.cache
    runs, log_start, base_epoch = cached if cached is not None else (c.runs, c.log_start, c.base_epoch)
    return msgspec.json.encode(
        {
            "runs": runs,
            "log_start": log_start,
            "base_epoch": base_epoch,
            "fenced": core.fenced_epoch,
            "led": core.led_epoch,
            "hw": core.hw,
        }
    )


def load_state(
    raw: bytes | None, log_start: int, end: int, committed_if_new: bool = False
) -> tuple[EpochCache, int, int, int]:
    """(epoch cache, fenced epoch, led epoch, high watermark) for a log holding
    ``[log_start, end)``: from ``raw`` (cut back to the log end; when
    retention moved the log start since, the base epoch is the stored runs'
    epoch just before it), or -- no state yet -- records from before
    replication counted as epoch 0, all of them committed when
    ``committed_if_new`` (the partition had this node as its only replica,
    whose own fsync acknowledged them)."""
    cache = EpochCache(log_start=log_start, end=log_start)
    st = msgspec.json.decode(raw) if raw is not None else None
    stored_start = int(st.get("log_start", log_start)) if st is not None else log_start
    if st is None or stored_start > end:
        # No state, or (written before resets were guarded) the runs of a
        # reset whose log never reached the disk: epoch 0 claims the least.
        if end > log_start:
            cache.append(0, end - log_start)
        if st is None:
            return cache, 0, 0, end if committed_if_new else 0
    else:
        cache.runs = [(int(e), int(s)) for e, s in st["runs"] if int(s) < end]
        cache.log_start = stored_start
        cache.end = end
        cache.base_epoch = int(st.get("base_epoch", 0))
        if cache.runs and cache.runs[0][1] < stored_start:
            cache.runs[0] = (cache.runs[0][0], stored_start)
        if not cache.runs and end > stored_start:
            cache.runs = [(cache.base_epoch, stored_start)]
        cache.advance_start(log_start)  # retention since the state was stored
    return cache, int(st["fenced"]), int(st["led"]), min(int(st["hw"]), end)
