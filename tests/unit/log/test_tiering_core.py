"""The pure parts of the S3 tier: the segment object format, the manifest and the spill policy."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sprawl.log.manifest import (
    KeyInfo,
    Manifest,
    RemoteObject,
    RemoteState,
    decode_manifest,
    encode_manifest,
    object_keys,
    parse_key,
    partition_key_prefix,
)
from sprawl.log.segments import Segment
from sprawl.log.spill import Candidate, choose_spills, hard_limit, retry_at
from sprawl.storage.segment_format import (
    CorruptSegment,
    SegmentIndex,
    decode_chunk,
    encode_segment,
    verify_object,
)


def _records(base: int, n: int, size: int = 100) -> list[tuple[int, bytes]]:
    return [(base + i, bytes([i % 251]) * size) for i in range(n)]


def _read_all(blob: bytes, idx: SegmentIndex) -> list[tuple[int, bytes]]:
    out = []
    for c in idx.chunks:
        out.extend(decode_chunk(blob[c[1] : c[1] + c[2]], c))
    return out


@given(
    base=st.integers(0, 2**40),
    n=st.integers(1, 300),
    size=st.integers(0, 2000),
    chunk=st.integers(1, 50_000),
)
def test_segment_object_round_trips_through_its_chunks(base: int, n: int, size: int, chunk: int) -> None:
    """Every record comes back, in order, chunk by chunk; the index finds the chunk of each offset."""
    recs = _records(base, n, size)
    blob, idx = encode_segment(recs, chunk_bytes=chunk)
    assert (idx.base, idx.last, idx.count, idx.size) == (base, base + n - 1, n, len(blob))
    verify_object(blob, idx)
    assert _read_all(blob, idx) == recs
    again = SegmentIndex.from_bytes(idx.to_bytes())
    assert again == idx
    for off in (base, base + n // 2, base + n - 1):
        c = idx.chunks[idx.chunk_for(off)]
        assert off in [o for o, _ in decode_chunk(blob[c[1] : c[1] + c[2]], c)]


def test_a_flipped_byte_is_caught_in_the_chunk_and_the_object() -> None:
    """Any damage fails the chunk's CRC (reads) and the object's SHA-256 (verification)."""
    blob, idx = encode_segment(_records(10, 50), chunk_bytes=1000)
    bad = bytearray(blob)
    bad[1500] ^= 1
    c = idx.chunks[idx.chunk_for(10 + 1500 // 112)]
    with pytest.raises(CorruptSegment, match="checksum"):
        decode_chunk(bytes(bad[c[1] : c[1] + c[2]]), c)
    with pytest.raises(CorruptSegment, match="sha256"):
        verify_object(bytes(bad), idx)
    with pytest.raises(CorruptSegment, match="bytes"):
        decode_chunk(blob[c[1] : c[1] + c[2] - 1], c)


def test_encoding_refuses_gaps_and_empty_segments() -> None:
    """A segment with a missing offset is never uploaded as if it were whole."""
    with pytest.raises(ValueError, match="contiguous"):
        encode_segment([(1, b"a"), (3, b"b")])
    with pytest.raises(ValueError, match="empty"):
        encode_segment([])


def test_a_malformed_index_is_corrupt() -> None:
    """Garbage, a wrong version or an empty chunk table are reported, not trusted."""
    for data in (
        b"nope",
        b'{"v": 9}',
        b'{"v":1,"base":0,"last":0,"count":1,"size":1,"sha256":"","md5":"","chunks":[]}',
    ):
        with pytest.raises(CorruptSegment):
            SegmentIndex.from_bytes(data)


def _obj(base: int, last: int, epoch: int = 0) -> RemoteObject:
    return RemoteObject(base, last, 10, 1, 2, f"k{base}.seg", 12, "ab", f"k{base}.idx", 3, "cd", epoch)


def test_manifest_round_trip_and_order_check() -> None:
    """The manifest decodes to what was encoded (start, objects, legacy);
    overlapping entries are refused; a version 1 manifest (a node's own
    uploads before the tier was shared) decodes with every object legacy."""
    objs = [_obj(0, 9, 2), _obj(10, 19, 3)]
    m = Manifest(5, objs, [_obj(20, 29)])
    assert decode_manifest(encode_manifest(m)) == m
    seg = objs[1].to_segment()
    assert (seg.base, seg.last, seg.sealed, seg.remote) == (10, 19, True, objs[1])
    with pytest.raises(ValueError, match="order"):
        decode_manifest(encode_manifest(Manifest(0, [_obj(0, 9), _obj(5, 19)])))
    with pytest.raises(ValueError, match="corrupt"):
        decode_manifest(b"[1, 2]")
    old = json.dumps({"v": 1, "segments": [_obj(0, 9).to_row()[:11], _obj(10, 19).to_row()[:11]]}).encode()
    m1 = decode_manifest(old)
    assert m1.objects == m1.legacy == [_obj(0, 9), _obj(10, 19)] and m1.start == 0


@given(st.lists(st.one_of(st.integers(), st.text(max_size=3), st.none(), st.booleans()), max_size=14))
def test_a_malformed_remote_row_is_a_value_error(row: list[Any]) -> None:
    """Rows come from disk and from Raft commands: anything malformed is ``ValueError``."""
    try:
        o = RemoteObject.from_row(row)
    except ValueError:
        return
    assert 0 <= o.base <= o.last and o.key


def test_remote_state_adds_only_what_continues_it_and_trims_whole_segments() -> None:
    """The shared list grows only at its end (or, empty, from anywhere at or
    past its start); retention moves the start and drops whole segments."""
    s = RemoteState(0).added([_obj(0, 9)])
    assert s.end == 10 and s.keys() == {"k0.seg", "k0.idx"}
    s = s.added([_obj(10, 19), _obj(20, 29)])
    for bad in ([_obj(31, 40)], [_obj(25, 40)], [_obj(30, 39), _obj(41, 50)], []):
        with pytest.raises(ValueError):
            s.added(bad)
    t, gone = s.trimmed(15)
    assert (t.start, [o.base for o in t.objects], [o.base for o in gone]) == (15, [10, 20], [0])
    assert t.trimmed(3)[0].start == 15, "the start never moves back"
    empty, gone = t.trimmed(100)
    assert (empty.start, empty.objects, empty.end, len(gone)) == (100, (), 100, 2)
    with pytest.raises(ValueError, match="below the log start"):
        empty.added([_obj(50, 99)])
    assert empty.added([_obj(90, 120)]).end == 121
    assert RemoteState.from_doc(s.to_doc()) == s
    with pytest.raises(ValueError):
        RemoteState.from_doc({"start": 0, "segments": [_obj(0, 9).to_row(), _obj(20, 29).to_row()]})


def test_object_keys_follow_the_layout() -> None:
    """``PREFIX/TOPIC/PARTITION/BASE-LAST.tINCARNATION.eEPOCH.seg`` and its ``.idx``:
    no node in the key; two epochs (two leaders) never write the same key."""
    assert object_keys("pre/", "t", 3, 0, 99, 7, 2) == (
        "pre/t/3/00000000000000000000-00000000000000000099.t7.e2.seg",
        "pre/t/3/00000000000000000000-00000000000000000099.t7.e2.idx",
    )
    assert object_keys("", "t", 0, 1, 2, 1, 0)[0] == "t/0/00000000000000000001-00000000000000000002.t1.e0.seg"
    assert set(object_keys("pre", "t", 0, 0, 9, 1, 4)).isdisjoint(object_keys("pre", "t", 0, 0, 9, 1, 5))
    assert partition_key_prefix("/pre/", "t", 3) == "pre/t/3/" and partition_key_prefix("", "t", 3) == "t/3/"
    info = parse_key(object_keys("pre", "t", 0, 5, 9, 3, 8)[1])
    assert info == KeyInfo(5, 9, 3, 8, None, True)
    legacy = parse_key("pre/t/0/00000000000000000000-00000000000000000009.t1.nnode.e-a.seg")
    assert legacy == KeyInfo(0, 9, 1, None, "node.e-a", False)
    assert parse_key("pre/t/0/00000000000000000000-00000000000000000009.t1.seg") == KeyInfo(
        0, 9, 1, None, None, False
    )
    assert parse_key("pre/t/0/notes.txt") is None and parse_key("pre/t/0/1-2.t1.e1.seg") is None


def _seg(base: int, last_ts: int, nbytes: int = 100, sealed: bool = True) -> Segment:
    return Segment(base, base + 9, nbytes, last_ts - 5, last_ts, sealed)


def test_age_moves_old_sealed_stored_segments_only() -> None:
    """Old enough, sealed and fully stored: moves; the active or unstored segment stays."""
    now = 100_000
    cands = [
        Candidate("old", _seg(0, 1_000), stored_end=10),
        Candidate("young", _seg(0, 99_000), stored_end=10),
        Candidate("active", _seg(0, 1_000, sealed=False), stored_end=10),
        Candidate("unstored", _seg(0, 1_000), stored_end=5),
    ]
    got = choose_spills(cands, used_bytes=0, budget=1000, age_ms=60_000, now_ms=now, slots=8)
    assert [(s.partition, s.reason) for s in got] == [("old", "age")]


def test_budget_moves_the_oldest_until_under_the_low_water_mark() -> None:
    """Past the budget, the oldest segments move until the expected use is below 90% of it."""
    cands = [
        Candidate(p, _seg(0, ts, nbytes=100), stored_end=10) for p, ts in (("a", 300), ("b", 100), ("c", 200))
    ]
    got = choose_spills(cands, used_bytes=1050, budget=1000, age_ms=10**9, now_ms=1000, slots=8)
    assert [(s.partition, s.reason) for s in got] == [("b", "budget"), ("c", "budget")]
    assert choose_spills(cands, used_bytes=1000, budget=1000, age_ms=10**9, now_ms=1000, slots=8) == []


def test_slots_and_backoff_bound_the_uploads() -> None:
    """At most ``slots`` start; a partition in back-off waits for its retry time."""
    cands = [Candidate(i, _seg(0, 1), stored_end=10, retry_at_ms=5000 if i == 0 else 0) for i in range(5)]
    got = choose_spills(cands, used_bytes=0, budget=1, age_ms=0, now_ms=1000, slots=2)
    assert len(got) == 2 and all(s.partition != 0 for s in got)
    assert choose_spills(cands, used_bytes=0, budget=1, age_ms=0, now_ms=1000, slots=0) == []
    assert (
        retry_at(0, 7) == 7
        and retry_at(1, 0) == 1000
        and retry_at(2, 0) == 2000
        and retry_at(50, 0) == 30_000
    )


def test_hard_limit() -> None:
    """The budget without S3; 1.5x it with S3; an explicit limit wins."""
    assert hard_limit(1000, False) == 1000
    assert hard_limit(1000, True) == 1500
    assert hard_limit(1000, True, 1200) == 1200
