"""The lean wire formats of ``POST .../messages``, beside the JSON batch.

Opt-in by ``Content-Type`` (docs/api.md, "Lean wire formats"); the JSON body and
the raw single-message body are unchanged:

* ``application/x-ndjson`` -- one message object per line, the fields of a JSON
  batch item (``payload`` or ``payload_b64``, ``key``, ``headers``, ``id``);
  ``acks`` from the query (default ``quorum``); blank lines are skipped;
* ``application/msgpack`` (or ``application/x-msgpack``) -- one msgpack map
  ``{"messages": [{"payload": str | bin, "key"?, "headers"?, "id"?}], "acks"?}``:
  a ``bin`` payload is a binary message, a ``str`` one text; no base64.

The same msgpack body travels in binary WebSocket publish frames, wrapped as
``{"publish": {...}, "ref"?}`` (:func:`parse_pack_frame`, used by
:mod:`sprawl.http.websocket`).

Both are bounded like the JSON batch: the body by the server's ``max_body``
bytes, the messages by ``max_batch_messages``; a bad frame is a 400 naming the
line or the path of the bad field (``invalid_ndjson``, ``invalid_msgpack``,
``invalid_message``), a batch too large a 413 ``batch_too_large``.  The client
side is :mod:`sprawl.client.wire`.

A lean body ignores the raw-body query parameters (``key``, ``id``): the client
library marks its lean publishes with ``?id=`` (empty), which a node older than
these formats refuses before storing the body as one raw message.
"""

from __future__ import annotations

from typing import Any

import msgspec
from twisted.web.server import Request

from sprawl.errors import BadRequest, PayloadTooLarge
from sprawl.http.codec import arg, body_bytes, decode_json_body, fast_record, parse_message
from sprawl.log.record import Record
from sprawl.pubsub import ACKS

NDJSON = b"application/x-ndjson"
MSGPACK = (b"application/msgpack", b"application/x-msgpack", b"application/vnd.msgpack")


class _PackMessage(msgspec.Struct, forbid_unknown_fields=True):
    payload: Any  # str or bin (msgspec takes no union of both): checked below
    key: str | None = None
    headers: dict[str, str] | None = None
    id: str | None = None


class _PackBody(msgspec.Struct, forbid_unknown_fields=True):
    messages: list[_PackMessage]
    acks: str | msgspec.UnsetType = msgspec.UNSET  # null is not absent


_pack_decoder = msgspec.msgpack.Decoder(_PackBody)


class _PackFrame(msgspec.Struct, forbid_unknown_fields=True):
    """A binary WebSocket publish frame; its ``publish`` body is decoded second, so an
    error in it still carries the frame's ``ref``."""

    publish: msgspec.Raw
    ref: str | int | None = None


_frame_decoder = msgspec.msgpack.Decoder(_PackFrame)

#: First bytes of a msgpack map (fixmap, map 16, map 32): a binary WebSocket frame starting
#: with one is a msgpack frame; any other binary frame is read as JSON, as it always was.
PACK_MAP_START = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])


def parse_lean(request: Request, max_batch: int) -> tuple[list[Record], str] | None:
    """The records and acks level of a lean publish body; None when the
    ``Content-Type`` names no lean format (the JSON and raw bodies then)."""
    ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if ctype != NDJSON and ctype not in MSGPACK:
        return None
    acks = arg(request, "acks") or "quorum"
    if acks not in ACKS:
        raise BadRequest("acks must be one of quorum, leader, none", code="invalid_acks")
    raw = body_bytes(request)
    if ctype == NDJSON:
        return parse_ndjson(raw, max_batch), acks
    records, acks = parse_msgpack(raw, max_batch, acks)
    if acks not in ACKS:
        raise BadRequest("acks must be one of quorum, leader, none", code="invalid_acks")
    return records, acks


def _too_many(max_batch: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"at most {max_batch} messages per request", code="batch_too_large")


def parse_msgpack(raw: bytes, max_batch: int, default_acks: str) -> tuple[list[Record], str]:
    """A msgpack publish body: its records and acks level (``default_acks`` when absent)."""
    try:
        body = _pack_decoder.decode(raw)
    except msgspec.ValidationError as e:
        raise BadRequest(f"invalid msgpack publish body: {e}", code="invalid_msgpack") from None
    except (msgspec.DecodeError, RecursionError) as e:
        raise BadRequest(f"malformed msgpack: {e}", code="invalid_msgpack") from None
    msgs = body.messages
    if not msgs:
        raise BadRequest("messages must be a non-empty array", code="invalid_messages")
    if len(msgs) > max_batch:
        raise _too_many(max_batch)
    out: list[Record] = []
    append = out.append
    for m in msgs:
        p, mid, key, headers = m.payload, m.id, m.key, m.headers
        if (
            (mid is not None and not 1 <= len(mid) <= 256)
            or (key is not None and len(key) > 1024)
            or (headers is not None and len(headers) > 64)
        ):
            _check_fields(mid, key, headers, len(out))
        if type(p) is str:
            append(Record(-1, 0, 0, mid, key, headers or None, p.encode("utf-8", "surrogatepass"), True))
        elif type(p) is bytes:
            append(Record(-1, 0, 0, mid, key, headers or None, p, False))
        else:
            raise BadRequest(f"messages[{len(out)}].payload must be str or bin", code="invalid_msgpack")
    return out, body.acks if isinstance(body.acks, str) else default_acks


def parse_pack_frame(raw: bytes) -> tuple[str | int | None, bytes]:
    """A binary WebSocket publish frame ``{"publish": {"messages": [...], "acks"?}, "ref"?}``
    (msgpack): its ``ref`` and the msgpack of its publish body (for :func:`parse_msgpack`)."""
    try:
        frame = _frame_decoder.decode(raw)
    except msgspec.ValidationError as e:
        raise BadRequest(
            f"a binary frame must be a msgpack map {{publish, ref?}}: {e}", code="invalid_frame"
        ) from None
    except (msgspec.DecodeError, RecursionError) as e:
        raise BadRequest(f"malformed msgpack: {e}", code="invalid_msgpack") from None
    return frame.ref, bytes(frame.publish)


def _check_fields(mid: str | None, key: str | None, headers: dict[str, str] | None, i: int) -> None:
    """The limits of a message's id, key and headers (as the JSON batch has them)."""
    if mid is not None and not 1 <= len(mid) <= 256:
        raise BadRequest(f"messages[{i}].id must be a string of 1-256 characters", code="invalid_message")
    if key is not None and len(key) > 1024:
        raise BadRequest(
            f"messages[{i}].key must be a string of at most 1024 characters", code="invalid_message"
        )
    if headers is not None and len(headers) > 64:
        raise BadRequest(
            f"messages[{i}].headers must map strings to strings (at most 64)", code="invalid_message"
        )


def parse_ndjson(raw: bytes, max_batch: int) -> list[Record]:
    """An NDJSON publish body: one record per non-blank line."""
    # Count before splitting: a body of newlines alone must not become a million empty lines.
    if raw.count(b"\n") > 2 * max_batch + 1:
        raise _too_many(max_batch)
    out: list[Record] = []
    for n, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        if len(out) >= max_batch:
            raise _too_many(max_batch)
        i = len(out)
        r = fast_record(line)
        if r is None:
            try:
                m = decode_json_body(line)
            except BadRequest as e:
                raise BadRequest(f"line {n}: {e.message}", code="invalid_ndjson") from None
            r = parse_message(m, i)
        out.append(r)
    if not out:
        raise BadRequest("an NDJSON body needs at least one message line", code="invalid_messages")
    return out
