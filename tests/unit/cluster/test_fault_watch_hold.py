"""The fault watch's rounds wait while a failover is at work on the node
(issue 23, fail38): with a node of interest (its port refused, lost by
gossip) a round walks every partition with a replica on it -- a third of a
second of the reactor at 10,000 -- and run at the kill (the refused probe's
own round) it held the controller's fences' frame, or the other survivor's
answers, behind it.  A round now waits while the replication service takes
batches of fences, leaderships or first appends, and for
:data:`HOLD_MIN` after a refusal; at most :data:`HOLD_MAX`.  Counted: the
rounds run (``observe`` called) and held."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet.task import Clock

from sprawl.cluster.fault_watch import HOLD_MAX, HOLD_MIN, HOLD_QUIET, INTERVAL, FaultWatch
from sprawl.replication.timeline import PhaseTimeline


def _watch() -> tuple[FaultWatch, Clock, Any, list[float]]:
    """A watch whose rounds are counted (observe stands in), over a service
    with the failover batch counters."""
    clock = Clock()
    service = SimpleNamespace(
        fence_batches=0,
        lead_batches=0,
        first_batches=0,
        liveness=SimpleNamespace(refused=lambda node, since: None),
        node_refused=lambda node, since: False,
    )
    plane = SimpleNamespace(service=service)
    watch = FaultWatch("a", clock, None, None, plane, None, (1, 1))  # type: ignore[arg-type]
    rounds: list[float] = []

    def observe() -> Any:
        rounds.append(clock.seconds())
        return SimpleNamespace(members=[], disk=None)

    watch.observe = observe  # type: ignore[method-assign]
    watch.core = SimpleNamespace(diagnose=lambda obs: [])  # type: ignore[assignment]
    return watch, clock, service, rounds


def test_rounds_wait_while_failover_batches_come_and_run_once_they_stop() -> None:
    """Every round runs while nothing happens; while fence, leadership and
    first-append batches come (one each half second for 3 s) none runs;
    the first round after they stopped does."""
    watch, clock, service, rounds = _watch()
    for _ in range(4):
        watch.tick()
        clock.advance(INTERVAL)
    assert len(rounds) == 4
    before = len(rounds)
    for i in range(6):
        attr = ("fence_batches", "lead_batches", "first_batches")[i % 3]
        setattr(service, attr, getattr(service, attr) + 1)
        watch.tick()
        clock.advance(INTERVAL)
    assert len(rounds) == before and watch.rounds_held == 6
    watch.tick()
    assert len(rounds) == before + 1


def test_a_refusal_holds_the_next_round_for_hold_min() -> None:
    """A refused probe's own round (``probed`` runs one) and any within
    :data:`HOLD_MIN` of it wait; the one after runs."""
    watch, clock, _service, rounds = _watch()
    watch.tick()
    clock.advance(INTERVAL)
    before = len(rounds)
    watch.probed("b", "refused")
    watch.tick()
    assert len(rounds) == before
    clock.advance(HOLD_MIN)
    watch.tick()
    assert len(rounds) == before + 1


def test_a_failover_phase_marked_lately_holds_the_round() -> None:
    """Between two batches (the fences answered, the choices and the Raft
    round still to come) the service marks failover phases: a round within
    :data:`HOLD_QUIET` of the last mark waits; one after it runs."""
    watch, clock, service, rounds = _watch()
    service.timeline = PhaseTimeline()
    watch.tick()
    clock.advance(INTERVAL)
    before = len(rounds)
    service.timeline.mark("fence_answered", clock.seconds())
    clock.advance(HOLD_QUIET / 2)
    watch.tick()
    assert len(rounds) == before
    clock.advance(HOLD_QUIET)
    watch.tick()
    assert len(rounds) == before + 1


def test_a_round_waits_at_most_hold_max() -> None:
    """Batches that never stop: a round runs once it waited ``HOLD_MAX``."""
    watch, clock, service, rounds = _watch()
    watch.tick()
    before = len(rounds)
    held_from = clock.seconds() + INTERVAL
    for _ in range(int(3 * HOLD_MAX / INTERVAL)):
        clock.advance(INTERVAL)
        service.lead_batches += 1
        watch.tick()
        if len(rounds) > before:
            break
    assert len(rounds) == before + 1
    assert rounds[-1] - held_from == HOLD_MAX
