"""Gossip datagrams: framing, compound packing, authentication, limits.

Layout of one packet (one UDP datagram)::

    +---------+-------+----------------------+---------------------------+
    | version | flags | HMAC-SHA256 (32 B)   | body: msgpack array of    |
    | 1 byte  | 1 byte| only if flags & AUTH | tagged messages           |
    +---------+-------+----------------------+---------------------------+

* Every packet is *compound*: the body is a msgpack array holding one or more
  messages (see :mod:`sprawl.gossip.messages`), so a ping and a dozen
  piggybacked updates travel together.  :func:`pack` fills packets up to a
  byte budget (default 1400, below the usual 1500-byte Ethernet MTU).
* With a cluster key, every packet carries an HMAC-SHA256 over
  ``version + flags + body``; a node with a key rejects packets without a
  valid MAC, and a node without a key rejects authenticated packets (it
  cannot check them).  This authenticates but does not encrypt.
* Anything malformed -- short, oversize, wrong version, unknown flags, bad or
  missing MAC, undecodable or out-of-range body -- raises :class:`DecodeError`
  and nothing else; its ``reason`` says which, for the drop counters.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence

import msgspec

from sprawl.gossip.messages import MAX_MEMBERS_PER_CHUNK, Message

VERSION = 1
FLAG_AUTH = 0x01
_KNOWN_FLAGS = FLAG_AUTH
HEADER_LEN = 2
MAC_LEN = 32
DEFAULT_MAX_PACKET = 1400
#: Hard ceiling whatever the configuration: the largest UDP payload over IPv4.
ABSOLUTE_MAX_PACKET = 65507
#: Most messages one packet may hold (bounds the decoder's work).
MAX_MESSAGES = 512
#: The array header for up to 65535 elements is at most this long.
_MAX_ARRAY_HEADER = 3

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[Message])

assert MAX_MEMBERS_PER_CHUNK <= 65535


class DecodeError(ValueError):
    """A packet was malformed; ``reason`` is one of ``"short"``, ``"oversize"``,
    ``"version"``, ``"auth"`` or ``"malformed"``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def encode_message(msg: msgspec.Struct) -> bytes:
    """Encode one message (a compound-packet element) or member record."""
    return _encoder.encode(msg)


def packet_overhead(keyed: bool, count: int = 65535) -> int:
    """Bytes a packet adds around its messages' encodings (worst case for
    ``count`` messages)."""
    return HEADER_LEN + (MAC_LEN if keyed else 0) + _array_header_len(count)


def _array_header_len(count: int) -> int:
    return 1 if count < 16 else 3


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes((0x90 | count,))
    if count < 65536:
        return b"\xdc" + struct.pack(">H", count)
    raise ValueError("too many messages for one packet")


def _mac(key: bytes, header: bytes, body: bytes) -> bytes:
    return hmac.new(key, header + body, hashlib.sha256).digest()


def assemble(parts: Sequence[bytes], key: bytes | None = None) -> bytes:
    """Frame already-encoded messages (from :func:`encode_message`) as one packet."""
    if not parts:
        raise ValueError("a packet holds at least one message")
    if len(parts) > MAX_MESSAGES:
        raise ValueError("too many messages for one packet")
    body = _array_header(len(parts)) + b"".join(parts)
    if key is None:
        return bytes((VERSION, 0)) + body
    header = bytes((VERSION, FLAG_AUTH))
    return header + _mac(key, header, body) + body


def encode_packet(messages: Sequence[Message], key: bytes | None = None) -> bytes:
    """Encode messages into one packet (no size limit applied)."""
    return assemble([encode_message(m) for m in messages], key)


def pack(
    parts: Sequence[bytes], max_bytes: int = DEFAULT_MAX_PACKET, key: bytes | None = None
) -> list[bytes]:
    """Greedily pack encoded messages, in order, into as few packets of at most
    ``max_bytes`` as a single pass allows.  A part too large for any packet is
    a caller error (``ValueError``)."""
    budget = max_bytes - packet_overhead(key is not None)
    packets: list[bytes] = []
    batch: list[bytes] = []
    used = 0
    for part in parts:
        if len(part) > budget:
            raise ValueError(f"message of {len(part)} bytes cannot fit a {max_bytes}-byte packet")
        if batch and (used + len(part) > budget or len(batch) >= MAX_MESSAGES):
            packets.append(assemble(batch, key))
            batch, used = [], 0
        batch.append(part)
        used += len(part)
    if batch:
        packets.append(assemble(batch, key))
    return packets


def decode_packet(
    data: bytes, key: bytes | None = None, max_bytes: int = DEFAULT_MAX_PACKET
) -> list[Message]:
    """Check and decode one packet into its messages.

    Raises :class:`DecodeError` (only) for anything malformed.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError("malformed", "not bytes")
    data = bytes(data)
    if len(data) > min(max_bytes, ABSOLUTE_MAX_PACKET):
        raise DecodeError("oversize", f"{len(data)} bytes")
    if len(data) < HEADER_LEN + 1:
        raise DecodeError("short", f"{len(data)} bytes")
    version, flags = data[0], data[1]
    if version != VERSION:
        raise DecodeError("version", f"version {version}")
    if flags & ~_KNOWN_FLAGS:
        raise DecodeError("malformed", f"unknown flags {flags:#x}")
    header = data[:HEADER_LEN]
    if flags & FLAG_AUTH:
        if key is None:
            raise DecodeError("auth", "authenticated packet but no cluster key configured")
        if len(data) < HEADER_LEN + MAC_LEN + 1:
            raise DecodeError("short", "truncated MAC")
        mac = data[HEADER_LEN : HEADER_LEN + MAC_LEN]
        body = data[HEADER_LEN + MAC_LEN :]
        if not hmac.compare_digest(mac, _mac(key, header, body)):
            raise DecodeError("auth", "bad MAC")
    else:
        if key is not None:
            raise DecodeError("auth", "packet is not authenticated")
        body = data[HEADER_LEN:]
    try:
        messages = _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, ValueError, TypeError) as e:
        raise DecodeError("malformed", str(e)[:200]) from None
    if not messages:
        raise DecodeError("malformed", "empty packet")
    if len(messages) > MAX_MESSAGES:
        raise DecodeError("malformed", "too many messages")
    return messages
