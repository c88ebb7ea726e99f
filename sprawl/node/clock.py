"""The reactor on :class:`sprawl.steady_time.SteadyClock` (an adapter: it
owns the reactor's time and the log line a step back earns).

``install_steady_clock(reactor)`` makes the reactor's ``seconds`` the steady
clock's, so every ``callLater`` and ``LoopingCall`` -- Raft's and gossip's
ticks, the replication beats, long polls, leases -- keeps running through a
step of the system clock back, and the node's timestamps never go
backwards.  ``twistd sprawl`` installs it before building the node."""

from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.logger import Logger

from sprawl.steady_time import SteadyClock

log = Logger()

#: How often the adapter looks for a step back to log (seconds).
LOOK_EVERY = 5.0


def install_steady_clock(reactor: Any, clock: SteadyClock | None = None) -> SteadyClock:
    """Run ``reactor``'s timers on ``clock`` (a new :class:`SteadyClock` by
    default; idempotent: a reactor already on one keeps it), and log each
    step of the system clock back once."""
    installed = getattr(reactor, "sprawl_steady_clock", None)
    if isinstance(installed, SteadyClock):
        return installed
    steady = clock or SteadyClock()
    reactor.seconds = steady.seconds
    reactor.sprawl_steady_clock = steady
    seen = [steady.steps_back]

    def look() -> None:
        if steady.steps_back != seen[0]:
            seen[0] = steady.steps_back
            log.warn(
                "the system clock stepped back (by {seconds:.1f} s at most so far); this node's clock "
                "runs at {rate:.0%} of real time until it meets it again ({ahead:.1f} s ahead now): "
                "its timers keep running and its timestamps do not go backwards",
                seconds=steady.largest_step_back,
                rate=1.0 - steady.slew,
                ahead=steady.ahead,
            )

    loop = task.LoopingCall(look)
    loop.clock = reactor
    reactor.callWhenRunning(loop.start, LOOK_EVERY, False)
    return steady
