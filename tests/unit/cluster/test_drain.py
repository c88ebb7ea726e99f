"""Drained and stopping nodes (issue 24): the pure rules of :mod:`sprawl.cluster.drain`,
the failover core's tie-break away from them, the metadata's drained flag, and the
controller moving leaderships off them -- only to replicas that hold every committed
record (a node that just restarted and is still catching up takes none)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import task

from sprawl.cluster.dataplane import DataPlane
from sprawl.cluster.drain import avoided, drained_nodes, handoff_target, placeable
from sprawl.cluster.metadata import BadSnapshot, Metadata, check_snapshot
from sprawl.cluster.routing import Router
from sprawl.replication.failover import FailoverCore
from sprawl.replication.messages import Fence, FenceResp, Handoff, LeaderBeat
from sprawl.testing import FakeRPC

# -- the pure rules -------------------------------------------------------------------


def test_avoided_nodes_are_the_drained_and_those_that_left() -> None:
    """Drained by the operator, or gossip says left (a graceful stop); dead ones are
    not avoided (a failover handles them) and neither are live ones."""
    states = {"a": "alive", "b": "left", "c": "dead", "d": "suspect"}
    assert avoided(states, ["d"]) == {"b", "d"}
    assert avoided(states, []) == {"b"}


def test_the_handoff_target_is_the_first_in_sync_replica_that_is_up_and_not_avoided() -> None:
    """Placement order decides among the eligible; the leader itself, a replica
    behind, one down and an avoided one are never chosen; an unknown in-sync set
    chooses nobody (the leadership waits rather than going to a lagging node)."""
    reps = ["a", "b", "c"]
    up = ["a", "b", "c"]
    assert handoff_target(reps, "a", {"a"}, {"a", "b", "c"}, up) == "b"
    assert handoff_target(reps, "a", {"a"}, {"a", "c"}, up) == "c"  # b is catching up
    assert handoff_target(reps, "a", {"a", "c"}, {"a", "b", "c"}, up) == "b"
    assert handoff_target(reps, "a", {"a", "b"}, {"a", "b", "c"}, up) == "c"
    assert handoff_target(reps, "a", {"a"}, {"a", "b", "c"}, ["a", "c"]) == "c"  # b is down
    assert handoff_target(reps, "a", {"a"}, {"a"}, up) is None  # nobody caught up
    assert handoff_target(reps, "a", {"a"}, None, up) is None  # not known yet


def test_placeable_nodes_leave_out_the_drained_unless_every_node_is() -> None:
    """New replicas go to undrained nodes; a topic must still be placed somewhere."""
    assert placeable(["c", "a", "b"], ["b"]) == ["a", "c"]
    assert placeable(["a", "b"], ["a", "b"]) == ["a", "b"]
    assert placeable(["a", "a"], []) == ["a"]


# -- the failover core ---------------------------------------------------------------------


def _fenced(core: FailoverCore, answers: dict[str, tuple[int, int]]) -> Any:
    core.start_failover()
    epoch = core.fencing.epoch  # type: ignore[union-attr]
    out = None
    for r, (last_epoch, end) in answers.items():
        out = core.receive(r, FenceResp(epoch, True, last_epoch, end))
    return out


def test_a_tie_with_the_best_is_broken_away_from_an_avoided_replica() -> None:
    """Fenced answers where the stopping leader a and c hold the same log: c is
    chosen although a ranks first in the replica order."""
    core = FailoverCore(("a", "b", "c"), epoch=1, leader="a")
    core.avoid = frozenset({"a"})
    out = _fenced(core, {"a": (1, 10), "c": (1, 10)})
    assert out.commit is not None and out.commit.leader == "c"


def test_an_avoided_replica_ahead_of_the_others_is_still_chosen() -> None:
    """Safety first: a stopping leader holding records nobody else has keeps the
    leadership (the hand-off is retried later); without ``avoid`` the order decides."""
    core = FailoverCore(("a", "b", "c"), epoch=1, leader="a")
    core.avoid = frozenset({"a"})
    out = _fenced(core, {"a": (1, 11), "c": (1, 10)})
    assert out.commit is not None and out.commit.leader == "a"
    plain = FailoverCore(("a", "b", "c"), epoch=1, leader="a")
    out = _fenced(plain, {"a": (1, 10), "c": (1, 10)})
    assert out.commit is not None and out.commit.leader == "a"


# -- the metadata flag -------------------------------------------------------------------


def _meta() -> Metadata:
    m = Metadata()
    m.apply(1, {"op": "put_node", "node_id": "a", "raft_id": 1})
    m.apply(2, {"op": "put_node", "node_id": "b", "raft_id": 2})
    return m


def test_set_drained_marks_and_clears_a_member() -> None:
    """Drain, drain again (no change), undrain; an unknown node is refused and
    a malformed command changes nothing."""
    m = _meta()
    assert m.apply(3, {"op": "set_drained", "node_id": "b", "drained": True}) == {
        "node_id": "b",
        "drained": True,
        "changed": True,
    }
    assert m.apply(4, {"op": "set_drained", "node_id": "b", "drained": True})["changed"] is False
    assert m.apply(5, {"op": "set_drained", "node_id": "a", "drained": True})["changed"] is True
    assert drained_nodes(m) == ["a", "b"]
    assert m.apply(6, {"op": "set_drained", "node_id": "a", "drained": False})["changed"] is True
    assert m.drained == ["b"]
    err = m.apply(7, {"op": "set_drained", "node_id": "zz", "drained": True})["error"]
    assert err["code"] == "node_not_found" and err["status"] == 404
    bad = m.apply(8, {"op": "set_drained", "node_id": "b", "drained": "yes"})["error"]
    assert bad["code"] == "malformed_command"
    assert m.drained == ["b"]


def test_the_drained_flag_survives_a_snapshot_and_is_absent_while_none_is() -> None:
    """A snapshot carries the drained nodes (a restart keeps them); one with
    none drained has no such field, so nodes that predate it read it as before."""
    m = _meta()
    import msgspec

    assert "drained" not in msgspec.msgpack.decode(m.snapshot())
    m.apply(3, {"op": "set_drained", "node_id": "a", "drained": True})
    back = Metadata.restore(m.snapshot())
    assert back.drained == ["a"] and back == m
    raw = msgspec.msgpack.decode(m.snapshot())
    raw["drained"] = ["not a node id!"]
    with pytest.raises(BadSnapshot):
        check_snapshot(msgspec.msgpack.encode(raw))


# -- the controller ----------------------------------------------------------------------


def _plane(states: dict[str, str]) -> tuple[DataPlane, list[tuple[str, Any]]]:
    clock = task.Clock()
    meta = Metadata()
    for i, n in enumerate(["a", "b", "c"]):
        meta.nodes[n] = {"raft_id": i + 1, "peer": "", "http": ""}
    meta.topics["t"] = {
        "config": {"partitions": 1, "replication_factor": 3},
        "created_index": 1,
        "groups": {},
    }
    meta.placement["t"] = [{"replicas": ["a", "b", "c"], "leader": "b", "epoch": 2}]
    control = SimpleNamespace(
        metadata=meta,
        leader_name="a",
        dead_grace=30.0,
        is_leader=True,
        watch_topics=lambda listener: None,
        is_foreign=lambda view: False,
    )
    members = SimpleNamespace(
        member_views=lambda: [{"id": n, "state": st} for n, st in states.items()], listeners=[]
    )
    broker = SimpleNamespace(topics={}, notify=lambda t, p: None)
    plane = DataPlane("a", broker, control, SimpleNamespace(handlers={}), FakeRPC(), clock, members)  # type: ignore[arg-type]
    sent: list[tuple[str, Any]] = []
    plane.service.run_control = lambda key, out: sent.extend(out.messages)  # type: ignore[method-assign]
    core = FailoverCore(("a", "b", "c"), epoch=2, leader="b")
    core.receive("b", LeaderBeat(2, 0, 0))
    plane.service.controllers[("t", 0)] = core
    return plane, sent


def test_a_stopping_leader_hands_its_partition_to_an_in_sync_replica() -> None:
    """b left (a graceful stop): the controller asks it to pause and hand over to
    the first in-sync replica (a hand-off, no fencing yet)."""
    plane, sent = _plane({"a": "alive", "b": "left", "c": "alive"})
    plane.controller.in_sync = lambda key, leader, now: {"a", "b", "c"}  # type: ignore[method-assign]
    plane.controller.tick()
    core = plane.service.controllers[("t", 0)]
    assert sent == [("b", Handoff(2, "a", core.handoff_ticks))]
    assert core.moving_to == "a" and core.avoid == {"b"}


def test_a_drained_leader_hands_over_too_and_never_to_a_lagging_replica() -> None:
    """b is drained (alive): same hand-off; with only c caught up, c is the
    target; with nobody caught up, nothing moves yet."""
    plane, sent = _plane({"a": "alive", "b": "alive", "c": "alive"})
    plane.control.metadata.drained = ["b"]
    plane.controller.in_sync = lambda key, leader, now: {"b", "c"}  # type: ignore[method-assign]
    plane.controller.tick()
    assert sent == [("b", Handoff(2, "c", 10))]
    plane2, sent2 = _plane({"a": "alive", "b": "alive", "c": "alive"})
    plane2.control.metadata.drained = ["b"]
    plane2.controller.in_sync = lambda key, leader, now: {"b"}  # type: ignore[method-assign]
    plane2.controller.tick()
    assert sent2 == [] and not plane2.service.controllers[("t", 0)].busy


def test_gossip_saying_a_leader_left_runs_a_controller_step_at_once() -> None:
    """The leave's gossip event starts the hand-off in the next reactor turn,
    not at the next tick (issue 24); other events do not step."""
    states = {"a": "alive", "b": "alive", "c": "alive"}
    plane, sent = _plane(states)
    plane.controller.in_sync = lambda key, leader, now: {"a", "b", "c"}  # type: ignore[method-assign]
    plane.controller.tick()
    assert sent == []
    (listener,) = plane.membership.listeners  # type: ignore[union-attr]
    listener(SimpleNamespace(kind="suspect"))
    plane.reactor.advance(0)
    assert sent == [] and plane.controller.pokes == 0
    states["b"] = "left"
    listener(SimpleNamespace(kind="left"))
    listener(SimpleNamespace(kind="left"))  # one step however often asked
    plane.reactor.advance(0)
    assert plane.controller.pokes == 1
    assert sent == [("b", Handoff(2, "a", 10))]


def test_the_in_sync_answer_a_hand_off_waits_for_runs_a_step_at_once() -> None:
    """A stopping leader's in-sync replicas are not known yet: the controller
    asks the leader, and its answer starts the hand-off at once."""
    from twisted.internet.defer import Deferred

    plane, sent = _plane({"a": "alive", "b": "left", "c": "alive"})
    rpc = plane.controller.rpc
    status: Deferred[Any] = Deferred()
    rpc.answer = lambda peer, method, body: status  # type: ignore[attr-defined]
    plane.controller.tick()
    assert sent == []  # asked, not known yet
    assert [(peer, method) for peer, method, _ in rpc.calls] == [("b", "partition_status")]  # type: ignore[attr-defined]
    status.callback({"in_sync": ["a", "b", "c"]})
    assert sent == []
    plane.reactor.advance(0)
    assert sent == [("b", Handoff(2, "a", 10))]


def test_a_stopping_controller_hands_its_own_partitions_over_first() -> None:
    """The controller's own node is stopping (before it hands Raft over): it
    avoids itself and hands the partitions it leads to an in-sync replica."""
    plane, sent = _plane({"a": "alive", "b": "alive", "c": "alive"})
    plane.control.metadata.placement["t"][0]["leader"] = "a"
    core = FailoverCore(("a", "b", "c"), epoch=2, leader="a")
    core.receive("a", LeaderBeat(2, 0, 0))
    plane.service.controllers[("t", 0)] = core
    plane.partition_view = lambda name, p: {"in_sync": ["a", "c"]}  # type: ignore[method-assign]
    plane.controller.local_view = plane.partition_view
    plane.controller.tick()
    assert sent == []
    plane.controller.stopping = True
    plane.controller.poke()
    plane.reactor.advance(0)
    assert sent == [("a", Handoff(2, "c", 10))]


def test_a_hand_off_goes_only_to_a_node_heard_beating_lately() -> None:
    """With node beats on, a replica whose beat this controller has not heard
    lately (restarted a moment ago: its first beat, naming its new boot, would
    fail the new leadership over again) is no target; once it beats, it is."""
    plane, sent = _plane({"a": "alive", "b": "left", "c": "alive"})
    plane.service.node_beats = lambda: True
    plane.controller.in_sync = lambda key, leader, now: {"a", "b", "c"}  # type: ignore[method-assign]
    plane.service.liveness.heard("a", 0.0, boot=1)  # (the controller itself needs no beat)
    plane.controller.tick()
    assert sent == [("b", Handoff(2, "a", 10))]  # a: the controller's own node
    plane2, sent2 = _plane({"a": "alive", "b": "left", "c": "alive"})
    plane2.service.node_beats = lambda: True
    plane2.control.metadata.placement["t"][0]["replicas"] = ["c", "a", "b"]
    plane2.service.controllers[("t", 0)] = core = FailoverCore(("c", "a", "b"), epoch=2, leader="b")
    core.receive("b", LeaderBeat(2, 0, 0))
    plane2.controller.in_sync = lambda key, leader, now: {"a", "b", "c"}  # type: ignore[method-assign]
    plane2.controller.tick()
    assert sent2 == [("b", Handoff(2, "a", 10))]  # c is first in order but never beat
    plane3, sent3 = _plane({"a": "alive", "b": "left", "c": "alive"})
    plane3.service.node_beats = lambda: True
    plane3.control.metadata.placement["t"][0]["replicas"] = ["c", "a", "b"]
    plane3.service.controllers[("t", 0)] = core = FailoverCore(("c", "a", "b"), epoch=2, leader="b")
    core.receive("b", LeaderBeat(2, 0, 0))
    plane3.controller.in_sync = lambda key, leader, now: {"a", "b", "c"}  # type: ignore[method-assign]
    plane3.service.liveness.heard("c", plane3.reactor.seconds(), boot=7)
    plane3.controller.tick()
    assert sent3 == [("b", Handoff(2, "c", 10))]


def test_a_dead_leader_is_failed_over_as_before() -> None:
    """Dead (not left): no hand-off to wait for, the replicas are fenced at once."""
    plane, sent = _plane({"a": "alive", "b": "dead", "c": "alive"})
    plane.controller.in_sync = lambda key, leader, now: {"a", "b", "c"}  # type: ignore[method-assign]
    plane.controller.tick()
    assert sent and all(isinstance(m, Fence) and m.epoch == 3 for _dst, m in sent)


def test_a_drained_node_gets_no_new_replica_but_keeps_its_own() -> None:
    """Growing a replica set skips a drained node; one it already holds stays."""
    plane, _ = _plane({"a": "alive", "b": "alive", "c": "alive"})
    plane.control.metadata.drained = ["c"]
    plane.controller.tick()  # the controller reads the drained set
    core = FailoverCore(("a", "b"), epoch=2, leader="b")
    core.receive("b", LeaderBeat(2, 0, 0))
    live = ["a", "b", "c"]
    assert plane.controller.wanted_replicas("t", 0, ["a", "b"], 3, live, 0.0, core) is None
    full = FailoverCore(("a", "b", "c"), epoch=2, leader="b")
    full.receive("b", LeaderBeat(2, 0, 0))
    assert plane.controller.wanted_replicas("t", 0, ["a", "b", "c"], 3, live, 0.0, full) is None


# -- the router's retries ---------------------------------------------------------------


def test_a_leader_fenced_for_a_later_epoch_refuses_at_once() -> None:
    """The applied placement still names this node, but its replica was fenced
    for a later epoch (its leadership is being handed off): a forwarded publish
    is refused at once (the entry node retries on the next placement) instead
    of waiting for an assignment that will name another node."""
    from twisted.internet.defer import Deferred

    from sprawl.cluster.routing import NotLeaderError

    clock = task.Clock()
    core = SimpleNamespace(is_leader=False, fenced_epoch=4)
    sync = SimpleNamespace(
        is_local=lambda name, p: False,
        service=SimpleNamespace(replicas={("t", 0): SimpleNamespace(core=core)}),
        placement=lambda name, p: {"leader": "a", "replicas": ["a", "b", "c"], "epoch": 3},
    )
    router = Router("a", SimpleNamespace(), sync, FakeRPC(), clock)  # type: ignore[arg-type]
    d = Deferred.fromCoroutine(
        router._publish_once(SimpleNamespace(name="t"), 0, [], "quorum", 1, 10.0, set())
    )  # type: ignore[arg-type]
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(NotLeaderError) and failures[0].value.code == "not_leader"
    assert clock.getDelayedCalls() == []


def test_a_retry_goes_as_soon_as_the_placement_changes() -> None:
    """A publish waiting to retry is woken by the new placement being applied,
    not only by its backoff; a timed-out wait leaves no waiter behind."""
    clock = task.Clock()
    router = Router("a", SimpleNamespace(), SimpleNamespace(), FakeRPC(), clock)  # type: ignore[arg-type]
    fired: list[str] = []
    router._placement_or("t", 0.25).addCallback(lambda _: fired.append("t"))
    router._placement_or("u", 0.25).addCallback(lambda _: fired.append("u"))
    clock.advance(0.01)
    router.placement_changed("t")
    assert fired == ["t"]
    clock.advance(0.3)
    assert fired == ["t", "u"]
    assert router._placement_waiters == {} and clock.getDelayedCalls() == []


# -- a restarted follower catching up -------------------------------------------------------


def test_a_follower_has_caught_up_once_an_append_reaches_the_leaders_high_watermark() -> None:
    """Built (a restart), a follower has not caught up; an append that ends below
    the leader's high watermark leaves it so; one that reaches it sets it for good."""
    from sprawl.replication.messages import Append
    from sprawl.replication.replica import Replica

    f = Replica("f", "ctrl")
    assert not f.caught_up
    f.receive("l", Append(epoch=1, start=0, prev_epoch=0, count=4, runs=((1, 0),), hw=8))
    assert not f.caught_up and f.end == 4
    f.receive("l", Append(epoch=1, start=4, prev_epoch=1, count=4, runs=((1, 4),), hw=8))
    assert f.caught_up
    f.receive("l", Append(epoch=1, start=8, prev_epoch=1, count=1, runs=((1, 8),), hw=20))
    assert f.caught_up


def test_readiness_waits_for_the_followed_replicas_then_never_flaps() -> None:
    """The plane's readiness check names the partitions still catching up (with a
    live leader), and once all caught up it answers None for good."""
    plane, _ = _plane({"a": "alive", "b": "alive", "c": "alive"})
    behind = SimpleNamespace(core=SimpleNamespace(is_leader=False, caught_up=False))
    plane.service.replicas[("t", 0)] = behind  # type: ignore[assignment]
    why = plane.readiness()
    assert why is not None and "t/0" in why
    behind.core.caught_up = True
    assert plane.readiness() is None
    behind.core.caught_up = False  # falls behind later, under load: still ready
    assert plane.readiness() is None


def test_a_node_nobody_asks_stops_walking_its_replicas_once_they_caught_up() -> None:
    """Issue 23 (idle39): while not ready, the plane describes the replicas
    still catching up every ``CATCHING_UP_LOG_SECONDS`` -- a walk over every
    replica.  Once a walk finds none behind, the node counts as caught up (as
    ``/readyz`` would find) and walks no more, even if nobody asks
    ``/readyz``: a minute of ticks after that walks nothing."""
    from sprawl.cluster.dataplane import CATCHING_UP_LOG_SECONDS

    plane, _ = _plane({"a": "alive", "b": "alive", "c": "alive"})
    core = SimpleNamespace(is_leader=False, caught_up=False, epoch=2, fenced_epoch=2, led_epoch=0)
    core.__dict__.update(leader="b", placed_leader="b", end=0, hw=0, unheard_ticks=0, ask_ticks=30)
    plane.service.replicas[("t", 0)] = SimpleNamespace(core=core)  # type: ignore[assignment]
    walks = []
    walk = plane.catching_up

    def counted() -> list[str]:
        walks.append(plane.reactor.seconds())
        return walk()

    plane.catching_up = counted  # type: ignore[method-assign]
    clock = plane.reactor
    plane._describe_catching_up()  # (the first call sets the first due time)
    for _ in range(2):
        clock.advance(CATCHING_UP_LOG_SECONDS)  # type: ignore[attr-defined]
        plane._describe_catching_up()
    assert len(walks) == 2  # behind: described each time
    core.caught_up = True
    clock.advance(CATCHING_UP_LOG_SECONDS)  # type: ignore[attr-defined]
    plane._describe_catching_up()
    assert len(walks) == 3
    for _ in range(600):  # a minute of the plane's ticks
        clock.advance(0.1)  # type: ignore[attr-defined]
        if not plane._caught_up_once:
            plane._describe_catching_up()
    assert len(walks) == 3  # (a walk every 10 s before: 9)
    assert plane.readiness() is None and len(walks) == 3


def test_a_stopping_node_with_nobody_to_hand_over_to_does_not_wait() -> None:
    """The last node of a cluster stopping leads a partition no follower is
    caught up on: the drain ends at once (not after its bound); with a caught-up
    follower up, it waits for the move (bounded) instead."""
    from twisted.internet.defer import Deferred

    plane, _ = _plane({"a": "left", "b": "dead", "c": "alive"})
    core = SimpleNamespace(
        is_leader=True, hw=10, followers={"b": SimpleNamespace(match=10), "c": SimpleNamespace(match=4)}
    )
    plane.service.replicas[("t", 0)] = SimpleNamespace(core=core)  # type: ignore[assignment]
    d = Deferred.fromCoroutine(plane.drain(10.0))
    assert d.called and d.result is False
    core.followers["c"].match = 10
    d = Deferred.fromCoroutine(plane.drain(10.0))
    assert not d.called
    core.is_leader = False  # the controller moved it; the placement names c
    plane.control.metadata.placement["t"][0]["leader"] = "c"
    plane.reactor.advance(0.05)
    assert d.called and d.result is True


def test_a_publish_waits_briefly_for_the_assignment_the_placement_announced() -> None:
    """The applied placement names this node before the controller's assignment
    reaches its replica: the publish waits for it (bounded) instead of being
    refused and sent round again; without the assignment it is refused as before."""
    from twisted.internet.defer import Deferred

    from sprawl.cluster.routing import ASSIGN_WAIT
    from sprawl.errors import Unavailable

    clock = task.Clock()
    core = SimpleNamespace(is_leader=False, fenced_epoch=3)
    replica = SimpleNamespace(core=core)
    sync = SimpleNamespace(
        is_local=lambda name, p: False,
        service=SimpleNamespace(replicas={("t", 0): replica}),
        placement=lambda name, p: {"leader": "a", "replicas": ["a", "b", "c"], "epoch": 3},
    )
    router = Router("a", SimpleNamespace(), sync, FakeRPC(), clock)  # type: ignore[arg-type]

    async def replicated(*args: Any) -> str:
        return "published"

    router._publish_replicated = replicated  # type: ignore[method-assign,assignment]
    topic = SimpleNamespace(name="t")
    d = Deferred.fromCoroutine(router._publish_once(topic, 0, [], "quorum", 0, 10.0, set()))  # type: ignore[arg-type]
    clock.advance(0.02)
    assert not d.called
    core.is_leader = True
    clock.advance(0.005)
    assert d.called and d.result == "published"
    core.is_leader = False
    d = Deferred.fromCoroutine(router._publish_once(topic, 0, [], "quorum", 0, 10.0, set()))  # type: ignore[arg-type]
    clock.pump([0.005] * int(ASSIGN_WAIT / 0.005 + 2))
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(Unavailable) and failures[0].value.code == "no_leader"
