"""Unit tests of end-to-end encryption (:mod:`sprawl.client.e2e`): sealing and opening,
several recipients, key rotation, what is refused (no key, tampering, a moved key, plaintext
when encryption is required), key files, and the opener fuzzed with hostile envelopes."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sprawl.client.e2e import (
    H_EPHEMERAL,
    H_KEYS,
    H_VERSION,
    DecryptError,
    Decryptor,
    Encryptor,
    generate_key,
    load_private_keys,
    load_public_keys,
    save_key,
)
from sprawl.client.messages import Message, outgoing, payload_bytes

ALICE = generate_key("alice")
BOB = generate_key("bob")


def sealed(payload: bytes, recipients: list, key: str | None = None, reuse: int = 1) -> Message:  # type: ignore[type-arg]
    """A message as a consumer would get it after publishing through an Encryptor."""
    body, headers = Encryptor([r.public for r in recipients], reuse).seal(payload, key)
    return Message("t", 0, 7, body, key=key, headers={"app": "x", **headers})


def test_round_trip_for_each_recipient() -> None:
    """Both recipients open the payload; the envelope headers are gone, the app's stay."""
    m = sealed(b"secret", [ALICE, BOB], key="k")
    assert b"secret" not in m.payload
    for who in (ALICE, BOB):
        opened = Decryptor([who]).open(m)
        assert opened.payload == b"secret" and opened.headers == {"app": "x"}


def test_no_key_is_an_error_naming_the_key_ids() -> None:
    """A consumer without any of the message's keys gets a DecryptError, not bytes."""
    with pytest.raises(DecryptError, match=r"no key.*alice"):
        Decryptor([BOB]).open(sealed(b"x", [ALICE]))


def test_rotation_old_and_new_keys_held_together() -> None:
    """During a rotation a consumer holds both keys and opens messages sealed for either."""
    new = generate_key()
    d = Decryptor([ALICE, new])
    assert d.open(sealed(b"old", [ALICE])).payload == b"old"
    assert d.open(sealed(b"new", [new])).payload == b"new"


@pytest.mark.parametrize("where", ["payload", "key", "wrap", "epk"])
def test_tampering_is_refused(where: str) -> None:
    """A flipped ciphertext byte, a changed message key or a swapped wrap/ephemeral key fails
    authentication."""
    m = sealed(b"secret payload", [ALICE], key="k1")
    if where == "payload":
        body = bytearray(m.payload)
        body[-1] ^= 1
        m = Message("t", 0, 7, bytes(body), key="k1", headers=m.headers)
    elif where == "key":
        m = Message("t", 0, 7, m.payload, key="k2", headers=m.headers)
    else:
        other = sealed(b"other", [ALICE], key="k1")
        h = dict(m.headers)
        name = H_KEYS if where == "wrap" else H_EPHEMERAL
        h[name] = other.headers[name]
        m = Message("t", 0, 7, m.payload, key="k1", headers=h)
    with pytest.raises(DecryptError, match="authenticate"):
        Decryptor([ALICE]).open(m)


def test_data_key_reuse_keeps_distinct_nonces() -> None:
    """With reuse, messages share the wrapped key headers but never a nonce."""
    enc = Encryptor([ALICE.public], reuse=3)
    out = [enc.seal(b"same") for _ in range(4)]
    assert out[0][1] == out[2][1] and out[3][1] != out[0][1]
    assert len({body[:12] for body, _ in out}) == 4
    for body, headers in out:
        assert Decryptor([ALICE]).open(Message("t", 0, 0, body, headers=headers)).payload == b"same"


def test_plaintext_passes_unless_encryption_is_required() -> None:
    """A message without the envelope is plaintext: returned as is, or refused when required."""
    plain = Message("t", 0, 1, b"hello")
    assert Decryptor([ALICE]).open(plain) is plain
    with pytest.raises(DecryptError, match="not encrypted"):
        Decryptor([ALICE], require_encryption=True).open(plain)


def test_seal_item_keeps_key_headers_id() -> None:
    """A batch entry is sealed in place: key, id and headers kept, payload binary."""
    item = Encryptor([ALICE.public]).seal_item(outgoing("hi", key="k", headers={"a": "b"}, id="i"))
    assert item["key"] == "k" and item["id"] == "i" and "payload_b64" in item
    headers = item["headers"]
    assert isinstance(headers, dict) and headers["a"] == "b" and headers[H_VERSION] == "1"
    m = Message("t", 0, 0, payload_bytes(item), key="k", headers=headers)
    assert Decryptor([ALICE]).open(m).payload == b"hi"
    with pytest.raises(ValueError):
        Encryptor([ALICE.public]).seal_item(outgoing("x", headers={H_KEYS: "forged"}))


def test_key_files(tmp_path: Path) -> None:
    """The private file is 0600 and never overwritten; the .pub file has no private half."""
    priv, pub = save_key(generate_key("ops-2026"), tmp_path / "ops")
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600 and "private" not in pub.read_text()
    [p] = load_public_keys([pub])
    [k] = load_private_keys([priv])
    assert p.kid == k.kid == "ops-2026" and p.raw() == k.public.raw()
    with pytest.raises(FileExistsError):
        save_key(generate_key(), tmp_path / "ops")
    with pytest.raises(ValueError, match="public key file"):
        load_private_keys([pub])
    (tmp_path / "junk").write_text("{}")
    with pytest.raises(ValueError, match="not a Sprawl"):
        load_public_keys([tmp_path / "junk"])


def test_bad_key_ids_are_refused() -> None:
    """Key ids travel in a header list: no separators in them."""
    for bad in ("a:b", "a,b", "x" * 65, "a b"):
        with pytest.raises(ValueError):
            generate_key(bad)


@given(
    payload=st.binary(max_size=80),
    version=st.sampled_from(["1", "2", ""]),
    epk=st.text(max_size=60),
    keys=st.text(max_size=120),
)
def test_hostile_envelopes_are_decrypt_errors(payload: bytes, version: str, epk: str, keys: str) -> None:
    """Any envelope a stranger can forge is a DecryptError, never another exception or bytes."""
    headers = {H_VERSION: version, H_EPHEMERAL: epk, H_KEYS: keys + ",alice:" + epk}
    with pytest.raises(DecryptError):
        Decryptor([ALICE]).open(Message("t", 0, 0, payload, headers=headers))


def test_a_reused_data_key_is_unwrapped_once() -> None:
    """Messages sealed under one data key cost the consumer one unwrap (bounded cache)."""
    enc = Encryptor([ALICE.public], reuse=50)
    dec = Decryptor([ALICE])
    for _ in range(50):
        body, headers = enc.seal(b"x")
        dec.open(Message("t", 0, 0, body, headers=headers))
    assert len(dec._data_keys) == 1
