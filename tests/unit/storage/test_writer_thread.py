"""The LMDB writer's thread (:mod:`sprawl.storage.writer_thread`): calls run in order on
one other thread, results and failures come back on the reactor thread, and ``stop``
finishes what was queued."""

from __future__ import annotations

import sys
import threading

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults
from twisted.python.failure import Failure

from harness import bounded, the_reactor
from sprawl.storage.writer_thread import WriterThread, os_named_thread


@pytest_twisted.ensureDeferred
async def test_calls_run_in_order_on_one_thread_and_answer_on_the_reactor() -> None:
    w = WriterThread(the_reactor(), "t-writer")
    w.start()
    ran: list[tuple[int, str]] = []
    fired_on: list[str] = []

    def job(i: int) -> int:
        ran.append((i, threading.current_thread().name))
        return i * 2

    try:
        ds = [w.submit(job, i) for i in range(200)]
        for d in ds:
            d.addCallback(lambda r: fired_on.append(threading.current_thread().name) or r)
        got = await bounded(gatherResults(ds))
    finally:
        w.stop()
    assert got == [i * 2 for i in range(200)]
    assert [i for i, _ in ran] == list(range(200)) and {n for _, n in ran} == {"t-writer"}
    assert set(fired_on) == {threading.main_thread().name}


@pytest_twisted.ensureDeferred
async def test_a_failing_call_fails_its_deferred_and_the_thread_goes_on() -> None:
    w = WriterThread(the_reactor(), "t-writer")
    w.start()

    def boom() -> None:
        raise ValueError("no")

    try:
        with pytest.raises(ValueError, match="no"):
            await bounded(w.submit(boom))
        assert await bounded(w.submit(lambda: "after")) == "after"
    finally:
        w.stop()


def test_stop_finishes_the_queued_calls_first() -> None:
    """``stop`` returns once every call queued before it ran (their answers are left to the
    reactor); a second ``stop`` does nothing."""
    w = WriterThread(the_reactor(), "t-writer")
    gate = threading.Event()
    ran: list[int] = []
    w.start()
    w.submit(gate.wait, 10)
    for i in range(5):
        w.submit(ran.append, i)
    gate.set()
    w.stop()
    assert ran == [0, 1, 2, 3, 4]
    w.stop()


@pytest_twisted.ensureDeferred
async def test_call_answers_with_a_plain_call_on_the_reactor_in_order() -> None:
    """``call``: each result -- or failure -- comes back as ``then(result, failure)`` on the
    reactor thread, in the order submitted, with ``submit``'s jobs in between kept in order."""
    w = WriterThread(the_reactor(), "t-writer")
    w.start()
    got: list[tuple[object, object, str]] = []
    done: Deferred[None] = Deferred()

    def then(result: object, f: Failure | None) -> None:
        got.append((result, f.value.args[0] if f is not None else None, threading.current_thread().name))
        if len(got) == 4:
            done.callback(None)

    def boom() -> None:
        raise ValueError("no")

    try:
        w.call(lambda: 1, then)
        w.call(boom, then)
        mid = w.submit(lambda: "submitted")
        w.call(lambda x: x * 2, then, 21)
        w.call(lambda: None, then)
        await bounded(done)
        assert await bounded(mid) == "submitted"
    finally:
        w.stop()
    main = threading.main_thread().name
    assert got == [(1, None, main), (None, "no", main), (42, None, main), (None, None, main)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names in /proc: Linux")
@pytest_twisted.ensureDeferred
async def test_the_thread_carries_its_name_where_the_os_shows_it() -> None:
    """``/proc/PID/task/TID/comm`` (``top -H``, ``perf``, ``benchmarks.thread_table``)
    names the thread as it was named, cut to the OS's 15 bytes (Python 3.11 names only
    its ``Thread`` object: the thread showed the process's name, like every other)."""
    w = WriterThread(the_reactor(), "sprawl-lmdb-writer")
    w.start()

    def comm() -> str:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", encoding="utf-8") as f:
            return f.read().strip()

    try:
        assert await bounded(w.submit(comm)) == "sprawl-lmdb-wri"
    finally:
        w.stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names in /proc: Linux")
def test_a_pool_thread_made_by_the_factory_carries_its_os_name() -> None:
    """``os_named_thread`` (the LMDB reader pool's ``threadFactory``): the thread names
    itself for the OS before it runs its target."""
    seen: list[str] = []

    def read() -> None:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", encoding="utf-8") as f:
            seen.append(f.read().strip())

    t = os_named_thread("sprawl-lmdb-rd")(target=read, name="PoolThread-x-1")
    t.start()
    t.join(10)
    assert seen == ["sprawl-lmdb-rd"] and t.name == "PoolThread-x-1"
