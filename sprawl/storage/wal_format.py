"""The write-ahead log's bytes: frames and the LMDB ops they carry (pure, no I/O).

A frame is ``length u32 | crc32c u32 | seq u64 | body`` (big-endian), ``length`` the
body's bytes, the CRC32C over the 8 ``seq`` bytes and the body.  The body is a group's
LMDB ops: ``count u32`` then, per op, ``kind u8`` (1 put, 2 putmulti, 3 delete), ``db
u8`` (an index into the store's named databases) and its keys and values, each as
``length u32 | bytes``.  Every length is checked against the bytes that remain, so
damage is an error (:class:`WalFormatError`), never a short or a long read.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from crc32c import crc32c

#: length, crc, seq
HEAD = struct.Struct(">IIQ")
HEAD_BYTES = HEAD.size
#: The largest body a frame may carry (a bigger length is damage, not an allocation).
MAX_BODY = 256 * 1024**2

_U32 = struct.Struct(">I")
_OP = struct.Struct(">BB")
_SEQ = struct.Struct(">Q")

PUT, PUTMULTI, DELETE = 1, 2, 3
_KINDS = {"p": PUT, "m": PUTMULTI, "d": DELETE}


class WalFormatError(ValueError):
    """Bytes that are not a well-formed frame or body."""


def loggable(ops: Sequence[Any]) -> bool:
    """Whether every op can be carried by a frame (put, putmulti, delete)."""
    return all(op[0] in _KINDS for op in ops)


def encode_body(ops: Sequence[Any], db_index: dict[str, int]) -> bytes:
    """The body carrying ``ops`` (``("p", db, key, value)``, ``("m", db, [(key,
    value), ...])``, ``("d", db, key)``); ``db_index`` numbers the databases."""
    out: list[bytes] = [_U32.pack(len(ops))]
    append = out.append
    u32 = _U32.pack
    for op in ops:
        kind = _KINDS.get(op[0])
        if kind is None:
            raise ValueError(f"op {op[0]!r} cannot be logged")
        append(_OP.pack(kind, db_index[op[1]]))
        if kind == PUTMULTI:
            items = op[2]
            append(u32(len(items)))
            for k, v in items:
                append(u32(len(k)))
                append(k)
                append(u32(len(v)))
                append(v)
        else:
            k = op[2]
            append(u32(len(k)))
            append(k)
            if kind == PUT:
                v = op[3]
                append(u32(len(v)))
                append(v)
    return b"".join(out)


def decode_body(body: bytes, db_names: Sequence[str]) -> list[tuple[Any, ...]]:
    """Inverse of :func:`encode_body`; :class:`WalFormatError` on anything malformed
    (an unknown kind or database, a length past the end, bytes left over)."""
    mv = memoryview(body)
    n = len(body)
    pos = 0

    def u32() -> int:
        nonlocal pos
        if pos + 4 > n:
            raise WalFormatError(f"body cut short at byte {pos}")
        (v,) = _U32.unpack_from(mv, pos)
        pos += 4
        return int(v)

    def blob() -> bytes:
        nonlocal pos
        size = u32()
        if size > n - pos:
            raise WalFormatError(f"a length of {size} at byte {pos - 4} runs past the body ({n})")
        b = bytes(mv[pos : pos + size])
        pos += size
        return b

    count = u32()
    # Each op takes at least 6 bytes: a count past that is damage, not an allocation.
    if count > (n - pos) // 6:
        raise WalFormatError(f"{count} ops cannot fit in {n} bytes")
    ops: list[tuple[Any, ...]] = []
    for _ in range(count):
        if pos + 2 > n:
            raise WalFormatError(f"body cut short at byte {pos}")
        kind, db = _OP.unpack_from(mv, pos)
        pos += 2
        if db >= len(db_names):
            raise WalFormatError(f"unknown database {db} at byte {pos - 1}")
        name = db_names[db]
        if kind == PUT:
            k = blob()
            ops.append(("p", name, k, blob()))
        elif kind == PUTMULTI:
            m = u32()
            if m > (n - pos) // 8:
                raise WalFormatError(f"{m} items cannot fit in the body's {n - pos} bytes left")
            items = []
            for _i in range(m):
                k = blob()
                items.append((k, blob()))
            ops.append(("m", name, items))
        elif kind == DELETE:
            ops.append(("d", name, blob()))
        else:
            raise WalFormatError(f"unknown op kind {kind} at byte {pos - 2}")
    if pos != n:
        raise WalFormatError(f"{n - pos} bytes after the last op")
    return ops


def encode_frame(seq: int, body: bytes) -> bytes:
    """One frame: head and body."""
    if len(body) > MAX_BODY:
        raise ValueError(f"a frame body of {len(body)} bytes is over {MAX_BODY}")
    s = _SEQ.pack(seq)
    return HEAD.pack(len(body), crc32c(body, crc32c(s)), seq) + body


@dataclass
class Frame:
    """A sound frame found in a file: its ``seq``, body and byte range."""

    seq: int
    body: bytes
    start: int
    end: int


@dataclass
class FrameScan:
    """The sound frames at the start of some bytes, and where and why they stop.

    Segments are preallocated with zeros, so the frames end at the first all-zero
    head (no frame has seq 0) when only zeros follow it: ``problem`` None, ``stop``
    there.  Else ``stop`` is the offset of the first frame that is cut short
    (``"short"``), too long (``"length"``), fails its checksum (``"checksum"``) or is a
    zero head with data after it (``"zeros"``), and ``next_sound`` tells whether a
    sound frame of a later seq is found after it (damage in the middle, not a torn
    tail)."""

    frames: list[Frame]
    stop: int
    problem: str | None = None
    next_sound: bool = False


_ZERO_HEAD = bytes(HEAD_BYTES)
#: How many seqs past the last sound one a search for a later sound frame tries.
SOUND_SEARCH = 16


def _frame_at(data: bytes | memoryview, pos: int) -> tuple[str | None, int, int]:
    """(problem or None, seq, end) of the frame at ``pos``."""
    n = len(data)
    if n - pos < HEAD_BYTES:
        return "short", 0, n
    length, crc, seq = HEAD.unpack_from(data, pos)
    if length > MAX_BODY:
        return "length", seq, n
    end = pos + HEAD_BYTES + length
    if end > n:
        return "short", seq, n
    if crc32c(data[pos + HEAD_BYTES : end], crc32c(data[pos + 8 : pos + 16])) != crc:
        return "checksum", seq, end
    return None, seq, end


def _sound_after(data: bytes, mv: memoryview, stop: int, last: int | None, claimed_end: int) -> bool:
    """Whether a sound frame starts after ``stop``: where the damaged one claims to end,
    or anywhere (found by its seq) with one of the :data:`SOUND_SEARCH` seqs after
    ``last``."""
    n = len(data)
    if stop < claimed_end < n and _frame_at(mv, claimed_end)[0] is None:
        return True
    if last is None:
        return False
    for seq in range(last + 1, last + 1 + SOUND_SEARCH):
        pat = _SEQ.pack(seq)
        i = data.find(pat, stop + 1)
        while i != -1:
            at = i - 8
            if at > stop and _frame_at(mv, at)[0] is None and HEAD.unpack_from(mv, at)[2] == seq:
                return True
            i = data.find(pat, i + 1)
    return False


def scan_frames(data: bytes, first_seq: int | None = None) -> FrameScan:
    """The sound frames from the start of ``data`` (see :class:`FrameScan`);
    ``first_seq``: the seq the first frame should carry (helps tell damage in the
    middle from a torn tail)."""
    mv = memoryview(data)
    frames: list[Frame] = []
    pos = 0
    n = len(data)
    problem: str | None
    _seq = 0
    while pos < n:
        if mv[pos : pos + HEAD_BYTES] == _ZERO_HEAD[: n - pos]:
            if data.count(0, pos) == n - pos:
                return FrameScan(frames, pos)  # (the preallocated zeros)
            problem, end = "zeros", pos
        else:
            problem, _seq, end = _frame_at(mv, pos)
        if problem is not None:
            last = frames[-1].seq if frames else (first_seq - 1 if first_seq is not None else None)
            return FrameScan(frames, pos, problem, _sound_after(data, mv, pos, last, end))
        frames.append(Frame(_seq, bytes(mv[pos + HEAD_BYTES : end]), pos, end))
        pos = end
    return FrameScan(frames, pos)
