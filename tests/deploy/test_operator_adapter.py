"""The operator adapter's side facing Sprawl nodes (``sprawl.operator.adapter``:
:func:`observe_nodes`, :func:`node_action`) against real nodes -- the part of
the adapter that runs without a Kubernetes API server.  The ``kubernetes``
client is only imported by ``Operator`` itself, so none is needed here."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from harness import http_json, poll_until
from sprawl.operator.adapter import node_action, observe_nodes, operator_token
from sprawl.operator.reconcile import DRAIN, Action, Node

pytestmark = pytest.mark.integration


@pytest.fixture
def dead_url() -> Iterator[str]:
    """A loopback URL whose port is bound but not listening: connections are refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def test_observe_nodes_reads_a_real_node_past_a_dead_pod(sprawl_node: Any, dead_url: str) -> None:
    """Leaderships and replicas counted from a real node's placement, the
    under-replicated count from its cluster view; a pod that does not answer
    is passed over; nothing known when none answers."""
    url = sprawl_node.url
    status, body = http_json(f"{url}/v1/topics/ops", "PUT", {"partitions": 2})
    assert status in (200, 201), body
    node_id = http_json(f"{url}/v1/cluster")[1]["node_id"]
    urls = {"sprawl-1": dead_url, "sprawl-0": url}
    seen: dict[str, Any] = {}

    def both_led() -> bool:
        seen["obs"] = observe_nodes(urls)
        return seen["obs"][0].get(node_id) == Node(2, 2)

    assert poll_until(both_led, 20.0) is not None, seen
    assert seen["obs"][1] == 0
    assert observe_nodes({"sprawl-1": dead_url}) == ({}, None)


def test_a_drain_no_pod_takes_is_reported(sprawl_node: Any, dead_url: str) -> None:
    """A drain that no pod carries out (a lone node is not a cluster to drain
    in; a dead pod answers nothing) comes back as what went wrong with each."""
    failed = node_action(Action(DRAIN, "sprawl-0"), {"sprawl-1": dead_url, "sprawl-0": sprawl_node.url})
    assert failed is not None and dead_url in failed and sprawl_node.url in failed, failed
    assert node_action(Action(DRAIN, "sprawl-0"), {}) == "no ready pod"


def test_the_operator_drains_and_undrains_a_node_of_a_cluster(tmp_path: Any) -> None:
    """Three real nodes: the adapter's drain (``POST /v1/cluster/nodes/{node}/drain``,
    ``sprawlctl cluster drain``'s route) through any node makes the node drained
    as the operator observes it, and its leaderships move off; the undrain
    clears the flag."""
    from harness import NodeCluster
    from sprawl.operator.reconcile import UNDRAIN

    cluster = NodeCluster(tmp_path, 3)
    cluster.start()
    try:
        n0, n2 = cluster.names[0], cluster.names[2]
        status, body = http_json(
            cluster.url(n0) + "/v1/topics/ops", "PUT", {"partitions": 6, "replication_factor": 3}, timeout=15
        )
        assert status in (200, 201), body
        victim = cluster.cluster_view(n2)["node_id"]
        urls = {nm: cluster.url(nm) for nm in cluster.names}
        seen: dict[str, Any] = {}

        def all_led() -> bool:
            leaders = cluster.partition_leaders("ops")
            return len(leaders) == 6 and all(leaders.values())

        assert poll_until(all_led, 30.0) is not None
        assert node_action(Action(DRAIN, victim), {n0: urls[n0]}) is None

        def drained_and_empty() -> bool:
            nodes, _ = observe_nodes(urls)
            seen["nodes"] = nodes
            node = nodes.get(victim)
            return node is not None and node.drained and node.leaderships == 0

        assert poll_until(drained_and_empty, 60.0) is not None, seen
        assert node_action(Action(UNDRAIN, victim), urls) is None

        def undrained() -> bool:
            nodes, _ = observe_nodes(urls)
            seen["nodes"] = nodes
            return victim in nodes and not nodes[victim].drained

        assert poll_until(undrained, 30.0) is not None, seen
    finally:
        cluster.close()


OPERATOR_TOKEN = "operator-adapter-test-token-0123456789"


def test_the_adapter_sends_its_token_to_a_node_with_auth_on(sprawl_nodes: Any, tmp_path: Any) -> None:
    """A node with ``--auth-tokens``: without the token the adapter's reads
    learn nothing and its drain is refused with a 401; with the token (read
    by :func:`operator_token` from ``SPRAWL_TOKEN_FILE``, as the manifests
    mount it) it observes the node and its drain passes auth and reaches the
    drain route (which answers 404: the lone node is not named sprawl-0)."""
    tokens = tmp_path / "tokens.json"
    tokens.write_text(
        json.dumps(
            {"tokens": [{"name": "operator", "token": OPERATOR_TOKEN, "permissions": {"*": ["admin"]}}]}
        )
    )
    token_file = tmp_path / "operator-token"
    token_file.write_text(OPERATOR_TOKEN + "\n")
    token = operator_token({"SPRAWL_TOKEN_FILE": str(token_file)})
    assert token == OPERATOR_TOKEN
    node = sprawl_nodes("--auth-tokens", str(tokens))
    urls = {"sprawl-0": node.url}
    assert observe_nodes(urls) == ({}, None)
    refused = node_action(Action(DRAIN, "sprawl-0"), urls)
    assert refused is not None and "401" in refused, refused
    seen: dict[str, Any] = {}

    def observed() -> bool:
        seen["obs"] = observe_nodes(urls, token)
        return bool(seen["obs"][0])

    assert poll_until(observed, 20.0) is not None, seen
    reached = node_action(Action(DRAIN, "sprawl-0"), urls, token)
    assert reached is not None and "404" in reached, reached  # past auth: no node of that name


def test_operator_token_from_env_or_file(tmp_path: Any) -> None:
    """``SPRAWL_TOKEN`` first, else the first line of ``SPRAWL_TOKEN_FILE``;
    None without either; an oversized or missing file is an error."""
    f = tmp_path / "t"
    f.write_text("  file-token \nsecond line\n")
    assert operator_token({"SPRAWL_TOKEN": " env-token\n", "SPRAWL_TOKEN_FILE": str(f)}) == "env-token"
    assert operator_token({"SPRAWL_TOKEN_FILE": str(f)}) == "file-token"
    assert operator_token({}) is None
    f.write_text("x" * 5000)
    with pytest.raises(OSError, match="over"):
        operator_token({"SPRAWL_TOKEN_FILE": str(f)})
    with pytest.raises(OSError):
        operator_token({"SPRAWL_TOKEN_FILE": str(tmp_path / "missing")})
