"""The benchmark engine: its parsers in isolation, and short runs against a real node."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from sprawl.client import aio
from sprawl.client.bench import BenchConfig, BenchError, make_payload, percentile, results, run_bench
from sprawl.client.bench import run as run_module
from sprawl.client.bench.subscribers import _SseReader
from sprawl.client.errors import ClientError, retry_after_seconds
from sprawl.client.topics import TopicDescription
from sprawl.ctl import cli

# --------------------------------------------------------------------------------------------
# pure pieces


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def test_dechunker_handles_every_split_point() -> None:
    body = [b"hello ", b"chunked", b" world" * 20]
    wire = chunked(*body)
    for cut in range(len(wire) + 1):
        d = aio.Dechunker()
        got = d.feed(wire[:cut]) + d.feed(wire[cut:])
        assert got == b"".join(body), cut
        assert d.done


def test_dechunker_byte_at_a_time_with_extension_and_trailer() -> None:
    wire = b"5;ext=1\r\nabcde\r\n3\r\nfgh\r\n0\r\nX-Trailer: 1\r\n\r\n"
    d = aio.Dechunker()
    out = b"".join(d.feed(wire[i : i + 1]) for i in range(len(wire)))
    assert out == b"abcdefgh" and d.done


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True


def test_http_connection_parses_responses_split_anywhere() -> None:
    responses = [
        b'HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: application/json\r\n\r\n{"offsets":1}',
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0.5\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunked(b'{"error":', b'{"code":"overloaded","message":"slow down"}}'),
        b"HTTP/1.1 204 No Content\r\n\r\n",
    ]

    async def scenario(cut: int) -> list[aio.Response]:
        conn = aio.HttpConnection()
        conn.connection_made(FakeTransport())
        got = []
        for wire in responses:
            fut = conn.request(b"GET / HTTP/1.1\r\n\r\n")
            conn.data_received(wire[:cut])
            conn.data_received(wire[cut:])
            got.append(await fut)
        return got

    for cut in range(0, 120):
        ok, throttled, empty = asyncio.run(scenario(cut))
        assert (ok.status, ok.body) == (200, b'{"offsets":1}')
        assert throttled.status == 429 and throttled.headers["retry-after"] == "0.5"
        assert throttled.error_text() == "overloaded: slow down"
        assert (empty.status, empty.body) == (204, b"")


def sse_wire(stamps: list[int], size: int = 40) -> bytes:
    events = []
    for i, ts in enumerate(stamps):
        payload = make_payload(size, ts).decode()
        msg = json.dumps(
            {"offset": i, "partition": 0, "id": None, "timestamp": ts // 10**6, "payload": payload},
            separators=(",", ":"),
        )
        events.append(b"id: 0:%d\ndata: %s\n\n" % (i, msg.encode()))
    return b"".join(events)


def test_sse_reader_counts_messages_and_latency_across_splits() -> None:
    now = time.time_ns()
    stamps = [now - 5_000_000] * 3 + [now - 1_000_000] * 2  # 5 ms and 1 ms old
    body = b": sprawl stream\n\n" + sse_wire(stamps)
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    wire = head + chunked(body[:50], body[50:])

    async def scenario(cut: int) -> tuple[int, Counter[int]]:
        hist: Counter[int] = Counter()
        reader = _SseReader(0, hist)
        reader.connection_made(FakeTransport())
        reader.data_received(wire[:cut])
        reader.data_received(wire[cut:])
        assert reader.headers_seen.done() and reader.ready.done()
        return reader.count, hist

    for cut in range(1, len(wire), 7):
        count, hist = asyncio.run(scenario(cut))
        assert count == 5
        assert sum(hist.values()) == 5
        assert all(900 <= us < 60_000_000 for us in hist)


def test_sse_reader_records_each_offset_and_finds_duplicates_and_gaps() -> None:
    """The reader notes every delivered (partition, offset) wherever the wire is split: a
    repeated offset is a duplicate, a jump a gap (listed as ``[lo, hi)``)."""
    now = time.time_ns()
    events = sse_wire([now] * 6)  # offsets 0-5 on partition 0
    again = sse_wire([now] * 3)  # offsets 0-2 again: duplicates
    later = b"".join(
        b'id: 0:%d\ndata: {"offset":%d,"partition":0,"timestamp":1,"payload":"%s"}\n\n'
        % (o, o, make_payload(20, now))
        for o in (9, 10)
    )  # 6-8 skipped
    other = b'id: 1:%d\ndata: {"offset":%d,"partition":1,"timestamp":1,"payload":"%s"}\n\n' % (
        7,
        7,
        make_payload(20, now),
    )
    body = b": sprawl stream\n\n" + events + again + later + other
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    wire = head + chunked(body[:70], body[70:])

    async def scenario(cut: int) -> list[Any]:
        reader = _SseReader(0, Counter())
        reader.connection_made(FakeTransport())
        reader.data_received(wire[:cut])
        reader.data_received(wire[cut:])
        return reader.offsets.report()

    for cut in range(1, len(wire), 5):
        p0, p1 = asyncio.run(scenario(cut))
        assert (p0.partition, p0.first, p0.last, p0.count) == (0, 0, 10, 11)
        assert (p0.duplicates, p0.duplicate_offsets) == (3, [0, 1, 2])
        assert (p0.skipped, p0.gaps) == (3, [(6, 9)])
        assert (p1.partition, p1.first, p1.last, p1.count, p1.duplicates, p1.skipped) == (1, 7, 7, 1, 0, 0)


def test_a_duplicate_or_a_skipped_message_is_a_breach() -> None:
    """A result whose streams delivered an offset twice or skipped a message says so in one
    line (``sprawlctl bench`` and ``benchmarks.quorum_latency`` exit non-zero on it); gaps of
    control records alone are none."""
    from sprawl.client.bench.offsets import OffsetTrack

    def result(offsets: list[int], skipped: int) -> results.BenchResult:
        track = OffsetTrack()
        for o in offsets:
            track.add(0, o)
        zero: dict[str, Any] = dict.fromkeys(
            (
                "messages size batch publishers subscribers published publish_seconds "
                "publish_msgs_per_s publish_mb_per_s publish_requests throttled delivered "
                "delivery_target delivery_seconds delivered_msgs_per_s delivered_mb_per_s rate"
            ).split(),
            0,
        )
        return results.BenchResult(
            topic="t",
            acks="quorum",
            storage="durable",
            partitions=1,
            replication_factor=3,
            publish_latency_ms=None,
            e2e_latency_ms=None,
            deliveries=[track.report()],
            skipped_messages=skipped,
            **zero,
        )

    assert result([1, 2, 3], 0).breach() is None
    assert result([1, 2, 5], 0).breach() is None  # 3-4 control records: no message skipped
    assert result([1, 2, 2, 3], 0).breach() == "streams broke their contract: 1 offsets delivered twice"
    assert result([1, 2, 5], 2).breach() == "streams broke their contract: 2 messages skipped"


def test_sse_reader_reports_http_errors() -> None:
    async def scenario() -> str | None:
        reader = _SseReader(3, Counter())
        reader.connection_made(FakeTransport())
        body = b'{"error":{"code":"topic_not_found","message":"no such topic"}}'
        reader.data_received(b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        reader.connection_lost(None)
        with pytest.raises(BenchError, match="topic_not_found"):
            await reader.headers_seen
        return reader.error

    assert asyncio.run(scenario()) == "topic_not_found: no such topic"


def test_percentiles_and_histogram() -> None:
    assert percentile([], 0.5) == 0.0
    values = list(range(1, 101))
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    summary = results.histogram_summary({1000: 50, 2000: 49, 9000: 1})
    assert summary is not None and (summary.p50, summary.p99, summary.max) == (1.0, 2.0, 9.0)
    assert results.histogram_summary({}) is None
    for us in (0, 5, 1023, 1024, 123_456, 9_999_999):
        q = results.quantize_us(us)
        assert q <= us and us - q <= max(us // 512, 0)


def test_payload_and_config_validation() -> None:
    p = make_payload(30, 1_700_000_000_000_000_000)
    assert p == b"1700000000000000000" + b"x" * 11
    assert len(make_payload(19)) == 19
    BenchConfig().validate()
    for bad in (
        {"size": 18},
        {"messages": 0},
        {"batch": 0},
        {"acks": "all"},
        {"storage": "x"},
        {"rate": -1},
        {"wire": "xml"},
        {"publish": "grpc"},
    ):
        with pytest.raises(BenchError):
            BenchConfig(**bad).validate()  # type: ignore[arg-type]
    assert retry_after_seconds("2") == 2.0
    assert retry_after_seconds(None) == 1.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 1.0
    assert retry_after_seconds("3600") == 10.0 and retry_after_seconds("-1") == 0.0
    desc = {"name": "t", "partitions": 2, "replication_factor": 3, "storage": "durable"}
    assert TopicDescription.parse({**desc, "partition_details": []}).replicas_in_use() == 3
    two = [{"partition": 0, "replicas": ["a", "b"]}, {"partition": 1, "replicas": ["a", "b"]}]
    assert TopicDescription.parse({**desc, "partition_details": two}).replicas_in_use() == 2
    for wrong in ({"partitions": [{"replicas": ["a"]}]}, {**desc, "partitions": [{}]}, None):
        with pytest.raises(ClientError):
            TopicDescription.parse(wrong)


# --------------------------------------------------------------------------------------------
# against a real node


@pytest.fixture
def dead_url() -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def topic_names(url: str) -> list[str]:
    result = CliRunner().invoke(cli, ["-n", url, "topics", "list", "--json"])
    assert result.exit_code == 0, result.stderr
    return [t["name"] for t in json.loads(result.stdout)["topics"]]


@pytest.mark.integration
def test_bench_cli_json_reports_numbers(sprawl_node: Any) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "-n",
            sprawl_node.url,
            "bench",
            "--messages",
            "2000",
            "--size",
            "64",
            "--batch",
            "50",
            "--publishers",
            "2",
            "--json",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    r = json.loads(result.stdout)
    assert r["published"] == 2000 and r["delivered"] == 2000 and r["per_subscriber"] == [2000]
    # every offset once, in order, from the node's high watermark when the stream opened
    [[d]] = r["deliveries"]
    [opened] = r["views_at_open"].values()
    [ended] = r["views_at_end"].values()
    assert (d["first"], d["last"], d["count"]) == (
        opened[0]["high_watermark"],
        opened[0]["high_watermark"] + 1999,
        2000,
    )
    assert d["duplicates"] == 0 and d["skipped"] == 0 and r["skipped_messages"] == 0
    assert ended[0]["high_watermark"] == ended[0]["log_end"] == d["last"] + 1
    assert r["publish_requests"] == 40
    for key in ("publish_msgs_per_s", "publish_mb_per_s", "delivered_msgs_per_s", "delivered_mb_per_s"):
        assert r[key] > 0, key
    for key in ("e2e_latency_ms", "publish_latency_ms"):
        lat = r[key]
        assert 0 <= lat["p50"] <= lat["p99"] <= lat["max"], key
        assert lat["max"] > 0
    assert r["replication_factor"] == 1 and r["acks"] == "quorum" and r["size"] == 64
    assert r["topic"] not in topic_names(sprawl_node.url)  # the fresh topic is cleaned up


@pytest.mark.integration
def test_run_bench_reads_the_subscriber_child_while_publishing(
    sprawl_node: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While it publishes (no progress callback asked), the run still reads the subscriber
    child's reports: the child writes one every 100 ms, and once its pipe is full (some 280)
    each write blocks the child and its streams -- every message after that was read late
    (dup34: seconds late in runs whose publishing lasted over ~28 s)."""
    reads: list[int] = []
    real = run_module.ChildSubscribers

    class Counting(real):  # type: ignore[misc, valid-type]
        def delivered(self) -> int:
            if not publishing_done:
                reads.append(1)
            return int(super().delivered())

    publishing_done = False
    monkeypatch.setattr(run_module, "ChildSubscribers", Counting)
    real_publisher = run_module._publisher

    async def publisher(*args: Any) -> None:
        nonlocal publishing_done
        await real_publisher(*args)
        publishing_done = True

    monkeypatch.setattr(run_module, "_publisher", publisher)
    r = run_bench(BenchConfig(urls=[sprawl_node.url], messages=40, batch=1, publishers=1, rate=40.0))
    assert r.delivered == 40 and r.duplicates == 0
    assert len(reads) >= 3  # one a loop turn (0.2 s) of the ~1 s of publishing


@pytest.mark.integration
def test_bench_publishes_on_the_websocket_and_times_each_ack(sprawl_node: Any) -> None:
    """``publish="ws"`` (quorum_latency --publish ws): 60 one-message msgpack frames from two
    publish sockets at a steady rate, each answered (one request each, timed) and delivered
    once to the SSE subscriber."""
    r = run_bench(
        BenchConfig(urls=[sprawl_node.url], messages=60, batch=1, publishers=2, rate=120.0, publish="ws")
    )
    assert r.published == 60 and r.publish_requests == 60 and r.publish_latency_ms is not None
    assert r.delivered == 60 and r.duplicates == 0 and r.e2e_latency_ms is not None


@pytest.mark.integration
def test_bench_cli_text_with_several_inline_subscribers(sprawl_node: Any) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "-n",
            sprawl_node.url,
            "bench",
            "--messages",
            "2000",
            "--subscribers",
            "3",
            "--inline-subscribers",
            "--topic",
            "kept",
            "--storage",
            "ephemeral",
            "--acks",
            "leader",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "publish:   2000 msgs" in out and "msgs/s" in out and "MB/s" in out
    assert "delivered: 6000/6000 msgs" in out and "total of 3 subscribers" in out
    assert "end-to-end latency ms: p50" in out and "publish request latency ms: p50" in out
    assert "payload 100 B, acks leader, batch 100, publishers 4, subscribers 3, replication 1" in out
    assert "kept" in topic_names(sprawl_node.url)  # a named topic is kept


@pytest.mark.integration
def test_run_bench_paces_with_rate(sprawl_node: Any) -> None:
    config = BenchConfig(
        urls=[sprawl_node.url],
        messages=400,
        batch=10,
        publishers=2,
        rate=2000,
        subscribers=1,
        subscriber_process=False,
    )
    r = run_bench(config)
    assert r.published == 400 and r.delivered == 400
    # 40 batches scheduled 5 ms apart: the last one leaves at 195 ms.
    assert r.publish_seconds >= 0.19
    assert r.publish_msgs_per_s <= 2000 * 1.1
    assert r.e2e_latency_ms is not None and r.e2e_latency_ms.max > 0


@pytest.mark.integration
def test_bench_cli_lean_wire_delivers_everything(sprawl_node: Any) -> None:
    """``--wire lean``: msgpack publish bodies and batch streams, every message counted once
    by each subscriber (a batch event carries many stamps)."""
    result = CliRunner().invoke(
        cli,
        ["-n", sprawl_node.url, "bench", "--messages", "3000", "--batch", "100", "--subscribers", "2"]
        + ["--wire", "lean", "--acks", "leader", "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    r = json.loads(result.stdout)
    assert r["published"] == 3000 and r["delivered"] == 6000 and r["per_subscriber"] == [3000, 3000]
    assert r["publish_requests"] == 30 and r["e2e_latency_ms"]["max"] > 0


@pytest.mark.integration
def test_run_bench_without_subscribers_and_progress(sprawl_node: Any) -> None:
    seen: list[tuple[int, int, int, int]] = []
    r = run_bench(
        BenchConfig(urls=[sprawl_node.url], messages=500, batch=100, subscribers=0), lambda *a: seen.append(a)
    )
    assert r.published == 500 and r.delivered == 0 and r.e2e_latency_ms is None and r.complete
    assert seen[-1][:2] == (500, 500)


def test_bench_against_dead_node_is_a_one_line_error(dead_url: str) -> None:
    result = CliRunner().invoke(cli, ["-n", dead_url, "bench", "--messages", "10"])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(
        "sprawlctl: error: no node is reachable"
    )


@pytest.mark.integration
def test_run_bench_subscribers_read_from_their_own_nodes(sprawl_node: Any, dead_url: str) -> None:
    """subscriber_urls (publish on node A, read on node C) is where the streams open: a dead
    one there fails the run although the publishing node is up."""
    ok = run_bench(
        BenchConfig(
            urls=[sprawl_node.url],
            subscriber_urls=[sprawl_node.url],
            messages=200,
            batch=10,
            subscribers=1,
            subscriber_process=False,
        )
    )
    assert ok.published == 200 and ok.delivered == 200
    with pytest.raises(BenchError, match="cannot connect"):
        run_bench(
            BenchConfig(
                urls=[sprawl_node.url],
                subscriber_urls=[dead_url],
                messages=10,
                subscribers=1,
                subscriber_process=False,
                ready_timeout=5,
            )
        )
