"""Faults named (issue 24, item 4): real ``twistd sprawl`` nodes get the faults the chaos
test injects -- a node killed, a node stopped (SIGSTOP), a partition under-replicated, a
node whose disk budget is exceeded, a follower not catching up, a Raft cluster without
quorum -- and ``sprawlctl diagnose`` names each within :data:`NAMED_BOUND` seconds (5 s,
stretched by the load measured now, as every real-process bound), with the affected
partitions and a next step.

Each test waits for the condition it needs with a deadline; every node a test starts is
killed by it (stopped ones are continued first, :meth:`NodeCluster.close`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner

from harness import NodeCluster, http_json, key_for_partition, metric_value, poll_until, scaled
from sprawl.ctl import cli

pytestmark = [pytest.mark.integration]

#: Seconds within which a fault must be named once injected (the issue's 5 s).
NAMED_BOUND = 5.0
TOPIC = "faults"
PARTITIONS = 3


@pytest.fixture
def cluster(cluster_factory: Callable[..., NodeCluster]) -> Callable[..., NodeCluster]:
    """``cluster(n=3, **kw)``: a started cluster of nodes n0.., closed at the end."""
    return lambda n=3, **kw: cluster_factory(n, "n", **kw)


def diagnose(*urls: str) -> dict[str, Any]:
    """``sprawlctl -n URLS diagnose --json`` (in-process): the report, whatever the exit code."""
    result = CliRunner().invoke(
        cli, ["-n", ",".join(urls), "--timeout", "2", "diagnose", "--json"], catch_exceptions=False
    )
    line = result.stdout.strip().splitlines()[0] if result.stdout.strip() else "{}"
    return dict(json.loads(line))


def named(report: dict[str, Any], code: str, node: str | None = None) -> dict[str, Any] | None:
    """The fault ``code`` (at ``node``) of a diagnose report, or None."""
    for f in report.get("faults") or []:
        if f.get("code") == code and (node is None or f.get("node") == node):
            return dict(f)
    return None


def wait_named(
    urls: list[str], code: str, node: str | None, also: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Poll diagnose until it names ``code`` (at ``node``) within NAMED_BOUND (scaled); the fault."""
    seen: list[dict[str, Any]] = []

    def check() -> bool:
        if also is not None:
            also()
        report = diagnose(*urls)
        seen[:] = [report]
        return named(report, code, node) is not None

    took = poll_until(check, NAMED_BOUND, step=0.2)
    assert took is not None, f"{code} ({node}) not named within {scaled(NAMED_BOUND):.1f} s: {seen}"
    print(f"{code} ({node}) named {took:.2f} s after the fault")
    fault = named(seen[0], code, node)
    assert fault is not None and fault["next_step"] and fault["message"]
    return fault


def create_topic(c: NodeCluster, name: str = TOPIC, rf: int = 3) -> None:
    status, answer = http_json(
        c.url("n0") + f"/v1/topics/{name}",
        "PUT",
        {"partitions": PARTITIONS, "replication_factor": rf},
        timeout=15,
    )
    assert status in (200, 201), (status, answer)

    def placed() -> bool:
        for n in c.up():
            got = c.placement(n).get(name, {})
            if len(got) != PARTITIONS or not all(v.get("leader") for v in got.values()):
                return False
            if not all(len(set(v.get("replicas", []))) == rf for v in got.values()):
                return False
        return True

    assert poll_until(placed, 60.0) is not None, c.placement()


def publish(url: str, n: int = 10, size: int = 100, key: str | None = None, timeout: float = 5.0) -> int:
    """Publish ``n`` messages (no key: spread over the partitions), acks=leader; the HTTP status."""
    msg: dict[str, Any] = {"payload": "x" * size}
    if key is not None:
        msg["key"] = key
    body = {"messages": [msg] * n, "acks": "leader"}
    status, _ = http_json(url + f"/v1/topics/{TOPIC}/messages", "POST", body, timeout=timeout)
    return status


def publish_around(c: NodeCluster, stopped: str) -> None:
    """One small batch to each partition whose leader is not ``stopped`` (per n0's placement)."""
    for p, v in c.placement("n0").get(TOPIC, {}).items():
        if v.get("leader") and v.get("leader") != stopped:
            publish(c.url("n0"), 5, key=key_for_partition(int(p), PARTITIONS), timeout=2.0)


def all_parts() -> list[str]:
    return [f"{TOPIC}/{p}" for p in range(PARTITIONS)]


def test_a_healthy_cluster_names_no_fault(cluster: Callable[..., NodeCluster]) -> None:
    """The check that can fail: a formed cluster with a replicated topic is clean."""
    c = cluster()
    create_topic(c)
    assert publish(c.url("n0")) == 200
    urls = [c.url(n) for n in c.names]

    def clean() -> bool:
        return diagnose(*urls).get("faults") == []

    assert poll_until(clean, 30.0) is not None, diagnose(*urls)


def test_killed_node_then_lost_quorum_are_named(cluster: Callable[..., NodeCluster]) -> None:
    """kill -9 one node: ``node_down`` with every partition it holds, and the partitions
    its loss leaves under-replicated; kill a second: ``raft_no_quorum``."""
    c = cluster()
    create_topic(c)
    assert publish(c.url("n0")) == 200
    c.kill("n2")
    live = [c.url("n0"), c.url("n1")]
    down = wait_named(live, "node_down", "n2")
    assert down["severity"] == "critical" and down["partitions"] == all_parts(), down
    assert "Restart node n2" in down["next_step"]
    # and the metric an alert watches says the same
    labels = {"code": "node_down", "node": "n2", "severity": "critical"}
    assert (
        poll_until(lambda: metric_value(c.url("n0"), "sprawl_faults", **labels) == 1, NAMED_BOUND) is not None
    )
    under = wait_named(live, "partition_under_replicated", None)
    assert under["partitions"] and set(under["partitions"]) <= set(all_parts()), under

    def every_partition_named() -> bool:
        # every partition had a replica on n2: each is under-replicated, or without a
        # leader until its failover (a partition n2 led)
        report = diagnose(*live)
        got = set()
        for code in ("partition_under_replicated", "partition_without_leader"):
            got |= set((named(report, code) or {}).get("partitions", []))
        return got == set(all_parts())

    assert poll_until(every_partition_named, NAMED_BOUND) is not None, diagnose(*live)
    c.kill("n1")
    quorum = wait_named([c.url("n0")], "raft_no_quorum", None)
    assert "only 1 of 3" in quorum["message"] and "--force-new-cluster" in quorum["next_step"]


def test_stopped_node_and_its_lagging_follower_are_named(cluster: Callable[..., NodeCluster]) -> None:
    """SIGSTOP one node: ``node_unresponsive`` (its port accepts, nothing answers), and,
    while publishes go on, ``follower_lagging`` for the partitions it follows."""
    c = cluster()
    create_topic(c)
    assert publish(c.url("n0")) == 200
    c.pause("n2")
    live = [c.url("n0"), c.url("n1")]
    # publishes go on to the partitions the others lead: n2 falls behind on them
    lag = wait_named(live, "follower_lagging", "n2", also=lambda: publish_around(c, "n2"))
    assert lag["partitions"] and set(lag["partitions"]) <= set(all_parts()), lag
    stopped = wait_named(live, "node_unresponsive", "n2")
    assert "SIGCONT" in stopped["next_step"] and stopped["partitions"] == all_parts()
    c.resume("n2")

    def healed() -> bool:
        return named(diagnose(*[c.url(n) for n in c.names]), "node_unresponsive") is None

    assert poll_until(healed, 30.0) is not None


def test_disk_budget_exceeded_is_named_by_every_node(cluster: Callable[..., NodeCluster]) -> None:
    """One node with a 10 MB --disk-budget: once its LMDB passes it, the node names
    ``disk_budget_exceeded`` and every other node does too (the state is gossiped)."""
    c = cluster(per_node=lambda name: ["--disk-budget", "10MB"] if name == "n2" else [])
    create_topic(c)
    t0 = None

    def named_on_n2() -> bool:
        status, body = http_json(c.url("n2") + "/v1/cluster/faults")
        return status == 200 and any(f["code"] == "disk_budget_exceeded" for f in body["faults"])

    for _ in range(20):  # 20 x 2 MB at most; the budget is 10 MB
        assert publish(c.url("n0"), n=4, size=500_000) in (200, 507)
        if named_on_n2():
            t0 = time.monotonic()
            break
    if t0 is None:
        # The fault watch's round may be held for a few seconds after the topic's
        # leaderships were taken (a failover's rule, issue 23): the diagnosis follows.
        if poll_until(named_on_n2, 30.0) is not None:
            t0 = time.monotonic()
    assert t0 is not None, "n2's LMDB never passed its 10 MB budget"
    fault = wait_named([c.url("n0")], "disk_budget_exceeded", "n2")  # from n0: gossiped
    assert set(fault["partitions"]) == set(all_parts()) and "--disk-budget" in fault["next_step"]
    assert fault["seen_by"] == ["n0"]
