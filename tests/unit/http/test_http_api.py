"""The HTTP API in process: ``treq.testing.StubTreq`` against ``SprawlAPI.resource()``.

A real :class:`LmdbStore` in ``tmp_path`` (its writer and reader threads report
back through the real the_reactor()) and a :class:`task.Clock` as the broker's and the
API's clock, so timestamps, long-poll deadlines and lease expiry move only when a
test advances them.

StubTreq delivers a request to the server synchronously, but a response the
server finishes later (after an fsynced LMDB commit, a reader-thread read or a
long-poll wake-up) reaches the client only on ``flush()``.  So every request goes
through :class:`Http`: it records the server-side request, waits (bounded) on
that request's ``notifyFinish()``, and only then flushes -- a real event, no
polling and no sleeps.
"""

from __future__ import annotations

import base64
import zlib
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families

from harness import bounded
from harness.inproc_http import BASE as BASE
from harness.inproc_http import T0 as T0
from harness.inproc_http import Http as Http
from harness.inproc_http import Node as Node
from harness.inproc_http import Pending as Pending
from harness.inproc_http import Reply as Reply
from harness.inproc_http import _Recorder as _Recorder
from harness.inproc_http import assert_error as assert_error
from harness.inproc_http import node as node
from harness.inproc_http import payloads as payloads
from sprawl.log.record import Record

# -- publish and fetch ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_publish_json_batch_round_trips_payloads_keys_headers_ids(node: Node) -> None:
    """A JSON batch (text, unicode, base64 binary; keys, headers, ids) comes back identical from a fetch."""
    binary = bytes(range(256)) + b"\x00\xff\xfe"
    sent = [
        {"payload": "hello", "key": "k1", "headers": {"h": "v", "trace": "abc"}, "id": "m-1"},
        {"payload": "h\u00e9llo \u2603 \U0001f600", "id": "m-2"},
        {"payload_b64": base64.b64encode(binary).decode(), "key": "bin", "id": "m-3"},
        {"payload": ""},
    ]
    res = await node.publish("orders", sent)
    assert res["offsets"] == [0, 1, 2, 3]
    assert res["partitions"] == [0, 0, 0, 0]
    assert res["ids"][:3] == ["m-1", "m-2", "m-3"]
    assert isinstance(res["ids"][3], str) and res["ids"][3]  # generated
    assert res["duplicates"] == [False] * 4
    assert res["stored"] == "lmdb"

    got = await node.fetch("orders", **{"from": "earliest"})
    msgs = got["messages"]
    assert [m["offset"] for m in msgs] == [0, 1, 2, 3]
    assert [m["id"] for m in msgs] == res["ids"]
    assert [m["key"] for m in msgs] == ["k1", None, "bin", None]
    assert [m["headers"] for m in msgs] == [{"h": "v", "trace": "abc"}, {}, {}, {}]
    assert msgs[0]["payload"] == "hello"
    assert msgs[1]["payload"] == "h\u00e9llo \u2603 \U0001f600"
    assert "payload" not in msgs[2]
    assert base64.b64decode(msgs[2]["payload_b64"]) == binary
    assert msgs[3]["payload"] == ""
    assert all(m["partition"] == 0 and m["timestamp"] == int(T0 * 1000) for m in msgs)


@pytest_twisted.ensureDeferred
async def test_fetch_from_lmdb_after_the_hot_tail_is_evicted(node: Node) -> None:
    """With the memory tail evicted, a fetch reads LMDB (on a reader thread) and returns the same messages."""
    binary = b"\x00\x01\xff" * 100
    sent = [{"payload": f"m{i}", "key": f"k{i}", "headers": {"i": str(i)}, "id": f"id{i}"} for i in range(5)]
    sent.append({"payload_b64": base64.b64encode(binary).decode(), "id": "bin"})
    await node.publish("cold", sent)
    before = await node.fetch("cold", **{"from": "earliest"})
    lg = node.broker.topics["cold"].logs[0]
    lg.evict(0)
    assert not lg.hot
    after = await node.fetch("cold", **{"from": "earliest"})
    assert after == before
    assert base64.b64decode(after["messages"][5]["payload_b64"]) == binary
    part = await node.fetch("cold", **{"from": "2", "limit": "2"})
    assert [m["id"] for m in part["messages"]] == ["id2", "id3"]
    assert part["next"] == 4


@pytest_twisted.ensureDeferred
async def test_raw_text_body_is_one_message_with_key_and_id_from_the_query(node: Node) -> None:
    """A text/plain body is one message with a text payload; ?key= and ?id= set its key and id."""
    r = await node.http.post(
        "/v1/topics/raw/messages?key=user-1&id=raw-1",
        data="h\u00e9llo raw".encode(),
        headers={"content-type": "text/plain; charset=utf-8"},
    )
    assert r.code == 200, r
    assert r.json()["offsets"] == [0]
    assert r.json()["ids"] == ["raw-1"]
    msgs = (await node.fetch("raw"))["messages"]
    assert len(msgs) == 1
    assert msgs[0]["payload"] == "h\u00e9llo raw"
    assert msgs[0]["key"] == "user-1"
    assert msgs[0]["id"] == "raw-1"


@pytest_twisted.ensureDeferred
async def test_raw_binary_body_round_trips_as_base64(node: Node) -> None:
    """An application/octet-stream body that is not UTF-8 comes back byte-exact as payload_b64."""
    binary = bytes(range(256)) * 4 + b"\xc3\x28"
    r = await node.http.post(
        "/v1/topics/raw/messages", data=binary, headers={"content-type": "application/octet-stream"}
    )
    assert r.code == 200, r
    msgs = (await node.fetch("raw"))["messages"]
    assert len(msgs) == 1
    assert "payload" not in msgs[0]
    assert base64.b64decode(msgs[0]["payload_b64"]) == binary


@pytest_twisted.ensureDeferred
async def test_same_key_always_lands_on_the_same_partition(node: Node) -> None:
    """Messages with one key go to one partition (CRC-32 of the key), in separate requests and in a batch."""
    await node.create("keyed", partitions=4)
    parts: set[int] = set()
    for i in range(5):
        res = await node.publish("keyed", [{"payload": f"a{i}", "key": "user-7"}])
        parts.update(res["partitions"])
    res = await node.publish("keyed", [{"payload": f"b{i}", "key": "user-7"} for i in range(5)])
    parts.update(res["partitions"])
    assert parts == {zlib.crc32(b"user-7") % 4}
    # Several keys spread over partitions, each one stable.
    keys = [f"key-{i}" for i in range(16)]
    first = (await node.publish("keyed", [{"payload": "x", "key": k} for k in keys]))["partitions"]
    again = (await node.publish("keyed", [{"payload": "y", "key": k} for k in keys]))["partitions"]
    assert first == again
    assert len(set(first)) > 1
    # The fetch of that partition shows them in publish order.
    p = parts.pop()
    got = await node.fetch("keyed", partition=str(p), **{"from": "earliest"})
    same_key = [m["payload"] for m in got["messages"] if m["key"] == "user-7"]
    assert same_key == [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)]


@pytest_twisted.ensureDeferred
async def test_messages_without_key_go_round_robin_over_partitions(node: Node) -> None:
    """Keyless messages cycle through every partition in turn, one request at a time or in a batch."""
    await node.create("rr", partitions=4)
    seq = []
    for i in range(8):
        seq.extend((await node.publish("rr", [{"payload": f"m{i}"}]))["partitions"])
    assert sorted(seq) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert all(seq[i + 1] == (seq[i] + 1) % 4 for i in range(7)), seq
    batch = (await node.publish("rr", [{"payload": f"b{i}"} for i in range(8)]))["partitions"]
    assert sorted(batch) == [0, 0, 1, 1, 2, 2, 3, 3]
    desc = (await node.http.get("/v1/topics/rr")).json()
    assert [p["high_watermark"] for p in desc["partition_details"]] == [4, 4, 4, 4]


@pytest_twisted.ensureDeferred
async def test_idempotent_publish_returns_the_first_offset(node: Node) -> None:
    """A message id seen again (later request or same batch) answers the first offset with duplicates true."""
    first = await node.publish("idem", [{"payload": "a", "id": "x"}, {"payload": "b", "id": "y"}])
    assert first["offsets"] == [0, 1]
    assert first["duplicates"] == [False, False]
    again = await node.publish("idem", [{"payload": "changed", "id": "y"}, {"payload": "c", "id": "z"}])
    assert again["offsets"] == [1, 2]
    assert again["duplicates"] == [True, False]
    same_batch = await node.publish("idem", [{"payload": "d", "id": "w"}, {"payload": "d2", "id": "w"}])
    assert same_batch["offsets"] == [3, 3]
    assert same_batch["duplicates"] == [False, True]
    raw = await node.http.post(
        "/v1/topics/idem/messages?id=x", data=b"raw", headers={"content-type": "text/plain"}
    )
    assert raw.json()["offsets"] == [0]
    assert raw.json()["duplicates"] == [True]
    got = await node.fetch("idem")
    assert [(m["id"], m["payload"]) for m in got["messages"]] == [
        ("x", "a"),
        ("y", "b"),
        ("z", "c"),
        ("w", "d"),
    ]
    assert got["high_watermark"] == 4


@pytest_twisted.ensureDeferred
async def test_fetch_from_limit_next_and_high_watermark(node: Node) -> None:
    """``from`` earliest/latest/N, ``limit`` and ``next`` page through a partition; high_watermark is its end."""
    await node.publish("pages", [{"payload": f"m{i}"} for i in range(10)])
    got = await node.fetch("pages", **{"from": "earliest", "limit": "3"})
    assert payloads(got) == ["m0", "m1", "m2"]
    assert got["next"] == 3
    assert got["high_watermark"] == 10
    seen = []
    nxt = 0
    for _ in range(10):
        page = await node.fetch("pages", **{"from": str(nxt), "limit": "4"})
        assert page["high_watermark"] == 10
        if not page["messages"]:
            break
        assert page["messages"][0]["offset"] == nxt
        seen.extend(payloads(page))
        nxt = page["next"]
    assert seen == [f"m{i}" for i in range(10)]
    assert nxt == 10
    latest = await node.fetch("pages", **{"from": "latest"})
    assert latest["messages"] == []
    assert latest["next"] == 10
    mid = await node.fetch("pages", **{"from": "7"})
    assert payloads(mid) == ["m7", "m8", "m9"]
    assert mid["next"] == 10
    # Without ``from`` a fetch starts at the earliest offset.
    assert payloads(await node.fetch("pages", limit="1")) == ["m0"]


@pytest_twisted.ensureDeferred
async def test_fetch_one_partition_of_many(node: Node) -> None:
    """``partition=P`` returns only that partition's messages, with its own next and high watermark."""
    await node.create("multi", partitions=3)
    res = await node.publish("multi", [{"payload": f"m{i}", "key": f"k{i}"} for i in range(12)])
    by_part: dict[int, list[str]] = {0: [], 1: [], 2: []}
    for i, p in enumerate(res["partitions"]):
        by_part[p].append(f"m{i}")
    for p, expected in by_part.items():
        got = await node.fetch("multi", partition=str(p), **{"from": "earliest"})
        assert payloads(got) == expected
        assert {m["partition"] for m in got["messages"]} <= {p}
        assert got["high_watermark"] == len(expected)
        assert got["next"] == len(expected)
    everything = await node.fetch("multi", **{"from": "earliest"})
    assert sorted(payloads(everything)) == sorted(f"m{i}" for i in range(12))
    assert everything["high_watermark"] == 12
    assert_error(await node.http.get("/v1/topics/multi/messages?partition=3"), 404, "partition_not_found")


@pytest_twisted.ensureDeferred
async def test_fetch_from_time(node: Node) -> None:
    """``from_time=MS`` starts at the first message with a timestamp at or after MS."""
    await node.publish("timed", [{"payload": "a"}])
    node.clock.advance(10)
    await node.publish("timed", [{"payload": "b"}])
    node.clock.advance(10)
    await node.publish("timed", [{"payload": "c"}])
    t0 = int(T0 * 1000)
    assert payloads(await node.fetch("timed", from_time=str(t0 - 1))) == ["a", "b", "c"]
    assert payloads(await node.fetch("timed", from_time=str(t0 + 1))) == ["b", "c"]
    assert payloads(await node.fetch("timed", from_time=str(t0 + 10_000))) == ["b", "c"]
    assert payloads(await node.fetch("timed", from_time=str(t0 + 10_001))) == ["c"]
    late = await node.fetch("timed", from_time=str(t0 + 60_000))
    assert late["messages"] == []
    assert late["next"] == 3
    got = await node.fetch("timed", from_time=str(t0 + 5_000))
    assert [m["timestamp"] for m in got["messages"]] == [t0 + 10_000, t0 + 20_000]
    assert_error(
        await node.http.get(f"/v1/topics/timed/messages?from=0&from_time={t0}"), 400, "invalid_parameter"
    )


@pytest_twisted.ensureDeferred
async def test_long_poll_returns_as_soon_as_a_message_is_published(node: Node) -> None:
    """A fetch with wait_ms held open at the end answers with the new message once it is stored, without the clock moving."""
    await node.publish("lp", [{"payload": "old"}])
    pending = node.http.start("GET", "/v1/topics/lp/messages?from=latest&wait_ms=30000")
    assert not pending.finished
    node.clock.advance(1)
    assert not pending.finished
    await node.publish("lp", [{"payload": "new", "id": "n1"}])
    r = await pending.result()
    assert r.code == 200, r
    body = r.json()
    assert [(m["offset"], m["payload"], m["id"]) for m in body["messages"]] == [(1, "new", "n1")]
    assert body["next"] == 2
    assert body["high_watermark"] == 2


@pytest_twisted.ensureDeferred
async def test_long_poll_returns_empty_when_the_wait_ends(node: Node) -> None:
    """With nothing published, a long-poll answers an empty page exactly when wait_ms has passed."""
    await node.publish("idle", [{"payload": "old"}])
    pending = node.http.start("GET", "/v1/topics/idle/messages?from=latest&wait_ms=5000")
    node.clock.advance(4.9)
    assert not pending.finished
    node.clock.advance(0.2)
    assert pending.finished
    r = await pending.result()
    assert r.code == 200, r
    assert r.json()["messages"] == []
    assert r.json()["next"] == 1


@pytest_twisted.ensureDeferred
async def test_long_poll_on_one_partition_ignores_other_partitions(node: Node) -> None:
    """A long-poll of partition 1 stays open through a publish to partition 0 and answers one to partition 1."""
    await node.create("lp2", partitions=2)
    names = [f"k{i}" for i in range(100)]
    key_for = {p: next(k for k in names if zlib.crc32(k.encode()) % 2 == p) for p in (0, 1)}
    pending = node.http.start("GET", "/v1/topics/lp2/messages?partition=1&from=latest&wait_ms=5000")
    await node.publish("lp2", [{"payload": "p0", "key": key_for[0]}])
    assert not pending.finished
    await node.publish("lp2", [{"payload": "p1", "key": key_for[1]}])
    r = await pending.result()
    assert payloads(r.json()) == ["p1"]
    assert r.json()["next"] == 1


# -- topics ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_topic_put_describe_list_delete(node: Node) -> None:
    """PUT creates (201) then updates (200); GET describes partitions and tiers; list; DELETE 204 then 404."""
    r = await node.http.put("/v1/topics/t1", json={"partitions": 2, "retention_ms": 3_600_000})
    assert r.code == 201, r
    assert r.json()["name"] == "t1"
    assert r.json()["partitions"] == 2
    r = await node.http.put("/v1/topics/t1", json={"retention_ms": 7_200_000})
    assert r.code == 200, r
    assert r.json()["retention_ms"] == 7_200_000
    assert r.json()["partitions"] == 2

    await node.publish("t1", [{"payload": "abc", "key": "k"}, {"payload": "def", "key": "k"}])
    desc = (await node.http.get("/v1/topics/t1")).json()
    assert desc["name"] == "t1"
    assert desc["storage"] == "durable"
    assert desc["messages"] == 2
    parts = desc["partition_details"]
    assert [p["partition"] for p in parts] == [0, 1]
    hot = zlib.crc32(b"k") % 2
    for p in parts:
        assert p["replicas"] == ["node-a"]
        assert p["leader"] == "node-a"
        assert p["epoch"] >= 1
        assert p["low"] == 0
        assert set(p["tiers"]) == {"memory", "lmdb", "s3"}
        assert p["high_watermark"] == (2 if p["partition"] == hot else 0)
    tiers = parts[hot]["tiers"]
    assert (tiers["memory"]["low"], tiers["memory"]["high"], tiers["memory"]["messages"]) == (0, 2, 2)
    assert (tiers["lmdb"]["low"], tiers["lmdb"]["high"], tiers["lmdb"]["messages"]) == (0, 2, 2)
    assert tiers["lmdb"]["bytes"] > 0
    assert tiers["memory"]["bytes"] > 0
    assert tiers["s3"]["enabled"] is False

    await node.create("t2")
    listing = (await node.http.get("/v1/topics")).json()["topics"]
    assert [t["name"] for t in listing] == ["t1", "t2"]
    t1 = listing[0]
    assert t1["partitions"] == 2
    assert t1["messages"] == 2
    assert t1["bytes"] > 0

    r = await node.http.delete("/v1/topics/t1")
    assert r.code == 204, r
    assert r.body == b""
    assert_error(await node.http.get("/v1/topics/t1"), 404, "topic_not_found")
    assert_error(await node.http.delete("/v1/topics/t1"), 404, "topic_not_found")
    assert_error(await node.http.get("/v1/topics/t1/messages"), 404, "topic_not_found")
    assert [t["name"] for t in (await node.http.get("/v1/topics")).json()["topics"]] == ["t2"]
    # A topic of the same name starts afresh.
    await node.create("t1")
    assert (await node.fetch("t1"))["messages"] == []


@pytest_twisted.ensureDeferred
async def test_partitions_grow_but_never_shrink(node: Node) -> None:
    """Partitions can be increased (the new ones are usable); a decrease is 409 and changes nothing."""
    await node.create("grow", partitions=2)
    r = await node.http.put("/v1/topics/grow", json={"partitions": 4})
    assert r.code == 200, r
    assert len(r.json()["partition_details"]) == 4
    got = await node.publish("grow", [{"payload": f"m{i}"} for i in range(8)])
    assert sorted(set(got["partitions"])) == [0, 1, 2, 3]
    assert (await node.fetch("grow", partition="3", **{"from": "earliest"}))["high_watermark"] == 2
    assert_error(await node.http.put("/v1/topics/grow", json={"partitions": 3}), 409, "partitions_shrink")
    assert (await node.http.get("/v1/topics/grow")).json()["partitions"] == 4
    assert_error(await node.http.put("/v1/topics/grow", json={"partitions": 0}), 400, "invalid_field")


@pytest_twisted.ensureDeferred
async def test_ephemeral_topic(node: Node) -> None:
    """An ephemeral topic acks from memory, serves fetches, and cannot be switched to durable."""
    r = await node.http.put("/v1/topics/eph", json={"storage": "ephemeral"})
    assert r.code == 201, r
    assert r.json()["storage"] == "ephemeral"
    res = await node.publish("eph", [{"payload": "a"}, {"payload": "b", "id": "b1"}])
    assert res["stored"] == "memory"
    assert res["offsets"] == [0, 1]
    again = await node.publish("eph", [{"payload": "b", "id": "b1"}])
    assert again["offsets"] == [1]
    assert again["duplicates"] == [True]
    got = await node.fetch("eph")
    assert payloads(got) == ["a", "b"]
    assert got["high_watermark"] == 2
    desc = (await node.http.get("/v1/topics/eph")).json()
    assert desc["storage"] == "ephemeral"
    mem = desc["partition_details"][0]["tiers"]["memory"]
    assert (mem["low"], mem["high"], mem["messages"]) == (0, 2, 2)
    assert desc["partition_details"][0]["tiers"]["lmdb"]["messages"] == 0
    assert_error(await node.http.put("/v1/topics/eph", json={"storage": "durable"}), 409, "storage_change")
    # A long-poll on an ephemeral topic wakes on publish too (no LMDB commit involved).
    pending = node.http.start("GET", "/v1/topics/eph/messages?from=latest&wait_ms=5000")
    assert not pending.finished
    await node.publish("eph", [{"payload": "c"}])
    assert payloads((await pending.result()).json()) == ["c"]


@pytest_twisted.ensureDeferred
async def test_errors_have_the_documented_shape(node: Node) -> None:
    """Bad input is a 4xx with {"error": {"code", "message"}} and changes nothing."""
    assert_error(await node.http.get("/v1/topics/nope/messages"), 404, "topic_not_found")
    assert_error(
        await node.http.post(
            "/v1/topics/t/messages", data=b"{not json", headers={"content-type": "application/json"}
        ),
        400,
        "invalid_json",
    )
    assert_error(
        await node.http.post(
            "/v1/topics/t/messages", json={"messages": [{"payload": "a", "payload_b64": "YQ=="}]}
        ),
        400,
        "invalid_message",
    )
    assert_error(
        await node.http.post("/v1/topics/t/messages", json={"messages": [{"payload_b64": "!!"}]}),
        400,
        "invalid_message",
    )
    assert_error(
        await node.http.post("/v1/topics/t/messages", json={"messages": []}), 400, "invalid_messages"
    )
    assert_error(await node.http.get("/v1/topics/bad%20name/messages"), 400, "invalid_topic_name")
    assert_error(await node.http.get("/no/such/route"), 404, "not_found")
    assert (await node.http.get("/v1/topics")).json()["topics"] == []


# -- consumer groups -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_group_pull_ack_and_describe(node: Node) -> None:
    """Pull leases messages with ack ids and attempt 1; ack commits them; GET shows committed, lag, in flight."""
    await node.publish("jobs", [{"payload": f"j{i}"} for i in range(3)])
    r = await node.http.put("/v1/topics/jobs/groups/workers", json={"start": "earliest"})
    assert r.code == 201, r
    assert r.json()["lag"] == 3
    r = await node.http.put("/v1/topics/jobs/groups/workers", json={"ack_deadline_ms": 60_000})
    assert r.code == 200, r
    assert r.json()["ack_deadline_ms"] == 60_000

    pulled = (await node.http.post("/v1/topics/jobs/groups/workers/pull", json={"max": 2})).json()["messages"]
    assert [m["payload"] for m in pulled] == ["j0", "j1"]
    assert [m["delivery_attempt"] for m in pulled] == [1, 1]
    assert all(isinstance(m["ack_id"], str) and m["ack_id"] for m in pulled)
    assert len({m["ack_id"] for m in pulled}) == 2
    g = (await node.http.get("/v1/topics/jobs/groups/workers")).json()
    assert g["in_flight"] == 2
    assert g["committed"] == {"0": 0}
    assert g["lag"] == 3

    r = await node.http.post(
        "/v1/topics/jobs/groups/workers/ack", json={"ack_ids": [m["ack_id"] for m in pulled]}
    )
    assert r.code == 200, r
    assert r.json()["acked"] == 2
    g = (await node.http.get("/v1/topics/jobs/groups/workers")).json()
    assert g["committed"] == {"0": 2}
    assert g["lag"] == 1
    assert g["in_flight"] == 0
    assert g["dead_lettered"] == 0

    rest = (await node.http.post("/v1/topics/jobs/groups/workers/pull", json={"max": 10})).json()["messages"]
    assert [m["payload"] for m in rest] == ["j2"]
    # A second ack of the same id is refused, and counted as not acked.
    r = await node.http.post(
        "/v1/topics/jobs/groups/workers/ack", json={"ack_ids": [rest[0]["ack_id"], pulled[0]["ack_id"]]}
    )
    assert r.json()["acked"] == 1
    assert list(r.json()["refused"]) == [pulled[0]["ack_id"]]
    g = (await node.http.get("/v1/topics/jobs/groups/workers")).json()
    assert (g["committed"], g["lag"], g["in_flight"]) == ({"0": 3}, 0, 0)
    assert_error(await node.http.get("/v1/topics/jobs/groups/nobody"), 404, "group_not_found")


@pytest_twisted.ensureDeferred
async def test_ack_of_an_expired_lease_is_refused_per_id(node: Node) -> None:
    """In one ack request, the id whose lease expired is refused (and redelivered later); the live one is acked."""
    await node.publish("lease", [{"payload": "a"}, {"payload": "b"}])
    await node.http.put("/v1/topics/lease/groups/g", json={"ack_deadline_ms": 1000})
    a = (await node.http.post("/v1/topics/lease/groups/g/pull", json={"max": 1})).json()["messages"][0]
    node.clock.advance(0.6)
    b = (await node.http.post("/v1/topics/lease/groups/g/pull", json={"max": 1})).json()["messages"][0]
    node.clock.advance(0.6)  # a's lease (1.0 s) has expired, b's has not
    r = await node.http.post(
        "/v1/topics/lease/groups/g/ack", json={"ack_ids": [a["ack_id"], b["ack_id"], "junk"]}
    )
    assert r.code == 200, r
    assert r.json()["acked"] == 1
    assert r.json()["refused"] == {a["ack_id"]: "expired", "junk": "malformed"}
    again = (await node.http.post("/v1/topics/lease/groups/g/pull", json={"max": 5})).json()["messages"]
    assert [(m["payload"], m["delivery_attempt"]) for m in again] == [("a", 2)]
    assert again[0]["ack_id"] != a["ack_id"]
    g = (await node.http.get("/v1/topics/lease/groups/g")).json()
    assert g["in_flight"] == 1
    assert g["committed"] == {"0": 0}


@pytest_twisted.ensureDeferred
async def test_nack_with_delay_redelivers_with_attempt_2(node: Node) -> None:
    """A nacked message comes back only after delay_ms, with delivery_attempt 2 and a new ack id."""
    await node.publish("retry", [{"payload": "only", "id": "o1"}])
    await node.http.put("/v1/topics/retry/groups/g", json={})
    first = (await node.http.post("/v1/topics/retry/groups/g/pull", json={})).json()["messages"]
    assert [(m["payload"], m["delivery_attempt"]) for m in first] == [("only", 1)]
    r = await node.http.post(
        "/v1/topics/retry/groups/g/nack", json={"ack_ids": [first[0]["ack_id"]], "delay_ms": 5000}
    )
    assert r.code == 200, r
    assert r.json()["nacked"] == 1
    assert (await node.http.post("/v1/topics/retry/groups/g/pull", json={})).json()["messages"] == []
    node.clock.advance(4.9)
    assert (await node.http.post("/v1/topics/retry/groups/g/pull", json={})).json()["messages"] == []
    node.clock.advance(0.2)
    second = (await node.http.post("/v1/topics/retry/groups/g/pull", json={})).json()["messages"]
    assert [(m["payload"], m["id"], m["delivery_attempt"]) for m in second] == [("only", "o1", 2)]
    assert second[0]["ack_id"] != first[0]["ack_id"]
    # The old ack id no longer names a live delivery.
    r = await node.http.post(
        "/v1/topics/retry/groups/g/ack", json={"ack_ids": [first[0]["ack_id"], second[0]["ack_id"]]}
    )
    assert r.json()["acked"] == 1
    assert list(r.json()["refused"]) == [first[0]["ack_id"]]


@pytest_twisted.ensureDeferred
async def test_extend_keeps_a_lease_past_its_old_deadline_until_the_new_one(node: Node) -> None:
    """POST .../extend moves a lease to now + extend_ms: not redelivered at the old
    deadline (the ack id still acks), redelivered at the new one; a group's
    ack_deadline_ms is the default length."""
    await node.publish("ext", [{"payload": "a"}, {"payload": "b"}])
    await node.http.put("/v1/topics/ext/groups/g", json={"ack_deadline_ms": 1000})
    a, b = (await node.http.post("/v1/topics/ext/groups/g/pull", json={"max": 2})).json()["messages"]
    node.clock.advance(0.5)
    r = await node.http.post(
        "/v1/topics/ext/groups/g/extend", json={"ack_ids": [a["ack_id"]], "extend_ms": 5000}
    )
    assert r.code == 200, r
    assert r.json() == {
        "extended": 1,
        "refused": {},
        "ack_deadlines": {a["ack_id"]: a["ack_deadline"] + 4500},
    }
    r = await node.http.post("/v1/topics/ext/groups/g/extend", json={"ack_ids": [b["ack_id"]]})
    assert r.json()["ack_deadlines"] == {b["ack_id"]: b["ack_deadline"] + 500}, "default: ack_deadline_ms"
    node.clock.advance(0.9)  # past both old deadlines (1.0 s), before b's new one (1.5 s)
    assert (await node.http.post("/v1/topics/ext/groups/g/pull", json={"max": 5})).json()["messages"] == []
    r = await node.http.post("/v1/topics/ext/groups/g/ack", json={"ack_ids": [b["ack_id"]]})
    assert r.json() == {"acked": 1, "refused": {}}
    node.clock.advance(4.0)
    assert (await node.http.post("/v1/topics/ext/groups/g/pull", json={"max": 5})).json()["messages"] == []
    node.clock.advance(0.2)  # a's new deadline (0.5 + 5.0 s) has passed
    again = (await node.http.post("/v1/topics/ext/groups/g/pull", json={"max": 5})).json()["messages"]
    assert [(m["payload"], m["delivery_attempt"]) for m in again] == [("a", 2)]


@pytest_twisted.ensureDeferred
async def test_extend_that_extends_nothing_is_a_clear_error(node: Node) -> None:
    """An expired lease is 409 lease_expired, an acked or unknown one 404
    lease_not_found, a malformed id 400 invalid_ack_id, a bad extend_ms 400;
    a batch with one live lease answers 200 listing the refused ids."""
    await node.publish("exq", [{"payload": "a"}, {"payload": "b"}, {"payload": "c"}])
    await node.http.put("/v1/topics/exq/groups/g", json={"ack_deadline_ms": 1000})
    a, b, c = (await node.http.post("/v1/topics/exq/groups/g/pull", json={"max": 3})).json()["messages"]
    await node.http.post("/v1/topics/exq/groups/g/ack", json={"ack_ids": [b["ack_id"]]})
    path = "/v1/topics/exq/groups/g/extend"
    r = await node.http.post(path, json={"ack_ids": [b["ack_id"], "9-9-9"]})
    assert (r.code, r.json()["error"]["code"]) == (404, "lease_not_found"), r.json()
    assert b["ack_id"] in r.json()["error"]["message"]
    r = await node.http.post(path, json={"ack_ids": ["junk"]})
    assert (r.code, r.json()["error"]["code"]) == (400, "invalid_ack_id")
    for bad in (0, -1, 43_200_001, "5", True):
        r = await node.http.post(path, json={"ack_ids": [c["ack_id"]], "extend_ms": bad})
        assert (r.code, r.json()["error"]["code"]) == (400, "invalid_field"), bad
    r = await node.http.post(path, json={"ack_ids": [c["ack_id"]], "extra": 1})
    assert r.code == 400
    r = await node.http.post(path, json={"ack_ids": [c["ack_id"], b["ack_id"]], "extend_ms": 10_000})
    assert r.code == 200 and r.json()["extended"] == 1 and r.json()["refused"] == {b["ack_id"]: "unknown"}
    node.clock.advance(1.0)
    r = await node.http.post(path, json={"ack_ids": [a["ack_id"]]})
    assert (r.code, r.json()["error"]["code"]) == (409, "lease_expired")
    r = await node.http.post("/v1/topics/exq/groups/nope/extend", json={"ack_ids": [c["ack_id"]]})
    assert (r.code, r.json()["error"]["code"]) == (404, "group_not_found")
    r = await node.http.post(path, json={"ack_ids": []})
    assert r.json() == {"extended": 0, "refused": {}, "ack_deadlines": {}}
    r = await node.http.post("/v1/topics/exq/groups/g/ack", json={"ack_ids": [c["ack_id"]]})
    assert r.json()["acked"] == 1, "the extended lease outlived the old deadline"


@pytest_twisted.ensureDeferred
async def test_pull_long_poll_waits_for_a_publish(node: Node) -> None:
    """A pull with wait_ms on an empty group answers once a message arrives; with none, after the wait."""
    await node.http.put("/v1/topics/pl/groups/g", json={})
    pending = node.http.start("POST", "/v1/topics/pl/groups/g/pull", json={"wait_ms": 10_000})
    assert not pending.finished
    await node.publish("pl", [{"payload": "late"}])
    r = await pending.result()
    assert [m["payload"] for m in r.json()["messages"]] == ["late"]
    empty = node.http.start("POST", "/v1/topics/pl/groups/g/pull", json={"wait_ms": 2000})
    node.clock.advance(1.9)
    assert not empty.finished
    node.clock.advance(0.2)
    assert (await empty.result()).json()["messages"] == []


@pytest_twisted.ensureDeferred
async def test_max_deliveries_moves_the_message_to_the_dead_letter_topic(node: Node) -> None:
    """After max_deliveries nacks the message goes to the dead-letter topic (with provenance headers) and is committed."""
    await node.publish(
        "work", [{"payload": "poison", "key": "k", "headers": {"a": "b"}}, {"payload": "fine"}]
    )
    r = await node.http.put(
        "/v1/topics/work/groups/g",
        json={"max_deliveries": 2, "dead_letter_topic": "work.dlq", "ack_deadline_ms": 60_000},
    )
    assert r.code == 201, r
    for attempt in (1, 2):
        msgs = (await node.http.post("/v1/topics/work/groups/g/pull", json={"max": 1})).json()["messages"]
        assert [(m["payload"], m["delivery_attempt"]) for m in msgs] == [("poison", attempt)]
        r = await node.http.post("/v1/topics/work/groups/g/nack", json={"ack_ids": [msgs[0]["ack_id"]]})
        assert r.json()["nacked"] == 1
    dlq = await node.fetch("work.dlq")
    assert len(dlq["messages"]) == 1
    dead = dlq["messages"][0]
    assert dead["payload"] == "poison"
    assert dead["key"] == "k"
    assert dead["headers"]["a"] == "b"
    assert dead["headers"]["sprawl-dlq-topic"] == "work"
    assert dead["headers"]["sprawl-dlq-offset"] == "0"
    assert dead["headers"]["sprawl-dlq-group"] == "g"
    assert dead["headers"]["sprawl-dlq-attempts"] == "2"
    g = (await node.http.get("/v1/topics/work/groups/g")).json()
    assert g["dead_lettered"] == 1
    assert g["in_flight"] == 0
    nxt = (await node.http.post("/v1/topics/work/groups/g/pull", json={"max": 5})).json()["messages"]
    assert [m["payload"] for m in nxt] == ["fine"]
    await node.http.post("/v1/topics/work/groups/g/ack", json={"ack_ids": [nxt[0]["ack_id"]]})
    g = (await node.http.get("/v1/topics/work/groups/g")).json()
    assert (g["committed"], g["lag"], g["dead_lettered"]) == ({"0": 2}, 0, 1)


@pytest_twisted.ensureDeferred
async def test_expired_leases_count_towards_max_deliveries(node: Node) -> None:
    """A consumer that never acks: after max_deliveries lease expiries the message is dead-lettered by the ticker."""
    await node.publish("stuck", [{"payload": "never-acked"}])
    await node.http.put(
        "/v1/topics/stuck/groups/g",
        json={"max_deliveries": 1, "dead_letter_topic": "stuck.dlq", "ack_deadline_ms": 500},
    )
    msgs = (await node.http.post("/v1/topics/stuck/groups/g/pull", json={})).json()["messages"]
    assert [m["delivery_attempt"] for m in msgs] == [1]
    node.clock.advance(0.6)  # the lease expires; the broker's ticker dead-letters it
    # The dead-letter publish commits on the LMDB thread: long-poll the DLQ for it.
    r = await node.http.get("/v1/topics/stuck.dlq/messages?from=earliest&wait_ms=10000")
    assert [m["payload"] for m in r.json()["messages"]] == ["never-acked"]
    g = (await node.http.get("/v1/topics/stuck/groups/g")).json()
    assert (g["dead_lettered"], g["in_flight"], g["committed"]) == (1, 0, {"0": 1})
    assert (await node.http.post("/v1/topics/stuck/groups/g/pull", json={})).json()["messages"] == []


# -- health, metrics, cluster ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_healthz_and_readyz(node: Node) -> None:
    """/healthz and /readyz are 200 on a serving node; /readyz turns 503 with a reason once it stops."""
    r = await node.http.get("/healthz")
    assert r.code == 200, r
    r = await node.http.get("/readyz")
    assert r.code == 200, r
    assert r.json()["ready"] is True
    await bounded(node.broker.stop())
    r = await node.http.get("/readyz")
    assert r.code == 503, r
    assert r.json()["ready"] is False
    assert "stopping" in r.json()["reason"]
    assert (await node.http.get("/healthz")).code == 200
    # A stopping node refuses writes with 503, not a hang.
    assert_error(
        await node.http.post("/v1/topics/t/messages", json={"messages": [{"payload": "x"}]}), 503, "stopping"
    )


@pytest_twisted.ensureDeferred
async def test_readyz_is_503_before_the_node_is_ready(node: Node) -> None:
    """Until the composition root marks the node ready, /readyz says why it is not."""
    node.info.ready = False
    node.info.not_ready_reason = "starting"
    r = await node.http.get("/readyz")
    assert r.code == 503, r
    assert r.json()["reason"] == "starting"


class _Raft:
    """What /readyz reads of the cluster control: a leader and the voters' strength."""

    def __init__(self, strength: Any) -> None:
        self.leader_name = "node-a"
        self.forced = ""
        self._strength = strength

    def strength(self) -> Any:
        return self._strength


@pytest_twisted.ensureDeferred
async def test_readyz_fault_tolerant(node: Node) -> None:
    """``/readyz?fault_tolerant=1`` is 200 only when the voter target is reached with
    every voter up; without the flag a leader is enough; a bad value is 400."""
    from sprawl.cluster.voters import Strength

    r = await node.http.get("/readyz?fault_tolerant=1")  # a lone node: its own target
    assert r.code == 200, r
    node.info.raft = _Raft(Strength(voters=1, live_voters=1, learners=2, target=3))
    assert (await node.http.get("/readyz")).code == 200
    r = await node.http.get("/readyz?fault_tolerant=1")
    assert r.code == 503, r
    assert "1 Raft voters (1 up) of a target of 3" in r.json()["reason"], r.json()
    node.info.raft = _Raft(Strength(voters=3, live_voters=2, learners=0, target=1))  # a voter down
    assert (await node.http.get("/readyz?fault_tolerant=true")).code == 503
    node.info.raft = _Raft(Strength(voters=3, live_voters=3, learners=0, target=3))
    assert (await node.http.get("/readyz?fault_tolerant=1")).code == 200
    assert (await node.http.get("/readyz?fault_tolerant=0")).code == 200
    assert_error(await node.http.get("/readyz?fault_tolerant=yes"), 400, "invalid_parameter")


@pytest_twisted.ensureDeferred
async def test_metrics_parse_and_count_publishes(node: Node) -> None:
    """/metrics is valid Prometheus text and counts published messages per topic."""
    await node.publish("m", [{"payload": "a"}, {"payload": "b"}, {"payload": "c"}])
    await node.publish("m", [{"payload": "a", "id": "d"}, {"payload": "a", "id": "d"}])
    r = await node.http.get("/metrics")
    assert r.code == 200, r
    assert r.header("content-type").startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.body.decode())}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for s in families["sprawl_published_messages"].samples
    }
    assert samples[("sprawl_published_messages_total", (("topic", "m"),))] == 4.0
    hw = {
        tuple(sorted(s.labels.items())): s.value for s in families["sprawl_partition_high_watermark"].samples
    }
    assert hw[(("partition", "0"), ("topic", "m"))] == 4.0
    assert "sprawl_http_requests" in families


@pytest_twisted.ensureDeferred
async def test_cluster_and_placement_shapes(node: Node) -> None:
    """/v1/cluster names the node, its members and Raft state; /v1/cluster/placement maps every partition."""
    c = (await node.http.get("/v1/cluster")).json()
    assert c["node_id"] == "node-a"
    assert c["leader"] == "node-a"
    assert isinstance(c["term"], int)
    assert len(c["members"]) == 1
    m = c["members"][0]
    assert {"id", "peer", "http", "state", "incarnation"} <= set(m)
    assert m["id"] == "node-a"
    assert m["state"] == "alive"
    assert {"role", "term", "commit_index", "applied", "voters"} <= set(c["raft"])
    assert c["raft"]["voters"] == ["node-a"]
    await node.create("placed", partitions=2)
    p = (await node.http.get("/v1/cluster/placement")).json()
    assert p == {
        "topics": {
            "placed": {
                "0": {"replicas": ["node-a"], "leader": "node-a", "epoch": 1},
                "1": {"replicas": ["node-a"], "leader": "node-a", "epoch": 1},
            }
        }
    }


@pytest_twisted.ensureDeferred
async def test_dashboard_is_html(node: Node) -> None:
    """GET / serves the HTML dashboard."""
    r = await node.http.get("/")
    assert r.code == 200, r
    assert r.header("content-type").startswith("text/html")
    assert b"<html" in r.body.lower()


# -- seed-compatible routes --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_seed_publish(node: Node) -> None:
    """POST /publish answers {"status": "published", "id", "offset", "partition"}; the message is fetchable."""
    r = await node.http.post("/publish", json={"topic": "seed", "payload": "hello", "id": "s1"})
    assert r.code == 200, r
    assert r.json() == {"status": "published", "id": "s1", "offset": 0, "partition": 0}
    r = await node.http.post("/publish", json={"topic": "seed", "payload": {"n": 1}})
    assert r.json()["status"] == "published"
    assert r.json()["offset"] == 1
    assert isinstance(r.json()["id"], str) and r.json()["id"]
    again = await node.http.post("/publish", json={"topic": "seed", "payload": "other", "id": "s1"})
    assert again.json()["offset"] == 0
    got = await node.fetch("seed")
    assert payloads(got) == ["hello", '{"n":1}']
    assert got["messages"][0]["id"] == "s1"
    assert_error(await node.http.post("/publish", json={"payload": "x"}), 400, "invalid_field")


@pytest_twisted.ensureDeferred
async def test_seed_subscribe_creates_a_group_on_each_topic(node: Node) -> None:
    """POST /subscribe answers {"status": "subscribed", "id"} and the group exists on every named topic."""
    r = await node.http.post("/subscribe", json={"topics": ["s1", "s2"], "id": "sub-a"})
    assert r.code == 200, r
    assert r.json()["status"] == "subscribed"
    assert r.json()["id"] == "sub-a"
    for t in ("s1", "s2"):
        g = await node.http.get(f"/v1/topics/{t}/groups/sub-a")
        assert g.code == 200, g
    r = await node.http.post("/subscribe", json={"topics": ["s1"]})
    gid = r.json()["id"]
    assert isinstance(gid, str) and gid
    assert (await node.http.get(f"/v1/topics/s1/groups/{gid}")).code == 200
    # Subscribing again is idempotent.
    assert (await node.http.post("/subscribe", json={"topics": ["s1", "s2"], "id": "sub-a"})).code == 200
    await node.http.post("/publish", json={"topic": "s2", "payload": "for-sub"})
    pulled = (await node.http.post("/v1/topics/s2/groups/sub-a/pull", json={})).json()["messages"]
    assert [m["payload"] for m in pulled] == ["for-sub"]


@pytest_twisted.ensureDeferred
async def test_seed_views(node: Node) -> None:
    """/status lists cluster_members; /health, /topics, /dht and /store are JSON views of the node."""
    await node.http.post("/publish", json={"topic": "v", "payload": "x"})
    s = await node.http.get("/status")
    assert s.code == 200, s
    assert [m["id"] for m in s.json()["cluster_members"]] == ["node-a"]
    h = await node.http.get("/health")
    assert h.code == 200, h
    assert h.json()["status"] == "healthy"
    t = await node.http.get("/topics")
    assert [x["name"] for x in t.json()["topics"]] == ["v"]
    d = await node.http.get("/dht")
    assert d.json()["topics"]["v"]["0"]["leader"] == "node-a"
    st = await node.http.get("/store")
    assert st.code == 200, st
    body = st.json()
    assert body["lmdb"]["commits"] >= 1
    assert body["topics"]["v"]["0"]["lmdb"]["messages"] == 1
    for path in ("/status", "/health", "/topics", "/dht", "/store"):
        r = await node.http.get(path)
        assert r.header("content-type") == "application/json", path


@pytest.mark.parametrize("path", ["/v1/topics/x/messages", "/v1/topics"])
@pytest_twisted.ensureDeferred
async def test_wrong_method_is_405(node: Node, path: str) -> None:
    """A known path with a wrong method is 405 with the error shape and an Allow header."""
    r = await node.http.call("PATCH", path)
    assert_error(r, 405, "method_not_allowed")
    assert r.header("allow")


@pytest_twisted.ensureDeferred
async def test_fetch_moves_past_a_gap_instead_of_stalling(tmp_path: Path) -> None:
    """After a restart loses an ephemeral topic's unspilled tail, a fetch from inside the
    gap answers ``next`` past it (at the high watermark), so a polling client moves on."""
    n = Node(tmp_path, memory_budget=1_000_000)
    try:
        await n.create("eph", storage="ephemeral")
        await n.publish("eph", [{"payload": "a" * 20_000} for _ in range(100)])
        n.broker.tick()  # over budget: spill 0..99 to LMDB
        await bounded(n.store.write([]))
        n.broker.tick()  # then evict them from memory
        await n.publish("eph", [{"payload": "b"} for _ in range(5)])  # 100..104 in memory only
    finally:
        await n.close()
    n2 = Node(tmp_path, memory_budget=1_000_000)
    try:
        got = await n2.fetch("eph", **{"from": "98"})
        assert [m["offset"] for m in got["messages"]] == [98, 99]
        gap = await n2.fetch("eph", **{"from": str(got["next"])})
        assert gap["messages"] == [] and gap["high_watermark"] == 105
        assert gap["next"] == 105, "the cursor must move past the lost range"
        await n2.publish("eph", [{"payload": "c"}])
        after = await n2.fetch("eph", **{"from": str(gap["next"])})
        assert [m["offset"] for m in after["messages"]] == [105]
    finally:
        await n2.close()


@pytest_twisted.ensureDeferred
async def test_control_records_take_an_offset_but_are_never_delivered(node: Node) -> None:
    """A control record (a new replication leader's epoch marker) is skipped by
    fetch -- whose cursor moves past it, even when it is all there is -- and
    settled unseen by consumer groups, so their lag still reaches 0."""
    await node.publish("ctl", [{"payload": f"m{i}"} for i in range(3)])
    t = node.broker.topics["ctl"]
    marker = Record(3, 0, 0, None, None, None, b"", True, control=True)
    await bounded(node.broker.append_replicated(t, 0, [marker]))
    await node.publish("ctl", [{"payload": f"m{i}"} for i in range(3, 5)])
    got = await node.fetch("ctl", **{"from": "earliest"})
    assert payloads(got) == ["m0", "m1", "m2", "m3", "m4"]
    assert [m["offset"] for m in got["messages"]] == [0, 1, 2, 4, 5] and got["next"] == 6
    only = await node.fetch("ctl", **{"from": "3", "limit": "1"})
    assert only["messages"] == [] and only["next"] == 4  # the cursor moved past the marker
    r = await node.http.put("/v1/topics/ctl/groups/g", json={"start": "earliest"})
    assert r.code == 201
    pulled = (await node.http.post("/v1/topics/ctl/groups/g/pull", json={"max": 10})).json()["messages"]
    assert [m["payload"] for m in pulled] == ["m0", "m1", "m2", "m3", "m4"]
    r = await node.http.post("/v1/topics/ctl/groups/g/ack", json={"ack_ids": [m["ack_id"] for m in pulled]})
    assert r.json()["acked"] == 5
    assert (await node.http.get("/v1/topics/ctl/groups/g")).json()["lag"] == 0


@pytest_twisted.ensureDeferred
async def test_topic_listing_pages_by_name_with_limit_and_after(node: Node) -> None:
    """``GET /v1/topics?limit=2`` answers pages of two topics in name order,
    each with the ``after`` of the next page in ``next`` (null on the last);
    a bad limit is a 400."""
    for name in ["d", "a", "c", "e", "b"]:
        await node.create(name)
    pages, after = [], None
    for _ in range(5):
        q = "/v1/topics?limit=2" + (f"&after={after}" if after else "")
        body = (await node.http.get(q)).json()
        pages.append([t["name"] for t in body["topics"]])
        after = body["next"]
        if after is None:
            break
    assert pages == [["a", "b"], ["c", "d"], ["e"]]
    assert [t["name"] for t in (await node.http.get("/v1/topics?after=c")).json()["topics"]] == ["d", "e"]
    assert "next" not in (await node.http.get("/v1/topics")).json()  # the whole list, as before
    assert_error(await node.http.get("/v1/topics?limit=0"), 400, "invalid_parameter")
    assert_error(await node.http.get("/v1/topics?limit=x"), 400, "invalid_parameter")
