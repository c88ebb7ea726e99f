"""Message routes: publish (``POST .../messages``), SSE (``GET .../stream``)
and the WebSocket upgrade (``GET .../ws``, glue to :mod:`sprawl.http.websocket`).

Fetch is :mod:`sprawl.http.fetch`.  Every query is validated before anything
starts: a bad one is a plain 4xx with the JSON error shape.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.server import Request

from sprawl.auth import Principal
from sprawl.delivery.frames import STREAM_FORMATS
from sprawl.delivery.ndjson_stream import NdjsonStream
from sprawl.delivery.streams import SSEStream
from sprawl.errors import BadRequest, SprawlError
from sprawl.http import websocket as ws
from sprawl.http.codec import (
    MAX_FETCH,
    arg,
    int_arg,
    is_upgrade,
    max_bytes_arg,
    parse_last_event_id,
    parse_messages,
    publish_answer,
    render_error,
    selection_arg,
    start_spec,
)
from sprawl.http.lean_wire import parse_lean
from sprawl.http.starts import ReadStarts
from sprawl.interfaces import Clock, MessagePlane
from sprawl.metrics import NodeMetrics
from sprawl.pubsub import Broker


def principal_of(request: Request) -> Principal | None:
    """Who made the request (None while authentication is off)."""
    return getattr(request, "sprawl_principal", None)


class MessageRoutes:
    """Publish, SSE and WebSocket (see the module docstring)."""

    def __init__(
        self,
        broker: Broker,
        plane: MessagePlane,
        starts: ReadStarts,
        clock: Clock,
        metrics: NodeMetrics | None,
        sockets: ws.SocketParts,
    ):
        self.broker = broker
        self.plane = plane
        self.starts = starts
        self.clock = clock
        self.metrics = metrics
        #: What WebSocket feeds use of the node, and their options.
        self.sockets = sockets

    def publish(self, request: Request, topic: str) -> object:
        """``POST /v1/topics/{topic}/messages``: a JSON batch or one raw body."""
        max_batch = self.broker.config.max_batch_messages
        lean = parse_lean(request, max_batch)
        records, acks = lean if lean is not None else parse_messages(request, max_batch)
        t = self.broker.topics.get(topic)
        if t is not None:  # the common case: no Deferred for the topic on the way
            return self.plane.publish(t, records, acks).addCallback(publish_answer, acks)
        # Refuse before auto-creating: a rejected publish must leave no topic behind.
        self.broker.check_writable()
        self.broker.check_message_sizes(records, self.broker.config.max_message_bytes)
        d: Deferred[Any] = self.broker.ensure_topic(topic)
        d.addCallback(lambda t: self.plane.publish(t, records, acks))
        d.addCallback(publish_answer, acks)
        return d

    def stream(self, request: Request, topic: str) -> object:
        """``GET /v1/topics/{topic}/stream``: an SSE feed (it may wait for the topic)."""
        started = time.perf_counter()
        try:
            t = self.starts.topic_or_wait(topic)
            spec, from_time = start_spec(request)
            partition = int_arg(request, "partition", None, 0, 1023)
            parts = self.starts.partitions(request, t) if t is not None else []
            resume = parse_last_event_id(request.getHeader(b"last-event-id"))
            max_bytes = max_bytes_arg(request)
            select = selection_arg(request)
            fmt = arg(request, "format") or "sse"
            if fmt not in STREAM_FORMATS:
                raise BadRequest("format must be sse, batch or ndjson", code="invalid_parameter")
        except SprawlError as e:
            return render_error(request, Failure(e))
        principal = principal_of(request)

        def go(starts: dict[int, int]) -> Any:
            s = (NdjsonStream if fmt == "ndjson" else SSEStream)(
                self.broker,
                t,
                starts,
                request,
                self.clock,
                registry=self.sockets.streams,
                slow_timeout=self.broker.config.slow_consumer_timeout,
                feeds=self.plane.feeds,
                name=topic,
                max_bytes=max_bytes,
                expires=getattr(principal, "expires", None),
                select=select,
                fmt=fmt,
            )
            if self.metrics is not None:
                self.metrics.http_request_duration.labels("stream", "GET").observe(
                    time.perf_counter() - started
                )
                self.metrics.http_requests.labels("stream", "GET", "200").inc()
            if t is None:
                return s.wait_for_topic(self.starts.when_created(topic, partition))
            return s.start()

        if t is None:
            return go({})
        d = self.starts.stream_starts(t, parts, spec, from_time, resume)
        d.addCallback(go)
        d.addErrback(_failed, request)
        return d

    def websocket(self, request: Request, topic: str) -> object:
        """``GET /v1/topics/{topic}/ws``: upgrade to a WebSocket feed.

        The query is validated before the upgrade, so a bad one is a plain
        4xx with the JSON error shape.
        """
        try:
            gname = arg(request, "group")
            # A group lives in its topic: a group feed of a missing topic is a 404.
            t = self.broker.get_topic(topic) if gname is not None else self.starts.topic_or_wait(topic)
            spec, from_time = start_spec(request)
            partition = int_arg(request, "partition", None, 0, 1023)
            parts = self.starts.partitions(request, t) if t is not None else []
            lei = arg(request, "last_event_id")
            if lei is not None and not lei:
                raise BadRequest("last_event_id must be PARTITION:OFFSET", code="invalid_last_event_id")
            resume = parse_last_event_id(lei.encode() if lei else None)
            max_in_flight = int_arg(request, "max_in_flight", 100, 1, MAX_FETCH) or 100
            max_bytes = max_bytes_arg(request)
            select = selection_arg(request)
            feed = arg(request, "feed")
            if feed not in (None, "none"):
                raise BadRequest("feed must be none (a socket that only publishes)", code="invalid_parameter")
            if feed == "none" and (gname is not None or spec is not None or from_time is not None or resume):
                raise BadRequest(
                    "feed=none takes no group, from, from_time or last_event_id", code="invalid_parameter"
                )
            g = None
            if gname is not None and select is not None:
                raise BadRequest(
                    "filter and fields apply to cursor mode; a group filters with POST .../pull?filter=",
                    code="invalid_parameter",
                )
            if gname is not None:
                if spec is not None or from_time is not None or resume:
                    raise BadRequest(
                        "group mode starts where the group is; from/from_time/last_event_id do not apply",
                        code="invalid_parameter",
                    )
                assert t is not None
                g = self.broker.get_group(t, gname)
            if not is_upgrade(request):
                raise SprawlError(
                    "this route speaks WebSocket: send an Upgrade: websocket request",
                    code="upgrade_required",
                    status=426,
                )
        except SprawlError as e:
            if e.status == 426:
                request.setHeader(b"upgrade", b"websocket")
            return render_error(request, Failure(e))
        principal = principal_of(request)
        sockets = self.sockets
        if feed == "none":  # a socket for publish frames only (pipelined publishes)
            return ws.ws_resource(sockets, t, name=topic, principal=principal, max_bytes=max_bytes)
        if g is not None:
            return ws.ws_resource(
                sockets, t, group=g, max_in_flight=max_in_flight, principal=principal, max_bytes=max_bytes
            )
        if t is None:
            return ws.ws_resource(
                sockets,
                None,
                name=topic,
                appearing=lambda: self.starts.when_created(topic, partition),
                principal=principal,
                max_bytes=max_bytes,
                select=select,
            )
        topic_ = t

        def go(starts: dict[int, int]) -> Any:
            return ws.ws_resource(
                sockets, topic_, cursors=starts, principal=principal, max_bytes=max_bytes, select=select
            )

        d = self.starts.stream_starts(t, parts, spec, from_time, resume)
        d.addCallback(go)
        d.addErrback(_failed, request)
        return d


def _failed(f: Failure, request: Request) -> Any:
    """A stream's start failed: the error answer, unless the client left."""
    if request.finished or request._disconnected:
        return None
    return render_error(request, f)
