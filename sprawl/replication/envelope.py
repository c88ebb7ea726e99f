"""The replication frame: a message about one partition, with the records it carries."""

from __future__ import annotations

from typing import Any

import msgspec

from sprawl.log.record import Record


class Envelope(msgspec.Struct, frozen=True, array_like=True):
    topic: str
    partition: int
    message: bytes
    records: list[tuple[int, int, str | None, str | None, dict[str, str] | None, bytes, bool, bool]] = []


def pack_record(r: Record) -> Any:
    return (r.offset, r.timestamp, r.id, r.key, r.headers, r.payload, r.is_text, r.control)


def unpack_record(t: Any, partition: int) -> Record:
    offset, ts, id_, key, headers, payload, is_text, control = t
    return Record(offset, partition, ts, id_, key, headers, payload, is_text, control=bool(control))


def record_bytes(r: Record) -> int:
    """About how many bytes a record takes in a replication frame."""
    n = len(r.payload) + 48 + len(r.id or "") + len(r.key or "")
    if r.headers:
        n += sum(len(k) + len(v) + 4 for k, v in r.headers.items())
    return n
