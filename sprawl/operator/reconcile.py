"""What the operator does next for a ``SprawlCluster``.  Pure.

:func:`reconcile` takes the desired spec and what was observed (the
StatefulSet, its pods, and the cluster as ``GET /v1/cluster`` and
``GET /v1/cluster/placement`` describe it) and returns a :class:`Plan`: the
actions to take now and the status conditions to write.  The adapter
(:mod:`sprawl.operator.adapter`) observes, calls it, applies the actions and
calls it again a few seconds later (level-triggered: a plan is a step, not
a script, so a lost action or a crash of the operator is repaired by the
next pass).

Rules, in order (the first that applies makes the plan):

1. no StatefulSet: create it;
2. the StatefulSet's pod template runs another image: update the template
   (the StatefulSet uses ``updateStrategy: OnDelete``, so no pod restarts
   by itself: the operator restarts them one at a time, rule 6);
3. more replicas wanted: scale up (new pods join by gossip, take voter
   places and partitions by rendezvous placement);
4. fewer wanted: the highest ordinal is drained (leaderships and replicas
   moved off it) and the StatefulSet shrinks by one only when that node
   leads nothing, holds no replica and the cluster has no under-replicated
   partition; one pod at a time;
5. nothing disruptive while the cluster is unreachable, a pod is not
   ready or a partition is under-replicated;
6. a pod on an old image (highest ordinal first): drained of leaderships,
   then deleted (the StatefulSet recreates it on the new image), then
   undrained once it is back and ready;
7. a node left drained by an earlier step that is up to date and ready:
   undrained.

Safety, whatever is observed (``tests/deploy/test_operator_reconcile.py`` checks
it with hypothesis): a plan deletes a pod or shrinks the StatefulSet only
with 0 under-replicated partitions, every pod ready, and the node concerned
leading nothing (and, to shrink, holding no replica); at most one such
action per plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

#: Condition types written to ``status.conditions``.
AVAILABLE = "Available"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"


def node_id(cluster: str, ordinal: int) -> str:
    """The Sprawl node id of pod ``ordinal`` (its pod name: stable across restarts)."""
    return f"{cluster}-{ordinal}"


@dataclass(frozen=True)
class Spec:
    """The desired state (``spec`` of the custom resource)."""

    name: str
    replicas: int
    image: str

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError("replicas must be at least 1")
        if not self.image:
            raise ValueError("image must not be empty")

    @classmethod
    def from_resource(cls, resource: Mapping[str, Any]) -> Spec:
        """From a ``SprawlCluster`` object (a dict as the API returns it)."""
        spec = resource.get("spec") or {}
        return cls(
            str(resource["metadata"]["name"]), int(spec.get("replicas", 3)), str(spec.get("image", ""))
        )


@dataclass(frozen=True)
class Pod:
    """One pod of the StatefulSet."""

    ordinal: int
    image: str
    ready: bool


@dataclass(frozen=True)
class Node:
    """One node as the cluster reports it."""

    #: Partitions it leads and partitions it holds a replica of.
    leaderships: int = 0
    replicas: int = 0
    #: Marked for maintenance: new leaderships avoid it.
    drained: bool = False


@dataclass(frozen=True)
class Observed:
    """What the adapter saw."""

    #: ``spec.replicas`` and the pod template's image of the StatefulSet (None: none yet).
    replicas: int | None
    image: str | None
    pods: Sequence[Pod] = ()
    #: node id -> state; empty when the cluster could not be asked.
    nodes: Mapping[str, Node] = field(default_factory=dict)
    #: Partitions short of replicas (None: the cluster could not be asked).
    under_replicated: int | None = None


@dataclass(frozen=True)
class Action:
    """One thing to do; ``kind`` is one of the constants below."""

    kind: str
    #: The replica count (create, scale), image (create, set_image),
    #: node id (drain, undrain) or pod ordinal (delete_pod).
    arg: Any
    reason: str = ""


CREATE = "create"
SET_IMAGE = "set_image"
SCALE = "scale"
DRAIN = "drain"
UNDRAIN = "undrain"
DELETE_POD = "delete_pod"


@dataclass(frozen=True)
class Condition:
    """A ``status.conditions`` entry (``lastTransitionTime`` is the adapter's)."""

    type: str
    status: bool
    reason: str
    message: str = ""


@dataclass
class Plan:
    """The actions to take now, the conditions and a one-word phase for ``status``."""

    actions: list[Action] = field(default_factory=list)
    conditions: list[Condition] = field(default_factory=list)
    phase: str = "Running"
    #: Why nothing (more) is done now, one line each.
    waiting: list[str] = field(default_factory=list)

    def status(self, observed: Observed) -> dict[str, Any]:
        """The ``status`` fields (conditions without timestamps)."""
        return {
            "phase": self.phase,
            "replicas": len(observed.pods),
            "readyReplicas": sum(1 for p in observed.pods if p.ready),
            "updatedReplicas": sum(1 for p in observed.pods if p.image == observed.image),
            "underReplicated": observed.under_replicated,
            "conditions": [
                {
                    "type": c.type,
                    "status": "True" if c.status else "False",
                    "reason": c.reason,
                    "message": c.message,
                }
                for c in self.conditions
            ],
        }


def _conditions(spec: Spec, obs: Observed, progressing: str | None, waiting: list[str]) -> list[Condition]:
    ready = sum(1 for p in obs.pods if p.ready)
    healthy = obs.under_replicated == 0 and ready == len(obs.pods) and ready > 0
    if obs.under_replicated is None:
        degraded = Condition(DEGRADED, True, "ClusterUnreachable", "no node answered GET /v1/cluster")
    elif obs.under_replicated > 0:
        degraded = Condition(
            DEGRADED, True, "UnderReplicated", f"{obs.under_replicated} partitions under-replicated"
        )
    elif ready < len(obs.pods):
        degraded = Condition(DEGRADED, True, "PodsNotReady", f"{ready}/{len(obs.pods)} pods ready")
    else:
        degraded = Condition(DEGRADED, False, "Healthy")
    return [
        Condition(
            AVAILABLE, healthy, "Healthy" if healthy else degraded.reason, f"{ready}/{spec.replicas} ready"
        ),
        Condition(PROGRESSING, progressing is not None, progressing or "Reconciled", "; ".join(waiting)),
        degraded,
    ]


def _plan(spec: Spec, obs: Observed, actions: list[Action], phase: str, waiting: list[str]) -> Plan:
    progressing = None if phase == "Running" else phase
    return Plan(actions, _conditions(spec, obs, progressing, waiting), phase, waiting)


def _safe(obs: Observed, waiting: list[str]) -> bool:
    """Whether a disruptive step may be taken (rule 5); says why not."""
    if obs.under_replicated is None:
        waiting.append("cluster unreachable")
    elif obs.under_replicated > 0:
        waiting.append(f"{obs.under_replicated} partitions under-replicated")
    elif not obs.pods or not all(p.ready for p in obs.pods):
        waiting.append("a pod is not ready")
    else:
        return True
    return False


def reconcile(spec: Spec, obs: Observed) -> Plan:
    """The next step towards ``spec`` from ``obs`` (see the module docstring)."""
    waiting: list[str] = []
    if obs.replicas is None:
        return _plan(spec, obs, [Action(CREATE, spec.replicas, "no StatefulSet")], "Creating", waiting)
    if obs.image != spec.image:
        return _plan(
            spec, obs, [Action(SET_IMAGE, spec.image, f"template runs {obs.image}")], "Upgrading", waiting
        )
    if spec.replicas > obs.replicas:
        acts = [Action(SCALE, spec.replicas, f"{obs.replicas} -> {spec.replicas} pods")]
        return _plan(spec, obs, acts, "ScalingUp", waiting)
    if spec.replicas < obs.replicas:
        return _scale_down(spec, obs, waiting)
    outdated = sorted((p for p in obs.pods if p.image != spec.image), key=lambda p: -p.ordinal)
    if outdated:
        return _upgrade(spec, obs, outdated[0], waiting)
    undrain = [
        Action(UNDRAIN, nid, "up to date and ready")
        for p in sorted(obs.pods, key=lambda p: p.ordinal)
        if p.ready and (nid := node_id(spec.name, p.ordinal)) in obs.nodes and obs.nodes[nid].drained
    ]
    return _plan(spec, obs, undrain, "Running", waiting)


def _scale_down(spec: Spec, obs: Observed, waiting: list[str]) -> Plan:
    assert obs.replicas is not None
    victim = node_id(spec.name, obs.replicas - 1)
    node = obs.nodes.get(victim)
    if node is not None and not node.drained:
        return _plan(spec, obs, [Action(DRAIN, victim, "scale down")], "ScalingDown", waiting)
    if not _safe(obs, waiting):
        return _plan(spec, obs, [], "ScalingDown", waiting)
    if node is not None and (node.leaderships or node.replicas):
        waiting.append(f"{victim} still leads {node.leaderships} and holds {node.replicas} replicas")
        return _plan(spec, obs, [], "ScalingDown", waiting)
    acts = [Action(SCALE, obs.replicas - 1, f"{victim} drained")]
    return _plan(spec, obs, acts, "ScalingDown", waiting)


def _upgrade(spec: Spec, obs: Observed, pod: Pod, waiting: list[str]) -> Plan:
    nid = node_id(spec.name, pod.ordinal)
    node = obs.nodes.get(nid)
    if not _safe(obs, waiting):
        return _plan(spec, obs, [], "Upgrading", waiting)
    if node is not None and not node.drained:
        return _plan(spec, obs, [Action(DRAIN, nid, "restart on a new image")], "Upgrading", waiting)
    if node is not None and node.leaderships:
        waiting.append(f"{nid} still leads {node.leaderships} partitions")
        return _plan(spec, obs, [], "Upgrading", waiting)
    acts = [Action(DELETE_POD, pod.ordinal, f"{pod.image} -> {spec.image}")]
    return _plan(spec, obs, acts, "Upgrading", waiting)


def node_route(action: Action) -> str:
    """The node API route that carries out a drain or undrain action:
    ``POST /v1/cluster/nodes/{node}/drain`` (``sprawlctl cluster drain``'s)."""
    if action.kind not in (DRAIN, UNDRAIN):
        raise ValueError(f"not a node action: {action.kind}")
    return f"/v1/cluster/nodes/{quote(str(action.arg), safe='')}/{action.kind}"


def observed_cluster(
    cluster: Mapping[str, Any], placement: Mapping[str, Any]
) -> tuple[dict[str, Node], int | None]:
    """Nodes and the under-replicated count from ``GET /v1/cluster`` and
    ``GET /v1/cluster/placement`` answers (members not ``dead``; drained when
    the cluster's ``drained`` list names the node, or its member entry has a
    true ``drained`` flag)."""
    lead: dict[str, int] = {}
    hold: dict[str, int] = {}
    for parts in (placement.get("topics") or {}).values():
        for p in parts.values():
            if p.get("leader"):
                lead[p["leader"]] = lead.get(p["leader"], 0) + 1
            for r in p.get("replicas") or ():
                hold[r] = hold.get(r, 0) + 1
    listed = cluster.get("drained")
    drained = {str(n) for n in listed} if isinstance(listed, list) else set()
    nodes = {
        str(m["id"]): Node(
            lead.get(m["id"], 0), hold.get(m["id"], 0), bool(m.get("drained")) or str(m["id"]) in drained
        )
        for m in cluster.get("members") or ()
        if m.get("state") != "dead"
    }
    parts = cluster.get("partitions")
    ur = parts.get("under_replicated") if isinstance(parts, Mapping) else None
    return nodes, ur if isinstance(ur, int) else None
