"""The asyncio publish socket's framing (:mod:`sprawl.client.aiows`): client frames as an
independent WebSocket implementation (wsproto) reads them, the server-frame reader split
anywhere, bounded and fuzzed, and the publisher's answers and failures on a fake transport."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection

from sprawl.client.aiows import (
    FrameReader,
    Publisher,
    _Socket,
    accept_key,
    client_frame,
    mask,
    publish_frame,
)
from sprawl.client.errors import ClientError


def server_frame(payload: bytes, opcode: int = 1, fin: bool = True) -> bytes:
    """An unmasked server frame."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        return struct.pack("!BB", b0, n) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", b0, 126, n) + payload
    return struct.pack("!BBQ", b0, 127, n) + payload


def test_accept_key_is_rfc_6455s_example() -> None:
    """RFC 6455 1.3's worked example."""
    assert accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@given(st.binary(max_size=600), st.binary(min_size=4, max_size=4))
def test_mask_is_its_own_inverse_and_matches_the_bytewise_rule(data: bytes, key: bytes) -> None:
    """Masking is XOR with the key repeated (checked against the byte-by-byte definition)."""
    masked = mask(data, key)
    assert masked == bytes(b ^ key[i % 4] for i, b in enumerate(data))
    assert mask(masked, key) == data


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_client_frames_read_by_wsproto(size: int) -> None:
    """wsproto (a server) reads every length class of a binary frame, and a close frame."""
    server = Connection(ConnectionType.SERVER)
    body = bytes(range(256)) * (size // 256 + 1)
    body = body[:size]
    server.receive_data(client_frame(body) + client_frame(struct.pack("!H", 1000), 8))
    got = b""
    events = list(server.events())
    for ev in events:
        if isinstance(ev, BytesMessage):
            got += ev.data
    assert got == body
    assert isinstance(events[-1], CloseConnection) and events[-1].code == 1000


@given(
    st.lists(st.binary(max_size=300), min_size=1, max_size=6),
    st.lists(st.integers(min_value=1, max_value=50), max_size=30),
)
@settings(max_examples=150)
def test_frame_reader_split_anywhere(payloads: list[bytes], cuts: list[int]) -> None:
    """Frames (a fragmented message, a ping among them) come out whole however the bytes are cut."""
    wire = b"".join(server_frame(p, 2) for p in payloads[:-1])
    last = payloads[-1]
    wire += server_frame(last[:3], 1, fin=False) + server_frame(b"hi", 9) + server_frame(last[3:], 0)
    reader, got, pos = FrameReader(), [], 0
    for c in [*cuts, len(wire)]:
        got += reader.feed(wire[pos : pos + c])
        pos += c
    got += reader.feed(wire[pos:])
    assert got == [(2, p) for p in payloads[:-1]] + [(9, b"hi"), (1, last)]


@given(st.binary(max_size=400))
@settings(max_examples=300)
def test_frame_reader_fuzz_only_clear_errors(data: bytes) -> None:
    """Any bytes: messages or a ClientError, never another exception; nothing over the bound."""
    reader = FrameReader(max_bytes=100)
    try:
        for op, payload in reader.feed(data):
            assert op in (1, 2, 8, 9, 10) and len(payload) <= 100
    except ClientError:
        pass


def test_frame_reader_bounds() -> None:
    """A frame or a fragmented message over the bound, a masked or reserved-bit frame: errors."""
    with pytest.raises(ClientError, match="longer"):
        FrameReader(max_bytes=10).feed(struct.pack("!BBQ", 0x82, 127, 2**40))
    r = FrameReader(max_bytes=10)
    r.feed(server_frame(b"123456", 2, fin=False))
    with pytest.raises(ClientError, match="longer"):
        r.feed(server_frame(b"123456", 0))
    with pytest.raises(ClientError, match="masked"):
        FrameReader().feed(b"\x82\x81abcd\x00")
    with pytest.raises(ClientError, match="reserved"):
        FrameReader().feed(b"\xc2\x00")
    with pytest.raises(ClientError, match="continuation"):
        FrameReader().feed(server_frame(b"x", 0))


def test_publish_frame_is_the_nodes_msgpack_shape() -> None:
    """``{"publish": {"messages": [...], "acks"}, "ref"}``, bytes as msgpack bin."""
    frame = msgspec.msgpack.decode(publish_frame(7, [{"payload": b"\x00\xff"}, {"payload": "t"}], "leader"))
    assert frame == {
        "publish": {"messages": [{"payload": b"\x00\xff"}, {"payload": "t"}], "acks": "leader"},
        "ref": 7,
    }


class FakeTransport(asyncio.Transport):
    """Collects writes."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.sent.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


def test_publisher_window_answers_errors_and_close() -> None:
    """At most ``window`` frames in flight; answers matched by ref in any order; an error answer
    fails only its future; a close fails the unanswered ones as of unknown outcome."""

    async def scenario() -> None:
        sock = _Socket()
        t = FakeTransport()
        sock.connection_made(t)
        sock.opened.set_result({})
        pub = Publisher(sock, window=2)
        f1 = await pub.publish([{"payload": "a"}], "leader")
        f2 = await pub.publish([{"payload": "b"}])
        third = asyncio.ensure_future(pub.publish([{"payload": "c"}]))
        await asyncio.sleep(0)
        assert not third.done() and pub.in_flight == 2 and len(t.sent) == 1  # one write per turn
        sock.data_received(server_frame(b'{"ref":2,"error":{"code":"invalid_message","message":"m"}}'))
        f3 = await asyncio.wait_for(third, 5)
        sock.data_received(server_frame(b'{"ref":1,"published":{"offsets":[0]}}') + server_frame(b"junk"))
        assert (await f1) == {"offsets": [0]}
        with pytest.raises(ClientError, match="invalid_message"):
            await f2
        sock.data_received(server_frame(b"\x03\xe8", 8))
        with pytest.raises(ClientError, match="may or may not"):
            await f3
        with pytest.raises(ClientError, match="closed"):
            await pub.publish([{"payload": "d"}])

    asyncio.run(scenario())
