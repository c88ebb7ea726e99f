"""``GET .../stream?format=ndjson``: the batch stream as newline-delimited JSON, over real
loopback sockets (the in-process server of :mod:`harness.inproc_sse`): an opening line, one
line per batch (shared by a partition's subscribers like the batch events), resume by the
line's id, keepalives and the closing error line; and the client decoder
(:class:`sprawl.client.wire.NdjsonStreamDecoder`), bounded and fuzzed with hypothesis."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, gatherResults

from harness import bounded
from harness.inproc_sse import Server as Server
from harness.inproc_sse import SSEClient
from harness.inproc_sse import server as server
from sprawl.client import wire
from sprawl.delivery.frames import ndjson_batch
from sprawl.log.record import Record


class NdjsonClient(SSEClient):
    """The harness's raw client, reading NDJSON lines (HTTP/1.0: the body is not chunked)."""

    def __init__(self, path: str, headers: dict[str, str] | None = None):
        super().__init__(path, headers)
        #: Every line as it came (b"" for a blank one).
        self.lines: list[bytes] = []
        self._rest = b""

    def dataReceived(self, data: bytes) -> None:
        if self.head is None:
            self.buf += data
            if b"\r\n\r\n" not in self.buf:
                return
            head, data = self.buf.split(b"\r\n\r\n", 1)
            self.buf = b""
            self.head = head.decode("latin-1")
            self.status = int(self.head.split()[1])
        if self.status != 200:
            self.body += data
        else:
            self._rest += data
            *done, self._rest = self._rest.split(b"\n")
            self.lines += done
        self._check()

    def hello(self) -> Deferred[None]:
        return self.when(lambda: bool(self.lines) or self.status not in (None, 200))

    def objects(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.lines if x.strip()]

    def delivered(self) -> list[str]:
        return [m["payload"] for o in self.objects() for m in o.get("messages", [])]


def ndjson_head(c: SSEClient) -> str:
    assert c.head is not None
    return c.head.lower()


async def connect(server: Server, path: str, headers: dict[str, str] | None = None) -> NdjsonClient:
    c = await server.connect(path, headers, client=NdjsonClient)
    assert isinstance(c, NdjsonClient)
    return c


@pytest_twisted.ensureDeferred
async def test_an_ndjson_stream_sends_one_line_per_batch(server: Server) -> None:
    """An opening line, the stored messages as one line (id of its last message), new
    ones as they are published; the messages are the default format's objects."""
    await server.publish("n", [f"m{i}" for i in range(5)])
    c = await connect(server, "/v1/topics/n/stream?from=earliest&format=ndjson")
    assert "content-type: application/x-ndjson" in ndjson_head(c)
    await c.when(lambda: len(c.delivered()) >= 5)
    first, batch = c.objects()[:2]
    assert first == {"stream": "n"}
    assert batch["id"] == "0:4" and batch["partition"] == 0
    assert [m["offset"] for m in batch["messages"]] == list(range(5))
    await server.publish("n", ["m5", "m6"])
    await c.when(lambda: len(c.delivered()) >= 7)
    assert c.delivered() == [f"m{i}" for i in range(7)]
    assert c.objects()[-1]["id"] == "0:6"
    await c.disconnect()


@pytest_twisted.ensureDeferred
async def test_an_ndjson_stream_resumes_after_a_lines_id(server: Server) -> None:
    """``Last-Event-ID`` of a line resumes after its last message."""
    await server.publish("r", [f"m{i}" for i in range(3)])
    first = await connect(server, "/v1/topics/r/stream?from=earliest&format=ndjson")
    await first.when(lambda: len(first.delivered()) >= 3)
    await first.disconnect()
    await server.publish("r", ["m3"])
    last_id = first.objects()[-1]["id"]
    second = await connect(server, "/v1/topics/r/stream?format=ndjson", {"Last-Event-ID": last_id})
    await second.when(lambda: len(second.delivered()) >= 1)
    assert second.delivered() == ["m3"]


@pytest_twisted.ensureDeferred
async def test_ndjson_subscribers_share_one_encoded_line(server: Server) -> None:
    """Ten caught-up NDJSON subscribers get every message, the line encoded once per batch."""
    await server.publish("fan", ["before"])
    clients = [await connect(server, "/v1/topics/fan/stream?from=latest&format=ndjson") for _ in range(10)]
    hits = server.api.streams.batches.hits
    for b in range(3):
        await server.publish("fan", [f"m{b}-{i}" for i in range(10)])
    await bounded(gatherResults([c.when(lambda c=c: len(c.delivered()) >= 30) for c in clients]))
    expected = [f"m{b}-{i}" for b in range(3) for i in range(10)]
    assert all(c.delivered() == expected for c in clients)
    assert server.api.streams.batches.hits - hits >= 9 * 3


@pytest_twisted.ensureDeferred
async def test_ndjson_keepalives_are_blank_lines_and_the_end_is_an_error_line(server: Server) -> None:
    """A heartbeat writes a blank line; a stopping node ends the stream with an error line."""
    c = await connect(server, "/v1/topics/k/stream?format=ndjson")
    n = len(c.lines)
    server.clock.advance(15.0)
    await c.when(lambda: len(c.lines) > n)
    assert c.lines[n:] == [b""]
    server.api.streams.close_all()
    await c.when(lambda: c.lost)
    assert c.objects()[-1]["error"]["code"] == "stopping"
    decoder = wire.NdjsonStreamDecoder()
    with pytest.raises(wire.StreamError, match="stopping"):
        decoder.feed(b"\n".join(c.lines) + b"\n")


@pytest_twisted.ensureDeferred
async def test_an_ndjson_line_is_bounded_by_max_bytes(server: Server) -> None:
    """``max_bytes`` bounds each line's messages (one message always fits)."""
    await server.publish("big", ["x" * 300 for _ in range(6)])
    c = await connect(server, "/v1/topics/big/stream?from=earliest&format=ndjson&max_bytes=1000")
    await c.when(lambda: len(c.delivered()) >= 6)
    sizes = [len(o["messages"]) for o in c.objects() if "messages" in o]
    assert sum(sizes) == 6 and max(sizes) < 6
    assert all(len(x) < 1000 + 200 for x in c.lines)


# -- the client decoder --------------------------------------------------------------------


def test_the_decoder_reads_what_the_node_encodes() -> None:
    """``ndjson_batch`` lines (text and binary messages) split anywhere come back as the
    same messages; the opening line and blank lines are skipped."""
    recs = [
        Record(7, 0, 0, "i", "k", {"h": "v"}, b"text", True),
        Record(8, 0, 0, None, None, None, b"\x00\xff", False),
    ]
    line, used, n, _ = ndjson_batch(3, recs, 1_000_000)
    assert (used, n) == (2, 2)
    stream = b'{"stream":"t"}\n\n' + line + b"\n" + line
    d = wire.NdjsonStreamDecoder()
    got = [b for i in range(len(stream)) for b in d.feed(stream[i : i + 1])]
    expected = [json.loads(r.to_json()) for r in recs]
    assert [(b.last_event_id, b.messages) for b in got] == [("3:8", expected), ("3:8", expected)]


def test_the_decoder_is_bounded() -> None:
    """A line longer than its byte bound (ended or not), with too many messages, or not an
    object is a WireError."""
    with pytest.raises(wire.WireError):
        wire.NdjsonStreamDecoder(max_line_bytes=100).feed(b"x" * 200)
    with pytest.raises(wire.WireError):
        wire.NdjsonStreamDecoder(max_line_bytes=100).feed(b'{"messages":[' + b"{}," * 50 + b"{}]}\n")
    with pytest.raises(wire.WireError):
        wire.NdjsonStreamDecoder(max_messages=2).feed(b'{"messages":[{},{},{}]}\n')
    with pytest.raises(wire.WireError):
        wire.NdjsonStreamDecoder().feed(b"[1,2]\n")


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.binary(max_size=60)
        | st.sampled_from([b"\n", b'{"messages":[', b"]}", b"{}", b'{"error":{"code":"x"}}', b'"id":']),
        max_size=20,
    )
)
def test_the_decoder_refuses_cleanly(chunks: list[bytes]) -> None:
    """Any bytes: batches, or a WireError / StreamError; the buffer stays bounded."""
    d = wire.NdjsonStreamDecoder(max_line_bytes=500, max_messages=5)
    try:
        for c in chunks:
            for b in d.feed(c):
                assert len(b.messages) <= 5 and all(isinstance(m, dict) for m in b.messages)
            assert d._lines.pending <= 500
    except (wire.WireError, wire.StreamError):
        pass
