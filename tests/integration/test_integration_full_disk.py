"""Integration: a real full disk under a live ``twistd sprawl`` node.

``--disk-budget`` is the node's own limit (507 before the disk fills, tested
elsewhere).  This is the disk itself running out -- another process filled
the filesystem, or it is smaller than the budget: the node's data directory
is on a small ``tmpfs`` (mounted by the test as root, unmounted after), the
test fills it with a file of its own, and publishes go on.

One node alone; and in a cluster of three, the partition's leader or the
Raft leader (the twins below: what it led must move to nodes that can
write).

What must hold (docs/operations.md, "Publishes answer 503 storage_failed"):

- no publish is acked that is not stored: each answer is 200 or a clear
  error (503 ``storage_failed``, or 507 when the budget's own check sees the
  disk), never a hang past the request's bound;
- the node keeps serving: ``/healthz``, and reads of everything acked;
- once the operator freed the disk and restarted the node, every acked
  message is there, intact, at its acked offset, and publishes are acked
  again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import NodeProcess, http_json
from harness.nodes import require_tools

pytestmark = pytest.mark.integration

TOPIC = "full"
#: The filesystem's size: room for the node's files at start, and little more.
TMPFS_MB = 64
#: Payload of the publishes that fill what is left (bytes).
BIG = 60_000


def _missing() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root (to mount a tmpfs)")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        missing.append("mount")
    return missing


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A ``TMPFS_MB`` MB tmpfs at ``tmp_path/disk``, unmounted after the test."""
    require_tools(_missing(), "util-linux's mount, and root")
    where = tmp_path / "disk"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _publish(node: NodeProcess, mid: str, payload: str) -> tuple[int, Any]:
    return http_json(
        node.url + f"/v1/topics/{TOPIC}/messages",
        "POST",
        {"messages": [{"payload": payload, "id": mid}], "acks": "leader"},
        timeout=30.0,
    )


def _read_all(node: NodeProcess) -> dict[str, tuple[int, str]]:
    """Every message of the topic: id -> (offset, payload)."""
    out: dict[str, tuple[int, str]] = {}
    cursor: int | str = "earliest"
    for _ in range(10_000):
        status, body = http_json(
            node.url + f"/v1/topics/{TOPIC}/messages?from={cursor}&limit=100", timeout=30
        )
        assert status == 200, (status, body)
        for m in body["messages"]:
            out[str(m["id"])] = (int(m["offset"]), str(m["payload"]))
        if not body["messages"]:
            return out
        cursor = body["next"]
    raise AssertionError("unbounded read")


def _fill(where: Path) -> Path:
    """A file that takes every free byte of ``where``'s filesystem (unbuffered
    writes of 1 MB, then of 4 KB, until the filesystem refuses)."""
    filler = where / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size, most in ((1 << 20, TMPFS_MB * 2), (1 << 12, 1 << 9)):
            chunk = b"\0" * size
            for _ in range(most):
                try:
                    os.write(fd, chunk)
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_acks_nothing_it_did_not_store_and_loses_nothing(small_disk: Path) -> None:
    """Fill the node's filesystem under it: every publish is answered (200
    only when stored, else 503 ``storage_failed`` or 507), reads go on; after
    the disk is freed and the node restarted, every acked message is there
    (see the module docstring)."""
    node = NodeProcess(small_disk / "n0", "--disk-budget", "1GB")
    node.log_path = small_disk.parent / "n0.log"  # (off the full disk, and kept after the unmount)
    try:
        node.start()
        status, body = http_json(node.url + f"/v1/topics/{TOPIC}", "PUT", {"partitions": 1}, timeout=30)
        assert status in (200, 201), body
        acked: dict[str, tuple[int, str]] = {}
        for i in range(20):
            mid, payload = f"small-{i}", f"small payload {i}"
            status, body = _publish(node, mid, payload)
            assert status == 200, body
            acked[mid] = (int(body["offsets"][0]), payload)
        filler = _fill(small_disk)
        answers: list[tuple[int, str | None]] = []
        refusals = 0
        for i in range(200):
            mid, payload = f"big-{i}", f"{i:06d}" + "x" * BIG
            status, body = _publish(node, mid, payload)
            code = (body or {}).get("error", {}).get("code") if isinstance(body, dict) else None
            answers.append((status, code))
            if status == 200:
                acked[mid] = (int(body["offsets"][0]), payload)
            else:
                refusals += 1
                if refusals >= 5:
                    break  # (the disk is full as far as the node goes)
        refused = [(s, c) for s, c in answers if s != 200]
        print(f"after the fill: {len(answers) - len(refused)} acked, then refused {refused}")
        assert refused, f"the full disk refused nothing: {len(answers)} publishes acked"
        assert all((s, c) in ((503, "storage_failed"), (507, "disk_budget_exceeded")) for s, c in refused), (
            refused
        )
        assert http_json(node.url + "/healthz")[0] == 200
        got = _read_all(node)
        lost = {m: v for m, v in acked.items() if got.get(m) != v}
        assert not lost, f"acked but not served while full: {sorted(lost)[:5]}"
        # The operator frees the disk and restarts the node.
        filler.unlink()
        node.stop()
        node.start()
        got = _read_all(node)
        lost = {m: v for m, v in acked.items() if got.get(m) != v}
        assert not lost, f"acked but lost after the restart: {sorted(lost)[:5]}"
        status, body = _publish(node, "after", "after the restart")
        assert status == 200, body
    finally:
        node.kill()


@pytest.fixture
def small_disks(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/c/n0..n2`` each on its own ``TMPFS_MB`` MB tmpfs, unmounted after the test."""
    require_tools(_missing(), "util-linux's mount, and root")
    base = tmp_path / "c"
    mounted: list[Path] = []
    try:
        for i in range(3):
            where = base / f"n{i}"
            where.mkdir(parents=True)
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(where)], check=True
            )
            mounted.append(where)
        yield base
    finally:
        for where in mounted:
            subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.parametrize("whose", ["partition-leader", "raft-leader"])
def test_a_leaders_full_disk_fails_over_and_loses_nothing(small_disks: Path, whose: str) -> None:
    """Three nodes, each on its own small disk; the disk of the partition's
    leader -- or of the Raft leader, the controller -- fills under a writer
    through another node: the partition (and Raft) fail over to nodes that
    can write, the writer is acked again and a topic can be created; after
    the disk is freed and the node restarted, it catches up and every node
    serves every acked message at its offset."""
    from harness import NodeCluster, poll_until
    from harness.acked import AckedWriter, check_logs
    from harness.waits import scaled

    c = NodeCluster(small_disks, 3, "--disk-budget", "1GB")
    try:
        c.start()
        status, body = http_json(
            c.url("n0") + f"/v1/topics/{TOPIC}", "PUT", {"partitions": 1, "replication_factor": 3}, timeout=30
        )
        assert status in (200, 201), body

        def leader_of(via: str) -> str | None:
            pl = (c.placement(via).get(TOPIC) or {}).get("0") or {}
            return pl.get("leader") or None

        assert poll_until(lambda: leader_of("n0") is not None, scaled(30.0)) is not None
        victim = leader_of("n0") if whose == "partition-leader" else c.raft_leader()
        assert victim is not None
        via = next(n for n in c.names if n != victim)
        with AckedWriter(c, via, TOPIC) as writer:
            filler = _fill(small_disks / victim)
            c.note(f"filled {victim}'s disk ({whose}; the partition's leader {leader_of(via)})")

            def moved() -> bool:
                raft = [c.cluster_view(n).get("raft", {}).get("leader") for n in c.names if n != victim]
                return leader_of(via) not in (None, victim) and all(r not in (None, victim) for r in raft)

            assert poll_until(moved, scaled(60.0)) is not None, (
                f"{victim}, its disk full, still leads: {c.placement(via).get(TOPIC)}, {c.raft_views()}; "
                f"{writer.refused} refused"
            )
            after = writer.acks()
            assert poll_until(lambda: writer.acks() >= after + 20, scaled(30.0)) is not None, (
                f"no publishes after the failover ({writer.refused} refused)"
            )
            status, body = http_json(
                c.url(via) + "/v1/topics/made-meanwhile", "PUT", {}, timeout=scaled(20.0)
            )
            assert status in (200, 201), (status, body)
            assert http_json(c.url(victim) + "/healthz")[0] == 200
            c.note(f"moved off {victim}: {c.placement(via).get(TOPIC)}, Raft {c.raft_leader()}")
        # The operator frees the disk and restarts the node.
        filler.unlink()
        c.kill(victim)
        c.restart(victim)
        assert poll_until(c.formed, scaled(60.0)) is not None, c.raft_views()
        assert poll_until(lambda: not c.replication_problems([TOPIC]), scaled(60.0)) is not None, (
            c.replication_problems([TOPIC])
        )
        check_logs(c, TOPIC, writer.acked)
    finally:
        c.close()
