"""``GET /v1/topics/{topic}/messages``: a fetch, with an optional long-poll.

Each partition is read where it is held: in this node's broker, or at its
leader over the peer channel (the data plane's ``fetch_remote``).  Over
several partitions the answer holds the oldest ``limit`` messages by time,
at most ``max_bytes`` of them, and each partition's cursor past what it gave.
A long-poll of a topic that does not exist yet waits for it to be created.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.web.server import Request

from sprawl.delivery.frames import deliverable
from sprawl.errors import SprawlError, Unavailable
from sprawl.http.codec import (
    JSON,
    MAX_FETCH,
    MAX_WAIT_MS,
    cursor,
    encode,
    int_arg,
    max_bytes_arg,
    selection_arg,
    start_spec,
    unwrap_first_error,
)
from sprawl.http.starts import ReadStarts
from sprawl.interfaces import Clock, MessagePlane
from sprawl.log.record import Record
from sprawl.metrics import NodeMetrics
from sprawl.pubsub import Broker
from sprawl.pubsub.filters import Selection
from sprawl.topics import Topic

#: The least a multi-partition fetch reads of each partition (its budget is
#: ``max_bytes`` shared out; the answer itself stays within ``max_bytes``).
MIN_PARTITION_READ_BYTES = 64 * 1000

#: One partition's read: its records, where it started, its high watermark.
PartitionRead = tuple[list[Record], int, int]


class FetchRoute:
    """Serves fetches (see the module docstring)."""

    def __init__(
        self,
        broker: Broker,
        plane: MessagePlane,
        starts: ReadStarts,
        clock: Clock,
        metrics: NodeMetrics | None,
    ):
        self.broker = broker
        self.plane = plane
        self.starts = starts
        self.clock = clock
        self.metrics = metrics

    def fetch(self, request: Request, topic: str) -> object:
        """``GET .../messages``: validate the query, then read (or wait for the topic)."""
        selection_arg(request)  # a bad filter is a 400 before anything is read
        t = self.broker.topics.get(topic)
        if t is None:
            wait_ms = int_arg(request, "wait_ms", 0, 0, MAX_WAIT_MS) or 0
            if wait_ms and self.starts.topic_or_wait(topic) is None:
                return self._fetch_when_created(request, topic, wait_ms)
            t = self.broker.get_topic(topic)  # the 404 (a plain fetch does not wait)
        spec, from_time = start_spec(request)
        parts = self.starts.partitions(request, t)
        limit = int_arg(request, "limit", 100, 1, MAX_FETCH) or 100
        wait_ms = int_arg(request, "wait_ms", 0, 0, MAX_WAIT_MS) or 0
        max_bytes = max_bytes_arg(request)
        return self._fetch(request, t, parts, spec, from_time, limit, wait_ms, max_bytes)

    def _fetch_when_created(self, request: Request, topic: str, wait_ms: int) -> Deferred[Any]:
        """A long-poll of a topic that does not exist yet: wait up to
        ``wait_ms`` for it to be created, then long-poll it from its first
        offset for the rest of the time.  Still missing at the deadline: 200
        with no messages and ``next`` 0, where the topic will start."""
        start_spec(request)  # validated; a start before the topic exists is its first offset
        partition = int_arg(request, "partition", None, 0, 1023)
        limit = int_arg(request, "limit", 100, 1, MAX_FETCH) or 100
        max_bytes = max_bytes_arg(request)
        deadline = self.clock.seconds() + wait_ms / 1000.0
        appearing = self.starts.when_created(topic, partition)
        timer = self.clock.callLater(wait_ms / 1000.0, appearing.cancel)
        request.notifyFinish().addErrback(lambda _: appearing.cancel())

        async def run() -> Any:
            try:
                t, starts = await appearing
            except CancelledError:
                if request.finished or request._disconnected:
                    raise  # the client left: nobody to answer
                parts = [partition] if partition is not None else []
                return self._fetch_answer(
                    request, topic, parts, [], {}, {}, {}, limit, max_bytes, missing=True
                )
            finally:
                if timer.active():
                    timer.cancel()
            parts = sorted(starts)
            for _ in range(1000):
                left = max(0, int((deadline - self.clock.seconds()) * 1000))
                try:
                    return await self._fetch(request, t, parts, 0, None, limit, left, max_bytes)
                except SprawlError as e:
                    # A holder of the partition that has not applied the
                    # topic's creation yet: try again until the deadline.
                    if e.code != "topic_not_found" or self.broker.topics.get(topic) is not t or not left:
                        raise
                await _sleep(self.clock, min(0.1, left / 1000.0))
            raise Unavailable(f"topic {topic!r} could not be read yet", code="topic_not_ready")

        return Deferred.fromCoroutine(run())

    def _fetch(
        self,
        request: Request,
        t: Topic,
        parts: list[int],
        spec: str | int | None,
        from_time: int | None,
        limit: int,
        wait_ms: int,
        max_bytes: int,
    ) -> Deferred[Any]:
        """``GET .../messages`` of an existing topic (see :meth:`fetch`)."""
        topic = t.name
        # Each partition reads its share of the budget (the answer is trimmed to it).
        per = max(max_bytes // len(parts), min(max_bytes, MIN_PARTITION_READ_BYTES))
        deadline = self.clock.seconds() + wait_ms / 1000.0
        if any(self.plane.read_source(topic, p) for p in parts):
            return defer.ensureDeferred(
                self._fetch_routed(request, t, parts, spec, from_time, limit, wait_ms, max_bytes, per)
            )

        def read(starts: dict[int, int]) -> Any:
            hws = {p: t.logs[p].high_watermark for p in parts}
            ds = [self.broker.read(t, p, starts[p], limit, max_bytes=per) for p in parts]
            d = defer.gatherResults(ds, consumeErrors=True)
            d.addErrback(unwrap_first_error)  # e.g. a segment in S3 that cannot be read
            return d.addCallback(answer, starts, hws)

        def answer(results: list[list[Record]], starts: dict[int, int], hws: dict[int, int]) -> Any:
            recs: list[Record] = []
            for p, got in zip(parts, results, strict=True):
                if not got and starts[p] < hws[p]:
                    # Nothing exists below the high watermark seen before the
                    # read (a gap: retention, or an ephemeral tail lost in a
                    # restart): the cursor moves past it instead of stalling.
                    starts[p] = hws[p]
            nexts = dict(starts)
            for p, got in zip(parts, results, strict=True):
                if got:
                    nexts[p] = got[-1].offset + 1  # past control records too
                    recs.extend(deliverable(got))
            if not recs and nexts != starts:
                starts = nexts  # only control records: look again from past them
            if not recs and self.clock.seconds() < deadline and self.broker.topics.get(topic) is t:
                remaining = deadline - self.clock.seconds()
                wait = self.broker.wait_any(t, remaining)
                request.notifyFinish().addErrback(lambda _: wait.cancel())
                return wait.addCallback(lambda _: read(starts))
            hw = {p: t.logs[p].high_watermark for p in parts}
            return self._fetch_answer(request, topic, parts, recs, starts, nexts, hw, limit, max_bytes)

        return self.starts.resolve(t, parts, spec, from_time, "earliest").addCallback(read)

    async def _fetch_routed(
        self,
        request: Request,
        t: Topic,
        parts: list[int],
        spec: str | int | None,
        from_time: int | None,
        limit: int,
        wait_ms: int,
        max_bytes: int,
        per: int,
    ) -> bytes:
        """``GET .../messages`` when some partitions are held by other nodes:
        each partition is read where it is held (here, or at its leader over
        the peer channel); with ``wait_ms`` the answer comes as soon as any
        partition has messages, or at the deadline."""
        plane = self.plane

        async def one(p: int, start: str | int | None, ft: int | None, wait: int) -> PartitionRead:
            if plane.read_source(t.name, p) is not None:
                got = await plane.fetch_remote(t.name, p, start, ft, limit, wait, max_bytes=per)
                s0 = cursor(got["start"], start if ft is None else None)
                return [r for r in got["records"] if r.offset >= s0], s0, got["hw"]
            lg = t.logs[p]
            if ft is not None:
                s0 = int(await self.broker.find_time(t, p, ft))
            else:
                s0 = cursor(lg.resolve_start(start if start is not None else "earliest"), start)
            s0 = max(s0, lg.log_start)
            recs = await self.broker.read(t, p, s0, limit, max_bytes=per) if s0 < lg.high_watermark else []
            if not recs and wait:
                await plane.changed(t.name, p, wait / 1000.0)
                recs = (
                    await self.broker.read(t, p, s0, limit, max_bytes=per) if s0 < lg.high_watermark else []
                )
            return recs, s0, lg.high_watermark

        def gather(ds: list[Deferred[PartitionRead]]) -> Deferred[list[PartitionRead]]:
            d = defer.gatherResults(ds, consumeErrors=True)
            return d.addErrback(unwrap_first_error)

        results = await gather([defer.ensureDeferred(one(p, spec, from_time, 0)) for p in parts])
        starts = {p: r[1] for p, r in zip(parts, results, strict=True)}
        if wait_ms and not any(deliverable(r[0]) for r in results):
            results = await first_with_messages(
                [defer.ensureDeferred(one(p, starts[p], None, wait_ms)) for p in parts],
                [([], starts[p], r[2]) for p, r in zip(parts, results, strict=True)],
            )
        recs: list[Record] = []
        nexts = dict(starts)
        hws: dict[int, int] = {}
        for p, (got, _s0, hw) in zip(parts, results, strict=True):
            hws[p] = hw
            if got:
                nexts[p] = got[-1].offset + 1  # past control records too
                recs.extend(deliverable(got))
        return self._fetch_answer(request, t.name, parts, recs, starts, nexts, hws, limit, max_bytes)

    def _fetch_answer(
        self,
        request: Request,
        topic: str,
        parts: list[int],
        recs: list[Record],
        starts: dict[int, int],
        nexts: dict[int, int],
        hws: dict[int, int],
        limit: int,
        max_bytes: int,
        missing: bool = False,
    ) -> bytes:
        """The body of ``GET .../messages``: over several partitions the oldest
        ``limit`` messages by time; at most ``max_bytes`` of encoded messages
        (at least one); each partition's cursor past what it gave.
        ``missing``: the topic does not exist yet; every cursor is 0."""
        if missing:
            body = b'{"messages":[],"next":0,"high_watermark":0'
            body += b',"next_by_partition":' + encode({str(p): 0 for p in parts})
            body += b',"high_watermarks":' + encode({str(p): 0 for p in parts}) + b"}"
            request.setHeader(b"content-type", JSON)
            return body
        if len(parts) > 1:
            recs.sort(key=lambda r: (r.timestamp, r.partition, r.offset))
            recs = recs[:limit]
        select = selection_arg(request)
        if select is not None:
            recs, encoded, visited, trimmed = _selected(select, recs, max_bytes)
        else:
            encoded = [r.to_json() for r in recs]
            total = 0
            trimmed = False
            for i, j in enumerate(encoded):
                total += len(j) + 1
                if total > max_bytes and i:
                    recs, encoded, trimmed = recs[:i], encoded[:i], True
                    break
            visited = recs
        if len(parts) > 1 or trimmed:
            nexts = dict(starts)
            for r in visited:
                nexts[r.partition] = max(nexts[r.partition], r.offset + 1)
        m = self.metrics
        if m is not None and recs:
            m.delivered(topic, "fetch", len(recs), sum(r.message_bytes for r in recs))
        body = b'{"messages":[' + b",".join(encoded) + b"]"
        body += b',"next":' + encode(nexts[parts[0]] if len(parts) == 1 else None)
        body += b',"high_watermark":' + encode(hws[parts[0]] if len(parts) == 1 else sum(hws.values()))
        body += b',"next_by_partition":' + encode({str(p): o for p, o in nexts.items()})
        body += b',"high_watermarks":' + encode({str(p): o for p, o in hws.items()}) + b"}"
        request.setHeader(b"content-type", JSON)
        return body


def _selected(
    select: Selection, recs: list[Record], max_bytes: int
) -> tuple[list[Record], list[bytes], list[Record], bool]:
    """``(selected, their JSON, visited, trimmed)`` of a filtered fetch: the records the
    selection keeps (shaped), in order, until their JSON reaches ``max_bytes`` (one at least);
    ``visited`` are the records looked at (kept or not: the cursors move past them)."""
    kept: list[Record] = []
    encoded: list[bytes] = []
    total = 0
    for i, r in enumerate(recs):
        got = select.one(r)
        if got is None:
            continue
        j = got.to_json()
        total += len(j) + 1
        if total > max_bytes and kept:
            return kept, encoded, recs[:i], True
        kept.append(got)
        encoded.append(j)
    return kept, encoded, recs, False


def _sleep(clock: Clock, seconds: float) -> Deferred[None]:
    """Fires after ``seconds`` on ``clock``; cancelling it cancels the call."""
    d: Deferred[None] = Deferred(lambda _: call.cancel())
    call = clock.callLater(seconds, d.callback, None)
    return d


async def first_with_messages(
    pending: list[Deferred[PartitionRead]], fallback: list[PartitionRead]
) -> list[PartitionRead]:
    """Wait for the first of ``pending`` (one long-poll per partition) to
    bring messages, or for all of them to end; the rest keep ``fallback``."""
    first: Deferred[None] = Deferred()
    done: dict[int, PartitionRead] = {}
    ended: set[int] = set()

    def settle(res: PartitionRead | Failure, i: int) -> None:
        ended.add(i)
        if not isinstance(res, Failure):
            done[i] = res
        brought = not isinstance(res, Failure) and bool(deliverable(res[0]))
        if (brought or len(ended) == len(pending)) and not first.called:
            first.callback(None)

    for i, d in enumerate(pending):
        d.addBoth(settle, i)
    await first
    return [done.get(i, fb) for i, fb in enumerate(fallback)]
