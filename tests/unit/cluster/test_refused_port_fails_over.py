"""A node whose peer port refuses connections fails over at once (issue 23, failover37).

A killed or crashed node's process no longer listens: the peer channel's
connection to it ends, the fault watch probes its peer port at once
(:meth:`~sprawl.cluster.fault_watch.FaultWatch.peer_lost`) and the
connection is refused.  On the controller that refusal now fails over the
node's leaderships in one step (:meth:`ReplicationService.node_refused`),
without waiting out the 2 s beat timeout -- unless the node was heard after
the probe began.  A node that answers, or one whose probe merely timed out
(a host or network failure), is still judged by its beats."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgspec
from twisted.internet import task

from sprawl.cluster import fault_watch
from sprawl.cluster.fault_watch import FaultWatch
from sprawl.replication.envelope import Envelope
from sprawl.replication.failover import FailoverCore
from sprawl.replication.messages import Fence, decode
from sprawl.replication.service import ReplicationService

IDS = ("a", "b", "c")


def _controller(partitions: int) -> tuple[ReplicationService, task.Clock, list[tuple[str, Any]]]:
    """Node "a" as the controller of ``partitions`` idle cores led by "b"
    (confirmed, epoch 1) and as many led by "c"; every node heard."""
    sent: list[tuple[str, Any]] = []
    clock = task.Clock()

    def send(dst: str, kind: Any, payload: bytes) -> None:
        sent.append((dst, payload))

    channel: Any = SimpleNamespace(handlers={}, send=send)
    svc = ReplicationService("a", channel, clock)
    svc.controller_of = lambda: "a"
    for leader in ("b", "c"):
        for i in range(partitions):
            c = FailoverCore(IDS, epoch=1, leader=leader, assign_on_commit=False)
            c.leader_confirmed = True
            svc.controllers[(f"{leader}{i:05d}", 0)] = c
    clock.advance(1.0)
    svc.heard("b", 7)
    svc.heard("c", 9)
    svc.tick()
    return svc, clock, sent


def _messages(sent: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    out = []
    for dst, payload in sent:
        try:
            many = msgspec.msgpack.decode(payload, type=list[bytes])
        except msgspec.ValidationError:
            many = [payload]
        out += [(dst, decode(msgspec.msgpack.decode(p, type=Envelope).message)) for p in many]
    return out


def test_a_refused_port_fails_over_every_leadership_of_the_node_in_one_step() -> None:
    """1,000 partitions led by "b": its port refused (probe began at the
    clock's now, nothing heard since) -- every one of them fences at the
    next epoch at once, no tick passing, the fences to "a" and "c" only (a
    silent node hears nothing), in one frame to "c"; "c"'s are untouched."""
    svc, clock, sent = _controller(1_000)
    sent.clear()
    assert svc.node_refused("b", clock.seconds())
    led_b = [c for k, c in svc.controllers.items() if k[0].startswith("b")]
    led_c = [c for k, c in svc.controllers.items() if k[0].startswith("c")]
    assert all(c.fencing is not None and c.fencing.epoch == 2 for c in led_b)
    assert all(c.fencing is None and c.idle for c in led_c)
    assert svc.liveness.is_silent("b") and "b" in svc.dead
    msgs = _messages(sent)
    assert {dst for dst, _ in sent} == {"c"}  # (a's own fences are delivered here, not sent)
    assert len(sent) == 1  # one frame
    assert sum(isinstance(m, Fence) for _, m in msgs) == 1_000
    assert svc.timeline.phases["found_silent"].n == 1_000
    # Refused again (the next probe): nothing more.
    assert not svc.node_refused("b", clock.seconds())


def test_a_node_heard_after_the_probe_began_is_left_to_its_beats() -> None:
    """A beat (or any frame) from the node after the probe began: the
    refusal is stale (a restart listening again says so with its new boot);
    nothing fails over until the beat timeout does it."""
    svc, clock, _sent = _controller(10)
    since = clock.seconds()
    clock.advance(0.05)
    svc.heard("b", 7)
    assert not svc.node_refused("b", since)
    assert not any(c.fencing for c in svc.controllers.values())
    assert not svc.liveness.is_silent("b")
    # ... and silent from then on: the beat timeout's judgement as before.
    ticks = 0
    while not any(c.fencing for c in svc.controllers.values()):
        assert ticks < 2.0 / svc.tick_seconds + 3
        clock.advance(svc.tick_seconds)
        svc.heard("c", 9)
        svc.tick()
        ticks += 1
    assert ticks >= 2.0 / svc.tick_seconds - 1


def test_only_the_controller_acts_on_a_refusal() -> None:
    """A node with no controller cores (not the controller), or a refusal of
    a node it does not watch or of itself: nothing happens."""
    clock = task.Clock()
    channel: Any = SimpleNamespace(handlers={}, send=lambda *a: None)
    svc = ReplicationService("a", channel, clock)
    assert not svc.node_refused("b", 0.0)
    svc2, clock2, _ = _controller(3)
    assert not svc2.node_refused("a", clock2.seconds())
    assert not svc2.node_refused("z", clock2.seconds())
    assert not any(c.fencing for c in svc2.controllers.values())


def _became_controller(svc: ReplicationService, clock: task.Clock, partitions: int) -> None:
    """``svc``'s node becomes the controller now: ``partitions`` idle cores
    led by "b" and as many by "c" (confirmed, epoch 1), as the controller's
    first step builds them (the first core set gives every node a whole beat
    timeout from now)."""
    for leader in ("b", "c"):
        for i in range(partitions):
            c = FailoverCore(IDS, epoch=1, leader=leader, assign_on_commit=False)
            c.leader_confirmed = True
            svc.controllers[(f"{leader}{i:05d}", 0)] = c
    svc.controller_of = lambda: svc.node_id


def _node_not_controller() -> tuple[ReplicationService, task.Clock]:
    """Node "a", not the controller (no cores), having heard "b" and "c" beat."""
    clock = task.Clock()
    channel: Any = SimpleNamespace(handlers={}, send=lambda *a: None)
    svc = ReplicationService("a", channel, clock)
    svc.controller_of = lambda: "c"
    clock.advance(1.0)
    svc.heard("b", 7)
    svc.heard("c", 9)
    return svc, clock


def test_a_refusal_heard_before_becoming_the_controller_fails_over_at_its_first_tick() -> None:
    """Node "a" is not the controller when "b"'s port refuses (its fault watch
    records the refusal); 0.3 s later it becomes the controller: its first
    tick fails over every partition "b" leads -- not a beat timeout (2 s)
    after its election, as before (failover37's run 4)."""
    svc, clock = _node_not_controller()
    since = clock.seconds()
    svc.liveness.refused("b", since)
    assert not svc.node_refused("b", since)  # (not the controller: nothing yet)
    clock.advance(0.3)
    _became_controller(svc, clock, 100)
    svc.heard("c", 9)
    svc.tick()
    fencing = {k[0][0] for k, c in svc.controllers.items() if c.fencing is not None}
    assert fencing == {"b"}
    assert sum(1 for c in svc.controllers.values() if c.fencing is not None) == 100


def test_a_refusal_is_forgotten_once_the_node_is_heard_or_the_timeout_passed() -> None:
    """Heard after the refusal (a restart listening again), or elected more
    than the beat timeout after it: the new controller judges "b" by its
    beats alone, a whole timeout from its election."""
    for heard in (True, False):
        svc, clock = _node_not_controller()
        svc.liveness.refused("b", clock.seconds())
        clock.advance(0.2 if heard else svc.liveness.timeout + 0.5)
        if heard:
            svc.heard("b", 8)
        _became_controller(svc, clock, 10)
        ticks = 0
        while not any(c.fencing for c in svc.controllers.values()):
            assert ticks < svc.liveness.timeout / svc.tick_seconds + 5
            svc.heard("c", 9)
            svc.tick()
            clock.advance(svc.tick_seconds)
            ticks += 1
        assert ticks >= svc.liveness.timeout / svc.tick_seconds - 1


class _Plane:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []
        self.refusals: list[tuple[str, float]] = []
        liveness = SimpleNamespace(refused=lambda node, since: self.refusals.append((node, since)))
        self.service = SimpleNamespace(node_refused=self._refused, liveness=liveness)

    def _refused(self, node: str, since: float) -> bool:
        self.calls.append((node, since))
        return True


def test_the_fault_watch_hands_a_refused_probe_to_the_controller(monkeypatch: Any) -> None:
    """``probed(node, "refused")`` passes the probe's start to the service
    and records the refusal in its liveness (on every node: one elected
    controller later uses it); "answers", "silent" (SIGSTOP) and
    "unreachable" (a timeout) do neither."""
    clock = task.Clock()
    plane = _Plane()
    watch = FaultWatch("a", clock, None, None, plane, None, (1, 1))  # type: ignore[arg-type]
    monkeypatch.setattr(FaultWatch, "tick", lambda self: None)
    clock.advance(5.0)
    watch._probed_at["b"] = 4.9
    for reach in ("answers", "silent", "unreachable"):
        watch.probed("b", reach)
    assert plane.calls == [] and plane.refusals == []
    watch.probed("b", "refused")
    assert plane.calls == [("b", 4.9)] and plane.refusals == [("b", 4.9)]


def test_a_probe_reset_before_a_word_is_made_again_at_once(monkeypatch: Any) -> None:
    """A killed process's listening socket still completes connections while
    the kernel frees its memory, then resets them: the probe made at the
    peer connection's loss is closed before the peer says anything. It is
    made again :data:`QUICK_REPROBE` later (not a second later), at most
    :data:`QUICK_PROBES` times per lost connection -- and the refusal of the
    re-probe fails the node over. A probe that timed out, or that answered,
    is not repeated early."""
    clock = task.Clock()
    plane = _Plane()
    watch = FaultWatch("a", clock, None, None, plane, None, (1, 1))  # type: ignore[arg-type]
    monkeypatch.setattr(FaultWatch, "tick", lambda self: None)
    probes: list[tuple[str, float]] = []

    def probe(self: FaultWatch, node: str, every: float = 1.0) -> None:
        now = clock.seconds()
        if node in self._probing or now - self._probed_at.get(node, -1e9) < every:
            return
        self._probed_at[node] = now
        self._probing.add(node)
        probes.append((node, now))

    monkeypatch.setattr(FaultWatch, "_maybe_probe", probe)
    clock.advance(5.0)
    watch.peer_lost("b")
    assert probes == [("b", 5.0)]
    watch.probed("b", "silent", closed=True)  # reset while the process dies
    clock.advance(fault_watch.QUICK_REPROBE)
    assert probes[-1] == ("b", 5.0 + fault_watch.QUICK_REPROBE)
    watch.probed("b", "refused")
    assert plane.calls == [("b", 5.0 + fault_watch.QUICK_REPROBE)]

    # bounded: a node that keeps closing probes gets QUICK_PROBES quick ones per loss
    probes.clear()
    watch.peer_lost("c")
    for _ in range(fault_watch.QUICK_PROBES + 2):
        watch.probed("c", "silent", closed=True)
        clock.advance(fault_watch.QUICK_REPROBE)
    assert len(probes) == 1 + fault_watch.QUICK_PROBES
    clock.advance(2.0)
    watch.peer_lost("c")  # a new loss: quick probes again
    watch.probed("c", "silent", closed=True)
    clock.advance(fault_watch.QUICK_REPROBE)
    assert len(probes) == 3 + fault_watch.QUICK_PROBES

    # a timed-out probe (closed=False) and an answer are not repeated early
    probes.clear()
    clock.advance(2.0)
    watch.peer_lost("d")
    watch.probed("d", "silent")
    watch.probed("d", "answers")
    clock.advance(0.5)
    assert probes == [("d", clock.seconds() - 0.5)]
    watch.stop()
    assert clock.getDelayedCalls() == []


def test_the_probe_tells_a_reset_from_a_timeout() -> None:
    """``_Probe``: a connection lost before its timer ran is ``closed``; one
    whose timer ran (a stopped process that accepts and says nothing) is not."""
    clock = task.Clock()
    got: list[tuple[str, bool]] = []
    done = SimpleNamespace(clock=clock, result=lambda reach, closed=False: got.append((reach, closed)))
    reset = fault_watch._Probe(done)
    reset.transport = SimpleNamespace(abortConnection=lambda: None)
    reset.connectionMade()
    reset.connectionLost()
    slow = fault_watch._Probe(done)
    slow.transport = SimpleNamespace(abortConnection=lambda: slow.connectionLost())
    slow.connectionMade()
    clock.advance(fault_watch.PROBE_TIMEOUT)
    assert got[0] == ("silent", True)
    assert got[1] == ("silent", False)
    assert clock.getDelayedCalls() == []
