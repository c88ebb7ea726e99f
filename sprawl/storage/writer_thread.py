"""The LMDB writer's thread: jobs run one at a time, in order, and each result is handed
back on the reactor -- the one hand-off per group commit on the publish path.

Twisted's ``ThreadPool`` (``deferToThreadPool``) does the same with more on the way: a
coordinator, a ``queue.Queue`` built on ``threading.Condition`` and a logging context per
job; here a ``queue.SimpleQueue`` (C) carries jobs to one thread and
``reactor.callFromThread`` brings results back (docs/benchmarks.md, issue 16's levers).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

#: (fn, args, answer): ``answer`` is a Deferred (:meth:`WriterThread.submit`), a plain
#: callable (:meth:`WriterThread.call`) or None (:meth:`WriterThread.post`); None stops.
_Then = Callable[[Any, Failure | None], None]
_Job = tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any] | _Then | None] | None


_PR_SET_NAME = 15
_prctl: Any = None


def name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` (its first 15 bytes) where the OS shows it --
    ``/proc/PID/task/TID/comm``, ``top -H``, ``perf`` -- so a node's threads can be told
    apart from outside (``benchmarks.thread_table``); Python 3.11 names only its own
    ``Thread`` object.  Linux only; elsewhere, or if ``prctl`` fails, nothing happens."""
    global _prctl
    if not sys.platform.startswith("linux"):
        return
    try:
        if _prctl is None:
            _prctl = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl
        _prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def os_named_thread(os_name: str) -> type[threading.Thread]:
    """A ``threading.Thread`` class whose threads take ``os_name`` where the OS shows it
    (:func:`name_os_thread`) when they start -- a thread pool's ``threadFactory``."""

    class _Named(threading.Thread):
        def run(self) -> None:
            name_os_thread(os_name)
            super().run()

    return _Named


class WriterThread:
    """One named thread running submitted calls in order (see the module docstring)."""

    def __init__(self, reactor: Any, name: str) -> None:
        #: Brings results back (``callFromThread``).
        self.reactor = reactor
        self.name = name
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Let the thread finish the calls queued so far and end; wait for it."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join()

    def has_jobs(self) -> bool:
        """Whether calls are queued for the thread (from the thread itself: others wait)."""
        return not self._jobs.empty()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run ``fn(*args)`` on the thread; the Deferred fires on the reactor with its
        result (or its failure)."""
        d: Deferred[Any] = Deferred()
        self._jobs.put((fn, args, d))
        return d

    def call(self, fn: Callable[..., Any], then: _Then, *args: Any) -> None:
        """Run ``fn(*args)`` on the thread; ``then(result, None)`` -- or ``then(None,
        failure)`` -- is called on the reactor (``callFromThread``), a plain call: no
        Deferred made, chained and fired for it (the write-ahead log's frame, once per
        publish at one message in flight; docs/benchmarks.md, lat41)."""
        self._jobs.put((fn, args, then))

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the thread, in order with the submitted calls, from any
        thread, with nothing handed back: ``fn`` hands back what it must itself (the
        write-ahead log's thread chains a synced frame's LMDB apply here)."""
        self._jobs.put((fn, args, None))

    def _run(self) -> None:
        name_os_thread(self.name)
        get = self._jobs.get
        while True:
            job = get()
            if job is None:
                return
            self._one(*job)
            del job  # (its arguments and result are not kept until the next job)

    def _one(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        d: Deferred[Any] | _Then | None,
    ) -> None:
        if d is None:  # (posted: ``fn`` answers for itself)
            try:
                fn(*args)
            except BaseException:
                self.reactor.callFromThread(
                    log.failure, "a call posted to {name} failed", Failure(), name=self.name
                )
            return
        if not isinstance(d, Deferred):  # (``call``: a plain call back)
            try:
                result = fn(*args)
            except BaseException:
                self.reactor.callFromThread(d, None, Failure())
            else:
                self.reactor.callFromThread(d, result, None)
            return
        try:
            result = fn(*args)
        except BaseException:
            self.reactor.callFromThread(d.errback, Failure())
        else:
            self.reactor.callFromThread(d.callback, result)


def hand_back_quietly(reactor: Any, fn: Callable[..., Any], *args: Any) -> None:
    """Queue ``fn(*args)`` for the reactor's next turn without waking it (no waker
    write, no poll round of its own): ``callFromThread`` without the ``wakeUp``.  It
    runs with whatever turn comes next (a read, a timer, another hand-back), so only a
    result nobody waits for may go this way; a reactor without a thread-call queue
    (not Twisted's ``ReactorBase``) is woken as usual."""
    calls = getattr(reactor, "threadCallQueue", None)
    if calls is None:
        reactor.callFromThread(fn, *args)
    else:
        calls.append((fn, args, {}))
