"""What the memory budget charges is what the objects take: a hot tail's
records, their cached encodings and the dedup windows' ids, each measured
with ``tracemalloc`` against the charge (:attr:`Record.memory`,
:meth:`Record.encoded_memory`, :attr:`DedupWindow.memory`).

The charge must cover the measurement (else ``--memory-budget`` is exceeded)
without overcharging much (else the hot tail is needlessly small).
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator

import msgspec
import pytest

from sprawl.http.codec import fast_publish
from sprawl.log.dedup import DedupWindow
from sprawl.log.partition import PartitionLog
from sprawl.log.record import Record

N = 5_000
NOW = 1_796_443_334_000


@pytest.fixture
def traced() -> Iterator[None]:
    """tracemalloc on for the test (one frame: only the totals are read)."""
    gc.collect()
    tracemalloc.start(1)
    try:
        yield
    finally:
        tracemalloc.stop()


def _now() -> int:
    return tracemalloc.get_traced_memory()[0]


def _published(size: int, key: str | None = None, headers: dict[str, str] | None = None) -> list[Record]:
    """``N`` records as the publish path makes them (decoded from a JSON body, ids given)."""
    msg: dict[str, object] = {"payload": "x" * size}
    if key is not None:
        msg["key"] = key
    if headers is not None:
        msg["headers"] = headers
    body = msgspec.json.encode({"messages": [msg] * 100, "acks": "leader"})
    out: list[Record] = []
    for b in range(N // 100):
        got = fast_publish(body, 1000)
        assert got is not None
        for k, r in enumerate(got[0]):
            r.timestamp = NOW
            r.id = f"5e1f0c2a9b3d{b * 100 + k:x}"
        out.extend(got[0])
    return out


@pytest.mark.parametrize(
    ("size", "key", "headers"),
    [
        (100, None, None),
        (1000, None, None),
        (4000, None, None),
        (100, "customer-42", None),
        (100, "k", {"trace": "abc123", "source": "billing"}),
    ],
)
def test_a_hot_record_is_charged_what_it_takes(
    traced: None, size: int, key: str | None, headers: dict[str, str] | None
) -> None:
    """Records appended to a hot tail: the charge covers the traced memory, within 25%."""
    lg = PartitionLog("t", 0)
    before = _now()
    lg.append(_published(size, key, headers), NOW)
    taken = _now() - before
    charged = lg.hot_records_memory
    assert charged >= taken, f"{size} B: charged {charged / N:.0f} B/record, takes {taken / N:.0f}"
    assert charged <= taken * 1.25, f"{size} B: charged {charged / N:.0f} B/record, takes {taken / N:.0f}"


@pytest.mark.parametrize("size", [100, 1000, 4000])
def test_cached_encodings_are_charged_to_the_tail(traced: None, size: int) -> None:
    """Encodings cached by readers are charged to the tail's account and leave with the records."""
    lg = PartitionLog("t", 0)
    lg.append(_published(size), NOW)
    lg.stored(lg.next_offset)
    before = _now()
    for r in lg.hot:
        r.to_sse()
    for r in lg.hot:
        r.to_json()
    taken = _now() - before
    assert lg.account.encoded >= taken
    assert lg.account.encoded <= taken * 1.25
    assert lg.hot_memory == lg.hot_records_memory + lg.account.encoded
    freed = lg.evict(0)
    assert not lg.hot
    assert lg.account.encoded == 0 and lg.hot_records_memory == 0
    assert freed >= taken


def test_a_record_off_the_tail_is_not_charged() -> None:
    """A record read from storage (no account) caches its encodings without charging anyone;
    one that left the tail no longer charges it."""
    lg = PartitionLog("t", 0)
    r = Record(-1, 0, NOW, "a", None, None, b"x" * 10, True)
    lg.append([r], NOW)
    lg.stored(1)
    r.to_json()
    assert lg.account.encoded > 0
    lg.evict(0)
    assert lg.account.encoded == 0
    r.to_sse()
    assert lg.account.encoded == 0


def test_records_that_carry_encodings_into_a_tail_charge_them() -> None:
    """An encoding cached before the append (a forwarded record) is charged on entry."""
    lg = PartitionLog("t", 0)
    r = Record(-1, 0, NOW, "a", None, None, b"x" * 10, True)
    r.to_json()
    lg.append([r], NOW)
    assert lg.account.encoded == r.encoded_memory() > 0
    lg.truncate(0)
    assert lg.account.encoded == 0 and lg.hot_records_memory == 0


def test_the_tail_accounting_returns_to_zero() -> None:
    """Every way out of the hot tail (eviction, truncation, reset, retention) takes its charge back."""
    lg = PartitionLog("t", 0, segment_bytes=2000)
    lg.append([Record(-1, 0, NOW, f"id{i}", None, None, b"x" * 100, True) for i in range(40)], NOW)
    lg.stored(40)
    for r in list(lg.hot)[::3]:
        r.to_sse()
    lg.evict(lg.hot_memory // 2)
    lg.drop_segments(1)
    lg.stored(lg.next_offset)
    lg.truncate(lg.next_offset)
    assert lg.hot_records_memory == sum(r.memory for r in lg.hot)
    assert lg.account.encoded == sum(r.encoded_memory() for r in lg.hot)
    lg.reset(lg.next_offset)
    assert lg.hot_records_memory == 0 and lg.account.encoded == 0


def test_dedup_ids_are_charged_what_they_take(traced: None) -> None:
    """A dedup window's ids (their strings kept alive by the window alone) are charged what they take."""
    w = DedupWindow(60_000, 10 * N)
    before = _now()
    for k in range(N):
        w.remember(f"5e1f0c2a9b3d{k:x}", 0, 10**6 + k, NOW + k)
    taken = _now() - before
    assert taken <= w.memory <= taken * 1.25
    full = w.memory
    assert w.trim_to(full // 2) >= full // 2 and w.memory <= full // 2
    assert w.lookup("5e1f0c2a9b3d0", NOW) is None, "the oldest ids go first"
    assert w.lookup(f"5e1f0c2a9b3d{N - 1:x}", NOW) == (0, 10**6 + N - 1)
    w.forget_from(0, 10**6 + N // 2)
    w.expire(NOW + N + 60_000 + 1)
    assert len(w) == 0 and w.memory == 0
