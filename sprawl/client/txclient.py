"""The Twisted client of a Sprawl cluster: :class:`TxSprawlClient`, the API of
:class:`sprawl.client.SprawlClient` with every call answering a :class:`Deferred` (through
treq), for programs that run a reactor::

    client = TxSprawlClient(["http://node1:8080", "http://node2:8080"], reactor=reactor)
    published = await client.publish("orders", b"...", key="customer-7")
    sub = client.subscribe("orders", on_message, start="earliest")
    ...
    sub.close()

Fail-over over the node list, ``Retry-After`` on 429 (waited on the reactor's clock), TLS
checked against ``cacert`` and a bearer token, as the blocking client.  The requests are the
same :mod:`sprawl.client.calls`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

import treq
from treq.client import HTTPClient
from twisted.internet import defer, ssl, task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, ResponseFailed
from twisted.web.iweb import IAgent

from sprawl.client import calls
from sprawl.client.api import RESUMABLE_STREAM_ERRORS, check_wire
from sprawl.client.blocking import MAX_429_RETRIES, split_urls
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
from sprawl.client.errors import (
    ClientError,
    error_text,
    event_error_text,
    failure_reason,
    retry_after_seconds,
)
from sprawl.client.messages import FetchResult, Message, Payload, Published, outgoing
from sprawl.client.sse import SseParser
from sprawl.client.topics import TopicDescription
from sprawl.client.txsocket import publish_many
from sprawl.client.wire import LEAN_MARK, MSGPACK, BatchStreamDecoder, StreamError, WireError, refused_lean


def _trust_root(cacert: str | None) -> Any:
    """The CAs of the PEM bundle ``cacert`` (None: the platform's)."""
    if cacert is None:
        return None
    with open(cacert, "rb") as fh:
        pem = fh.read()
    blocks = [b"-----BEGIN CERTIFICATE-----" + b for b in pem.split(b"-----BEGIN CERTIFICATE-----")[1:]]
    return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(b) for b in blocks])


def _agent(reactor: Any, cacert: str | None) -> HTTPClient:
    if cacert is None:
        return HTTPClient(cast(IAgent, Agent(reactor)))
    agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=_trust_root(cacert)))
    return HTTPClient(cast(IAgent, agent))


class TxSprawlClient:
    """A Twisted client of a Sprawl cluster (see the module docstring); ``reactor`` defaults
    to the global one.  ``encrypt_for``, ``decrypt_with``, ``on_undecryptable``,
    ``undecryptable_nack_delay_ms`` and ``wire`` work as in :class:`sprawl.client.SprawlClient`."""

    def __init__(
        self,
        urls: str | Sequence[str] = "http://localhost:8080",
        *,
        token: str | None = None,
        cacert: str | None = None,
        timeout: float = 10.0,
        reactor: Any = None,
        encrypt_for: Sequence[PublicKey] | Encryptor | None = None,
        decrypt_with: Sequence[PrivateKey] | Decryptor | None = None,
        on_undecryptable: Callable[[DecryptError], object] = log_undecryptable,
        undecryptable_nack_delay_ms: int = 1000,
        wire: str = "lean",
    ) -> None:
        #: Whether publishes and streams use the lean formats (``wire="lean"``).
        self.lean = check_wire(wire)
        #: Node URLs that refused a lean publish body: sent JSON from then on.
        self.json_only: set[str] = set()
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.reactor = reactor
        self.urls = split_urls([urls] if isinstance(urls, str) else urls)
        self.timeout = timeout
        self.token = token
        self._http = _agent(reactor, cacert)
        self._cacert = cacert
        #: End-to-end encryption, as :class:`sprawl.client.SprawlClient` does it.
        self.encryptor = as_encryptor(encrypt_for)
        self.decryptor = as_decryptor(decrypt_with)
        self.on_undecryptable = on_undecryptable
        self.undecryptable_nack_delay_ms = undecryptable_nack_delay_ms

    def open(self, messages: Iterable[Message]) -> tuple[list[Message], list[Message]]:
        """``(opened, undecryptable)`` (see :meth:`sprawl.client.SprawlClient.open`)."""
        return open_all(self.decryptor, messages, self.on_undecryptable)

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json", **(extra or {})}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _prefer(self, url: str) -> None:
        if self.urls[0] != url:
            self.urls.remove(url)
            self.urls.insert(0, url)

    def run(self, call: calls.Call) -> Deferred[Any]:
        """Send one :class:`~sprawl.client.calls.Call`; the Deferred fires with its parsed answer."""
        return Deferred.fromCoroutine(self._run(call))

    async def _run(self, call: calls.Call) -> Any:
        for attempt in range(MAX_429_RETRIES + 1):
            status, headers, body = await self._once(call)
            if status == 429 and attempt < MAX_429_RETRIES:
                wait = retry_after_seconds(headers.get("retry-after"))
                await task.deferLater(self._clock, wait, lambda: None)
                continue
            if not (200 <= status < 300 or status in call.ok):
                raise ClientError(error_text(status, body))
            try:
                return call.parse(json.loads(body) if body else None)
            except ValueError:
                raise ClientError(f"answer is not JSON: {body[:80]!r}") from None
        raise AssertionError("unreachable")

    @property
    def _clock(self) -> IReactorTime:
        clock: IReactorTime = self.reactor
        return clock

    async def _once(self, call: calls.Call) -> tuple[int, dict[str, str], bytes]:
        """One request to the first node that answers (the rule of the blocking client)."""
        base: dict[str, Any] = {"headers": self._headers(), "timeout": self.timeout + call.extra_timeout}
        kwargs: dict[str, Any] | None = None  # the JSON request, built when first needed
        params = {k: str(v) for k, v in call.query.items() if v is not None}
        errors: list[str] = []
        unavailable: tuple[int, dict[str, str], bytes] | None = None
        for url in list(self.urls):
            got: tuple[int, dict[str, str], bytes] | str | None = None
            if call.lean is not None and url not in self.json_only:
                lean = {**base, "data": call.lean, "headers": {**base["headers"], "Content-Type": MSGPACK}}
                got = await self._exchange(call, url, {**params, **LEAN_MARK}, lean)
                if not isinstance(got, str) and refused_lean(got[0], got[2]):
                    self.json_only.add(url)
                    got = None
            if got is None:
                if kwargs is None:
                    kwargs = dict(base, headers=dict(base["headers"]))
                    if call.body is not None:
                        kwargs["data"] = json.dumps(call.body).encode()
                        kwargs["headers"]["Content-Type"] = "application/json"
                got = await self._exchange(call, url, params, kwargs)
            if isinstance(got, str):
                errors.append(got)
                continue
            if got[0] == 503 and call.idempotent:
                unavailable = unavailable or got
                continue
            self._prefer(url)
            return got
        if unavailable is not None:
            return unavailable
        what = "the node" if len(self.urls) == 1 else "any node"
        raise ClientError(f"cannot reach {what}: " + "; ".join(errors))

    async def _exchange(
        self, call: calls.Call, url: str, params: dict[str, str], kwargs: dict[str, Any]
    ) -> tuple[int, dict[str, str], bytes] | str:
        """One request to ``url``: ``(status, headers, body)``, or why the node is skipped."""
        try:
            resp = await self._http.request(call.method, url + call.path, params=params, **kwargs)
            body = await treq.content(resp)
        except Exception as exc:  # connection refused, timeout, drop: all skip the node
            sent = not _connect_failure(exc)
            if sent and not call.idempotent:
                raise ClientError(
                    f"{url}: {_reason(exc)} (the request may or may not have been applied)"
                ) from None
            return f"{url}: {_reason(exc)}"
        headers = {k.decode().lower(): v[-1].decode("latin-1") for k, v in resp.headers.getAllRawHeaders()}
        return resp.code, headers, body

    # -- the API of SprawlClient, answering Deferreds -----------------------------------

    def publish(
        self,
        topic: str,
        payload: Payload,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        id: str | None = None,
        acks: str | None = None,
    ) -> Deferred[Published]:
        """Publish one message (see :meth:`sprawl.client.SprawlClient.publish`)."""
        return self.publish_batch(topic, [outgoing(payload, key, headers, id)], acks=acks)

    def publish_batch(
        self, topic: str, messages: Iterable[dict[str, Any] | Payload], *, acks: str | None = None
    ) -> Deferred[Published]:
        """Publish a batch in one request."""
        items = [m if isinstance(m, dict) else outgoing(m) for m in messages]
        if self.encryptor is not None:
            items = [self.encryptor.seal_item(m) for m in items]
        return self.run(calls.publish(topic, items, acks, self.lean))

    def publish_many(
        self,
        topic: str,
        batches: Iterable[Iterable[dict[str, Any] | Payload]],
        *,
        acks: str | None = None,
        window: int = 16,
    ) -> Deferred[list[Published]]:
        """Publish many batches pipelined on one WebSocket (``GET .../ws?feed=none``): up to
        ``window`` (at most 64) batches in flight, answers matched by ``ref``; fires with
        each batch's :class:`Published`, in order.  The socket goes to the first node that
        opens one.  If it closes (or goes ``timeout`` seconds without an answer) with batches
        in flight, the Deferred fails with a :class:`ClientError` saying their outcome is
        unknown (batches whose messages all carry ids can be sent again safely).  On the lean
        wire the frames are binary msgpack (no base64) where the node reads them, else JSON."""
        calls._check_acks(acks)
        items = [[m if isinstance(m, dict) else outgoing(m) for m in batch] for batch in batches]
        if any(not batch for batch in items):
            raise ValueError("a batch holds one message at least")
        if self.encryptor is not None:
            items = [[self.encryptor.seal_item(m) for m in batch] for batch in items]
        return Deferred.fromCoroutine(self._publish_many(topic, items, acks, window))

    async def _publish_many(
        self, topic: str, batches: list[list[dict[str, Any]]], acks: str | None, window: int
    ) -> list[Published]:
        if not batches:
            return []
        errors: list[str] = []
        roots = _trust_root(self._cacert)
        for url in list(self.urls):
            try:
                result = await publish_many(
                    self.reactor,
                    url,
                    topic,
                    batches,
                    acks=acks,
                    window=window,
                    timeout=self.timeout,
                    token=self.token,
                    trust_root=roots,
                    lean=self.lean,
                )
            except ClientError as exc:
                if "cannot open a publish socket" not in str(exc):
                    raise
                errors.append(str(exc))
                continue
            self._prefer(url)
            return result
        raise ClientError("; ".join(errors))

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
    ) -> Deferred[FetchResult]:
        """Read one partition (see :meth:`sprawl.client.SprawlClient.fetch`)."""
        call = calls.fetch(topic, partition, start, from_time, limit, wait_ms, max_bytes, filter, fields)
        d: Deferred[FetchResult] = self.run(call)
        if self.decryptor is None:
            return d
        return d.addCallback(lambda r: replace(r, messages=self.open(r.messages)[0]))

    def create_group(self, topic: str, group: str, **config: Any) -> Deferred[dict[str, Any]]:
        """Create or update a consumer group (``start``, ``ack_deadline_ms``,
        ``max_deliveries``, ``dead_letter_topic``)."""
        return self.run(calls.put_group(topic, group, **config))

    def describe_group(self, topic: str, group: str) -> Deferred[dict[str, Any]]:
        """The group's state."""
        return self.run(calls.describe_group(topic, group))

    def delete_group(self, topic: str, group: str) -> Deferred[None]:
        """Delete a group."""
        return self.run(calls.delete_group(topic, group))

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
    ) -> Deferred[list[Message]]:
        """Lease up to ``max`` messages of the group (those that cannot be decrypted are
        nacked, as :meth:`sprawl.client.SprawlClient.pull` does)."""
        call = calls.pull(topic, group, max, wait_ms, max_bytes, filter, fields)
        return Deferred.fromCoroutine(self._pull(topic, group, call))

    async def _pull(self, topic: str, group: str, call: calls.Call) -> list[Message]:
        leased: list[Message] = await self.run(call)
        opened, failed = self.open(leased)
        if failed:
            await self.run(calls.nack(topic, group, failed, self.undecryptable_nack_delay_ms))
        return opened

    def ack(self, topic: str, group: str, messages: Iterable[str | Message]) -> Deferred[dict[str, Any]]:
        """Acknowledge leased messages."""
        return self.run(calls.ack(topic, group, messages))

    def nack(
        self, topic: str, group: str, messages: Iterable[str | Message], *, delay_ms: int = 0
    ) -> Deferred[dict[str, Any]]:
        """Give leased messages back for redelivery after ``delay_ms``."""
        return self.run(calls.nack(topic, group, messages, delay_ms))

    def extend(
        self, topic: str, group: str, messages: Iterable[str | Message], *, extend_ms: int | None = None
    ) -> Deferred[dict[str, Any]]:
        """Keep leased messages longer (see :meth:`sprawl.client.SprawlClient.extend`)."""
        return self.run(calls.extend(topic, group, messages, extend_ms))

    def list_topics(self) -> Deferred[list[dict[str, Any]]]:
        """Every topic's summary."""
        return self.run(calls.list_topics())

    def describe_topic(self, topic: str) -> Deferred[TopicDescription]:
        """A topic's configuration and partitions."""
        return self.run(calls.describe_topic(topic))

    def create_topic(self, topic: str, **config: Any) -> Deferred[TopicDescription]:
        """Create or update a topic (``partitions``, ``replication_factor``, ``storage``, ...)."""
        return self.run(calls.create_topic(topic, **config))

    def delete_topic(self, topic: str) -> Deferred[None]:
        """Delete a topic."""
        return self.run(calls.delete_topic(topic))

    def subscribe(
        self,
        topic: str,
        on_message: Callable[[Message], object],
        start: str | int | None = "latest",
        *,
        from_time: int | None = None,
        partition: int | None = None,
        resume: Mapping[int, int] | None = None,
        max_reconnects: int = 5,
        filter: str | None = None,
        fields: Iterable[str] | None = None,
    ) -> TxSubscription:
        """Call ``on_message`` with each message of the topic's stream, reconnecting and
        resuming (``Last-Event-ID``) as :meth:`sprawl.client.SprawlClient.subscribe` does."""
        cursor = calls.StreamCursor(topic, start, from_time, partition, resume, filter, fields, self.lean)
        return TxSubscription(self, cursor, on_message, max_reconnects)


def _connect_failure(exc: BaseException) -> bool:
    from twisted.internet.error import ConnectError, DNSLookupError

    return isinstance(exc, (ConnectError, DNSLookupError))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ResponseFailed):
        return "connection closed by the server"
    if isinstance(exc, defer.CancelledError):
        return "timed out"
    return failure_reason(exc)


class TxSubscription:
    """A running subscription of :meth:`TxSprawlClient.subscribe`: :attr:`done` fires when it
    ends (None after :meth:`close`, a :class:`ClientError` failure when it gives up);
    :attr:`last_event_id` is where to resume."""

    def __init__(
        self,
        client: TxSprawlClient,
        cursor: calls.StreamCursor,
        on_message: Callable[[Message], object],
        max_reconnects: int,
    ) -> None:
        self.client = client
        self.cursor = cursor
        self.on_message = on_message
        self.max_reconnects = max_reconnects
        #: Reconnections so far.
        self.reconnects = 0
        self._closed = False
        self._current: Deferred[Any] | None = None
        self._response: Any = None
        self._reader: _EventReader | None = None
        self.done: Deferred[None] = Deferred.fromCoroutine(self._loop())

    @property
    def last_event_id(self) -> str | None:
        """``P:OFFSET,...`` after the last message delivered."""
        return self.cursor.last_event_id

    def close(self) -> None:
        """Stop the subscription and close its connection; :attr:`done` fires with None."""
        self._closed = True
        if self._reader is not None:
            self._reader.closed = True
        if self._response is not None:
            # Twisted's Response gives no public way to drop the connection of a body being
            # delivered; its transport proxy does (else the next chunk ends it, see feed()).
            proxy = getattr(getattr(self._response, "original", self._response), "_transport", None)
            if proxy is not None:
                proxy.stopProducing()
        if self._current is not None:
            self._current.cancel()

    async def _loop(self) -> None:
        failures = 0
        while not self._closed:
            try:
                delivered = await self._one_stream()
            except defer.CancelledError:
                if self._closed:
                    return
                raise
            if self._closed:
                return
            failures = 0 if delivered else failures + 1
            if failures > self.max_reconnects:
                raise ClientError(f"stream of {self.cursor.topic!r} keeps ending; gave up")
            self.reconnects += 1
            wait = task.deferLater(self.client._clock, min(0.1 * 2**failures, 5.0), lambda: None)
            self._current = wait
            await wait

    async def _one_stream(self) -> int:
        """Read one connection of the stream; the number of messages it delivered."""
        c = self.client
        headers: Any = c._headers({"Accept": "text/event-stream", **self.cursor.headers()})
        params = {k: str(v) for k, v in self.cursor.query.items() if v is not None}
        for url in list(c.urls):
            d = c._http.request(
                "GET", url + self.cursor.path, params=params, headers=headers, unbuffered=True
            )
            self._current = d
            try:
                resp = await d
            except defer.CancelledError:
                raise
            except Exception:
                continue
            if resp.code != 200:
                body = await treq.content(resp)
                raise ClientError(error_text(resp.code, body))
            c._prefer(url)
            reader = self._reader = _EventReader(self.cursor, self.on_message, c.open)
            self._response = resp
            collecting = treq.collect(resp, reader.feed)
            self._current = collecting
            try:
                await collecting
            except defer.CancelledError:
                if reader.failure is None:
                    raise
            except Exception:
                pass  # the stream broke (or on_message raised): see below
            finally:
                self._response = self._reader = None
            if reader.failure is not None:
                raise reader.failure  # on_message raised: the subscription ends with it
            if reader.error is not None and not reader.error.startswith(RESUMABLE_STREAM_ERRORS):
                raise ClientError(reader.error)
            return reader.delivered
        return 0


class _EventReader:
    """The SSE events of one connection, each message noted in the cursor and handed on."""

    def __init__(
        self,
        cursor: calls.StreamCursor,
        on_message: Callable[[Message], object],
        opener: Callable[[list[Message]], tuple[list[Message], list[Message]]],
    ) -> None:
        self.cursor = cursor
        self.on_message = on_message
        self.opener = opener
        #: What ``on_message`` raised (the stream is then read no further).
        self.failure: BaseException | None = None
        #: Set by :meth:`TxSubscription.close`: the next chunk ends the connection.
        self.closed = False
        self.parser = SseParser()
        self.batches = BatchStreamDecoder() if cursor.batch else None
        self.delivered = 0
        #: The ``code: message`` of an ``error`` event (the stream ends after it).
        self.error: str | None = None

    def feed(self, data: bytes) -> None:
        """Take a chunk of the body."""
        if self.closed:
            raise defer.CancelledError("subscription closed")
        if self.batches is not None:
            self._feed_batches(self.batches, data)
            return
        for event in self.parser.feed(data):
            if self.error is not None or self.failure is not None:
                return
            if event.event == "error":
                self.error = event_error_text(event.data)
            elif event.event == "message":
                self._deliver([Message.parse(self.cursor.topic, json.loads(event.data))])

    def _deliver(self, messages: list[Message]) -> None:
        """Note ``messages`` in the cursor and hand those that open to ``on_message``."""
        opened, _ = self.opener(messages)
        ready = {(m.partition, m.offset): m for m in opened}
        for message in messages:
            # Noted one by one: after a failing on_message, last_event_id is that message's.
            self.cursor.delivered(message)
            self.delivered += 1
            m = ready.get((message.partition, message.offset))
            if m is None:
                continue  # could not be decrypted (reported by the opener)
            try:
                self.on_message(m)
            except Exception as exc:
                # Raised out of the collector, it makes treq close the connection.
                self.failure = exc
                raise

    def _feed_batches(self, decoder: BatchStreamDecoder, data: bytes) -> None:
        """Take a chunk of a ``format=batch`` stream (one-message events read too)."""
        if self.error is not None or self.failure is not None:
            return
        try:
            batches = decoder.feed(data)
        except StreamError as e:
            self.error = str(e)  # messages of this chunk before it: read again on resume
            return
        except WireError as e:
            # Not resumable: the subscription ends with it (raised, treq drops the connection).
            self.failure = ClientError(str(e))
            raise self.failure from None
        for batch in batches:
            self._deliver([Message.parse(self.cursor.topic, m) for m in batch.messages])
