"""Segment bookkeeping and the retention policy (whole oldest segments only)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from sprawl.log.segments import Segment, expired_segments


@st.composite
def segment_lists(draw: st.DrawFn) -> list[Segment]:
    """Contiguous segments with non-decreasing timestamps; all but the last sealed."""
    sizes = draw(
        st.lists(st.tuples(st.integers(1, 20), st.integers(1, 5000), st.integers(0, 1000)), max_size=12)
    )
    out: list[Segment] = []
    base, ts = 0, 0
    for count, nbytes, gap in sizes:
        first = ts
        ts += gap
        out.append(Segment(base, base + count - 1, nbytes, first, ts, sealed=True))
        base += count
    if out:
        out[-1].sealed = False
    return out


@given(segs=segment_lists(), retention_bytes=st.integers(1, 40_000))
def test_size_retention_keeps_the_active_segment_and_deletes_the_fewest(
    segs: list[Segment], retention_bytes: int
) -> None:
    """By bytes: never the newest segment; after deleting, the rest fits (unless only
    the active one is left); deleting one fewer would not fit."""
    n = expired_segments(segs, 10**9, None, retention_bytes)
    assert 0 <= n <= max(0, len(segs) - 1)
    rest = sum(s.bytes for s in segs[n:])
    assert rest <= retention_bytes or n == len(segs) - 1
    if n > 0:
        assert sum(s.bytes for s in segs[n - 1 :]) > retention_bytes


@given(segs=segment_lists(), now=st.integers(0, 15_000), retention_ms=st.integers(1, 5_000))
def test_age_retention_deletes_exactly_the_expired_prefix(
    segs: list[Segment], now: int, retention_ms: int
) -> None:
    """By age: exactly the oldest segments whose newest message is older than the
    retention go (possibly all of them)."""
    n = expired_segments(segs, now, retention_ms, None)
    assert all(s.last_ts < now - retention_ms for s in segs[:n])
    if n < len(segs):
        assert segs[n].last_ts >= now - retention_ms


@given(
    segs=segment_lists(),
    now=st.integers(0, 15_000),
    retention_ms=st.integers(1, 5_000),
    retention_bytes=st.integers(1, 40_000),
)
def test_both_policies_take_the_larger_prefix(
    segs: list[Segment], now: int, retention_ms: int, retention_bytes: int
) -> None:
    """With both limits set, the count is the larger of the two policies alone."""
    n = expired_segments(segs, now, retention_ms, retention_bytes)
    by_age = expired_segments(segs, now, retention_ms, None)
    by_size = expired_segments(segs, now, None, retention_bytes)
    assert n == max(by_age, by_size)


def test_no_policy_deletes_nothing() -> None:
    """Without retention settings nothing expires, however old or large."""
    segs = [Segment(0, 9, 10**9, 0, 0, True), Segment(10, 19, 10**9, 0, 0)]
    assert expired_segments(segs, 10**12, None, None) == 0
    assert expired_segments([], 10**12, 1, 1) == 0


def test_active_segment_is_kept_for_size_even_if_alone_too_big() -> None:
    """A single oversized active segment stays under a size limit, goes under an age limit."""
    segs = [Segment(0, 99, 50_000, 0, 10)]
    assert expired_segments(segs, 100, None, 1000) == 0
    assert expired_segments(segs, 100, 50, None) == 1


@given(
    base=st.integers(0, 2**40),
    count=st.integers(1, 10**6),
    nbytes=st.integers(0, 2**40),
    ts=st.integers(0, 2**42),
    sealed=st.booleans(),
)
def test_segment_tuple_round_trip(base: int, count: int, nbytes: int, ts: int, sealed: bool) -> None:
    """to_tuple/from_tuple round-trips, also through JSON (how the broker stores it)."""
    s = Segment(base, base + count - 1, nbytes, ts, ts + 5, sealed)
    assert s.count == count
    assert Segment.from_tuple(s.to_tuple()) == s
    assert Segment.from_tuple(json.loads(json.dumps(s.to_tuple()))) == s
