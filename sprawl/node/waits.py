"""The bounded waits of a node's start and stop, and its exit status after a refused start."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from twisted.internet import defer, task
from twisted.logger import Logger

from sprawl.interfaces import Clock

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

# The node's log lines keep the namespace they have always had (operators'
# log filters and tests select the "serving" line by it).
log = Logger(namespace="sprawl.tap")


def exit_status_after_stop(reactor: object, status: int) -> None:
    """Make the process exit with ``status`` once the reactor has shut down
    (twistd itself always exits 0): a refused start is an error to scripts."""
    add = getattr(reactor, "addSystemEventTrigger", None)
    if add is None:
        return

    def leave() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)

    add("after", "shutdown", leave)


async def bounded(reactor: Clock, d: defer.Deferred[Any], seconds: float) -> None:
    """Wait for ``d`` at most ``seconds`` (then go on without it)."""
    timer = reactor.callLater(seconds, d.cancel)
    try:
        await d
    except defer.CancelledError:
        log.warn("no Raft leader after {seconds} s; serving anyway (not ready)", seconds=seconds)
    finally:
        if timer.active():
            timer.cancel()


async def until(reactor: Clock, cond: Callable[[], object], seconds: float, step: float = 0.02) -> bool:
    """Wait until ``cond()`` holds, at most ``seconds`` (checked every ``step``); whether it held."""
    deadline = reactor.seconds() + seconds
    for _ in range(int(seconds / step) + 2):
        if cond():
            return True
        if reactor.seconds() >= deadline:
            break
        await task.deferLater(cast("IReactorTime", reactor), step, lambda: None)
    return bool(cond())
