"""The S3 tier shared by a partition's replicas, with real processes: ``twistd
sprawl`` nodes and a SeaweedFS S3 server on 127.0.0.1.

The scenario of issue 21: one node with the S3 tier takes acknowledged
messages on a topic with replication factor 3; its sealed segments move to
the bucket; two nodes join and the partition grows to three in-sync replicas;
the first node is then lost for good.  Every acknowledged message replays, in
order, from a survivor -- the part in S3 included -- and the bucket holds one
object per sealed segment, not one per replica.

Bounds: as in ``tests/integration/test_integration_dataplane.py`` (a cluster forms within
:data:`FORM_BOUND`; a replica set grows and catches up within
:data:`REPLICATE_BOUND`; a partition whose leader was killed has a new one
within :data:`FAILOVER_BOUND`), plus :data:`SPILL_BOUND` for segments older
than ``--disk-to-s3-age 1`` to move (one upload and one Raft commit each).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from harness import NodeProcess, SeaweedProcess, http_json, poll_until
from sprawl.log.manifest import parse_key

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("s3")]

BUCKET = "sprawl-shared"
FORM_BOUND = 60.0
REPLICATE_BOUND = 60.0
FAILOVER_BOUND = 30.0
SPILL_BOUND = 60.0
MESSAGES = 4000


def _call(node: NodeProcess, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return http_json(node.url + path, method, body, timeout=30)


def _part(node: NodeProcess, topic: str) -> dict[str, Any]:
    status, body = _call(node, "GET", f"/v1/topics/{topic}")
    return body["partition_details"][0] if status == 200 else {}  # type: ignore[no-any-return]


def _s3(node: NodeProcess, topic: str) -> dict[str, Any]:
    return dict((_part(node, topic).get("tiers") or {}).get("s3") or {})


def _replay(node: NodeProcess, topic: str) -> list[str] | None:
    """Every message of partition 0 from ``earliest`` by fetch (None on an error answer)."""
    out: list[str] = []
    cursor: Any = "earliest"
    for _ in range(1000):
        status, body = _call(node, "GET", f"/v1/topics/{topic}/messages?from={cursor}&limit=500")
        if status != 200:
            return None
        out.extend(m["payload"][:7] for m in body["messages"])
        if body["next"] >= body["high_watermark"]:
            return out
        cursor = body["next"]
    raise AssertionError("replay did not end")


def test_history_in_s3_replays_from_a_survivor_after_the_uploader_is_gone(
    seaweed: SeaweedProcess, sprawl_nodes: Any, s3_keys: None
) -> None:
    """1 node, ``--disk-to-s3-age 1``, 64 KB segments, 4,000 x 1 KB acknowledged
    on an RF=3 topic; two nodes join, the partition reaches three in-sync
    replicas (each follows the shared remote list, none uploads), the first
    node is killed for good: a replay from ``earliest`` on each survivor gives
    all 4,000 in order, and the bucket holds one object per sealed segment."""
    prefix = f"s-{uuid.uuid4().hex[:8]}"
    s3 = [
        "--s3-endpoint",
        seaweed.endpoint,
        "--s3-bucket",
        BUCKET,
        "--s3-prefix",
        prefix,
        "--segment-bytes",
        "64KB",
        "--disk-to-s3-age",
        "1",
    ]
    first = sprawl_nodes("--node-id", "n1", *s3, name="n1")
    assert _call(first, "PUT", "/v1/topics/ev", {"replication_factor": 3})[0] == 201
    for start in range(0, MESSAGES, 200):
        msgs = [{"payload": f"m{i:06d}".ljust(1000, "x")} for i in range(start, start + 200)]
        status, body = _call(first, "POST", "/v1/topics/ev/messages", {"messages": msgs})
        assert status == 200 and body["stored"] == "lmdb", body
    want = [f"m{i:06d}" for i in range(MESSAGES)]

    def all_sealed_moved(node: NodeProcess) -> bool:
        d = _part(node, "ev")
        return bool(d) and d["tiers"]["s3"]["segments"] == d["segments"] - 1 >= 40

    assert poll_until(lambda: all_sealed_moved(first), SPILL_BOUND) is not None, _part(first, "ev")
    moved = _s3(first, "ev")["segments"]

    seeds = ("--seeds", f"127.0.0.1:{first.peer_port}")
    others = [sprawl_nodes("--node-id", nm, *seeds, *s3, name=nm) for nm in ("n2", "n3")]
    nodes = [first, *others]

    def formed() -> bool:
        views = [_call(n, "GET", "/v1/cluster")[1] or {} for n in nodes]
        return all(sorted((v.get("raft") or {}).get("voters", [])) == ["n1", "n2", "n3"] for v in views)

    assert poll_until(formed, FORM_BOUND) is not None, "the cluster did not form"

    def three_in_sync() -> bool:
        d = _part(first, "ev")
        if sorted(d.get("in_sync") or []) != ["n1", "n2", "n3"]:
            return False
        # every replica has the shared segments at the front of its log
        return all(_s3(n, "ev").get("low") == 0 and _part(n, "ev").get("low") == 0 for n in others)

    assert poll_until(three_in_sync, REPLICATE_BOUND) is not None, [_part(n, "ev") for n in nodes]
    for n in others:
        assert _replay(n, "ev") == want, "a follower reads the history from the shared copy"
        status, store = _call(n, "GET", "/store")
        assert status == 200 and store["s3"]["uploads"] == 0, "followers never upload"
        assert _s3(n, "ev")["uploader"] is False
    assert _s3(first, "ev")["uploader"] is True

    # One object per sealed segment, not one per replica (nor per node).
    shared = _s3(first, "ev")["segments"]
    assert shared >= moved
    segs = [k for k in seaweed.keys(BUCKET, prefix + "/") if k.endswith(".seg")]
    assert len(segs) == shared == _call(first, "GET", "/store")[1]["s3"]["uploads"]
    assert all(parse_key(k) is not None and parse_key(k).node is None for k in segs)  # type: ignore[union-attr]

    first.kill()  # lost for good

    def survivor_replays() -> list[str] | None:
        got = _replay(others[0], "ev")
        return got if got is not None and len(got) >= MESSAGES else None

    got = poll_until(lambda: survivor_replays() is not None, FAILOVER_BOUND)
    assert got is not None, _part(others[0], "ev")
    assert _replay(others[0], "ev") == want
    assert _replay(others[1], "ev") == want

    def leader_elsewhere() -> bool:
        status, body = _call(
            others[1], "POST", "/v1/topics/ev/messages", {"messages": [{"payload": "after"}]}
        )
        return status == 200 and body["stored"] == "quorum"

    assert poll_until(leader_elsewhere, FAILOVER_BOUND) is not None
    got = _replay(others[1], "ev")
    assert got is not None and got[:MESSAGES] == want and got[MESSAGES:] == ["after"]

    def one_per_segment() -> bool:
        segs_after = [k for k in seaweed.keys(BUCKET, prefix + "/") if k.endswith(".seg")]
        return len(segs_after) == _s3(others[0], "ev")["segments"] == _s3(others[1], "ev")["segments"]

    assert poll_until(one_per_segment, SPILL_BOUND) is not None, "still one object per segment"
