"""Does a dedup window held at its memory cap fragment pymalloc's arenas as
ids expire and are replaced?  The soak's steady state in one process: 50
messages per request (100 B, a fifth 1 KB), a third with client ids, a hot
tail of 20,000 records evicted oldest first, and the window trimmed to 80%
of ``--cap-mb`` whenever it passes it (as ``MemoryBudget`` does).  Prints,
every 200,000 messages, the ids held, pymalloc's arenas in use (1 MiB each)
and its bytes in allocated and in free blocks (``sys._debugmallocstats``),
then what one id costs (``tracemalloc``).  A flat arena count after the
first phase means the window's churn does not fragment.

    PYTHONPATH=tests python -m benchmarks.dedup_fragmentation
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import tempfile
import tracemalloc
from collections import deque

from sprawl.log.dedup import DedupWindow
from sprawl.log.record import Record

MB = 1000**2


def pymalloc_stats() -> dict[str, int]:
    """Arenas in use and bytes in allocated / free blocks, from ``sys._debugmallocstats`` (stderr)."""
    fd, path = tempfile.mkstemp()
    saved = os.dup(2)
    try:
        sys.stderr.flush()
        os.dup2(fd, 2)
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)
    with open(path) as f:
        text = f.read()
    os.unlink(path)

    def field(name: str) -> int:
        m = re.search(re.escape(name) + r"\s*=\s*([\d,]+)", text)
        return int(m.group(1).replace(",", "")) if m else -1

    return {
        "arenas": field("# arenas allocated current"),
        "allocated": field("# bytes in allocated blocks"),
        "free": field("# bytes in available blocks"),
    }


def per_id_bytes(n: int = 100_000) -> float:
    """Bytes one id of the soak's form takes in a window (its ``str`` kept by the window alone)."""
    tracemalloc.start(1)
    try:
        w = DedupWindow(600_000, 10 * n)
        before = tracemalloc.get_traced_memory()[0]
        for k in range(n):
            w.remember(f"soak-{k % 4}-{k}", k % 4, 10**6 + k, 1_796_443_334_000 + k // 50)
        return (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cap-mb", type=float, default=32, help="the window's cap (the budget's dedup share)")
    ap.add_argument("--phases", type=int, default=12)
    a = ap.parse_args(argv)
    cap = int(a.cap_mb * MB)
    w = DedupWindow(600_000)
    hot: deque[Record] = deque()
    rng = random.Random(1)
    now = 1_796_443_334_000
    n = 0
    for phase in range(a.phases):
        for step in range(4000):
            now += 12
            for _ in range(50):
                n += 1
                mid = f"soak-{n % 4}-{n}" if rng.random() < 0.33 else None
                size = 1000 if rng.random() < 0.2 else 100
                r = Record(-1, 0, 0, mid, None, None, b"x" * size, True)
                hot.append(r)
                if mid is not None:
                    w.remember(mid, n % 4, n, now)
            while len(hot) > 20_000:
                hot.popleft()
            if step % 50 == 0 and w.memory > cap:
                w.trim_to(int(cap * 0.8))
        s = pymalloc_stats()
        print(
            f"phase {phase:2d}: {len(w):6d} ids, {s['arenas']:3d} arenas, "
            f"{s['allocated'] / MB:5.1f} MB allocated, {s['free'] / MB:4.1f} MB free blocks",
            flush=True,
        )
    print(f"one id: {per_id_bytes():.0f} B (charged {w.memory / max(1, len(w)):.0f} B)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
