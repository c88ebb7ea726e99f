"""Sprawl's lean wire formats, client side: many messages per frame, both ways.

Opt-in beside the JSON API (docs/api.md, "Lean wire formats"):

* **publish** -- :func:`encode_publish` builds a msgpack body
  (``Content-Type: application/msgpack``: ``{"messages": [...], "acks"?}``, a
  ``bytes`` payload travels as msgpack ``bin``, no base64); :func:`encode_ndjson`
  one JSON message object per line (``application/x-ndjson``, ``acks`` in the
  query).  A message is a mapping with ``payload`` and optional ``key``,
  ``headers``, ``id`` (NDJSON: ``payload_b64`` for binary);
* **subscribe** -- ``GET .../stream?format=batch`` sends one SSE event per batch
  (``event: batch``, ``id: P:OFFSET`` of the batch's last message, ``data:`` a
  JSON array of the messages as the default format has them).  A
  :class:`BatchStreamDecoder` is fed the stream's bytes (after any chunked
  framing) and returns :class:`StreamBatch` es; it reads the default format's
  one-message events too.

Every decoder here is bounded: an event longer than ``max_event_bytes`` or
carrying more than ``max_messages`` is a :class:`WireError`, never a growing
buffer.  An ``error`` event of the server raises :class:`StreamError` with its
code.  Used by ``sprawlctl bench``, the side-by-side benchmark and the client
library (``SprawlClient(wire="lean")``, the default).

**Negotiation** (:func:`lean_publish`, :func:`refused_lean`): a node older than
the lean formats reads any body that is not JSON as *one raw message*.  So a
lean publish carries the marker query ``?id=`` (empty): a node that knows the
lean formats reads the body by its ``Content-Type`` and ignores the raw-body
parameters, while an older one refuses an empty ``id`` (400
``invalid_parameter``) before it stores anything.  The client then sends the
same batch as JSON to that node and remembers, per base URL, to send JSON there.
A stream needs no negotiation: an older node ignores ``format=batch`` and sends
one event per message, which :class:`BatchStreamDecoder` reads too.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from sprawl.client.errors import ClientError
from sprawl.client.lines import BoundedSplitter

#: The content type of a msgpack publish body.
MSGPACK = "application/msgpack"
#: The content type of an NDJSON publish body.
NDJSON = "application/x-ndjson"
#: The longest event a :class:`BatchStreamDecoder` buffers (a node writes at most 32 MB).
MAX_EVENT_BYTES = 40 * 1000**2
#: The most messages one event may carry (a node's read limit is 10,000 per chunk).
MAX_EVENT_MESSAGES = 100_000

_pack = msgspec.msgpack.Encoder().encode
_json = msgspec.json.Encoder().encode
_messages = msgspec.json.Decoder(list[dict[str, Any]])
_message = msgspec.json.Decoder(dict[str, Any])


class WireError(ClientError):
    """A frame broke the format or its bounds."""


class StreamError(ClientError):
    """The server ended the stream with an ``error`` event."""

    def __init__(self, code: str, message: str, detail: dict[str, Any]) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        #: The event's whole object (``cursors`` for ``slow_consumer``, ...).
        self.detail = detail


def encode_publish(messages: Iterable[Mapping[str, Any]], acks: str | None = None) -> bytes:
    """A msgpack publish body of ``messages`` (``acks``: quorum, leader or none)."""
    body: dict[str, Any] = {"messages": [dict(m) for m in messages]}
    if acks is not None:
        body["acks"] = acks
    return _pack(body)


#: The query of a lean publish: refused by a node that would read the body as one raw message.
LEAN_MARK = {"id": ""}


def lean_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON publish batch entry (:func:`sprawl.client.messages.outgoing`) as a msgpack one:
    a ``payload_b64`` becomes a binary ``payload`` (msgpack ``bin``); the rest as it is."""
    out = dict(item)
    b64 = out.pop("payload_b64", None)
    if b64 is not None:
        out["payload"] = base64.b64decode(b64)
    return out


def lean_publish(messages: Iterable[Mapping[str, Any]], acks: str | None = None) -> bytes:
    """The msgpack publish body of JSON batch entries (see :func:`lean_item`)."""
    return encode_publish([lean_item(m) for m in messages], acks)


def refused_lean(status: int, body: bytes) -> bool:
    """Whether a node's answer to a lean publish says it does not read lean bodies: a 415,
    or the 400 ``invalid_parameter`` of an older node refusing the marker ``id=`` (a
    current node answers a bad lean body with ``invalid_msgpack``/``invalid_message``)."""
    if status == 415:
        return True
    if status != 400:
        return False
    try:
        err = json.loads(body)["error"]
        return bool(err["code"] == "invalid_parameter" and " id " in f" {err['message']} ")
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):
        return False


def encode_ndjson(messages: Iterable[Mapping[str, Any]]) -> bytes:
    """An NDJSON publish body: one JSON object per message."""
    return b"".join(_json(m) + b"\n" for m in messages)


@dataclass
class StreamBatch:
    """The messages of one stream event."""

    #: ``P:OFFSET`` of the last message (send it as ``Last-Event-ID`` to resume after it).
    last_event_id: str | None
    #: The messages, each as the API shows it (``offset``, ``partition``, ``payload``, ...).
    messages: list[dict[str, Any]]


class BatchStreamDecoder:
    """Incremental decoder of a stream's SSE events (``format=batch`` or the default).

    :meth:`feed` takes bytes as they arrive (split anywhere) and returns the
    batches they complete; comments (keepalives) are skipped."""

    def __init__(
        self, max_event_bytes: int = MAX_EVENT_BYTES, max_messages: int = MAX_EVENT_MESSAGES
    ) -> None:
        self.max_event_bytes = max_event_bytes
        self.max_messages = max_messages
        # SSE allows CRLF line ends (a node sends LF); an event ends at a blank line.
        self._events = BoundedSplitter(
            b"\n\n",
            max_event_bytes,
            lambda: WireError(f"stream event longer than {max_event_bytes} bytes"),
            crlf=True,
        )

    def feed(self, chunk: bytes) -> list[StreamBatch]:
        """The batches ``chunk`` completes, in order."""
        out: list[StreamBatch] = []
        for block in self._events.feed(chunk):
            batch = self._event(block)
            if batch is not None:
                out.append(batch)
        return out

    def _event(self, block: bytes) -> StreamBatch | None:
        kind, eid, data = b"message", None, []
        for line in block.split(b"\n"):
            if not line or line[0] == 58:  # b":" a comment
                continue
            name, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                data.append(value)
            elif name == b"event":
                kind = value
            elif name == b"id":
                eid = value.decode("ascii", "replace")
        if not data:
            return None
        raw = b"\n".join(data)
        try:
            if kind == b"batch":
                msgs = _messages.decode(raw)
            elif kind == b"message":
                msgs = [_message.decode(raw)]
            elif kind == b"error":
                err = msgspec.json.decode(raw)
                err = err.get("error", err) if isinstance(err, dict) else {}
                raise StreamError(str(err.get("code", "stream_error")), str(err.get("message", "")), err)
            else:
                return None  # an event type this client does not know: skipped
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:
            raise WireError(f"malformed stream event: {e}") from None
        if len(msgs) > self.max_messages:
            raise WireError(f"stream event with more than {self.max_messages} messages")
        return StreamBatch(eid, msgs)


class _NdjsonLine(msgspec.Struct):
    """One line of an ``ndjson`` stream (unknown fields ignored: later versions may add some)."""

    id: str | None = None
    messages: list[dict[str, Any]] | None = None
    error: dict[str, Any] | None = None


_ndjson_line = msgspec.json.Decoder(_NdjsonLine)


class NdjsonStreamDecoder:
    """Incremental decoder of a ``GET .../stream?format=ndjson`` body (docs/api.md): fed
    bytes split anywhere, returns the :class:`StreamBatch` es they complete.  Blank lines
    (keepalives) and the opening ``{"stream": ...}`` line are skipped; an ``error`` line
    raises :class:`StreamError`; a line longer than ``max_line_bytes``, with more than
    ``max_messages``, or not an object of the format is a :class:`WireError`."""

    def __init__(self, max_line_bytes: int = MAX_EVENT_BYTES, max_messages: int = MAX_EVENT_MESSAGES) -> None:
        self.max_line_bytes = max_line_bytes
        self.max_messages = max_messages
        self._lines = BoundedSplitter(
            b"\n", max_line_bytes, lambda: WireError(f"stream line longer than {max_line_bytes} bytes")
        )

    def feed(self, chunk: bytes) -> list[StreamBatch]:
        """The batches ``chunk`` completes, in order."""
        out: list[StreamBatch] = []
        for line in self._lines.feed(chunk):
            if line.strip():
                batch = self._line(line)
                if batch is not None:
                    out.append(batch)
        return out

    def _line(self, line: bytes) -> StreamBatch | None:
        if len(line) > self.max_line_bytes:
            raise WireError(f"stream line longer than {self.max_line_bytes} bytes")
        try:
            obj = _ndjson_line.decode(line)
        except (msgspec.DecodeError, RecursionError) as e:
            raise WireError(f"malformed stream line: {e}") from None
        if obj.error is not None:
            err = obj.error
            raise StreamError(str(err.get("code", "stream_error")), str(err.get("message", "")), err)
        if obj.messages is None:
            return None  # the opening line, or a kind of line this client does not know
        if len(obj.messages) > self.max_messages:
            raise WireError(f"stream line with more than {self.max_messages} messages")
        return StreamBatch(obj.id, obj.messages)
