"""The peer channel's frames and handshake (:mod:`sprawl.peer.frames`): pure, no I/O."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sprawl.peer.frames import (
    HELLO,
    RAFT,
    REPLICATION,
    VERSION,
    FrameAuthError,
    FrameDecoder,
    FrameOpener,
    FrameSealer,
    HandshakeError,
    Hello,
    check_hello,
    check_welcome,
    encode_frame,
    frame_limits,
    make_hello,
    make_welcome,
    session_key,
)

KEY = b"k" * 32
CHAL = bytes(range(16))
NONCE = bytes(range(16, 32))

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


def hello(node_id: str = "node-a", to: str = "node-b", key: bytes | None = KEY, **kw: bytes) -> bytes:
    return make_hello(node_id, to, kw.get("challenge", CHAL), kw.get("nonce", NONCE), key)


@pytest.mark.parametrize("key", [None, KEY])
def test_hello_round_trip(key: bytes | None) -> None:
    """A hello made for a challenge (with or without a key) checks back to the node id and nonce."""
    h = check_hello(hello(key=key), CHAL, key, "node-b")
    assert (h.node_id, h.nonce, h.to) == ("node-a", NONCE, "node-b")


def test_hello_with_wrong_key_is_refused() -> None:
    """A hello MAC'd with another key is refused."""
    with pytest.raises(HandshakeError, match="key"):
        check_hello(hello(key=b"other" * 4), CHAL, KEY, "node-b")


def test_hello_without_key_is_refused_by_keyed_node() -> None:
    """A hello carrying no MAC is refused when this node has a cluster key."""
    with pytest.raises(HandshakeError):
        check_hello(hello(key=None), CHAL, KEY, "node-b")


def test_hello_replayed_on_another_challenge_is_refused() -> None:
    """A keyed hello answering one challenge does not pass for another challenge."""
    with pytest.raises(HandshakeError):
        check_hello(hello(), b"\xff" * 16, KEY, "node-b")


def test_hello_meant_for_another_node_is_refused() -> None:
    """A hello names the node it is for: relayed to another node it is refused (keyed or not)."""
    for key in (None, KEY):
        with pytest.raises(HandshakeError, match="meant for"):
            check_hello(hello(key=key), CHAL, key, "node-c")


def test_hello_claiming_our_own_id_is_refused() -> None:
    """Nobody may connect as this node itself."""
    with pytest.raises(HandshakeError, match="own id"):
        check_hello(hello("node-b", to="node-b", key=None), CHAL, None, "node-b")


def test_hello_with_other_name_than_mac_is_refused() -> None:
    """A MAC computed for one node id does not vouch for a different node id."""
    good = msgspec.msgpack.decode(hello(), type=Hello)
    forged = msgspec.msgpack.encode(Hello("node-x", VERSION, good.mac, good.nonce, good.to))
    with pytest.raises(HandshakeError):
        check_hello(forged, CHAL, KEY, "node-b")


@pytest.mark.parametrize("version", [1, VERSION + 1])
def test_wrong_version_is_refused(version: int) -> None:
    """A hello declaring another protocol version (the old one too) is refused even without a key."""
    payload = msgspec.msgpack.encode(Hello("node-a", version, b"", NONCE, "node-b"))
    with pytest.raises(HandshakeError, match="protocol"):
        check_hello(payload, CHAL, None, "node-b")


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xc1", b"garbage", msgspec.msgpack.encode([1, 2]), msgspec.msgpack.encode({"node_id": 5})],
)
def test_malformed_hello_is_refused(payload: bytes) -> None:
    """Bytes that are not a Hello raise HandshakeError (not another exception)."""
    with pytest.raises(HandshakeError, match="malformed"):
        check_hello(payload, CHAL, None, "node-b")


@pytest.mark.parametrize("node_id", ["", "n" * 65, "bad id", "a/b", "x\n"])
def test_invalid_node_id_is_refused(node_id: str) -> None:
    """A node id that --node-id would not take is refused, keyed or not."""
    for key in (None, KEY):
        with pytest.raises(HandshakeError, match="node id"):
            check_hello(hello(node_id, key=key), CHAL, key, "node-b")


def test_hello_without_nonce_is_refused() -> None:
    """The connector's nonce is part of the session key: a hello without 16 bytes of it is refused."""
    with pytest.raises(HandshakeError, match="nonce"):
        check_hello(hello(nonce=b"short"), CHAL, KEY, "node-b")


def test_welcome_proves_the_acceptor() -> None:
    """The welcome names the acceptor and (with a key) proves it holds the key, for this
    connection: another key, another id, another connection's nonces are all refused."""
    good = make_welcome("node-b", "node-a", CHAL, NONCE, KEY)
    check_welcome(good, "node-b", "node-a", CHAL, NONCE, KEY)
    check_welcome(make_welcome("node-b", "node-a", CHAL, NONCE, None), "node-b", "node-a", CHAL, NONCE, None)
    with pytest.raises(HandshakeError, match="instead of"):
        check_welcome(good, "node-c", "node-a", CHAL, NONCE, KEY)
    with pytest.raises(HandshakeError, match="key"):
        check_welcome(good, "node-b", "node-a", CHAL, b"\0" * 16, KEY)
    with pytest.raises(HandshakeError, match="key"):
        check_welcome(
            make_welcome("node-b", "node-a", CHAL, NONCE, b"o" * 32), "node-b", "node-a", CHAL, NONCE, KEY
        )
    with pytest.raises(HandshakeError, match="key"):
        check_welcome(
            make_welcome("node-b", "node-a", CHAL, NONCE, None), "node-b", "node-a", CHAL, NONCE, KEY
        )
    with pytest.raises(HandshakeError, match="malformed"):
        check_welcome(b"\xc1", "node-b", "node-a", CHAL, NONCE, KEY)


def _sealed(frames: list[tuple[int, bytes]], key: bytes) -> bytes:
    s = FrameSealer(key)
    return b"".join(s.seal(k, p) for k, p in frames)


def _open_all(stream: bytes, key: bytes) -> list[bytes | None]:
    d = FrameDecoder(keep_skipped=True)
    o = FrameOpener(key)
    return [o.open(k, b) for k, b in d.feed(stream)]


def test_sealed_frames_open_in_order() -> None:
    """Frames sealed under a session key open under it, in order."""
    sk = session_key(KEY, CHAL, NONCE, "node-a", "node-b")
    frames = [(RAFT, b"one"), (REPLICATION, b""), (RAFT, b"three" * 100)]
    assert _open_all(_sealed(frames, sk), sk) == [p for _, p in frames]


def test_replayed_reordered_altered_or_foreign_frames_fail_their_tag() -> None:
    """A frame sent twice, two frames swapped, a flipped bit, or a frame from another
    connection's session all fail (FrameAuthError, nothing else)."""
    sk = session_key(KEY, CHAL, NONCE, "node-a", "node-b")
    s = FrameSealer(sk)
    f1, f2 = s.seal(RAFT, b"vote for me"), s.seal(RAFT, b"and me")
    for stream in (f1 + f1, f2 + f1, f1[:-1] + bytes([f1[-1] ^ 1]), f1[:9] + b"X" + f1[10:]):
        with pytest.raises(FrameAuthError):
            _open_all(stream, sk)
    other = session_key(KEY, CHAL, b"\1" * 16, "node-a", "node-b")
    with pytest.raises(FrameAuthError):
        _open_all(f1, other)
    with pytest.raises(FrameAuthError):
        FrameOpener(sk).open(RAFT, b"short")


def test_a_skipped_frame_keeps_the_tags_in_step() -> None:
    """A frame skipped as oversized still takes its sequence number: the next one opens."""
    sk = session_key(KEY, CHAL, NONCE, "node-a", "node-b")
    stream = _sealed([(RAFT, b"x" * 500), (RAFT, b"after")], sk)
    d = FrameDecoder(limits={RAFT: 100}, keep_skipped=True)
    o = FrameOpener(sk)
    assert [o.open(k, b) for k, b in d.feed(stream)] == [None, b"after"]


def test_limits_are_per_kind() -> None:
    """Each kind has its own limit (unknown kinds a small one): a frame over its
    kind's limit is skipped, the same size of a larger kind passes."""
    limits = frame_limits(8 * 1000**2)
    d = FrameDecoder(limits=limits)
    big = b"x" * 2000
    assert d.feed(encode_frame(HELLO, big) + encode_frame(RAFT, big) + encode_frame(99, b"y" * 70_000)) == [
        (RAFT, big)
    ]
    assert d.dropped == 2
    assert limits[REPLICATION] >= 2 * 8 * 1000**2 and limits[RAFT] >= limits[REPLICATION]


@given(st.binary(max_size=400), st.sampled_from([None, KEY]))
def test_handshake_decoders_raise_only_their_error(data: bytes, key: bytes | None) -> None:
    """Any bytes as a hello or a welcome: accepted or HandshakeError, nothing else."""
    for check in (
        lambda: check_hello(data, CHAL, key, "node-b"),
        lambda: check_welcome(data, "node-b", "node-a", CHAL, NONCE, key),
    ):
        try:
            check()
        except HandshakeError:
            pass


@given(st.binary(max_size=2000), st.lists(st.integers(0, 3000), max_size=10))
def test_frame_stream_fuzz(data: bytes, cuts: list[int]) -> None:
    """Any byte stream in any chunking: frames or skips, never an exception; tags
    fail only with FrameAuthError; nothing buffered past a kind's limit."""
    limits = {RAFT: 300, HELLO: 100}
    d = FrameDecoder(limits=limits, keep_skipped=True)
    o = FrameOpener(KEY)
    for chunk in chunked(data, cuts):
        for kind, body in d.feed(chunk):
            assert body is None or len(body) + 1 <= limits.get(kind, 64 << 10)
            try:
                o.open(kind, body)
            except FrameAuthError:
                pass
        assert len(d._buf) <= 64 * 1024 + 4


def test_sealed_frames_do_not_carry_their_payload_in_the_clear() -> None:
    """With a key a frame's payload travels encrypted: the bytes on the wire do not
    contain it, and the same payload sealed twice looks different (the sequence
    number is the nonce)."""
    sk = session_key(KEY, CHAL, NONCE, "node-a", "node-b")
    s = FrameSealer(sk)
    secret = b"the quarterly numbers " * 4
    f1, f2 = s.seal(RAFT, secret), s.seal(RAFT, secret)
    assert secret[:16] not in f1 and secret[:16] not in f2
    assert f1[5:] != f2[5:]
    assert _open_all(f1 + f2, sk) == [secret, secret]
