"""The hot tail (:class:`sprawl.log.hot_tail.HotTail`): a deque's behaviour for
every operation the log core uses, in any order (checked against
``collections.deque``), and records kept where a collection does not walk them
one by one."""

from __future__ import annotations

import gc
from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from sprawl.log.hot_tail import CHUNK, HotTail
from sprawl.log.record import Record

_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 3)),
        st.tuples(st.just("extend"), st.integers(0, 3 * CHUNK)),
        st.tuples(st.just("popleft"), st.integers(1, 2 * CHUNK)),
        st.tuples(st.just("pop"), st.integers(1, 2 * CHUNK)),
        st.tuples(st.just("clear"), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(_OPS, st.integers(0, 2 * CHUNK))
def test_it_behaves_as_a_deque(ops: list[tuple[str, int]], start: int) -> None:
    """Appends, extends, pops at both ends and clears in any order: the same
    items, order, length, truthiness, indexing (from both ends) and errors as a
    deque -- and every chunk it keeps sealed is a whole one."""
    model: deque[int] = deque(range(start))
    tail: HotTail[int] = HotTail(range(start))
    n = start
    for op, k in ops:
        if op == "append":
            for _ in range(k):
                model.append(n)
                tail.append(n)
                n += 1
        elif op == "extend":
            model.extend(range(n, n + k))
            tail.extend(range(n, n + k))
            n += k
        elif op in ("popleft", "pop"):
            for _ in range(k):
                if not model:
                    try:
                        getattr(tail, op)()
                    except IndexError:
                        break
                    raise AssertionError(f"{op} from an empty tail did not raise")
                assert getattr(tail, op)() == getattr(model, op)()
        else:
            model.clear()
            tail.clear()
        assert len(tail) == len(model) and bool(tail) == bool(model)
        assert list(tail) == list(model)
        if model:
            assert tail[0] == model[0] and tail[-1] == model[-1]
            for i in {0, len(model) // 2, len(model) - 1, CHUNK - 1, CHUNK, CHUNK + 1}:
                if i < len(model):
                    assert tail[i] == model[i] and tail[-1 - i] == model[-1 - i]
        for bad in (len(model), -len(model) - 1):
            try:
                tail[bad]
            except IndexError:
                pass
            else:
                raise AssertionError(f"index {bad} of {len(model)} did not raise")
        assert all(len(c) == CHUNK for c in tail._sealed) and len(tail._back) < CHUNK


def _walked(tail: object) -> int:
    """Items a collection visits from ``tail``: its tracked containers' items."""
    seen = 0
    todo = [tail]
    for _ in range(10_000):
        if not todo:
            break
        o = todo.pop()
        for r in gc.get_referents(o):
            seen += 1
            if gc.is_tracked(r) and isinstance(r, (list, tuple, deque)):
                todo.append(r)
    return seen


def test_a_collection_walks_a_chunk_not_a_record() -> None:
    """100,000 records: once a collection has seen the sealed chunks (tuples of
    untracked records) it untracks them, and what a collection walks from the tail
    is about one item a chunk -- not 100,000, as with a deque of the same records
    (the 8 ms generation-1 and full collections of the quorum run)."""
    records = [Record(i, 0, 1, None, None, None, b"x", False) for i in range(100_000)]
    tail: HotTail[Record] = HotTail()
    for r in records[:50_000]:
        tail.append(r)
    tail.extend(records[50_000:])
    for _ in range(3):
        tail.popleft()
    gc.collect()
    assert not any(gc.is_tracked(c) for c in tail._sealed)
    assert _walked(tail) < 100_000 // CHUNK + 2 * CHUNK
    assert _walked(deque(records)) >= 100_000


def test_a_record_taken_off_is_no_longer_held() -> None:
    """A record taken off either end is not kept alive by the tail (a tail trimmed
    to its memory budget frees the records' memory)."""
    import weakref

    class Box:
        pass

    boxes = [Box() for _ in range(3 * CHUNK)]
    tail: HotTail[Box] = HotTail(boxes)
    first, last = weakref.ref(boxes[0]), weakref.ref(boxes[-1])
    del boxes
    tail.popleft()
    tail.pop()
    gc.collect()
    assert first() is None and last() is None and len(tail) == 3 * CHUNK - 2
