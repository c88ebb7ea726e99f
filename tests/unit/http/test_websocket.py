"""WebSocket: ``GET /v1/topics/{topic}/ws`` with autobahn's client over real loopback TCP.

The node is in-process (real LMDB, the API on ``tcp:0:interface=127.0.0.1``,
a :class:`task.Clock` as broker and feed clock, as in test_streams), the
client is autobahn's ``WebSocketClientProtocol``.  Waits are on frames or
connection events with bounds in real seconds; nothing sleeps.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import msgspec
import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.endpoints import TCP4ClientEndpoint

from harness import bounded, the_reactor, until
from harness.inproc_ws import WS as WS
from harness.inproc_ws import WSClient as WSClient
from harness.inproc_ws import ws as ws
from sprawl.http.ws_feeds import CLOSE_SLOW_CONSUMER, GroupFeed, WSStream
from sprawl.testing import FakeBroker


def feeds(w: WS) -> list[Any]:
    return [f for f in w.server.api.streams.streams if isinstance(f, (WSStream, GroupFeed))]


@pytest_twisted.ensureDeferred
async def test_subscribe_from_earliest_then_live(ws: WS) -> None:
    """From ``earliest``: stored messages, then new ones, one JSON frame each, same shape as fetch."""
    await ws.server.publish("w", ["m0", "m1"])
    c = await ws.connect("/v1/topics/w/ws?from=earliest")
    await c.wait_messages(2)
    await ws.server.publish("w", ["m2"])
    await c.wait_messages(3)
    assert c.offsets() == [0, 1, 2]
    assert [m["payload"] for m in c.messages] == ["m0", "m1", "m2"]
    _, body = await ws.server.request("GET", "/v1/topics/w/messages?from=0")
    assert json.loads(body)["messages"] == c.messages


@pytest_twisted.ensureDeferred
async def test_publish_over_the_socket_is_acked_and_delivered(ws: WS) -> None:
    """A ``publish`` frame (single message or batch) is answered with offsets/ids and the messages
    come back on the feed; an ``id`` published twice gets the first offset."""
    await ws.server.publish("p", ["m0"])
    c = await ws.connect("/v1/topics/p/ws?from=latest")
    r1 = await c.request({"publish": {"payload": "hello", "key": "k", "id": "one"}}, "a")
    assert r1["published"]["offsets"] == [1] and r1["published"]["ids"] == ["one"]
    r2 = await c.request(
        {"publish": {"messages": [{"payload": "x"}, {"payload_b64": "AAE="}], "acks": "leader"}}, "b"
    )
    assert r2["published"]["offsets"] == [2, 3]
    r3 = await c.request({"publish": {"payload": "again", "id": "one"}}, "c")
    assert r3["published"]["offsets"] == [1] and r3["published"]["duplicates"] == [True]
    await c.wait_messages(3)
    assert c.offsets() == [1, 2, 3]
    assert c.messages[0]["key"] == "k" and c.messages[2]["payload_b64"] == "AAE="


@pytest_twisted.ensureDeferred
async def test_bad_frames_get_error_frames_and_change_nothing(ws: WS) -> None:
    """Malformed frames are answered with ``{"error": {"code", "message"}}``; the socket stays open,
    another client is untouched and nothing was written."""
    await ws.server.publish("bad", ["m0"])
    c = await ws.connect("/v1/topics/bad/ws?from=earliest")
    other = await ws.connect("/v1/topics/bad/ws?from=earliest")
    await c.wait_messages(1)
    cases = [
        b"not json",
        b"[1,2]",
        b'{"frobnicate": 1}',
        b'{"publish": 5}',
        b'{"publish": {"payload": 1}}',
        b'{"publish": {"payload": "x", "acks": "all"}}',
        b'{"publish": {"payload": "x", "extra": 1}}',
        b'{"publish": {"messages": []}}',
        b'{"ack": ["a"]}',  # no group on this socket
        b'{"ack": 7}',
        b'{"publish": {}, "ack": []}',
        b"\xff\xfe",
    ]
    for raw in cases:
        c.sendMessage(raw, isBinary=True)
    await c.when(lambda: sum("error" in f for f in c.frames) >= len(cases))
    errors = [f["error"] for f in c.frames if "error" in f]
    assert all(set(e) >= {"code", "message"} for e in errors)
    assert {e["code"] for e in errors} >= {"invalid_json", "invalid_frame", "invalid_message", "no_group"}
    r = await c.request({"publish": {"payload": "good"}}, "ok")
    assert r["published"]["offsets"] == [1]  # nothing was written by the bad frames
    await other.wait_messages(2)
    assert other.offsets() == [0, 1] and not other.closed.called


@pytest_twisted.ensureDeferred
async def test_resume_after_reconnect_loses_nothing(ws: WS) -> None:
    """A client that reconnects with ``from`` = last offset + 1 gets exactly what it missed."""
    assert (await ws.server.request("PUT", "/v1/topics/r"))[0] == 201
    c = await ws.connect("/v1/topics/r/ws?from=earliest")
    await ws.server.publish("r", [f"m{i}" for i in range(5)])
    await c.wait_messages(5)
    last = c.messages[-1]["offset"]
    c.sendClose()
    await bounded(c.closed)
    await ws.server.publish("r", [f"m{i}" for i in range(5, 9)])
    again = await ws.connect(f"/v1/topics/r/ws?from={last + 1}&partition=0")
    await ws.server.publish("r", ["m9"])
    await again.wait_messages(5)
    assert c.offsets() + again.offsets() == list(range(10))
    last_event = await ws.connect("/v1/topics/r/ws?last_event_id=0:7")
    await last_event.wait_messages(2)
    assert last_event.offsets() == [8, 9]


@pytest_twisted.ensureDeferred
async def test_group_mode_leases_acks_and_redelivers(ws: WS) -> None:
    """``?group=G``: messages carry ack ids, at most ``max_in_flight`` unacked are on the socket, an
    ack frame frees credit; a socket that closes with unacked leases has them redelivered."""
    s = ws.server
    await s.publish("g", [f"m{i}" for i in range(6)])
    code, _ = await s.request(
        "PUT", "/v1/topics/g/groups/workers", json={"start": "earliest", "ack_deadline_ms": 5000}
    )
    assert code == 201
    c = await ws.connect("/v1/topics/g/ws?group=workers&max_in_flight=2")
    await c.wait_messages(2)
    assert c.offsets() == [0, 1]
    assert all(m["ack_id"] and m["delivery_attempt"] == 1 for m in c.messages)
    r = await c.request({"ack": [c.messages[0]["ack_id"]]}, "a1")
    assert r["acked"] == 1 and r["refused"] == {}
    await c.wait_messages(3)
    r = await c.request({"ack": {"ack_ids": [c.messages[1]["ack_id"], c.messages[2]["ack_id"]]}}, "a2")
    assert r["acked"] == 2
    await c.wait_messages(5)
    assert c.offsets() == [0, 1, 2, 3, 4]
    r = await c.request({"nack": {"ack_ids": [c.messages[3]["ack_id"]]}}, "n")
    assert r["nacked"] == 1
    await c.wait_messages(6)
    # The socket closes holding leases on 4 and 5 (or 3's redelivery): another consumer gets them
    # once the lease deadline passes.
    held = {m["offset"] for m in c.messages[4:]}
    c.sendClose()
    await bounded(c.closed)
    s.clock.advance(6)
    d = await ws.connect("/v1/topics/g/ws?group=workers&max_in_flight=10")
    await d.when(lambda: {m["offset"] for m in d.messages} >= held)
    assert all(m["delivery_attempt"] >= 2 for m in d.messages)


@pytest_twisted.ensureDeferred
async def test_group_mode_extends_leases(ws: WS) -> None:
    """An ``extend`` frame keeps a lease past its old deadline (the ack after it is
    accepted); extending a settled lease is an error frame naming why; bad frames
    are error frames that leave the socket open."""
    s = ws.server
    await s.publish("ge", ["a", "b"])
    code, _ = await s.request(
        "PUT", "/v1/topics/ge/groups/w", json={"start": "earliest", "ack_deadline_ms": 1000}
    )
    assert code == 201
    c = await ws.connect("/v1/topics/ge/ws?group=w&max_in_flight=10")
    await c.wait_messages(2)
    a, b = c.messages
    r = await c.request({"extend": {"ack_ids": [a["ack_id"]], "extend_ms": 10_000}}, "e1")
    assert r["extended"] == 1 and r["ack_deadlines"] == {a["ack_id"]: a["ack_deadline"] + 9000}
    s.clock.advance(2)  # past the old deadline: b's lease ran out, a's did not
    r = await c.request({"ack": [a["ack_id"], b["ack_id"]]}, "a")
    assert r["acked"] == 1 and list(r["refused"]) == [b["ack_id"]]  # b's was not extended
    r = await c.request({"extend": {"ack_ids": [a["ack_id"]]}}, "e2")
    assert r["error"]["code"] == "lease_not_found"
    r = await c.request({"extend": {"ack_ids": [b["ack_id"]], "extend_ms": 0}}, "e3")
    assert r["error"]["code"] == "invalid_field"
    r = await c.request({"extend": ["x"]}, "e4")
    assert r["error"]["code"] == "invalid_frame"


@pytest_twisted.ensureDeferred
async def test_query_errors_and_plain_get_before_upgrade(ws: WS) -> None:
    """Bad queries are plain 4xx JSON errors before any upgrade; a GET without Upgrade gets 426."""
    s = ws.server
    await s.publish("q", ["m"])
    for path, status, code in [
        ("/v1/topics/nope/ws?group=g", 404, "topic_not_found"),
        ("/v1/topics/q/ws?from=-1", 400, "invalid_parameter"),
        ("/v1/topics/q/ws?partition=9", 404, "partition_not_found"),
        ("/v1/topics/q/ws?group=nobody", 404, "group_not_found"),
        ("/v1/topics/q/ws", 426, "upgrade_required"),
    ]:
        got, body = await s.request("GET", path)
        assert got == status, (path, body)
        err = json.loads(body)["error"]
        assert err["code"] == code, (path, err)


@pytest_twisted.ensureDeferred
async def test_slow_websocket_client_pauses_the_feed_and_is_cut_off(ws: WS) -> None:
    """A client that stops reading pauses its feed (the node stops reading from the broker for it);
    after the slow timeout it is closed with code 4008 and a reason naming its cursor, and it
    resumes from there without loss.  A fast client on the same topic gets everything meanwhile."""
    s = ws.server
    await s.publish("slow", ["m0"])
    slow = await ws.connect("/v1/topics/slow/ws?from=earliest")
    fast = await ws.connect("/v1/topics/slow/ws?from=earliest")
    await slow.wait_messages(1)
    await fast.wait_messages(1)
    (slow_feed,) = [
        f
        for f in feeds(ws)
        if f.sent == 1 and f.proto.transport.getPeer().port == slow.transport.getHost().port
    ]
    slow_feed.proto.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    slow.transport.pauseProducing()
    big = "x" * 32_000
    sent = 1
    for _ in range(200):
        if slow_feed.paused:
            break
        await s.publish("slow", [f"{sent + i}:{big}" for i in range(4)])
        sent += 4
        await fast.wait_messages(sent)
    assert slow_feed.paused, "the slow client's feed was never paused"
    # A storage read already under way when the feed paused still lands (and moves the
    # cursor); nothing is read after it.
    await until(lambda: not slow_feed.reading, "the slow feed's read in flight")
    # From here on, every write to the slow client is recorded with whether its feed was
    # paused then.  The kernel's socket buffers may still take bytes, so Twisted may resume
    # the feed for a moment (a legitimate read); what must never happen is a write while
    # paused, nor a cursor that moves with no resume in between.
    writes_paused: list[bool] = []
    resumes: list[int] = []
    send, resume = slow_feed._send, slow_feed.resumeProducing

    def recording_send(p: int, recs: list[Any]) -> None:
        writes_paused.append(slow_feed.paused)
        send(p, recs)

    def counting_resume() -> None:
        resumes.append(1)
        resume()

    slow_feed._send = recording_send  # type: ignore[method-assign]
    slow_feed.resumeProducing = counting_resume  # type: ignore[method-assign]
    cursor_at_pause = dict(slow_feed.cursors)
    await s.publish("slow", [f"{sent}:{big}"])
    sent += 1
    await fast.wait_messages(sent)
    assert not any(writes_paused), "the feed wrote to a paused client"
    if not resumes:
        assert slow_feed.cursors == cursor_at_pause  # nothing more read for it while paused
    for _ in range(200):  # after a resume that drained into kernel buffers: fill them again
        await until(lambda: not slow_feed.reading, "the slow feed's read in flight")
        if slow_feed.paused and slow_feed.cursors[0] < sent:
            break
        await s.publish("slow", [f"{sent + i}:{big}" for i in range(4)])
        sent += 4
        await fast.wait_messages(sent)
    assert slow_feed.paused and slow_feed.cursors[0] < sent, "the feed never paused short of the end"
    assert not any(writes_paused), "the feed wrote to a paused client"
    cursor_at_close = dict(slow_feed.cursors)
    s.clock.advance(31)
    assert slow_feed.closed
    slow.transport.resumeProducing()
    await bounded(slow.closed)
    assert slow.close_code == CLOSE_SLOW_CONSUMER
    assert slow.close_reason and slow.close_reason.startswith("slow_consumer")
    got = slow.offsets()
    assert got == list(range(len(got))) and len(got) < sent
    assert f"0:{cursor_at_close[0]}" in slow.close_reason
    again = await ws.connect(f"/v1/topics/slow/ws?from={len(got)}")
    await again.wait_messages(sent - len(got))
    assert again.offsets() == list(range(len(got), sent))
    assert fast.offsets() == list(range(sent)) and not fast.closed.called


@pytest_twisted.ensureDeferred
async def test_deleting_the_topic_closes_its_sockets(ws: WS) -> None:
    """A deleted topic ends its feeds with a close code and reason."""
    s = ws.server
    await s.publish("del", ["m"])
    c = await ws.connect("/v1/topics/del/ws?from=earliest")
    await c.wait_messages(1)
    code, _ = await s.request("DELETE", "/v1/topics/del")
    assert code == 204
    s.clock.advance(16)
    await bounded(c.closed)
    assert c.close_code == 4004 and "topic_deleted" in (c.close_reason or "")


@pytest.mark.parametrize("n", [1])
def test_close_codes_are_in_the_application_range(n: int) -> None:
    """Application close codes are in 4000-4999 as RFC 6455 asks."""
    from sprawl.http import ws_feeds as w

    for code in (
        w.CLOSE_SLOW_CONSUMER,
        w.CLOSE_TOPIC_DELETED,
        w.CLOSE_GROUP_DELETED,
        w.CLOSE_READ_FAILED,
        w.CLOSE_GOING_AWAY,
        w.CLOSE_TOKEN_EXPIRED,
    ):
        assert 4000 <= code <= 4999


@pytest_twisted.ensureDeferred
async def test_with_auth_the_socket_needs_subscribe_and_publish_frames_need_publish(ws: WS) -> None:
    """With authentication on, opening the socket needs subscribe (token in ``?access_token=``),
    and a publish frame from a principal without publish gets a ``forbidden`` error frame and
    writes nothing."""
    from sprawl.auth import Authenticator, TokenTable

    s = ws.server
    await s.publish("a.t", ["m0"])
    s.api.auth = Authenticator(
        TokenTable.from_json(
            {
                "tokens": [
                    {"name": "r", "token": "reader-token-0123456789", "permissions": {"a.*": ["subscribe"]}},
                    {
                        "name": "rw",
                        "token": "rw-token-0123456789",
                        "permissions": {"a.*": ["subscribe", "publish"]},
                    },
                ]
            }
        )
    )
    code, body = await s.request("GET", "/v1/topics/a.t/ws")
    assert code == 401 and json.loads(body)["error"]["code"] == "unauthorized"
    r = await ws.connect("/v1/topics/a.t/ws?from=earliest&access_token=reader-token-0123456789")
    await r.wait_messages(1)
    ans = await r.request({"publish": {"payload": "nope"}}, "p")
    assert ans["error"]["code"] == "forbidden"
    rw = await ws.connect("/v1/topics/a.t/ws?from=earliest&access_token=rw-token-0123456789")
    ans = await rw.request({"publish": {"payload": "yes"}}, "p")
    assert ans["published"]["offsets"] == [1]
    await r.wait_messages(2)
    assert [m["payload"] for m in r.messages] == ["m0", "yes"]


@pytest_twisted.ensureDeferred
async def test_node_shutdown_closes_sockets_with_a_reason(ws: WS) -> None:
    """Stopping the node's streams (shutdown) closes each socket with 4001 ``stopping``."""
    await ws.server.publish("bye", ["m"])
    c = await ws.connect("/v1/topics/bye/ws?from=earliest")
    await c.wait_messages(1)
    ws.server.api.streams.close_all()
    await bounded(c.closed)
    assert c.close_code == 4001 and (c.close_reason or "").startswith("stopping")


@pytest_twisted.ensureDeferred
async def test_frames_of_every_length_encoding_arrive_intact(ws: WS) -> None:
    """Messages of 7-bit, 16-bit and 64-bit frame lengths (batched into one write) decode intact."""
    sizes = [0, 125, 126, 5000, 65535, 70_000]
    await ws.server.publish("sizes", ["x" * n for n in sizes])
    c = await ws.connect("/v1/topics/sizes/ws?from=earliest")
    await c.wait_messages(len(sizes))
    assert [len(m["payload"]) for m in c.messages] == sizes


def test_text_frame_header_encodings() -> None:
    """The three RFC 6455 payload-length encodings, unmasked, FIN + text opcode."""
    from sprawl.http.ws_feeds import text_frame

    assert text_frame(b"a" * 5)[:2] == bytes([0x81, 5])
    assert text_frame(b"a" * 200)[:4] == bytes([0x81, 126, 0, 200])
    assert text_frame(b"a" * 70_000)[:10] == bytes([0x81, 127]) + (70_000).to_bytes(8, "big")


def _fuzz_protocol() -> tuple[Any, list[bytes], FakeBroker]:
    from twisted.internet import task

    from sprawl.cluster.local import LocalDataPlane
    from sprawl.delivery.streams import StreamRegistry
    from sprawl.http.websocket import SocketParts, SprawlWSProtocol

    broker = FakeBroker("fz")
    clock = task.Clock()

    class _Factory:
        parts = SocketParts(broker, LocalDataPlane(broker, clock), clock, StreamRegistry())  # type: ignore[arg-type]
        topic = broker.topic
        principal = None

    proto = SprawlWSProtocol()
    proto.factory = _Factory()  # type: ignore[assignment]
    # (no transport: not open, so its answers go through sendMessage, captured here)
    proto.state = SprawlWSProtocol.STATE_CONNECTING
    sent: list[bytes] = []
    proto.sendMessage = lambda payload, isBinary=False: sent.append(payload)  # type: ignore[method-assign]
    return proto, sent, broker


def _one_answer_publishing_only_if_valid(frame: bytes) -> None:
    """The binary ``frame`` gets one answer frame: an error with code and message (never an
    internal error) and nothing published, or ``published`` and one publish."""
    proto, sent, broker = _fuzz_protocol()
    proto.onMessage(frame, True)
    assert len(sent) == 1, sent
    answer = json.loads(sent[0])
    if "error" in answer:
        assert set(answer["error"]) >= {"code", "message"}
        assert answer["error"]["code"] != "internal_error", answer
        assert broker.published == []
    else:
        assert "published" in answer and len(broker.published) == 1


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
            ),
            max_leaves=12,
        ).map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries(
            {
                "publish": st.dictionaries(
                    st.sampled_from(
                        ["payload", "payload_b64", "key", "id", "acks", "headers", "messages", "x"]
                    ),
                    st.none()
                    | st.integers()
                    | st.text(max_size=8)
                    | st.lists(st.text(max_size=4), max_size=2),
                    max_size=4,
                )
            }
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_fuzzed_client_frames_get_one_answer_and_never_raise(frame: bytes) -> None:
    """Any client frame gets exactly one answer -- an error frame with code and message, or a
    ``published`` answer for a valid publish -- and nothing is published by an invalid frame."""
    _one_answer_publishing_only_if_valid(frame)


_packed_values = st.none() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8) | st.binary(max_size=8)
_packed_message = st.dictionaries(
    st.sampled_from(["payload", "key", "id", "headers", "payload_b64", "x"]),
    _packed_values | st.dictionaries(st.text(max_size=4), _packed_values, max_size=2),
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300).map(lambda b: b"\x82" + b),  # a fixmap header, then anything
        st.fixed_dictionaries(
            {
                "publish": st.fixed_dictionaries(
                    {"messages": st.lists(_packed_message, max_size=5)},
                    optional={"acks": st.sampled_from(["leader", "none", "all", ""]) | _packed_values},
                )
                | _packed_values,
            },
            optional={"ref": _packed_values, "ack": _packed_values},
        ).map(msgspec.msgpack.encode),
    )
)
def test_fuzzed_msgpack_frames_get_one_answer_and_never_raise(frame: bytes) -> None:
    """Any binary msgpack frame gets exactly one JSON answer -- an error frame with code and
    message (never an internal error), or ``published`` for a valid one -- and nothing is
    published by an invalid frame."""
    _one_answer_publishing_only_if_valid(frame)


@pytest_twisted.ensureDeferred
async def test_the_node_pings_idle_sockets(ws: WS) -> None:
    """autobahn's auto-ping: an idle socket is pinged every ``ping_interval`` and the client's
    pong keeps it open."""
    ws.server.api.ws_options["ping_interval"] = 0.5
    await ws.server.publish("ping", ["m"])
    pings: list[bytes] = []

    class Pinged(WSClient):
        def onPing(self, payload: bytes) -> None:
            pings.append(payload)
            super().onPing(payload)
            self._check()

    port = ws.server.port.getHost().port
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/v1/topics/ping/ws?from=earliest")
    factory.protocol = Pinged
    c: WSClient = await bounded(TCP4ClientEndpoint(the_reactor(), "127.0.0.1", port).connect(factory))
    ws.clients.append(c)
    await bounded(c.opened)
    await c.when(lambda: len(pings) >= 2)
    assert not c.closed.called


@pytest_twisted.ensureDeferred
async def test_deleting_the_topic_closes_group_sockets_at_once(ws: WS) -> None:
    """A group socket waiting in a long pull is closed with 4004 as soon as its topic is deleted."""
    s = ws.server
    await s.publish("gdel", ["m"])
    code, _ = await s.request("PUT", "/v1/topics/gdel/groups/g", json={"start": "earliest"})
    assert code == 201
    c = await ws.connect("/v1/topics/gdel/ws?group=g")
    await c.wait_messages(1)
    code, _ = await s.request("DELETE", "/v1/topics/gdel")
    assert code == 204
    await bounded(c.closed)  # no clock advance: the pull's 25 s wait is not what ends it
    assert c.close_code == 4004


@pytest_twisted.ensureDeferred
async def test_from_time_resolves_in_storage_then_upgrades(ws: WS) -> None:
    """``from_time`` is resolved by a storage scan (asynchronously) before the upgrade."""
    await ws.server.publish("ft", ["a", "b"])
    c = await ws.connect("/v1/topics/ft/ws?from_time=0")
    await c.wait_messages(2)
    assert c.offsets() == [0, 1]


# -- hostile input and expiring credentials (issue 14, item 6) -------------------------------------


async def _connect_with_origin(w: WS, path: str, origin: str | None) -> WSClient:
    """Like ``WS.connect``, with the ``Origin`` header a browser would send."""
    port = w.server.port.getHost().port
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}{path}", origin=origin)
    factory.protocol = WSClient
    factory.setProtocolOptions(closeHandshakeTimeout=2.0)
    c: WSClient = await bounded(TCP4ClientEndpoint(the_reactor(), "127.0.0.1", port).connect(factory))
    w.clients.append(c)
    return c


@pytest_twisted.ensureDeferred
async def test_upgrade_from_another_origin_is_refused(ws: WS) -> None:
    """A page of another web origin cannot open a socket (WebSockets are never preflighted): the
    upgrade is answered 403 origin_not_allowed; the node's own origin and origin-less clients may."""
    await ws.server.publish("or", ["m0"])
    evil = await _connect_with_origin(ws, "/v1/topics/or/ws?from=earliest", "http://evil.example")
    with pytest.raises(AssertionError, match="closed before open"):
        await bounded(evil.opened)
    assert not feeds(ws)
    port = ws.server.port.getHost().port
    own = await _connect_with_origin(ws, "/v1/topics/or/ws?from=earliest", f"http://127.0.0.1:{port}")
    await bounded(own.opened)
    await own.wait_messages(1)
    code, body = await ws.server.request(
        "GET",
        "/v1/topics/or/ws",
        headers={"Upgrade": "websocket", "Connection": "Upgrade", "Origin": "http://evil.example"},
    )
    assert code == 403 and json.loads(body)["error"]["code"] == "origin_not_allowed"


@pytest_twisted.ensureDeferred
async def test_deep_json_frames_are_invalid_json_not_internal_errors(ws: WS) -> None:
    """A frame nested deeper than the decoder allows is answered ``invalid_json`` (it was an
    ``internal_error`` with a logged traceback); the socket stays usable."""
    await ws.server.publish("dj", ["m0"])
    c = await ws.connect("/v1/topics/dj/ws?from=earliest")
    for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"publish":' + b"[" * 50_000 + b"]" * 50_000 + b"}"):
        c.sendMessage(raw, isBinary=False)
    await c.when(lambda: sum("error" in f for f in c.frames) >= 2)
    assert [f["error"]["code"] for f in c.frames if "error" in f] == ["invalid_json", "invalid_json"]
    r = await c.request({"publish": {"payload": "fine"}}, "ok")
    assert r["published"]["offsets"] == [1]


SECRET = b"s" * 40


async def _jwt_socket(w: WS, path: str, ttl: float) -> tuple[WSClient, float]:
    """A socket opened with a JWT (``?access_token=``) expiring ``ttl`` s from now; the server's
    clock is set to the wall clock first (JWTs carry wall-clock times)."""
    import time

    import jwt

    from sprawl.auth import Authenticator, JWTVerifier

    s = w.server
    s.api.auth = Authenticator(None, JWTVerifier(SECRET))
    now = time.time()
    if s.clock.seconds() < now:
        s.clock.advance(now - s.clock.seconds())
    exp = int(now + ttl)
    tok = jwt.encode({"sub": "svc", "permissions": {"*": ["admin"]}, "exp": exp}, SECRET, algorithm="HS256")
    sep = "&" if "?" in path else "?"
    return await w.connect(f"{path}{sep}access_token={tok}"), float(exp)


@pytest_twisted.ensureDeferred
async def test_a_socket_opened_with_a_jwt_is_closed_when_it_expires(ws: WS) -> None:
    """Cursor mode: the socket is closed with 4401 ``token_expired`` (and the cursor to resume
    from) once the token's exp plus the accepted 30 s leeway has passed -- not before."""
    s = ws.server
    await s.publish("exp", ["m0"])
    c, exp = await _jwt_socket(ws, "/v1/topics/exp/ws?from=earliest", 600)
    await c.wait_messages(1)
    s.clock.advance(exp + 29 - s.clock.seconds())
    r = await c.request({"publish": {"payload": "m1"}}, "p")  # still allowed to publish, too
    assert r["published"]["offsets"] == [1]
    await c.wait_messages(2)
    assert not c.closed.called
    s.clock.advance(2)
    await bounded(c.closed)
    assert c.close_code == 4401
    assert (c.close_reason or "").startswith("token_expired") and "0:2" in (c.close_reason or "")
    assert not feeds(ws)


@pytest_twisted.ensureDeferred
async def test_a_group_socket_opened_with_a_jwt_is_closed_when_it_expires(ws: WS) -> None:
    """Group mode too: closed with 4401; its unacked leases are redelivered as usual."""
    s = ws.server
    await s.publish("gexp", ["m0"])
    code, _ = await s.request("PUT", "/v1/topics/gexp/groups/w", json={"start": "earliest"})
    assert code == 201
    c, exp = await _jwt_socket(ws, "/v1/topics/gexp/ws?group=w", 60)
    await c.wait_messages(1)
    s.clock.advance(exp + 31 - s.clock.seconds())
    await bounded(c.closed)
    assert c.close_code == 4401 and (c.close_reason or "").startswith("token_expired")


class _FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.producer: Any = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.writes.append(data)


class _FakeProto:
    """Just enough of the socket for a feed: raw frame writes to a recording transport."""

    def __init__(self) -> None:
        self.transport = _FakeTransport()
        self.closed: tuple[int, str] | None = None

    def can_write_raw(self) -> bool:
        return True

    def close_feed(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def _frames(data: bytes) -> list[dict[str, Any]]:
    """Decode unmasked server text frames."""
    out = []
    i = 0
    while i < len(data):
        n = data[i + 1] & 0x7F
        i += 2
        if n == 126:
            n = int.from_bytes(data[i : i + 2], "big")
            i += 2
        elif n == 127:
            n = int.from_bytes(data[i : i + 8], "big")
            i += 8
        out.append(json.loads(data[i : i + n]))
        i += n
    return out


@pytest_twisted.ensureDeferred
async def test_each_websocket_write_is_bounded_by_max_bytes(ws: WS) -> None:
    """Cursor mode writes at most ``max_bytes`` of frames per transport write (one message at
    least); group mode leases at most ``max_bytes`` of messages per pull -- and everything is
    delivered, in order."""
    from sprawl.delivery.streams import StreamRegistry

    s = ws.server
    big = "a" * 100_000
    await s.publish("wb", [f"{i}{big}" for i in range(6)])
    t = s.broker.topics["wb"]
    proto = _FakeProto()
    feed = WSStream(proto, s.broker, t, {0: 0}, None, s.clock, registry=StreamRegistry(), max_bytes=250_000)
    feed.start()
    assert len(proto.transport.writes) == 3 and all(len(w) <= 250_000 for w in proto.transport.writes)
    assert [m["offset"] for m in _frames(b"".join(proto.transport.writes))] == list(range(6))
    feed.close()
    await s.request("PUT", "/v1/topics/wb/groups/w", json={"start": "earliest"})
    gproto = _FakeProto()
    g = t.groups["w"]
    gfeed = GroupFeed(gproto, s.broker, t, g, s.clock, registry=StreamRegistry(), max_bytes=250_000)
    gfeed.start()
    await until(lambda: len(gfeed.outstanding) == 6, "six leases on the socket")
    writes = gproto.transport.writes
    assert len(writes) == 3 and all(len(_frames(w)) == 2 for w in writes)
    assert [m["offset"] for m in _frames(b"".join(writes))] == list(range(6))
    assert all(m["delivery_attempt"] == 1 for m in _frames(b"".join(writes)))
    gfeed.close()
