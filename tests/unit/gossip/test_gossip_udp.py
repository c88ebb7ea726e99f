"""The Twisted gossip adapter (:mod:`sprawl.gossip.udp`) on fake datagram
transports and a ``task.Clock``: no sockets, no sleeps.

A tiny in-memory network delivers what each node's transport wrote to the
node at the destination address (or drops it), so real protocol traffic runs
between real :class:`GossipNode` instances under virtual time.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

import msgspec
import pytest
from twisted.internet import defer, task
from twisted.internet.error import CannotListenError
from twisted.internet.testing import FakeDatagramTransport

from sprawl.config import ConfigError, NodeConfig, parse_cluster_key
from sprawl.gossip import GossipConfig, wire
from sprawl.gossip.incarnation_file import load_incarnation, save_incarnation
from sprawl.gossip.load import MAX_PARTS, LoadSample, load_changed, rates_by_node
from sprawl.gossip.membership import Member
from sprawl.gossip.messages import Alive, Leave, Ping, PushPull, Suspect
from sprawl.gossip.peer_port import listen_peer
from sprawl.gossip.udp import GossipNode
from sprawl.metrics import NodeMetrics
from sprawl.metrics.cluster import GossipCollector

CFG = GossipConfig()


def addr(i: int) -> tuple[str, int]:
    """The advertised address of node ``i``."""
    return ("127.0.0.1", 7000 + i)


class Net:
    """Delivers datagrams between :class:`GossipNode` s on fake transports."""

    def __init__(self, clock: task.Clock):
        self.clock = clock
        self.nodes: dict[tuple[str, int], GossipNode] = {}
        self.transports: dict[tuple[str, int], FakeDatagramTransport] = {}
        self.down: set[tuple[str, int]] = set()
        self.delivered = 0

    def attach(self, a: tuple[str, int], node: GossipNode) -> FakeDatagramTransport:
        t = FakeDatagramTransport()
        node.makeConnection(t)
        self.nodes[a] = node
        self.transports[a] = t
        return t

    def pump(self) -> None:
        """Deliver everything written so far (and what that causes), bounded."""
        for _ in range(50):
            moved = False
            for src, t in list(self.transports.items()):
                out, t.written[:] = list(t.written), []
                for data, dst in out:
                    moved = True
                    node = self.nodes.get(tuple(dst))
                    if node is None or dst in self.down or src in self.down:
                        continue
                    self.delivered += 1
                    node.datagramReceived(data, src)
            if not moved:
                return

    def run(self, seconds: float, step: float = 0.1) -> None:
        """Advance virtual time in ticks, delivering datagrams after each."""
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            self.pump()


def make(
    tmp_path: Path,
    clock: task.Clock,
    i: int,
    seeds: list[tuple[str, int]] | None = None,
    **kw: Any,
) -> GossipNode:
    """A gossip node ``n{i}`` with its own data dir."""
    d = tmp_path / f"n{i}"
    d.mkdir(exist_ok=True)
    return GossipNode(
        f"n{i}",
        kw.pop("config", CFG),
        clock,
        random.Random(i),
        str(d),
        seeds=seeds or [],
        meta={"version": "test", "http": f"http://127.0.0.1:{8000 + i}"},
        **kw,
    )


def messages(t: FakeDatagramTransport, key: bytes | None = None) -> list[tuple[Any, tuple[str, int]]]:
    """Every message written on ``t``, decoded, with its destination."""
    out = []
    for data, dst in t.written:
        for m in wire.decode_packet(data, key, CFG.max_packet_bytes):
            out.append((m, dst))
    return out


def cluster(tmp_path: Path, n: int) -> tuple[task.Clock, Net, list[GossipNode]]:
    """``n`` adapters joined through node 0 and converged."""
    clock = task.Clock()
    net = Net(clock)
    nodes = []
    for i in range(n):
        g = make(tmp_path, clock, i, seeds=[addr(0)] if i else None)
        net.attach(addr(i), g)
        g.start(addr(i))
        nodes.append(g)
    for _ in range(200):
        net.run(0.1)
        if all(sum(m.state == "alive" for m in g.members()) == n for g in nodes):
            break
    assert all(len(g.live_member_ids()) == n for g in nodes)
    return clock, net, nodes


def test_seeds_are_joined_and_ticks_send_probes(tmp_path: Path) -> None:
    """A node given a seed joins it on the clock; then each tick period the
    core's probes (pings) go out on the transport to the other members."""
    clock, net, nodes = cluster(tmp_path, 3)
    assert all(g.joined for g in nodes)
    t = net.transports[addr(1)]
    t.written.clear()
    for _ in range(30):  # 3 probe periods, nothing delivered: no acks
        clock.advance(0.1)
    pings = [dst for m, dst in messages(t) if isinstance(m, Ping)]
    assert len(pings) >= 2
    assert set(pings) <= {addr(0), addr(2)}
    assert nodes[1].stats["probes_sent"] >= 2


def test_received_datagrams_reach_the_core(tmp_path: Path) -> None:
    """A datagram handed to the protocol is decoded by the core: an Alive of
    an unknown node makes it a member; garbage is counted, never raised."""
    clock = task.Clock()
    g = make(tmp_path, clock, 0)
    t = FakeDatagramTransport()
    g.makeConnection(t)
    g.start(addr(0))
    alive = Alive(3, "stranger", addr(9), {"http": "http://127.0.0.1:9"})
    g.datagramReceived(wire.assemble([wire.encode_message(alive)], None), addr(9))
    views = {v["id"]: v for v in g.member_views()}
    assert views["stranger"]["state"] == "alive" and views["stranger"]["incarnation"] == 3
    assert views["stranger"]["http"] == "http://127.0.0.1:9"
    assert views["n0"]["self"] is True
    g.datagramReceived(b"\x01\x00garbage", addr(9))
    g.datagramReceived(b"", addr(9))
    assert g.dropped()["decode"] == 2
    assert g.stats["packets_received"] == 1


def test_datagrams_before_start_are_dropped_and_counted(tmp_path: Path) -> None:
    """Between binding the socket and :meth:`start`, packets are dropped."""
    g = make(tmp_path, task.Clock(), 0)
    g.makeConnection(FakeDatagramTransport())
    g.datagramReceived(b"anything", addr(1))
    assert g.dropped()["not_started"] == 1


def test_incarnation_is_persisted_and_a_restart_starts_one_higher(tmp_path: Path) -> None:
    """The first start is incarnation 0, saved in gossip.json; a restart on the
    same data dir starts at saved + 1, and saves that at once."""
    clock = task.Clock()
    g = make(tmp_path, clock, 0, leave_grace=0)
    g.makeConnection(FakeDatagramTransport())
    g.start(addr(0))
    data_dir = tmp_path / "n0"
    assert json.loads((data_dir / "gossip.json").read_text()) == {"incarnation": 0}
    g.stop()
    for expected in (1, 2):
        g = make(tmp_path, clock, 0, leave_grace=0)
        g.makeConnection(FakeDatagramTransport())
        g.start(addr(0))
        assert g.incarnation == expected
        assert load_incarnation(str(data_dir)) == expected
        g.stop()


def test_a_refutation_is_saved_before_it_is_sent(tmp_path: Path) -> None:
    """Every incarnation change (here, refuting a suspicion) reaches the disk
    before any datagram carrying it is written."""
    clock = task.Clock()
    g = make(tmp_path, clock, 0)
    data_dir = str(tmp_path / "n0")
    seen_on_disk: list[int | None] = []

    class Recording(FakeDatagramTransport):
        def write(self, packet: bytes, addr: Any = None) -> None:
            seen_on_disk.append(load_incarnation(data_dir))
            super().write(packet, addr)

    t = Recording()
    g.makeConnection(t)
    g.start(addr(0))
    alive = Alive(0, "n1", addr(1), {})
    g.datagramReceived(wire.assemble([wire.encode_message(alive)], None), addr(1))
    suspect = Suspect(0, "n0", "n1")
    g.datagramReceived(wire.assemble([wire.encode_message(suspect)], None), addr(1))
    assert g.incarnation == 1 and g.stats["refuted"] == 1
    assert load_incarnation(data_dir) == 1
    assert seen_on_disk and all(x == 1 for x in seen_on_disk)
    refutes = [m for m, _ in messages(t) if isinstance(m, Alive) and m.node_id == "n0"]
    assert refutes and all(m.incarnation == 1 for m in refutes)


def test_unreadable_state_file_starts_at_zero(tmp_path: Path) -> None:
    """A corrupt gossip.json is ignored (logged), not fatal."""
    (tmp_path / "gossip.json").write_text("{not json")
    assert load_incarnation(str(tmp_path)) is None
    (tmp_path / "gossip.json").write_text('{"incarnation": -3}')
    assert load_incarnation(str(tmp_path)) is None
    save_incarnation(str(tmp_path), 41)
    assert load_incarnation(str(tmp_path)) == 41
    assert not (tmp_path / "gossip.json.tmp").exists()


def test_stop_gossips_a_leave_and_waits_on_the_clock(tmp_path: Path) -> None:
    """On stop the node sends its leave at once, keeps ticking for the grace
    period (virtual time, no sleep), then closes; the others see it "left"."""
    clock, net, nodes = cluster(tmp_path, 3)
    t = net.transports[addr(2)]
    t.written.clear()
    d = nodes[2].stop()
    leaves = [dst for m, dst in messages(t) if isinstance(m, Leave) and m.node_id == "n2"]
    assert leaves, "the leave goes out immediately"
    assert not d.called, "the adapter gives the leave a moment to spread"
    net.pump()
    clock.advance(nodes[2].leave_grace)
    assert d.called
    net.run(2.0)
    for g in nodes[:2]:
        states = {v["id"]: v["state"] for v in g.member_views()}
        assert states["n2"] == "left"
    assert nodes[2].membership is not None and nodes[2].membership.left
    # no more ticks after stop
    t.written.clear()
    clock.advance(5.0)
    assert t.written == []


def test_join_retries_with_capped_exponential_backoff(tmp_path: Path) -> None:
    """With no seed answering, join attempts are spaced 1, 2, 4, ... seconds
    apart (±10% jitter), capped at 30 s; they continue until one answers."""
    clock = task.Clock()
    net = Net(clock)
    g = make(tmp_path, clock, 1, seeds=[addr(0)])
    net.attach(addr(1), g)
    g.start(addr(1))
    times: list[float] = []
    last = 0
    for _ in range(2000):  # 200 s of virtual time
        net.run(0.1)
        if g.stats["join_attempts"] != last:
            last = g.stats["join_attempts"]
            times.append(clock.seconds())
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[:4] == pytest.approx([1, 2, 4, 8], rel=0.11)
    assert max(gaps) <= 30 * 1.1 + 0.2
    assert gaps[-1] >= 30 * 0.9 - 0.2
    assert not g.joined
    # the seed comes up: the next attempt joins
    seed = make(tmp_path, clock, 0)
    net.attach(addr(0), seed)
    seed.start(addr(0))
    net.run(40.0)
    assert g.joined and sorted(g.live_member_ids()) == ["n0", "n1"]


def test_a_seed_that_is_not_live_is_retried_after_joining(tmp_path: Path) -> None:
    """After a partition, the node keeps knocking on the seed (backoff capped
    at 30 s): when it heals, both sides see each other alive again."""
    _clock, net, nodes = cluster(tmp_path, 2)
    net.down = {addr(0)}
    net.run(60.0)  # both sides declare the other dead (and forget it after 30 s)
    assert nodes[1].live_member_ids() == ["n1"] and nodes[0].live_member_ids() == ["n0"]
    net.down = set()
    net.run(40.0)
    for g in nodes:
        assert {v["id"]: v["state"] for v in g.member_views()} == {"n0": "alive", "n1": "alive"}


def test_metadata_carries_addresses_version_and_load(tmp_path: Path) -> None:
    """Load figures are sampled every few seconds; a meaningful change is
    gossiped (incarnation bump), noise is not."""
    clock = task.Clock()
    sample = LoadSample(partitions_led=2, published_total=0, bytes_stored=10_000_000, memory_hot_bytes=0)
    net = Net(clock)
    g = make(tmp_path, clock, 0, load=lambda: sample)
    net.attach(addr(0), g)
    g.start(addr(0))
    g.set_meta(peer="127.0.0.1:7000")
    inc = g.incarnation
    view = g.member_views()[0]
    assert view["peer"] == "127.0.0.1:7000" and view["version"] == "test"
    assert view["load"] == {"led": 2, "msgs_s": 0.0, "bytes": 10_000_000, "mem": 0}
    sample.bytes_stored += 1000  # noise
    net.run(5.0)
    assert g.incarnation == inc
    sample.published_total += 5000  # 1000 msgs/s over the next 5 s
    sample.partitions_led = 3
    net.run(5.0)
    assert g.incarnation == inc + 1
    load = g.member_views()[0]["load"]
    assert load["led"] == 3 and load["msgs_s"] == pytest.approx(1000, rel=0.05)
    assert load_incarnation(str(tmp_path / "n0")) == inc + 1


def test_load_changed_thresholds() -> None:
    """Partition leadership always counts; the rest needs >20% and a floor."""
    base = {"led": 1, "msgs_s": 100.0, "bytes": 50_000_000, "mem": 0}
    assert load_changed(None, base)
    assert not load_changed(base, dict(base, msgs_s=110.0))
    assert load_changed(base, dict(base, msgs_s=150.0))
    assert not load_changed(base, dict(base, mem=900_000))
    assert load_changed(base, dict(base, bytes=80_000_000))
    assert load_changed(base, dict(base, led=2))
    assert load_changed(base, dict(base, parts=[["orders", 0, 500, 0]]))  # a hot partition appears
    assert not load_changed(
        dict(base, parts=[["orders", 0, 500, 0]]), dict(base, parts=[["orders", 0, 520, 0]])
    )


def test_load_changed_when_the_node_went_idle() -> None:
    """Rates under every floor are not gossiped again while they move -- but
    all of them falling to 0 (the node went idle) is: otherwise the last
    small rates of a burst (a control record's 12 bytes/s) stood in the
    gossip for as long as the node stayed idle, and the controller, seeing
    traffic, built its balancing view of every partition every 10 s (issue
    23).  Once gossiped idle, idle samples change nothing."""
    base = {"led": 3, "msgs_s": 0.0, "bytes": 0, "mem": 0}
    trickle = dict(base, parts=[["t00001", 0, 0, 12], ["t00002", 0, 0, 12]])
    assert load_changed(trickle, base)  # no parts listed: nothing moved
    assert load_changed(trickle, dict(base, parts=[["t00001", 0, 0, 0]]))
    assert load_changed(dict(base, msgs_s=0.5), base)
    assert not load_changed(base, base)
    assert not load_changed(base, dict(base, parts=[["t00001", 0, 0, 0]]))
    assert not load_changed(base, trickle)  # a trickle starting stays under the floors
    assert not load_changed(trickle, dict(trickle, parts=[["t00001", 0, 0, 20]]))  # still busy


def test_a_node_gone_idle_gossips_no_partition_rate(tmp_path: Path) -> None:
    """A node that wrote one small record to each of two partitions it
    leads (a new epoch's control record) and then nothing: the rates of
    that sample (under every floor) are gossiped with its new leaderships;
    once it samples nothing moved, it gossips that, and its member view
    lists no partition rate above 0 from then on (issue 23: the balancer
    read the stale bytes/s as traffic)."""
    clock = task.Clock()
    sample = LoadSample(partitions_led=0, partial=True)
    net = Net(clock)
    g = make(tmp_path, clock, 0, load=lambda: sample)
    net.attach(addr(0), g)
    g.start(addr(0))
    sample.partitions = {("t00001", 0): (0, 0), ("t00002", 0): (0, 0)}
    net.run(5.5)
    sample.partitions = {("t00001", 0): (1, 120), ("t00002", 0): (1, 120)}
    sample.partitions_led = 2  # (a change that is gossiped, and the rates with it)
    net.run(5.0)
    rates = g.member_views()[0]["partition_rates"]
    assert rates and max(r["bytes_s"] for r in rates) > 0
    sample.partitions = {}  # partial: nothing moved since
    net.run(10.0)
    assert all(r["bytes_s"] == r["msgs_s"] == 0 for r in g.member_views()[0]["partition_rates"])


def test_a_keyed_node_ignores_packets_without_the_key(tmp_path: Path) -> None:
    """With a cluster key, unauthenticated packets are dropped (reason auth)."""
    clock = task.Clock()
    key = parse_cluster_key("k" * 32)
    g = make(tmp_path, clock, 0, config=GossipConfig(cluster_key=key))
    g.makeConnection(FakeDatagramTransport())
    g.start(addr(0))
    alive = Alive(0, "intruder", addr(5), {})
    g.datagramReceived(wire.assemble([wire.encode_message(alive)], None), addr(5))
    assert g.dropped()["auth"] == 1
    assert g.live_member_ids() == ["n0"]
    g.datagramReceived(wire.assemble([wire.encode_message(alive)], key), addr(5))
    assert g.live_member_ids() == ["intruder", "n0"]


def test_send_failures_are_counted_not_raised(tmp_path: Path) -> None:
    """A transport that refuses a write (bad address, full buffer) is counted."""

    class Refusing(FakeDatagramTransport):
        def write(self, packet: bytes, addr: Any = None) -> None:
            raise OSError("no route")

    clock = task.Clock()
    g = make(tmp_path, clock, 1, seeds=[addr(0)])
    g.makeConnection(Refusing())
    g.start(addr(1))
    clock.advance(0)
    assert g.dropped()["send_failed"] >= 1


def test_hostname_seeds_are_resolved(tmp_path: Path) -> None:
    """UDP sends need IP addresses: seed host names go through the resolver."""
    clock = task.Clock()
    t = FakeDatagramTransport()
    names: list[str] = []

    def resolve(host: str) -> defer.Deferred[str]:
        names.append(host)
        return defer.succeed("127.0.0.9")

    g = make(tmp_path, clock, 1, seeds=[("seed.example", 7946)], resolve=resolve)
    g.makeConnection(t)
    g.start(addr(1))
    clock.advance(0)
    assert names == ["seed.example"]
    pp = [dst for m, dst in messages(t) if isinstance(m, PushPull)]
    assert pp and set(pp) == {("127.0.0.9", 7946)}


def test_gossip_metrics_are_exported(tmp_path: Path) -> None:
    """The Prometheus collector reads members by state, counters, drops, incarnation."""
    _clock, _net, nodes = cluster(tmp_path, 2)
    nodes[0].datagramReceived(b"\x01\x00junk", addr(1))
    metrics = NodeMetrics()
    metrics.register(GossipCollector(nodes[0]))
    text = metrics.render().decode()
    assert 'sprawl_gossip_members{state="alive"} 2.0' in text
    assert 'sprawl_gossip_members{state="dead"} 0.0' in text
    assert "sprawl_gossip_probes_total" in text
    assert "sprawl_gossip_suspicions_total 0.0" in text
    assert "sprawl_gossip_refuted_total" in text
    assert 'sprawl_gossip_packets_dropped_total{reason="decode"} 1.0' in text
    assert f"sprawl_gossip_incarnation {float(nodes[0].incarnation)}" in text


class _FakePort:
    def __init__(self, port: int):
        self.port = port
        self.stopped = False

    def getHost(self) -> Any:
        return self

    def stopListening(self) -> None:
        self.stopped = True


class _FakeReactor:
    def __init__(self, taken: set[int]):
        self.taken = taken
        self.udp: list[int] = []

    def listenUDP(self, port: int, protocol: Any, interface: str = "") -> _FakePort:
        if port in self.taken:
            raise CannotListenError(interface, port, OSError("in use"))
        self.udp.append(port)
        return _FakePort(port)


def test_listen_peer_binds_udp_on_the_tcp_port_and_retries_the_pair() -> None:
    """Port 0: TCP picks a port, UDP binds the same number; if UDP is taken
    the TCP listener is closed and another pair tried (bounded)."""
    tcp_ports = iter([40001, 40002, 40003])
    opened: list[_FakePort] = []

    def listen_tcp(port: int) -> defer.Deferred[Any]:
        assert port == 0
        p = _FakePort(next(tcp_ports))
        opened.append(p)
        return defer.succeed(p)

    reactor = _FakeReactor(taken={40001, 40002})
    proto = GossipNode("n", CFG, task.Clock(), random.Random(0), "/nonexistent")
    d = defer.ensureDeferred(listen_peer(reactor, "127.0.0.1", 0, listen_tcp, proto))
    tcp, udp = d.result
    assert tcp.port == udp.port == 40003
    assert [p.stopped for p in opened] == [True, True, False]


def test_listen_peer_with_a_fixed_port_does_not_retry() -> None:
    """A configured port that is taken for UDP is an error (no other port will do)."""
    reactor = _FakeReactor(taken={7946})
    tcp = _FakePort(7946)
    proto = GossipNode("n", CFG, task.Clock(), random.Random(0), "/nonexistent")
    d = defer.ensureDeferred(listen_peer(reactor, "127.0.0.1", 7946, lambda p: defer.succeed(tcp), proto))
    f = d.result
    d.addErrback(lambda _: None)
    assert isinstance(f.value, CannotListenError) and tcp.stopped


def test_listen_peer_gives_up_after_the_bounded_attempts() -> None:
    """If every pair collides, the last error is raised after ``attempts`` tries."""
    n = iter(range(50000, 50010))
    reactor = _FakeReactor(taken=set(range(50000, 50010)))
    proto = GossipNode("n", CFG, task.Clock(), random.Random(0), "/nonexistent")
    d = defer.ensureDeferred(
        listen_peer(reactor, "127.0.0.1", 0, lambda p: defer.succeed(_FakePort(next(n))), proto, attempts=3)
    )
    f = d.result
    d.addErrback(lambda _: None)
    assert isinstance(f.value, CannotListenError)
    assert next(n) == 50003


@pytest.mark.parametrize(
    "text, expected",
    [
        ("00112233445566778899aabbccddeeff", bytes.fromhex("00112233445566778899aabbccddeeff")),
        ("hex:00112233445566778899AABBCCDDEEFF", bytes.fromhex("00112233445566778899aabbccddeeff")),
        ("c2VjcmV0LXNlY3JldC1zZWNyZXQ=", b"secret-secret-secret"),
        ("base64:c2VjcmV0LXNlY3JldC1zZWNyZXQ=", b"secret-secret-secret"),
        ("a plain passphrase!", b"a plain passphrase!"),
        ("raw:00112233445566778899aabbccddeeff", b"00112233445566778899aabbccddeeff"),
    ],
)
def test_cluster_key_forms(text: str, expected: bytes) -> None:
    """Hex, base64 or a raw string become the key bytes."""
    assert parse_cluster_key(text) == expected


def test_cluster_key_too_short_or_bad_is_a_config_error() -> None:
    """Keys under 16 bytes, or bad explicit encodings, are refused clearly."""
    for bad in ("short", "hex:zz", "00112233", "base64:!!!!"):
        with pytest.raises(ConfigError):
            parse_cluster_key(bad)
    with pytest.raises(ConfigError):
        NodeConfig(cluster_key=b"tiny").validate()
    assert "cluster_key" not in repr(NodeConfig(cluster_key=b"x" * 16))


def test_cluster_key_option_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--cluster-key`` and ``SPRAWL_CLUSTER_KEY`` reach the NodeConfig."""
    from sprawl.tap import build_config

    cfg = build_config({"cluster-key": "hex:" + "ab" * 16}, {})
    assert cfg.cluster_key == b"\xab" * 16
    cfg = build_config({}, {"SPRAWL_CLUSTER_KEY": "0123456789abcdef-key"})
    assert cfg.cluster_key == b"0123456789abcdef-key"
    assert build_config({}, {}).cluster_key is None


def test_partition_rates_ride_the_gossip_to_peers(tmp_path: Path) -> None:
    """The hottest led partitions' rates, derived from their counters between
    two samples, travel in the metadata over the wire: a peer's
    ``member_views()`` shows them, bounded by MAX_PARTS, and the metadata
    stays under max_meta_bytes even with 249-byte topic names."""
    clock = task.Clock()
    net = Net(clock)
    long = "t" * 249
    keys = [(f"topic-{i}", i % 3) for i in range(38)] + [(long, 0), (long, 1)]
    # partition i does 10*(i+1) msgs/s of 100 bytes; the long names are hottest
    rates = {k: (10.0 * (i + 1), 1000.0 * (i + 1)) for i, k in enumerate(keys)}

    def load() -> LoadSample:
        t = clock.seconds()
        return LoadSample(
            partitions_led=40, partitions={k: (int(m * t), int(b * t)) for k, (m, b) in rates.items()}
        )

    nodes = []
    for i in range(2):
        g = make(tmp_path, clock, i, seeds=[addr(0)] if i else None, load=load if i else None)
        net.attach(addr(i), g)
        g.start(addr(i))
        nodes.append(g)
    net.run(20.0)
    own = nodes[1].membership.meta
    assert len(msgspec.msgpack.encode(own)) <= CFG.max_meta_bytes
    seen = {v["id"]: v for v in nodes[0].member_views()}["n1"]
    got = {(e["topic"], e["partition"]): (e["msgs_s"], e["bytes_s"]) for e in seen["partition_rates"]}
    assert "parts" not in seen["load"] and seen["load"]["led"] == 40
    assert 0 < len(got) <= MAX_PARTS
    for k, (m, b) in got.items():
        assert (m, b) == pytest.approx(rates[k], rel=0.01, abs=1)
    # the hottest short-named partitions are all there
    hottest_short = sorted((k for k in keys if k[0] != long), key=lambda k: -rates[k][0])[:10]
    assert set(hottest_short) <= set(got)
    assert rates_by_node(nodes[0].member_views())["n1"] == got
    assert nodes[0].member_views()[0]["partition_rates"] == []  # n0 reports none


def test_partial_load_samples_rate_only_what_moved(tmp_path: Path) -> None:
    """A node that samples only the partitions written to since its last
    sample (``LoadSample.partial``, issue 23: an idle partition costs the
    sample nothing) gossips the same rates for those as a full sample would;
    the idle ones (listed once, their counters standing) get none, and a
    partition ``gone`` loses its counter (listed again, it has no rate until
    a second sample)."""
    clock = task.Clock()
    net = Net(clock)
    hot = {("hot", p): (10.0 * (p + 1), 1000.0 * (p + 1)) for p in range(3)}
    idle = {(f"idle-{i}", 0): (5, 500) for i in range(1000)}
    calls: list[int] = []

    def load() -> LoadSample:
        t = clock.seconds()
        moved = {k: (int(m * t), int(b * t)) for k, (m, b) in hot.items()}
        if not calls:
            moved.update(idle)
        calls.append(len(moved))
        return LoadSample(partitions_led=1003, partitions=moved, partial=True)

    nodes = []
    for i in range(2):
        g = make(tmp_path, clock, i, seeds=[addr(0)] if i else None, load=load if i else None)
        net.attach(addr(i), g)
        g.start(addr(i))
        nodes.append(g)
    net.run(20.0)
    assert calls[0] == 1003 and set(calls[1:]) == {3}
    seen = {v["id"]: v for v in nodes[0].member_views()}["n1"]
    got = {(e["topic"], e["partition"]): (e["msgs_s"], e["bytes_s"]) for e in seen["partition_rates"]}
    assert seen["load"]["led"] == 1003
    assert set(got) == set(hot)
    for k, (m, b) in got.items():
        assert (m, b) == pytest.approx(hot[k], rel=0.01, abs=1)
    assert len(nodes[1]._last_parts) == 1003
    sample = nodes[1]._sample_load(clock.seconds() + 1)
    assert sample is not None  # (a sample with nothing gone keeps every counter)
    g = nodes[1]
    g.load = lambda: LoadSample(partitions_led=1002, partial=True, gone=[("idle-0", 0)])
    g._sample_load(clock.seconds() + 2)
    assert ("idle-0", 0) not in g._last_parts and len(g._last_parts) == 1002


def test_member_states_are_the_views_that_say_the_cluster_without_copies(tmp_path: Path) -> None:
    """``member_states`` (what the controller asks every step, issue 23) has
    each member's id, state, cluster, protocol and features as
    ``member_views`` shows them, and copies no member nor decodes a rate."""
    clock = task.Clock()
    g = make(tmp_path, clock, 0)
    g.makeConnection(FakeDatagramTransport())
    g.start(addr(0))
    meta = {"http": "x", "cluster": "c1", "protocol": [2, 3], "features": ["f"], "load": {"led": 1}}
    for i, m in enumerate([meta, {"http": "y", "cluster": ""}]):
        alive = Alive(1, f"m{i}", addr(5 + i), m)
        g.datagramReceived(wire.assemble([wire.encode_message(alive)], None), addr(5 + i))
    keys = ("id", "state", "cluster", "protocol", "features")
    full = {v["id"]: {k: v[k] for k in keys if k in v} for v in g.member_views()}
    light = {v["id"]: v for v in g.member_states()}
    assert light == full and set(light) == {"n0", "m0", "m1"}
    assert light["m0"]["cluster"] == "c1" and "cluster" not in light["m1"]
    copies = [0]
    real = Member.copy

    def counted(self: Member) -> Member:
        copies[0] += 1
        return real(self)

    Member.copy = counted  # type: ignore[method-assign]
    try:
        g.member_states()
        assert copies[0] == 0
        g.member_views()
        assert copies[0] == 3
    finally:
        Member.copy = real  # type: ignore[method-assign]


@pytest.mark.parametrize("window", [60.0, 0.0])
def test_a_one_sample_spike_is_not_gossiped_with_the_windowed_rate(tmp_path: Path, window: float) -> None:
    """With ``rate_window`` (off by default) the node gossips its partitions'
    windowed rates (:class:`sprawl.gossip.load.RateWindow`): one 5-s sample 40 % over a
    steady 200 msgs/s moves the gossiped rate by a twelfth of that, under
    the re-gossip rule's 20 %, so no metadata update follows it and the view
    keeps ~200 (trust38b).  With ``rate_window=0`` (the last sample alone)
    the spike is gossiped, and again when it ends."""
    clock = task.Clock()
    count = [0, 0]
    last = [0.0]

    def load() -> LoadSample:
        t = clock.seconds()
        rate = 280.0 if 100.0 < t <= 105.0 else 200.0
        count[0] += round(rate * (t - last[0]))
        count[1] += round(100 * rate * (t - last[0]))
        last[0] = t
        return LoadSample(partitions_led=1, partitions={("t", 0): (count[0], count[1])})

    g = make(tmp_path, clock, 0, load=load, rate_window=window)
    g.makeConnection(FakeDatagramTransport())
    g.start(addr(0))
    while clock.seconds() < 100.0:
        clock.advance(1.0)
    before = g.adapter_stats["meta_updates"]
    for _ in range(20):
        clock.advance(1.0)
    (rate,) = g.member_views()[0]["partition_rates"]
    if window:
        assert g.adapter_stats["meta_updates"] == before
        assert rate["msgs_s"] == pytest.approx(200.0, abs=10)
    else:
        assert g.adapter_stats["meta_updates"] == before + 2
    g.stop()


def test_an_idle_member_is_ticked_when_something_is_due_not_every_tenth(tmp_path: Path) -> None:
    """Issue 23 (idle39): the core is ticked at its next deadline (a probe,
    its timeout, a gossip round), on the 0.1 s grid of the node's other
    loops -- not ten times a second.  Over a minute of a settled 3-node
    cluster (every probe answered; the clock moved in 10 ms steps, so no
    grid is imposed by the test) each node ticks a few times a second, its
    probes go out once a probe period as before, and nobody is suspected."""
    clock, net, nodes = cluster(tmp_path, 3)
    before = [g.ticks for g in nodes]
    probes = [g.stats["probes_sent"] for g in nodes]
    for _ in range(6000):  # 60 s
        clock.advance(0.01)
        net.pump()
    ticks = [g.ticks - b for g, b in zip(nodes, before, strict=True)]
    # (every 0.1 s before: 600 a node)
    assert all(t <= 60 * 3 for t in ticks), ticks
    sent = [g.stats["probes_sent"] - p for g, p in zip(nodes, probes, strict=True)]
    assert all(50 <= s <= 62 for s in sent), sent  # one per 1 s probe period (56 before)
    assert all(sum(m.state == "alive" for m in g.members()) == 3 for g in nodes)
    # Each tick falls on the 0.1 s grid (the reactor turn of the other loops).
    at = nodes[0]._tick_at
    assert nodes[0]._tick_call is not None and abs(at / 0.1 - round(at / 0.1)) < 1e-6


def test_an_input_brings_the_next_tick_forward(tmp_path: Path) -> None:
    """A change that makes work due sooner than the armed tick (here new
    metadata, gossiped at the next gossip round) re-arms the tick for it: the
    update reaches the other members within a few gossip rounds."""
    clock, net, nodes = cluster(tmp_path, 3)
    net.run(5.0)
    nodes[2].set_meta(http="http://127.0.0.1:9999")
    for _ in range(100):  # at most 1 s
        clock.advance(0.01)
        net.pump()
        views = [{v["id"]: v["http"] for v in g.member_views()} for g in nodes[:2]]
        if all(v["n2"] == "http://127.0.0.1:9999" for v in views):
            break
    else:
        raise AssertionError("the new metadata did not spread within 1 s")
