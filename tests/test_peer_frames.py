"""The peer channel's frames and handshake (:mod:`sprawl.peer.frames`): pure, no I/O."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sprawl.peer.frames import (
    HELLO,
    RAFT,
    VERSION,
    FrameDecoder,
    HandshakeError,
    Hello,
    check_hello,
    encode_frame,
    make_hello,
)

KEY = b"k" * 32
CHAL = bytes(range(16))

frames_st = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=300)), max_size=12)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` split at the (sorted, deduplicated) offsets ``cuts``."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


@given(frames_st, st.lists(st.integers(0, 10_000), max_size=40))
def test_any_chunking_yields_the_same_frames(frames: list[tuple[int, bytes]], cuts: list[int]) -> None:
    """Frames fed in arbitrary chunks (including empty ones) come back exactly, in order."""
    stream = b"".join(encode_frame(k, p) for k, p in frames)
    d = FrameDecoder(max_frame=1024)
    got: list[tuple[int, bytes]] = []
    for chunk in chunked(stream, cuts):
        got += d.feed(chunk)
    assert got == frames
    assert d.dropped == 0
    assert not d._buf


def test_byte_at_a_time() -> None:
    """Feeding one byte at a time returns each frame exactly when its last byte arrives."""
    frame = encode_frame(RAFT, b"hello")
    d = FrameDecoder()
    for b in frame[:-1]:
        assert d.feed(bytes([b])) == []
    assert d.feed(frame[-1:]) == [(RAFT, b"hello")]


def test_empty_payload_frame_is_kept() -> None:
    """A frame with a kind but no payload (length 1) is a valid frame, not dropped."""
    d = FrameDecoder()
    assert d.feed(encode_frame(RAFT, b"")) == [(RAFT, b"")]
    assert d.dropped == 0


def test_oversize_frame_streams_past_without_buffering() -> None:
    """An oversized frame fed in small chunks never makes the buffer exceed max_frame+4
    bytes, is counted as dropped, and the next frame still decodes (sync kept)."""
    limit = 100
    d = FrameDecoder(max_frame=limit)
    big = encode_frame(RAFT, b"x" * 50_000)
    stream = big + encode_frame(HELLO, b"after")
    got: list[tuple[int, bytes]] = []
    peak = 0
    for i in range(0, len(stream), 37):
        got += d.feed(stream[i : i + 37])
        peak = max(peak, len(d._buf))
    assert peak <= limit + 4
    assert got == [(HELLO, b"after")]
    assert d.dropped == 1


def test_oversize_frame_in_one_chunk_keeps_sync() -> None:
    """An oversized frame fully inside one chunk is dropped and the frames around it survive."""
    d = FrameDecoder(max_frame=10)
    stream = encode_frame(RAFT, b"a") + encode_frame(RAFT, b"b" * 11) + encode_frame(RAFT, b"c")
    assert d.feed(stream) == [(RAFT, b"a"), (RAFT, b"c")]
    assert d.dropped == 1


def test_frame_at_exact_limit_is_accepted() -> None:
    """A frame whose length equals max_frame is delivered; one byte more is dropped."""
    d = FrameDecoder(max_frame=10)
    assert d.feed(encode_frame(RAFT, b"x" * 9)) == [(RAFT, b"x" * 9)]
    assert d.feed(encode_frame(RAFT, b"x" * 10)) == []
    assert d.dropped == 1


def test_zero_length_frame_is_dropped() -> None:
    """A length-0 frame (no kind byte) is dropped and counted; the following frame decodes."""
    d = FrameDecoder()
    assert d.feed(b"\0\0\0\0" + encode_frame(RAFT, b"z")) == [(RAFT, b"z")]
    assert d.dropped == 1


@pytest.mark.parametrize("key", [None, KEY])
def test_hello_round_trip(key: bytes | None) -> None:
    """A hello made for a challenge (with or without a key) checks back to the node id."""
    assert check_hello(make_hello("node-a", CHAL, key), CHAL, key) == "node-a"


def test_hello_with_wrong_key_is_refused() -> None:
    """A hello MAC'd with another key is refused."""
    with pytest.raises(HandshakeError, match="key"):
        check_hello(make_hello("node-a", CHAL, b"other"), CHAL, KEY)


def test_hello_without_key_is_refused_by_keyed_node() -> None:
    """A hello carrying no MAC is refused when this node has a cluster key."""
    with pytest.raises(HandshakeError):
        check_hello(make_hello("node-a", CHAL, None), CHAL, KEY)


def test_hello_replayed_on_another_challenge_is_refused() -> None:
    """A keyed hello answering one challenge does not pass for another challenge."""
    with pytest.raises(HandshakeError):
        check_hello(make_hello("node-a", CHAL, KEY), b"\xff" * 16, KEY)


def test_hello_with_other_name_than_mac_is_refused() -> None:
    """A MAC computed for one node id does not vouch for a different node id."""
    good = msgspec.msgpack.decode(make_hello("node-a", CHAL, KEY), type=Hello)
    forged = msgspec.msgpack.encode(Hello("node-b", VERSION, good.mac))
    with pytest.raises(HandshakeError):
        check_hello(forged, CHAL, KEY)


def test_wrong_version_is_refused() -> None:
    """A hello declaring another protocol version is refused even without a key."""
    payload = msgspec.msgpack.encode(Hello("node-a", VERSION + 1, b""))
    with pytest.raises(HandshakeError, match="protocol"):
        check_hello(payload, CHAL, None)


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xc1", b"garbage", msgspec.msgpack.encode([1, 2]), msgspec.msgpack.encode({"node_id": 5})],
)
def test_malformed_hello_is_refused(payload: bytes) -> None:
    """Bytes that are not a Hello raise HandshakeError (not another exception)."""
    with pytest.raises(HandshakeError, match="malformed"):
        check_hello(payload, CHAL, None)


@pytest.mark.parametrize("node_id", ["", "n" * 256])
def test_invalid_node_id_is_refused(node_id: str) -> None:
    """An empty or over-long (>255) node id is refused, keyed or not."""
    for key in (None, KEY):
        with pytest.raises(HandshakeError, match="node id"):
            check_hello(make_hello(node_id, CHAL, key), CHAL, key)
