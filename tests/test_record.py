"""Record encodings: the LMDB storage form and the API (JSON/SSE) form."""

from __future__ import annotations

import base64
import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sprawl.log.record import Record

_text = st.text(max_size=30)
_records = st.builds(
    Record,
    offset=st.integers(0, 2**63 - 1),
    partition=st.integers(0, 1023),
    timestamp=st.integers(0, 2**53),
    id=st.none() | _text,
    key=st.none() | _text,
    headers=st.none() | st.dictionaries(_text, _text, max_size=4),
    payload=st.binary(max_size=300),
    is_text=st.booleans(),
)


@given(r=_records)
def test_storage_round_trip(r: Record) -> None:
    """Every field (binary payloads included) survives to_storage/from_storage;
    partition and offset come from the key."""
    back = Record.from_storage(r.partition, r.offset, r.to_storage())
    for name in ("offset", "partition", "timestamp", "id", "key", "headers", "payload", "is_text"):
        assert getattr(back, name) == getattr(r, name), name
    assert isinstance(back.payload, bytes)


@given(payload=st.binary(max_size=200))
def test_binary_payload_is_base64_in_json(payload: bytes) -> None:
    """A binary record shows payload_b64 (and no payload) that decodes to the bytes."""
    r = Record(3, 1, 99, "id", None, None, payload, False)
    d = json.loads(r.to_json())
    assert "payload" not in d
    assert base64.b64decode(d["payload_b64"]) == payload
    assert (d["offset"], d["partition"], d["timestamp"], d["id"], d["headers"]) == (3, 1, 99, "id", {})


@given(text=st.text(max_size=100))
def test_text_payload_is_a_json_string(text: str) -> None:
    """A text record shows the payload as a string, exactly as published."""
    r = Record(0, 0, 0, None, "k", {"h": "v"}, text.encode(), True)
    d = json.loads(r.to_json())
    assert d["payload"] == text and "payload_b64" not in d
    assert d["key"] == "k" and d["headers"] == {"h": "v"}


def test_sse_frame_names_partition_and_offset() -> None:
    """The SSE frame's id is PARTITION:OFFSET, its data the cached JSON."""
    r = Record(42, 2, 7, "x", None, None, b"hi", True)
    frame = r.to_sse()
    assert frame.startswith(b"id: 2:42\ndata: ")
    assert frame.endswith(b"\n\n")
    assert json.loads(frame[len(b"id: 2:42\ndata: ") : -2]) == r.to_dict()
    assert r.to_sse() is frame and r.to_json() is r.to_json(), "encodings are cached"


@pytest.mark.parametrize("data", [b"", b"\xff\xff", b"\x93\x01\x02\x03", b"not msgpack at all"])
def test_corrupt_storage_value_raises_value_error(data: bytes) -> None:
    """A damaged LMDB value is a ValueError naming the position, not a crash."""
    with pytest.raises(ValueError, match="corrupt record at 1:5"):
        Record.from_storage(1, 5, data)


def test_size_counts_payload_and_key() -> None:
    """size grows with payload and key (used for budgets and segment sizes)."""
    a = Record(0, 0, 0, None, None, None, b"", True)
    b = Record(0, 0, 0, None, "kk", None, b"abc", True)
    assert b.size - a.size == 5


def test_control_flag_survives_storage() -> None:
    """A control record keeps its flag through LMDB's encoding; an ordinary one stays six fields."""
    ctl = Record(7, 1, 5, None, None, None, b"", True, control=True)
    back = Record.from_storage(1, 7, ctl.to_storage())
    assert back.control and back.offset == 7
    plain = Record(8, 1, 5, "id", None, None, b"x", True)
    assert not Record.from_storage(1, 8, plain.to_storage()).control
    assert len(msgspec.msgpack.decode(plain.to_storage())) == 6
