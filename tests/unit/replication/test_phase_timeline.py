"""The failover's phase timeline: first/last time and a count per phase, one
report per phase at most every second, a new wave after a quiet gap; and
the benchmark's merge of the nodes' lines (issue 23, failover23)."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet import task

from benchmarks.failover_timeline import parse, table
from sprawl.replication.service import ReplicationService
from sprawl.replication.timeline import REPORT_SECONDS, WAVE_GAP_SECONDS, PhaseTimeline


def test_marks_are_counted_and_reported_at_most_once_a_second() -> None:
    """10,000 marks of a phase within one second make one report with the
    first and last time and the count; nothing is reported again until
    something new is marked and a second has passed."""
    t = PhaseTimeline()
    for i in range(10_000):
        t.mark("fence_sent", 100.0 + i * 1e-5)
    t.mark("choice", 100.2, 3)
    got = t.due(100.3)
    assert [(k, p.first, p.last, p.n) for k, p in got] == [
        ("fence_sent", 100.0, 100.0 + 9_999 * 1e-5, 10_000),
        ("choice", 100.2, 100.2, 3),
    ]
    t.mark("choice", 100.4)
    assert t.due(100.3 + REPORT_SECONDS / 2) == []  # not yet a second since the last report
    [(k, p)] = t.due(100.3 + REPORT_SECONDS)
    assert (k, p.first, p.last, p.n) == ("choice", 100.2, 100.4, 4)
    assert t.due(200.0) == []  # nothing new


def test_a_phase_quiet_past_the_gap_starts_a_new_wave() -> None:
    """The next failover's marks are not added to the last one's."""
    t = PhaseTimeline()
    t.mark("leading", 10.0, 5)
    t.mark("leading", 10.0 + WAVE_GAP_SECONDS + 1, 2)
    p = t.phases["leading"]
    assert (p.first, p.n) == (10.0 + WAVE_GAP_SECONDS + 1, 2)


def test_the_benchmark_merges_the_nodes_lines_after_the_kill() -> None:
    """Lines of phases that began before the kill are another failover's; a
    phase's later lines of the same wave replace its earlier ones; waves
    after the kill are added."""
    fmt = "2026-12-05T10:00:00+0000 [sprawl.replication.service#info] timeline: {} first={} last={} n={}\n"
    texts = {
        "n0": fmt.format("found_silent", 1002.0, 1002.0, 3700)
        + fmt.format("fence_sent", 1002.01, 1002.5, 7000)
        + fmt.format("fence_sent", 1002.01, 1002.9, 7400),
        "n1": fmt.format("applied", 990.0, 990.5, 10000)
        + fmt.format("applied", 1004.0, 1004.2, 3000)
        + fmt.format("applied", 1008.0, 1008.5, 700),  # a second wave within the window: added
    }
    got = parse(texts, kill_at=1000.0)
    assert got == {
        ("n0", "found_silent"): (1002.0, 1002.0, 3700),
        ("n0", "fence_sent"): (1002.01, 1002.9, 7400),
        ("n1", "applied"): (1004.0, 1008.5, 3700),
    }
    lines = table(got, 1000.0).splitlines()
    assert lines[2] == "| found_silent | n0 | 2.00 | 2.00 | 3,700 |" and "applied" in lines[-1]


def test_what_the_ticks_send_while_new_leaders_wait_is_a_phase() -> None:
    """The messages the replicas' ticks make (re-sends, heartbeats) are the
    ``tick_sends`` phase while new leaders here wait for their followers to
    hold their control record -- and nothing is marked otherwise (a steady
    cluster's heartbeats are not a failover's)."""
    clock = task.Clock()
    svc = ReplicationService("a", SimpleNamespace(handlers={}, send=lambda *a: None), clock)  # type: ignore[arg-type]
    svc.controller_of = lambda: None
    rep = SimpleNamespace(core=SimpleNamespace(idle=False, tick_beats=False, quiet_ticks=0), tick=lambda: 2)
    svc.replicas[("t", 0)] = rep  # type: ignore[assignment]
    svc._due.add(("t", 0))
    svc.tick()
    assert "tick_sends" not in svc.timeline.phases
    svc._new_leads[("t", 0)] = 1
    clock.advance(0.1)
    svc.tick()
    clock.advance(0.1)
    svc.tick()
    assert svc.timeline.phases["tick_sends"].n == 4
