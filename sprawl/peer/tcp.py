"""The TCP peer channel adapter: an acceptor for incoming frames and one
reconnecting sender per peer (see :mod:`sprawl.peer.frames` for the wire).

Sending never blocks and never grows without bound: frames wait in a
per-peer queue of at most ``queue_frames`` frames / ``queue_bytes`` bytes
while the connection is being made or the kernel buffer is full; beyond
that they are dropped and counted (Raft and replication retransmit).  A
frame larger than its kind's limit is never queued: the sender is told
(``False``), it is counted and logged.  A peer that cannot be reached is
retried with capped exponential backoff and jitter, and ``on_unreachable``
tells the owner so Raft stops pipelining.

Accepting is bounded too: at most ``max_inbound`` connections, of which at
most ``max_unauthenticated`` still in their handshake (a new one past that
closes the oldest of them), each with ``handshake_timeout`` seconds to say
hello.  With a cluster CA both sides check that the peer's certificate
names the node id it claims (its common name or a DNS subject alternative
name), so a certificate of the CA vouches for one node only.
"""

from __future__ import annotations

import os
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sprawl.peer.frames import (
    CHALLENGE,
    HELLO,
    MAX_FRAME,
    MAX_HELLO,
    NONCE_BYTES,
    TAG_BYTES,
    WELCOME,
    FrameAuthError,
    FrameDecoder,
    FrameOpener,
    FrameSealer,
    HandshakeError,
    check_hello,
    check_welcome,
    encode_frame,
    frame_limits,
    make_hello,
    make_welcome,
    session_key,
)

log = Logger()

FrameHandler = Callable[[str, bytes], None]

#: Failed attempts after which a sender that never connected and has nothing
#: to send stops dialling (until a frame or a probe asks again).
QUIET_AFTER = 8


def _no_delay(transport: Any) -> None:
    """Disable Nagle on the TCP socket (under TLS: on the transport below it)."""
    t = getattr(transport, "transport", None) if not hasattr(transport, "setTcpNoDelay") else transport
    if t is not None and hasattr(t, "setTcpNoDelay"):
        t.setTcpNoDelay(True)


class PeerStats:
    """Counters the metrics endpoint reads."""

    def __init__(self) -> None:
        self.frames_sent = 0
        self.frames_received = 0
        self.frames_dropped_queue = 0
        self.frames_dropped_oversize = 0
        self.frames_unhandled = 0
        self.handshake_failures = 0
        self.connects = 0
        #: Frames refused on receipt because their tag failed (the connection is closed).
        self.frames_auth_failed = 0
        #: Frames this node refused to send: larger than their kind's limit.
        self.frames_too_large = 0
        #: Inbound connections closed at once (over max_inbound) or evicted in their handshake.
        self.connections_refused = 0


class _Inbound(Protocol):
    """An accepted connection: challenge, hello, welcome, then frames to handlers."""

    transport: Any

    def __init__(self, channel: PeerChannel) -> None:
        self.channel = channel
        self.decoder = FrameDecoder(channel.max_frame, channel.limits, keep_skipped=True)
        self.peer: str | None = None
        self.challenge = os.urandom(NONCE_BYTES)
        self.opener: FrameOpener | None = None
        self._timeout: Any = None
        self._head = b""
        self._sized = False
        self._closed = False
        self._started = 0.0

    def connectionMade(self) -> None:
        t: Any = self.transport
        ch = self.channel
        if len(ch._inbound) >= ch.max_inbound:
            ch.stats.connections_refused += 1
            ch._warn_refused(f"refused a peer connection: {len(ch._inbound)} are open")
            self._closed = True
            t.abortConnection()
            return
        pending = [p for p in ch._inbound if p.peer is None]
        if len(pending) >= ch.max_unauthenticated:
            # Evict the oldest connection still in its handshake: a peer that
            # completes one takes a round trip, a flood waits for the timeout.
            oldest = min(pending, key=lambda p: p._started)
            ch.stats.connections_refused += 1
            ch._warn_refused(f"closed the oldest of {len(pending)} peer connections still in their handshake")
            oldest._abort()
        self._started = time.monotonic()
        _no_delay(t)
        t.write(encode_frame(CHALLENGE, self.challenge))
        self._timeout = ch.reactor.callLater(ch.handshake_timeout, self._expire)
        ch._inbound.add(self)

    def _abort(self) -> None:
        self._closed = True
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
        self.channel._inbound.discard(self)
        self.transport.abortConnection()

    def _expire(self) -> None:
        self._timeout = None
        if self.peer is None and not self._closed:
            self.channel.stats.handshake_failures += 1
            self.channel._warn_refused(
                f"peer connection from {self.transport.getPeer()} sent no hello in time"
            )
            self._abort()  # (a TLS close would wait for a handshake that never came)

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        if self.peer is None and not self._sized:
            # The first frame must be a hello: refuse a larger one by its
            # declared length, before buffering anything of it.
            self._head += data[: 4 - len(self._head)]
            if len(self._head) < 4:
                self.decoder.feed(data)
                return
            self._sized = True
            if int.from_bytes(self._head, "big") > MAX_HELLO:
                self._refuse("first frame is too large to be a hello")
                return
        before = self.decoder.dropped
        frames = self.decoder.feed(data)
        if self.decoder.dropped != before:
            self.channel.stats.frames_dropped_oversize += self.decoder.dropped - before
        ch = self.channel
        for kind, body in frames:
            if self._closed:
                return
            if self.peer is None:
                if kind != HELLO or body is None:
                    self._refuse("first frame is not a hello")
                    return
                self._hello(body)
                continue
            payload = body
            if self.opener is not None:
                try:
                    payload = self.opener.open(kind, body)
                except FrameAuthError as e:
                    ch.stats.frames_auth_failed += 1
                    log.warn(
                        "closing the peer connection from {peer} at {addr}: {why}",
                        peer=self.peer,
                        addr=str(self.transport.getPeer()),
                        why=str(e),
                    )
                    self._abort()
                    return
            if payload is None:
                continue  # skipped as oversized (counted)
            ch.stats.frames_received += 1
            handler = ch.handlers.get(kind)
            if handler is None:
                ch.stats.frames_unhandled += 1
                continue
            try:
                handler(self.peer, payload)
            except Exception:
                log.failure("peer frame handler failed (kind {kind}, from {peer})", kind=kind, peer=self.peer)

    def _hello(self, body: bytes) -> None:
        ch = self.channel
        try:
            hello = check_hello(body, self.challenge, ch.key, ch.node_id)
            ch._check_certificate(self.transport, hello.node_id)
        except HandshakeError as e:
            self._refuse(str(e))
            return
        self.peer = hello.node_id
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
        if ch.key:
            self.opener = FrameOpener(
                session_key(ch.key, self.challenge, hello.nonce, hello.node_id, ch.node_id)
            )
        self.transport.write(
            encode_frame(
                WELCOME, make_welcome(ch.node_id, hello.node_id, self.challenge, hello.nonce, ch.key)
            )
        )

    def _refuse(self, why: str) -> None:
        self.channel.stats.handshake_failures += 1
        self.channel._warn_refused(f"refused peer connection from {self.transport.getPeer()}: {why}")
        self._abort()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self._closed = True
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self.channel._inbound.discard(self)


@implementer(IPushProducer)
class _Outbound(Protocol):
    """A connection this node opened to ``sender.peer``: answers the challenge,
    checks the welcome, then writes the sender's queue, pausing while the
    kernel buffer is full."""

    transport: Any

    def __init__(self, sender: _Sender) -> None:
        self.sender = sender
        self.decoder = FrameDecoder(MAX_HELLO)
        self.ready = False
        self.paused = False
        self.nonce = os.urandom(NONCE_BYTES)
        self.challenge: bytes | None = None
        self.sealer: FrameSealer | None = None
        self._timeout: Any = None
        self._failed = False

    def connectionMade(self) -> None:
        t: Any = self.transport
        _no_delay(t)
        t.registerProducer(self, True)
        ch = self.sender.channel
        self._timeout = ch.reactor.callLater(ch.handshake_timeout, self._expire)

    def _expire(self) -> None:
        self._timeout = None
        if not self.ready:
            self._fail("no welcome in time")

    def _fail(self, why: str) -> None:
        ch = self.sender.channel
        ch.stats.handshake_failures += 1
        if not self._failed:
            self._failed = True
            ch._warn_refused(f"peer connection to {self.sender.peer} failed its handshake: {why}")
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._failed:
            return
        ch = self.sender.channel
        for kind, payload in self.decoder.feed(data):
            if payload is None:
                continue
            if kind == CHALLENGE and self.challenge is None and len(payload) == NONCE_BYTES:
                self.challenge = payload
                hello = make_hello(ch.node_id, self.sender.peer, payload, self.nonce, ch.key)
                self.transport.write(encode_frame(HELLO, hello))
            elif kind == WELCOME and self.challenge is not None and not self.ready:
                try:
                    check_welcome(payload, self.sender.peer, ch.node_id, self.challenge, self.nonce, ch.key)
                    ch._check_certificate(self.transport, self.sender.peer)
                except HandshakeError as e:
                    self._fail(str(e))
                    return
                if self._timeout is not None and self._timeout.active():
                    self._timeout.cancel()
                self._timeout = None
                if ch.key:
                    key = session_key(ch.key, self.challenge, self.nonce, ch.node_id, self.sender.peer)
                    self.sealer = FrameSealer(key)
                self.ready = True
                first = self.sender.peer not in ch.proven
                ch.proven[self.sender.peer] = ch.reactor.seconds()
                if first:
                    ch.on_proven(self.sender.peer)
                self.sender._connected(self)
            else:
                self._fail(f"unexpected frame of kind {kind} in the handshake")
                return

    def frame(self, kind: int, payload: bytes) -> bytes:
        """One frame's bytes on this connection (tagged with a key)."""
        if self.sealer is not None:
            return self.sealer.seal(kind, payload)
        return encode_frame(kind, payload)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self.ready:
            self.sender._flush()

    def stopProducing(self) -> None:
        self.paused = True

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
        self.sender._lost(self)


class _OutboundFactory(ClientFactory):
    noisy = False

    def __init__(self, sender: _Sender) -> None:
        self.sender = sender

    def buildProtocol(self, addr: Any) -> _Outbound:
        return _Outbound(self.sender)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.sender._failed(reason)


class _Sender:
    """Frames bound for one peer, and the connection that carries them."""

    def __init__(self, channel: PeerChannel, peer: str) -> None:
        self.channel = channel
        self.peer = peer
        self.queue: deque[tuple[int, bytes]] = deque()
        self.queued_bytes = 0
        self.proto: _Outbound | None = None
        self.connecting = False
        self.failures = 0
        self.retry: Any = None
        self.closed = False
        #: Whether a connection to this peer ever completed its handshake.
        self.ever_connected = False
        #: A probe asked for a connection (a sender with nothing to send otherwise
        #: stops dialling a peer that never answered: see :meth:`_retry`).
        self.wanted = False

    def send(self, kind: int, payload: bytes) -> bool:
        ch = self.channel
        size = len(payload) + ch.frame_overhead
        if len(self.queue) >= ch.queue_frames or self.queued_bytes + size > ch.queue_bytes:
            ch.stats.frames_dropped_queue += 1
            return False
        self.queue.append((kind, payload))
        self.queued_bytes += size
        if self.proto is not None and self.proto.ready:
            if not self.proto.paused:
                self._flush()
        else:
            self._connect()
        return True

    def _flush(self) -> None:
        p = self.proto
        if p is None:
            return
        t: Any = p.transport
        chunks = []
        overhead = self.channel.frame_overhead
        while self.queue and not p.paused:
            kind, payload = self.queue.popleft()
            self.queued_bytes -= len(payload) + overhead
            chunks.append(p.frame(kind, payload))
            self.channel.stats.frames_sent += 1
            if len(chunks) >= 64:
                t.writeSequence(chunks)
                chunks = []
        if chunks:
            t.writeSequence(chunks)

    def _connect(self) -> None:
        if self.connecting or self.proto is not None or self.closed or self.retry is not None:
            return
        addr = self.channel.addresses.get(self.peer)
        if addr is None:
            return
        self.connecting = True
        ch = self.channel
        ch.stats.connects += 1
        if ch.client_tls is not None:
            ch.reactor.connectSSL(addr[0], addr[1], _OutboundFactory(self), ch.client_tls(addr[0]), timeout=5)
        else:
            ch.reactor.connectTCP(addr[0], addr[1], _OutboundFactory(self), timeout=5)

    def _connected(self, proto: _Outbound) -> None:
        self.connecting = False
        self.failures = 0
        self.ever_connected = True
        self.wanted = False
        self.proto = proto
        if self.closed:
            proto.transport.loseConnection()
            return
        self._flush()

    def _failed(self, reason: Failure) -> None:
        self.connecting = False
        self._gone()

    def _lost(self, proto: _Outbound) -> None:
        was_ready = proto.ready
        if self.proto is proto:
            self.proto = None
        self.connecting = False
        if was_ready:
            self.failures = 0
        self._gone()

    def _gone(self) -> None:
        """The connection failed or ended: drop what waits, tell the owner, retry later."""
        self.failures += 1
        dropped = len(self.queue)
        self.queue.clear()
        self.queued_bytes = 0
        self.channel.stats.frames_dropped_queue += dropped
        if self.closed:
            return
        self.channel.on_unreachable(self.peer)
        ch = self.channel
        delay = min(ch.backoff_max, ch.backoff_base * (2 ** min(self.failures - 1, 16)))
        delay *= 0.5 + ch.rng.random() / 2
        if self.retry is None:
            self.retry = ch.reactor.callLater(delay, self._retry)

    def _retry(self) -> None:
        self.retry = None
        idle = not self.queue and not self.wanted and not self.ever_connected
        if idle and self.failures >= QUIET_AFTER:
            # Never reached and nothing to say (an address gossip gave that
            # nobody answers at): stop dialling until a frame or a probe comes,
            # keeping the backoff.
            ch = self.channel
            self.retry = ch.reactor.callLater(ch.backoff_max, self._retry)
            return
        self.wanted = False
        self._connect()

    def close(self) -> None:
        self.closed = True
        if self.retry is not None and self.retry.active():
            self.retry.cancel()
        self.retry = None
        if self.proto is not None:
            self.proto.transport.loseConnection()


class PeerChannel:
    """This node's end of the peer channel.

    ``handlers[kind]`` receives ``(peer_node_id, payload)`` for frames of that
    kind; :meth:`send` queues a frame for a peer whose address was given with
    :meth:`set_address`.
    """

    def __init__(
        self,
        node_id: str,
        reactor: Any,
        rng: random.Random,
        key: bytes | None = None,
        *,
        max_frame: int = MAX_FRAME,
        limits: dict[int, int] | None = None,
        queue_frames: int = 4096,
        queue_bytes: int = 64 << 20,
        backoff_base: float = 0.05,
        backoff_max: float = 2.0,
        handshake_timeout: float = 5.0,
        max_inbound: int = 256,
        max_unauthenticated: int = 32,
        server_tls: Any = None,
        client_tls: Callable[[str], Any] | None = None,
        peer_names: Callable[[Any], set[str]] | None = None,
    ) -> None:
        self.node_id = node_id
        self.reactor = reactor
        self.rng = rng
        self.key = key
        self.max_frame = max_frame
        #: The largest frame of each kind taken (and sent), kind byte and tag included.
        self.limits = dict(limits) if limits is not None else frame_limits(max_frame=max_frame)
        #: Bytes a frame adds to its payload on the wire.
        self.frame_overhead = 5 + (TAG_BYTES if key else 0)
        self.max_inbound = max_inbound
        self.max_unauthenticated = max_unauthenticated
        self.queue_frames = queue_frames
        self.queue_bytes = queue_bytes
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.handshake_timeout = handshake_timeout
        #: TLS: the listener's context factory, and a function giving the
        #: client context factory for a peer host (both None: plain TCP).
        self.server_tls = server_tls
        self.client_tls = client_tls
        #: With TLS: the node ids a peer's certificate names (from its transport).
        self.peer_names = peer_names
        #: Peers this node reached at their address and whose identity the
        #: handshake checked (key, certificate, or -- with neither -- their
        #: own word), with when it last happened.
        self.proven: dict[str, float] = {}
        self._warned_at = float("-inf")
        self._warned = 0
        self.handlers: dict[int, FrameHandler] = {}
        self.addresses: dict[str, tuple[str, int]] = {}
        self.senders: dict[str, _Sender] = {}
        self.stats = PeerStats()
        self._inbound: set[_Inbound] = set()
        #: Called with a peer's node id when its connection fails or ends.
        self.on_unreachable: Callable[[str], None] = lambda peer: None
        #: Called with a peer's node id the first time a handshake reached it.
        self.on_proven: Callable[[str], None] = lambda peer: None

    def server_factory(self) -> Any:
        """The factory for the listening port (TLS-wrapped when ``server_tls`` is set)."""
        channel = self

        class _InboundFactory(Factory):
            noisy = False

            def buildProtocol(self, addr: Any) -> _Inbound:
                return _Inbound(channel)

        if self.server_tls is None:
            return _InboundFactory()
        from twisted.protocols.tls import TLSMemoryBIOFactory

        inner: Any = _InboundFactory()
        wrapped = TLSMemoryBIOFactory(self.server_tls, False, inner)
        wrapped.noisy = False
        return wrapped

    def set_address(self, peer: str, host: str, port: int) -> None:
        """Where ``peer`` listens.  A changed address drops the old connection."""
        old = self.addresses.get(peer)
        self.addresses[peer] = (host, port)
        s = self.senders.get(peer)
        if old is not None and old != (host, port) and s is not None and s.proto is not None:
            s.proto.transport.loseConnection()

    def fits(self, kind: int, size: int) -> bool:
        """Whether a payload of ``size`` bytes of ``kind`` fits a frame peers take."""
        return size + self.frame_overhead - 4 <= self.limits.get(kind, MAX_FRAME)

    def send(self, peer: str, kind: int, payload: bytes) -> bool:
        """Queue a frame for ``peer``; False when it was dropped (no address,
        queue full, or larger than its kind's limit -- counted and logged)."""
        if not self.fits(kind, len(payload)):
            self.stats.frames_too_large += 1
            log.error(
                "not sending a peer frame of kind {kind} to {peer}: {size} bytes, over the limit of "
                "{limit} (a producer did not bound it)",
                kind=kind,
                peer=peer,
                size=len(payload),
                limit=self.limits.get(kind, MAX_FRAME),
            )
            return False
        if peer not in self.addresses:
            self.stats.frames_dropped_queue += 1
            return False
        s = self.senders.get(peer)
        if s is None:
            s = self.senders[peer] = _Sender(self, peer)
        return s.send(kind, payload)

    def probe(self, peer: str) -> None:
        """Open the connection to ``peer`` (if its address is known) without
        sending anything: the handshake proves who is there (:attr:`proven`)."""
        if peer not in self.addresses:
            return
        s = self.senders.get(peer)
        if s is None:
            s = self.senders[peer] = _Sender(self, peer)
        s.wanted = True
        s._connect()

    def _check_certificate(self, transport: Any, node_id: str) -> None:
        """With TLS: the peer's certificate must name ``node_id`` (HandshakeError)."""
        if self.peer_names is None:
            return
        try:
            names = self.peer_names(transport)
        except Exception as e:
            raise HandshakeError(f"cannot read the peer certificate: {e}") from None
        if node_id not in names:
            shown = ", ".join(sorted(names)[:4]) or "nothing"
            raise HandshakeError(f"certificate names {shown}, not the node id {node_id!r}")

    def _warn_refused(self, what: str) -> None:
        """Log refused connections at most once a second (a flood must not flood the log)."""
        now = time.monotonic()
        self._warned += 1
        if now - self._warned_at >= 1.0:
            self._warned_at = now
            log.warn("{what} ({count} so far)", what=what, count=self._warned)

    def connected(self, peer: str) -> bool:
        """Whether the outbound connection to ``peer`` is up."""
        s = self.senders.get(peer)
        return s is not None and s.proto is not None and s.proto.ready

    def close(self) -> defer.Deferred[None]:
        """Close every connection and stop reconnecting."""
        for s in self.senders.values():
            s.close()
        for p in list(self._inbound):
            p.transport.loseConnection()
        return defer.succeed(None)
