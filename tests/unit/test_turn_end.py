"""One timed call a reactor turn for the calls held for its end (issue 16,
turn44): :mod:`sprawl.turn_end`.  Counted: the timers asked of the clock."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import task

from harness.counting import count_calls
from sprawl.turn_end import TurnEnd, turn_end


def test_the_calls_of_a_turn_share_one_timed_call_and_run_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Five calls queued in one turn: one ``callLater(0)`` (five were asked
    for before), none run before the turn ends, all run once, in order."""
    clock = task.Clock()
    timers = count_calls(monkeypatch, clock, "callLater")
    te = TurnEnd(clock)
    ran: list[int] = []
    for k in range(5):
        te.soon(ran.append, k)
    assert ran == [] and len(timers) == 1 and te.armed == 1
    clock.advance(0)
    assert ran == [0, 1, 2, 3, 4]
    clock.advance(1)
    assert ran == [0, 1, 2, 3, 4] and clock.getDelayedCalls() == []


def test_a_call_queued_while_the_queue_runs_waits_for_the_next_pass() -> None:
    """As a ``callLater(0)`` made inside a timed call: it gets a timed call of
    its own, after the queue that was running (the reactor runs it in its
    next pass; a :class:`task.Clock` runs it in the same ``advance``)."""
    clock = task.Clock()
    te = TurnEnd(clock)
    ran: list[str] = []

    def first() -> None:
        ran.append("first")
        te.soon(ran.append, "queued meanwhile")

    te.soon(first)
    te.soon(ran.append, "second")
    clock.advance(0)
    assert ran == ["first", "second", "queued meanwhile"] and te.armed == 2


def test_a_call_that_raises_is_logged_and_the_rest_run() -> None:
    clock = task.Clock()
    te = TurnEnd(clock)
    ran: list[str] = []
    logged: list[Any] = []
    from twisted.logger import globalLogPublisher

    globalLogPublisher.addObserver(logged.append)
    try:

        def boom() -> None:
            raise RuntimeError("boom")

        te.soon(boom)
        te.soon(ran.append, "after")
        clock.advance(0)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert ran == ["after"]
    assert any(e.get("log_failure") is not None for e in logged)


def test_one_queue_a_clock() -> None:
    a, b = task.Clock(), task.Clock()
    assert turn_end(a) is turn_end(a) and turn_end(a) is not turn_end(b)


def test_due_says_whether_a_call_is_armed_for_this_turn() -> None:
    """``due``: what a caller alone in most turns (a follower's store) reads to
    join an armed call, or make its own timed call -- no queue -- when none is."""
    clock = task.Clock()
    te = TurnEnd(clock)
    assert te.due is False
    te.soon(lambda: None)
    assert te.due is True
    clock.advance(0)
    assert te.due is False and clock.getDelayedCalls() == []
