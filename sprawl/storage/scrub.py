"""The background scrub: every stored record of a live node read back and
checked, at a bounded rate, so damage is found before a reader meets it.

An adapter: it reads through the LMDB reader pool (one chunk of about
``chunk_bytes`` at a time, :meth:`~sprawl.storage.lmdb.LmdbStore.scan_sync`)
and waits ``chunk / rate`` seconds on the injected clock between chunks, so
it never uses more than ``--scrub-rate`` bytes/s of the disk.  A pass walks
every partition's LMDB range (``[log start, stored end)``, segments that
moved to S3 excluded: their objects are checked on every read and by
``sprawlctl verify``); what it finds goes to the broker's
:class:`~sprawl.storage.integrity.Integrity` as any read's damage would.  The
next pass starts ``pause`` seconds after one ends.  ``GET /v1/damage`` shows
its progress and findings; metrics ``sprawl_scrub_*``.

A pass costs CPU per partition as well as per byte (a reader call per group
of partitions, the pass's list of them): at 10,000 idle partitions, each
holding a control record, a pass took ~0.17-0.3 s of CPU (issue 23).  So a
pass is paced by its own cost as it goes: each slice (the pass's list, a
group's reader call, a big partition's chunk) measures its CPU time -- the
reactor's part with the reactor thread's clock, the reader's part with the
reader thread's -- and the wait after it is that CPU time over
:data:`CPU_SHARE`, or the slice's bytes over the rate when that is longer.
Over any window the scrub then takes at most :data:`CPU_SHARE` of a core,
give or take one slice (a group of ``group`` near-empty partitions is ~4 ms),
however many partitions the node holds -- a 70 s window that held a whole
pass got ~0.24 points of a core from it before, ~0.1 now (issue 23,
scrub35).  A pass asked for by an operator (:meth:`Scrubber.run_now`,
``sprawlctl verify --scrub``, who waits for it) goes at the byte rate only.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from sprawl.interfaces import BrokerStorage, Clock, Delayed
from sprawl.log.damage import DamagedRange

if TYPE_CHECKING:
    from sprawl.log.partition import PartitionLog
    from sprawl.topics import Topic

log = Logger()

#: The most of a core a background pass takes over any window, give or take one
#: slice: the wait after each slice is at least its CPU time over this (1 ms of
#: CPU per second).
CPU_SHARE = 0.001


class Scrubber:
    """The scrub of one node (see the module docstring)."""

    def __init__(
        self,
        broker: BrokerStorage,
        clock: Clock,
        rate: int,
        *,
        chunk_bytes: int = 1000**2,
        pause: float = 60.0,
        first_delay: float = 1.0,
        group: int = 256,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        self.broker = broker
        self.clock = clock
        #: Bytes per second at most (0: the scrub is off).
        self.rate = rate
        self.chunk_bytes = chunk_bytes
        self.pause = pause
        self.first_delay = first_delay
        #: Partitions whose first chunks share one reader call (and one pause).
        self.group = group
        #: CPU seconds of the calling thread (the reactor's, and each reader
        #: thread's for its own part of a pass).
        self.cpu_clock = cpu_clock
        #: CPU seconds the pass running (or the last one) took, and the pause after the last.
        self.pass_cpu = 0.0
        #: CPU seconds of this pass not yet waited for (see :meth:`_pace`).
        self._owed = 0.0
        #: Whether the pass paces itself by its CPU (False for a pass an operator asked for).
        self.paced = True
        self.last_pass_cpu: float | None = None
        self.last_pause: float | None = None
        self.passes = 0
        self.pass_started: float | None = None
        self.last_pass_seconds: float | None = None
        self.last_pass_found = 0
        self.bytes_total = 0
        #: This pass: bytes to read (estimated at its start), bytes read, ranges found.
        self.pass_bytes = 0
        self.pass_done = 0
        self.pass_found = 0
        #: Where it is: (topic, partition, offset).
        self.position: tuple[str, int, int] | None = None
        self._call: Delayed | None = None
        self._running = False
        self._stopped = False
        self._again = False

    @property
    def enabled(self) -> bool:
        """Whether the scrub runs at all."""
        return self.rate > 0

    @property
    def progress(self) -> float:
        """The fraction of the current pass done (1.0 between passes)."""
        if self.pass_started is None:
            return 1.0 if self.passes else 0.0
        return min(1.0, self.pass_done / self.pass_bytes) if self.pass_bytes else 0.0

    def start(self) -> None:
        """Start the first pass after ``first_delay`` seconds."""
        if self.enabled:
            self._call = self.clock.callLater(self.first_delay, self._run)

    def stop(self) -> None:
        """Stop between chunks."""
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()

    def run_now(self) -> int:
        """Start a pass now (``POST /v1/damage/scrub``): at once when idle, or
        right after the running one.  Returns the number the pass will have
        once done (``passes`` reaches it)."""
        if not self.enabled:
            raise ValueError("the scrub is off (--scrub-rate 0)")
        self.paced = False
        if self._running:
            self._again = True
            return self.passes + 2
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = self.clock.callLater(0, self._run)
        return self.passes + 1

    def next_pause(self) -> float:
        """Seconds from the end of a pass to the next: ``pause`` (the pass paced
        its own CPU as it went)."""
        return self.pause

    def view(self) -> dict[str, Any]:
        """The scrub's state for ``GET /v1/damage``."""
        pos = self.position
        return {
            "enabled": self.enabled,
            "rate_bytes_per_s": self.rate,
            "passes": self.passes,
            "running": self.pass_started is not None,
            "progress": round(self.progress, 4),
            "pass_bytes": self.pass_bytes,
            "pass_scanned_bytes": self.pass_done,
            "pass_found": self.pass_found,
            "last_pass_seconds": self.last_pass_seconds,
            "last_pass_found": self.last_pass_found,
            "last_pass_cpu_seconds": None if self.last_pass_cpu is None else round(self.last_pass_cpu, 4),
            "next_pass_after_seconds": self.last_pause,
            "scanned_bytes": self.bytes_total,
            "position": None if pos is None else {"topic": pos[0], "partition": pos[1], "offset": pos[2]},
        }

    def _run(self) -> None:
        self._call = None
        if self._running or self._stopped:
            return
        self._running = True
        d = ensureDeferred(self._pass())

        def done(_: object) -> None:
            self._running = False
            if not self._stopped:
                again, self._again = self._again, False
                if not again:
                    self.paced = True
                self.last_pause = 0.0 if again else self.next_pause()
                self._call = self.clock.callLater(self.last_pause, self._run)

        def failed(f: Failure) -> None:
            self.pass_started = None
            log.failure("scrub pass failed", f)

        d.addErrback(failed).addBoth(done)

    async def _pass(self) -> None:
        b = self.broker
        cpu0 = self.cpu_clock()
        started = self.clock.seconds()
        self.pass_started = started
        self.pass_done = self.pass_found = 0
        self.pass_cpu = self._owed = 0.0
        parts = [(t, lg.partition) for t in list(b.topics.values()) for lg in t.logs]
        self.pass_bytes = sum(s.bytes for t, p in parts for s in t.logs[p].segments if s.remote is None)
        # Partitions are scanned a group at a time in one reader call (one thread hop
        # and one pause for a group of small partitions, not one each: an idle node
        # of 10,000 partitions holding a control record each spent most of a pass on
        # the hops); those the group's chunk did not reach lead the next group, and one
        # with more than a chunk left goes on alone.
        pending = deque((t, p, 0) for t, p in parts)
        self._spent(self.cpu_clock() - cpu0)
        await self._pace(0)
        if self._stopped:
            return
        for _ in range(1 << 40):
            if not pending:
                break
            group = [pending.popleft() for _ in range(min(self.group, len(pending)))]
            more, unreached, nbytes = await self._group(group)
            await self._pace(nbytes)
            if self._stopped:
                return
            pending.extendleft(reversed(unreached))
            for t, p, pos in more:
                await self._partition(t, p, pos)
                if self._stopped:
                    return
        self.passes += 1
        self.last_pass_seconds = self.clock.seconds() - started
        self.last_pass_cpu = self.pass_cpu
        self.last_pass_found = self.pass_found
        self.pass_started = None
        self.position = None
        if b.metrics is not None:
            b.metrics.scrub_passes.inc()
        log.info(
            "scrub pass {n} done in {s:.1f}s: {bytes} bytes checked, {found} damaged range(s) found",
            n=self.passes,
            s=self.last_pass_seconds,
            bytes=self.pass_done,
            found=self.pass_found,
        )

    def _range(self, t: Topic, p: int, pos: int) -> tuple[int, int] | None:
        """Where the scan of ``t``/``p`` goes on from ``pos``: ``(pos, end)``, or None when
        there is nothing (more) to check."""
        b = self.broker
        if t.deleted or b.stopping or self._stopped:
            return None
        lg = t.logs[p]
        pos = max(pos, _lmdb_low(lg))
        end = lg.stored_end if t.config.durable else min(lg.stored_end, lg.hot_start)
        return (pos, end) if pos < end else None

    def _note(self, t: Topic, p: int, d: DamagedRange) -> None:
        """A damaged range the scan met, noted as any read's would be."""
        lg = t.logs[p]
        if not t.deleted and d.first >= _lmdb_low(lg) and d.first < lg.stored_end:
            known = self.broker.integrity.known(t, p, d.first, d.last)
            self.broker.integrity.note(t, p, d)
            if known is None:
                self.pass_found += 1

    def _count(self, nbytes: int) -> None:
        self.pass_done += nbytes
        self.bytes_total += nbytes
        if self.broker.metrics is not None:
            self.broker.metrics.scrub_bytes.inc(nbytes)

    async def _group(
        self, group: list[tuple[Topic, int, int]]
    ) -> tuple[list[tuple[Topic, int, int]], list[tuple[Topic, int, int]], int]:
        """The next chunk of each partition ``(topic, partition, from)`` of ``group``, in
        one reader call of at most ``chunk_bytes`` in all.  Returns the partitions with
        more left (from where they stopped), those the call did not reach and the
        bytes read."""
        b = self.broker
        store = b.store
        cpu0 = self.cpu_clock()
        items: list[tuple[Topic, int, int, int]] = []
        for t, p, start in group:
            r = self._range(t, p, start)
            if r is not None:
                items.append((t, p, r[0], r[1]))
        if not items:
            self._spent(self.cpu_clock() - cpu0)
            return [], [], 0
        jobs = [
            (t.config.uid, p, pos, end, b.integrity.dense(t, t.logs[p], pos, end)) for t, p, pos, end in items
        ]
        self.position = (items[0][0].name, items[0][1], items[0][2])
        self._spent(self.cpu_clock() - cpu0)
        results, reader_cpu = await store.call_reader(
            _scan_group, store.scan_sync, jobs, self.chunk_bytes, self.cpu_clock
        )
        cpu0 = self.cpu_clock()
        more: list[tuple[Topic, int, int]] = []
        unreached: list[tuple[Topic, int, int]] = []
        total = 0
        for i, (t, p, pos, end) in enumerate(items):
            if i >= len(results):  # the group's chunk was full before it
                unreached.append((t, p, pos))
                continue
            nbytes, nxt, damaged = results[i]
            if damaged is not None:
                self._note(t, p, damaged)
            self._count(nbytes)
            total += nbytes
            if pos < nxt < end:
                more.append((t, p, nxt))
        self._spent(reader_cpu + self.cpu_clock() - cpu0)
        return more, unreached, total

    async def _partition(self, t: Topic, p: int, start: int = 0) -> None:
        b = self.broker
        store = b.store
        integrity = b.integrity
        pos = max(start, _lmdb_low(t.logs[p]))
        for _ in range(1 << 40):
            cpu0 = self.cpu_clock()
            lg = t.logs[p]
            if t.deleted or b.stopping or self._stopped:
                self._spent(self.cpu_clock() - cpu0)
                return
            pos = max(pos, _lmdb_low(lg))
            end = lg.stored_end if t.config.durable else min(lg.stored_end, lg.hot_start)
            if pos >= end:
                self._spent(self.cpu_clock() - cpu0)
                return
            self.position = (t.name, p, pos)
            dense = integrity.dense(t, lg, pos, end)
            self._spent(self.cpu_clock() - cpu0)
            [(nbytes, nxt, damaged)], reader_cpu = await store.call_reader(
                _scan_group,
                store.scan_sync,
                [(t.config.uid, p, pos, end, dense)],
                self.chunk_bytes,
                self.cpu_clock,
            )
            cpu0 = self.cpu_clock()
            if damaged is not None:
                self._note(t, p, damaged)
            elif nxt <= pos:  # nothing more stored
                self._spent(reader_cpu + self.cpu_clock() - cpu0)
                return
            self._count(nbytes)
            pos = nxt
            self._spent(reader_cpu + self.cpu_clock() - cpu0)
            await self._pace(nbytes)

    def _spent(self, cpu: float) -> None:
        """CPU seconds a slice of the pass took (on the reactor or a reader thread)."""
        self.pass_cpu += cpu
        self._owed += cpu

    def _pace(self, nbytes: int) -> Any:
        """The wait after a slice that read ``nbytes``: the bytes over the rate, or
        the CPU spent since the last wait over :data:`CPU_SHARE` when longer (not for
        a pass an operator asked for)."""
        wait = max(nbytes, 4096) / self.rate
        if self.paced:
            wait = max(wait, self._owed / CPU_SHARE)
        self._owed = 0.0
        return self._sleep(wait)

    def _sleep(self, seconds: float) -> Any:
        from twisted.internet.interfaces import IReactorTime
        from twisted.internet.task import deferLater

        # (deferLater uses only Clock's callLater.)
        return deferLater(cast(IReactorTime, self.clock), seconds, lambda: None)


def _scan_group(
    scan_sync: Callable[..., Any],
    jobs: list[tuple[int, int, int, int, Any]],
    budget: int,
    cpu_clock: Callable[[], float] = time.thread_time,
) -> tuple[list[tuple[int, int, DamagedRange | None]], float]:
    """On a reader thread: the first chunk of each job ``(uid, partition, start, end,
    dense)`` in turn until ``budget`` bytes are read; ``(bytes, next offset, damage met)``
    for each job reached (a prefix of ``jobs``), and the CPU seconds it took."""
    cpu0 = cpu_clock()
    out: list[tuple[int, int, DamagedRange | None]] = []
    left = budget
    for uid, p, start, end, dense in jobs:
        if left <= 0:
            break
        got: tuple[int, int, DamagedRange | None]
        try:
            scan = scan_sync(uid, p, start, end, dense=dense, max_bytes=left, collect="none")
            got = (scan.nbytes, scan.next, None)
        except DamagedRange as d:
            got = (d.nbytes, d.last + 1, d)
        out.append(got)
        left -= max(got[0], 1)
    return out, cpu_clock() - cpu0


def _lmdb_low(lg: PartitionLog) -> int:
    """The first offset of a partition held in LMDB (past its segments in S3)."""
    low = lg.log_start
    for s in lg.segments:
        if s.remote is None:
            break
        low = max(low, s.last + 1)
    return low
