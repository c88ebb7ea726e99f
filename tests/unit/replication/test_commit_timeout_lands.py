"""A failover choice whose proposal timed out waits for its entry to land
(issue 23, restart36).

After a restart of a 10,000-partition cluster every partition fails over
(each leader led its epoch before), and at load the Raft log fell behind:
every ``set_partitions`` proposal of one run timed out (10 of 10, even one
of 14 partitions), yet "it may still apply".  The cores took each timeout
for a failure: they fenced every replica again at once and proposed again,
piling more entries behind the backlog; the entry that landed late named a
leader whose followers had since promised a later epoch, so it could not
lead -- another failover, epochs climbing to 5, followers "catching up"
(fenced past the placement, or asking a placed leader that cannot lead) for
minutes.  Now a timed-out choice is kept: the core sends nothing until the
applied placement reaches its epoch, or ``landing_ticks`` pass."""

from __future__ import annotations

from sprawl.cluster.replica_sync import sync_core
from sprawl.replication.failover import FailoverCore
from sprawl.replication.messages import Assign, Fence, FenceResp

IDS = ("a", "b", "c")


def _chosen() -> FailoverCore:
    """Epoch 1 led by ``a``; a failover fenced ``b`` and ``c`` at 2 and chose ``b``."""
    c = FailoverCore(IDS, epoch=1, leader="a", landing_ticks=50)
    out = c.start_failover()
    assert sorted(d for d, m in out.messages if m == Fence(2)) == list(IDS)
    c.receive("b", FenceResp(2, True, 1, 5))
    out = c.receive("c", FenceResp(2, True, 1, 4))
    assert out.commit is not None and (out.commit.epoch, out.commit.leader) == (2, "b")
    return c


def test_a_timed_out_choice_fences_nothing_until_its_entry_lands() -> None:
    """The proposal times out: no new fence and no proposal while the entry
    may land (before: fenced again and proposed again on the next tick).
    The entry lands (the apply brings the core to epoch 2): the core asks
    the chosen leader to confirm, as after any commit."""
    c = _chosen()
    assert c.committed(False, may_land=True).messages == []
    assert not c.idle  # (ticked: its wait is bounded)
    for _ in range(40):
        out = c.tick()
        assert out.messages == [] and out.commit is None
    assert c.committing is not None and c.epoch == 1
    sync_core(c, {"epoch": 2, "leader": "b", "replicas": list(IDS)})
    assert c.committing is None and c.landing is None and c.fencing is None
    assert (c.epoch, c.leader, c.leader_confirmed) == (2, "b", False)
    said = [m for _ in range(c.retry_ticks) for _d, m in c.tick().messages]
    assert said == [Assign(2, "b", IDS)]


def test_a_timed_out_choice_that_never_lands_fails_over_anew_after_its_bound() -> None:
    """An entry that never lands does not leave the partition without a
    failover for good: after ``landing_ticks`` the core fences again."""
    c = _chosen()
    c.committed(False, may_land=True)
    fences = 0
    for _ in range(c.landing_ticks + 3):
        fences += sum(isinstance(m, Fence) for _d, m in c.tick().messages)
    assert fences == len(IDS) and c.fencing is not None and c.fencing.epoch == 2


def test_a_refused_choice_fails_over_at_once_as_before() -> None:
    """A failure that is not a timeout (the proposal refused: nothing will
    land) is a failure as before: the next tick fences again."""
    c = _chosen()
    c.committed(False)
    assert c.committing is None and c.landing is None
    assert sum(isinstance(m, Fence) for _d, m in c.tick().messages) == len(IDS)


def test_a_landed_choice_whose_leader_spoke_first_is_confirmed() -> None:
    """While the timed-out choice waits, its leader (whose node applied the
    entry first) says it leads the epoch: once the entry lands here too the
    leader counts as confirmed -- no Assign to ask it again."""
    from sprawl.replication.messages import LeaderBeat

    c = _chosen()
    c.committed(False, may_land=True)
    c.receive("b", LeaderBeat(2, 0, 6))
    sync_core(c, {"epoch": 2, "leader": "b", "replicas": list(IDS)})
    assert (c.epoch, c.leader, c.leader_confirmed) == (2, "b", True) and c.idle
    assert all(c.tick().messages == [] for _ in range(3 * c.retry_ticks))
