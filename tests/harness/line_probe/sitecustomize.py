"""A line counter inside a real node (issue 23, create39): loaded as
``sitecustomize`` when this directory is first on a node's ``PYTHONPATH``
and ``LINE_PROBE_OUT`` names a directory (``benchmarks.create_cost --lines``).

``SIGUSR1`` starts counting the Python lines the node's main thread (the
reactor) runs, per function; ``SIGUSR2`` stops and writes
``LINE_PROBE_OUT/lines-PID.json``: ``{"total": N, "sprawl": N, "funcs":
{"path:line:name": N}, "calls": {"path:line:name": N}}`` (lines, and calls,
per function) and ``"store"``: the LMDB store's commits, holds begun and
holds an urgent write ended, meanwhile.  A count is what the host's load does not move.
Only the reactor thread is counted (Python 3.11 cannot trace threads
already running); the writer threads' work is mostly LMDB's C code.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from types import CodeType, FrameType
from typing import Any

OUT = os.environ.get("LINE_PROBE_OUT")

_counts: dict[CodeType, int] = {}
_called: dict[CodeType, int] = {}
_on = False


def _local(frame: FrameType, event: str, arg: Any) -> Any:
    if not _on:
        return None
    if event == "line":
        code = frame.f_code
        _counts[code] = _counts.get(code, 0) + 1
    return _local


def _calls(frame: FrameType, event: str, arg: Any) -> Any:
    if not _on:
        return None
    code = frame.f_code
    _called[code] = _called.get(code, 0) + 1
    return _local


#: The node's LMDB store's counters at the start (``commits``, ``holds``, ``holds_joined``).
_store_at_start: dict[str, int] = {}
STORE_COUNTERS = ("commits", "holds", "holds_joined")


def _store_counters() -> dict[str, int]:
    import gc

    # (the node freezes its long-lived objects -- sprawl.node.collector -- and
    # gc.get_objects leaves frozen ones out: unfrozen for the look, frozen again)
    frozen = gc.get_freeze_count()
    if frozen:
        gc.unfreeze()
    try:
        for o in gc.get_objects():
            if type(o).__name__ == "LmdbStore" and getattr(o, "env", None) is not None:
                return {k: int(getattr(o, k, 0)) for k in STORE_COUNTERS}
        return {}
    finally:
        if frozen:
            gc.freeze()


def _start(signum: int, frame: Any) -> None:
    global _on
    _store_at_start.clear()
    _store_at_start.update(_store_counters())
    _counts.clear()
    _called.clear()
    _on = True
    sys.settrace(_calls)
    assert OUT is not None
    with open(os.path.join(OUT, f"lines-{os.getpid()}.started"), "w"):
        pass  # (the benchmark waits for this, not for a fixed time)


def _stop(signum: int, frame: Any) -> None:
    global _on
    _on = False
    sys.settrace(None)
    funcs: dict[str, int] = {}
    now = _store_counters()
    store = {k: now[k] - _store_at_start.get(k, 0) for k in now}
    calls = {f"{c.co_filename}:{c.co_firstlineno}:{c.co_name}": n for c, n in _called.items()}
    total = mine = 0
    for code, n in _counts.items():
        key = f"{code.co_filename}:{code.co_firstlineno}:{code.co_name}"
        funcs[key] = funcs.get(key, 0) + n
        total += n
        if "/sprawl/" in code.co_filename:
            mine += n
    assert OUT is not None
    path = os.path.join(OUT, f"lines-{os.getpid()}.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"total": total, "sprawl": mine, "funcs": funcs, "calls": calls, "store": store}, f)
    os.replace(path + ".tmp", path)


if OUT:
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
