"""A ``group_extend`` answer from a peer is read defensively: whatever shape it has, the
caller gets refusals and deadlines of the ids it asked about, or a clear error (every id
then refused as ``unavailable``) -- never an exception of another kind."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sprawl.cluster.group_routes import _extend_answer
from sprawl.errors import SprawlError

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


def test_a_well_formed_answer_is_kept_to_the_ids_asked() -> None:
    answer = {"refused": {"0-1-1": "expired", "9-9-9": "unknown"}, "deadlines": {"0-2-1": 5, "x": 1}}
    assert _extend_answer(answer, ["0-1-1", "0-2-1"]) == ({"0-1-1": "expired"}, {"0-2-1": 5})


@pytest.mark.parametrize(
    "answer",
    [None, [], {"refused": {}}, {"refused": [], "deadlines": {}}, {"refused": {}, "deadlines": {"a": "x"}}],
)
def test_a_malformed_answer_is_a_sprawl_error(answer: Any) -> None:
    with pytest.raises(SprawlError):
        _extend_answer(answer, ["a"])


@given(answer=_json | st.fixed_dictionaries({"refused": _json, "deadlines": _json}))
def test_any_answer_is_read_or_refused_cleanly(answer: Any) -> None:
    try:
        no, yes = _extend_answer(answer, ["a", ""])
    except SprawlError:
        return
    assert set(no) <= {"a", ""} and set(yes) <= {"a", ""}
    assert all(isinstance(v, int) for v in yes.values())
