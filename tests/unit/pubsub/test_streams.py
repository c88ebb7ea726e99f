"""Server-Sent Events: ``GET /v1/topics/{topic}/stream`` over real loopback sockets.

An in-process node (real LMDB store in ``tmp_path``, the API served by
``make_site`` on ``tcp:0:interface=127.0.0.1``) with a :class:`task.Clock` as
the broker's and the streams' clock, so heartbeats and the slow-consumer timeout
fire only when a test advances it.  The SSE client is a small raw HTTP/1.0
protocol (an HTTP/1.0 response is not chunked, so the body is the event stream
itself) that can also stop reading its socket to play a slow consumer.

Every wait is on an event (frames parsed, connection lost, a publish acked) with
a bound in real seconds; nothing sleeps.  The flow-control logic of
:class:`SSEStream` is also tested directly with a fake request, where the
transport's pause/resume calls are made by the test.
"""

from __future__ import annotations

import base64
import json
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import task
from twisted.internet.defer import gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.logger import formatEvent
from twisted.web.client import HTTPConnectionPool

from harness import bounded, the_reactor
from harness.inproc_sse import T0 as T0
from harness.inproc_sse import Server as Server
from harness.inproc_sse import SSEClient as SSEClient
from harness.inproc_sse import server as server
from sprawl.config import NodeConfig
from sprawl.delivery.streams import SSEStream, StreamRegistry
from sprawl.http.codec import parse_message
from sprawl.log.record import Record
from sprawl.metrics import NodeMetrics
from sprawl.pubsub import Broker
from sprawl.storage.lmdb import LmdbStore
from sprawl.testing import FakeRequest


def frame_ids(c: SSEClient) -> list[str | None]:
    return [e["id"] for e in c.messages]


@pytest_twisted.ensureDeferred
async def test_earliest_gets_existing_then_new_messages_in_order(server: Server) -> None:
    """From ``earliest``: the stored messages, then new ones as published, as ``id: P:OFFSET`` + JSON data frames."""
    await server.publish("s", ["m0", "m1", "m2"])
    c = await server.connect("/v1/topics/s/stream?from=earliest")
    assert "text/event-stream" in (c.head or "").lower()
    await c.wait_messages(3)
    await server.publish("s", ["m3", "m4"])
    await server.publish("s", ["m5"])
    await c.wait_messages(6)
    assert frame_ids(c) == [f"0:{i}" for i in range(6)]
    assert [e["data"]["payload"] for e in c.messages] == [f"m{i}" for i in range(6)]
    assert [e["data"]["offset"] for e in c.messages] == list(range(6))
    assert all(e["data"]["partition"] == 0 and e["data"]["id"] for e in c.messages)
    await c.disconnect()


@pytest_twisted.ensureDeferred
async def test_binary_payloads_stream_as_base64(server: Server) -> None:
    """A binary message's frame carries payload_b64 with the exact bytes."""
    blob = bytes(range(256))
    r = await bounded(
        treq.post(
            f"{server.url}/v1/topics/bin/messages",
            data=blob,
            headers={"content-type": "application/octet-stream"},
            pool=server.pool,
        )
    )
    assert r.code == 200
    await bounded(r.content())
    c = await server.connect("/v1/topics/bin/stream?from=earliest")
    await c.wait_messages(1)
    assert base64.b64decode(c.messages[0]["data"]["payload_b64"]) == blob


@pytest.mark.parametrize("evicted", [False, True], ids=["hot", "from-lmdb"])
@pytest_twisted.ensureDeferred
async def test_reconnect_with_last_event_id_resumes_without_loss_or_duplicates(
    server: Server, evicted: bool
) -> None:
    """Reconnecting with ``Last-Event-ID: 0:K`` (same URL) resumes at K+1: nothing lost, nothing repeated."""
    await server.publish("r", [f"m{i}" for i in range(5)])
    first = await server.connect("/v1/topics/r/stream?from=earliest")
    await first.wait_messages(5)
    await first.disconnect()
    last = first.messages[-1]["id"]
    assert last == "0:4"
    await server.publish("r", ["m5", "m6"])  # published while the client is away
    if evicted:
        lg = server.broker.topics["r"].logs[0]
        lg.evict(0)
        assert not lg.hot
    second = await server.connect("/v1/topics/r/stream?from=earliest", {"Last-Event-ID": last})
    await second.wait_messages(2)
    await server.publish("r", ["m7"])  # a marker: whatever arrives before it is all there was
    await second.wait_messages(3)
    assert second.offsets() == [5, 6, 7]
    assert [e["data"]["payload"] for e in second.messages] == ["m5", "m6", "m7"]
    # Resuming from the middle works the same way.
    third = await server.connect("/v1/topics/r/stream", {"Last-Event-ID": "0:2"})
    await third.wait_messages(5)
    assert third.offsets() == [3, 4, 5, 6, 7]


@pytest_twisted.ensureDeferred
async def test_a_cursor_past_the_high_watermark_waits_where_it_is(server: Server) -> None:
    """A client that has read further on another node (a replica ahead of this
    one, the leader before a failover) and resumes here past this node's high
    watermark -- ``Last-Event-ID``, ``from=`` on a stream or a fetch -- waits at
    its own offset: it is not sent back to the high watermark to get again
    what it already has (the chaos test's SSE consumer saw exactly that)."""
    await server.publish("ahead", [f"m{i}" for i in range(3)])  # offsets 0..2: the high watermark is 3
    by_id = await server.connect("/v1/topics/ahead/stream", {"Last-Event-ID": "0:4"})
    by_from = await server.connect("/v1/topics/ahead/stream?from=5")
    status, body = await server.request("GET", "/v1/topics/ahead/messages?from=5")
    answer = json.loads(body)
    assert status == 200 and answer["messages"] == [] and answer["next"] == 5, answer
    await server.publish("ahead", [f"m{i}" for i in range(3, 8)])  # offsets 3..7
    await server.publish("ahead", ["marker"])  # whatever arrives before it is all there was
    await by_id.wait_messages(4)
    await by_from.wait_messages(4)
    assert by_id.offsets() == by_from.offsets() == [5, 6, 7, 8]
    status, body = await server.request("GET", "/v1/topics/ahead/messages?from=5")
    assert [m["offset"] for m in json.loads(body)["messages"]] == [5, 6, 7, 8]


@pytest_twisted.ensureDeferred
async def test_bad_last_event_id_is_a_400(server: Server) -> None:
    """A malformed Last-Event-ID is refused with the JSON error shape, not a stream."""
    await server.publish("r", ["m0"])
    c = await server.connect("/v1/topics/r/stream", {"Last-Event-ID": "nonsense"}, hello=False)
    await bounded(c.closed)
    assert c.status == 400
    assert json.loads(c.body)["error"]["code"] == "invalid_last_event_id"


@pytest_twisted.ensureDeferred
async def test_from_latest_sees_only_new_messages(server: Server) -> None:
    """From ``latest`` a subscriber sees only messages published after it connected."""
    await server.publish("l", ["old0", "old1", "old2"])
    c = await server.connect("/v1/topics/l/stream?from=latest")
    await server.publish("l", ["new0"])
    await server.publish("l", ["new1"])
    await c.wait_messages(2)
    assert c.offsets() == [3, 4]
    assert [e["data"]["payload"] for e in c.messages] == ["new0", "new1"]


@pytest_twisted.ensureDeferred
async def test_ten_concurrent_subscribers_all_get_every_message(server: Server) -> None:
    """Ten streams on one topic each receive every message, in order."""
    await server.publish("fan", ["before"])
    clients = [await server.connect("/v1/topics/fan/stream?from=latest") for _ in range(10)]
    assert server.api.streams.count() == 10
    for b in range(3):
        await server.publish("fan", [f"m{b}-{i}" for i in range(10)])
    await bounded(gatherResults([c.wait_messages(30) for c in clients]))
    expected = [f"m{b}-{i}" for b in range(3) for i in range(10)]
    for c in clients:
        assert c.offsets() == list(range(1, 31))
        assert [e["data"]["payload"] for e in c.messages] == expected
    for c in clients[:5]:
        # The server notices the disconnect: the request fails and the stream lets go of everything.
        gone = c.stream.request.notifyFinish()
        gone.addErrback(lambda f: None)
        await c.disconnect()
        await bounded(gone)
        assert c.stream.closed
    assert server.api.streams.count() == 5
    assert server.broker.watchers.count("fan", 0) == 5
    await server.publish("fan", ["after"])
    await bounded(gatherResults([c.wait_messages(31) for c in clients[5:]]))
    assert all(c.messages[-1]["data"]["payload"] == "after" for c in clients[5:])


@pytest_twisted.ensureDeferred
async def test_stream_of_a_deleted_topic_ends_with_an_error_event(server: Server) -> None:
    """Deleting the topic ends its streams with an ``error`` event (topic_deleted) and closes the connection."""
    await server.publish("gone", ["m0"])
    c = await server.connect("/v1/topics/gone/stream?from=earliest")
    await c.wait_messages(1)
    code, _ = await server.request("DELETE", "/v1/topics/gone")
    assert code == 204
    await c.wait_event("error")
    await bounded(c.closed)
    err = [e for e in c.events if e["event"] == "error"]
    assert len(err) == 1
    assert err[0]["data"]["code"] == "topic_deleted"
    assert c.events[-1] is err[0]
    assert server.api.streams.count() == 0


@pytest_twisted.ensureDeferred
async def test_stream_of_a_missing_topic_is_a_404(server: Server) -> None:
    """Where topics are not auto-created, a stream of a topic that does not exist answers 404
    with the JSON error shape (with auto-create it waits: tests/unit/pubsub/test_subscribe_first.py)."""
    server.broker.config.auto_create_topics = False  # as --no-auto-create
    c = await server.connect("/v1/topics/nothing/stream", hello=False)
    await bounded(c.closed)
    assert c.status == 404
    assert json.loads(c.body)["error"]["code"] == "topic_not_found"


@pytest_twisted.ensureDeferred
async def test_heartbeat_comments_keep_the_connection_alive(server: Server) -> None:
    """An idle stream gets a keepalive comment every heartbeat interval (15 s of the node's clock)."""
    await server.publish("hb", ["m0"])
    c = await server.connect("/v1/topics/hb/stream?from=latest")
    server.clock.advance(15)
    await c.when(lambda: "keepalive" in c.comments)
    assert c.messages == []


@pytest_twisted.ensureDeferred
async def test_slow_reader_is_cut_off_without_stopping_others(server: Server) -> None:
    """A client that stops reading its socket pauses only its own stream; the others keep receiving.
    After the slow timeout (30 s of the node's clock) it gets a ``slow_consumer`` error event with
    its cursor and is disconnected, and every frame it was sent before is complete and in order."""
    await server.publish("slow", ["m0"])
    slow = await server.connect("/v1/topics/slow/stream?from=earliest")
    fast = await server.connect("/v1/topics/slow/stream?from=earliest")
    slow_stream, fast_stream = slow.stream, fast.stream
    await bounded(gatherResults([slow.wait_messages(1), fast.wait_messages(1)]))
    # A small send buffer on the server side of the slow connection, so a few hundred KB fill
    # the path; then the slow client stops reading its socket.
    slow_stream.request.channel.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    # ... and a fixed small receive buffer on the client (no autotuning), so a
    # paused client's kernel cannot soak up the backlog and unpause the stream.
    slow.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.transport.pauseProducing()
    big = "x" * 32_000
    sent = 1
    for _ in range(200):
        if slow_stream.paused:
            break
        await server.publish("slow", [f"{sent + i}:{big}" for i in range(4)])
        sent += 4
        await fast.wait_messages(sent)  # the fast client keeps up meanwhile
    assert slow_stream.paused, "the slow client's stream was never paused"
    for _ in range(3):  # more data while the slow one is paused: the fast one still gets all of it
        await server.publish("slow", [f"{sent}:{big}"])
        sent += 1
        await fast.wait_messages(sent)
    assert slow_stream.paused
    assert not fast_stream.paused
    assert fast.offsets() == list(range(sent))
    server.clock.advance(29)
    assert not slow_stream.closed
    server.clock.advance(1.5)
    assert slow_stream.closed
    assert not fast_stream.closed
    await server.publish("slow", ["after"])
    await fast.wait_messages(sent + 1)
    assert fast.messages[-1]["data"]["payload"] == "after"
    # The slow client reads again: it finds its frames, then the error event, then the end.
    slow.transport.resumeProducing()
    await bounded(slow.closed)
    assert slow.events[-1]["event"] == "error"
    err = slow.events[-1]["data"]
    assert err["code"] == "slow_consumer"
    got = slow.offsets()
    assert got == list(range(len(got)))
    assert 0 < len(got) < sent
    assert err["cursors"] == {"0": len(got)}
    assert server.metrics.slow_consumers_disconnected._value.get() == 1
    # It resumes where it was cut off with Last-Event-ID, losing nothing.
    again = await server.connect(
        "/v1/topics/slow/stream?from=earliest", {"Last-Event-ID": slow.messages[-1]["id"]}
    )
    await again.wait_messages(sent + 1 - len(got))
    assert again.offsets() == list(range(len(got), sent + 1))


# -- SSEStream flow control with a fake request -------------------------------------------------


@pytest_twisted.async_yield_fixture
async def broker(tmp_path: Path, logged_failures: list[dict[str, Any]]) -> AsyncIterator[Broker]:
    """A broker on a real store with a task.Clock (``broker.clock``); nothing may log an error."""
    clock = task.Clock()
    clock.advance(T0)
    store = LmdbStore(str(tmp_path / "lmdb"), reactor=the_reactor(), map_size=1 << 30)
    store.open()
    b = Broker(NodeConfig(data_dir=str(tmp_path)).validate(), store, clock, "node-a", NodeMetrics())
    b.recover()
    try:
        yield b
    finally:
        await bounded(b.stop())
        await bounded(store.close())
    assert not logged_failures, [formatEvent(e) + str(e.get("log_failure", "")) for e in logged_failures]


async def publish(b: Broker, topic: str, payloads: list[str]) -> None:
    t = await bounded(b.ensure_topic(topic))
    await bounded(b.publish(t, [parse_message({"payload": p}, i) for i, p in enumerate(payloads)], "leader"))


def payloads_of(req: FakeRequest) -> list[str]:
    return [d["payload"] for k, d in req.frames() if k == "message"]


@pytest_twisted.ensureDeferred
async def test_paused_stream_times_out_while_others_continue(broker: Broker) -> None:
    """A stream paused by its transport writes nothing; after ``slow_timeout`` it writes a slow_consumer
    error, unregisters and finishes; another stream of the topic is unaffected."""
    await publish(broker, "t", ["a"])
    t = broker.topics["t"]
    reg = StreamRegistry()
    slow_req, fast_req = FakeRequest(), FakeRequest()
    slow = SSEStream(broker, t, {0: 0}, slow_req, broker.clock, registry=reg, slow_timeout=5, heartbeat=60)
    fast = SSEStream(broker, t, {0: 0}, fast_req, broker.clock, registry=reg, slow_timeout=5, heartbeat=60)
    slow_done = slow.start()
    fast.start()
    assert slow_req.headers[b"content-type"].startswith(b"text/event-stream")
    assert payloads_of(slow_req) == payloads_of(fast_req) == ["a"]
    slow.pauseProducing()
    await publish(broker, "t", ["b", "c"])
    assert payloads_of(slow_req) == ["a"]
    assert payloads_of(fast_req) == ["a", "b", "c"]
    broker.clock.advance(4.9)
    assert not slow_req.finished
    broker.clock.advance(0.2)
    assert slow_req.finished == 1
    assert slow_req.producer is None
    assert slow_done.called
    kind, data = slow_req.frames()[-1]
    assert (kind, data["code"], data["cursors"]) == ("error", "slow_consumer", {"0": 1})
    assert reg.count() == 1
    await publish(broker, "t", ["d"])
    assert payloads_of(fast_req) == ["a", "b", "c", "d"]
    assert not fast_req.finished
    fast.stopProducing()  # the connection went away
    assert reg.count() == 0
    assert not fast_req.finished


@pytest_twisted.ensureDeferred
async def test_resume_before_the_timeout_catches_up_and_keeps_the_stream(broker: Broker) -> None:
    """A stream resumed before ``slow_timeout`` writes what it missed, in order, and stays open."""
    await publish(broker, "t", ["a"])
    req = FakeRequest()
    s = SSEStream(
        broker, broker.topics["t"], {0: 0}, req, broker.clock, registry=StreamRegistry(), slow_timeout=5
    )
    s.start()
    s.pauseProducing()
    await publish(broker, "t", ["b", "c"])
    broker.clock.advance(4)
    s.resumeProducing()
    assert payloads_of(req) == ["a", "b", "c"]
    broker.clock.advance(60)
    assert not req.finished
    assert not any(k == "error" for k, _ in req.frames())
    await publish(broker, "t", ["d"])
    assert payloads_of(req) == ["a", "b", "c", "d"]
    s.close()


# -- a real ``twistd sprawl`` process -----------------------------------------------------------


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_real_node_streams_and_ends_streams_with_stopping_on_sigterm(sprawl_node: Any) -> None:
    """Against a real twistd node: a stream gets published messages; SIGTERM ends it with a
    ``stopping`` error event and a closed connection, and the node logs no error doing so."""
    node = sprawl_node
    pool = HTTPConnectionPool(the_reactor(), persistent=False)
    r = await bounded(
        treq.post(f"{node.url}/v1/topics/real/messages", json={"messages": [{"payload": "m0"}]}, pool=pool)
    )
    assert r.code == 200
    await bounded(r.content())
    c = SSEClient("/v1/topics/real/stream?from=earliest")
    await bounded(connectProtocol(TCP4ClientEndpoint(the_reactor(), "127.0.0.1", node.http_port), c))
    try:
        await c.wait_messages(1)
        r = await bounded(
            treq.post(
                f"{node.url}/v1/topics/real/messages", json={"messages": [{"payload": "m1"}]}, pool=pool
            )
        )
        await bounded(r.content())
        await c.wait_messages(2)
        assert [e["data"]["payload"] for e in c.messages] == ["m0", "m1"]
        node.signal(signal.SIGTERM)
        await bounded(c.closed, 30)
        assert c.events[-1]["event"] == "error"
        assert c.events[-1]["data"]["code"] == "stopping"
    finally:
        if not c.lost:
            c.transport.loseConnection()
        await bounded(pool.closeCachedConnections())
    node.proc.wait(30)  # already told to stop: reap it without a second SIGTERM
    assert node.stop() in (0, -signal.SIGTERM)
    text = node.log_text()
    assert "stopped cleanly" in text
    for bad in ("Traceback", "Unhandled", "was not unregistered"):
        assert bad not in text, text[-3000:]


@pytest_twisted.ensureDeferred
async def test_control_records_are_skipped_by_streams(server: Server) -> None:
    """An SSE stream never shows a control record; its cursor moves past it."""
    await server.publish("ctl", ["m0", "m1"])
    t = server.broker.topics["ctl"]
    marker = Record(2, 0, 0, None, None, None, b"", True, control=True)
    await bounded(server.broker.append_replicated(t, 0, [marker]))
    await server.publish("ctl", ["m3"])
    c = await server.connect("/v1/topics/ctl/stream?from=earliest")
    await bounded(c.wait_messages(3))
    assert c.offsets() == [0, 1, 3]
