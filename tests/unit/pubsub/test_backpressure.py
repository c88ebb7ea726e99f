"""Backpressure: the per-partition unflushed backlog (429 ``backpressure`` +
``Retry-After``), the memory budget between ticks, and clients that honour
``Retry-After``.

Broker tests hold LMDB commits on the writer thread (``WriterGate``) so the
backlog is built deterministically; the HTTP test uses the real API over
loopback; the sprawlctl test uses a tiny loopback HTTP server that answers
429 first.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from test_broker import Node, WriterGate, msg, nodes, read_all, topic  # noqa: F401  (fixture)

from harness import bounded
from harness.inproc_sse import Server
from sprawl.client.blocking import MAX_429_RETRIES, Client
from sprawl.errors import Overloaded


@pytest_twisted.ensureDeferred
async def test_partition_backlog_refuses_with_backpressure_and_loses_no_acked_message(
    nodes: Callable[..., Node],  # noqa: F811
) -> None:
    """While a partition's unflushed bytes exceed the limit, publishes to it get
    Overloaded(code=backpressure) and change nothing; another partition is not
    affected; once storage catches up publishes pass again, and every acked
    message reads back."""
    n = nodes(partition_backlog=64_000)
    t = await topic(n, "bp", partitions=2)
    gate = WriterGate(n.store)
    acked: list[Any] = []
    first = n.broker.publish(t, [msg("x" * 1000, key="a") for _ in range(50)], "quorum")
    first.addCallback(acked.append)
    try:
        await bounded(gate.entered.get())  # the first commit is held on the writer thread
        p = first_partition = t.partition_for("a")
        assert n.broker.backlog[(t.config.uid, p)] < 64_000
        more = n.broker.publish(t, [msg("y" * 1000, key="a") for _ in range(20)], "quorum")
        more.addCallback(acked.append)
        assert n.broker.backlog[(t.config.uid, p)] > 64_000
        end_before = t.logs[p].next_offset
        with pytest.raises(Overloaded) as e:
            n.broker.publish(t, [msg("z", key="a")], "quorum")
        assert e.value.code == "backpressure" and e.value.status == 429 and e.value.retry_after >= 1
        assert t.logs[p].next_offset == end_before, "a refused publish appended something"
        other_key = next(k for k in (str(i) for i in range(100)) if t.partition_for(k) != first_partition)
        other = n.broker.publish(t, [msg("other", key=other_key)], "quorum")
        other.addCallback(acked.append)
    finally:
        gate.open()
    await bounded(first)
    await bounded(more)
    await bounded(other)
    assert n.broker.backlog == {}, "the backlog was not released after the commits"
    res = await bounded(n.broker.publish(t, [msg("after", key="a")], "quorum"))
    acked.append(res)
    stored = {(r.partition, r.offset): r.payload for pp in range(2) for r in await read_all(n, t, pp)}
    for a in acked:
        for part, off in zip(a.partitions, a.offsets, strict=True):
            assert (part, off) in stored
    assert len(stored) == 50 + 20 + 1 + 1


@pytest_twisted.ensureDeferred
async def test_memory_budget_evicts_during_a_burst_not_only_on_ticks(
    nodes: Callable[..., Node],  # noqa: F811
) -> None:
    """A burst of durable publishes bigger than --memory-budget keeps the hot tail
    near the budget without any tick running (the clock never advances)."""
    budget = 1_000_000
    n = nodes(memory_budget=budget)
    t = await topic(n, "burst")
    for _ in range(40):
        await bounded(n.broker.publish(t, [msg("m" * 1000) for _ in range(100)], "quorum"))
    hot = sum(lg.hot_bytes for lg in t.logs)
    assert hot <= budget * 1.25, hot
    assert len(await read_all(n, t)) == 4000


@pytest_twisted.ensureDeferred
async def test_http_answers_429_backpressure_with_retry_after(tmp_path: Path) -> None:
    """Over HTTP the refusal is 429 with Retry-After and the error body code ``backpressure``."""
    s = Server(tmp_path)
    s.broker.partition_backlog = 64_000
    await s.listen()
    try:
        await s.publish("h", ["warm"])
        t = s.broker.topics["h"]
        s.broker.backlog[(t.config.uid, 0)] = 10**6  # as if a commit were stuck
        import treq

        r = await bounded(
            treq.post(f"{s.url}/v1/topics/h/messages", json={"messages": [{"payload": "x"}]}, pool=s.pool)
        )
        body = json.loads(await bounded(r.content()))
        assert r.code == 429
        assert r.headers.getRawHeaders("retry-after") == ["1"]
        assert body["error"]["code"] == "backpressure"
        assert t.logs[0].next_offset == 1
        s.broker.backlog.clear()
        await s.publish("h", ["ok"])
    finally:
        await s.close()


class _Throttling(http.server.BaseHTTPRequestHandler):
    """Answers 429 (Retry-After: 0) to the first ``refusals`` POSTs, then 200."""

    refusals = 2
    seen: list[float] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        type(self).seen.append(time.monotonic())
        if len(self.seen) <= self.refusals:
            body = b'{"error":{"code":"backpressure","message":"slow down"}}'
            self.send_response(429)
            self.send_header("Retry-After", "0")
        else:
            body = b'{"offsets":[7],"ids":["i"],"partitions":[0]}'
            self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def throttling_server() -> Iterator[Callable[[int], str]]:
    """A loopback HTTP server answering 429 a given number of times; shut down afterwards."""
    servers: list[http.server.HTTPServer] = []
    threads: list[threading.Thread] = []

    def start(refusals: int) -> str:
        handler = type("H", (_Throttling,), {"refusals": refusals, "seen": []})
        srv = http.server.HTTPServer(("127.0.0.1", 0), handler)
        th = threading.Thread(target=srv.serve_forever, daemon=True)
        th.start()
        servers.append(srv)
        threads.append(th)
        return f"http://127.0.0.1:{srv.server_address[1]}"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()
    for th in threads:
        th.join(10)


def test_sprawlctl_retries_after_429_then_succeeds(throttling_server: Callable[[int], str]) -> None:
    """sprawlctl's client waits Retry-After and sends again (nothing was written on a 429)."""
    url = throttling_server(2)
    reply = Client([url], timeout=5).request(
        "POST", "/v1/topics/t/messages", {"messages": [{"payload": "x"}]}
    )
    assert reply.status == 200


def test_sprawlctl_gives_up_after_bounded_retries(throttling_server: Callable[[int], str]) -> None:
    """A node that keeps answering 429 is reported after a bounded number of attempts."""
    url = throttling_server(1000)
    reply = Client([url], timeout=5).request(
        "POST", "/v1/topics/t/messages", {"messages": [{"payload": "x"}]}
    )
    assert reply.status == 429
    assert reply.url == url and MAX_429_RETRIES < 1000
