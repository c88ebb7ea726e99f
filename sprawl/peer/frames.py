"""Frames of the peer channel, and its handshake.  Pure: no Twisted, no I/O.

A frame is ``length (4 bytes, big-endian) | kind (1 byte) | payload``, where
``length`` counts the kind byte and the payload.  A frame longer than the
receiver's limit is skipped without being buffered (the stream stays in
sync, the frame is counted as dropped); a payload that does not decode is
dropped by the consumer of that kind, never the connection.

Connections are one-way: a node sends on connections it opened and receives
on connections it accepted.  The acceptor opens with a :data:`CHALLENGE`
frame (16 random bytes); the connector answers with a :data:`HELLO` naming
itself and, when the cluster has a key, proving it knows the key with an
HMAC over the challenge and its name.  Nothing else is accepted before a
valid hello, and a first frame longer than :data:`MAX_HELLO` is refused by
its declared length before any of it is buffered.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field

import msgspec

#: Frame kinds.
CHALLENGE = 1
HELLO = 2
RAFT = 3
REQUEST = 4
RESPONSE = 5
REPLICATION = 6

#: Largest frame a node accepts by default (a Raft snapshot must fit).
MAX_FRAME = 64 << 20
#: Largest hello (kind byte included): an unauthenticated peer never gets more buffered.
MAX_HELLO = 1024
#: Protocol version carried in the hello.
VERSION = 1

_LEN = struct.Struct(">I")


def encode_frame(kind: int, payload: bytes) -> bytes:
    """One frame's bytes."""
    return _LEN.pack(len(payload) + 1) + bytes((kind,)) + payload


@dataclass
class FrameDecoder:
    """Splits a byte stream into ``(kind, payload)`` frames.

    Frames over ``max_frame`` are skipped as they stream past (``dropped``
    counts them) so an oversized frame costs no memory and loses no sync.
    """

    max_frame: int = MAX_FRAME
    dropped: int = 0
    _buf: bytearray = field(default_factory=bytearray)
    _skip: int = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add received bytes; return the complete frames they finish."""
        out: list[tuple[int, bytes]] = []
        view = memoryview(data)
        if self._skip:
            n = min(self._skip, len(view))
            self._skip -= n
            view = view[n:]
        self._buf += view
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 4:
            (length,) = _LEN.unpack_from(buf, pos)
            if length == 0 or length > self.max_frame:
                self.dropped += 1
                have = len(buf) - pos - 4
                if have >= length:
                    pos += 4 + length
                    continue
                self._skip = length - have
                pos = len(buf)
                break
            if len(buf) - pos - 4 < length:
                break
            kind = buf[pos + 4]
            out.append((kind, bytes(buf[pos + 5 : pos + 4 + length])))
            pos += 4 + length
        del buf[:pos]
        return out


class Hello(msgspec.Struct, frozen=True):
    """The connector's introduction."""

    node_id: str
    version: int = VERSION
    mac: bytes = b""


def hello_mac(key: bytes, challenge: bytes, node_id: str) -> bytes:
    """HMAC-SHA256 proving knowledge of the cluster key for this connection."""
    return hmac.new(key, b"sprawl-peer-hello\0" + challenge + node_id.encode(), hashlib.sha256).digest()


def make_hello(node_id: str, challenge: bytes, key: bytes | None) -> bytes:
    """The HELLO payload answering ``challenge``."""
    mac = hello_mac(key, challenge, node_id) if key else b""
    return msgspec.msgpack.encode(Hello(node_id, VERSION, mac))


class HandshakeError(ValueError):
    """A hello that must not be accepted."""


def check_hello(payload: bytes, challenge: bytes, key: bytes | None) -> str:
    """The peer's node id from a HELLO payload, or :class:`HandshakeError`."""
    try:
        h = msgspec.msgpack.decode(payload, type=Hello)
    except msgspec.DecodeError as e:
        raise HandshakeError(f"malformed hello: {e}") from None
    if h.version != VERSION:
        raise HandshakeError(f"peer speaks protocol {h.version}, this node {VERSION}")
    if not h.node_id or len(h.node_id) > 255:
        raise HandshakeError("hello without a valid node id")
    if key and not hmac.compare_digest(h.mac, hello_mac(key, challenge, h.node_id)):
        raise HandshakeError("peer does not know the cluster key")
    return h.node_id
