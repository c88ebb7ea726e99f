"""Mutual TLS on the TCP peer channel (``--cluster-ca``): peers holding
certificates of the cluster CA that name their node ids talk; a peer with a
certificate of another CA, a certificate naming another node (on either
side of the connection), or speaking plain TCP, delivers nothing.  Then two
real twistd nodes form a Raft group over TLS."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from harness import PeerNet, link_peers, make_node_cert, make_test_pki, poll_until, until
from sprawl.config import ConfigError, NodeConfig
from sprawl.node import peer_tls
from sprawl.peer.frames import RAFT


def _tls(pki: dict[str, str], node: str, ca: str = "ca", *, in_san: bool = False) -> dict[str, Any]:
    """PeerChannel TLS arguments with a certificate of ``ca`` naming ``node``."""
    cert, key = make_node_cert(pki, node, ca, in_san=in_san)
    cfg = NodeConfig(cluster_ca=pki["ca"], peer_tls_cert=cert, peer_tls_key=key)
    return peer_tls(cfg.validate())


@pytest_twisted.ensureDeferred
async def test_peers_of_the_cluster_ca_talk_and_strangers_do_not(tmp_path: Path) -> None:
    """a → b over mutual TLS delivers frames with a's id (b's certificate names
    it in a subject alternative name, a's in its common name); a stranger (other
    CA) and a plain-TCP sender are refused before any frame is delivered."""
    pki = make_test_pki(tmp_path)
    net = PeerNet()
    try:
        b = net.channel("b", handshake_timeout=0.3, **_tls(pki, "b", in_san=True))
        port = net.listen(b)
        a = net.channel("a", **_tls(pki, "a"))
        link_peers(a, b, port)
        for i in range(3):
            a.send("b", RAFT, b"hello-%d" % i)
        await until(lambda: len(net.got["b"]) == 3, "frames over TLS")
        assert net.got["b"] == [("a", b"hello-%d" % i) for i in range(3)]
        assert "b" in a.proven
        stranger = net.channel("s", **_tls(pki, "s", ca="other_ca"))
        plain = net.channel("p")
        for ch in (stranger, plain):
            link_peers(ch, b, port)
            ch.send("b", RAFT, b"let me in")
        await until(
            lambda: stranger.stats.connects >= 2 and plain.stats.connects >= 2, "retries after refusals"
        )
        assert [peer for peer, _ in net.got["b"]] == ["a", "a", "a"]
    finally:
        await net.close()


@pytest_twisted.ensureDeferred
async def test_a_certificate_vouches_for_its_own_node_only(tmp_path: Path) -> None:
    """A node holding a good certificate of the cluster CA for node "m" cannot
    claim to be "a" (the acceptor refuses the hello), and a listener whose
    certificate names "m" is refused by a connector that meant to reach "b"
    (so an address taken over by another node gets nothing)."""
    pki = make_test_pki(tmp_path)
    net = PeerNet()
    try:
        b = net.channel("b", **_tls(pki, "b"))
        port = net.listen(b)
        # "a" with m's certificate: b refuses the hello.
        liar = net.channel("a", **_tls(pki, "m"))
        link_peers(liar, b, port)
        liar.send("b", RAFT, b"I am a")
        await until(lambda: b.stats.handshake_failures >= 1, "b to refuse the hello")
        # A listener presenting m's certificate at the address a believes is b's.
        impostor = net.channel("b", **_tls(pki, "m"))
        iport = net.listen(impostor)
        a = net.channel("a", **_tls(pki, "a"))
        link_peers(a, impostor, iport)
        a.send("b", RAFT, b"for b only")
        await until(lambda: a.stats.handshake_failures >= 1, "a to refuse the impostor's welcome")
        assert net.got["b"] == []
        assert "b" not in a.proven
        assert not a.connected("b")
    finally:
        await net.close()


def test_cluster_ca_needs_a_node_certificate(tmp_path: Path) -> None:
    """--cluster-ca without any certificate, or --peer-tls-cert without a CA, is a clear config error."""
    pki = make_test_pki(tmp_path)
    with pytest.raises(ConfigError, match="needs a node certificate"):
        NodeConfig(cluster_ca=pki["ca"]).validate()
    with pytest.raises(ConfigError, match="needs --cluster-ca"):
        NodeConfig(peer_tls_cert=pki["peer_cert"], peer_tls_key=pki["peer_key"]).validate()
    # --tls-cert/--tls-key double as the peer certificate
    NodeConfig(cluster_ca=pki["ca"], tls_cert=pki["peer_cert"], tls_key=pki["peer_key"]).validate()


@pytest.mark.integration
def test_a_node_whose_certificate_names_another_id_does_not_start(sprawl_nodes: Any, tmp_path: Path) -> None:
    """With --cluster-ca a node refuses to start with a certificate that does not name its node id."""
    pki = make_test_pki(tmp_path / "pki")
    cert, key = make_node_cert(pki, "someone-else")
    with pytest.raises(RuntimeError, match="not this node's id"):
        sprawl_nodes(
            "--node-id", "me", "--cluster-ca", pki["ca"], "--peer-tls-cert", cert, "--peer-tls-key", key
        )


@pytest.mark.integration
def test_two_twistd_nodes_form_a_raft_group_over_tls(sprawl_nodes: Any, tmp_path: Path) -> None:
    """Raft traffic flows over the TLS peer channel: the second node learns the
    leader (it is added as a learner and replicated to) and sees a topic created on the first."""
    pki = make_test_pki(tmp_path / "pki")

    def tls(node: str) -> tuple[str, ...]:
        cert, key = make_node_cert(pki, node)
        return ("--cluster-ca", pki["ca"], "--peer-tls-cert", cert, "--peer-tls-key", key)

    a = sprawl_nodes("--node-id", "ta", *tls("ta"), name="ta")
    b = sprawl_nodes("--node-id", "tb", "--seeds", f"127.0.0.1:{a.peer_port}", *tls("tb"), name="tb")
    req = urllib.request.Request(a.url + "/v1/topics/over-tls", data=b"{}", method="PUT")
    with urllib.request.urlopen(req, timeout=15) as r:
        assert r.status == 201

    def joined() -> bool:
        with urllib.request.urlopen(b.url + "/v1/cluster", timeout=5) as r:
            raft = json.loads(r.read())["raft"]
        with urllib.request.urlopen(b.url + "/v1/topics", timeout=5) as r:
            names = {t["name"] for t in json.loads(r.read())["topics"]}
        return raft["leader"] == "ta" and "over-tls" in names

    assert poll_until(joined, 20.0) is not None
