"""Raft takes messages only from members, and checks a snapshot before storing it
(:meth:`RaftWire.received <sprawl.cluster.raft_wire.RaftWire.received>`, :func:`sprawl.cluster.raft_wire.message_flaw`).

A real one-voter :class:`ClusterControl` on real LMDB is fed RAFT frames as the
peer channel would hand them over: messages from a node that is neither in the
configuration nor a live gossip member are dropped before the core sees them
(so a higher term changes nothing), and a snapshot that does not check out is
refused and never persisted -- on a joining node too, which still takes a good
snapshot from the first leader that reaches it (the join path).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_twisted

from harness import the_reactor, until
from sprawl.cluster.cluster_ids import CLUSTER_HEADER
from sprawl.cluster.control import ClusterControl
from sprawl.cluster.metadata import Metadata
from sprawl.cluster.placement import raft_id_of
from sprawl.cluster.raft_wire import message_flaw
from sprawl.config import NodeConfig
from sprawl.peer.tcp import PeerChannel
from sprawl.pubsub import Broker
from sprawl.raft.messages import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
    encode_message,
)
from sprawl.storage.lmdb import LmdbStore

ME = "n1"


class _Gossip:
    """The member views ClusterControl reads (and the listeners and metadata it sets)."""

    def __init__(self) -> None:
        self.views: list[dict[str, Any]] = []
        self.listeners: list[Any] = []
        self.built = 0

    def member_views(self) -> list[dict[str, Any]]:
        self.built += 1
        return self.views

    def change(self, kind: str, views: list[dict[str, Any]]) -> None:
        """The members change as gossip says it: the views, then an event."""
        from types import SimpleNamespace

        from sprawl.gossip.membership import MemberEvent

        self.views = views
        for listener in self.listeners:
            listener(MemberEvent(kind, SimpleNamespace(node_id=views[0]["id"])))  # type: ignore[arg-type]

    def set_meta(self, **fields: Any) -> None:
        pass


class Node:
    def __init__(self, path: Path, bootstrap: bool) -> None:
        reactor = the_reactor()
        self.store = LmdbStore(str(path / "lmdb"), reactor=reactor, map_size=64 * 1024**2)
        self.store.open()
        self.broker = Broker(NodeConfig(data_dir=str(path)), self.store, reactor, ME)
        self.broker.recover()
        self.gossip = _Gossip()
        self.control = ClusterControl(
            ME,
            self.broker,
            self.store,
            reactor,
            PeerChannel(ME, reactor, random.Random(1)),
            self.gossip,
            bootstrap=bootstrap,
            rng=random.Random(1),
        )

    async def close(self) -> None:
        self.control.stop()
        await self.broker.stop()
        await self.store.close()

    def frame(self, peer: str, m: Message) -> None:
        """A RAFT frame as a peer sends it: the cluster id, then the message."""
        cluster = self.control.cluster_id or 0xC0FFEE
        self.control.wire.received(peer, CLUSTER_HEADER.pack(cluster) + encode_message(m))


@pytest_twisted.async_yield_fixture
async def leader(tmp_path: Path) -> AsyncIterator[Node]:
    """A founding node leading a one-voter cluster, holding one topic."""
    n = Node(tmp_path / "leader", True)
    await n.control.start()
    await n.control.leader_known()
    await n.control.put_topic("kept", {"partitions": 2})
    yield n
    await n.close()


@pytest_twisted.async_yield_fixture
async def joiner(tmp_path: Path) -> AsyncIterator[Node]:
    """A node that did not found a cluster: its configuration is empty."""
    n = Node(tmp_path / "joiner", False)
    await n.control.start()
    yield n
    await n.close()


def _snap(index: int, term: int, data: bytes, voters: tuple[int, ...]) -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, ConfState(voters=voters)), data)


def _empty_metadata() -> bytes:
    return Metadata().snapshot()


@pytest_twisted.ensureDeferred
async def test_a_stranger_with_a_higher_term_changes_nothing(leader: Node) -> None:
    """A heartbeat, an append, a vote request and a snapshot deleting every topic,
    all with a far higher term, from a node that is not a member: each is dropped
    and counted; this node still leads its term and keeps its topic."""
    drv = leader.control.driver
    assert drv is not None
    term = drv.node.term
    rid = raft_id_of("stranger")
    for m in (
        Message(MessageType.HEARTBEAT, to=raft_id_of(ME), frm=rid, term=term + 100, commit=10**6),
        Message(
            MessageType.APP, to=raft_id_of(ME), frm=rid, term=term + 100, index=10**6, log_term=term + 99
        ),
        Message(MessageType.VOTE, to=raft_id_of(ME), frm=rid, term=term + 100, index=10**9, log_term=10**9),
        Message(
            MessageType.SNAP,
            to=raft_id_of(ME),
            frm=rid,
            term=term + 100,
            snapshot=_snap(10**6, term + 100, _empty_metadata(), (rid,)),
        ),
    ):
        leader.frame("stranger", m)
    assert leader.control.wire.refused_not_member == 4
    assert drv.node.term == term and drv.is_leader
    assert "kept" in leader.broker.topics and "kept" in leader.control.metadata.topics


@pytest_twisted.ensureDeferred
async def test_our_own_id_and_misaddressed_messages_are_dropped(leader: Node) -> None:
    """A message claiming to come from this node, or naming another sender than the
    connection's peer, or another receiver, or a local-only type, never reaches Raft."""
    drv = leader.control.driver
    assert drv is not None
    term = drv.node.term
    me = raft_id_of(ME)
    before = leader.control.wire.dropped_frames
    leader.frame(ME, Message(MessageType.HEARTBEAT, to=me, frm=me, term=term + 5))
    leader.frame("a", Message(MessageType.HEARTBEAT, to=me, frm=raft_id_of("b"), term=term + 5))
    leader.frame("a", Message(MessageType.HEARTBEAT, to=raft_id_of("c"), frm=raft_id_of("a"), term=term + 5))
    leader.frame("a", Message(MessageType.HUP, to=me, frm=raft_id_of("a")))
    leader.control.wire.received(
        "a", CLUSTER_HEADER.pack(leader.control.cluster_id or 0) + b"\xc1 not msgpack"
    )
    assert leader.control.wire.dropped_frames - before == 5
    assert drv.node.term == term and drv.is_leader


@pytest_twisted.ensureDeferred
async def test_a_live_gossip_member_outside_the_configuration_is_heard(leader: Node) -> None:
    """A node gossip holds alive is heard although this node's configuration does
    not list it (a configuration that lags: the sender joined later)."""
    leader.gossip.change("join", [{"id": "newer", "peer": "127.0.0.1:9", "http": "", "state": "alive"}])
    leader.control.voter_control.step()
    assert leader.control.wire.is_member(raft_id_of("newer"), "newer")
    assert not leader.control.wire.is_member(raft_id_of("stranger"), "stranger")
    leader.gossip.change("dead", [{"id": "newer", "peer": "127.0.0.1:9", "http": "", "state": "dead"}])
    leader.control.voter_control.step()
    assert not leader.control.wire.is_member(raft_id_of("newer"), "newer")


@pytest_twisted.ensureDeferred
async def test_idle_steps_build_the_member_views_once_per_gossip_event(leader: Node) -> None:
    """The voter control's steps (twice a second, and on every Raft apply)
    read gossip's member views -- every member's partition rates decoded --
    only again after a gossip event, not on each step (issue 23, idle34)."""
    leader.gossip.change("join", [{"id": "newer", "peer": "127.0.0.1:9", "http": "", "state": "alive"}])
    vc = leader.control.voter_control
    vc.step()
    built = leader.gossip.built
    for _ in range(20):
        vc.step()
    assert leader.gossip.built == built
    leader.gossip.change("suspect", [{"id": "newer", "peer": "127.0.0.1:9", "http": "", "state": "suspect"}])
    vc.step()
    vc.step()
    assert leader.gossip.built == built + 1
    assert [v["state"] for v in vc.members()] == ["suspect"]


@pytest_twisted.ensureDeferred
async def test_a_joining_node_refuses_a_bad_snapshot_and_takes_a_good_one(joiner: Node) -> None:
    """A node waiting to be added takes its first leader's messages (its configuration
    is empty), but a snapshot that does not check out -- garbage data, a topic name
    the node would never take, no voters -- is refused and not stored; the Raft
    driver keeps running and then installs a good snapshot with its topic."""
    ctl = joiner.control
    drv = ctl.driver
    assert drv is not None
    me, lead = raft_id_of(ME), raft_id_of("lead")
    bad_topic = msgspec.msgpack.encode(
        {
            "v": 1,
            "applied": 5,
            "topics": {"..": {"config": {}, "created_index": 2, "groups": {}}},
            "placement": {},
            "nodes": {},
        }
    )
    for snap in (
        _snap(10, 2, b"\xc1garbage", (lead,)),
        _snap(10, 2, bad_topic, (lead,)),
        _snap(10, 2, _empty_metadata(), ()),
    ):
        joiner.frame("lead", Message(MessageType.SNAP, to=me, frm=lead, term=2, snapshot=snap))
    assert ctl.wire.refused_bad_snapshot == 3
    assert drv.storage.snapshot().meta.index == 0, "nothing was persisted"
    assert drv.failed is None
    good = Metadata()
    good.apply(
        3, {"op": "put_topic", "name": "from-leader", "config": {"partitions": 1}, "placement": [[ME]]}
    )
    joiner.frame(
        "lead",
        Message(MessageType.SNAP, to=me, frm=lead, term=2, snapshot=_snap(10, 2, good.snapshot(), (lead,))),
    )
    await until(lambda: "from-leader" in joiner.broker.topics, "the good snapshot to be installed")
    assert drv.storage.snapshot().meta.index == 10
    assert drv.failed is None


@pytest.mark.parametrize(
    "entry",
    [
        Entry(2, 5, EntryType.CONF_CHANGE, b"\xc1"),
        Entry(2, 5, EntryType.CONF_CHANGE, msgspec.msgpack.encode([9, 1])),
        Entry(2, 5, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.ADD_VOTER, 0).encode()),
    ],
)
def test_an_append_with_a_bad_configuration_change_is_refused(entry: Entry) -> None:
    """A configuration change that would not decode (or names node 0) makes the whole
    append refused before Raft stores it; a good one passes."""
    m = Message(MessageType.APP, to=1, frm=2, term=2, index=4, log_term=2, entries=(entry,))
    assert message_flaw(m) is not None
    ok = Entry(2, 5, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.ADD_LEARNER, 7).encode())
    assert message_flaw(Message(MessageType.APP, to=1, frm=2, term=2, entries=(ok,))) is None
