"""The pure partition log core: offsets, hot tail, high watermark, segments, eviction, retention."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sprawl.log.partition import PartitionLog
from sprawl.log.record import Record


def rec(size: int = 10, ts: int = 0) -> Record:
    """A record with ``size`` payload bytes and no offset yet."""
    return Record(-1, -1, ts, None, None, None, b"x" * size, True)


def check_segments(lg: PartitionLog) -> None:
    """Segments are contiguous, cover [log_start, next_offset) and only the last is open."""
    if not lg.segments:
        return
    assert lg.segments[0].base == lg.log_start
    for a, b in zip(lg.segments, lg.segments[1:], strict=False):
        assert a.last + 1 == b.base
        assert a.sealed
    assert lg.segments[-1].last == lg.next_offset - 1


# One step of a random workload: append a batch, report storage, evict, drop segments.
_op = st.one_of(
    st.tuples(st.just("append"), st.lists(st.integers(0, 300), min_size=0, max_size=8)),
    st.tuples(st.just("stored"), st.integers(0, 80)),
    st.tuples(st.just("evict"), st.integers(0, 2000)),
    st.tuples(st.just("drop"), st.integers(0, 3)),
    st.tuples(st.just("tick"), st.integers(0, 5_000)),
)


@given(durable=st.booleans(), ops=st.lists(_op, max_size=40))
def test_random_workload_invariants(durable: bool, ops: list) -> None:
    """Across random appends/stores/evictions/retention drops: offsets are dense and
    monotonic, the high watermark never goes backwards, segments tile the log, and
    eviction never drops a record that is not stored."""
    lg = PartitionLog("t", 3, durable=durable, segment_bytes=500, segment_age_ms=10_000)
    now = 0
    seen_offsets: list[int] = []
    hw = lg.high_watermark
    for kind, arg in ops:
        if kind == "append":
            before = lg.next_offset
            batch = [rec(n, now) for n in arg]
            lg.append(batch, now)
            assert [r.offset for r in batch] == list(range(before, before + len(batch)))
            assert all(r.partition == 3 for r in batch)
            seen_offsets.extend(r.offset for r in batch)
            assert lg.next_offset == before + len(batch)
        elif kind == "stored":
            lg.stored(arg)
            assert lg.stored_end <= lg.next_offset
        elif kind == "evict":
            unstored_before = [r.offset for r in lg.hot if r.offset >= lg.stored_end]
            freed = lg.evict(arg)
            assert freed >= 0
            unstored_after = [r.offset for r in lg.hot if r.offset >= lg.stored_end]
            assert unstored_after == unstored_before
            if lg.hot and lg.hot[0].offset < lg.stored_end:
                assert lg.hot_bytes <= arg
        elif kind == "drop":
            n_before = len(lg.segments)
            gone = lg.drop_segments(arg)
            assert len(gone) == min(arg, n_before)
            assert all(r.offset >= lg.log_start for r in lg.hot)
        else:
            now += arg
        assert lg.high_watermark >= hw, "high watermark went backwards"
        hw = lg.high_watermark
        assert lg.log_start <= lg.high_watermark <= lg.next_offset
        if not durable:
            assert lg.high_watermark == lg.next_offset
        assert lg.hot_bytes == sum(r.size for r in lg.hot)
        assert [r.offset for r in lg.hot] == list(range(lg.hot_start, lg.hot_start + len(lg.hot)))
        check_segments(lg)
    assert seen_offsets == list(range(len(seen_offsets)))


@given(
    n=st.integers(0, 40),
    stored=st.integers(0, 40),
    evict_to=st.integers(0, 40),
    start=st.integers(0, 45),
    limit=st.integers(1, 50),
    end=st.one_of(st.none(), st.integers(0, 45)),
)
def test_read_hot_returns_exactly_the_visible_range(
    n: int, stored: int, evict_to: int, start: int, limit: int, end: int | None
) -> None:
    """read_hot gives offsets start..min(end, HW, start+limit); None below the hot tail;
    [] at or past the visible end."""
    lg = PartitionLog("t", 0, durable=True)
    lg.append([rec(10) for _ in range(n)], 0)
    lg.stored(stored)
    lg.evict(evict_to * rec(10).size)
    hw = lg.high_watermark if end is None else min(end, lg.high_watermark)
    got = lg.read_hot(start, limit, end)
    if start >= hw:
        assert got == []
    elif start < lg.hot_start:
        assert got is None
    else:
        assert got is not None
        assert [r.offset for r in got] == list(range(start, min(hw, start + limit)))


def test_durable_high_watermark_follows_storage() -> None:
    """A durable log shows nothing until stored; stored() reports movement once."""
    lg = PartitionLog("t", 0, durable=True)
    lg.append([rec(), rec(), rec()], 0)
    assert lg.high_watermark == 0
    assert lg.read_hot(0, 10) == []
    assert lg.stored(2) is True
    assert lg.high_watermark == 2
    assert lg.stored(2) is False
    assert lg.stored(1) is False
    assert lg.high_watermark == 2
    assert lg.stored(99) is True
    assert lg.high_watermark == 3, "stored end is capped by the log end"
    assert [r.offset for r in lg.unstored()] == []


def test_ephemeral_high_watermark_is_log_end() -> None:
    """An ephemeral log is visible at once; its records stay unstored until a spill."""
    lg = PartitionLog("t", 0, durable=False)
    lg.append([rec(), rec()], 0)
    assert lg.high_watermark == 2
    assert [r.offset for r in lg.unstored()] == [0, 1]
    assert lg.evict(0) == 0, "unstored records are never evicted"
    lg.stored(1)
    assert [r.offset for r in lg.unstored()] == [1]
    assert lg.evict(0) == rec().memory
    assert lg.hot_start == 1


def test_segments_roll_by_size_and_age() -> None:
    """A segment closes once it reaches segment_bytes or segment_age_ms; the
    sealed one is reported as changed by the append that sealed it."""
    size = rec(36).size  # 100 bytes
    lg = PartitionLog("t", 0, segment_bytes=3 * size, segment_age_ms=1000)
    changed = lg.append([rec(36) for _ in range(3)], 0)
    assert len(lg.segments) == 1 and len(changed) == 1
    changed = lg.append([rec(36, ts=10)], 10)
    assert len(lg.segments) == 2
    assert changed == lg.segments, "the sealed and the new segment both changed"
    assert lg.segments[0].sealed and (lg.segments[0].base, lg.segments[0].last) == (0, 2)
    lg.append([rec(36, ts=500)], 500)
    assert len(lg.segments) == 2
    lg.append([rec(36, ts=1010)], 1010)
    assert len(lg.segments) == 3, "age rolls the segment"
    assert (lg.segments[1].base, lg.segments[1].last) == (3, 4)
    assert lg.segments[1].first_ts == 10 and lg.segments[1].last_ts == 500


def test_drop_all_segments_keeps_counting() -> None:
    """Dropping every segment empties the log; offsets continue from the old end."""
    lg = PartitionLog("t", 0, durable=True, segment_bytes=1000)
    lg.append([rec() for _ in range(5)], 0)
    lg.stored(5)
    gone = lg.drop_segments(5)
    assert len(gone) == 1
    assert lg.log_start == 5 and lg.high_watermark == 5
    assert not lg.hot and lg.hot_bytes == 0
    batch = [rec()]
    lg.append(batch, 1)
    assert batch[0].offset == 5
    assert lg.segments[0].base == 5
    assert lg.drop_segments(0) == []


def test_resolve_start_and_segment_for_time() -> None:
    """earliest/latest/offsets resolve inside [log_start, HW]; time finds the segment."""
    lg = PartitionLog("t", 0, durable=True, segment_bytes=rec().size * 2)
    for ts in range(6):
        lg.append([rec(ts=ts * 100)], ts * 100)
    lg.stored(6)
    lg.drop_segments(1)
    assert lg.resolve_start("earliest") == 2
    assert lg.resolve_start("latest") == 6
    assert lg.resolve_start(0) == 2
    assert lg.resolve_start("4") == 4
    assert lg.resolve_start(99) == 6
    assert lg.segment_for_time(250).base == 2
    assert lg.segment_for_time(301).base == 4
    assert lg.segment_for_time(10_000) is None
    d = lg.describe()
    assert (d["low"], d["high_watermark"], d["log_end"], d["segments"]) == (2, 6, 6, 2)


def _copy(r: Record) -> Record:
    return Record(r.offset, r.partition, r.timestamp, r.id, r.key, r.headers, r.payload, r.is_text)


@given(
    n=st.integers(1, 60),
    cut=st.integers(0, 60),
    stored=st.integers(0, 60),
    evict=st.integers(0, 2000),
    seg_bytes=st.integers(100, 2000),
)
def test_truncate_drops_the_suffix_and_keeps_the_log_consistent(
    n: int, cut: int, stored: int, evict: int, seg_bytes: int
) -> None:
    """Truncation removes exactly the offsets from the cut on -- from the hot
    tail and the segments -- keeps segments contiguous, refuses to go below
    the high watermark, and the log continues at the cut (appends and
    follower appends alike)."""
    lg = PartitionLog("t", 0, durable=True, leader="n", segment_bytes=seg_bytes)
    lg.append([rec(size=50, ts=i) for i in range(n)], now_ms=0)
    lg.stored(min(stored, n))
    lg.evict(evict)
    hw = lg.high_watermark
    if cut < hw:
        with pytest.raises(ValueError):
            lg.truncate(cut)
        return
    removed, changed = lg.truncate(cut)
    end = min(cut, n)
    assert lg.next_offset == end and lg.stored_end <= end
    assert all(r.offset < end for r in lg.hot)
    assert all(s.base >= end for s in removed)
    assert all(s.last == end - 1 for s in changed)
    check_segments(lg)
    if lg.segments:
        assert lg.segments[-1].last == end - 1
    got = lg.read_hot(lg.hot_start, 1000, end)
    assert got is not None and [r.offset for r in got] == list(
        range(lg.hot_start, min(end, lg.high_watermark))
    )
    # a follower's batch continuing at the cut is taken; one leaving a gap is refused
    batch = [rec(size=50, ts=100) for _ in range(3)]
    for i, r in enumerate(batch):
        r.offset = end + i
    lg.append_at([_copy(r) for r in batch], now_ms=0)
    assert lg.next_offset == end + 3
    gap = _copy(batch[0])
    gap.offset = end + 10
    with pytest.raises(ValueError):
        lg.append_at([gap], now_ms=0)
    assert lg.next_offset == end + 3


def test_truncate_refuses_a_range_in_the_object_store() -> None:
    """A segment that moved to S3 is never truncated (only committed data moves there)."""
    from sprawl.log.manifest import RemoteObject

    lg = PartitionLog("t", 0, durable=False, leader="n", segment_bytes=100)
    lg.append([rec(size=60) for _ in range(4)], now_ms=0)
    lg.high_watermark = 0  # as if nothing were committed yet
    s0 = lg.segments[0]
    lg.segments[0].remote = RemoteObject(s0.base, s0.last, s0.bytes, 0, 0, "k.seg", 1, "00", "k.idx", 1, "00")
    with pytest.raises(ValueError, match="object store"):
        lg.truncate(0)


@given(
    n=st.integers(0, 60),
    stored=st.integers(0, 60),
    evict=st.integers(0, 2000),
    drop=st.integers(0, 3),
    start=st.integers(0, 120),
    seg_bytes=st.integers(100, 2000),
)
def test_reset_restarts_an_empty_log_at_the_start(
    n: int, stored: int, evict: int, drop: int, start: int, seg_bytes: int
) -> None:
    """A reset drops every segment and hot record and restarts the log empty
    at ``start`` (log start = end = stored end = high watermark); it refuses
    to go below the high watermark, changing nothing; the log then continues
    at ``start`` (follower appends and appends alike)."""
    lg = PartitionLog("t", 0, durable=True, leader="n", segment_bytes=seg_bytes)
    lg.replicated = True
    lg.append([rec(size=50, ts=i) for i in range(n)], now_ms=0)
    lg.stored(min(stored, n))
    lg.advance_high_watermark(min(stored, n) // 2)
    lg.evict(evict)
    lg.drop_segments(drop)
    hw, before = lg.high_watermark, list(lg.segments)
    if start < hw:
        with pytest.raises(ValueError):
            lg.reset(start)
        assert lg.high_watermark == hw and lg.segments == before
        return
    removed = lg.reset(start)
    assert removed == before and lg.segments == []
    assert not lg.hot and lg.hot_bytes == 0
    assert lg.log_start == lg.next_offset == lg.stored_end == lg.high_watermark == start
    assert lg.read_hot(start, 10) == [] and lg.resolve_start("earliest") == start
    batch = [rec(size=50, ts=100) for _ in range(3)]
    for i, r in enumerate(batch):
        r.offset = start + i
    lg.append_at([_copy(r) for r in batch], now_ms=0)
    assert lg.next_offset == start + 3 and lg.segments[0].base == start
    check_segments(lg)
    assert lg.high_watermark == start  # replicated: moves only when told
    lg.stored(start + 3)
    assert lg.advance_high_watermark(start + 3)
    assert [r.offset for r in lg.read_hot(start, 10) or []] == [start, start + 1, start + 2]


def test_reset_drops_segments_in_the_object_store_too() -> None:
    """Segments that moved to S3 are returned with the rest (the adapter deletes them)."""
    from sprawl.log.manifest import RemoteObject

    lg = PartitionLog("t", 0, durable=False, leader="n", segment_bytes=100)
    lg.append([rec(size=60) for _ in range(4)], now_ms=0)
    s0 = lg.segments[0]
    s0.remote = RemoteObject(s0.base, s0.last, s0.bytes, 0, 0, "k.seg", 1, "00", "k.idx", 1, "00")
    before = list(lg.segments)
    removed = lg.reset(10)
    assert removed == before and removed[0] is s0 and lg.segments == []
    assert lg.log_start == lg.next_offset == lg.high_watermark == 10


def _remote_runs(cuts: list[int], start: int, end: int) -> list:
    """Shared remote segments tiling [start, end) at the given cut points (another replica's boundaries)."""
    from sprawl.log.manifest import RemoteObject

    bounds = sorted({c for c in cuts if start < c < end} | {start, end})
    return [
        RemoteObject(a, b - 1, (b - a) * 60, 0, 0, f"k{a}.seg", 1, "00", f"k{a}.idx", 1, "00", 1)
        for a, b in itertools.pairwise(bounds)
        if b > a
    ]


@given(
    n=st.integers(1, 60),
    hw=st.integers(0, 60),
    start=st.integers(0, 70),
    remote_end=st.integers(0, 70),
    cuts=st.lists(st.integers(0, 70), max_size=6),
    seg_bytes=st.integers(100, 900),
)
def test_following_the_shared_remote_list(
    n: int, hw: int, start: int, remote_end: int, cuts: list[int], seg_bytes: int
) -> None:
    """A replica's log follows the partition's shared remote segments (cut at
    another replica's boundaries) only below its own high watermark: they
    become its front, its local segments continue exactly where they end
    (one cut in two if needed), everything below the start goes and nothing
    at or above the high watermark is touched; a second follow changes
    nothing; records from the log start on are still readable from memory."""
    lg = PartitionLog("t", 0, durable=True, leader="n", segment_bytes=seg_bytes)
    lg.replicated = True
    lg.append([rec(size=50, ts=i) for i in range(n)], now_ms=0)
    lg.stored(n)
    hw = min(hw, n)
    lg.advance_high_watermark(hw)
    start = min(start, remote_end) if remote_end else start
    objs = _remote_runs(cuts, start, remote_end) if remote_end > start else []
    before = [(r.offset, r.payload) for r in lg.hot]
    change = lg.follow_remote(start, objs)
    eff = min(start, hw)
    front = [s for s in lg.segments if s.remote is not None]
    assert [s.remote for s in front] == [o for o in objs if eff <= o.last < hw]
    local = lg.segments[len(front) :]
    assert all(s.remote is None for s in local)
    covered = front[-1].last + 1 if front else None
    if local:
        assert local[-1].last == n - 1
        if covered is not None:
            assert local[0].base == covered
    for a, b in zip(lg.segments, lg.segments[1:], strict=False):
        assert a.last + 1 == b.base
    assert lg.log_start == (max(eff, lg.segments[0].base) if lg.segments else min(max(0, eff), n))
    assert lg.log_start <= max(hw, lg.segments[0].base if lg.segments else 0)
    dropped_below = covered if covered is not None else eff
    assert all(s.last < max(dropped_below, eff) for s in change.dropped)
    assert all(s.last < hw for s in change.dropped), "never a record above the high watermark"
    assert lg.high_watermark == hw and lg.next_offset == n
    assert [(r.offset, r.payload) for r in lg.hot] == [x for x in before if x[0] >= lg.log_start]
    assert not lg.follow_remote(start, objs).changed
    assert lg.remote_hole() is None
