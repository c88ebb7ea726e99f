"""Load for the memory tests and the soak: fast publishers (many messages per
request, several keep-alive connections, over many topics), SSE subscribers
that read and drop what they get, and the process's ``RssAnon`` sampled
meanwhile from ``/proc/PID/status``.

Everything is bounded: the publishers stop at their count or their deadline,
a 429/503 answer is retried after a short pause (at most ``MAX_RETRIES``
times in a row), the subscriber thread stops when told or at its deadline.
"""

from __future__ import annotations

import asyncio
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from sprawl.client.aio import Endpoint, HttpClient

MAX_RETRIES = 200


def rss_anon(pid: int) -> int:
    """RssAnon of a process in bytes (the anonymous resident memory: LMDB's file pages are not in it)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no RssAnon in /proc/{pid}/status")


@dataclass
class RssSampler:
    """Samples a process's RssAnon every ``interval`` real seconds in a thread, with labels."""

    pid: int
    interval: float = 0.25
    samples: list[tuple[float, str, int]] = field(default_factory=list)
    phase: str = "idle"
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> int:
        """One sample now, recorded under the current phase."""
        v = rss_anon(self.pid)
        self.samples.append((time.monotonic(), self.phase, v))
        return v

    def start(self) -> RssSampler:
        def run() -> None:
            while not self._stop.wait(self.interval):
                try:
                    self.sample()
                except (OSError, AssertionError):
                    return  # the process is gone

        self._thread = threading.Thread(target=run, daemon=True, name="rss-sampler")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def peak(self, phase: str | None = None) -> int:
        """The highest sample (of ``phase``, or of all)."""
        return max(v for _, p, v in self.samples if phase is None or p == phase)


def _body(size: int, batch: int) -> bytes:
    return msgspec.json.encode({"messages": [{"payload": "x" * size}] * batch, "acks": "leader"})


async def _publish(
    url: str, topics: list[str], count: int, size: int, batch: int, connections: int, deadline: float
) -> int:
    ep = Endpoint.parse(url)
    body = _body(size, batch)
    per_topic = {t: HttpClient(ep, 60).build("POST", f"/v1/topics/{t}/messages", body) for t in topics}
    left = [count // batch]
    done = [0]

    async def worker(k: int) -> None:
        client = HttpClient(ep, 60)
        i = k
        try:
            while left[0] > 0:
                left[0] -= 1
                req = per_topic[topics[i % len(topics)]]
                i += connections
                for _ in range(MAX_RETRIES):
                    if time.monotonic() > deadline:
                        raise AssertionError(f"publishing did not finish in time ({done[0]} messages)")
                    resp = await client.send(req)
                    if resp.status == 200:
                        break
                    if resp.status not in (429, 503):
                        raise AssertionError(f"publish answered {resp.status}: {resp.body[:300]!r}")
                    await asyncio.sleep(0.05)  # backpressure: the node asks us to wait
                else:
                    raise AssertionError("publish refused too many times in a row")
                done[0] += batch
        finally:
            client.close()

    await asyncio.gather(*(worker(k) for k in range(connections)))
    return done[0]


def publish(
    url: str,
    topics: list[str],
    count: int,
    size: int,
    *,
    batch: int = 500,
    connections: int = 8,
    timeout: float = 900,
) -> int:
    """Publish ``count`` messages of ``size`` bytes round-robin over ``topics``
    (``batch`` per request, ``connections`` keep-alive connections; acks=leader);
    returns how many were acknowledged."""
    return asyncio.run(_publish(url, topics, count, size, batch, connections, time.monotonic() + timeout))


class Subscribers:
    """``n`` SSE streams (``from=latest``) over ``topics``, read in one thread and dropped."""

    def __init__(self, port: int, topics: list[str], n: int, deadline_s: float = 3600):
        self.port = port
        self.paths = [f"/v1/topics/{topics[i % len(topics)]}/stream?from=latest" for i in range(n)]
        self.received = 0
        self.deadline = time.monotonic() + deadline_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._socks: list[socket.socket] = []

    def start(self) -> Subscribers:
        sel = selectors.DefaultSelector()
        for path in self.paths:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(4096)
                assert chunk, "stream closed before its head"
                head += chunk
            assert head.startswith(b"HTTP/1.1 200"), head[:200]
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            self._socks.append(s)

        def run() -> None:
            while not self._stop.is_set() and time.monotonic() < self.deadline:
                for key, _ in sel.select(0.2):
                    try:
                        data = key.fileobj.recv(1 << 18)  # type: ignore[union-attr]
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(key.fileobj)
                        continue
                    self.received += len(data)
            sel.close()

        self._thread = threading.Thread(target=run, daemon=True, name="sse-subscribers")
        self._thread.start()
        return self

    @property
    def open_streams(self) -> int:
        return sum(1 for s in self._socks if s.fileno() != -1)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for s in self._socks:
            s.close()


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``cond`` until true (the harness's bounded, load-scaled :func:`poll_until`);
    AssertionError naming ``what`` when it never held."""
    from harness.waits import poll_until

    if poll_until(cond, timeout) is None:
        raise AssertionError(f"timed out waiting for {what}")
