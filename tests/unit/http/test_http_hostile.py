"""Hostile HTTP input (issue 14, item 6) through the in-process API (StubTreq
on ``SprawlAPI.resource()``, a real LMDB store and a ``task.Clock``, as in
test_http_api): record sizes that count key and headers, answers bounded in
bytes, deep JSON, ``.``/``..`` names, the seed ``/subscribe`` and dead-letter
permissions, the ``Origin`` check, and hypothesis fuzzing of every body
decoder and of ``Last-Event-ID``.

Connection-level limits (time to send a request, the connection cap) are in
tests/unit/http/test_http_limits.py; WebSocket cases in tests/unit/http/test_websocket.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import bounded
from harness.inproc_http import Http, Node, assert_error
from harness.inproc_http import node as node
from sprawl.auth import Authenticator, TokenTable
from sprawl.cluster.dataplane import DataPlane
from sprawl.config import ConfigError
from sprawl.delivery.frames import batch
from sprawl.delivery.groups import ConsumerGroup, GroupConfig
from sprawl.delivery.streams import SSEStream, StreamRegistry
from sprawl.errors import BadRequest, SprawlError
from sprawl.http.api import SprawlAPI
from sprawl.http.codec import ack_ids, decode_json_body, fast_publish, parse_last_event_id, parse_message
from sprawl.http.origin import OriginPolicy, parse_allowed_origins
from sprawl.log.record import (
    DEFAULT_READ_BYTES,
    MAX_READ_BYTES,
    RECORD_OVERHEAD,
    Record,
    pack_record,
    take_bytes,
)
from sprawl.pubsub import check_group_name, check_topic_name
from sprawl.testing import FakeRPC

#: 64 headers of 120 KB: 7.68 MB that used to count as nothing.
BIG_HEADERS = {f"h{i:02d}": "v" * 120_000 for i in range(64)}
KB100 = "a" * 100_000
MAX_WAIT_S = 31  # past the longest long-poll (30 s)


async def publish_100k(node: Node, topic: str, n: int) -> None:
    """``n`` messages of 100 KB (payload ``a...`` with the index first), in batches of 5."""
    for i in range(0, n, 5):
        msgs = [{"payload": f"{j:03d}" + KB100[3:]} for j in range(i, min(n, i + 5))]
        await node.publish(topic, msgs)


# -- sizes count key and headers ----------------------------------------------------------------


def test_record_size_counts_payload_key_and_headers_in_utf8() -> None:
    """``size`` is payload + key + header names and values (UTF-8 bytes) + the fixed overhead;
    ``message_bytes`` is the same without the overhead."""
    r = Record(-1, 0, 0, None, "kéy", {"h": "é" * 10, "n": "1"}, b"p" * 7, True)
    assert r.message_bytes == 7 + len("kéy".encode()) + 1 + 20 + 1 + 1
    assert r.size == r.message_bytes + RECORD_OVERHEAD
    big = Record(5, 0, 0, None, None, BIG_HEADERS, b"x", True)
    assert big.message_bytes == 1 + 64 * (3 + 120_000)
    # Rebuilt from storage (LMDB) or a peer, it weighs the same.
    again = Record.from_storage(0, 5, big.to_storage())
    assert again.size == big.size


@pytest_twisted.ensureDeferred
async def test_headers_and_key_count_against_max_message_bytes(node: Node) -> None:
    """64 headers of 120 KB on a 1-byte payload are a 7.7 MB message: 413 under the default 1 MB
    limit, and nothing is created; non-ASCII header values count in UTF-8 bytes; a key counts."""
    r = await node.http.post(
        "/v1/topics/big/messages", json={"messages": [{"payload": "x", "headers": BIG_HEADERS}]}
    )
    assert_error(r, 413, "message_too_large")
    assert "7680193 bytes" in r.json()["error"]["message"]
    assert "big" not in node.broker.topics
    await node.create("small", max_message_bytes=1000)
    r = await node.http.post(
        "/v1/topics/small/messages", json={"messages": [{"payload": "p" * 300, "headers": {"h": "é" * 350}}]}
    )
    assert_error(r, 413, "message_too_large")  # 300 + 1 + 700 UTF-8 bytes (it was 651 characters)
    r = await node.http.post(
        "/v1/topics/small/messages", json={"messages": [{"payload": "p" * 900, "key": "k" * 200}]}
    )
    assert_error(r, 413, "message_too_large")
    # The raw-body form and the seed route take the same limit.
    r = await node.http.post("/v1/topics/small/messages?key=" + "k" * 200, data=b"p" * 900)
    assert_error(r, 413, "message_too_large")
    await node.publish("small", [{"payload": "p" * 900, "key": "k" * 50}])
    assert node.broker.topics["small"].logs[0].high_watermark == 1


@pytest_twisted.ensureDeferred
async def test_headers_count_against_memory_budget_and_backlog(node: Node) -> None:
    """A message's headers are charged to the partition's hot bytes, its segment bytes and the
    unflushed backlog that 429s publishers (not just its payload)."""
    await node.create("heavy", max_message_bytes=8 * 1000**2)
    t = node.broker.topics["heavy"]
    rec = Record(-1, 0, 0, None, None, BIG_HEADERS, b"x", True)
    d = node.broker.publish(t, [rec], "leader")
    # Queued for LMDB, not yet committed: the backlog holds the whole message.
    assert node.broker.backlog[(t.config.uid, 0)] >= 7_680_000
    await bounded(d)
    lg = t.logs[0]
    assert lg.hot_bytes >= 7_680_000
    assert node.broker.describe_topic(t)["bytes"] >= 7_680_000
    # Over HTTP too (the body is under the 8 MB body limit).
    r = await node.http.post(
        "/v1/topics/heavy/messages", json={"messages": [{"payload": "y", "headers": BIG_HEADERS}]}
    )
    assert r.code == 200, r
    assert lg.hot_bytes >= 2 * 7_680_000


# -- answers bounded in bytes ------------------------------------------------------------------


def test_take_bytes_and_batch_keep_at_least_one() -> None:
    """The budget helpers: a prefix within the budget, never empty; control records take no frame."""
    recs = [Record(i, 0, 0, None, None, None, b"x" * 1000, True) for i in range(5)]
    assert [r.offset for r in take_bytes(recs, 2 * 1064)] == [0, 1]
    assert [r.offset for r in take_bytes(recs, 1)] == [0]
    assert take_bytes(recs, 10**9) == recs
    ctl = Record(5, 0, 0, None, None, None, b"c", True, control=True)
    frames, used, n, nbytes = batch(
        [*recs[:2], ctl, *recs[2:]], Record.to_sse, 2 * len(recs[0].to_sse()) + 10
    )
    assert (used, n, nbytes) == (3, 2, 2000)  # the control record after the two frames is passed
    frames, used, n, _ = batch(recs, Record.to_sse, 1)
    assert (used, n) == (1, 1) and frames == [recs[0].to_sse()]


@pytest_twisted.ensureDeferred
async def test_fetch_is_bounded_by_max_bytes_from_memory_and_lmdb(node: Node) -> None:
    """``max_bytes`` bounds a fetch answer's messages (at least one), the cursor moves past what
    was given, and reads below the hot tail (LMDB) are bounded the same way."""
    await publish_100k(node, "f", 10)
    for evicted in (False, True):
        if evicted:
            lg = node.broker.topics["f"].logs[0]
            lg.evict(0)
            assert lg.read_hot(0, 1) is None, "the records should be read from LMDB now"
        r = await node.http.get("/v1/topics/f/messages?from=0&limit=100&max_bytes=250000")
        assert r.code == 200, r
        body = r.json()
        assert [m["offset"] for m in body["messages"]] == [0, 1]
        assert body["next"] == 2
        assert len(r.body) < 250_000 + 500
        one = await node.fetch("f", **{"from": "3", "max_bytes": "1"})
        assert [m["offset"] for m in one["messages"]] == [3] and one["next"] == 4
        # Following the cursor reads everything, in order, nothing twice.
        seen: list[int] = []
        nxt = 0
        for _ in range(20):
            got = await node.fetch("f", **{"from": str(nxt), "max_bytes": "350000"})
            if not got["messages"]:
                break
            seen += [m["offset"] for m in got["messages"]]
            nxt = got["next"]
        assert seen == list(range(10))


@pytest_twisted.ensureDeferred
async def test_fetch_default_and_limits_of_max_bytes(node: Node) -> None:
    """Without ``max_bytes`` an answer carries at most 4 MB; out-of-range values are 400."""
    await publish_100k(node, "d", 50)
    got = await node.fetch("d", **{"from": "0", "limit": "1000"})
    n = len(got["messages"])
    assert 30 < n < 50 and got["next"] == n
    assert sum(len(json.dumps(m)) for m in got["messages"]) <= DEFAULT_READ_BYTES
    for bad in ("0", "-1", str(MAX_READ_BYTES + 1), "lots"):
        r = await node.http.get(f"/v1/topics/d/messages?from=0&max_bytes={bad}")
        assert_error(r, 400, "invalid_parameter")


@pytest_twisted.ensureDeferred
async def test_multi_partition_fetch_is_bounded_too(node: Node) -> None:
    """A fetch over every partition stays within ``max_bytes``; each partition's cursor is past
    exactly what it gave."""
    await node.create("mp", partitions=4)
    for i in range(12):
        await node.publish("mp", [{"payload": KB100, "key": f"k{i}"}])
    got = await node.fetch("mp", **{"from": "0", "max_bytes": "450000"})
    msgs = got["messages"]
    assert 1 <= len(msgs) <= 4
    for p, nxt in got["next_by_partition"].items():
        mine = [m["offset"] for m in msgs if m["partition"] == int(p)]
        assert nxt == (max(mine) + 1 if mine else 0)


@pytest_twisted.ensureDeferred
async def test_group_pull_is_bounded_and_gives_back_the_rest_unseen(node: Node) -> None:
    """A pull leases at most ``max_bytes`` of messages (at least one); what did not fit is given
    back unseen -- delivered by the next pull as a first attempt, never counted as a redelivery."""
    await publish_100k(node, "g", 10)
    r = await node.http.put("/v1/topics/g/groups/w", json={"start": "earliest"})
    assert r.code == 201, r
    seen: list[int] = []
    for _ in range(10):
        r = await node.http.post("/v1/topics/g/groups/w/pull", json={"max": 10, "max_bytes": 250_000})
        assert r.code == 200, r
        msgs = r.json()["messages"]
        if not msgs:
            break
        assert len(msgs) == 2
        assert all(m["delivery_attempt"] == 1 for m in msgs)
        seen += [m["offset"] for m in msgs]
        g = (await node.http.get("/v1/topics/g/groups/w")).json()
        assert g["in_flight"] == len(seen)
    assert seen == list(range(10))
    g = (await node.http.get("/v1/topics/g/groups/w")).json()
    assert g["delivered_total"] == 10 and g["redelivered_total"] == 0
    for bad in (0, -1, MAX_READ_BYTES + 1, "x", True, None):
        r = await node.http.post("/v1/topics/g/groups/w/pull", json={"max": 1, "max_bytes": bad})
        assert_error(r, 400, "invalid_field")


@pytest_twisted.ensureDeferred
async def test_group_pull_below_the_hot_tail_is_bounded(node: Node) -> None:
    """The same from LMDB (records evicted from memory), with ``max_bytes`` of 1: one message."""
    await publish_100k(node, "gl", 4)
    await node.http.put("/v1/topics/gl/groups/w", json={"start": "earliest"})
    node.broker.topics["gl"].logs[0].evict(0)
    r = await node.http.post("/v1/topics/gl/groups/w/pull", json={"max": 4, "max_bytes": 1})
    assert [m["offset"] for m in r.json()["messages"]] == [0]
    r = await node.http.post("/v1/topics/gl/groups/w/pull", json={"max": 4})
    assert [m["offset"] for m in r.json()["messages"]] == [1, 2, 3]


def test_give_back_undoes_a_lease_without_counting_it() -> None:
    """The pure core: ``give_back`` returns leases unseen (the newest roll the cursor back; others
    become ready at once with the attempt undone), and the given-back lease's old deadline never
    expires the lease it gets again."""
    g = ConsumerGroup("w", GroupConfig(ack_deadline_ms=30_000), {0: 0})
    vis = {0: (0, 10)}
    first = g.pull(3, 0, vis)
    assert [d.offset for d in first] == [0, 1, 2]
    assert g.give_back(first[0].ack_id, 0) is None  # not the newest: ready again, attempt undone
    for d in reversed(first[1:]):
        assert g.give_back(d.ack_id, 0) is None
    assert g.give_back(first[1].ack_id, 0) == "unknown" and g.give_back("x", 0) == "malformed"
    assert g.in_flight == 0 and g.delivered_total == 0
    again = g.pull(3, 10_000, vis)
    assert [(d.offset, d.attempt) for d in again] == [(0, 1), (1, 1), (2, 1)]
    assert g.redelivered_total == 0
    # The first lease of offset 0 ran to 30 000; its new one runs to 40 000.
    assert g.tick(30_001) == [] and g.in_flight == 3
    g.tick(40_001)
    assert g.in_flight == 0


@pytest_twisted.ensureDeferred
async def test_sse_writes_are_bounded_by_max_bytes(node: Node) -> None:
    """An SSE stream writes at most ``max_bytes`` of frames per write (one message at least) and
    still delivers everything in order."""
    from sprawl.testing import FakeRequest

    await publish_100k(node, "s", 10)
    req = FakeRequest()
    t = node.broker.topics["s"]
    s = SSEStream(node.broker, t, {0: 0}, req, node.clock, registry=StreamRegistry(), max_bytes=250_000)
    s.start()
    writes = req.written[1:]  # after the preamble
    assert len(writes) == 5 and all(len(w) <= 250_000 for w in writes)
    assert [d["offset"] for _k, d in req.frames()] == list(range(10))
    s.close()
    one = FakeRequest()
    s = SSEStream(node.broker, t, {0: 0}, one, node.clock, registry=StreamRegistry(), max_bytes=1)
    s.start()
    assert len(one.written[1:]) == 10  # a message per write
    s.close()


@pytest_twisted.ensureDeferred
async def test_stream_and_ws_routes_validate_max_bytes(node: Node) -> None:
    """``?max_bytes=`` on /stream and /ws is checked before anything starts."""
    await node.publish("q", [{"payload": "x"}])
    for path in ("/v1/topics/q/stream", "/v1/topics/q/ws"):
        r = await node.http.get(f"{path}?max_bytes=0")
        assert_error(r, 400, "invalid_parameter")


# -- reads across the cluster are bounded -------------------------------------------------------


def _plane(node: Node, rpc: Any, placement: dict[str, Any] | None = None) -> DataPlane:
    control = SimpleNamespace(
        metadata=SimpleNamespace(placement=placement or {}, topics={}, nodes={}),
        watch_topics=lambda listener: None,
    )
    return DataPlane("a", node.broker, control, SimpleNamespace(handlers={}), rpc, node.clock)  # type: ignore[arg-type]


@pytest_twisted.ensureDeferred
async def test_fetch_rpc_answers_are_capped_whatever_the_caller_asks(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``fetch`` peer RPC (routed reads, remote stream feeds) answers at most BATCH_BYTES
    of records (one at least), however much the caller asks for, so an answer always fits a peer
    frame; and ``fetch_remote`` passes the caller's budget on."""
    import sprawl.cluster.routing as routing

    monkeypatch.setattr(routing, "BATCH_BYTES", 250_000)
    await publish_100k(node, "r", 10)
    rpc = FakeRPC()
    _plane(node, rpc)  # registers its peer RPC handlers with rpc
    for asked in (None, 10**12, 150_000):
        body = {"topic": "r", "partition": 0, "start": 0, "limit": 10_000, "wait_ms": 0, "max_bytes": asked}
        ans = await bounded(rpc.handlers["fetch"]("b", body, 1))
        want = 1 if asked == 150_000 else 2
        assert [x[0] for x in ans["records"]] == list(range(want))
        assert len(msgspec.msgpack.encode(ans)) < 250_000 + 1000
    # The caller side: the budget rides in the request.
    far = _plane(
        node,
        FakeRPC(lambda *a: {"records": [], "start": 0, "hw": 0}),
        {"r": [{"replicas": ["b"], "leader": "b", "epoch": 1}]},
    )
    await bounded(far.fetch_remote("r", 0, 0, None, 100, 0, max_bytes=123_456))
    assert far.rpc.calls[-1][2]["max_bytes"] == 123_456  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_cluster_group_pull_keeps_the_byte_budget_across_owners(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pull over several partition owners stops at the budget: an owner's answer past it (an
    owner always gives one message) is given back *unseen* -- with ``nack`` set too, so a node
    that predates ``unseen`` redelivers them rather than acking -- and the group_pull RPC's own
    answer is capped at BATCH_BYTES."""
    import sprawl.cluster.group_routes as gr

    await node.create("cg", partitions=2)
    t = node.broker.topics["cg"]
    await bounded(node.broker.put_group(t, "w", {"start": "earliest"}))
    recs = [Record(-1, 0, 0, None, None, None, KB100.encode(), True) for _ in range(2)]
    await bounded(node.broker.publish(t, recs, "leader", partition=0))
    remote = [Record(i, 1, 0, f"r{i}", None, None, KB100.encode(), True) for i in range(3)]

    def answer(peer: str, method: str, body: Any) -> Any:
        if method == "group_pull":
            return [[1, r.offset, 1, f"1-{r.offset}-1", 10**13, pack_record(r)] for r in remote]
        return {}

    rpc = FakeRPC(answer)
    placement = {
        "cg": [{"replicas": ["a"], "leader": "a", "epoch": 1}, {"replicas": ["b"], "leader": "b", "epoch": 1}]
    }
    plane = _plane(node, rpc, placement)
    got = await plane.groups.pull(t, "w", 10, 0, 250_000)
    assert [(dv.partition, dv.offset) for dv, _ in got] == [(0, 0), (0, 1)]
    (pull_call,) = [c for c in rpc.calls if c[1] == "group_pull"]
    assert 0 < pull_call[2]["max_bytes"] < 250_000  # what was left of the budget
    (back,) = [c for c in rpc.calls if c[1] == "group_settle"]
    assert back[2]["unseen"] is True and back[2]["nack"] is True
    assert back[2]["ack_ids"] == ["1-0-1", "1-1-1", "1-2-1"]
    # The RPC's own answer (as the owner) is capped whatever the caller asks.
    monkeypatch.setattr(gr, "BATCH_BYTES", 150_000)
    g = node.broker.get_group(t, "w")
    for dv, _ in got:
        g.give_back(dv.ack_id, node.broker.now_ms())
    packed = await bounded(
        plane.groups._rpc_pull(
            "b",
            {"topic": "cg", "group": "w", "max": 10, "wait_ms": 0, "partitions": [0], "max_bytes": 10**12},
            1,
        )
    )
    assert len(packed) == 1


# -- deep JSON and other decoder errors ---------------------------------------------------------

DEEP = [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'{"messages":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"topics":[' + b"[" * 5000 + b"]" * 5000 + b"]}",
]
BODY_ROUTES = [
    ("POST", "/v1/topics/deep/messages"),
    ("PUT", "/v1/topics/deep"),
    ("PUT", "/v1/topics/deep/groups/g"),
    ("POST", "/v1/topics/deep/groups/g/pull"),
    ("POST", "/v1/topics/deep/groups/g/ack"),
    ("POST", "/v1/topics/deep/groups/g/nack"),
    ("POST", "/publish"),
    ("POST", "/subscribe"),
]


@pytest_twisted.ensureDeferred
async def test_json_nested_deeper_than_the_decoder_allows_is_400_everywhere(node: Node) -> None:
    """Every body-taking route answers deep nesting with 400 ``invalid_json`` (it was a 500 with
    a traceback), with authentication on too (the seed routes' bodies are read by the check)."""
    await node.publish("deep", [{"payload": "x"}])
    await node.http.put("/v1/topics/deep/groups/g", json={})
    for auth in (False, True):
        if auth:
            node.api.auth = Authenticator(
                TokenTable.from_json(
                    {
                        "tokens": [
                            {
                                "name": "root",
                                "token": "root-token-0123456789",
                                "permissions": {"*": ["admin"]},
                            }
                        ]
                    }
                )
            )
        headers = {"content-type": "application/json"}
        if auth:
            headers["authorization"] = "Bearer root-token-0123456789"
        for method, path in BODY_ROUTES:
            for body in DEEP:
                r = await node.http.call(method, path, data=body, headers=headers)
                assert r.code == 400, (method, path, body[:20], r)
                assert r.json()["error"]["code"] in ("invalid_json", "invalid_field", "invalid_messages"), r


@pytest_twisted.ensureDeferred
async def test_seed_publish_of_a_deep_payload_is_never_a_500(node: Node) -> None:
    """A seed ``payload`` that decodes (just under the decoder's limit) but is too deep to encode
    again is a 400, not a 500."""
    for depth in (10, 300, 800, 990):
        body = b'{"topic":"sp","payload":' + b"[" * depth + b"]" * depth + b"}"
        r = await node.http.post("/publish", data=body, headers={"content-type": "application/json"})
        assert r.code in (200, 400), (depth, r)


# -- names . and .. -----------------------------------------------------------------------------


def test_dot_names_are_refused_by_the_checks() -> None:
    """``.`` and ``..`` are not topic or group names; names merely made of dots and more are."""
    for bad in (".", ".."):
        with pytest.raises(BadRequest):
            check_topic_name(bad)
        with pytest.raises(BadRequest):
            check_group_name(bad)
    for ok in ("...", ".a", "a.", "a..b"):
        check_topic_name(ok)
        check_group_name(ok)


@pytest_twisted.ensureDeferred
async def test_dot_names_are_refused_everywhere_a_name_is_taken(node: Node) -> None:
    """Routes, seed routes and a group's dead_letter_topic refuse ``.`` and ``..`` with 400."""
    await node.publish("t", [{"payload": "x"}])
    for name in (".", ".."):
        for method, path, body in [
            ("PUT", f"/v1/topics/{name}", {}),
            ("GET", f"/v1/topics/{name}/messages", None),
            ("PUT", f"/v1/topics/t/groups/{name}", {}),
        ]:
            r = await node.http.call(method, path, json=body)
            assert r.code == 400 and r.json()["error"]["code"] in (
                "invalid_topic_name",
                "invalid_group_name",
            ), r
        r = await node.http.post(f"/v1/topics/{name}/messages", json={"messages": [{"payload": "x"}]})
        assert_error(r, 400, "invalid_topic_name")
        r = await node.http.post("/publish", json={"topic": name, "payload": "x"})
        assert_error(r, 400, "invalid_topic_name")
        r = await node.http.post("/subscribe", json={"topics": ["t", name]})
        assert_error(r, 400, "invalid_topic_name")
        r = await node.http.post("/subscribe", json={"topics": ["t"], "id": name})
        assert_error(r, 400, "invalid_group_name")
        r = await node.http.put("/v1/topics/t/groups/g", json={"dead_letter_topic": name})
        assert_error(r, 400, "invalid_topic_name")
    assert set(node.broker.topics) == {"t"} and not node.broker.topics["t"].groups


# -- /subscribe and dead-letter permissions ----------------------------------------------------------

TOKENS = {
    "tokens": [
        {"name": "reader", "token": "reader-token-0123456789", "permissions": {"orders.*": ["subscribe"]}},
        {"name": "tadmin", "token": "tadmin-token-0123456789", "permissions": {"orders.*": ["admin"]}},
        {
            "name": "dlq-writer",
            "token": "dlqadm-token-0123456789",
            "permissions": {"orders.*": ["admin"], "dead.letters": ["publish"]},
        },
    ]
}


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}-token-0123456789"}


class _RecordingControl:
    """The node's control (LocalControl), recording group definitions that go through it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.groups: list[tuple[str, str]] = []

    def put_group(self, topic: Any, group: str, body: dict[str, Any]) -> Any:
        self.groups.append((topic.name, group))
        return self.inner.put_group(topic, group, body)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest_twisted.ensureDeferred
async def test_seed_subscribe_goes_through_the_control_and_needs_admin(node: Node) -> None:
    """``POST /subscribe`` creates its groups through the same path as ``PUT .../groups/G`` (the
    control: Raft in a cluster) and needs what that needs, admin on each topic."""
    control = _RecordingControl(node.api.control)
    node.api = SprawlAPI(node.broker, node.info, node.clock, node.metrics, control=control)
    node.http = Http(node.api.resource())
    r = await node.http.post("/subscribe", json={"topics": ["orders.a", "orders.b"], "id": "sub1"})
    assert r.code == 200, r
    assert sorted(control.groups) == [("orders.a", "sub1"), ("orders.b", "sub1")]
    node.api.auth = Authenticator(TokenTable.from_json(TOKENS))
    r = await node.http.post(
        "/subscribe", json={"topics": ["orders.c"], "id": "s2"}, headers=bearer("reader")
    )
    assert_error(r, 403, "forbidden")
    assert "orders.c" not in node.broker.topics
    r = await node.http.post(
        "/subscribe", json={"topics": ["orders.c"], "id": "s2"}, headers=bearer("tadmin")
    )
    assert r.code == 200, r
    assert "s2" in node.broker.topics["orders.c"].groups


@pytest_twisted.ensureDeferred
async def test_dead_letter_topic_needs_publish_permission_on_it(node: Node) -> None:
    """Setting a group's dead_letter_topic needs publish on that topic: the group will publish
    there.  Nothing is created when refused."""
    node.api.auth = Authenticator(TokenTable.from_json(TOKENS))
    body = {"max_deliveries": 2, "dead_letter_topic": "dead.letters"}
    r = await node.http.put("/v1/topics/orders.x/groups/g", json=body, headers=bearer("tadmin"))
    assert_error(r, 403, "forbidden")
    assert "orders.x" not in node.broker.topics
    r = await node.http.put(
        "/v1/topics/orders.x/groups/g",
        json={**body, "dead_letter_topic": "orders.dlq"},
        headers=bearer("tadmin"),
    )
    assert r.code == 201, r
    r = await node.http.put("/v1/topics/orders.x/groups/g2", json=body, headers=bearer("dlqadm"))
    assert r.code == 201, r
    assert node.broker.topics["orders.x"].groups["g2"].config.dead_letter_topic == "dead.letters"


# -- Origin ------------------------------------------------------------------------------------

EVIL = {"Origin": "http://evil.example"}


@pytest_twisted.ensureDeferred
async def test_cross_origin_state_changes_are_refused(node: Node) -> None:
    """POST/PUT/DELETE and WebSocket upgrades from a page of another origin get 403
    ``origin_not_allowed`` and change nothing; reads, requests without Origin (curl, sprawlctl)
    and the node's own pages (same scheme, host and port) are served."""
    await node.publish("o", [{"payload": "x"}])
    body = {"messages": [{"payload": "evil"}]}
    for method, path, kw in [
        ("POST", "/v1/topics/o/messages", {"json": body}),
        ("POST", "/v1/topics/o/messages", {"data": b"evil", "headers": {"content-type": "text/plain"}}),
        ("POST", "/v1/topics/new/messages", {"json": body}),
        ("PUT", "/v1/topics/o2", {"json": {}}),
        ("DELETE", "/v1/topics/o", {}),
        ("PUT", "/v1/topics/o/groups/g", {"json": {}}),
        ("POST", "/publish", {"json": {"topic": "o", "payload": "x"}}),
        ("POST", "/subscribe", {"json": {"topics": ["o"]}}),
        ("GET", "/v1/topics/o/ws", {"headers": {"Upgrade": "websocket", "Connection": "Upgrade"}}),
    ]:
        for origin in ("http://evil.example", "null", "http://sprawl.test:8081", "https://sprawl.test"):
            headers = {**kw.get("headers", {}), "Origin": origin}
            r = await node.http.call(method, path, **{**kw, "headers": headers})
            assert_error(r, 403, "origin_not_allowed")
    assert set(node.broker.topics) == {"o"} and node.broker.topics["o"].logs[0].high_watermark == 1
    assert not node.broker.topics["o"].groups
    # Reads from anywhere; writes without Origin; the node's own origin (Host: sprawl.test).
    assert (await node.http.get("/v1/topics/o/messages?from=0", headers=EVIL)).code == 200
    assert (await node.http.post("/v1/topics/o/messages", json=body)).code == 200
    for same in ("http://sprawl.test", "http://SPRAWL.test:80"):
        assert (
            await node.http.post("/v1/topics/o/messages", json=body, headers={"Origin": same})
        ).code == 200
    rejected = node.metrics.rejected_requests.labels("origin").value
    assert rejected == 36


@pytest_twisted.ensureDeferred
async def test_allowed_origins_may_change_state_and_get_cors(node: Node) -> None:
    """An origin in ``--allowed-origins`` may publish; its preflight is answered and its answers
    carry Access-Control-Allow-Origin; other origins get no CORS and stay refused."""
    node.api.origins = OriginPolicy(parse_allowed_origins("https://app.example, http://localhost:3000"))
    app = {"Origin": "https://app.example"}
    r = await node.http.post("/v1/topics/c/messages", json={"messages": [{"payload": "x"}]}, headers=app)
    assert r.code == 200 and r.header("access-control-allow-origin") == "https://app.example"
    pre = await node.http.call(
        "OPTIONS", "/v1/topics/c/messages", headers={**app, "Access-Control-Request-Method": "POST"}
    )
    assert pre.code == 204
    assert "POST" in (pre.header("access-control-allow-methods") or "")
    assert "Content-Type" in (pre.header("access-control-allow-headers") or "")
    r = await node.http.post(
        "/v1/topics/c/messages",
        json={"messages": [{"payload": "x"}]},
        headers={"Origin": "http://localhost:3000"},
    )
    assert r.code == 200
    r = await node.http.post("/v1/topics/c/messages", json={"messages": [{"payload": "x"}]}, headers=EVIL)
    assert_error(r, 403, "origin_not_allowed")
    assert r.header("access-control-allow-origin") is None
    pre = await node.http.call(
        "OPTIONS", "/v1/topics/c/messages", headers={**EVIL, "Access-Control-Request-Method": "POST"}
    )
    assert pre.code == 405 and pre.header("access-control-allow-origin") is None


def test_origin_policy_and_option_parsing() -> None:
    """Origins compare by scheme, host and default port; bad option values are refused."""
    p = OriginPolicy(parse_allowed_origins(["https://a.example:443", "http://[::1]:8080"]))
    assert p.listed(b"https://a.example") and p.listed(b"https://A.EXAMPLE:443")
    assert p.listed(b"http://[::1]:8080") and not p.listed(b"http://[::1]:8081")
    assert not p.listed(b"http://a.example") and not p.listed(b"null") and not p.listed(b"\xff")
    assert p.allows(None, False, b"x")
    assert p.allows(b"http://node:8080", False, b"node:8080")
    assert p.allows(b"https://node", True, b"node:443")
    assert not p.allows(b"http://node:8080", True, b"node:8080")  # scheme differs
    assert not p.allows(b"http://evil", False, None)
    assert not p.allows(b"http://node:8080", False, b"node:8080/x")
    assert OriginPolicy(("*",)).allows(b"http://anything", False, b"x")
    assert OriginPolicy(("null",)).allows(b"null", False, b"x")
    for bad in ("example.com", "ftp://x", "http://x/path", "http://x:99999", "http://u@x"):
        with pytest.raises(ConfigError):
            parse_allowed_origins(bad)
    assert parse_allowed_origins(" , https://a.example/ ,") == ("https://a.example",)


# -- hypothesis: every body decoder and Last-Event-ID ---------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
field_names = st.sampled_from(
    [
        "messages",
        "acks",
        "payload",
        "payload_b64",
        "key",
        "headers",
        "id",
        "max",
        "wait_ms",
        "max_bytes",
        "ack_ids",
        "delay_ms",
        "start",
        "ack_deadline_ms",
        "max_deliveries",
        "dead_letter_topic",
        "max_in_flight",
        "partitions",
        "replication_factor",
        "retention_ms",
        "retention_bytes",
        "storage",
        "max_message_bytes",
        "segment_bytes",
        "segment_ms",
        "topic",
        "topics",
        "ttl",
    ]
)
bodies = st.dictionaries(field_names, json_values, max_size=5)
message_items = st.dictionaries(
    st.sampled_from(["payload", "payload_b64", "key", "headers", "id", "extra"]), json_values, max_size=4
)
raw_bodies = st.one_of(
    st.binary(max_size=200),
    bodies.map(msgspec.json.encode),
    st.lists(message_items, max_size=3).map(lambda ms: msgspec.json.encode({"messages": ms})),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
)


@settings(max_examples=300, deadline=None)
@given(raw_bodies)
def test_fuzzed_json_bodies_decode_or_raise_bad_request(raw: bytes) -> None:
    """The generic body decoder and the typed publish decoder: a value, None (the precise validator
    takes over) or BadRequest -- nothing else escapes."""
    try:
        decode_json_body(raw)
    except BadRequest as e:
        assert e.code == "invalid_json"
    got = fast_publish(raw, 10_000)
    assert got is None or (isinstance(got, tuple) and got[0])


@settings(max_examples=300, deadline=None)
@given(json_values | message_items)
def test_fuzzed_publish_items_parse_or_raise_bad_request(item: Any) -> None:
    """A publish item (HTTP batch, WebSocket frame): a Record or a BadRequest naming it."""
    try:
        r = parse_message(item, 3)
    except BadRequest as e:
        assert "messages[3]" in e.message
        return
    assert isinstance(r, Record) and isinstance(r.payload, bytes)


@settings(max_examples=300, deadline=None)
@given(bodies)
def test_fuzzed_topic_group_and_ack_bodies_validate_or_raise(body: dict[str, Any]) -> None:
    """Topic config, group config and ack/nack bodies: a config, or a SprawlError (4xx)."""
    b = _BROKER.get("b")
    if b is None:
        b = _BROKER["b"] = _validation_broker()
    for fn in (
        lambda: b.topic_config_from("t", body, None),
        lambda: b.group_config_from("t", "g", body, None),
        lambda: ack_ids(body, {"delay_ms"}),
    ):
        try:
            fn()
        except SprawlError as e:
            assert 400 <= e.status < 500, e


_BROKER: dict[str, Any] = {}


def _validation_broker() -> Any:
    """A broker for validation only (no store opened: the validators touch none)."""
    from twisted.internet import task

    from sprawl.config import NodeConfig
    from sprawl.pubsub import Broker

    return Broker(NodeConfig().validate(), SimpleNamespace(), task.Clock(), "v")  # type: ignore[arg-type]


@settings(max_examples=500, deadline=None)
@given(
    st.binary(max_size=60)
    | st.lists(
        st.tuples(st.integers(-3, 2**70), st.integers(-3, 2**70)).map(lambda t: f"{t[0]}:{t[1]}"), max_size=5
    ).map(lambda xs: ",".join(xs).encode())
    | st.text(alphabet="0123456789:, -+\t٣", max_size=30).map(lambda s: s.encode("utf-8"))
)
def test_fuzzed_last_event_id_parses_or_raises_bad_request(value: bytes) -> None:
    """SSE ``Last-Event-ID`` (and the WebSocket ``last_event_id``): {partition: offset} of
    non-negative integers, or BadRequest ``invalid_last_event_id``."""
    try:
        got = parse_last_event_id(value)
    except BadRequest as e:
        assert e.code == "invalid_last_event_id"
        return
    assert all(isinstance(p, int) and isinstance(o, int) and p >= 0 and o >= 0 for p, o in got.items())


@pytest_twisted.ensureDeferred
async def test_fuzzed_bodies_through_every_body_route_are_never_5xx(node: Node) -> None:
    """Hypothesis-generated bodies (raw bytes, field soups, message batches, deep nesting) through
    every body-taking route of the real resource: never a 5xx, and every 4xx has the error shape.
    (Hypothesis draws the bodies; the requests run on the reactor afterwards.)"""
    await node.publish("fz", [{"payload": "x"}])
    await node.http.put("/v1/topics/fz/groups/g", json={})
    samples: list[bytes] = []

    @settings(max_examples=40, deadline=None, database=None)
    @given(raw_bodies)
    def draw(raw: bytes) -> None:
        samples.append(raw)

    draw()
    routes = [(m, p.replace("deep", "fz")) for m, p in BODY_ROUTES]
    for raw in samples:
        for method, path in routes:
            for ctype in ("application/json", "text/plain"):
                pending = node.http.start(method, path, data=raw, headers={"content-type": ctype})
                node.clock.advance(MAX_WAIT_S)  # a valid pull may long-poll: end it
                r = await pending.result()
                assert r.code < 500, (method, path, raw[:80], r)
                if r.code >= 400:
                    err = r.json()["error"]
                    assert set(err) == {"code", "message"}, r


# -- streams end when their token does --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_sse_stream_opened_with_a_jwt_ends_when_it_expires(tmp_path: Path) -> None:
    """An SSE stream opened with a JWT ends with an ``error`` event ``token_expired`` (with its
    cursors, to resume with Last-Event-ID) once exp plus the 30 s leeway has passed; a stream
    opened with a static token (no expiry) goes on."""
    import time

    import jwt

    from harness.inproc_sse import Server
    from sprawl.auth import JWTVerifier

    secret = b"s" * 40
    s = Server(tmp_path)
    await s.listen()
    try:
        await s.publish("sx", ["m0"])
        s.api.auth = Authenticator(
            TokenTable.from_json(
                {
                    "tokens": [
                        {
                            "name": "static",
                            "token": "static-token-0123456789",
                            "permissions": {"*": ["admin"]},
                        }
                    ]
                }
            ),
            JWTVerifier(secret),
        )
        now = time.time()
        s.clock.advance(now - s.clock.seconds())
        exp = int(now + 120)
        tok = jwt.encode(
            {"sub": "svc", "permissions": {"sx": ["subscribe"]}, "exp": exp}, secret, algorithm="HS256"
        )
        c = await s.connect(f"/v1/topics/sx/stream?from=earliest&access_token={tok}")
        static = await s.connect("/v1/topics/sx/stream?from=earliest&access_token=static-token-0123456789")
        await c.wait_messages(1)
        s.clock.advance(exp + 29 - s.clock.seconds())
        assert not c.lost
        s.clock.advance(2)
        await c.wait_event("error")
        err = next(e["data"] for e in c.events if e["event"] == "error")
        assert err["code"] == "token_expired" and err["cursors"] == {"0": 1}
        await bounded(c.closed)
        await static.wait_messages(1)
        assert not static.lost
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_a_budget_stopped_storage_read_never_skips_to_the_hot_tail(node: Node) -> None:
    """Records below the hot tail read from LMDB within a byte budget: when the budget stops
    the read before the stored range ends, the answer ends there -- it does not go on with the
    (small) records of the hot tail, which would skip the stored ones in between.  (Long ids
    make a stored value larger than the record's size, so the scan stops with room left.)"""
    for i in range(10):
        await node.publish("gap", [{"payload": KB100, "id": f"{i:03d}" + "i" * 250}])
    lg = node.broker.topics["gap"].logs[0]
    lg.evict(0)
    await node.publish("gap", [{"payload": f"small{i}"} for i in range(5)])
    assert lg.hot_start == 10 and lg.read_hot(10, 5) is not None
    budget = 2 * (100_000 + RECORD_OVERHEAD) + 300
    t = node.broker.topics["gap"]
    recs = await bounded(node.broker.read(t, 0, 0, 100, max_bytes=budget))
    assert [r.offset for r in recs] == [0, 1]
    seen: list[int] = []
    nxt = 0
    for _ in range(20):
        got = await node.fetch("gap", **{"from": str(nxt), "max_bytes": str(budget)})
        if not got["messages"]:
            break
        seen += [m["offset"] for m in got["messages"]]
        nxt = got["next"]
    assert seen == list(range(15))
