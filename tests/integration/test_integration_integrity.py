"""Storage integrity with real processes: bytes flipped in a stopped node's
LMDB ``data.mdb`` are found, named and never served as a short read.

Record values are located by their payloads (each message carries a unique
marker), so the damage is deterministic: it hits the values chosen, not
LMDB's own structures.  Random page damage is in
``test_random_lmdb_damage_is_named_or_refused``.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from harness import NodeProcess, http_json, metrics_text
from harness.paths import DATA
from sprawl.ctl import cli

pytestmark = pytest.mark.integration

N = 1000
SIZE = 2000
#: Bytes flipped per seed in the random-damage test (the issue's report: 200).
FLIPS = 50


def marker(i: int) -> bytes:
    """The unique start of message ``i``'s payload."""
    return b"<m%05d>" % i


def publish_all(node: NodeProcess, topic: str = "t", n: int = N, acks: str = "leader") -> list[int]:
    """``n`` messages of ``SIZE`` bytes with ids (message ``i`` carries
    :func:`marker` ``(i)``); returns the offset acknowledged for each."""
    offsets: list[int] = []
    for b in range(0, n, 100):
        msgs = [
            {"payload": marker(i).decode() + "x" * (SIZE - 8), "id": f"id-{i}"}
            for i in range(b, min(n, b + 100))
        ]
        status, body = http_json(
            f"{node.url}/v1/topics/{topic}/messages", "POST", {"messages": msgs, "acks": acks}
        )
        assert status == 200, body
        offsets.extend(body["offsets"])
    return offsets


def flip_values(data_dir: Path, offsets: list[int], at: int = 100) -> None:
    """Flip one byte ``at`` bytes into the payload of each message at
    ``offsets`` -- every copy LMDB holds (stale copies in free pages too).

    The bytes are written in place (``pwrite``), never by rewriting the file:
    a live node maps data.mdb, and a truncate-then-write would let it touch
    pages past the file's end for a moment (SIGBUS), which is not rot."""
    path = data_dir / "lmdb" / "data.mdb"
    data = path.read_bytes()
    flips: dict[int, int] = {}
    for off in offsets:
        m = marker(off)
        hits = [h.start() for h in re.finditer(re.escape(m), data)]
        assert hits, f"message {off} not found in data.mdb"
        for h in hits:
            i = h + len(m) + at
            flips[i] = data[i] ^ 0x5A
    fd = os.open(path, os.O_WRONLY)
    try:
        for i, b in flips.items():
            os.pwrite(fd, bytes([b]), i)
    finally:
        os.close(fd)


def read_range(node: NodeProcess, start: int, limit: int, topic: str = "t") -> tuple[int, Any]:
    """One fetch of partition 0."""
    return http_json(f"{node.url}/v1/topics/{topic}/messages?from={start}&limit={limit}&partition=0")


def check_served(msgs: list[dict[str, Any]], index: dict[int, int] | None = None) -> None:
    """Every message served is the one published at its offset (``index``:
    offset → message number; default: the same)."""
    for m in msgs:
        i = m["offset"] if index is None else index[m["offset"]]
        assert m["payload"] == marker(i).decode() + "x" * (SIZE - 8), m["offset"]


def metric(node: NodeProcess, name: str) -> float:
    """The value of one sample of the node's /metrics."""
    text = metrics_text(node.url)
    for line in text.splitlines():
        if line.startswith(name + " ") or (line.startswith(name + "{") and line.split(" ")[0] == name):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def verify_offline(data_dir: Path) -> tuple[int, str]:
    """``sprawlctl verify DATA_DIR --json`` in-process: exit code and output."""
    r = CliRunner().invoke(cli, ["verify", str(data_dir), "--json"])
    return r.exit_code, r.output


def test_flipped_record_values_are_named_never_short(sprawl_nodes: Any) -> None:
    """Damaged record values in LMDB: the start-time check finds them; each
    range is named once in the log, counted, shown by /readyz and
    /v1/damage, answered as corrupt_record by every read that meets it, and
    found by ``sprawlctl verify``; reads around it serve exactly what was
    published; skipping it (the operator's call) lets readers pass over it."""
    node = sprawl_nodes("--scrub-rate", "0", name="n")
    publish_all(node)
    node.stop()
    flip_values(node.data_dir, [100, 101, 102, 700])
    code, out = verify_offline(node.data_dir)
    assert code == 1, out
    import json

    report = json.loads(out)
    assert [(d["first_offset"], d["last_offset"], d["tier"]) for d in report["damaged"]] == [
        (100, 102, "lmdb"),
        (700, 700, "lmdb"),
    ], report
    assert all("checksum" in d["reason"] for d in report["damaged"])

    node.start()
    # /readyz names the damaged partition.
    status, ready = http_json(f"{node.url}/readyz")
    assert status == 503 and "t/0 offsets 100-102" in ready["reason"] and "700-700" in ready["reason"], ready
    # Every read that meets a damaged range is an error naming it; never a short read.
    for start, limit, rng in (
        (0, 10_000, (100, 102)),
        (50, 51, (100, 102)),
        (102, 1, (100, 102)),
        (600, 200, (700, 700)),
    ):
        status, err = read_range(node, start, limit)
        assert status == 500, (start, limit, err)
        e = err["error"]
        assert e["code"] == "corrupt_record" and (e["first_offset"], e["last_offset"]) == rng, err
        assert e["topic"] == "t" and e["partition"] == 0 and "t/0" in e["message"]
    status, err = http_json(f"{node.url}/v1/topics/t/messages?from=earliest&limit=10000")
    assert status == 500 and err["error"]["code"] == "corrupt_record", err
    # Reads that do not meet the damage serve exactly what was published.
    for start, limit in ((0, 100), (103, 597), (701, 299)):
        status, body = read_range(node, start, limit)
        assert status == 200, body
        assert [m["offset"] for m in body["messages"]] == list(range(start, start + limit))
        check_served(body["messages"])
    # Named once per range, counted once per range.
    log = node.log_text()
    assert log.count("DAMAGED: t/0 offsets 100-102 (lmdb)") == 1, log[-3000:]
    assert log.count("DAMAGED: t/0 offsets 700-700 (lmdb)") == 1
    assert metric(node, 'sprawl_damage_found_total{tier="lmdb"}') == 2
    assert metric(node, 'sprawl_damaged_ranges{state="damaged"}') == 2
    status, dmg = http_json(f"{node.url}/v1/damage")
    assert [
        (r["topic"], r["partition"], r["first_offset"], r["last_offset"], r["state"]) for r in dmg["ranges"]
    ] == [
        ("t", 0, 100, 102, "damaged"),
        ("t", 0, 700, 700, "damaged"),
    ]
    # A restart still knows (and does not log them as new).
    node.stop()
    node.start()
    assert http_json(f"{node.url}/readyz")[0] == 503
    assert "DAMAGED (known before the restart): t/0 offsets 100-102" in node.log_text()
    # The operator skips both ranges; readers pass over them, the rest is whole.
    r = CliRunner().invoke(cli, ["--nodes", node.url, "damage", "skip", "t", "0", "101", "101", "--yes"])
    assert r.exit_code == 0 and "offsets 100-102" in r.output, r.output
    status, err = http_json(
        f"{node.url}/v1/topics/t/damage/skip", "POST", {"partition": 0, "first_offset": 5, "last_offset": 6}
    )
    assert status == 404 and err["error"]["code"] == "damage_not_found"
    status, err = read_range(node, 0, 10_000)
    assert status == 500 and err["error"]["first_offset"] == 700
    r = CliRunner().invoke(cli, ["--nodes", node.url, "damage", "skip", "t", "0", "700", "700", "--yes"])
    assert r.exit_code == 0, r.output
    status, body = read_range(node, 0, 10_000)
    assert status == 200, body
    offsets = [m["offset"] for m in body["messages"]]
    assert offsets == [o for o in range(N) if o not in (100, 101, 102, 700)]
    check_served(body["messages"])
    assert http_json(f"{node.url}/readyz")[0] == 200
    assert metric(node, 'sprawl_damaged_ranges{state="skipped"}') == 2
    # Offline, the skipped ranges are no longer damage.
    node.stop()
    code, out = verify_offline(node.data_dir)
    assert code == 0 and json.loads(out)["damaged"] == [], out


def test_random_lmdb_damage_is_named_or_refused(sprawl_nodes: Any) -> None:
    """Random bytes flipped anywhere in data.mdb (LMDB's own pages included),
    for several seeds: the node either refuses to start, naming the damaged
    store, or starts and every offset of the partition is either served as
    published or inside a range a corrupt_record error names -- never
    silently missing.  (Here the start-time check reads every record back.)"""
    node = sprawl_nodes("--scrub-rate", "0", name="seed")
    publish_all(node)
    node.stop()
    outcomes = random_damage(node, range(8), 4096 * 2, None, N, check_served)
    assert any(o.startswith("served") and not o.startswith("served, 0 ") for o in outcomes), outcomes


OLD_N = 101_000  # past the 100,000 newest records the start-time check reads back


def old_payload(i: int) -> str:
    return f"<o{i:06d}>".ljust(100, "o")


def check_old(msgs: list[dict[str, Any]], index: dict[int, int] | None = None) -> None:
    for m in msgs:
        assert m["payload"] == old_payload(m["offset"]), m["offset"]


def test_random_damage_to_old_records_is_met_by_reads(sprawl_nodes: Any) -> None:
    """Random bytes flipped in the pages of the oldest records -- which the
    start-time check does not read back: the reads that reach them find the
    damage (values, keys, gaps, unreadable pages) and name it; never a short
    read (the report of issue 22)."""
    node = sprawl_nodes("--scrub-rate", "0", "--memory-budget", "16MB", name="old")
    for b in range(0, OLD_N, 5000):
        msgs = [{"payload": old_payload(i)} for i in range(b, min(OLD_N, b + 5000))]
        status, body = http_json(
            f"{node.url}/v1/topics/t/messages", "POST", {"messages": msgs, "acks": "leader"}
        )
        assert status == 200 and body["offsets"][0] == b, body
    node.stop()
    data = (node.data_dir / "lmdb" / "data.mdb").read_bytes()
    first = [data.find(old_payload(i).encode()[:9]) for i in (0, 2000)]
    assert 0 < first[0] < first[1], first
    outcomes = random_damage(node, range(4), first[0], first[1], OLD_N, check_old, page=2000)
    assert any(o.startswith("served") and not o.startswith("served, 0 ") for o in outcomes), outcomes


def random_damage(
    node: NodeProcess,
    seeds: Any,
    lo: int,
    hi: int | None,
    n: int,
    check: Any,
    page: int = 100,
) -> list[str]:
    """For each seed: flip FLIPS random bits of the stopped node's pristine
    data.mdb in ``[lo, hi)``, start it and account for every offset."""
    path = node.data_dir / "lmdb" / "data.mdb"
    pristine = path.read_bytes()
    outcomes = []
    for seed in seeds:
        rng = random.Random(seed)
        data = bytearray(pristine)
        for _ in range(FLIPS):
            i = rng.randrange(lo, hi or len(data))
            data[i] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        before = len(node.log_text())
        try:
            node.start()
        except RuntimeError:
            log = node.log_text()[before:]  # this start's lines
            assert re.search(r"DAMAGED|corrupt", log), log[-3000:]
            outcomes.append("refused")
            continue
        try:
            covered = account_for_every_offset(node, n, check, page)
            outcomes.append(f"served, {covered} damaged")
        finally:
            node.stop()
    print("outcomes", outcomes)
    return outcomes


def test_scrub_finds_damage_on_a_live_node(sprawl_nodes: Any) -> None:
    """Bytes of a live node's data.mdb rot under it: reads of the hot tail do
    not touch them, but a scrub pass (``sprawlctl verify --scrub``) reads
    every stored record back at its bounded rate and names the range; the
    progress metric and /v1/damage show the pass."""
    node = sprawl_nodes("--scrub-rate", "50MB", name="n")
    publish_all(node)
    status, body = read_range(node, 300, 2)
    assert status == 200, body  # served from memory: LMDB is not read
    flip_values(node.data_dir, [300, 301])
    r = CliRunner().invoke(
        cli, ["--nodes", node.url, "--timeout", "60", "verify", "--scrub", "--wait-timeout", "120", "--json"]
    )
    assert r.exit_code == 1 and r.output.startswith("{"), (r.output, r.exception)
    import json

    answer = json.loads(r.output)
    assert [(x["first_offset"], x["last_offset"], x["state"]) for x in answer["ranges"]] == [
        (300, 301, "damaged")
    ]
    assert answer["scrub"]["passes"] >= 1 and answer["scrub"]["scanned_bytes"] >= N * SIZE
    assert metric(node, "sprawl_scrub_passes_total") >= 1
    assert metric(node, "sprawl_scrub_scanned_bytes_total") >= N * SIZE
    assert metric(node, "sprawl_scrub_progress_ratio") == 1.0
    assert "DAMAGED: t/0 offsets 300-301 (lmdb)" in node.log_text()
    status, ready = http_json(f"{node.url}/readyz")
    assert status == 503 and "t/0 offsets 300-301" in ready["reason"]
    r = CliRunner().invoke(cli, ["--nodes", node.url, "verify"])
    assert r.exit_code == 1 and "300-301" in r.output and "1 damaged range(s)" in r.output, r.output


def account_for_every_offset(
    node: NodeProcess, n: int = N, check: Any = check_served, page: int = 100
) -> int:
    """Read the partition from offset 0: every offset below the high watermark
    must be served (as published) or named by a corrupt_record error."""
    status, desc = http_json(f"{node.url}/v1/topics/t")
    assert status == 200, desc
    hw = desc["partition_details"][0]["high_watermark"]
    assert hw == n, desc
    pos, damaged, limit = 0, 0, page
    for _ in range(4 * n):
        if pos >= hw:
            return damaged
        status, body = read_range(node, pos, limit)
        if status == 500:
            e = body["error"]
            assert e["code"] == "corrupt_record" and pos <= e["first_offset"] <= pos + limit - 1, (
                pos,
                limit,
                body,
            )
            if e["first_offset"] > pos:
                limit = e["first_offset"] - pos  # the offsets before it: whole, or damaged earlier
                continue
            damaged += e["last_offset"] - e["first_offset"] + 1
            pos, limit = e["last_offset"] + 1, page
            continue
        assert status == 200, body
        got = [m["offset"] for m in body["messages"]]
        assert got == list(range(pos, min(hw, pos + limit))), ("a short read", pos, got[:5], got[-5:])
        check(body["messages"])
        pos, limit = pos + len(got), page
    raise AssertionError("did not reach the high watermark")


def start_cluster(sprawl_nodes: Any, names: list[str], *extra: str) -> list[NodeProcess]:
    """Three nodes joined through the first; waits until all are Raft voters."""
    from harness import poll_until

    first = sprawl_nodes("--node-id", names[0], *extra, name=names[0])
    seeds = ("--seeds", f"127.0.0.1:{first.peer_port}")
    nodes = [first, *(sprawl_nodes("--node-id", nm, *seeds, *extra, name=nm) for nm in names[1:])]

    def formed() -> bool:
        views = [http_json(f"{n.url}/v1/cluster")[1] or {} for n in nodes]
        return all(sorted((v.get("raft") or {}).get("voters", [])) == sorted(names) for v in views)

    assert poll_until(formed, 60.0) is not None, "the cluster did not form"
    return nodes


def partition0(node: NodeProcess, topic: str = "t") -> dict[str, Any]:
    """Partition 0 of the topic as the node describes it ({} if it cannot)."""
    status, body = http_json(f"{node.url}/v1/topics/{topic}")
    return body["partition_details"][0] if status == 200 else {}


def read_all_from(node: NodeProcess, topic: str = "t") -> list[dict[str, Any]]:
    """The whole partition from one node, in one read (it must not be short)."""
    status, body = read_range(node, 0, 10_000, topic)
    assert status == 200, (node.data_dir.name, body)
    return list(body["messages"])


def test_a_damaged_replica_repairs_itself(sprawl_nodes: Any) -> None:
    """A 3-node cluster, one topic replicated 3 ways: a follower's LMDB copy
    of two ranges is damaged while it is down.  Restarted, it finds them (the
    start-time check), names them, rewrites them from a healthy replica and
    is ready again; every acknowledged message is served from every node."""
    from harness import poll_until

    names = ["a", "b", "c"]
    # A small memory budget: older records are read from LMDB, not the hot tail.
    nodes = start_cluster(sprawl_nodes, names, "--scrub-rate", "0", "--memory-budget", "1MB")
    by_name = dict(zip(names, nodes, strict=True))
    status, body = http_json(f"{nodes[0].url}/v1/topics/t", "PUT", {"partitions": 1, "replication_factor": 3})
    assert status in (200, 201), body
    assert poll_until(lambda: all(partition0(n).get("leader") for n in nodes), 30.0) is not None
    offsets = publish_all(nodes[0], acks="quorum")
    index = {o: i for i, o in enumerate(offsets)}
    hw = max(offsets) + 1

    def replicated() -> bool:
        return all(partition0(n).get("high_watermark") == hw for n in nodes)

    assert poll_until(replicated, 60.0) is not None, [partition0(n) for n in nodes]
    leader = partition0(nodes[0])["leader"]
    # Not the seed: the others find a restarted node through its seed address.
    victim = by_name[next(n for n in names[1:] if n != leader)]
    victim.stop()
    flip_values(victim.data_dir, [100, 101, 102, 700])
    victim.start()
    # Every node serves every acknowledged message -- the damaged one too: a
    # read that meets the damage waits for the repair, or (its peers not yet
    # connected) answers 503 corrupt_record; never a short read.
    answers: list[int] = []

    def whole(n: NodeProcess) -> bool:
        status, body = read_range(n, 0, 10_000)
        answers.append(status)
        if status == 0:  # no answer within the request's timeout: the read waits for the repair
            return False
        if status != 200:
            assert status == 503 and body["error"]["code"] == "corrupt_record", body
            return False
        assert [m["offset"] for m in body["messages"]] == offsets, n.data_dir.name
        check_served(body["messages"], index)
        return True

    for n in [victim, *nodes]:
        assert poll_until(lambda n=n: whole(n), 60.0) is not None, (n.data_dir.name, answers[-5:])

    def repaired() -> bool:
        status, dmg = http_json(f"{victim.url}/v1/damage")
        return status == 200 and dmg["damaged"] == 0 and http_json(f"{victim.url}/readyz")[0] == 200

    assert poll_until(repaired, 60.0) is not None, http_json(f"{victim.url}/v1/damage")
    log = victim.log_text()
    r1, r2 = f"{offsets[100]}-{offsets[102]}", f"{offsets[700]}-{offsets[700]}"
    assert log.count(f"DAMAGED: t/0 offsets {r1} (lmdb)") == 1, log[-4000:]
    assert log.count(f"DAMAGED: t/0 offsets {r2} (lmdb)") == 1
    assert f"REPAIRED: t/0 offsets {r1}" in log and f"REPAIRED: t/0 offsets {r2}" in log
    assert metric(victim, "sprawl_damage_repaired_total") == 2
    # In sync again at the leader; the rewritten copy reads back whole from LMDB
    # (not the hot tail) after another restart, and sprawlctl verify agrees.
    assert poll_until(
        lambda: victim.data_dir.name in (partition0(by_name[leader]).get("in_sync") or []), 30.0
    )
    victim.stop()
    code, out = verify_offline(victim.data_dir)
    assert code == 0, out
    victim.start()
    msgs = read_all_from(victim)
    assert [m["offset"] for m in msgs] == offsets
    check_served(msgs, index)

    # The leader's own copy rots while it runs: a read there meets the damage,
    # repairs it from a follower first and is served whole -- the leader never
    # serves a damaged range while a healthy replica holds it.
    leader_node = by_name[partition0(nodes[0])["leader"]]
    flip_values(leader_node.data_dir, [300, 301, 302])
    msgs = read_all_from(leader_node)
    assert [m["offset"] for m in msgs] == offsets
    check_served(msgs, index)
    log = leader_node.log_text()
    r3 = f"{offsets[300]}-{offsets[302]}"
    assert f"DAMAGED: t/0 offsets {r3} (lmdb)" in log and f"REPAIRED: t/0 offsets {r3}" in log, log[-3000:]


LEGACY = DATA / "legacy-datadir"


def test_a_data_dir_written_before_checksums_still_reads(sprawl_nodes: Any, tmp_path: Path) -> None:
    """A data dir written by the version before record checksums
    (tests/data/legacy-datadir/, its LMDB file as that version left it: topic ``old``, 2 partitions, 61
    messages, one of them binary) opens and reads whole; its records are
    read as unchecked, new ones carry checksums, and damage to a new record
    is still found."""
    import base64
    import shutil

    shutil.copytree(LEGACY / "node", tmp_path / "node")  # a copy: the node writes to it
    data_dir = tmp_path / "node"
    code, out = verify_offline(data_dir)
    assert code == 0, out
    node = sprawl_nodes("--node-id", "legacy-node", "--scrub-rate", "0", data_dir=data_dir)
    assert "read as unchecked" in node.log_text()
    old: list[dict[str, Any]] = []
    for p in (0, 1):
        status, body = http_json(f"{node.url}/v1/topics/old/messages?from=0&limit=1000&partition={p}")
        assert status == 200, body
        old += body["messages"]
    assert len(old) == 61
    texts = sorted(m["payload"] for m in old if "payload" in m)
    assert texts == sorted([f"old-0-{i}" for i in range(30)] + [f"old-1-{i}" for i in range(30)])
    assert [base64.b64decode(m["payload_b64"]) for m in old if "payload_b64" in m] == [bytes(range(256))]
    assert all(m["headers"]["n"] == m["payload"].rsplit("-", 1)[1] for m in old if "payload" in m)
    assert http_json(f"{node.url}/readyz")[0] == 200
    # New records, checked; a flipped byte in one of them is damage.
    status, body = http_json(
        f"{node.url}/v1/topics/old/messages",
        "POST",
        {"messages": [{"payload": "<new-one>" + "n" * 500}], "acks": "leader"},
    )
    assert status == 200, body
    p, off = body["partitions"][0], body["offsets"][0]
    node.stop()
    path = data_dir / "lmdb" / "data.mdb"
    data = bytearray(path.read_bytes())
    for h in re.finditer(re.escape(b"<new-one>"), data):
        data[h.start() + 20] ^= 0x01
    path.write_bytes(bytes(data))
    code, out = verify_offline(data_dir)
    import json

    found = json.loads(out)["damaged"]
    assert code == 1 and [(d["partition"], d["first_offset"], d["last_offset"]) for d in found] == [
        (p, off, off)
    ], out
    node.start()
    status, err = http_json(f"{node.url}/v1/topics/old/messages?from=0&limit=1000&partition={p}")
    assert status == 500 and (err["error"]["first_offset"], err["error"]["last_offset"]) == (off, off), err
