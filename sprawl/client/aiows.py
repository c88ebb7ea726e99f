"""Pipelined msgpack publish frames over one WebSocket, on :mod:`asyncio`.

The asyncio counterpart of :mod:`sprawl.client.txsocket`, small enough for a benchmark's hot
path (it is the publisher of ``benchmarks.sidebyside --wire ws``): :func:`open_publisher`
opens ``GET /v1/topics/{topic}/ws?feed=none`` (no feed: publish frames only, docs/api.md
"Pipelined publish"), checks that the node's upgrade answer names ``msgpack`` in its
``Sprawl-Publish-Frames`` header, and returns a :class:`Publisher`.
:meth:`Publisher.publish` sends one binary msgpack publish frame per batch
(``{"publish": {"messages": [...], "acks"?}, "ref": N}``, payloads as msgpack ``str`` or
``bin``, no base64) and answers a future of its ``published`` answer; up to ``window`` frames
are in flight (``publish`` waits for room), so the publisher never waits for one batch's
fsync before sending the next.  A socket that closes with frames unanswered fails them with a
:class:`~sprawl.client.errors.ClientError` saying their outcome is unknown.

Bounded: a server frame longer than :data:`MAX_FRAME_BYTES` or an upgrade answer longer than
:data:`MAX_HEAD_BYTES` closes the socket with a :class:`ClientError`; ``window`` is at most
:data:`MAX_WINDOW` (the node stops reading a socket at 64 publishes in flight).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import struct
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import msgspec

from sprawl.client.aio import Endpoint, auth_header, parse_head
from sprawl.client.errors import ClientError

#: The most frames :class:`Publisher` keeps in flight (the node stops reading at 64).
MAX_WINDOW = 64
#: The longest server frame read (answers are small; a feed=none socket carries no messages).
MAX_FRAME_BYTES = 16 * 1000**2
#: The longest upgrade answer read.
MAX_HEAD_BYTES = 64 * 1024
#: RFC 6455's GUID of the ``Sec-WebSocket-Accept`` check.
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

_pack = msgspec.msgpack.Encoder().encode


def accept_key(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` value a server answers to ``Sec-WebSocket-Key: key``."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def mask(data: bytes, key: bytes) -> bytes:
    """``data`` XOR the 4-byte ``key`` repeated (RFC 6455 5.3), in C-speed integer arithmetic."""
    n = len(data)
    if not n:
        return b""
    stream = key * (n // 4 + 1)
    return (int.from_bytes(data, "little") ^ int.from_bytes(stream[:n], "little")).to_bytes(n, "little")


def client_frame(payload: bytes, opcode: int = 2, key: bytes | None = None) -> bytes:
    """One final, masked client frame (``opcode`` 2: binary, 8: close, 10: pong)."""
    key = os.urandom(4) if key is None else key
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + key + mask(payload, key)


def publish_frame(ref: int, messages: Iterable[Mapping[str, Any]], acks: str | None) -> bytes:
    """The msgpack body of one publish frame (before WebSocket framing)."""
    body: dict[str, Any] = {"messages": messages if isinstance(messages, list) else list(messages)}
    if acks is not None:
        body["acks"] = acks
    return _pack({"publish": body, "ref": ref})


class FrameReader:
    """Incremental reader of a server's (unmasked) WebSocket frames: :meth:`feed` takes bytes
    split anywhere and returns the complete messages as ``(opcode, payload)`` (fragments
    joined); a frame or message over ``max_bytes``, a masked server frame or a reserved
    bit or opcode raises :class:`ClientError`."""

    def __init__(self, max_bytes: int = MAX_FRAME_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buf = b""
        self._parts: list[bytes] = []
        self._parts_len = 0
        self._first_op = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The messages ``data`` completes, in order."""
        buf = self._buf + data if self._buf else data
        out: list[tuple[int, bytes]] = []
        pos = 0
        while len(buf) - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            if b0 & 0x70:
                raise ClientError("websocket frame with reserved bits set")
            if b1 & 0x80:
                raise ClientError("masked websocket frame from the server")
            n, at = b1 & 0x7F, pos + 2
            if n == 126:
                if len(buf) - at < 2:
                    break
                (n,) = struct.unpack_from("!H", buf, at)
                at += 2
            elif n == 127:
                if len(buf) - at < 8:
                    break
                (n,) = struct.unpack_from("!Q", buf, at)
                at += 8
            op, fin = b0 & 0x0F, b0 & 0x80
            if n > self.max_bytes or (op in (0, 1, 2) and self._parts_len + n > self.max_bytes):
                raise ClientError(f"websocket frame longer than {self.max_bytes} bytes")
            if op >= 8 and (n > 125 or not fin):
                raise ClientError("malformed websocket control frame")
            if op not in (0, 1, 2, 8, 9, 10):
                raise ClientError(f"unknown websocket opcode {op}")
            if len(buf) - at < n:
                break
            payload = buf[at : at + n]
            pos = at + n
            if op >= 8:
                out.append((op, payload))
                continue
            if op == 0 and not self._parts:
                raise ClientError("websocket continuation without a first frame")
            if op != 0:
                if self._parts:
                    raise ClientError("websocket message started inside another")
                self._first_op = op
            if fin and not self._parts:
                out.append((op, payload))
                continue
            self._parts.append(payload)
            self._parts_len += n
            if fin:
                out.append((self._first_op, b"".join(self._parts)))
                self._parts, self._parts_len = [], 0
        self._buf = buf[pos:]
        return out


class _Socket(asyncio.Protocol):
    """The TCP side: the upgrade, then frames to the :class:`Publisher`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.publisher: Publisher | None = None
        self.opened: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
        self.reader = FrameReader()
        self._head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        why = f"socket closed ({exc})" if exc else "socket closed by the server"
        if not self.opened.done():
            self.opened.set_exception(ClientError(why))
        if self.publisher is not None:
            self.publisher._closed(why)

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > MAX_HEAD_BYTES:
                    self._abort(ClientError("upgrade answer too long"))
                return
            head, data = self._head[:end], self._head[end + 4 :]
            self._head = b""
            try:
                status, headers = parse_head(head)
            except ClientError as exc:
                self._abort(exc)
                return
            if status != 101:
                self._abort(ClientError(f"the node refused the publish socket ({status})"))
                return
            self.opened.set_result(headers)
            if not data:
                return
        try:
            frames = self.reader.feed(data)
        except ClientError as exc:
            self._abort(exc)
            return
        for op, payload in frames:
            if op == 9 and self.transport is not None:
                self.transport.write(client_frame(payload, 10))
            elif op == 8:
                if self.publisher is not None:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    self.publisher._closed(f"socket closed by the node ({code})")
                if self.transport is not None:
                    self.transport.close()
            elif op in (1, 2) and self.publisher is not None:
                self.publisher._answer(payload)

    def _abort(self, exc: ClientError) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        elif self.publisher is not None:
            self.publisher._closed(str(exc))
        if self.transport is not None:
            self.transport.abort()


class Publisher:
    """One ``feed=none`` WebSocket sending pipelined msgpack publish frames (see the module)."""

    def __init__(self, sock: _Socket, window: int) -> None:
        self._sock = sock
        self.window = max(1, min(window, MAX_WINDOW))
        self._ref = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._room = asyncio.Semaphore(self.window)
        self._error: str | None = None
        #: Frames sent in this turn of the event loop, written together at its end.
        self._out: list[bytes] = []
        sock.publisher = self

    @property
    def in_flight(self) -> int:
        """Frames sent and not answered yet."""
        return len(self._waiting)

    async def publish(
        self, messages: Iterable[Mapping[str, Any]], acks: str | None = None
    ) -> asyncio.Future[dict[str, Any]]:
        """Send one publish frame of ``messages`` (each ``{"payload": str | bytes, "key"?,
        "headers"?, "id"?}``) once fewer than ``window`` are in flight; answers the future of
        its ``published`` answer (``offsets``, ``ids``, ...), which fails with a
        :class:`ClientError` on an error answer or a closed socket."""
        await self._room.acquire()
        if self._error is not None:
            self._room.release()
            raise ClientError(self._error)
        self._ref += 1
        ref = self._ref
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ref] = fut
        if not self._out:
            # The frames of one turn go out in one write (so the node reads them together,
            # and stores them in one write: docs/api.md "msgpack publish frames").
            asyncio.get_running_loop().call_soon(self._write)
        self._out.append(client_frame(publish_frame(ref, messages, acks)))
        return fut

    def _write(self) -> None:
        out, self._out = self._out, []
        transport = self._sock.transport
        if out and transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    async def drain(self) -> None:
        """Wait until every frame sent is answered (their failures are the futures')."""
        if self._waiting:
            await asyncio.wait(list(self._waiting.values()))

    def close(self) -> None:
        """Send a close frame and close the connection (unanswered frames fail)."""
        t = self._sock.transport
        self._write()
        if t is not None and not t.is_closing():
            t.write(client_frame(struct.pack("!H", 1000), 8))
            t.close()
        self._closed("socket closed by the client")

    def _answer(self, payload: bytes) -> None:
        try:
            frame = json.loads(payload)
        except (ValueError, RecursionError):
            return
        if not isinstance(frame, dict):
            return
        ref = frame.get("ref")
        fut = self._waiting.pop(ref, None) if isinstance(ref, int) else None
        if fut is None:
            return
        self._room.release()
        if fut.done():
            return
        published = frame.get("published")
        if isinstance(published, dict):
            fut.set_result(published)
            return
        err = frame.get("error")
        err = err if isinstance(err, dict) else {}
        fut.set_exception(ClientError(f"{err.get('code', 'error')}: {err.get('message', '')}"))

    def _closed(self, why: str) -> None:
        if self._error is None:
            self._error = why
        waiting, self._waiting = self._waiting, {}
        for fut in waiting.values():
            self._room.release()
            if not fut.done():
                fut.set_exception(
                    ClientError(f"{why} with the batch unanswered (it may or may not be stored)")
                )


async def open_publisher(
    url: str,
    topic: str,
    *,
    window: int = 16,
    timeout: float = 30.0,
    token: str | None = None,
    cacert: str | None = None,
) -> Publisher:
    """Open a publish socket to the node at ``url`` for ``topic``.  :class:`ClientError`
    when it cannot open, or when the node does not read msgpack publish frames."""
    ep = Endpoint.parse(url)
    sock: _Socket = await ep.connect(_Socket, timeout, cacert)
    key = base64.b64encode(os.urandom(16))
    assert sock.transport is not None
    sock.transport.write(
        b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n"
        % (
            ep.path(f"/v1/topics/{quote(topic, safe='')}/ws?feed=none"),
            ep.host_header,
            key,
            auth_header(token),
        )
    )
    try:
        headers = await asyncio.wait_for(sock.opened, timeout)
    except TimeoutError:
        sock.transport.abort()
        raise ClientError(f"{url}: no upgrade answer within {timeout:g} s") from None
    if headers.get("sec-websocket-accept", "").encode() != accept_key(key):
        sock.transport.abort()
        raise ClientError(f"{url}: bad Sec-WebSocket-Accept in the upgrade answer")
    frames = headers.get("sprawl-publish-frames", "").replace(" ", "").split(",")
    if "msgpack" not in frames:
        sock.transport.abort()
        raise ClientError(f"{url}: the node does not read msgpack publish frames")
    return Publisher(sock, window)
