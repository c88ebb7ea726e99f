"""``bin/sprawl-cluster``: N real nodes on loopback form one cluster; SIGINT stops all of them."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from harness import node_environment
from harness.paths import ROOT

SCRIPT = ROOT / "bin" / "sprawl-cluster"
N = 3


def _running(pid: int) -> bool:
    """True while *pid* exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _members(url: str) -> list[dict]:
    with urllib.request.urlopen(url + "/v1/cluster", timeout=30) as r:
        members: list[dict] = json.loads(r.read())["members"]
        return members


def _pids_using(data: Path) -> set[int]:
    """The processes whose command line names ``data`` (the nodes of this test's cluster)."""
    out = set()
    needle = str(data).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                out.add(int(entry.name))
        except OSError:
            continue
    return out


def test_local_cluster_starts_and_stops(tmp_path: Path) -> None:
    """The script prints "cluster ready" once N nodes see N alive members and the Raft
    voter target is reached; SIGINT stops every node, exit 0."""
    env = node_environment({"SPRAWL_CLUSTER_PYTHON": sys.executable})
    data = tmp_path / "cluster"
    proc = subprocess.Popen(
        [str(SCRIPT), str(N), "--ports-auto", "--data-dir", str(data), "--timeout", "90"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    seen: list[str] = []
    node_pids: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while True:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "\n".join(seen)
            seen.append(line)
            if line.startswith("cluster ready"):
                break
            assert time.monotonic() < deadline, "\n".join(seen)
        urls = [ln.split()[1] for ln in seen if ln.startswith("node") and ": http://" in ln]
        assert len(urls) == N, seen
        assert any(ln == f"dashboard: {urls[0]}/" for ln in seen), seen
        for url in urls:
            members = _members(url)
            assert sorted(m["id"] for m in members) == [f"node{k}" for k in range(1, N + 1)]
            assert all(m["state"] == "alive" for m in members), members
        # "ready" means fault-tolerant: every node already counts 3 Raft voters, all up
        # (before, the line came once gossip saw everyone -- often with one voter).
        for url in urls:
            with urllib.request.urlopen(url + "/v1/cluster", timeout=30) as r:
                raft = json.loads(r.read())["raft"]
            assert len(raft["voters"]) == N and raft["fault_tolerance"] == 1, raft
            with urllib.request.urlopen(url + "/readyz?fault_tolerant=1", timeout=30) as r:
                assert r.status == 200
        assert "3 Raft voters (survives 1 node failure)" in seen[-1], seen[-1]
        node_pids = [
            int(ln.split("pid ")[1].split(",")[0]) for ln in seen if ln.startswith("node") and "pid " in ln
        ]
        assert len(node_pids) == N and all(_running(p) for p in node_pids), node_pids
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        # Never leave a node behind, even when an assertion failed before the script
        # printed the nodes' pids (they run in sessions of their own, so killing the
        # script does not reach them): every process started on this test's data dir.
        for pid in set(node_pids) | _pids_using(data):
            if _running(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        reader.join(10)
    while True:
        item = lines.get_nowait() if not lines.empty() else None
        if item is None:
            break
        seen.append(item)
    assert rc == 0, "\n".join(seen)
    assert sum(1 for ln in seen if ln.endswith(": stopped cleanly")) == N, seen
    for pid in node_pids:
        assert not _running(pid), pid
    for k in range(1, N + 1):
        assert "sprawl node stopped cleanly" in (data / f"node{k}.log").read_text()
    # The nodes shared a key the script made (mode 600), kept for the next run.
    key = data / "cluster.key"
    assert key.stat().st_mode & 0o777 == 0o600
    from sprawl.config import read_cluster_key_file

    assert len(read_cluster_key_file(str(key))) == 32


def test_bad_node_count_is_refused() -> None:
    """A node count outside 1..64 is a usage error, before anything starts."""
    r = subprocess.run(
        [str(SCRIPT), "0"],
        env=node_environment({"SPRAWL_CLUSTER_PYTHON": sys.executable}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "nodes must be 1..64" in r.stderr


@pytest.mark.parametrize("flag", ["--help"])
def test_help(flag: str) -> None:
    """--help names the port options."""
    r = subprocess.run(
        [str(SCRIPT), flag],
        env=node_environment({"SPRAWL_CLUSTER_PYTHON": sys.executable}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "--base-http-port" in r.stdout and "--ports-auto" in r.stdout


def test_nodes_get_a_key_of_their_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every node is started with --cluster-key-file naming one key made once in the data
    dir (mode 600, the same on the next run); a key or CA given after -- (or in the
    environment) is used instead."""
    from sprawl.localcluster import LocalCluster, parse_args

    monkeypatch.delenv("SPRAWL_CLUSTER_KEY", raising=False)
    monkeypatch.delenv("SPRAWL_CLUSTER_KEY_FILE", raising=False)
    lc = LocalCluster(parse_args(["3", "--data-dir", str(tmp_path / "c")]))
    args = lc.key_args()
    assert args == ["--cluster-key-file", str((tmp_path / "c" / "cluster.key").resolve())]
    first = Path(args[1]).read_text()
    assert Path(args[1]).stat().st_mode & 0o777 == 0o600
    assert lc.key_args() == args and Path(args[1]).read_text() == first
    assert (
        LocalCluster(
            parse_args(["3", "--data-dir", str(tmp_path / "d"), "--", "--cluster-key", "k" * 32])
        ).key_args()
        == []
    )
    assert (
        LocalCluster(
            parse_args(["3", "--data-dir", str(tmp_path / "e"), "--", "--cluster-ca=ca.pem"])
        ).key_args()
        == []
    )
    monkeypatch.setenv("SPRAWL_CLUSTER_KEY", "k" * 32)
    assert LocalCluster(parse_args(["3", "--data-dir", str(tmp_path / "f")])).key_args() == []
