"""The node's time: the wall clock, but never backwards and never frozen.

Twisted's reactor keeps its timers on ``time.time()``.  When the system
clock is stepped back (NTP's correction at boot, a VM resumed or migrated,
an operator's ``date -s``), every timer scheduled before the step waits out
the step as well: for a 60 s step back, a node sends no Raft heartbeat, no
gossip probe, no replication beat and times out no long poll or lease for a
minute -- its peers fail it over while it answers every packet.  A step
forward fires every timer due in between at once, which each protocol
already survives (it looks like a stalled process: the chaos test's
``SIGSTOP``).

:class:`SteadyClock` is the time the node's reactor runs on instead
(installed by ``twistd sprawl``, :func:`sprawl.node.clock.install_steady_clock`):
the monotonic clock plus an offset that tracks the wall clock.  A step
forward is taken at once; a step back is slewed away -- the clock runs at
``1 - slew`` of real time (default 0.9) until it meets the wall clock again
-- so it never goes backwards and never stops.  (A step back is seen when
the wall clock reads less than the clock's last reading; one smaller than
the time between two readings -- the node reads its clock at least every
0.1 s -- only makes that interval shorter.)  Message timestamps, leases
and retention read this clock too: after a step back they run ahead of the
system clock by what is left of the step (at most the step, shrinking by
``slew`` a second).  Pure: no Twisted import; the clocks are injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: How much slower than real time the clock runs while a step back is slewed away.
SLEW = 0.1
#: A step back at least this large is counted (and logged by the adapter).
STEP_NOTED = 1.0


class SteadyClock:
    """Wall-clock seconds that never go backwards (see the module docstring).

    ``wall`` and ``mono`` are the system's clocks (``time.time`` and
    ``time.monotonic``); ``slew`` the fraction of real time a step back is
    taken away at.  ``seconds`` is called for every timer the reactor sets
    and on each of its turns: in step it costs one read of the wall clock
    (a closure, no attribute lookups); only while a step back is slewed away
    does it read the monotonic clock too."""

    #: The time now (see :meth:`_make_seconds`).
    seconds: Callable[[], float]

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        slew: float = SLEW,
    ) -> None:
        if not 0.0 < slew < 1.0:
            raise ValueError("slew must be between 0 and 1")
        self.slew = slew
        #: How far ahead of the wall clock this clock still is (a step back not yet slewed away).
        self.ahead = 0.0
        #: Steps back of at least :data:`STEP_NOTED` seconds seen, and the largest.
        self.steps_back = 0
        self.largest_step_back = 0.0
        self.seconds = self._make_seconds(wall, mono)

    def _make_seconds(self, wall: Callable[[], float], mono: Callable[[], float]) -> Callable[[], float]:
        """The clock's reading function: the wall clock while it does not go
        back; after a step back, the monotonic clock plus an offset that
        closes in on the wall clock's at ``slew`` a second."""
        slew = self.slew
        last = wall()  # the last time returned
        slewing = False
        offset = 0.0  # (while slewing) what is added to the monotonic clock
        at = 0.0  # (while slewing) the monotonic time of the last reading

        def step_back(gap: float) -> None:
            if gap - self.ahead >= STEP_NOTED:
                self.steps_back += 1
                self.largest_step_back = max(self.largest_step_back, gap - self.ahead)

        def seconds() -> float:
            nonlocal last, slewing, offset, at
            w = wall()
            if not slewing:
                if w >= last:
                    last = w
                    return w
                # A step back: go on from the last reading, on the monotonic clock.
                m = mono()
                slewing, offset, at = True, last - m, m
                step_back(last - w)
                self.ahead = last - w
                return last
            m = mono()
            target = w - m
            if target >= offset:
                # Met the wall clock again (or a step forward): in step.
                slewing, self.ahead, last = False, 0.0, w
                return w
            gap = offset - target
            step_back(gap)
            dt = m - at
            if dt > 0:
                offset -= min(gap, slew * dt)
                at = m
            self.ahead = offset - target
            now = m + offset
            if self.ahead <= 0.0:
                slewing, self.ahead, now = False, 0.0, w
            last = now
            return now

        return seconds
