"""The Kubernetes manifests, the CRD and the Containerfile under docs/deploy/,
checked offline: every object against the Kubernetes OpenAPI schemas that
``kubernetes-validate`` ships (strict: an unknown field fails), the example
``SprawlCluster`` against the CRD's own schema, and the operator's
StatefulSet against the manifest people apply by hand."""

from __future__ import annotations

import copy
import socket
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from harness.paths import DOCS
from sprawl.operator.objects import statefulset
from sprawl.operator.reconcile import Spec

DEPLOY = DOCS / "deploy"
K8S = DEPLOY / "kubernetes"
#: The Kubernetes version the manifests target (the oldest supported by the schemas used).
VERSION = "1.30"


def _objects() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for f in sorted(K8S.glob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(f.read_text())):
            if doc is not None:
                out.append((f"{f.name}#{i}", doc))
    return out


OBJECTS = _objects()
BUILTIN = [(n, o) for n, o in OBJECTS if o["kind"] != "SprawlCluster"]


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation must not reach the network: any connection attempt fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access during validation")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_every_manifest_is_there() -> None:
    """The kinds the deployment needs are all present."""
    kinds = sorted({o["kind"] for _, o in OBJECTS})
    assert kinds == sorted(
        {
            "ConfigMap",
            "CustomResourceDefinition",
            "Deployment",
            "Namespace",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Secret",
            "Service",
            "ServiceAccount",
            "SprawlCluster",
            "StatefulSet",
        }
    )


@pytest.mark.parametrize(("name", "obj"), BUILTIN, ids=[n for n, _ in BUILTIN])
def test_manifest_matches_kubernetes_schema(name: str, obj: dict[str, Any]) -> None:
    """Each object validates (strictly) against the Kubernetes OpenAPI schema of its kind."""
    kubernetes_validate.validate(obj, VERSION, strict=True)


def test_validation_catches_a_broken_manifest() -> None:
    """The check can fail: a mistyped field and a wrong type are both refused."""
    sts = copy.deepcopy(next(o for _, o in OBJECTS if o["kind"] == "StatefulSet"))
    sts["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, VERSION, strict=True)
    sts = copy.deepcopy(next(o for _, o in OBJECTS if o["kind"] == "StatefulSet"))
    sts["spec"]["template"]["spec"]["containers"][0]["readynessProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, VERSION, strict=True)


def _crd_schema() -> dict[str, Any]:
    crd = next(o for _, o in OBJECTS if o["kind"] == "CustomResourceDefinition")
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def test_example_cluster_matches_the_crd() -> None:
    """The example SprawlCluster satisfies the CRD; one without an image or with 0 replicas does not."""
    schema = _crd_schema()
    cr = next(o for _, o in OBJECTS if o["kind"] == "SprawlCluster")
    jsonschema.validate(cr, schema)
    Spec.from_resource(cr)
    for bad in ({"replicas": 0, "image": "x"}, {"replicas": 3}, {"replicas": 3, "image": ""}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**cr, "spec": bad}, schema)


def test_status_written_by_the_operator_matches_the_crd() -> None:
    """What ``Plan.status`` writes fits the CRD's status schema."""
    from sprawl.operator.reconcile import Node, Observed, Pod, reconcile

    spec = Spec("sprawl", 3, "img:2")
    obs = Observed(3, "img:2", tuple(Pod(i, "img:1", True) for i in range(3)), {"sprawl-2": Node(1, 4)}, 0)
    status = reconcile(spec, obs).status(obs)
    for c in status["conditions"]:
        c["lastTransitionTime"] = "2026-12-05T01:00:00Z"
    jsonschema.validate({"spec": {"replicas": 3, "image": "img:2"}, "status": status}, _crd_schema())


def test_statefulset_manifest_is_the_operators() -> None:
    """docs/deploy/kubernetes/statefulset.yaml is what the operator creates for the example cluster."""
    manifest = next(o for _, o in OBJECTS if o["kind"] == "StatefulSet")
    assert manifest == statefulset(Spec("sprawl", 3, "ghcr.io/example/sprawl:0.1.0"), "sprawl")


def test_statefulset_essentials() -> None:
    """Probes on /readyz and /healthz, non-root, a PVC, the key from the Secret,
    S3 settings from the ConfigMap, seeds from the headless Service."""
    sts = next(o for _, o in OBJECTS if o["kind"] == "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert {"configMapRef": {"name": "sprawl-s3", "optional": True}} in c["envFrom"]
    assert any(v.get("secret", {}).get("secretName") == "sprawl-secret" for v in pod["volumes"])
    assert pod["volumes"][0]["secret"]["defaultMode"] & 0o007 == 0  # the node refuses a world-readable key
    headless = next(o for _, o in OBJECTS if o["kind"] == "Service" and o["spec"].get("clusterIP") == "None")
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert 'SPRAWL_NODE_ID="$HOSTNAME"' in c["command"][-1]
    cm = next(o for _, o in OBJECTS if o["kind"] == "ConfigMap")
    assert {"SPRAWL_S3_ENDPOINT", "SPRAWL_S3_BUCKET"} <= set(cm["data"])


def test_s3_settings_are_real_options() -> None:
    """Every SPRAWL_* name in the ConfigMap is an option the node reads from the environment."""
    from sprawl.tap import build_config

    cm = next(o for _, o in OBJECTS if o["kind"] == "ConfigMap")
    cfg = build_config({}, dict(cm["data"]))
    assert cfg.s3_endpoint == cm["data"]["SPRAWL_S3_ENDPOINT"]
    assert cfg.s3_bucket == cm["data"]["SPRAWL_S3_BUCKET"]
    assert cfg.s3_prefix == cm["data"]["SPRAWL_S3_PREFIX"]
    assert cfg.s3_region == cm["data"]["SPRAWL_S3_REGION"]
    assert cfg.disk_to_s3_age == 3600.0


def test_containerfile_runs_twistd_as_non_root() -> None:
    """The image's last USER is not root and its entry point is ``twistd ... sprawl``."""
    lines = [ln.strip() for ln in (DEPLOY / "Containerfile").read_text().splitlines()]
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    (entry,) = [ln for ln in lines if ln.startswith("ENTRYPOINT")]
    assert '"twistd"' in entry and '"sprawl"' in entry
