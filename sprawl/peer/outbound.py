"""The sending side of the peer channel: one reconnecting sender per peer,
its bounded queue of frames, and the connection it opens (answer the
challenge, check the welcome, write the queue as the kernel takes it).
"""

from __future__ import annotations

import os
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from sprawl.direct_send import send_first
from sprawl.interfaces import Delayed
from sprawl.peer.frames import (
    CHALLENGE,
    HELLO,
    MAX_HELLO,
    NONCE_BYTES,
    REFUSED,
    WELCOME,
    FrameDecoder,
    FrameSealer,
    HandshakeError,
    VersionRefused,
    check_latched,
    check_welcome,
    encode_frame,
    make_hello,
    read_refused,
    session_key,
)

if TYPE_CHECKING:
    from sprawl.peer.tcp import PeerChannel

#: Failed attempts after which a sender that never connected and has nothing
#: to send stops dialling (until a frame or a probe asks again).
QUIET_AFTER = 8

#: Frames a sender hands straight to its socket (:func:`send_first`) within
#: :data:`DIRECT_WINDOW` seconds; later ones in the window go through the
#: transport's buffer, and with it every frame after them in the same reactor
#: turn (a direct send needs an empty buffer): a turn that sends a peer
#: thousands of frames costs a few ``send`` calls more, not thousands.
DIRECT_PER_WINDOW = 4
DIRECT_WINDOW = 0.001

#: The clock of the direct sends' window (a test may replace it).
_clock = time.monotonic


def no_delay(transport: Any) -> None:
    """Disable Nagle on the TCP socket (under TLS: on the transport below it)."""
    t = getattr(transport, "transport", None) if not hasattr(transport, "setTcpNoDelay") else transport
    if t is not None and hasattr(t, "setTcpNoDelay"):
        t.setTcpNoDelay(True)


def source_binding(source: str | None, host: str) -> dict[str, Any]:
    """``connectTCP``'s ``bindAddress`` argument for a connection to ``host``
    that must leave from ``source`` (none when ``source`` is None, or is
    ``host`` itself: the OS takes that address anyway, and binding the port
    first would let the kernel hand out a dead peer's odd-numbered port on
    the same address -- ``bind`` takes odd ports, ``connect`` even ones --
    and open a connection to itself)."""
    if source is None or source == host:
        return {}
    return {"bindAddress": (source, 0)}


def is_self_connection(transport: Any) -> bool:
    """Whether ``transport``'s two ends are one address and port (a TCP
    connection to itself)."""
    t: Any = transport if hasattr(transport, "getHost") else getattr(transport, "transport", None)
    try:
        here, there = t.getHost(), t.getPeer()
        return (here.host, here.port) == (there.host, there.port)
    except Exception:
        return False


@implementer(IPushProducer)
class Outbound(Protocol):
    """A connection this node opened to ``sender.peer``: answers the challenge,
    checks the welcome, then writes the sender's queue, pausing while the
    kernel buffer is full."""

    transport: Any

    def __init__(self, sender: Sender) -> None:
        self.sender = sender
        self.decoder = FrameDecoder(MAX_HELLO)
        self.ready = False
        self.paused = False
        self.nonce = os.urandom(NONCE_BYTES)
        self.challenge: bytes | None = None
        self.sealer: FrameSealer | None = None
        self._timeout: Delayed | None = None
        self._failed = False

    def connectionMade(self) -> None:
        t: Any = self.transport
        if is_self_connection(t):
            # A TCP "simultaneous open" with itself: a dead peer's port on this
            # host taken as this connection's own local port.  Nothing would
            # ever answer; it is a refusal.
            self.sender.channel.stats.handshake_failures += 1
            t.abortConnection()
            return
        no_delay(t)
        t.registerProducer(self, True)
        ch = self.sender.channel
        self._timeout = ch.reactor.callLater(ch.handshake_timeout, self._expire)

    def _expire(self) -> None:
        self._timeout = None
        if not self.ready:
            self._fail("no welcome in time")

    def _fail(self, why: str, version: bool = False) -> None:
        ch = self.sender.channel
        ch.stats.handshake_failures += 1
        if not self._failed:
            self._failed = True
            what = f"peer connection to {self.sender.peer} failed its handshake: {why}"
            if version:
                ch.log_version_refusal(what)
            else:
                ch.warn_refused(what)
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
                    theirs = check_welcome(
                        payload, self.sender.peer, ch.node_id, self.challenge, self.nonce, ch.key
                    )
                    ch.check_certificate(self.transport, self.sender.peer)
                    check_latched(self.sender.peer, theirs.features, ch.latched_features())
                except VersionRefused as e:
                    self._fail(str(e), version=True)
                    return
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
                self.sender.on_connected(self)
            elif kind == REFUSED and not self.ready:
                self._fail(f"refused by {self.sender.peer}: {read_refused(payload)}", version=True)
                return
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


class OutboundFactory(ClientFactory):
    noisy = False

    def __init__(self, sender: Sender) -> None:
        self.sender = sender

    def buildProtocol(self, addr: Any) -> Outbound:
        return Outbound(self.sender)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.sender._failed(reason)


class Sender:
    """Frames bound for one peer, and the connection that carries them."""

    def __init__(self, channel: PeerChannel, peer: str) -> None:
        self.channel = channel
        self.peer = peer
        self.queue: deque[tuple[int, bytes]] = deque()
        self.queued_bytes = 0
        self.proto: Outbound | None = None
        self.connecting = False
        self.failures = 0
        self.retry: Delayed | None = None
        self.closed = False
        #: Whether a connection to this peer ever completed its handshake.
        self.ever_connected = False
        #: A probe asked for a connection (a sender with nothing to send otherwise
        #: stops dialling a peer that never answered: see :meth:`_retry`).
        self.wanted = False
        #: Frames sent straight to the socket (:func:`send_first`) in the window
        #: that began at ``_direct_since`` (:data:`DIRECT_PER_WINDOW`).
        self._direct = 0
        self._direct_since = float("-inf")

    def send(self, kind: int, payload: bytes) -> bool:
        ch = self.channel
        size = len(payload) + ch.frame_overhead
        if len(self.queue) >= ch.queue_frames or self.queued_bytes + size > ch.queue_bytes:
            ch.stats.frames_dropped_queue += 1
            return False
        p = self.proto
        if p is not None and p.ready and not p.paused and not self.queue:
            # Nothing waits before it: the frame goes to the transport as
            # :meth:`_flush` would hand it (the same bytes, in order), without a
            # pass through the queue -- every frame on the replicated publish's
            # path (~4 a message on the leader; issue 16, qpath43).
            t = p.transport
            data = p.frame(kind, payload)
            sent = 0
            now = _clock()
            if now - self._direct_since >= DIRECT_WINDOW:
                self._direct_since, self._direct = now, 0
            if self._direct < DIRECT_PER_WINDOW:
                # (at most DIRECT_PER_WINDOW a window: a turn that sends a peer
                # many frames -- thousands of partitions' under load -- sends the
                # rest from the transport's buffer, a few send calls, as before)
                sent = send_first(t, data)
                self._direct += sent > 0
            if sent < len(data):
                t.write(data[sent:] if sent else data)
            ch.stats.frames_sent += 1
            return True
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
        kw = source_binding(ch.source, addr[0])
        if ch.client_tls is not None:
            ch.reactor.connectSSL(
                addr[0], addr[1], OutboundFactory(self), ch.client_tls(addr[0]), timeout=5, **kw
            )
        else:
            ch.reactor.connectTCP(addr[0], addr[1], OutboundFactory(self), timeout=5, **kw)

    def on_connected(self, proto: Outbound) -> None:
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

    def _lost(self, proto: Outbound) -> None:
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
