"""Pipelined WebSocket publish: many ``publish`` frames in flight on one socket, each answered
with its own ``ref``; frames beyond the socket's hard in-flight bounds (count, bytes) are
refused with ``too_many_in_flight`` and store nothing; ``feed=none`` sockets carry answers only.  autobahn's client over real loopback
TCP against the in-process node (:mod:`harness.inproc_ws`); every wait bounded."""

from __future__ import annotations

import base64
import json
from typing import Any

import msgspec
import pytest
import pytest_twisted

from harness.inproc_ws import WS as WS
from harness.inproc_ws import WSClient
from harness.inproc_ws import ws as ws
from sprawl.http import websocket


def answers(c: WSClient) -> dict[Any, dict[str, Any]]:
    return {f["ref"]: f for f in c.frames if "ref" in f}


async def stored(w: WS, topic: str) -> list[str]:
    _, body = await w.server.request("GET", f"/v1/topics/{topic}/messages?from=0&limit=1000")
    return [m["payload"] for m in json.loads(body)["messages"]]


async def burst(w: WS, topic: str, frames: list[dict[str, Any]]) -> WSClient:
    """Send every frame (``ref`` = its index) in one go, wait for an answer to each."""
    await w.server.publish(topic, ["first"])
    c = await w.connect(f"/v1/topics/{topic}/ws?feed=none")
    for i, f in enumerate(frames):
        c.send({**f, "ref": i})
    await c.when(lambda: len(answers(c)) >= len(frames))
    return c


@pytest_twisted.ensureDeferred
async def test_many_publishes_in_flight_are_each_answered_by_ref(ws: WS) -> None:
    """200 frames sent without waiting: one answer per ref, every message stored once."""
    frames = [{"publish": {"payload": f"m{i}", "acks": "leader"}} for i in range(200)]
    c = await burst(ws, "pipe", frames)
    got = answers(c)
    assert sorted(got) == list(range(200)) and all("published" in a for a in got.values())
    offsets = [got[i]["published"]["offsets"][0] for i in range(200)]
    assert sorted(offsets) == list(range(1, 201))
    assert sorted(await stored(ws, "pipe")) == sorted(["first", *(f"m{i}" for i in range(200))])


@pytest_twisted.ensureDeferred
async def test_frames_beyond_the_in_flight_count_are_refused_unstored(
    ws: WS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With room for 3 publishes in flight, a burst of 10 gets 3 answers and 7
    ``too_many_in_flight`` errors (with their refs); only the 3 are stored, and the socket
    publishes again once they are answered."""
    monkeypatch.setattr(websocket, "MAX_INFLIGHT_PUBLISHES", 3)
    frames = [{"publish": {"payload": f"m{i}", "acks": "leader"}} for i in range(10)]
    c = await burst(ws, "cap", frames)
    got = answers(c)
    ok = sorted(r for r, a in got.items() if "published" in a)
    refused = sorted(r for r, a in got.items() if "error" in a)
    assert ok == [0, 1, 2] and refused == list(range(3, 10))
    assert {got[r]["error"]["code"] for r in refused} == {"too_many_in_flight"}
    assert sorted(await stored(ws, "cap")) == ["first", "m0", "m1", "m2"]
    again = await c.request({"publish": {"payload": "later"}}, "later")
    assert "published" in again


@pytest_twisted.ensureDeferred
async def test_frames_beyond_the_in_flight_bytes_are_refused(ws: WS, monkeypatch: pytest.MonkeyPatch) -> None:
    """With 1,000 bytes of publish frames in flight allowed, frames of ~400 bytes: two fit,
    the rest of the burst is refused; one frame always fits however large."""
    monkeypatch.setattr(websocket, "MAX_INFLIGHT_PUBLISH_BYTES", 1000)
    frames = [{"publish": {"payload": f"{i}" + "x" * 380, "acks": "leader"}} for i in range(5)]
    c = await burst(ws, "bytes", frames)
    got = answers(c)
    assert sorted(r for r, a in got.items() if "published" in a) == [0, 1]
    assert all(got[r]["error"]["code"] == "too_many_in_flight" for r in (2, 3, 4))
    big = await c.request({"publish": {"payload": "y" * 5000}}, "big")
    assert "published" in big
    assert len(await stored(ws, "bytes")) == 4


@pytest_twisted.ensureDeferred
async def test_a_feed_none_socket_carries_answers_only(ws: WS) -> None:
    """``feed=none``: publishes are answered, no message frames come (not even its own); a
    topic not created yet is created by the first publish."""
    c = await ws.connect("/v1/topics/quiet/ws?feed=none")
    got = await c.request({"publish": {"messages": [{"payload": "a"}, {"payload": "b"}]}}, "r")
    assert got["published"]["offsets"] == [0, 1]
    await c.request({"publish": {"payload": "c"}}, "marker")
    assert c.messages == [] and all("ref" in f for f in c.frames)
    assert await stored(ws, "quiet") == ["a", "b", "c"]


@pytest.mark.parametrize(
    "query", ["feed=all", "feed=", "feed=none&group=g", "feed=none&from=0", "feed=none&last_event_id=0:1"]
)
@pytest_twisted.ensureDeferred
async def test_a_bad_feed_query_is_a_400(ws: WS, query: str) -> None:
    await ws.server.publish("fq", ["x"])
    status, body = await ws.server.request("GET", f"/v1/topics/fq/ws?{query}")
    assert status == 400 and b"invalid_parameter" in body


# -- the msgpack publish frame ------------------------------------------------------------

_pack = msgspec.msgpack.Encoder().encode


def send_packed(c: WSClient, frame: Any) -> None:
    """A binary frame: ``frame`` as msgpack (or as it is, if bytes)."""
    c.sendMessage(frame if isinstance(frame, bytes) else _pack(frame), isBinary=True)


async def ask_packed(c: WSClient, frame: Any, ref: str) -> dict[str, Any]:
    send_packed(c, {**frame, "ref": ref})
    await c.when(lambda: any(f.get("ref") == ref for f in c.frames))
    return next(f for f in c.frames if f.get("ref") == ref)


@pytest_twisted.ensureDeferred
async def test_a_msgpack_frame_publishes_many_messages_with_binary_payloads(ws: WS) -> None:
    """One binary msgpack frame of 100 messages (text, a raw-bytes payload, key, headers,
    id, acks) is stored as the JSON batch would be and answered by a JSON text frame
    carrying its ``ref``; the upgrade answer names the frames the node reads."""
    c = await ws.connect("/v1/topics/packed/ws?feed=none")
    assert c.http_headers.get(websocket.FRAMES_HEADER.lower()) == "json, msgpack"
    msgs = [
        {"payload": "hello", "key": "k", "headers": {"h": "v"}, "id": "m-1"},
        {"payload": b"\x00\xff\x80bin"},
        *({"payload": f"p{i}"} for i in range(98)),
    ]
    got = await ask_packed(c, {"publish": {"messages": msgs, "acks": "leader"}}, "r1")
    assert got["published"]["offsets"] == list(range(100)) and got["published"]["acks"] == "leader"
    assert got["published"]["ids"][0] == "m-1"
    _, body = await ws.server.request("GET", "/v1/topics/packed/messages?from=0&limit=1000")
    stored_msgs = json.loads(body)["messages"]
    assert stored_msgs[0]["key"] == "k" and stored_msgs[0]["headers"] == {"h": "v"}
    assert base64.b64decode(stored_msgs[1]["payload_b64"]) == b"\x00\xff\x80bin"
    assert [m["payload"] for m in stored_msgs[2:]] == [f"p{i}" for i in range(98)]
    # An integer ref comes back as an integer; acks default to quorum (one node: stored).
    send_packed(c, {"publish": {"messages": [{"payload": "q"}]}, "ref": 7})
    await c.when(lambda: any(f.get("ref") == 7 for f in c.frames))
    assert next(f for f in c.frames if f.get("ref") == 7)["published"]["acks"] == "quorum"


@pytest_twisted.ensureDeferred
async def test_a_binary_frame_of_json_is_still_read_as_json(ws: WS) -> None:
    """A binary frame that is not a msgpack map is read as JSON, as before the msgpack frame."""
    c = await ws.connect("/v1/topics/binjson/ws?feed=none")
    send_packed(c, json.dumps({"publish": {"payload": "j"}, "ref": "j"}).encode())
    await c.when(lambda: any(f.get("ref") == "j" for f in c.frames))
    assert await stored(ws, "binjson") == ["j"]


BAD_PACKED: list[tuple[Any, str, bool]] = [
    # (frame, error code, whether the answer carries the ref "x")
    (b"\x81\xa7publish", "invalid_msgpack", False),  # truncated
    ({"ack": ["a"], "ref": "x"}, "invalid_frame", False),  # binary frames publish only
    ({"publish": {"messages": []}, "ref": "x"}, "invalid_messages", True),
    ({"publish": {"messages": [{"payload": 5}]}, "ref": "x"}, "invalid_msgpack", True),
    ({"publish": {"messages": [{"payload": "a", "x": 1}]}, "ref": "x"}, "invalid_msgpack", True),
    ({"publish": {"messages": [{"payload": "a", "id": ""}]}, "ref": "x"}, "invalid_message", True),
    ({"publish": {"messages": [{"payload": "a"}], "acks": "all"}, "ref": "x"}, "invalid_acks", True),
    ({"publish": {"messages": [{"payload": "a"}]}, "ref": 1.5}, "invalid_frame", False),
    ({"publish": "nope", "ref": "x"}, "invalid_msgpack", True),
]


@pytest_twisted.ensureDeferred
async def test_bad_msgpack_frames_get_error_frames_and_store_nothing(ws: WS) -> None:
    """Each bad binary frame gets the JSON frames' error shape (with its ``ref`` when the
    frame's envelope could be read), stores nothing, and the socket goes on publishing."""
    c = await ws.connect("/v1/topics/badpack/ws?feed=none")
    for n, (frame, code, with_ref) in enumerate(BAD_PACKED):
        send_packed(c, frame)
        await c.when(lambda n=n: len(c.frames) > n)
        err = c.frames[n]
        assert err["error"]["code"] == code and err["error"]["message"], (frame, err)
        assert (err.get("ref") == "x") == with_ref, (frame, err)
    ok = await ask_packed(c, {"publish": {"messages": [{"payload": "fine"}]}}, "ok")
    assert ok["published"]["offsets"] == [0]
    assert await stored(ws, "badpack") == ["fine"]


@pytest_twisted.ensureDeferred
async def test_msgpack_frames_are_bounded_in_count_and_in_flight(
    ws: WS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More messages than ``max_batch_messages`` in one frame is ``batch_too_large``; frames
    beyond the socket's in-flight bound are ``too_many_in_flight`` with their refs, unstored."""
    limit = ws.server.broker.config.max_batch_messages
    c = await ws.connect("/v1/topics/packcap/ws?feed=none")
    big = await ask_packed(c, {"publish": {"messages": [{"payload": "m"}] * (limit + 1)}}, "big")
    assert big["error"]["code"] == "batch_too_large"
    monkeypatch.setattr(websocket, "MAX_INFLIGHT_PUBLISHES", 3)
    for i in range(10):
        send_packed(c, {"publish": {"messages": [{"payload": f"m{i}"}], "acks": "leader"}, "ref": i})
    await c.when(lambda: len(answers(c)) >= 11)
    got = answers(c)
    assert sorted(r for r in range(10) if "published" in got[r]) == [0, 1, 2]
    assert {got[r]["error"]["code"] for r in range(3, 10)} == {"too_many_in_flight"}
    assert sorted(await stored(ws, "packcap")) == ["m0", "m1", "m2"]


# -- msgpack frames read together are published together ----------------------------------


def count_publishes(w: WS, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the broker's publish calls from now on."""
    calls: list[int] = []
    real = w.server.broker.publish

    def publish(topic: Any, records: list[Any], *args: Any, **kwargs: Any) -> Any:
        calls.append(len(records))
        return real(topic, records, *args, **kwargs)

    monkeypatch.setattr(w.server.broker, "publish", publish)
    return calls


@pytest_twisted.ensureDeferred
async def test_msgpack_frames_of_one_read_are_one_publish_answered_each_by_its_part(
    ws: WS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 msgpack frames written in one reactor turn (one TCP write, so one read at the
    node) are published as one batch, not 20; each answer carries its own frame's offsets,
    ids and duplicates, in order -- a message repeating an id of an earlier frame of the
    same read is that frame's duplicate."""
    await ws.server.publish("held", ["first"])
    c = await ws.connect("/v1/topics/held/ws?feed=none")
    calls = count_publishes(ws, monkeypatch)
    for i in range(20):
        msgs = [{"payload": f"f{i}m{j}", "id": f"{i}-{j}"} for j in range(3)]
        if i == 7:
            msgs[2]["id"] = "2-0"  # repeats frame 2's first message
        send_packed(c, {"publish": {"messages": msgs, "acks": "leader"}, "ref": i})
    await c.when(lambda: len(answers(c)) >= 20)
    got = answers(c)
    assert len(calls) < 5 and sum(calls) == 60  # (one read normally: a burst of 20 frames)
    offsets = [o for i in range(20) for o in got[i]["published"]["offsets"]]
    assert offsets[:23] == list(range(1, 24)) and offsets[23] == 7  # frame 2's first message
    assert offsets[24:] == list(range(24, 60))
    assert got[7]["published"]["duplicates"] == [False, False, True]
    assert got[7]["published"]["ids"] == ["7-0", "7-1", "2-0"]
    assert all(not any(got[i]["published"]["duplicates"]) for i in range(20) if i != 7)
    expected = ["first", *(f"f{i}m{j}" for i in range(20) for j in range(3) if (i, j) != (7, 2))]
    assert await stored(ws, "held") == expected


@pytest_twisted.ensureDeferred
async def test_a_bad_frame_among_held_ones_fails_alone_and_order_holds(
    ws: WS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In one read: msgpack frames, one with a message over the topic's size limit, one
    with other acks, and a JSON publish frame between them.  The too-large one gets its
    ``message_too_large`` error and stores nothing; every other frame is stored, in the
    order sent."""
    await ws.server.publish("held2", ["first"])
    limit = ws.server.broker.topics["held2"].config.max_message_bytes
    c = await ws.connect("/v1/topics/held2/ws?feed=none")
    send_packed(c, {"publish": {"messages": [{"payload": "a"}], "acks": "leader"}, "ref": 0})
    send_packed(c, {"publish": {"messages": [{"payload": "x" * (limit + 1)}], "acks": "leader"}, "ref": 1})
    send_packed(c, {"publish": {"messages": [{"payload": "b"}], "acks": "leader"}, "ref": 2})
    c.send({"publish": {"payload": "json", "acks": "leader"}, "ref": 3})
    send_packed(c, {"publish": {"messages": [{"payload": "c"}], "acks": "quorum"}, "ref": 4})
    send_packed(c, {"publish": {"messages": [{"payload": "d"}], "acks": "leader"}, "ref": 5})
    await c.when(lambda: len(answers(c)) >= 6)
    got = answers(c)
    assert got[1]["error"]["code"] == "message_too_large"
    assert all("published" in got[r] for r in (0, 2, 3, 4, 5))
    assert got[4]["published"]["acks"] == "quorum" and got[5]["published"]["acks"] == "leader"
    assert await stored(ws, "held2") == ["first", "a", "b", "json", "c", "d"]
