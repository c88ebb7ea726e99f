"""The HTTP API's codec: request parsing, answer encoding, ``Last-Event-ID``.

Pure functions over a twisted.web request (query arguments, headers, the
body) and over records and publish results: what the route modules
(:mod:`sprawl.http.messages`, :mod:`sprawl.http.fetch`, :mod:`sprawl.http.groups`,
...) and the WebSocket frames (:mod:`sprawl.http.websocket`) share.  Every
refusal is a :class:`~sprawl.errors.SprawlError` with a code; nothing here
touches state.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import msgspec
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from sprawl.delivery.groups import Delivery
from sprawl.errors import BadRequest, Overloaded, PayloadTooLarge, SprawlError
from sprawl.log.record import DEFAULT_READ_BYTES, MAX_READ_BYTES, Record
from sprawl.pubsub import ACKS, PublishResult
from sprawl.pubsub.filters import FilterError, Selection

# The namespace the API's log lines have always had (operators filter on it).
log = Logger(namespace="sprawl.http.api")

encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode

JSON = b"application/json"
MAX_WAIT_MS = 30_000
MAX_FETCH = 10_000

# -- answers ------------------------------------------------------------------------


def json_error(request: Request, code: str, message: str, doc: Any = None) -> bytes:
    """The body of a JSON error (``doc``, or code and message), with its
    ``Content-Length`` (never chunked framing: streaming routes answer
    errors like every other route)."""
    body = encode(doc or {"error": {"code": code, "message": message}})
    request.setHeader(b"content-type", JSON)
    request.setHeader(b"content-length", b"%d" % len(body))
    return body


def render_error(request: Request, f: Failure) -> bytes:
    """Answer a failed request: a :class:`SprawlError`'s status, code and
    details (``Retry-After`` where it applies); anything else is logged and
    answered 500 ``internal_error``."""
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
        log.failure("unexpected error serving {method} {path}", f, method=request.method, path=request.path)
        status, code, message = 500, "internal_error", "internal error; see the node's log"
    request.setResponseCode(status)
    return json_error(request, code, message, body)


def publish_answer(res: PublishResult, acks: str) -> dict[str, Any]:
    """The answer to a publish (HTTP body, or a WebSocket ``published`` frame)."""
    return {
        "offsets": res.offsets,
        "ids": res.ids,
        "partitions": res.partitions,
        "duplicates": res.duplicates,
        "acks": acks,
        "stored": res.stored,
    }


def leased(dv: Delivery, r: Record) -> bytes:
    """A leased group message: the record's JSON with its ``ack_id``,
    ``delivery_attempt`` and ``ack_deadline``."""
    j = r.to_json()
    return j[:-1] + b',"ack_id":"%s","delivery_attempt":%d,"ack_deadline":%d}' % (
        dv.ack_id.encode(),
        dv.attempt,
        dv.deadline_ms,
    )


# -- request parts ----------------------------------------------------------------------


def body_bytes(request: Request) -> bytes:
    """The request body (empty when there is none)."""
    content: Any = request.content
    return content.read() if content is not None else b""  # type: ignore[no-any-return]


def json_body(request: Request, required: bool = True) -> Any:
    """The request body as a JSON object (``{}`` when empty and not required)."""
    raw = body_bytes(request)
    if not raw.strip():
        if required:
            raise BadRequest("request body must be a JSON object", code="invalid_json")
        return {}
    body = decode_json_body(raw)
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    return body


def decode_json_body(raw: bytes) -> Any:
    """A JSON request body, or 400 ``invalid_json``: malformed, not UTF-8, or
    nested deeper than the decoder allows (msgspec raises RecursionError)."""
    try:
        return _decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as e:  # invalid UTF-8 raises the latter
        raise BadRequest(f"malformed JSON: {e}", code="invalid_json") from None
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply", code="invalid_json") from None


def arg(request: Request, name: str) -> str | None:
    """A query parameter (the first of its name) as text, or None."""
    v = request.args.get(name.encode())
    if not v:
        return None
    try:
        return v[0].decode("utf-8")  # type: ignore[no-any-return]
    except UnicodeDecodeError:
        raise BadRequest(f"query parameter {name} is not UTF-8", code="invalid_parameter") from None


def int_arg(request: Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    """An integer query parameter within ``lo..hi``, or ``default``."""
    v = arg(request, name)
    if v is None or v == "":
        return default
    try:
        n = int(v)
    except ValueError:
        raise BadRequest(f"query parameter {name} must be an integer", code="invalid_parameter") from None
    if not lo <= n <= hi:
        raise BadRequest(f"query parameter {name} must be in {lo}..{hi}", code="invalid_parameter")
    return n


def max_bytes_arg(request: Request) -> int:
    """``?max_bytes=``: bytes of messages one answer (or one stream write) may carry."""
    return int_arg(request, "max_bytes", DEFAULT_READ_BYTES, 1, MAX_READ_BYTES) or DEFAULT_READ_BYTES


def start_spec(request: Request) -> tuple[str | int | None, int | None]:
    """Where a read starts: ``?from=`` (offset, earliest, latest) or ``?from_time=``."""
    frm = arg(request, "from")
    from_time = int_arg(request, "from_time", None, 0, 2**63 - 1)
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


def linearizable(request: Request) -> bool:
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


def ack_ids(body: dict[str, Any], extra: set[str]) -> list[str]:
    """The ``ack_ids`` of an ack or nack body (``extra``: its other allowed fields)."""
    unknown = set(body) - ({"ack_ids"} | extra)
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}", code="invalid_field")
    ids = body.get("ack_ids")
    if not isinstance(ids, list) or not all(isinstance(a, str) for a in ids):
        raise BadRequest("ack_ids must be an array of strings", code="invalid_field")
    if len(ids) > MAX_FETCH:
        raise PayloadTooLarge(f"at most {MAX_FETCH} ack ids per request", code="batch_too_large")
    return ids


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


def cursor(resolved: int, asked: Any) -> int:
    """Where a client's read starts: ``resolved`` by the partition, but never
    before an offset the client gave itself (``from``, ``Last-Event-ID``).  A
    node clamps an offset past its high watermark down to it; the client may
    have read that far already -- from another replica, or from the leader
    before a failover -- before this node learnt the high watermark, and must
    not get those messages again: it waits at its own offset instead."""
    return max(resolved, asked) if isinstance(asked, int) else resolved


# -- publish bodies ---------------------------------------------------------------------


def parse_messages(request: Request, max_batch: int) -> tuple[list[Record], str]:
    """The records and acks level of ``POST .../messages``: a JSON batch, or
    one raw-body message described by the query (``acks``, ``key``, ``id``)."""
    ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    # The raw-body query parameters are checked whatever the body (a JSON batch ignores them).
    q_acks, q_key, q_id = arg(request, "acks"), arg(request, "key"), arg(request, "id")
    if q_acks and q_acks not in ACKS:
        raise BadRequest("acks must be one of quorum, leader, none", code="invalid_acks")
    if q_key is not None and len(q_key) > 1024:
        raise BadRequest("query parameter key must be at most 1024 characters", code="invalid_parameter")
    if q_id is not None and not 1 <= len(q_id) <= 256:
        raise BadRequest("query parameter id must be 1-256 characters", code="invalid_parameter")
    if ctype == JSON or ctype.endswith(b"+json"):
        raw = body_bytes(request)
        fast = fast_publish(raw, max_batch)
        if fast is not None:
            return fast
        content: Any = request.content
        content.seek(0)
        body = json_body(request)
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
        raw = body_bytes(request)
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


def fast_publish(raw: bytes, max_batch: int) -> tuple[list[Record], str] | None:
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
        r = _fast_message(m)
        if r is None:
            return None
        append(r)
    return out, body.acks


def _fast_message(m: _InMessage) -> Record | None:
    """A well-formed text message as a record; None when anything is off."""
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
    return Record(-1, 0, 0, mid, key, headers or None, p.encode("utf-8", "surrogatepass"), True)


_message_decoder = msgspec.json.Decoder(_InMessage)


def fast_record(raw: bytes) -> Record | None:
    """Typed decoding of one well-formed JSON message object (an NDJSON line);
    None when anything is off, so :func:`parse_message` reports it."""
    try:
        return _fast_message(_message_decoder.decode(raw))
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None


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


def is_upgrade(request: Request) -> bool:
    """Whether the request asks for a WebSocket upgrade."""
    up = (request.getHeader(b"upgrade") or b"").lower()
    return up == b"websocket"


# -- Deferred helpers ---------------------------------------------------------------------


def unwrap_first_error(f: Failure) -> Any:
    """``gatherResults`` wraps the first failure; answer with the original."""
    sub = getattr(f.value, "subFailure", None)
    return sub if sub is not None else f


# -- server-side filters and projections ------------------------------------------------


def selection_arg(request: Request) -> Selection | None:
    """``?filter=EXPR`` and ``?fields=a,b.c`` (:mod:`sprawl.pubsub.filters`), or None; a bad
    one is a 400 ``invalid_filter`` naming the error."""
    try:
        return Selection.of(arg(request, "filter"), arg(request, "fields"))
    except FilterError as exc:
        raise BadRequest(str(exc), code="invalid_filter") from None
