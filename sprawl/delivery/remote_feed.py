"""Remote partition feeds: SSE and WebSocket clients on a node that holds no
replica of a partition.

Decision 9a: the node serving the clients subscribes to the partition's
holder *once* for all of them, so fan-out crosses the network once per node,
not per client.  A :class:`RemoteFeed` is that subscription: created when the
first local stream needs the partition and stopped when the last one leaves
(:class:`RemoteFeeds` counts the references).  It long-polls the holder
(``fetch``, :meth:`sprawl.cluster.dataplane.DataPlane.fetch_remote`, which
resolves the holder afresh on every call, so the feed follows failovers),
keeps the newest records in a window bounded by count and by bytes, tracks the
holder's high watermark, and wakes the local streams through the broker's
watchers of the partition (``notify``).

A stream reads offsets inside the window from memory; an offset older than the
window (a client starting at ``earliest``, an old ``Last-Event-ID``, a client
that fell behind a busy partition) is a *catch-up read*, sent to the holder
directly (:meth:`RemoteFeeds.catch_up`) until the cursor reaches the window.
The feed starts at the holder's high watermark (one quick probe, then
long-polls), so it never pulls history nobody asked for.

Errors (the holder unreachable, a failover in progress) are retried after a
bounded exponential backoff; the window is kept, so streams resume where they
were.  Nothing here imports the cluster: ``fetch``, ``source`` and ``notify``
are injected (tests give fakes and a :class:`twisted.internet.task.Clock`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from sprawl.interfaces import Clock, Delayed
from sprawl.log.record import DEFAULT_READ_BYTES, Record

log = Logger()

#: ``fetch(topic, partition, start, from_time, limit, wait_ms, max_bytes=None)``
#: → Deferred of ``{"records", "start", "hw", "log_start"}`` (at most ``limit``
#: records and ``max_bytes`` bytes, at least one record).
Fetch = Callable[..., "defer.Deferred[dict[str, Any]]"]


class RemoteFeed:
    """One node's subscription to one partition held elsewhere (see the module docstring)."""

    def __init__(
        self,
        topic: str,
        partition: int,
        fetch: Fetch,
        clock: Clock,
        notify: Callable[[], None],
        *,
        max_records: int = 10_000,
        max_bytes: int = 16 * 1000**2,
        limit: int = 1000,
        fetch_bytes: int = DEFAULT_READ_BYTES,
        wait_ms: int = 20_000,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.fetch = fetch
        self.clock = clock
        self.notify = notify
        self.max_records = max(1, max_records)
        self.max_bytes = max(1, max_bytes)
        self.limit = limit
        #: Bytes one poll asks the holder for (its answers are bounded by the holder too).
        self.fetch_bytes = fetch_bytes
        self.wait_ms = wait_ms
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        #: Local streams using the feed (kept by :class:`RemoteFeeds`).
        self.refs = 0
        #: Every record the holder has in ``[window_start, next)`` is in the
        #: window; None until the first answer.
        self.window_start: int | None = None
        #: Where the next long-poll reads from.
        self.next = 0
        #: The holder's high watermark and log start, as last heard.
        self.hw = 0
        self.log_start = 0
        self.bytes = 0
        #: Answers received, failed rounds in total, failed rounds in a row.
        self.rounds = 0
        self.errors = 0
        self.failures = 0
        self.last_error: str | None = None
        self.running = False
        self._recs: list[Record] = []
        self._head = 0
        self._inflight: defer.Deferred[dict[str, Any]] | None = None
        self._timer: Delayed | None = None

    # -- life ------------------------------------------------------------------

    def start(self) -> None:
        """Start polling the holder."""
        if self.running:
            return
        self.running = True
        # Not at once: the first subscriber is still being set up.
        self._timer = self.clock.callLater(0, self._poll)

    def stop(self) -> None:
        """Stop polling (the poll in flight is cancelled) and drop the window."""
        self.running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        d, self._inflight = self._inflight, None
        if d is not None:
            d.cancel()
        self._recs, self._head, self.bytes = [], 0, 0
        self.window_start = None

    # -- reading ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._recs) - self._head

    def read(self, start: int, limit: int) -> list[Record] | None:
        """Records from offset ``start`` (at most ``limit``) out of the window:
        ``[]`` when there is nothing past ``start`` yet (the feed notifies when
        there is), None when ``start`` is older than the window (read it from
        the holder: :meth:`RemoteFeeds.catch_up`)."""
        ws = self.window_start
        if ws is None or start >= self.next:
            return []
        if start < ws:
            return None
        i = bisect_left(self._recs, start, lo=self._head, key=_offset)
        return self._recs[i : i + limit]

    # -- polling ---------------------------------------------------------------

    def _poll(self) -> None:
        self._timer = None
        if not self.running or self._inflight is not None:
            return
        asked: str | int
        if self.window_start is None:
            asked, wait = "latest", 0  # a quick probe: where the tail is now
        else:
            asked, wait = self.next, self.wait_ms
        try:
            d = self.fetch(
                self.topic, self.partition, asked, None, self.limit, wait, max_bytes=self.fetch_bytes
            )
        except Exception:
            d = defer.fail(Failure())
        self._inflight = d
        d.addCallbacks(self._got, self._failed, callbackArgs=(asked,))

    def _got(self, answer: dict[str, Any], asked: str | int) -> None:
        self._inflight = None
        if not self.running:
            return
        self.rounds += 1
        if self.failures:
            log.info(
                "remote feed of {topic}/{partition} reads again after {n} failed rounds",
                topic=self.topic,
                partition=self.partition,
                n=self.failures,
            )
        self.failures = 0
        self.last_error = None
        recs: list[Record] = answer["records"]
        start, hw = int(answer["start"]), int(answer["hw"])
        self.log_start = int(answer.get("log_start", 0))
        moved = False
        if self.window_start is None or (isinstance(asked, int) and start < asked):
            # First answer, or the holder's log is behind what we read (the
            # topic was recreated): the window starts afresh here.
            # Streams waiting for the window to exist are woken either way.
            self._recs, self._head, self.bytes = [], 0, 0
            self.window_start = self.next = start
            moved = True
        elif start > self.next:
            self.next = start  # retention passed us: nothing exists in between
        self.hw = hw
        for r in recs:
            if r.offset >= self.next:
                self._recs.append(r)
                self.bytes += r.size
                self.next = r.offset + 1
                moved = True
        if not recs and self.next < hw and isinstance(asked, int):
            # Nothing readable below the holder's high watermark (a gap):
            # move past it, as a fetch does.
            self.next = hw
            moved = True
        self._evict()
        if moved:
            self.notify()
        self._timer = self.clock.callLater(0, self._poll)

    def _evict(self) -> None:
        recs = self._recs
        while len(recs) - self._head > self.max_records or (
            self.bytes > self.max_bytes and len(recs) - self._head > 1
        ):
            r = recs[self._head]
            self._head += 1
            self.bytes -= r.size
            self.window_start = r.offset + 1
        if self._head > 1024 and self._head * 2 > len(recs):
            del recs[: self._head]
            self._head = 0

    def _failed(self, f: Failure) -> None:
        self._inflight = None
        if not self.running or f.check(defer.CancelledError):
            return
        self.errors += 1
        self.failures += 1
        self.last_error = str(getattr(f.value, "code", None) or f.getErrorMessage())
        delay = min(self.max_backoff, self.min_backoff * 2 ** min(self.failures - 1, 30))
        if self.failures == 1:
            log.info(
                "remote feed of {topic}/{partition} failed ({error}); retrying with backoff",
                topic=self.topic,
                partition=self.partition,
                error=self.last_error,
            )
        self._timer = self.clock.callLater(delay, self._poll)


def _offset(r: Record) -> int:
    return r.offset


class RemoteFeeds:
    """A node's remote feeds, one per (topic, partition), counted by reference.

    ``fetch`` reads a partition at its holder, ``source(topic, p)`` says where
    a partition is read from (None: this node holds it), ``notify(topic, p)``
    wakes the local watchers of a partition.
    """

    def __init__(
        self,
        fetch: Fetch,
        source: Callable[[str, int], str | None],
        clock: Clock,
        notify: Callable[[str, int], None],
        **options: Any,
    ) -> None:
        self.fetch = fetch
        self.source = source
        self.clock = clock
        self._notify = notify
        self.options = options
        self.feeds: dict[tuple[str, int], RemoteFeed] = {}
        #: Feeds started since the node started (one per first subscriber).
        self.started = 0
        #: Catch-up reads sent to holders.
        self.catch_ups = 0

    def is_remote(self, topic: str, partition: int) -> bool:
        """Whether this node reads the partition from another node."""
        return self.source(topic, partition) is not None

    def acquire(self, topic: str, partition: int) -> RemoteFeed:
        """The partition's feed, started on the first subscriber."""
        key = (topic, partition)
        f = self.feeds.get(key)
        if f is None:
            f = RemoteFeed(
                topic,
                partition,
                self.fetch,
                self.clock,
                lambda: self._notify(topic, partition),
                **self.options,
            )
            self.feeds[key] = f
            self.started += 1
            f.refs += 1
            f.start()
            return f
        f.refs += 1
        return f

    def release(self, f: RemoteFeed) -> None:
        """One subscriber fewer; the last one stops the feed."""
        f.refs -= 1
        if f.refs <= 0:
            f.stop()
            key = (f.topic, f.partition)
            if self.feeds.get(key) is f:
                del self.feeds[key]

    def catch_up(
        self, topic: str, partition: int, start: int, limit: int, max_bytes: int | None = None
    ) -> defer.Deferred[dict[str, Any]]:
        """Read records older than the feed's window at the holder (no wait),
        at most ``limit`` records and ``max_bytes`` bytes (at least one)."""
        self.catch_ups += 1
        try:
            return self.fetch(topic, partition, start, None, limit, 0, max_bytes=max_bytes)
        except Exception:
            return defer.fail(Failure())

    def resolve(
        self, topic: str, partition: int, spec: str | int | None, from_time: int | None
    ) -> defer.Deferred[int]:
        """Where a stream starting at ``spec`` / ``from_time`` starts, resolved at the holder."""
        try:
            d = self.fetch(topic, partition, spec, from_time, 1, 0)
        except Exception:
            return defer.fail(Failure())
        return d.addCallback(lambda a: int(a["start"]))

    def stop(self) -> None:
        """Stop every feed (node shutdown)."""
        for f in list(self.feeds.values()):
            f.stop()
        self.feeds.clear()

    def view(self) -> dict[str, Any]:
        """Counts for ``GET /v1/cluster`` (``partitions``)."""
        fs = list(self.feeds.values())
        return {
            "remote_feeds": len(fs),
            "remote_subscribers": sum(f.refs for f in fs),
            "remote_feeds_started": self.started,
            "remote_window_records": sum(len(f) for f in fs),
            "remote_window_bytes": sum(f.bytes for f in fs),
            "remote_catch_ups": self.catch_ups,
            "remote_errors": sum(f.errors for f in fs),
        }
