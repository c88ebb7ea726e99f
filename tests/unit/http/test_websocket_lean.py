"""The lean WebSocket wire on the node (issue 16, lat40): a read of whole masked binary
msgpack publish frames is read by :func:`sprawl.http.websocket.lean_frames`, not autobahn's
frame reader, and a publish's answer is one text frame written by the node, not autobahn's
``sendMessage``; everything else is autobahn's as before.  autobahn's client over real
loopback TCP against the in-process node (:mod:`harness.inproc_ws`); every wait bounded."""

from __future__ import annotations

import json
import os
from typing import Any

import msgspec
import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.inproc_ws import WS as WS
from harness.inproc_ws import WSClient
from harness.inproc_ws import ws as ws
from sprawl.client.aiows import client_frame
from sprawl.http import websocket
from sprawl.http.lean_wire import PACK_MAP_START
from sprawl.http.websocket import SprawlWSProtocol, lean_frames

_pack = msgspec.msgpack.Encoder().encode


def answers(c: WSClient) -> dict[Any, dict[str, Any]]:
    return {f["ref"]: f for f in c.frames if "ref" in f}


def counted(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Calls of the node's sockets' ``name`` (autobahn's method, on the node's class only:
    the test's client is autobahn's too)."""
    calls: list[int] = []
    real = getattr(SprawlWSProtocol, name)

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SprawlWSProtocol, name, wrapper)
    return calls


async def _publish_ten(c: WSClient) -> dict[Any, dict[str, Any]]:
    """Ten lone msgpack publish frames, each after the last was answered (offsets 1-10
    after the topic's first message); the answers by ref."""
    for i in range(10):
        c.sendMessage(
            _pack({"publish": {"messages": [{"payload": f"m{i}"}], "acks": "leader"}, "ref": i}),
            isBinary=True,
        )
        await c.when(lambda i=i: i in answers(c))
    got = answers(c)
    assert [got[i]["published"]["offsets"] for i in range(10)] == [[1 + i] for i in range(10)]
    return got


@pytest_twisted.ensureDeferred
async def test_lean_publish_frames_bypass_autobahns_frame_reader_and_writer(
    ws: WS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten one-message msgpack publish frames, each sent once the last was answered: each is
    stored at its offset and answered (a JSON text frame the client reads, with its ref)
    without autobahn's ``processData`` reading it or its ``sendMessage`` writing the answer
    (ten of each before: every frame through autobahn's reader, every answer through its
    writer and the debug-log formatting of each send), and a lone frame's answer is the
    publish's result as it is (before, a slice of it was built for each)."""
    await ws.server.publish("lean", ["first"])
    c = await ws.connect("/v1/topics/lean/ws?feed=none")
    reads = counted(monkeypatch, "processData")
    writes = counted(monkeypatch, "sendMessage")
    sliced: list[int] = []
    real_result = websocket.PublishResult
    monkeypatch.setattr(websocket, "PublishResult", lambda *a: sliced.append(1) or real_result(*a))
    got = await _publish_ten(c)
    assert all(got[i]["published"]["stored"] == "lmdb" for i in range(10)), got[0]
    assert (len(reads), len(writes)) == (0, 0)
    assert not sliced  # (a lone frame's answer is the whole result: no slice of it built)
    _, body = await ws.server.request("GET", "/v1/topics/lean/messages?from=0&limit=100")
    assert [m["payload"] for m in json.loads(body)["messages"]] == ["first", *(f"m{i}" for i in range(10))]


@pytest_twisted.ensureDeferred
async def test_text_frames_and_errors_are_still_autobahns_and_answered_in_order(ws: WS) -> None:
    """A JSON text frame (autobahn's reader: its UTF-8 check), a bad msgpack frame (an error
    answer) and a good one, on one socket: each answered by ref, the good ones stored in order."""
    await ws.server.publish("mixed", ["first"])
    c = await ws.connect("/v1/topics/mixed/ws?feed=none")
    c.send({"publish": {"payload": "json", "acks": "leader"}, "ref": 0})
    c.sendMessage(_pack({"publish": {"messages": "nope"}, "ref": 1}), isBinary=True)
    c.sendMessage(_pack({"publish": {"messages": [{"payload": "packed"}]}, "ref": 2}), isBinary=True)
    await c.when(lambda: len(answers(c)) >= 3)
    got = answers(c)
    assert "published" in got[0] and got[1]["error"]["code"] == "invalid_msgpack" and "published" in got[2]
    _, body = await ws.server.request("GET", "/v1/topics/mixed/messages?from=0&limit=100")
    assert [m["payload"] for m in json.loads(body)["messages"]] == ["first", "json", "packed"]


_maps = st.lists(
    st.dictionaries(st.text(max_size=5), st.binary(max_size=300) | st.text(max_size=50), max_size=3).map(
        _pack
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(_maps)
def test_lean_frames_reads_whole_masked_map_frames_back(payloads: list[bytes]) -> None:
    """Masked binary frames of msgpack maps (7- and 16-bit lengths) read back as they were sent;
    any cut of them (a frame split over reads) is left to autobahn."""
    frames = [client_frame(p, 2, os.urandom(4)) for p in payloads]
    data = b"".join(frames)
    assert lean_frames(data, 65535) == payloads
    ends = {sum(len(f) for f in frames[: i + 1]) for i in range(len(frames))}
    for cut in {1, 5, len(data) // 2, len(data) - 1} - ends:
        if 0 < cut < len(data):
            assert lean_frames(data[:cut], 65535) is None


@pytest.mark.parametrize(
    "frame",
    [
        client_frame(b'{"publish": {}}', 1, b"abcd"),  # a text frame: autobahn's (UTF-8 check)
        client_frame(_pack({"a": 1}), 2, b"abcd")[:1] + b"\x05" + _pack({"a": 1}),  # unmasked
        bytes([0x02]) + client_frame(_pack({"a": 1}), 2, b"abcd")[1:],  # not final: a fragment
        bytes([0xC2]) + client_frame(_pack({"a": 1}), 2, b"abcd")[1:],  # a reserved bit
        client_frame(_pack([1, 2]), 2, b"abcd"),  # not a map: read as JSON, autobahn's
        client_frame(b"\x00" * 70000, 2, b"abcd"),  # a 64-bit length
        client_frame(b"\x80", 2, b"abcd") + client_frame(b"x", 9, b"abcd"),  # then a ping
        client_frame(_pack({"a": "x" * 200}), 2, b"abcd"),  # over the limit given (100)
    ],
)
def test_lean_frames_leaves_every_other_read_to_autobahn(frame: bytes) -> None:
    """Text, unmasked, fragmented, reserved-bit, non-map, long and control frames, and a frame
    over the socket's limit: None (autobahn reads them, and answers or closes as it does)."""
    assert lean_frames(frame, 100) is None


@st.composite
def _reads(draw: st.DrawFn) -> bytes:
    """Any bytes, or whole lean frames with one byte changed and the end maybe cut."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=400))
    data = bytearray(
        b"".join(client_frame(p, 2, draw(st.binary(min_size=4, max_size=4))) for p in draw(_maps))
    )
    at = draw(st.integers(min_value=0, max_value=len(data) - 1))
    data[at] = draw(st.integers(min_value=0, max_value=255))
    return bytes(data[: draw(st.integers(min_value=0, max_value=len(data)))] if draw(st.booleans()) else data)


@settings(max_examples=500, deadline=None)
@given(_reads(), st.integers(min_value=1, max_value=400))
def test_lean_frames_never_raises_and_takes_only_whole_frames_within_the_limit(
    data: bytes, limit: int
) -> None:
    """Any bytes a stranger sends: no exception, and what is taken is whole frames,
    each a msgpack map within the limit, which framed again (masked with a zero key,
    i.e. as sent) are the read exactly -- else the read is autobahn's."""
    got = lean_frames(data, limit)
    if got is None:
        return
    assert got and all(0 < len(p) <= limit and p[0] in PACK_MAP_START for p in got)
    assert sum(len(client_frame(p, 2, b"\x00" * 4)) for p in got) == len(data)


@pytest_twisted.ensureDeferred
async def test_a_held_publishs_answer_is_one_addboth_link(ws: WS, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lean publish frame's answer hangs on its publish's Deferred by one ``addBoth``
    (answer or error, then the frame's room settled), not an ``addCallbacks`` pair: 12
    lines of Twisted a call against 4 (issue 16, lat40b).  Counted: the links the
    node's socket code adds, ten frames; each still answered at its offset."""
    import sys

    from twisted.internet.defer import Deferred

    await ws.server.publish("links", ["first"])
    c = await ws.connect("/v1/topics/links/ws?feed=none")
    added: list[str] = []
    for name in ("addCallbacks", "addBoth"):
        real = getattr(Deferred, name)

        def counted(self: Any, *a: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            if sys._getframe(1).f_code.co_filename == websocket.__file__:
                added.append(_name)
            return _real(self, *a, **kw)

        monkeypatch.setattr(Deferred, name, counted)
    await _publish_ten(c)
    assert added == ["addBoth"] * 10, added
