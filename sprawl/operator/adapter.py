"""The operator's thin adapter: the ``kubernetes`` client around
:func:`sprawl.operator.reconcile.reconcile`.

    python -m sprawl.operator.adapter --namespace sprawl [--interval 10]

Every ``interval`` seconds, for every ``SprawlCluster`` in the namespace:
read the StatefulSet and its pods, ask one ready pod for ``GET
/v1/cluster`` and ``GET /v1/cluster/placement``, compute the plan, apply
its actions (at most one disruptive one: the core guarantees it) and write
``status``.  Level-triggered polling: a missed event or a restart of the
operator is repaired by the next pass.

Why the plain ``kubernetes`` client rather than kopf: the decisions are one
pure function of the whole observed state, so the operator is one polling
loop; kopf's per-event handlers, its own asyncio loop and its peering
resources would add a framework around a dozen API calls.  It is the
optional ``k8s`` extra (``pip install sprawl[k8s]``), not a dependency of
the broker.

Drain and undrain call ``POST /v1/cluster/nodes/{node}/drain`` /
``.../undrain`` on any ready pod (the routes behind ``sprawlctl cluster
drain``; :func:`sprawl.operator.reconcile.node_route`).

Authentication: on a cluster with tokens on (``--auth-tokens``), every call
carries ``Authorization: Bearer TOKEN``, TOKEN read by :func:`operator_token`
from ``SPRAWL_TOKEN`` or the file named by ``SPRAWL_TOKEN_FILE`` (the
manifests mount the ``operator-token`` key of ``sprawl-secret``, a token with
``admin``: drain needs it).  Without either, no header is sent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sprawl.operator.objects import HTTP_PORT, statefulset
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
    Plan,
    Pod,
    Spec,
    node_route,
    observed_cluster,
    reconcile,
)

GROUP, VERSION, PLURAL = "sprawl.dev", "v1alpha1", "sprawlclusters"
#: Bytes of a node's answer read at most.
MAX_ANSWER = 16 * 1024 * 1024


#: Bytes of a token file read at most.
MAX_TOKEN = 4096


def operator_token(environ: Mapping[str, str] | None = None) -> str | None:
    """The bearer token the adapter sends: ``SPRAWL_TOKEN``, else the first
    line of the file ``SPRAWL_TOKEN_FILE`` names (surrounding whitespace
    dropped); None when neither is set.  A named file that cannot be read is
    an ``OSError`` (the operator does not start without the token it was
    given)."""
    env = os.environ if environ is None else environ
    token = (env.get("SPRAWL_TOKEN") or "").strip()
    if token:
        return token
    path = env.get("SPRAWL_TOKEN_FILE")
    if not path:
        return None
    with open(path, "rb") as f:
        raw = f.read(MAX_TOKEN + 1)
    if len(raw) > MAX_TOKEN:
        raise OSError(f"token file {path} is over {MAX_TOKEN} bytes")
    lines = raw.decode("utf-8", "replace").strip().splitlines()
    return lines[0].strip() if lines else None


def _http(method: str, url: str, body: dict[str, Any] | None = None, token: str | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        raw = r.read(MAX_ANSWER)
    return json.loads(raw) if raw else None


def observe_nodes(urls: Mapping[str, str], token: str | None = None) -> tuple[dict[str, Node], int | None]:
    """The cluster as the first of ``urls`` (ready pods' HTTP URLs) that
    answers describes it: ``GET /v1/cluster`` and ``GET /v1/cluster/placement``
    read by :func:`sprawl.operator.reconcile.observed_cluster`, ``token``
    sent as the bearer token; nothing known when none answers."""
    for url in urls.values():
        try:
            return observed_cluster(
                _http("GET", url + "/v1/cluster", token=token),
                _http("GET", url + "/v1/cluster/placement", token=token),
            )
        except (OSError, ValueError):
            continue
    return {}, None


def node_action(action: Action, urls: Mapping[str, str], token: str | None = None) -> str | None:
    """Carry out a drain or undrain through the first of ``urls`` that takes
    it (:func:`sprawl.operator.reconcile.node_route`), ``token`` sent as the
    bearer token; None when one did, else what went wrong with each."""
    route = node_route(action)
    errors = []
    for url in urls.values():
        try:
            _http("POST", url + route, token=token)
            return None
        except OSError as e:
            errors.append(f"{url}: {e}")
    return "; ".join(errors) or "no ready pod"


class Operator:
    """One namespace's ``SprawlCluster`` resources, reconciled in a loop."""

    def __init__(self, namespace: str) -> None:
        from kubernetes import client, config  # the optional k8s extra

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        self.ns = namespace
        self.token = operator_token()
        # typed as Any: the client's objects are read as the API's JSON shapes
        self.apps: Any = client.AppsV1Api()
        self.core: Any = client.CoreV1Api()
        self.custom: Any = client.CustomObjectsApi()
        self.api_error: Any = client.ApiException

    def observe(self, spec: Spec) -> tuple[Observed, dict[str, str]]:
        """The observed state and each ready pod's HTTP URL."""
        try:
            sts = self.apps.read_namespaced_stateful_set(spec.name, self.ns)
        except self.api_error as e:
            if e.status == 404:
                return Observed(None, None), {}
            raise
        image = sts.spec.template.spec.containers[0].image
        sel = ",".join(f"{k}={v}" for k, v in sorted(sts.spec.selector.match_labels.items()))
        pods: list[Pod] = []
        urls: dict[str, str] = {}
        for p in self.core.list_namespaced_pod(self.ns, label_selector=sel).items:
            ordinal = int(p.metadata.name.rsplit("-", 1)[1])
            ready = any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))
            pods.append(Pod(ordinal, p.spec.containers[0].image, ready))
            if ready and p.status.pod_ip:
                urls[p.metadata.name] = f"http://{p.status.pod_ip}:{HTTP_PORT}"
        nodes, under = observe_nodes(urls, self.token)
        return Observed(sts.spec.replicas, image, tuple(pods), nodes, under), urls

    def apply(self, spec: Spec, action: Action, urls: dict[str, str]) -> None:
        """Carry out one action."""
        if action.kind == CREATE:
            self.apps.create_namespaced_stateful_set(self.ns, statefulset(spec, self.ns))
        elif action.kind == SET_IMAGE:
            patch = {
                "spec": {"template": {"spec": {"containers": [{"name": "sprawl", "image": action.arg}]}}}
            }
            self.apps.patch_namespaced_stateful_set(spec.name, self.ns, patch)
        elif action.kind == SCALE:
            self.apps.patch_namespaced_stateful_set_scale(
                spec.name, self.ns, {"spec": {"replicas": action.arg}}
            )
        elif action.kind == DELETE_POD:
            self.core.delete_namespaced_pod(f"{spec.name}-{action.arg}", self.ns)
        elif action.kind in (DRAIN, UNDRAIN):
            failed = node_action(action, urls, self.token)
            if failed is not None:
                print(
                    f"{spec.name}: {action.kind} {action.arg} failed: {failed}", file=sys.stderr, flush=True
                )

    def write_status(self, spec: Spec, plan: Plan, obs: Observed, old: dict[str, Any]) -> None:
        """``status`` of the resource (a condition keeps its transition time while unchanged)."""
        status = plan.status(obs)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        before = {c.get("type"): c for c in (old.get("conditions") or [])}
        for c in status["conditions"]:
            prev = before.get(c["type"])
            c["lastTransitionTime"] = (
                prev["lastTransitionTime"] if prev and prev.get("status") == c["status"] else now
            )
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.ns, PLURAL, spec.name, {"status": status}
        )

    def pass_once(self) -> None:
        """One pass over every resource of the namespace."""
        for res in self.custom.list_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL)["items"]:
            spec = Spec.from_resource(res)
            obs, urls = self.observe(spec)
            plan = reconcile(spec, obs)
            for action in plan.actions:
                print(f"{spec.name}: {action.kind} {action.arg} ({action.reason})", flush=True)
                self.apply(spec, action, urls)
            self.write_status(spec, plan, obs, res.get("status") or {})


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description="Reconcile SprawlCluster resources.")
    ap.add_argument("--namespace", default="default")
    ap.add_argument("--interval", type=float, default=10.0)
    a = ap.parse_args(argv)
    op = Operator(a.namespace)
    while True:
        try:
            op.pass_once()
        except Exception as e:
            print(f"reconcile pass failed: {e!r}", file=sys.stderr, flush=True)
        time.sleep(a.interval)


if __name__ == "__main__":
    sys.exit(main())
