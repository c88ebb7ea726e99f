"""Topic routes: ``GET /v1/topics``, ``PUT``/``GET``/``DELETE /v1/topics/{topic}``.

Definitions change through the metadata control (Raft in a cluster); a
description adds what the data plane knows of each partition's replica.
"""

from __future__ import annotations

import heapq
from typing import Any

from twisted.web.server import Request

from sprawl.errors import BadRequest
from sprawl.http.codec import arg, int_arg, json_body, linearizable
from sprawl.interfaces import MessagePlane, MetadataControl, TrafficView
from sprawl.pubsub import Broker
from sprawl.pubsub.names import NameIndex
from sprawl.topics import Topic

#: Most topics one page of ``GET /v1/topics?limit=`` holds.
MAX_PAGE = 1000


class TopicRoutes:
    """Topic definitions (see the module docstring)."""

    def __init__(
        self,
        broker: Broker,
        plane: MessagePlane,
        control: MetadataControl,
        traffic: TrafficView | None = None,
    ):
        self.broker = broker
        self.plane = plane
        self.control = control
        #: Traffic forecasts: the ``predicted_*`` fields (None: left out).
        self.traffic = traffic

    def list_topics(self, request: Request) -> object:
        """Every topic's summary, by name (``?consistency=linearizable`` waits
        for a ReadIndex).  ``?limit=N`` (1..1000) answers one page of at most
        ``N`` topics after the name ``?after=`` (exclusive), with ``next``:
        the name to pass as ``after`` for the next page, or null at the end."""
        b = self.broker
        limit = int_arg(request, "limit", None, 1, MAX_PAGE)
        after = arg(request, "after")
        if after is not None and len(after) > 249:
            raise BadRequest("query parameter after must be a topic name", code="invalid_parameter")

        def answer(_: object = None) -> dict[str, Any]:
            if limit is None and after is None:
                return {"topics": [b.summarize_topic(t) for _, t in sorted(b.topics.items())]}
            # One page: the smallest names past ``after`` (from the broker's
            # sorted names: no scan of every name), summaries of the page only.
            want = limit + 1 if limit is not None else len(b.topics)
            topics = b.topics
            if isinstance(topics, NameIndex):
                page = topics.names_after(after, want)
            else:
                page = heapq.nsmallest(want, (n for n in topics if after is None or n > after))
            more = limit is not None and len(page) > limit
            page = page[:limit] if limit is not None else page
            return {
                "topics": [b.summarize_topic(b.topics[n]) for n in page],
                "next": page[-1] if more else None,
            }

        if linearizable(request):
            return self.control.linearizable().addCallback(answer)
        return answer()

    def put_topic(self, request: Request, topic: str) -> object:
        """Create (201) or update (200) a topic."""
        body = json_body(request, required=False)

        def answer(r: tuple[Topic, bool]) -> dict[str, Any]:
            t, created = r
            request.setResponseCode(201 if created else 200)
            return self.broker.describe_topic(t)

        return self.control.put_topic(topic, body).addCallback(answer)

    def get_topic(self, request: Request, topic: str) -> object:
        """The topic's description."""
        if linearizable(request):
            return self.control.linearizable().addCallback(lambda _: self.describe(topic))
        return self.describe(topic)

    def describe(self, topic: str) -> dict[str, Any]:
        """The broker's description of ``topic``, with each partition's replica state."""
        out = self.broker.describe_topic(self.broker.get_topic(topic))
        for d in out["partition_details"]:
            d.update(self.plane.partition_view(topic, d["partition"]))
        if self.traffic is not None:
            pred = self.traffic.topic_view(topic, len(out["partition_details"]))
            for d, p in zip(out["partition_details"], pred.pop("predicted_partitions"), strict=True):
                d.update(p)
            out.update(pred)
        return out

    def delete_topic(self, request: Request, topic: str) -> object:
        """Delete a topic (204)."""

        def answer(_: object) -> bytes:
            request.setResponseCode(204)
            return b""

        return self.control.delete_topic(topic).addCallback(answer)
