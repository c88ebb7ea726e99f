"""The write-ahead log on disk and its bytes: append/recover, segments, a torn tail cut,
damage refused (never a silent short read), and the decoders fuzzed."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sprawl.storage.lmdb import DBS
from sprawl.storage.wal import WalDamaged, WriteAheadLog, segment_name
from sprawl.storage.wal_format import (
    HEAD_BYTES,
    MAX_BODY,
    WalFormatError,
    decode_body,
    encode_body,
    encode_frame,
    scan_frames,
)

DB_INDEX = {n: i for i, n in enumerate(DBS)}


def body(i: int, size: int = 20) -> bytes:
    """A body with the ops of one small write, numbered ``i``."""
    ops = [
        ("m", "records", [(struct.pack(">IIQ", 1, 0, i), b"v" * size)]),
        ("p", "segments", struct.pack(">IIQ", 1, 0, 0), b"[0]"),
    ]
    return encode_body(ops, DB_INDEX)


def opened(path: Path, applied: int = 0, **kw: int) -> tuple[WriteAheadLog, list[int]]:
    """A log recovered at ``path`` and the seqs it handed back for replay."""
    wal = WriteAheadLog(str(path), **kw)
    seqs = [fr.seq for fr in wal.recover(applied)]
    return wal, seqs


def test_append_recover_round_trip_and_segments_dropped_once_applied(tmp_path: Path) -> None:
    """Frames come back in order past the applied seq, across segments; release drops
    only segments wholly applied, never the one being written."""
    wal, seqs = opened(tmp_path / "w", segment_bytes=200)
    assert seqs == [] and wal.next_seq == 1
    for i in range(1, 11):
        assert wal.append(body(i)) == i
    assert len(wal.segments) > 2
    wal.close()
    wal, seqs = opened(tmp_path / "w", applied=4, segment_bytes=200)
    assert seqs == list(range(5, 11)) and wal.next_seq == 11
    frames = list(WriteAheadLog(str(tmp_path / "w")).recover(0))
    assert [decode_body(f.body, DBS)[0][2][0][0] for f in frames] == [
        struct.pack(">IIQ", 1, 0, i) for i in range(1, 11)
    ]
    n_before = len(wal.segments)
    assert wal.release(4) >= 1
    assert wal.segments[0] <= 5 and len(wal.segments) < n_before
    assert wal.release(10**9) >= 1 and len(wal.segments) == 1  # the current one stays
    assert wal.append(body(11)) == 11
    wal.close()
    assert opened(tmp_path / "w", applied=10)[1] == [11]


def frame_ends(fn: Path) -> list[int]:
    """Where each sound frame of a segment ends."""
    return [f.end for f in scan_frames(fn.read_bytes()).frames]


def damage(fn: Path, at: int, data: bytes) -> None:
    """Overwrite bytes of a segment in place."""
    with open(fn, "r+b") as f:
        f.seek(at)
        f.write(data)


def test_a_torn_tail_is_cut_and_appends_go_on(tmp_path: Path) -> None:
    """The last frame half written (its end never reached the disk) is zeroed at start;
    the frames before it come back and the next append takes the lost frame's seq."""
    wal, _ = opened(tmp_path / "w", segment_bytes=4096)
    for i in range(1, 4):
        wal.append(body(i))
    wal.close()
    fn = tmp_path / "w" / segment_name(1)
    assert fn.stat().st_size == 4096  # preallocated
    ends = frame_ends(fn)
    damage(fn, ends[2] - 5, bytes(5))
    wal, seqs = opened(tmp_path / "w", segment_bytes=4096)
    assert seqs == [1, 2] and wal.next_seq == 3
    assert fn.read_bytes()[ends[1] :] == bytes(4096 - ends[1])
    assert wal.append(body(99)) == 3
    wal.close()
    assert opened(tmp_path / "w")[1] == [1, 2, 3]
    # A segment cut short (a crash while it was being made) is an empty one.
    wal, _ = opened(tmp_path / "v", segment_bytes=4096)
    wal.close()
    with open(tmp_path / "v" / segment_name(1), "r+b") as f:
        f.truncate(7)
    wal, seqs = opened(tmp_path / "v", segment_bytes=4096)
    assert seqs == [] and wal.append(body(1)) == 1
    wal.close()
    assert opened(tmp_path / "v")[1] == [1]


def test_a_bad_checksum_at_the_tail_is_cut_but_in_the_middle_refused(tmp_path: Path) -> None:
    """A last frame failing its checksum is a torn tail (cut); a damaged frame with a
    sound one after it (even with a damaged length: found by its seq), a zeroed stretch
    with frames after it, or damage in a segment before the last, is WalDamaged: acked
    writes may be in it, so the log never reads short past it."""
    wal, _ = opened(tmp_path / "a", segment_bytes=4096)
    for i in range(1, 4):
        wal.append(body(i))
    wal.close()
    fn = tmp_path / "a" / segment_name(1)
    damage(fn, frame_ends(fn)[2] - 3, b"\xff")
    assert opened(tmp_path / "a")[1] == [1, 2]

    for name, where, data in (
        ("b", HEAD_BYTES + 3, b"\xff"),
        ("c", 0, b"\xff\xff"),
        ("d", 0, bytes(HEAD_BYTES)),
    ):
        wal, _ = opened(tmp_path / name, segment_bytes=4096)
        for i in range(1, 4):
            wal.append(body(i))
        wal.close()
        fn = tmp_path / name / segment_name(1)
        damage(fn, where, data)  # inside frame 1's body / its length / its head zeroed
        with pytest.raises(WalDamaged, match="sound frames follow"):
            list(WriteAheadLog(str(tmp_path / name)).recover(0))

    wal, _ = opened(tmp_path / "e", segment_bytes=100)
    for i in range(1, 5):
        wal.append(body(i))
    wal.close()
    first = tmp_path / "e" / segment_name(1)
    damage(first, frame_ends(first)[-1] - 2, b"\xff")
    with pytest.raises(WalDamaged, match="a later segment follows"):
        list(WriteAheadLog(str(tmp_path / "e")).recover(0))


def test_a_missing_frame_or_segment_is_refused(tmp_path: Path) -> None:
    """A segment gone from the middle, or a log starting past what LMDB holds, is
    WalDamaged; a log wholly applied and then lost is not (nothing acked is missing)."""
    wal, _ = opened(tmp_path / "w", segment_bytes=100)
    for i in range(1, 7):
        wal.append(body(i))
    segs = list(wal.segments)
    wal.close()
    assert len(segs) >= 3
    os.unlink(tmp_path / "w" / segment_name(segs[1]))
    with pytest.raises(WalDamaged, match="starts at seq"):
        list(WriteAheadLog(str(tmp_path / "w")).recover(0))
    os.unlink(tmp_path / "w" / segment_name(segs[0]))
    with pytest.raises(WalDamaged, match="LMDB holds the frames up to seq 0"):
        list(WriteAheadLog(str(tmp_path / "w")).recover(0))
    wal, seqs = opened(tmp_path / "w", applied=segs[2] - 1, segment_bytes=100)
    assert seqs == list(range(segs[2], 7))
    wal.close()
    wal, seqs = opened(tmp_path / "w", applied=50)  # LMDB ahead of a log that lost applied frames
    assert seqs == [] and wal.next_seq == 51
    assert wal.append(body(1)) == 51
    wal.close()
    assert wal.release(51) >= 1
    assert opened(tmp_path / "w", applied=50)[1] == [51]


def test_the_body_decoder_refuses_malformed_bodies() -> None:
    """Unknown kinds and databases, lengths past the end and bytes left over are
    WalFormatError; a count that cannot fit is refused before anything is allocated."""
    good = body(7)
    assert decode_body(good, DBS)[1] == ("p", "segments", struct.pack(">IIQ", 1, 0, 0), b"[0]")
    with pytest.raises(WalFormatError, match="after the last op"):
        decode_body(good + b"x", DBS)
    with pytest.raises(WalFormatError):
        decode_body(good[:-1], DBS)
    with pytest.raises(WalFormatError, match="cannot fit"):
        decode_body(struct.pack(">I", 2**32 - 1), DBS)
    with pytest.raises(WalFormatError, match="unknown database"):
        decode_body(struct.pack(">IBB", 1, 1, 99) + b"\0" * 8, DBS)
    with pytest.raises(WalFormatError, match="unknown op kind"):
        decode_body(struct.pack(">IBB", 1, 9, 0) + b"\0" * 8, DBS)
    with pytest.raises(WalFormatError, match="runs past"):
        decode_body(struct.pack(">IBBI", 1, 3, 0, 1000) + b"\0" * 4, DBS)
    with pytest.raises(ValueError, match="cannot be logged"):
        encode_body([("x", "records", print)], DB_INDEX)


def test_a_frame_claiming_more_than_the_limit_is_damage_not_an_allocation() -> None:
    """A length over MAX_BODY stops the scan ("length") at once."""
    bad = struct.pack(">IIQ", MAX_BODY + 1, 0, 1) + b"\0" * 10
    scan = scan_frames(encode_frame(1, b"ok") + bad)
    assert [f.body for f in scan.frames] == [b"ok"] and scan.problem == "length"
    with pytest.raises(ValueError):
        encode_frame(1, b"\0" * (MAX_BODY + 1))


_keys = st.binary(max_size=24)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("p"), st.sampled_from(DBS), _keys, st.binary(max_size=40)),
        st.tuples(
            st.just("m"), st.sampled_from(DBS), st.lists(st.tuples(_keys, st.binary(max_size=40)), max_size=5)
        ),
        st.tuples(st.just("d"), st.sampled_from(DBS), _keys),
    ),
    max_size=8,
)


@given(_ops)
def test_fuzz_bodies_round_trip(ops: list[tuple]) -> None:
    """Every body encoded decodes to the same ops."""
    got = decode_body(encode_body(ops, DB_INDEX), DBS)
    assert [tuple(o) for o in got] == [tuple(o) for o in ops]


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_fuzz_the_body_decoder_raises_only_its_error(data: bytes) -> None:
    """Arbitrary bytes decode to ops that re-encode to the same bytes, or raise
    WalFormatError: never another exception, never a partial result."""
    try:
        ops = decode_body(data, DBS)
    except WalFormatError:
        return
    assert encode_body(ops, DB_INDEX) == data


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=60), min_size=1, max_size=6), st.data())
def test_fuzz_a_damaged_frame_stream_never_yields_a_changed_frame(
    bodies: list[bytes], data: st.DataObject
) -> None:
    """Flip, cut or extend a stream of frames anywhere (zeros too): the scan returns a
    prefix of the original frames, unchanged, and says where and why it stopped."""
    frames = [encode_frame(i + 1, b) for i, b in enumerate(bodies)]
    stream = b"".join(frames)
    how = data.draw(st.sampled_from(["flip", "cut", "junk"]))
    if how == "flip":
        pos = data.draw(st.integers(0, len(stream) - 1))
        bit = data.draw(st.integers(0, 7))
        damaged = stream[:pos] + bytes([stream[pos] ^ (1 << bit)]) + stream[pos + 1 :]
    elif how == "cut":
        damaged = stream[: data.draw(st.integers(0, len(stream) - 1))]
    else:
        damaged = stream + data.draw(st.binary(min_size=1, max_size=40))
    scan = scan_frames(damaged)
    assert [(f.seq, f.body) for f in scan.frames] == [(i + 1, b) for i, b in enumerate(bodies)][
        : len(scan.frames)
    ]
    if scan.problem is None:  # the end, or only zeros after it (a preallocated segment)
        assert damaged[scan.stop :] == bytes(len(damaged) - scan.stop)
    else:
        assert scan.stop == sum(len(f) for f in frames[: len(scan.frames)]) or how == "junk"
