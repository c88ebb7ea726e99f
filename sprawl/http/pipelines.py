"""Pipeline routes: ``GET /v1/pipelines``, ``PUT``/``GET``/``DELETE /v1/pipelines/{name}``
(derived topics, issue 17).

A pipeline is declared in the Raft metadata (the ``put_pipeline`` command, which also
creates its position, the consumer group ``pipeline.NAME`` on the source) and run by
the node leading each source partition (:mod:`sprawl.cluster.pipeline_loop`).  A
declaration is answered once committed and applied here.  It is refused (409
``feature_not_enabled``) until every node of the cluster has the ``pipelines`` feature,
so a node of an older release never meets the command; a bad definition is a 400 that
changes nothing.  Descriptions add the lag as this node sees it: exact for the source
partitions it leads, the last checkpoint's for the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.web.server import Request

from sprawl.errors import BadRequest, NotFound, SprawlError
from sprawl.http.codec import json_body, linearizable
from sprawl.http.status import NodeInfo, require_feature
from sprawl.interfaces import MetadataControl, RaftStatus
from sprawl.pubsub import Broker
from sprawl.pubsub.names import check_topic_name
from sprawl.pubsub.pipelines import MAX_NAME, PipelineSpec

#: The cluster feature a pipeline command needs on every node.
FEATURE = "pipelines"
#: ... and the one a definition with ``on_reject`` other than ``stall`` needs.
REJECT_FEATURE = "pipeline-reject"
#: How a new pipeline's position group leases: long enough for a round's publish with
#: quorum acks; a round that outlives it is re-run, and its re-publish deduplicated.
GROUP_CONFIG = {"start": "earliest", "ack_deadline_ms": 60_000}


def group_of(name: str) -> str:
    """The consumer group holding a pipeline's position (as the runner names it)."""
    return f"pipeline.{name}"


def _check_name(name: str) -> None:
    check_topic_name(name)
    if len(name) > MAX_NAME:
        raise BadRequest(f"pipeline names are at most {MAX_NAME} characters", code="invalid_field")


class PipelineRoutes:
    """Pipeline definitions (see the module docstring)."""

    def __init__(self, broker: Broker, info: NodeInfo, control: MetadataControl) -> None:
        self.broker = broker
        self.info = info
        self.control = control
        #: This node's running pipelines: name -> {partition: lag} of the source
        #: partitions it runs (set by the node once its pipeline loop exists).
        self.running: Callable[[str], dict[int, int]] | None = None

    def _raft(self) -> RaftStatus:
        raft = self.info.raft
        if raft is None:
            raise SprawlError(
                "pipelines are declared in the cluster metadata: this node runs without it",
                code="not_clustered",
                status=409,
            )
        return raft

    def _declared(self) -> dict[str, dict[str, Any]]:
        raft = self.info.raft
        return dict(raft.metadata.pipelines) if raft is not None else {}

    def _describe(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The definition, with its lag as this node sees it."""
        name = spec["pipeline"]
        out = {"on_reject": "stall", "dead_letter_topic": None, **spec}
        stalled = self.info.pipeline_stalled
        out["stalled"] = stalled(name) if stalled is not None else None
        t = self.broker.topics.get(spec["source"])
        g = t.groups.get(group_of(name)) if t is not None else None
        out["lag"] = g.lag(t.high_watermarks()) if t is not None and g is not None else None
        here = self.running(name) if self.running is not None else {}
        out["running_here"] = sorted(here)
        return out

    def list_pipelines(self, request: Request) -> object:
        """Every declared pipeline, by name."""

        def answer(_: object = None) -> dict[str, Any]:
            return {"pipelines": [self._describe(s) for _, s in sorted(self._declared().items())]}

        if linearizable(request):
            return self.control.linearizable().addCallback(answer)
        return answer()

    def get_pipeline(self, request: Request, name: str) -> object:
        """One pipeline's definition and lag (404 ``pipeline_not_found``)."""
        _check_name(name)
        spec = self._declared().get(name)
        if spec is None:
            raise NotFound(f"pipeline {name!r} does not exist", code="pipeline_not_found")
        return self._describe(spec)

    def put_pipeline(self, request: Request, name: str) -> object:
        """Declare (201) or change (200) a pipeline."""
        spec = PipelineSpec.from_body(name, json_body(request))
        raft = self._raft()
        require_feature(self.info, FEATURE, "pipelines")
        if spec.on_reject != "stall":
            require_feature(self.info, REJECT_FEATURE, f'on_reject "{spec.on_reject}"')
        roles = (
            ("source", spec.source),
            ("target", spec.target),
            ("dead_letter_topic", spec.dead_letter_topic),
        )
        for role, topic in roles:
            if topic is not None and topic not in raft.metadata.topics:
                raise BadRequest(f"{role} topic {topic!r} does not exist", code="topic_not_found")
        config = self.broker.group_config_from(spec.source, group_of(name), dict(GROUP_CONFIG), None)
        cmd = {"op": "put_pipeline", "name": name, "spec": spec.to_dict(), "group_config": config.to_dict()}

        def answer(result: dict[str, Any]) -> dict[str, Any]:
            err = result.get("error")
            if err:
                raise SprawlError(err["message"], code=err["code"], status=err["status"])
            request.setResponseCode(201 if result.get("created") else 200)
            return self._describe(result["pipeline"])

        return raft.propose(cmd).addCallback(answer)

    def delete_pipeline(self, request: Request, name: str) -> object:
        """Forget a pipeline and its position (204); what it wrote stays in the target."""
        _check_name(name)
        raft = self._raft()
        if name not in self._declared():
            raise NotFound(f"pipeline {name!r} does not exist", code="pipeline_not_found")
        require_feature(self.info, FEATURE, "pipelines")

        def answer(result: dict[str, Any]) -> bytes:
            err = result.get("error")
            if err:
                raise SprawlError(err["message"], code=err["code"], status=err["status"])
            request.setResponseCode(204)
            return b""

        return raft.propose({"op": "delete_pipeline", "name": name}).addCallback(answer)
