"""The client library on the lean wire (:mod:`sprawl.client.wire`, "Negotiation"): a publish
goes as one msgpack body (binary payloads as msgpack ``bin``) to a node that takes it; a node
older than the lean formats -- the in-process API with its lean parser taken out, so its real
raw-body rule answers -- refuses the marker query before storing anything, gets the same batch
as JSON right after, and JSON from then on (per base URL); ``wire="json"`` sends JSON only.
The Twisted client runs against the in-process API, the blocking one against a scripted
stand-in of such a node (a thread on a loopback port)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec
import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from harness import WAIT, the_reactor
from harness.inproc_http import BASE, Node
from harness.inproc_http import node as node
from sprawl.client import SprawlClient, TxSprawlClient, calls, outgoing, wire
from sprawl.client.api import Subscription
from sprawl.client.blocking import Client

PUBLISH_PATH = "/v1/topics/{}/messages"


async def settled(d: Deferred[Any], stub: StubTreq) -> Any:
    """Wait (bounded) for a client call through ``stub``: the in-process server answers once
    the LMDB writer thread has, and the stub hands the answer over when flushed."""
    for _ in range(int(WAIT / 0.005)):
        stub.flush()
        if d.called:
            break
        await deferLater(the_reactor(), 0.005, lambda: None)
    assert d.called, "the client call did not finish in time"
    return await d


def tx_client(n: Node, wire_name: str = "lean") -> tuple[TxSprawlClient, StubTreq]:
    """A TxSprawlClient whose HTTP goes to the node's API (recorded)."""
    c = TxSprawlClient(BASE, reactor=the_reactor(), wire=wire_name)
    c._http = n.http.stub  # type: ignore[assignment]
    return c, n.http.stub


def content_types(n: Node) -> list[str]:
    return [(r.getHeader(b"content-type") or b"").decode() for r in n.http.recorder.requests]


@pytest_twisted.ensureDeferred
async def test_a_lean_publish_is_one_msgpack_body_and_reads_back_as_json_would(node: Node) -> None:
    """Text stays text, bytes that are not UTF-8 go as msgpack ``bin`` (stored binary, no
    base64 on the wire); key, headers, id and acks kept; the answer is the usual one."""
    c, stub = tx_client(node)
    batch = [outgoing("hello", key="k", headers={"h": "v"}, id="m-1"), outgoing(b"\x00\xffbin")]
    pub = await settled(c.publish_batch("lean", batch, acks="leader"), stub)
    assert pub.offsets == [0, 1] and pub.acks == "leader" and pub.ids[0] == "m-1"
    req = node.http.recorder.requests[-1]
    assert content_types(node) == [wire.MSGPACK] and req.args == {b"id": [b""]}
    got = (await node.fetch("lean", offset=0))["messages"]
    assert got[0]["payload"] == "hello" and got[0]["key"] == "k" and got[0]["headers"] == {"h": "v"}
    assert base64.b64decode(got[1]["payload_b64"]) == b"\x00\xffbin"
    assert c.json_only == set()


@pytest_twisted.ensureDeferred
async def test_json_wire_sends_json(node: Node) -> None:
    """``wire="json"``: the JSON batch, never a msgpack body."""
    c, stub = tx_client(node, "json")
    await settled(c.publish("plain", b"\x00\xff"), stub)
    assert content_types(node) == ["application/json"]


@pytest_twisted.ensureDeferred
async def test_an_older_node_refuses_the_lean_body_unstored_and_gets_json(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node without the lean parser reads a non-JSON body as one raw message: the marker
    ``id=`` makes it refuse (400 invalid_parameter) before storing; the client sends the batch
    again as JSON at once, and only JSON to that node afterwards."""
    import sprawl.http.messages as messages_route

    monkeypatch.setattr(messages_route, "parse_lean", lambda request, max_batch: None)
    c, stub = tx_client(node)
    pub = await settled(c.publish_batch("old", ["a", b"\x00\xff"]), stub)
    assert pub.offsets == [0, 1]
    assert content_types(node) == [wire.MSGPACK, "application/json"]
    assert c.json_only == {BASE}
    await settled(c.publish("old", "c"), stub)
    assert content_types(node)[2:] == ["application/json"]
    got = (await node.fetch("old", offset=0))["messages"]
    assert [m.get("payload", m.get("payload_b64")) for m in got] == ["a", "AP8=", "c"]


def test_refused_lean_reads_only_an_older_nodes_refusal() -> None:
    """415, or the 400 ``invalid_parameter`` about ``id``; a current node's refusal of a bad
    lean body (or any other error) is not a reason to switch to JSON."""

    def err(code: str, message: str) -> bytes:
        return json.dumps({"error": {"code": code, "message": message}}).encode()

    assert wire.refused_lean(415, b"")
    assert wire.refused_lean(400, err("invalid_parameter", "query parameter id must be 1-256 characters"))
    assert not wire.refused_lean(400, err("invalid_msgpack", "malformed msgpack"))
    assert not wire.refused_lean(400, err("invalid_parameter", "query parameter key is not UTF-8"))
    assert not wire.refused_lean(400, b"not json")
    assert not wire.refused_lean(200, b"{}")
    assert not wire.refused_lean(503, err("invalid_parameter", "id"))


def test_lean_items_carry_binary_payloads_as_bytes() -> None:
    """``payload_b64`` becomes a ``bin`` payload; the rest is unchanged."""
    items = [outgoing(b"\x00\xff", key="k", id="i"), outgoing("t", headers={"a": "b"})]
    body = msgspec.msgpack.decode(wire.lean_publish(items, "none"))
    assert body == {
        "messages": [
            {"payload": b"\x00\xff", "key": "k", "id": "i"},
            {"payload": "t", "headers": {"a": "b"}},
        ],
        "acks": "none",
    }
    call = calls.publish("t", items, lean=True)
    assert call.lean is not None and call.body["messages"] == items
    assert calls.publish("t", items).lean is None


def test_a_wire_other_than_lean_or_json_is_refused() -> None:
    with pytest.raises(ValueError, match="wire"):
        SprawlClient("http://127.0.0.1:1", wire="xml")
    with pytest.raises(ValueError, match="wire"):
        TxSprawlClient("http://127.0.0.1:1", reactor=the_reactor(), wire="xml")


def test_a_lean_subscription_asks_for_batches() -> None:
    """``wire="lean"`` streams ``?format=batch``; ``json`` the default format."""
    sub = SprawlClient("http://127.0.0.1:1").subscribe("t", idle_timeout=0)
    assert isinstance(sub, Subscription) and sub.cursor.query["format"] == "batch"
    assert "format" not in SprawlClient("http://127.0.0.1:1", wire="json").subscribe("t").cursor.query


class _OldNode(BaseHTTPRequestHandler):
    """The publish rule of a node older than the lean formats, as seen from outside: a body
    that is not JSON is one raw message, and an empty ``id`` query parameter is refused."""

    seen: list[tuple[str, str]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        ctype = self.headers.get("Content-Type", "")
        self.seen.append((ctype, self.path))
        if ctype != "application/json" and "id=" in self.path:
            status, body = (
                400,
                {
                    "error": {
                        "code": "invalid_parameter",
                        "message": "query parameter id must be 1-256 characters",
                    }
                },
            )
        else:
            status = 200
            body = {
                "offsets": [0],
                "ids": [None],
                "partitions": [0],
                "duplicates": [False],
                "acks": "quorum",
                "stored": "lmdb",
            }
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def old_node() -> Iterator[str]:
    """The stand-in on a loopback port the OS chose; stopped after the test."""
    _OldNode.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OldNode)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(WAIT)


def test_the_blocking_client_falls_back_to_json_once_per_url(old_node: str) -> None:
    """Refused lean body -> the JSON one at once, then JSON only for that URL."""
    c = SprawlClient(old_node)
    assert c.publish("t", "a").offsets == [0]
    assert c.publish("t", "b").offsets == [0]
    assert [ctype for ctype, _ in _OldNode.seen] == [wire.MSGPACK, "application/json", "application/json"]
    assert _OldNode.seen[0][1].endswith("?id=") and "?" not in _OldNode.seen[1][1]
    assert c.http.json_only == {old_node}
    # A transport without lean bodies never sends one.
    Client([old_node]).request("POST", "/v1/topics/t/messages", {"messages": [{"payload": "x"}]})
    assert _OldNode.seen[-1][0] == "application/json"


@settings(max_examples=300, deadline=None)
@given(
    st.integers(100, 599),
    st.binary(max_size=200)
    | st.builds(
        lambda v: json.dumps(v).encode(),
        st.recursive(
            st.none() | st.text(max_size=8) | st.integers(),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
            max_leaves=8,
        ),
    ),
)
def test_refused_lean_reads_any_answer_without_raising(status: int, body: bytes) -> None:
    """Whatever a node (or something pretending to be one) answers: a bool, never an error."""
    assert isinstance(wire.refused_lean(status, body), bool)
