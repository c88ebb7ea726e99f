"""``TxSprawlClient.publish_many`` on the lean wire: binary msgpack publish frames where the
node's upgrade answer names them, JSON text frames on the JSON wire and to a node that does
not (an older node).  The client over real loopback TCP against the in-process node
(:mod:`harness.inproc_ws`); every wait bounded."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import pytest_twisted

from harness import bounded, the_reactor
from harness.inproc_ws import WS as WS
from harness.inproc_ws import ws as ws
from sprawl.client import TxSprawlClient, outgoing
from sprawl.client.txsocket import publish_frame
from sprawl.http.websocket import SprawlWSProtocol


@pytest.fixture
def frame_kinds(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each client frame the node reads is binary."""
    kinds: list[bool] = []
    read = SprawlWSProtocol.onMessage

    def spy(self: SprawlWSProtocol, payload: bytes, isBinary: bool) -> None:
        kinds.append(isBinary)
        read(self, payload, isBinary)

    monkeypatch.setattr(SprawlWSProtocol, "onMessage", spy)
    return kinds


def batches() -> list[list[dict[str, Any]]]:
    out = [[outgoing(f"b{b}m{i}", id=f"{b}-{i}") for i in range(10)] for b in range(12)]
    out[2][0] = outgoing(b"\x00\xff", id="2-0")
    return out


async def publish_and_read(w: WS, wire: str, topic: str) -> list[dict[str, Any]]:
    """publish_many 12 batches (window 4); checks the answers; the stored messages."""
    c = TxSprawlClient(w.server.url, reactor=the_reactor(), timeout=5, wire=wire)
    got = await bounded(c.publish_many(topic, batches(), acks="leader", window=4))
    assert [p.ids for p in got] == [[m["id"] for m in b] for b in batches()]
    assert sorted(o for p in got for o in p.offsets) == list(range(120))
    _, body = await w.server.request("GET", f"/v1/topics/{topic}/messages?from=0&limit=1000")
    msgs: list[dict[str, Any]] = json.loads(body)["messages"]
    by_id = {m["id"]: m for m in msgs}
    assert base64.b64decode(by_id["2-0"]["payload_b64"]) == b"\x00\xff"
    assert by_id["2-1"]["payload"] == "b2m1" and len(by_id) == 120
    return msgs


@pytest_twisted.ensureDeferred
async def test_the_lean_wire_sends_msgpack_frames(ws: WS, frame_kinds: list[bool]) -> None:
    """Lean (the default): every publish frame is binary msgpack; what is stored is what
    the JSON wire stores."""
    await publish_and_read(ws, "lean", "pm-lean")
    assert frame_kinds == [True] * 12


@pytest_twisted.ensureDeferred
async def test_the_json_wire_sends_json_frames(ws: WS, frame_kinds: list[bool]) -> None:
    await publish_and_read(ws, "json", "pm-json")
    assert frame_kinds == [False] * 12


@pytest_twisted.ensureDeferred
async def test_a_node_not_naming_msgpack_frames_gets_json(
    ws: WS, frame_kinds: list[bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node whose upgrade answer has no ``Sprawl-Publish-Frames`` (older than the msgpack
    frame, which would read one as bad JSON) gets JSON text frames from a lean client."""
    monkeypatch.setattr(SprawlWSProtocol, "onConnect", lambda self, request: None)
    await publish_and_read(ws, "lean", "pm-old")
    assert frame_kinds == [False] * 12


def test_a_packed_frame_carries_binary_payloads_as_bytes() -> None:
    """The msgpack frame of a batch: ``payload_b64`` becomes raw bytes, the rest as it is."""
    import msgspec

    items = [outgoing(b"\x00\xff", key="k"), outgoing("t", id="i")]
    packed = msgspec.msgpack.decode(publish_frame(3, items, "none", True))
    assert packed == {
        "publish": {
            "messages": [{"payload": b"\x00\xff", "key": "k"}, {"payload": "t", "id": "i"}],
            "acks": "none",
        },
        "ref": 3,
    }
    assert json.loads(publish_frame(3, items, None, False)) == {"publish": {"messages": items}, "ref": 3}
