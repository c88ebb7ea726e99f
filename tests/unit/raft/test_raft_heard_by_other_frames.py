"""CheckQuorum counts a peer heard through its node's other frames (issue 23,
failserve).

A data node's failover made the surviving Raft follower send the Raft
leader's node thousands of replication frames; its Raft answers, on the same
connection behind them, reached the leader only after a CheckQuorum window,
and the leader stepped down with a live quorum -- it won the election that
followed, at a new term.  The transport now reports every other frame read
from a peer's node (:meth:`RaftNode.report_heard`), and that counts."""

from __future__ import annotations

from types import SimpleNamespace

import msgspec
from test_raft_core import ET, cluster
from twisted.internet import task

from sprawl.cluster.placement import raft_id_of
from sprawl.cluster.raft_wire import RaftWire
from sprawl.peer.frames import REPLICATION
from sprawl.raft import Role
from sprawl.replication.envelope import Envelope
from sprawl.replication.messages import NodeBeat, encode
from sprawl.replication.service import ReplicationService


def _failover(report: bool) -> tuple[int, Role, int]:
    """Leader 1; node 2 died; node 3's Raft answers are held up (behind its
    replication frames) for three election timeouts while its node's other
    frames are read every tick (``report``: and reported).  Returns the
    leader's term before, its role after, its term after the answers came."""
    net = cluster(3, check_quorum=True, pre_vote=True)
    net.elect(1)
    leader = net.nodes[1]
    term = leader.term
    net.down.add(2)
    net.cut = {(3, 1)}  # 3 hears the leader; its answers are late
    for _ in range(3 * ET):
        if report:
            leader.report_heard(3)
        net.tick(1)
    role = leader.role
    net.heal()  # the answers come
    for _ in range(3 * ET):
        net.tick(1)
        net.tick(3)
    return term, role, max(n.term for i, n in net.nodes.items() if i != 2)


def test_a_leader_hearing_a_peers_other_frames_keeps_its_term() -> None:
    """With the frames reported the leader stays leader and no term is
    taken; without (the release before), it steps down and the cluster moves
    to a new term -- what the failover benchmark saw."""
    term, role, after = _failover(report=True)
    assert role == Role.LEADER and after == term
    term, role, after = _failover(report=False)
    assert role != Role.LEADER and after > term


def test_other_frames_do_not_keep_a_leader_that_hears_no_quorum() -> None:
    """Frames from a node that is not a voter, or from itself, count for
    nothing: a leader cut off from every voter still steps down."""
    net = cluster(3, check_quorum=True, pre_vote=True)
    net.elect(1)
    leader = net.nodes[1]
    net.isolate(1)
    for _ in range(2 * ET):
        leader.report_heard(1)
        leader.report_heard(99)
        net.tick(1)
    assert leader.role == Role.FOLLOWER
    net.nodes[3].report_heard(2)  # a follower: nothing to count


def test_each_replication_frame_reaches_the_raft_driver_as_its_nodes_raft_id() -> None:
    """The wiring: the replication service hands the peer of every frame it
    reads (a frame that does not decode included) to ``on_heard``, and the
    Raft wire passes it to the driver as that node's Raft id (none while
    Raft is not running)."""
    heard: list[str] = []
    channel = SimpleNamespace(handlers={}, send=lambda *a: None)
    svc = ReplicationService("n0", channel, task.Clock())  # type: ignore[arg-type]
    svc.on_heard = heard.append
    frame = msgspec.msgpack.encode(Envelope("", 0, encode(NodeBeat(7, 0))))
    channel.handlers[REPLICATION]("n2", frame)
    channel.handlers[REPLICATION]("n1", b"\xc1")  # not an envelope
    assert heard == ["n2", "n1"]
    ids: list[int] = []
    control = SimpleNamespace(driver=None)
    wire = RaftWire(control, None)  # type: ignore[arg-type]
    wire.peer_heard("n2")
    control.driver = SimpleNamespace(heard=ids.append)
    wire.peer_heard("n2")
    wire.peer_heard("n2")
    assert ids == [raft_id_of("n2")] * 2
