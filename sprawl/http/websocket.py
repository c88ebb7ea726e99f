"""WebSocket delivery: ``GET /v1/topics/{topic}/ws`` (autobahn on Twisted).

One socket carries, both ways, JSON text frames:

* server → client: every message as the same JSON object SSE and fetch use
  (plus ``ack_id``/``delivery_attempt``/``ack_deadline`` in group mode);
  answers to client requests (``{"published": ...}``, ``{"acked": ...}``,
  ``{"nacked": ...}``) and errors (``{"error": {"code", "message"}}``), each
  echoing the request's ``ref`` when it had one;
* client → server: ``{"publish": {message fields..., "acks"?}}`` or
  ``{"publish": {"messages": [...], "acks"?}}``; ``{"ack": [ids]}`` or
  ``{"ack": {"ack_ids": [...]}}``; ``{"nack": {"ack_ids": [...], "delay_ms"?}}``.

Two subscription modes, chosen by the query when the socket opens: cursors
(``?from=``/``?partition=``/``?last_event_id=``, like SSE: a client resumes
without loss by reconnecting with ``from`` = last offset seen + 1) or a
consumer group (``?group=G``: leases, at most ``max_in_flight`` unacked
messages on the socket).

Flow control: the feed is an ``IPushProducer`` on the TCP transport.  When
the socket buffer fills, Twisted pauses it and the node stops reading from
the broker (cursors stay put, no pull is made); a client paused for longer
than ``slow_timeout`` gets close code 4008 with the reason and is dropped.
Inbound, a socket with too many publishes in flight stops being read until
they are answered.  A bad frame gets an error frame; it never closes the
socket or touches state.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sprawl.delivery.streams import SlowClientClock, SSEStream, StreamRegistry, batch
from sprawl.errors import BadRequest, PayloadTooLarge, SprawlError
from sprawl.log.record import DEFAULT_READ_BYTES, Record
from sprawl.pubsub import ACKS

log = Logger()

_encode = msgspec.json.Encoder().encode

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

#: Publishes a socket may have in flight before the node stops reading it.
MAX_PENDING_PUBLISHES = 64
#: Longest long-poll of a group feed; it re-polls after that.
GROUP_POLL_MS = 25_000
MAX_ACK_IDS = 10_000


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


class _Conn:
    """What a feed needs of its socket (keeps feeds testable without autobahn)."""

    def __init__(self, proto: SprawlWSProtocol):
        self.proto = proto

    def send(self, data: bytes) -> None:
        self.proto.sendMessage(data, isBinary=False)


class WSStream(SSEStream):
    """Cursor mode: the SSE stream's cursor and flow-control logic, writing
    one WebSocket text frame per message instead of SSE frames."""

    def __init__(self, proto: SprawlWSProtocol, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
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
        proto: SprawlWSProtocol,
        broker: Any,
        topic: Any,
        group: Any,
        clock: Any,
        *,
        registry: StreamRegistry,
        max_in_flight: int = 100,
        slow_timeout: float = 30.0,
        pull: Any = None,
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
        self._pulling: Deferred[Any] | None = None
        self._slow = SlowClientClock(clock, slow_timeout, self._too_slow)
        self._expiry_call: Any = None
        self._token_call: Any = None
        self._unwatch: list[Any] = []

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

    def _got(self, items: list[Any]) -> None:
        self._pulling = None
        if self.closed:
            return  # leases lapse and the group redelivers
        frames = []
        for dv, r in items:
            j = r.to_json()
            frames.append(
                j[:-1]
                + b',"ack_id":"%s","delivery_attempt":%d,"ack_deadline":%d}'
                % (dv.ack_id.encode(), dv.attempt, dv.deadline_ms)
            )
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


class SprawlWSProtocol(WebSocketServerProtocol):
    """One client socket: a feed (cursors or group) plus publish/ack requests."""

    factory: SprawlWSFactory
    transport: Any
    feed: WSStream | GroupFeed | None = None
    _pending = 0
    _reading_paused = False
    _gone = False

    def onOpen(self) -> None:
        """Start the feed chosen by the query the route validated."""
        f = self.factory
        api = f.api
        if f.group is not None:
            self.feed = GroupFeed(
                self,
                api.broker,
                f.topic,
                f.group,
                api.clock,
                registry=api.streams,
                max_in_flight=f.max_in_flight,
                slow_timeout=f.slow_timeout,
                pull=_cluster_pull(api, f.topic, f.group),
                max_bytes=f.max_bytes,
                expires=f.expires,
            )
            self.feed.start()
        elif f.cursors is not None or f.appearing is not None:
            self.feed = WSStream(
                self,
                api.broker,
                f.topic,
                f.cursors or {},
                None,
                api.clock,
                registry=api.streams,
                slow_timeout=f.slow_timeout,
                feeds=api.plane.feeds if api.plane is not None else None,
                name=f.name,
                max_bytes=f.max_bytes,
                expires=f.expires,
            )
            if f.appearing is not None:  # opened before the topic exists
                self.feed.wait_for_topic(f.appearing())
            else:
                self.feed.start()
        m = api.metrics
        if m is not None:
            m.http_requests.labels("websocket", "GET", "101").inc()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """The socket is gone: free its place among the node's connections."""
        try:
            super().connectionLost(reason)
        finally:
            self.factory.release_place()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """Release the feed (its leases lapse and are redelivered)."""
        self._gone = True
        if self.feed is not None:
            self.feed.close()

    def can_write_raw(self) -> bool:
        """Whether message frames may be written to the transport directly: the
        socket is open, and no extension (compression) changes the framing."""
        return self.state == WebSocketServerProtocol.STATE_OPEN and self._perMessageCompress is None

    def close_feed(self, code: int, reason: str) -> None:
        """The feed ended (slow client, topic deleted, shutdown): close the socket with why."""
        if self._gone:
            return
        try:
            self.transport.unregisterProducer()
        except Exception:
            pass
        try:
            self.sendClose(code, reason)
        except Exception:
            log.failure("closing a websocket failed; dropping it")
            self.dropConnection(abort=True)

    # -- client frames --------------------------------------------------------

    def _reply(self, body: dict[str, Any], ref: Any) -> None:
        if self._gone:
            return
        if ref is not None:
            body["ref"] = ref
        self.sendMessage(_encode(body), isBinary=False)

    def _error(self, e: SprawlError, ref: Any) -> None:
        body: dict[str, Any] = {"error": {"code": e.code, "message": e.message}}
        retry = getattr(e, "retry_after", None)
        if retry is not None:
            body["error"]["retry_after"] = retry
        self._reply(body, ref)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """One client request; a bad one gets an error frame and changes nothing."""
        ref = None
        try:
            try:
                frame = msgspec.json.decode(payload)
            except (msgspec.DecodeError, UnicodeDecodeError):
                raise BadRequest("frame is not valid JSON", code="invalid_json") from None
            except RecursionError:
                raise BadRequest("frame is nested too deeply", code="invalid_json") from None
            if not isinstance(frame, dict):
                raise BadRequest("frame must be a JSON object", code="invalid_frame")
            ref = frame.pop("ref", None)
            if ref is not None and not isinstance(ref, (str, int)):
                ref = None
                raise BadRequest("ref must be a string or an integer", code="invalid_frame")
            if len(frame) != 1:
                raise BadRequest("frame must have exactly one of publish, ack, nack", code="invalid_frame")
            ((op, body),) = frame.items()
            if op == "publish":
                self._publish(body, ref)
            elif op in ("ack", "nack"):
                self._settle(op, body, ref)
            else:
                raise BadRequest(f"unknown operation {op!r}; use publish, ack or nack", code="invalid_frame")
        except SprawlError as e:
            self._error(e, ref)
        except Exception:
            log.failure("websocket frame handling failed")
            self._error(SprawlError("internal error; see the node's log"), ref)

    def _publish(self, body: Any, ref: Any) -> None:
        from sprawl.http.api import parse_message

        api = self.factory.api
        broker = api.broker
        if not isinstance(body, dict):
            raise BadRequest("publish must be an object", code="invalid_frame")
        body = dict(body)
        acks = body.pop("acks", "quorum")
        if acks not in ACKS:
            raise BadRequest("acks must be one of quorum, leader, none", code="invalid_acks")
        if "messages" in body:
            msgs = body.pop("messages")
            if body:
                raise BadRequest(f"unknown field(s): {', '.join(sorted(body))}", code="invalid_field")
            if not isinstance(msgs, list) or not msgs:
                raise BadRequest("messages must be a non-empty array", code="invalid_messages")
            if len(msgs) > broker.config.max_batch_messages:
                raise PayloadTooLarge("too many messages in one publish", code="batch_too_large")
            records = [parse_message(m, i) for i, m in enumerate(msgs)]
        else:
            records = [parse_message(body, 0)]
        t = self.factory.topic
        if t is None and isinstance(self.feed, WSStream):
            t = self.feed.topic  # opened before the topic existed: None until it appears
        name = t.name if t is not None else self.factory.name
        if self.factory.principal is not None:
            self.factory.principal.require("publish", name)
        if t is None:
            # As POST .../messages: checked before the publish creates the topic.
            broker.check_writable()
            broker.check_message_sizes(records, broker.config.max_message_bytes)
            d = broker.ensure_topic(name).addCallback(lambda t: api.publish_records(t, records, acks))
        elif broker.topics.get(t.name) is not t:
            raise SprawlError("the topic was deleted", code="topic_deleted", status=410)
        else:
            d = api.publish_records(t, records, acks)
        self._inflight(1)

        def ok(res: Any) -> None:
            self._reply({"published": api._publish_answer(res, acks)}, ref)

        def failed(f: Failure) -> None:
            if isinstance(f.value, SprawlError):
                self._error(f.value, ref)
            else:
                log.failure("websocket publish failed", f)
                self._error(SprawlError("internal error; see the node's log"), ref)

        d.addCallbacks(ok, failed)
        d.addBoth(lambda _: self._inflight(-1))

    def _inflight(self, delta: int) -> None:
        self._pending += delta
        if self._gone:
            return
        if self._pending >= MAX_PENDING_PUBLISHES and not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()
        elif self._pending < MAX_PENDING_PUBLISHES // 2 and self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()

    def _settle(self, op: str, body: Any, ref: Any) -> None:
        delay: Any = 0
        ids: Any
        if isinstance(body, list):
            ids = body
        elif isinstance(body, dict):
            unknown = set(body) - {"ack_ids"} - ({"delay_ms"} if op == "nack" else set())
            if unknown:
                raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}", code="invalid_field")
            ids = body.get("ack_ids")
            delay = body.get("delay_ms", 0)
            if not isinstance(delay, int) or isinstance(delay, bool) or not 0 <= delay <= 86_400_000:
                raise BadRequest("delay_ms must be an integer 0..86400000", code="invalid_field")
        else:
            raise BadRequest(
                f"{op} must be an array of ack ids or {{'ack_ids': [...]}}", code="invalid_frame"
            )
        if not isinstance(ids, list) or not all(isinstance(a, str) for a in ids):
            raise BadRequest("ack_ids must be an array of strings", code="invalid_field")
        if len(ids) > MAX_ACK_IDS:
            raise PayloadTooLarge(f"at most {MAX_ACK_IDS} ack ids per frame", code="batch_too_large")
        feed = self.feed
        if not isinstance(feed, GroupFeed):
            raise BadRequest(f"{op} needs a socket opened with ?group=", code="no_group")
        broker = self.factory.api.broker
        t, g = feed.topic, feed.group
        if t.groups.get(g.name) is not g:
            raise SprawlError("the group was deleted", code="group_not_found", status=404)
        if self.factory.api.plane is not None:
            # Each ack id goes to the node owning its partition's group state.
            d = defer.ensureDeferred(self.factory.api.plane.groups.settle(t, g.name, ids, op != "ack", delay))
        else:
            d = broker.ack(t, g, ids) if op == "ack" else broker.nack(t, g, ids, delay)
        key = "acked" if op == "ack" else "nacked"

        def ok(refused: dict[str, str]) -> None:
            feed.settled([a for a in ids if a not in refused])
            self._reply({key: len(ids) - len(refused), "refused": refused}, ref)

        def failed(f: Failure) -> None:
            e = f.value
            self._error(e if isinstance(e, SprawlError) else SprawlError("internal error"), ref)

        d.addCallbacks(ok, failed)


def _cluster_pull(api: Any, topic: Any, group: Any) -> Any:
    """Group pulls through the cluster's group routes (None on a single node)."""
    plane = getattr(api, "plane", None)
    if plane is None:
        return None
    return lambda n, wait, mb: defer.ensureDeferred(plane.groups.pull(topic, group.name, n, wait, mb))


class SprawlWSFactory(WebSocketServerFactory):
    """Built per upgrade request, carrying what the route validated."""

    protocol = SprawlWSProtocol  # type: ignore[assignment]

    def __init__(
        self,
        api: Any,
        topic: Any,
        *,
        cursors: dict[int, int] | None = None,
        group: Any = None,
        max_in_flight: int = 100,
        slow_timeout: float = 30.0,
        ping_interval: float = 20.0,
        max_frame_bytes: int = 8 * 1000**2,
        principal: Any = None,
        name: str | None = None,
        appearing: Any = None,
        max_bytes: int = DEFAULT_READ_BYTES,
    ):
        super().__init__()
        #: Frees the socket's place among the node's connections (set when
        #: the HTTP channel hands the socket over; see SprawlWSResource).
        self.release_place: Any = lambda: None
        #: Who opened the socket (None while authentication is off).
        self.principal = principal
        #: When the principal's token expires (a JWT's ``exp``), or None.
        self.expires: float | None = getattr(principal, "expires", None)
        #: Bytes of frames one write of the feed may carry (at least one message).
        self.max_bytes = max_bytes
        self.api = api
        #: The topic, or None when the socket opens before it exists: then
        #: ``appearing()`` (called once the socket is open) gives a Deferred
        #: firing with ``(topic, cursors)`` when it is created.
        self.topic = topic
        self.name: str = topic.name if topic is not None else str(name)
        self.appearing = appearing
        self.cursors = cursors
        self.group = group
        self.max_in_flight = max_in_flight
        self.slow_timeout = slow_timeout
        self.setProtocolOptions(
            autoPingInterval=ping_interval,
            autoPingTimeout=2 * ping_interval,
            maxMessagePayloadSize=max_frame_bytes,
            maxFramePayloadSize=max_frame_bytes,
            closeHandshakeTimeout=2.0,
            # The node is reachable by any name the operator gives it.
            allowedOrigins=["*"],
        )


class SprawlWSResource(WebSocketResource):
    """autobahn's resource, plus: the HTTP channel's idle timeout and its
    producer registration are released with the transport it hands over, and
    its place among the node's connections (``--max-connections``) goes to
    the socket, freed when the socket closes."""

    def render(self, request: Any) -> Any:
        """Take the connection over from twisted.web."""
        channel = request.channel
        transport = channel.transport
        if transport is not None:
            channel.setTimeout(None)
            # The HTTPChannel registered itself as the transport's producer;
            # the feed registers instead once the handshake is done.
            transport.unregisterProducer()
            hand_over = getattr(channel, "hand_over", None)
            if hand_over is not None:
                self._factory.release_place = hand_over()
        return super().render(request)


def ws_resource(api: Any, topic: Any, **kw: Any) -> SprawlWSResource:
    """The resource that upgrades this request to a WebSocket feed of ``topic``."""
    return SprawlWSResource(SprawlWSFactory(api, topic, **kw))


def is_upgrade(request: Any) -> bool:
    """Whether the request asks for a WebSocket upgrade."""
    up = (request.getHeader(b"upgrade") or b"").lower()
    return up == b"websocket"
