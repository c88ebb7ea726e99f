"""A dead node's failover is one Raft entry although its fence answers come
over many reactor turns (issue 23, refail).

In a 10,000-topic run the choices went as two ``set_partitions`` entries,
1,074 then 3,063, the second waiting for the first: the batch was proposed
at the first turn after the first choice.  While cores are still fencing it
now waits for their choices (rechecked every ``COMMIT_HOLD_STEP``, gone as
soon as a recheck finds no new one, or after ``COMMIT_HOLD_MAX``).  Counted,
not timed: the proposals made."""

from __future__ import annotations

from typing import Any

from test_controller_cost import _b_dies, _leaders, _plane
from twisted.internet import defer, task

from sprawl.cluster.controller import COMMIT_HOLD_MAX, COMMIT_HOLD_STEP
from sprawl.cluster.dataplane import DataPlane
from sprawl.cluster.metadata import Metadata
from sprawl.replication.envelope import Envelope
from sprawl.replication.messages import FenceResp, encode


def _b_dead(partitions: int) -> tuple[DataPlane, list[dict[str, Any]], task.Clock, list[tuple[str, int]]]:
    """b leads all ``partitions`` and dies; the controller (a) fences them;
    a's own answers are in.  Returns the plane, the proposals (each applied
    to the metadata at once, as Raft does), the clock and the keys fencing."""
    proposed: list[dict[str, Any]] = []
    meta_box: list[Metadata] = []

    def propose(cmd: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
        proposed.append(cmd)
        return defer.succeed(meta_box[0].apply(len(proposed) + 1, cmd))

    plane, states, clock = _plane(
        partitions, propose=propose, leader="b", features=("node-beat", "epoch-batch")
    )
    meta_box.append(plane.control.metadata)
    assert _b_dies(plane, states, clock) == partitions
    keys = sorted(plane.service.controllers)
    for key in keys:
        _answer(plane, "a", key)
    return plane, proposed, clock, keys


def _answer(plane: DataPlane, node: str, key: tuple[str, int]) -> None:
    c = plane.service.controllers[key]
    assert c.fencing is not None
    env = Envelope(key[0], key[1], encode(FenceResp(c.fencing.epoch, True, 1, 0)))
    plane.service._deliver(node, env)


def test_fence_answers_over_many_turns_commit_in_one_entry() -> None:
    """3,000 partitions whose second answers (c's) come in 6 waves a reactor
    turn apart and then a few ms apart: one ``set_partitions`` proposal,
    once the last choice is made; every core committed."""
    plane, proposed, clock, keys = _b_dead(3_000)
    waves = [keys[i::6] for i in range(6)]
    for i, wave in enumerate(waves):
        for key in wave:
            _answer(plane, "c", key)
        clock.advance(0 if i < 3 else COMMIT_HOLD_STEP / 5)
    assert proposed == []  # still fencing: held
    assert plane.service.cores_fencing() == 0
    clock.advance(COMMIT_HOLD_STEP)
    assert [len(c["items"]) for c in proposed] == [3_000]
    assert plane.controller.batch_proposals == 1
    cores = plane.service.controllers.values()
    assert all(c.epoch == 2 and not c.busy for c in cores)
    assert _leaders(cores) == {"a": 1_500, "c": 1_500}  # (split evenly: a and c were alike)


def test_held_choices_go_when_the_answers_stall_or_the_hold_runs_out() -> None:
    """A third of c's answers never come (their cores keep fencing): the
    others are proposed at the first recheck that finds no new choice.  A
    steady trickle of answers holds the batch at most ``COMMIT_HOLD_MAX``."""
    plane, proposed, clock, keys = _b_dead(300)
    for key in keys[:200]:
        _answer(plane, "c", key)
    clock.advance(0)  # the first look: held (cores still fencing)
    assert proposed == []
    clock.advance(COMMIT_HOLD_STEP)  # no new choice since: the answers stalled
    assert [len(c["items"]) for c in proposed] == [200]
    assert plane.service.cores_fencing() == 100

    plane, proposed, clock, keys = _b_dead(300)
    steps = 0
    for key in keys:  # one answer every recheck, for longer than the hold
        _answer(plane, "c", key)
        clock.advance(0 if steps == 0 else COMMIT_HOLD_STEP)
        steps += 1
        if proposed:
            break
    assert steps * COMMIT_HOLD_STEP <= COMMIT_HOLD_MAX + 2 * COMMIT_HOLD_STEP
    assert plane.controller.batch_proposals == 1 and len(proposed[0]["items"]) == steps
