"""Subscribing before the first publish (in process).

Where topics are auto-created, an SSE stream, a WebSocket feed and a long-poll
fetch of a topic that does not exist yet wait for it: the stream is open (200,
heartbeats, counted with the other streams), and once the first publish
creates the topic it starts at the topic's first offset, whatever ``from``
said -- so nothing published after the subscription is missed.  Where topics
are not auto-created they stay a 404.  A consumer group may be defined on a
missing topic: ``PUT .../groups/G`` creates the topic as a publish would.

SSE and WebSocket run over real loopback sockets against the in-process node
of test_streams (real LMDB, a ``task.Clock`` for heartbeats); long-polls and
groups go through ``StubTreq`` (test_http_api's ``Node``), where the clock
moves the deadline; the fixtures are theirs (imported by name).  Every wait
is bounded; nothing sleeps.
"""

from __future__ import annotations

import json

import pytest_twisted
import treq
from twisted.internet.defer import CancelledError

from harness import bounded, until
from harness.inproc_http import Node, assert_error
from harness.inproc_http import node as node
from harness.inproc_sse import Server
from harness.inproc_sse import server as server
from harness.inproc_ws import WS
from harness.inproc_ws import ws as ws

# -- SSE -----------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_stream_of_a_missing_topic_waits_with_heartbeats_and_gets_the_first_publish(
    server: Server,
) -> None:
    """The stream opens (200, counted as a stream), beats while the topic does not exist, and
    gets the first publish -- which created the topic -- and what follows, in order."""
    c = await server.connect("/v1/topics/later/stream")
    assert "later" not in server.broker.topics
    assert "waiting for topic later to be created" in c.comments
    assert server.api.streams.count() == 1
    assert server.broker.new_topics.count() == 1
    server.clock.advance(15)
    await c.when(lambda: "keepalive" in c.comments)
    await server.publish("later", ["first", "second"])
    await c.wait_messages(2)
    await server.publish("later", ["third"])
    await c.wait_messages(3)
    assert c.offsets() == [0, 1, 2]
    assert [e["data"]["payload"] for e in c.messages] == ["first", "second", "third"]
    assert [e["id"] for e in c.messages] == ["0:0", "0:1", "0:2"]
    assert server.broker.new_topics.count() == 0


@pytest_twisted.ensureDeferred
async def test_from_latest_on_a_missing_topic_misses_nothing_published_after_it(server: Server) -> None:
    """``from=latest`` (and an offset, and ``from_time``) on a missing topic start at its first
    offset once it exists: a first batch of three reaches all of them whole."""
    latest = await server.connect("/v1/topics/t/stream?from=latest")
    offset = await server.connect("/v1/topics/t/stream?from=7")
    timed = await server.connect("/v1/topics/t/stream?from_time=0")
    await server.publish("t", ["a", "b", "c"])
    for c in (latest, offset, timed):
        await c.wait_messages(3)
        assert c.offsets() == [0, 1, 2]


@pytest_twisted.ensureDeferred
async def test_waiting_for_a_topic_created_with_more_partitions(server: Server) -> None:
    """A topic created by ``PUT`` with several partitions: an all-partitions stream follows each
    from 0; a stream of partition 2 gets partition 2 only; one of a partition the topic lacks
    ends with an ``error`` event ``partition_not_found``."""
    every = await server.connect("/v1/topics/wide/stream")
    two = await server.connect("/v1/topics/wide/stream?partition=2")
    nine = await server.connect("/v1/topics/wide/stream?partition=9")
    code, body = await server.request("PUT", "/v1/topics/wide", json={"partitions": 4})
    assert code == 201, body
    await nine.wait_event("error")
    await bounded(nine.closed)
    assert nine.events[-1]["data"]["code"] == "partition_not_found"
    r = await bounded(
        treq.post(
            f"{server.url}/v1/topics/wide/messages",
            json={"messages": [{"payload": f"m{i}", "key": f"k{i}"} for i in range(20)]},
            pool=server.pool,
        )
    )
    answer = await bounded(r.json())
    assert r.code == 200, answer
    await every.wait_messages(20)
    in_two = [o for p, o in zip(answer["partitions"], answer["offsets"], strict=True) if p == 2]
    assert in_two, answer
    await two.wait_messages(len(in_two))
    assert two.offsets() == in_two
    assert {e["data"]["partition"] for e in two.messages} == {2}


@pytest_twisted.ensureDeferred
async def test_leaving_or_stopping_while_waiting_releases_everything(server: Server) -> None:
    """A client that leaves while waiting drops its waiter and its stream; the node's shutdown
    ends a waiting stream with ``stopping`` like any other."""
    gone = await server.connect("/v1/topics/never/stream")
    await gone.disconnect()
    await until(lambda: server.api.streams.count() == 0, "the server to notice the closed socket")
    assert server.broker.new_topics.count() == 0
    stays = await server.connect("/v1/topics/never/stream")
    server.api.streams.close_all()
    await bounded(stays.closed)
    assert stays.events[-1]["event"] == "error"
    assert stays.events[-1]["data"]["code"] == "stopping"
    assert server.broker.new_topics.count() == 0


@pytest_twisted.ensureDeferred
async def test_without_auto_create_or_with_a_bad_name_there_is_no_wait(server: Server) -> None:
    """Where topics are not auto-created a stream of a missing topic is a 404; a name no topic
    can have is a 400 either way."""
    bad = await server.connect("/v1/topics/bad%20name/stream", hello=False)
    await bounded(bad.closed)
    assert bad.status == 400 and json.loads(bad.body)["error"]["code"] == "invalid_topic_name"
    server.broker.config.auto_create_topics = False  # as --no-auto-create
    c = await server.connect("/v1/topics/nothing/stream", hello=False)
    await bounded(c.closed)
    assert c.status == 404 and json.loads(c.body)["error"]["code"] == "topic_not_found"
    assert server.broker.new_topics.count() == 0


# -- WebSocket ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_websocket_on_a_missing_topic_waits_then_delivers(ws: WS) -> None:
    """A socket opened on a missing topic (``from=latest``) gets the first publish made over
    HTTP, from offset 0."""
    c = await ws.connect("/v1/topics/wl/ws?from=latest")
    assert ws.server.broker.new_topics.count() == 1
    await ws.server.publish("wl", ["a", "b"])
    await c.wait_messages(2)
    assert c.offsets() == [0, 1]


@pytest_twisted.ensureDeferred
async def test_publishing_on_a_waiting_socket_creates_the_topic(ws: WS) -> None:
    """A publish frame on a socket opened before its topic existed creates the topic (as
    ``POST .../messages`` does) and the socket receives the message it published."""
    c = await ws.connect("/v1/topics/self/ws")
    answer = await c.request({"publish": {"payload": "hi"}}, "p1")
    assert answer["published"]["offsets"] == [0], answer
    assert "self" in ws.server.broker.topics
    await c.wait_messages(1)
    assert c.messages[0]["payload"] == "hi"
    again = await c.request({"publish": {"payload": "again"}}, "p2")
    assert again["published"]["offsets"] == [1], again
    await c.wait_messages(2)


@pytest_twisted.ensureDeferred
async def test_websocket_waiting_for_a_partition_the_topic_lacks_is_closed_with_4404(ws: WS) -> None:
    """The topic appears without the asked partition: the socket closes with 4404 and why."""
    c = await ws.connect("/v1/topics/narrow/ws?partition=3")
    await ws.server.publish("narrow", ["m"])
    await bounded(c.closed)
    assert c.close_code == 4404 and (c.close_reason or "").startswith("partition_not_found"), c.close_reason


# -- long-poll fetch -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_long_poll_of_a_missing_topic_waits_for_its_first_publish(node: Node) -> None:
    """``wait_ms`` on a missing topic waits; the first publish answers it from offset 0, also
    with ``from=latest``."""
    plain = node.http.start("GET", "/v1/topics/lp/messages?wait_ms=5000")
    latest = node.http.start("GET", "/v1/topics/lp/messages?wait_ms=5000&from=latest")
    assert not plain.finished and not latest.finished
    assert node.broker.new_topics.count() == 2
    await node.publish("lp", [{"payload": "m0"}, {"payload": "m1"}])
    for pending in (plain, latest):
        r = await pending.result()
        assert r.code == 200, r
        body = r.json()
        assert [m["offset"] for m in body["messages"]] == [0, 1]
        assert body["next"] == 2 and body["high_watermark"] == 2


@pytest_twisted.ensureDeferred
async def test_long_poll_of_a_topic_still_missing_at_the_deadline_answers_empty(node: Node) -> None:
    """At the deadline, still no topic: 200, no messages, ``next`` 0 (where it will start);
    no topic was created and no waiter is left."""
    pending = node.http.start("GET", "/v1/topics/quiet/messages?wait_ms=3000&partition=0")
    node.clock.advance(2.9)
    assert not pending.finished
    node.clock.advance(0.2)
    r = await pending.result()
    assert r.code == 200, r
    assert r.json() == {
        "messages": [],
        "next": 0,
        "high_watermark": 0,
        "next_by_partition": {"0": 0},
        "high_watermarks": {"0": 0},
    }
    assert "quiet" not in node.broker.topics
    assert node.broker.new_topics.count() == 0


@pytest_twisted.ensureDeferred
async def test_plain_fetch_and_no_auto_create_stay_404(node: Node) -> None:
    """Without ``wait_ms`` a fetch of a missing topic is a 404; where topics are not
    auto-created, a long-poll is too; bad parameters are 400 before any wait."""
    assert_error(await node.http.get("/v1/topics/none/messages"), 404, "topic_not_found")
    assert_error(
        await node.http.get("/v1/topics/none/messages?wait_ms=1000&from=soon"), 400, "invalid_parameter"
    )
    assert_error(await node.http.get("/v1/topics/none/messages?wait_ms=-1"), 400, "invalid_parameter")
    node.broker.config.auto_create_topics = False
    assert_error(await node.http.get("/v1/topics/none/messages?wait_ms=1000"), 404, "topic_not_found")
    assert node.broker.new_topics.count() == 0


# -- consumer groups ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_defining_a_group_on_a_missing_topic_creates_the_topic(node: Node) -> None:
    """``PUT .../groups/G`` on a missing topic creates the topic (as a publish would) and the
    group from ``earliest`` by default, so a consumer started before any producer gets the
    first message; pulling a group of a missing topic is a 404; without auto-create the PUT
    is a 404 and creates nothing."""
    assert_error(await node.http.post("/v1/topics/jobs/groups/w/pull", json={}), 404, "topic_not_found")
    r = await node.http.put("/v1/topics/jobs/groups/w", json={})
    assert r.code == 201, r
    assert "jobs" in node.broker.topics
    pull = node.http.start("POST", "/v1/topics/jobs/groups/w/pull", json={"max": 10, "wait_ms": 5000})
    await node.publish("jobs", [{"payload": "job-0"}])
    got = (await pull.result()).json()
    assert [m["payload"] for m in got["messages"]] == ["job-0"]
    node.broker.config.auto_create_topics = False
    assert_error(await node.http.put("/v1/topics/other/groups/w", json={}), 404, "topic_not_found")
    assert "other" not in node.broker.topics


def test_cancelled_waiters_are_forgotten() -> None:
    """A cancelled wait leaves nothing behind; firing wakes only the waiters of that name."""
    from sprawl.delivery.topic_waiters import TopicWaiters

    w = TopicWaiters()
    a, b, other = w.wait("t"), w.wait("t"), w.wait("u")
    a.cancel()
    a.addErrback(lambda f: f.trap(CancelledError))
    assert w.count() == 2
    w.fire("t")
    assert b.called and not other.called and w.count() == 1
    other.cancel()
    other.addErrback(lambda f: f.trap(CancelledError))
    assert w.count() == 0
