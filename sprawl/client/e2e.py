"""End-to-end encryption of message payloads: the broker stores and replicates ciphertext it
cannot read (Pulsar's model).

* **Keys.** Each recipient has an X25519 key pair (:func:`generate_key`) with a key id
  (``kid``, by default the first 16 hex digits of the SHA-256 of the public key), kept in a
  JSON key file: the private file (mode 0600) holds both halves, the ``.pub`` file the public
  half only (:func:`save_key`, :func:`load_public_keys`, :func:`load_private_keys`).
* **Sealing** (:class:`Encryptor`). A payload is encrypted with AES-256-GCM under a random
  data key; the data key is wrapped for each recipient: X25519 between an ephemeral key and the
  recipient's public key, HKDF-SHA256 to a key-encryption key, AES-256-GCM over the data key.
  The payload becomes ``nonce || ciphertext+tag``; headers carry the rest (:data:`H_VERSION`,
  :data:`H_EPHEMERAL`, :data:`H_KEYS` = ``kid:wrapped,...``).  The message key (the partition
  key) is bound as associated data, so the broker cannot move a ciphertext to another key
  unnoticed.  A data key (and its wraps) may be reused for ``reuse`` messages (each with its
  own random nonce): the X25519 and HKDF work is then paid once per batch.
* **Opening** (:class:`Decryptor`). A consumer holding any of the recipients' private keys
  unwraps the data key by ``kid`` (so old and new keys can be held together while keys
  rotate) and decrypts.  A message it cannot open -- no key for any of its kids, or a
  ciphertext or header that fails authentication -- is a :class:`DecryptError`, never
  garbage.  A message without :data:`H_VERSION` is plaintext and passes through unless
  ``require_encryption``.

What is protected and what is not: docs/security.md, "End-to-end encryption".
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sprawl.client.errors import ClientError
from sprawl.client.messages import Message, payload_bytes, payload_field

#: Header naming the envelope version of an encrypted message.
H_VERSION = "sprawl-e2e"
#: Header with the ephemeral X25519 public key (base64).
H_EPHEMERAL = "sprawl-e2e-epk"
#: Header with the wrapped data keys: ``kid:base64,kid:base64,...``.
H_KEYS = "sprawl-e2e-keys"
VERSION = "1"
_NONCE = 12
_INFO = b"sprawl-e2e/1 key wrap"
#: How many unwrapped data keys a Decryptor remembers.
DATA_KEY_CACHE = 256
#: The most recipients one message may be sealed for (each costs ~100 header bytes).
MAX_RECIPIENTS = 32


class DecryptError(ClientError):
    """A message could not be opened (no key for it, or it failed authentication)."""

    def __init__(self, message: Message, reason: str) -> None:
        super().__init__(f"message {message.topic}/{message.event_id}: {reason}")
        #: The message as the broker delivered it (ciphertext).
        self.message = message
        self.reason = reason


@dataclass(frozen=True)
class PublicKey:
    """A recipient's X25519 public key and its id."""

    kid: str
    key: X25519PublicKey

    def raw(self) -> bytes:
        """The 32 bytes of the public key."""
        return self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class PrivateKey:
    """A recipient's X25519 private key and its id."""

    kid: str
    key: X25519PrivateKey

    @property
    def public(self) -> PublicKey:
        """The matching public key."""
        return PublicKey(self.kid, self.key.public_key())


def key_id(public: X25519PublicKey) -> str:
    """The default key id: 16 hex digits of the SHA-256 of the raw public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key(kid: str | None = None) -> PrivateKey:
    """A new X25519 key pair (``kid`` defaults to :func:`key_id`)."""
    key = X25519PrivateKey.generate()
    kid = kid or key_id(key.public_key())
    _check_kid(kid)
    return PrivateKey(kid, key)


def _check_kid(kid: str) -> None:
    if not kid or len(kid) > 64 or not all(c.isalnum() or c in "-_." for c in kid):
        raise ValueError("a key id is 1..64 letters, digits, '-', '_' or '.'")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def save_key(key: PrivateKey, path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write the private key file ``path`` (mode 0600, refused if it exists) and the public
    one ``path + ".pub"``; returns both paths."""
    priv_path = Path(path)
    pub_path = Path(str(path) + ".pub")
    raw_priv = key.key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    pub = {"kty": "X25519", "kid": key.kid, "public": _b64(key.public.raw())}
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({**pub, "private": _b64(raw_priv)}, fh)
        fh.write("\n")
    pub_path.write_text(json.dumps(pub) + "\n")
    return priv_path, pub_path


def _read_key_file(path: str | os.PathLike[str]) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable key file ({exc})") from None
    if not isinstance(data, dict) or data.get("kty") != "X25519" or not isinstance(data.get("kid"), str):
        raise ValueError(f"{path}: not a Sprawl X25519 key file")
    try:
        _check_kid(data["kid"])
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return data


def load_public_keys(paths: Iterable[str | os.PathLike[str]]) -> list[PublicKey]:
    """The public keys of key files (a private key file gives its public half)."""
    out = []
    for path in paths:
        data = _read_key_file(path)
        try:
            key = X25519PublicKey.from_public_bytes(_unb64(data["public"]))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{path}: bad public key ({exc})") from None
        out.append(PublicKey(data["kid"], key))
    return out


def load_private_keys(paths: Iterable[str | os.PathLike[str]]) -> list[PrivateKey]:
    """The private keys of private key files."""
    out = []
    for path in paths:
        data = _read_key_file(path)
        if "private" not in data:
            raise ValueError(f"{path}: a public key file; decryption needs the private key file")
        try:
            key = X25519PrivateKey.from_private_bytes(_unb64(data["private"]))
        except ValueError as exc:
            raise ValueError(f"{path}: bad private key ({exc})") from None
        out.append(PrivateKey(data["kid"], key))
    return out


def _aad(key: str | None) -> bytes:
    return b"sprawl-e2e/1\x00" + (key or "").encode("utf-8")


def _kek(shared: bytes, epk: bytes, recipient: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO + epk + recipient)
    return hkdf.derive(shared)


class Encryptor:
    """Seals payloads for a list of recipients (see the module docstring).

    ``reuse``: how many messages share one data key and its wraps (1 = a fresh data key per
    message; more saves the public-key work per message, each message keeping its own nonce)."""

    def __init__(self, recipients: Sequence[PublicKey], reuse: int = 1) -> None:
        if not recipients or len(recipients) > MAX_RECIPIENTS:
            raise ValueError(f"give 1..{MAX_RECIPIENTS} recipients")
        if reuse < 1:
            raise ValueError("reuse must be at least 1")
        self.recipients = list(recipients)
        self.reuse = reuse
        self._left = 0
        self._aead: AESGCM | None = None
        self._headers: dict[str, str] = {}

    def _new_data_key(self) -> None:
        data_key = AESGCM.generate_key(bit_length=256)
        eph = X25519PrivateKey.generate()
        epk = eph.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        wraps = []
        for r in self.recipients:
            raw = r.raw()
            kek = _kek(eph.exchange(r.key), epk, raw)
            nonce = os.urandom(_NONCE)
            wraps.append(f"{r.kid}:{_b64(nonce + AESGCM(kek).encrypt(nonce, data_key, r.kid.encode()))}")
        self._aead = AESGCM(data_key)
        self._headers = {H_VERSION: VERSION, H_EPHEMERAL: _b64(epk), H_KEYS: ",".join(wraps)}
        self._left = self.reuse

    def seal(self, payload: bytes, key: str | None = None) -> tuple[bytes, dict[str, str]]:
        """``(ciphertext, headers)`` of ``payload`` (``key``: the message's partition key)."""
        if self._left <= 0:
            self._new_data_key()
        assert self._aead is not None
        self._left -= 1
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, payload, _aad(key)), dict(self._headers)

    def seal_item(self, item: Mapping[str, object]) -> dict[str, object]:
        """A publish batch entry (:func:`sprawl.client.messages.outgoing`) with its payload
        sealed and the envelope headers added (its own headers kept, in clear)."""
        key = item.get("key")
        sealed, headers = self.seal(payload_bytes(item), key if isinstance(key, str) else None)
        out = {k: v for k, v in item.items() if k not in ("payload", "payload_b64")}
        own = item.get("headers")
        if isinstance(own, Mapping) and any(str(h).startswith(H_VERSION) for h in own):
            raise ValueError(f"headers starting with {H_VERSION!r} are the envelope's")
        out["headers"] = {**(dict(own) if isinstance(own, Mapping) else {}), **headers}
        out.update(payload_field(sealed))
        return out


class Decryptor:
    """Opens messages sealed for any of ``keys`` (see the module docstring)."""

    def __init__(self, keys: Sequence[PrivateKey], require_encryption: bool = False) -> None:
        if not keys:
            raise ValueError("give at least one private key")
        self.keys = {k.kid: k for k in keys}
        #: Refuse (DecryptError) messages that are not encrypted at all.
        self.require_encryption = require_encryption
        # Data keys unwrapped lately, by envelope: messages sealed under a reused data key
        # (Encryptor(reuse=N)) cost one unwrap for the batch.  Bounded; oldest dropped first.
        self._data_keys: dict[tuple[str, str, str], AESGCM] = {}

    def open(self, message: Message) -> Message:
        """The message with its plaintext payload and without the envelope headers;
        :class:`DecryptError` when it cannot be opened."""
        h = message.headers
        if H_VERSION not in h:
            if self.require_encryption:
                raise DecryptError(message, "not encrypted")
            return message
        if h[H_VERSION] != VERSION:
            raise DecryptError(message, f"unknown envelope version {h[H_VERSION]!r}")
        wraps = {}
        for part in h.get(H_KEYS, "").split(","):
            kid, sep, wrap = part.partition(":")
            if sep:
                wraps[kid] = wrap
        mine = [kid for kid in wraps if kid in self.keys]
        if not mine:
            return self._no_key(message, sorted(wraps))
        kid = mine[0]
        priv = self.keys[kid]
        try:
            envelope = (kid, h.get(H_EPHEMERAL, ""), wraps[kid])
            aead = self._data_keys.get(envelope)
            if aead is None:
                aead = self._unwrap(priv, *envelope)
            body = message.payload
            plain = aead.decrypt(body[:_NONCE], body[_NONCE:], _aad(message.key))
        except (InvalidTag, ValueError):
            raise DecryptError(
                message, f"does not authenticate with key {kid!r} (tampered or corrupt)"
            ) from None
        headers = {k: v for k, v in h.items() if not k.startswith(H_VERSION)}
        return replace(message, payload=plain, headers=headers)

    def _unwrap(self, priv: PrivateKey, kid: str, epk_text: str, wrap: str) -> AESGCM:
        """The data key of an envelope (remembered once it authenticated)."""
        epk = _unb64(epk_text)
        sealed_key = _unb64(wrap)
        kek = _kek(priv.key.exchange(X25519PublicKey.from_public_bytes(epk)), epk, priv.public.raw())
        aead = AESGCM(AESGCM(kek).decrypt(sealed_key[:_NONCE], sealed_key[_NONCE:], kid.encode()))
        if len(self._data_keys) >= DATA_KEY_CACHE:
            del self._data_keys[next(iter(self._data_keys))]
        self._data_keys[(kid, epk_text, wrap)] = aead
        return aead

    @staticmethod
    def _no_key(message: Message, kids: list[str]) -> Message:
        raise DecryptError(message, f"no key for it (sealed for key ids {', '.join(kids) or 'none'})")


_log = logging.getLogger("sprawl.client")


def log_undecryptable(error: DecryptError) -> None:
    """The default report of a message that could not be decrypted: a warning on the
    ``sprawl.client`` logger (the message is not delivered)."""
    _log.warning("not delivered: %s", error)


def as_encryptor(value: Sequence[PublicKey] | Encryptor | None) -> Encryptor | None:
    """A client's ``encrypt_for``: public keys (one data key per message) or an Encryptor."""
    return value if value is None or isinstance(value, Encryptor) else Encryptor(value)


def as_decryptor(value: Sequence[PrivateKey] | Decryptor | None) -> Decryptor | None:
    """A client's ``decrypt_with``: private keys or a Decryptor."""
    return value if value is None or isinstance(value, Decryptor) else Decryptor(value)


def open_all(
    decryptor: Decryptor | None,
    messages: Iterable[Message],
    report: Callable[[DecryptError], object],
) -> tuple[list[Message], list[Message]]:
    """``(opened, undecryptable)``: the messages decrypted (as they are without a decryptor);
    each one that cannot be is passed to ``report``."""
    if decryptor is None:
        return list(messages), []
    opened: list[Message] = []
    failed: list[Message] = []
    for m in messages:
        try:
            opened.append(decryptor.open(m))
        except DecryptError as e:
            failed.append(m)
            report(e)
    return opened, failed
