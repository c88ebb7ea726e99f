"""The controller's membership steps in :class:`ClusterControl`, on a ``task.Clock``.

Three in-process nodes -- real :class:`ClusterControl`, :class:`RaftDriver` and
:class:`RaftNode`, Raft state in memory, frames carried between them by a
fake peer channel with 1 ms of (virtual) latency, gossip faked -- so every
step of a forming cluster happens in virtual time and can be timed exactly:

* from the moment gossip reports the new members, the voter target is
  reached in well under one controller tick (0.5 s): each step is taken as
  soon as the previous change is applied or the learner it waits for has
  caught up, not at the next tick;
* never two configuration changes in flight;
* Raft frames carry the cluster id: a joining node adopts its leader's, a
  frame of another cluster is dropped and counted;
* the fault tolerance every node reports follows the voters and gossip.
"""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

from twisted.internet import defer, task

from sprawl.cluster.cluster_ids import CLUSTER_HEADER, cluster_hex
from sprawl.cluster.control import ClusterControl
from sprawl.cluster.placement import raft_id_of
from sprawl.peer.frames import RAFT
from sprawl.raft.messages import ConfState, EntryType, Message, MessageType, encode_message
from sprawl.raft.node import Ready
from sprawl.raft.storage import MemoryStorage

LATENCY = 0.001  # seconds of virtual time per frame
TICK = 0.5  # the controller's periodic step (ClusterControl: 5 Raft ticks of 0.1 s)


class MemRaftStorage(MemoryStorage):
    """Raft state in memory with the writes the driver makes (durable at once)."""

    def __init__(self, conf: ConfState | None = None, cluster_id: int | None = None) -> None:
        super().__init__(conf)
        self.cluster_id = cluster_id

    def save_ready(self, rd: Ready, urgent: bool = True) -> defer.Deferred[None]:
        if rd.snapshot is not None:
            self.apply_snapshot(rd.snapshot)
        self.append(rd.entries)
        if rd.hard_state is not None:
            self.set_hard_state(rd.hard_state)
        return defer.succeed(None)

    def set_cluster_id(self, cluster_id: int) -> defer.Deferred[None]:
        self.cluster_id = cluster_id
        return defer.succeed(None)

    def is_empty(self) -> bool:
        return self.last_index() == 0 and self.snapshot().is_empty()


class Net:
    """The nodes, their fake channels and gossip views, on one clock."""

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock
        self.controls: dict[str, ClusterControl] = {}
        #: node -> {member id -> gossip view}
        self.views: dict[str, dict[str, dict[str, Any]]] = {}
        self.meta: dict[str, dict[str, Any]] = {}

    def deliver(self, src: str, dst: str, kind: int, payload: bytes) -> bool:
        def arrive() -> None:
            ctl = self.controls.get(dst)
            if ctl is not None and kind in ctl.channel.handlers:
                ctl.channel.handlers[kind](src, payload)

        self.clock.callLater(LATENCY, arrive)
        return True

    def see(self, who: str, member: str, state: str = "alive") -> None:
        """``who``'s gossip now holds ``member`` in ``state``, and tells its listeners."""
        new = member not in self.views[who]
        view = {"id": member, "peer": f"127.0.0.1:{1000 + len(member)}", "http": "", "state": state}
        view.update({k: v for k, v in self.meta.get(member, {}).items() if k == "cluster" and v})
        view["self"] = member == who
        self.views[who][member] = view
        kind = "join" if new else ("alive" if state == "alive" else state)
        for fn in list(self.controls[who].membership.listeners):
            fn(SimpleNamespace(kind=kind, member=None))


class FakeChannel:
    """The peer channel's surface ClusterControl uses, over :class:`Net`."""

    def __init__(self, net: Net, name: str) -> None:
        self.net, self.name = net, name
        self.handlers: dict[int, Any] = {}
        self.on_unreachable: Any = lambda peer: None
        self.on_proven: Any = lambda peer: None
        self.proven: dict[str, float] = {}

    def send(self, peer: str, kind: int, payload: bytes) -> bool:
        return self.net.deliver(self.name, peer, kind, payload)

    def probe(self, peer: str) -> None:
        """A node of the net answers the handshake one hop later (and is then proven)."""

        def answered() -> None:
            if peer in self.net.controls and peer not in self.proven:
                self.proven[peer] = self.net.clock.seconds()
                self.on_proven(peer)

        self.net.clock.callLater(2 * LATENCY, answered)

    def set_address(self, peer: str, host: str, port: int) -> None:
        pass

    def connected(self, peer: str) -> bool:
        return True


class FakeGossip:
    """What ClusterControl reads of gossip: views, listeners, metadata."""

    def __init__(self, net: Net, name: str) -> None:
        self.net, self.name = net, name
        self.listeners: list[Any] = []

    def member_views(self) -> list[dict[str, Any]]:
        return [dict(v) for _, v in sorted(self.net.views[self.name].items())]

    def set_meta(self, **fields: Any) -> None:
        self.net.meta.setdefault(self.name, {}).update(fields)


async def _node(net: Net, name: str, founder: bool) -> ClusterControl:
    rid = raft_id_of(name)
    net.views[name] = {}
    ctl = ClusterControl(
        name,
        SimpleNamespace(topics={}),  # a broker with no topics: only node registrations are applied
        None,
        net.clock,
        FakeChannel(net, name),  # type: ignore[arg-type]
        FakeGossip(net, name),
        bootstrap=founder,
        rng=random.Random(rid),
        snapshot_entries=10**9,
    )
    net.controls[name] = ctl
    storage = MemRaftStorage(ConfState((rid,)), cluster_id=0xC0FFEE) if founder else MemRaftStorage()
    await ctl.start(storage)
    net.see(name, name)
    return ctl


def _run_until(clock: task.Clock, cond: Any, bound: float, step: float = 0.001) -> float | None:
    """Advance the clock in ``step``s until ``cond()``; the virtual seconds it took (None: not within bound)."""
    start = clock.seconds()
    for _ in range(int(bound / step) + 1):
        if cond():
            return clock.seconds() - start
        clock.advance(step)
    return None


def _conf_changes_in_flight(ctl: ClusterControl) -> int:
    node = ctl.driver.node  # type: ignore[union-attr]
    lo, hi = node.log.applied + 1, node.log.last_index() + 1
    if lo >= hi:
        return 0
    return sum(
        1 for e in node.log.slice(max(lo, node.log.first_index()), hi) if e.type == EntryType.CONF_CHANGE
    )


async def _formed(clock: task.Clock) -> tuple[Net, float]:
    """A 3-node cluster: n0 founds it, n1 and n2 appear in every node's gossip at
    once; returns the net and the virtual seconds from that moment to 3 voters."""
    net = Net(clock)
    n0 = await _node(net, "n0", founder=True)
    for name in ("n1", "n2"):
        await _node(net, name, founder=False)
    assert _run_until(clock, lambda: n0.is_leader, 1.0) is not None
    clock.advance(0.3)  # the leader settles (its no-op applied); off any tick boundary

    proposals: list[int] = []
    drv = n0.driver
    assert drv is not None
    real = drv.propose_conf_change

    def watched(cc: Any) -> None:
        # One configuration change at a time: nothing else unapplied when one is proposed.
        assert _conf_changes_in_flight(n0) == 0, "a configuration change was proposed over another"
        proposals.append(cc.node_id)
        real(cc)

    drv.propose_conf_change = watched  # type: ignore[method-assign]
    for who in ("n0", "n1", "n2"):
        for member in ("n0", "n1", "n2"):
            if member != who:
                net.see(who, member)
    took = _run_until(clock, lambda: len(n0.driver.node.voters) == 3, 5.0)  # type: ignore[union-attr]
    assert took is not None, n0.raft_view()
    assert len(proposals) == 4, proposals  # add n1, add n2, promote both: nothing wasted
    return net, took


def test_voter_target_within_a_fraction_of_a_tick() -> None:
    """From gossip reporting two new members to three voters takes a few round
    trips of virtual time -- far less than one controller tick (0.5 s).  Waiting
    for the tick between steps (register, add, add, promote, promote) took 2 s
    and more."""
    clock = task.Clock()
    d = defer.ensureDeferred(_formed(clock))
    clock.advance(0)
    net, took = d.result if not isinstance(d.result, BaseException) else (None, None)  # type: ignore[misc]
    assert net is not None, d.result
    assert took < TICK / 2, f"voter target reached after {took:.3f} s of virtual time"
    n0 = net.controls["n0"]
    assert n0.time_to_target is not None and n0.time_to_target < TICK / 2
    for ctl in net.controls.values():
        ctl.stop()


def test_cluster_id_adopted_and_foreign_frames_dropped() -> None:
    """The joiners adopt the founder's cluster id (and gossip it); a Raft frame
    stamped with another cluster's id is dropped and counted, not stepped."""
    clock = task.Clock()
    d = defer.ensureDeferred(_formed(clock))
    clock.advance(0)
    net, _ = d.result  # type: ignore[misc]
    n0, n1 = net.controls["n0"], net.controls["n1"]
    assert n0.cluster_id == n1.cluster_id == net.controls["n2"].cluster_id == 0xC0FFEE
    assert net.meta["n1"]["cluster"] == cluster_hex(0xC0FFEE)
    term = n1.driver.node.term
    vote = Message(MessageType.VOTE, to=n1.raft_id, frm=n0.raft_id, term=term + 5, index=99, log_term=99)
    n1.channel.handlers[RAFT]("n0", CLUSTER_HEADER.pack(0xBAD) + encode_message(vote))
    assert n1.wire.foreign_frames == 1 and n1.driver.node.term == term
    n1.channel.handlers[RAFT]("n0", b"\x00\x01")  # shorter than the cluster id
    assert n1.wire.dropped_frames >= 1 and n1.driver.node.term == term
    for ctl in net.controls.values():
        ctl.stop()


def test_fault_tolerance_follows_voters_and_gossip() -> None:
    """Every node reports 3 voters of a target of 3 and tolerance 1 once formed; a
    voter that gossip holds dead leaves tolerance 0 and not fault-tolerant."""
    clock = task.Clock()
    d = defer.ensureDeferred(_formed(clock))
    clock.advance(0)
    net, _ = d.result  # type: ignore[misc]
    clock.advance(0.2)  # the followers apply the last promotion
    for ctl in net.controls.values():
        view = ctl.raft_view()
        assert (view["target_voters"], view["fault_tolerance"], view["fault_tolerant"]) == (3, 1, True), view
    net.see("n1", "n2", "dead")
    view = net.controls["n1"].raft_view()
    assert (view["live_voters"], view["fault_tolerance"], view["fault_tolerant"]) == (2, 0, False), view
    for ctl in net.controls.values():
        ctl.stop()


def test_the_control_shows_the_api_the_cluster_it_forced() -> None:
    """``/readyz`` of a node no seed has answered yet asks the control
    (:class:`sprawl.interfaces.RaftStatus`) whether it forced a new cluster:
    "" until ``--force-new-cluster`` founds one, then that cluster's id."""
    from sprawl.http.status import NodeInfo, NodeStatus

    clock = task.Clock()
    net = Net(clock)
    d = defer.ensureDeferred(_node(net, "n0", founder=True))
    clock.advance(0)
    ctl = d.result
    assert ctl.forced == ""
    member = SimpleNamespace(joined=False, member_views=lambda: [], live_member_ids=lambda: [])
    info = NodeInfo("n0", membership=member, raft=ctl)
    info.ready = True
    broker = SimpleNamespace(stopping=False, store=SimpleNamespace(failed=None))
    status = NodeStatus(info, broker, None)  # type: ignore[arg-type]
    assert status.readiness() == (False, "joining the cluster: no seed has answered yet")
    ctl.recovery.forced = cluster_hex(0xC0FFEE)
    assert ctl.forced == cluster_hex(0xC0FFEE)
    ctl.stop()
