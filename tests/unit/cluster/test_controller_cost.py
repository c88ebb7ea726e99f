"""What one controller step costs (issue 23): it looks only at the partitions
a change touched, so with 10,000 idle partitions a step looks at none, and a
dead node's leaderships all fail over in the one step that notices it.

Counted, not timed: :attr:`PartitionController.visits` (partitions looked at)."""

from __future__ import annotations

from collections.abc import Collection
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import defer, task

from harness.placements import round_robin
from sprawl.cluster.dataplane import DataPlane
from sprawl.cluster.metadata import Metadata
from sprawl.errors import SprawlError
from sprawl.replication.envelope import Envelope
from sprawl.replication.failover import Commit
from sprawl.replication.messages import FenceResp, LeaderBeat, encode

NODES = ["a", "b", "c"]


def _plane(
    partitions: int,
    propose: Any = None,
    leader: str | None = None,
    features: Collection[str] | None = ("node-beat",),
) -> tuple[DataPlane, dict[str, str], task.Clock]:
    """A controller (node a, the Raft leader) over ``partitions`` single-partition
    topics of replication factor 3 on a, b, c, leaders spread round robin (or
    all on ``leader``); ``propose`` takes its Raft proposals; the cluster
    features on are ``features`` (by default every node has the node beat)."""
    clock = task.Clock()
    meta = round_robin(partitions, NODES, leader)
    states = dict.fromkeys(NODES, "alive")
    membership = SimpleNamespace(
        member_views=lambda: [{"id": n, "state": st} for n, st in states.items()],
        live_member_ids=lambda: [n for n, st in states.items() if st == "alive"],
    )
    listeners: list[Any] = []
    control = SimpleNamespace(
        metadata=meta,
        leader_name="a",
        dead_grace=30.0,
        is_leader=True,
        watch_topics=listeners.append,
        is_foreign=lambda v: False,
        propose=propose or (lambda cmd: None),
    )
    sent: list[Any] = []
    channel = SimpleNamespace(handlers={}, send=lambda dst, kind, payload: sent.append(dst))
    broker = SimpleNamespace(topics={}, notify=lambda t, p: None, grouped_topics=lambda: [])
    rpc = SimpleNamespace(register=lambda *a: None)
    on = features.__contains__ if features is not None else None
    plane = DataPlane("a", broker, control, channel, rpc, clock, membership, feature_on=on)  # type: ignore[arg-type]
    for name in meta.placement:  # what the metadata apply tells the listeners
        for listener in listeners:
            if getattr(listener, "__self__", None) is plane.controller:
                listener(name)
    return plane, states, clock


def _confirm_all(plane: DataPlane) -> None:
    """Every leader answers the controller's Assign (as real leaders do)."""
    for c in plane.service.controllers.values():
        assert c.leader is not None
        c.receive(c.leader, LeaderBeat(c.epoch, 0, 0))


def _b_dies(plane: DataPlane, states: dict[str, str], clock: task.Clock) -> int:
    """The controller settles (its first step, every leader confirmed, a
    step after), then node b dies by gossip and the next step notices it;
    the partitions that step looked at."""
    ctl = plane.controller
    ctl.tick()
    _confirm_all(plane)
    clock.advance(0.1)
    ctl.tick()
    states["b"] = "dead"
    before = ctl.visits
    clock.advance(0.1)
    ctl.tick()
    return ctl.visits - before


def _idle_step_visits(partitions: int) -> tuple[int, int]:
    """(partitions looked at by the first step, by each later idle step)."""
    plane, _, clock = _plane(partitions)
    ctl = plane.controller
    ctl.tick()
    first = ctl.visits
    _confirm_all(plane)
    clock.advance(0.1)
    ctl.tick()  # the cores just confirmed settle
    before = ctl.visits
    for _ in range(10):
        clock.advance(0.1)
        plane.service.heard("b")
        plane.service.heard("c")
        ctl.tick()
    return first, (ctl.visits - before) // 10


def test_an_idle_step_looks_at_no_partition_however_many_there_are() -> None:
    """Becoming the controller looks at every partition once; after that an
    idle cluster's steps look at none, with 1,000 or 10,000 partitions."""
    first_small, idle_small = _idle_step_visits(1_000)
    first_big, idle_big = _idle_step_visits(10_000)
    assert (first_small, first_big) == (1_000, 10_000)
    assert idle_small == idle_big == 0


def test_a_dead_nodes_leaderships_all_fail_over_in_one_step() -> None:
    """Node b dies (by gossip): the next step fences every partition b leads
    -- a third of 10,000 -- and looks only at the partitions b holds."""
    plane, states, clock = _plane(10_000)
    visits = _b_dies(plane, states, clock)
    led_by_b = [k for k, c in plane.service.controllers.items() if c.fencing is not None]
    assert len(led_by_b) == sum(1 for i in range(10_000) if i % 3 == 1)
    assert visits <= 10_000


def test_a_silent_node_fails_over_without_gossip() -> None:
    """Nothing heard from c (no beat, no frame) for the beat timeout while
    gossip still says alive: its leaderships fail over in one step."""
    plane, _, clock = _plane(3_000)
    ctl = plane.controller
    ctl.tick()
    _confirm_all(plane)
    for _ in range(25):  # 2.5 s > beat_timeout_ticks (20) x 0.1 s; b beats, c does not
        clock.advance(0.1)
        plane.service.heard("b")
        plane.tick()
    fencing = {k for k, c in plane.service.controllers.items() if c.fencing is not None}
    assert fencing == {(f"t{i:05d}", 0) for i in range(3_000) if i % 3 == 2}


def _fail_over_b(partitions: int, batch: bool) -> tuple[DataPlane, list[dict[str, Any]]]:
    """b leads every one of ``partitions`` partitions and dies; a and c answer
    every fence at once (as their frames arrive together).  Returns the plane
    once the choices are committed (each proposal applied to the metadata, as
    Raft does) and the commands proposed."""
    proposed: list[dict[str, Any]] = []
    meta_box: list[Metadata] = []

    def propose(cmd: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
        proposed.append(cmd)
        return defer.succeed(meta_box[0].apply(len(proposed) + 1, cmd))

    features = ("node-beat", "epoch-batch") if batch else ("node-beat",)
    plane, states, clock = _plane(partitions, propose=propose, leader="b", features=features)
    meta_box.append(plane.control.metadata)
    # The one step that notices b dead fences all of b's partitions.
    assert _b_dies(plane, states, clock) == partitions
    for key, c in plane.service.controllers.items():
        assert c.fencing is not None
        for node in ("a", "c"):
            resp = FenceResp(c.fencing.epoch, True, 1, 0)
            plane.service._deliver(node, Envelope(key[0], key[1], encode(resp)))
    clock.advance(0)  # the batch goes out
    return plane, proposed


def _leaders(cores: Any) -> dict[str, int]:
    """How many of ``cores`` (failover cores) each node leads."""
    out: dict[str, int] = {}
    for c in cores:
        out[c.leader] = out.get(c.leader, 0) + 1
    return out


def test_a_dead_nodes_10000_leaderships_move_in_one_raft_proposal() -> None:
    """With the ``epoch-batch`` feature, b's 10,000 leaderships are
    committed in one ``set_partitions`` proposal (one Raft entry), each
    partition at its own next epoch (fencing unchanged), and every core
    hears its commit (it tells the replicas)."""
    plane, proposed = _fail_over_b(10_000, batch=True)
    assert [c["op"] for c in proposed] == ["set_partitions"]
    assert len(proposed[0]["items"]) == 10_000
    assert plane.controller.batch_proposals == 1
    meta = plane.control.metadata
    # (a and c were as up to date: the controller splits b's leaderships evenly)
    assert all(pl[0]["leader"] in ("a", "c") and pl[0]["epoch"] == 2 for pl in meta.placement.values())
    cores = plane.service.controllers
    assert all(c.leader == meta.placement[k[0]][0]["leader"] for k, c in cores.items())
    assert all(c.epoch == 2 and not c.busy for c in cores.values())
    assert _leaders(cores.values()) == {"a": 5_000, "c": 5_000}


def test_without_the_feature_each_failover_is_its_own_proposal() -> None:
    """Until every node can apply ``set_partitions``, the controller proposes
    one ``set_partition`` per partition, as the release before it."""
    plane, proposed = _fail_over_b(300, batch=False)
    assert [c["op"] for c in proposed] == ["set_partition"] * 300
    assert plane.controller.batch_proposals == 0
    cores = plane.service.controllers.values()
    assert all(c.epoch == 2 for c in cores) and _leaders(cores) == {"a": 150, "c": 150}


def test_choices_made_while_a_batch_is_in_flight_go_together_in_the_next() -> None:
    """A group commit: choices made while a ``set_partitions`` proposal is in
    flight wait for it, then go in one proposal; a refused item (a stale
    epoch) fails only its own commit; a failed proposal fails each of its."""
    pending: list[tuple[dict[str, Any], defer.Deferred[dict[str, Any]]]] = []

    def propose(cmd: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        pending.append((cmd, d))
        return d

    plane, _, clock = _plane(3, propose=propose, features=("node-beat", "epoch-batch"))
    ctl = plane.controller
    outcomes: dict[int, str] = {}

    def commit(i: int, epoch: int = 2) -> None:
        d = ctl.commit(f"t{i:05d}", 0, Commit(epoch, "a", ("a", "b", "c")))
        d.addCallbacks(
            lambda _: outcomes.__setitem__(i, "ok"), lambda f: outcomes.__setitem__(i, f.value.code)
        )

    commit(0)
    clock.advance(0)
    commit(1)
    commit(2, epoch=1)
    clock.advance(0)
    assert [len(c["items"]) for c, _ in pending] == [1]  # the second batch waits for the first
    pending[0][1].callback({"results": [{"epoch": 2}]})
    clock.advance(0)
    assert [len(c["items"]) for c, _ in pending] == [1, 2]
    stale = {"error": {"code": "stale_epoch", "message": "epoch 1 is not above 1", "status": 409}}
    pending[1][1].callback({"results": [{"epoch": 2}, stale]})
    assert outcomes == {0: "ok", 1: "ok", 2: "stale_epoch"}
    commit(3)
    clock.advance(0)
    pending[2][1].errback(SprawlError("not committed in time", code="proposal_timeout", status=503))
    assert outcomes[3] == "proposal_timeout" and ctl.batch_proposals == 3


def test_a_controller_that_stalled_fails_over_no_one_for_its_own_silence() -> None:
    """The controller's process stalls for 3 s (longer than the beat
    timeout; under load it is simply not scheduled): the beats sent to it
    meanwhile still wait in its sockets when its timer fires first, so that
    time counts against no node -- nothing fails over, even after eight such
    stalls back to back (a starved node is late on every tick).  A node that then
    stays silent for the beat timeout of the controller's own running time
    still fails over."""
    plane, _, clock = _plane(300)
    ctl = plane.controller
    ctl.tick()
    _confirm_all(plane)
    for _ in range(5):
        clock.advance(0.1)
        plane.service.heard("b")
        plane.service.heard("c")
        plane.tick()
    for _ in range(8):  # stalls back to back: each tick runs before the frames are read
        clock.advance(3.0)
        plane.tick()
    plane.service.heard("b")
    plane.service.heard("c")
    assert not any(c.fencing is not None for c in plane.service.controllers.values())
    for _ in range(25):  # 2.5 s of running time: b beats, c does not
        clock.advance(0.1)
        plane.service.heard("b")
        plane.tick()
    fencing = {k for k, c in plane.service.controllers.items() if c.fencing is not None}
    assert fencing == {(f"t{i:05d}", 0) for i in range(300) if i % 3 == 2}


def test_the_feature_gate_is_asked_at_each_use() -> None:
    """The data plane hands its replication service (``node-beat``) and its
    controller (``epoch-batch``) a question to the cluster feature gate, asked
    each time (the node builds the gate after the plane); without a gate
    neither is on (the release before)."""
    on: set[str] = set()
    plane, _, _ = _plane(3, features=on)
    assert not plane.service.node_beats() and not plane.controller.batch_commits()
    on.add("node-beat")
    assert plane.service.node_beats() and not plane.controller.batch_commits()
    on.add("epoch-batch")
    assert plane.controller.batch_commits()
    bare, _, _ = _plane(3, features=None)
    assert not bare.service.node_beats() and not bare.controller.batch_commits()


@pytest.mark.parametrize(("n", "turns"), [(1_000, 5), (200, 1)])
def test_a_big_batch_of_failovers_is_followed_a_slice_per_reactor_turn(n: int, turns: int) -> None:
    """Applying a ``set_partitions`` of 1,000 topics tells the topic listeners
    (the replicas' and the controller's) of 200 per reactor turn, so the node
    keeps beating between slices (held for seconds in one turn, a survivor
    went silent and had its own partitions failed over as well); the entry
    counts as applied at once (Raft goes on) and the command is answered
    once every topic was followed.  A small batch is followed at once."""
    from types import SimpleNamespace

    from sprawl.cluster.metadata import encode_command
    from sprawl.cluster.metadata_apply import TOPICS_PER_TURN, MetadataApply
    from sprawl.raft.messages import Entry

    turns_due: list[Any] = []  # the reactor's next turns, run one at a time below
    reactor = SimpleNamespace(callLater=lambda delay, f, *a: turns_due.append((f, a)))
    answers: list[str] = []
    items = [
        {"topic": f"t{i:05d}", "partition": 0, "epoch": 2, "leader": "a", "replicas": ["a", "b"]}
        for i in range(n)
    ]
    meta = SimpleNamespace(apply=lambda index, cmd: {"results": [{} for _ in cmd["items"]]})
    control = SimpleNamespace(
        metadata=meta,
        reactor=reactor,
        node_id="c",
        answer=lambda req, result: answers.append(req),
        applied_here=lambda req: None,
    )
    apply = MetadataApply(control, SimpleNamespace(topics={}))  # type: ignore[arg-type]
    heard: list[list[str]] = [[]]
    apply.watch_topics(lambda name: heard[-1].append(name))
    d = apply.apply(Entry(1, 1, data=encode_command({"op": "set_partitions", "items": items, "req": "r"})))
    applied: list[object] = []
    d.addCallback(applied.append)
    assert applied and len(heard[0]) == min(n, TOPICS_PER_TURN)
    for _ in range(10):
        if not turns_due:
            break
        heard.append([])
        f, a = turns_due.pop(0)
        f(*a)
    assert answers == ["r"] and [len(h) for h in heard if h] == [min(n, TOPICS_PER_TURN)] * turns
    assert [x for h in heard for x in h] == [f"t{i:05d}" for i in range(n)]


def test_an_idle_clusters_balancer_view_is_built_once_not_every_decision() -> None:
    """No partition reports a rate and nothing changes: the balancer's view
    of every partition is built for its first decision only; later
    decisions (every 10 s) reuse it -- the same decision, its time moved on
    -- with 10,000 partitions as with 1,000.  A new entry applied is not
    looked at unless a recent move's load depends on the placement (its lead
    counts are); a reported rate builds it again.  (The
    first decision waits for the new controller's leaders to confirm: until
    then no partition could be moved.)"""
    for partitions in (1_000, 10_000):
        plane, _, clock = _plane(partitions)
        ctl = plane.controller
        ctl.tick()
        assert ctl.balancer.last is None and ctl.balance_waited == 1
        _confirm_all(plane)
        plane.service.tick()
        ctl.tick()
        first = ctl.balancer.last
        assert first is not None and ctl.balance_views == 1
        for _ in range(6):  # a minute of idle decisions
            clock.advance(10.0)
            ctl.tick()
        last = ctl.balancer.last
        assert last is not None and ctl.balance_views == 1 and ctl.balance_views_skipped == 6
        assert last.at == clock.seconds() and last.as_dict() | {"at": 0} == first.as_dict() | {"at": 0}
        assert {n: v.leads for n, v in last.nodes.items()} == {
            n: sum(1 for i in range(partitions) if NODES[i % 3] == n) for n in NODES
        }
    views = plane.membership.member_views  # type: ignore[attr-defined]
    idle = [{"topic": "t00000", "partition": 0, "msgs_s": 0.0, "bytes_s": 0.0}]
    plane.membership.member_views = lambda: [  # type: ignore[attr-defined]
        {**v, "partition_rates": idle if v["id"] == "a" else []} for v in views()
    ]
    clock.advance(10.0)
    ctl.tick()
    assert ctl.balance_views == 1  # a rate of 0 is no traffic
    # A change applied -- here a leadership moved from a to b -- while every
    # rate together is under min_load cannot make a node hot: the view is not
    # built again (at 10,000 topics each build cost the controller 50-110 ms
    # during a run of creates, create39), but the decision's lead counts follow.
    meta = plane.control.metadata
    meta.placement["t00000"][0]["leader"] = "b"
    meta.applied += 1
    clock.advance(10.0)
    ctl.tick()
    assert ctl.balance_views == 1
    leads = {n: v.leads for n, v in ctl.balancer.last.nodes.items()}  # type: ignore[union-attr]
    assert leads["a"] == sum(1 for i in range(partitions) if NODES[i % 3] == "a") - 1
    assert leads["b"] == sum(1 for i in range(partitions) if NODES[i % 3] == "b") + 1
    # A partition moved within the cooldown counts its load where it went until
    # its new leader reports it: then the placement matters, and a change
    # applied is looked at again.
    ctl.balancer._moved[("t00000", 0)] = (clock.seconds(), 0.001)
    meta.applied += 1
    clock.advance(10.0)
    ctl.tick()
    assert ctl.balance_views == 2
    ctl.balancer._moved.clear()
    trickle = [{"topic": "t00000", "partition": 0, "msgs_s": 0.0, "bytes_s": 12.0}]
    plane.membership.member_views = lambda: [  # type: ignore[attr-defined]
        {**v, "partition_rates": trickle if v["id"] == "a" else []} for v in views()
    ]
    clock.advance(10.0)
    ctl.tick()
    assert ctl.balance_views == 3  # a reported rate changed: looked at again
    for _ in range(3):
        clock.advance(10.0)
        ctl.tick()
    assert ctl.balance_views == 3  # the same rates, far under min_load: nothing could move
    hot = [{"topic": "t00000", "partition": 0, "msgs_s": 500.0, "bytes_s": 10.0}]
    plane.membership.member_views = lambda: [  # type: ignore[attr-defined]
        {**v, "partition_rates": hot if v["id"] == "a" else []} for v in views()
    ]
    for n in (4, 5):
        clock.advance(10.0)
        ctl.tick()
        assert ctl.balance_views == n  # traffic: every decision builds its view


def test_a_step_asks_gossip_for_the_light_member_states() -> None:
    """The member states a step needs (ten times a second) come from the
    gossip node's ``member_states`` -- no member copied, no partition rates
    decoded -- when it has them; a stand-in with only ``member_views`` still works."""
    plane, _states, clock = _plane(100)
    full = plane.membership.member_views  # type: ignore[union-attr]
    asked = {"views": 0, "states": 0}

    def views() -> list[dict[str, Any]]:
        asked["views"] += 1
        return full()

    def light() -> list[dict[str, Any]]:
        asked["states"] += 1
        return full()

    plane.membership.member_views = views  # type: ignore[union-attr]
    assert plane.controller.member_states() == dict.fromkeys(NODES, "alive")
    assert asked == {"views": 1, "states": 0}
    plane.membership.member_states = light  # type: ignore[union-attr]
    for _ in range(5):
        clock.advance(0.1)
        plane.controller.tick()
    assert asked["states"] >= 5  # one per step
    assert asked["views"] <= 2  # (the balancer's decision reads the rates, once per 10 s)


def test_the_balancer_waits_while_a_dead_nodes_leaderships_move() -> None:
    """Node b dies: while its 1,000 leaderships are failing over (their cores
    at work), a balance decision that falls due is put off -- its view over
    every partition would cost seconds at 10,000 and it could move none of
    them; once the cores are idle again the next step decides."""
    plane, states, clock = _plane(3_000)
    _b_dies(plane, states, clock)
    ctl = plane.controller
    plane.service.tick()  # (cores idle since their last tick are not counted again)
    assert plane.service.cores_at_work() == 1_000
    decided, waited = ctl.balance_views + ctl.balance_views_skipped, ctl.balance_waited
    clock.advance(10.0)
    ctl.tick()
    assert (ctl.balance_views + ctl.balance_views_skipped, ctl.balance_waited) == (decided, waited + 1)
    for c in plane.service.controllers.values():  # the failovers done, the new leaders confirmed
        if c.fencing is not None:
            c.fencing, c.leader, c.epoch, c.leader_confirmed = None, "a", 2, True
    plane.service.tick()  # (idle cores stop being ticked)
    assert plane.service.cores_at_work() == 0
    clock.advance(10.0)
    ctl.tick()
    assert ctl.balance_views + ctl.balance_views_skipped == decided + 1 and ctl.balance_waited == waited + 1


def test_the_balancer_waits_while_the_failover_entry_is_in_flight() -> None:
    """A failover's cores waiting for their ``set_partitions`` entry count as
    idle (no tick moves them): while the proposal is in flight -- the
    controller's node applies it in slices for a second or more at 10,000
    -- a decision that falls due is put off all the same (fail38: the view
    was built in the middle of that apply); once answered and the new leaders
    confirmed, the next step decides."""
    pending: list[defer.Deferred[dict[str, Any]]] = []
    meta_box: list[Metadata] = []
    proposed: list[dict[str, Any]] = []

    def propose(cmd: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
        proposed.append(cmd)
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        pending.append(d)
        return d

    plane, states, clock = _plane(300, propose=propose, leader="b", features=("node-beat", "epoch-batch"))
    meta_box.append(plane.control.metadata)
    _b_dies(plane, states, clock)
    for key, c in plane.service.controllers.items():
        assert c.fencing is not None
        for node in ("a", "c"):
            plane.service._deliver(
                node, Envelope(key[0], key[1], encode(FenceResp(c.fencing.epoch, True, 1, 0)))
            )
    clock.advance(0)  # the batch is proposed; its answer waits
    assert len(pending) == 1
    plane.service.tick()
    assert plane.service.cores_at_work() == 0  # (committing: idle)
    ctl = plane.controller
    decided, waited = ctl.balance_views + ctl.balance_views_skipped, ctl.balance_waited
    clock.advance(10.0)
    ctl.tick()
    assert (ctl.balance_views + ctl.balance_views_skipped, ctl.balance_waited) == (decided, waited + 1)
    pending[0].callback(meta_box[0].apply(2, proposed[0]))
    _confirm_all(plane)
    plane.service.tick()
    assert plane.service.cores_at_work() == 0
    clock.advance(10.0)
    ctl.tick()
    assert ctl.balance_views + ctl.balance_views_skipped == decided + 1 and ctl.balance_waited == waited + 1


def test_small_forecasts_keep_an_idle_balancer_from_building_its_view() -> None:
    """Predictive balancing on (the default): the forecaster keeps a series
    for every partition it once saw traffic on and predicts a little load
    (or 0) for it long after it went idle.  Forecasts that all together stay
    under the balancer's ``min_load`` cannot make a node hot: the view of
    every partition is built for the first decision only, with 10,000
    partitions; forecasts reaching ``min_load`` build it again (issue 23,
    idle23: at 10,000 idle partitions this view was most of the
    controller's CPU)."""
    plane, _, clock = _plane(10_000)
    ctl = plane.controller
    forecasts = {(f"t{i:05d}", 0): 0.0 for i in range(10_000)}
    forecasts.update({(f"t{i:05d}", 0): 0.025 for i in range(64)})
    ctl.forecasts = lambda now: forecasts
    ctl.tick()
    _confirm_all(plane)
    plane.service.tick()
    ctl.tick()
    first = ctl.balancer.last
    assert first is not None and first.predicted_mean is not None and ctl.balance_views == 1
    for _ in range(6):
        clock.advance(10.0)
        forecasts[("t00001", 0)] += 0.01  # forecasts move a little with each sample
        ctl.tick()
    assert ctl.balance_views == 1 and ctl.balance_views_skipped == 6
    forecasts[("t00007", 0)] = 120.0  # enough to make a node hot: looked at again
    clock.advance(10.0)
    ctl.tick()
    assert ctl.balance_views == 2
    clock.advance(10.0)
    ctl.tick()
    assert ctl.balance_views == 3


def test_gossip_saying_a_node_suspect_then_dead_looks_only_at_what_it_leads() -> None:
    """Node b (a replica of every one of 10,000 partitions, leader of a
    third) goes suspect, then dead by gossip: each step looks only at the
    partitions b leads (the dead step fails them over) -- not at all 10,000,
    as before (issue 23, failover37: a step over every partition in the
    middle of the failover, on the controller's node).  When the dead grace
    ends, every partition is looked at again and b's replicas are replaced."""
    proposals: list[Any] = []

    def propose(cmd: Any) -> defer.Deferred[Any]:
        proposals.append(cmd)
        return defer.Deferred()  # (never answered: the moves stay under way)

    plane, states, clock = _plane(10_000, propose)
    ctl = plane.controller
    ctl.tick()
    _confirm_all(plane)
    clock.advance(0.1)
    ctl.tick()
    led_by_b = sum(1 for i in range(10_000) if i % 3 == 1)
    for state in ("suspect", "dead"):
        states["b"] = state
        before = ctl.visits
        clock.advance(0.1)
        ctl.tick()
        assert ctl.visits - before == led_by_b, state
    fencing = [k for k, c in plane.service.controllers.items() if c.fencing is not None]
    assert len(fencing) == led_by_b
    # An idle step meanwhile looks at nothing more than the cores at work.
    before = ctl.visits
    clock.advance(0.1)
    ctl.tick()
    assert ctl.visits - before == 0
    # The grace ends: the eligible nodes change, every partition is looked at.
    before = ctl.visits
    clock.advance(ctl.control.dead_grace)
    ctl.tick()
    assert ctl.visits - before >= 10_000 - led_by_b
    assert proposals  # (replica moves off b: the step's budget of them)


def test_a_node_back_alive_within_the_grace_looks_only_at_what_it_leads() -> None:
    """b dead by gossip and back alive before the grace ends: the step that
    sees it back looks at the partitions whose core still names it leader
    (their failover under way: the committed leader is b until the commit),
    not at all 3,000 it holds."""
    plane, states, clock = _plane(3_000)
    ctl = plane.controller
    _b_dies(plane, states, clock)
    states["b"] = "alive"
    before = ctl.visits
    clock.advance(0.1)
    ctl.tick()
    assert ctl.visits - before == sum(1 for i in range(3_000) if i % 3 == 1)


def test_a_leadership_applied_after_its_node_was_found_silent_fails_over() -> None:
    """Node b's port refused while b led nothing (its failover pass found no
    leadership); then a leadership of b committed before its death is applied:
    the step that looks at that partition fails it over at once -- not after
    the partition's own beat timeout (the twelfth round's 1-partition run: a
    move landed 0.02 s after the refusal, and the failover waited 2 s)."""
    plane, states, clock = _plane(3, leader="a")
    ctl = plane.controller
    ctl.tick()
    _confirm_all(plane)
    clock.advance(0.1)
    ctl.tick()
    assert plane.service.node_refused("b", clock.seconds() - 0.01)
    assert not any(c.fencing is not None for c in plane.service.controllers.values())
    # The move's entry (b leads t00001 at epoch 2) is applied after the refusal.
    meta = plane.control.metadata
    meta.placement["t00001"] = [{"replicas": ["b", "a", "c"], "leader": "b", "epoch": 2}]
    ctl.topic_changed("t00001")  # (what the metadata apply tells the controller)
    clock.advance(0.1)
    ctl.tick()
    c = plane.service.controllers[("t00001", 0)]
    assert (c.epoch, c.leader) == (2, "b")
    assert c.fencing is not None or c.committing is not None, "b's new leadership was not failed over"
    assert states["b"] == "alive"  # (gossip has not said it: the refusal did)
