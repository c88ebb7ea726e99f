#!/usr/bin/env python3
"""WebSocket next to SSE, end to end, with and without TLS.

    PYTHONPATH=. python -m benchmarks.edge --messages 100000 --repeat 3

Starts two real nodes on loopback (plain HTTP, and HTTPS with a throw-away CA
from ``harness.make_test_pki``), then for each of SSE/WebSocket x
http/https:

* **saturation**: ``--publishers`` keep-alive connections publish
  ``--messages`` 100-byte messages in batches of ``--batch`` (``acks=leader``)
  while one subscriber (SSE, or autobahn's WebSocket client) reads the topic
  from ``latest``; reports delivered msgs/s (first publish → last delivery)
  and end-to-end latency p50/p99 (each payload carries its send time);
* **steady rate**: ``--rate`` single-message publishes per second for
  ``--seconds``; reports end-to-end p50/p99.

The client runs in one Twisted process (treq publishers + the subscriber), so
it competes with the node for the 2 cores: figures compare transports, they
are not the node's ceiling (see docs/benchmarks.md for that).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, task
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IAgent

from harness import NodeProcess, make_test_pki
from sprawl.tlsconfig import client_options

NAMES = {"sse": "SSE", "ws-raw": "WebSocket (byte-scanning reader)", "ws": "WebSocket (autobahn client)"}


def pct(xs: list[float], q: float) -> float:
    """The q-quantile of a sorted list."""
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


class Sink:
    """Counts delivered messages and their end-to-end latency (ms)."""

    def __init__(self, want: int):
        self.want = want
        self.got = 0
        self.lat: list[float] = []
        self.last = 0.0
        self.done: defer.Deferred[None] = defer.Deferred()
        self.ready: defer.Deferred[None] = defer.Deferred()

    def payload(self, stamp: bytes) -> None:
        now = time.time_ns()
        self.lat.append((now - int(stamp)) / 1e6)
        self.got += 1
        self.last = time.perf_counter()
        if self.got >= self.want and not self.done.called:
            self.done.callback(None)


MARK = b'"payload":"'


def stamps(data: bytes) -> list[bytes]:
    out = []
    i = data.find(MARK)
    while i >= 0:
        j = i + len(MARK)
        out.append(data[j : j + 19])
        i = data.find(MARK, j)
    return out


class SSEReader(Protocol):
    transport: Any

    def __init__(self, sink: Sink, path: str):
        self.sink, self.path, self.buf, self.head = sink, path, b"", False

    def connectionMade(self) -> None:
        self.transport.write(f"GET {self.path} HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n".encode())

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        if not self.head:
            if b": sprawl stream" not in self.buf:
                return
            self.head = True
            self.sink.ready.callback(None)
        cut = self.buf.rfind(b"\n\n")
        if cut < 0:
            return
        block, self.buf = self.buf[: cut + 2], self.buf[cut + 2 :]
        for s in stamps(block):
            self.sink.payload(s)


class RawWSReader(Protocol):
    """A WebSocket subscriber that scans the raw bytes for payload stamps, like
    :class:`SSEReader` (server frames are unmasked), so that per-frame parsing in
    the Python client does not dominate the figure."""

    transport: Any

    def __init__(self, sink: Sink, path: str):
        self.sink, self.path, self.buf, self.head = sink, path, b"", False

    def connectionMade(self) -> None:
        self.transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        if not self.head:
            if b"\r\n\r\n" not in self.buf:
                return
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 101"), head
            self.head = True
            self.sink.ready.callback(None)
        cut = self.buf.rfind(b"}")
        if cut < 0:
            return
        block, self.buf = self.buf[: cut + 1], self.buf[cut + 1 :]
        for s in stamps(block):
            self.sink.payload(s)


class WSReader(WebSocketClientProtocol):
    sink: Sink

    def onOpen(self) -> None:
        self.sink.ready.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        i = payload.find(MARK)
        if i >= 0:
            j = i + len(MARK)
            self.sink.payload(payload[j : j + 19])


async def subscribe(
    reactor: Any, kind: str, port: int, topic: str, sink: Sink, pki: dict[str, str] | None
) -> Any:
    path = f"/v1/topics/{topic}/{'stream' if kind == 'sse' else 'ws'}?from=latest"
    if pki is None:
        ep: Any = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    else:
        ep = SSL4ClientEndpoint(reactor, "127.0.0.1", port, client_options("127.0.0.1", pki["ca"]))
    if kind == "sse":
        proto = await ep.connect(Factory.forProtocol(lambda: SSEReader(sink, path)))
    elif kind == "ws-raw":
        proto = await ep.connect(Factory.forProtocol(lambda: RawWSReader(sink, path)))
    else:
        f = WebSocketClientFactory(f"{'wss' if pki else 'ws'}://127.0.0.1:{port}{path}")

        def build() -> WSReader:
            p = WSReader()
            p.sink = sink
            p.factory = f
            return p

        f.protocol = build  # type: ignore[assignment]
        f.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)
        proto = await ep.connect(f)
    await sink.ready
    return proto


def http_client(reactor: Any, pki: dict[str, str] | None, conns: int) -> Any:
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = conns
    if pki is None:
        return treq.client.HTTPClient(cast(IAgent, Agent(reactor, pool=pool))), pool
    trust = trustRootFromCertificates([Certificate.loadPEM(Path(pki["ca"]).read_bytes())])
    agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trust), pool=pool)
    return treq.client.HTTPClient(cast(IAgent, agent)), pool


async def one_run(
    reactor: Any, a: Any, kind: str, port: int, pki: dict[str, str] | None, mode: str
) -> dict[str, Any]:
    scheme = "https" if pki else "http"
    base = f"{scheme}://127.0.0.1:{port}"
    client, pool = http_client(reactor, pki, a.publishers)
    topic = f"edge-{kind}-{scheme}-{mode}-{time.time_ns()}"
    r = await client.put(f"{base}/v1/topics/{topic}", json={})
    await r.content()
    n = a.messages if mode == "saturation" else int(a.rate * a.seconds)
    sink = Sink(n)
    proto = await subscribe(reactor, kind, port, topic, sink, pki)
    pad = "x" * 81
    url = f"{base}/v1/topics/{topic}/messages"
    t0 = time.perf_counter()
    if mode == "saturation":
        batches = n // a.batch
        left = [batches]

        async def publisher() -> None:
            while left[0] > 0:
                left[0] -= 1
                stamp = f"{time.time_ns():019d}"
                body = (
                    '{"acks":"leader","messages":['
                    + ",".join([f'{{"payload":"{stamp}{pad}"}}'] * a.batch)
                    + "]}"
                )
                r = await client.post(
                    url, data=body.encode(), headers={b"content-type": [b"application/json"]}
                )
                await r.content()

        await defer.gatherResults([defer.ensureDeferred(publisher()) for _ in range(a.publishers)])
    else:
        sent = [0]

        def tick() -> None:
            if sent[0] >= n:
                loop.stop()
                return
            sent[0] += 1
            body = f'{{"acks":"leader","messages":[{{"payload":"{time.time_ns():019d}{pad}"}}]}}'
            d = client.post(url, data=body.encode(), headers={b"content-type": [b"application/json"]})
            d.addCallback(lambda r: r.content())

        loop = task.LoopingCall(tick)
        await loop.start(1.0 / a.rate)
    await sink.done.addTimeout(120, reactor)
    elapsed = sink.last - t0
    proto.transport.loseConnection()
    await pool.closeCachedConnections()
    lat = sorted(sink.lat)
    return {"rate": n / elapsed, "p50": pct(lat, 0.5), "p99": pct(lat, 0.99)}


async def run(reactor: Any, a: Any, plain: NodeProcess, tls: NodeProcess, pki: dict[str, str]) -> None:
    rows = []
    for mode in ("saturation", "steady"):
        for scheme in ("http", "https"):
            for kind in ("sse", "ws-raw", "ws"):
                node, p = (plain, None) if scheme == "http" else (tls, pki)
                runs = [await one_run(reactor, a, kind, node.http_port, p, mode) for _ in range(a.repeat)]
                rates = [r["rate"] for r in runs]
                rows.append(
                    (
                        mode,
                        f"{NAMES[kind]} over {scheme}",
                        statistics.median(rates),
                        min(rates),
                        max(rates),
                        statistics.median(r["p50"] for r in runs),
                        statistics.median(r["p99"] for r in runs),
                    )
                )
                print(rows[-1], flush=True)
    print()
    print("| run | transport | msgs/s (median) | range | e2e p50 / p99 (ms) |")
    print("|---|---|---|---|---|")
    for mode, name, med, lo, hi, p50, p99 in rows:
        what = (
            f"saturation, batches of {a.batch}, {a.publishers} publishers"
            if mode == "saturation"
            else f"steady {a.rate:g} msg/s, batches of 1"
        )
        print(f"| {what} | {name} | {med:,.0f} | {lo:,.0f}-{hi:,.0f} | {p50:.1f} / {p99:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--publishers", type=int, default=8)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sprawl-edge-bench-") as tmp:
        pki = make_test_pki(Path(tmp) / "pki")
        plain = NodeProcess(Path(tmp) / "plain").start()
        tls = None
        try:
            tls = NodeProcess(
                Path(tmp) / "tls", "--tls-cert", pki["server_cert"], "--tls-key", pki["server_key"]
            ).start()
            task.react(lambda reactor: defer.ensureDeferred(run(reactor, a, plain, tls, pki)))
        finally:
            plain.stop()
            if tls is not None:
                tls.stop()


if __name__ == "__main__":
    main()
