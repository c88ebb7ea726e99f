"""The HTTP side of authentication: which permission each route needs, and
the resource that checks it before Klein runs the handler.

Route classes (by Klein endpoint name):

* open: ``/healthz``, ``/readyz``, ``/health``, the dashboard page and its
  static files (no data in them);
* publish on the topic: ``POST /v1/topics/{t}/messages``, ``POST /publish``
  (topic from the body); publishing may auto-create the topic;
* subscribe on the topic: fetch, ``/stream``, ``/ws`` (its publish frames
  also need publish), describing a topic or group, pull/ack/nack/extend;
* admin on the topic: ``PUT``/``DELETE`` of topics and groups, skipping a
  damaged range (``POST /v1/topics/{t}/damage/skip``), and ``POST
  /subscribe`` (it creates a group on each topic of the body, as ``PUT
  .../groups/{group}`` does); a group's ``dead_letter_topic`` also needs
  publish on that topic (checked by the handler);
* admin node-wide (admin on ``*``): ``/v1/cluster*``, ``/v1/damage*``, ``/metrics``,
  ``/v1/pipelines*`` (a pipeline reads one topic and writes another),
  ``/v1/dashboard/stream``, ``/status``, ``/dht``, ``/store``;
* any valid token: ``GET /v1/topics`` and ``/topics`` (lists names).

Streams that browsers open (``/stream``, ``/ws``, ``/v1/dashboard/stream``)
may pass the token as ``?access_token=`` since EventSource and WebSocket
cannot set headers.  Tokens are never logged.
"""

from __future__ import annotations

from typing import Any

import msgspec
from klein import Klein
from twisted.web.server import Request
from werkzeug.exceptions import HTTPException

from sprawl.auth import Authenticator, Principal, Unauthorized
from sprawl.errors import SprawlError
from sprawl.metrics import NodeMetrics

OPEN = frozenset({"healthz", "readyz", "seed_health", "dashboard", "static"})
ANY_PRINCIPAL = frozenset({"list_topics", "seed_topics"})
TOPIC_RULES = {
    "publish": "publish",
    "fetch": "subscribe",
    "stream": "subscribe",
    "websocket": "subscribe",
    "get_topic": "subscribe",
    "get_group": "subscribe",
    "pull": "subscribe",
    "ack": "subscribe",
    "nack": "subscribe",
    "extend": "subscribe",
    "put_topic": "admin",
    "delete_topic": "admin",
    "put_group": "admin",
    "delete_group": "admin",
    "skip_damage": "admin",
}
NODE_ADMIN = frozenset(
    {
        "cluster",
        "placement",
        "faults",
        "damage",
        "scrub_now",
        "metrics_text",
        "dashboard_stream",
        "seed_status",
        "seed_dht",
        "seed_store",
        "drain_node",
        "undrain_node",
        "cluster_load",
        "list_pipelines",
        "put_pipeline",
        "get_pipeline",
        "delete_pipeline",
    }
)
QUERY_TOKEN = frozenset({"stream", "websocket", "dashboard_stream"})


def route_of(app: Klein, request: Request) -> tuple[str, dict[str, Any]] | None:
    """The Klein endpoint and path arguments a request will be routed to, or None."""
    # The path exactly as Klein derives it (klein._resource.extractURLparts).
    try:
        path = "/".join(seg.decode("utf-8") for seg in (request.postpath or []))
    except UnicodeDecodeError:
        return None
    if not path.startswith("/"):
        path = "/" + path
    adapter = app.url_map.bind("localhost", path_info=path, default_method=request.method.decode("latin-1"))
    try:
        endpoint, args = adapter.match()
    except HTTPException:
        return None
    return str(endpoint), dict(args)


def _body_topics(request: Request, endpoint: str) -> list[str] | None:
    """The topics named in a seed-route body (None when unreadable: the handler answers 400)."""
    content = request.content
    if content is None:
        return None
    raw = content.read()
    content.seek(0)
    try:
        body = msgspec.json.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(body, dict):
        return None
    if endpoint == "seed_publish":
        t = body.get("topic")
        return [t] if isinstance(t, str) else None
    ts = body.get("topics")
    if isinstance(ts, list) and all(isinstance(t, str) for t in ts):
        return ts
    return None


def authorize(auth: Authenticator, app: Klein, request: Request) -> Principal | None:
    """Authenticate and authorize a request for the route of ``app`` it is going to.

    Returns the principal (None for open or unknown routes); raises
    :class:`~sprawl.auth.Unauthorized` / :class:`~sprawl.auth.Forbidden`.
    """
    found = route_of(app, request)
    if found is None:
        # No route (404/405/redirect follows): still no answer without a valid token,
        # so a path this check reads differently from the router can never skip it.
        return auth.authenticate(request.getHeader(b"authorization"))
    endpoint, args = found
    if endpoint in OPEN:
        return None
    header = request.getHeader(b"authorization")
    if header is None and endpoint in QUERY_TOKEN:
        q = request.args.get(b"access_token")
        if q:
            try:
                return _check(auth.authenticate_token(q[0].decode("ascii")), endpoint, args, request)
            except UnicodeDecodeError:
                raise Unauthorized("the token is not valid", code="invalid_token") from None
    return _check(auth.authenticate(header), endpoint, args, request)


def _check(principal: Principal, endpoint: str, args: dict[str, Any], request: Request) -> Principal:
    perm = TOPIC_RULES.get(endpoint)
    if perm is not None:
        principal.require(perm, args.get("topic"))
    elif endpoint in NODE_ADMIN:
        principal.require("admin", None)
    elif endpoint in ("seed_publish", "seed_subscribe"):
        for t in _body_topics(request, endpoint) or []:
            principal.require("publish" if endpoint == "seed_publish" else "admin", t)
    elif endpoint not in ANY_PRINCIPAL:
        # A route nobody classified: only node-wide admins (fail closed).
        principal.require("admin", None)
    return principal


def refuse(request: Request, e: SprawlError, metrics: NodeMetrics | None = None) -> bytes:
    """Answer 401/403 with the JSON error shape (and ``WWW-Authenticate`` on 401)."""
    request.setResponseCode(e.status)
    request.setHeader(b"content-type", b"application/json")
    if e.status == 401:
        extra = b', error="invalid_token"' if e.code in ("invalid_token", "token_expired") else b""
        request.setHeader(b"www-authenticate", b'Bearer realm="sprawl"' + extra)
    if metrics is not None:
        metrics.rejected_requests.labels("unauthorized" if e.status == 401 else "forbidden").inc()
    body = msgspec.json.encode(e.to_json())
    request.setHeader(b"content-length", b"%d" % len(body))
    return body
