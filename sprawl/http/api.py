"""The HTTP API (v1 and the seed-compatible routes): a Klein app on an instance.

Every error is ``{"error": {"code", "message"}}`` with a 4xx/5xx status.
Handlers validate first and only then touch state, so a bad request never
changes anything.
"""

from __future__ import annotations

import base64
import binascii
import functools
import time
from collections.abc import Callable
from typing import Any

import msgspec
from klein import Klein
from klein.resource import KleinResource
from twisted.internet import defer, task
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound

from sprawl import __version__
from sprawl.cluster.local import LocalControl
from sprawl.delivery.streams import SSEStream, StreamRegistry, deliverable
from sprawl.errors import BadRequest, NotFound, Overloaded, PayloadTooLarge, SprawlError, Unavailable
from sprawl.http import dashboard as dashboard_ui
from sprawl.http.origin import ALLOWED_METHODS, PREFLIGHT_MAX_AGE, UNSAFE_METHODS, OriginPolicy
from sprawl.log.record import DEFAULT_READ_BYTES, MAX_READ_BYTES, Record
from sprawl.pubsub import ACKS, Broker, PublishResult, check_group_name, check_topic_name
from sprawl.topics import Topic

log = Logger()

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode

JSON = b"application/json"
MAX_WAIT_MS = 30_000
MAX_FETCH = 10_000
#: The least a multi-partition fetch reads of each partition (its budget is
#: ``max_bytes`` shared out; the answer itself stays within ``max_bytes``).
MIN_PARTITION_READ_BYTES = 64 * 1000


class NodeInfo:
    """What the API says about the node itself (filled by the composition root)."""

    def __init__(self, node_id: str, http: str = "", peer: str = "", started: float = 0.0):
        self.node_id = node_id
        self.http = http
        self.peer = peer
        self.started = started or time.time()
        self.ready = False
        self.not_ready_reason = "starting"
        #: The gossip membership (``member_views()``, ``live_member_ids()``,
        #: ``joined``), or None: then the node reports itself alone.
        self.membership: Any = None
        #: The cluster control (``raft_view()``, ``leader_name``), or None:
        #: then the node reports a single-node cluster it leads.
        self.raft: Any = None
        #: More readiness conditions: each returns why the node is not ready, or None
        #: (the S3 tier's bucket watch, :mod:`sprawl.storage.bucket_watch`).
        self.readiness_checks: list[Callable[[], str | None]] = []


def _json_error(request: Any, code: str, message: str, doc: Any = None) -> bytes:
    """The body of a JSON error (``doc``, or code and message), with its
    ``Content-Length`` (never chunked framing: streaming routes answer
    errors like every other route)."""
    body = _encode(doc or {"error": {"code": code, "message": message}})
    request.setHeader(b"content-type", JSON)
    request.setHeader(b"content-length", b"%d" % len(body))
    return body


def _route(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Time a handler, count its status, and render its result as JSON."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(self: SprawlAPI, request: Any, *args: Any, **kw: Any) -> Any:
            started = time.perf_counter()
            method = request.method.decode("ascii", "replace")
            try:
                result = fn(self, request, *args, **kw)
            except Exception as e:  # validated synchronously
                result = Failure(e)
            if isinstance(result, Deferred):
                d = result
            elif isinstance(result, Failure):
                from twisted.internet.defer import fail

                d = fail(result)
            else:
                d = succeed(result)

            def ok(value: Any) -> Any:
                if value is None:
                    return value
                if isinstance(value, str):
                    value = value.encode("utf-8")
                elif not isinstance(value, bytes):
                    request.setHeader(b"content-type", JSON)
                    value = _encode(value)
                if request.code != 204:
                    # A known length: no chunked framing on every answer.
                    request.setHeader(b"content-length", b"%d" % len(value))
                return value

            def err(f: Failure) -> bytes | None:
                if f.check(CancelledError) and (request.finished or getattr(request, "_disconnected", False)):
                    return None  # the client went away mid long-poll: nobody to answer
                return self._render_error(request, f)

            def observe(value: Any) -> Any:
                m = self.metrics
                if m is not None:
                    m.http_request_duration.labels(name, method).observe(time.perf_counter() - started)
                    m.http_requests.labels(name, method, str(request.code)).inc()
                return value

            d.addCallbacks(ok, err)
            d.addBoth(observe)
            return d

        return wrapper

    return deco


class _JSONErrorsResource(KleinResource):
    """Klein's resource, but a URL that is not UTF-8 gets the JSON error shape
    (Klein itself answers such URLs with a plain-text 400)."""

    def render(self, request: Any) -> Any:
        try:
            b"/".join(request.postpath or []).decode("utf-8")
            (request.getRequestHostname() or b"").decode("utf-8")
        except UnicodeDecodeError:
            request.setResponseCode(400)
            return _json_error(request, "invalid_url", "the URL is not valid UTF-8")
        return super().render(request)


class _AuthorizingResource(_JSONErrorsResource):
    """Checks the request's ``Origin`` (see :mod:`sprawl.http.origin`), then
    the bearer token and the route's permission (see :mod:`sprawl.http.authz`)
    before Klein routes the request; the token check is a no-op while
    authentication is off."""

    def __init__(self, app: Any, api: SprawlAPI):
        super().__init__(app)
        self._api = api

    def render(self, request: Any) -> Any:
        origin = request.getHeader(b"origin")
        if origin is not None:
            refused = self._check_origin(request, origin)
            if refused is not None:
                return refused
        if self._api.auth.enabled:
            from sprawl.http import authz

            try:
                request.sprawl_principal = authz.authorize(self._api, request)
            except SprawlError as e:
                return authz.refuse(request, e, self._api.metrics)
        return super().render(request)

    def _check_origin(self, request: Any, origin: bytes) -> bytes | None:
        """403 for a state-changing request or WebSocket upgrade from a page of
        an origin not allowed; CORS for listed origins.  None: go on."""
        from sprawl.http.websocket import is_upgrade

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
        body = _encode(e.to_json())
        request.setHeader(b"content-length", b"%d" % len(body))
        return body


class SprawlAPI:
    """The node's HTTP API.  ``resource()`` gives the twisted.web resource."""

    app = Klein()

    def __init__(
        self,
        broker: Broker,
        info: NodeInfo,
        clock: Any,
        metrics: Any = None,
        control: Any = None,
        plane: Any = None,
    ):
        self.broker = broker
        #: The cluster data plane (:class:`sprawl.cluster.dataplane.DataPlane`):
        #: routes publishes to partition leaders and reads to replicas; None
        #: on an in-process node, where the broker holds every partition.
        self.plane = plane
        #: Where topic and group definitions change: Raft on a real node
        #: (:class:`sprawl.cluster.control.ClusterControl`), or the broker.
        self.control = control if control is not None else LocalControl(broker)
        self.info = info
        self.clock = clock
        self.metrics = metrics
        self.streams = StreamRegistry()
        from sprawl.auth import Authenticator

        #: Bearer-token authentication (off unless the node is given tokens or a JWT secret).
        self.auth = Authenticator()
        #: Which web pages may change state here (``--allowed-origins``; default: the node's own).
        self.origins = OriginPolicy()
        #: Open dashboard feeds (``GET /v1/dashboard/stream``).
        self.dashboards: set[dashboard_ui.DashboardStream] = set()
        #: Options of WebSocket feeds (``slow_timeout``, ``ping_interval``, ``max_frame_bytes``).
        self.ws_options: dict[str, Any] = {
            "max_frame_bytes": broker.config.max_body_bytes,
            "slow_timeout": broker.config.slow_consumer_timeout,
        }
        if metrics is not None:
            metrics.broker = broker
            metrics.streams = self.streams

    def resource(self) -> Any:
        """The twisted.web resource serving this API."""
        return _AuthorizingResource(self.app, self)

    # -- errors ------------------------------------------------------------------

    def _render_error(self, request: Any, f: Failure) -> bytes:
        e = f.value
        body: Any = None
        if isinstance(e, RecursionError):
            # Input nested too deeply for a decoder or encoder: the client's fault.
            e = BadRequest("input nested too deeply", code="invalid_json")
        if isinstance(e, SprawlError):
            status, code, message = e.status, e.code, e.message
            body = e.to_json()  # with the details some errors carry (corrupt_record: the range)
            if isinstance(e, Overloaded):
                request.setHeader(b"retry-after", str(max(1, int(e.retry_after))).encode())
            if e.status == 503:
                request.setHeader(b"retry-after", b"1")
        else:
            log.failure(
                "unexpected error serving {method} {path}", f, method=request.method, path=request.path
            )
            status, code, message = 500, "internal_error", "internal error; see the node's log"
        request.setResponseCode(status)
        return _json_error(request, code, message, body)

    @app.handle_errors(HTTPException)
    def _http_exception(self, request: Any, failure: Failure) -> bytes:
        e = failure.value
        if isinstance(e, MethodNotAllowed):
            request.setResponseCode(405)
            allowed = ", ".join(e.valid_methods or [])
            if allowed:
                request.setHeader(b"allow", allowed.encode())
            return _json_error(request, "method_not_allowed", f"method not allowed here; allowed: {allowed}")
        if isinstance(e, RouteNotFound):
            request.setResponseCode(404)
            return _json_error(request, "not_found", "no such route")
        assert isinstance(e, HTTPException)
        request.setResponseCode(e.code or 400)
        return _json_error(request, "bad_request", e.description or "bad request")

    # -- helpers -------------------------------------------------------------------

    @staticmethod
    def _json_body(request: Any, required: bool = True) -> Any:
        raw = request.content.read() if request.content is not None else b""
        if not raw.strip():
            if required:
                raise BadRequest("request body must be a JSON object", code="invalid_json")
            return {}
        body = decode_json_body(raw)
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object", code="invalid_json")
        return body

    @staticmethod
    def _arg(request: Any, name: str) -> str | None:
        v = request.args.get(name.encode())
        if not v:
            return None
        try:
            return v[0].decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"query parameter {name} is not UTF-8", code="invalid_parameter") from None

    def _max_bytes(self, request: Any) -> int:
        """``?max_bytes=``: bytes of messages one answer (or one stream write) may carry."""
        return (
            self._int_arg(request, "max_bytes", DEFAULT_READ_BYTES, 1, MAX_READ_BYTES) or DEFAULT_READ_BYTES
        )

    def _int_arg(self, request: Any, name: str, default: int | None, lo: int, hi: int) -> int | None:
        v = self._arg(request, name)
        if v is None or v == "":
            return default
        try:
            n = int(v)
        except ValueError:
            raise BadRequest(f"query parameter {name} must be an integer", code="invalid_parameter") from None
        if not lo <= n <= hi:
            raise BadRequest(f"query parameter {name} must be in {lo}..{hi}", code="invalid_parameter")
        return n

    # -- publish -------------------------------------------------------------------

    def _parse_messages(self, request: Any) -> tuple[list[Record], str]:
        ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        max_batch = self.broker.config.max_batch_messages
        # The raw-body query parameters are checked whatever the body (a JSON batch ignores them).
        q_acks, q_key, q_id = self._arg(request, "acks"), self._arg(request, "key"), self._arg(request, "id")
        if q_acks and q_acks not in ACKS:
            raise BadRequest("acks must be one of quorum, leader, none", code="invalid_acks")
        if q_key is not None and len(q_key) > 1024:
            raise BadRequest("query parameter key must be at most 1024 characters", code="invalid_parameter")
        if q_id is not None and not 1 <= len(q_id) <= 256:
            raise BadRequest("query parameter id must be 1-256 characters", code="invalid_parameter")
        if ctype == JSON or ctype.endswith(b"+json"):
            raw = request.content.read() if request.content is not None else b""
            fast = _fast_publish(raw, max_batch)
            if fast is not None:
                return fast
            request.content.seek(0)
            body = self._json_body(request)
            unknown = set(body) - {"messages", "acks"}
            if unknown:
                raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}", code="invalid_field")
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs:
                raise BadRequest("messages must be a non-empty array", code="invalid_messages")
            if len(msgs) > max_batch:
                raise PayloadTooLarge(f"at most {max_batch} messages per request", code="batch_too_large")
            acks = body.get("acks", "quorum")
            records = [parse_message(m, i) for i, m in enumerate(msgs)]
        else:
            raw = request.content.read() if request.content is not None else b""
            acks, key, mid = q_acks or "quorum", q_key, q_id
            try:
                raw.decode("utf-8")
                is_text = ctype.startswith(b"text/") or ctype in (b"", b"application/x-www-form-urlencoded")
            except UnicodeDecodeError:
                is_text = False
            records = [Record(-1, 0, 0, mid, key, None, raw, is_text)]
        if acks not in ACKS:
            raise BadRequest("acks must be one of quorum, leader, none", code="invalid_acks")
        return records, acks

    @staticmethod
    def _publish_answer(res: PublishResult, acks: str) -> dict[str, Any]:
        return {
            "offsets": res.offsets,
            "ids": res.ids,
            "partitions": res.partitions,
            "duplicates": res.duplicates,
            "acks": acks,
            "stored": res.stored,
        }

    def publish_records(self, t: Any, records: list[Record], acks: str) -> Deferred[PublishResult]:
        """Publish through the cluster (each partition's leader) or the broker."""
        if self.plane is not None:
            return self.plane.publish(t, records, acks)  # type: ignore[no-any-return]
        return self.broker.publish(t, records, acks)

    @app.route("/v1/topics/<string:topic>/messages", methods=["POST"])
    @_route("publish")
    def publish(self, request: Any, topic: str) -> Any:
        records, acks = self._parse_messages(request)
        if topic not in self.broker.topics:
            # Refuse before auto-creating: a rejected publish must leave no topic behind.
            self.broker.check_writable()
            self.broker.check_message_sizes(records, self.broker.config.max_message_bytes)
        d: Deferred[Any] = self.broker.ensure_topic(topic)
        d.addCallback(lambda t: self.publish_records(t, records, acks))
        d.addCallback(self._publish_answer, acks)
        return d

    # -- fetch ---------------------------------------------------------------------

    def _start_spec(self, request: Any) -> tuple[str | int | None, int | None]:
        frm = self._arg(request, "from")
        from_time = self._int_arg(request, "from_time", None, 0, 2**63 - 1)
        if frm is not None and from_time is not None:
            raise BadRequest("give from or from_time, not both", code="invalid_parameter")
        if frm is None:
            return None, from_time
        if frm in ("earliest", "latest"):
            return frm, None
        try:
            off = int(frm)
        except ValueError:
            raise BadRequest("from must be an offset, earliest or latest", code="invalid_parameter") from None
        if off < 0:
            raise BadRequest("from must not be negative", code="invalid_parameter")
        return off, None

    def _partitions(self, request: Any, t: Any) -> list[int]:
        p = self._int_arg(request, "partition", None, 0, 1023)
        if p is None:
            return [lg.partition for lg in t.logs]
        if p >= len(t.logs):
            raise NotFound(f"topic {t.name!r} has no partition {p}", code="partition_not_found")
        return [p]

    def _resolve(
        self, t: Any, parts: list[int], spec: str | int | None, from_time: int | None, default: str
    ) -> Deferred[dict[int, int]]:
        out: dict[int, int] = {}
        ds = []
        for p in parts:
            lg = t.logs[p]
            if from_time is not None:
                d: Deferred[Any] = self.broker.find_time(t, p, from_time)
                d.addCallback(_setter(out, p))
                ds.append(d)
            else:
                out[p] = _cursor(lg.resolve_start(spec if spec is not None else default), spec)
        if not ds:
            return succeed(out)
        from twisted.internet.defer import gatherResults

        return gatherResults(ds, consumeErrors=True).addCallback(lambda _: out)

    def _stream_starts(
        self, t: Any, parts: list[int], spec: str | int | None, from_time: int | None, resume: dict[int, int]
    ) -> Deferred[dict[int, int]]:
        """Where an SSE / WebSocket stream starts on each partition (default
        ``latest``; ``resume``, from ``Last-Event-ID``, wins).  A partition
        held by another node is resolved there."""
        plane = self.plane
        remote = [p for p in parts if plane is not None and plane.read_source(t.name, p) is not None]
        local = [p for p in parts if p not in remote]

        def apply(starts: dict[int, int]) -> dict[int, int]:
            for p, off in resume.items():
                if p in starts and p not in remote:
                    starts[p] = _cursor(t.logs[p].resolve_start(off + 1), off + 1)
            return starts

        d = self._resolve(t, local, spec, from_time, "latest").addCallback(apply)
        if not remote:
            return d
        from twisted.internet.defer import gatherResults

        out: dict[int, int] = {}
        ds: list[Deferred[Any]] = [d.addCallback(out.update)]
        for p in remote:
            asked = resume[p] + 1 if p in resume else spec
            if p in resume:
                r = plane.feeds.resolve(t.name, p, asked, None)
            else:
                r = plane.feeds.resolve(t.name, p, spec if spec is not None else "latest", from_time)
            if from_time is None or p in resume:
                r.addCallback(_cursor, asked)
            ds.append(r.addCallback(_setter(out, p)))
        g = gatherResults(ds, consumeErrors=True).addErrback(_unwrap_first_error)
        return g.addCallback(lambda _: {p: out[p] for p in parts})

    def _topic_or_wait(self, name: str) -> Any:
        """The topic, or None when it does not exist yet and a subscription
        waits for it (auto-create on: subscribing may come before the first
        publish); 404 ``topic_not_found`` where topics are not auto-created."""
        t = self.broker.topics.get(name)
        if t is not None or not self.broker.config.auto_create_topics:
            return t if t is not None else self.broker.get_topic(name)
        check_topic_name(name)  # a name no topic can have is a 400, not a wait
        return None

    def _when_created(self, name: str, partition: int | None) -> Deferred[tuple[Any, dict[int, int]]]:
        """Fires with ``(topic, cursors)`` once topic ``name`` exists here
        (created here, or on another node and applied here).  A subscription
        made before the topic existed resolved its start against an empty
        topic, so every partition starts at offset 0, the topic's first
        (``from=latest`` included: nothing published after it is missed); a
        ``partition`` the topic lacks fails with 404 ``partition_not_found``.
        Cancel to stop waiting."""
        d: Deferred[Any] = succeed(None) if name in self.broker.topics else self.control.wait_topic(name)

        def found(_: object) -> Any:
            t = self.broker.topics.get(name)
            if t is None:  # deleted again before it was looked at: wait on
                return self._when_created(name, partition)
            if partition is not None and partition >= len(t.logs):
                raise NotFound(f"topic {name!r} has no partition {partition}", code="partition_not_found")
            parts = [partition] if partition is not None else [lg.partition for lg in t.logs]
            return t, dict.fromkeys(parts, 0)

        return d.addCallback(found)

    @app.route("/v1/topics/<string:topic>/messages", methods=["GET"])
    @_route("fetch")
    def fetch(self, request: Any, topic: str) -> Any:
        t = self.broker.topics.get(topic)
        if t is None:
            wait_ms = self._int_arg(request, "wait_ms", 0, 0, MAX_WAIT_MS) or 0
            if wait_ms and self._topic_or_wait(topic) is None:
                return self._fetch_when_created(request, topic, wait_ms)
            t = self.broker.get_topic(topic)  # the 404 (a plain fetch does not wait)
        spec, from_time = self._start_spec(request)
        parts = self._partitions(request, t)
        limit = self._int_arg(request, "limit", 100, 1, MAX_FETCH) or 100
        wait_ms = self._int_arg(request, "wait_ms", 0, 0, MAX_WAIT_MS) or 0
        max_bytes = self._max_bytes(request)
        return self._fetch(request, t, parts, spec, from_time, limit, wait_ms, max_bytes)

    def _fetch_when_created(self, request: Any, topic: str, wait_ms: int) -> Deferred[Any]:
        """A long-poll of a topic that does not exist yet: wait up to
        ``wait_ms`` for it to be created, then long-poll it from its first
        offset for the rest of the time.  Still missing at the deadline: 200
        with no messages and ``next`` 0, where the topic will start."""
        self._start_spec(request)  # validated; a start before the topic exists is its first offset
        partition = self._int_arg(request, "partition", None, 0, 1023)
        limit = self._int_arg(request, "limit", 100, 1, MAX_FETCH) or 100
        max_bytes = self._max_bytes(request)
        deadline = self.clock.seconds() + wait_ms / 1000.0
        appearing = self._when_created(topic, partition)
        timer = self.clock.callLater(wait_ms / 1000.0, appearing.cancel)
        request.notifyFinish().addErrback(lambda _: appearing.cancel())

        async def run() -> Any:
            try:
                t, starts = await appearing
            except CancelledError:
                if request.finished or request._disconnected:
                    raise  # the client left: nobody to answer
                parts = [partition] if partition is not None else []
                return self._fetch_answer(
                    request, topic, parts, [], {}, {}, {}, limit, max_bytes, missing=True
                )
            finally:
                if timer.active():
                    timer.cancel()
            parts = sorted(starts)
            for _ in range(1000):
                left = max(0, int((deadline - self.clock.seconds()) * 1000))
                try:
                    return await self._fetch(request, t, parts, 0, None, limit, left, max_bytes)
                except SprawlError as e:
                    # A holder of the partition that has not applied the
                    # topic's creation yet: try again until the deadline.
                    if e.code != "topic_not_found" or self.broker.topics.get(topic) is not t or not left:
                        raise
                await task.deferLater(self.clock, min(0.1, left / 1000.0), lambda: None)
            raise Unavailable(f"topic {topic!r} could not be read yet", code="topic_not_ready")

        return Deferred.fromCoroutine(run())

    def _fetch(
        self,
        request: Any,
        t: Topic,
        parts: list[int],
        spec: str | int | None,
        from_time: int | None,
        limit: int,
        wait_ms: int,
        max_bytes: int,
    ) -> Any:
        """``GET .../messages`` of an existing topic (see :meth:`fetch`)."""
        topic = t.name
        # Each partition reads its share of the budget (the answer is trimmed to it).
        per = max(max_bytes // len(parts), min(max_bytes, MIN_PARTITION_READ_BYTES))
        deadline = self.clock.seconds() + wait_ms / 1000.0
        if self.plane is not None and any(self.plane.read_source(topic, p) for p in parts):
            return defer.ensureDeferred(
                self._fetch_routed(request, t, parts, spec, from_time, limit, wait_ms, max_bytes, per)
            )

        def read(starts: dict[int, int]) -> Any:
            hws = {p: t.logs[p].high_watermark for p in parts}
            ds = [self.broker.read(t, p, starts[p], limit, max_bytes=per) for p in parts]
            from twisted.internet.defer import gatherResults

            d = gatherResults(ds, consumeErrors=True)
            d.addErrback(_unwrap_first_error)  # e.g. a segment in S3 that cannot be read
            return d.addCallback(answer, starts, hws)

        def answer(results: list[list[Record]], starts: dict[int, int], hws: dict[int, int]) -> Any:
            recs: list[Record] = []
            for p, got in zip(parts, results, strict=True):
                if not got and starts[p] < hws[p]:
                    # Nothing exists below the high watermark seen before the
                    # read (a gap: retention, or an ephemeral tail lost in a
                    # restart): the cursor moves past it instead of stalling.
                    starts[p] = hws[p]
            nexts = dict(starts)
            for p, got in zip(parts, results, strict=True):
                if got:
                    nexts[p] = got[-1].offset + 1  # past control records too
                    recs.extend(deliverable(got))
            if not recs and nexts != starts:
                starts = nexts  # only control records: look again from past them
            if not recs and self.clock.seconds() < deadline and self.broker.topics.get(topic) is t:
                remaining = deadline - self.clock.seconds()
                wait = self.broker.wait_any(t, remaining)
                request.notifyFinish().addErrback(lambda _: wait.cancel())
                return wait.addCallback(lambda _: read(starts))
            hw = {p: t.logs[p].high_watermark for p in parts}
            return self._fetch_answer(request, topic, parts, recs, starts, nexts, hw, limit, max_bytes)

        return self._resolve(t, parts, spec, from_time, "earliest").addCallback(read)

    async def _fetch_routed(
        self,
        request: Any,
        t: Any,
        parts: list[int],
        spec: str | int | None,
        from_time: int | None,
        limit: int,
        wait_ms: int,
        max_bytes: int,
        per: int,
    ) -> bytes:
        """``GET .../messages`` when some partitions are held by other nodes:
        each partition is read where it is held (here, or at its leader over
        the peer channel); with ``wait_ms`` the answer comes as soon as any
        partition has messages, or at the deadline."""
        plane = self.plane

        async def one(
            p: int, start: str | int | None, ft: int | None, wait: int
        ) -> tuple[list[Record], int, int]:
            if plane.read_source(t.name, p) is not None:
                got = await plane.fetch_remote(t.name, p, start, ft, limit, wait, max_bytes=per)
                s0 = _cursor(got["start"], start if ft is None else None)
                return [r for r in got["records"] if r.offset >= s0], s0, got["hw"]
            lg = t.logs[p]
            if ft is not None:
                s0 = int(await self.broker.find_time(t, p, ft))
            else:
                s0 = _cursor(lg.resolve_start(start if start is not None else "earliest"), start)
            s0 = max(s0, lg.log_start)
            recs = await self.broker.read(t, p, s0, limit, max_bytes=per) if s0 < lg.high_watermark else []
            if not recs and wait:
                await plane.changed(t.name, p, wait / 1000.0)
                recs = (
                    await self.broker.read(t, p, s0, limit, max_bytes=per) if s0 < lg.high_watermark else []
                )
            return recs, s0, lg.high_watermark

        def gather(ds: list[Any]) -> Any:
            d = defer.gatherResults(ds, consumeErrors=True)
            return d.addErrback(_unwrap_first_error)

        results = await gather([defer.ensureDeferred(one(p, spec, from_time, 0)) for p in parts])
        starts = {p: r[1] for p, r in zip(parts, results, strict=True)}
        if wait_ms and not any(deliverable(r[0]) for r in results):
            results = await self._first_with_messages(
                [defer.ensureDeferred(one(p, starts[p], None, wait_ms)) for p in parts],
                [([], starts[p], r[2]) for p, r in zip(parts, results, strict=True)],
            )
        recs: list[Record] = []
        nexts = dict(starts)
        hws: dict[int, int] = {}
        for p, (got, _s0, hw) in zip(parts, results, strict=True):
            hws[p] = hw
            if got:
                nexts[p] = got[-1].offset + 1  # past control records too
                recs.extend(deliverable(got))
        return self._fetch_answer(request, t.name, parts, recs, starts, nexts, hws, limit, max_bytes)

    def _fetch_answer(
        self,
        request: Any,
        topic: str,
        parts: list[int],
        recs: list[Record],
        starts: dict[int, int],
        nexts: dict[int, int],
        hws: dict[int, int],
        limit: int,
        max_bytes: int,
        missing: bool = False,
    ) -> bytes:
        """The body of ``GET .../messages``: over several partitions the oldest
        ``limit`` messages by time; at most ``max_bytes`` of encoded messages
        (at least one); each partition's cursor past what it gave.
        ``missing``: the topic does not exist yet; every cursor is 0."""
        if missing:
            body = b'{"messages":[],"next":0,"high_watermark":0'
            body += b',"next_by_partition":' + _encode({str(p): 0 for p in parts})
            body += b',"high_watermarks":' + _encode({str(p): 0 for p in parts}) + b"}"
            request.setHeader(b"content-type", JSON)
            return body
        if len(parts) > 1:
            recs.sort(key=lambda r: (r.timestamp, r.partition, r.offset))
            recs = recs[:limit]
        encoded = [r.to_json() for r in recs]
        total = 0
        trimmed = False
        for i, j in enumerate(encoded):
            total += len(j) + 1
            if total > max_bytes and i:
                recs, encoded, trimmed = recs[:i], encoded[:i], True
                break
        if len(parts) > 1 or trimmed:
            nexts = dict(starts)
            for r in recs:
                nexts[r.partition] = max(nexts[r.partition], r.offset + 1)
        m = self.metrics
        if m is not None and recs:
            m.delivered(topic, "fetch", len(recs), sum(r.message_bytes for r in recs))
        body = b'{"messages":[' + b",".join(encoded) + b"]"
        body += b',"next":' + _encode(nexts[parts[0]] if len(parts) == 1 else None)
        body += b',"high_watermark":' + _encode(hws[parts[0]] if len(parts) == 1 else sum(hws.values()))
        body += b',"next_by_partition":' + _encode({str(p): o for p, o in nexts.items()})
        body += b',"high_watermarks":' + _encode({str(p): o for p, o in hws.items()}) + b"}"
        request.setHeader(b"content-type", JSON)
        return body

    @staticmethod
    async def _first_with_messages(pending: list[Deferred[Any]], fallback: list[Any]) -> list[Any]:
        """Wait for the first of ``pending`` (one long-poll per partition) to
        bring messages, or for all of them to end; the rest keep ``fallback``."""
        first: Deferred[None] = Deferred()
        done: dict[int, Any] = {}
        ended: set[int] = set()

        def settle(res: Any, i: int) -> None:
            ended.add(i)
            if not isinstance(res, Failure):
                done[i] = res
            brought = not isinstance(res, Failure) and bool(deliverable(res[0]))
            if (brought or len(ended) == len(pending)) and not first.called:
                first.callback(None)

        for i, d in enumerate(pending):
            d.addBoth(settle, i)
        await first
        return [done.get(i, fb) for i, fb in enumerate(fallback)]

    # -- SSE -------------------------------------------------------------------------

    @app.route("/v1/topics/<string:topic>/stream", methods=["GET"])
    def stream(self, request: Any, topic: str) -> Any:
        started = time.perf_counter()
        try:
            t = self._topic_or_wait(topic)
            spec, from_time = self._start_spec(request)
            partition = self._int_arg(request, "partition", None, 0, 1023)
            parts = self._partitions(request, t) if t is not None else []
            resume = parse_last_event_id(request.getHeader(b"last-event-id"))
            max_bytes = self._max_bytes(request)
        except SprawlError as e:
            return self._render_error(request, Failure(e))
        principal = getattr(request, "sprawl_principal", None)

        def go(starts: dict[int, int]) -> Any:
            s = SSEStream(
                self.broker,
                t,
                starts,
                request,
                self.clock,
                registry=self.streams,
                slow_timeout=self.broker.config.slow_consumer_timeout,
                feeds=self.plane.feeds if self.plane is not None else None,
                name=topic,
                max_bytes=max_bytes,
                expires=getattr(principal, "expires", None),
            )
            if self.metrics is not None:
                self.metrics.http_request_duration.labels("stream", "GET").observe(
                    time.perf_counter() - started
                )
                self.metrics.http_requests.labels("stream", "GET", "200").inc()
            if t is None:
                return s.wait_for_topic(self._when_created(topic, partition))
            return s.start()

        if t is None:
            return go({})
        d = self._stream_starts(t, parts, spec, from_time, resume)
        d.addCallback(go)

        def failed(f: Failure) -> Any:
            if request.finished or request._disconnected:
                return None
            return self._render_error(request, f)

        d.addErrback(failed)
        return d

    @app.route("/v1/topics/<string:topic>/ws", methods=["GET"])
    def websocket(self, request: Any, topic: str) -> Any:
        """Upgrade to a WebSocket feed (see :mod:`sprawl.http.websocket`).

        The query is validated before the upgrade, so a bad one is a plain
        4xx with the JSON error shape.
        """
        from sprawl.http import websocket as ws

        try:
            gname = self._arg(request, "group")
            # A group lives in its topic: a group feed of a missing topic is a 404.
            t = self.broker.get_topic(topic) if gname is not None else self._topic_or_wait(topic)
            spec, from_time = self._start_spec(request)
            partition = self._int_arg(request, "partition", None, 0, 1023)
            parts = self._partitions(request, t) if t is not None else []
            lei = self._arg(request, "last_event_id")
            if lei is not None and not lei:
                raise BadRequest("last_event_id must be PARTITION:OFFSET", code="invalid_last_event_id")
            resume = parse_last_event_id(lei.encode() if lei else None)
            max_in_flight = self._int_arg(request, "max_in_flight", 100, 1, MAX_FETCH) or 100
            max_bytes = self._max_bytes(request)
            g = None
            if gname is not None:
                if spec is not None or from_time is not None or resume:
                    raise BadRequest(
                        "group mode starts where the group is; from/from_time/last_event_id do not apply",
                        code="invalid_parameter",
                    )
                g = self.broker.get_group(t, gname)
            if not ws.is_upgrade(request):
                raise SprawlError(
                    "this route speaks WebSocket: send an Upgrade: websocket request",
                    code="upgrade_required",
                    status=426,
                )
        except SprawlError as e:
            if e.status == 426:
                request.setHeader(b"upgrade", b"websocket")
            return self._render_error(request, Failure(e))
        principal = getattr(request, "sprawl_principal", None)
        if g is not None:
            return ws.ws_resource(
                self,
                t,
                group=g,
                max_in_flight=max_in_flight,
                principal=principal,
                max_bytes=max_bytes,
                **self.ws_options,
            )
        if t is None:
            return ws.ws_resource(
                self,
                None,
                name=topic,
                appearing=lambda: self._when_created(topic, partition),
                principal=principal,
                max_bytes=max_bytes,
                **self.ws_options,
            )

        def go(starts: dict[int, int]) -> Any:
            return ws.ws_resource(
                self, t, cursors=starts, principal=principal, max_bytes=max_bytes, **self.ws_options
            )

        d = self._stream_starts(t, parts, spec, from_time, resume)
        d.addCallback(go)

        def failed(f: Failure) -> Any:
            if request.finished or request._disconnected:
                return None
            return self._render_error(request, f)

        d.addErrback(failed)
        return d

    # -- topics ------------------------------------------------------------------------

    @app.route("/v1/topics", methods=["GET"])
    @_route("topics")
    def list_topics(self, request: Any) -> Any:
        b = self.broker

        def answer(_: object = None) -> Any:
            return {"topics": [b.summarize_topic(t) for _, t in sorted(b.topics.items())]}

        if self._linearizable(request):
            return self.control.linearizable().addCallback(answer)
        return answer()

    @staticmethod
    def _linearizable(request: Any) -> bool:
        """``?consistency=linearizable``: answer only after a Raft ReadIndex
        round confirms this node has applied everything committed before."""
        values = request.args.get(b"consistency")
        if not values:
            return False
        raw = values[0]
        if raw == b"local":
            return False
        if raw == b"linearizable":
            return True
        raise BadRequest("consistency must be 'local' or 'linearizable'", code="invalid_parameter")

    @app.route("/v1/topics/<string:topic>", methods=["PUT"])
    @_route("topic_put")
    def put_topic(self, request: Any, topic: str) -> Any:
        body = self._json_body(request, required=False)

        def answer(r: tuple[Any, bool]) -> Any:
            t, created = r
            request.setResponseCode(201 if created else 200)
            return self.broker.describe_topic(t)

        return self.control.put_topic(topic, body).addCallback(answer)

    @app.route("/v1/topics/<string:topic>", methods=["GET"])
    @_route("topic_get")
    def get_topic(self, request: Any, topic: str) -> Any:
        if self._linearizable(request):
            return self.control.linearizable().addCallback(lambda _: self._describe_topic(topic))
        return self._describe_topic(topic)

    def _describe_topic(self, topic: str) -> dict[str, Any]:
        out = self.broker.describe_topic(self.broker.get_topic(topic))
        if self.plane is not None:
            for d in out["partition_details"]:
                d.update(self.plane.partition_view(topic, d["partition"]))
        return out

    @app.route("/v1/topics/<string:topic>", methods=["DELETE"])
    @_route("topic_delete")
    def delete_topic(self, request: Any, topic: str) -> Any:
        def answer(_: object) -> bytes:
            request.setResponseCode(204)
            return b""

        return self.control.delete_topic(topic).addCallback(answer)

    # -- groups --------------------------------------------------------------------------

    @app.route("/v1/topics/<string:topic>/groups/<string:group>", methods=["PUT"])
    @_route("group_put")
    def put_group(self, request: Any, topic: str, group: str) -> Any:
        body = self._json_body(request, required=False)
        # Validate before ensure_topic: a bad request must not create the topic.
        existing = self.broker.topics.get(topic)
        old = existing.groups.get(group) if existing else None
        self.broker.group_config_from(topic, group, body, old.config if old else None)
        dlq = body.get("dead_letter_topic")
        principal = getattr(request, "sprawl_principal", None)
        if principal is not None and dlq is not None:
            # The group will publish there: whoever sets it up must be allowed to.
            principal.require("publish", dlq)
        d = self.broker.ensure_topic(topic)

        def made(t: Any) -> Any:
            def answer(r: tuple[Any, bool]) -> Any:
                g, created = r
                request.setResponseCode(201 if created else 200)
                return g.describe(t.high_watermarks())

            return self.control.put_group(t, group, body).addCallback(answer)

        return d.addCallback(made)

    @app.route("/v1/topics/<string:topic>/groups/<string:group>", methods=["GET"])
    @_route("group_get")
    def get_group(self, request: Any, topic: str, group: str) -> Any:
        t = self.broker.get_topic(topic)
        g = self.broker.get_group(t, group)
        if self.plane is not None:
            return defer.ensureDeferred(self.plane.groups.describe(t, group))
        return g.describe(t.high_watermarks())

    @app.route("/v1/topics/<string:topic>/groups/<string:group>", methods=["DELETE"])
    @_route("group_delete")
    def delete_group(self, request: Any, topic: str, group: str) -> Any:
        t = self.broker.get_topic(topic)

        def answer(_: object) -> bytes:
            request.setResponseCode(204)
            return b""

        return self.control.delete_group(t, group).addCallback(answer)

    @app.route("/v1/topics/<string:topic>/groups/<string:group>/pull", methods=["POST"])
    @_route("group_pull")
    def pull(self, request: Any, topic: str, group: str) -> Any:
        body = self._json_body(request, required=False)
        unknown = set(body) - {"max", "wait_ms", "max_bytes"}
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}", code="invalid_field")
        mx = body.get("max", 10)
        wait_ms = body.get("wait_ms", 0)
        max_bytes = body.get("max_bytes", DEFAULT_READ_BYTES)
        if not isinstance(mx, int) or isinstance(mx, bool) or not 1 <= mx <= MAX_FETCH:
            raise BadRequest(f"max must be an integer 1..{MAX_FETCH}", code="invalid_field")
        if not isinstance(wait_ms, int) or isinstance(wait_ms, bool) or not 0 <= wait_ms <= MAX_WAIT_MS:
            raise BadRequest(f"wait_ms must be an integer 0..{MAX_WAIT_MS}", code="invalid_field")
        if (
            not isinstance(max_bytes, int)
            or isinstance(max_bytes, bool)
            or not 1 <= max_bytes <= MAX_READ_BYTES
        ):
            raise BadRequest(f"max_bytes must be an integer 1..{MAX_READ_BYTES}", code="invalid_field")
        t = self.broker.get_topic(topic)
        g = self.broker.get_group(t, group)
        if self.plane is not None:
            d = defer.ensureDeferred(self.plane.groups.pull(t, group, mx, wait_ms, max_bytes))
        else:
            d = self.broker.pull(t, g, mx, wait_ms, max_bytes=max_bytes)
        request.notifyFinish().addErrback(lambda _: d.cancel())

        def answer(got: list[Any]) -> bytes:
            parts = []
            for dv, r in got:
                j = r.to_json()
                parts.append(
                    j[:-1]
                    + b',"ack_id":"%s","delivery_attempt":%d,"ack_deadline":%d}'
                    % (dv.ack_id.encode(), dv.attempt, dv.deadline_ms)
                )
            m = self.metrics
            if m is not None and got:
                m.delivered(topic, "group", len(got), sum(r.message_bytes for _, r in got))
            request.setHeader(b"content-type", JSON)
            return b'{"messages":[' + b",".join(parts) + b"]}"

        return d.addCallback(answer)

    def _ack_ids(self, body: dict[str, Any], extra: set[str]) -> list[str]:
        unknown = set(body) - ({"ack_ids"} | extra)
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}", code="invalid_field")
        ids = body.get("ack_ids")
        if not isinstance(ids, list) or not all(isinstance(a, str) for a in ids):
            raise BadRequest("ack_ids must be an array of strings", code="invalid_field")
        if len(ids) > MAX_FETCH:
            raise PayloadTooLarge(f"at most {MAX_FETCH} ack ids per request", code="batch_too_large")
        return ids

    @app.route("/v1/topics/<string:topic>/groups/<string:group>/ack", methods=["POST"])
    @_route("group_ack")
    def ack(self, request: Any, topic: str, group: str) -> Any:
        ids = self._ack_ids(self._json_body(request), set())
        t = self.broker.get_topic(topic)
        g = self.broker.get_group(t, group)
        if self.plane is not None:
            d = defer.ensureDeferred(self.plane.groups.settle(t, group, ids, False))
        else:
            d = self.broker.ack(t, g, ids)
        return d.addCallback(lambda refused: {"acked": len(ids) - len(refused), "refused": refused})

    @app.route("/v1/topics/<string:topic>/groups/<string:group>/nack", methods=["POST"])
    @_route("group_nack")
    def nack(self, request: Any, topic: str, group: str) -> Any:
        body = self._json_body(request)
        ids = self._ack_ids(body, {"delay_ms"})
        delay = body.get("delay_ms", 0)
        if not isinstance(delay, int) or isinstance(delay, bool) or not 0 <= delay <= 86_400_000:
            raise BadRequest("delay_ms must be an integer 0..86400000", code="invalid_field")
        t = self.broker.get_topic(topic)
        g = self.broker.get_group(t, group)
        if self.plane is not None:
            d = defer.ensureDeferred(self.plane.groups.settle(t, group, ids, True, delay))
        else:
            d = self.broker.nack(t, g, ids, delay)
        return d.addCallback(lambda refused: {"nacked": len(ids) - len(refused), "refused": refused})

    # -- cluster -------------------------------------------------------------------------

    def _member(self) -> dict[str, Any]:
        return {
            "id": self.info.node_id,
            "peer": self.info.peer,
            "http": self.info.http,
            "state": "alive",
            "incarnation": 0,
            "version": __version__,
        }

    def _members(self) -> list[dict[str, Any]]:
        """Every member gossip knows (this node included), or this node alone."""
        m = self.info.membership
        if m is None:
            return [self._member()]
        return list(m.member_views())

    def _live_member_ids(self) -> list[str]:
        m = self.info.membership
        if m is None:
            return [self.info.node_id]
        return list(m.live_member_ids())

    def _cluster(self) -> dict[str, Any]:
        nid = self.info.node_id
        raft = self.info.raft
        if raft is None:
            return {
                "node_id": nid,
                "leader": nid,
                "term": 1,
                "mode": "single-node",
                "members": self._members(),
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
            "members": self._members(),
            "raft": view,
        }
        if self.plane is not None:
            out["partitions"] = self.plane.summary()
        return out

    def _placement(self) -> dict[str, Any]:
        return {
            "topics": {
                name: {
                    str(lg.partition): {"replicas": list(lg.replicas), "leader": lg.leader, "epoch": lg.epoch}
                    for lg in t.logs
                }
                for name, t in sorted(self.broker.topics.items())
            }
        }

    @app.route("/v1/cluster", methods=["GET"])
    @_route("cluster")
    def cluster(self, request: Any) -> Any:
        if self._linearizable(request):
            return self.control.linearizable().addCallback(lambda _: self._cluster())
        return self._cluster()

    @app.route("/v1/cluster/placement", methods=["GET"])
    @_route("placement")
    def placement(self, request: Any) -> Any:
        return self._placement()

    # -- damaged ranges ------------------------------------------------------------------------

    @app.route("/v1/damage", methods=["GET"])
    @_route("damage")
    def damage(self, request: Any) -> Any:
        """This node's damaged and skipped ranges, and the background scrub's progress."""
        ig = self.broker.integrity
        return {
            "node_id": self.info.node_id,
            "ranges": ig.ranges(),
            "damaged": ig.map.count("damaged"),
            "skipped": ig.map.count("skipped"),
            "found": dict(ig.found),
            "repaired": ig.repaired,
            "skipped_total": ig.skipped,
            "scrub": ig.scrubber.view() if ig.scrubber is not None else {"enabled": False},
        }

    @app.route("/v1/damage/scrub", methods=["POST"])
    @_route("damage_scrub")
    def scrub_now(self, request: Any) -> Any:
        """Start a scrub pass now (or right after the running one)."""
        sc = self.broker.integrity.scrubber
        if sc is None or not sc.enabled:
            raise SprawlError("the scrub is off on this node (--scrub-rate 0)", code="scrub_off", status=409)
        request.setResponseCode(202)
        return {"pass": sc.run_now(), "scrub": sc.view()}

    @app.route("/v1/topics/<string:topic>/damage/skip", methods=["POST"])
    @_route("damage_skip")
    def skip_damage(self, request: Any, topic: str) -> Any:
        """An operator gives up a damaged range of this node's copy of a
        partition (nothing to repair it from): readers pass over it."""
        body = self._json_body(request)
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

    @app.route("/healthz", methods=["GET"])
    @_route("healthz")
    def healthz(self, request: Any) -> Any:
        return {"status": "ok", "node_id": self.info.node_id}

    def _readiness(self, fault_tolerant: bool = False) -> tuple[bool, str]:
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
        if m is not None and not m.joined and not getattr(raft, "forced", ""):
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

    @app.route("/readyz", methods=["GET"])
    @_route("readyz")
    def readyz(self, request: Any) -> Any:
        flag = self._arg(request, "fault_tolerant")
        if flag not in (None, "0", "1", "true", "false"):
            raise BadRequest("query parameter fault_tolerant must be 1 or 0", code="invalid_parameter")
        ok, why = self._readiness(fault_tolerant=flag in ("1", "true"))
        if not ok:
            request.setResponseCode(503)
            return {"ready": False, "reason": why, "error": {"code": "not_ready", "message": why}}
        leader = self.info.raft.leader_name if self.info.raft is not None else self.info.node_id
        return {"ready": True, "leader": leader, "node_id": self.info.node_id}

    @app.route("/metrics", methods=["GET"])
    @_route("metrics")
    def metrics_text(self, request: Any) -> Any:
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return self.metrics.render() if self.metrics is not None else b""

    # -- dashboard ------------------------------------------------------------------------

    @app.route("/", methods=["GET"])
    @_route("dashboard")
    def dashboard(self, request: Any) -> Any:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"content-security-policy", dashboard_ui.CSP)
        request.setHeader(b"x-content-type-options", b"nosniff")
        return dashboard_ui.index_html()

    @app.route("/static/<string:name>", methods=["GET"])
    @_route("static")
    def static(self, request: Any, name: str) -> Any:
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

    @app.route("/v1/dashboard/stream", methods=["GET"])
    def dashboard_stream(self, request: Any) -> Any:
        """``text/event-stream`` of dashboard snapshots, one per second."""
        if len(self.dashboards) >= dashboard_ui.MAX_STREAMS:
            e = SprawlError(
                f"at most {dashboard_ui.MAX_STREAMS} dashboards may be open on a node",
                code="too_many_dashboards",
                status=503,
            )
            return self._render_error(request, Failure(e))
        s = dashboard_ui.DashboardStream(
            request,
            self.clock,
            lambda: dashboard_ui.encode_snapshot(self),
            registry=self.dashboards,
            stopping=lambda: bool(self.broker.stopping),
        )
        if self.metrics is not None:
            self.metrics.http_requests.labels("dashboard_stream", "GET", "200").inc()
        return s.start()

    def close_dashboards(self) -> None:
        """End every dashboard stream (node shutdown)."""
        for s in list(self.dashboards):
            s._end(b'event: error\ndata: {"code":"stopping","message":"node is stopping"}\n\n')

    # -- seed-compatible routes ----------------------------------------------------------------

    @app.route("/publish", methods=["POST"])
    @_route("seed_publish")
    def seed_publish(self, request: Any) -> Any:
        body = self._json_body(request)
        topic = body.get("topic")
        if not isinstance(topic, str):
            raise BadRequest("topic must be a string", code="invalid_field")
        if "payload" not in body:
            raise BadRequest("payload is required", code="invalid_field")
        payload = body["payload"]
        try:
            data = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else _encode(payload)
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
        d.addCallback(lambda t: self.publish_records(t, [rec], "quorum"))
        return d.addCallback(
            lambda r: {
                "status": "published",
                "id": r.ids[0],
                "offset": r.offsets[0],
                "partition": r.partitions[0],
            }
        )

    @app.route("/subscribe", methods=["POST"])
    @_route("seed_subscribe")
    def seed_subscribe(self, request: Any) -> Any:
        body = self._json_body(request)
        topics = body.get("topics")
        if not isinstance(topics, list) or not topics or not all(isinstance(x, str) for x in topics):
            raise BadRequest("topics must be a non-empty array of topic names", code="invalid_field")
        gid = body.get("id")
        if gid is None:
            import uuid

            gid = "sub-" + uuid.uuid4().hex[:12]
        if not isinstance(gid, str):
            raise BadRequest("id must be a string", code="invalid_field")
        from sprawl.pubsub import check_topic_name

        check_group_name(gid)
        for name in topics:
            check_topic_name(name)
        from twisted.internet.defer import gatherResults

        def one(name: str) -> Deferred[Any]:
            # The same path as PUT .../groups/{group}: through Raft in a cluster.
            d = self.broker.ensure_topic(name)
            return d.addCallback(
                lambda t: self.control.put_group(t, gid, {}) if gid not in t.groups else None
            )

        d: Deferred[Any] = gatherResults([one(n) for n in topics], consumeErrors=True)
        d.addErrback(_unwrap_first_error)
        return d.addCallback(lambda _: {"status": "subscribed", "id": gid, "topics": topics})

    @app.route("/status", methods=["GET"])
    @_route("seed_status")
    def seed_status(self, request: Any) -> Any:
        ok, why = self._readiness()
        return {
            "status": "ok" if ok else "degraded",
            "reason": why,
            "node_id": self.info.node_id,
            "version": __version__,
            "uptime_s": round(time.time() - self.info.started, 3),
            "cluster_members": self._members(),
            "topics": len(self.broker.topics),
            "raft": self._cluster()["raft"],
        }

    @app.route("/health", methods=["GET"])
    @_route("seed_health")
    def seed_health(self, request: Any) -> Any:
        return {"status": "healthy", "node_id": self.info.node_id}

    @app.route("/topics", methods=["GET"])
    @_route("seed_topics")
    def seed_topics(self, request: Any) -> Any:
        b = self.broker
        return {"topics": [b.summarize_topic(t) for _, t in sorted(b.topics.items())]}

    @app.route("/dht", methods=["GET"])
    @_route("seed_dht")
    def seed_dht(self, request: Any) -> Any:
        out = self._placement()
        out["node_id"] = self.info.node_id
        out["members"] = self._live_member_ids()
        return out

    @app.route("/store", methods=["GET"])
    @_route("seed_store")
    def seed_store(self, request: Any) -> Any:
        b = self.broker
        return {
            "node_id": self.info.node_id,
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


def _setter(out: dict[int, int], key: int) -> Callable[[int], None]:
    def set_value(value: int) -> None:
        out[key] = value

    return set_value


def _unwrap_first_error(f: Failure) -> Any:
    """``gatherResults`` wraps the first failure; answer with the original."""
    sub = getattr(f.value, "subFailure", None)
    return sub if sub is not None else f


def decode_json_body(raw: bytes) -> Any:
    """A JSON request body, or 400 ``invalid_json``: malformed, not UTF-8, or
    nested deeper than the decoder allows (msgspec raises RecursionError)."""
    try:
        return _decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as e:  # invalid UTF-8 raises the latter
        raise BadRequest(f"malformed JSON: {e}", code="invalid_json") from None
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply", code="invalid_json") from None


def check_id(mid: Any, i: int) -> None:
    """Message ids are 1-256 character strings."""
    if not isinstance(mid, str) or not 1 <= len(mid) <= 256:
        raise BadRequest(f"messages[{i}].id must be a string of 1-256 characters", code="invalid_message")


class _InMessage(msgspec.Struct, forbid_unknown_fields=True):
    payload: str | None = None
    payload_b64: str | msgspec.UnsetType = msgspec.UNSET  # null must not pass as absent
    key: str | None = None
    headers: dict[str, str] | None = None
    id: str | None = None


class _PublishBody(msgspec.Struct, forbid_unknown_fields=True):
    messages: list[_InMessage]
    acks: str = "quorum"


_publish_decoder = msgspec.json.Decoder(_PublishBody)


def _fast_publish(raw: bytes, max_batch: int) -> tuple[list[Record], str] | None:
    """Typed decoding of a well-formed publish body (the hot path).

    Returns None when anything is off, so the precise validator reports it.
    """
    try:
        body = _publish_decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    msgs = body.messages
    if not msgs or len(msgs) > max_batch or body.acks not in ACKS:
        return None
    out: list[Record] = []
    append = out.append
    for m in msgs:
        p = m.payload
        if p is None or m.payload_b64 is not msgspec.UNSET:
            return None
        mid = m.id
        key = m.key
        headers = m.headers
        if (
            (mid is not None and not 1 <= len(mid) <= 256)
            or (key is not None and len(key) > 1024)
            or (headers is not None and len(headers) > 64)
        ):
            return None
        append(Record(-1, 0, 0, mid, key, headers or None, p.encode("utf-8", "surrogatepass"), True))
    return out, body.acks


def parse_message(m: Any, i: int) -> Record:
    """Validate one publish item into a :class:`Record` (offset unassigned)."""
    if not isinstance(m, dict):
        raise BadRequest(f"messages[{i}] must be an object", code="invalid_message")
    unknown = set(m) - {"payload", "payload_b64", "key", "headers", "id"}
    if unknown:
        raise BadRequest(
            f"messages[{i}] has unknown field(s): {', '.join(sorted(unknown))}", code="invalid_message"
        )
    if "payload" in m:
        if "payload_b64" in m:
            raise BadRequest(f"messages[{i}] has both payload and payload_b64", code="invalid_message")
        p = m["payload"]
        if not isinstance(p, str):
            raise BadRequest(f"messages[{i}].payload must be a string", code="invalid_message")
        data, is_text = p.encode("utf-8", "surrogatepass"), True
    elif "payload_b64" in m:
        p = m["payload_b64"]
        if not isinstance(p, str):
            raise BadRequest(f"messages[{i}].payload_b64 must be a base64 string", code="invalid_message")
        try:
            data, is_text = base64.b64decode(p, validate=True), False
        except (binascii.Error, ValueError):
            raise BadRequest(
                f"messages[{i}].payload_b64 is not valid base64", code="invalid_message"
            ) from None
    else:
        raise BadRequest(f"messages[{i}] needs payload or payload_b64", code="invalid_message")
    key = m.get("key")
    if key is not None and (not isinstance(key, str) or len(key) > 1024):
        raise BadRequest(
            f"messages[{i}].key must be a string of at most 1024 characters", code="invalid_message"
        )
    headers = m.get("headers")
    if headers is not None:
        if (
            not isinstance(headers, dict)
            or len(headers) > 64
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
        ):
            raise BadRequest(
                f"messages[{i}].headers must map strings to strings (at most 64)", code="invalid_message"
            )
        headers = headers or None
    mid = m.get("id")
    if mid is not None:
        check_id(mid, i)
    return Record(-1, 0, 0, mid, key, headers, data, is_text)


def _cursor(resolved: int, asked: Any) -> int:
    """Where a client's read starts: ``resolved`` by the partition, but never
    before an offset the client gave itself (``from``, ``Last-Event-ID``).  A
    node clamps an offset past its high watermark down to it; the client may
    have read that far already -- from another replica, or from the leader
    before a failover -- before this node learnt the high watermark, and must
    not get those messages again: it waits at its own offset instead."""
    return max(resolved, asked) if isinstance(asked, int) else resolved


def parse_last_event_id(value: bytes | None) -> dict[int, int]:
    """``P:OFFSET`` or a comma-separated list of them → {partition: offset}."""
    if not value:
        return {}
    out: dict[int, int] = {}
    try:
        text = value.decode("ascii")
        for item in text.split(","):
            p, o = item.strip().split(":")
            pi, oi = int(p), int(o)
            if pi < 0 or oi < 0:
                raise ValueError
            out[pi] = oi
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("Last-Event-ID must be PARTITION:OFFSET", code="invalid_last_event_id") from None
    return out
