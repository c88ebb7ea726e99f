"""The peer port: the TCP peer listener and the gossip UDP socket bound on
the same port number, as memberlist does (one peer address per node).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

#: The log lines keep the namespace they had before the module was split out.
log = Logger(namespace="sprawl.gossip.udp")


class UdpReactor(Protocol):
    """The part of ``IReactorUDP`` the peer port uses."""

    def listenUDP(
        self, port: int, protocol: DatagramProtocol, interface: str = "", maxPacketSize: int = 8192
    ) -> Any:
        """Listen for datagrams on ``port``."""
        ...


async def listen_peer(
    reactor: UdpReactor,
    bind_addr: str,
    port: int,
    listen_tcp: Callable[[int], defer.Deferred[Any]],
    protocol: DatagramProtocol,
    attempts: int = 8,
) -> tuple[Any, Any]:
    """Bind the TCP peer listener, then UDP on the same port number.

    ``listen_tcp(port)`` listens on TCP (port 0: the OS picks one).  If the
    UDP port turns out to be taken, the TCP listener is closed and the pair
    tried again (only when ``port`` is 0, at most ``attempts`` times): with a
    fixed port there is nothing to retry.  Returns (tcp, udp) listening ports.
    """
    last: Exception | None = None
    for _ in range(max(1, attempts)):
        tcp = await listen_tcp(port)
        chosen = tcp.getHost().port
        try:
            udp = reactor.listenUDP(chosen, protocol, interface=bind_addr)
        except CannotListenError as e:
            last = e
            await defer.maybeDeferred(tcp.stopListening)
            if port != 0:
                raise
            log.info("gossip: UDP port {port} is taken, trying another pair", port=chosen)
            continue
        return tcp, udp
    assert last is not None
    raise last
