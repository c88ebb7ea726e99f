"""The TCP peer channel (:mod:`sprawl.peer.tcp`) with the real reactor over loopback:
two :class:`PeerChannel` s, OS-chosen ports, every wait bounded, everything closed."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from sprawl.peer.frames import RAFT
from sprawl.peer.tcp import PeerChannel
from sprawl.testing import PeerNet, bounded, link_peers, the_reactor, until

KEY = b"cluster-key-0123456789abcdef0123"
OTHER_KEY = b"another-key-0123456789abcdef0123"
UNKNOWN_KIND = 99


@pytest_twisted.async_yield_fixture
async def net() -> AsyncIterator[PeerNet]:
    n = PeerNet()
    try:
        yield n
    finally:
        await n.close()


@pytest_twisted.ensureDeferred
async def test_frames_arrive_in_order_with_sender_id(net: PeerNet) -> None:
    """Frames A sends to B reach B's handler in send order, each tagged with A's node id."""
    a, b = net.channel("a"), net.channel("b")
    link_peers(a, b, net.listen(b))
    payloads = [b"m%d" % i for i in range(50)]
    for p in payloads:
        assert a.send("b", RAFT, p)
    await until(lambda: len(net.got["b"]) >= 50, "50 frames at b")
    assert net.got["b"] == [("a", p) for p in payloads]
    assert a.connected("b")
    assert a.stats.frames_sent == 50
    assert b.stats.frames_received == 50
    assert b.stats.handshake_failures == 0


@pytest_twisted.ensureDeferred
async def test_same_key_is_accepted(net: PeerNet) -> None:
    """With the same cluster key on both sides the handshake succeeds and frames arrive."""
    a, b = net.channel("a", KEY), net.channel("b", KEY)
    link_peers(a, b, net.listen(b))
    assert a.send("b", RAFT, b"secret")
    await until(lambda: net.got["b"] != [], "the frame at b")
    assert net.got["b"] == [("a", b"secret")]
    assert b.stats.handshake_failures == 0


@pytest.mark.parametrize(("a_key", "b_key"), [(OTHER_KEY, KEY), (None, KEY)], ids=["other-key", "no-key"])
@pytest_twisted.ensureDeferred
async def test_wrong_key_is_refused(net: PeerNet, a_key: bytes | None, b_key: bytes) -> None:
    """A sender with another key (or none) is refused by a keyed acceptor: the acceptor
    counts a handshake failure, delivers no frame, and the sender is told it is unreachable."""
    a, b = net.channel("a", a_key), net.channel("b", b_key)
    unreachable: list[str] = []
    a.on_unreachable = unreachable.append
    link_peers(a, b, net.listen(b))
    assert a.send("b", RAFT, b"x")
    await until(lambda: b.stats.handshake_failures >= 1 and bool(unreachable), "the refusal")
    assert net.got["b"] == []
    assert b.stats.frames_received == 0
    assert unreachable[0] == "b"


@pytest_twisted.ensureDeferred
async def test_unreachable_peer_drops_queue_and_recovers(net: PeerNet) -> None:
    """While the peer's listener is down, queued frames are dropped and counted and
    on_unreachable names the peer; once a listener is back on the same port the sender
    reconnects by itself and frames are delivered again."""
    a, b = net.channel("a"), net.channel("b")
    port = net.listen(b)
    link_peers(a, b, port)
    number = port.getHost().port
    await net.unlisten(port)
    unreachable: list[str] = []
    a.on_unreachable = unreachable.append
    assert a.send("b", RAFT, b"lost1")
    assert a.send("b", RAFT, b"lost2")
    await until(lambda: bool(unreachable), "on_unreachable")
    assert unreachable[0] == "b"
    assert a.stats.frames_dropped_queue >= 2
    assert not a.senders["b"].queue
    assert not a.connected("b")

    net.listen(b, number)
    await until(lambda: a.connected("b"), "the reconnect")
    assert a.send("b", RAFT, b"back")
    await until(lambda: net.got["b"] != [], "the frame after reconnecting")
    assert net.got["b"] == [("a", b"back")]


@pytest_twisted.ensureDeferred
async def test_queue_bound_while_connecting(net: PeerNet) -> None:
    """While not yet connected at most queue_frames frames wait; further sends return
    False and are counted as dropped, and exactly the queued ones are delivered."""
    a, b = net.channel("a", queue_frames=3), net.channel("b")
    link_peers(a, b, net.listen(b))
    results = [a.send("b", RAFT, b"%d" % i) for i in range(5)]
    assert results == [True, True, True, False, False]
    assert a.stats.frames_dropped_queue == 2
    await until(lambda: len(net.got["b"]) >= 3, "3 frames at b")
    assert net.got["b"] == [("a", b"0"), ("a", b"1"), ("a", b"2")]
    assert a.stats.frames_dropped_queue == 2


@pytest_twisted.ensureDeferred
async def test_queue_byte_bound(net: PeerNet) -> None:
    """A frame that would take the queue over queue_bytes is dropped (False, counted)."""
    a, b = net.channel("a", queue_bytes=30), net.channel("b")
    link_peers(a, b, net.listen(b))
    assert a.send("b", RAFT, b"x" * 10)  # 15 bytes on the wire
    assert not a.send("b", RAFT, b"y" * 11)  # 16 more would exceed 30
    assert a.send("b", RAFT, b"z" * 10)  # exactly 30
    assert a.stats.frames_dropped_queue == 1
    await until(lambda: len(net.got["b"]) >= 2, "2 frames at b")
    assert [p for _, p in net.got["b"]] == [b"x" * 10, b"z" * 10]


@pytest_twisted.ensureDeferred
async def test_unknown_kind_counted_connection_kept(net: PeerNet) -> None:
    """A frame of a kind with no handler is counted as unhandled and the frames after it
    on the same connection are still delivered."""
    a, b = net.channel("a"), net.channel("b")
    link_peers(a, b, net.listen(b))
    assert a.send("b", UNKNOWN_KIND, b"?")
    assert a.send("b", RAFT, b"after")
    await until(lambda: net.got["b"] != [], "the frame after the unknown one")
    assert net.got["b"] == [("a", b"after")]
    assert b.stats.frames_unhandled == 1
    assert b.stats.frames_received == 2
    assert b.stats.handshake_failures == 0
    assert a.stats.connects == 1


@pytest_twisted.ensureDeferred
async def test_handler_exception_does_not_break_connection(net: PeerNet) -> None:
    """A handler raising on one frame does not stop later frames on that connection."""
    a, b = net.channel("a"), net.channel("b")
    seen: list[bytes] = []

    def handler(peer: str, payload: bytes) -> None:
        seen.append(payload)
        if payload == b"boom":
            raise RuntimeError("handler bug")

    b.handlers[RAFT] = handler
    link_peers(a, b, net.listen(b))
    assert a.send("b", RAFT, b"boom")
    assert a.send("b", RAFT, b"ok")
    await until(lambda: len(seen) >= 2, "both frames")
    assert seen == [b"boom", b"ok"]
    assert a.stats.connects == 1


@pytest_twisted.ensureDeferred
async def test_oversize_frame_skipped_over_tcp(net: PeerNet) -> None:
    """A frame over the acceptor's max_frame is counted and skipped; the next one arrives."""
    a, b = net.channel("a"), net.channel("b", max_frame=100)
    link_peers(a, b, net.listen(b))
    assert a.send("b", RAFT, b"x" * 5000)
    assert a.send("b", RAFT, b"small")
    await until(lambda: net.got["b"] != [], "the small frame")
    assert net.got["b"] == [("a", b"small")]
    assert b.stats.frames_dropped_oversize == 1


def test_send_without_address_is_dropped() -> None:
    """Sending to a peer with no known address returns False, counts a drop and opens nothing."""
    a = PeerChannel("a", the_reactor(), random.Random(1))
    assert a.send("nobody", RAFT, b"x") is False
    assert a.stats.frames_dropped_queue == 1
    assert a.senders == {}
    assert a.stats.connects == 0
    assert not a.connected("nobody")


@pytest_twisted.ensureDeferred
async def test_oversized_first_frame_is_refused_unbuffered(net: PeerNet) -> None:
    """An unauthenticated connection announcing a first frame larger than any
    hello is refused at once, by the declared length, with nothing buffered."""
    b = net.channel("b")
    port = net.listen(b)
    lost: list[bool] = []

    class Raw(Protocol):
        def connectionLost(self, reason: Any = None) -> None:
            lost.append(True)

    proto = Raw()
    await bounded(connectProtocol(TCP4ClientEndpoint(the_reactor(), "127.0.0.1", port.getHost().port), proto))
    proto.transport.write((50 << 20).to_bytes(4, "big") + b"\x02" + b"x" * 1000)
    await until(lambda: bool(lost), "the connection to be refused", timeout=2.0)  # not the 10 s hello timeout
    assert b.stats.handshake_failures == 1
    assert all(len(p.decoder._buf) < 2048 for p in b._inbound)
