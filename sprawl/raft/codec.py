"""On-disk encoding of Raft's persistent state, with checksums (pure: no Twisted).

Every record the LMDB adapter (:mod:`sprawl.raft.lmdb_storage`) stores -- a
log entry, the hard state, the snapshot -- is framed as::

    kind (1 byte) | version (1 byte) | length (4 bytes, big-endian) | payload | crc32 (4 bytes, big-endian)

``payload`` is the msgpack encoding of the :mod:`msgspec` struct and the CRC32
(:func:`zlib.crc32`) covers everything before it (header and payload).  A record
whose length does not match its header is *torn*; one whose checksum, kind,
version or payload does not check out is *corrupt*.  Either way the decoders
raise :class:`CodecError` -- the only error they raise, whatever the input
bytes (a property the tests fuzz).

Key layout: the ``raft_log`` database is keyed by the entry index as 8 bytes
big-endian (so LMDB's byte order is index order); ``raft_meta`` holds
:data:`HARD_STATE_KEY`, :data:`SNAPSHOT_KEY` (the snapshot carries the
configuration as of its index -- or, for a big one, a :class:`SnapshotFile`
record naming the file beside LMDB that holds it) and :data:`CLUSTER_ID_KEY` (which cluster this
Raft state belongs to: 8 bytes big-endian, non-zero).  The lowest key of ``raft_log`` is the "dummy"
entry at the compaction point (index and term only), as ``MemoryStorage``'s
``_ents[0]``.
"""

from __future__ import annotations

import struct
import zlib
from typing import TypeVar

import msgspec

from sprawl.raft.messages import Entry, HardState, Snapshot, SnapshotMeta

#: Record kinds (the first byte of every record).
KIND_ENTRY = 0x45  # "E"
KIND_HARD_STATE = 0x48  # "H"
KIND_SNAPSHOT = 0x53  # "S"
KIND_CLUSTER_ID = 0x43  # "C"
KIND_SNAPSHOT_FILE = 0x46  # "F": a snapshot whose record is in a file beside LMDB

#: The only record format version so far.
VERSION = 1

_HEADER = struct.Struct(">BBI")
_CRC = struct.Struct(">I")
_INDEX = struct.Struct(">Q")

#: Bytes of framing around a payload.
OVERHEAD = _HEADER.size + _CRC.size

#: ``raft_meta`` keys.
HARD_STATE_KEY = b"hard_state"
SNAPSHOT_KEY = b"snapshot"
CLUSTER_ID_KEY = b"cluster_id"

#: A key above every ``raft_log`` key (the open end of a range delete).
LOG_KEY_END = b"\xff" * (_INDEX.size + 1)


class SnapshotFile(msgspec.Struct, frozen=True, array_like=True):
    """Where a snapshot too big to keep in LMDB is: the file ``name`` (in the
    storage's snapshot directory) holding its :func:`encode_snapshot` record,
    ``length`` bytes long, ``crc`` its CRC32; ``meta`` says what it covers."""

    meta: SnapshotMeta
    name: str
    length: int
    crc: int


T = TypeVar("T", Entry, HardState, Snapshot, SnapshotFile)

_decoders: dict[type, msgspec.msgpack.Decoder] = {  # type: ignore[type-arg]
    Entry: msgspec.msgpack.Decoder(Entry),
    HardState: msgspec.msgpack.Decoder(HardState),
    Snapshot: msgspec.msgpack.Decoder(Snapshot),
    SnapshotFile: msgspec.msgpack.Decoder(SnapshotFile),
}


class CodecError(ValueError):
    """A record is torn (wrong length) or corrupt (checksum, kind, version or payload)."""


class RaftStorageCorrupt(Exception):
    """Persisted Raft state failed verification on recovery; the node must not
    start from it.  ``what`` names the record (``"log"``, ``"hard_state"``,
    ``"snapshot"``), ``index`` the log index when it is a log entry."""

    def __init__(self, what: str, index: int | None, reason: str) -> None:
        """Record what failed, where and why (all in the message too)."""
        where = f"{what} index {index}" if index is not None else what
        super().__init__(f"raft storage corrupt at {where}: {reason}")
        self.what = what
        self.index = index
        self.reason = reason


# -- keys ---------------------------------------------------------------------


def log_key(index: int) -> bytes:
    """The ``raft_log`` key of ``index`` (8 bytes big-endian)."""
    return _INDEX.pack(index)


def parse_log_key(key: bytes) -> int:
    """Inverse of :func:`log_key`; :class:`CodecError` if it is not 8 bytes."""
    if len(key) != _INDEX.size:
        raise CodecError(f"log key of {len(key)} bytes")
    return int(_INDEX.unpack(key)[0])


# -- framing ------------------------------------------------------------------


def _frame(kind: int, payload: bytes) -> bytes:
    head = _HEADER.pack(kind, VERSION, len(payload))
    return head + payload + _CRC.pack(zlib.crc32(payload, zlib.crc32(head)))


def _unframe(kind: int, data: bytes) -> bytes:
    if len(data) < OVERHEAD:
        raise CodecError(f"torn record: {len(data)} bytes, shorter than its framing")
    k, version, length = _HEADER.unpack_from(data)
    if len(data) != OVERHEAD + length:
        raise CodecError(f"torn record: {len(data)} bytes, header says {OVERHEAD + length}")
    body = data[: _HEADER.size + length]
    (crc,) = _CRC.unpack_from(data, _HEADER.size + length)
    if zlib.crc32(body) != crc:
        raise CodecError("checksum mismatch")
    if k != kind:
        raise CodecError(f"record kind {k:#x}, expected {kind:#x}")
    if version != VERSION:
        raise CodecError(f"record version {version}, expected {VERSION}")
    return bytes(data[_HEADER.size : _HEADER.size + length])


def _decode(kind: int, typ: type[T], data: bytes) -> T:
    payload = _unframe(kind, data)
    try:
        value: T = _decoders[typ].decode(payload)
    except msgspec.DecodeError as e:
        raise CodecError(f"undecodable {typ.__name__}: {e}") from None
    return value


def _check_non_negative(what: str, *values: int) -> None:
    if any(v < 0 for v in values):
        raise CodecError(f"negative field in {what}")


# -- records ------------------------------------------------------------------


def encode_entry(e: Entry) -> bytes:
    """A log entry as a checksummed record."""
    return _frame(KIND_ENTRY, msgspec.msgpack.encode(e))


def decode_entry(data: bytes, index: int | None = None) -> Entry:
    """Inverse of :func:`encode_entry`; with ``index``, the entry must be at it."""
    e = _decode(KIND_ENTRY, Entry, data)
    _check_non_negative("entry", e.term, e.index)
    if index is not None and e.index != index:
        raise CodecError(f"entry says index {e.index}, stored under {index}")
    return e


def encode_hard_state(hs: HardState) -> bytes:
    """The hard state as a checksummed record."""
    return _frame(KIND_HARD_STATE, msgspec.msgpack.encode(hs))


def decode_hard_state(data: bytes) -> HardState:
    """Inverse of :func:`encode_hard_state`."""
    hs = _decode(KIND_HARD_STATE, HardState, data)
    _check_non_negative("hard state", hs.term, hs.vote, hs.commit)
    return hs


def encode_snapshot(snap: Snapshot) -> bytes:
    """A snapshot (metadata, configuration and data) as a checksummed record."""
    return _frame(KIND_SNAPSHOT, msgspec.msgpack.encode(snap))


def decode_snapshot(data: bytes) -> Snapshot:
    """Inverse of :func:`encode_snapshot`."""
    snap = _decode(KIND_SNAPSHOT, Snapshot, data)
    _check_non_negative("snapshot", snap.meta.index, snap.meta.term)
    return snap


def encode_snapshot_file(ref: SnapshotFile) -> bytes:
    """Where a snapshot's record is (a file) as a checksummed record."""
    return _frame(KIND_SNAPSHOT_FILE, msgspec.msgpack.encode(ref))


def decode_snapshot_file(data: bytes) -> SnapshotFile:
    """Inverse of :func:`encode_snapshot_file`."""
    ref = _decode(KIND_SNAPSHOT_FILE, SnapshotFile, data)
    _check_non_negative("snapshot file", ref.meta.index, ref.meta.term, ref.length, ref.crc)
    if not ref.name or "/" in ref.name or ref.name.startswith("."):
        raise CodecError(f"bad snapshot file name {ref.name[:80]!r}")
    return ref


def is_snapshot_file(data: bytes) -> bool:
    """Whether a stored ``snapshot`` record names a file (:func:`encode_snapshot_file`)
    rather than holding the snapshot (:func:`encode_snapshot`)."""
    return bool(data) and data[0] == KIND_SNAPSHOT_FILE


def crc(data: bytes) -> int:
    """The CRC32 a :class:`SnapshotFile` records of its file."""
    return zlib.crc32(data)


def encode_cluster_id(cluster_id: int) -> bytes:
    """A cluster id (1 .. 2**64-1) as a checksummed record."""
    if not 0 < cluster_id < 1 << 64:
        raise ValueError(f"cluster id {cluster_id} out of range")
    return _frame(KIND_CLUSTER_ID, _INDEX.pack(cluster_id))


def decode_cluster_id(data: bytes) -> int:
    """Inverse of :func:`encode_cluster_id` (:class:`CodecError` otherwise)."""
    payload = _unframe(KIND_CLUSTER_ID, data)
    if len(payload) != _INDEX.size:
        raise CodecError(f"cluster id of {len(payload)} bytes")
    value = int(_INDEX.unpack(payload)[0])
    if value == 0:
        raise CodecError("cluster id 0")
    return value
