"""What a stranger can do to the cluster plane of real ``twistd`` nodes.

Three clusters of three nodes, one at a time (a module fixture per mode), each
holding topics, a consumer group and acknowledged messages:

* ``nokey`` -- no cluster key, no CA: the peer port is on loopback only, so
  the attacker is a *local* stranger.  It speaks as a node id of its own
  ("mallory"); what a local process can do by claiming a member's id, or by
  gossiping itself alive first, is not refused -- docs/security.md says so.
* ``key`` -- a cluster key, gossip and the peer channel bound to 0.0.0.0 with
  ``--advertise-addr 127.0.0.1`` (the tests send only loopback traffic): the
  attacker does not hold the key (it tries none, and a wrong one).
* ``ca`` -- a cluster CA, per-node certificates: the attacker holds a
  certificate of a foreign CA, or one of the cluster CA naming another node.

For each: forged hellos, Raft (higher term, a snapshot deleting everything, a
garbage snapshot), replication (Append with reset and a huge epoch), the peer
RPCs (publish, fetch, group pull/ack/describe), gossip (Alive moving a member,
Suspect/Dead of the node at the wire's top incarnation, fake members, a
push-pull flood), oversized frames and a connection flood.  Each is refused or
ignored, the node keeps serving, and at the end every topic and acknowledged
message is still there on every node (read back).
"""

from __future__ import annotations

import itertools
import json
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

from harness import (
    HostilePeer,
    NodeCluster,
    NodeProcess,
    http_json,
    make_key_file,
    make_node_cert,
    make_test_pki,
    metric_value,
    partition_views,
    poll_until,
    send_gossip,
)
from sprawl.cluster.metadata import Metadata
from sprawl.cluster.placement import raft_id_of
from sprawl.gossip.messages import Alive, Dead, PushPull, Suspect
from sprawl.peer.frames import RAFT, REPLICATION, REQUEST, encode_frame
from sprawl.raft.messages import ConfState, Message, MessageType, Snapshot, SnapshotMeta, encode_message
from sprawl.replication.messages import Append, encode

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("hostile_peers")]

STRANGER = "mallory"
TOP = 2**63 - 1


@dataclass
class Target:
    """One cluster under attack, and what it acknowledged."""

    mode: str
    cluster: NodeCluster
    key: bytes | None = None
    pki: dict[str, str] = field(default_factory=dict)
    #: (topic, partition) -> [(offset, id, payload)] of every acknowledged message.
    acked: dict[tuple[str, int], list[tuple[int, str, str]]] = field(default_factory=dict)
    voters: list[str] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def url(self, node: str = "n0") -> str:
        return self.cluster.url(node)

    def port(self, node: str = "n0") -> int:
        return self.cluster.nodes[node].peer_port

    def metric(self, name: str, node: str = "n0", **labels: str) -> float:
        return metric_value(self.url(node), name, **labels)

    def raft(self, node: str = "n0") -> dict[str, Any]:
        return dict(self.cluster.cluster_view(node).get("raft", {}))

    def peer(self, claim: str = STRANGER, to: str = "n0", node: str = "n0", **kw: Any) -> HostilePeer:
        """A hostile peer as this mode's attacker is equipped."""
        if self.mode == "ca" and "tls" not in kw:
            kw["tls"] = self.tls("stranger")
        return HostilePeer(self.port(node), claim, to, **kw)

    def tls(self, who: str) -> ssl.SSLContext:
        """A client TLS context presenting a foreign-CA certificate (``stranger``)
        or a cluster-CA certificate naming ``who``."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if who == "stranger":
            ctx.load_cert_chain(self.pki["stranger_cert"], self.pki["stranger_key"])
        else:
            cert, key = make_node_cert(self.pki, who)
            ctx.load_cert_chain(cert, key)
        return ctx

    def rid(self) -> int:
        return next(self._ids)


def _publish(url: str, topic: str, key: str, payloads: list[str], ids: list[str]) -> dict[str, Any]:
    msgs = [{"payload": p, "key": key, "id": i} for p, i in zip(payloads, ids, strict=True)]
    status, body = http_json(
        f"{url}/v1/topics/{topic}/messages", "POST", {"messages": msgs, "acks": "quorum"}, timeout=20
    )
    assert status == 200, body
    return dict(body)


def _read_partition(url: str, topic: str, p: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    nxt: Any = "earliest"
    for _ in range(100):
        status, body = http_json(
            f"{url}/v1/topics/{topic}/messages?partition={p}&from={nxt}&limit=500", timeout=10
        )
        assert status == 200, body
        if not body["messages"]:
            return out
        out += body["messages"]
        nxt = body["next"]
    return out


def _log_end(t: Target, node: str, topic: str, p: int) -> int | None:
    status, desc = t.cluster.get(node, f"/v1/topics/{topic}")
    view = next((v for v in partition_views(desc) if v.get("partition") == p), {}) if status == 200 else {}
    return view.get("log_end")


def _mode_args(mode: str, base: Path) -> tuple[list[str], Any, bytes | None, dict[str, str]]:
    if mode == "nokey":
        return [], None, None, {}
    if mode == "key":
        keyfile = make_key_file(base / "cluster.key")
        from sprawl.config import read_cluster_key_file

        args = ["--cluster-key-file", keyfile, "--bind-addr", "0.0.0.0", "--advertise-addr", "127.0.0.1"]
        return args, None, read_cluster_key_file(keyfile), {}
    pki = make_test_pki(base / "pki")
    certs = {n: make_node_cert(pki, n) for n in ("n0", "n1", "n2")}

    def per_node(name: str) -> list[str]:
        cert, key = certs[name]
        return ["--cluster-ca", pki["ca"], "--peer-tls-cert", cert, "--peer-tls-key", key]

    return [], per_node, None, pki


@pytest.fixture(scope="module", params=["nokey", "key", "ca"])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """A formed 3-node cluster of one security mode, with data to protect."""
    mode = request.param
    base = tmp_path_factory.mktemp(f"hostile-{mode}")
    args, per_node, key, pki = _mode_args(mode, base)
    cluster = NodeCluster(base, 3, "--raft-dead-grace", "300s", *args, per_node=per_node)
    try:
        cluster.start()
        t = Target(mode, cluster, key, pki)
        url = t.url()
        for name, parts in (("orders", 2), ("audit", 1)):
            status, body = http_json(
                f"{url}/v1/topics/{name}", "PUT", {"partitions": parts, "replication_factor": 3}, timeout=15
            )
            assert status in (200, 201), body
        status, body = http_json(
            f"{url}/v1/topics/orders/groups/workers", "PUT", {"start": "earliest"}, timeout=15
        )
        assert status in (200, 201), body
        for topic, parts in (("orders", 2), ("audit", 1)):
            for p in range(parts):
                key_ = next(
                    f"k{i}" for i in range(1000) if __import__("zlib").crc32(f"k{i}".encode()) % parts == p
                )
                ids = [f"{topic}-{p}-{i}" for i in range(20)]
                payloads = [f"{mode} {topic} {p} #{i}" for i in range(20)]
                ans = _publish(cluster.url(cluster.names[p % 3]), topic, key_, payloads, ids)
                t.acked[(topic, p)] = list(zip(ans["offsets"], ids, payloads, strict=True))
        t.voters = list(t.raft()["voters"])
        assert t.voters == ["n0", "n1", "n2"]
        yield t
    finally:
        cluster.close()


# -- handshakes ----------------------------------------------------------------


def test_forged_hellos_are_refused(target: Target) -> None:
    """Hellos no node would accept: claiming the node's own id, meant for another
    node, (key) without the key or with another one, (CA) with a foreign CA's
    certificate or a cluster certificate naming another node than claimed."""
    t = target
    before = t.metric("sprawl_peer_handshake_failures_total")
    attempts = [t.peer("n0"), t.peer(STRANGER, to="n1")]
    if t.mode == "key":
        attempts += [t.peer("n1"), t.peer("n1", key=b"w" * 32), t.peer(STRANGER, key=b"w" * 32)]
    if t.mode == "ca":
        attempts += [
            t.peer("n1"),
            t.peer("n1", tls=t.tls("intruder")),
            t.peer(STRANGER, tls=t.tls("intruder")),
        ]
    for p in attempts:
        try:
            assert not p.connect(), f"{p.node_id} was welcomed"
        finally:
            p.close()
    after = t.metric("sprawl_peer_handshake_failures_total")
    # (CA: the foreign certificates fail TLS itself, before any hello; the
    # cluster certificates naming "intruder" fail at the hello)
    assert after - before >= (2 if t.mode == "ca" else len(attempts))


def _blast(t: Target, frames: list[tuple[int, bytes]], node: str = "n0", claim: str = STRANGER) -> None:
    """Send ``frames`` as the mode's attacker: behind a hello that is welcomed
    (nokey: a stranger's id) or, where the hello is refused, pipelined right
    behind it before any answer (and once more after the refusal)."""
    p = t.peer(claim, to=node, node=node)
    try:
        if t.mode == "nokey":
            assert p.connect(), "a local stranger's own id is welcomed"
            for kind, payload in frames:
                assert p.send(kind, payload)
        else:
            stream = b"".join(encode_frame(k, pl) for k, pl in frames)
            assert not p.connect(pipelined=stream)
            p.send_raw(stream)
    finally:
        p.close()


# -- Raft ----------------------------------------------------------------------


def test_raft_from_a_stranger_changes_nothing(target: Target) -> None:
    """A heartbeat, an append and a vote request with a far higher term, a snapshot
    holding no topics and a snapshot of garbage: the node keeps its term, its
    leader and its topics (refused as not from a member, or never past the hello)."""
    t = target
    raft = t.raft()
    term, leader = raft["term"], raft["leader"]
    me, frm = raft_id_of("n0"), raft_id_of(STRANGER)
    empty = Snapshot(SnapshotMeta(10**6, term + 100, ConfState(voters=(frm,))), Metadata().snapshot())
    garbage = Snapshot(SnapshotMeta(10**6, term + 100, ConfState(voters=(frm,))), b"\xc1 not a snapshot")
    msgs = [
        Message(MessageType.HEARTBEAT, to=me, frm=frm, term=term + 100, commit=10**6),
        Message(MessageType.APP, to=me, frm=frm, term=term + 100, index=10**6, log_term=term + 99),
        Message(MessageType.VOTE, to=me, frm=frm, term=term + 100, index=10**9, log_term=10**9),
        Message(MessageType.SNAP, to=me, frm=frm, term=term + 100, snapshot=empty),
        Message(MessageType.SNAP, to=me, frm=frm, term=term + 100, snapshot=garbage),
    ]
    refused = t.metric("sprawl_peer_messages_refused_total", reason="raft_not_member")
    # (a RAFT frame starts with the sender's cluster id: any will do, the
    # membership check comes first)
    _blast(t, [(RAFT, (0xC0FFEE).to_bytes(8, "big") + encode_message(m)) for m in msgs])
    if t.mode == "nokey":
        took = poll_until(
            lambda: (
                t.metric("sprawl_peer_messages_refused_total", reason="raft_not_member")
                >= refused + len(msgs)
            ),
            10,
        )
        assert took is not None
    after = t.raft()
    assert (after["term"], after["leader"]) == (term, leader)
    assert {"orders", "audit"} <= {x["name"] for x in http_json(t.url() + "/v1/topics")[1]["topics"]}


# -- replication ---------------------------------------------------------------


def test_a_replication_reset_from_a_stranger_is_refused(target: Target) -> None:
    """Append(reset=True) with a huge epoch, and one carrying records, sent to a
    follower of orders/0: its log and epoch stay as they were."""
    t = target
    place = t.cluster.placement()["orders"]["0"]
    follower = next(n for n in place["replicas"] if n != place["leader"])
    end = _log_end(t, follower, "orders", 0)
    reset = Append(epoch=2**62, start=10**9, prev_epoch=0, count=0, runs=(), hw=0, reset=True)
    fill = Append(epoch=2**62, start=0, prev_epoch=0, count=1, runs=((2**62, 0),), hw=1, reset=True)
    rec = [0, 0, None, None, None, b"forged", True, False]
    frames = [
        (REPLICATION, msgspec.msgpack.encode(["orders", 0, encode(reset), []])),
        (REPLICATION, msgspec.msgpack.encode(["orders", 0, encode(fill), [rec]])),
    ]
    refused = t.metric("sprawl_peer_messages_refused_total", follower, reason="replication")
    _blast(t, frames, node=follower)
    if t.mode == "nokey":
        got = poll_until(
            lambda: (
                t.metric("sprawl_peer_messages_refused_total", follower, reason="replication") >= refused + 2
            ),
            10,
        )
        assert got is not None
    assert (_log_end(t, follower, "orders", 0) or 0) >= end  # (new control records may come)
    _status, desc = t.cluster.get(follower, "/v1/topics/orders")
    view = next(v for v in partition_views(desc) if v.get("partition") == 0)
    assert view["replica_epoch"] < 2**62 and view["low"] == 0
    got = _read_partition(t.url(follower), "orders", 0)
    assert not any(m.get("payload") == "forged" for m in got)


# -- peer RPCs -----------------------------------------------------------------


def test_peer_rpcs_from_a_stranger_are_refused(target: Target) -> None:
    """publish (straight to the partition's leader), fetch, and the group calls
    (pull, ack of everything, describe): nothing is appended, leased or acked."""
    t = target
    place = t.cluster.placement()["orders"]["0"]
    leader = place["leader"]
    end = _log_end(t, leader, "orders", 0)
    status, before = http_json(t.url() + "/v1/topics/orders/groups/workers")
    assert status == 200
    forged = [-1, 0, 0, "forged-id", None, None, b"forged by mallory", True, False]
    calls = [
        ("publish", {"topic": "orders", "partition": 0, "acks": "leader", "records": [forged] * 5}),
        ("fetch", {"topic": "orders", "partition": 0, "start": 0, "limit": 100}),
        (
            "group_pull",
            {"topic": "orders", "group": "workers", "max": 100, "wait_ms": 0, "partitions": [0, 1]},
        ),
        ("group_settle", {"topic": "orders", "group": "workers", "ack_ids": [f"0-{i}-1" for i in range(20)]}),
        ("group_describe", {"topic": "orders", "group": "workers", "partitions": [0, 1]}),
        ("publish", {"topic": "orders", "partition": "zero"}),
    ]
    frames = [(REQUEST, msgspec.msgpack.encode([t.rid(), m, 0, body])) for m, body in calls]
    refused = t.metric("sprawl_peer_messages_refused_total", leader, reason="request")
    _blast(t, frames, node=leader)
    if t.mode == "nokey":
        got = poll_until(
            lambda: (
                t.metric("sprawl_peer_messages_refused_total", leader, reason="request")
                >= refused + len(calls)
            ),
            10,
        )
        assert got is not None
    assert (_log_end(t, leader, "orders", 0) or 0) >= end
    assert not any(
        m.get("payload") == "forged by mallory" for m in _read_partition(t.url(leader), "orders", 0)
    )
    status, after = http_json(t.url() + "/v1/topics/orders/groups/workers")
    assert status == 200
    assert (after["committed"], after["in_flight"]) == (before["committed"], before["in_flight"])


# -- gossip --------------------------------------------------------------------


def _members(t: Target, node: str = "n0") -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in t.cluster.cluster_view(node).get("members", [])}


def test_absurd_incarnations_are_dropped(target: Target) -> None:
    """Suspect and Dead of the node at the wire's top incarnation, and an Alive of it
    far ahead: the node neither refutes up to the limit nor is held dead; its
    incarnation stays where it was (the issue's Suspect(self, 2**63-1))."""
    t = target
    inc = _members(t)["n0"]["incarnation"]
    absurd = t.metric("sprawl_gossip_packets_dropped_total", reason="absurd")
    auth = t.metric("sprawl_gossip_packets_dropped_total", reason="auth")
    sock = send_gossip(
        t.port(),
        [Suspect(TOP, "n0", "n1"), Dead(TOP, "n0", "n1"), Alive(TOP - 1, "n0", ("127.0.0.1", 1), {})],
    )
    sock.close()
    if t.mode == "key":
        assert poll_until(lambda: t.metric("sprawl_gossip_packets_dropped_total", reason="auth") > auth, 10)
    else:
        assert poll_until(
            lambda: t.metric("sprawl_gossip_packets_dropped_total", reason="absurd") >= absurd + 3, 10
        )
    assert _members(t)["n0"]["incarnation"] < inc + 5
    assert all(_members(t, n)["n0"]["state"] == "alive" for n in ("n1", "n2"))


def test_a_moved_member_is_dropped_or_refuted(target: Target) -> None:
    """An Alive moving n1 to the attacker's address, one incarnation up: dropped
    with a key; without one (gossip is not authenticated) n0 believes it until n1
    hears of it and refutes, and every view has n1 back at its own address."""
    t = target
    n1 = _members(t)["n1"]
    inc = n1["incarnation"]
    auth = t.metric("sprawl_gossip_packets_dropped_total", reason="auth")
    send_gossip(t.port(), [Alive(inc + 1, "n1", ("127.0.0.1", 9), {"peer": "127.0.0.1:9"})]).close()
    if t.mode == "key":
        assert poll_until(lambda: t.metric("sprawl_gossip_packets_dropped_total", reason="auth") > auth, 10)
        assert _members(t)["n1"]["peer"] == n1["peer"]
        return
    back = poll_until(
        lambda: all(
            _members(t, n)["n1"]["peer"] == n1["peer"] and _members(t, n)["n1"]["incarnation"] > inc + 1
            for n in ("n0", "n2")
        ),
        30,
    )
    assert back is not None, {n: _members(t, n)["n1"] for n in ("n0", "n2")}


def test_fake_members_never_join_raft_or_placement(target: Target) -> None:
    """Twenty fake members: dropped with a key; without one learned by gossip, but
    none becomes a Raft member or holds a partition -- the controller adds a
    member only once the peer channel reached it and it proved who it is
    (nokey: nobody listens there; CA: nobody with a certificate naming it)."""
    t = target
    fakes = [Alive(1, f"fake-{i}", ("127.0.0.1", 10 + i), {"peer": f"127.0.0.1:{10 + i}"}) for i in range(20)]
    auth = t.metric("sprawl_gossip_packets_dropped_total", reason="auth")
    leader = t.cluster.raft_leader() or "n0"
    dialled = t.metric("sprawl_peer_connects_total", leader)
    send_gossip(t.port(), fakes).close()
    if t.mode == "key":
        assert poll_until(lambda: t.metric("sprawl_gossip_packets_dropped_total", reason="auth") > auth, 10)
        assert "fake-0" not in _members(t)
    else:
        assert poll_until(lambda: "fake-19" in _members(t, leader), 10) is not None
        # the controller (the Raft leader) dials them to see who they are; nobody answers
        assert poll_until(lambda: t.metric("sprawl_peer_connects_total", leader) >= dialled + 20, 15)
    raft = t.raft()
    assert not any(n.startswith("fake") for n in (*raft["voters"], *raft.get("learners", [])))
    status, body = http_json(
        t.url() + "/v1/topics/fresh", "PUT", {"partitions": 4, "replication_factor": 3}, timeout=15
    )
    assert status in (200, 201), body
    placed = t.cluster.placement()["fresh"]
    assert all(not r.startswith("fake") for pl in placed.values() for r in pl["replicas"])
    assert all(sorted(pl["replicas"]) == ["n0", "n1", "n2"] for pl in placed.values())


def test_a_push_pull_flood_gets_a_few_answers(target: Target) -> None:
    """Two hundred push-pull requests from one address, each with a new ``req``: a
    handful of full-state answers come back (none with a key), not one per request."""
    t = target
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    from sprawl.gossip import wire

    for req in range(200):
        sock.sendto(wire.encode_packet([PushPull(req, False, False, 0, 1, [])]), ("127.0.0.1", t.port()))
    reqs: set[int] = set()
    sock.settimeout(5.0 if t.mode != "key" else 1.0)  # the first answer may be slow on a busy machine
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        sock.settimeout(1.0)  # then: until a second passes without one
        try:
            msgs = wire.decode_packet(data, t.key, wire.ABSOLUTE_MAX_PACKET)
        except wire.DecodeError:
            continue
        reqs |= {m.req for m in msgs if isinstance(m, PushPull) and m.reply}
    sock.close()
    if t.mode == "key":
        assert reqs == set()
    else:
        assert 1 <= len(reqs) <= 8
        assert t.metric("sprawl_gossip_push_pulls_limited_total") >= 150


# -- frames and connections ----------------------------------------------------


def test_oversized_frames_cost_nothing(target: Target) -> None:
    """A first frame announcing 50 MB is refused by its length with nothing buffered;
    (nokey) after a welcome, a Raft frame announcing 70 MiB is skipped as it
    streams and the connection stays in sync."""
    t = target
    p = t.peer()
    try:
        if t.mode == "ca":
            assert not p.connect()
        else:
            import os

            raw = socket.create_connection(("127.0.0.1", t.port()), timeout=5)
            raw.sendall((50 << 20).to_bytes(4, "big") + b"\x02" + os.urandom(4096))
            raw.settimeout(5)
            data = b""
            for _ in range(100):
                try:
                    chunk = raw.recv(65536)
                except (ConnectionResetError, TimeoutError):
                    break
                if not chunk:
                    break
                data += chunk
            raw.close()
            assert len(data) < 100, "refused after the challenge"
        if t.mode == "nokey":
            dropped = t.metric("sprawl_peer_frames_dropped_total", reason="oversize")
            assert p.connect()
            big = 70 << 20
            assert p.send_raw(big.to_bytes(4, "big") + bytes((RAFT,)) + b"\0" * (1 << 20))
            assert p.send_raw(b"\0" * (big - 1 - (1 << 20)))
            assert p.send(RAFT, b"after")
            assert poll_until(
                lambda: t.metric("sprawl_peer_frames_dropped_total", reason="oversize") > dropped, 20
            )
            assert not p.closed_by_node(0.2)
    finally:
        p.close()


def test_a_connection_flood_leaves_the_cluster_working(target: Target) -> None:
    """A hundred and fifty connections that never say hello: the node closes the excess
    (counted), keeps serving HTTP, and its own peer connections still replicate
    (a publish with acks=quorum succeeds)."""
    t = target
    refused = t.metric("sprawl_peer_connections_refused_total")
    socks = []
    try:
        for _ in range(150):
            s = socket.socket()
            s.settimeout(2)
            try:
                s.connect(("127.0.0.1", t.port()))
            except OSError:
                s.close()
                continue
            socks.append(s)
        assert poll_until(lambda: t.metric("sprawl_peer_connections_refused_total") >= refused + 100, 15)
        ans = _publish(t.url(), "audit", "k0", ["after the flood"], [f"flood-{t.mode}"])
        t.acked[("audit", 0)].append((ans["offsets"][0], f"flood-{t.mode}", "after the flood"))
    finally:
        for s in socks:
            s.close()


# -- afterwards ----------------------------------------------------------------


def test_every_topic_and_acknowledged_message_is_still_there(target: Target) -> None:
    """Read back from every node: every topic, every acknowledged message at its
    offset with its id and payload; the same voters; every node ready."""
    t = target
    for node in t.cluster.names:
        # Ready again within a bound: on a loaded machine a node may be between
        # leaders for a moment (late heartbeats), which is not the attack's doing;
        # a node the attacks left unready for good fails here, naming why.
        last: list[object] = []

        def ready(node: str = node, last: list[object] = last) -> bool:
            last[:] = list(t.cluster.get(node, "/readyz"))
            return last[0] == 200

        assert poll_until(ready, 15) is not None, f"{node} not ready: {last}"
        assert sorted(t.raft(node)["voters"]) == t.voters
        for (topic, p), acked in t.acked.items():
            got = {m["offset"]: m for m in _read_partition(t.url(node), topic, p)}
            for off, mid, payload in acked:
                assert off in got, f"{node}: {topic}/{p} lost offset {off}"
                assert (got[off]["id"], got[off]["payload"]) == (mid, payload)
            assert not any(m.get("payload") == "forged by mallory" for m in got.values())


# -- the safe default, as a real process sees it -------------------------------


def _bound_addresses(port: int) -> set[str]:
    """The local addresses listening on ``port``: TCP listeners and UDP sockets (IPv4)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/udp"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            addr, p = cols[1].split(":")
            listening = table.endswith("udp") or cols[3] == "0A"
            if int(p, 16) == port and listening:
                out.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return out


def test_without_a_key_the_peer_port_is_loopback_and_wider_refuses(tmp_path: Path) -> None:
    """A node started with no peer options listens for gossip and peers on 127.0.0.1
    only; asked for 0.0.0.0 without a key it does not start, with one line saying
    how to make a key; --insecure-cluster starts it, and says so loudly."""
    node = NodeProcess(tmp_path / "plain", loopback_peer=False).start()
    try:
        assert _bound_addresses(node.peer_port) == {"127.0.0.1"}
    finally:
        node.stop()
    wide = NodeProcess(tmp_path / "wide", "--bind-addr", "0.0.0.0", loopback_peer=False)
    with pytest.raises(RuntimeError) as e:
        wide.start()
    lines = [ln for ln in str(e.value).splitlines() if "sprawlctl cluster keygen" in ln]
    assert len(lines) == 1 and "--cluster-key" in lines[0]
    loud = NodeProcess(
        tmp_path / "loud", "--bind-addr", "0.0.0.0", "--insecure-cluster", loopback_peer=False
    ).start()
    try:
        assert _bound_addresses(loud.peer_port) == {"0.0.0.0"}
        assert "INSECURE CLUSTER" in loud.log_text()
    finally:
        loud.stop()


@pytest.mark.parametrize("target", ["key"], indirect=True)
def test_the_keyed_cluster_listens_wide_and_advertises_loopback(target: Target) -> None:
    """(key) The three nodes bind gossip and the peer channel on 0.0.0.0 and gossip
    127.0.0.1 as their address: they formed, replicate, and every frame between
    them is authenticated (no handshake failure between members)."""
    t = target
    for node in t.cluster.names:
        assert _bound_addresses(t.port(node)) == {"0.0.0.0"}
        assert all(m["peer"].startswith("127.0.0.1:") for m in _members(t, node).values())
    body = json.loads(urllib.request.urlopen(t.url() + "/v1/cluster", timeout=5).read())
    assert body["partitions"]["under_replicated"] == 0
