"""The dedup window of idempotent publish."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sprawl.log.dedup import DedupWindow


def test_lookup_within_and_after_the_window() -> None:
    """An id is found until exactly window_ms after it was seen, then forgotten."""
    w = DedupWindow(1000)
    w.remember("a", 2, 17, 5000)
    assert w.lookup("a", 5000) == (2, 17)
    assert w.lookup("a", 6000) == (2, 17), "the window's last millisecond still counts"
    assert w.lookup("a", 6001) is None
    assert w.lookup("b", 5000) is None


def test_expire_drops_only_old_ids() -> None:
    """expire() forgets ids older than the window, oldest first, and counts them."""
    w = DedupWindow(100)
    for i in range(5):
        w.remember(f"m{i}", 0, i, i * 50)
    assert len(w) == 5
    assert w.expire(200) == 2  # seen at 0 and 50 are older than 200-100
    assert len(w) == 3
    assert w.lookup("m1", 150) is None
    assert w.lookup("m2", 150) == (0, 2)
    assert w.expire(200) == 0
    assert w.expire(10_000) == 3
    assert len(w) == 0


def test_max_ids_bounds_memory() -> None:
    """Past max_ids the oldest id is forgotten first."""
    w = DedupWindow(10**9, max_ids=3)
    for i in range(5):
        w.remember(str(i), 0, i, i)
    assert len(w) == 3
    assert w.lookup("0", 5) is None and w.lookup("1", 5) is None
    assert w.lookup("4", 5) == (0, 4)


@given(
    events=st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(0, 300)), max_size=40),
    window=st.integers(1, 500),
    probe=st.integers(0, 300),
)
def test_window_matches_a_model(events: list[tuple[str, int]], window: int, probe: int) -> None:
    """With non-decreasing times, lookups and expire agree with a simple model:
    an id maps to its latest remembered offset while seen within the window."""
    w = DedupWindow(window)
    model: dict[str, tuple[int, int]] = {}
    now = 0
    for off, (mid, dt) in enumerate(events):
        now += dt
        w.remember(mid, 0, off, now)
        model[mid] = (off, now)
    later = now + probe
    for mid in "abcdefgh":
        want = model.get(mid)
        expect = (0, want[0]) if want and want[1] >= later - window else None
        assert w.lookup(mid, later) == expect
    dropped = w.expire(later)
    assert dropped == sum(1 for _o, t in model.values() if t < later - window)
    assert len(w) == len(model) - dropped


def test_forget_from_drops_a_partitions_suffix_only() -> None:
    """A truncated suffix's ids are forgotten -- in that partition, from the
    offset on -- and the ids stored there again are remembered anew."""
    w = DedupWindow(60_000)
    for i in range(10):
        w.remember(f"p0-{i}", 0, i, 1000)
        w.remember(f"p1-{i}", 1, i, 1000)
    assert w.forget_from(0, 7) == 3
    assert w.lookup("p0-6", 1000) == (0, 6) and w.lookup("p0-7", 1000) is None
    assert w.lookup("p1-9", 1000) == (1, 9)
    w.remember("new-7", 0, 7, 1000)
    assert w.forget_from(0, 7) == 1 and w.lookup("new-7", 1000) is None
    assert w.forget_from(0, 0) == 7 and len(w) == 10


def test_forget_from_skips_ids_the_window_dropped_or_moved() -> None:
    """An id that expired, or was remembered again elsewhere, is not touched
    by forgetting its old place; expiry trims the bookkeeping."""
    w = DedupWindow(1_000, max_ids=100)
    w.remember("a", 0, 1, 0)
    w.remember("b", 0, 2, 5_000)
    w.remember("a", 1, 5, 5_000)  # the same id, now elsewhere
    assert w.forget_from(0, 0) == 1  # only b: a lives in partition 1 now
    assert w.lookup("a", 5_000) == (1, 5)
    w.expire(10_000)
    assert len(w) == 0 and w._order == {}
