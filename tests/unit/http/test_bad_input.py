"""Bad input against a real node: each case answers a 4xx with the
``{"error": {"code", "message"}}`` shape, changes nothing, and leaves the node
serving with the data published before it intact."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from harness import NodeProcess, scaled

TIMEOUT = 10.0  # seconds for any one request (no test may hang)
PROMPT = 5.0  # "served promptly" while a misbehaving client holds a connection
BASELINE = [
    {"payload": "first", "key": "k1", "headers": {"h": "1"}, "id": "base-1"},
    {"payload_b64": "AAEC/w==", "id": "base-2"},
    {"payload": "third ✓", "id": "base-3"},
]


class Node:
    """A node under test plus the answer to the baseline publish."""

    def __init__(self, proc: NodeProcess):
        self.proc = proc
        self.url = proc.url
        self.baseline: list[dict[str, Any]] = []

    def publish_baseline(self) -> None:
        """Publish BASELINE to topic ``base`` and remember what it read back as."""
        r = requests.post(self.url + "/v1/topics/base/messages", json={"messages": BASELINE}, timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        assert r.json()["offsets"] == [0, 1, 2]
        self.baseline = self.read_base()
        assert [m["id"] for m in self.baseline] == ["base-1", "base-2", "base-3"]

    def read_base(self) -> list[dict[str, Any]]:
        r = requests.get(self.url + "/v1/topics/base/messages?from=earliest&partition=0", timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        return r.json()["messages"]

    def check_intact(self) -> None:
        """The node still serves, the baseline reads back identically (same
        offsets, payloads, ids, keys, headers) and nothing failed inside."""
        assert requests.get(self.url + "/healthz", timeout=TIMEOUT).status_code == 200
        assert self.read_base() == self.baseline
        r = requests.post(self.url + "/v1/topics/base/messages", json={"messages": BASELINE}, timeout=TIMEOUT)
        assert r.status_code == 200 and r.json()["duplicates"] == [True] * 3, r.text
        assert r.json()["offsets"] == [0, 1, 2]
        log = self.proc.log_text()
        assert "unexpected error serving" not in log
        assert "Unhandled Error" not in log


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One real node for the module, with baseline data published first."""
    proc = NodeProcess(tmp_path_factory.mktemp("bad-input") / "node")
    proc.start()
    try:
        n = Node(proc)
        n.publish_baseline()
        yield n
    finally:
        proc.stop()


def assert_error(r: requests.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """``r`` is the JSON error shape with a 4xx ``status`` (and ``code`` if given)."""
    assert 400 <= status < 500
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert set(body) >= {"error"}
    err = body["error"]
    assert isinstance(err, dict) and set(err) == {"code", "message"}, body
    assert isinstance(err["code"], str) and err["code"], body
    assert isinstance(err["message"], str) and err["message"], body
    if code is not None:
        assert err["code"] == code, body
    return err


def post_raw(url: str, body: bytes, ctype: str = "application/json") -> requests.Response:
    """POST ``body`` as is."""
    return requests.post(url, data=body, headers={"Content-Type": ctype}, timeout=TIMEOUT)


def topic_names(url: str) -> set[str]:
    r = requests.get(url + "/v1/topics", timeout=TIMEOUT)
    assert r.status_code == 200
    return {t["name"] for t in r.json()["topics"]}


# -- malformed bodies ----------------------------------------------------------------


def test_malformed_json(node: Node) -> None:
    """Truncated, non-JSON, non-object and non-UTF-8 bodies on every JSON route: 400 invalid_json."""
    u = node.url
    bodies = [
        b'{"messages": [',
        b"not json",
        b"[1, 2]",
        b'"str"',
        b"\xff\xfe{}",
        b'{"messages": ["\xed\xa0\x80"]}',
    ]
    routes = [
        ("POST", "/v1/topics/base/messages"),
        ("PUT", "/v1/topics/base"),
        ("PUT", "/v1/topics/base/groups/g1"),
        ("POST", "/v1/topics/base/groups/g1/pull"),
        ("POST", "/v1/topics/base/groups/g1/ack"),
        ("POST", "/v1/topics/base/groups/g1/nack"),
        ("POST", "/publish"),
        ("POST", "/subscribe"),
    ]
    assert requests.put(u + "/v1/topics/base/groups/g1", timeout=TIMEOUT).status_code in (200, 201)
    for method, path in routes:
        for body in bodies:
            r = requests.request(
                method, u + path, data=body, headers={"Content-Type": "application/json"}, timeout=TIMEOUT
            )
            assert_error(r, 400, "invalid_json")
    node.check_intact()


def test_empty_body_where_one_is_required(node: Node) -> None:
    """An empty JSON publish, ack or seed publish body is a 400."""
    u = node.url
    assert_error(post_raw(u + "/v1/topics/base/messages", b""), 400, "invalid_json")
    assert_error(post_raw(u + "/v1/topics/base/groups/g1/ack", b""), 400)
    assert_error(post_raw(u + "/publish", b"  "), 400, "invalid_json")
    node.check_intact()


def test_wrong_types(node: Node) -> None:
    """payload as a number, messages not a list, headers not str→str, invalid
    acks, ids and keys of the wrong type or size: 400 with a specific code."""
    u = node.url + "/v1/topics/base/messages"
    cases: list[tuple[Any, str]] = [
        ({"messages": [{"payload": 5}]}, "invalid_message"),
        ({"messages": [{"payload": None}]}, "invalid_message"),
        ({"messages": [{"payload": ["a"]}]}, "invalid_message"),
        ({"messages": {"payload": "x"}}, "invalid_messages"),
        ({"messages": "x"}, "invalid_messages"),
        ({"messages": []}, "invalid_messages"),
        ({"messages": [5]}, "invalid_message"),
        ({"messages": [{"payload": "x", "headers": {"h": 1}}]}, "invalid_message"),
        ({"messages": [{"payload": "x", "headers": ["h", "v"]}]}, "invalid_message"),
        ({"messages": [{"payload": "x", "headers": {"h": None}}]}, "invalid_message"),
        ({"messages": [{"payload": "x", "headers": {f"h{i}": "v" for i in range(65)}}]}, "invalid_message"),
        ({"messages": [{"payload": "x"}], "acks": "all"}, "invalid_acks"),
        ({"messages": [{"payload": "x"}], "acks": 1}, "invalid_acks"),
        ({"messages": [{"payload": "x"}], "acks": None}, "invalid_acks"),
        ({"messages": [{"payload": "x", "id": 7}]}, "invalid_message"),
        ({"messages": [{"payload": "x", "id": ""}]}, "invalid_message"),
        ({"messages": [{"payload": "x", "id": "i" * 257}]}, "invalid_message"),
        ({"messages": [{"payload": "x", "key": 7}]}, "invalid_message"),
        ({"messages": [{"payload": "x", "key": "k" * 1025}]}, "invalid_message"),
        ({"messages": [{"payload": "x", "payload_b64": "eA=="}]}, "invalid_message"),
        ({"messages": [{"payload": "x", "payload_b64": None}]}, "invalid_message"),
        ({"messages": [{}]}, "invalid_message"),
        ({"messages": [{"payload": "x", "extra": 1}]}, "invalid_message"),
        ({"messages": [{"payload": "x"}], "extra": 1}, "invalid_field"),
    ]
    for body, code in cases:
        r = requests.post(u, json=body, timeout=TIMEOUT)
        assert_error(r, 400, code)
    # A bad message anywhere in a batch refuses the whole batch.
    r = requests.post(u, json={"messages": [{"payload": "ok"}, {"payload": 1}]}, timeout=TIMEOUT)
    assert_error(r, 400, "invalid_message")
    # Raw-body publishes: query parameters are checked too.
    assert_error(post_raw(u + "?acks=bogus", b"x", "text/plain"), 400, "invalid_acks")
    assert_error(post_raw(u + "?id=" + "i" * 257, b"x", "text/plain"), 400, "invalid_parameter")
    # Other routes' fields.
    base = node.url + "/v1/topics/base"
    for path, body in [
        ("", {"partitions": "2"}),
        ("", {"partitions": 0}),
        ("", {"partitions": True}),
        ("", {"partitions": 2000}),
        ("", {"storage": "tape"}),
        ("", {"retention_ms": -1}),
        ("", {"max_message_bytes": 10**12}),
        ("", {"bogus": 1}),
        ("/groups/g1", {"start": "middle"}),
        ("/groups/g1", {"ack_deadline_ms": 0}),
        ("/groups/g1", {"max_deliveries": "3"}),
        ("/groups/g1", {"dead_letter_topic": "base"}),
        ("/groups/g1", {"dead_letter_topic": "bad name"}),
    ]:
        r = requests.put(base + path, json=body, timeout=TIMEOUT)
        assert 400 <= r.status_code < 500
        assert_error(r, r.status_code)
    for path, body in [
        ("/groups/g1/pull", {"max": 0}),
        ("/groups/g1/pull", {"max": "10"}),
        ("/groups/g1/pull", {"wait_ms": 10**9}),
        ("/groups/g1/pull", {"wait_ms": -1}),
        ("/groups/g1/ack", {"ack_ids": "x"}),
        ("/groups/g1/ack", {"ack_ids": [1]}),
        ("/groups/g1/ack", {}),
        ("/groups/g1/nack", {"ack_ids": [], "delay_ms": -5}),
    ]:
        assert_error(requests.post(base + path, json=body, timeout=TIMEOUT), 400, "invalid_field")
    for body in [{"topic": 5, "payload": "x"}, {"topic": "t"}, {"topic": "t", "payload": "x", "ttl": -1}]:
        assert_error(requests.post(node.url + "/publish", json=body, timeout=TIMEOUT), 400, "invalid_field")
    for body in [{"topics": "t"}, {"topics": []}, {"topics": [1]}, {"topics": ["t"], "id": 5}]:
        assert_error(requests.post(node.url + "/subscribe", json=body, timeout=TIMEOUT), 400, "invalid_field")
    node.check_intact()


def test_bad_query_parameters(node: Node) -> None:
    """Non-integer, out-of-range and conflicting fetch parameters: 400 invalid_parameter."""
    u = node.url + "/v1/topics/base/messages?"
    for q in [
        "from=soon",
        "from=-1",
        "from=",
        "from_time=yesterday",
        "from_time=-5",
        "from=0&from_time=0",
        "limit=0",
        "limit=10001",
        "limit=x",
        "wait_ms=30001",
        "wait_ms=-1",
        "partition=-1",
        "partition=1024",
        "partition=%FF",
    ]:
        assert_error(requests.get(u + q, timeout=TIMEOUT), 400, "invalid_parameter")
    assert_error(requests.get(u + "partition=3", timeout=TIMEOUT), 404, "partition_not_found")
    node.check_intact()


def test_invalid_base64(node: Node) -> None:
    """payload_b64 that is not base64 (bad characters, bad padding, not a string): 400."""
    u = node.url + "/v1/topics/base/messages"
    for b64 in ["not base64!", "AAA", "A===", "****", 12, ["AA=="]]:
        r = requests.post(u, json={"messages": [{"payload_b64": b64}]}, timeout=TIMEOUT)
        assert_error(r, 400, "invalid_message")
    node.check_intact()


# -- names ------------------------------------------------------------------------------


def test_unknown_topic(node: Node) -> None:
    """Every route naming a topic that does not exist: 404 topic_not_found (JSON).  (A stream,
    a WebSocket feed or a long-poll of a missing topic waits for it where topics are
    auto-created, a 404 where not: tests/unit/pubsub/test_subscribe_first.py.)"""
    u = node.url + "/v1/topics/nope"
    for method, path in [
        ("GET", ""),
        ("DELETE", ""),
        ("GET", "/messages"),
        ("GET", "/ws?group=g"),
        ("GET", "/groups/g"),
        ("DELETE", "/groups/g"),
        ("POST", "/groups/g/pull"),
    ]:
        assert_error(requests.request(method, u + path, timeout=TIMEOUT), 404, "topic_not_found")
    for path in ["/groups/g/ack", "/groups/g/nack"]:
        r = requests.post(u + path, json={"ack_ids": ["x"]}, timeout=TIMEOUT)
        assert_error(r, 404, "topic_not_found")
    assert "nope" not in topic_names(node.url)
    node.check_intact()


def test_unknown_group(node: Node) -> None:
    """Group routes on an existing topic naming a missing group: 404 group_not_found."""
    u = node.url + "/v1/topics/base/groups/nogroup"
    assert_error(requests.get(u, timeout=TIMEOUT), 404, "group_not_found")
    assert_error(requests.delete(u, timeout=TIMEOUT), 404, "group_not_found")
    assert_error(requests.post(u + "/pull", json={}, timeout=TIMEOUT), 404, "group_not_found")
    assert_error(requests.post(u + "/ack", json={"ack_ids": ["a"]}, timeout=TIMEOUT), 404, "group_not_found")
    assert_error(requests.post(u + "/nack", json={"ack_ids": ["a"]}, timeout=TIMEOUT), 404, "group_not_found")
    node.check_intact()


def test_unknown_route(node: Node) -> None:
    """A path no route matches: 404 not_found (JSON)."""
    for path in ["/v2/topics", "/v1/topics/base/nothing", "/v1/topics/base/groups", "/v1/nope/x/y"]:
        assert_error(requests.get(node.url + path, timeout=TIMEOUT), 404, "not_found")
    node.check_intact()


@pytest.mark.parametrize(
    "name",
    ["bad%20name", "a" * 250, "bad%0A", "abc%0A", "%C3%A9t%C3%A9", "a%00b", "a*b", "a:b", "a%2Cb", "%FF"],
)
def test_invalid_topic_names(node: Node, name: str) -> None:
    """Topic names outside [A-Za-z0-9._-]{1,249} are refused with 400 on every
    route and never create a topic."""
    before = topic_names(node.url)
    u = node.url + "/v1/topics/" + name
    expected = "invalid_url" if name == "%FF" else "invalid_topic_name"
    assert_error(requests.put(u, timeout=TIMEOUT), 400, expected)
    assert_error(requests.get(u, timeout=TIMEOUT), 400, expected)
    assert_error(requests.delete(u, timeout=TIMEOUT), 400, expected)
    assert_error(
        requests.post(u + "/messages", json={"messages": [{"payload": "x"}]}, timeout=TIMEOUT), 400, expected
    )
    assert_error(post_raw(u + "/messages", b"raw", "text/plain"), 400, expected)
    assert_error(requests.get(u + "/messages", timeout=TIMEOUT), 400, expected)
    assert_error(requests.get(u + "/stream", timeout=TIMEOUT), 400, expected)
    assert_error(requests.put(u + "/groups/g", timeout=TIMEOUT), 400, expected)
    assert_error(requests.post(u + "/groups/g/pull", json={}, timeout=TIMEOUT), 400, expected)
    assert topic_names(node.url) == before
    node.check_intact()


def test_topic_name_with_a_slash(node: Node) -> None:
    """'a/b' (raw or %2F-encoded) matches no route: 404 JSON, and no topic 'a' appears."""
    before = topic_names(node.url)
    for name in ["a/b", "a%2Fb"]:
        u = node.url + "/v1/topics/" + name
        assert_error(requests.put(u, timeout=TIMEOUT), 404, "not_found")
        assert_error(requests.get(u, timeout=TIMEOUT), 404, "not_found")
        r = requests.post(u + "/messages", json={"messages": [{"payload": "x"}]}, timeout=TIMEOUT)
        assert_error(r, 404, "not_found")
    bad = {"topic": "a/b", "payload": "x"}
    assert_error(requests.post(node.url + "/publish", json=bad, timeout=TIMEOUT), 400, "invalid_topic_name")
    bad2 = {"topics": ["ok", "a/b"]}
    assert_error(
        requests.post(node.url + "/subscribe", json=bad2, timeout=TIMEOUT), 400, "invalid_topic_name"
    )
    assert topic_names(node.url) == before
    node.check_intact()


def test_invalid_group_names(node: Node) -> None:
    """Group names follow the topic rule: 400 invalid_group_name, and a bad
    group name on a new topic does not create that topic."""
    before = topic_names(node.url)
    for group in ["bad%20name", "g" * 250, "g%0A", "%C3%A9"]:
        assert_error(
            requests.put(node.url + "/v1/topics/fresh/groups/" + group, timeout=TIMEOUT),
            400,
            "invalid_group_name",
        )
        assert_error(
            requests.get(node.url + "/v1/topics/base/groups/" + group, timeout=TIMEOUT),
            400,
            "invalid_group_name",
        )
        r = requests.post(node.url + "/v1/topics/base/groups/" + group + "/pull", json={}, timeout=TIMEOUT)
        assert_error(r, 400, "invalid_group_name")
    r = requests.post(node.url + "/subscribe", json={"topics": ["fresh"], "id": "bad name"}, timeout=TIMEOUT)
    assert_error(r, 400, "invalid_group_name")
    assert topic_names(node.url) == before
    node.check_intact()


# -- methods ----------------------------------------------------------------------------------


def test_unsupported_methods(node: Node) -> None:
    """A method a route does not serve: 405 JSON with an Allow header naming the right ones."""
    cases = [
        ("PATCH", "/v1/topics/base", {"GET", "PUT", "DELETE"}),
        ("POST", "/v1/topics/base", {"GET", "PUT", "DELETE"}),
        ("DELETE", "/v1/topics", {"GET"}),
        ("PUT", "/v1/topics/base/messages", {"GET", "POST"}),
        ("POST", "/v1/topics/base/stream", {"GET"}),
        ("GET", "/v1/topics/base/groups/g1/pull", {"POST"}),
        ("GET", "/publish", {"POST"}),
        ("PUT", "/healthz", {"GET"}),
        ("POST", "/metrics", {"GET"}),
        ("DELETE", "/", {"GET"}),
    ]
    for method, path, allowed in cases:
        r = requests.request(method, node.url + path, timeout=TIMEOUT)
        assert_error(r, 405, "method_not_allowed")
        allow = {m.strip() for m in r.headers["allow"].split(",")}
        assert allowed <= allow <= allowed | {"HEAD", "OPTIONS"}, (path, allow)
    node.check_intact()


# -- sizes ---------------------------------------------------------------------------------------


def test_oversize_bodies(sprawl_nodes: Any) -> None:
    """With --max-body-bytes 100KB: bigger bodies (declared, chunked, raw or
    JSON, on any route) get 413 payload_too_large, and the node goes on serving
    with its data intact."""
    n = Node(sprawl_nodes("--max-body-bytes", "100KB"))
    n.publish_baseline()
    big = "x" * 150_000
    u = n.url
    r = requests.post(u + "/v1/topics/base/messages", json={"messages": [{"payload": big}]}, timeout=TIMEOUT)
    assert_error(r, 413, "payload_too_large")
    assert_error(post_raw(u + "/v1/topics/base/messages", big.encode(), "application/octet-stream"), 413)
    assert_error(post_raw(u + "/publish", json.dumps({"topic": "base", "payload": big}).encode()), 413)
    assert_error(requests.put(u + "/v1/topics/base", data=big, timeout=TIMEOUT), 413)
    # Chunked upload (no Content-Length): the limit holds as the bytes arrive.
    chunks = (b"y" * 10_000 for _ in range(20))
    r = requests.post(
        u + "/v1/topics/base/messages",
        data=chunks,
        headers={"Content-Type": "text/plain"},
        timeout=TIMEOUT,
    )
    assert_error(r, 413, "payload_too_large")
    # Just under the limit is fine; the topic's default message limit followed the body limit.
    r = requests.post(
        u + "/v1/topics/other/messages", json={"messages": [{"payload": "z" * 90_000}]}, timeout=TIMEOUT
    )
    assert r.status_code == 200, r.text
    n.check_intact()
    assert n.read_base() == n.baseline
    assert requests.get(u + "/v1/topics/base", timeout=TIMEOUT).json()["messages"] == 3


def test_message_over_max_message_bytes(node: Node) -> None:
    """A message larger than its topic's max_message_bytes: 413
    message_too_large, nothing written (JSON batch, raw body, seed publish)."""
    u = node.url + "/v1/topics/small"
    r = requests.put(u, json={"max_message_bytes": 1000}, timeout=TIMEOUT)
    assert r.status_code == 201, r.text
    ok = requests.post(u + "/messages", json={"messages": [{"payload": "a" * 1000}]}, timeout=TIMEOUT)
    assert ok.status_code == 200, ok.text
    r = requests.post(u + "/messages", json={"messages": [{"payload": "b" * 1001}]}, timeout=TIMEOUT)
    assert_error(r, 413, "message_too_large")
    r = requests.post(
        u + "/messages", json={"messages": [{"payload": "ok"}, {"payload": "c" * 5000}]}, timeout=TIMEOUT
    )
    assert_error(r, 413, "message_too_large")
    assert_error(post_raw(u + "/messages", b"d" * 1001, "application/octet-stream"), 413, "message_too_large")
    r = requests.post(node.url + "/publish", json={"topic": "small", "payload": "e" * 2000}, timeout=TIMEOUT)
    assert_error(r, 413, "message_too_large")
    got = requests.get(u + "/messages?from=earliest", timeout=TIMEOUT).json()
    assert [m["payload"] for m in got["messages"]] == ["a" * 1000]
    assert got["high_watermark"] == 1
    node.check_intact()


# -- misbehaving clients ------------------------------------------------------------------------


def test_slow_client_does_not_block_others(node: Node) -> None:
    """Clients that send half a request line, half the headers, or half a
    declared body hold their connections open; meanwhile other clients are
    served promptly, and the node is fine once the slow ones give up."""
    port = node.proc.http_port
    partials = [
        b"GET /v1/topics/base/mess",
        b"POST /v1/topics/base/messages HTTP/1.1\r\nHost: x\r\nContent-Ty",
        b"POST /v1/topics/base/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"messages": [{"payload": "half',
    ]
    slow = []
    try:
        for data in partials:
            s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            s.sendall(data)
            slow.append(s)
        for _ in range(3):
            started = time.monotonic()
            r = requests.get(node.url + "/v1/topics/base/messages?from=earliest", timeout=scaled(PROMPT))
            assert r.status_code == 200
            assert time.monotonic() - started < scaled(PROMPT)
            r = requests.post(
                node.url + "/v1/topics/slowtest/messages",
                json={"messages": [{"payload": "p"}]},
                timeout=scaled(PROMPT),
            )
            assert r.status_code == 200
    finally:
        for s in slow:
            s.close()
    got = requests.get(node.url + "/v1/topics/slowtest/messages?from=earliest", timeout=TIMEOUT).json()
    assert [m["payload"] for m in got["messages"]] == ["p"] * 3
    node.check_intact()


def test_vanished_clients(node: Node) -> None:
    """Clients that start a long-poll fetch, a long-poll pull or an SSE stream
    and then vanish: the node keeps serving, later publishes and reads work,
    and nothing is logged as an internal error."""
    assert requests.put(node.url + "/v1/topics/vanish/groups/vg", timeout=TIMEOUT).status_code == 201
    port = node.proc.http_port
    requests_to_abandon = [
        b"GET /v1/topics/vanish/messages?from=latest&wait_ms=30000 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/topics/vanish/messages?wait_ms=30000&from=0 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /v1/topics/vanish/groups/vg/pull HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 17\r\n\r\n{"wait_ms":30000}',
        b"GET /v1/topics/vanish/stream HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    for data in requests_to_abandon:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
            s.sendall(data)
            # A round trip on another connection proves the node has read and
            # parked the request before this client goes.
            assert requests.get(node.url + "/healthz", timeout=scaled(PROMPT)).status_code == 200
        # The socket closes here (RST or FIN) with the request still waiting.
    for _ in range(2):
        r = requests.post(
            node.url + "/v1/topics/vanish/messages",
            json={"messages": [{"payload": "v"}]},
            timeout=scaled(PROMPT),
        )
        assert r.status_code == 200, r.text
    # The vanished pull took no lease: the group still gets both messages.
    r = requests.post(node.url + "/v1/topics/vanish/groups/vg/pull", json={"max": 10}, timeout=scaled(PROMPT))
    assert r.status_code == 200
    assert [m["payload"] for m in r.json()["messages"]] == ["v", "v"]
    # A fresh long-poll is woken by a publish (the watchers of the vanished ones are gone, not broken).
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(b"GET /v1/topics/vanish/messages?from=2&wait_ms=20000 HTTP/1.0\r\n\r\n")
        assert requests.get(node.url + "/healthz", timeout=scaled(PROMPT)).status_code == 200
        r = requests.post(
            node.url + "/v1/topics/vanish/messages",
            json={"messages": [{"payload": "w"}]},
            timeout=scaled(PROMPT),
        )
        assert r.status_code == 200
        started = time.monotonic()
        buf = b""
        for _ in range(1000):  # HTTP/1.0: the answer ends when the node closes
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        assert time.monotonic() - started < scaled(PROMPT)
    body = json.loads(buf.partition(b"\r\n\r\n")[2])
    assert [m["payload"] for m in body["messages"]] == ["w"]
    node.check_intact()


def test_garbage_on_the_wire(node: Node) -> None:
    """A connection that sends non-HTTP bytes is dropped or refused; the node keeps serving."""
    port = node.proc.http_port
    for junk in [
        b"\x00\x01\x02\x03 garbage\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"\r\n" * 10 + b"BREW /pot\r\n\r\n",
    ]:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
            s.sendall(junk)
            try:
                answer = s.recv(4096)
            except (ConnectionResetError, TimeoutError):
                answer = b""
            assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer
    node.check_intact()


def test_node_intact_after_everything(node: Node) -> None:
    """Last: the node still serves and the data published before all the bad
    requests reads back the same (offsets, ids, payloads)."""
    node.check_intact()
    got = node.read_base()
    assert [(m["offset"], m["id"]) for m in got] == [(0, "base-1"), (1, "base-2"), (2, "base-3")]
    assert got[0]["payload"] == "first" and got[0]["key"] == "k1" and got[0]["headers"] == {"h": "1"}
    assert got[1]["payload_b64"] == "AAEC/w=="
    assert got[2]["payload"] == "third ✓"
    r = requests.get(node.url + "/v1/topics/base", timeout=TIMEOUT)
    assert r.json()["partition_details"][0]["high_watermark"] == 3
