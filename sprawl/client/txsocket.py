"""Pipelined publishes over one WebSocket, for the Twisted client
(:meth:`sprawl.client.TxSprawlClient.publish_many`).

The socket is ``GET /v1/topics/{topic}/ws?feed=none`` (no feed: publish frames only,
docs/api.md "Pipelined publish").  Up to ``window`` publish frames are in flight at a time,
each carrying its index as ``ref``; answers come back in any order and are matched by it.
A ``too_many_in_flight`` refusal (nothing stored) is sent again once another answer came.
When the socket closes with frames unanswered, their outcome is unknown: the call fails
with a :class:`~sprawl.client.errors.ClientError` saying so (a batch whose messages all
carry ids may be sent again safely).

On the lean wire (``lean=True``) the frames are binary msgpack frames (binary payloads as
msgpack ``bin``, no base64) when the node's upgrade answer names them in its
``Sprawl-Publish-Frames`` header; a node that does not gets JSON text frames.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import msgspec
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

from sprawl.client.errors import ClientError
from sprawl.client.messages import Published
from sprawl.client.wire import lean_item

_pack = msgspec.msgpack.Encoder().encode

#: The most publish frames one socket of :func:`publish_many` keeps in flight (a node stops
#: reading a socket at 64 and refuses frames beyond 256).
MAX_WINDOW = 64


class _PublishSocket(WebSocketClientProtocol):
    """Hands every answer frame (one with a ``ref``) to its pipeline; feed frames are dropped."""

    pipeline: _Pipeline

    def onConnect(self, response: Any) -> None:
        frames = str(response.headers.get("sprawl-publish-frames", ""))
        self.pipeline.packed = self.pipeline.lean and "msgpack" in frames.replace(" ", "").split(",")

    def onOpen(self) -> None:
        self.pipeline.opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            frame = json.loads(payload)
        except ValueError:
            return
        if isinstance(frame, dict) and "ref" in frame:
            self.pipeline.answer(frame)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.pipeline.closed(f"socket closed ({code}{': ' + reason if reason else ''})")


class _Pipeline:
    """The frames of one :func:`publish_many` call and their answers."""

    def __init__(
        self,
        batches: Sequence[Sequence[Mapping[str, Any]]],
        acks: str | None,
        window: int,
        clock: Any,
        timeout: float,
        lean: bool = False,
    ) -> None:
        self.clock = clock
        #: Seconds the socket may go without an answer while frames are in flight.
        self.timeout = timeout
        self._last = clock.seconds()
        self._watch: Any = None
        self.batches = batches
        self.acks = acks
        #: Whether msgpack frames may be sent (the node's upgrade answer decides).
        self.lean = lean
        #: Whether they are: set once the upgrade is answered.
        self.packed = False
        self.window = window
        self.results: list[Published | None] = [None] * len(batches)
        self.next = 0
        self.in_flight: set[int] = set()
        self.retry: list[int] = []
        self.socket: _PublishSocket | None = None
        #: Fires with the socket once open (errback: it never opened).
        self.ready: Deferred[None] = Deferred()
        #: Fires when every frame is answered (errback: the first failure).
        self.done: Deferred[list[Published]] = Deferred()
        self.error: ClientError | None = None

    def opened(self, socket: _PublishSocket) -> None:
        self.socket = socket
        if not self.ready.called:
            self.ready.callback(None)
        self._last = self.clock.seconds()
        self._watch = self.clock.callLater(self.timeout, self._idle)
        self._fill()

    def _idle(self) -> None:
        """No answer for ``timeout`` seconds with frames in flight: give up on the socket."""
        self._watch = None
        if self.done.called:
            return
        quiet = self.clock.seconds() - self._last
        if self.in_flight and quiet >= self.timeout:
            self._fail(
                ClientError(
                    f"no answer for {quiet:.0f} s with {len(self.in_flight)} batch(es) in flight "
                    "(they may or may not have been applied)"
                )
            )
            if self.socket is not None:
                self.socket.dropConnection(abort=True)
            return
        self._watch = self.clock.callLater(max(0.0, self.timeout - quiet), self._idle)

    def _fill(self) -> None:
        sock = self.socket
        if sock is None or self.error is not None:
            return
        while len(self.in_flight) < self.window:
            if self.retry:
                i = self.retry.pop(0)
            elif self.next < len(self.batches):
                i = self.next
                self.next += 1
            else:
                break
            self.in_flight.add(i)
            sock.sendMessage(publish_frame(i, self.batches[i], self.acks, self.packed), isBinary=self.packed)
        if not self.in_flight and not self.retry and self.next >= len(self.batches):
            self._finish()

    def answer(self, frame: dict[str, Any]) -> None:
        ref = frame.get("ref")
        if not isinstance(ref, int) or ref not in self.in_flight:
            return
        self._last = self.clock.seconds()
        self.in_flight.discard(ref)
        if "published" in frame:
            self.results[ref] = Published.parse(frame["published"])
        else:
            err = frame.get("error")
            if not isinstance(err, dict):
                err = {}
            code, message = str(err.get("code", "error")), str(err.get("message", ""))
            if code == "too_many_in_flight":
                self.retry.append(ref)  # refused unstored: send it again
            else:
                self._fail(ClientError(f"{code}: {message} (batch {ref})"))
                return
        self._fill()

    def closed(self, why: str) -> None:
        if not self.ready.called:
            self.ready.errback(ClientError(why))
            return
        if self.done.called:
            return
        unknown = len(self.in_flight)
        self._fail(
            ClientError(
                f"{why} with {unknown} batch(es) unanswered (they may or may not have been applied)"
                if unknown
                else why
            )
        )

    def _stop_watch(self) -> None:
        if self._watch is not None and self._watch.active():
            self._watch.cancel()
        self._watch = None

    def _fail(self, error: ClientError) -> None:
        self._stop_watch()
        if self.error is None:
            self.error = error
            if self.socket is not None:
                self.socket.sendClose()
            if not self.done.called:
                self.done.errback(error)

    def _finish(self) -> None:
        self._stop_watch()
        if self.done.called:
            return
        results = [r for r in self.results if r is not None]
        self.done.callback(results)
        if self.socket is not None:
            self.socket.sendClose()


def publish_frame(ref: int, items: Sequence[Mapping[str, Any]], acks: str | None, packed: bool) -> bytes:
    """The ``publish`` frame of one batch: JSON (payloads as the JSON batch has them), or
    with ``packed`` msgpack (a ``payload_b64`` sent as a binary ``payload``)."""
    body: dict[str, Any] = {"messages": [lean_item(m) for m in items] if packed else list(items)}
    if acks is not None:
        body["acks"] = acks
    frame = {"publish": body, "ref": ref}
    return _pack(frame) if packed else json.dumps(frame).encode()


async def publish_many(
    reactor: Any,
    url: str,
    topic: str,
    batches: Sequence[Sequence[Mapping[str, Any]]],
    *,
    acks: str | None,
    window: int,
    timeout: float,
    token: str | None,
    trust_root: Any = None,
    lean: bool = False,
) -> list[Published]:
    """Send one ``publish`` frame per batch (JSON items) on one ``feed=none`` socket to the
    node at ``url``, ``window`` in flight; their answers in order.  ``lean``: msgpack frames
    if the node reads them.  :class:`ClientError` when the socket cannot open (nothing was
    sent) or a frame fails."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    path = parts.path.rstrip("/") + "/v1/topics/" + quote(topic, safe="") + "/ws?feed=none"
    ws_url = f"{'wss' if tls else 'ws'}://{parts.netloc}{path}"
    headers = {"Authorization": f"Bearer {token}"} if token else None
    factory = WebSocketClientFactory(ws_url, headers=headers)
    pipeline = _Pipeline(batches, acks, max(1, min(window, MAX_WINDOW)), reactor, timeout, lean)

    def build() -> _PublishSocket:
        proto = _PublishSocket()
        proto.factory = factory
        proto.pipeline = pipeline
        return proto

    factory.protocol = build  # type: ignore[assignment]
    factory.setProtocolOptions(openHandshakeTimeout=timeout, closeHandshakeTimeout=2.0)
    endpoint: Any = HostnameEndpoint(reactor, parts.hostname, port, timeout=timeout)
    if tls:
        options = ssl.optionsForClientTLS(parts.hostname, trustRoot=trust_root or ssl.platformTrust())
        endpoint = wrapClientTLS(options, endpoint)
    try:
        await endpoint.connect(factory)
    except Exception as exc:
        raise ClientError(f"{url}: cannot open a publish socket: {exc}") from None
    opening = pipeline.ready
    opening.addTimeout(timeout, reactor)
    try:
        await opening
    except Exception as exc:
        raise ClientError(f"{url}: cannot open a publish socket: {exc}") from None
    return await pipeline.done
