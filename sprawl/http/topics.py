"""Topic routes: ``GET /v1/topics``, ``PUT``/``GET``/``DELETE /v1/topics/{topic}``.

Definitions change through the metadata control (Raft in a cluster); a
description adds what the data plane knows of each partition's replica.
"""

from __future__ import annotations

from typing import Any

from twisted.web.server import Request

from sprawl.http.codec import json_body, linearizable
from sprawl.interfaces import MessagePlane, MetadataControl, TrafficView
from sprawl.pubsub import Broker
from sprawl.topics import Topic


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
        """Every topic's summary (``?consistency=linearizable`` waits for a ReadIndex)."""
        b = self.broker

        def answer(_: object = None) -> dict[str, Any]:
            return {"topics": [b.summarize_topic(t) for _, t in sorted(b.topics.items())]}

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
