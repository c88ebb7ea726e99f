"""A throw-away test PKI (CA, server, client and peer certificates) and cluster key files,
for tests and benchmarks only."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _test_leaf(
    cn: str,
    ca_key: Any,
    ca_cert: Any,
    server: bool,
    client: bool = False,
    hosts: tuple[str, ...] = (),
    dns: tuple[str, ...] = (),
) -> tuple[Any, Any]:
    """A leaf key and certificate signed by ``ca_key`` (test PKI only)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    k = ec.generate_private_key(ec.SECP256R1())
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(k.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                if server and client
                else [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    if server:
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return k, b.sign(ca_key, hashes.SHA256())


def _write_key(k: Any, path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(
        k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def make_test_pki(
    directory: Path | str, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
) -> dict[str, str]:
    """A throw-away CA, a server certificate for ``hosts`` and a client certificate, as PEM files.

    Returns paths: ``ca`` (and its key ``ca_key``), ``server_cert``, ``server_key``,
    ``client_cert``, ``client_key``, ``peer_cert``/``peer_key`` (server and client use, named
    "sprawl test peer"), ``other_ca`` (an unrelated CA, for "does not verify" tests, key
    ``other_ca_key``) and ``stranger_cert``/``stranger_key`` (signed by it).  Peer-channel
    certificates naming a node id come from :func:`make_node_cert`.  For tests and benchmarks only.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        k = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(k, hashes.SHA256())
        )
        return k, cert

    ca_key, ca_cert = ca("sprawl test CA")
    other_key, other_cert = ca("unrelated test CA")
    s_key, s_cert = _test_leaf(hosts[0], ca_key, ca_cert, True, hosts=hosts)
    c_key, c_cert = _test_leaf("sprawl test client", ca_key, ca_cert, False)
    p_key, p_cert = _test_leaf("sprawl test peer", ca_key, ca_cert, True, client=True, hosts=hosts)
    o_key, o_cert = _test_leaf("stranger", other_key, other_cert, True, client=True, hosts=hosts)
    pem = serialization.Encoding.PEM
    paths = {
        "ca": d / "ca.pem",
        "ca_key": d / "ca.key",
        "other_ca": d / "other-ca.pem",
        "other_ca_key": d / "other-ca.key",
        "server_cert": d / "server.pem",
        "server_key": d / "server.key",
        "client_cert": d / "client.pem",
        "client_key": d / "client.key",
        "peer_cert": d / "peer.pem",
        "peer_key": d / "peer.key",
        "stranger_cert": d / "stranger.pem",
        "stranger_key": d / "stranger.key",
    }
    paths["ca"].write_bytes(ca_cert.public_bytes(pem))
    _write_key(ca_key, paths["ca_key"])
    paths["other_ca"].write_bytes(other_cert.public_bytes(pem))
    _write_key(other_key, paths["other_ca_key"])
    paths["server_cert"].write_bytes(s_cert.public_bytes(pem))
    _write_key(s_key, paths["server_key"])
    paths["client_cert"].write_bytes(c_cert.public_bytes(pem))
    _write_key(c_key, paths["client_key"])
    paths["peer_cert"].write_bytes(p_cert.public_bytes(pem))
    _write_key(p_key, paths["peer_key"])
    paths["stranger_cert"].write_bytes(o_cert.public_bytes(pem))
    _write_key(o_key, paths["stranger_key"])
    return {k: str(v) for k, v in paths.items()}


def make_node_cert(
    pki: dict[str, str], node_id: str, ca: str = "ca", *, in_san: bool = False
) -> tuple[str, str]:
    """A peer-channel certificate (server and client use) for ``node_id``,
    signed by the test PKI's ``ca`` (or ``"other_ca"``): the node id is its
    common name (or, with ``in_san``, a DNS subject alternative name under
    another common name).  Returns (certificate path, key path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    d = Path(pki[ca]).parent
    ca_cert = x509.load_pem_x509_certificate(Path(pki[ca]).read_bytes())
    ca_key = serialization.load_pem_private_key(Path(pki[f"{ca}_key"]).read_bytes(), password=None)
    cn = f"sprawl node certificate {node_id}" if in_san else node_id
    k, cert = _test_leaf(
        cn, ca_key, ca_cert, True, client=True, hosts=("127.0.0.1",), dns=(node_id,) if in_san else ()
    )
    stem = f"node-{node_id}-{ca}" + ("-san" if in_san else "")
    cert_path, key_path = d / f"{stem}.pem", d / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(k, key_path)
    return str(cert_path), str(key_path)


def make_key_file(path: Path | str, key: str | None = None) -> str:
    """A cluster key file (mode 600) holding ``key`` (default: a new one); returns its path."""
    from sprawl.config import generate_cluster_key

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text((key or generate_cluster_key()) + "\n")
    p.chmod(0o600)
    return str(p)
