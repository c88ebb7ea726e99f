"""What the node says about itself: identity, members, Raft, readiness.

:class:`NodeInfo` is filled by the composition root; :class:`NodeStatus`
turns it, the broker and the data plane into the JSON of ``GET /v1/cluster``,
``/v1/cluster/placement``, ``/readyz``, the seed ``/status`` and ``/dht``
routes, and the dashboard's snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sprawl import __version__
from sprawl.errors import SprawlError
from sprawl.interfaces import MemberList, MessagePlane, RaftStatus, TrafficView
from sprawl.pubsub import Broker


class NodeInfo:
    """What the API says about the node itself (filled by the composition root)."""

    def __init__(
        self,
        node_id: str,
        http: str = "",
        peer: str = "",
        started: float = 0.0,
        *,
        membership: MemberList | None = None,
        raft: RaftStatus | None = None,
        readiness_checks: list[Callable[[], str | None]] | None = None,
    ):
        self.node_id = node_id
        self.http = http
        self.peer = peer
        self.started = started or time.time()
        self.ready = False
        self.not_ready_reason = "starting"
        #: The gossip membership, or None: then the node reports itself alone.
        self.membership = membership
        #: The cluster control, or None: then the node reports a single-node cluster it leads.
        self.raft = raft
        #: More readiness conditions: each returns why the node is not ready, or None
        #: (the S3 tier's bucket watch, :mod:`sprawl.storage.bucket_watch`).
        self.readiness_checks: list[Callable[[], str | None]] = list(readiness_checks or [])
        #: The node's named faults (:meth:`sprawl.cluster.fault_watch.FaultWatch.view`), or None:
        #: then only this node's own disk is checked (a lone broker, the in-process tests).
        self.faults: Callable[[], dict[str, Any]] | None = None
        #: The cluster feature gate's view (:func:`sprawl.cluster.features.cluster_gate`), or None.
        self.features: Callable[[], dict[str, Any]] | None = None
        #: Why a pipeline run here is stalled (:meth:`sprawl.cluster.pipeline_loop.PipelineLoop.stalled`;
        #: set by the node once its pipeline loop exists), or None.
        self.pipeline_stalled: Callable[[str], str | None] | None = None

    def watching_faults(
        self, faults: Callable[[], dict[str, Any]], features: Callable[[], dict[str, Any]]
    ) -> None:
        """The node's fault watch and the cluster feature gate's view (built after the
        API on this info, on the cluster parts: the composition root hands them over)."""
        self.faults = faults
        self.features = features

    def serving_http(self, url: str) -> None:
        """The node's HTTP API answers at ``url`` (known only once it listens,
        after the API built on this info: the composition root says it here)."""
        self.http = url


def require_feature(info: NodeInfo, feature: str, what: str) -> None:
    """Refuse a change (409 ``feature_not_enabled``) unless every node of the cluster has
    ``feature`` (:attr:`NodeInfo.features`, see :mod:`sprawl.cluster.features`; without the
    gate's view -- a lone broker -- nothing is refused); ``what`` names the refused change."""
    features = info.features() if info.features is not None else None
    if features is not None and feature not in features.get("enabled", ()):
        lacking = ", ".join(features.get("pending", {}).get(feature, [])) or "some node"
        raise SprawlError(
            f"{what} is not on in this cluster yet: {lacking} runs a release without it (a node of an "
            "older release could not apply the change); upgrade every node first",
            code="feature_not_enabled",
            status=409,
        )


class NodeStatus:
    """The node's cluster view and readiness, as the API answers them."""

    def __init__(
        self, info: NodeInfo, broker: Broker, plane: MessagePlane, traffic: TrafficView | None = None
    ):
        self.info = info
        self.broker = broker
        self.plane = plane
        #: Traffic forecasts: each member's ``predicted_load*`` (None: left out).
        self.traffic = traffic

    def member(self) -> dict[str, Any]:
        """This node as a member (when no gossip runs)."""
        return {
            "id": self.info.node_id,
            "peer": self.info.peer,
            "http": self.info.http,
            "state": "alive",
            "incarnation": 0,
            "version": __version__,
        }

    def members(self) -> list[dict[str, Any]]:
        """Every member gossip knows (this node included), or this node alone."""
        m = self.info.membership
        views = [self.member()] if m is None else list(m.member_views())
        if self.traffic is not None:
            predicted = self.traffic.member_fields()
            for v in views:
                v.update(predicted.get(str(v.get("id")), {}))
        return views

    def live_member_ids(self) -> list[str]:
        """The ids of the live members (this node alone without gossip)."""
        m = self.info.membership
        if m is None:
            return [self.info.node_id]
        return list(m.live_member_ids())

    def cluster(self) -> dict[str, Any]:
        """``GET /v1/cluster``: the leader, term, members and Raft state."""
        nid = self.info.node_id
        raft = self.info.raft
        if raft is None:
            return {
                "node_id": nid,
                "leader": nid,
                "term": 1,
                "mode": "single-node",
                "members": self.members(),
                "raft": {
                    "role": "leader",
                    "term": 1,
                    "commit_index": 0,
                    "applied": 0,
                    "voters": [nid],
                    "learners": [],
                    "target_voters": 1,
                    "live_voters": 1,
                    "fault_tolerance": 0,
                    "fault_tolerant": True,
                },
            }
        view = raft.raft_view()
        out = {
            "node_id": nid,
            "leader": view.get("leader") or None,
            "term": view["term"],
            "members": self.members(),
            "raft": view,
        }
        summary = self.plane.summary()
        if summary is not None:
            out["partitions"] = summary
        out["drained"] = list(getattr(raft.metadata, "drained", ()))
        if self.info.features is not None:
            out["features"] = self.info.features()
        return out

    def faults(self) -> dict[str, Any]:
        """``GET /v1/cluster/faults``: the faults this node names (see
        :mod:`sprawl.cluster.diagnosis`)."""
        if self.info.faults is not None:
            return self.info.faults()
        from sprawl.cluster.diagnosis import Diagnosis, DiskObs, Observation

        store = self.broker.store
        obs = Observation(
            self.info.node_id,
            int(time.time() * 1000),
            disk=DiskObs(int(store.used_bytes), int(self.broker.disk_hard_limit)),
        )
        return {
            "node_id": self.info.node_id,
            "checked_at": time.time(),
            "faults": [f.as_dict() for f in Diagnosis().diagnose(obs)],
        }

    def placement(self) -> dict[str, Any]:
        """``GET /v1/cluster/placement``: replicas, leader and epoch of every partition."""
        return {
            "topics": {
                name: {
                    str(lg.partition): {"replicas": list(lg.replicas), "leader": lg.leader, "epoch": lg.epoch}
                    for lg in t.logs
                }
                for name, t in sorted(self.broker.topics.items())
            }
        }

    def readiness(self, fault_tolerant: bool = False) -> tuple[bool, str]:
        """Whether the node is ready to serve, and why not."""
        if self.broker.stopping:
            return False, "node is stopping"
        if self.broker.store.failed is not None:
            return False, f"storage failed: {self.broker.store.failed}"
        for check in self.info.readiness_checks:
            why = check()
            if why:
                return False, why
        if not self.info.ready:
            return False, self.info.not_ready_reason
        m = self.info.membership
        raft = self.info.raft
        if m is not None and not m.joined and not (raft.forced if raft is not None else ""):
            # (a node that forced a new cluster founded it: its seeds may be gone)
            return False, "joining the cluster: no seed has answered yet"
        if raft is not None and not raft.leader_name:
            return False, "no Raft leader known (election in progress, or no quorum of voters reachable)"
        if fault_tolerant and raft is not None:
            st = raft.strength()
            if not st.fault_tolerant:
                return False, (
                    f"not fault-tolerant yet: {st.voters} Raft voters ({st.live_voters} up) of a target of "
                    f"{st.target}; fault tolerance {st.fault_tolerance}"
                )
        damaged = self.broker.integrity.not_ready_reason()
        if damaged is not None:
            return False, damaged
        return True, "ready"

    def leader(self) -> str:
        """The Raft leader's id (this node without Raft)."""
        return self.info.raft.leader_name if self.info.raft is not None else self.info.node_id
