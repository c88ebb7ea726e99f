"""Pipelined WebSocket publish: many ``publish`` frames in flight on one socket, each answered
with its own ``ref``; frames beyond the socket's hard in-flight bounds (count, bytes) are
refused with ``too_many_in_flight`` and store nothing; ``feed=none`` sockets carry answers only.  autobahn's client over real loopback
TCP against the in-process node (:mod:`harness.inproc_ws`); every wait bounded."""

from __future__ import annotations

import json
from typing import Any

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
