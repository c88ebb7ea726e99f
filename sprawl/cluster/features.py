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

Once every node has had a feature for :data:`LATCH_AFTER` seconds it is
*latched*: the Raft leader commits it to the metadata's ``features`` (the
``latch_features`` command, itself used only once every node has
:data:`LATCH`; :func:`to_latch`, :class:`LatchClock`).  A latched
feature stays on whoever joins later, and a node lacking it -- a node of an
older release started again in an upgraded cluster -- is refused: it gets
no Raft role and no replica, and a clear log line names what it lacks
(:func:`lacking`), instead of failing later to apply a command it does not
know.  Without the latch a recomputed gate would switch the feature off
again while the commands it wrote stay in the Raft log (see
docs/operations.md, "Versions during an upgrade").
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: The feature of a build that can apply the ``latch_features`` Raft command
#: (and read the latched ``features`` of a metadata snapshot).
LATCH = "feature-latch"
#: At most this many latched features, of at most this many characters (the
#: bounds of an advertised feature list).
MAX_LATCHED = 32
MAX_FEATURE_CHARS = 48
#: Seconds between two proposals latching features (the Raft leader's).
FEATURE_LATCH_RETRY = 5.0
#: Seconds a feature must have been on across the cluster, without a break,
#: before it is latched: a cluster's founding node alone, or one that has
#: just been upgraded, does not latch what a node joining a moment later
#: (of the release before, within the upgrade window) lacks.
LATCH_AFTER = 60.0


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


def feature_gate(
    mine: Collection[str], nodes: Mapping[str, Collection[str] | None], latched: Collection[str] = ()
) -> FeatureGate:
    """The gate of a node with features ``mine``, given every other counted
    node's advertised features (None: unknown) and the features the cluster
    latched: those (of ``mine``) are on whatever the nodes say -- a node
    lacking one is refused (:func:`lacking`), not waited for."""
    own = frozenset(mine)
    kept = own & frozenset(latched)
    unknown = tuple(sorted(n for n, fs in nodes.items() if fs is None))
    if unknown:
        return FeatureGate(kept, {f: unknown for f in sorted(own - kept)}, unknown)
    enabled = set(own)
    pending: dict[str, list[str]] = {}
    for node, fs in sorted(nodes.items()):
        have = frozenset(fs or ())
        for f in own - have - kept:
            enabled.discard(f)
            pending.setdefault(f, []).append(node)
    return FeatureGate(frozenset(enabled), {f: tuple(ns) for f, ns in pending.items()}, ())


def lacking(latched: Collection[str], have: Collection[str]) -> tuple[str, ...]:
    """The latched features a node with features ``have`` lacks, sorted
    (none: it may take part)."""
    return tuple(sorted(frozenset(latched) - frozenset(have)))


def to_latch(gate: FeatureGate, latched: Collection[str]) -> list[str]:
    """The features to latch now, sorted: every feature on across the cluster
    and not latched yet -- none while some node cannot apply the latch itself
    (:data:`LATCH` not on), or while some node's features are unknown."""
    if not gate.on(LATCH) or gate.unknown:
        return []
    return sorted(gate.enabled - frozenset(latched))


@dataclass
class LatchClock:
    """Since when each feature has been on without a break (the Raft leader's
    view; bounded by the features of this build)."""

    after: float = LATCH_AFTER
    _since: dict[str, float] = field(default_factory=dict)

    def ready(self, now: float, candidates: Collection[str]) -> list[str]:
        """Of ``candidates`` (:func:`to_latch` now), those on for ``after``
        seconds, sorted; a feature that is not a candidate now starts over."""
        now_on = set(candidates)
        for f in list(self._since):
            if f not in now_on:
                del self._since[f]
        for f in now_on:
            self._since.setdefault(f, now)
        return sorted(f for f in now_on if now - self._since[f] >= self.after)


def valid_latch(features: object) -> list[str]:
    """A ``latch_features`` command's feature list, checked (a list of at most
    :data:`MAX_LATCHED` non-empty strings of at most :data:`MAX_FEATURE_CHARS`
    characters), sorted and without repeats; ValueError otherwise."""
    if not isinstance(features, list) or len(features) > MAX_LATCHED:
        raise ValueError(f"features must be a list of at most {MAX_LATCHED} names")
    if not all(isinstance(f, str) and 0 < len(f) <= MAX_FEATURE_CHARS for f in features):
        raise ValueError(f"each feature must be a name of 1..{MAX_FEATURE_CHARS} characters")
    return sorted(set(features))


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
    latched: Collection[str] = (),
) -> FeatureGate:
    """The gate from what a node knows: gossip ``members`` as ``(id, state,
    metadata)`` (members of another Raft cluster left out by the caller), the
    ``registered`` node ids of the Raft metadata and the features it latched.
    A member that left is not counted unless registered; a registered node
    gossip does not know is unknown."""
    nodes: dict[str, frozenset[str] | None] = {}
    for node_id, state, meta in members:
        if node_id == me or (state == "left" and node_id not in registered):
            continue
        nodes[node_id] = advertised(meta)
    for node_id in registered:
        if node_id != me and node_id not in nodes:
            nodes[node_id] = None
    return feature_gate(mine, nodes, latched)
