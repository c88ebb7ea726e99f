"""The message record and its two encodings: storage (msgpack) and API (JSON).

Pure: no Twisted import.  A :class:`Record` caches its JSON and SSE encodings
so fan-out to many subscribers encodes each message once.

**The storage value** (what LMDB stores under the record's key, and what a
segment object frames) is ``0xC1 | crc32c u32 | body`` (big-endian), where
``body`` is the msgpack array of the record's fields and the CRC32C is that
of ``body`` with the record's offset folded to 32 bits (``offset ^ offset >>
32``) as its initial value: a value that is damaged, or read back under
another offset's key, fails the check.  ``0xC1``
is the one byte msgpack never uses, so values written before checksums (a
bare msgpack array) are still told apart and read as *unchecked*.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import msgspec
from crc32c import crc32c

_mp_encode = msgspec.msgpack.Encoder().encode
_mp_decode = msgspec.msgpack.Decoder().decode
_json_encode = msgspec.json.Encoder().encode

#: First byte of a checksummed storage value (msgpack never uses 0xC1).
CHECKED = 0xC1
_HEAD = struct.Struct(">BI")
_CRC = struct.Struct(">I")
HEAD_BYTES = _HEAD.size
_MASK = 0xFFFFFFFF


class CorruptRecord(ValueError):
    """A stored record fails its checksum or does not decode (the message
    names the partition and offset)."""


def stored_crc(offset: int, body: bytes) -> int:
    """The checksum of a storage value's body kept at ``offset``: its CRC32C
    with the offset folded to 32 bits as the initial value, so one pass
    covers both (a value read under another offset's key fails)."""
    return crc32c(body, (offset ^ (offset >> 32)) & _MASK)


def check_stored(partition: int, offset: int, data: bytes, *, unchecked_ok: bool = True) -> bool:
    """Check a storage value without decoding it: True when its checksum
    matches, False for a value written before checksums (allowed only with
    ``unchecked_ok``, and then decoded to make sure it is whole); raises
    :class:`CorruptRecord` otherwise."""
    if data[:1] == b"\xc1":
        if len(data) < HEAD_BYTES or _CRC.unpack_from(data, 1)[0] != stored_crc(offset, data[HEAD_BYTES:]):
            raise CorruptRecord(f"corrupt record at {partition}:{offset}: checksum mismatch")
        return True
    if not unchecked_ok:
        raise CorruptRecord(f"corrupt record at {partition}:{offset}: no checksum header")
    Record.from_storage(partition, offset, data)
    return False


#: Bytes a record is charged beyond its message bytes (offset, timestamp, id,
#: framing): its :attr:`Record.size` is its :attr:`Record.message_bytes` plus this.
RECORD_OVERHEAD = 64

#: The headers a pipeline adds to each record it derives (its origin, issue 17).
ORIGIN_HEADERS = ("sprawl-pipeline", "sprawl-source-partition", "sprawl-source-offset")
#: Bytes of :data:`ORIGIN_HEADERS` that ``max_message_bytes`` does not count (their
#: largest: a 200-character pipeline name and two 20-digit numbers come to about 300),
#: so a source message at the limit can still be derived.
ORIGIN_ALLOWANCE = 512


#: Bytes of memory one record in a hot tail takes beyond its message bytes
#: and its id's characters: the Struct (13 slots), the payload's ``bytes``
#: header and allocator rounding, the offset and timestamp ints, the id's
#: ``str`` header and the deque slot -- measured with ``tracemalloc`` for
#: payloads of 100 B to 4 KB (``tests/unit/log/test_record_memory.py`` holds
#: it to the measurement; docs/benchmarks.md has the figures).
RECORD_MEMORY = 280
#: Memory of a key beyond its characters (the ``str`` object).
KEY_MEMORY = 56
#: Memory of a headers dict beyond its characters (the dict, and per entry two ``str`` objects).
HEADERS_MEMORY = 160
HEADER_ENTRY_MEMORY = 64


def encoding_memory(encoded: bytes) -> int:
    """Memory a cached encoding holds: its ``bytes`` object (header and rounding)."""
    return len(encoded) + 48


class HotAccount:
    """What the cached encodings of one hot tail's records take, in bytes.

    A record appended to a hot tail points at its log's account; when it
    caches an encoding it adds that encoding's memory here, and when it
    leaves the tail the log takes it back out (:meth:`Record.leave_account`).
    Holds no reference to any record, so it makes no cycle.
    """

    __slots__ = ("encoded",)

    def __init__(self) -> None:
        self.encoded = 0


#: Bytes of records an answer carries unless the client asks otherwise (fetch,
#: group pull, each SSE/WebSocket write): ``max_bytes``.
DEFAULT_READ_BYTES = 4 * 1000**2
#: The most a client may ask for in one answer (``max_bytes``).  (Reads
#: between nodes are bounded by the peer channel's ``BATCH_BYTES``.)
MAX_READ_BYTES = 32 * 1000**2


def text_bytes(s: str) -> int:
    """UTF-8 length of ``s`` (``len`` for ASCII, which is O(1) to tell)."""
    return len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass"))


class Record(msgspec.Struct, gc=False, repr_omit_defaults=True):
    """One message at one offset of one partition.

    A msgspec Struct with ``gc=False``: the hot tails hold millions of these,
    and keeping them out of the cyclic garbage collector keeps its pauses
    short (records reference only bytes, strings and a flat headers dict, so
    they can never be part of a cycle).
    """

    offset: int
    partition: int
    timestamp: int
    id: str | None
    key: str | None
    headers: dict[str, str] | None
    payload: bytes
    is_text: bool
    #: Bytes this record is charged against every budget (memory, backlog,
    #: windows, answers): payload, key and headers (UTF-8) plus
    #: :data:`RECORD_OVERHEAD`.
    size: int = 0
    #: A control record (a new leader's epoch marker): it takes an offset but
    #: is never delivered; consumers' cursors move past it.
    control: bool = False
    _json: bytes | None = None
    _sse: bytes | None = None
    #: The hot tail's account its cached encodings are charged to (None off a hot tail).
    _acct: HotAccount | None = None

    def __post_init__(self) -> None:
        key = self.key
        if self.headers is None and (key is None or (type(key) is str and key.isascii())):
            # The common case (hot publish path): no headers, an ASCII key or none.
            self.size = len(self.payload) + 64 + (len(key) if key else 0)  # 64: RECORD_OVERHEAD
            return
        self.size = self._weigh()

    def _weigh(self) -> int:
        key, headers = self.key, self.headers
        n = len(self.payload) + RECORD_OVERHEAD
        try:
            if key:
                n += text_bytes(key)
            if headers:
                for k, v in headers.items():
                    n += text_bytes(k) + text_bytes(v)
        except (AttributeError, TypeError):
            # Not str / str -> str (a value written by something else): charge its encoding.
            n = len(self.payload) + RECORD_OVERHEAD + len(_mp_encode((key, headers)))
        return n

    @property
    def memory(self) -> int:
        """Bytes this record takes in a hot tail, its cached encodings aside:
        :attr:`message_bytes`, the id, and the measured object overheads
        (:data:`RECORD_MEMORY`, :data:`KEY_MEMORY`, :data:`HEADERS_MEMORY`)."""
        n = self.size - RECORD_OVERHEAD + RECORD_MEMORY
        if self.id is not None:
            n += len(self.id)
        if self.key is not None:
            n += KEY_MEMORY
        if self.headers:
            n += HEADERS_MEMORY + HEADER_ENTRY_MEMORY * len(self.headers)
        return n

    def encoded_memory(self) -> int:
        """Bytes its cached encodings take (0 when none is cached)."""
        n = 0
        if self._json is not None:
            n += encoding_memory(self._json)
        if self._sse is not None:
            n += encoding_memory(self._sse)
        return n

    def join_account(self, acct: HotAccount) -> None:
        """The record entered a hot tail: charge its cached encodings (now and later) to ``acct``."""
        self._acct = acct
        if self._json is not None or self._sse is not None:
            acct.encoded += self.encoded_memory()

    def leave_account(self) -> int:
        """The record left its hot tail: take its encodings out of the
        account; returns the bytes taken out."""
        acct = self._acct
        if acct is None:
            return 0
        self._acct = None
        n = self.encoded_memory()
        acct.encoded -= n
        return n

    @property
    def message_bytes(self) -> int:
        """What ``max_message_bytes`` limits: payload, key and headers (names
        and values, UTF-8).  The id (at most 256 characters) is not counted."""
        return self.size - RECORD_OVERHEAD

    @property
    def limited_bytes(self) -> int:
        """What ``max_message_bytes`` is compared with: :attr:`message_bytes` less the
        pipeline origin headers (:data:`ORIGIN_HEADERS`, up to :data:`ORIGIN_ALLOWANCE`
        bytes of them)."""
        n = self.size - RECORD_OVERHEAD
        headers = self.headers
        if not headers:
            return n
        origin = 0
        for k in ORIGIN_HEADERS:
            v = headers.get(k)
            if isinstance(v, str):
                origin += text_bytes(k) + text_bytes(v)
        return n - min(origin, ORIGIN_ALLOWANCE)

    def to_storage(self) -> bytes:
        """The value stored in LMDB (the key carries topic, partition and
        offset): the checksum header and the msgpack body (module docstring)."""
        if self.control:
            body = _mp_encode(
                (self.timestamp, self.id, self.key, self.headers, self.payload, self.is_text, True)
            )
        else:
            body = _mp_encode((self.timestamp, self.id, self.key, self.headers, self.payload, self.is_text))
        o = self.offset  # (stored_crc, inlined: this runs once per record appended)
        return _HEAD.pack(CHECKED, crc32c(body, (o ^ (o >> 32)) & _MASK)) + body

    @classmethod
    def from_storage(cls, partition: int, offset: int, data: bytes, *, unchecked_ok: bool = True) -> Record:
        """Rebuild a record from its storage value, checking its checksum;
        raises :class:`CorruptRecord` (a ``ValueError``) on a mismatch or
        anything that does not decode.  A value written before checksums is
        accepted only with ``unchecked_ok``."""
        body = data
        if data[:1] == b"\xc1":
            body = data[HEAD_BYTES:]
            if len(data) < HEAD_BYTES or _CRC.unpack_from(data, 1)[0] != crc32c(
                body, (offset ^ (offset >> 32)) & _MASK
            ):
                raise CorruptRecord(f"corrupt record at {partition}:{offset}: checksum mismatch")
        elif not unchecked_ok:
            raise CorruptRecord(f"corrupt record at {partition}:{offset}: no checksum header")
        try:
            fields = _mp_decode(body)
            ts, id_, key, headers, payload, is_text = fields[:6]
            control = len(fields) == 7 and fields[6] is True
            if len(fields) not in (6, 7):
                raise ValueError(f"{len(fields)} fields")
        except (msgspec.DecodeError, ValueError, TypeError) as e:
            raise CorruptRecord(f"corrupt record at {partition}:{offset}: {e}") from None
        return cls(offset, partition, ts, id_, key, headers, payload, is_text, control=control)

    def to_dict(self) -> dict[str, Any]:
        """The message as the API shows it."""
        d: dict[str, Any] = {
            "offset": self.offset,
            "partition": self.partition,
            "id": self.id,
            "timestamp": self.timestamp,
            "key": self.key,
            "headers": self.headers or {},
        }
        if self.is_text:
            d["payload"] = self.payload.decode("utf-8", "replace")
        else:
            d["payload_b64"] = base64.b64encode(self.payload).decode("ascii")
        return d

    def to_json(self) -> bytes:
        """The message as JSON bytes, encoded once and cached (charged to
        the hot tail's account; the encoder's spare capacity is cut off)."""
        j = self._json
        if j is None:
            j = self._json = bytes(memoryview(_json_encode(self.to_dict())))
            if self._acct is not None:
                self._acct.encoded += len(j) + 48  # encoding_memory, inlined
        return j

    def to_sse(self) -> bytes:
        """The message as one Server-Sent Events frame, encoded once and
        cached (its JSON is cached only when :meth:`to_json` was asked)."""
        s = self._sse
        if s is None:
            j = self._json
            s = self._sse = b"id: %d:%d\ndata: %s\n\n" % (
                self.partition,
                self.offset,
                j if j is not None else _json_encode(self.to_dict()),
            )
            if self._acct is not None:
                self._acct.encoded += len(s) + 48  # encoding_memory, inlined
        return s

    def __repr__(self) -> str:
        return f"Record({self.partition}:{self.offset} id={self.id!r} {len(self.payload)}B)"


def join_hot(records: list[Record], acct: HotAccount) -> tuple[int, int]:
    """Records entering a hot tail: each joins ``acct`` (:meth:`Record.join_account`);
    answers the sum of their :attr:`~Record.size` and of their :attr:`~Record.memory` --
    one loop, with the common record (an id, no key, no headers) weighed inline."""
    total = mem = 0
    extra = RECORD_MEMORY - RECORD_OVERHEAD
    for r in records:
        size = r.size
        total += size
        rid = r.id
        if rid is not None and r.key is None and not r.headers:
            mem += size + extra + len(rid)
        else:
            mem += r.memory
        r._acct = acct
        if r._json is not None or r._sse is not None:
            acct.encoded += r.encoded_memory()
    return total, mem


_KEY = struct.Struct(">IIQ")  # (the storage key layout, sprawl.storage.keys.record_key)


def storage_items(uid: int, partition: int, records: list[Record]) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` of every record as LMDB stores it -- the key of
    ``sprawl.storage.keys.record_key``, the value of :meth:`Record.to_storage`, byte for
    byte -- in one loop with every call bound once: the publish path's one per-record
    pass over the storage encoding (issue 16: the node's CPU per message)."""
    enc = _mp_encode
    head = _HEAD.pack
    key = _KEY.pack
    crc = crc32c
    out: list[tuple[bytes, bytes]] = []
    append = out.append
    for r in records:
        if r.control:
            append((key(uid, partition, r.offset), r.to_storage()))
            continue
        body = enc((r.timestamp, r.id, r.key, r.headers, r.payload, r.is_text))
        o = r.offset
        append((key(uid, partition, o), head(CHECKED, crc(body, (o ^ (o >> 32)) & _MASK)) + body))
    return out


def take_bytes(recs: list[Record], max_bytes: int) -> list[Record]:
    """The longest prefix of ``recs`` whose :attr:`~Record.size` sums to at
    most ``max_bytes`` -- but at least one record, so a single record larger
    than the budget is still delivered."""
    total = 0
    for i, r in enumerate(recs):
        total += r.size
        if total > max_bytes and i:
            return recs[:i]
    return recs


def pack_record(r: Record) -> list[Any]:
    """A record as msgpack-able fields (for forwarding)."""
    return [r.offset, r.partition, r.timestamp, r.id, r.key, r.headers, r.payload, r.is_text, r.control]


def unpack_record(t: list[Any]) -> Record:
    """Inverse of :func:`pack_record`."""
    off, p, ts, id_, key, headers, payload, is_text, control = t
    return Record(off, p, ts, id_, key, headers, payload, is_text, control=bool(control))
