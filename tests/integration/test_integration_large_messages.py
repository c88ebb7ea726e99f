"""Messages near ``max_message_bytes`` never make a peer frame too large to
send: a follower that was away while ~80 MB of 1 MB messages were published
catches up (real ``twistd`` nodes).

Before replication bounded its frames in bytes, the leader resent the lag as
one Append of up to 512 records -- here about 80 MB, over both the 64 MiB send
queue and the receiver's frame limit -- which was dropped silently, every
time, so the follower never caught up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness import NodeCluster, http_json, partition_views, poll_until

pytestmark = pytest.mark.integration

MESSAGE = 990_000  # payload bytes: just under the default max_message_bytes (1 MB)
BATCH = 8  # messages per publish (the body stays under the 8 MB default)
BATCHES = 10


def _view(cluster: NodeCluster, node: str, topic: str) -> dict[str, Any]:
    status, desc = cluster.get(node, f"/v1/topics/{topic}")
    if status != 200:
        return {}
    return next((v for v in partition_views(desc) if v.get("partition") == 0), {})


def _read_all(url: str, topic: str, want: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    nxt = 0
    for _ in range(want + 2):
        status, body = http_json(
            f"{url}/v1/topics/{topic}/messages?partition=0&from={nxt}&limit=100", timeout=30
        )
        assert status == 200, body
        if not body["messages"]:
            break
        out += body["messages"]
        nxt = body["next"]
        if len(out) >= want:
            break
    return out


def test_a_follower_catches_up_through_many_1mb_messages(tmp_path: Path) -> None:
    """Three nodes, a topic on all three: a follower (neither the partition's nor
    Raft's leader) is killed, 80 messages of ~1 MB are published with acks=quorum
    (the leader and the other follower), the follower is restarted on its data dir
    and holds every message, byte for byte, within the deadline."""
    cluster = NodeCluster(tmp_path, 3, "--raft-dead-grace", "300s")
    cluster.start()
    try:
        n0 = cluster.names[0]
        status, body = http_json(
            cluster.url(n0) + "/v1/topics/big", "PUT", {"partitions": 1, "replication_factor": 3}, timeout=15
        )
        assert status in (200, 201), body
        assert poll_until(lambda: bool(cluster.partition_leaders("big").get(0)), 20) is not None
        leader = cluster.partition_leaders("big")[0]
        assert leader is not None
        raft = cluster.raft_leader()
        follower = next(n for n in cluster.names if n not in (leader, raft))
        url = cluster.url(leader)
        status, body = http_json(
            url + "/v1/topics/big/messages", "POST", {"messages": [{"payload": "first"}]}
        )
        assert status == 200, body
        assert poll_until(lambda: _view(cluster, follower, "big").get("log_end", 0) >= 2, 20) is not None

        cluster.kill(follower)
        blob = "x" * MESSAGE
        for b in range(BATCHES):
            msgs = [{"payload": blob, "id": f"m{b}-{i}"} for i in range(BATCH)]
            status, body = http_json(url + "/v1/topics/big/messages", "POST", {"messages": msgs}, timeout=60)
            assert status == 200, body
        lead_view = _view(cluster, leader, "big")
        end = lead_view["log_end"]
        assert end >= 2 + BATCH * BATCHES

        cluster.restart(follower)

        def caught_up() -> bool:
            v = _view(cluster, follower, "big")
            return v.get("log_end") == end and v.get("high_watermark") == end

        took = poll_until(caught_up, 90)
        assert took is not None, f"the follower did not catch up: {cluster.partition_report('big', 0)}"
        cluster.note(f"{follower} caught up through {BATCH * BATCHES} messages of ~1 MB in {took:.1f} s")
        got = _read_all(cluster.url(follower), "big", 1 + BATCH * BATCHES)
        assert len(got) == 1 + BATCH * BATCHES
        assert [m["offset"] for m in got] == sorted(m["offset"] for m in got)
        big = [m for m in got if m.get("id", "").startswith("m")]
        assert len(big) == BATCH * BATCHES
        assert all(m["payload"] == blob for m in big)
    finally:
        cluster.close()
