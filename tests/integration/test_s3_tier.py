"""The S3 tier with real processes: a ``twistd sprawl`` node and a SeaweedFS S3 server on 127.0.0.1.

Small thresholds make segments spill within seconds; every wait is a bounded
poll of the node's own API.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness import NodeProcess, SeaweedProcess, metric_value, poll_until

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("s3")]

BUCKET = "sprawl-tier"


def call(url: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    """One JSON request; returns (status, decoded body) for 2xx and errors alike."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw else None


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll ``check`` until it returns something truthy, at most ``timeout``
    seconds (stretched by the load: :func:`harness.poll_until`)."""
    last: list[Any] = [None]

    def done() -> bool:
        last[0] = check()
        return bool(last[0])

    if poll_until(done, timeout) is None:
        raise AssertionError(f"timed out waiting for {what}; last: {last[0]!r}")
    return last[0]


def publish(node: NodeProcess, topic: str, start: int, n: int, size: int = 1000) -> list[int]:
    """Publish messages ``m{i}`` padded to ``size`` bytes; returns their offsets."""
    msgs = [{"payload": f"m{i:06d}".ljust(size, "x")} for i in range(start, start + n)]
    status, body = call(f"{node.url}/v1/topics/{topic}/messages", "POST", {"messages": msgs})
    assert status == 200, body
    return list(body["offsets"])


def s3_view(node: NodeProcess, topic: str) -> dict[str, Any]:
    """Partition 0's ``tiers`` of the topic description."""
    status, body = call(f"{node.url}/v1/topics/{topic}")
    assert status == 200, body
    return dict(body["partition_details"][0]["tiers"])


def replay(node: NodeProcess, topic: str, limit: int = 250) -> list[dict[str, Any]]:
    """Every message of partition 0 from ``earliest``, by fetch."""
    out: list[dict[str, Any]] = []
    cursor: Any = "earliest"
    for _ in range(10_000):
        status, body = call(f"{node.url}/v1/topics/{topic}/messages?from={cursor}&limit={limit}")
        assert status == 200, body
        out.extend(body["messages"])
        if body["next"] >= body["high_watermark"]:
            return out
        cursor = body["next"]
    raise AssertionError("replay did not end")


def node_args(server: SeaweedProcess, prefix: str, *extra: str) -> list[str]:
    return [
        "--s3-endpoint",
        server.endpoint.removeprefix("http://"),  # scheme-less, as the seed's MINIO_ENDPOINT may be
        "--s3-bucket",
        BUCKET,
        "--s3-prefix",
        prefix,
        *extra,
    ]


def keys_under(server: SeaweedProcess, prefix: str) -> list[str]:
    return server.keys(BUCKET, prefix + "/")


def test_spill_restart_and_replay_every_tier(
    seaweed: SeaweedProcess, sprawl_nodes: Any, s3_keys: None, tmp_path: Path
) -> None:
    """Sealed segments move to S3 (objects exist, LMDB shrinks); after a restart with an empty
    cache, fetch, SSE and a consumer group replay from ``earliest`` across S3, LMDB and memory
    in order, nothing missing."""
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    args = node_args(seaweed, prefix, "--segment-bytes", "20KB", "--disk-to-s3-age", "0s")
    node = sprawl_nodes(*args, name="n")
    total = 0
    for _ in range(8):
        publish(node, "ev", total, 50)
        total += 50
    tiers = wait_for("segments in S3", lambda: (v := s3_view(node, "ev"))["s3"]["segments"] >= 10 and v)
    assert tiers["s3"]["enabled"] and tiers["s3"]["status"] == "ok"
    assert tiers["s3"]["low"] == 0 and tiers["lmdb"]["low"] == tiers["s3"]["high"]
    objs = keys_under(seaweed, prefix)
    segs = [k for k in objs if k.endswith(".seg")]
    assert len(segs) >= 10 and len([k for k in objs if k.endswith(".idx")]) == len(segs)
    assert segs[0].startswith(f"{prefix}/ev/0/00000000000000000000-")
    status, store = call(f"{node.url}/store")
    assert store["s3"]["enabled"] and store["s3"]["uploads"] >= 10 and store["s3"]["bucket"] == BUCKET
    assert node.stop() in (0, -15)  # twistd ends by re-raising SIGTERM after a clean stop
    assert "stopped cleanly" in node.log_text()

    node = sprawl_nodes(*args, data_dir=node.data_dir)
    after = s3_view(node, "ev")
    assert after["s3"]["segments"] >= tiers["s3"]["segments"]
    publish(node, "ev", total, 20)  # a memory tail too
    total += 20
    got = replay(node, "ev")
    assert [m["offset"] for m in got] == list(range(total))
    assert [m["payload"][:7] for m in got] == [f"m{i:06d}" for i in range(total)]
    with urllib.request.urlopen(f"{node.url}/metrics", timeout=30) as r:
        metrics = r.read().decode()
    assert "sprawl_s3_cache_misses_total" in metrics and 'tier="s3"' in metrics

    # from_time lands inside a segment held in S3.
    ts = got[37]["timestamp"]
    status, body = call(f"{node.url}/v1/topics/ev/messages?from_time={ts}&limit=1")
    assert status == 200 and body["messages"][0]["offset"] == min(
        m["offset"] for m in got if m["timestamp"] >= ts
    )

    # sprawlctl shows the three tiers.
    from click.testing import CliRunner

    from sprawl.ctl import cli

    res = CliRunner().invoke(cli, ["-n", node.url, "topics", "describe", "ev"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "s3 [0," in res.output and "lmdb [" in res.output and "memory [" in res.output

    # SSE from earliest.
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=30)
    try:
        conn.request("GET", "/v1/topics/ev/stream?from=earliest")
        resp = conn.getresponse()
        assert resp.status == 200
        seen: list[int] = []
        while len(seen) < total:
            line = resp.readline()
            assert line, "stream ended early"
            if line.startswith(b"data: "):
                seen.append(json.loads(line[6:])["offset"])
        assert seen == list(range(total))
    finally:
        conn.close()

    # A consumer group from earliest.
    status, _ = call(f"{node.url}/v1/topics/ev/groups/g", "PUT", {"start": "earliest"})
    assert status in (200, 201)
    pulled: list[int] = []
    for _ in range(100):
        status, body = call(f"{node.url}/v1/topics/ev/groups/g/pull", "POST", {"max": 100})
        assert status == 200, body
        if not body["messages"]:
            break
        pulled.extend(m["offset"] for m in body["messages"])
        call(
            f"{node.url}/v1/topics/ev/groups/g/ack",
            "POST",
            {"ack_ids": [m["ack_id"] for m in body["messages"]]},
        )
    assert pulled == list(range(total))


def test_corrupt_or_missing_object_is_an_error_not_data(
    seaweed: SeaweedProcess, sprawl_nodes: Any, s3_keys: None
) -> None:
    """A segment object with a flipped byte, and one truncated, are each
    fetched again once and then named: a 500 ``corrupt_record`` for the
    chunk's offsets (never data, never a short read), one log line, the
    metric, ``/readyz``; ``sprawlctl verify --s3-endpoint`` finds both.  A
    deleted object answers ``s3_object_missing``."""
    from click.testing import CliRunner

    from sprawl.ctl import cli

    prefix = f"c-{uuid.uuid4().hex[:8]}"
    args = node_args(
        seaweed, prefix, "--segment-bytes", "20KB", "--disk-to-s3-age", "0s", "--scrub-rate", "0"
    )
    node = sprawl_nodes(*args)
    for i in range(6):
        publish(node, "bad", i * 50, 50)
    tiers = wait_for("segments in S3", lambda: (v := s3_view(node, "bad"))["s3"]["segments"] >= 4 and v)
    node.stop()  # the restarted node has nothing in memory: reads below LMDB go to S3
    segs = [k for k in keys_under(seaweed, prefix) if k.endswith(".seg")]
    bases = [int(k.rsplit("/", 1)[1].split("-")[0]) for k in segs]
    lasts = [int(k.rsplit("/", 1)[1].split("-")[1].split(".")[0]) for k in segs]
    c = seaweed.client()
    body = bytearray(c.get_object(Bucket=BUCKET, Key=segs[0])["Body"].read())
    body[20] ^= 0xFF
    c.put_object(Bucket=BUCKET, Key=segs[0], Body=bytes(body))
    body = c.get_object(Bucket=BUCKET, Key=segs[1])["Body"].read()
    c.put_object(Bucket=BUCKET, Key=segs[1], Body=body[: len(body) // 2])  # truncated
    r = CliRunner().invoke(
        cli,
        ["verify", str(node.data_dir), "--s3-endpoint", seaweed.endpoint, "--s3-bucket", BUCKET, "--json"],
    )
    assert r.exit_code == 1, r.output
    found = [(d["first_offset"], d["last_offset"], d["tier"]) for d in json.loads(r.output)["damaged"]]
    assert found == [(bases[0], lasts[0], "s3"), (bases[1], lasts[1], "s3")], r.output
    node = sprawl_nodes(*args, data_dir=node.data_dir)
    for start, first, last in ((0, bases[0], lasts[0]), (bases[1] + 3, bases[1], lasts[1])):
        for _ in range(2):
            status, err = call(f"{node.url}/v1/topics/bad/messages?from={start}&limit=10")
            assert status == 500 and err["error"]["code"] == "corrupt_record", err
            assert (err["error"]["first_offset"], err["error"]["last_offset"], err["error"]["tier"]) == (
                first,
                last,
                "s3",
            ), err
    # The node's output reaches the test through a reader thread: wait for the
    # lines, then count them.
    lines = [f"DAMAGED: bad/0 offsets {b}-{e} (s3)" for b, e in ((bases[0], lasts[0]), (bases[1], lasts[1]))]
    wait_for("the damage logged", lambda: all(x in node.log_text() for x in lines), timeout=30)
    logged = node.log_text()
    assert logged.count(f"DAMAGED: bad/0 offsets {bases[0]}-{lasts[0]} (s3)") == 1, logged[-3000:]
    assert logged.count(f"DAMAGED: bad/0 offsets {bases[1]}-{lasts[1]} (s3)") == 1
    assert logged.count("fetching it again") == 2, "each object fetched again once, then known damaged"
    status, ready = call(f"{node.url}/readyz")
    assert status == 503 and f"bad/0 offsets {bases[0]}-{lasts[0]} (s3)" in ready["reason"], ready
    with urllib.request.urlopen(f"{node.url}/metrics", timeout=10) as resp:
        assert 'sprawl_damage_found_total{tier="s3"} 2.0' in resp.read().decode()
    # An intact object still reads; a deleted one is missing, not damaged data.
    status, ok = call(f"{node.url}/v1/topics/bad/messages?from={bases[2]}&limit=5")
    assert status == 200 and [m["offset"] for m in ok["messages"]] == list(range(bases[2], bases[2] + 5)), ok
    c.delete_object(Bucket=BUCKET, Key=segs[3])
    status, err = call(f"{node.url}/v1/topics/bad/messages?from={bases[3]}&limit=10")
    assert status == 502 and err["error"]["code"] == "s3_object_missing", err
    # The LMDB range still reads.
    status, ok = call(f"{node.url}/v1/topics/bad/messages?from={tiers['lmdb']['low']}&limit=10")
    assert status == 200 and ok["messages"][0]["offset"] == tiers["lmdb"]["low"]


def test_retention_deletes_remote_segments(seaweed: SeaweedProcess, sprawl_nodes: Any, s3_keys: None) -> None:
    """Retention by age deletes whole segments in S3 too: the objects go and the log start moves."""
    prefix = f"r-{uuid.uuid4().hex[:8]}"
    node = sprawl_nodes(*node_args(seaweed, prefix, "--segment-bytes", "20KB", "--disk-to-s3-age", "0s"))
    status, _ = call(f"{node.url}/v1/topics/old", "PUT", {"retention_ms": 4000})
    assert status == 201
    for i in range(4):
        publish(node, "old", i * 50, 50)
    # Retention may take a segment before the next one is uploaded (a loaded
    # machine uploads slowly): count uploads, not what is in S3 at one instant.
    wait_for("segments moved to S3", lambda: metric_value(node.url, "sprawl_s3_uploads_total") >= 3)
    wait_for("remote objects deleted", lambda: keys_under(seaweed, prefix) == [], timeout=60)
    assert metric_value(node.url, "sprawl_s3_deleted_objects_total") >= 3
    tiers = s3_view(node, "old")
    assert tiers["s3"]["segments"] == 0 and tiers["s3"]["low"] is None
    status, body = call(f"{node.url}/v1/topics/old/messages?from=earliest")
    assert status == 200 and body["messages"] == []


def test_s3_outage_keeps_data_in_lmdb_until_the_hard_limit(
    own_seaweed: SeaweedProcess, sprawl_nodes: Any, s3_keys: None
) -> None:
    """With S3 down mid-spill, publishes continue into LMDB (status ``failing``) until the hard
    limit answers 507 ``disk_budget_exceeded``; when S3 returns, spilling resumes and every
    acknowledged message replays in order."""
    server = own_seaweed
    prefix = f"o-{uuid.uuid4().hex[:8]}"
    args = node_args(
        server,
        prefix,
        "--segment-bytes",
        "500KB",
        "--disk-budget",
        "10MB",
        "--disk-hard-limit",
        "16MB",
        "--disk-to-s3-age",
        "1h",
    )
    node = sprawl_nodes(*args)
    acked = 0
    size = 50_000
    while acked < 300:  # 15MB: well past the 10MB budget
        publish(node, "big", acked, 20, size)
        acked += 20
        if s3_view(node, "big")["s3"]["segments"] > 0:
            break
    wait_for("a budget spill", lambda: s3_view(node, "big")["s3"]["segments"] > 0)
    server.stop()
    refused = None
    for _ in range(400):
        msgs = [{"payload": f"m{i:06d}".ljust(size, "x")} for i in range(acked, acked + 20)]
        status, body = call(f"{node.url}/v1/topics/big/messages", "POST", {"messages": msgs})
        if status == 507:
            refused = body
            break
        assert status == 200, body
        acked += 20
    assert refused is not None, "publishes were never refused"
    assert refused["error"]["code"] == "disk_budget_exceeded"
    tiers = wait_for("failing status", lambda: (v := s3_view(node, "big"))["s3"]["status"] == "failing" and v)
    assert tiers["s3"]["last_error"]
    with urllib.request.urlopen(f"{node.url}/metrics", timeout=30) as r:
        metrics = r.read().decode()
    fails = [ln for ln in metrics.splitlines() if ln.startswith("sprawl_s3_upload_failures_total ")]
    assert fails and float(fails[0].split()[1]) >= 1
    status, store = call(f"{node.url}/store")
    assert store["s3"]["status"] == "failing"

    server.start()  # same ports, same data
    wait_for("spilling resumes", lambda: s3_view(node, "big")["s3"]["status"] == "ok", timeout=90)

    def accepted() -> bool:
        msgs = [{"payload": f"m{acked:06d}".ljust(size, "x")}]
        status, _ = call(f"{node.url}/v1/topics/big/messages", "POST", {"messages": msgs})
        return status == 200

    wait_for("publishes accepted again", accepted, timeout=90)
    acked += 1
    got = replay(node, "big", limit=100)
    assert [m["offset"] for m in got] == list(range(acked))
    assert [m["payload"][:7] for m in got] == [f"m{i:06d}" for i in range(acked)]


def test_kill_during_spilling_loses_nothing(
    seaweed: SeaweedProcess, sprawl_nodes: Any, s3_keys: None
) -> None:
    """``kill -9`` while segments are moving: after a restart every acknowledged message replays
    in order (each segment is in LMDB or verified in S3, never neither), and moving goes on."""
    prefix = f"k-{uuid.uuid4().hex[:8]}"
    args = node_args(seaweed, prefix, "--segment-bytes", "20KB", "--disk-to-s3-age", "0s")
    node = sprawl_nodes(*args)
    total = 0
    for _ in range(12):
        publish(node, "crash", total, 50)
        total += 50
    wait_for("some segments in S3", lambda: s3_view(node, "crash")["s3"]["segments"] >= 2)
    node.kill()
    node = sprawl_nodes(*args, data_dir=node.data_dir)
    got = replay(node, "crash")
    assert [m["offset"] for m in got] == list(range(total))
    assert [m["payload"][:7] for m in got] == [f"m{i:06d}" for i in range(total)]

    def all_moved() -> bool:
        _status, body = call(f"{node.url}/v1/topics/crash")
        d = body["partition_details"][0]
        return bool(d["tiers"]["s3"]["segments"] == d["segments"] - 1)

    wait_for("every sealed segment in S3", all_moved)
    node.kill()
    node = sprawl_nodes(*args, data_dir=node.data_dir)
    assert [m["offset"] for m in replay(node, "crash")] == list(range(total))
