"""The cluster feature gate: which new features every node has.  Pure.

Each node advertises what its build can do (:data:`sprawl.peer.frames.FEATURES`)
in its gossip metadata (``features``) and its peer handshake.  During a
rolling upgrade the cluster runs two releases at once; a feature that changes
what nodes say to each other (a new Raft command, a new frame, a new field
others must understand) may be *used* only once every node of the cluster has
it -- until then the new release behaves as the old one.  :func:`feature_gate`
computes that from the members' advertised features:

* the nodes counted are the cluster's registered nodes (the Raft metadata's
  ``nodes``: a node down now may come back with the build it had) and every
  live gossip member of this cluster;
* a node whose features are unknown (registered but not heard from since this
  node started) blocks every feature: it may be of an older release;
* a node of a release before features were advertised has none.

The gate is recomputed from what is known now, so it can switch a feature
off again (a node of the older release joins).  A feature whose use leaves
state an older node cannot read (a Raft command) must therefore also refuse
such a node's join, or latch its switch-on in the Raft metadata; neither is
needed by the features of this release (see docs/operations.md, "Versions
during an upgrade").
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FeatureGate:
    """Which features are on cluster-wide, and what holds the others back."""

    #: Features every counted node has: on.
    enabled: frozenset[str]
    #: Feature this node has but some node lacks -> the nodes lacking it, sorted.
    pending: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Nodes whose features are not known (they block every feature).
    unknown: tuple[str, ...] = ()

    def on(self, feature: str) -> bool:
        """Whether ``feature`` may be used now."""
        return feature in self.enabled

    def as_dict(self) -> dict[str, Any]:
        """The ``features`` block of ``GET /v1/cluster``."""
        return {
            "enabled": sorted(self.enabled),
            "pending": {f: list(nodes) for f, nodes in sorted(self.pending.items())},
            "unknown_nodes": list(self.unknown),
        }


def feature_gate(mine: Collection[str], nodes: Mapping[str, Collection[str] | None]) -> FeatureGate:
    """The gate of a node with features ``mine``, given every other counted
    node's advertised features (None: unknown)."""
    own = frozenset(mine)
    unknown = tuple(sorted(n for n, fs in nodes.items() if fs is None))
    if unknown:
        return FeatureGate(frozenset(), {f: unknown for f in sorted(own)}, unknown)
    enabled = set(own)
    pending: dict[str, list[str]] = {}
    for node, fs in sorted(nodes.items()):
        have = frozenset(fs or ())
        for f in own - have:
            enabled.discard(f)
            pending.setdefault(f, []).append(node)
    return FeatureGate(frozenset(enabled), {f: tuple(ns) for f, ns in pending.items()}, ())


def advertised(meta: Mapping[str, Any]) -> frozenset[str]:
    """The features a member's gossip metadata advertises (none from an older
    release), read defensively and bounded."""
    fs = meta.get("features")
    if not isinstance(fs, list | tuple):
        return frozenset()
    return frozenset(str(f)[:48] for f in fs[:32] if isinstance(f, str))


def protocol_range(meta: Mapping[str, Any]) -> tuple[int, int] | None:
    """The ``(min, max)`` peer protocol a member's gossip metadata states, or None."""
    p = meta.get("protocol")
    if (
        isinstance(p, list | tuple)
        and len(p) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in p)
    ):
        return (int(p[0]), int(p[1]))
    return None


def cluster_gate(
    me: str,
    mine: Collection[str],
    members: Iterable[tuple[str, str, Mapping[str, Any]]],
    registered: Iterable[str],
) -> FeatureGate:
    """The gate from what a node knows: gossip ``members`` as ``(id, state,
    metadata)`` (members of another Raft cluster left out by the caller) and
    the ``registered`` node ids of the Raft metadata.  A member that left is
    not counted unless registered; a registered node gossip does not know is
    unknown."""
    nodes: dict[str, frozenset[str] | None] = {}
    for node_id, state, meta in members:
        if node_id == me or (state == "left" and node_id not in registered):
            continue
        nodes[node_id] = advertised(meta)
    for node_id in registered:
        if node_id != me and node_id not in nodes:
            nodes[node_id] = None
    return feature_gate(mine, nodes)
