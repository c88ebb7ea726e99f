"""``GET .../stream?format=batch``: one SSE event per batch of messages, over real
loopback sockets (the in-process server of :mod:`harness.inproc_sse`), its event
shared by the subscribers of a partition, and the client decoder of
:mod:`sprawl.client.wire` fuzzed with hypothesis."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import gatherResults

from harness import bounded
from harness.inproc_sse import Server as Server
from harness.inproc_sse import SSEClient
from harness.inproc_sse import server as server
from sprawl.client import wire
from sprawl.delivery.frames import BatchEvents, batch_event
from sprawl.log.record import Record


def batches(c: SSEClient) -> list[dict[str, Any]]:
    return [e for e in c.events if e["event"] == "batch"]


def delivered(c: SSEClient) -> list[str]:
    return [m["payload"] for e in batches(c) for m in e["data"]]


@pytest_twisted.ensureDeferred
async def test_a_batch_stream_sends_one_event_per_batch(server: Server) -> None:
    """Stored messages arrive as one ``batch`` event (id of its last message), new ones
    as they are published; the messages are the default format's objects."""
    await server.publish("b", [f"m{i}" for i in range(5)])
    c = await server.connect("/v1/topics/b/stream?from=earliest&format=batch")
    await c.when(lambda: len(delivered(c)) >= 5)
    assert len(batches(c)) == 1 and not c.messages
    first = batches(c)[0]
    assert first["id"] == "0:4"
    assert [m["offset"] for m in first["data"]] == list(range(5))
    assert all(m["partition"] == 0 and m["id"] for m in first["data"])
    await server.publish("b", ["m5", "m6"])
    await c.when(lambda: len(delivered(c)) >= 7)
    assert delivered(c) == [f"m{i}" for i in range(7)]
    assert batches(c)[-1]["id"] == "0:6"
    await c.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_batch_stream_resumes_after_its_last_event_id(server: Server) -> None:
    """``Last-Event-ID`` of a batch resumes after the batch's last message."""
    await server.publish("r", [f"m{i}" for i in range(3)])
    first = await server.connect("/v1/topics/r/stream?from=earliest&format=batch")
    await first.when(lambda: len(delivered(first)) >= 3)
    await first.disconnect()
    await server.publish("r", ["m3"])
    second = await server.connect(
        "/v1/topics/r/stream?format=batch", {"Last-Event-ID": batches(first)[-1]["id"]}
    )
    await second.when(lambda: len(delivered(second)) >= 1)
    assert delivered(second) == ["m3"]


@pytest_twisted.ensureDeferred
async def test_subscribers_of_a_partition_share_one_encoded_event(server: Server) -> None:
    """Ten caught-up batch subscribers get every message; the event is encoded once per
    batch and reused by the others."""
    await server.publish("fan", ["before"])
    clients = [await server.connect("/v1/topics/fan/stream?from=latest&format=batch") for _ in range(10)]
    hits = server.api.streams.batches.hits
    for b in range(3):
        await server.publish("fan", [f"m{b}-{i}" for i in range(10)])
    await bounded(gatherResults([c.when(lambda c=c: len(delivered(c)) >= 30) for c in clients]))
    expected = [f"m{b}-{i}" for b in range(3) for i in range(10)]
    assert all(delivered(c) == expected for c in clients)
    assert server.api.streams.batches.hits - hits >= 9 * 3


@pytest_twisted.ensureDeferred
async def test_batch_streams_with_different_filters_get_their_own_messages(server: Server) -> None:
    """A filter applies to the batch format too, and two filtered streams of one partition
    never share an event (their records differ in the middle, not at the ends)."""
    odd = await server.connect(
        "/v1/topics/flt/stream?from=earliest&format=batch&filter=offset%20!%3D%20%601%60"
    )
    all_ = await server.connect(
        "/v1/topics/flt/stream?from=earliest&format=batch&filter=offset%20%3E%3D%20%600%60"
    )
    await server.publish("flt", ["a", "b", "c"])
    await odd.when(lambda: len(delivered(odd)) >= 2)
    await all_.when(lambda: len(delivered(all_)) >= 3)
    await server.publish("flt", ["d"])  # a marker: whatever arrives before it is all there was
    await odd.when(lambda: len(delivered(odd)) >= 3)
    await all_.when(lambda: len(delivered(all_)) >= 4)
    assert delivered(odd) == ["a", "c", "d"]
    assert delivered(all_) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("fmt", ["msgpack", "BATCH", "sse,batch"])
@pytest_twisted.ensureDeferred
async def test_an_unknown_stream_format_is_a_400(server: Server, fmt: str) -> None:
    """A format the node does not know is refused before the stream starts."""
    await server.publish("f", ["x"])
    status, body = await server.request("GET", f"/v1/topics/f/stream?format={fmt}&from=earliest")
    assert status == 400 and b"invalid_parameter" in body


def test_batch_events_hit_only_on_the_same_records() -> None:
    """A cached event is reused for the same topic object and record objects only."""
    cache = BatchEvents(max_bytes=10_000)
    recs = [Record(i, 0, 0, None, None, None, b"p%d" % i, True) for i in range(3)]

    class T:
        name = "t"

    t = T()
    one = cache.event(t, 0, recs, 1000)
    assert cache.event(t, 0, list(recs), 1000) is one and cache.hits == 1
    fresh = [Record(i, 0, 0, None, None, None, b"p%d" % i, True) for i in range(3)]
    assert cache.event(t, 0, fresh, 1000) == one and cache.hits == 1  # same bytes, new records
    assert cache.event(T(), 0, fresh, 1000) == one and cache.hits == 1  # another topic object
    big = [Record(0, 0, 0, None, None, None, b"x" * 20_000, True)]
    cache.event(t, 1, big, 100_000)
    assert cache.bytes <= 10_000
    assert batch_event(0, recs, 1)[1:3] == (1, 1)  # at least one message, however small max_bytes


# -- the client decoder --------------------------------------------------------------------


def test_the_decoder_reads_batches_messages_comments_and_errors() -> None:
    """Batch and one-message events, keepalive comments, CRLF; an error event raises."""
    d = wire.BatchStreamDecoder()
    stream = (
        b": sprawl stream of t\nretry: 1000\n\n"
        b'event: batch\nid: 0:1\ndata: [{"offset":0,"payload":"a"},{"offset":1,"payload":"b"}]\n\n'
        b": keepalive\n\n"
        b'id: 0:2\r\ndata: {"offset":2,"payload":"c"}\r\n\r\n'
    )
    got = [b for i in range(len(stream)) for b in d.feed(stream[i : i + 1])]
    assert [(b.last_event_id, [m["payload"] for m in b.messages]) for b in got] == [
        ("0:1", ["a", "b"]),
        ("0:2", ["c"]),
    ]
    with pytest.raises(wire.StreamError) as e:
        d.feed(b'event: error\ndata: {"code":"slow_consumer","message":"m","cursors":{"0":3}}\n\n')
    assert e.value.code == "slow_consumer" and e.value.detail["cursors"] == {"0": 3}


def test_the_decoder_is_bounded() -> None:
    """An event longer than its byte bound or with too many messages is a WireError."""
    with pytest.raises(wire.WireError):
        wire.BatchStreamDecoder(max_event_bytes=100).feed(b"data: " + b"x" * 200)
    with pytest.raises(wire.WireError):
        wire.BatchStreamDecoder(max_messages=2).feed(b"event: batch\ndata: [{},{},{}]\n\n")


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.binary(max_size=60) | st.sampled_from([b"\n\n", b"event: batch\n", b"data: [", b"]", b"{}"]),
        max_size=20,
    )
)
def test_the_decoder_refuses_cleanly(chunks: list[bytes]) -> None:
    """Any bytes: batches, or a WireError / StreamError; the buffer stays bounded."""
    d = wire.BatchStreamDecoder(max_event_bytes=500, max_messages=5)
    try:
        for c in chunks:
            for b in d.feed(c):
                assert len(b.messages) <= 5 and all(isinstance(m, dict) for m in b.messages)
    except (wire.WireError, wire.StreamError):
        pass
