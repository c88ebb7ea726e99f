"""``/v1/pipelines`` in process (issue 17): declared through the Raft metadata (here a
real :class:`~sprawl.cluster.metadata.Metadata` behind a stand-in for the proposal
path), refused until every node has the ``pipelines`` feature, bad definitions a 400
that changes nothing, the documented error shape throughout."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred, succeed

from harness.inproc_http import Node, assert_error, node  # noqa: F401  (the fixture)
from sprawl.cluster.metadata import Metadata


class _Raft:
    """The proposal path: each command applied to a real Metadata at once (as one
    voter that commits what it proposes)."""

    def __init__(self) -> None:
        self.metadata = Metadata()
        self.proposed: list[dict[str, Any]] = []
        for name in ("orders", "big-orders", "rejected"):
            self.metadata.apply(len(self.proposed) + 1, {"op": "put_topic", "name": name, "config": {}})

    def propose(self, cmd: dict[str, Any]) -> Deferred[dict[str, Any]]:
        self.proposed.append(cmd)
        return succeed(self.metadata.apply(self.metadata.applied + 1, cmd))


def _clustered(n: Node, enabled: bool = True) -> _Raft:
    raft = _Raft()
    n.info.raft = raft  # type: ignore[assignment]
    pending = {} if enabled else {"pipelines": ["node-old"]}
    n.info.features = lambda: {
        "enabled": ["pipelines", "pipeline-reject"] if enabled else [],
        "pending": pending,
    }
    return raft


BODY = {"source": "orders", "target": "big-orders", "filter": "payload.big", "fields": "n"}


@pytest_twisted.ensureDeferred
async def test_declare_change_describe_list_and_delete(node: Node) -> None:  # noqa: F811
    """201 then 200; GET and the list show the definition; DELETE 204 then 404."""
    raft = _clustered(node)
    r = await node.http.put("/v1/pipelines/big", json=BODY)
    assert r.code == 201, r
    assert r.json() == {
        "pipeline": "big",
        "source": "orders",
        "target": "big-orders",
        "filter": "payload.big",
        "fields": "n",
        "key": None,
        "acks": "quorum",
        "on_reject": "stall",
        "dead_letter_topic": None,
        "stalled": None,
        "lag": None,
        "running_here": [],
    }
    (cmd,) = raft.proposed
    assert cmd["op"] == "put_pipeline" and cmd["group_config"]["start"] == "earliest"
    assert "pipeline.big" in raft.metadata.topics["orders"]["groups"]
    r = await node.http.put("/v1/pipelines/big", json={**BODY, "acks": "leader"})
    assert r.code == 200 and r.json()["acks"] == "leader"
    assert (await node.http.get("/v1/pipelines/big")).json()["acks"] == "leader"
    listed = (await node.http.get("/v1/pipelines")).json()["pipelines"]
    assert [p["pipeline"] for p in listed] == ["big"]
    r = await node.http.delete("/v1/pipelines/big")
    assert r.code == 204 and raft.metadata.pipelines == {}
    assert "pipeline.big" not in raft.metadata.topics["orders"]["groups"]
    assert_error(await node.http.get("/v1/pipelines/big"), 404, "pipeline_not_found")
    assert_error(await node.http.delete("/v1/pipelines/big"), 404, "pipeline_not_found")


@pytest_twisted.ensureDeferred
async def test_bad_definitions_are_400s_that_change_nothing(node: Node) -> None:  # noqa: F811
    """Unknown topics, bad expressions, bad fields and names: 400 naming the fault,
    nothing proposed; a changed source is a 409 from the metadata."""
    raft = _clustered(node)
    cases = [
        ("big", {**BODY, "target": "nope"}, "topic_not_found"),
        ("big", {**BODY, "source": "nope"}, "topic_not_found"),
        ("big", {**BODY, "filter": "(("}, "invalid_filter"),
        ("big", {**BODY, "filter": "a" * 1025}, "invalid_filter"),
        ("big", {**BODY, "acks": "all"}, "invalid_field"),
        ("big", {**BODY, "extra": 1}, "invalid_field"),
        ("big", {**BODY, "pipeline": 5}, "invalid_field"),
        ("big", {"source": "orders"}, "invalid_field"),
        ("big", {**BODY, "target": "orders"}, "invalid_field"),
        ("b" * 201, BODY, "invalid_field"),
        ("..", BODY, "invalid_topic_name"),
    ]
    for name, body, code in cases:
        assert_error(await node.http.put(f"/v1/pipelines/{name}", json=body), 400, code)
    assert_error(await node.http.put("/v1/pipelines/big", data=b"[1]"), 400, "invalid_json")
    assert raft.proposed == [] and raft.metadata.pipelines == {}
    assert (await node.http.put("/v1/pipelines/big", json=BODY)).code == 201
    raft.metadata.apply(raft.metadata.applied + 1, {"op": "put_topic", "name": "other", "config": {}})
    r = await node.http.put("/v1/pipelines/big", json={**BODY, "source": "other"})
    assert_error(r, 409, "pipeline_source_change")


@pytest_twisted.ensureDeferred
async def test_refused_until_every_node_has_the_feature(node: Node) -> None:  # noqa: F811
    """409 feature_not_enabled naming the node without it; nothing is proposed."""
    raft = _clustered(node, enabled=False)
    r = await node.http.put("/v1/pipelines/big", json=BODY)
    assert_error(r, 409, "feature_not_enabled")
    assert "node-old" in r.json()["error"]["message"]
    assert raft.proposed == []
    assert (await node.http.get("/v1/pipelines")).json() == {"pipelines": []}


@pytest_twisted.ensureDeferred
async def test_a_node_without_cluster_metadata_lists_none_and_refuses_changes(node: Node) -> None:  # noqa: F811
    """In process without Raft (LocalControl): an empty list, 409 not_clustered."""
    assert (await node.http.get("/v1/pipelines")).json() == {"pipelines": []}
    assert_error(await node.http.put("/v1/pipelines/big", json=BODY), 409, "not_clustered")


@pytest_twisted.ensureDeferred
async def test_on_reject_is_validated_gated_and_shown_with_the_stall(node: Node) -> None:  # noqa: F811
    """``on_reject``/``dead_letter_topic``: 400 for a bad one or a missing topic, 409
    until every node has ``pipeline-reject`` (``stall`` needs nothing new), stored and
    shown; ``stalled`` is what this node's pipeline loop says."""
    raft = _clustered(node)
    dl = {**BODY, "on_reject": "dead-letter", "dead_letter_topic": "rejected"}
    cases = [
        ({**BODY, "on_reject": "drop"}, "invalid_field"),
        ({**BODY, "on_reject": "dead-letter"}, "invalid_field"),
        ({**dl, "dead_letter_topic": "orders"}, "invalid_field"),
        ({**BODY, "on_reject": "skip", "dead_letter_topic": "rejected"}, "invalid_field"),
        ({**dl, "dead_letter_topic": "nope"}, "topic_not_found"),
    ]
    for body, code in cases:
        assert_error(await node.http.put("/v1/pipelines/big", json=body), 400, code)
    assert raft.proposed == []
    node.info.features = lambda: {"enabled": ["pipelines"], "pending": {"pipeline-reject": ["node-old"]}}
    r = await node.http.put("/v1/pipelines/big", json=dl)
    assert_error(r, 409, "feature_not_enabled")
    assert "node-old" in r.json()["error"]["message"] and raft.proposed == []
    assert (await node.http.put("/v1/pipelines/big", json={**BODY, "on_reject": "stall"})).code == 201
    assert "on_reject" not in raft.metadata.pipelines["big"]  # as a node of the release before keeps it
    node.info.features = lambda: {"enabled": ["pipelines", "pipeline-reject"], "pending": {}}
    r = await node.http.put("/v1/pipelines/big", json=dl)
    assert r.code == 200, r
    assert (r.json()["on_reject"], r.json()["dead_letter_topic"], r.json()["stalled"]) == (
        "dead-letter",
        "rejected",
        None,
    )
    node.info.pipeline_stalled = lambda name: (
        "source partition 0 offset 2: too big" if name == "big" else None
    )
    (shown,) = (await node.http.get("/v1/pipelines")).json()["pipelines"]
    assert shown["stalled"] == "source partition 0 offset 2: too big"
