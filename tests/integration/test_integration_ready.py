"""Integration: fault-tolerant from the moment the cluster says it is ready, and
a way back from a lost majority -- real ``twistd sprawl`` processes on 127.0.0.1.

* Rounds of "form a 3-node cluster, wait for ``/readyz?fault_tolerant=1`` on
  every node, ``kill -9`` the founding node at once": every round fails over
  (the survivors elect a Raft leader, commit a change, serve the message
  acknowledged before the kill and take a new ``acks=quorum`` publish).
  ``SPRAWL_READY_ROUNDS`` sets the number of rounds (20 by default; two
  clusters run at a time).
* A 5-node cluster reaches 5 voters within 1 s of its last member joining,
  measured from the nodes' own JSON logs (the first node to log the last
  member's gossip join, to the first node to log a 5-voter configuration).
* ``--force-new-cluster``: three nodes lose two for good; the survivor,
  restarted with it, serves every acknowledged message it held and takes new
  publishes; two fresh nodes join it and the topic is back to three
  replicas, in sync.  Refused (exit status 3) while a majority answers.
* Five nodes lose three: the survivor that is forced leads a new cluster and
  the other survivor rejoins it by itself, keeping the partitions only it
  held.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from harness import NodeCluster, NodeProcess, http_json, poll_until, time_to_voters

pytestmark = pytest.mark.integration

ROUNDS = int(os.environ.get("SPRAWL_READY_ROUNDS", "20"))
READY_BOUND = 30.0  # seconds for a forming cluster to say it is fault-tolerant
FAILOVER_BOUND = 20.0  # election (8 s bound) + the partition's own failover + retries
TARGET_BOUND = 1.0  # the bound: voter target within 1 s of the last join


def _ready(url: str) -> bool:
    return http_json(url + "/readyz?fault_tolerant=1", timeout=2.0)[0] == 200


def _raft(url: str) -> dict[str, Any]:
    status, body = http_json(url + "/v1/cluster", timeout=2.0)
    return body.get("raft", {}) if status == 200 and isinstance(body, dict) else {}


def _read_all(url: str, topic: str, partitions: int) -> list[str]:
    out: list[str] = []
    for p in range(partitions):
        status, body = http_json(f"{url}/v1/topics/{topic}/messages?partition={p}&from=earliest&limit=1000")
        assert status == 200, (p, status, body)
        out += [m["payload"] for m in body["messages"]]
    return out


def _publish(url: str, topic: str, payloads: list[str], timeout: float = 15.0) -> tuple[int, Any]:
    return http_json(
        f"{url}/v1/topics/{topic}/messages",
        "POST",
        # the payload is the id too: a publish tried again is stored once
        {"messages": [{"payload": p, "key": p, "id": p} for p in payloads], "acks": "quorum"},
        timeout=timeout,
    )


# -- readiness means fault tolerance -----------------------------------------------------


def _one_round(base: Path, k: int) -> str:
    """Form, wait for fault-tolerant readiness, kill the founder, fail over; a report line."""
    c = NodeCluster(base / f"round{k}", 3, prefix=f"r{k}n")
    try:
        n0, n1, n2 = c.names
        c._launch(n0, None)
        seeds = f"127.0.0.1:{c.nodes[n0].peer_port}"
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda nm: c._launch(nm, seeds), [n1, n2]))
        took = poll_until(lambda: all(_ready(c.url(n)) for n in c.names), READY_BOUND, step=0.02)
        assert took is not None, f"round {k}: never fault-tolerant: {c.raft_views()}"
        status, body = http_json(
            c.url(n1) + "/v1/topics/t", "PUT", {"partitions": 1, "replication_factor": 3}, timeout=15.0
        )
        assert status in (200, 201), (status, body)
        status, body = _publish(c.url(n1), "t", ["before"])
        assert status == 200 and body["stored"] == "quorum", (status, body)
        voters = _raft(c.url(n1)).get("voters")
        c.kill(n0)  # at once
        killed = time.monotonic()

        def failed_over() -> bool:
            leaders = {_raft(c.url(n)).get("leader") for n in (n1, n2)}
            return len(leaders) == 1 and leaders <= {n1, n2}

        took = poll_until(failed_over, FAILOVER_BOUND)
        assert took is not None, (
            f"round {k}: no leader among the survivors (voters were {voters}): {c.raft_views()}"
        )
        status, body = http_json(c.url(n2) + "/v1/topics/after", "PUT", {"partitions": 1}, timeout=15.0)
        assert status in (200, 201), f"round {k}: no commit after the failover: {status} {body}"
        # The node retries a publish through the partition's failover for 10 s;
        # past that (a slow machine) the client tries again, within the bound.
        answers: list[tuple[int, Any]] = []

        def published() -> bool:
            answers.append(_publish(c.url(n2), "t", ["after"], timeout=FAILOVER_BOUND))
            return answers[-1][0] == 200

        assert poll_until(published, FAILOVER_BOUND, step=0.2) is not None, f"round {k}: {answers[-3:]}"
        assert answers[-1][1]["stored"] == "quorum", answers[-1]
        assert sorted(_read_all(c.url(n2), "t", 1)) == ["after", "before"]
        return f"round {k}: voters at readiness {voters}; failed over {time.monotonic() - killed:.2f} s after the kill"
    finally:
        c.close()


def test_founder_killed_at_fault_tolerant_readiness_always_fails_over(tmp_path: Path) -> None:
    """ROUNDS times: a fresh 3-node cluster, killed at its founding node the moment
    every node answers ``/readyz?fault_tolerant=1``; the two survivors always
    elect a leader, commit, keep the acknowledged message and take new ones.
    (Before: "ready" came with gossip, while the founder was often the only
    voter, and 3 runs in 7 never recovered.)"""
    # Two clusters at a time (most of a round is waiting): 20 rounds in about a minute.
    with ThreadPoolExecutor(2) as pool:
        for line in pool.map(lambda k: _one_round(tmp_path, k), range(ROUNDS)):
            print(line, flush=True)


# -- the voter target within a second --------------------------------------------------------


def test_five_nodes_reach_five_voters_within_a_second_of_forming(tmp_path: Path) -> None:
    """From the nodes' own logs: the first time any node logs the last member's
    gossip join, to the first time any node logs a 5-voter configuration, is
    under a second.  (The wait here only bounds the test; the figure comes from
    the logs' timestamps.)"""
    c = NodeCluster(tmp_path, 5, "--log-format", "json")
    try:
        c.start()
        views = c.raft_views()
        assert all(len(v.get("voters", [])) == 5 for v in views.values()), views
    finally:
        c.close()
    took = time_to_voters([c.nodes[n].log_path for n in c.names], 5)
    assert took is not None, "no join or no 5-voter configuration in the logs"
    print(f"5 voters {took:.3f} s after the last member's gossip join")
    assert took < TARGET_BOUND, f"5 voters only {took:.3f} s after the last member joined"


# -- a way back from a lost majority ---------------------------------------------------------


def _force(node: NodeProcess, name: str, *extra: str) -> None:
    node.args = ["--node-id", name, "--force-new-cluster", *extra]
    node.start()


def _fresh(base: Path, name: str, seed: NodeProcess) -> NodeProcess:
    n = NodeProcess(base / name, "--node-id", name, "--seeds", f"127.0.0.1:{seed.peer_port}")
    return n.start()


def _in_sync(urls: dict[str, str], topic: str, partitions: int, want: int) -> list[str]:
    """What keeps every partition of ``topic`` from ``want`` replicas in sync (empty: nothing)."""
    problems: list[str] = []
    any_url = next(iter(urls.values()))
    status, body = http_json(any_url + "/v1/cluster/placement")
    parts = (body.get("topics") or {}).get(topic, {}) if status == 200 else {}
    for p in range(partitions):
        pl = parts.get(str(p)) or {}
        reps = pl.get("replicas") or []
        if len(reps) != want or not set(reps) <= set(urls):
            problems.append(f"{topic}/{p}: replicas {reps}")
            continue
        ends = {}
        for r in reps:
            status, desc = http_json(f"{urls[r]}/v1/topics/{topic}")
            views = [d for d in (desc or {}).get("partition_details", []) if d.get("partition") == p]
            if status != 200 or not views:
                problems.append(f"{r}: {topic}/{p} not described ({status})")
                continue
            ends[r] = (views[0].get("log_end"), views[0].get("high_watermark"))
        if len(set(ends.values())) != 1 or any(le != hw for le, hw in ends.values()):
            problems.append(f"{topic}/{p}: log_end/hw per replica {ends}")
    for name, url in urls.items():
        status, body = http_json(url + "/v1/cluster")
        under = (body.get("partitions") or {}).get("under_replicated") if status == 200 else None
        if under != 0:
            problems.append(f"{name}: under_replicated {under}")
    return problems


def test_force_new_cluster_on_the_survivor_of_three(tmp_path: Path) -> None:
    """Two nodes of three are lost for good; the survivor restarted with
    ``--force-new-cluster`` leads a one-voter cluster that serves every message
    acknowledged before (it held a replica of each), takes new publishes, and
    two fresh nodes joining it bring the topic back to three replicas in sync."""
    c = NodeCluster(tmp_path, 3)
    fresh: list[NodeProcess] = []
    try:
        c.start()
        n0, n1, n2 = c.names
        status, _ = http_json(c.url(n0) + "/v1/topics/t", "PUT", {"partitions": 3, "replication_factor": 3})
        assert status == 201
        acked = [f"m{i}" for i in range(60)]
        for i in range(0, 60, 6):
            status, body = _publish(c.url(n1), "t", acked[i : i + 6])
            assert status == 200 and body["stored"] == "quorum", (status, body)
        # Every replica holds every acknowledged message (the survivor "held" them all).
        assert poll_until(lambda: not c.replication_problems(["t"]), 30.0) is not None, (
            c.replication_problems(["t"])
        )
        c.kill(n0)
        c.kill(n1)
        survivor = c.nodes[n2]
        survivor.stop()  # the operator restarts it with the flag (no seeds: they are gone)
        c.down.add(n2)
        _force(survivor, n2)
        c.down.discard(n2)
        log = survivor.log_text()
        assert "FORCED A NEW CLUSTER" in log and "Lost voters: n0, n1" in log, log[-3000:]
        assert poll_until(lambda: _ready(survivor.url), 20.0) is not None
        raft = _raft(survivor.url)
        assert raft["voters"] == [n2] and raft["forced_new_cluster"] == raft["cluster_id"], raft
        assert sorted(_read_all(survivor.url, "t", 3)) == sorted(acked)
        status, body = _publish(survivor.url, "t", ["new0", "new1"])
        assert status == 200, (status, body)

        fresh = [_fresh(tmp_path, "e1", survivor), _fresh(tmp_path, "e2", survivor)]
        urls = {n2: survivor.url, "e1": fresh[0].url, "e2": fresh[1].url}
        took = poll_until(lambda: not _in_sync(urls, "t", 3, 3), 90.0, step=0.5)
        assert took is not None, _in_sync(urls, "t", 3, 3)
        assert poll_until(lambda: all(_ready(u) for u in urls.values()), 30.0) is not None
        assert sorted(_raft(survivor.url)["voters"]) == sorted(urls)
        want = sorted([*acked, "new0", "new1"])
        for url in urls.values():  # any replica serves them all
            assert sorted(_read_all(url, "t", 3)) == want
        # A restart does not undo the recovery: the one-voter cluster (now three) comes back.
        survivor.stop()
        survivor.args = ["--node-id", n2, "--seeds", f"127.0.0.1:{fresh[0].peer_port}"]
        survivor.start()
        assert poll_until(lambda: _ready(survivor.url), 30.0) is not None
        assert _raft(survivor.url)["cluster_id"] == raft["cluster_id"]
    finally:
        c.close()
        for n in fresh:
            n.kill()


def _refused(node: NodeProcess, *args: str) -> str:
    """Start ``node`` with ``args``, expecting it to refuse: exit status 3; its output."""
    node.args = list(args)
    with pytest.raises((RuntimeError, OSError)):  # it never serves (no ports.json)
        node.start()
    assert node.proc is not None
    assert node.proc.wait(60) == 3, node.log_text()[-3000:]
    return node.log_text()


def test_force_new_cluster_refused_while_a_majority_answers(tmp_path: Path) -> None:
    """With the other two voters up, ``--force-new-cluster`` refuses: the process
    logs why and exits with status 3, having changed nothing (and refuses an
    empty data dir the same way); restarted normally, the node rejoins its
    cluster."""
    c = NodeCluster(tmp_path, 3)
    try:
        c.start()
        n0, _, n2 = c.names
        node = c.nodes[n2]
        cluster_id = _raft(node.url)["cluster_id"]
        node.stop()
        c.down.add(n2)
        seeds = f"127.0.0.1:{c.nodes[n0].peer_port}"
        out = _refused(node, "--node-id", n2, "--seeds", seeds, "--force-new-cluster")
        assert "--force-new-cluster refused: a majority of the voters can still be reached" in out, out[
            -3000:
        ]
        assert "FORCED" not in out
        # The wrong data dir (empty) is refused too, rather than founding an empty cluster.
        out = _refused(NodeProcess(tmp_path / "empty"), "--node-id", n2, "--force-new-cluster")
        assert "holds no Raft state to recover from" in out, out[-3000:]
        c.restart(n2)
        assert poll_until(lambda: all(_ready(c.url(n)) for n in c.names), 30.0) is not None
        assert _raft(c.url(n2))["cluster_id"] == cluster_id
        assert sorted(_raft(c.url(n2))["voters"]) == sorted(c.names)
    finally:
        c.close()


def test_other_survivor_rejoins_the_forced_cluster_with_its_partitions(tmp_path: Path) -> None:
    """Five nodes lose three for good.  The survivor forced into a new cluster
    leads it; the other survivor finds its own majority gone and a forced
    cluster in gossip, drops its Raft state (not its partition data) and joins
    -- so the partitions only it held are served again, and every acknowledged
    message of a partition one of the two survivors held is readable."""
    c = NodeCluster(tmp_path, 5)
    try:
        c.start()
        status, _ = http_json(c.url("n0") + "/v1/topics/t", "PUT", {"partitions": 6, "replication_factor": 3})
        assert status == 201
        acked: dict[str, int] = {}
        for i in range(0, 48, 4):
            batch = [f"m{j}" for j in range(i, i + 4)]
            status, body = _publish(c.url("n2"), "t", batch)
            assert status == 200 and body["stored"] == "quorum", (status, body)
            acked.update(zip(batch, body["partitions"], strict=True))
        assert poll_until(lambda: not c.replication_problems(["t"]), 30.0) is not None, (
            c.replication_problems(["t"])
        )
        placement = c.placement()["t"]
        held = {int(p) for p, pl in placement.items() if {"n2", "n4"} & set(pl["replicas"])}
        only_n4 = {
            int(p) for p, pl in placement.items() if "n4" in pl["replicas"] and "n2" not in pl["replicas"]
        }
        assert only_n4, placement  # (rendezvous of these names: partitions 2, 3 and 5)
        for n in ("n0", "n1", "n3"):
            c.kill(n)
        survivor = c.nodes["n2"]
        survivor.stop()
        c.down.add("n2")
        _force(survivor, "n2", "--seeds", f"127.0.0.1:{c.nodes['n4'].peer_port}")
        c.down.discard("n2")
        forced = _raft(survivor.url)["cluster_id"]
        assert "Other survivors: n4" in survivor.log_text()

        def rejoined() -> bool:
            r4 = _raft(c.url("n4"))
            return r4.get("cluster_id") == forced and r4.get("leader") == "n2"

        assert poll_until(rejoined, 60.0) is not None, (_raft(c.url("n4")), _raft(survivor.url))
        assert "dropping this node's Raft state (partition data is kept)" in c.nodes["n4"].log_text()
        expected = sorted(m for m, p in acked.items() if p in held)

        def everything_served() -> bool:
            got: list[str] = []
            for p in range(6):
                status, body = http_json(
                    f"{survivor.url}/v1/topics/t/messages?partition={p}&from=earliest&limit=1000"
                )
                if status != 200:
                    return False
                got += [m["payload"] for m in body["messages"]]
            return set(expected) <= set(got)

        assert poll_until(everything_served, 60.0) is not None, expected
        status, body = _publish(survivor.url, "t", ["after"])
        assert status == 200, (status, body)
    finally:
        c.close()
