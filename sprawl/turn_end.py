"""Calls run once at the end of the reactor's turn, sharing one timed call
(issue 16, turn44).

Several parts of a node hold work for the end of the turn that made it -- a
leader's appends to its followers (every publish the turn took leaves as one
append), the store's commit of the turn's writes -- and each asked the
reactor for its own ``callLater(0)``: a :class:`~twisted.internet.base.DelayedCall`
built, pushed on the reactor's heap, popped and run through its logging
handler, ~50 lines of the reactor's Python each, two to four a message on
the quorum path.  :func:`soon` queues such a call with every other one of the
turn behind one ``callLater(0)``: the first call of a turn arms it, the
rest join the queue.  A caller alone in most turns (a follower's store, whose
commit is the turn's only such call) may join only when :attr:`TurnEnd.due`
says a call is armed, and ask the clock itself otherwise.

Order and timing are the ``callLater(0)`` ones: the calls run in the order
queued, in the reactor's next pass over its timed calls (right after the I/O
of the poll round that queued them, as before); a call queued while the queue
runs waits for the next pass (a ``callLater(0)`` made inside a timed call did
too).  A call that raises is
logged and the rest still run (the reactor logged a timed call's failure
and went on).  One queue per clock (the reactor, or a test's
:class:`~twisted.internet.task.Clock`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from sprawl.interfaces import Clock

log = Logger()


class TurnEnd:
    """The calls queued for the end of one clock's turn (see the module docstring)."""

    __slots__ = ("__weakref__", "_calls", "armed", "clock", "due")

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        #: Whether a timed call is armed for calls queued this turn: a caller with
        #: a timed call of its own to make may join it instead (:meth:`soon`),
        #: and make its own -- no queue's overhead -- when none is.
        self.due = False
        #: Timed calls asked of the clock (tests count them: one a turn, however many calls).
        self.armed = 0

    def soon(self, f: Callable[..., Any], *args: Any) -> None:
        """Run ``f(*args)`` at the end of this turn, with the turn's other calls."""
        self._calls.append((f, args))
        if not self.due:
            self.due = True
            self.armed += 1
            self.clock.callLater(0, self._run)

    def _run(self) -> None:
        calls, self._calls, self.due = self._calls, [], False  # (one queued from here on: the next pass)
        for f, args in calls:
            try:
                f(*args)
            except Exception:
                log.failure("a call at the end of the reactor's turn failed: {f!r}", f=f)


_queues: weakref.WeakKeyDictionary[Any, TurnEnd] = weakref.WeakKeyDictionary()


def turn_end(clock: Clock) -> TurnEnd:
    """The end-of-turn queue of ``clock`` (made on first use, one per clock)."""
    q = _queues.get(clock)
    if q is None:
        q = _queues[clock] = TurnEnd(clock)
    return q
