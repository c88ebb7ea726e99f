"""A failover choice whose proposal timed out but landed is committed, not
refused (issue 23, failover23).

At 10,000 partitions on a loaded machine the controller's node applied a
3,387-partition ``set_partitions`` entry for longer than the proposal
timeout (10 s): the proposal failed with ``proposal_timeout``, the cores
fenced and chose again at the same epoch, and the second proposal was
refused ``stale_epoch`` ("epoch 2 is not above 2") -- logged as critical
thousands of times, each core failed over once more at the next epoch,
and a Raft election followed.  The applied placement already held the very
choice: that is a commit."""

from __future__ import annotations

from typing import Any

from test_controller_cost import _plane
from twisted.internet import defer

from sprawl.errors import SprawlError
from sprawl.replication.failover import Commit


def _controller(proposals: list[dict[str, Any]]) -> Any:
    def propose(cmd: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
        proposals.append(cmd)
        return defer.succeed(plane.control.metadata.apply(len(proposals) + 1, cmd))

    plane, _states, _clock = _plane(3, propose=propose, features=("node-beat",))
    return plane


def test_a_choice_already_in_the_placement_is_committed() -> None:
    """The placement holds epoch 2 with leader "b" (the timed-out proposal
    landed): the same choice proposed again succeeds; another leader, or
    other replicas, at that epoch is still refused."""
    proposals: list[dict[str, Any]] = []
    plane = _controller(proposals)
    ctl = plane.controller
    reps = tuple(plane.control.metadata.placement["t00000"][0]["replicas"])
    other = next(n for n in reps if n != reps[0])
    first = ctl.commit("t00000", 0, Commit(2, other, reps))
    assert first.called and first.result is None  # committed
    again = ctl.commit("t00000", 0, Commit(2, other, reps))
    assert again.called and again.result is None  # the same choice: committed
    third = next(n for n in reps if n not in (other,))
    failures: list[Any] = []
    ctl.commit("t00000", 0, Commit(2, third, reps)).addErrback(failures.append)
    ctl.commit("t00000", 0, Commit(2, other, tuple(reversed(reps)))).addErrback(failures.append)
    assert [f.value.code for f in failures] == ["stale_epoch", "stale_epoch"]
    assert all(isinstance(f.value, SprawlError) for f in failures)
    assert len(proposals) == 4
