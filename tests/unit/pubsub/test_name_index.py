"""``NameIndex``: the broker's topics by name with the names kept sorted, so
a page of the paginated topic list is found without scanning every name
(issue 23).  Any sequence of dict operations leaves it equal to a plain dict
with its names sorted; a page is the sorted names past ``after``."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from sprawl.pubsub.names import NameIndex

NAMES = st.text(alphabet="abcz09._-", min_size=1, max_size=4)
OPS = st.one_of(
    st.tuples(st.just("set"), NAMES, st.integers()),
    st.tuples(st.just("del"), NAMES),
    st.tuples(st.just("pop"), NAMES),
    st.tuples(st.just("popitem")),
    st.tuples(st.just("setdefault"), NAMES, st.integers()),
    st.tuples(st.just("update"), st.dictionaries(NAMES, st.integers(), max_size=4)),
    st.tuples(st.just("ior"), st.dictionaries(NAMES, st.integers(), max_size=4)),
    st.tuples(st.just("clear")),
)


def _run(op: tuple[Any, ...], d: dict[str, int]) -> Any:
    """Apply one operation; its result, or the exception type it raised."""
    kind = op[0]
    try:
        if kind == "set":
            d[op[1]] = op[2]
        elif kind == "del":
            del d[op[1]]
        elif kind == "pop":
            return d.pop(op[1], None), d.pop(op[1])
        elif kind == "popitem":
            return d.popitem()
        elif kind == "setdefault":
            return d.setdefault(op[1], op[2])
        elif kind == "update":
            d.update(op[1])
        elif kind == "ior":
            d |= op[1]
        else:
            d.clear()
    except KeyError:
        return KeyError
    return None


@given(
    st.dictionaries(NAMES, st.integers(), max_size=8), st.lists(OPS, max_size=30), NAMES, st.integers(1, 5)
)
def test_any_operations_keep_it_a_dict_with_its_names_in_order(
    start: dict[str, int], ops: list[tuple[Any, ...]], after: str, limit: int
) -> None:
    """After every operation the index equals the same operations on a
    plain dict (results included), its sorted names are that dict's names
    sorted, and a page past any name is those names' next ``limit``."""
    index: NameIndex[int] = NameIndex(start)
    model = dict(start)
    for op in ops:
        # (popitem takes the last inserted item: the same in both)
        assert _run(op, index) == _run(op, model)
        assert dict(index) == model
        assert index.sorted_names() == sorted(model)
    names = sorted(model)
    assert index.names_after(after, limit) == [n for n in names if n > after][:limit]
    assert index.names_after(None, limit) == names[:limit]


def test_a_page_past_the_middle_of_many_names() -> None:
    """10,000 names, inserted out of order: the page past the middle one is
    the next names in order."""
    index: NameIndex[None] = NameIndex()
    for i in reversed(range(10_000)):
        index[f"t{i:05d}"] = None
    del index["t05001"]
    assert index.names_after("t05000", 3) == ["t05002", "t05003", "t05004"]
    assert index.names_after("t09999", 3) == []
