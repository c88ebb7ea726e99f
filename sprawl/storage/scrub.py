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
"""

from __future__ import annotations

from functools import partial
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
    ) -> None:
        self.broker = broker
        self.clock = clock
        #: Bytes per second at most (0: the scrub is off).
        self.rate = rate
        self.chunk_bytes = chunk_bytes
        self.pause = pause
        self.first_delay = first_delay
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
        if self._running:
            self._again = True
            return self.passes + 2
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = self.clock.callLater(0, self._run)
        return self.passes + 1

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
                self._call = self.clock.callLater(0 if again else self.pause, self._run)

        def failed(f: Failure) -> None:
            self.pass_started = None
            log.failure("scrub pass failed", f)

        d.addErrback(failed).addBoth(done)

    async def _pass(self) -> None:
        b = self.broker
        started = self.clock.seconds()
        self.pass_started = started
        self.pass_done = self.pass_found = 0
        parts = [(t, lg.partition) for t in list(b.topics.values()) for lg in t.logs]
        self.pass_bytes = sum(s.bytes for t, p in parts for s in t.logs[p].segments if s.remote is None)
        for t, p in parts:
            await self._partition(t, p)
            if self._stopped:
                return
        self.passes += 1
        self.last_pass_seconds = self.clock.seconds() - started
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

    async def _partition(self, t: Topic, p: int) -> None:
        b = self.broker
        store = b.store
        integrity = b.integrity
        pos = _lmdb_low(t.logs[p])
        for _ in range(1 << 40):
            lg = t.logs[p]
            if t.deleted or b.stopping or self._stopped:
                return
            pos = max(pos, _lmdb_low(lg))
            end = lg.stored_end if t.config.durable else min(lg.stored_end, lg.hot_start)
            if pos >= end:
                return
            self.position = (t.name, p, pos)
            dense = integrity.dense(t, lg, pos, end)
            try:
                scan = await store.call_reader(
                    partial(store.scan_sync, dense=dense, max_bytes=self.chunk_bytes, collect="none"),
                    t.config.uid,
                    p,
                    pos,
                    end,
                )
                nbytes, nxt = scan.nbytes, scan.next
                if nxt <= pos:  # nothing more stored
                    return
            except DamagedRange as d:
                lg = t.logs[p]
                if not t.deleted and d.first >= _lmdb_low(lg) and d.first < lg.stored_end:
                    known = integrity.known(t, p, d.first, d.last)
                    integrity.note(t, p, d)
                    if known is None:
                        self.pass_found += 1
                nbytes, nxt = d.nbytes, d.last + 1
            self.pass_done += nbytes
            self.bytes_total += nbytes
            if b.metrics is not None:
                b.metrics.scrub_bytes.inc(nbytes)
            pos = nxt
            await self._sleep(max(nbytes, 4096) / self.rate)

    def _sleep(self, seconds: float) -> Any:
        from twisted.internet.interfaces import IReactorTime
        from twisted.internet.task import deferLater

        # (deferLater uses only Clock's callLater.)
        return deferLater(cast(IReactorTime, self.clock), seconds, lambda: None)


def _lmdb_low(lg: PartitionLog) -> int:
    """The first offset of a partition held in LMDB (past its segments in S3)."""
    low = lg.log_start
    for s in lg.segments:
        if s.remote is None:
            break
        low = max(low, s.last + 1)
    return low
