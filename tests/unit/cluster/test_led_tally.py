"""What ``GET /v1/cluster``'s partition counts cost (issue 23): the data plane
keeps the partitions it leads and those under-replicated in a
:class:`~sprawl.cluster.led_tally.LedTally`, judged again only where
something changed -- a replica's output, a topic applied, a damage report,
or a member's state (then all it leads) -- so an idle node of 10,000 partitions
answers without walking them.  Counted: the partitions judged; checked
against :meth:`DataPlane.led_counts_walked` (every replica walked)."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import task

from sprawl.cluster.dataplane import LED_SLICE, DataPlane
from sprawl.cluster.led_tally import LedTally
from sprawl.cluster.metadata import Metadata
from sprawl.cluster.repair import REPORT_TTL
from sprawl.testing import FakeRPC

NODES = ("a", "b", "c")


def _core(leader: bool, match: int = 5) -> Any:
    """A replica core as the summary reads it: role, high watermark, followers' positions."""
    followers = {f: SimpleNamespace(match=match) for f in NODES[1:]} if leader else {}
    return SimpleNamespace(is_leader=leader, hw=5, followers=followers)


def _plane(partitions: int) -> tuple[DataPlane, list[Callable[[str], None]], dict[str, str], task.Clock]:
    """Node a holds ``partitions`` single-partition RF 3 topics, leading every
    third one, all in sync; and one topic it holds alone (``solo``)."""
    clock = task.Clock()
    meta = Metadata()
    for i, n in enumerate(NODES):
        meta.nodes[n] = {"raft_id": i + 1, "peer": "", "http": ""}
    watchers: list[Callable[[str], None]] = []
    control = SimpleNamespace(
        metadata=meta, leader_name="a", dead_grace=30.0, is_leader=False, watch_topics=watchers.append
    )
    broker = SimpleNamespace(topics={}, notify=lambda t, p: None)
    plane = DataPlane("a", broker, control, SimpleNamespace(handlers={}), FakeRPC(), clock)  # type: ignore[arg-type]
    states = dict.fromkeys(NODES, "alive")
    plane.controller.member_states = lambda: dict(states)  # type: ignore[method-assign]
    plane.membership = SimpleNamespace()  # type: ignore[assignment]  # (gossip is known: states count)
    for i in range(partitions):
        name = f"t{i:05d}"
        meta.topics[name] = {"config": {"replication_factor": 3}}
        meta.placement[name] = [{"replicas": list(NODES), "leader": NODES[i % 3], "epoch": 1}]
        plane.service.replicas[(name, 0)] = SimpleNamespace(core=_core(i % 3 == 0))  # type: ignore[assignment]
    meta.topics["solo"] = {"config": {"replication_factor": 1}}
    meta.placement["solo"] = [{"replicas": ["a"], "leader": "a", "epoch": 1}]
    return plane, watchers, states, clock


def _judged(plane: DataPlane) -> int:
    """Partitions one summary judged."""
    before = plane.tally.judged
    plane.summary()
    return plane.tally.judged - before


def _counts(plane: DataPlane) -> tuple[int, int]:
    s = plane.summary()
    assert (s["leading"], s["under_replicated"]) == plane.led_counts_walked()
    return s["leading"], s["under_replicated"]


def test_an_idle_summary_judges_no_partition_however_many() -> None:
    """The first summary judges every partition; idle ones after it none,
    with 1,000 partitions as with 10,000 -- and the counts are the walk's."""
    for n in (1_000, 10_000):
        plane, _w, _s, _c = _plane(n)
        assert _judged(plane) == n + 1
        assert [_judged(plane) for _ in range(5)] == [0] * 5
        assert _counts(plane) == (len(range(0, n, 3)) + 1, 0)


def test_a_replica_output_is_judged_again_alone() -> None:
    """A follower fell behind the high watermark (its leader's replica made an
    output): that partition alone is judged again and counted under-replicated;
    caught up again, not.  A partition whose leadership moved here or away
    likewise."""
    plane, _w, _s, _c = _plane(3_000)
    led, _ = _counts(plane)
    core = plane.service.replicas[("t00003", 0)].core
    core.followers["b"].match = 4
    plane.service.changed.add(("t00003", 0))
    assert _judged(plane) == 1
    assert _counts(plane) == (led, 1)
    core.followers["b"].match = 5
    plane.service.changed.add(("t00003", 0))
    assert _counts(plane) == (led, 0)
    plane.service.replicas[("t00003", 0)].core = _core(False)  # (type: a stand-in)
    plane.service.replicas[("t00004", 0)].core = _core(True, match=0)
    plane.service.changed.update({("t00003", 0), ("t00004", 0)})
    assert _judged(plane) == 2
    assert _counts(plane) == (led, 1)


def test_a_topic_applied_is_judged_again_with_its_partitions() -> None:
    """A topic's placement applied (the metadata watch): its partitions are
    judged again, those it lost included; a topic deleted leaves the counts."""
    plane, watchers, _s, _c = _plane(3_000)
    led, _ = _counts(plane)
    meta = plane.control.metadata
    meta.placement["solo"] = [{"replicas": ["a"], "leader": "a", "epoch": 1}] * 3  # grew to 3 partitions
    for w in watchers:
        w("solo")
    assert _judged(plane) == 3
    assert _counts(plane) == (led + 2, 0)
    meta.topics["solo"]["config"]["replication_factor"] = 3  # asks for 3 copies, holds one
    for w in watchers:
        w("solo")
    assert _counts(plane) == (led + 2, 3)
    del meta.placement["solo"]
    del meta.topics["solo"]
    for w in watchers:
        w("solo")
    assert _judged(plane) == 3
    assert _counts(plane) == (led - 1, 0)


def test_a_member_state_change_judges_every_led_partition_again() -> None:
    """A follower's node went down: every led partition is under-replicated
    (each judged once -- those led here only: a partition not led here is
    not led whatever the members' states, apply36); back up, all judged once
    more, then idle again.  At 10,000 partitions (3,335 led here) a state
    change judges the 3,335, not all 10,001 (a node going down mid-failover
    changes state twice, suspect then dead: a full judging each time was
    10-16 % of a survivor's reactor in a 10,000-topic failover, polled by
    ``GET /v1/cluster``)."""
    for n in (3_000, 10_000):
        plane, _w, states, _c = _plane(n)
        led, _ = _counts(plane)
        states["c"] = "suspect"
        assert _judged(plane) == led
        states["c"] = "dead"
        assert _judged(plane) == led
        assert _counts(plane) == (led, led - 1)  # (solo has RF 1)
        states["c"] = "alive"
        assert _counts(plane) == (led, 0)
        assert _judged(plane) == 0


def test_a_damage_report_counts_until_it_lapses() -> None:
    """A follower reports damage: its partition is under-replicated until the
    report lapses (judged while it is on record, and once after)."""
    plane, _w, _s, clock = _plane(3_000)
    led, _ = _counts(plane)
    plane.repairs._rpc_damage_report("b", {"topic": "t00006", "partition": 0, "damaged": True}, 1)
    assert _counts(plane) == (led, 1)
    assert _judged(plane) == 1
    clock.advance(REPORT_TTL + 1)
    assert _counts(plane) == (led, 0)
    plane.repairs.tick()  # forgets the lapsed report
    assert _judged(plane) == 1  # (the last time)
    assert _judged(plane) == 0


def test_replica_outputs_not_drained_for_long_fall_back_to_judging_all() -> None:
    """Nobody asked for a summary while many partitions changed (deleted
    topics' keys would pile up): the set is dropped and the next summary
    judges everything, with the right counts."""
    plane, _w, _s, _c = _plane(1_000)
    led, _ = _counts(plane)
    plane.sync.rebuild_failed = lambda: None  # type: ignore[method-assign]
    plane.sync.follow_controller = lambda: None  # type: ignore[method-assign]
    plane.controller.tick = lambda: None  # type: ignore[method-assign]
    plane.service.tick = lambda: None  # type: ignore[method-assign]
    plane.service.changed.update((f"gone{i}", 0) for i in range(6_000))
    plane.tick()
    assert not plane.service.changed
    assert _judged(plane) == 1_001
    assert _counts(plane) == (led, 0)


def test_the_tally_forgets_what_is_no_longer_led() -> None:
    """The pure tally: verdicts replaced, a topic's partitions forgotten."""
    t = LedTally()
    led = {("x", 0): False, ("x", 1): True, ("y", 0): True}
    t.refresh(led.get, lambda: list(led), lambda name: 2)
    assert (t.leading, t.under_replicated) == (3, 2)
    led[("x", 1)] = False
    t.mark([("x", 1)])
    t.refresh(led.get, lambda: list(led), lambda name: 2)
    assert (t.leading, t.under_replicated) == (3, 1)
    del led[("x", 0)], led[("x", 1)]
    t.mark_topic("x")
    assert t.pending == 1
    t.refresh(led.get, lambda: list(led), lambda name: 0)
    assert (t.leading, t.under_replicated) == (1, 1)


def test_a_limited_refresh_judges_a_start_over_several_calls() -> None:
    """After a start (everything to judge: 3,000 partitions) a refresh with a limit judges
    at most that many a call and ends with the counts an unlimited one finds, a partition
    changed meanwhile included; the data plane's ``refresh_led`` passes its limit on
    (the metrics scrape judges 2,000 a reactor turn: ~100 ms of one turn before, tidy41)."""
    plane, _watchers, _states, _clock = _plane(3_000)
    want = plane.led_counts_walked()
    calls = 1
    while not plane.refresh_led(limit=700):
        assert plane.tally.judged == 700 * calls
        calls += 1
    assert calls == 5 and plane.tally.judged == 3_001
    assert _counts(plane) == want and _judged(plane) == 0
    t = LedTally()
    led = {("x", p): p % 2 == 0 for p in range(50)}
    assert not t.refresh(led.get, lambda: list(led), lambda name: 50, limit=20)
    led[("x", 0)] = False
    t.mark([("x", 0)])
    while not t.refresh(led.get, lambda: list(led), lambda name: 50, limit=20):
        pass
    assert (t.leading, t.under_replicated) == (50, 24) and t.pending == 0


def test_the_cluster_answer_judges_a_start_a_slice_a_reactor_turn() -> None:
    """``GET /v1/cluster`` waits for :meth:`DataPlane.summary_ready`: after a start
    (5,000 partitions to judge) it judges :data:`LED_SLICE` a step, each step a
    reactor turn of its own (a ``callLater(0)``), not all in the request's turn;
    requests waiting meanwhile share the steps, and once every partition is judged
    the next one is answered at once."""
    plane, _watchers, _states, clock = _plane(5_000)
    want = plane.led_counts_walked()
    steps: list[int] = []
    real = plane.refresh_led_slice

    def counted() -> bool:
        before = plane.tally.judged
        done = real()
        steps.append(plane.tally.judged - before)
        return done

    plane.refresh_led_slice = counted  # type: ignore[method-assign]
    first, second = plane.summary_ready(), plane.summary_ready()
    fired: list[int] = []
    first.addCallback(lambda _: fired.append(1))
    second.addCallback(lambda _: fired.append(2))
    assert steps == [LED_SLICE] and not fired and len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert steps == [LED_SLICE, LED_SLICE, 1_001] and fired == [1, 2]
    assert _counts(plane) == want and _judged(plane) == 0
    done: list[object] = []
    plane.summary_ready().addCallback(done.append)
    assert done == [None] and not clock.getDelayedCalls()


def test_the_cluster_answer_waits_a_bounded_number_of_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under changes faster than a slice a turn the answer must still come: after
    ``SUMMARY_STEPS`` turns the waiters are answered, and the summary judges what
    is left itself (here one step: 4,000 of 5,001 judged in slices, the rest by
    the summary, with the counts a full walk finds)."""
    from sprawl.cluster import dataplane

    monkeypatch.setattr(dataplane, "SUMMARY_STEPS", 1)
    plane, _watchers, _states, clock = _plane(5_000)
    want = plane.led_counts_walked()
    fired: list[object] = []
    plane.summary_ready().addCallback(fired.append)
    clock.advance(0)
    assert fired == [None] and plane.tally.judged == 2 * LED_SLICE
    assert _counts(plane) == want and plane.tally.judged == 5_001
