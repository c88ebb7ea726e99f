"""Server-Sent Events streams: one cursor per partition, frames written as
the high watermark moves, with producer flow control.

A stream is an ``IPushProducer`` registered on the HTTP request.  When the
client's socket buffer fills, Twisted pauses it and it stops writing; its
cursors stay where they are.  On resume it catches up from the hot tail or
LMDB.  So a slow client costs the node one cursor, not a growing buffer.  A
client paused for longer than ``slow_timeout`` is told why and disconnected;
it can resume with ``Last-Event-ID``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, cast

import msgspec
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from sprawl.delivery.frames import BATCH_ENCODERS, BatchEvents, batch
from sprawl.errors import SprawlError
from sprawl.interfaces import Clock, Delayed, StreamSink, StreamSource
from sprawl.log.record import DEFAULT_READ_BYTES, Record
from sprawl.storage import timeline

if TYPE_CHECKING:
    from twisted.python.failure import Failure

    from sprawl.delivery.remote_feed import RemoteFeed, RemoteFeeds
    from sprawl.topics import Topic

log = Logger()


class RecordSelection(Protocol):
    """What a stream applies to each partition's records as it reads them (a
    :class:`sprawl.pubsub.filters.Selection`, from the layer above)."""

    def apply(self, recs: list[Record]) -> list[Record]:
        """The records with the unselected ones replaced by control records."""
        ...


CHUNK = 1000


class SlowClientClock:
    """Cuts a client off when it keeps its socket full for ``timeout`` seconds:
    :meth:`start` when the transport pauses the producer, :meth:`stop` when
    it resumes (or the stream ends); ``on_timeout`` runs once the time is up."""

    def __init__(self, clock: Clock, timeout: float, on_timeout: Callable[[], None]) -> None:
        self.clock = clock
        self.timeout = timeout
        self.on_timeout = on_timeout
        self._call: Delayed | None = None

    def start(self) -> None:
        """The client stopped reading: start counting (once; 0 disables)."""
        if self._call is None and self.timeout > 0:
            self._call = self.clock.callLater(self.timeout, self._fire)

    def stop(self) -> None:
        """The client reads again, or the stream ends."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _fire(self) -> None:
        self._call = None
        self.on_timeout()


@implementer(IPushProducer)
class SSEStream:
    """One SSE client reading one or more partitions of a topic."""

    def __init__(
        self,
        broker: StreamSource,
        topic: Topic | None,
        cursors: dict[int, int],
        request: StreamSink | None,
        clock: Clock,
        *,
        registry: StreamRegistry,
        heartbeat: float = 15.0,
        slow_timeout: float = 30.0,
        feeds: RemoteFeeds | None = None,
        name: str | None = None,
        max_bytes: int = DEFAULT_READ_BYTES,
        expires: float | None = None,
        select: RecordSelection | None = None,
        fmt: str = "sse",
    ):
        self.broker = broker
        #: The stream's ``?filter=``/``?fields=`` (a :class:`sprawl.pubsub.filters.Selection`),
        #: applied to each partition's records as they are read here; None: every message.
        self.select: RecordSelection | None = select
        #: The topic; None while waiting for it to be created (:meth:`wait_for_topic`),
        #: when no read runs (typed as set: every read path runs once it is).
        self.topic: Topic = cast("Topic", topic)
        self.name: str = topic.name if topic is not None else str(name)
        self.cursors = dict(cursors)
        #: The HTTP response (None for a WebSocket feed, which overrides every write).
        self.request: StreamSink = cast("StreamSink", request)
        self.clock = clock
        self.registry = registry
        self.heartbeat = heartbeat
        self.slow_timeout = slow_timeout
        self.paused = False
        self.closed = False
        self.reading: set[int] = set()
        self.done: Deferred[None] = Deferred(lambda _: self.close())
        self._unwatch: list[Callable[[], None]] = []
        self._heartbeat_call: Delayed | None = None
        self._slow = SlowClientClock(clock, slow_timeout, self._too_slow)
        self.sent = 0
        #: The node's remote feeds (:class:`sprawl.delivery.remote_feed.RemoteFeeds`),
        #: for partitions held by other nodes; None on a node that holds every partition.
        self.feeds = feeds
        self._remote: dict[int, RemoteFeed] = {}
        self._retry_calls: dict[int, Delayed] = {}
        #: While waiting for the topic: fires with ``(topic, cursors)`` when it appears.
        self._appearing: Deferred[Any] | None = None
        #: Bytes of frames one write may carry (at least one message per write).
        self.max_bytes = max_bytes
        #: When the credentials that opened the stream expire (clock seconds),
        #: or None: the stream ends then (:meth:`_expired`).
        self.expires = expires
        self._expiry_call: Delayed | None = None
        #: The stream format (:data:`STREAM_FORMATS`).
        self.fmt = fmt

    def start(self) -> Deferred[None]:
        """Send headers, start watching partitions, write what is already visible."""
        self._open()
        self.registry.add(self)
        self._heartbeat_call = self.clock.callLater(self.heartbeat, self._beat)
        self._arm_expiry()
        self._follow()
        return self.done

    def _arm_expiry(self) -> None:
        """End the stream when the credentials that opened it expire."""
        if self.expires is not None:
            self._expiry_call = self.clock.callLater(
                max(0.0, self.expires - self.clock.seconds()), self._expired
            )

    def wait_for_topic(self, appearing: Deferred[Any]) -> Deferred[None]:
        """Open the stream of a topic that does not exist yet: headers and
        heartbeats now, like any stream (it counts as one); reading starts
        when ``appearing`` fires with ``(topic, cursors)``.  If it fails (say,
        the asked partition does not exist in the topic created), the stream
        ends with that error."""
        self._open()
        self._waiting_note()
        self.registry.add(self)
        self._heartbeat_call = self.clock.callLater(self.heartbeat, self._beat)
        self._arm_expiry()
        self._appearing = appearing
        appearing.addCallbacks(self._appeared, self._never_appeared)
        return self.done

    def _appeared(self, found: tuple[Any, dict[int, int]]) -> None:
        self._appearing = None
        if self.closed:
            return
        self.topic, cursors = found
        self.cursors = dict(cursors)
        self._follow()

    def _never_appeared(self, f: Failure) -> None:
        self._appearing = None
        if self.closed or f.check(CancelledError):
            return
        e = f.value
        if isinstance(e, SprawlError):
            self._fail(e.code, e.message)
        else:
            log.failure("waiting for topic {topic} failed", f, topic=self.name)
            self._fail("internal_error", "internal error; see the node's log")

    def _fail(self, code: str, message: str) -> None:
        """End the stream with an error event."""
        self._end(b"event: error\ndata: " + json.dumps({"code": code, "message": message}).encode() + b"\n\n")

    def _follow(self) -> None:
        """Watch the partitions of the cursors and write what is already visible."""
        name = self.topic.name
        for p in self.cursors:
            self._unwatch.append(self.broker.watch(name, p, partial(self._pump, p)))
        for p in list(self.cursors):
            self._pump(p)

    def _expired(self) -> None:
        """The token that opened the stream expired: end it (the client
        resumes with a fresh token and ``Last-Event-ID``)."""
        self._expiry_call = None
        body = msgspec.json.encode(
            {
                "code": "token_expired",
                "message": "the bearer token expired; reconnect with a fresh one and Last-Event-ID",
                "cursors": {str(p): o for p, o in self.cursors.items()},
            }
        )
        self._end(b"event: error\ndata: " + body + b"\n\n")

    #: The response's ``Content-Type`` (a subclass that frames the stream otherwise sets its own).
    content_type = b"text/event-stream; charset=utf-8"

    def _open(self) -> None:
        """Register as the connection's producer and send the headers and :meth:`_preamble`."""
        req = self.request
        req.setHeader(b"content-type", self.content_type)
        req.setHeader(b"cache-control", b"no-cache")
        req.setHeader(b"x-accel-buffering", b"no")
        req.registerProducer(self, True)
        req.write(self._preamble())

    def _preamble(self) -> bytes:
        """The stream's first bytes, once it is open (an SSE comment naming the topic, and the retry)."""
        return b": sprawl stream of %s\nretry: 1000\n\n" % self.name.encode()

    def _waiting_note(self) -> None:
        """Tell the client the topic does not exist yet (an SSE comment: curl shows it)."""
        self.request.write(b": waiting for topic %s to be created\n\n" % self.name.encode())

    def _beat(self) -> None:
        if self.closed:
            return
        if self.topic is not None and self.broker.topics.get(self.topic.name) is not self.topic:
            self._topic_deleted()
            return
        if not self.paused:
            self._keepalive()
        self._heartbeat_call = self.clock.callLater(self.heartbeat, self._beat)

    def _keepalive(self) -> None:
        """Keep an idle connection alive (an SSE comment)."""
        self.request.write(b": keepalive\n\n")

    def _topic_deleted(self) -> None:
        """End the stream: its topic is gone."""
        self._end(b'event: error\ndata: {"code":"topic_deleted","message":"the topic was deleted"}\n\n')

    def _pump(self, p: int) -> None:
        """Write every visible record of partition ``p`` past the cursor."""
        if self.closed or self.paused or p in self.reading:
            return
        topic = self.topic
        if self.broker.topics.get(topic.name) is not topic:
            self._end(b'event: error\ndata: {"code":"topic_deleted","message":"the topic was deleted"}\n\n')
            return
        if self.feeds is not None:
            if self.feeds.is_remote(topic.name, p):
                self._pump_remote(p)
                return
            if p in self._remote:  # this node holds the partition now
                self.feeds.release(self._remote.pop(p))
        lg = topic.logs[p]

        def from_memory(start: int) -> list[Record] | None:
            if start < lg.log_start:
                self.cursors[p] = lg.log_start
                start = lg.log_start
            return lg.read_hot(start, CHUNK)

        self._write_from(p, from_memory, self._read_storage)

    def _write_from(
        self,
        p: int,
        read_now: Callable[[int], list[Record] | None],
        read_later: Callable[[int, int], None],
    ) -> None:
        """Write what ``read_now`` has past the cursor of ``p`` until the
        client pushes back; where it has nothing in hand (None) ``read_later``
        fetches from the cursor and pumps again."""
        for _ in range(1000):
            start = self.cursors[p]
            recs = read_now(start)
            if recs is None:
                read_later(p, self.cursors[p])
                return
            if not recs:
                return
            self._send(p, recs)
            if self.paused or self.closed:
                return

    def _read_storage(self, p: int, start: int) -> None:
        self.reading.add(p)
        d = self.broker.read(self.topic, p, start, CHUNK, max_bytes=self.max_bytes)

        def got(recs: list[Record]) -> None:
            self.reading.discard(p)
            if self.closed:
                return
            if recs:
                self._send(p, recs)
            else:
                lg = self.topic.logs[p]
                # A gap (ephemeral data lost in a restart): skip to what exists.
                self.cursors[p] = max(self.cursors[p], lg.hot_start if start < lg.hot_start else start)
                if self.cursors[p] == start:
                    return
            self._pump(p)

        def failed(f: Failure) -> None:
            self.reading.discard(p)
            if self.closed:
                return
            if isinstance(f.value, SprawlError) and f.value.code == "catching_up":
                # This replica's list of the segments in S3 lags for a moment: read again shortly.
                self._retry_calls[p] = self.clock.callLater(1.0, self._retry, p)
                return
            log.failure("stream read of {topic}/{p} failed", f, topic=self.topic.name, p=p)
            code, message = "read_failed", "storage read failed"
            if isinstance(f.value, SprawlError):  # e.g. a segment in S3 missing or corrupt
                code, message = f.value.code, f.value.message
            body = json.dumps({"code": code, "message": message}).encode()
            self._end(b"event: error\ndata: " + body + b"\n\n")

        d.addCallbacks(got, failed)

    # -- partitions held by other nodes ----------------------------------------

    def _pump_remote(self, p: int) -> None:
        """Write what the node's feed of partition ``p`` has past the cursor;
        an offset older than the feed's window is read at the holder."""
        feed = self._remote.get(p)
        if feed is None:
            assert self.feeds is not None  # (a partition is remote only through the feeds)
            feed = self._remote[p] = self.feeds.acquire(self.topic.name, p)
        self._write_from(p, lambda start: feed.read(start, CHUNK), self._catch_up)

    def _catch_up(self, p: int, start: int) -> None:
        self.reading.add(p)
        assert self.feeds is not None  # (a partition is remote only through the feeds)
        d = self.feeds.catch_up(self.topic.name, p, start, CHUNK, self.max_bytes)

        def got(answer: dict[str, Any]) -> None:
            self.reading.discard(p)
            if self.closed:
                return
            recs = answer["records"]
            if recs:
                self._send(p, recs)
            else:
                # Past the holder's log start (retention), or a gap below its
                # high watermark: move on to what exists, as a fetch does.
                nxt = max(start, int(answer["start"]))
                if nxt == start and start < int(answer["hw"]):
                    nxt = int(answer["hw"])
                self.cursors[p] = max(self.cursors[p], nxt)
                if self.cursors[p] == start:
                    return
            self._pump(p)

        def failed(f: Failure) -> None:
            self.reading.discard(p)
            if self.closed:
                return
            e = f.value
            if isinstance(e, SprawlError) and e.status in (429, 503):
                # The holder is unreachable or between leaders: try again shortly.
                self._retry_calls[p] = self.clock.callLater(1.0, self._retry, p)
                return
            log.failure("stream catch-up read of {topic}/{p} failed", f, topic=self.topic.name, p=p)
            message = f"remote read failed: {e.message if isinstance(e, SprawlError) else 'see the node log'}"
            body = json.dumps({"code": "read_failed", "message": message}).encode()
            self._end(b"event: error\ndata: " + body + b"\n\n")

        d.addCallbacks(got, failed)

    def _retry(self, p: int) -> None:
        self._retry_calls.pop(p, None)
        self._pump(p)

    def _send(self, p: int, recs: list[Record]) -> None:
        """Write the records from the cursor of ``p`` on, at most
        :attr:`max_bytes` of frames in one write; the cursor moves past what
        was written (control records included, and with a filter the messages it did not
        select)."""
        if self.select is not None:
            recs = self.select.apply(recs)
        if self.fmt != "sse":
            if self.select is None:
                event, used, n, nbytes = self.registry.batches.event(
                    self.topic, p, recs, self.max_bytes, self.fmt
                )
            else:
                # A selection's records are its own (shaped, or skipped in place): not shared.
                event, used, n, nbytes = BATCH_ENCODERS[self.fmt](p, recs, self.max_bytes)
            frames = [event]
        else:
            frames, used, n, nbytes = batch(recs, Record.to_sse, self.max_bytes)
        self.cursors[p] = recs[used - 1].offset + 1
        if not n:
            return
        self.request.write(b"".join(frames))
        if self.fmt == "sse":
            # The event leaves in this turn (the HTTP request's ``send_now``, where it has one).
            send_now = getattr(self.request, "send_now", None)
            if send_now is not None:
                send_now()
        self.sent += n
        if timeline.TIMELINE is not None:
            timeline.TIMELINE.mark("sse", recs[0].offset, recs[used - 1].offset + 1)
        m = self.broker.metrics
        if m is not None:
            m.delivered(self.topic.name, "stream", n, nbytes)

    # -- IPushProducer -------------------------------------------------------

    def pauseProducing(self) -> None:
        """The client's buffer is full: stop writing, start the slow-client clock."""
        self.paused = True
        self._slow.start()

    def resumeProducing(self) -> None:
        """The client caught up: write from the cursors again."""
        self.paused = False
        self._slow.stop()
        for p in list(self.cursors):
            self._pump(p)

    def stopProducing(self) -> None:
        """The connection is gone: release everything now.

        ``done`` is left alone: the HTTP layer sees the connection loss right
        after this and cancels it.  Firing it here would make the HTTP layer
        finish a request whose connection is going away, with this producer
        still registered (a critical "Producer was not unregistered" log).
        """
        self.close(fire_done=False)

    def _too_slow(self) -> None:
        if self.closed:
            return
        m = self.broker.metrics
        if m is not None:
            m.slow_consumers_disconnected.inc()
        body = msgspec.json.encode(
            {
                "code": "slow_consumer",
                "message": f"client read too slowly for {self.slow_timeout:g}s; resume with Last-Event-ID",
                "cursors": {str(p): o for p, o in self.cursors.items()},
            }
        )
        self._end(b"event: error\ndata: " + body + b"\n\n")

    def _end(self, last: bytes) -> None:
        if self.closed:
            return
        # Unregister and finish *before* close() fires ``done``: the HTTP layer
        # finishes the request itself when ``done`` fires first, and finishing
        # with the producer still registered logs a critical RuntimeError.
        try:
            self.request.write(last)
        except Exception:
            pass
        try:
            self.request.unregisterProducer()
            self.request.finish()
        except Exception:
            pass
        self.close()

    def close(self, fire_done: bool = True) -> None:
        """Stop watching and release timers (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.registry.discard(self)
        for u in self._unwatch:
            u()
        self._unwatch = []
        for feed in self._remote.values():
            assert self.feeds is not None
            self.feeds.release(feed)
        self._remote = {}
        self._slow.stop()
        for c in (self._heartbeat_call, self._expiry_call, *self._retry_calls.values()):
            if c is not None and c.active():
                c.cancel()
        if self._appearing is not None:
            d, self._appearing = self._appearing, None
            d.cancel()
        if fire_done and not self.done.called:
            self.done.callback(None)


class StreamRegistry:
    """The open streams of a node (for metrics and shutdown)."""

    def __init__(self) -> None:
        self.streams: set[SSEStream] = set()
        #: The ``batch`` events the streams share (:class:`BatchEvents`).
        self.batches = BatchEvents()

    def add(self, s: SSEStream) -> None:
        """Track a stream."""
        self.streams.add(s)

    def discard(self, s: SSEStream) -> None:
        """Forget a stream."""
        self.streams.discard(s)

    def count(self) -> int:
        """Open streams."""
        return len(self.streams)

    def close_all(self) -> None:
        """End every stream (node shutdown)."""
        for s in list(self.streams):
            s._end(b'event: error\ndata: {"code":"stopping","message":"node is stopping"}\n\n')
