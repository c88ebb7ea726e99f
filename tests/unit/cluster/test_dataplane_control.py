"""The controller's replica-set steps (``PartitionController.wanted_replicas``) with a
load move's goal in the placement: the goal's node is added first, and the
hot replica leaves only once the goal's replicas hold every committed record
-- after its leadership moved, if it led."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet import task

from sprawl.cluster.dataplane import DataPlane
from sprawl.cluster.metadata import Metadata
from sprawl.replication.failover import FailoverCore
from sprawl.replication.messages import Fence, LeaderBeat
from sprawl.testing import FakeRPC


def _plane(live: list[str]) -> tuple[DataPlane, task.Clock]:
    clock = task.Clock()
    meta = Metadata()
    for i, n in enumerate(["a", "b", "c", "d"]):
        meta.nodes[n] = {"raft_id": i + 1, "peer": "", "http": ""}
    control = SimpleNamespace(
        metadata=meta, leader_name="a", dead_grace=30.0, is_leader=True, watch_topics=lambda listener: None
    )
    broker = SimpleNamespace(topics={}, notify=lambda t, p: None)
    plane = DataPlane("a", broker, control, SimpleNamespace(handlers={}), FakeRPC(), clock)  # type: ignore[arg-type]
    return plane, clock


def _confirmed(leader: str, reps: tuple[str, ...]) -> FailoverCore:
    c = FailoverCore(reps, epoch=2, leader=leader)
    c.receive(leader, LeaderBeat(2, 0, 0))
    assert c.leader_confirmed
    return c


def test_a_goal_adds_its_node_first_then_drops_the_hot_replica() -> None:
    """Goal [d, b, c] for replicas [a, b, c] led by b: add d; then, once the
    goal holds every committed record, drop a (not the leader)."""
    plane, _ = _plane(["a", "b", "c", "d"])
    live = ["a", "b", "c", "d"]
    goal = ["d", "b", "c"]
    c = _confirmed("b", ("a", "b", "c"))
    assert plane.controller.wanted_replicas("t", 0, ["a", "b", "c"], 3, live, 0.0, c, goal) == [
        "a",
        "b",
        "c",
        "d",
    ]
    c4 = _confirmed("b", ("a", "b", "c", "d"))
    plane.controller.in_sync = lambda key, leader, now: {"b", "c"}  # type: ignore[method-assign]
    assert (
        plane.controller.wanted_replicas("t", 0, ["a", "b", "c", "d"], 3, live, 0.0, c4, goal) is None
    )  # d catching up
    plane.controller.in_sync = lambda key, leader, now: {"a", "b", "c", "d"}  # type: ignore[method-assign]
    assert plane.controller.wanted_replicas("t", 0, ["a", "b", "c", "d"], 3, live, 0.0, c4, goal) == [
        "b",
        "c",
        "d",
    ]


def test_a_hot_leader_hands_over_before_it_leaves() -> None:
    """When the replica to drop leads, the controller moves the leadership to
    the goal's first node instead (and changes no replicas yet)."""
    plane, _ = _plane(["a", "b", "c", "d"])
    live = ["a", "b", "c", "d"]
    c4 = _confirmed("a", ("a", "b", "c", "d"))
    plane.controller.in_sync = lambda key, leader, now: {"a", "b", "c", "d"}  # type: ignore[method-assign]
    sent: list[Any] = []
    plane.service.run_control = lambda key, out: sent.extend(out.messages)  # type: ignore[method-assign]
    assert (
        plane.controller.wanted_replicas("t", 0, ["a", "b", "c", "d"], 3, live, 0.0, c4, ["d", "b", "c"])
        is None
    )
    assert c4.moving_to == "d" and sent, "a hand-off (or fencing) towards d started"
    assert all(not isinstance(m, Fence) or m.epoch == 3 for _dst, m in sent)


def test_a_goal_with_a_node_gone_falls_back_to_rendezvous() -> None:
    """A goal naming a node that is not eligible is ignored."""
    plane, _ = _plane(["a", "b", "c"])
    c = _confirmed("b", ("a", "b", "c"))
    got = plane.controller.wanted_replicas(
        "t", 0, ["a", "b", "c"], 3, ["a", "b", "c"], 0.0, c, ["x", "b", "c"]
    )
    assert got is None  # rendezvous over a, b, c is the current set


def test_a_dead_replica_is_replaced_by_a_node_gossip_does_not_suspect() -> None:
    """A replica dead past the grace is replaced from the goal's order, but a
    node gossip suspects (in a long network partition: cut off too, and about
    to be declared dead) comes last -- a replica placed there could not catch
    up.  The move towards the goal waits while its node is suspect, and goes
    on once it is alive again."""
    plane, _ = _plane(["a", "b", "c", "d"])
    ctl = plane.controller
    ctl._dead_since["c"] = -100.0  # dead past the 30 s grace at t=0
    live = ["a", "b", "d"]
    c = _confirmed("a", ("a", "b", "c"))
    # With every live node alive, the fill-up takes the goal's order: d (the only other).
    assert ctl.wanted_replicas("t", 0, ["a", "b", "c"], 3, live, 0.0, c) == ["a", "b", "d"]
    # Add e; find the partition whose goal prefers d over e, then suspect d.
    plane.control.metadata.nodes["e"] = {"raft_id": 5, "peer": "", "http": ""}
    live = ["a", "b", "d", "e"]
    first = ctl.wanted_replicas("t", 0, ["a", "b", "c"], 3, live, 0.0, c)
    assert first is not None and first[:2] == ["a", "b"]
    chosen = first[2]
    other = "e" if chosen == "d" else "d"
    ctl._states = {chosen: "suspect"}
    assert ctl.wanted_replicas("t", 0, ["a", "b", "c"], 3, live, 0.0, c) == ["a", "b", other]
    # Both suspect: a suspect node is still better than a set short of replicas.
    ctl._states = {"d": "suspect", "e": "suspect"}
    assert ctl.wanted_replicas("t", 0, ["a", "b", "c"], 3, live, 0.0, c) == ["a", "b", chosen]
    # The set [a, b, other] is not the goal: the step towards it waits while
    # its node is suspect, and adds it once it is alive.
    ctl._dead_since.clear()
    c2 = _confirmed("a", ("a", "b", other))
    ctl._states = {chosen: "suspect"}
    # (the goal over a, b, d, e holds ``chosen``: it came before ``other`` in its order)
    assert ctl.wanted_replicas("t", 0, ["a", "b", other], 3, live, 0.0, c2) is None
    ctl._states = {chosen: "alive"}
    assert ctl.wanted_replicas("t", 0, ["a", "b", other], 3, live, 0.0, c2) == ["a", "b", other, chosen]


def test_a_raft_leader_whose_store_failed_hands_raft_over() -> None:
    """The node leading Raft hands the leadership over (at most once every
    retry period) when its store failed -- it could not write the next Raft
    entry -- as a drained one does; a healthy undrained leader keeps it."""
    plane, clock = _plane(["a", "b", "c", "d"])
    calls: list[float] = []

    async def hand_off() -> None:
        calls.append(clock.seconds())

    plane.control.hand_off = hand_off  # type: ignore[attr-defined]
    failed = [False]
    plane.service.storage_failed = lambda: failed[0]
    plane._hand_off_raft_if_drained()
    assert calls == []
    failed[0] = True
    plane._hand_off_raft_if_drained()
    plane._hand_off_raft_if_drained()  # (within the retry period: not again)
    assert calls == [0.0]
