"""The TCP peer channel (:mod:`sprawl.peer.tcp`) with the real reactor over loopback:
two :class:`PeerChannel` s, OS-chosen ports, every wait bounded, everything closed."""

from __future__ import annotations

import random
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from harness import PeerNet, bounded, link_peers, scaled, the_reactor, until
from sprawl.peer.frames import RAFT
from sprawl.peer.tcp import PeerChannel

KEY = b"cluster-key-0123456789abcdef0123"
OTHER_KEY = b"another-key-0123456789abcdef0123"
UNKNOWN_KIND = 99


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
    a, b = (
        net.channel("a"),
        net.channel("b", max_frame=300),
    )  # (a hello, with its protocol range and features, must fit)
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
    # at once: well within the 10 s hello timeout, however busy the machine
    await until(lambda: bool(lost), "the connection to be refused", timeout=scaled(2.0))
    assert b.stats.handshake_failures == 1
    assert all(len(p.decoder._buf) < 2048 for p in b.inbound_conns)


@pytest_twisted.ensureDeferred
async def test_keyed_connection_tags_every_frame(net: PeerNet) -> None:
    """With a key both sides prove it (hello and welcome) and every frame carries its
    tag: the frames arrive, none fails, and the connector counts the acceptor proven."""
    a, b = net.channel("a", KEY), net.channel("b", KEY)
    link_peers(a, b, net.listen(b))
    for i in range(20):
        assert a.send("b", RAFT, b"%d" % i)
    await until(lambda: len(net.got["b"]) == 20, "20 tagged frames")
    assert [p for _, p in net.got["b"]] == [b"%d" % i for i in range(20)]
    assert b.stats.frames_auth_failed == 0
    assert "b" in a.proven


@pytest_twisted.ensureDeferred
async def test_acceptor_without_the_key_gets_nothing(net: PeerNet) -> None:
    """A keyed connector refuses a listener that cannot prove the key (its welcome
    has no MAC): nothing is sent to it, and the connector calls it unreachable."""
    a, b = net.channel("a", KEY), net.channel("b")
    unreachable: list[str] = []
    a.on_unreachable = unreachable.append
    link_peers(a, b, net.listen(b))
    assert a.send("b", RAFT, b"secret")
    await until(lambda: a.stats.handshake_failures >= 1 and bool(unreachable), "the refusal")
    assert net.got["b"] == []
    assert "b" not in a.proven


class _RawPeer(Protocol):
    """A hand-driven connector: does the handshake with the pure functions, then
    sends whatever bytes the test wants."""

    def __init__(self, node_id: str, to: str, key: bytes | None) -> None:
        from sprawl.peer.frames import FrameDecoder

        self.node_id, self.to, self.key = node_id, to, key
        self.decoder = FrameDecoder(1024)
        self.nonce = bytes(range(16))
        self.challenge: bytes | None = None
        self.welcomed = False
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        from sprawl.peer.frames import CHALLENGE, HELLO, WELCOME, encode_frame, make_hello

        for kind, body in self.decoder.feed(data):
            if kind == CHALLENGE and body is not None:
                self.challenge = body
                self.transport.write(
                    encode_frame(HELLO, make_hello(self.node_id, self.to, body, self.nonce, self.key))
                )
            elif kind == WELCOME:
                self.welcomed = True

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


async def _raw(port: Any, node_id: str = "a", to: str = "b", key: bytes | None = KEY) -> _RawPeer:
    proto = _RawPeer(node_id, to, key)
    await bounded(connectProtocol(TCP4ClientEndpoint(the_reactor(), "127.0.0.1", port.getHost().port), proto))
    return proto


@pytest_twisted.ensureDeferred
async def test_a_frame_with_a_bad_tag_closes_the_connection(net: PeerNet) -> None:
    """After a valid keyed handshake, a frame sealed under the wrong session (a
    replay from another connection) or not sealed at all is refused: nothing is
    delivered, the failure is counted, the connection is closed."""
    from sprawl.peer.frames import FrameSealer, encode_frame, session_key

    b = net.channel("b", KEY)
    port = net.listen(b)
    for forge in (
        lambda p: FrameSealer(session_key(KEY, b"\0" * 16, p.nonce, "a", "b")).seal(RAFT, b"replayed"),
        lambda p: encode_frame(RAFT, b"untagged"),
    ):
        p = await _raw(port)
        await until(lambda p=p: p.welcomed, "the welcome")
        p.transport.write(forge(p))
        await until(lambda p=p: p.lost, "the connection to close")
    assert net.got["b"] == []
    assert b.stats.frames_auth_failed == 2
    # the same raw peer sealing correctly is heard
    p = await _raw(port)
    await until(lambda: p.welcomed, "the welcome")
    assert p.challenge is not None
    p.transport.write(FrameSealer(session_key(KEY, p.challenge, p.nonce, "a", "b")).seal(RAFT, b"good"))
    await until(lambda: net.got["b"] != [], "the good frame")
    assert net.got["b"] == [("a", b"good")]
    p.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_connection_caps_keep_room_for_real_peers(net: PeerNet) -> None:
    """Connections that never say hello cannot pile up: past max_unauthenticated
    the oldest is closed, past max_inbound new ones are refused -- and a real peer
    still gets through and delivers its frames."""
    b = net.channel("b", max_unauthenticated=3, max_inbound=6)
    port = net.listen(b)
    idle: list[Protocol] = []
    for _ in range(10):
        proto = Protocol()
        await bounded(
            connectProtocol(TCP4ClientEndpoint(the_reactor(), "127.0.0.1", port.getHost().port), proto)
        )
        idle.append(proto)
    await until(lambda: b.stats.connections_refused >= 7, "the flood to be cut")
    assert sum(1 for p in b.inbound_conns if p.peer is None) <= 3
    a = net.channel("a")
    link_peers(a, b, port)
    assert a.send("b", RAFT, b"through")
    await until(lambda: net.got["b"] != [], "the real peer's frame")
    assert net.got["b"] == [("a", b"through")]
    for proto in idle:
        proto.transport.abortConnection()


def test_a_frame_over_its_kinds_limit_is_never_queued() -> None:
    """send() refuses (False, counted) a payload its kind's limit would not take,
    rather than queue a frame every receiver drops; REPLICATION has its own limit."""
    from sprawl.peer.frames import REPLICATION

    a = PeerChannel("a", the_reactor(), random.Random(1), KEY, limits={RAFT: 1000, REPLICATION: 200})
    a.set_address("b", "127.0.0.1", 9)
    assert not a.fits(RAFT, 1000)
    assert a.fits(RAFT, 1000 - 5 - 16 + 4)
    assert a.send("b", REPLICATION, b"x" * 500) is False
    assert a.stats.frames_too_large == 1
    assert a.senders == {}


@pytest_twisted.ensureDeferred
async def test_a_peer_too_new_is_refused_and_told_why(net: PeerNet, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connector whose hello states a protocol range above the acceptor's is refused:
    the acceptor logs one clear line and sends a REFUSED frame, so the connector logs
    the acceptor's reason too; no frame gets through."""
    from twisted.logger import globalLogPublisher

    from sprawl.peer import frames

    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_format") == "{what}":
            lines.append(str(event.get("what")))

    globalLogPublisher.addObserver(observe)
    try:
        # the connector "a" is of a release two protocols ahead (make_hello states it)
        monkeypatch.setattr(frames, "PROTOCOL", frames.PROTOCOL + 3)
        monkeypatch.setattr(frames, "MIN_PROTOCOL", frames.PROTOCOL)
        a, b = net.channel("a"), net.channel("b")
        link_peers(a, b, net.listen(b))
        a.send("b", RAFT, b"hello?")

        def both_logged() -> bool:
            return any(x.startswith("refused peer connection from 127.0.0.1:") for x in lines) and any(
                "failed its handshake: refused by b: protocol_too_new" in x for x in lines
            )

        await until(both_logged, "both sides' refusal lines")
    finally:
        globalLogPublisher.removeObserver(observe)
    assert any("peer a speaks peer protocol" in x and "too new for this node" in x for x in lines), lines
    assert net.got["b"] == [] and not a.connected("b")
    assert b.stats.handshake_failures >= 1 and a.stats.handshake_failures >= 1


@pytest_twisted.ensureDeferred
async def test_a_frame_to_an_idle_connected_peer_skips_the_queue(
    net: PeerNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once connected, with nothing queued, a frame goes to the transport as it is
    sent -- no pass through the sender's queue (``Sender._flush``: one a frame
    without the change; issue 16, qpath43) -- and the frames arrive in order."""
    from harness.counting import count_calls
    from sprawl.peer.outbound import Sender

    a, b = net.channel("a"), net.channel("b")
    link_peers(a, b, net.listen(b))
    assert a.send("b", RAFT, b"first")
    await until(lambda: a.connected("b") and len(net.got["b"]) == 1, "the first frame at b")
    flushes = count_calls(monkeypatch, Sender, "_flush")
    for i in range(10):
        assert a.send("b", RAFT, b"m%d" % i)
    assert flushes == []
    await until(lambda: len(net.got["b"]) == 11, "11 frames at b")
    assert net.got["b"] == [("a", b"first")] + [("a", b"m%d" % i) for i in range(10)]
    assert a.stats.frames_sent == 11


@pytest_twisted.ensureDeferred
async def test_a_frame_to_an_idle_connected_peer_is_in_the_socket_when_send_returns(
    net: PeerNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once connected, a frame sent while the transport holds nothing is in the
    socket when ``send`` returns: the reactor is never asked to watch the socket
    (``startWriting``: one a frame without the change; issue 16, qpath43).  Frames
    the socket does not take at once (4 MiB ones, over its buffer) go through the
    transport's buffer as before; every frame arrives whole, in order."""
    from harness.counting import count_calls
    from sprawl.peer import outbound

    clock = [1000.0]
    monkeypatch.setattr(outbound, "_clock", lambda: clock[0])
    a, b = net.channel("a"), net.channel("b")
    link_peers(a, b, net.listen(b))
    assert a.send("b", RAFT, b"first")
    await until(lambda: a.connected("b") and len(net.got["b"]) == 1, "the first frame at b")
    proto = a.senders["b"].proto
    assert proto is not None
    t = proto.transport
    watched = count_calls(monkeypatch, t, "startWriting")
    for i in range(10):
        clock[0] += 1.0  # (each its own window: see the next test for a burst)
        assert a.send("b", RAFT, b"m%d" % i)
        assert not t._tempDataLen and len(t.dataBuffer) == t.offset  # (nothing left behind)
    assert watched == []
    big = [bytes([i]) * (4 << 20) for i in range(3)]
    for payload in big:
        assert a.send("b", RAFT, payload)
    assert a.send("b", RAFT, b"last")
    assert watched  # (the rest of the big frames waited in the transport)
    await until(lambda: len(net.got["b"]) == 15, "15 frames at b")
    assert net.got["b"] == [("a", p) for p in [b"first"] + [b"m%d" % i for i in range(10)] + big + [b"last"]]


@pytest_twisted.ensureDeferred
async def test_a_turn_of_many_frames_to_one_peer_sends_few_at_once(
    net: PeerNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hundred frames to one peer in one turn (a burst of many partitions'): the
    first ``DIRECT_PER_WINDOW`` go to the socket at once, the rest through the
    transport's buffer (a hundred direct sends without the cap); once the window
    has passed a frame goes at once again; all arrive, in order."""
    from sprawl.peer import outbound

    clock = [1000.0]
    monkeypatch.setattr(outbound, "_clock", lambda: clock[0])
    real = outbound.send_first
    direct: list[int] = []

    def counted(t: Any, data: bytes) -> int:
        n = real(t, data)
        if n:
            direct.append(n)
        return n

    monkeypatch.setattr(outbound, "send_first", counted)
    a, b = net.channel("a"), net.channel("b")
    link_peers(a, b, net.listen(b))
    assert a.send("b", RAFT, b"first")
    await until(lambda: a.connected("b") and len(net.got["b"]) == 1, "the first frame at b")
    clock[0] += 1.0
    direct.clear()
    burst = [b"b%d" % i for i in range(100)]
    for p in burst:
        assert a.send("b", RAFT, p)
    assert len(direct) == outbound.DIRECT_PER_WINDOW == 4
    await until(lambda: len(net.got["b"]) == 101, "the burst at b")
    clock[0] += 1.0
    assert a.send("b", RAFT, b"later")
    assert len(direct) == 5
    await until(lambda: len(net.got["b"]) == 102, "the later frame at b")
    assert net.got["b"] == [("a", p) for p in [b"first", *burst, b"later"]]


@pytest.mark.parametrize("source", ["127.0.0.1", "127.31.7.2"], ids=["default", "bind-address"])
@pytest_twisted.ensureDeferred
async def test_connections_leave_from_the_source_address(net: PeerNet, source: str) -> None:
    """A channel given a ``source`` (the node's ``--bind-addr`` when it names
    one address) connects to its peers from it: the acceptor sees that
    address, so a firewall rule -- or the partition tests' ``tc`` filter --
    between two nodes' addresses covers both directions.  Without one the
    OS picks (127.0.0.1 on loopback)."""
    a = net.channel("a", source=None if source == "127.0.0.1" else source)
    b = net.channel("b")
    link_peers(a, b, net.listen(b))
    assert a.send("b", RAFT, b"x")
    await until(lambda: net.got["b"] != [] and bool(b.inbound_conns), "the frame at b")
    assert {c.transport.getPeer().host for c in b.inbound_conns} == {source}


@pytest_twisted.ensureDeferred
async def test_a_connection_to_itself_is_dropped_at_once(net: PeerNet) -> None:
    """A TCP connection whose two ends are one address and port (a "simultaneous
    open" with itself: a dead peer's port on this host handed out as the
    connection's own local port) is dropped as it opens and counted as a
    failed handshake -- not held until the handshake timeout (nothing would
    ever answer it) -- and the sender goes on as after a refusal."""
    import socket

    from sprawl.peer.outbound import OutboundFactory, Sender

    a = net.channel("a")
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # (a free port, as a killed peer's is)
    a.set_address("dead", "127.0.0.1", port)
    sender = Sender(a, "dead")
    lost: list[Any] = []
    sender._lost = lost.append  # type: ignore[method-assign]
    the_reactor().connectTCP(
        "127.0.0.1", port, OutboundFactory(sender), timeout=5, bindAddress=("127.0.0.1", port)
    )
    await until(lambda: bool(lost), "the connection to itself dropped", timeout=scaled(2.0))
    assert a.stats.handshake_failures == 1 and sender.proto is None


def test_a_source_is_bound_only_when_it_is_not_the_peers_own_address() -> None:
    """``source_binding``: no ``bindAddress`` without a source, or when the peer
    listens on the source address itself (the OS takes it anyway, and a port
    bound first may be a dead peer's: a connection to itself); else the
    source with a port the OS picks."""
    from sprawl.peer.outbound import source_binding

    assert source_binding(None, "10.0.0.2") == {}
    assert source_binding("127.0.0.1", "127.0.0.1") == {}
    assert source_binding("10.0.0.1", "10.0.0.2") == {"bindAddress": ("10.0.0.1", 0)}
