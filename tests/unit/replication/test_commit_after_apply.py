"""A committed choice whose new leader already confirmed it sends no Assigns
(issue 23, failover23).

The controller's node applies a ``set_partitions`` entry before the proposal
is answered; the apply brings every core to its new epoch and leader
(``sync_core``) and tells the new leaders on every node, and a new leader
says it leads (``LeaderBeat``) as it takes over.  The Assigns the core sent
once told its commit were then answered again: two frames and a second
confirmation per partition of a dead node's failover.  Counted, pure."""

from __future__ import annotations

from sprawl.cluster.replica_sync import sync_core
from sprawl.replication.failover import FailoverCore
from sprawl.replication.messages import Assign, FenceResp, LeaderBeat

IDS = ("a", "b", "c")


def _committing(n: int) -> list[FailoverCore]:
    """``n`` cores whose dead leader "a" was fenced and "b" chosen at epoch 2, committing."""
    cores = []
    for _ in range(n):
        c = FailoverCore(IDS, epoch=1, leader="a")
        c.leader_confirmed = True
        c.start_failover()
        c.receive("b", FenceResp(2, True, 1, 10))
        assert c.receive("c", FenceResp(2, True, 1, 9)).commit is not None
        cores.append(c)
    return cores


def _applied(c: FailoverCore) -> None:
    sync_core(c, {"epoch": 2, "leader": "b", "replicas": list(IDS)})


def test_a_leader_heard_before_the_commit_answer_gets_no_assign() -> None:
    """1,000 partitions: the entry applied here, each new leader's beat
    heard, then the commit answered -- no Assign, each core confirmed and idle."""
    cores = _committing(1_000)
    for c in cores:
        _applied(c)
        c.receive("b", LeaderBeat(2, 0, 11))
    sent = [m for c in cores for m in c.committed(True).messages]
    assert sent == []
    assert all(c.idle and c.leader_confirmed and (c.epoch, c.leader) == (2, "b") for c in cores)


def test_without_the_leaders_word_the_assigns_go_out() -> None:
    """Applied but not yet heard from the new leader (or not applied): the
    commit sends the Assigns as before, and the core waits for the leader."""
    applied, not_applied = _committing(2)
    _applied(applied)
    for c in (applied, not_applied):
        out = c.committed(True)
        assert sorted(d for d, m in out.messages if isinstance(m, Assign)) == list(IDS)
        assert not c.leader_confirmed and not c.idle


def test_a_late_word_from_the_old_leader_confirms_nothing() -> None:
    """A beat of the old epoch from the old leader heard while committing
    (a move's leader is alive) does not count for the new leader once the
    entry is applied: the Assigns still go out."""
    (c,) = _committing(1)
    c.receive("a", LeaderBeat(1, 0, 10))  # the old leader, the old epoch
    _applied(c)
    out = c.committed(True)
    assert len([m for _, m in out.messages if isinstance(m, Assign)]) == 3
