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

import random
import re
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from sprawl.interfaces import PeerReactor
from sprawl.peer.frames import MAX_FRAME, TAG_BYTES, HandshakeError, frame_limits
from sprawl.peer.inbound import Inbound
from sprawl.peer.outbound import Sender

if TYPE_CHECKING:
    from twisted.internet.ssl import CertificateOptions

log = Logger()

FrameHandler = Callable[[str, bytes], None]


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


class PeerChannel:
    """This node's end of the peer channel.

    ``handlers[kind]`` receives ``(peer_node_id, payload)`` for frames of that
    kind; :meth:`send` queues a frame for a peer whose address was given with
    :meth:`set_address`.
    """

    def __init__(
        self,
        node_id: str,
        reactor: PeerReactor,
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
        server_tls: CertificateOptions | None = None,
        client_tls: Callable[[str], CertificateOptions] | None = None,
        peer_names: Callable[[Any], set[str]] | None = None,
        latched_features: Callable[[], Collection[str]] = lambda: (),
        source: str | None = None,
    ) -> None:
        self.node_id = node_id
        #: The local address this node's connections to its peers leave from
        #: (the peer port's bind address when it names one interface), or None
        #: for the OS's choice.  A node bound to one address of a multi-homed
        #: host talks to its peers from it, as it listens on it: a firewall
        #: rule between two nodes' addresses covers both directions.
        self.source = source
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
        #: Version refusals logged: reason (with the address's port masked) -> when.
        self._version_logged: dict[str, float] = {}
        self.handlers: dict[int, FrameHandler] = {}
        self.addresses: dict[str, tuple[str, int]] = {}
        self.senders: dict[str, Sender] = {}
        self.stats = PeerStats()
        self.inbound_conns: set[Inbound] = set()
        #: The features the cluster latched on (the composition root reads them
        #: from the Raft metadata): a peer lacking one is refused at the handshake.
        self.latched_features = latched_features
        #: Called with a peer's node id when its connection fails or ends.
        self.on_unreachable: Callable[[str], None] = lambda peer: None
        #: Called with a peer's node id when a connection it opened to this
        #: node (past its hello) ends other than by this node closing it: a
        #: killed peer's sockets close, so this node probes its port at once
        #: even when it has no connection of its own to it (issue 23).
        self.on_inbound_lost: Callable[[str], None] = lambda peer: None
        #: Set by :meth:`close` (its own connections ending are no news).
        self.closing = False
        #: Called with a peer's node id the first time a handshake reached it.
        self.on_proven: Callable[[str], None] = lambda peer: None

    def server_factory(self) -> Any:
        """The factory for the listening port (TLS-wrapped when ``server_tls`` is set)."""
        channel = self

        class _InboundFactory(Factory):
            noisy = False

            def buildProtocol(self, addr: Any) -> Inbound:
                return Inbound(channel)

        if self.server_tls is None:
            return _InboundFactory()
        from twisted.protocols.tls import TLSMemoryBIOFactory

        inner: Any = _InboundFactory()
        # (CertificateOptions implements IOpenSSLContextFactory: a zope
        # declaration the type checker does not read.)
        options: Any = self.server_tls
        wrapped = TLSMemoryBIOFactory(options, False, inner)
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
            s = self.senders[peer] = Sender(self, peer)
        return s.send(kind, payload)

    def probe(self, peer: str) -> None:
        """Open the connection to ``peer`` (if its address is known) without
        sending anything: the handshake proves who is there (:attr:`proven`)."""
        if peer not in self.addresses:
            return
        s = self.senders.get(peer)
        if s is None:
            s = self.senders[peer] = Sender(self, peer)
        s.wanted = True
        s._connect()

    def check_certificate(self, transport: Any, node_id: str) -> None:
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

    def warn_refused(self, what: str) -> None:
        """Log refused connections at most once a second (a flood must not flood the log)."""
        now = time.monotonic()
        self._warned += 1
        if now - self._warned_at >= 1.0:
            self._warned_at = now
            log.warn("{what} ({count} so far)", what=what, count=self._warned)

    def log_version_refusal(self, what: str) -> None:
        """Log a peer refused for its protocol version (too old or too new) --
        each distinct refusal once a minute: the peer retries, the operator
        needs the line, not a flood of it."""
        now = time.monotonic()
        key = re.sub(r":\d+\b", ":*", what)  # the connector's port changes with each try
        if now - self._version_logged.get(key, float("-inf")) < 60.0:
            return
        if len(self._version_logged) >= 256:
            self._version_logged.clear()
        self._version_logged[key] = now
        log.warn("{what}", what=what)

    def connected(self, peer: str) -> bool:
        """Whether the outbound connection to ``peer`` is up."""
        s = self.senders.get(peer)
        return s is not None and s.proto is not None and s.proto.ready

    def close(self) -> defer.Deferred[None]:
        """Close every connection and stop reconnecting."""
        self.closing = True
        for s in self.senders.values():
            s.close()
        for p in list(self.inbound_conns):
            p.transport.loseConnection()
        return defer.succeed(None)
