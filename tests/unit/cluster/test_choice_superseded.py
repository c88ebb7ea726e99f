"""A failover choice refused because another choice of its epoch is already
in the placement follows that placement; it does not fail over again.

A 600 s chaos run (stop 46) logged ``committing the leader of chaos-a/0
failed ... epoch 2 is not above 2`` as a controller changed hands, and the
partition's epochs went 1 -> 2 -> 3 -> 4 in 13 s.  ``stale_epoch`` means the
metadata's fencing refused the choice: a choice of this epoch or a later
one -- the previous controller's, whose proposal was still in the Raft log
-- was applied first.  The node's apply had already brought the core to
that placement (``sync_core``), but the refusal then made the core forget
its leader, and its next tick fenced every replica at the next epoch: a new
epoch, fences and a publish pause for a partition whose leader was fine.
Now the core follows the applied placement and asks its leader to confirm,
as after any commit.  A refusal the placement does not explain still fails
over (``test_commit_timeout_lands``)."""

from __future__ import annotations

from typing import Any

from test_controller_cost import _plane
from twisted.internet import defer

from sprawl.cluster.replica_sync import sync_core
from sprawl.replication.failover import FailoverCore
from sprawl.replication.messages import Assign, Fence, FenceResp, LeaderBeat

KEY = ("t00000", 0)
IDS = ("a", "b", "c")


def test_a_refused_choice_follows_the_placement_applied_meanwhile() -> None:
    """Pure core: the choice ("b", epoch 2) is committing when the apply
    brings the core to another controller's choice ("c", epoch 2); the
    refusal then sends nothing, no tick fences (before: ``Fence(3)`` to every
    replica at the next tick), the placement's leader is asked to confirm and
    its word settles the core."""
    c = FailoverCore(IDS, epoch=1, leader="a")
    c.start_failover()
    c.receive("b", FenceResp(2, True, 1, 10))
    assert c.receive("c", FenceResp(2, True, 1, 9)).commit is not None
    sync_core(c, {"epoch": 2, "leader": "c", "replicas": list(IDS)})
    assert c.committed(False).messages == []
    said = [(d, m) for _ in range(3 * c.retry_ticks) for d, m in c.tick().messages]
    assert not any(isinstance(m, Fence) for _d, m in said)
    assert ("c", Assign(2, "c", IDS)) in said
    assert (c.epoch, c.leader, c.fencing, c.committing) == (2, "c", None, None)
    c.receive("c", LeaderBeat(2, 0, 12))
    assert c.idle and c.leader_confirmed


def test_a_timed_out_choice_already_superseded_does_not_wait_to_land() -> None:
    """The same with a timeout (``may_land``): the placement past the choice
    is applied already, so there is nothing to wait ``landing_ticks`` for
    (before: it waited, then failed over anew at epoch 3)."""
    c = FailoverCore(IDS, epoch=1, leader="a", landing_ticks=5)
    c.start_failover()
    c.receive("b", FenceResp(2, True, 1, 10))
    assert c.receive("c", FenceResp(2, True, 1, 9)).commit is not None
    sync_core(c, {"epoch": 3, "leader": "c", "replicas": list(IDS)})
    c.committed(False, may_land=True)
    assert c.committing is None and c.landing is None
    said = [(d, m) for _ in range(c.retry_ticks) for d, m in c.tick().messages]
    assert said == [("c", Assign(3, "c", IDS))]  # (before: nothing, for landing_ticks)
    c.receive("c", LeaderBeat(3, 0, 12))
    assert c.idle and (c.epoch, c.leader) == (3, "c")


def test_the_controller_follows_a_placement_that_refused_its_choice() -> None:
    """Through the controller: node b (the leader) dies, the core fences a
    and c at epoch 2 and chooses; before its proposal applies, the previous
    controller's choice of epoch 2 (leader c, the other survivor) is applied
    first and the node's apply syncs the core -- so the proposal is refused
    ``stale_epoch``.  The core then leads nothing new: no second proposal,
    no fencing at epoch 3 over the next steps, the placement's leader kept
    once it says it leads."""
    proposals: list[dict[str, Any]] = []
    box: dict[str, Any] = {}

    def propose(cmd: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
        proposals.append(cmd)
        meta = box["plane"].control.metadata
        other = "c" if cmd["leader"] == "a" else "a"
        first = {**cmd, "leader": other}  # the previous controller's choice, applied first
        assert meta.apply(2 * len(proposals), first) == {"epoch": 2}
        sync_core(box["core"], meta.placement[KEY[0]][KEY[1]])
        return defer.succeed(meta.apply(2 * len(proposals) + 1, cmd))

    plane, states, clock = _plane(1, propose=propose, leader="b")
    box["plane"] = plane
    ctl, service = plane.controller, plane.service
    ctl.tick()
    core = service.controllers[KEY]
    box["core"] = core
    core.receive("b", LeaderBeat(core.epoch, 0, 0))
    states["b"] = "dead"
    clock.advance(0.1)
    ctl.tick()
    assert core.fencing is not None and core.fencing.epoch == 2
    service.run_control(KEY, core.receive("a", FenceResp(2, True, 1, 10)))
    service.run_control(KEY, core.receive("c", FenceResp(2, True, 1, 10)))
    assert len(proposals) == 1
    chosen = proposals[0]["leader"]
    placed = plane.control.metadata.placement[KEY[0]][KEY[1]]
    assert placed["epoch"] == 2 and placed["leader"] != chosen  # refused: the other choice holds
    # (before: no leader, so fenced at epoch 3 at the next tick)
    assert (core.leader, core.fencing, core.committing) == (placed["leader"], None, None)
    core.receive(placed["leader"], LeaderBeat(2, 0, 11))  # the placed leader leads, as its node applied
    for _ in range(30):
        clock.advance(0.1)
        service.heard("a")
        service.heard("c")
        ctl.tick()
        service.tick()
    assert len(proposals) == 1
    assert core.fencing is None and core.committing is None
    assert (core.epoch, core.leader) == (2, placed["leader"])
