"""The peer channel in tests: channels and ports torn down together (:class:`PeerNet`), a
hand-driven hostile peer, and raw gossip packets."""

from __future__ import annotations

import os
import random
import time
from typing import TYPE_CHECKING, Any

from harness.reactor import bounded, the_reactor
from harness.waits import until

if TYPE_CHECKING:
    from sprawl.peer.tcp import PeerChannel


class PeerNet:
    """Peer channels and listening ports of one test; :meth:`close` tears all of them down."""

    def __init__(self) -> None:
        self.channels: list[PeerChannel] = []
        self.ports: list[Any] = []
        self.got: dict[str, list[tuple[str, bytes]]] = {}

    def channel(self, node_id: str, key: bytes | None = None, **kw: Any) -> PeerChannel:
        """A channel whose RAFT frames are recorded in ``self.got[node_id]``."""
        kw.setdefault("backoff_base", 0.01)
        kw.setdefault("backoff_max", 0.05)
        from sprawl.peer.frames import RAFT
        from sprawl.peer.tcp import PeerChannel

        ch = PeerChannel(node_id, the_reactor(), random.Random(1), key, **kw)
        got = self.got.setdefault(node_id, [])
        ch.handlers[RAFT] = lambda peer, payload: got.append((peer, payload))
        self.channels.append(ch)
        return ch

    def listen(self, ch: PeerChannel, port: int = 0) -> Any:
        p = the_reactor().listenTCP(port, ch.server_factory(), interface="127.0.0.1")
        self.ports.append(p)
        return p

    async def unlisten(self, p: Any) -> None:
        self.ports.remove(p)
        await bounded(p.stopListening())

    async def close(self) -> None:
        for ch in self.channels:
            await bounded(ch.close())
        for p in list(self.ports):
            await self.unlisten(p)

        def quiet() -> bool:
            return all(
                not ch.inbound_conns
                and all(s.proto is None and not s.connecting for s in ch.senders.values())
                for ch in self.channels
            )

        await until(quiet, "every connection to close")


def link_peers(a: PeerChannel, b: PeerChannel, port: Any) -> None:
    """Tell ``a`` where ``b`` listens."""
    a.set_address(b.node_id, "127.0.0.1", port.getHost().port)


class HostilePeer:
    """A blocking, hand-driven client of a node's TCP peer port, speaking the
    peer protocol as far as a test wants: the handshake with any node id and
    key (or none, or a bad MAC), then any frames (tagged with the session key
    when the handshake went through with a key).  ``tls`` is an
    ``ssl.SSLContext`` for a node with a cluster CA.  Every wait is bounded by
    ``timeout``; :meth:`close` always closes the socket."""

    def __init__(
        self,
        port: int,
        node_id: str,
        to: str,
        key: bytes | None = None,
        tls: Any = None,
        timeout: float = 5.0,
    ) -> None:
        self.port, self.node_id, self.to, self.key, self.tls = port, node_id, to, key, tls
        self.timeout = timeout
        self.sock: Any = None
        self.welcomed = False
        self.sealer: Any = None
        self.refused_at_tls = False

    def connect(self, hello: bytes | None = None, pipelined: bytes = b"") -> bool:
        """Open the connection, read the challenge, send ``hello`` (default: a
        proper one for this id and key) and, right behind it without waiting,
        ``pipelined`` bytes; return whether a welcome came."""
        import socket
        import ssl

        from sprawl.peer.frames import (
            CHALLENGE,
            HELLO,
            WELCOME,
            FrameDecoder,
            FrameSealer,
            encode_frame,
            make_hello,
            session_key,
        )

        raw = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        if self.tls is not None:
            try:
                raw = self.tls.wrap_socket(raw, server_hostname=None)
            except (ssl.SSLError, OSError):
                self.refused_at_tls = True
                raw.close()
                return False
        self.sock = raw
        dec = FrameDecoder(1024)
        nonce = os.urandom(16)
        challenge = None
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, OSError):
                return False
            if not data:
                return False
            for kind, body in dec.feed(data):
                if kind == CHALLENGE and body is not None and challenge is None:
                    challenge = body
                    payload = (
                        hello
                        if hello is not None
                        else make_hello(self.node_id, self.to, body, nonce, self.key)
                    )
                    self.sock.sendall(encode_frame(HELLO, payload))
                elif kind == WELCOME and challenge is not None:
                    self.welcomed = True
                    if self.key:
                        self.sealer = FrameSealer(
                            session_key(self.key, challenge, nonce, self.node_id, self.to)
                        )
                    return True
        return False

    def send(self, kind: int, payload: bytes) -> bool:
        """Write one frame (tagged when the session has a key); False when the
        node has closed the connection."""
        from sprawl.peer.frames import encode_frame

        frame = self.sealer.seal(kind, payload) if self.sealer is not None else encode_frame(kind, payload)
        return self.send_raw(frame)

    def send_raw(self, data: bytes) -> bool:
        """Write bytes as they are; False when the node has closed the connection."""
        if self.sock is None:
            return False
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def closed_by_node(self, wait: float = 2.0) -> bool:
        """Whether the node closed the connection (within ``wait`` seconds)."""
        if self.sock is None:
            return True
        deadline = time.monotonic() + wait
        self.sock.settimeout(0.05)
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                return True
            if not data:
                return True
        return False

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


def send_gossip(port: int, messages: list[Any], key: bytes | None = None, copies: int = 1) -> Any:
    """Send gossip messages to ``127.0.0.1:port`` from a fresh UDP socket (``copies``
    times); returns the socket, still open, so a test can read what comes back
    (close it)."""
    import socket

    from sprawl.gossip import wire

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    data = wire.encode_packet(messages, key)
    for _ in range(copies):
        sock.sendto(data, ("127.0.0.1", port))
    return sock
