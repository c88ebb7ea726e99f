"""A connection a peer opened to this node ends: the channel says so
(``PeerChannel.on_inbound_lost``, issue 23, fail38) -- a killed peer's
sockets close, and the node probes its port at once even when it has no
connection of its own to it.  Not when this node closes its own side (its
channel closing).  The real reactor over loopback, OS-chosen ports, every
wait bounded, everything closed."""

from __future__ import annotations

import pytest_twisted

from harness import PeerNet, bounded, link_peers, until
from sprawl.peer.frames import RAFT
from sprawl.peer.tcp import PeerChannel


async def _linked(net: PeerNet) -> tuple[PeerChannel, PeerChannel, list[str]]:
    """Channels a and b, a's connection to b carrying one frame, and the peers
    b's ``on_inbound_lost`` names."""
    a, b = net.channel("a"), net.channel("b")
    lost: list[str] = []
    b.on_inbound_lost = lost.append
    link_peers(a, b, net.listen(b))
    assert a.send("b", RAFT, b"x")
    await until(lambda: net.got["b"] != [], "the frame at b")
    return a, b, lost


@pytest_twisted.ensureDeferred
async def test_the_peers_end_closing_names_the_peer(net: PeerNet) -> None:
    """a sends to b (a's connection, b's inbound); a's channel closes (as a
    killed process's sockets do): b's ``on_inbound_lost`` names a, once."""
    a, b, lost = await _linked(net)
    assert lost == []
    await bounded(a.close())
    await until(lambda: bool(lost) and not b.inbound_conns, "b to see the connection end")
    assert lost == ["a"]


@pytest_twisted.ensureDeferred
async def test_closing_this_nodes_own_channel_names_no_one(net: PeerNet) -> None:
    """b closes its own channel: its inbound connection from a ends, and
    ``on_inbound_lost`` is not called (no news about a)."""
    _a, b, lost = await _linked(net)
    await bounded(b.close())
    await until(lambda: not b.inbound_conns, "b's inbound connection to end")
    assert lost == []
