"""The HTTP API (v1 and the seed-compatible routes): a Klein app on an instance.

This module is the route table: each route times itself, counts its status,
renders its result as JSON, and hands the request to the module that owns it:

* :mod:`sprawl.http.messages` -- publish, SSE, the WebSocket upgrade
  (:mod:`sprawl.http.websocket`); :mod:`sprawl.http.fetch` -- fetch;
* :mod:`sprawl.http.topics` and :mod:`sprawl.http.groups` -- definitions,
  pull/ack/nack;
* :mod:`sprawl.http.admin` -- cluster, damage, health, metrics, dashboard;
* :mod:`sprawl.http.seed` -- the seed-compatible routes;
* :mod:`sprawl.http.codec` -- request parsing and answer encoding.

Every error is ``{"error": {"code", "message"}}`` with a 4xx/5xx status.
Handlers validate first and only then touch state, so a bad request never
changes anything.  Single node or cluster is decided once, here: a lone node
gets :class:`~sprawl.cluster.local.LocalDataPlane` and
:class:`~sprawl.cluster.local.LocalControl` (null objects over the broker).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, cast

from klein import Klein, KleinRenderable
from klein.resource import KleinResource
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.server import Request
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound

from sprawl.auth import Authenticator
from sprawl.cluster.local import LocalControl, LocalDataPlane
from sprawl.delivery.streams import StreamRegistry
from sprawl.errors import SprawlError
from sprawl.http import authz
from sprawl.http.admin import AdminRoutes
from sprawl.http.codec import JSON, encode, is_upgrade, json_error
from sprawl.http.fetch import FetchRoute
from sprawl.http.groups import ConsumerGroupRoutes
from sprawl.http.hot import HotRoutes, answer
from sprawl.http.messages import MessageRoutes
from sprawl.http.origin import ALLOWED_METHODS, PREFLIGHT_MAX_AGE, UNSAFE_METHODS, OriginPolicy
from sprawl.http.pipelines import PipelineRoutes
from sprawl.http.seed import SeedRoutes
from sprawl.http.starts import ReadStarts
from sprawl.http.status import NodeInfo, NodeStatus
from sprawl.http.topics import TopicRoutes
from sprawl.http.websocket import SocketParts
from sprawl.interfaces import Clock, MessagePlane, MetadataControl, TrafficView
from sprawl.metrics import NodeMetrics
from sprawl.pubsub import Broker

__all__ = ["NodeInfo", "SprawlAPI"]

P = ParamSpec("P")
#: A route's handler: its result is rendered by :func:`_route` (JSON unless bytes or str).
Handler = Callable[Concatenate["SprawlAPI", Request, P], object]
#: The handler as Klein calls it: a Deferred of the rendered body.
Routed = Callable[Concatenate["SprawlAPI", Request, P], Deferred[Any]]


def _route(name: str) -> Callable[[Handler[P]], Routed[P]]:
    """Time a handler, count its status, and render its result as JSON."""

    def deco(fn: Handler[P]) -> Routed[P]:
        @functools.wraps(fn)
        def wrapper(self: SprawlAPI, request: Request, *args: P.args, **kw: P.kwargs) -> Deferred[Any]:
            return answer(name, self.metrics, request, lambda: fn(self, request, *args, **kw))

        return wrapper

    return deco


def _rendered(answer: object) -> KleinRenderable:
    """A streaming route's answer (an error body, a Deferred, or the WebSocket
    resource): something Klein renders, though mypy cannot see a zope
    interface (``IResource``) in a concrete class."""
    return cast(KleinRenderable, answer)


class _JSONErrorsResource(KleinResource):
    """Klein's resource, but a URL that is not UTF-8 gets the JSON error shape
    (Klein itself answers such URLs with a plain-text 400), and the hot routes
    (publish, fetch, SSE: :mod:`sprawl.http.hot`) are served without Klein."""

    #: Serves the hot routes (None: Klein serves every route).
    hot: HotRoutes | None = None

    def render(self, request: Any) -> Any:  # (twisted.web's IRequest)
        try:
            b"/".join(request.postpath or []).decode("utf-8")
            (request.getRequestHostname() or b"").decode("utf-8")
        except UnicodeDecodeError:
            request.setResponseCode(400)
            return json_error(request, "invalid_url", "the URL is not valid UTF-8")
        if self.hot is not None:
            served = self.hot.render(request)
            if served is not None:
                return served
        return super().render(request)


class _AuthorizingResource(_JSONErrorsResource):
    """Checks the request's ``Origin`` (see :mod:`sprawl.http.origin`), then
    the bearer token and the route's permission (see :mod:`sprawl.http.authz`)
    before Klein routes the request; the token check is a no-op while
    authentication is off."""

    def __init__(self, app: Klein, api: SprawlAPI):
        super().__init__(app)
        self._api = api
        self.hot = HotRoutes(api)

    def render(self, request: Any) -> Any:  # (twisted.web's IRequest)
        origin = request.getHeader(b"origin")
        if origin is not None:
            refused = self._check_origin(request, origin)
            if refused is not None:
                return refused
        api = self._api
        if api.auth.enabled:
            try:
                request.sprawl_principal = authz.authorize(api.auth, api.app, request)  # type: ignore[attr-defined]
            except SprawlError as e:
                return authz.refuse(request, e, api.metrics)
        return super().render(request)

    def _check_origin(self, request: Request, origin: bytes) -> bytes | None:
        """403 for a state-changing request or WebSocket upgrade from a page of
        an origin not allowed; CORS for listed origins.  None: go on."""
        policy = self._api.origins
        method = request.method
        listed = policy.listed(origin)
        if listed:
            request.setHeader(b"access-control-allow-origin", origin)
            request.setHeader(b"vary", b"Origin")
            if method == b"OPTIONS" and request.getHeader(b"access-control-request-method") is not None:
                request.setResponseCode(204)
                request.setHeader(b"access-control-allow-methods", ALLOWED_METHODS)
                request.setHeader(
                    b"access-control-allow-headers", b"Authorization, Content-Type, Last-Event-ID"
                )
                request.setHeader(b"access-control-max-age", PREFLIGHT_MAX_AGE)
                request.setHeader(b"content-length", b"0")
                return b""
            return None
        if not (method in UNSAFE_METHODS or is_upgrade(request)):
            return None
        if policy.allows(origin, request.isSecure(), request.getHeader(b"host")):
            return None
        if self._api.metrics is not None:
            self._api.metrics.rejected_requests.labels("origin").inc()
        e = SprawlError(
            "requests from this web origin are not allowed to change state on this node "
            "(start the node with --allowed-origins to allow it)",
            code="origin_not_allowed",
            status=403,
        )
        request.setResponseCode(403)
        request.setHeader(b"content-type", JSON)
        body = encode(e.to_json())
        request.setHeader(b"content-length", b"%d" % len(body))
        return body


class SprawlAPI:
    """The node's HTTP API.  ``resource()`` gives the twisted.web resource."""

    app = Klein()

    def __init__(
        self,
        broker: Broker,
        info: NodeInfo,
        clock: Clock,
        metrics: NodeMetrics | None = None,
        control: MetadataControl | None = None,
        plane: MessagePlane | None = None,
        *,
        auth: Authenticator | None = None,
        origins: OriginPolicy | None = None,
        traffic: TrafficView | None = None,
    ):
        self.broker = broker
        #: Where partitions are written and read: the cluster data plane
        #: (:class:`sprawl.cluster.dataplane.DataPlane`), or the broker alone.
        self.plane: MessagePlane = plane if plane is not None else LocalDataPlane(broker, clock)
        #: Where topic and group definitions change: Raft on a real node
        #: (:class:`sprawl.cluster.control.ClusterControl`), or the broker.
        self.control: MetadataControl = control if control is not None else LocalControl(broker)
        self.info = info
        self.clock = clock
        self.metrics = metrics
        self.streams = StreamRegistry()
        #: Bearer-token authentication (off unless the node is given tokens or a JWT secret).
        self.auth = auth if auth is not None else Authenticator()
        #: Which web pages may change state here (``--allowed-origins``; default: the node's own).
        self.origins = origins if origins is not None else OriginPolicy()
        #: Options of WebSocket feeds (``slow_timeout``, ``ping_interval``, ``max_frame_bytes``).
        self.ws_options: dict[str, float] = {
            "max_frame_bytes": broker.config.max_body_bytes,
            "slow_timeout": broker.config.slow_consumer_timeout,
        }
        #: The node's cluster view and readiness.
        self.status = NodeStatus(info, broker, self.plane, traffic)
        starts = ReadStarts(broker, self.plane, self.control)
        sockets = SocketParts(broker, self.plane, clock, self.streams, metrics, self.ws_options)
        self.messages = MessageRoutes(broker, self.plane, starts, clock, metrics, sockets)
        self.fetcher = FetchRoute(broker, self.plane, starts, clock, metrics)
        self.topics = TopicRoutes(broker, self.plane, self.control, traffic)
        self.groups = ConsumerGroupRoutes(broker, self.plane, self.control, metrics)
        self.admin = AdminRoutes(broker, self.status, self.control, clock, metrics, traffic)
        self.seed = SeedRoutes(broker, self.plane, self.control, self.status)
        self.pipelines = PipelineRoutes(broker, info, self.control)
        #: Traffic forecasts (None when the node runs without them).
        self.traffic = traffic
        #: Open dashboard feeds (``GET /v1/dashboard/stream``).
        self.dashboards = self.admin.dashboards

    def resource(self) -> KleinResource:
        """The twisted.web resource serving this API."""
        return _AuthorizingResource(self.app, self)

    def close_dashboards(self) -> None:
        """End every dashboard stream (node shutdown)."""
        self.admin.close_dashboards()

    @app.handle_errors(HTTPException)
    def _http_exception(self, request: Request, failure: Failure) -> bytes:
        e = failure.value
        if isinstance(e, MethodNotAllowed):
            request.setResponseCode(405)
            allowed = ", ".join(e.valid_methods or [])
            if allowed:
                request.setHeader(b"allow", allowed.encode())
            return json_error(request, "method_not_allowed", f"method not allowed here; allowed: {allowed}")
        if isinstance(e, RouteNotFound):
            request.setResponseCode(404)
            return json_error(request, "not_found", "no such route")
        assert isinstance(e, HTTPException)
        request.setResponseCode(e.code or 400)
        return json_error(request, "bad_request", e.description or "bad request")

    # -- messages (sprawl/http/messages.py, sprawl/http/fetch.py) --------------------------

    @app.route("/v1/topics/<string:topic>/messages", methods=["POST"])
    @_route("publish")
    def publish(self, request: Request, topic: str) -> object:
        return self.messages.publish(request, topic)

    @app.route("/v1/topics/<string:topic>/messages", methods=["GET"])
    @_route("fetch")
    def fetch(self, request: Request, topic: str) -> object:
        return self.fetcher.fetch(request, topic)

    @app.route("/v1/topics/<string:topic>/stream", methods=["GET"])
    def stream(self, request: Request, topic: str) -> KleinRenderable:
        return _rendered(self.messages.stream(request, topic))

    @app.route("/v1/topics/<string:topic>/ws", methods=["GET"])
    def websocket(self, request: Request, topic: str) -> KleinRenderable:
        return _rendered(self.messages.websocket(request, topic))

    # -- topics (sprawl/http/topics.py) ---------------------------------------------------------

    @app.route("/v1/topics", methods=["GET"])
    @_route("topics")
    def list_topics(self, request: Request) -> object:
        return self.topics.list_topics(request)

    @app.route("/v1/topics/<string:topic>", methods=["PUT"])
    @_route("topic_put")
    def put_topic(self, request: Request, topic: str) -> object:
        return self.topics.put_topic(request, topic)

    @app.route("/v1/topics/<string:topic>", methods=["GET"])
    @_route("topic_get")
    def get_topic(self, request: Request, topic: str) -> object:
        return self.topics.get_topic(request, topic)

    @app.route("/v1/topics/<string:topic>", methods=["DELETE"])
    @_route("topic_delete")
    def delete_topic(self, request: Request, topic: str) -> object:
        return self.topics.delete_topic(request, topic)

    # -- groups (sprawl/http/groups.py) -----------------------------------------------------------

    @app.route("/v1/topics/<string:topic>/groups/<string:group>", methods=["PUT"])
    @_route("group_put")
    def put_group(self, request: Request, topic: str, group: str) -> object:
        return self.groups.put_group(request, topic, group)

    @app.route("/v1/topics/<string:topic>/groups/<string:group>", methods=["GET"])
    @_route("group_get")
    def get_group(self, request: Request, topic: str, group: str) -> object:
        return self.groups.get_group(request, topic, group)

    @app.route("/v1/topics/<string:topic>/groups/<string:group>", methods=["DELETE"])
    @_route("group_delete")
    def delete_group(self, request: Request, topic: str, group: str) -> object:
        return self.groups.delete_group(request, topic, group)

    @app.route("/v1/topics/<string:topic>/groups/<string:group>/pull", methods=["POST"])
    @_route("group_pull")
    def pull(self, request: Request, topic: str, group: str) -> object:
        return self.groups.pull(request, topic, group)

    @app.route("/v1/topics/<string:topic>/groups/<string:group>/ack", methods=["POST"])
    @_route("group_ack")
    def ack(self, request: Request, topic: str, group: str) -> object:
        return self.groups.ack(request, topic, group)

    @app.route("/v1/topics/<string:topic>/groups/<string:group>/nack", methods=["POST"])
    @_route("group_nack")
    def nack(self, request: Request, topic: str, group: str) -> object:
        return self.groups.nack(request, topic, group)

    @app.route("/v1/topics/<string:topic>/groups/<string:group>/extend", methods=["POST"])
    @_route("group_extend")
    def extend(self, request: Request, topic: str, group: str) -> object:
        return self.groups.extend(request, topic, group)

    # -- admin (sprawl/http/admin.py) ----------------------------------------------------------------

    @app.route("/v1/cluster", methods=["GET"])
    @_route("cluster")
    def cluster(self, request: Request) -> object:
        return self.admin.cluster(request)

    @app.route("/v1/cluster/placement", methods=["GET"])
    @_route("placement")
    def placement(self, request: Request) -> object:
        return self.admin.placement(request)

    @app.route("/v1/cluster/nodes/<string:node>/drain", methods=["POST"])
    @_route("drain_node")
    def drain_node(self, request: Request, node: str) -> object:
        return self.admin.set_drained(request, node, True)

    @app.route("/v1/cluster/nodes/<string:node>/undrain", methods=["POST"])
    @_route("undrain_node")
    def undrain_node(self, request: Request, node: str) -> object:
        return self.admin.set_drained(request, node, False)

    @app.route("/v1/cluster/load", methods=["GET"])
    @_route("cluster_load")
    def cluster_load(self, request: Request) -> object:
        return self.admin.cluster_load(request)

    @app.route("/v1/cluster/faults", methods=["GET"])
    @_route("faults")
    def faults(self, request: Request) -> object:
        return self.admin.faults(request)

    @app.route("/v1/damage", methods=["GET"])
    @_route("damage")
    def damage(self, request: Request) -> object:
        return self.admin.damage(request)

    @app.route("/v1/damage/scrub", methods=["POST"])
    @_route("damage_scrub")
    def scrub_now(self, request: Request) -> object:
        return self.admin.scrub_now(request)

    @app.route("/v1/topics/<string:topic>/damage/skip", methods=["POST"])
    @_route("damage_skip")
    def skip_damage(self, request: Request, topic: str) -> object:
        return self.admin.skip_damage(request, topic)

    @app.route("/healthz", methods=["GET"])
    @_route("healthz")
    def healthz(self, request: Request) -> object:
        return self.admin.healthz(request)

    @app.route("/readyz", methods=["GET"])
    @_route("readyz")
    def readyz(self, request: Request) -> object:
        return self.admin.readyz(request)

    @app.route("/metrics", methods=["GET"])
    @_route("metrics")
    def metrics_text(self, request: Request) -> object:
        return self.admin.metrics_text(request)

    @app.route("/", methods=["GET"])
    @_route("dashboard")
    def dashboard(self, request: Request) -> object:
        return self.admin.dashboard(request)

    @app.route("/static/<string:name>", methods=["GET"])
    @_route("static")
    def static(self, request: Request, name: str) -> object:
        return self.admin.static(request, name)

    @app.route("/v1/dashboard/stream", methods=["GET"])
    def dashboard_stream(self, request: Request) -> KleinRenderable:
        return _rendered(self.admin.dashboard_stream(request))

    # -- pipelines (sprawl/http/pipelines.py) ----------------------------------------------------------

    @app.route("/v1/pipelines", methods=["GET"])
    @_route("pipelines")
    def list_pipelines(self, request: Request) -> object:
        return self.pipelines.list_pipelines(request)

    @app.route("/v1/pipelines/<string:pipeline>", methods=["PUT"])
    @_route("pipeline_put")
    def put_pipeline(self, request: Request, pipeline: str) -> object:
        return self.pipelines.put_pipeline(request, pipeline)

    @app.route("/v1/pipelines/<string:pipeline>", methods=["GET"])
    @_route("pipeline_get")
    def get_pipeline(self, request: Request, pipeline: str) -> object:
        return self.pipelines.get_pipeline(request, pipeline)

    @app.route("/v1/pipelines/<string:pipeline>", methods=["DELETE"])
    @_route("pipeline_delete")
    def delete_pipeline(self, request: Request, pipeline: str) -> object:
        return self.pipelines.delete_pipeline(request, pipeline)

    # -- seed-compatible routes (sprawl/http/seed.py) --------------------------------------------------

    @app.route("/publish", methods=["POST"])
    @_route("seed_publish")
    def seed_publish(self, request: Request) -> object:
        return self.seed.seed_publish(request)

    @app.route("/subscribe", methods=["POST"])
    @_route("seed_subscribe")
    def seed_subscribe(self, request: Request) -> object:
        return self.seed.seed_subscribe(request)

    @app.route("/status", methods=["GET"])
    @_route("seed_status")
    def seed_status(self, request: Request) -> object:
        return self.seed.seed_status(request)

    @app.route("/health", methods=["GET"])
    @_route("seed_health")
    def seed_health(self, request: Request) -> object:
        return self.seed.seed_health(request)

    @app.route("/topics", methods=["GET"])
    @_route("seed_topics")
    def seed_topics(self, request: Request) -> object:
        return self.seed.seed_topics(request)

    @app.route("/dht", methods=["GET"])
    @_route("seed_dht")
    def seed_dht(self, request: Request) -> object:
        return self.seed.seed_dht(request)

    @app.route("/store", methods=["GET"])
    @_route("seed_store")
    def seed_store(self, request: Request) -> object:
        return self.seed.seed_store(request)
