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

``version`` is the handshake's own format (2), not the node's release: the
peer *protocol* is negotiated in fields an older node ignores (msgspec skips
unknown fields) -- ``protocol`` and ``min_protocol`` (the newest protocol the
sender speaks and the oldest it still talks to) and ``features`` (what it can
do, see :mod:`sprawl.cluster.features`), authenticated with a key by
``info_mac`` = HMAC-SHA256(K, "hello-info" | c | n | node_id | protocol |
min_protocol | features) (the WELCOME carries the acceptor's, MACed the same
way with "welcome-info").  A hello or welcome without them comes from a node
of protocol 2 (the releases before the negotiation).  Two nodes talk when
their ranges overlap: each refuses a peer whose ``protocol`` is below its own
``min_protocol`` (too old) or whose ``min_protocol`` is above its own
``protocol`` (too new), with :class:`VersionRefused`; the acceptor then sends
a REFUSED frame (``{code, message}``) before closing, so the connector can
log why.

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
from collections.abc import Iterable
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
#: The acceptor's refusal of a hello, ``{code, message}``, sent before it closes.
REFUSED = 8
#: Many replication messages in one frame: a msgpack list of REPLICATION
#: payloads, sent only once every node has ``repl-batch`` (an older node
#: skips a kind it does not know).
REPLICATION_BATCH = 9

#: Largest frame a node accepts by default, of any kind (a Raft snapshot must fit).
MAX_FRAME = 64 << 20
#: Largest hello or welcome (kind byte included): an unauthenticated peer never gets more buffered.
MAX_HELLO = 1024
#: Largest frame of a kind the node does not know.
MAX_UNKNOWN = 64 << 10
#: Version of the handshake's format carried in the hello (2: mutual proof, session tags).
VERSION = 2
#: The peer protocol this build speaks: bumped by every release that changes what
#: nodes say to each other (frames, RPC bodies, Raft commands, gossip metadata).
PROTOCOL = 3
#: The oldest peer protocol this build still talks to: the release before it, so a
#: cluster is upgraded one release at a time.
MIN_PROTOCOL = 2
#: The protocol of a node whose hello or welcome does not say (the releases before it did).
UNSTATED_PROTOCOL = 2
#: What this build can do that older builds could not; a feature is used cluster-wide
#: only once every node has it (:func:`sprawl.cluster.features.feature_gate`).  ``drain``:
#: the ``set_drained`` Raft command (``sprawlctl cluster drain`` is refused until every
#: node can apply it).  ``node-beat``: idle partition leaders send nothing per partition
#: and each node beats the controller once per tick (``NodeBeat``; issue 23) -- until every
#: node has it, leaders heartbeat and beat per partition as before.  ``feature-latch``:
#: the ``latch_features`` Raft command -- features every node has are latched on in the
#: metadata, and a node lacking a latched one is refused (:mod:`sprawl.cluster.features`).
#: ``pipelines``: the ``put_pipeline``/``delete_pipeline`` Raft commands (``PUT
#: /v1/pipelines/P`` is refused until every node can apply them; issue 17).
#: ``epoch-batch``: the controller commits failovers (a dead node's leaderships) in one
#: ``set_partitions`` Raft command -- until every node can apply it, one ``set_partition``
#: per partition.  ``pipeline-reject``: a pipeline's ``on_reject`` other than ``stall``
#: (``skip``, ``dead-letter``), which a node of the release before could not apply.
#: ``repl-batch``: a burst of replication messages to one node (a failover's fences, their
#: answers, the new leaderships' first appends and theirs) goes as one
#: ``REPLICATION_BATCH`` frame per node pair (issue 23) -- until every node has it, one
#: ``REPLICATION`` frame per message.
FEATURES: frozenset[str] = frozenset(
    {
        "disk-state-gossip",
        "drain",
        "epoch-batch",
        "feature-latch",
        "node-beat",
        "peer-refusal",
        "pipelines",
        "pipeline-reject",
        "repl-batch",
    }
)
#: At most this many features, of at most this many characters, are taken from a peer.
MAX_FEATURES = 32
MAX_FEATURE_CHARS = 48
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
        REFUSED: MAX_HELLO,
        RAFT: max_frame,
        REQUEST: data,
        RESPONSE: data,
        REPLICATION: data,
        REPLICATION_BATCH: data,
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
    protocol: int = UNSTATED_PROTOCOL
    min_protocol: int = UNSTATED_PROTOCOL
    features: list[str] = []
    info_mac: bytes = b""


class Welcome(msgspec.Struct, frozen=True):
    """The acceptor's answer to a valid hello."""

    node_id: str
    mac: bytes = b""
    protocol: int = UNSTATED_PROTOCOL
    min_protocol: int = UNSTATED_PROTOCOL
    features: list[str] = []
    info_mac: bytes = b""


class Refused(msgspec.Struct, frozen=True):
    """The acceptor's refusal of a hello (``code``: ``protocol_too_old``,
    ``protocol_too_new``)."""

    code: str
    message: str


_hello_decoder = msgspec.msgpack.Decoder(Hello)
_welcome_decoder = msgspec.msgpack.Decoder(Welcome)
_refused_decoder = msgspec.msgpack.Decoder(Refused)


class HandshakeError(ValueError):
    """A hello or welcome that must not be accepted."""


class VersionRefused(HandshakeError):
    """A peer whose protocol range does not overlap this node's (``code``:
    ``protocol_too_old`` or ``protocol_too_new``, as the peer is)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class PeerVersion:
    """What a peer said of its protocol range and features in the handshake."""

    protocol: int = UNSTATED_PROTOCOL
    min_protocol: int = UNSTATED_PROTOCOL
    features: frozenset[str] = frozenset()


def check_protocol(
    peer: str, theirs: PeerVersion, protocol: int = PROTOCOL, min_protocol: int = MIN_PROTOCOL
) -> None:
    """:class:`VersionRefused` unless ``theirs`` overlaps this node's range."""
    if not 0 <= theirs.min_protocol <= theirs.protocol:
        raise VersionRefused(
            "protocol_invalid",
            f"peer {peer} states protocol {theirs.protocol} below its minimum {theirs.min_protocol}",
        )
    mine = f"this node speaks {min_protocol}..{protocol}"
    if theirs.protocol < min_protocol:
        raise VersionRefused(
            "protocol_too_old",
            f"peer {peer} speaks peer protocol {theirs.min_protocol}..{theirs.protocol}, {mine}: "
            f"it is too old for this node (upgrade it to a release of protocol {min_protocol} or later)",
        )
    if theirs.min_protocol > protocol:
        raise VersionRefused(
            "protocol_too_new",
            f"peer {peer} speaks peer protocol {theirs.min_protocol}..{theirs.protocol}, {mine}: "
            f"it is too new for this node (upgrade this node first, one release at a time)",
        )


def check_latched(peer: str, features: Iterable[str], latched: Iterable[str]) -> None:
    """:class:`VersionRefused` (``features_missing``) when a peer lacks a feature
    the cluster latched on (:mod:`sprawl.cluster.features`): an older release
    started again in an upgraded cluster would fail to apply what the cluster
    now writes, so it is refused at the handshake."""
    missing = sorted(set(latched) - set(features))
    if missing:
        raise VersionRefused(
            "features_missing",
            f"peer {peer} lacks the cluster feature(s) {', '.join(missing)}, latched on once every node "
            "had them (an older release?): run the cluster's release on it",
        )


def _features(names: list[str]) -> frozenset[str]:
    """A peer's feature list, bounded (the hello itself is bounded by MAX_HELLO)."""
    return frozenset(str(n)[:MAX_FEATURE_CHARS] for n in names[:MAX_FEATURES])


def make_refused(e: VersionRefused) -> bytes:
    """The REFUSED payload telling the connector why."""
    return msgspec.msgpack.encode(Refused(e.code, str(e)[:400]))


def read_refused(payload: bytes) -> str:
    """The acceptor's reason from a REFUSED payload (never raises)."""
    try:
        r = _refused_decoder.decode(payload)
    except msgspec.DecodeError:
        return "refused (unreadable reason)"
    return f"{r.code}: {r.message[:400]}"


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


def info_mac(
    key: bytes,
    label: str,
    challenge: bytes,
    nonce: bytes,
    node_id: str,
    protocol: int,
    minimum: int,
    features: list[str],
) -> bytes:
    """HMAC-SHA256 over a hello's or welcome's protocol range and features, for this connection."""
    return _mac(key, "sprawl-peer-" + label, challenge, nonce, node_id, protocol, minimum, features)


def make_hello(node_id: str, to: str, challenge: bytes, nonce: bytes, key: bytes | None) -> bytes:
    """The HELLO payload answering ``challenge``, for the node ``to``."""
    mac = hello_mac(key, challenge, nonce, node_id, to) if key else b""
    feats = sorted(FEATURES)
    imac = (
        info_mac(key, "hello-info", challenge, nonce, node_id, PROTOCOL, MIN_PROTOCOL, feats) if key else b""
    )
    return msgspec.msgpack.encode(
        Hello(node_id, VERSION, mac, nonce, to, PROTOCOL, MIN_PROTOCOL, feats, imac)
    )


def hello_version(h: Hello) -> PeerVersion:
    """The protocol range and features a (checked) hello states."""
    return PeerVersion(h.protocol, h.min_protocol, _features(h.features))


def check_hello(payload: bytes, challenge: bytes, key: bytes | None, me: str) -> Hello:
    """The peer's hello, checked for this connection, or :class:`HandshakeError`
    (:class:`VersionRefused` for a peer too old or too new)."""
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
    stated = (
        h.info_mac or h.protocol != UNSTATED_PROTOCOL or h.min_protocol != UNSTATED_PROTOCOL or h.features
    )
    if key and stated:
        want = info_mac(
            key, "hello-info", challenge, h.nonce, h.node_id, h.protocol, h.min_protocol, h.features
        )
        if not hmac.compare_digest(h.info_mac, want):
            raise HandshakeError("hello's protocol and features fail their MAC")
    check_protocol(h.node_id, hello_version(h))
    return h


def make_welcome(me: str, connector: str, challenge: bytes, nonce: bytes, key: bytes | None) -> bytes:
    """The WELCOME payload the acceptor sends after a valid hello."""
    mac = welcome_mac(key, challenge, nonce, me, connector) if key else b""
    feats = sorted(FEATURES)
    imac = info_mac(key, "welcome-info", challenge, nonce, me, PROTOCOL, MIN_PROTOCOL, feats) if key else b""
    return msgspec.msgpack.encode(Welcome(me, mac, PROTOCOL, MIN_PROTOCOL, feats, imac))


def check_welcome(
    payload: bytes, expected: str, me: str, challenge: bytes, nonce: bytes, key: bytes | None
) -> PeerVersion:
    """Check the acceptor's welcome: it is ``expected``, (with a key) holds the
    key, and speaks a protocol this node talks to; what it states of its
    protocol and features."""
    try:
        w = _welcome_decoder.decode(payload)
    except msgspec.DecodeError as e:
        raise HandshakeError(f"malformed welcome: {e}") from None
    if w.node_id != expected:
        raise HandshakeError(f"reached node {w.node_id[:64]!r} instead of {expected!r}")
    if key and not hmac.compare_digest(w.mac, welcome_mac(key, challenge, nonce, w.node_id, me)):
        raise HandshakeError("peer does not know the cluster key")
    stated = (
        w.info_mac or w.protocol != UNSTATED_PROTOCOL or w.min_protocol != UNSTATED_PROTOCOL or w.features
    )
    if key and stated:
        want = info_mac(
            key, "welcome-info", challenge, nonce, w.node_id, w.protocol, w.min_protocol, w.features
        )
        if not hmac.compare_digest(w.info_mac, want):
            raise HandshakeError("welcome's protocol and features fail their MAC")
    theirs = PeerVersion(w.protocol, w.min_protocol, _features(w.features))
    check_protocol(w.node_id, theirs)
    return theirs


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
