"""The batched stream formats encode a write in one encoder call (:func:`json_array`):
byte for byte what joining each record's cached JSON gives, cut at the same byte bound,
with the same counts -- for text and binary payloads, keys, headers, control records
and any bound."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sprawl.delivery import frames
from sprawl.delivery.frames import batch, batch_event, json_array, ndjson_batch
from sprawl.log.record import Record

record = st.builds(
    lambda off, ts, id_, key, headers, body, control: Record(
        off, 2, ts, id_, key, headers, body[0], body[1], control=control
    ),
    st.integers(0, 2**40),
    st.integers(0, 2**45),
    st.one_of(st.none(), st.text(max_size=20)),
    st.one_of(st.none(), st.text(max_size=10)),
    st.one_of(st.none(), st.dictionaries(st.text(max_size=5), st.text(max_size=8), max_size=3)),
    st.one_of(
        st.text(max_size=60).map(lambda t: (t.encode(), True)),
        st.binary(max_size=60).map(lambda b: (b, False)),
    ),
    st.booleans(),
)


def joined(recs: list[Record], max_bytes: int) -> tuple[bytes, int, int, int]:
    """The encoding before the one-call path: each record's JSON, joined."""
    fresh = [
        Record(
            r.offset,
            r.partition,
            r.timestamp,
            r.id,
            r.key,
            r.headers,
            r.payload,
            r.is_text,
            control=r.control,
        )
        for r in recs
    ]
    fs, used, n, nbytes = batch(fresh, Record.to_json, max_bytes)
    return b"[" + b",".join(fs) + b"]", used, n, nbytes


@given(st.lists(record, max_size=30), st.integers(1, 3000))
@settings(max_examples=300)
def test_one_call_is_byte_for_byte_the_joined_frames(recs: list[Record], max_bytes: int) -> None:
    """Same array, same records used, same messages and message bytes, for any bound."""
    assert json_array(recs, max_bytes) == joined(recs, max_bytes)
    line, used, n, _ = ndjson_batch(2, recs, max_bytes)
    event = batch_event(2, recs, max_bytes)[0]
    if n:
        array = joined(recs, max_bytes)[0]
        last = recs[used - 1].offset
        assert line == b'{"id":"2:%d","partition":2,"messages":%s}\n' % (last, array)
        assert event == b"event: batch\nid: 2:%d\ndata: %s\n\n" % (last, array)
    else:
        assert line == event == b""


def test_more_records_than_one_call_takes_go_record_by_record(monkeypatch: object) -> None:
    """Past :data:`ONE_CALL_RECORDS` the per-record path runs (and caches each JSON)."""
    recs = [Record(i, 0, 0, None, None, None, b"m%d" % i, True) for i in range(5)]
    frames.ONE_CALL_RECORDS = 3
    try:
        assert json_array(recs, 1000) == joined(recs, 1000)
        assert all(r._json is not None for r in recs)
    finally:
        frames.ONE_CALL_RECORDS = 1000
    fresh = [Record(i, 0, 0, None, None, None, b"m%d" % i, True) for i in range(5)]
    assert json_array(fresh, 1000) == joined(recs, 1000)
    assert all(r._json is None for r in fresh)  # one call: nothing cached per record


def test_the_message_structs_stay_untracked_with_the_records_keys_in_order() -> None:
    """What the one encoder call encodes (text and binary messages) is not
    tracked by the garbage collector (``gc=False``, kept through their shared
    base) and has :meth:`Record.to_dict`'s keys in its order."""
    import gc

    import msgspec

    for payload, is_text in ((b"hi", True), (b"\x00\xff", False)):
        r = Record(7, 2, 123, "id-1", "k", {"h": "v"}, payload, is_text)
        shown = frames._shown(r)
        assert not gc.is_tracked(shown)
        assert list(msgspec.structs.asdict(shown)) == list(r.to_dict())
        assert msgspec.json.encode(shown) == r.to_json()
