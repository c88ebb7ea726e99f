"""Derived-topic pipelines (issue 17) on real ``twistd sprawl`` processes: a pipeline
declared with ``PUT /v1/pipelines/P`` runs on the source partitions' leaders and its
target holds exactly the filtered source, each selected message once (one id each) --
after a ``kill -9`` and restart of a lone node while it runs, and after the leader of
a source partition of a 3-node cluster is killed while messages keep coming."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import NodeCluster, NodeProcess, http_json, metrics_text, poll_until

pytestmark = pytest.mark.integration

PIPELINE = {"source": "orders", "target": "big-orders", "filter": "payload.big", "fields": "n"}
BOUND = 60.0  # seconds for the pipeline to catch up, the cluster to fail over (scaled by load)


def _message(i: int) -> dict[str, Any]:
    return {
        "id": f"m{i}",
        "key": f"k{i}",
        "payload": json.dumps({"n": i, "big": i % 3 == 0, "pad": "x" * 40}),
    }


def _want(count: int) -> list[int]:
    return [i for i in range(count) if i % 3 == 0]


def _publish(urls: list[str], first: int, count: int) -> None:
    """Publish messages ``first..first+count-1`` in batches of 10 (with ids: a batch
    without an answer is sent again, to the next node, until one acknowledges it)."""
    for lo in range(first, first + count, 10):
        batch = {"messages": [_message(i) for i in range(lo, min(lo + 10, first + count))]}
        tries = [0]

        def sent(batch: dict[str, Any] = batch, tries: list[int] = tries) -> bool:
            url = urls[tries[0] % len(urls)]
            tries[0] += 1
            status, _ = http_json(url + "/v1/topics/orders/messages?acks=quorum", "POST", batch, timeout=10)
            return status == 200

        assert poll_until(sent, BOUND, step=0.2) is not None, f"batch {lo} never acknowledged"


def _target(url: str) -> list[dict[str, Any]]:
    """Every message of the target, every partition, as ``url`` serves them."""
    out: list[dict[str, Any]] = []
    for p in range(2):
        cursor: int | str = "earliest"
        for _ in range(1000):
            status, body = http_json(
                f"{url}/v1/topics/big-orders/messages?partition={p}&from={cursor}&limit=500", timeout=10
            )
            assert status == 200, (status, body)
            out += body["messages"]
            if not body["messages"] and body["next"] >= body["high_watermark"]:
                break
            cursor = body["next"]
    return out


def _caught_up(url: str, count: int) -> bool:
    status, _ = http_json(url + "/healthz")
    return status == 200 and len(_target(url)) >= len(_want(count))


def _check_exactly_once(url: str, count: int) -> None:
    """The target holds each selected source message once: the filtered, projected
    payloads, one derived id each, carrying their origin."""
    got = _target(url)
    ns = sorted(json.loads(m["payload"])["n"] for m in got)
    assert ns == _want(count), f"{len(ns)} target messages for {len(_want(count))} selected"
    ids = [m["id"] for m in got]
    assert len(set(ids)) == len(ids), "a derived id is stored twice"
    for m in got:
        assert set(json.loads(m["payload"])) == {"n"}
        assert m["headers"]["sprawl-pipeline"] == "big"


def _declare(url: str, partitions: int, rf: int = 1) -> None:
    for name, parts in (("orders", partitions), ("big-orders", 2)):
        body = {"partitions": parts, "replication_factor": rf}
        status, answer = http_json(f"{url}/v1/topics/{name}", "PUT", body, timeout=15)
        assert status == 201, (status, answer)
    status, answer = http_json(url + "/v1/pipelines/big", "PUT", PIPELINE, timeout=15)
    assert status == 201, (status, answer)
    assert answer["source"] == "orders" and answer["acks"] == "quorum"


@pytest.fixture
def lone(tmp_path: Path) -> Iterator[NodeProcess]:
    node = NodeProcess(tmp_path / "n")
    try:
        yield node.start()
    finally:
        node.kill()


def test_a_lone_node_killed_and_restarted_mid_run_loses_and_repeats_nothing(lone: NodeProcess) -> None:
    """Messages before, during (the node is killed while the pipeline works through
    them) and after a restart: the target holds every selected one exactly once; the
    lag reads 0 in the pipeline's description and in /metrics."""
    _declare(lone.url, partitions=3)
    _publish([lone.url], 0, 120)
    assert poll_until(lambda: _caught_up(lone.url, 120), BOUND) is not None
    _check_exactly_once(lone.url, 120)
    _publish([lone.url], 120, 300)
    lone.kill()  # most likely mid-round: published, not yet acked (re-run, deduplicated)
    lone.start()
    _publish([lone.url], 420, 60)
    assert poll_until(lambda: _caught_up(lone.url, 480), BOUND) is not None
    _check_exactly_once(lone.url, 480)

    def described() -> dict[str, Any]:
        return http_json(lone.url + "/v1/pipelines/big")[1]

    assert poll_until(lambda: described()["lag"] == 0, BOUND) is not None, described()
    assert described()["running_here"] == [0, 1, 2]
    text = metrics_text(lone.url)
    assert 'sprawl_pipeline_lag_messages{partition="0",pipeline="big"} 0.0' in text
    assert "unexpected error serving" not in lone.log_text()


def test_killing_the_source_leader_of_a_3_node_cluster_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """3 nodes, both topics with 3 replicas: the pipeline runs on the leader of each
    source partition; ``kill -9`` the leader of source partition 0 while messages keep
    coming, restart it: the target holds every selected message exactly once, on every
    node."""
    with NodeCluster(tmp_path, 3) as cluster:
        urls = [cluster.url(n) for n in cluster.names]
        _declare(urls[0], partitions=2, rf=3)
        assert (
            poll_until(
                lambda: all(cluster.get(n, "/v1/pipelines/big")[0] == 200 for n in cluster.names), BOUND
            )
            is not None
        )
        _publish(urls, 0, 150)
        assert poll_until(lambda: _caught_up(urls[0], 150), BOUND) is not None
        victim = cluster.partition_leaders("orders")[0]
        assert victim is not None
        _publish(urls, 150, 200)
        cluster.kill(victim)
        alive = [cluster.url(n) for n in cluster.up()]
        _publish(alive, 350, 150)
        t0 = time.monotonic()
        assert poll_until(lambda: _caught_up(alive[0], 500), BOUND) is not None, _target(alive[0])[-3:]
        cluster.note(f"the pipeline caught up {time.monotonic() - t0:.1f} s after the last publish")
        _check_exactly_once(alive[0], 500)
        cluster.restart(victim)
        assert poll_until(cluster.formed, BOUND) is not None
        for name in cluster.names:
            url = cluster.url(name)
            assert poll_until(lambda url=url: _caught_up(url, 500), BOUND) is not None, name
            _check_exactly_once(url, 500)


def _build_without_pipelines(base: Path) -> str:
    """A copy of this build (same peer protocol) whose peer frames do not advertise
    ``pipelines`` -- a release from before them, as far as the gate can tell; the
    directory for ``PYTHONPATH``."""
    import re

    from test_mixed_versions import build

    from sprawl.peer.frames import MIN_PROTOCOL, PROTOCOL

    root = build(base, "before-pipelines", PROTOCOL, MIN_PROTOCOL)
    frames = Path(root) / "sprawl" / "peer" / "frames.py"
    block = r"^FEATURES: frozenset\[str\] = frozenset\(\s*\{([^}]*)\}\s*\)"

    def without(m: re.Match[str]) -> str:
        names = [n.strip() for n in m.group(1).split(",") if n.strip() and n.strip() != '"pipelines"']
        assert len(names) < len([n for n in m.group(1).split(",") if n.strip()]), "no pipelines feature"
        return "FEATURES: frozenset[str] = frozenset({" + ", ".join(names) + "})"

    text, n = re.subn(block, without, frames.read_text(), flags=re.M)
    assert n == 1, "frames.py no longer has the FEATURES constant this test rewrites"
    frames.write_text(text)
    return root


def test_a_node_without_pipelines_holds_the_feature_back_until_upgraded(
    tmp_path: Path, cluster_factory: Any
) -> None:
    """Three nodes, one of a build that does not advertise ``pipelines``: a declaration is
    409 feature_not_enabled naming it (nothing is proposed); once that node runs this
    build the gate opens by itself and the pipeline is declared and runs."""
    c = cluster_factory(3, "v", start=False)
    c.nodes["v1"].env["PYTHONPATH"] = _build_without_pipelines(tmp_path)
    c.start(BOUND)
    url = c.url("v0")
    for name in ("orders", "big-orders"):
        status, answer = http_json(f"{url}/v1/topics/{name}", "PUT", {"partitions": 2}, timeout=15)
        assert status == 201, (status, answer)

    def pending() -> bool:
        gate = c.cluster_view("v0").get("features") or {}
        return gate.get("pending", {}).get("pipelines") == ["v1"]

    assert poll_until(pending, BOUND) is not None, c.cluster_view("v0").get("features")
    status, answer = http_json(url + "/v1/pipelines/big", "PUT", PIPELINE, timeout=15)
    assert status == 409 and answer["error"]["code"] == "feature_not_enabled", (status, answer)
    assert "v1" in answer["error"]["message"]
    assert http_json(url + "/v1/pipelines")[1] == {"pipelines": []}

    c.kill("v1")
    c.nodes["v1"].env.pop("PYTHONPATH")
    c.restart("v1")

    def declared() -> bool:
        status, _ = http_json(url + "/v1/pipelines/big", "PUT", PIPELINE, timeout=15)
        return status in (200, 201)

    assert poll_until(declared, BOUND) is not None
    _publish([url], 0, 30)
    assert poll_until(lambda: _caught_up(url, 30), BOUND) is not None
    _check_exactly_once(url, 30)
