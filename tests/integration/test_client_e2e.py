"""Integration: end-to-end encryption against a real node.  ``sprawlctl keys generate``,
``publish --encrypt-for`` and ``subscribe --decrypt-with`` (stream and group), the library's
``encrypt_for``/``decrypt_with``; the broker's stored bytes (LMDB's ``data.mdb``) hold the
ciphertext, never the plaintext (checked against a plaintext control message that is found);
a consumer without the key gets no garbage: it is told, and in a group the message is nacked
until the group dead-letters it -- ciphertext intact."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from click.testing import CliRunner, Result

from harness import NodeProcess, poll_until
from harness.reactor import bounded, the_reactor
from sprawl.client import SprawlClient, TxSprawlClient
from sprawl.client.e2e import H_VERSION, DecryptError, Decryptor, generate_key
from sprawl.ctl import cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One real node for the module."""
    with NodeProcess(Path(tmp_path_factory.mktemp("e2e")) / "n") as n:
        yield n


def ctl(url: str, *args: str) -> Result:
    """``sprawlctl -n URL ARGS`` in-process."""
    return CliRunner().invoke(cli, ["-n", url, *args], catch_exceptions=False)


def stored_bytes(node: NodeProcess) -> bytes:
    """What the node's disk holds now: its LMDB file and its write-ahead log's
    segments (on by default: an acked publish is in the log at its ack, and in
    LMDB's file only once the writer has applied it, a moment later)."""
    parts = [(node.data_dir / "lmdb" / "data.mdb").read_bytes()]
    wal = node.data_dir / "lmdb-wal"
    if wal.is_dir():
        parts.extend(p.read_bytes() for p in sorted(wal.glob("*.log")))
    return b"".join(parts)


def test_ctl_encrypt_and_decrypt(node: NodeProcess, tmp_path: Path) -> None:
    """Encrypted with sprawlctl: stored as ciphertext, printed as plaintext with the key,
    reported (not printed) with another key."""
    assert ctl(node.url, "keys", "generate", "-o", str(tmp_path / "alice"), "--id", "alice").exit_code == 0
    assert ctl(node.url, "keys", "generate", "-o", str(tmp_path / "eve")).exit_code == 0
    secret, control = "SECRET-PLAINTEXT-4f1c9", "CONTROL-PLAINTEXT-77ab2"
    pub = str(tmp_path / "alice.pub")
    r = ctl(
        node.url,
        "publish",
        "-t",
        "e2e-ctl",
        "-m",
        secret,
        "-k",
        "k1",
        "--acks",
        "leader",
        "--encrypt-for",
        pub,
    )
    assert r.exit_code == 0, r.output
    assert ctl(node.url, "publish", "-t", "e2e-ctl", "-m", control, "--acks", "leader").exit_code == 0
    data = stored_bytes(node)
    assert control.encode() in data  # the check can see a payload in the stored bytes
    assert secret.encode() not in data
    got = ctl(
        node.url,
        "subscribe",
        "-t",
        "e2e-ctl",
        "--from",
        "earliest",
        "-c",
        "2",
        "--idle-timeout",
        "10",
        "--decrypt-with",
        str(tmp_path / "alice"),
    )
    assert got.exit_code == 0, got.output
    assert sorted(got.stdout.split()) == sorted([secret, control])
    eve = ctl(
        node.url,
        "subscribe",
        "-t",
        "e2e-ctl",
        "--from",
        "earliest",
        "--idle-timeout",
        "2",
        "--decrypt-with",
        str(tmp_path / "eve"),
    )
    assert eve.stdout.split() == [control]
    assert "not delivered" in eve.stderr and "alice" in eve.stderr
    bad = ctl(node.url, "subscribe", "-t", "e2e-ctl", "--decrypt-with", pub)
    assert bad.exit_code != 0 and "private key" in bad.output


def test_library_encrypt_decrypt_and_dead_letter(node: NodeProcess, tmp_path: Path) -> None:
    """The library seals for two recipients; each opens; a group consumer without a key nacks
    the message until the group dead-letters it, and the dead letter is the ciphertext."""
    alice, bob, mallory = generate_key("alice"), generate_key("bob"), generate_key("mallory")
    producer = SprawlClient(node.url, encrypt_for=[alice.public, bob.public])
    producer.publish(
        "e2e-lib", b"pay 100 to carol", key="acct-1", headers={"kind": "transfer"}, acks="leader"
    )
    assert b"pay 100 to carol" not in stored_bytes(node)
    raw = SprawlClient(node.url).fetch("e2e-lib").messages[0]
    assert raw.headers[H_VERSION] == "1" and raw.headers["kind"] == "transfer"
    for who in (alice, bob):
        m = SprawlClient(node.url, decrypt_with=[who]).fetch("e2e-lib").messages[0]
        assert m.payload == b"pay 100 to carol" and m.headers == {"kind": "transfer"}
    with SprawlClient(node.url, decrypt_with=[bob]).subscribe(
        "e2e-lib", start="earliest", idle_timeout=10
    ) as sub:
        assert next(sub).payload == b"pay 100 to carol"

    reports: list[DecryptError] = []
    stranger = SprawlClient(
        node.url, decrypt_with=[mallory], on_undecryptable=reports.append, undecryptable_nack_delay_ms=0
    )
    stranger.create_group("e2e-lib", "g", start="earliest", max_deliveries=2, dead_letter_topic="e2e-dlq")

    def dead_lettered() -> bool:
        assert stranger.pull("e2e-lib", "g", 10, wait_ms=200) == []  # never garbage
        return stranger.describe_group("e2e-lib", "g")["dead_lettered"] >= 1

    assert poll_until(dead_lettered, 30) is not None
    assert len(reports) == 2 and "no key" in str(reports[0])
    dead = SprawlClient(node.url).fetch("e2e-dlq", wait_ms=5000).messages[0]
    assert Decryptor([alice]).open(dead).payload == b"pay 100 to carol"


@pytest_twisted.ensureDeferred
async def test_twisted_client_encrypts_and_decrypts(node: NodeProcess) -> None:
    """TxSprawlClient seals, opens on fetch and on its subscription, nacks what a group
    consumer cannot open, and a subscription whose callback raises ends with that error."""
    alice, mallory = generate_key("alice"), generate_key("mallory")
    c = TxSprawlClient(node.url, reactor=the_reactor(), encrypt_for=[alice.public], decrypt_with=[alice])
    await bounded(c.publish("e2e-tx", b"tx secret", key="k"))
    page = await bounded(c.fetch("e2e-tx"))
    assert page.messages[0].payload == b"tx secret"
    raw = SprawlClient(node.url).fetch("e2e-tx").messages[0]
    assert raw.payload != b"tx secret" and H_VERSION in raw.headers

    reports: list[DecryptError] = []
    stranger = TxSprawlClient(
        node.url, reactor=the_reactor(), decrypt_with=[mallory], on_undecryptable=reports.append
    )
    await bounded(stranger.create_group("e2e-tx", "g", start="earliest"))
    assert await bounded(stranger.pull("e2e-tx", "g", 5, wait_ms=2000)) == []
    assert len(reports) == 1 and SprawlClient(node.url).describe_group("e2e-tx", "g")["in_flight"] <= 1

    seen: list[bytes] = []

    def boom(m: Any) -> None:
        seen.append(m.payload)
        raise RuntimeError("handler failed")

    sub = c.subscribe("e2e-tx", boom, start="earliest")
    with pytest.raises(RuntimeError, match="handler failed"):
        await bounded(sub.done)
    assert seen == [b"tx secret"]
