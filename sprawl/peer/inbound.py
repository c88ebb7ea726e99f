"""The accepting side of the peer channel: one connection another node
opened to this one -- challenge, hello, welcome, then frames to the
channel's handlers (the bounds on accepting are the channel's: see
:mod:`sprawl.peer.tcp`).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from sprawl.interfaces import Delayed
from sprawl.peer.frames import (
    CHALLENGE,
    HELLO,
    MAX_HELLO,
    NONCE_BYTES,
    REFUSED,
    WELCOME,
    FrameAuthError,
    FrameDecoder,
    FrameOpener,
    HandshakeError,
    VersionRefused,
    check_hello,
    check_latched,
    encode_frame,
    make_refused,
    make_welcome,
    session_key,
)
from sprawl.peer.outbound import no_delay

if TYPE_CHECKING:
    from sprawl.peer.tcp import PeerChannel

#: The log lines keep the namespace they had before the module was split out.
log = Logger(namespace="sprawl.peer.tcp")


class Inbound(Protocol):
    """An accepted connection: challenge, hello, welcome, then frames to handlers."""

    transport: Any

    def __init__(self, channel: PeerChannel) -> None:
        self.channel = channel
        self.decoder = FrameDecoder(channel.max_frame, channel.limits, keep_skipped=True)
        self.peer: str | None = None
        self.challenge = os.urandom(NONCE_BYTES)
        self.opener: FrameOpener | None = None
        self._timeout: Delayed | None = None
        self._head = b""
        self._sized = False
        self._closed = False
        self.started_at = 0.0

    def connectionMade(self) -> None:
        t: Any = self.transport
        ch = self.channel
        if len(ch.inbound_conns) >= ch.max_inbound:
            ch.stats.connections_refused += 1
            ch.warn_refused(f"refused a peer connection: {len(ch.inbound_conns)} are open")
            self._closed = True
            t.abortConnection()
            return
        pending = [p for p in ch.inbound_conns if p.peer is None]
        if len(pending) >= ch.max_unauthenticated:
            # Evict the oldest connection still in its handshake: a peer that
            # completes one takes a round trip, a flood waits for the timeout.
            oldest = min(pending, key=lambda p: p.started_at)
            ch.stats.connections_refused += 1
            ch.warn_refused(f"closed the oldest of {len(pending)} peer connections still in their handshake")
            oldest.abort_handshake()
        self.started_at = time.monotonic()
        no_delay(t)
        t.write(encode_frame(CHALLENGE, self.challenge))
        self._timeout = ch.reactor.callLater(ch.handshake_timeout, self._expire)
        ch.inbound_conns.add(self)

    def abort_handshake(self) -> None:
        self._closed = True
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
        self.channel.inbound_conns.discard(self)
        self.transport.abortConnection()

    def _expire(self) -> None:
        self._timeout = None
        if self.peer is None and not self._closed:
            self.channel.stats.handshake_failures += 1
            self.channel.warn_refused(
                f"peer connection from {self.transport.getPeer()} sent no hello in time"
            )
            self.abort_handshake()  # (a TLS close would wait for a handshake that never came)

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
                    self.abort_handshake()
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
            ch.check_certificate(self.transport, hello.node_id)
            check_latched(hello.node_id, hello.features, ch.latched_features())
        except VersionRefused as e:
            self._refuse_version(e)
            return
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
        self.channel.warn_refused(f"refused peer connection from {self.transport.getPeer()}: {why}")
        self.abort_handshake()

    def _refuse_version(self, e: VersionRefused) -> None:
        """A peer too old or too new: say so in the log (once a minute for the
        same reason) and to the peer (a REFUSED frame), then close."""
        ch = self.channel
        ch.stats.handshake_failures += 1
        addr = self.transport.getPeer()
        where = f"{getattr(addr, 'host', addr)}:{getattr(addr, 'port', '')}"
        ch.log_version_refusal(f"refused peer connection from {where}: {e}")
        self._closed = True
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
        ch.inbound_conns.discard(self)
        self.transport.write(encode_frame(REFUSED, make_refused(e)))
        self.transport.loseConnection()  # (after the REFUSED frame is written)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        closed_here, self._closed = self._closed, True
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self.channel.inbound_conns.discard(self)
        if self.peer is not None and not closed_here and not self.channel.closing:
            # The peer's end closed (a kill closes every socket of it): its
            # owner probes the peer's port now (``on_inbound_lost``), as when
            # an outbound connection to it ends -- an inbound-only peer was
            # otherwise probed only at its live-probe turn (issue 23).
            try:
                self.channel.on_inbound_lost(self.peer)
            except Exception:
                log.failure("the peer channel's on_inbound_lost failed (from {peer})", peer=self.peer)
