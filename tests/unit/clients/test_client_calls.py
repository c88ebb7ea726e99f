"""Unit tests of the public client library's pure parts: the request descriptions
(:mod:`sprawl.client.calls`), the message shapes (:mod:`sprawl.client.messages`, fuzzed), and
the generated reference (``docs/client-reference.md`` current, every public name documented)."""

from __future__ import annotations

import base64
import inspect
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sprawl.client import calls, reference
from sprawl.client.errors import ClientError
from sprawl.client.messages import (
    Message,
    Published,
    format_last_event_id,
    outgoing,
    parse_last_event_id,
    payload_bytes,
)

DOCS = Path(__file__).resolve().parents[3] / "docs"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def test_reference_is_current() -> None:
    """docs/client-reference.md is what ``python -m sprawl.client.reference`` prints now."""
    assert (DOCS / "client-reference.md").read_text() == reference.render(), (
        "run: python -m sprawl.client.reference > docs/client-reference.md"
    )


def test_every_public_name_has_a_docstring() -> None:
    """Each public class, function, method and property of the reference is documented."""
    missing = [q for _, q, obj in reference.public_objects() if not inspect.getdoc(obj)]
    assert missing == []


@given(st.binary(max_size=64) | st.text(max_size=64))
def test_payload_round_trips(payload: bytes | str) -> None:
    """Any payload, bytes or text, comes back as the same bytes from its wire form."""
    want = payload.encode() if isinstance(payload, str) else payload
    assert payload_bytes(outgoing(payload)) == want


def test_outgoing_fields() -> None:
    """Key, headers and id go where docs/api.md puts them; bad bytes go as base64."""
    item = outgoing(b"\xff", key="k", headers={"a": "b"}, id="i")
    assert item == {
        "payload_b64": base64.b64encode(b"\xff").decode(),
        "key": "k",
        "headers": {"a": "b"},
        "id": "i",
    }
    with pytest.raises(TypeError):
        outgoing(3)  # type: ignore[arg-type]


@given(json_values)
def test_message_parse_takes_any_json(value: Any) -> None:
    """Any decoded JSON is a Message or a ClientError, never another exception."""
    try:
        Message.parse("t", value)
    except ClientError:
        pass


@given(json_values)
def test_published_parse_takes_any_json(value: Any) -> None:
    """Any decoded JSON is a publish answer or a ClientError."""
    try:
        Published.parse(value)
    except ClientError:
        pass


@given(st.dictionaries(st.integers(0, 1023), st.integers(0, 2**40), min_size=1, max_size=8))
def test_last_event_id_round_trips(positions: dict[int, int]) -> None:
    """``P:OFFSET,...`` reads back as the positions it was made of."""
    assert parse_last_event_id(format_last_event_id(positions)) == positions


def test_publish_is_idempotent_only_when_every_message_has_an_id() -> None:
    """A publish may go to another node after an unknown outcome only when dedup makes it safe."""
    assert calls.publish("t", [outgoing("a", id="1")]).idempotent
    assert not calls.publish("t", [outgoing("a", id="1"), outgoing("b")]).idempotent
    with pytest.raises(ValueError):
        calls.publish("t", [])
    with pytest.raises(ValueError):
        calls.publish("t", [outgoing("a")], acks="all")


def test_fetch_query() -> None:
    """Start, time, filter and projection become the query docs/api.md names."""
    c = calls.fetch("a/b", 2, 7, limit=5, filter="key == 'x'", fields=["a", "b"])
    assert c.path == "/v1/topics/a%2Fb/messages"
    assert c.query == {
        "partition": 2,
        "from": 7,
        "limit": 5,
        "wait_ms": None,
        "max_bytes": None,
        "filter": "key == 'x'",
        "fields": "a,b",
    }
    assert calls.fetch("t", from_time=5).query["from_time"] == 5
    with pytest.raises(ValueError):
        calls.fetch("t", start="soon")


def test_stream_cursor_resumes_after_what_was_delivered() -> None:
    """No header before the first message; then every partition's last offset."""
    cur = calls.StreamCursor("t", start="earliest")
    assert cur.headers() == {}
    cur.delivered(Message("t", 1, 5, b""))
    cur.delivered(Message("t", 0, 9, b""))
    assert cur.headers() == {"Last-Event-ID": "0:9,1:5"}
    assert calls.StreamCursor("t", resume={2: 3}).last_event_id == "2:3"
