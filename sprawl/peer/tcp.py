"""The TCP peer channel adapter: an acceptor for incoming frames and one
reconnecting sender per peer (see :mod:`sprawl.peer.frames` for the wire).

Sending never blocks and never grows without bound: frames wait in a
per-peer queue of at most ``queue_frames`` frames / ``queue_bytes`` bytes
while the connection is being made or the kernel buffer is full; beyond
that they are dropped and counted (Raft and replication retransmit).  A
peer that cannot be reached is retried with capped exponential backoff and
jitter, and ``on_unreachable`` tells the owner so Raft stops pipelining.
"""

from __future__ import annotations

import os
import random
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
    FrameDecoder,
    HandshakeError,
    check_hello,
    encode_frame,
    make_hello,
)

log = Logger()

FrameHandler = Callable[[str, bytes], None]


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


class _Inbound(Protocol):
    """An accepted connection: challenge, hello, then frames to handlers."""

    transport: Any

    def __init__(self, channel: PeerChannel) -> None:
        self.channel = channel
        self.decoder = FrameDecoder(channel.max_frame)
        self.peer: str | None = None
        self.challenge = os.urandom(16)
        self._timeout: Any = None
        self._head = b""
        self._sized = False

    def connectionMade(self) -> None:
        t: Any = self.transport
        _no_delay(t)
        t.write(encode_frame(CHALLENGE, self.challenge))
        self._timeout = self.channel.reactor.callLater(self.channel.handshake_timeout, self._expire)
        self.channel._inbound.add(self)

    def _expire(self) -> None:
        self._timeout = None
        if self.peer is None:
            self.channel.stats.handshake_failures += 1
            log.warn("peer connection from {addr} sent no hello in time", addr=str(self.transport.getPeer()))
            self.transport.abortConnection()  # (a TLS close would wait for a handshake that never came)

    def dataReceived(self, data: bytes) -> None:
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
        for kind, payload in frames:
            if self.peer is None:
                if kind != HELLO:
                    self._refuse("first frame is not a hello")
                    return
                try:
                    self.peer = check_hello(payload, self.challenge, ch.key)
                except HandshakeError as e:
                    self._refuse(str(e))
                    return
                if self._timeout is not None and self._timeout.active():
                    self._timeout.cancel()
                self._timeout = None
                continue
            ch.stats.frames_received += 1
            handler = ch.handlers.get(kind)
            if handler is None:
                ch.stats.frames_unhandled += 1
                continue
            try:
                handler(self.peer, payload)
            except Exception:
                log.failure("peer frame handler failed (kind {kind}, from {peer})", kind=kind, peer=self.peer)

    def _refuse(self, why: str) -> None:
        self.channel.stats.handshake_failures += 1
        log.warn("refused peer connection from {addr}: {why}", addr=str(self.transport.getPeer()), why=why)
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self.channel._inbound.discard(self)


@implementer(IPushProducer)
class _Outbound(Protocol):
    """A connection this node opened to ``sender.peer``: answers the challenge,
    then writes the sender's queue, pausing while the kernel buffer is full."""

    transport: Any

    def __init__(self, sender: _Sender) -> None:
        self.sender = sender
        self.decoder = FrameDecoder(1024)
        self.ready = False
        self.paused = False

    def connectionMade(self) -> None:
        t: Any = self.transport
        _no_delay(t)
        t.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        for kind, payload in self.decoder.feed(data):
            if kind == CHALLENGE and not self.ready:
                ch = self.sender.channel
                self.transport.write(encode_frame(HELLO, make_hello(ch.node_id, payload, ch.key)))
                self.ready = True
                self.sender._connected(self)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self.ready:
            self.sender._flush()

    def stopProducing(self) -> None:
        self.paused = True

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
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
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.proto: _Outbound | None = None
        self.connecting = False
        self.failures = 0
        self.retry: Any = None
        self.closed = False

    def send(self, frame: bytes) -> bool:
        ch = self.channel
        if len(self.queue) >= ch.queue_frames or self.queued_bytes + len(frame) > ch.queue_bytes:
            ch.stats.frames_dropped_queue += 1
            return False
        self.queue.append(frame)
        self.queued_bytes += len(frame)
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
        while self.queue and not p.paused:
            frame = self.queue.popleft()
            self.queued_bytes -= len(frame)
            chunks.append(frame)
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
        queue_frames: int = 4096,
        queue_bytes: int = 64 << 20,
        backoff_base: float = 0.05,
        backoff_max: float = 2.0,
        handshake_timeout: float = 10.0,
        server_tls: Any = None,
        client_tls: Callable[[str], Any] | None = None,
    ) -> None:
        self.node_id = node_id
        self.reactor = reactor
        self.rng = rng
        self.key = key
        self.max_frame = max_frame
        self.queue_frames = queue_frames
        self.queue_bytes = queue_bytes
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.handshake_timeout = handshake_timeout
        #: TLS: the listener's context factory, and a function giving the
        #: client context factory for a peer host (both None: plain TCP).
        self.server_tls = server_tls
        self.client_tls = client_tls
        self.handlers: dict[int, FrameHandler] = {}
        self.addresses: dict[str, tuple[str, int]] = {}
        self.senders: dict[str, _Sender] = {}
        self.stats = PeerStats()
        self._inbound: set[_Inbound] = set()
        #: Called with a peer's node id when its connection fails or ends.
        self.on_unreachable: Callable[[str], None] = lambda peer: None

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

    def send(self, peer: str, kind: int, payload: bytes) -> bool:
        """Queue a frame for ``peer``; False when it was dropped (no address, queue full)."""
        if peer not in self.addresses:
            self.stats.frames_dropped_queue += 1
            return False
        s = self.senders.get(peer)
        if s is None:
            s = self.senders[peer] = _Sender(self, peer)
        return s.send(encode_frame(kind, payload))

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
