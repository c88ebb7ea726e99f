"""Frames of the peer channel, and its handshake.  Pure: no Twisted, no I/O.

A frame is ``length (4 bytes, big-endian) | kind (1 byte) | body``, where
``length`` counts the kind byte and the body.  Every kind has a size limit
(:func:`frame_limits`); a frame over its kind's limit is skipped without
being buffered (the stream stays in sync, the frame is counted as dropped),
and a sender never queues one (:meth:`PeerChannel.send` refuses it, loudly).
A body that does not decode is dropped by the consumer of that kind, never
the connection.

Connections are one-way: a node sends on connections it opened and receives
on connections it accepted.  The handshake, with ``K`` the cluster key::

    acceptor  -> CHALLENGE  16 random bytes (c)
    connector -> HELLO      {node_id, version, nonce (16 random bytes n), to, mac}
                            mac = HMAC-SHA256(K, "hello" | version | c | n | node_id | to)
    acceptor  -> WELCOME    {node_id, mac}
                            mac = HMAC-SHA256(K, "welcome" | version | c | n | acceptor | connector)

Each side checks the other's MAC (so both prove they hold the key, and the
connector knows it reached the node it meant: ``to`` and the acceptor's id
must agree).  Without a key the MACs are empty and the ids are only claims.
With a key, every later frame is sealed with AES-256-GCM under the
connection's *session key* ``HMAC-SHA256(K, "session" | c | n | connector |
acceptor)``: its payload encrypted, its kind authenticated with it, its
sequence number on that connection (counted, not sent) as the nonce, a
16-byte tag at the end.  A frame from another connection (other nonces,
other session key), replayed, reordered or altered fails its tag, and the
acceptor closes the connection.  Nothing else is accepted before a
valid hello, and a first frame longer than :data:`MAX_HELLO` is refused by
its declared length before any of it is buffered.
"""

from __future__ import annotations

import hashlib
import hmac
import re
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
WELCOME = 7

#: Largest frame a node accepts by default, of any kind (a Raft snapshot must fit).
MAX_FRAME = 64 << 20
#: Largest hello or welcome (kind byte included): an unauthenticated peer never gets more buffered.
MAX_HELLO = 1024
#: Largest frame of a kind the node does not know.
MAX_UNKNOWN = 64 << 10
#: Protocol version carried in the hello (2: mutual proof, session tags).
VERSION = 2
#: Bytes of the challenge and of the connector's nonce.
NONCE_BYTES = 16
#: Bytes of the tag an authenticated frame carries.
TAG_BYTES = 16
#: What a node id on the peer channel may look like (as ``--node-id``).
NODE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")

_LEN = struct.Struct(">I")


def frame_limits(max_body_bytes: int = 8 * 1000**2, max_frame: int = MAX_FRAME) -> dict[int, int]:
    """The largest frame (kind byte and tag included) a node takes of each kind.

    Raft frames carry snapshots (``max_frame``); requests, answers and
    replication batches carry at most one HTTP body's worth of messages over
    their byte budget (:data:`BATCH_BYTES`), so they are allowed two bodies
    and a margin, at least 16 MiB, never more than ``max_frame``.
    """
    data = min(max_frame, max(16 << 20, 2 * max_body_bytes + (1 << 20)))
    return {
        CHALLENGE: 1 + NONCE_BYTES,
        HELLO: MAX_HELLO,
        WELCOME: MAX_HELLO,
        RAFT: max_frame,
        REQUEST: data,
        RESPONSE: data,
        REPLICATION: data,
    }


#: What a producer of one frame (a replication batch, a read answer) aims
#: for: it stops adding records past this many bytes, but always carries one.
BATCH_BYTES = 4 << 20


def encode_frame(kind: int, payload: bytes) -> bytes:
    """One frame's bytes."""
    return _LEN.pack(len(payload) + 1) + bytes((kind,)) + payload


@dataclass
class FrameDecoder:
    """Splits a byte stream into ``(kind, body)`` frames.

    A frame over ``max_frame`` -- or over ``limits[kind]`` when ``limits`` is
    given (unknown kinds: :data:`MAX_UNKNOWN`) -- is skipped as it streams
    past (``dropped`` counts it) so an oversized frame costs no memory and
    loses no sync.  With ``keep_skipped`` a skipped frame is returned as
    ``(kind, None)`` in its place (``kind`` -1 for a frame of length 0), so
    a reader counting frames (the session tags) stays in step.
    """

    max_frame: int = MAX_FRAME
    limits: dict[int, int] | None = None
    keep_skipped: bool = False
    dropped: int = 0
    _buf: bytearray = field(default_factory=bytearray)
    _skip: int = 0

    def limit(self, kind: int) -> int:
        """The largest frame of ``kind`` taken."""
        if self.limits is None:
            return self.max_frame
        return min(self.max_frame, self.limits.get(kind, MAX_UNKNOWN))

    def feed(self, data: bytes) -> list[tuple[int, bytes | None]]:
        """Add received bytes; return the complete frames they finish."""
        out: list[tuple[int, bytes | None]] = []
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
            if length == 0:
                self._skipped(out, -1)
                pos += 4
                continue
            if length > self.max_frame or self.limits is not None:
                if len(buf) - pos < 5:
                    break  # the kind decides the limit
                kind = buf[pos + 4]
                if length > self.limit(kind):
                    self._skipped(out, kind)
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

    def _skipped(self, out: list[tuple[int, bytes | None]], kind: int) -> None:
        self.dropped += 1
        if self.keep_skipped:
            out.append((kind, None))


# -- the handshake ---------------------------------------------------------------------


class Hello(msgspec.Struct, frozen=True):
    """The connector's introduction."""

    node_id: str
    version: int = VERSION
    mac: bytes = b""
    nonce: bytes = b""
    to: str = ""


class Welcome(msgspec.Struct, frozen=True):
    """The acceptor's answer to a valid hello."""

    node_id: str
    mac: bytes = b""


_hello_decoder = msgspec.msgpack.Decoder(Hello)
_welcome_decoder = msgspec.msgpack.Decoder(Welcome)


class HandshakeError(ValueError):
    """A hello or welcome that must not be accepted."""


class FrameAuthError(ValueError):
    """A frame whose tag does not check out under the connection's session key."""


def _mac(key: bytes, *parts: object) -> bytes:
    return hmac.new(key, msgspec.msgpack.encode(list(parts)), hashlib.sha256).digest()


def hello_mac(key: bytes, challenge: bytes, nonce: bytes, node_id: str, to: str) -> bytes:
    """HMAC-SHA256 proving the connector holds the cluster key, for this connection."""
    return _mac(key, "sprawl-peer-hello", VERSION, challenge, nonce, node_id, to)


def welcome_mac(key: bytes, challenge: bytes, nonce: bytes, acceptor: str, connector: str) -> bytes:
    """HMAC-SHA256 proving the acceptor holds the cluster key, for this connection."""
    return _mac(key, "sprawl-peer-welcome", VERSION, challenge, nonce, acceptor, connector)


def session_key(key: bytes, challenge: bytes, nonce: bytes, connector: str, acceptor: str) -> bytes:
    """The key of one connection's frame tags (both nonces, both ids, the cluster key)."""
    return _mac(key, "sprawl-peer-session", VERSION, challenge, nonce, connector, acceptor)


def make_hello(node_id: str, to: str, challenge: bytes, nonce: bytes, key: bytes | None) -> bytes:
    """The HELLO payload answering ``challenge``, for the node ``to``."""
    mac = hello_mac(key, challenge, nonce, node_id, to) if key else b""
    return msgspec.msgpack.encode(Hello(node_id, VERSION, mac, nonce, to))


def check_hello(payload: bytes, challenge: bytes, key: bytes | None, me: str) -> Hello:
    """The peer's hello, checked for this connection, or :class:`HandshakeError`."""
    try:
        h = _hello_decoder.decode(payload)
    except msgspec.DecodeError as e:
        raise HandshakeError(f"malformed hello: {e}") from None
    if h.version != VERSION:
        raise HandshakeError(f"peer speaks protocol {h.version}, this node {VERSION}")
    if not NODE_ID.match(h.node_id):
        raise HandshakeError("hello without a valid node id")
    if h.node_id == me:
        raise HandshakeError(f"peer claims this node's own id {me!r}")
    if h.to != me:
        raise HandshakeError(f"hello meant for node {h.to[:64]!r}, this is {me!r}")
    if len(h.nonce) != NONCE_BYTES:
        raise HandshakeError("hello without a valid nonce")
    if key and not hmac.compare_digest(h.mac, hello_mac(key, challenge, h.nonce, h.node_id, h.to)):
        raise HandshakeError("peer does not know the cluster key")
    return h


def make_welcome(me: str, connector: str, challenge: bytes, nonce: bytes, key: bytes | None) -> bytes:
    """The WELCOME payload the acceptor sends after a valid hello."""
    mac = welcome_mac(key, challenge, nonce, me, connector) if key else b""
    return msgspec.msgpack.encode(Welcome(me, mac))


def check_welcome(
    payload: bytes, expected: str, me: str, challenge: bytes, nonce: bytes, key: bytes | None
) -> None:
    """Check the acceptor's welcome: it is ``expected`` and (with a key) holds the key."""
    try:
        w = _welcome_decoder.decode(payload)
    except msgspec.DecodeError as e:
        raise HandshakeError(f"malformed welcome: {e}") from None
    if w.node_id != expected:
        raise HandshakeError(f"reached node {w.node_id[:64]!r} instead of {expected!r}")
    if key and not hmac.compare_digest(w.mac, welcome_mac(key, challenge, nonce, w.node_id, me)):
        raise HandshakeError("peer does not know the cluster key")


# -- session tags ----------------------------------------------------------------------


_NONCE = struct.Struct(">IQ")


class _Sealing:
    """AES-256-GCM under one session key: each frame's payload is encrypted and
    authenticated, with its kind as associated data and its sequence number
    on the connection as the nonce (never reused: a session key lives for one
    connection, and the sequence only grows)."""

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(key)

    def seal(self, seq: int, kind: int, payload: bytes) -> bytes:
        return self._aead.encrypt(_NONCE.pack(0, seq), payload, bytes((kind & 0xFF,)))

    def open(self, seq: int, kind: int, body: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead.decrypt(_NONCE.pack(0, seq), body, bytes((kind & 0xFF,)))
        except InvalidTag:
            raise FrameAuthError(f"frame {seq} (kind {kind}) fails its tag") from None


class FrameSealer:
    """The connector's side: encrypts and tags each frame, counting frames."""

    def __init__(self, key: bytes) -> None:
        self._aead = _Sealing(key)
        self.seq = 0

    def seal(self, kind: int, payload: bytes) -> bytes:
        """The frame's bytes, sealed under the next sequence number."""
        body = self._aead.seal(self.seq, kind, payload)
        self.seq += 1
        return _LEN.pack(len(body) + 1) + bytes((kind,)) + body


class FrameOpener:
    """The acceptor's side: checks and decrypts each frame, counting frames."""

    def __init__(self, key: bytes) -> None:
        self._aead = _Sealing(key)
        self.seq = 0

    def open(self, kind: int, body: bytes | None) -> bytes | None:
        """The payload of a frame's body, or None for a frame skipped as
        oversized (it still takes its sequence number); :class:`FrameAuthError`
        when the tag is wrong."""
        seq = self.seq
        self.seq += 1
        if body is None:
            return None
        if len(body) < TAG_BYTES:
            raise FrameAuthError("frame too short for its tag")
        return self._aead.open(seq, kind, body)
