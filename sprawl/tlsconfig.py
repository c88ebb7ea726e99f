"""TLS from PEM files: server and client context factories for Twisted.

One place that turns ``cert.pem`` / ``key.pem`` / ``ca.pem`` paths into
Twisted TLS options, for the HTTP listener and any other channel (the peer
channel reuses it):

* :func:`server_options` — our certificate (plus any intermediates in the
  same PEM file) and key; with ``ca`` every client must present a
  certificate that chains to it (mutual TLS);
* :func:`client_options` — verify the server against ``ca`` (or the system
  roots when None) for ``hostname`` (an IP address works when the
  certificate has it as an IP SAN), optionally presenting our own
  certificate for mutual TLS;
* :func:`check_pem_files` — load and cross-check the files once at start-up
  so a mistake is a clear :class:`~sprawl.config.ConfigError`, not a failed
  handshake later.

TLS 1.2 is the minimum.  Keys are never logged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sprawl.errors import ConfigError


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None


def _split_certs(pem: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    out = []
    for part in pem.split(marker)[:-1]:
        start = part.find(b"-----BEGIN CERTIFICATE-----")
        if start >= 0:
            out.append(part[start:] + marker + b"\n")
    return out


def check_pem_files(cert: str, key: str, ca: str | None = None) -> None:
    """Load the files and check that the key belongs to the certificate (ConfigError otherwise)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert_pem = _read(cert, "TLS certificate")
    key_pem = _read(key, "TLS key")
    certs = _split_certs(cert_pem)
    if not certs:
        raise ConfigError(f"TLS certificate {cert} holds no PEM certificate")
    try:
        leaf = x509.load_pem_x509_certificate(certs[0])
    except ValueError as e:
        raise ConfigError(f"TLS certificate {cert} is not a valid PEM certificate: {e}") from None
    try:
        priv = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"TLS key {key} is not an unencrypted PEM private key: {e}") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if priv.public_key().public_bytes(enc, pub) != leaf.public_key().public_bytes(enc, pub):
        raise ConfigError(f"TLS key {key} does not belong to the certificate {cert}")
    if ca is not None:
        ca_pem = _read(ca, "TLS CA bundle")
        if not _split_certs(ca_pem):
            raise ConfigError(f"TLS CA bundle {ca} holds no PEM certificate")
        for c in _split_certs(ca_pem):
            try:
                x509.load_pem_x509_certificate(c)
            except ValueError as e:
                raise ConfigError(f"TLS CA bundle {ca} has an invalid certificate: {e}") from None


def _ca_certs(ca: str) -> list[Any]:
    from twisted.internet.ssl import Certificate

    return [Certificate.loadPEM(c).original for c in _split_certs(_read(ca, "TLS CA bundle"))]


def server_options(cert: str, key: str, ca: str | None = None) -> Any:
    """Server-side TLS options; with ``ca``, clients must present a certificate signed by it."""
    from OpenSSL import crypto
    from twisted.internet.ssl import Certificate, CertificateOptions, KeyPair, TLSVersion

    check_pem_files(cert, key, ca)
    certs = _split_certs(_read(cert, "TLS certificate"))
    leaf = Certificate.loadPEM(certs[0])
    pkey = KeyPair.load(_read(key, "TLS key"), crypto.FILETYPE_PEM)
    kw: dict[str, Any] = {
        "privateKey": pkey.original,
        "certificate": leaf.original,
        "extraCertChain": [Certificate.loadPEM(c).original for c in certs[1:]],
        "raiseMinimumTo": TLSVersion.TLSv1_2,
    }
    if ca is not None:
        kw.update(verify=True, caCerts=_ca_certs(ca), requireCertificate=True)
    return CertificateOptions(**kw)


def client_options(
    hostname: str, ca: str | None = None, cert: str | None = None, key: str | None = None
) -> Any:
    """Client-side TLS options verifying the server as ``hostname`` against ``ca``
    (system roots when None), presenting ``cert``/``key`` when given."""
    from twisted.internet.ssl import (
        Certificate,
        PrivateCertificate,
        optionsForClientTLS,
        trustRootFromCertificates,
    )

    trust: Any = None
    if ca is not None:
        trust = trustRootFromCertificates(
            [Certificate.loadPEM(c) for c in _split_certs(_read(ca, "TLS CA bundle"))]
        )
    client_cert = None
    if cert is not None and key is not None:
        check_pem_files(cert, key)
        leaf = _split_certs(_read(cert, "TLS certificate"))[0]
        client_cert = PrivateCertificate.loadPEM(leaf + _read(key, "TLS key"))
    return optionsForClientTLS(hostname, trustRoot=trust, clientCertificate=client_cert)


def server_endpoint(
    reactor: Any, port: int, interface: str, cert: str, key: str, ca: str | None = None
) -> Any:
    """A listening endpoint for TLS on ``interface:port``."""
    from twisted.internet.endpoints import SSL4ServerEndpoint

    return SSL4ServerEndpoint(reactor, port, server_options(cert, key, ca), interface=interface)


def peer_client_options(ca: str, cert: str, key: str) -> Any:
    """Client-side TLS options of the peer channel: the server must chain to
    ``ca``; we present ``cert``/``key``.  No host name is checked here: the
    peer channel checks that the certificate names the node id it meant to
    reach (:func:`certificate_names`), whatever address it used."""
    from OpenSSL import crypto
    from twisted.internet.ssl import Certificate, CertificateOptions, KeyPair, TLSVersion

    check_pem_files(cert, key, ca)
    certs = _split_certs(_read(cert, "TLS certificate"))
    return CertificateOptions(
        privateKey=KeyPair.load(_read(key, "TLS key"), crypto.FILETYPE_PEM).original,
        certificate=Certificate.loadPEM(certs[0]).original,
        extraCertChain=[Certificate.loadPEM(c).original for c in certs[1:]],
        verify=True,
        caCerts=_ca_certs(ca),
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )


def certificate_names(cert: Any) -> set[str]:
    """The names a certificate vouches for: its subject common names and DNS
    subject alternative names (a ``cryptography`` or pyOpenSSL certificate)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    if not isinstance(cert, x509.Certificate):
        cert = cert.to_cryptography()
    names = {str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return names
    names.update(str(n) for n in san.get_values_for_type(x509.DNSName))
    return names


def peer_certificate_names(transport: Any) -> set[str]:
    """The names of the certificate the peer presented on a TLS ``transport``
    (empty when it presented none)."""
    cert = transport.getPeerCertificate()
    return set() if cert is None else certificate_names(cert)
