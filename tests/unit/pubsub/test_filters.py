"""Unit tests of server-side filters and projections (:mod:`sprawl.pubsub.filters`): what a
filter sees, JMESPath truthiness, the bounds on expressions, projections, and both fuzzed
with hostile input."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sprawl.log.record import Record
from sprawl.pubsub.filters import (
    MAX_AST_DEPTH,
    MAX_EXPRESSION_CHARS,
    MAX_PAYLOAD_BYTES,
    FilterError,
    Selection,
    compile_filter,
    parse_fields,
)


def rec(
    payload: bytes | str, offset: int = 0, key: str | None = "k", headers: dict[str, str] | None = None
) -> Record:
    """A record as a partition holds it."""
    data = payload.encode() if isinstance(payload, str) else payload
    return Record(offset, 0, 1000 + offset, None, key, headers, data, isinstance(payload, str))


ORDER = json.dumps({"total": 150, "customer": {"id": 7, "tier": "gold"}, "items": [1, 2]})


@pytest.mark.parametrize(
    ("expr", "selected"),
    [
        ("payload.total > `100`", True),
        ("payload.total > `200`", False),
        ("key == 'k'", True),
        ("headers.kind == 'order'", True),
        ("headers.missing", False),
        ("offset >= `5`", True),
        ("timestamp < `1000`", False),
        ("payload.customer.tier == 'gold' && length(payload.items) == `2`", True),
        ("payload.items", True),  # a non-empty list is truthy
        ("payload.nothing || `[]`", False),  # an empty list is not
        ("contains(keys(headers), 'kind')", True),
    ],
)
def test_filter_sees_key_headers_offset_time_payload(expr: str, selected: bool) -> None:
    """Each part of the view is there to select on, with JMESPath's truthiness."""
    r = rec(ORDER, offset=5, headers={"kind": "order"})
    assert Selection(expr).matches(r) is selected


def test_non_json_and_oversized_payloads_are_null() -> None:
    """A payload that is not JSON, binary or too large to parse is null in the view."""
    sel = Selection("payload == null")
    assert sel.matches(rec("not json"))
    assert sel.matches(rec(b"\x00\xff"))
    assert sel.matches(rec(json.dumps({"a": "x" * MAX_PAYLOAD_BYTES})))
    assert not sel.matches(rec("{}"))


def test_errors_at_evaluation_do_not_select() -> None:
    """A type error on one message (a function given the wrong type) does not select it."""
    assert not Selection("length(payload.total) > `1`").matches(rec(ORDER))


@pytest.mark.parametrize(
    ("expr", "why"),
    [
        ("payload.[", "invalid filter"),
        ("", "empty"),
        ("a" * (MAX_EXPRESSION_CHARS + 1), "longer than"),
        ("abs(" * (MAX_AST_DEPTH + 2) + "a" + ")" * (MAX_AST_DEPTH + 2), "nested|complex"),
        ("[" + ",".join("a" for _ in range(300)) + "]", "complex"),
        ("unknown_function(payload)", "invalid filter"),
    ],
)
def test_bad_expressions_name_the_error(expr: str, why: str) -> None:
    """Bad or too costly expressions are refused with a reason."""
    with pytest.raises(FilterError, match=why):
        compile_filter(expr)


def test_projection_keeps_only_the_fields() -> None:
    """Dotted paths are kept, missing ones left out; non-object payloads pass unchanged."""
    sel = Selection(fields="total,customer.tier,missing.x")
    shaped = sel.shape(rec(ORDER, headers={"h": "1"}))
    assert json.loads(shaped.payload) == {"total": 150, "customer": {"tier": "gold"}}
    assert shaped.headers == {"h": "1"} and shaped.key == "k" and shaped.is_text
    for raw in ("[1,2]", "plain", b"\x00"):
        r = rec(raw)
        assert sel.shape(r) is r


@pytest.mark.parametrize(
    "spec", ["", "a,,b", "a..b", "a b", ".".join("x" * 9), ",".join(f"f{i}" for i in range(33))]
)
def test_bad_fields(spec: str) -> None:
    """Field lists are dotted names, bounded in count and depth."""
    with pytest.raises(FilterError):
        parse_fields(spec)


def test_apply_keeps_offsets_with_skipped_records_as_control() -> None:
    """Records not selected become control records at the same offsets (cursors move past)."""
    recs = [rec(json.dumps({"n": i}), offset=i) for i in range(6)]
    sel = Selection("payload.n > `3`", "n")
    out = sel.apply(recs)
    assert [r.offset for r in out] == list(range(6))
    assert [r.control for r in out] == [True, True, True, True, False, False]
    assert (sel.seen, sel.selected) == (6, 2)


@given(st.text(max_size=80))
def test_any_expression_compiles_or_is_a_filter_error(expr: str) -> None:
    """No text makes the compiler raise anything but FilterError."""
    try:
        compile_filter(expr)
    except FilterError:
        pass


@given(
    st.sampled_from(["payload.a", "payload.a.b[0]", "length(payload) > `1`", "payload.*", "sort(payload)"]),
    st.binary(max_size=200) | st.text(max_size=200),
)
def test_any_payload_evaluates(expr: str, payload: bytes | str) -> None:
    """Evaluation over any payload is a bool, never an exception."""
    assert Selection(expr).matches(rec(payload)) in (True, False)


def test_a_filter_not_naming_the_payload_does_not_parse_it() -> None:
    """Only an expression that names ``payload`` pays for parsing it."""
    r = rec(ORDER, headers={"kind": "order"})
    assert Selection("headers.kind == 'order' && !payload").matches(r) is False
    assert Selection("headers.kind == 'order'")._payload is False
