"""A leader fenced by a move that was never committed resigns when a new
controller asks it to confirm (issue 23, failover23).

Why the drain test failed with the per-node silence rule (refail's, brought
back): the drained node was the Raft leader, so it was both the controller
handing its own partitions' leadership off and the node whose Raft
leadership was handed off.  A hand-off fences every replica at the next
epoch; when the Raft leadership moved before the choice was committed, the
placement still named the drained node at the old epoch while every
replica -- the old leader's too -- had promised the next one.  The new
controller's core for such a partition repeats ``Assign(old epoch, leader)``
to confirm the leader it inherited, and the old leader, fenced past that
epoch, dropped it without a word: the core stayed unconfirmed.  Counted per
partition (before refail) its silence failed it over after the beat timeout,
which moved it; counted per node (the leader's node is alive and beats) it
waited the stuck bound (200 ticks), past the test's deadline, at epoch 1.
Now the fenced leader answers ``Resign(epoch)`` and the core fails over at once."""

from __future__ import annotations

from sprawl.replication.failover import ControlOutput, FailoverCore
from sprawl.replication.messages import AppendResp, Assign, Fence, Message, Resign
from sprawl.replication.replica import Output, Replica

IDS = ("a", "b", "c")


def _route(replicas: dict[str, Replica], core: FailoverCore, ctrl: str, out: ControlOutput) -> ControlOutput:
    """Deliver ``out``'s messages to the replicas and their answers to the
    core (the controller on node ``ctrl``) until nothing more is said;
    returns the last core output with a commit in it (or an empty one)."""
    todo: list[tuple[str, str, Message]] = [(ctrl, d, m) for d, m in out.messages]
    last = ControlOutput(commit=out.commit)
    for _ in range(100):
        if not todo:
            return last
        src, dst, m = todo.pop(0)
        if dst == "ctrl":
            got = core.receive(src, m)
            if got.commit is not None:
                last = got
            todo.extend((ctrl, d, x) for d, x in got.messages)
            continue
        r_out: Output = replicas[dst].receive(src, m)
        todo.extend((dst, "ctrl" if d == ctrl else d, x) for d, x in r_out.messages if d in (ctrl, "ctrl"))
    raise AssertionError("the messages did not settle")


def _fenced_by_an_uncommitted_move() -> dict[str, Replica]:
    """ "a" leads epoch 1; the old controller (on "a") moved the leadership to
    "b": every replica promised epoch 2, and the choice was never committed."""
    replicas = {r: Replica(r, "a") for r in IDS}
    said: list[tuple[str, str, Message]] = []
    for r in IDS:
        said.extend((r, d, m) for d, m in replicas[r].receive("a", Assign(1, "a", IDS)).messages)
    for _ in range(100):  # the leader's control record reaches its followers
        if not said:
            break
        src, dst, m = said.pop(0)
        if dst in replicas and dst != src:
            said.extend((dst, d, x) for d, x in replicas[dst].receive(src, m).messages)
    assert replicas["a"].is_leader and all(r.end == 1 for r in replicas.values())
    old = FailoverCore(IDS, epoch=1, leader="a")
    old.receive("a", replicas["a"].receive("a", Assign(1, "a", IDS)).messages[0][1])  # confirmed
    out = old.move_leader("b")
    assert out is not None and old.handing_off is not None  # it first asks "a" to pause
    out = old.start_failover("b")  # (the pause ended): fence epoch 2
    for dst, m in out.messages:
        assert isinstance(m, Fence) and m.epoch == 2
        replicas[dst].receive("a", m)
    assert not replicas["a"].is_leader and all(r.fenced_epoch == 2 for r in replicas.values())
    return replicas  # the Raft leadership moves now: the commit never happens


def test_a_fenced_leader_answers_a_stale_assign_with_resign() -> None:
    """The replica's side: named leader of an epoch it promised away, it
    resigns to the asker; a follower told of an old epoch tells the leader
    named where it stands (stuck34), which, no longer leading, resigns the
    epoch it led again to its controller."""
    replicas = _fenced_by_an_uncommitted_move()
    assert replicas["a"].receive("b", Assign(1, "a", IDS)).messages == [("b", Resign(1))]
    assert not replicas["a"].is_leader
    said = replicas["b"].receive("b", Assign(1, "a", IDS)).messages
    assert said == [("a", AppendResp(2, False, 1, 1))]
    assert replicas["a"].receive("b", said[0][1]).messages == [("a", Resign(1))]


def test_a_new_controller_moves_an_inherited_fenced_leader_at_once() -> None:
    """The new controller (on "b") inherits "a" as the leader of epoch 1,
    unconfirmed, with "a" drained and its node heard (it beats): its first
    Assign is answered with ``Resign``, the core fences epoch 2 at once and
    commits a leader other than "a" -- within the first tick, not after the
    stuck bound (``stuck_ticks``, 200) the per-node silence rule waits for a
    partition stuck on a heard node."""
    replicas = _fenced_by_an_uncommitted_move()
    core = FailoverCore(IDS, epoch=1, leader="a")
    core.avoid = frozenset({"a"})
    ticks = 0
    committed = None
    while committed is None:
        assert ticks <= core.retry_ticks, f"still unconfirmed after {ticks} ticks (epoch {core.epoch})"
        ticks += 1
        out = core.tick(leader_heard=True)
        committed = _route(replicas, core, "b", out).commit
    assert ticks == 1 and committed.epoch == 2 and committed.leader in ("b", "c")
    for dst, m in core.committed(True).messages:
        replicas[dst].receive("b", m)
    assert replicas[committed.leader].is_leader and not replicas["a"].is_leader


def test_a_leader_stepped_down_by_a_fenced_follower_resigns_and_the_partition_moves() -> None:
    """After a restart mid-failover: "a" still leads epoch 1 (the fence of
    epoch 2 never reached it, the choice was never committed), its followers
    promised epoch 2 and refuse its appends.  It steps down and says so
    (``Resign(1)``); the controller's core, confirmed and idle, fails over at
    epoch 2 and commits a leader -- instead of a partition with no leader
    whose followers ignore the placement's stale Assign and never ask."""
    replicas = {r: Replica(r, "ctrl") for r in IDS}
    for r in IDS:
        replicas[r].receive("ctrl", Assign(1, "a", IDS))
    for r in ("b", "c"):
        replicas[r].receive("old", Fence(2))  # the uncommitted failover's fence
    assert replicas["a"].is_leader and replicas["a"].epoch == 1
    core = FailoverCore(IDS, epoch=1, leader="a")
    core.leader_confirmed = True
    assert core.idle
    _first, out = replicas["a"].append(1)
    refusal = replicas["b"].receive("a", out.messages[0][1]).messages
    assert refusal and refusal[0][1].epoch == 2  # b refuses: it promised epoch 2
    said = replicas["a"].receive("b", refusal[0][1])
    assert not replicas["a"].is_leader and ("ctrl", Resign(1)) in said.messages
    got = core.receive("a", Resign(1))
    assert core.fencing is not None and core.fencing.epoch == 2
    committed = _route(replicas, core, "ctrl", got).commit
    assert committed is not None and committed.epoch == 2
    for dst, m in core.committed(True).messages:
        replicas[dst].receive("ctrl", m)
    assert replicas[committed.leader].is_leader


def test_a_leader_stepped_down_by_a_newer_epoch_resigns_an_epoch_the_controller_left() -> None:
    """When the later epoch was committed (the controller moved on), the
    Resign names an epoch the core no longer has: nothing happens."""
    core = FailoverCore(IDS, epoch=3, leader="b")
    core.leader_confirmed = True
    out = core.receive("a", Resign(2))
    assert out.messages == [] and out.commit is None and core.fencing is None
