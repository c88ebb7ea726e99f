"""Key layouts of the LMDB tier.  Pure: no Twisted, no LMDB import."""

from __future__ import annotations

import struct

_REC = struct.Struct(">IIQ")
_PART = struct.Struct(">II")


def record_key(uid: int, partition: int, offset: int) -> bytes:
    """Records sort by topic uid, partition, offset (big-endian)."""
    return _REC.pack(uid, partition, offset)


def parse_record_key(key: bytes) -> tuple[int, int, int]:
    """Inverse of :func:`record_key`."""
    return _REC.unpack(key)


def segment_key(uid: int, partition: int, base: int) -> bytes:
    """Segments are keyed like records, by their base offset."""
    return _REC.pack(uid, partition, base)


def partition_prefix(uid: int, partition: int) -> bytes:
    """The prefix every record and segment key of one partition starts with."""
    return _PART.pack(uid, partition)


def topic_prefix(uid: int) -> bytes:
    """The prefix every record and segment key of one topic starts with."""
    return struct.pack(">I", uid)


def topic_meta_key(name: str) -> bytes:
    """Where a topic's configuration lives in the meta DB."""
    return b"topic/" + name.encode()


def group_meta_key(uid: int, group: str) -> bytes:
    """Where a consumer group's state lives in the meta DB."""
    return b"group/" + struct.pack(">I", uid) + group.encode()


def partition_meta_key(uid: int, partition: int) -> bytes:
    """Where a partition's log start / end checkpoint lives in the meta DB."""
    return b"part/" + _PART.pack(uid, partition)


def manifest_key(uid: int, partition: int) -> bytes:
    """Where a partition's S3 manifest lives in the meta DB."""
    return b"s3m/" + _PART.pack(uid, partition)


def replica_state_key(uid: int, partition: int) -> bytes:
    """Where a replicated partition's replica state (epoch runs, fenced and
    led epochs, high watermark) lives in the meta DB."""
    return b"repl/" + _PART.pack(uid, partition)


def damage_key(uid: int, partition: int) -> bytes:
    """Where a partition's damaged and skipped ranges live in the meta DB."""
    return b"dmg/" + _PART.pack(uid, partition)
