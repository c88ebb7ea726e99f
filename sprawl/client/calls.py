"""Each request of the public client API as data (:class:`Call`): method, path, body, query and
how to read the answer.  The blocking client (:mod:`sprawl.client.api`) and the Twisted one
(:mod:`sprawl.client.txclient`) both run these, so the two speak the same API by
construction.  Pure: no I/O.

:class:`StreamCursor` is the resume state of a subscription (the last offset seen per
partition, sent back as ``Last-Event-ID``), shared the same way."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sprawl.client.blocking import topic_path
from sprawl.client.errors import ClientError
from sprawl.client.messages import FetchResult, Message, Published, format_last_event_id
from sprawl.client.topics import TopicDescription
from sprawl.client.wire import lean_publish

#: The acknowledgement levels a publish may ask for.
ACKS = ("quorum", "leader", "none")
#: Where a read may start besides an offset.
NAMED_STARTS = ("earliest", "latest")


def _identity(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Call:
    """One request: ``parse`` turns the decoded JSON answer into the caller's value.

    ``idempotent`` marks a request that may be sent again to another node after a failure
    that leaves its outcome unknown (reads, and publishes whose every message has an id:
    the node's dedup window makes the second one a no-op)."""

    method: str
    path: str
    body: Any = None
    query: dict[str, Any] = field(default_factory=dict)
    idempotent: bool = False
    parse: Callable[[Any], Any] = _identity
    #: Extra seconds the answer may take beyond the client's timeout (long polls).
    extra_timeout: float = 0.0
    #: Statuses that are an answer, not an error (e.g. 404 for "does it exist?").
    ok: tuple[int, ...] = ()
    #: The same request as a msgpack body (``application/msgpack``), sent instead of
    #: ``body`` to a node that takes it (:mod:`sprawl.client.wire`, "Negotiation").
    lean: bytes | None = None


def _check_acks(acks: str | None) -> None:
    if acks is not None and acks not in ACKS:
        raise ValueError(f"acks must be one of {', '.join(ACKS)}")


def _start_query(start: str | int | None, from_time: int | None) -> dict[str, Any]:
    # A time, when given, is where the read starts (``start`` is then ignored).
    if from_time is not None:
        return {"from_time": int(from_time)}
    if start is None:
        return {}
    if isinstance(start, bool) or not (isinstance(start, int) or start in NAMED_STARTS):
        raise ValueError("start must be 'earliest', 'latest' or an offset")
    return {"from": start}


def _select_query(filter: str | None, fields: Iterable[str] | None) -> dict[str, Any]:
    query: dict[str, Any] = {}
    if filter is not None:
        query["filter"] = filter
    if fields is not None:
        query["fields"] = ",".join(fields)
    return query


def publish(topic: str, messages: list[dict[str, Any]], acks: str | None = None, lean: bool = False) -> Call:
    """``POST /v1/topics/{topic}/messages`` of a batch built with :func:`sprawl.client.messages.outgoing`
    (``lean``: with its msgpack body too, binary payloads as they are)."""
    _check_acks(acks)
    if not messages:
        raise ValueError("a batch holds one message at least")
    body: dict[str, Any] = {"messages": messages}
    if acks is not None:
        body["acks"] = acks
    safe = all(m.get("id") is not None for m in messages)
    packed = lean_publish(messages, acks) if lean else None
    return Call(
        "POST", topic_path(topic, "messages"), body, idempotent=safe, parse=Published.parse, lean=packed
    )


def fetch(
    topic: str,
    partition: int = 0,
    start: str | int | None = "earliest",
    from_time: int | None = None,
    limit: int | None = None,
    wait_ms: int | None = None,
    max_bytes: int | None = None,
    filter: str | None = None,
    fields: Iterable[str] | None = None,
) -> Call:
    """``GET /v1/topics/{topic}/messages`` (one partition, from an offset or a time)."""
    query: dict[str, Any] = {"partition": partition, **_start_query(start, from_time)}
    query.update(limit=limit, wait_ms=wait_ms, max_bytes=max_bytes, **_select_query(filter, fields))

    def parse(value: Any) -> FetchResult:
        if not isinstance(value, dict) or not isinstance(value.get("messages"), list):
            raise ClientError(f"not a fetch answer: {value!r}"[:200])
        msgs = [Message.parse(topic, m) for m in value["messages"]]
        return FetchResult(msgs, int(value.get("next", 0)), int(value.get("high_watermark", 0)), value)

    return Call(
        "GET",
        topic_path(topic, "messages"),
        query=query,
        idempotent=True,
        parse=parse,
        extra_timeout=(wait_ms or 0) / 1000,
    )


def list_topics() -> Call:
    """``GET /v1/topics``: the topics' summaries (list of dicts)."""

    def parse(value: Any) -> list[dict[str, Any]]:
        topics = value.get("topics") if isinstance(value, dict) else None
        if not isinstance(topics, list):
            raise ClientError(f"not a topic list: {value!r}"[:200])
        return topics

    return Call("GET", "/v1/topics", idempotent=True, parse=parse)


def describe_topic(topic: str) -> Call:
    """``GET /v1/topics/{topic}``."""
    return Call("GET", topic_path(topic), idempotent=True, parse=TopicDescription.parse)


def create_topic(topic: str, **config: Any) -> Call:
    """``PUT /v1/topics/{topic}`` with ``partitions``, ``replication_factor``, ``storage``,
    ``retention_ms``, ``retention_bytes``, ``max_message_bytes`` (those given)."""
    body = {k: v for k, v in config.items() if v is not None}
    return Call("PUT", topic_path(topic), body, idempotent=True, parse=TopicDescription.parse)


def delete_topic(topic: str) -> Call:
    """``DELETE /v1/topics/{topic}``."""
    return Call("DELETE", topic_path(topic), idempotent=True, parse=lambda _: None)


def put_group(topic: str, group: str, **config: Any) -> Call:
    """``PUT .../groups/{group}`` with ``start``, ``ack_deadline_ms``, ``max_deliveries``,
    ``dead_letter_topic`` (those given): creates or updates the group."""
    body = {k: v for k, v in config.items() if v is not None}
    return Call("PUT", topic_path(topic, "groups", group), body, idempotent=True)


def describe_group(topic: str, group: str) -> Call:
    """``GET .../groups/{group}``: committed offsets, lag, in flight, dead-lettered."""
    return Call("GET", topic_path(topic, "groups", group), idempotent=True)


def delete_group(topic: str, group: str) -> Call:
    """``DELETE .../groups/{group}``."""
    return Call("DELETE", topic_path(topic, "groups", group), idempotent=True, parse=lambda _: None)


def pull(
    topic: str,
    group: str,
    max: int = 10,
    wait_ms: int = 0,
    max_bytes: int | None = None,
    filter: str | None = None,
    fields: Iterable[str] | None = None,
) -> Call:
    """``POST .../groups/{group}/pull``: lease up to ``max`` messages."""
    body: dict[str, Any] = {"max": max, "wait_ms": wait_ms}
    if max_bytes is not None:
        body["max_bytes"] = max_bytes

    def parse(value: Any) -> list[Message]:
        msgs = value.get("messages") if isinstance(value, dict) else None
        if not isinstance(msgs, list):
            raise ClientError(f"not a pull answer: {value!r}"[:200])
        return [Message.parse(topic, m) for m in msgs]

    # Not idempotent: a pull sent twice leases twice (the first lease then lapses).
    return Call(
        "POST",
        topic_path(topic, "groups", group, "pull"),
        body,
        query=_select_query(filter, fields),
        parse=parse,
        extra_timeout=wait_ms / 1000,
    )


def _ack_ids(items: Iterable[str | Message]) -> list[str]:
    out: list[str] = []
    for item in items:
        ack_id = item.ack_id if isinstance(item, Message) else item
        if not isinstance(ack_id, str):
            raise ValueError("a message without an ack_id (not leased through a group)")
        out.append(ack_id)
    return out


def ack(topic: str, group: str, items: Iterable[str | Message]) -> Call:
    """``POST .../groups/{group}/ack`` of ack ids (or leased messages): ``{"acked", "refused"}``."""
    body = {"ack_ids": _ack_ids(items)}
    return Call("POST", topic_path(topic, "groups", group, "ack"), body, idempotent=True)


def nack(topic: str, group: str, items: Iterable[str | Message], delay_ms: int = 0) -> Call:
    """``POST .../groups/{group}/nack``: redeliver after ``delay_ms``; ``{"nacked", "refused"}``."""
    body = {"ack_ids": _ack_ids(items), "delay_ms": delay_ms}
    return Call("POST", topic_path(topic, "groups", group, "nack"), body, idempotent=True)


def extend(topic: str, group: str, items: Iterable[str | Message], extend_ms: int | None = None) -> Call:
    """``POST .../groups/{group}/extend``: leases end ``extend_ms`` from now (default the
    group's ``ack_deadline_ms``); ``{"extended", "refused", "ack_deadlines"}``."""
    body: dict[str, Any] = {"ack_ids": _ack_ids(items)}
    if extend_ms is not None:
        body["extend_ms"] = extend_ms
    return Call("POST", topic_path(topic, "groups", group, "extend"), body, idempotent=True)


class StreamCursor:
    """Where a subscription to ``GET .../stream`` is: the query it was opened with and the
    last offset delivered per partition.  :meth:`request` gives the path, query and headers of
    the next (re)connection: after the first message it carries ``Last-Event-ID`` with every
    partition's position, so a reconnect -- to any node -- resumes without loss or repeats."""

    def __init__(
        self,
        topic: str,
        start: str | int | None = "latest",
        from_time: int | None = None,
        partition: int | None = None,
        resume: Mapping[int, int] | None = None,
        filter: str | None = None,
        fields: Iterable[str] | None = None,
        batch: bool = False,
    ) -> None:
        self.topic = topic
        self.query: dict[str, Any] = {"partition": partition, **_start_query(start, from_time)}
        self.query.update(_select_query(filter, fields))
        if batch:
            # Many messages per event (``?format=batch``); an older node ignores it.
            self.query["format"] = "batch"
        #: The last offset delivered, per partition (``Last-Event-ID``).
        self.positions: dict[int, int] = dict(resume or {})

    @property
    def batch(self) -> bool:
        """Whether the stream is asked for in the ``batch`` format."""
        return self.query.get("format") == "batch"

    @property
    def path(self) -> str:
        """The stream's path."""
        return topic_path(self.topic, "stream")

    def headers(self) -> dict[str, str]:
        """``Last-Event-ID`` once anything was delivered (or a resume point was given)."""
        return {"Last-Event-ID": format_last_event_id(self.positions)} if self.positions else {}

    @property
    def last_event_id(self) -> str | None:
        """The resume point as ``P:OFFSET,...`` (None before the first message)."""
        return format_last_event_id(self.positions) if self.positions else None

    def delivered(self, message: Message) -> None:
        """Note ``message`` as delivered (or skipped: the position never goes back)."""
        p = message.partition
        self.positions[p] = max(message.offset, self.positions.get(p, -1))
