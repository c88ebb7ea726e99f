"""An unconfirmed leader's silence is counted per node (issue 23, refail).

After a dead node's thousands of leaderships moved, the new leaders' first
words to the controller (a ``LeaderBeat`` per partition) came late on a
loaded machine, and the controller's cores -- not yet confirmed, counting
each partition's silence on their own -- failed hundreds of live new leaders
over a second time.  A core whose leader's node is heard now waits for the
node's silence (as an idle core does), and fails over only a partition stuck
on a live node, after ``stuck_ticks``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgspec
from twisted.internet import task

from sprawl.replication.envelope import Envelope
from sprawl.replication.failover import FailoverCore
from sprawl.replication.messages import Assign, Fence, FenceResp, LeaderBeat, decode
from sprawl.replication.service import ReplicationService

IDS = ("a", "b", "c")


def new_leader(beat_timeout_ticks: int = 20) -> FailoverCore:
    """A core whose leader "a" (epoch 1) was failed over to "b" (epoch 2):
    committed, the Assigns sent, "b" not heard about this partition yet."""
    c = FailoverCore(IDS, epoch=1, leader="a", beat_timeout_ticks=beat_timeout_ticks)
    c.start_failover()
    c.receive("b", FenceResp(2, True, 1, 10))
    out = c.receive("c", FenceResp(2, True, 1, 9))
    assert out.commit is not None and out.commit.leader == "b"
    c.committed(True)
    assert (c.epoch, c.leader, c.leader_confirmed, c.busy) == (2, "b", False, False)
    return c


def test_a_busy_new_leader_whose_node_is_heard_is_not_failed_over_again() -> None:
    """1,000 partitions newly led by "b", whose node is heard all along (its
    beats, its appends for other partitions) but whose word for each
    partition takes 9 beat timeouts to come: none is failed over again (the
    Assign is repeated meanwhile), and each is confirmed by its word."""
    cores = [new_leader() for _ in range(1_000)]
    timeout = cores[0].beat_timeout_ticks
    assigns = 0
    for _ in range(9 * timeout):
        for c in cores:
            out = c.tick(leader_heard=True)
            assert out.commit is None
            assigns += sum(isinstance(m, Assign) and d == "b" for d, m in out.messages)
            assert not any(isinstance(m, Fence) for _, m in out.messages)
    assert all(c.fencing is None and c.epoch == 2 and c.leader == "b" for c in cores)
    assert assigns == 1_000 * (9 * timeout // c.retry_ticks)  # one every retry_ticks
    for c in cores:
        c.receive("b", LeaderBeat(2, 0, 0))
    assert all(c.leader_confirmed and c.idle for c in cores)


def test_a_partition_stuck_on_a_heard_node_still_fails_over() -> None:
    """The leader's node is heard but never answers for this partition: it
    is failed over after ``stuck_ticks`` ticks (not before), at the next epoch."""
    c = new_leader()
    assert c.stuck_ticks == 10 * c.beat_timeout_ticks
    for _ in range(c.stuck_ticks):
        assert c.tick(leader_heard=True).commit is None
        assert c.fencing is None
    out = c.tick(leader_heard=True)
    assert c.fencing is not None and c.fencing.epoch == 3
    assert sorted(d for d, m in out.messages if isinstance(m, Fence)) == list(IDS)


def test_a_new_leader_whose_node_is_not_heard_fails_over_after_the_beat_timeout() -> None:
    """Without word from the leader's node the beat timeout counts as before;
    heard for a while, then silent, the partition fails over at the first
    tick its node is not heard (its silence already past the timeout)."""
    c = new_leader()
    for _ in range(c.beat_timeout_ticks):
        c.tick()
    assert c.fencing is None
    c.tick()
    assert c.fencing is not None and c.fencing.epoch == 3
    c = new_leader()
    for _ in range(3 * c.beat_timeout_ticks):
        c.tick(leader_heard=True)
    assert c.fencing is None
    c.tick(leader_heard=False)
    assert c.fencing is not None


def _controller(partitions: int) -> tuple[ReplicationService, task.Clock, list[tuple[str, Any]]]:
    """Node "a" as the controller of ``partitions`` cores just failed over to "b"."""
    sent: list[tuple[str, Any]] = []
    clock = task.Clock()

    def send(dst: str, kind: Any, payload: bytes) -> None:
        sent.append((dst, payload))

    channel: Any = SimpleNamespace(handlers={}, send=send)
    svc = ReplicationService("a", channel, clock)
    svc.controller_of = lambda: "a"
    for i in range(partitions):
        svc.controllers[(f"t{i:05d}", 0)] = new_leader()
    return svc, clock, sent


def test_the_controller_does_not_fail_over_a_slow_new_leader_whose_node_beats() -> None:
    """The service: 1,000 cores newly led by "b", whose node beats every tick
    but says nothing about them for 3 beat timeouts -- none fails over
    again; once "b" stops beating, all fail over in the tick its node is
    found silent (one controller step, by its node's silence)."""
    svc, clock, sent = _controller(1_000)
    timeout = next(iter(svc.controllers.values())).beat_timeout_ticks
    for _ in range(3 * timeout):
        clock.advance(svc.tick_seconds)
        svc.heard("b", 7)  # b's NodeBeat
        svc.heard("c", 9)
        svc.tick()
    assert not any(c.fencing for c in svc.controllers.values())
    assert {dst for dst, _ in sent} == {"b"}  # the repeated Assigns, to the leader only
    ticks = 0
    while not all(c.fencing for c in svc.controllers.values()):
        assert ticks < timeout + 2, "b's silence was not noticed"
        clock.advance(svc.tick_seconds)
        svc.heard("c", 9)  # only c is heard now
        svc.tick()
        ticks += 1
    assert ticks > timeout - 2  # after the node's silence, not before
    epochs = {c.fencing.epoch for c in svc.controllers.values() if c.fencing}
    assert epochs == {3}


def test_the_controller_counts_per_partition_silence_of_a_leader_that_never_beat() -> None:
    """A leader node of the release before ``node-beat`` (heard, never a
    NodeBeat) keeps the per-partition count: its silent partitions fail over
    after the beat timeout, as on that release."""
    svc, clock, sent = _controller(10)
    timeout = next(iter(svc.controllers.values())).beat_timeout_ticks
    for _ in range(timeout + 1):
        clock.advance(svc.tick_seconds)
        svc.heard("b")  # frames, no beat
        svc.heard("c")
        svc.tick()
    assert all(c.fencing is not None for c in svc.controllers.values())
    payloads = []
    for _dst, p in sent:  # (a tick's messages to a node leave as one batch frame)
        try:
            payloads += msgspec.msgpack.decode(p, type=list[bytes])
        except msgspec.ValidationError:
            payloads.append(p)
    fences = [decode(msgspec.msgpack.decode(p, type=Envelope).message) for p in payloads]
    assert any(isinstance(m, Fence) for m in fences)
