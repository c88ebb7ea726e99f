"""What one message costs in memory in a hot tail, measured with ``tracemalloc``
against what ``--memory-budget`` charges for it (docs/benchmarks.md).

Records are made as the publish path makes them (a JSON batch decoded by
``fast_publish``, a server id given, appended to a ``PartitionLog``); then an
SSE subscriber's encoding is cached on each (``to_sse``), then a fetch's
(``to_json``).

    PYTHONPATH=tests python -m benchmarks.memory_per_message
"""

from __future__ import annotations

import argparse
import gc
import tracemalloc

import msgspec

from sprawl.http.codec import fast_publish
from sprawl.log.partition import PartitionLog

N = 100_000
NOW = 1_796_443_334_000


def measure(size: int) -> dict[str, float]:
    """Bytes per record: traced and charged, for the record, its SSE and its JSON encodings."""
    body = msgspec.json.encode({"messages": [{"payload": "x" * size}] * 100, "acks": "leader"})
    lg = PartitionLog("t", 0)
    gc.collect()
    tracemalloc.start(1)
    try:
        b0 = tracemalloc.get_traced_memory()[0]
        k = 0
        for _ in range(N // 100):
            got = fast_publish(body, 1000)
            assert got is not None
            for r in got[0]:
                k += 1
                r.timestamp = NOW
                r.id = f"5e1f0c2a9b3d{k:x}"
            lg.append(got[0], NOW)
        b1 = tracemalloc.get_traced_memory()[0]
        for r in lg.hot:
            r.to_sse()
        b2 = tracemalloc.get_traced_memory()[0]
        charged_sse = lg.account.encoded
        for r in lg.hot:
            r.to_json()
        b3 = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return {
        "size": size,
        "charged_by_size": lg.hot_bytes / N,
        "record": (b1 - b0) / N,
        "record_charged": lg.hot_records_memory / N,
        "sse": (b2 - b1) / N,
        "sse_charged": charged_sse / N,
        "json": (b3 - b2) / N,
        "json_charged": (lg.account.encoded - charged_sse) / N,
    }


def main() -> None:
    """Print the table: bytes taken and charged per message, for 100 B, 1 KB and 4 KB payloads."""
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    print(
        "| payload | charged before (size) | record: takes / charged | + SSE frame: takes / charged | + JSON: takes / charged |"
    )
    print("|---|---|---|---|---|")
    for size in (100, 1000, 4000):
        m = measure(size)
        print(
            f"| {size} B | {m['charged_by_size']:.0f} | {m['record']:.0f} / {m['record_charged']:.0f} "
            f"| {m['sse']:.0f} / {m['sse_charged']:.0f} | {m['json']:.0f} / {m['json_charged']:.0f} |"
        )


if __name__ == "__main__":
    main()
