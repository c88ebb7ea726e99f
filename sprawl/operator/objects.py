"""The Kubernetes objects the operator creates for a ``SprawlCluster``.  Pure.

The same shape as ``docs/deploy/kubernetes/statefulset.yaml`` (which a
person applies without the operator): node ids from the pod name (its
ordinal), seeds from the headless Service's DNS names, the cluster key from
a Secret, S3 settings from a ConfigMap, data on a PersistentVolumeClaim,
``/readyz`` and ``/healthz`` probes, and ``updateStrategy: OnDelete`` so
that only the operator restarts pods (one at a time).
"""

from __future__ import annotations

from typing import Any

from sprawl.operator.reconcile import Spec

#: Ports of the node (HTTP API, gossip UDP + peer TCP).
HTTP_PORT = 8080
PEER_PORT = 7946

#: The container's start script: node id and seeds from the pod's name.
START = """\
set -eu
ord="${HOSTNAME##*-}"
export SPRAWL_NODE_ID="$HOSTNAME"
seeds=""
for i in 0 1 2; do
  if [ "$i" != "$ord" ] && [ "$ord" != 0 ]; then
    seeds="${seeds:+$seeds,}${SPRAWL_CLUSTER_NAME}-$i.${SPRAWL_PEER_SERVICE}:7946"
  fi
done
exec twistd -n --pidfile= sprawl --data-dir /var/lib/sprawl --bind-addr 0.0.0.0 \\
  --advertise-addr "$POD_IP" ${seeds:+--seeds "$seeds"}
"""


def peer_service(name: str) -> str:
    """The headless Service giving every pod a stable DNS name."""
    return f"{name}-peer"


def _secret_key(spec: Spec, key: str) -> dict[str, Any]:
    return {"name": f"{spec.name}-secret", "key": key, "optional": True}


def statefulset(spec: Spec, namespace: str, storage: str = "10Gi") -> dict[str, Any]:
    """The StatefulSet of ``spec`` (created by the operator when missing)."""
    labels = {"app.kubernetes.io/name": "sprawl", "app.kubernetes.io/instance": spec.name}
    env: list[dict[str, Any]] = [
        {"name": "SPRAWL_CLUSTER_NAME", "value": spec.name},
        {"name": "SPRAWL_PEER_SERVICE", "value": f"{peer_service(spec.name)}.{namespace}.svc"},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "SPRAWL_CLUSTER_KEY_FILE", "value": "/etc/sprawl/secret/cluster-key"},
        {"name": "SPRAWL_AUTH_TOKENS", "value": "/etc/sprawl/secret/tokens.json"},
        *(
            {
                "name": f"SPRAWL_S3_{k.upper()}_KEY",
                "valueFrom": {"secretKeyRef": _secret_key(spec, f"s3-{k}-key")},
            }
            for k in ("access", "secret")
        ),
    ]
    probe = {"httpGet": {"port": HTTP_PORT}, "periodSeconds": 5, "failureThreshold": 3}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": spec.name, "namespace": namespace, "labels": labels},
        "spec": {
            "serviceName": peer_service(spec.name),
            "replicas": spec.replicas,
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "OnDelete"},
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
                    "terminationGracePeriodSeconds": 60,
                    "containers": [
                        {
                            "name": "sprawl",
                            "image": spec.image,
                            "command": ["/bin/sh", "-c", START],
                            "ports": [
                                {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
                                {"name": "peer", "containerPort": PEER_PORT, "protocol": "TCP"},
                                {"name": "gossip", "containerPort": PEER_PORT, "protocol": "UDP"},
                            ],
                            "env": env,
                            "envFrom": [{"configMapRef": {"name": f"{spec.name}-s3", "optional": True}}],
                            "readinessProbe": {**probe, "httpGet": {"path": "/readyz", "port": HTTP_PORT}},
                            "livenessProbe": {
                                **probe,
                                "httpGet": {"path": "/healthz", "port": HTTP_PORT},
                                "initialDelaySeconds": 10,
                            },
                            "volumeMounts": [
                                {"name": "data", "mountPath": "/var/lib/sprawl"},
                                {"name": "secret", "mountPath": "/etc/sprawl/secret", "readOnly": True},
                            ],
                        }
                    ],
                    "volumes": [
                        {
                            "name": "secret",
                            "secret": {"secretName": f"{spec.name}-secret", "defaultMode": 0o440},
                        }
                    ],
                },
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": storage}},
                    },
                }
            ],
        },
    }
