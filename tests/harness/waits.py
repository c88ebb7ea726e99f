"""Waits on real time, for tests that drive real processes or the real reactor: every wait
bounded, and the bounds on real processes stretched by the load measured now
(:func:`scaled`, :func:`poll_until`) so that a busy machine does not fail a wait an idle one
passes."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from harness.reactor import WAIT, the_reactor

#: The most a real-time bound is stretched for load (:func:`load_factor`).
MAX_LOAD_FACTOR = 4.0


def load_factor() -> float:
    """How many runnable tasks share each core now: the factor by which real
    processes run slower than on an idle machine, between 1 and
    :data:`MAX_LOAD_FACTOR`.  The larger of the one-minute load average and
    the tasks running this instant (``/proc/loadavg``, less the reader), per
    core; times ``SPRAWL_TEST_TIME_SCALE`` when set (a slow machine).  1 where
    there is no ``/proc``."""
    try:
        fields = Path("/proc/loadavg").read_text().split()
        avg1, running = float(fields[0]), int(fields[3].split("/")[0]) - 1
    except (OSError, ValueError, IndexError):
        return _time_scale()
    cores = os.cpu_count() or 1
    return min(MAX_LOAD_FACTOR, max(1.0, avg1 / cores, running / cores)) * _time_scale()


def _time_scale() -> float:
    """``SPRAWL_TEST_TIME_SCALE`` (at least 1): a slow machine's own factor."""
    return max(1.0, float(os.environ.get("SPRAWL_TEST_TIME_SCALE") or 1.0))


def scaled(seconds: float) -> float:
    """A real-time bound on real processes, stretched by the load measured now
    (:func:`load_factor`): the bound itself on an idle machine, up to
    :data:`MAX_LOAD_FACTOR` times it while other work holds the cores."""
    return seconds * load_factor()


def poll_until(cond: Callable[[], bool], bound: float, step: float = 0.1) -> float | None:
    """Poll ``cond`` every ``step`` seconds (Event.wait, from a test thread
    driving real processes) for at most ``bound`` seconds -- stretched by the
    load measured when it runs out (:func:`scaled`), so a busy machine does not
    fail a wait an idle one passes; the seconds it took, or None if it never
    held."""
    pause = threading.Event()
    t0 = time.monotonic()
    limit = bound
    for _ in range(int(bound * MAX_LOAD_FACTOR * _time_scale() / step) + 2):
        if cond():
            return time.monotonic() - t0
        if time.monotonic() - t0 > limit:
            limit = max(limit, scaled(bound))
            if time.monotonic() - t0 > limit:
                break
        pause.wait(step)
    return None


async def until(pred: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Wait (polling the reactor, bounded by ``timeout`` real seconds) until ``pred()``."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        from twisted.internet import task

        await task.deferLater(the_reactor(), 0.005, lambda: None)


def first_success(
    attempt: Callable[[int], bool], bound: float, interval: float = 0.05, workers: int = 64
) -> float | None:
    """Seconds until the first ``attempt(i)`` returned True, or None within ``bound``.

    A new attempt starts every ``interval`` seconds on a thread pool, whether
    or not earlier ones answered: an attempt stuck on a dead node (until its
    own timeout) does not delay the next, so the time measured is the
    service's, not the client's timeout.  Exceptions count as failures.  At
    most ``workers`` attempts are in flight; the pool is shut down before
    returning (it waits for the attempts in flight, each bounded by its own
    timeout).
    """
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.monotonic()
    done = threading.Event()
    first: list[float] = []
    lock = threading.Lock()
    slots = threading.Semaphore(workers)

    def run(i: int) -> None:
        try:
            ok = attempt(i)
        except Exception:
            ok = False
        finally:
            slots.release()
        if ok:
            with lock:
                if not first:
                    first.append(time.monotonic() - t0)
            done.set()

    with ThreadPoolExecutor(workers) as pool:
        for i in range(int(bound / interval) + 1):
            if done.is_set() or time.monotonic() - t0 > bound:
                break
            if slots.acquire(timeout=max(0.0, bound - (time.monotonic() - t0))):
                pool.submit(run, i)
            done.wait(interval)
        done.wait(max(0.0, bound - (time.monotonic() - t0)))
    return first[0] if first and first[0] <= bound else None
