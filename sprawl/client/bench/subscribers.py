"""The bench's subscribers: SSE streams of one topic from ``latest`` that count bench payloads
and their end-to-end latency, in this process or (default) a child process
(:mod:`multiprocessing`, spawn) so that parsing the fan-out does not delay the publishers and
their timestamps.

The reader never decodes the message JSON: one precompiled regular expression pulls every send
timestamp out of a received block at C speed (which is why it does not use
:mod:`sprawl.client.sse`)."""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import quote

from sprawl.client.aio import Dechunker, Endpoint, auth_header, parse_head
from sprawl.client.bench.offsets import OffsetTrack, PartitionDeliveries
from sprawl.client.bench.results import BenchError, quantize_us
from sprawl.client.errors import ClientError, error_text, failure_reason

#: Finds the send timestamp of every bench message in a block of SSE text.
_TS_RE = re.compile(rb'"payload": ?"(\d{19})')


class _SseReader(asyncio.Protocol):
    """Reads one SSE stream and counts bench payloads and their latencies, and notes each
    message's offset (:class:`~sprawl.client.bench.offsets.OffsetTrack`: duplicates, gaps)."""

    def __init__(self, index: int, hist: Counter[int]) -> None:
        self.index = index
        self.hist = hist
        self.offsets = OffsetTrack()
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
        self._chunks: Dechunker | None = None
        self._tail = b""
        self._error_body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._status and self._status != 200:
            self.error = error_text(self._status, self._error_body)
        elif self.error is None:
            self.error = failure_reason(exc) if exc else "stream closed by the server"
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
            self._status, headers = parse_head(data[:idx])
            data = data[idx + 4 :]
            self._head = b""
            self._in_body = True
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._chunks = Dechunker()
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
        self.offsets.feed(buf, now)
        self.count += len(stamps)
        self.last_ns = now
        if not self.first_ns:
            self.first_ns = now
        hist = self.hist
        if len(stamps) == 1:
            hist[quantize_us((now - int(stamps[0])) // 1000)] += 1
        else:
            for stamp, n in Counter(stamps).items():
                hist[quantize_us((now - int(stamp)) // 1000)] += n

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
    token: str | None = None
    cacert: str | None = None
    #: The stream format (``sse``, or ``batch``: one event per batch of messages).
    format: str = "sse"


@dataclass
class SubscriberReport:
    """What a subscriber group measured."""

    counts: list[int]
    first_ns: int
    last_ns: int
    hist: dict[int, int]
    errors: list[str]
    warnings: list[str]
    #: Per subscriber, what it delivered per partition (offsets, duplicates, gaps).
    deliveries: list[list[PartitionDeliveries]] = field(default_factory=list)
    #: Per subscriber, its slowest deliveries (:meth:`OffsetTrack.slowest_first`).
    slowest: list[list[tuple[float, int, int, float]]] = field(default_factory=list)


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
        if spec.format != "sse":
            path += f"&format={spec.format}"
        for i in range(spec.count):
            ep = endpoints[i % len(endpoints)]
            reader: _SseReader = await ep.connect(
                partial(_SseReader, i, self.hist), spec.timeout, spec.cacert
            )
            self.readers.append(reader)
            assert reader.transport is not None
            reader.transport.write(
                b"GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n"
                b"Cache-Control: no-cache\r\n%s\r\n"
                % (ep.path(path), ep.host_header, auth_header(spec.token))
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
            deliveries=[r.offsets.report() for r in self.readers],
            slowest=[r.offsets.slowest_first() for r in self.readers],
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
    except ClientError as exc:
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


class ChildSubscribers:
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


class InlineSubscribers:
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
