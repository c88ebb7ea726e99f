"""Admin routes: the cluster view, damaged ranges, health and readiness,
Prometheus metrics, and the dashboard (its page, static files and live feed).
"""

from __future__ import annotations

import re
from typing import Any

from twisted.python.failure import Failure
from twisted.web.server import Request

from sprawl.errors import BadRequest, NotFound, SprawlError
from sprawl.http import dashboard as dashboard_ui
from sprawl.http.codec import arg, json_body, linearizable, render_error
from sprawl.http.status import NodeStatus, require_feature
from sprawl.interfaces import Clock, MetadataControl, TrafficView
from sprawl.metrics import NodeMetrics
from sprawl.pubsub import Broker
from sprawl.pubsub.memory_report import memory_warning

#: What a node id may be (as the cluster metadata checks it).
_NODE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")


class AdminRoutes:
    """The node's admin surface (see the module docstring)."""

    def __init__(
        self,
        broker: Broker,
        status: NodeStatus,
        control: MetadataControl,
        clock: Clock,
        metrics: NodeMetrics | None,
        traffic: TrafficView | None = None,
    ):
        self.broker = broker
        self.status = status
        self.control = control
        self.clock = clock
        self.metrics = metrics
        #: Open dashboard feeds (``GET /v1/dashboard/stream``).
        self.dashboards: set[dashboard_ui.DashboardStream] = set()
        #: Traffic forecasts (None when the node runs without them).
        self.traffic = traffic

    # -- cluster -------------------------------------------------------------------------

    def cluster(self, request: Request) -> object:
        """``GET /v1/cluster`` (its partition counts judged in slices first:
        :meth:`~sprawl.interfaces.MessagePlane.summary_ready`)."""
        if linearizable(request):
            d = self.control.linearizable().addCallback(lambda _: self.status.plane.summary_ready())
        else:
            d = self.status.plane.summary_ready()
        return d.addCallback(lambda _: self.status.cluster())

    def placement(self, request: Request) -> object:
        """``GET /v1/cluster/placement``."""
        return self.status.placement()

    def set_drained(self, request: Request, node: str, drained: bool) -> object:
        """``POST /v1/cluster/nodes/{node}/drain`` (and ``/undrain``): mark a
        node drained in the Raft metadata -- the controller moves every
        partition leadership off it and places no new replica on it; it keeps
        running and keeps its replicas -- or not.  Answered once committed."""
        if not _NODE_ID.match(node):
            raise BadRequest(f"{node[:80]!r} is not a node id", code="invalid_parameter")
        raft = self.status.info.raft
        if raft is None:
            raise SprawlError(
                "a single node has nothing to move its partitions to: drain is for cluster members",
                code="not_clustered",
                status=409,
            )
        require_feature(self.status.info, "drain", "drain")

        def answer(result: dict[str, Any]) -> dict[str, Any]:
            err = result.get("error")
            if err:
                raise SprawlError(err["message"], code=err["code"], status=err["status"])
            return {"node_id": node, "drained": drained, "changed": bool(result.get("changed"))}

        return raft.propose({"op": "set_drained", "node_id": node, "drained": drained}).addCallback(answer)

    def cluster_load(self, request: Request) -> object:
        """``GET /v1/cluster/load``: present and predicted load per node,
        partition and topic, and the latest traffic anomalies."""
        if self.traffic is None:
            raise SprawlError(
                "traffic forecasting is off on this node (--forecast false)", code="forecast_off", status=409
            )
        return {"node_id": self.status.info.node_id, **self.traffic.load_view()}

    def faults(self, request: Request) -> object:
        """``GET /v1/cluster/faults``: the faults this node names, worst first."""
        return self.status.faults()

    # -- damaged ranges ------------------------------------------------------------------------

    def damage(self, request: Request) -> object:
        """This node's damaged and skipped ranges, and the background scrub's progress."""
        ig = self.broker.integrity
        return {
            "node_id": self.status.info.node_id,
            "ranges": ig.ranges(),
            "damaged": ig.map.count("damaged"),
            "skipped": ig.map.count("skipped"),
            "found": dict(ig.found),
            "repaired": ig.repaired,
            "skipped_total": ig.skipped,
            "scrub": ig.scrubber.view() if ig.scrubber is not None else {"enabled": False},
        }

    def scrub_now(self, request: Request) -> object:
        """Start a scrub pass now (or right after the running one)."""
        sc = self.broker.integrity.scrubber
        if sc is None or not sc.enabled:
            raise SprawlError("the scrub is off on this node (--scrub-rate 0)", code="scrub_off", status=409)
        request.setResponseCode(202)
        return {"pass": sc.run_now(), "scrub": sc.view()}

    def skip_damage(self, request: Request, topic: str) -> object:
        """An operator gives up a damaged range of this node's copy of a
        partition (nothing to repair it from): readers pass over it."""
        body = json_body(request)
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object", code="invalid_body")
        t = self.broker.get_topic(topic)
        fields = {}
        for name in ("partition", "first_offset", "last_offset"):
            v = body.get(name)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**63:
                raise BadRequest(f"{name} must be a non-negative integer", code="invalid_parameter")
            fields[name] = v
        if fields["partition"] >= len(t.logs):
            raise NotFound(
                f"topic {topic!r} has no partition {fields['partition']}", code="partition_not_found"
            )
        if fields["last_offset"] < fields["first_offset"]:
            raise BadRequest("last_offset must not be below first_offset", code="invalid_parameter")
        d = self.broker.integrity.skip(t, fields["partition"], fields["first_offset"], fields["last_offset"])
        return d.addCallback(lambda e: {"skipped": e})

    # -- health and metrics ------------------------------------------------------------------

    def healthz(self, request: Request) -> object:
        """``GET /healthz``: the process answers."""
        return {"status": "ok", "node_id": self.status.info.node_id}

    def readyz(self, request: Request) -> object:
        """``GET /readyz``: 200 when ready to serve (``?fault_tolerant=1``: and
        the voter target reached with every voter up), else 503 with why."""
        flag = arg(request, "fault_tolerant")
        if flag not in (None, "0", "1", "true", "false"):
            raise BadRequest("query parameter fault_tolerant must be 1 or 0", code="invalid_parameter")
        ok, why = self.status.readiness(fault_tolerant=flag in ("1", "true"))
        if not ok:
            request.setResponseCode(503)
            return {"ready": False, "reason": why, "error": {"code": "not_ready", "message": why}}
        answer = {"ready": True, "leader": self.status.leader(), "node_id": self.status.info.node_id}
        # Warnings do not make the node unready (it still serves): they tell the operator.
        memory = memory_warning(self.broker)
        if memory is not None:
            answer["warnings"] = [memory]
        return answer

    def metrics_text(self, request: Request) -> object:
        """``GET /metrics``: the Prometheus text format, gzipped if the scraper takes gzip."""
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        if self.metrics is None:
            return b""
        request.setHeader(b"vary", b"Accept-Encoding")

        def send(answer: tuple[bytes, bytes | None]) -> bytes:
            body, encoding = answer
            if encoding is not None:
                request.setHeader(b"content-encoding", encoding)
            return body

        # (in steps: the reactor turns between slices of the partitions' lines, tidy41)
        return self.metrics.scrape_in_steps(request.getHeader(b"accept-encoding"), self.clock).addCallback(
            send
        )

    # -- dashboard ------------------------------------------------------------------------

    def dashboard(self, request: Request) -> object:
        """``GET /``: the dashboard page."""
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"content-security-policy", dashboard_ui.CSP)
        request.setHeader(b"x-content-type-options", b"nosniff")
        return dashboard_ui.index_html()

    def static(self, request: Request, name: str) -> object:
        """The dashboard's stylesheet and script (a fixed allow-list, nothing else)."""
        ctype = dashboard_ui.STATIC_FILES.get(name)
        if ctype is None:
            raise NotFound("no such static file", code="not_found")
        data = dashboard_ui.static_bytes(name)
        tag = dashboard_ui.etag(data)
        request.setHeader(b"etag", tag)
        # index.html links them as ?v=<hash of their content>: safe to cache for a day.
        request.setHeader(b"cache-control", b"public, max-age=86400")
        request.setHeader(b"x-content-type-options", b"nosniff")
        if tag in (request.getHeader(b"if-none-match") or b"").replace(b" ", b"").split(b","):
            request.setResponseCode(304)
            return b""
        request.setHeader(b"content-type", ctype)
        return data

    def dashboard_stream(self, request: Request) -> object:
        """``text/event-stream`` of dashboard snapshots, one per second."""
        if len(self.dashboards) >= dashboard_ui.MAX_STREAMS:
            e = SprawlError(
                f"at most {dashboard_ui.MAX_STREAMS} dashboards may be open on a node",
                code="too_many_dashboards",
                status=503,
            )
            return render_error(request, Failure(e))
        s = dashboard_ui.DashboardStream(
            request,
            self.clock,
            lambda: dashboard_ui.encode_snapshot(self.status, self.metrics, self.clock, self.traffic),
            registry=self.dashboards,
            stopping=lambda: bool(self.broker.stopping),
        )
        if self.metrics is not None:
            self.metrics.http_requests.labels("dashboard_stream", "GET", "200").inc()
        return s.start()

    def close_dashboards(self) -> None:
        """End every dashboard stream (node shutdown)."""
        for s in list(self.dashboards):
            s.end_stopping()
