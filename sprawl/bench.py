"""Benchmark engine behind ``sprawlctl bench``.

The engine publishes ``messages`` payloads of ``size`` bytes to a topic in batches from
``publishers`` concurrent keep-alive connections while ``subscribers`` SSE streams read the topic
from ``latest``, and measures:

* publish throughput (msgs/s, MB/s where MB = 10**6 bytes) and per-request publish latency;
* delivered throughput summed over all subscribers;
* end-to-end latency: every payload starts with its send time (``time.time_ns()`` as 19 ASCII
  digits) and is padded to ``size`` bytes, so a subscriber computes ``receive - send``.

The client must not be the bottleneck, so the hot path avoids general-purpose HTTP libraries:
a tiny HTTP/1.1 client on :mod:`asyncio` protocols writes pre-built requests and parses responses
with bytes operations, and the SSE reader never decodes the message JSON — one precompiled regular
expression pulls every send timestamp out of a received block at C speed. Subscribers run in a
child process by default (:mod:`multiprocessing`, spawn) so that parsing the fan-out does not
delay the publishers and their timestamps.

Use :func:`run_bench` from Python, or ``sprawlctl bench`` from a shell.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import multiprocessing.connection
import os
import re
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any
from urllib.parse import quote, urlsplit

import msgspec

__all__ = [
    "MIN_SIZE",
    "BenchConfig",
    "BenchError",
    "BenchResult",
    "Endpoint",
    "make_payload",
    "percentile",
    "run_bench",
]

#: Digits of the send timestamp (nanoseconds since the epoch) at the start of every payload.
TS_DIGITS = 19
#: Smallest payload ``run_bench`` accepts: the timestamp alone.
MIN_SIZE = TS_DIGITS
#: Finds the send timestamp of every bench message in a block of SSE text.
_TS_RE = re.compile(rb'"payload": ?"(\d{19})')

_ACKS = ("quorum", "leader", "none")
_STORAGE = ("durable", "ephemeral")

#: ``progress(published, publish_target, delivered, delivery_target)``
ProgressCallback = Callable[[int, int, int, int], None]


class BenchError(Exception):
    """The benchmark could not run or could not finish; the message is one line."""


# --------------------------------------------------------------------------------------------
# configuration and results


@dataclass
class BenchConfig:
    """What to measure; see ``sprawlctl bench --help`` for the meaning of each field."""

    urls: Sequence[str] = ("http://localhost:8080",)
    topic: str | None = None
    messages: int = 100_000
    size: int = 100
    batch: int = 100
    publishers: int = 4
    subscribers: int = 1
    acks: str = "quorum"
    rate: float = 0.0
    storage: str = "durable"
    partitions: int | None = None
    replication_factor: int | None = None
    keep_topic: bool = False
    subscriber_process: bool = True
    #: Nodes the subscribers read from (round robin); empty: the same nodes as the publishers.
    subscriber_urls: Sequence[str] = ()
    timeout: float = 30.0
    drain_timeout: float = 10.0
    ready_timeout: float = 10.0

    def validate(self) -> None:
        """Raise :class:`BenchError` when a field is out of range."""
        if not self.urls:
            raise BenchError("no node URL given")
        if self.messages < 1:
            raise BenchError("--messages must be at least 1")
        if self.size < MIN_SIZE:
            raise BenchError(f"--size must be at least {MIN_SIZE} bytes (the send timestamp)")
        if self.batch < 1:
            raise BenchError("--batch must be at least 1")
        if self.publishers < 1:
            raise BenchError("--publishers must be at least 1")
        if self.subscribers < 0:
            raise BenchError("--subscribers must not be negative")
        if self.rate < 0:
            raise BenchError("--rate must not be negative")
        if self.acks not in _ACKS:
            raise BenchError(f"--acks must be one of {', '.join(_ACKS)}")
        if self.storage not in _STORAGE:
            raise BenchError(f"--storage must be one of {', '.join(_STORAGE)}")


@dataclass
class LatencySummary:
    """Latency percentiles in milliseconds."""

    p50: float
    p99: float
    max: float


@dataclass
class BenchResult:
    """Everything one run measured. ``to_dict`` gives the ``--json`` form."""

    topic: str
    messages: int
    size: int
    batch: int
    publishers: int
    subscribers: int
    acks: str
    rate: float
    storage: str
    partitions: int | None
    replication_factor: int | None
    published: int
    publish_seconds: float
    publish_msgs_per_s: float
    publish_mb_per_s: float
    publish_requests: int
    publish_latency_ms: LatencySummary | None
    throttled: int
    delivered: int
    delivery_target: int
    delivery_seconds: float
    delivered_msgs_per_s: float
    delivered_mb_per_s: float
    e2e_latency_ms: LatencySummary | None
    per_subscriber: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-able data."""
        return asdict(self)

    @property
    def complete(self) -> bool:
        """True when every subscriber received every published message."""
        return self.delivered >= self.delivery_target


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of an ascending sequence; 0 when empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def _quantize_us(us: int) -> int:
    """Round a latency in microseconds down to ~0.1 % so histograms stay small."""
    if us < 1024:
        return max(us, 0)
    shift = us.bit_length() - 10
    return (us >> shift) << shift


def _histogram_summary(hist: dict[int, int]) -> LatencySummary | None:
    """p50/p99/max in ms of a ``{latency_us: count}`` histogram."""
    total = sum(hist.values())
    if not total:
        return None
    keys = sorted(hist)
    targets = [max(1, math.ceil(q * total)) for q in (0.5, 0.99)]
    found: list[int] = []
    seen = 0
    for key in keys:
        seen += hist[key]
        while len(found) < len(targets) and seen >= targets[len(found)]:
            found.append(key)
    return LatencySummary(p50=found[0] / 1000, p99=found[1] / 1000, max=keys[-1] / 1000)


def make_payload(size: int, ts_ns: int | None = None) -> bytes:
    """One bench payload: the send time in ns as 19 digits, padded with ``x`` to ``size``."""
    stamp = b"%019d" % (time.time_ns() if ts_ns is None else ts_ns)
    return stamp + b"x" * (size - len(stamp))


# --------------------------------------------------------------------------------------------
# minimal HTTP/1.1 over asyncio protocols


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
        if "://" not in url:
            url = "http://" + url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BenchError(f"not an http(s) URL: {url}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        return cls(url.rstrip("/"), parts.hostname, port, tls, parts.path.rstrip("/"))

    @property
    def host_header(self) -> bytes:
        """The ``Host`` header value."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}".encode("ascii")

    def path(self, path: str) -> bytes:
        """An absolute request target below the base path."""
        return (self.base + path).encode("ascii")

    async def connect(self, factory: Callable[[], asyncio.Protocol], timeout: float) -> Any:
        """Open a TCP (or TLS) connection running the protocol ``factory`` builds."""
        loop = asyncio.get_running_loop()
        context = (
            ssl.create_default_context(cafile=os.environ.get("SPRAWL_CACERT") or None) if self.tls else None
        )
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(factory, self.host, self.port, ssl=context), timeout
            )
        except (TimeoutError, OSError) as exc:
            raise BenchError(f"{self.url}: cannot connect: {_describe_exc(exc)}") from exc
        return protocol


def _describe_exc(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timed out"
    return str(exc) or type(exc).__name__


@dataclass
class Response:
    """A parsed HTTP response; header names are lower case."""

    status: int
    headers: dict[str, str]
    body: bytes

    def error_text(self) -> str:
        """The server's ``code: message`` or the status and start of the body."""
        return _error_text(self.status, self.body)


def _error_text(status: int, body: bytes) -> str:
    try:
        err = msgspec.json.decode(body)["error"]
        return f"{err['code']}: {err['message']}"
    except (msgspec.DecodeError, KeyError, TypeError, IndexError):
        text = body.decode("utf-8", "replace").strip().splitlines()
        return f"HTTP {status}" + (f": {text[0][:200]}" if text else "")


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status code and lower-cased headers of a response head (without the blank line)."""
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split(None, 2)[1])
    except (IndexError, ValueError):
        raise BenchError(f"malformed HTTP status line: {lines[0][:80]!r}") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return status, headers


class _Dechunker:
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
                raise BenchError(f"malformed chunk size line {line[:40]!r}") from None
            if size == 0:
                self._trailer = True
            self._left = size
        self._raw = raw[pos:] if pos < end else b""
        return out[0] if len(out) == 1 else b"".join(out)


class _HttpConnection(asyncio.Protocol):
    """A keep-alive HTTP/1.1 client connection with one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = b""
        self._waiter: asyncio.Future[Response] | None = None
        self._status = 0
        self._headers: dict[str, str] = {}
        self._need = -1  # body bytes still expected; -1 = reading the head
        self._chunks: _Dechunker | None = None
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
                reason = _describe_exc(exc) if exc else "connection closed by the server"
                self._waiter.set_exception(BenchError(reason))

    def request(self, data: bytes) -> asyncio.Future[Response]:
        """Send one complete request; the future resolves to its response."""
        if self.closed or self.transport is None:
            raise BenchError("connection closed by the server")
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
            status, headers = _parse_head(head)
        except BenchError as exc:
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
            self._chunks = _Dechunker()
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


def auth_header() -> bytes:
    """``Authorization: Bearer`` from ``SPRAWL_TOKEN`` (set by ``sprawlctl --token``), or nothing."""
    token = os.environ.get("SPRAWL_TOKEN")
    return b"Authorization: Bearer %s\r\n" % token.encode("ascii", "replace") if token else b""


class HttpClient:
    """A lazily (re)connected keep-alive client for one :class:`Endpoint`."""

    def __init__(self, endpoint: Endpoint, timeout: float) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._conn: _HttpConnection | None = None
        self._auth = auth_header()

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
            conn = self._conn = await self.endpoint.connect(_HttpConnection, self.timeout)
        try:
            return await asyncio.wait_for(conn.request(data), self.timeout)
        except TimeoutError:
            self.close()
            raise BenchError(f"{self.endpoint.url}: no answer within {self.timeout:g} s") from None

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


# --------------------------------------------------------------------------------------------
# subscribers


class _SseReader(asyncio.Protocol):
    """Reads one SSE stream and counts bench payloads and their latencies."""

    def __init__(self, index: int, hist: Counter[int]) -> None:
        self.index = index
        self.hist = hist
        self.count = 0
        self.first_ns = 0
        self.last_ns = 0
        self.error: str | None = None
        self.transport: asyncio.Transport | None = None
        self.headers_seen = asyncio.get_running_loop().create_future()
        self.ready = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self._head = b""
        self._status = 0
        self._in_body = False
        self._chunks: _Dechunker | None = None
        self._tail = b""
        self._error_body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._status and self._status != 200:
            self.error = _error_text(self._status, self._error_body)
        elif self.error is None:
            self.error = _describe_exc(exc) if exc else "stream closed by the server"
        for fut in (self.headers_seen, self.ready):
            if not fut.done():
                fut.set_exception(BenchError(f"subscriber {self.index}: {self.error}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        if not self._in_body:
            data = self._head + data
            idx = data.find(b"\r\n\r\n")
            if idx < 0:
                self._head = data
                return
            self._status, headers = _parse_head(data[:idx])
            data = data[idx + 4 :]
            self._head = b""
            self._in_body = True
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._chunks = _Dechunker()
            if self._status == 200 and not self.headers_seen.done():
                self.headers_seen.set_result(None)
            if not data:
                return
        if self._status != 200:
            self._error_body += data
            return
        if self._chunks is not None:
            data = self._chunks.feed(data)
            if not data:
                return
        if not self.ready.done():
            self.ready.set_result(None)
        buf = self._tail + data if self._tail else data
        cut = buf.rfind(b"\n") + 1
        if cut == 0:
            self._tail = buf
            return
        if cut < len(buf):
            self._tail = buf[cut:]
            buf = buf[:cut]
        else:
            self._tail = b""
        stamps = _TS_RE.findall(buf)
        if not stamps:
            return
        now = time.time_ns()
        self.count += len(stamps)
        self.last_ns = now
        if not self.first_ns:
            self.first_ns = now
        hist = self.hist
        if len(stamps) == 1:
            hist[_quantize_us((now - int(stamps[0])) // 1000)] += 1
        else:
            for stamp, n in Counter(stamps).items():
                hist[_quantize_us((now - int(stamp)) // 1000)] += n

    def close(self) -> None:
        """Close the stream."""
        if self.transport is not None:
            self.transport.close()


@dataclass
class SubscriberSpec:
    """What a subscriber group needs (picklable, for the child process)."""

    urls: list[str]
    topic: str
    count: int
    expected: int
    timeout: float
    ready_timeout: float


@dataclass
class SubscriberReport:
    """What a subscriber group measured."""

    counts: list[int]
    first_ns: int
    last_ns: int
    hist: dict[int, int]
    errors: list[str]
    warnings: list[str]


class SubscriberGroup:
    """``count`` SSE subscribers of one topic from ``latest``, spread over the given nodes."""

    def __init__(self, spec: SubscriberSpec) -> None:
        self.spec = spec
        self.hist: Counter[int] = Counter()
        self.readers: list[_SseReader] = []
        self.warnings: list[str] = []

    async def open(self) -> None:
        """Open every stream and wait until each is positioned (its first bytes arrived)."""
        spec = self.spec
        endpoints = [Endpoint.parse(u) for u in spec.urls]
        path = f"/v1/topics/{quote(spec.topic, safe='')}/stream?from=latest"
        for i in range(spec.count):
            ep = endpoints[i % len(endpoints)]
            reader: _SseReader = await ep.connect(partial(_SseReader, i, self.hist), spec.timeout)
            self.readers.append(reader)
            assert reader.transport is not None
            reader.transport.write(
                b"GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n"
                b"Cache-Control: no-cache\r\n%s\r\n" % (ep.path(path), ep.host_header, auth_header())
            )
        try:
            await asyncio.wait_for(
                asyncio.gather(*(r.headers_seen for r in self.readers)), spec.ready_timeout
            )
        except TimeoutError:
            raise BenchError(f"subscriber streams did not open within {spec.ready_timeout:g} s") from None
        # The server should send a comment as soon as the stream is positioned at `latest`;
        # without one, waiting a moment is the best we can do.
        done, pending = await asyncio.wait(
            [r.ready for r in self.readers], timeout=min(2.0, spec.ready_timeout)
        )
        for fut in done:
            fut.result()
        if pending:
            self.warnings.append("server sent no initial SSE comment; streams assumed positioned after 2 s")

    def delivered(self) -> int:
        """Bench messages received so far by all subscribers."""
        return sum(r.count for r in self.readers)

    def finished(self) -> bool:
        """True when every subscriber has its messages or its stream is gone."""
        return all(r.count >= self.spec.expected or r.closed.done() for r in self.readers)

    def close(self) -> None:
        """Close every stream."""
        for reader in self.readers:
            reader.close()

    def report(self) -> SubscriberReport:
        """The counts, times and latency histogram so far."""
        firsts = [r.first_ns for r in self.readers if r.first_ns]
        errors = [
            f"subscriber {r.index}: {r.error}"
            for r in self.readers
            if r.error and r.count < self.spec.expected
        ]
        return SubscriberReport(
            counts=[r.count for r in self.readers],
            first_ns=min(firsts) if firsts else 0,
            last_ns=max((r.last_ns for r in self.readers), default=0),
            hist=dict(self.hist),
            errors=errors,
            warnings=list(self.warnings),
        )


def _subscriber_worker(conn: multiprocessing.connection.Connection, spec: SubscriberSpec) -> None:
    """Child-process entry point: run a :class:`SubscriberGroup`, talking over ``conn``.

    Sends ``("ready", warnings)`` or ``("error", text)``, then ``("progress", delivered)``
    every 100 ms, and ``("done", SubscriberReport)`` when finished or told ``"stop"``.
    """
    try:
        asyncio.run(_subscriber_main(conn, spec))
    except KeyboardInterrupt:
        pass
    finally:
        conn.close()


async def _subscriber_main(conn: multiprocessing.connection.Connection, spec: SubscriberSpec) -> None:
    group = SubscriberGroup(spec)
    try:
        await group.open()
    except BenchError as exc:
        group.close()
        conn.send(("error", str(exc)))
        return
    conn.send(("ready", group.warnings))
    try:
        while not group.finished():
            if conn.poll() and conn.recv() == "stop":
                break
            conn.send(("progress", group.delivered()))
            await asyncio.sleep(0.1)
    except (EOFError, OSError):
        pass  # the parent went away
    group.close()
    try:
        conn.send(("done", group.report()))
    except OSError:
        pass


class _ChildSubscribers:
    """A :class:`SubscriberGroup` running in a child process."""

    def __init__(self, spec: SubscriberSpec) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(
            target=_subscriber_worker,
            args=(child_conn, spec),
            name="sprawl-bench-subscribers",
            daemon=True,
        )
        self._proc.start()
        child_conn.close()
        self._delivered = 0
        self._report: SubscriberReport | None = None
        self.warnings: list[str] = []

    async def _recv(self, timeout: float) -> tuple[str, Any]:
        deadline = time.monotonic() + timeout
        while not self._conn.poll():
            if not self._proc.is_alive() and not self._conn.poll():
                raise BenchError("subscriber process exited unexpectedly")
            if time.monotonic() > deadline:
                raise BenchError("subscriber process did not answer")
            await asyncio.sleep(0.01)
        try:
            msg: tuple[str, Any] = self._conn.recv()
        except EOFError:
            raise BenchError("subscriber process exited unexpectedly") from None
        return msg

    async def open(self, timeout: float) -> None:
        """Wait until the child reports every stream open."""
        kind, value = await self._recv(timeout)
        if kind == "error":
            raise BenchError(value)
        self.warnings.extend(value)

    def delivered(self) -> int:
        """Messages delivered, as last reported by the child."""
        try:
            while self._conn.poll():
                kind, value = self._conn.recv()
                if kind == "progress":
                    self._delivered = value
                elif kind == "done":
                    self._report = value
                    self._delivered = sum(value.counts)
        except (EOFError, OSError):
            pass
        return self._delivered

    def finished(self) -> bool:
        """True once the child has sent its report."""
        self.delivered()
        return self._report is not None

    async def stop(self, timeout: float = 10.0) -> SubscriberReport:
        """Tell the child to stop, collect its report and reap it."""
        try:
            if self._report is None:
                try:
                    self._conn.send("stop")
                except OSError:
                    pass
                deadline = time.monotonic() + timeout
                while self._report is None:
                    if time.monotonic() > deadline:
                        raise BenchError("subscriber process did not report")
                    kind, value = await self._recv(max(0.0, deadline - time.monotonic()))
                    if kind == "done":
                        self._report = value
            return self._report
        finally:
            self.kill()

    def kill(self) -> None:
        """Make sure the child is gone: ask it to stop, then terminate it."""
        if self._proc.is_alive() and self._report is None:
            try:
                self._conn.send("stop")
            except OSError:
                pass
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=5)
        self._conn.close()


class _InlineSubscribers:
    """A :class:`SubscriberGroup` in this process, with the same interface as the child."""

    def __init__(self, spec: SubscriberSpec) -> None:
        self.group = SubscriberGroup(spec)
        self.warnings = self.group.warnings

    async def open(self, timeout: float) -> None:
        await self.group.open()

    def delivered(self) -> int:
        return self.group.delivered()

    def finished(self) -> bool:
        return self.group.finished()

    async def stop(self, timeout: float = 10.0) -> SubscriberReport:
        self.group.close()
        return self.group.report()

    def kill(self) -> None:
        self.group.close()


# --------------------------------------------------------------------------------------------
# publishers


class _PublishState:
    """Work shared by the publisher tasks."""

    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        self.remaining = config.messages
        self.published = 0
        self.requests = 0
        self.throttled = 0
        self.next_batch = 0
        self.latencies_us: list[int] = []
        self.start_mono = time.monotonic()

    def take(self) -> tuple[int, int]:
        """Claim the next batch: (index, size); size 0 when all work is claimed."""
        n = min(self.config.batch, self.remaining)
        self.remaining -= n
        index = self.next_batch
        self.next_batch += 1
        return index, n


async def _publisher(client: HttpClient, topic: str, state: _PublishState) -> None:
    config = state.config
    path = f"/v1/topics/{quote(topic, safe='')}/messages"
    pad = b"x" * (config.size - TS_DIGITS)
    head = b'{"acks":"%s","messages":[' % config.acks.encode()
    interval = config.batch / config.rate if config.rate > 0 else 0.0
    while True:
        index, n = state.take()
        if n == 0:
            return
        if interval:
            delay = state.start_mono + index * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        item = b'{"payload":"%019d%s"}' % (time.time_ns(), pad)
        request = client.build("POST", path, head + b",".join([item] * n) + b"]}")
        refusals = 0
        while True:
            t0 = time.perf_counter_ns()
            resp = await client.send(request)
            state.latencies_us.append((time.perf_counter_ns() - t0) // 1000)
            state.requests += 1
            if resp.status == 429:
                state.throttled += 1
                refusals += 1
                if refusals > MAX_THROTTLED_RETRIES:
                    raise BenchError(f"publish refused {refusals} times in a row: {resp.error_text()}")
                await asyncio.sleep(_retry_after(resp.headers.get("retry-after")))
                continue
            if resp.status != 200:
                raise BenchError(f"publish failed: {resp.error_text()}")
            break
        state.published += n


#: Consecutive 429 answers to one publish before the run fails (each waits Retry-After).
MAX_THROTTLED_RETRIES = 50


def _retry_after(value: str | None) -> float:
    """Seconds to wait from a ``Retry-After`` header (default 0.1 s, at most 30 s)."""
    try:
        seconds = float(value) if value else 0.1
    except ValueError:
        seconds = 1.0  # an HTTP date: be modest
    return min(max(seconds, 0.0), 30.0)


# --------------------------------------------------------------------------------------------
# the run


def _topic_shape(desc: Any) -> tuple[int | None, int | None]:
    """(partitions, replication factor) from a topic description of any reasonable shape.

    The replication factor is the replicas partition 0 really has when the
    description lists them (a topic asking for 3 on a one-node cluster has 1)."""
    if not isinstance(desc, dict):
        return None, None
    config: dict[str, Any] = desc["config"] if isinstance(desc.get("config"), dict) else {}
    parts = desc.get("partitions", config.get("partitions"))
    rf = desc.get("replication_factor", config.get("replication_factor"))
    details = desc.get("partition_details")
    if isinstance(details, list) and details and isinstance(details[0], dict):
        reps = details[0].get("replicas")
        if isinstance(reps, list) and reps:
            rf = len(reps)
    count: int | None = None
    first: Any = None
    if isinstance(parts, int):
        count = parts
    elif isinstance(parts, list):
        count, first = len(parts), parts[0] if parts else None
    elif isinstance(parts, dict):
        count, first = len(parts), next(iter(parts.values()), None)
    if rf is None and isinstance(first, dict) and isinstance(first.get("replicas"), list):
        rf = len(first["replicas"])
    return count, rf if isinstance(rf, int) else None


async def _live_endpoints(config: BenchConfig) -> list[Endpoint]:
    """The configured nodes that answer ``/healthz``."""
    endpoints = [Endpoint.parse(u) for u in config.urls]
    problems: list[str] = []

    async def probe(ep: Endpoint) -> bool:
        client = HttpClient(ep, min(config.timeout, 5.0))
        try:
            resp = await client.send(client.build("GET", "/healthz"))
            return resp.status == 200
        except BenchError as exc:
            problems.append(str(exc))
            return False
        finally:
            client.close()

    alive = await asyncio.gather(*(probe(ep) for ep in endpoints))
    live = [ep for ep, ok in zip(endpoints, alive, strict=True) if ok]
    if not live:
        raise BenchError("no node is reachable: " + "; ".join(problems or ["not healthy"]))
    return live


async def _run(config: BenchConfig, progress: ProgressCallback | None) -> BenchResult:
    config.validate()
    endpoints = await _live_endpoints(config)
    admin = HttpClient(endpoints[0], config.timeout)
    fresh = config.topic is None
    topic = config.topic or f"bench-{uuid.uuid4().hex[:12]}"
    body: dict[str, Any] = {"storage": config.storage}
    if config.partitions is not None:
        body["partitions"] = config.partitions
    if config.replication_factor is not None:
        body["replication_factor"] = config.replication_factor
    path = f"/v1/topics/{quote(topic, safe='')}"
    resp, _ = await admin.request("PUT", path, body)
    if resp.status not in (200, 201) and not (resp.status == 409 and not fresh):
        raise BenchError(f"cannot create topic {topic!r}: {resp.error_text()}")
    resp, desc = await admin.request("GET", path)
    if resp.status != 200:
        raise BenchError(f"cannot describe topic {topic!r}: {resp.error_text()}")
    partitions, rf = _topic_shape(desc)

    subs: _ChildSubscribers | _InlineSubscribers | None = None
    clients: list[HttpClient] = []
    try:
        if config.subscribers:
            sub_urls = [Endpoint.parse(u).url for u in config.subscriber_urls] or [ep.url for ep in endpoints]
            spec = SubscriberSpec(
                urls=sub_urls,
                topic=topic,
                count=config.subscribers,
                expected=config.messages,
                timeout=config.timeout,
                ready_timeout=config.ready_timeout,
            )
            subs = _ChildSubscribers(spec) if config.subscriber_process else _InlineSubscribers(spec)
            await subs.open(config.ready_timeout + 30.0)

        state = _PublishState(config)
        clients = [
            HttpClient(endpoints[i % len(endpoints)], config.timeout) for i in range(config.publishers)
        ]
        delivery_target = config.messages * config.subscribers

        def report_progress() -> None:
            if progress is not None:
                delivered = subs.delivered() if subs is not None else 0
                progress(state.published, config.messages, delivered, delivery_target)

        start_ns = time.time_ns()
        state.start_mono = time.monotonic()
        tasks = [asyncio.ensure_future(_publisher(c, topic, state)) for c in clients]
        publishing = asyncio.gather(*tasks)
        try:
            while not publishing.done():
                await asyncio.wait([publishing], timeout=0.2)
                report_progress()
            publishing.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if publishing.done() and not publishing.cancelled():
                publishing.exception()  # retrieved: no "never retrieved" warning
        publish_ns = time.time_ns() - start_ns

        report: SubscriberReport | None = None
        warnings: list[str] = []
        if subs is not None:
            last_delivered, idle_since = -1, time.monotonic()
            while not subs.finished():
                delivered = subs.delivered()
                if delivered >= delivery_target:
                    break
                if delivered != last_delivered:
                    last_delivered, idle_since = delivered, time.monotonic()
                elif time.monotonic() - idle_since > config.drain_timeout:
                    warnings.append(f"no delivery for {config.drain_timeout:g} s; stopped waiting")
                    break
                report_progress()
                await asyncio.sleep(0.05)
            report = await subs.stop()
            subs = None
            report_progress()
            warnings = report.warnings + report.errors + warnings
    finally:
        for client in clients:
            client.close()
        if subs is not None:
            subs.kill()
        if fresh and not config.keep_topic:
            try:
                await admin.request("DELETE", path)
            except BenchError:
                pass
        admin.close()

    publish_s = publish_ns / 1e9
    if config.rate and publish_s and state.published / publish_s < 0.9 * config.rate:
        warnings.append(
            f"publishing reached only {state.published / publish_s:,.0f} of --rate "
            f"{config.rate:g} msgs/s: the node is slower, or there are too few --publishers "
            "for its request latency"
        )
    pub_lat = sorted(state.latencies_us)
    delivered = sum(report.counts) if report else 0
    deliver_s = (report.last_ns - start_ns) / 1e9 if report and report.last_ns else 0.0
    payload_mb = config.size / 1e6
    return BenchResult(
        topic=topic,
        messages=config.messages,
        size=config.size,
        batch=config.batch,
        publishers=config.publishers,
        subscribers=config.subscribers,
        acks=config.acks,
        rate=config.rate,
        storage=config.storage,
        partitions=partitions,
        replication_factor=rf,
        published=state.published,
        publish_seconds=publish_s,
        publish_msgs_per_s=state.published / publish_s if publish_s else 0.0,
        publish_mb_per_s=state.published * payload_mb / publish_s if publish_s else 0.0,
        publish_requests=state.requests,
        publish_latency_ms=LatencySummary(
            p50=percentile(pub_lat, 0.5) / 1000,
            p99=percentile(pub_lat, 0.99) / 1000,
            max=percentile(pub_lat, 1.0) / 1000,
        )
        if pub_lat
        else None,
        throttled=state.throttled,
        delivered=delivered,
        delivery_target=config.messages * config.subscribers,
        delivery_seconds=deliver_s,
        delivered_msgs_per_s=delivered / deliver_s if deliver_s > 0 else 0.0,
        delivered_mb_per_s=delivered * payload_mb / deliver_s if deliver_s > 0 else 0.0,
        e2e_latency_ms=_histogram_summary(report.hist) if report else None,
        per_subscriber=report.counts if report else [],
        warnings=warnings,
    )


def run_bench(config: BenchConfig, progress: ProgressCallback | None = None) -> BenchResult:
    """Run one benchmark to completion (blocking) and return what it measured.

    ``progress(published, publish_target, delivered, delivery_target)`` is called about five
    times a second. Raises :class:`BenchError` when the run cannot start or a publish fails.
    """
    return asyncio.run(_run(config, progress))
