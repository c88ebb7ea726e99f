"""The cluster feature gate (sprawl.cluster.features): a feature is on only when every
counted node has it; unknown nodes block; older releases advertise nothing."""

from __future__ import annotations

from typing import Any

from sprawl.cluster.features import advertised, cluster_gate, feature_gate, protocol_range


def test_every_node_has_it_so_it_is_on() -> None:
    g = feature_gate({"a", "b"}, {"n2": {"a", "b", "c"}, "n3": {"a", "b"}})
    assert g.enabled == {"a", "b"} and g.on("a") and not g.on("c") and g.pending == {}


def test_a_node_lacking_it_holds_it_back_and_is_named() -> None:
    g = feature_gate({"a", "b"}, {"n2": {"a"}, "n3": set(), "n4": {"a", "b"}})
    assert g.enabled == set() or g.enabled == frozenset()
    assert dict(g.pending) == {"a": ("n3",), "b": ("n2", "n3")}
    assert g.as_dict()["pending"] == {"a": ["n3"], "b": ["n2", "n3"]}


def test_an_unknown_node_blocks_everything() -> None:
    g = feature_gate({"a"}, {"n2": {"a"}, "n3": None})
    assert not g.on("a") and g.unknown == ("n3",) and dict(g.pending) == {"a": ("n3",)}


def test_a_lone_node_has_its_own_features() -> None:
    assert feature_gate({"a"}, {}).enabled == {"a"}


def test_gossip_metadata_read_defensively() -> None:
    assert advertised({"features": ["a", 5, "b" * 100]}) == {"a", "b" * 48}
    assert advertised({"version": "0.1"}) == frozenset()  # an older release
    assert advertised({"features": "a"}) == frozenset()
    assert protocol_range({"protocol": [2, 3]}) == (2, 3)
    for bad in ({}, {"protocol": 3}, {"protocol": [1]}, {"protocol": ["1", 2]}, {"protocol": [True, 2]}):
        assert protocol_range(bad) is None


def test_cluster_gate_counts_registered_and_gossiped_nodes() -> None:
    """Registered nodes gossip does not know block; a member that left and is not
    registered is not counted; this node is not a member of its own gate."""
    members = [
        ("n1", "alive", {"features": ["a"]}),
        ("n2", "alive", {"features": ["a"]}),
        ("old", "left", {}),
    ]
    assert cluster_gate("n1", {"a"}, members, ["n1", "n2"]).on("a")
    assert not cluster_gate("n1", {"a"}, members, ["n1", "n2", "n3"]).on("a")
    lacking = cluster_gate("n1", {"a"}, [*members, ("n4", "dead", {"version": "0.1"})], ["n1", "n2"])
    assert dict(lacking.pending) == {"a": ("n4",)}


def test_drain_is_refused_until_every_node_has_it() -> None:
    """The first gated feature: ``set_drained`` is a Raft command a node of an older
    release could not apply, so the drain route refuses (409 feature_not_enabled,
    naming the nodes lacking it) until the gate has it on."""
    from types import SimpleNamespace

    import pytest

    from sprawl.errors import SprawlError
    from sprawl.http.admin import AdminRoutes

    proposed: list[Any] = []
    raft = SimpleNamespace(propose=lambda cmd: proposed.append(cmd))
    gate = {"enabled": ["disk-state-gossip"], "pending": {"drain": ["n3"]}}
    info = SimpleNamespace(raft=raft, features=lambda: gate)
    admin = AdminRoutes(None, SimpleNamespace(info=info), None, None, None)  # type: ignore[arg-type]
    with pytest.raises(SprawlError) as e:
        admin.set_drained(None, "n2", True)  # type: ignore[arg-type]
    assert e.value.code == "feature_not_enabled" and e.value.status == 409 and "n3" in str(e.value)
    assert proposed == []
