"""Consumer-group routes: ``PUT``/``GET``/``DELETE .../groups/{group}`` and
``POST .../groups/{group}/pull|ack|nack|extend``.

Definitions change through the metadata control; pulls, acks, nacks and
lease extensions go
through the data plane's group router (each partition's owner in a cluster,
the broker on a lone node).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.web.server import Request

from sprawl.delivery.groups import MAX_EXTEND_MS, ConsumerGroup, Delivery
from sprawl.errors import BadRequest
from sprawl.http.codec import JSON, MAX_FETCH, MAX_WAIT_MS, ack_ids, json_body, leased, selection_arg
from sprawl.http.messages import principal_of
from sprawl.interfaces import MessagePlane, MetadataControl
from sprawl.log.record import DEFAULT_READ_BYTES, MAX_READ_BYTES, Record
from sprawl.metrics import NodeMetrics
from sprawl.pubsub import Broker
from sprawl.pubsub.filters import Selection
from sprawl.pubsub.groups import nothing_extended
from sprawl.topics import Topic


def _int_field(body: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    v = body.get(name, default)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise BadRequest(f"{name} must be an integer {lo}..{hi}", code="invalid_field")
    return v


class ConsumerGroupRoutes:
    """Consumer groups over HTTP (see the module docstring)."""

    def __init__(
        self, broker: Broker, plane: MessagePlane, control: MetadataControl, metrics: NodeMetrics | None
    ):
        self.broker = broker
        self.plane = plane
        self.control = control
        self.metrics = metrics

    def put_group(self, request: Request, topic: str, group: str) -> object:
        """Create (201) or update (200) a group; the topic is auto-created if allowed."""
        body = json_body(request, required=False)
        # Validate before ensure_topic: a bad request must not create the topic.
        existing = self.broker.topics.get(topic)
        old = existing.groups.get(group) if existing else None
        self.broker.group_config_from(topic, group, body, old.config if old else None)
        dlq = body.get("dead_letter_topic")
        principal = principal_of(request)
        if principal is not None and dlq is not None:
            # The group will publish there: whoever sets it up must be allowed to.
            principal.require("publish", dlq)
        d = self.broker.ensure_topic(topic)

        def made(t: Topic) -> Deferred[dict[str, Any]]:
            def answer(r: tuple[ConsumerGroup, bool]) -> dict[str, Any]:
                g, created = r
                request.setResponseCode(201 if created else 200)
                return g.describe(t.high_watermarks())

            return self.control.put_group(t, group, body).addCallback(answer)

        return d.addCallback(made)

    def get_group(self, request: Request, topic: str, group: str) -> object:
        """The group's description (cursors from each partition's owner)."""
        t = self.broker.get_topic(topic)
        self.broker.get_group(t, group)
        return defer.ensureDeferred(self.plane.groups.describe(t, group))

    def delete_group(self, request: Request, topic: str, group: str) -> object:
        """Forget a group (204)."""
        t = self.broker.get_topic(topic)

        def answer(_: object) -> bytes:
            request.setResponseCode(204)
            return b""

        return self.control.delete_group(t, group).addCallback(answer)

    def pull(self, request: Request, topic: str, group: str) -> object:
        """Lease up to ``max`` messages, waiting up to ``wait_ms`` for some."""
        body = json_body(request, required=False)
        unknown = set(body) - {"max", "wait_ms", "max_bytes"}
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}", code="invalid_field")
        mx = _int_field(body, "max", 10, 1, MAX_FETCH)
        wait_ms = _int_field(body, "wait_ms", 0, 0, MAX_WAIT_MS)
        max_bytes = _int_field(body, "max_bytes", DEFAULT_READ_BYTES, 1, MAX_READ_BYTES)
        select = selection_arg(request)
        t = self.broker.get_topic(topic)
        self.broker.get_group(t, group)
        d = defer.ensureDeferred(self.plane.groups.pull(t, group, mx, wait_ms, max_bytes))
        request.notifyFinish().addErrback(lambda _: d.cancel())
        if select is not None:
            d.addCallback(self._selected, select, t, group)

        def answer(got: list[tuple[Delivery, Record]]) -> bytes:
            parts = [leased(dv, r) for dv, r in got]
            m = self.metrics
            if m is not None and got:
                m.delivered(topic, "group", len(got), sum(r.message_bytes for _, r in got))
            request.setHeader(b"content-type", JSON)
            return b'{"messages":[' + b",".join(parts) + b"]}"

        return d.addCallback(answer)

    def _selected(
        self, got: list[tuple[Delivery, Record]], select: Selection, t: Topic, group: str
    ) -> Deferred[list[tuple[Delivery, Record]]]:
        """The leases of a filtered pull: those the filter selects (shaped by ``fields``); the
        others are acked here, by the node, so the group moves past them."""
        kept: list[tuple[Delivery, Record]] = []
        skipped: list[str] = []
        for dv, r in got:
            shaped = select.one(r)
            if shaped is None:
                skipped.append(dv.ack_id)
            else:
                kept.append((dv, shaped))
        if not skipped:
            return defer.succeed(kept)
        d = defer.ensureDeferred(self.plane.groups.settle(t, group, skipped, False))
        return d.addCallback(lambda _: kept)

    def ack(self, request: Request, topic: str, group: str) -> object:
        """Ack deliveries: ``{"acked", "refused"}``."""
        ids = ack_ids(json_body(request), set())
        t = self.broker.get_topic(topic)
        self.broker.get_group(t, group)
        d = defer.ensureDeferred(self.plane.groups.settle(t, group, ids, False))
        return d.addCallback(lambda refused: {"acked": len(ids) - len(refused), "refused": refused})

    def nack(self, request: Request, topic: str, group: str) -> object:
        """Nack deliveries for redelivery after ``delay_ms``: ``{"nacked", "refused"}``."""
        body = json_body(request)
        ids = ack_ids(body, {"delay_ms"})
        delay = body.get("delay_ms", 0)
        if not isinstance(delay, int) or isinstance(delay, bool) or not 0 <= delay <= 86_400_000:
            raise BadRequest("delay_ms must be an integer 0..86400000", code="invalid_field")
        t = self.broker.get_topic(topic)
        self.broker.get_group(t, group)
        d = defer.ensureDeferred(self.plane.groups.settle(t, group, ids, True, delay))
        return d.addCallback(lambda refused: {"nacked": len(ids) - len(refused), "refused": refused})

    def extend(self, request: Request, topic: str, group: str) -> object:
        """Extend leases to now + ``extend_ms`` (default: the group's
        ``ack_deadline_ms``): ``{"extended", "refused", "ack_deadlines"}``.  When
        not one id could be extended the answer is an error naming why (see
        :func:`~sprawl.pubsub.groups.nothing_extended`)."""
        body = json_body(request)
        ids = ack_ids(body, {"extend_ms"})
        t = self.broker.get_topic(topic)
        g = self.broker.get_group(t, group)
        extend_ms = _int_field(body, "extend_ms", g.config.ack_deadline_ms, 1, MAX_EXTEND_MS)
        d = defer.ensureDeferred(self.plane.groups.extend(t, group, ids, extend_ms))

        def answer(r: tuple[dict[str, str], dict[str, int]]) -> dict[str, Any]:
            refused, deadlines = r
            if ids and not deadlines:
                raise nothing_extended(refused)
            return {"extended": len(deadlines), "refused": refused, "ack_deadlines": deadlines}

        return d.addCallback(answer)
