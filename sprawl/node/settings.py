"""What a node derives from its options and data directory before it builds anything: its id, its certificate's check, the peer channel's TLS arguments, the S3 settings, and the ports file it writes for scripts."""

from __future__ import annotations

import json
import os
import socket
import uuid
from typing import Any

from twisted.logger import Logger

from sprawl.cluster.control import StartRefused
from sprawl.config import NodeConfig

# The node's log lines keep the namespace they have always had (operators'
# log filters and tests select the "serving" line by it).
log = Logger(namespace="sprawl.tap")


def load_node_id(data_dir: str, override: str | None) -> str:
    """The node id: ``--node-id``, else DATA_DIR/node_id, generated once."""
    path = os.path.join(data_dir, "node_id")
    if override:
        return override
    try:
        with open(path) as f:
            nid = f.read().strip()
            if nid:
                return nid
    except FileNotFoundError:
        pass
    nid = f"{socket.gethostname().split('.')[0][:24]}-{uuid.uuid4().hex[:8]}"
    nid = "".join(c if c.isalnum() or c in "._-" else "-" for c in nid)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(nid + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return nid


def check_node_certificate(c: NodeConfig, node_id: str) -> None:
    """With ``--cluster-ca``: the node's own certificate must name its node id
    (common name or DNS subject alternative name), or peers would refuse it."""
    from cryptography import x509

    from sprawl.tlsconfig import certificate_names

    cert, _key = c.peer_tls_files
    assert cert
    with open(cert, "rb") as f:
        names = certificate_names(x509.load_pem_x509_certificate(f.read()))
    if node_id not in names:
        raise StartRefused(
            f"the peer certificate {cert} names {', '.join(sorted(names)) or 'nothing'}, not this node's id "
            f"{node_id!r}: with --cluster-ca every node needs a certificate whose common name or DNS "
            f"subject alternative name is its node id",
            code="certificate_not_for_this_node",
        )


def peer_tls(c: NodeConfig) -> dict[str, Any]:
    """PeerChannel TLS arguments: mutual TLS against ``--cluster-ca`` (each
    side's certificate must name its node id), or none."""
    if not c.cluster_ca:
        return {}
    from sprawl.tlsconfig import peer_certificate_names, peer_client_options, server_options

    cert, key = c.peer_tls_files
    assert cert and key  # NodeConfig.validate checked
    ca = c.cluster_ca
    client = peer_client_options(ca, cert, key)
    return {
        "server_tls": server_options(cert, key, ca),
        "client_tls": lambda host: client,
        "peer_names": peer_certificate_names,
    }


def write_ports(data_dir: str, http: int, peer: int) -> None:
    """Write DATA_DIR/ports.json atomically for tests and scripts."""
    path = os.path.join(data_dir, "ports.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"http": http, "peer": peer}, f)
    os.replace(tmp, path)


def s3_settings(c: NodeConfig) -> Any:
    """The S3 client settings of a node with the S3 tier on."""
    from sprawl.storage.s3 import S3Settings

    assert c.s3_endpoint and c.s3_bucket
    return S3Settings(
        endpoint=c.s3_endpoint,
        bucket=c.s3_bucket,
        prefix=c.s3_prefix,
        region=c.s3_region,
        access_key=c.s3_access_key,
        secret_key=c.s3_secret_key,
        create_bucket=c.s3_create_bucket,
        concurrency=c.s3_concurrency + 2,  # uploads, plus room for reads, deletes and the bucket check
    )
