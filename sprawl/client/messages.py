"""The message shapes every Sprawl client reads and writes (``docs/api.md``): a message to
publish as the JSON a node takes (:func:`outgoing`), a message a node sent (:class:`Message`,
from ``/messages``, ``/stream``, ``/ws`` or a group pull) and a publish answer
(:class:`Published`).  Pure data: no I/O."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sprawl.client.errors import ClientError

#: What a payload may be given as: bytes as they are, text as UTF-8.
Payload = bytes | str


def payload_field(payload: Payload) -> dict[str, str]:
    """``{"payload": text}`` for text and UTF-8 bytes, else ``{"payload_b64": ...}``, so every
    byte string travels unchanged."""
    if isinstance(payload, str):
        return {"payload": payload}
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"payload must be bytes or str, not {type(payload).__name__}")
    data = bytes(payload)
    try:
        return {"payload": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"payload_b64": base64.b64encode(data).decode("ascii")}


def outgoing(
    payload: Payload,
    key: str | None = None,
    headers: Mapping[str, str] | None = None,
    id: str | None = None,
) -> dict[str, Any]:
    """One entry of a publish batch (``{"payload"|"payload_b64", "key"?, "headers"?, "id"?}``)."""
    item: dict[str, Any] = payload_field(payload)
    if key is not None:
        item["key"] = key
    if headers:
        item["headers"] = dict(headers)
    if id is not None:
        item["id"] = id
    return item


def payload_bytes(msg: Mapping[str, Any]) -> bytes:
    """A received message's payload as bytes (``payload`` as UTF-8, or ``payload_b64``
    decoded); a JSON value that is not a string (a projection, ``?fields=``) as its JSON."""
    if msg.get("payload") is None and "payload_b64" in msg:
        try:
            return base64.b64decode(msg["payload_b64"], validate=True)
        except (ValueError, TypeError):
            raise ClientError(f"bad payload_b64 in message {msg.get('offset')!r}") from None
    payload = msg.get("payload")
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogateescape")
    if payload is None:
        return b""
    return json.dumps(payload, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Message:
    """A message a node delivered.

    ``ack_id`` and ``delivery_attempt`` are set for messages leased through a consumer group;
    ``raw`` is the JSON object the node sent."""

    topic: str
    partition: int
    offset: int
    payload: bytes
    key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    id: str | None = None
    timestamp: int | None = None
    ack_id: str | None = None
    delivery_attempt: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def parse(cls, topic: str, value: Any) -> Message:
        """Read one message object of a node's answer; :class:`ClientError` if it is not one."""
        if not isinstance(value, dict):
            raise ClientError(f"not a message: {value!r}"[:200])
        try:
            partition = int(value.get("partition", 0))
            offset = int(value["offset"])
        except (KeyError, TypeError, ValueError):
            raise ClientError(f"not a message: {value!r}"[:200]) from None
        headers = value.get("headers") or {}
        if not isinstance(headers, dict):
            raise ClientError(f"message {partition}:{offset} has bad headers")
        return cls(
            topic=topic,
            partition=partition,
            offset=offset,
            payload=payload_bytes(value),
            key=value.get("key"),
            headers={str(k): str(v) for k, v in headers.items()},
            id=value.get("id"),
            timestamp=value.get("timestamp"),
            ack_id=value.get("ack_id"),
            delivery_attempt=value.get("delivery_attempt"),
            raw=value,
        )

    @property
    def event_id(self) -> str:
        """``P:OFFSET``, the SSE event id (what ``Last-Event-ID`` resumes after)."""
        return f"{self.partition}:{self.offset}"

    def text(self) -> str:
        """The payload decoded as UTF-8."""
        return self.payload.decode("utf-8")

    def json(self) -> Any:
        """The payload decoded as JSON."""
        return json.loads(self.payload)


@dataclass(frozen=True)
class Published:
    """A publish answer: per message its ``offsets``, ``ids``, ``partitions`` and whether it
    was a ``duplicates`` of an id already seen; ``stored`` says where the batch was when the
    node answered (``quorum``, ``lmdb``, ``memory`` or ``pending``, docs/api.md)."""

    offsets: list[int]
    ids: list[str | None]
    partitions: list[int]
    duplicates: list[bool]
    acks: str | None
    stored: str | None

    @classmethod
    def parse(cls, value: Any) -> Published:
        """Read a publish answer; :class:`ClientError` if it is not one."""
        if not isinstance(value, dict) or not isinstance(value.get("offsets"), list):
            raise ClientError(f"not a publish answer: {value!r}"[:200])
        n = len(value["offsets"])
        return cls(
            offsets=list(value["offsets"]),
            ids=list(value.get("ids") or [None] * n),
            partitions=list(value.get("partitions") or [0] * n),
            duplicates=list(value.get("duplicates") or [False] * n),
            acks=value.get("acks"),
            stored=value.get("stored"),
        )


@dataclass(frozen=True)
class FetchResult:
    """One ``GET .../messages`` answer: the messages, the offset to go on from (``next``) and
    the partition's high watermark."""

    messages: list[Message]
    next: int
    high_watermark: int
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


def parse_last_event_id(value: str) -> dict[int, int]:
    """``P:OFFSET[,P:OFFSET...]`` as ``{partition: offset}``; :class:`ValueError` otherwise."""
    out: dict[int, int] = {}
    for part in value.split(","):
        p, sep, off = part.strip().partition(":")
        if not sep:
            raise ValueError(f"not P:OFFSET: {part!r}")
        out[int(p)] = int(off)
    return out


def format_last_event_id(positions: Mapping[int, int]) -> str:
    """``{partition: offset}`` as ``P:OFFSET,...`` (sorted by partition)."""
    return ",".join(f"{p}:{o}" for p, o in sorted(positions.items()))
