"""The seed-compatible (legacy) routes: ``POST /publish``, ``POST /subscribe``,
``GET /status``, ``/health``, ``/topics``, ``/dht`` and ``/store``.

They keep the seed's shapes and go through the same paths as the v1 routes
(publishes through the data plane, groups through the metadata control).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.web.server import Request

from sprawl import __version__
from sprawl.errors import BadRequest
from sprawl.http.codec import check_id, encode, json_body, unwrap_first_error
from sprawl.http.status import NodeStatus
from sprawl.interfaces import MessagePlane, MetadataControl
from sprawl.log.record import Record
from sprawl.pubsub import Broker, check_group_name, check_topic_name


class SeedRoutes:
    """The legacy routes (see the module docstring)."""

    def __init__(self, broker: Broker, plane: MessagePlane, control: MetadataControl, status: NodeStatus):
        self.broker = broker
        self.plane = plane
        self.control = control
        self.status = status

    def seed_publish(self, request: Request) -> object:
        """``POST /publish``: one message, ``{"topic", "payload", "id"?, "ttl"?}``."""
        body = json_body(request)
        topic = body.get("topic")
        if not isinstance(topic, str):
            raise BadRequest("topic must be a string", code="invalid_field")
        if "payload" not in body:
            raise BadRequest("payload is required", code="invalid_field")
        payload = body["payload"]
        try:
            data = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else encode(payload)
        except RecursionError:
            raise BadRequest("payload is nested too deeply", code="invalid_field") from None
        mid = body.get("id")
        if mid is not None:
            check_id(mid, 0)
        headers = None
        ttl = body.get("ttl")
        if ttl is not None:
            if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or ttl < 0:
                raise BadRequest("ttl must be a non-negative number of seconds", code="invalid_field")
            headers = {"ttl": str(ttl)}
        rec = Record(-1, 0, 0, mid, None, headers, data, True)
        d: Deferred[Any] = self.broker.ensure_topic(topic)
        d.addCallback(lambda t: self.plane.publish(t, [rec], "quorum"))
        return d.addCallback(
            lambda r: {
                "status": "published",
                "id": r.ids[0],
                "offset": r.offsets[0],
                "partition": r.partitions[0],
            }
        )

    def seed_subscribe(self, request: Request) -> object:
        """``POST /subscribe``: a group (``id``) on each of ``topics``."""
        body = json_body(request)
        topics = body.get("topics")
        if not isinstance(topics, list) or not topics or not all(isinstance(x, str) for x in topics):
            raise BadRequest("topics must be a non-empty array of topic names", code="invalid_field")
        gid = body.get("id")
        if gid is None:
            gid = "sub-" + uuid.uuid4().hex[:12]
        if not isinstance(gid, str):
            raise BadRequest("id must be a string", code="invalid_field")
        check_group_name(gid)
        for name in topics:
            check_topic_name(name)

        def one(name: str) -> Deferred[Any]:
            # The same path as PUT .../groups/{group}: through Raft in a cluster.
            d = self.broker.ensure_topic(name)
            return d.addCallback(
                lambda t: self.control.put_group(t, gid, {}) if gid not in t.groups else None
            )

        d: Deferred[Any] = gatherResults([one(n) for n in topics], consumeErrors=True)
        d.addErrback(unwrap_first_error)
        return d.addCallback(lambda _: {"status": "subscribed", "id": gid, "topics": topics})

    def seed_status(self, request: Request) -> object:
        """``GET /status``: readiness, members, topics and Raft in the seed's shape."""
        ok, why = self.status.readiness()
        info = self.status.info
        return {
            "status": "ok" if ok else "degraded",
            "reason": why,
            "node_id": info.node_id,
            "version": __version__,
            "uptime_s": round(time.time() - info.started, 3),
            "cluster_members": self.status.members(),
            "topics": len(self.broker.topics),
            "raft": self.status.cluster()["raft"],
        }

    def seed_health(self, request: Request) -> object:
        """``GET /health``."""
        return {"status": "healthy", "node_id": self.status.info.node_id}

    def seed_topics(self, request: Request) -> object:
        """``GET /topics``: every topic's summary."""
        b = self.broker
        return {"topics": [b.summarize_topic(t) for _, t in sorted(b.topics.items())]}

    def seed_dht(self, request: Request) -> object:
        """``GET /dht``: the placement and the live members."""
        out = self.status.placement()
        out["node_id"] = self.status.info.node_id
        out["members"] = self.status.live_member_ids()
        return out

    def seed_store(self, request: Request) -> object:
        """``GET /store``: LMDB, memory and S3 figures, and each partition's tiers."""
        b = self.broker
        return {
            "node_id": self.status.info.node_id,
            "lmdb": {
                "path": b.store.path,
                "used_bytes": b.store.used_bytes,
                "disk_budget": b.config.disk_budget,
                "disk_hard_limit": b.disk_hard_limit,
                "commits": b.store.commits,
            },
            "memory": {
                "hot_bytes": sum(lg.hot_bytes for t in b.topics.values() for lg in t.logs),
                "memory_budget": b.config.memory_budget,
            },
            "s3": b.tier.describe() if b.tier is not None else {"enabled": False},
            "topics": {
                name: {str(p["partition"]): p["tiers"] for p in b.describe_topic(t)["partition_details"]}
                for name, t in sorted(b.topics.items())
            },
        }
