"""A fence not yet answered by a node that is heard is not sent again before
the beat timeout (issue 23, fail39).

A dead node's 5,000 partitions are fenced at once; the other survivor works
through them in order, and on a loaded machine its answers came after the
controller's first retry (3 ticks) and second (9 ticks): it took every
fence two or three times (10,070 for 5,035 in a quiet run of main, 15,000
for 5,000 at load), each a promise checked and an answer sent and read
again.  A replica whose node is heard (beats, frames) is busy, not lost: it
is fenced again only once the beat timeout passed; one not heard is fenced
again after ``retry_ticks`` as before.  Counted, not timed."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgspec
from twisted.internet import task

from sprawl.replication.envelope import Envelope
from sprawl.replication.failover import FailoverCore
from sprawl.replication.messages import Fence, FenceResp, decode
from sprawl.replication.service import ReplicationService

#: b led every partition and is dead; a is the controller; c the other survivor.
IDS = ("b", "a", "c")


def _fencing(beat_timeout_ticks: int = 20) -> FailoverCore:
    """A core failing over b's partition, a's own answer in."""
    c = FailoverCore(IDS, epoch=1, leader="b", beat_timeout_ticks=beat_timeout_ticks)
    c.leader_confirmed = True
    c.start_failover()
    assert c.receive("a", FenceResp(2, True, 1, 10)).commit is None
    return c


def _fences_to(out: Any, node: str) -> int:
    return sum(1 for d, m in out.messages if d == node and isinstance(m, Fence))


def test_a_heard_replica_answering_late_is_fenced_once() -> None:
    """1,000 partitions; c is heard all along and answers each fence at the
    15th tick: no fence goes to c again (before: at ticks 3 and 9, three
    fences each); b, not heard, is fenced again at tick 3 as before."""
    cores = [_fencing() for _ in range(1_000)]
    to_c = to_b = 0
    for t in range(1, 15):
        for c in cores:
            out = c.tick(leader_heard=False, heard={"a", "c"})
            to_c += _fences_to(out, "c")
            to_b += _fences_to(out, "b")
            assert out.commit is None
        if t == 3:
            assert to_b == 1_000 and to_c == 0
    assert to_c == 0 and sum(c.fences_again for c in cores) == to_b == 2_000  # b at ticks 3 and 9
    for c in cores:
        assert c.receive("c", FenceResp(2, True, 1, 10)).commit is not None


def test_a_replica_not_heard_is_fenced_again_after_retry_ticks() -> None:
    """Without word from c's node the retries are as before: ticks 3 and 9."""
    c = _fencing()
    at = [t for t in range(1, 15) if _fences_to(c.tick(heard={"a"}), "c")]
    assert at == [3, 9]


def test_a_heard_replica_that_never_answers_is_fenced_again_after_the_beat_timeout() -> None:
    """c is heard but never answers: fenced again at the first retry past the
    beat timeout (tick 21 with retries doubling from 3), then a later epoch
    after three beat timeouts, as before."""
    c = _fencing()
    at = [t for t in range(1, 61) if _fences_to(c.tick(heard={"a", "c"}), "c")]
    assert at == [21, 45]
    assert c.fencing is not None and c.fencing.epoch == 2
    c.tick(heard={"a", "c"})
    assert c.fencing.epoch == 3


def _decoded(sent: list[tuple[str, bytes]], node: str) -> list[Any]:
    """The replication messages sent to ``node`` (batch frames unpacked)."""
    payloads: list[bytes] = []
    for dst, p in sent:
        if dst != node:
            continue
        try:
            payloads += msgspec.msgpack.decode(p, type=list[bytes])
        except msgspec.ValidationError:
            payloads.append(p)
    return [decode(msgspec.msgpack.decode(p, type=Envelope).message) for p in payloads]


def test_the_controller_fences_the_busy_other_survivor_once() -> None:
    """The service: a controls 1,000 partitions b leads; b's port refuses,
    c beats every tick but answers the fences only after 15 ticks -- c is
    sent each fence once (3,000 before: at the first fencing and the
    retries at ticks 3 and 9)."""
    sent: list[tuple[str, bytes]] = []
    clock = task.Clock()
    channel: Any = SimpleNamespace(handlers={}, send=lambda dst, kind, payload: sent.append((dst, payload)))
    svc = ReplicationService("a", channel, clock)
    svc.controller_of = lambda: "a"
    for i in range(1_000):
        c = FailoverCore(IDS, epoch=1, leader="b", beat_timeout_ticks=20)
        c.leader_confirmed = True
        svc.controllers[(f"t{i:05d}", 0)] = c
    for n in ("b", "c"):
        svc.heard(n, 7)
    clock.advance(0.05)
    assert svc.node_refused("b", clock.seconds())
    for _ in range(15):
        clock.advance(svc.tick_seconds)
        svc.heard("c", 7)  # c's NodeBeat
        svc.tick()
    fences = [m for m in _decoded(sent, "c") if isinstance(m, Fence)]
    assert len(fences) == 1_000
    assert not [m for m in _decoded(sent, "b") if isinstance(m, Fence)]  # (b is silent: nothing)
