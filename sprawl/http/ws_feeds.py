"""WebSocket feeds: what a socket delivers (:mod:`sprawl.http.websocket` owns the socket).

* :class:`WSStream` -- cursor mode: the SSE stream's cursors and flow control,
  one WebSocket text frame per message;
* :class:`GroupFeed` -- group mode: leases of a consumer group, at most
  ``max_in_flight`` unacked on the socket.

Both are ``IPushProducer`` on the socket's transport: paused while the
client's buffer is full, closed with code 4008 when paused for longer than
``slow_timeout``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sprawl.delivery.frames import batch
from sprawl.delivery.groups import ConsumerGroup, Delivery
from sprawl.delivery.remote_feed import RemoteFeeds
from sprawl.delivery.streams import SlowClientClock, SSEStream, StreamRegistry
from sprawl.errors import SprawlError
from sprawl.http.codec import leased
from sprawl.interfaces import Clock, Delayed, FeedSocket
from sprawl.log.record import DEFAULT_READ_BYTES, Record
from sprawl.pubsub import Broker
from sprawl.pubsub.filters import Selection
from sprawl.topics import Topic

log = Logger(namespace="sprawl.http.websocket")

#: Close codes (4000-4999 is the application range).
CLOSE_SLOW_CONSUMER = 4008
CLOSE_TOPIC_DELETED = 4004
CLOSE_GROUP_DELETED = 4005
CLOSE_READ_FAILED = 4011
#: The socket waited for a topic that, once created, lacks the asked partition.
CLOSE_NOT_FOUND = 4404
#: The node is stopping (autobahn lets an endpoint send only 1000 or 3000-4999).
CLOSE_GOING_AWAY = 4001
#: The bearer token (a JWT) that opened the socket expired.
CLOSE_TOKEN_EXPIRED = 4401
#: Longest long-poll of a group feed; it re-polls after that.
GROUP_POLL_MS = 25_000

#: What a group feed leases: (delivery, record) pairs.
Leases = list[tuple[Delivery, Record]]
#: Leases ``(max, wait_ms, max_bytes)`` of the feed's group.
Pull = Callable[[int, int, int], Deferred[Leases]]


def text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented WebSocket text frame (RFC 6455 5.2) -- what a
    server sends when no extension (compression) is in use."""
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", 0x81, n) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


def _framed(r: Record) -> bytes:
    return text_frame(r.to_json())


class WSStream(SSEStream):
    """Cursor mode: the SSE stream's cursor and flow-control logic, writing
    one WebSocket text frame per message instead of SSE frames."""

    def __init__(
        self,
        proto: FeedSocket,
        broker: Broker,
        topic: Topic | None,
        cursors: dict[int, int],
        request: None,
        clock: Clock,
        *,
        registry: StreamRegistry,
        heartbeat: float = 15.0,
        slow_timeout: float = 30.0,
        feeds: RemoteFeeds | None = None,
        name: str | None = None,
        max_bytes: int = DEFAULT_READ_BYTES,
        expires: float | None = None,
        select: Selection | None = None,
    ):
        super().__init__(
            broker,
            topic,
            cursors,
            request,
            clock,
            registry=registry,
            heartbeat=heartbeat,
            slow_timeout=slow_timeout,
            feeds=feeds,
            name=name,
            max_bytes=max_bytes,
            expires=expires,
            select=select,
        )
        self.proto = proto

    def _open(self) -> None:
        """Register on the transport (the HTTP upgrade already answered)."""
        self.proto.transport.registerProducer(self, True)

    def _keepalive(self) -> None:
        """Nothing: keepalive is autobahn's ping; the beat only notices a deleted topic."""

    def _waiting_note(self) -> None:
        """Nothing: a socket's frames are messages and answers only."""

    def _topic_deleted(self) -> None:
        self._close_with(CLOSE_TOPIC_DELETED, "topic_deleted: the topic was deleted")

    def _fail(self, code: str, message: str) -> None:
        """End the feed with an error (a close code and ``code: message`` as the reason)."""
        close = CLOSE_NOT_FOUND if code.endswith("not_found") else CLOSE_READ_FAILED
        self._close_with(close, f"{code}: {message}"[:120])

    def _pump(self, p: int) -> None:
        if not self.closed and not self.paused and self.broker.topics.get(self.topic.name) is not self.topic:
            self._topic_deleted()
            return
        super()._pump(p)

    def _send(self, p: int, recs: list[Record]) -> None:
        proto = self.proto
        raw = proto.can_write_raw()
        if self.select is not None:
            recs = self.select.apply(recs)
        frames, used, n, nbytes = batch(recs, _framed if raw else Record.to_json, self.max_bytes)
        self.cursors[p] = recs[used - 1].offset + 1  # past control records too
        if not n:
            return
        if raw:
            # One write of ready-made frames instead of a sendMessage per record.
            proto.transport.write(b"".join(frames))
        else:
            for f in frames:
                proto.sendMessage(f, isBinary=False)
        self.sent += n
        m = self.broker.metrics
        if m is not None:
            m.delivered(self.topic.name, "websocket", n, nbytes)

    def _expired(self) -> None:
        self._expiry_call = None
        cur = ",".join(f"{p}:{o}" for p, o in self.cursors.items())
        self._close_with(CLOSE_TOKEN_EXPIRED, f"token_expired: reconnect with a fresh token from {cur}"[:120])

    def _too_slow(self) -> None:
        if self.closed:
            return
        m = self.broker.metrics
        if m is not None:
            m.slow_consumers_disconnected.inc()
        cur = ",".join(f"{p}:{o}" for p, o in self.cursors.items())
        self._close_with(CLOSE_SLOW_CONSUMER, f"slow_consumer: resume with from/last_event_id {cur}"[:120])

    def _end(self, last: bytes) -> None:
        # Called by the read-failure path and StreamRegistry.close_all (shutdown).
        if b"read_failed" in last:
            self._close_with(CLOSE_READ_FAILED, "read_failed: storage read failed")
        else:
            self._close_with(CLOSE_GOING_AWAY, "stopping: node is stopping")

    def _close_with(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.close()
        self.proto.close_feed(code, reason)


@implementer(IPushProducer)
class GroupFeed:
    """Group mode: leases messages of a consumer group onto the socket, at
    most ``max_in_flight`` unacked at a time; pauses with the transport."""

    def __init__(
        self,
        proto: FeedSocket,
        broker: Broker,
        topic: Topic,
        group: ConsumerGroup,
        clock: Clock,
        *,
        registry: StreamRegistry,
        max_in_flight: int = 100,
        slow_timeout: float = 30.0,
        pull: Pull | None = None,
        max_bytes: int = DEFAULT_READ_BYTES,
        expires: float | None = None,
    ):
        self.proto = proto
        self.broker = broker
        self.topic = topic
        self.group = group
        #: Leases ``(max, wait_ms, max_bytes)`` -> Deferred of (delivery, record)
        #: pairs: the cluster's (from every partition's leader) or, by default, this broker's.
        self.pull = pull or (lambda n, wait, mb: broker.pull(topic, group, n, wait, max_bytes=mb))
        #: Message bytes one pull (one write of frames) may carry, at least one message.
        self.max_bytes = max_bytes
        #: When the token that opened the socket expires (clock seconds), or None.
        self.expires = expires
        self.clock = clock
        self.registry = registry
        self.max_in_flight = max_in_flight
        self.slow_timeout = slow_timeout
        self.paused = False
        self.closed = False
        self.sent = 0
        #: ack_id → lease deadline (ms) of what this socket holds unacked.
        self.outstanding: dict[str, int] = {}
        self._pulling: Deferred[Leases] | None = None
        self._slow = SlowClientClock(clock, slow_timeout, self._too_slow)
        self._expiry_call: Delayed | None = None
        self._token_call: Delayed | None = None
        self._unwatch: list[Callable[[], None]] = []

    def start(self) -> None:
        """Register on the transport and start pulling."""
        self.proto.transport.registerProducer(self, True)
        self.registry.add(self)  # type: ignore[arg-type]
        if self.expires is not None:
            self._token_call = self.clock.callLater(
                max(0.0, self.expires - self.clock.seconds()), self._expired
            )
        for lg in self.topic.logs:  # notices a deleted topic at once (a pull would wait it out)
            self._unwatch.append(self.broker.watch(self.topic.name, lg.partition, self._check_topic))
        self._next()

    def _check_topic(self) -> None:
        if not self.closed and self.broker.topics.get(self.topic.name) is not self.topic:
            self._close_with(CLOSE_TOPIC_DELETED, "topic_deleted: the topic was deleted")

    def _credit(self) -> int:
        now = self.broker.now_ms()
        for a in [a for a, dl in self.outstanding.items() if dl <= now]:
            del self.outstanding[a]  # lease expired: the group redelivers it
        return self.max_in_flight - len(self.outstanding)

    def _next(self) -> None:
        if self.closed or self.paused or self._pulling is not None:
            return
        if self.broker.topics.get(self.topic.name) is not self.topic:
            self._close_with(CLOSE_TOPIC_DELETED, "topic_deleted: the topic was deleted")
            return
        if self.topic.groups.get(self.group.name) is not self.group:
            self._close_with(CLOSE_GROUP_DELETED, "group_deleted: the group was deleted")
            return
        credit = self._credit()
        if credit <= 0:
            # Wait for an ack, or for the earliest lease to expire.
            if self._expiry_call is None or not self._expiry_call.active():
                delay = max(0.001, (min(self.outstanding.values()) - self.broker.now_ms()) / 1000.0)
                self._expiry_call = self.clock.callLater(delay, self._next)
            return
        d = self._pulling = self.pull(credit, GROUP_POLL_MS, self.max_bytes)
        d.addCallbacks(self._got, self._failed)

    def _got(self, items: Leases) -> None:
        self._pulling = None
        if self.closed:
            return  # leases lapse and the group redelivers
        frames = []
        for dv, r in items:
            frames.append(leased(dv, r))
            self.outstanding[dv.ack_id] = dv.deadline_ms
        proto = self.proto
        if proto.can_write_raw():
            proto.transport.write(b"".join([text_frame(f) for f in frames]))
        else:
            for f in frames:
                proto.sendMessage(f, isBinary=False)
        self.sent += len(items)
        m = self.broker.metrics
        if m is not None and items:
            m.delivered(self.topic.name, "group", len(items), sum(r.message_bytes for _, r in items))
        self._next()

    def _failed(self, f: Failure) -> None:
        self._pulling = None
        if self.closed or f.check(CancelledError):
            return
        if isinstance(f.value, SprawlError) and f.value.code == "group_not_found":
            self._close_with(CLOSE_GROUP_DELETED, "group_deleted: the group was deleted")
            return
        log.failure("group feed of {topic}/{group} failed", f, topic=self.topic.name, group=self.group.name)
        self._close_with(CLOSE_READ_FAILED, "read_failed: storage read failed")

    def settled(self, ack_ids: list[str]) -> None:
        """These ids were acked or nacked through the socket: more credit."""
        for a in ack_ids:
            self.outstanding.pop(a, None)
        self._next()

    def pauseProducing(self) -> None:
        """The socket buffer is full: no more pulls; start the slow-client clock."""
        self.paused = True
        self._slow.start()

    def resumeProducing(self) -> None:
        """The client caught up: pull again."""
        self.paused = False
        self._slow.stop()
        self._next()

    def stopProducing(self) -> None:
        """The connection is gone."""
        self.close()

    def _too_slow(self) -> None:
        if self.closed:
            return
        m = self.broker.metrics
        if m is not None:
            m.slow_consumers_disconnected.inc()
        self._close_with(CLOSE_SLOW_CONSUMER, "slow_consumer: unacked leases will be redelivered")

    def _end(self, last: bytes) -> None:
        self._close_with(CLOSE_GOING_AWAY, "stopping: node is stopping")

    def _expired(self) -> None:
        self._token_call = None
        self._close_with(CLOSE_TOKEN_EXPIRED, "token_expired: reconnect with a fresh token")

    def _close_with(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.close()
        self.proto.close_feed(code, reason)

    def close(self) -> None:
        """Stop pulling and release timers (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.registry.discard(self)  # type: ignore[arg-type]
        for u in self._unwatch:
            u()
        self._unwatch = []
        if self._pulling is not None:
            d, self._pulling = self._pulling, None
            d.cancel()
        self._slow.stop()
        for c in (self._expiry_call, self._token_call):
            if c is not None and c.active():
                c.cancel()
