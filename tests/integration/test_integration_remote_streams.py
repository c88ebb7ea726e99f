"""Integration: SSE and WebSocket clients on a node that holds no replica of
some partitions (decision 9a), with two real ``twistd sprawl`` processes.

A topic of 4 partitions with ``replication_factor`` 1 on two nodes leaves each
partition's records on one node only.  Clients of the node ``x`` missing some
partition get every message published on the other node ``y``, in order per
partition; two clients of the same partition on ``x`` share one remote feed
(``GET /v1/cluster`` → ``partitions.remote_feeds``); a client resumes with
``Last-Event-ID`` without loss or duplicates; ``from=earliest`` catches up on
history; the feeds stop when the last client leaves.  Every wait is bounded;
every process and socket is closed by the test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from harness import FeedReader, NodeProcess, http_json, metrics_text, poll_until

pytestmark = pytest.mark.integration

FORM_BOUND = 30.0
DELIVERY_BOUND = 20.0


def _call(node: NodeProcess, path: str, body: Any = None, method: str = "GET") -> tuple[int, Any]:
    return http_json(node.url + path, method, body, timeout=15)


def _eventually(cond: Any, bound: float = 20.0) -> bool:
    """Whether ``cond()`` holds within ``bound`` seconds (polled)."""
    return poll_until(cond, bound) is not None


def _leader(node: NodeProcess) -> str | None:
    status, body = _call(node, "/v1/cluster")
    return body["raft"].get("leader") or None if status == 200 else None


def _placement(node: NodeProcess, topic: str) -> dict[int, list[str]]:
    status, body = _call(node, "/v1/cluster/placement")
    if status != 200 or topic not in body["topics"]:
        return {}
    return {int(p): list(v["replicas"]) for p, v in body["topics"][topic].items()}


def _remote(node: NodeProcess) -> dict[str, Any]:
    status, body = _call(node, "/v1/cluster")
    return body.get("partitions", {}) if status == 200 else {}


@pytest.fixture
def readers() -> Iterator[list[FeedReader]]:
    """Stream clients opened by a test; all closed at its end."""
    opened: list[FeedReader] = []
    yield opened
    for r in opened:
        r.close()


def test_streams_on_a_node_without_the_partition(sprawl_nodes: Any, readers: list[FeedReader]) -> None:
    a = sprawl_nodes("--node-id", "a", name="a")
    b = sprawl_nodes("--node-id", "b", "--seeds", f"127.0.0.1:{a.peer_port}", name="b")
    nodes = {"a": a, "b": b}

    def formed() -> bool:
        la, lb = _leader(a), _leader(b)
        return la is not None and la == lb and '"b"' in json.dumps(_call(a, "/v1/cluster")[1])

    assert _eventually(formed, FORM_BOUND), "the two nodes did not form a cluster"
    # Both nodes are in the metadata before the topic is placed (else all of it lands on a).
    assert _eventually(lambda: len((_call(a, "/v1/cluster")[1] or {}).get("members", [])) == 2, FORM_BOUND)
    status, body = _call(a, "/v1/topics/feed", {"partitions": 4, "replication_factor": 1}, "PUT")
    assert status == 201, body
    assert _eventually(lambda: len(_placement(a, "feed")) == len(_placement(b, "feed")) == 4, FORM_BOUND)
    placement = _placement(a, "feed")
    assert all(len(r) == 1 for r in placement.values()), placement
    # x: the node missing most partitions (at least one, with RF 1 on two nodes); y: the other.
    xname = max(nodes, key=lambda n: sum(n not in r for r in placement.values()))
    x, y = nodes[xname], nodes["b" if xname == "a" else "a"]
    missing = sorted(p for p, r in placement.items() if xname not in r)
    assert missing, placement
    p0 = missing[0]
    print(f"\nplacement {placement}; streaming on {xname}, which holds none of {missing}")

    def publish(n: int, tag: str) -> dict[int, list[int]]:
        msgs = [{"payload": f"{tag}{i}", "key": f"k{i}"} for i in range(n)]
        status, body = _call(y, "/v1/topics/feed/messages", {"messages": msgs}, "POST")
        assert status == 200, body
        out: dict[int, list[int]] = {}
        for p, off in zip(body["partitions"], body["offsets"], strict=True):
            out.setdefault(p, []).append(off)
        return out

    history = publish(20, "h")
    assert any(p in missing for p in history), history

    # Two clients of partition p0 on x (one from latest, one from earliest),
    # one of every partition, and a WebSocket one of p0.
    port = x.http_port
    tail = FeedReader(port, f"/v1/topics/feed/stream?partition={p0}")
    readers.append(tail)
    early = FeedReader(port, f"/v1/topics/feed/stream?partition={p0}&from=earliest")
    readers.append(early)
    every = FeedReader(port, "/v1/topics/feed/stream?from=earliest")
    readers.append(every)
    ws = FeedReader(port, f"/v1/topics/feed/ws?partition={p0}&from=earliest", websocket=True)
    readers.append(ws)
    # Starts resolved at the holder: a timestamp, an offset.
    timed = FeedReader(port, f"/v1/topics/feed/stream?partition={p0}&from_time=0")
    readers.append(timed)
    second = history[p0][1] if len(history.get(p0, [])) > 1 else 0
    offset = FeedReader(port, f"/v1/topics/feed/stream?partition={p0}&from={second}")
    readers.append(offset)

    def subscribed() -> bool:
        v = _remote(x)
        return v.get("remote_subscribers") == len(missing) + 5

    assert _eventually(subscribed, DELIVERY_BOUND), _remote(x)
    view = _remote(x)
    # One remote feed per missing partition, however many clients read it.
    assert view["remote_feeds"] == view["remote_feeds_started"] == len(missing), view
    text = metrics_text(x.url)
    assert f"sprawl_remote_feeds {float(len(missing))}" in text, text
    assert _eventually(lambda: all(r.status is not None for r in readers), DELIVERY_BOUND)
    assert [r.status for r in readers] == [200, 200, 200, 101, 200, 200]

    live = publish(60, "m")
    want_all = {p: history.get(p, []) + live.get(p, []) for p in range(4)}
    total = sum(len(v) for v in want_all.values())

    def by_partition(r: FeedReader) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for m in r.received():
            out.setdefault(m["partition"], []).append(m["offset"])
        return out

    assert _eventually(lambda: len(every.received()) >= total, DELIVERY_BOUND), (len(every.received()), total)
    assert _eventually(lambda: len(early.received()) >= len(want_all[p0]), DELIVERY_BOUND)
    assert _eventually(lambda: len(ws.received()) >= len(want_all[p0]), DELIVERY_BOUND)
    assert _eventually(lambda: len(tail.received()) >= len(live.get(p0, [])), DELIVERY_BOUND)
    assert by_partition(every) == {p: v for p, v in want_all.items() if v}
    assert _eventually(lambda: len(timed.received()) >= len(want_all[p0]), DELIVERY_BOUND)
    want_offset = [o for o in want_all[p0] if o >= second]
    assert _eventually(lambda: len(offset.received()) >= len(want_offset), DELIVERY_BOUND)
    assert by_partition(early) == by_partition(ws) == by_partition(timed) == {p0: want_all[p0]}
    assert by_partition(offset) == {p0: want_offset}
    assert by_partition(tail) == ({p0: live[p0]} if live.get(p0) else {})
    assert [m["payload"] for m in early.received()] == [
        m["payload"] for m in every.received() if m["partition"] == p0
    ]

    # Resume: close the p0 client mid-stream and reconnect with Last-Event-ID.
    seen = early.received()
    cut = seen[len(seen) // 2]
    early.close()
    more = publish(20, "r")
    again = FeedReader(
        port, f"/v1/topics/feed/stream?partition={p0}", {"Last-Event-ID": f"{p0}:{cut['offset']}"}
    )
    readers.append(again)
    rest = [o for o in want_all[p0] + more.get(p0, []) if o > cut["offset"]]
    assert _eventually(lambda: len(again.received()) >= len(rest), DELIVERY_BOUND), (again.received(), rest)
    assert [m["offset"] for m in again.received()] == rest

    # The last client of a partition gone: its feed stops.
    for r in readers:
        r.close()
    assert _eventually(lambda: _remote(x).get("remote_feeds") == 0, DELIVERY_BOUND), _remote(x)
    assert _remote(x)["remote_subscribers"] == 0


def test_a_stream_follows_the_partition_through_a_failover(
    sprawl_nodes: Any, readers: list[FeedReader]
) -> None:
    """Four nodes, RF 3: a stream on the node outside a partition's replica set
    keeps every acknowledged message, in order and once, while the partition's
    leader is killed and another replica takes over (and, after the dead
    grace, the streaming node may itself become a replica: the stream then
    moves from the remote feed to the local log at its cursor)."""
    grace = ("--raft-dead-grace", "2s")
    names = ["n0", "n1", "n2", "n3"]
    first = sprawl_nodes("--node-id", "n0", *grace, name="n0")
    seeds = ("--seeds", f"127.0.0.1:{first.peer_port}")
    nodes = {"n0": first}
    for name in names[1:]:
        nodes[name] = sprawl_nodes("--node-id", name, *seeds, *grace, name=name)

    def formed() -> bool:
        views = [_call(n, "/v1/cluster")[1] or {} for n in nodes.values()]
        leaders = {(v.get("raft") or {}).get("leader") for v in views}
        return (
            len(leaders) == 1
            and None not in leaders
            and "" not in leaders
            and all(len(v.get("members", [])) == 4 for v in views)
        )

    assert _eventually(formed, FORM_BOUND), [_call(n, "/v1/cluster")[1] for n in nodes.values()]
    status, body = _call(first, "/v1/topics/fo", {"partitions": 4, "replication_factor": 3}, "PUT")
    assert status == 201, body

    def placed() -> bool:
        ps = [_placement(n, "fo") for n in nodes.values()]
        return all(len(p) == 4 and all(len(r) == 3 for r in p.values()) for p in ps)

    assert _eventually(placed, FORM_BOUND), _placement(first, "fo")
    raft_leader = _leader(first)

    def leaders_of(via: NodeProcess) -> dict[int, str]:
        _, b = _call(via, "/v1/cluster/placement")
        return {int(p): v["leader"] for p, v in ((b or {}).get("topics") or {}).get("fo", {}).items()}

    placement = _placement(first, "fo")
    lead = leaders_of(first)
    # A partition whose leader is not the Raft leader (the controller survives the kill).
    p0 = next((p for p in sorted(placement) if lead[p] != raft_leader), 0)
    victim = lead[p0]
    xname = next(n for n in names if n not in placement[p0])
    via = next(n for n in names if n not in (victim, xname))
    x = nodes[xname]
    print(f"\nplacement {placement}; {xname} streams {p0}, led by {victim}, which is killed")

    sent: list[int] = []

    def publish(tag: str, n: int, node: NodeProcess) -> None:
        for i in range(n):
            msg = {"payload": f"{tag}{i}", "key": f"{tag}{i}", "id": f"{tag}-{i}"}
            status, body = 0, None
            for _ in range(20):  # retried (idempotent by id) while a failover settles
                status, body = _call(node, "/v1/topics/fo/messages", {"messages": [msg]}, "POST")
                if status == 200:
                    break
                poll_until(lambda: False, 0.5)
            assert status == 200, body
            if body["partitions"][0] == p0:
                sent.append(body["offsets"][0])

    publish("a", 30, nodes[via])
    r = FeedReader(x.http_port, f"/v1/topics/fo/stream?partition={p0}&from=earliest")
    readers.append(r)
    assert _eventually(lambda: len(r.received()) >= len(sent), DELIVERY_BOUND)
    assert _remote(x)["remote_feeds"] == 1
    nodes[victim].kill()
    publish("b", 30, nodes[via])
    assert _eventually(lambda: leaders_of(x).get(p0) not in (None, victim), FORM_BOUND), leaders_of(x)
    publish("c", 30, x)
    assert _eventually(lambda: len(r.received()) >= len(sent), 60), (len(r.received()), sent)
    got = [m["offset"] for m in r.received()]
    assert got == sorted(set(got)), got  # in order, once
    assert set(sent) <= set(got), sorted(set(sent) - set(got))
    print(f"placement after: {_placement(x, 'fo')}; {xname}'s view {_remote(x)}")
