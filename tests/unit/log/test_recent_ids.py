"""The window of recent ids keeps ids a node named as runs per producer:
it answers exactly what the one-id-per-message window answers, for a memory
that grows with batches, not messages."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sprawl.log.dedup import DedupWindow, RecentIds, server_id

PRODUCERS = ["5e1f0c2a9b3d", "00aa11bb22cc"]


def test_server_ids_are_parsed_one_to_one() -> None:
    """Only the form IdSource makes is a server id; leading zeros or capitals are not."""
    assert server_id("5e1f0c2a9b3d1f") == ("5e1f0c2a9b3d", 0x1F)
    assert server_id("5e1f0c2a9b3d01") is None, "a leading zero would make two ids one"
    assert server_id("5E1F0C2A9B3D1F") is None
    assert server_id("order-42") is None
    assert server_id("5e1f0c2a9b3d") is None


def test_a_named_batch_is_one_run() -> None:
    """100,000 named ids stored in batches of 100 take ~1,000 runs, a hundredth of one-per-id."""
    ids, one_by_one = RecentIds(60_000), DedupWindow(60_000)
    k = 0
    for b in range(1000):
        for _i in range(100):
            k += 1
            for w in (ids, one_by_one):
                w.remember(f"5e1f0c2a9b3d{k:x}", b % 3, 10_000 + k, 1000)
    assert len(ids) == len(one_by_one) == 100_000
    assert ids.memory * 50 < one_by_one.memory, (ids.memory, one_by_one.memory)
    assert ids.lookup(f"5e1f0c2a9b3d{12345:x}", 1000) == one_by_one.lookup(f"5e1f0c2a9b3d{12345:x}", 1000)


_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("remember"),
            st.sampled_from(PRODUCERS + ["client"]),
            st.integers(0, 2),  # sequence numbers skipped (0: continues the producer)
            st.integers(1, 6),  # a batch of this many
            st.integers(0, 2),
            st.integers(0, 3),
        ),
        st.tuples(st.just("expire"), st.integers(0, 400)),
        st.tuples(st.just("forget"), st.integers(0, 2), st.integers(0, 60)),
        st.tuples(st.just("lookup"), st.sampled_from(PRODUCERS + ["client"]), st.integers(1, 45)),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(ops=_ops)
def test_answers_as_the_one_by_one_window(ops: list[tuple]) -> None:
    """Any mix of remembering (consecutive or not, over partitions), expiry and
    truncation: every lookup answers as :class:`DedupWindow` does."""
    runs, ref = RecentIds(100), DedupWindow(100)
    now = 0
    next_off = {0: 0, 1: 0, 2: 0}
    seen: set[str] = set()
    ever: set[str] = set()
    counter: dict[str, int] = {}
    for op in ops:
        if op[0] == "remember":
            _, prod, skip, count, p, dt = op
            now += dt
            for _ in range(count):
                seq = counter[prod] = counter.get(prod, 0) + 1 + skip
                skip = 0
                mid = f"{prod}{seq:x}" if prod != "client" else f"order-{seq}"
                seen.add(mid)
                ever.add(mid)
                off = next_off[p]
                next_off[p] += 1
                runs.remember(mid, p, off, now)
                ref.remember(mid, p, off, now)
        elif op[0] == "expire":
            now += op[1]
            runs.expire(now)
            ref.expire(now)
            seen = {m for m in seen if ref.lookup(m, now) is not None}
        elif op[0] == "forget":
            _, p, off = op
            runs.forget_from(p, off)
            ref.forget_from(p, off)
            next_off[p] = min(next_off[p], off)
            seen = {m for m in seen if ref.lookup(m, now) is not None}
            for m in ever:
                assert runs.lookup(m, now) == ref.lookup(m, now), ("after forget_from", m)
        else:
            _, prod, seq = op
            mid = f"{prod}{seq:x}" if prod != "client" else f"order-{seq}"
            assert runs.lookup(mid, now) == ref.lookup(mid, now), (mid, now)
    for m in ever:
        assert runs.lookup(m, now) == ref.lookup(m, now), m
    assert len(runs) == len(ref)


def test_trim_forgets_the_oldest_runs() -> None:
    """trim_to (the budget's share for dedup is full) drops the oldest runs first."""
    w = RecentIds(60_000)
    for b in range(10):
        for i in range(1, 11):
            w.remember(f"5e1f0c2a9b3d{b * 100 + i:x}", 0, b * 10 + i, 1000 + b)
    full = w.memory
    w.trim_to(full // 2)
    assert w.memory <= full // 2
    assert w.lookup(f"5e1f0c2a9b3d{1:x}", 1000) is None
    assert w.lookup(f"5e1f0c2a9b3d{910:x}", 1000) == (0, 100)
