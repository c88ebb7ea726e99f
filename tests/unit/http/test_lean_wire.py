"""The lean wire formats of docs/api.md: msgpack and NDJSON publish bodies
(in process, through the API resource), their refusals, and hypothesis fuzzing
of both decoders (bounded, and every refusal a 4xx :class:`SprawlError`)."""

from __future__ import annotations

import base64
from typing import Any

import msgspec
import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.inproc_http import Node, assert_error, payloads
from harness.inproc_http import node as node
from sprawl.client import wire
from sprawl.errors import SprawlError
from sprawl.http.lean_wire import parse_msgpack, parse_ndjson

PACK = {"content-type": "application/msgpack"}
ND = {"content-type": "application/x-ndjson"}


async def post(node: Node, topic: str, body: bytes, headers: dict[str, str], query: str = "") -> Any:
    return await node.http.post(f"/v1/topics/{topic}/messages{query}", data=body, headers=headers)


@pytest_twisted.ensureDeferred
async def test_a_msgpack_body_publishes_text_and_binary_messages(node: Node) -> None:
    """A msgpack body of many messages: a str payload is text, a bin one binary; key,
    headers, id and acks are kept; a fetch shows them as JSON does."""
    body = wire.encode_publish(
        [
            {"payload": "hello", "key": "k", "headers": {"h": "v"}, "id": "m-1"},
            {"payload": b"\x00\xffbin"},
            *({"payload": f"p{i}"} for i in range(98)),
        ],
        acks="leader",
    )
    r = await post(node, "mp", body, PACK)
    assert r.code == 200, r.body
    ans = r.json()
    assert ans["acks"] == "leader" and ans["offsets"] == list(range(100))
    got = (await node.fetch("mp", offset=0, limit=200))["messages"]
    assert got[0]["payload"] == "hello" and got[0]["key"] == "k" and got[0]["headers"] == {"h": "v"}
    assert got[0]["id"] == "m-1"
    assert base64.b64decode(got[1]["payload_b64"]) == b"\x00\xffbin"
    assert [m["payload"] for m in got[2:]] == [f"p{i}" for i in range(98)]


@pytest_twisted.ensureDeferred
async def test_an_ndjson_body_publishes_one_message_per_line(node: Node) -> None:
    """NDJSON: one JSON message per line (blank lines skipped, CRLF allowed), acks from the query."""
    body = wire.encode_ndjson(
        [{"payload": "a", "key": "k"}, {"payload_b64": base64.b64encode(b"\x01").decode()}]
    )
    body += b"\r\n\n" + b'{"payload":"c","id":"x"}'
    r = await post(node, "nd", body, ND, "?acks=leader")
    assert r.code == 200, r.body
    assert r.json()["acks"] == "leader" and r.json()["offsets"] == [0, 1, 2]
    got = (await node.fetch("nd", offset=0))["messages"]
    assert got[0]["payload"] == "a" and got[0]["key"] == "k"
    assert base64.b64decode(got[1]["payload_b64"]) == b"\x01"
    assert got[2]["payload"] == "c" and got[2]["id"] == "x"


@pytest.mark.parametrize(
    ("body", "headers", "query", "status", "code"),
    [
        (b"\xc1garbage", PACK, "", 400, "invalid_msgpack"),
        (
            msgspec.msgpack.encode({"messages": [{"payload": "a", "nope": 1}]}),
            PACK,
            "",
            400,
            "invalid_msgpack",
        ),
        (msgspec.msgpack.encode({"messages": [{"payload": 5}]}), PACK, "", 400, "invalid_msgpack"),
        (msgspec.msgpack.encode({"messages": []}), PACK, "", 400, "invalid_messages"),
        (
            msgspec.msgpack.encode({"messages": [{"payload": "a"}], "acks": "all"}),
            PACK,
            "",
            400,
            "invalid_acks",
        ),
        (
            msgspec.msgpack.encode({"messages": [{"payload": "a", "id": ""}]}),
            PACK,
            "",
            400,
            "invalid_message",
        ),
        (msgspec.msgpack.encode({"messages": [{"payload": "a"}] * 10_001}), PACK, "", 413, "batch_too_large"),
        (
            msgspec.msgpack.encode({"messages": [{"payload": "a"}], "acks": None}),
            PACK,
            "",
            400,
            "invalid_msgpack",
        ),
        (b'{"payload":"a"}\n{"payload":', ND, "", 400, "invalid_ndjson"),
        (b'{"payload":"a"}\n[1]', ND, "", 400, "invalid_message"),
        (b'{"payload":"a","x":1}', ND, "", 400, "invalid_message"),
        (b"\n\n", ND, "", 400, "invalid_messages"),
        (b'{"payload":"a"}', ND, "?acks=all", 400, "invalid_acks"),
        (b'{"payload":"a"}\n' * 10_001, ND, "", 413, "batch_too_large"),
        (b"\n" * 30_000, ND, "", 413, "batch_too_large"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_bad_lean_body_is_a_4xx_and_stores_nothing(
    node: Node, body: bytes, headers: dict[str, str], query: str, status: int, code: str
) -> None:
    """Every malformed frame is refused with the JSON error shape; the topic keeps what it had
    and the next good request goes through."""
    await node.publish("bad", [{"payload": "before"}])
    r = await post(node, "bad", body, headers, query)
    assert_error(r, status, code)
    assert payloads(await node.fetch("bad", offset=0)) == ["before"]
    ok = await post(node, "bad", wire.encode_publish([{"payload": "after"}]), PACK)
    assert ok.code == 200
    assert payloads(await node.fetch("bad", offset=0)) == ["before", "after"]


@pytest_twisted.ensureDeferred
async def test_json_and_raw_bodies_are_unchanged(node: Node) -> None:
    """The JSON batch and the raw single-message body behave as before beside the lean ones."""
    await node.publish("j", [{"payload": "a"}], acks="leader")
    r = await node.http.post(
        "/v1/topics/j/messages?key=k", data=b"raw", headers={"content-type": "text/plain"}
    )
    assert r.code == 200
    got = (await node.fetch("j", offset=0))["messages"]
    assert [m["payload"] for m in got] == ["a", "raw"] and got[1]["key"] == "k"


# -- hypothesis ---------------------------------------------------------------------------------

messages = st.lists(
    st.fixed_dictionaries(
        {"payload": st.text(max_size=20) | st.binary(max_size=20)},
        optional={
            "key": st.text(max_size=10),
            "id": st.text(min_size=1, max_size=10),
            "headers": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
        },
    ),
    min_size=1,
    max_size=20,
)


@settings(max_examples=300, deadline=None)
@given(messages)
def test_msgpack_bodies_round_trip(msgs: list[dict[str, Any]]) -> None:
    """What the client codec encodes, the server decodes to the same messages."""
    records, acks = parse_msgpack(wire.encode_publish(msgs, acks="none"), 100, "quorum")
    assert acks == "none"
    for m, r in zip(msgs, records, strict=True):
        p = m["payload"]
        assert r.payload == (p.encode("utf-8", "surrogatepass") if isinstance(p, str) else p)
        assert r.is_text == isinstance(p, str)
        assert r.key == m.get("key") and r.id == m.get("id")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300) | messages.map(lambda m: wire.encode_publish(m)[: len(m) * 7]))
def test_msgpack_decoder_refuses_cleanly(raw: bytes) -> None:
    """Any bytes: records within the batch bound, or a 4xx error; nothing else."""
    try:
        records, _ = parse_msgpack(raw, 10, "quorum")
    except SprawlError as e:
        assert 400 <= e.status < 500
    else:
        assert 1 <= len(records) <= 10


lines = st.lists(
    st.sampled_from(
        [b'{"payload":"a"}', b"", b"{", b"[]", b'{"payload_b64":"AA=="}', b'{"payload":1}', b"\xff"]
    )
    | st.binary(max_size=30),
    max_size=30,
)


@settings(max_examples=500, deadline=None)
@given(lines)
def test_ndjson_decoder_refuses_cleanly(parts: list[bytes]) -> None:
    """Any lines: records within the batch bound, or a 4xx error; nothing else."""
    try:
        records = parse_ndjson(b"\n".join(parts), 10)
    except SprawlError as e:
        assert 400 <= e.status < 500
    else:
        assert 1 <= len(records) <= 10
