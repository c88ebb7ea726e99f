"""The pure parts of the S3 tier: the segment object format, the manifest and the spill policy."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sprawl.log.manifest import RemoteObject, decode_manifest, encode_manifest, object_keys
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


def _obj(base: int, last: int) -> RemoteObject:
    return RemoteObject(base, last, 10, 1, 2, f"k{base}.seg", 12, "ab", f"k{base}.idx", 3, "cd")


def test_manifest_round_trip_and_order_check() -> None:
    """The manifest decodes to what was encoded; overlapping entries are refused."""
    objs = [_obj(0, 9), _obj(10, 19)]
    assert decode_manifest(encode_manifest(objs)) == objs
    seg = objs[1].to_segment()
    assert (seg.base, seg.last, seg.sealed, seg.remote) == (10, 19, True, objs[1])
    with pytest.raises(ValueError, match="order"):
        decode_manifest(encode_manifest([_obj(0, 9), _obj(5, 19)]))
    with pytest.raises(ValueError, match="corrupt"):
        decode_manifest(b"[1, 2]")


def test_object_keys_follow_the_layout() -> None:
    """``PREFIX/TOPIC/PARTITION/BASE-LAST.tUID.seg`` and its ``.idx``."""
    assert object_keys("pre/", "t", 3, 0, 99, 7) == (
        "pre/t/3/00000000000000000000-00000000000000000099.t7.seg",
        "pre/t/3/00000000000000000000-00000000000000000099.t7.idx",
    )
    assert object_keys("", "t", 0, 1, 2, 1)[0] == "t/0/00000000000000000001-00000000000000000002.t1.seg"
    # two nodes sharing a bucket and prefix never write the same key
    a = object_keys("pre", "t", 0, 0, 9, 1, "node-a")
    b = object_keys("pre", "t", 0, 0, 9, 1, "node-b")
    assert a[0] == "pre/t/0/00000000000000000000-00000000000000000009.t1.nnode-a.seg"
    assert set(a).isdisjoint(b)


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
