"""What the controller's steps cost right after a dead node's failover
(issue 23, failapply): its new leaders are confirmed over seconds (their
followers first hold the epoch's control record), and meanwhile each step
looked at every one of them again -- ``PartitionController._control_one``
per partition every 0.1 s, ~9 % of the controller's samples in a
10,000-topic failover.  A partition whose core is at work is now looked at
again once the core is idle, not at every step.

Counted, not timed: :attr:`PartitionController.visits` (partitions looked at)."""

from __future__ import annotations

from test_controller_cost import _confirm_all, _fail_over_b, _leaders


def test_steps_look_at_no_moved_partition_until_its_new_leader_is_confirmed() -> None:
    """10,000 partitions fail over off b in one proposal; while their new
    leaders are unconfirmed, ten steps look at none of them; once confirmed,
    the next steps look at each once (its replica set may want a step now),
    and idle steps after that at none."""
    plane, proposed = _fail_over_b(10_000, batch=True)
    assert [len(c["items"]) for c in proposed] == [10_000]
    ctl = plane.controller
    cores = plane.service.controllers
    assert all(c.epoch == 2 and not c.leader_confirmed for c in cores.values())
    assert _leaders(cores.values()) == {"a": 5_000, "c": 5_000}  # (split evenly: a and c were alike)
    ctl.tick()  # (the step that may still look at what the failover marked)
    before = ctl.visits
    for _ in range(10):
        ctl.tick()
        plane.service.tick()
    assert ctl.visits - before == 0
    _confirm_all(plane)
    plane.service.tick()  # the confirmed cores leave the ticked set
    before = ctl.visits
    ctl.tick()
    assert ctl.visits - before == 10_000
    before = ctl.visits
    for _ in range(5):
        ctl.tick()
        plane.service.tick()
    assert ctl.visits - before == 0


def test_a_partition_waiting_for_its_core_still_gets_its_replica_step() -> None:
    """The look put off while the core works is not lost: once the new
    leader is confirmed, a partition whose replica set lacks a node (b dead
    past the grace period) has its replacement proposed."""
    plane, proposed = _fail_over_b(30, batch=True)
    ctl = plane.controller
    ctl.tick()
    plane.service.tick()
    _confirm_all(plane)
    plane.service.tick()
    clock = plane.reactor
    clock.advance(31.0)  # b dead past the 30 s grace: its replicas are replaced
    for _ in range(40):
        ctl.tick()
        plane.service.tick()
        clock.advance(0.1)
    moves = [c for c in proposed if c["op"] == "set_partition"]
    assert len({c["topic"] for c in moves}) == 30
    assert all("b" not in c["replicas"] for c in moves)
