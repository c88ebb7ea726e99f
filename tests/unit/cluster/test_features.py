"""The cluster feature gate (sprawl.cluster.features): a feature is on only when every
counted node has it; unknown nodes block; older releases advertise nothing."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from twisted.internet import task

from sprawl.cluster.cluster_ids import ClusterIds
from sprawl.cluster.features import (
    LATCH,
    MAX_LATCHED,
    advertised,
    cluster_gate,
    feature_gate,
    lacking,
    protocol_range,
    to_latch,
    valid_latch,
)
from sprawl.cluster.metadata import BadSnapshot, Metadata, check_snapshot
from sprawl.peer.frames import VersionRefused, check_latched


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


# -- latching (issue 24) -------------------------------------------------------------------


def test_a_latched_feature_stays_on_when_a_node_lacking_it_appears() -> None:
    """Recomputed, a gate would switch ``a`` off for an older node; latched, it
    stays on (that node is refused instead), and an unknown node does not
    block it either.  Features not latched are gated as before."""
    g = feature_gate({"a", "b"}, {"n2": {"a", "b"}, "old": set()}, latched={"a"})
    assert g.on("a") and not g.on("b") and dict(g.pending) == {"b": ("old",)}
    g = feature_gate({"a", "b"}, {"n3": None}, latched={"a"})
    assert g.on("a") and not g.on("b") and g.unknown == ("n3",)
    assert lacking({"a", "c"}, {"a", "b"}) == ("c",) and lacking({"a"}, {"a", "b"}) == ()
    # cluster_gate passes the latched features through
    members: list[tuple[str, str, dict[str, Any]]] = [("old", "alive", {})]
    assert cluster_gate("me", {"a"}, members, ["me", "old"], latched=["a"]).on("a")


def test_features_are_latched_once_every_node_can_apply_the_latch() -> None:
    """to_latch: the features on and not yet latched -- none while a node lacks
    the latch command itself, or while a node's features are unknown."""
    everyone = feature_gate({"a", LATCH}, {"n2": {"a", LATCH}})
    assert to_latch(everyone, []) == sorted(["a", LATCH])
    assert to_latch(everyone, ["a", LATCH]) == []
    assert to_latch(feature_gate({"a", LATCH}, {"n2": {"a"}}), []) == []
    assert to_latch(feature_gate({"a", LATCH}, {"n2": None}), []) == []


def test_a_latch_command_is_checked_and_bounded() -> None:
    assert valid_latch(["b", "a", "b"]) == ["a", "b"]
    for bad in ("a", ["x" * 49], [""], [1], [f"f{i}" for i in range(MAX_LATCHED + 1)], None):
        with pytest.raises(ValueError):
            valid_latch(bad)


def test_the_metadata_latches_features_for_good_and_snapshots_them() -> None:
    """latch_features merges (never unlatches), refuses a malformed list, and
    the latched features survive a snapshot -- which holds no ``features``
    field at all while none is latched (an older node reads it as before)."""
    m = Metadata()
    assert "features" not in msgspec.msgpack.decode(m.snapshot())
    assert m.apply(1, {"op": "latch_features", "features": ["b", "a"]}) == {
        "features": ["a", "b"],
        "changed": True,
    }
    assert m.apply(2, {"op": "latch_features", "features": ["a"]}) == {
        "features": ["a", "b"],
        "changed": False,
    }
    bad = m.apply(3, {"op": "latch_features", "features": "a"})
    assert bad["error"]["code"] == "malformed_command" and m.features == ["a", "b"]
    back = Metadata.restore(m.snapshot())
    assert back.features == ["a", "b"] and back == m
    raw = msgspec.msgpack.decode(m.snapshot())
    raw["features"] = ["x" * 100]
    with pytest.raises(BadSnapshot):
        check_snapshot(msgspec.msgpack.encode(raw))


def test_a_peer_or_member_lacking_a_latched_feature_is_refused() -> None:
    """At the peer handshake (a REFUSED frame, code features_missing) and in
    gossip (foreign: no Raft role, no replica); this node itself never."""
    check_latched("n2", ["a", "b"], ["a"])
    with pytest.raises(VersionRefused) as e:
        check_latched("n2", ["b"], ["a", "c"])
    assert e.value.code == "features_missing" and "a, c" in str(e.value)

    latched: list[str] = []
    ids = ClusterIds(task.Clock(), random.Random(1), SimpleNamespace(node_id="me"), latched=lambda: latched)  # type: ignore[arg-type]
    old = {"id": "old", "state": "alive", "features": ["b"]}
    assert not ids.is_foreign(old)
    latched.append("a")
    assert ids.lacks_latched(old) == ("a",) and ids.is_foreign(old)
    assert not ids.is_foreign({"id": "new", "state": "alive", "features": ["a", "b"]})
    assert not ids.is_foreign({"id": "me", "state": "alive"})


def test_a_feature_is_latched_only_after_a_minute_on_without_a_break() -> None:
    """A founding node alone sees every feature of its build on: the clock holds
    the latch until it has been on for ``after`` seconds, and a feature held
    back meanwhile (a node of the release before joined) starts over."""
    from sprawl.cluster.features import LATCH_AFTER, LatchClock

    clock = LatchClock()
    assert clock.after == LATCH_AFTER == 60.0
    assert clock.ready(0.0, ["a", "b"]) == []
    assert clock.ready(59.0, ["a"]) == []  # b is held back now
    assert clock.ready(60.0, ["a", "b"]) == ["a"]
    assert clock.ready(119.0, ["a", "b"]) == ["a"]
    assert clock.ready(120.0, ["a", "b"]) == ["a", "b"]
