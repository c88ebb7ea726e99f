"""The operator adapter's side facing Sprawl nodes (``sprawl.operator.adapter``:
:func:`observe_nodes`, :func:`node_action`) against real nodes -- the part of
the adapter that runs without a Kubernetes API server.  The ``kubernetes``
client is only imported by ``Operator`` itself, so none is needed here."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from harness import http_json, poll_until
from sprawl.operator.adapter import node_action, observe_nodes
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
