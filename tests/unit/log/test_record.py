"""Record encodings: the LMDB storage form and the API (JSON/SSE) form."""

from __future__ import annotations

import base64
import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sprawl.log.record import (
    HEAD_BYTES,
    CorruptRecord,
    HotAccount,
    Record,
    check_stored,
    join_hot,
    storage_items,
)
from sprawl.storage import keys

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
    assert len(msgspec.msgpack.decode(plain.to_storage()[HEAD_BYTES:])) == 6


@given(r=_records, data=st.data())
def test_any_flipped_byte_fails_the_checksum(r: Record, data: st.DataObject) -> None:
    """Flipping any bit of a stored value -- header, checksum or body -- is a
    CorruptRecord naming the position, never a different record."""
    value = bytearray(r.to_storage())
    i = data.draw(st.integers(0, len(value) - 1))
    value[i] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(CorruptRecord, match=f"corrupt record at {r.partition}:{r.offset}"):
        Record.from_storage(r.partition, r.offset, bytes(value), unchecked_ok=False)
    with pytest.raises(CorruptRecord):
        check_stored(r.partition, r.offset, bytes(value), unchecked_ok=False)


@given(r=_records, other=st.integers(0, 2**63 - 1))
def test_a_value_under_another_offset_fails(r: Record, other: int) -> None:
    """The checksum covers the offset (folded to 32 bits): a sound value read
    back under another offset's key (a damaged key) is refused.  Offsets
    with the same fold collide -- never two that differ in one bit; the
    scan's key check catches any key that is not the offset expected."""
    if (other ^ (other >> 32)) & 0xFFFFFFFF == (r.offset ^ (r.offset >> 32)) & 0xFFFFFFFF:
        return
    with pytest.raises(CorruptRecord, match="checksum mismatch"):
        Record.from_storage(r.partition, other, r.to_storage())
    assert check_stored(r.partition, r.offset, r.to_storage()) is True


@given(r=_records, bit=st.integers(0, 63))
def test_a_one_bit_offset_change_always_fails(r: Record, bit: int) -> None:
    """A key one bit away from the record's offset never passes its checksum."""
    other = r.offset ^ (1 << bit)
    with pytest.raises(CorruptRecord):
        Record.from_storage(r.partition, other, r.to_storage())


def test_values_written_before_checksums_read_as_unchecked() -> None:
    """A bare msgpack value (what the store wrote before checksums) decodes
    when unchecked records are allowed, and is damage where they are not."""
    legacy = msgspec.msgpack.encode((5, "id", None, None, b"old", True))
    r = Record.from_storage(0, 3, legacy)
    assert (r.offset, r.id, r.payload) == (3, "id", b"old")
    assert check_stored(0, 3, legacy) is False
    with pytest.raises(CorruptRecord, match="no checksum"):
        Record.from_storage(0, 3, legacy, unchecked_ok=False)
    with pytest.raises(CorruptRecord, match="no checksum"):
        check_stored(0, 3, legacy, unchecked_ok=False)


def test_storage_value_layout() -> None:
    """0xC1, the CRC32C of the body seeded with the folded offset (big-endian), then the msgpack body."""
    import struct

    from crc32c import crc32c

    off = (7 << 32) + 9
    r = Record(off, 0, 1, "a", None, None, b"p", True)
    v = r.to_storage()
    body = v[HEAD_BYTES:]
    assert v[0] == 0xC1
    assert struct.unpack(">I", v[1:5])[0] == crc32c(body, 9 ^ 7)


@given(
    recs=st.lists(st.tuples(_records, st.booleans()), max_size=8),
    uid=st.integers(0, 2**32 - 1),
    partition=st.integers(0, 1023),
)
def test_storage_items_are_the_keys_and_values_one_by_one(
    recs: list[tuple[Record, bool]], uid: int, partition: int
) -> None:
    """The publish path's batch encoding (:func:`storage_items`) stores exactly what
    ``record_key`` and :meth:`Record.to_storage` give record by record, control records
    too: the format on disk is unchanged."""
    records = []
    for r, control in recs:
        r.control = control
        records.append(r)
    assert storage_items(uid, partition, records) == [
        (keys.record_key(uid, partition, r.offset), r.to_storage()) for r in records
    ]


@given(recs=st.lists(_records, max_size=8), cached=st.lists(st.sampled_from(["", "json", "sse"]), max_size=8))
def test_join_hot_weighs_and_accounts_as_one_by_one(recs: list[Record], cached: list[str]) -> None:
    """:func:`join_hot` answers the records' summed size and memory and charges their
    cached encodings to the account, as :attr:`Record.memory` and
    :meth:`Record.join_account` do one record at a time."""
    for r, c in zip(recs, cached, strict=False):
        if c == "json":
            r.to_json()
        elif c == "sse":
            r.to_sse()
    twins = [msgspec.structs.replace(r) for r in recs]
    one_by_one = HotAccount()
    for t in twins:
        t.join_account(one_by_one)
    acct = HotAccount()
    assert join_hot(recs, acct) == (sum(r.size for r in twins), sum(r.memory for r in twins))
    assert acct.encoded == one_by_one.encoded
    assert all(r._acct is acct for r in recs)
