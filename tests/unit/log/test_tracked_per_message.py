"""A stored message adds nothing the garbage collector walks (issue 16, "a quiet
heap"): a full collection walks every tracked container, so a hot tail or a
dedup window that held one per message would make the pauses grow with the
messages held (200,000 a partition by default).  Counted with
``gc.get_objects()`` (the tracked objects) before and after storing ``N``
messages as the publish path makes them; the budget per message is far below
the one object a tracked record, its headers or a window entry would add."""

from __future__ import annotations

import gc

import msgspec
import pytest

from sprawl.http.codec import fast_publish
from sprawl.log.dedup import DedupWindow
from sprawl.log.partition import PartitionLog

N = 20_000
NOW = 1_796_443_334_000
#: Tracked objects per stored message allowed: the tail's own bookkeeping
#: (segments, block lists) grows with it, about 1 per 20,000 messages today.
BUDGET = 0.01


def _tracked() -> int:
    gc.collect()
    return len(gc.get_objects())


@pytest.mark.parametrize(
    "message",
    [
        {"payload": "x" * 100},
        {"payload": "x" * 100, "key": "customer-42", "headers": {"trace": "abc123", "source": "billing"}},
    ],
    ids=["plain", "key-and-headers"],
)
def test_a_hot_tail_with_its_encodings_adds_no_tracked_object_per_message(message: dict[str, object]) -> None:
    """``N`` records decoded from JSON batches, given server ids, appended to a
    partition's hot tail, each with its SSE and JSON encodings cached."""
    body = msgspec.json.encode({"messages": [message] * 100, "acks": "leader"})
    lg = PartitionLog("t", 0)
    before = _tracked()
    for b in range(N // 100):
        got = fast_publish(body, 1000)
        assert got is not None
        for k, r in enumerate(got[0]):
            r.timestamp = NOW
            r.id = f"5e1f0c2a9b3d{b * 100 + k:x}"
        lg.append(got[0], NOW)
    for r in lg.hot:
        r.to_sse()
        r.to_json()
    added = _tracked() - before
    assert len(lg.hot) == N
    assert added / N <= BUDGET, f"{added} tracked objects for {N} stored messages"


def test_a_dedup_window_adds_no_tracked_object_per_id() -> None:
    """``N`` message ids remembered by a partition's dedup window."""
    w = DedupWindow(60_000, 10 * N)
    before = _tracked()
    for k in range(N):
        w.remember(f"5e1f0c2a9b3d{k:x}", 0, 10**6 + k, NOW + k)
    added = _tracked() - before
    assert len(w) == N
    assert added / N <= BUDGET, f"{added} tracked objects for {N} remembered ids"
