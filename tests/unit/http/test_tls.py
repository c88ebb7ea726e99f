"""TLS on HTTP: PEM checks, a real ``twistd sprawl --tls-cert/--tls-key`` node
verified against a CA made by the test, mutual TLS with ``--tls-ca``,
sprawlctl ``--cacert``, and WebSocket over TLS (wss) in process.

Certificates come from :func:`harness.make_test_pki` (a throw-away CA
in tmp_path).  Every process and listener a test starts is stopped by it.
"""

from __future__ import annotations

import http.client
import json
import ssl
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory
from click.testing import CliRunner
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol

from harness import bounded, make_test_pki, the_reactor
from harness.inproc_sse import Server
from harness.inproc_ws import WSClient
from sprawl.config import ConfigError, NodeConfig
from sprawl.ctl import cli
from sprawl.tlsconfig import check_pem_files, client_options, server_endpoint


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    """A test CA with server (127.0.0.1, localhost) and client certificates."""
    return make_test_pki(tmp_path / "pki")


def https_get(port: int, path: str, ctx: ssl.SSLContext) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_pem_files_are_checked(pki: dict[str, str], tmp_path: Path) -> None:
    """A key of another certificate, a missing file, or a non-PEM file is a clear ConfigError."""
    check_pem_files(pki["server_cert"], pki["server_key"], pki["ca"])
    with pytest.raises(ConfigError, match="does not belong"):
        check_pem_files(pki["server_cert"], pki["client_key"])
    with pytest.raises(ConfigError, match="cannot read"):
        check_pem_files(str(tmp_path / "nope.pem"), pki["server_key"])
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    with pytest.raises(ConfigError, match="no PEM certificate"):
        check_pem_files(str(junk), pki["server_key"])
    with pytest.raises(ConfigError, match="go together"):
        NodeConfig(data_dir=str(tmp_path), tls_cert=pki["server_cert"]).validate()
    with pytest.raises(ConfigError, match="needs --tls-cert"):
        NodeConfig(data_dir=str(tmp_path), tls_ca=pki["ca"]).validate()


@pytest.mark.integration
def test_https_node_verifies_with_the_ca_only(sprawl_nodes: Any, pki: dict[str, str]) -> None:
    """A node started with --tls-cert/--tls-key serves HTTPS that verifies against the test CA;
    without it (system roots) or against another CA verification fails; plain HTTP gets nothing;
    sprawlctl works with --cacert and fails in one line without."""
    node = sprawl_nodes("--tls-cert", pki["server_cert"], "--tls-key", pki["server_key"])
    port = node.http_port
    good = ssl.create_default_context(cafile=pki["ca"])
    assert https_get(port, "/healthz", good)[0] == 200
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(port, "/healthz", ssl.create_default_context())
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(port, "/healthz", ssl.create_default_context(cafile=pki["other_ca"]))
    plain = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        with pytest.raises((http.client.HTTPException, OSError)):
            plain.request("GET", "/healthz")
            plain.getresponse().read()
    finally:
        plain.close()
    url = f"https://127.0.0.1:{port}"
    r = CliRunner().invoke(
        cli, ["-n", url, "--cacert", pki["ca"], "topics", "create", "t", "--partitions", "1"]
    )
    assert r.exit_code == 0, r.stderr
    r = CliRunner().invoke(cli, ["-n", url, "--cacert", pki["ca"], "publish", "-t", "t", "-m", "over tls"])
    assert r.exit_code == 0, r.stderr
    r = CliRunner().invoke(cli, ["-n", url, "topics", "list"], env={"SPRAWL_CACERT": ""})
    assert r.exit_code != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    status, body = https_get(port, "/v1/cluster", good)
    assert status == 200 and json.loads(body)["members"][0]["http"].startswith("https://")


@pytest.mark.integration
def test_mutual_tls_requires_a_client_certificate(sprawl_nodes: Any, pki: dict[str, str]) -> None:
    """With --tls-ca the node refuses clients without a certificate signed by that CA."""
    node = sprawl_nodes(
        "--tls-cert", pki["server_cert"], "--tls-key", pki["server_key"], "--tls-ca", pki["ca"]
    )
    port = node.http_port
    with_cert = ssl.create_default_context(cafile=pki["ca"])
    with_cert.load_cert_chain(pki["client_cert"], pki["client_key"])
    assert https_get(port, "/healthz", with_cert)[0] == 200
    without = ssl.create_default_context(cafile=pki["ca"])
    with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
        https_get(port, "/healthz", without)


@pytest_twisted.ensureDeferred
async def test_websocket_over_tls(tmp_path: Path, pki: dict[str, str]) -> None:
    """wss:// works end to end: the feed registers on the TLS transport and frames flow both ways."""
    s = Server(tmp_path)
    ep = server_endpoint(the_reactor(), 0, "127.0.0.1", pki["server_cert"], pki["server_key"])
    s.port = await bounded(ep.listen(s.site))
    client: WSClient | None = None
    try:
        port = s.port.getHost().port
        factory = WebSocketClientFactory(f"wss://127.0.0.1:{port}/v1/topics/tls/ws?from=earliest")
        factory.protocol = WSClient
        await bounded(s.broker.put_topic("tls", {}))
        cep = SSL4ClientEndpoint(the_reactor(), "127.0.0.1", port, client_options("127.0.0.1", pki["ca"]))
        client = await bounded(cep.connect(factory))
        await bounded(client.opened)
        ans = await client.request({"publish": {"payload": "secret"}}, "p")
        assert ans["published"]["offsets"] == [0]
        await client.wait_messages(1)
        assert client.messages[0]["payload"] == "secret"
    finally:
        if client is not None and not client.closed.called:
            client.sendClose()
            await bounded(client.closed)
        await s.close()


@pytest.mark.integration
def test_ssl_endpoint_string_serves_https(sprawl_nodes: Any, pki: dict[str, str]) -> None:
    """``--http-endpoint ssl:...`` (a Twisted endpoint string) serves HTTPS too."""
    ep = f"ssl:0:interface=127.0.0.1:privateKey={pki['server_key']}:certKey={pki['server_cert']}"
    node = sprawl_nodes("--http-endpoint", ep)
    status, body = https_get(node.http_port, "/v1/cluster", ssl.create_default_context(cafile=pki["ca"]))
    assert status == 200 and json.loads(body)["members"][0]["http"].startswith("https://")


@pytest.mark.integration
def test_bench_over_https_with_cacert(sprawl_nodes: Any, pki: dict[str, str]) -> None:
    """``sprawlctl --cacert CA bench`` runs over HTTPS (publishers and SSE subscriber)."""
    node = sprawl_nodes("--tls-cert", pki["server_cert"], "--tls-key", pki["server_key"])
    url = f"https://127.0.0.1:{node.http_port}"
    args = ["-n", url, "--cacert", pki["ca"], "bench", "--messages", "500", "--batch", "50", "--json"]
    r = CliRunner().invoke(cli, args, env={"SPRAWL_CACERT": ""}, catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["published"] == 500 and out["delivered"] == 500


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class _Probe(Protocol):
    def __init__(self) -> None:
        self.got = b""
        self.answered: Deferred[bytes] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"ping")

    def dataReceived(self, data: bytes) -> None:
        self.got += data
        if self.got == b"ping" and not self.answered.called:
            self.answered.callback(self.got)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.answered.called:
            self.answered.errback(AssertionError(f"lost before the echo: {reason}"))
        self.lost.callback(None)


@pytest_twisted.ensureDeferred
async def test_tlsconfig_mutual_tls_for_any_channel(pki: dict[str, str]) -> None:
    """server_options(ca=...) + client_options(cert=..., key=...) give mutual TLS on a raw TCP
    channel (what the peer channel reuses); without a client certificate, or trusting another CA,
    the handshake fails."""
    ep = server_endpoint(the_reactor(), 0, "127.0.0.1", pki["server_cert"], pki["server_key"], pki["ca"])
    port = await bounded(ep.listen(Factory.forProtocol(_Echo)))
    try:
        p = port.getHost().port

        async def probe(opts: Any) -> bool:
            proto = _Probe()
            await bounded(connectProtocol(SSL4ClientEndpoint(the_reactor(), "127.0.0.1", p, opts), proto))
            try:
                await bounded(proto.answered)
                return True
            except AssertionError:
                return False
            finally:
                proto.transport.loseConnection()
                await bounded(proto.lost)

        good = client_options("127.0.0.1", pki["ca"], pki["client_cert"], pki["client_key"])
        assert await probe(good)
        assert not await probe(client_options("127.0.0.1", pki["ca"]))  # no client certificate
        assert not await probe(
            client_options("127.0.0.1", pki["other_ca"], pki["client_cert"], pki["client_key"])
        )
    finally:
        await bounded(port.stopListening())
