"""The minimal HTTP/1.1 client on :mod:`asyncio` protocols of the bench's hot path.

The client must not be the bottleneck of a benchmark, so it avoids general-purpose HTTP
libraries: it writes pre-built requests on keep-alive connections and parses responses with
bytes operations (:class:`HttpConnection`, :class:`Dechunker`).  Error text and network
failures read as in every Sprawl client (:mod:`sprawl.client.errors`); a bearer token and a
CA bundle are given by the caller.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import msgspec

from sprawl.client.blocking import normalize_url
from sprawl.client.errors import ClientError, error_text, failure_reason


@dataclass(frozen=True)
class Endpoint:
    """Where one node listens, parsed from its base URL."""

    url: str
    host: str
    port: int
    tls: bool
    base: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """Parse ``http[s]://host[:port][/prefix]``; a bare ``host:port`` means http."""
        try:
            url = normalize_url(url)
        except ValueError as exc:
            raise ClientError(str(exc)) from None
        parts = urlsplit(url)
        assert parts.hostname is not None
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        return cls(url, parts.hostname, port, tls, parts.path.rstrip("/"))

    @property
    def host_header(self) -> bytes:
        """The ``Host`` header value."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}".encode("ascii")

    def path(self, path: str) -> bytes:
        """An absolute request target below the base path."""
        return (self.base + path).encode("ascii")

    async def connect(
        self, factory: Callable[[], asyncio.Protocol], timeout: float, cacert: str | None = None
    ) -> Any:
        """Open a TCP (or TLS, its certificate checked against ``cacert`` or the system's CAs)
        connection running the protocol ``factory`` builds."""
        loop = asyncio.get_running_loop()
        context = ssl.create_default_context(cafile=cacert) if self.tls else None
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(factory, self.host, self.port, ssl=context), timeout
            )
        except (TimeoutError, OSError) as exc:
            raise ClientError(f"{self.url}: cannot connect: {failure_reason(exc)}") from exc
        return protocol


@dataclass
class Response:
    """A parsed HTTP response; header names are lower case."""

    status: int
    headers: dict[str, str]
    body: bytes

    def error_text(self) -> str:
        """The server's ``code: message`` or the status and start of the body."""
        return error_text(self.status, self.body)


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status code and lower-cased headers of a response head (without the blank line)."""
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split(None, 2)[1])
    except (IndexError, ValueError):
        raise ClientError(f"malformed HTTP status line: {lines[0][:80]!r}") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return status, headers


class Dechunker:
    """Incremental decoder of ``Transfer-Encoding: chunked`` bodies."""

    __slots__ = ("_left", "_raw", "_trailer", "done")

    def __init__(self) -> None:
        self._raw = b""
        self._left = 0
        self._trailer = False
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """Return the body bytes ``data`` completes; sets ``done`` after the last chunk."""
        raw = self._raw + data if self._raw else data
        out: list[bytes] = []
        pos = 0
        end = len(raw)
        while pos < end and not self.done:
            if self._left:
                take = min(self._left, end - pos)
                out.append(raw[pos : pos + take])
                pos += take
                self._left -= take
                continue
            nl = raw.find(b"\r\n", pos)
            if nl < 0:
                break
            line = raw[pos:nl]
            pos = nl + 2
            if self._trailer:
                self.done = not line  # trailer fields end with an empty line
                continue
            if not line:
                continue  # the CRLF closing a chunk's data
            try:
                size = int(line.split(b";", 1)[0], 16)
            except ValueError:
                raise ClientError(f"malformed chunk size line {line[:40]!r}") from None
            if size == 0:
                self._trailer = True
            self._left = size
        self._raw = raw[pos:] if pos < end else b""
        return out[0] if len(out) == 1 else b"".join(out)


class HttpConnection(asyncio.Protocol):
    """A keep-alive HTTP/1.1 client connection with one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = b""
        self._waiter: asyncio.Future[Response] | None = None
        self._status = 0
        self._headers: dict[str, str] = {}
        self._need = -1  # body bytes still expected; -1 = reading the head
        self._chunks: Dechunker | None = None
        self._body: list[bytes] = []
        self._until_close = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            if self._until_close and self._need >= 0:
                self._finish(b"".join(self._body))
            else:
                reason = failure_reason(exc) if exc else "connection closed by the server"
                self._waiter.set_exception(ClientError(reason))

    def request(self, data: bytes) -> asyncio.Future[Response]:
        """Send one complete request; the future resolves to its response."""
        if self.closed or self.transport is None:
            raise ClientError("connection closed by the server")
        assert self._waiter is None or self._waiter.done(), "one request at a time"
        self._waiter = asyncio.get_running_loop().create_future()
        self._need = -1
        self.transport.write(data)
        return self._waiter

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        while buf:
            if self._need < 0:
                idx = buf.find(b"\r\n\r\n")
                if idx < 0:
                    break
                head, buf = buf[:idx], buf[idx + 4 :]
                self._start_body(head)
                if self._need == 0 and self._chunks is None and not self._until_close:
                    self._finish(b"")
                continue
            if self._chunks is not None:
                self._body.append(self._chunks.feed(buf))
                buf = b""
                if self._chunks.done:
                    self._finish(b"".join(self._body))
            elif self._until_close:
                self._body.append(buf)
                buf = b""
            else:
                take = buf[: self._need]
                buf = buf[self._need :]
                self._body.append(take)
                self._need -= len(take)
                if self._need == 0:
                    self._finish(b"".join(self._body))
        self._buf = buf

    def _start_body(self, head: bytes) -> None:
        try:
            status, headers = parse_head(head)
        except ClientError as exc:
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_exception(exc)
            if self.transport is not None:
                self.transport.close()
            return
        self._status, self._headers = status, headers
        self._body = []
        self._chunks = None
        self._until_close = False
        if 100 <= status < 200:
            self._need = -1
            return
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._chunks = Dechunker()
            self._need = 1
        elif "content-length" in headers:
            self._need = int(headers["content-length"])
        elif status in (204, 304):
            self._need = 0
        else:
            self._until_close = True
            self._need = 1

    def _finish(self, body: bytes) -> None:
        self._need = -1
        self._chunks = None
        self._until_close = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(self._status, self._headers, body))
        if self._headers.get("connection", "").lower() == "close" and self.transport:
            self.transport.close()


def auth_header(token: str | None) -> bytes:
    """The ``Authorization: Bearer`` header line of ``token``, or nothing."""
    return b"Authorization: Bearer %s\r\n" % token.encode("ascii", "replace") if token else b""


class HttpClient:
    """A lazily (re)connected keep-alive client for one :class:`Endpoint`."""

    def __init__(
        self, endpoint: Endpoint, timeout: float, token: str | None = None, cacert: str | None = None
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.cacert = cacert
        self._conn: HttpConnection | None = None
        self._auth = auth_header(token)

    def build(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: bytes = b"application/json",
    ) -> bytes:
        """Serialise a request for :meth:`send`."""
        ep = self.endpoint
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\n%s" % (
            method.encode(),
            ep.path(path),
            ep.host_header,
            self._auth,
        )
        if body is None:
            return head + b"\r\n"
        return head + b"Content-Type: %s\r\nContent-Length: %d\r\n\r\n" % (content_type, len(body)) + body

    async def send(self, data: bytes) -> Response:
        """Send a request built by :meth:`build` and wait for its response."""
        conn = self._conn
        if conn is None or conn.closed:
            conn = self._conn = await self.endpoint.connect(HttpConnection, self.timeout, self.cacert)
        try:
            return await asyncio.wait_for(conn.request(data), self.timeout)
        except TimeoutError:
            self.close()
            raise ClientError(f"{self.endpoint.url}: no answer within {self.timeout:g} s") from None

    async def request(self, method: str, path: str, json_body: Any = None) -> tuple[Response, Any]:
        """Send a JSON request; answer the response and its decoded JSON body (or None)."""
        body = None if json_body is None else msgspec.json.encode(json_body)
        resp = await self.send(self.build(method, path, body))
        try:
            decoded = msgspec.json.decode(resp.body) if resp.body else None
        except msgspec.DecodeError:
            decoded = None
        return resp, decoded

    def close(self) -> None:
        """Close the connection (the next request reconnects)."""
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.close()
        self._conn = None
