"""The blocking public client of a Sprawl cluster: :class:`SprawlClient`.

::

    from sprawl.client import SprawlClient

    client = SprawlClient(["http://node1:8080", "http://node2:8080"], token="...")
    client.publish("orders", b'{"total": 12}', key="customer-7", headers={"kind": "order"})
    for message in client.subscribe("orders", start="earliest", idle_timeout=5):
        print(message.offset, message.json())

Every request goes to the first node of the list that answers (fail-over), a 429 is sent again
after its ``Retry-After``, https URLs are checked against ``cacert`` (or the system's CAs),
and a bearer ``token`` goes with every request.  With ``wire="lean"`` (the default) a publish
is one msgpack body (binary payloads as they are, no base64) and a subscription reads
``?format=batch`` (many messages per event); a node older than those formats gets JSON (see
:mod:`sprawl.client.wire`, "Negotiation"); ``wire="json"`` speaks plain JSON and one event per
message.  Results are the same either way.  Requests are the :mod:`sprawl.client.calls`
the Twisted client (:mod:`sprawl.client.txclient`) runs too.  Failures raise
:class:`~sprawl.client.errors.ClientError` with the server's ``code: message``.

Not thread-safe: give each thread its own client (they are cheap: no connection is kept).
"""

from __future__ import annotations

import http.client
import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from sprawl.client import calls
from sprawl.client.blocking import Client, split_urls
from sprawl.client.e2e import (
    DecryptError,
    Decryptor,
    Encryptor,
    PrivateKey,
    PublicKey,
    as_decryptor,
    as_encryptor,
    log_undecryptable,
    open_all,
)
from sprawl.client.errors import ClientError, event_error_text
from sprawl.client.messages import (
    FetchResult,
    Message,
    Payload,
    Published,
    outgoing,
    parse_last_event_id,
)
from sprawl.client.sse import SseParser
from sprawl.client.topics import TopicDescription
from sprawl.client.wire import BatchStreamDecoder, StreamError, WireError

#: Stream errors after which a subscription reconnects and resumes (the others are raised).
RESUMABLE_STREAM_ERRORS = ("slow_consumer", "stopping", "token_expired")
#: The wire formats a client may speak (``wire=``).
WIRES = ("lean", "json")


def check_wire(wire: str) -> bool:
    """Whether ``wire`` is ``"lean"`` (True) or ``"json"`` (False); ValueError otherwise."""
    if wire not in WIRES:
        raise ValueError("wire must be 'lean' or 'json'")
    return wire == "lean"


class SprawlClient:
    """A blocking client of a Sprawl cluster (see the module docstring).

    ``urls``: one URL, a comma-separated list or a list of node URLs (``host:port`` means
    ``http://host:port``).  ``timeout`` bounds each connect and answer, in seconds.  ``wire``:
    ``"lean"`` (msgpack publish bodies, batched stream events, where the node takes them) or
    ``"json"``.

    End-to-end encryption (:mod:`sprawl.client.e2e`): with ``encrypt_for`` (public keys, or an
    :class:`~sprawl.client.e2e.Encryptor`) every payload published is sealed for those
    recipients; with ``decrypt_with`` (private keys, or a
    :class:`~sprawl.client.e2e.Decryptor`) every message read is opened.  A message that
    cannot be opened is never returned: it is reported to ``on_undecryptable`` (default:
    :func:`log_undecryptable`; raise there to stop), and a group pull nacks it (redelivered
    after ``undecryptable_nack_delay_ms``, dead-lettered after the group's
    ``max_deliveries`` when it has a ``dead_letter_topic``).
    """

    def __init__(
        self,
        urls: str | Sequence[str] = "http://localhost:8080",
        *,
        token: str | None = None,
        cacert: str | None = None,
        timeout: float = 10.0,
        encrypt_for: Sequence[PublicKey] | Encryptor | None = None,
        decrypt_with: Sequence[PrivateKey] | Decryptor | None = None,
        on_undecryptable: Callable[[DecryptError], object] = log_undecryptable,
        undecryptable_nack_delay_ms: int = 1000,
        wire: str = "lean",
    ) -> None:
        #: Whether publishes and streams use the lean formats (``wire="lean"``).
        self.lean = check_wire(wire)
        self.http = Client(split_urls([urls] if isinstance(urls, str) else urls), timeout, token, cacert)
        #: Seals published payloads (None: sent as given).
        self.encryptor = as_encryptor(encrypt_for)
        #: Opens payloads read (None: returned as stored).
        self.decryptor = as_decryptor(decrypt_with)
        self.on_undecryptable = on_undecryptable
        self.undecryptable_nack_delay_ms = undecryptable_nack_delay_ms

    def open(self, messages: Iterable[Message]) -> tuple[list[Message], list[Message]]:
        """``(opened, undecryptable)``: the messages decrypted (as they are without a
        decryptor); each one that cannot be is reported to ``on_undecryptable``."""
        return open_all(self.decryptor, messages, self.on_undecryptable)

    def __repr__(self) -> str:
        return f"SprawlClient({self.http.urls!r})"

    @property
    def urls(self) -> list[str]:
        """The node URLs, the one that answered last first."""
        return self.http.urls

    def run(self, call: calls.Call) -> Any:
        """Send one :class:`~sprawl.client.calls.Call` and return its parsed answer."""
        reply = self.http.request(
            call.method,
            call.path,
            call.body,
            query=call.query or None,
            timeout=self.http.timeout + call.extra_timeout,
            idempotent=call.idempotent,
            lean=call.lean,
        )
        return call.parse(reply.check(*call.ok).json())

    # -- publishing ---------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: Payload,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        id: str | None = None,
        acks: str | None = None,
    ) -> Published:
        """Publish one message; returns once ``acks`` (``quorum`` by default, ``leader``,
        ``none``) holds.  With an ``id`` a retry is safe: a duplicate gets the first offset."""
        return self.publish_batch(topic, [outgoing(payload, key, headers, id)], acks=acks)

    def publish_batch(
        self, topic: str, messages: Iterable[dict[str, Any] | Payload], *, acks: str | None = None
    ) -> Published:
        """Publish a batch in one request: each item a payload or a dict made by
        :func:`sprawl.client.messages.outgoing` (payload, key, headers, id)."""
        items = [m if isinstance(m, dict) else outgoing(m) for m in messages]
        if self.encryptor is not None:
            items = [self.encryptor.seal_item(m) for m in items]
        result: Published = self.run(calls.publish(topic, items, acks, self.lean))
        return result

    # -- reading ------------------------------------------------------------------------

    def fetch(
        self,
        topic: str,
        partition: int = 0,
        start: str | int | None = "earliest",
        *,
        from_time: int | None = None,
        limit: int | None = None,
        wait_ms: int | None = None,
        max_bytes: int | None = None,
        filter: str | None = None,
        fields: Iterable[str] | None = None,
    ) -> FetchResult:
        """Read one partition from an offset (or ``earliest``/``latest``) or from a time
        (``from_time``, epoch ms); ``wait_ms`` long-polls.  Pass ``result.next`` as ``start``
        to go on."""
        call = calls.fetch(topic, partition, start, from_time, limit, wait_ms, max_bytes, filter, fields)
        result: FetchResult = self.run(call)
        if self.decryptor is None:
            return result
        return replace(result, messages=self.open(result.messages)[0])

    def subscribe(
        self,
        topic: str,
        start: str | int | None = "latest",
        *,
        from_time: int | None = None,
        partition: int | None = None,
        resume: Mapping[int, int] | str | None = None,
        idle_timeout: float | None = None,
        max_reconnects: int = 5,
        filter: str | None = None,
        fields: Iterable[str] | None = None,
    ) -> Subscription:
        """Subscribe to the topic's stream (every partition, or ``partition``).

        Returns a :class:`Subscription`, an iterator of :class:`Message`.  When the stream
        drops (a node stops, the connection breaks, the node says ``slow_consumer``) it
        reconnects to the next node that answers and resumes after the last message delivered
        (``Last-Event-ID``), at most ``max_reconnects`` times in a row.  ``resume`` (``{P:
        OFFSET}`` or ``"P:OFFSET,..."``, e.g. a saved ``subscription.last_event_id``) starts
        after those offsets.  Iteration ends after ``idle_timeout`` seconds without a message
        (None: never)."""
        if isinstance(resume, str):
            resume = parse_last_event_id(resume)
        cursor = calls.StreamCursor(topic, start, from_time, partition, resume, filter, fields, self.lean)
        return Subscription(self.http, cursor, idle_timeout, max_reconnects, self.open)

    # -- consumer groups ----------------------------------------------------------------

    def create_group(
        self,
        topic: str,
        group: str,
        *,
        start: str | None = None,
        ack_deadline_ms: int | None = None,
        max_deliveries: int | None = None,
        dead_letter_topic: str | None = None,
    ) -> dict[str, Any]:
        """Create or update a consumer group (the topic is created if need be)."""
        call = calls.put_group(
            topic,
            group,
            start=start,
            ack_deadline_ms=ack_deadline_ms,
            max_deliveries=max_deliveries,
            dead_letter_topic=dead_letter_topic,
        )
        result: dict[str, Any] = self.run(call)
        return result

    def describe_group(self, topic: str, group: str) -> dict[str, Any]:
        """The group's committed offsets, lag, leases in flight and dead-lettered count."""
        result: dict[str, Any] = self.run(calls.describe_group(topic, group))
        return result

    def delete_group(self, topic: str, group: str) -> None:
        """Delete the group and its state."""
        self.run(calls.delete_group(topic, group))

    def pull(
        self,
        topic: str,
        group: str,
        max: int = 10,
        *,
        wait_ms: int = 0,
        max_bytes: int | None = None,
        filter: str | None = None,
        fields: Iterable[str] | None = None,
    ) -> list[Message]:
        """Lease up to ``max`` messages of the group (waiting up to ``wait_ms`` for one).  Each
        must be :meth:`ack`-ed before its lease (the group's ``ack_deadline_ms``) runs out,
        else it is delivered again."""
        leased: list[Message] = self.run(calls.pull(topic, group, max, wait_ms, max_bytes, filter, fields))
        opened, failed = self.open(leased)
        if failed:
            self.nack(topic, group, failed, delay_ms=self.undecryptable_nack_delay_ms)
        return opened

    def ack(self, topic: str, group: str, messages: Iterable[str | Message]) -> dict[str, Any]:
        """Acknowledge leased messages (or their ack ids): ``{"acked": N, "refused": {id: why}}``
        (an expired lease is refused: that message comes again)."""
        result: dict[str, Any] = self.run(calls.ack(topic, group, messages))
        return result

    def nack(
        self, topic: str, group: str, messages: Iterable[str | Message], *, delay_ms: int = 0
    ) -> dict[str, Any]:
        """Give leased messages back for redelivery after ``delay_ms``:
        ``{"nacked": N, "refused": {...}}``.  After the group's ``max_deliveries`` a message
        goes to its ``dead_letter_topic``."""
        result: dict[str, Any] = self.run(calls.nack(topic, group, messages, delay_ms))
        return result

    def extend(
        self, topic: str, group: str, messages: Iterable[str | Message], *, extend_ms: int | None = None
    ) -> dict[str, Any]:
        """Keep leased messages longer: each lease now ends ``extend_ms`` from now (default
        the group's ``ack_deadline_ms``), the ack id unchanged:
        ``{"extended": N, "refused": {id: why}, "ack_deadlines": {id: epoch ms}}``.
        Raises :class:`~sprawl.client.errors.ClientError` (``lease_expired: ...``,
        ``lease_not_found: ...``) when not one lease could be extended."""
        result: dict[str, Any] = self.run(calls.extend(topic, group, messages, extend_ms))
        return result

    # -- topics -------------------------------------------------------------------------

    def list_topics(self) -> list[dict[str, Any]]:
        """Every topic's summary (``name``, ``partitions``, ``messages``, ``bytes``, ...)."""
        result: list[dict[str, Any]] = self.run(calls.list_topics())
        return result

    def describe_topic(self, topic: str) -> TopicDescription:
        """The topic's configuration and partitions."""
        result: TopicDescription = self.run(calls.describe_topic(topic))
        return result

    def create_topic(
        self,
        topic: str,
        *,
        partitions: int | None = None,
        replication_factor: int | None = None,
        storage: str | None = None,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        max_message_bytes: int | None = None,
    ) -> TopicDescription:
        """Create a topic, or update its configuration (partitions only grow)."""
        call = calls.create_topic(
            topic,
            partitions=partitions,
            replication_factor=replication_factor,
            storage=storage,
            retention_ms=retention_ms,
            retention_bytes=retention_bytes,
            max_message_bytes=max_message_bytes,
        )
        result: TopicDescription = self.run(call)
        return result

    def delete_topic(self, topic: str) -> None:
        """Delete a topic and its messages."""
        self.run(calls.delete_topic(topic))


class Subscription(Iterator[Message]):
    """An iterator over a topic's stream that resumes by itself (see
    :meth:`SprawlClient.subscribe`).  :attr:`last_event_id` is the point to resume from later;
    :meth:`close` ends it (so does leaving a ``with`` block)."""

    def __init__(
        self,
        transport: Client,
        cursor: calls.StreamCursor,
        idle_timeout: float | None,
        max_reconnects: int,
        opener: Callable[[list[Message]], tuple[list[Message], list[Message]]] | None = None,
    ) -> None:
        self._http = transport
        self._open = opener
        self.cursor = cursor
        self.idle_timeout = idle_timeout
        self.max_reconnects = max_reconnects
        #: Reconnections so far (each after a drop or a resumable stream error).
        self.reconnects = 0
        self._conn: http.client.HTTPConnection | None = None
        self._resp: http.client.HTTPResponse | None = None
        self._parser = SseParser()
        self._batches = BatchStreamDecoder()
        self._ready: deque[Message] = deque()
        self._failures = 0
        self._closed = False

    @property
    def last_event_id(self) -> str | None:
        """``P:OFFSET,...`` after the last message delivered (None before the first)."""
        return self.cursor.last_event_id

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the stream; iteration ends."""
        self._closed = True
        self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = self._resp = None
        self._parser = SseParser()
        self._batches = BatchStreamDecoder()

    def __next__(self) -> Message:
        deadline = None if self.idle_timeout is None else time.monotonic() + self.idle_timeout
        while not self._ready:
            if self._closed:
                raise StopIteration
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                self.close()
                raise StopIteration
            self._read(left)
        message = self._ready.popleft()
        self.cursor.delivered(message)
        self._failures = 0
        return message

    def _read(self, timeout: float | None) -> None:
        """Read what the stream has within ``timeout``; (re)connect when there is no stream."""
        if self._resp is None:
            try:
                self._conn, self._resp = self._http.stream(
                    self.cursor.path, self.cursor.query, self.cursor.headers(), read_timeout=timeout
                )
            except ClientError:
                if self._failures >= self.max_reconnects:
                    raise
                self._backoff()
                return
        assert self._conn is not None and self._resp is not None
        if self._conn.sock is not None:
            self._conn.sock.settimeout(timeout)
        try:
            chunk = self._resp.read1(65536)
        except TimeoutError:
            return
        except (OSError, http.client.HTTPException):
            chunk = b""
        if not chunk:
            self._lost()
            return
        if self.cursor.batch:
            self._read_batches(chunk)
            return
        for event in self._parser.feed(chunk):
            if event.event == "error":
                self._stream_error(event.data)
                return
            if event.event == "message":
                try:
                    value = json.loads(event.data)
                except ValueError:
                    raise ClientError(f"malformed event data: {event.data[:80]!r}") from None
                message = Message.parse(self.cursor.topic, value)
                if self._open is None:
                    self._ready.append(message)
                    continue
                opened, failed = self._open([message])
                self._ready += opened
                for skipped in failed:
                    self.cursor.delivered(skipped)

    def _read_batches(self, chunk: bytes) -> None:
        """Take a chunk of a ``format=batch`` stream (it reads one-message events too)."""
        try:
            batches = self._batches.feed(chunk)
        except StreamError as e:
            # Messages of this chunk before the error are not delivered and not noted in the
            # cursor: a resume reads them again.
            self._stream_error_text(str(e))
            return
        except WireError as e:
            self.close()
            raise ClientError(str(e)) from None
        for batch in batches:
            messages = [Message.parse(self.cursor.topic, m) for m in batch.messages]
            if self._open is None:
                self._ready += messages
                continue
            opened, failed = self._open(messages)
            self._ready += opened
            for skipped in failed:
                self.cursor.delivered(skipped)

    def _stream_error(self, data: str) -> None:
        self._stream_error_text(event_error_text(data))

    def _stream_error_text(self, text: str) -> None:
        if not text.startswith(RESUMABLE_STREAM_ERRORS):
            self.close()
            raise ClientError(text)
        self._lost()

    def _lost(self) -> None:
        """The stream ended: reconnect after a pause, or give up after too many in a row."""
        self._drop()
        if self._failures >= self.max_reconnects:
            self._closed = True
            raise ClientError(
                f"stream of {self.cursor.topic!r} keeps ending; gave up after {self._failures} retries"
            )
        self._backoff()

    def _backoff(self) -> None:
        self._failures += 1
        self.reconnects += 1
        time.sleep(min(0.1 * 2**self._failures, 5.0))
