"""The operator's reconcile core (sprawl.operator.reconcile), without a cluster:
single decisions, a safety property over arbitrary observations (hypothesis),
and scale up / scale down / rolling upgrade driven to the end against a small
model of a StatefulSet and a Sprawl cluster."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sprawl.operator.reconcile import (
    CREATE,
    DELETE_POD,
    DRAIN,
    SCALE,
    SET_IMAGE,
    UNDRAIN,
    Action,
    Node,
    Observed,
    Pod,
    Spec,
    node_route,
    observed_cluster,
    reconcile,
)

SPEC = Spec("sprawl", 3, "img:2")


def _obs(
    n: int = 3, image: str = "img:2", pod_image: str = "img:2", ur: int | None = 0, **nodes: Node
) -> Observed:
    pods = tuple(Pod(i, pod_image, True) for i in range(n))
    all_nodes = {f"sprawl-{i}": Node(2, 6) for i in range(n)}
    all_nodes.update({k.replace("_", "-"): v for k, v in nodes.items()})
    return Observed(n, image, pods, all_nodes, ur)


def test_creates_the_statefulset_when_missing() -> None:
    """No StatefulSet: create it with the wanted size and image."""
    plan = reconcile(SPEC, Observed(None, None))
    assert [(a.kind, a.arg) for a in plan.actions] == [(CREATE, 3)]
    assert plan.phase == "Creating"


def test_steady_cluster_does_nothing_and_is_available() -> None:
    """Spec met, all ready, nothing under-replicated: no action, Available True."""
    obs = _obs()
    plan = reconcile(SPEC, obs)
    assert plan.actions == []
    cond = {c.type: c for c in plan.conditions}
    assert cond["Available"].status and not cond["Progressing"].status and not cond["Degraded"].status
    assert plan.status(obs)["readyReplicas"] == 3


def test_scale_up_is_one_step() -> None:
    """More replicas wanted: scale the StatefulSet at once (joining is safe)."""
    plan = reconcile(replace(SPEC, replicas=5), _obs())
    assert [(a.kind, a.arg) for a in plan.actions] == [(SCALE, 5)]


def test_scale_down_drains_first_and_waits() -> None:
    """Fewer wanted: drain the highest ordinal; shrink only once it leads and holds nothing."""
    spec = replace(SPEC, replicas=2)
    assert [(a.kind, a.arg) for a in reconcile(spec, _obs()).actions] == [(DRAIN, "sprawl-2")]
    busy = _obs(sprawl_2=Node(1, 3, drained=True))
    plan = reconcile(spec, busy)
    assert plan.actions == [] and "still leads" in plan.waiting[0]
    under = _obs(ur=2, sprawl_2=Node(0, 0, drained=True))
    assert reconcile(spec, under).actions == []
    assert not {c.type: c for c in reconcile(spec, under).conditions}["Available"].status
    done = _obs(sprawl_2=Node(0, 0, drained=True))
    assert [(a.kind, a.arg) for a in reconcile(spec, done).actions] == [(SCALE, 2)]


def test_upgrade_sets_the_template_then_restarts_one_pod_at_a_time() -> None:
    """New image: template first, then drain and delete the highest outdated pod."""
    assert [a.kind for a in reconcile(SPEC, _obs(image="img:1", pod_image="img:1")).actions] == [SET_IMAGE]
    obs = _obs(pod_image="img:1")
    assert [(a.kind, a.arg) for a in reconcile(SPEC, obs).actions] == [(DRAIN, "sprawl-2")]
    obs = _obs(pod_image="img:1", sprawl_2=Node(0, 6, drained=True))
    assert [(a.kind, a.arg) for a in reconcile(SPEC, obs).actions] == [(DELETE_POD, 2)]
    obs = replace(obs, under_replicated=1)
    assert reconcile(SPEC, obs).actions == []


def test_unreachable_cluster_blocks_disruption() -> None:
    """Cluster not answering: no delete, no shrink; Degraded with the reason."""
    obs = _obs(pod_image="img:1", ur=None, sprawl_2=Node(0, 0, drained=True))
    plan = reconcile(SPEC, obs)
    assert plan.actions == []
    assert {c.type: c for c in plan.conditions}["Degraded"].reason == "ClusterUnreachable"


def test_observed_cluster_from_the_api_answers() -> None:
    """Leaderships and replicas are counted from the placement; dead members left out."""
    cluster = {
        "members": [
            {"id": "a", "state": "alive"},
            {"id": "b", "state": "alive"},
            {"id": "c", "state": "dead"},
        ],
        "partitions": {"under_replicated": 1},
    }
    placement = {
        "topics": {
            "t": {"0": {"leader": "a", "replicas": ["a", "b"]}, "1": {"leader": "b", "replicas": ["b", "c"]}}
        }
    }
    nodes, ur = observed_cluster(cluster, placement)
    assert nodes == {"a": Node(1, 1), "b": Node(1, 2)} and ur == 1
    assert observed_cluster({"members": []}, {})[1] is None
    # Drained: named in the cluster's ``drained`` list (or flagged on the member).
    nodes, _ = observed_cluster({**cluster, "drained": ["b"]}, placement)
    assert nodes == {"a": Node(1, 1), "b": Node(1, 2, drained=True)}
    flagged = {"members": [{"id": "a", "state": "alive", "drained": True}]}
    assert observed_cluster(flagged, {})[0] == {"a": Node(0, 0, drained=True)}


def test_drain_and_undrain_routes() -> None:
    """The node API routes the adapter posts a drain and an undrain to
    (``sprawlctl cluster drain``'s), the node id escaped as one path segment."""
    assert node_route(Action(DRAIN, "sprawl-2")) == "/v1/cluster/nodes/sprawl-2/drain"
    assert node_route(Action(UNDRAIN, "sprawl-2")) == "/v1/cluster/nodes/sprawl-2/undrain"
    assert node_route(Action(DRAIN, "a/b c")) == "/v1/cluster/nodes/a%2Fb%20c/drain"
    with pytest.raises(ValueError):
        node_route(Action(SCALE, 2))


nodes_st = st.builds(Node, st.integers(0, 3), st.integers(0, 3), st.booleans())
obs_st = st.builds(
    Observed,
    st.one_of(st.none(), st.integers(1, 5)),
    st.sampled_from([None, "img:1", "img:2"]),
    st.lists(
        st.builds(Pod, st.integers(0, 5), st.sampled_from(["img:1", "img:2"]), st.booleans()), max_size=5
    ).map(tuple),
    st.dictionaries(st.sampled_from([f"sprawl-{i}" for i in range(6)]), nodes_st),
    st.one_of(st.none(), st.integers(0, 3)),
)


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 5), st.sampled_from(["img:1", "img:2"]), obs_st)
def test_never_disrupts_unsafely(replicas: int, image: str, obs: Observed) -> None:
    """Whatever is observed: at most one disruptive action, and a pod is deleted
    or the StatefulSet shrunk only with 0 under-replicated, every pod ready and
    the node concerned leading nothing (and for a shrink holding nothing)."""
    spec = Spec("sprawl", replicas, image)
    plan = reconcile(spec, obs)
    disruptive = [
        a
        for a in plan.actions
        if a.kind == DELETE_POD or (a.kind == SCALE and obs.replicas is not None and a.arg < obs.replicas)
    ]
    assert len(disruptive) <= 1
    for a in disruptive:
        assert obs.under_replicated == 0 and obs.pods and all(p.ready for p in obs.pods)
        ordinal = a.arg  # the pod deleted, or the one a shrink removes (the new count)
        node = obs.nodes.get(f"sprawl-{ordinal}")
        if node is not None:
            assert node.drained and node.leaderships == 0
            if a.kind == SCALE:
                assert node.replicas == 0 and a.arg == obs.replicas - 1  # type: ignore[operator]


class Model:
    """A StatefulSet and a cluster that answers actions the way the real ones would, one pass later."""

    def __init__(self, n: int, image: str) -> None:
        self.replicas = n
        self.template = image
        self.pods = {i: Pod(i, image, True) for i in range(n)}
        self.nodes = {f"sprawl-{i}": Node(2, 6) for i in range(n)}
        self.under = 0
        self.max_down = 0

    def observe(self) -> Observed:
        return Observed(self.replicas, self.template, tuple(self.pods.values()), dict(self.nodes), self.under)

    def settle(self) -> None:
        """Between passes: pods start, drained nodes shed, replicas catch up."""
        for i in range(self.replicas):
            if i not in self.pods:
                self.pods[i] = Pod(i, self.template, False)
            elif not self.pods[i].ready:
                self.pods[i] = replace(self.pods[i], ready=True)
                self.nodes.setdefault(f"sprawl-{i}", Node(0, 0))
        for nid, node in self.nodes.items():
            if node.drained:
                shrinking = int(nid.rsplit("-", 1)[1]) >= self.replicas - 1
                self.nodes[nid] = Node(0, 0 if shrinking else node.replicas, True)
        self.under = 0

    def apply(self, kind: str, arg: object) -> None:
        if kind == SCALE:
            assert isinstance(arg, int)
            for i in range(arg, self.replicas):
                self.pods.pop(i, None)
                self.nodes.pop(f"sprawl-{i}", None)
                self.under = 1  # the copies it held are made again elsewhere
            self.replicas = arg
        elif kind == SET_IMAGE:
            assert isinstance(arg, str)
            self.template = arg
        elif kind == DRAIN:
            self.nodes[str(arg)] = replace(self.nodes[str(arg)], drained=True)
        elif kind == UNDRAIN:
            self.nodes[str(arg)] = replace(self.nodes[str(arg)], drained=False)
        elif kind == DELETE_POD:
            assert isinstance(arg, int)
            self.pods[arg] = Pod(arg, self.template, False)
            self.under = 3  # its replicas lag while it restarts
        self.max_down = max(self.max_down, sum(1 for p in self.pods.values() if not p.ready))


def _drive(model: Model, spec: Spec, passes: int = 60) -> int:
    for n in range(passes):
        plan = reconcile(spec, model.observe())
        available = {c.type: c.status for c in plan.conditions}["Available"]
        if not plan.actions and plan.phase == "Running" and available:
            return n
        for a in plan.actions:
            model.apply(a.kind, a.arg)
        model.settle()
    raise AssertionError(f"not reconciled after {passes} passes: {plan}")


def test_scale_up_down_and_upgrade_converge() -> None:
    """3 -> 5 -> 2 nodes, then a new image: each ends Running with the spec met,
    never more than one pod down, and no node left drained."""
    model = Model(3, "img:1")
    _drive(model, Spec("sprawl", 5, "img:1"))
    assert model.replicas == 5 and all(p.ready for p in model.pods.values())
    _drive(model, Spec("sprawl", 2, "img:1"))
    assert model.replicas == 2 and set(model.nodes) == {"sprawl-0", "sprawl-1"}
    passes = _drive(model, Spec("sprawl", 2, "img:2"))
    assert passes >= 2 * 3  # drain, delete, undrain for each pod: one at a time
    assert {p.image for p in model.pods.values()} == {"img:2"}
    assert not any(n.drained for n in model.nodes.values())
    assert model.max_down == 1
