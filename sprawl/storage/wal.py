"""The node's write-ahead log on disk: segments of frames, one ``fdatasync`` per append.

Blocking file I/O, called from one thread at a time (the store's WAL thread, or the
store's ``open`` before any thread runs).  The frames' bytes are
:mod:`sprawl.storage.wal_format`'s; how the store uses the log is in
:mod:`sprawl.storage.lmdb` and docs/architecture.md ("The write-ahead log").

Files: ``wal-<first seq, 16 hex digits>.log`` in one directory, each made at its full
size and zero-filled (:data:`SEGMENT_BYTES`); frames in ``seq`` order from its start, the
zeros after them, each segment's first frame carrying the ``seq`` of its name, ``seq`` +1
per frame across the files.  At :meth:`WriteAheadLog.recover` a torn tail (the last
segment's last frame cut short or failing its checksum, with no sound frame of a later
seq after it) is zeroed; any other damage raises :class:`WalDamaged`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from twisted.logger import Logger

from sprawl.storage.wal_format import Frame, encode_frame, scan_frames

log = Logger()

#: A segment's size: each is made this big, zero-filled, before its first frame, so an
#: append overwrites blocks the file already has and its ``fdatasync`` writes the data
#: alone -- appending to a growing file makes ext4 commit its journal too (the new
#: size), a second synchronous write per ack.
SEGMENT_BYTES = 8 * 1024**2
_ZEROS = bytes(1024**2)

_PREFIX, _SUFFIX = "wal-", ".log"


class WalDamaged(Exception):
    """The log holds damage that is not a torn tail (acknowledged writes may be in it)."""


def segment_name(first_seq: int) -> str:
    """The file name of the segment whose first frame is ``first_seq``."""
    return f"{_PREFIX}{first_seq:016x}{_SUFFIX}"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteAheadLog:
    """Append frames durably; find the frames LMDB does not hold yet; drop the rest."""

    def __init__(self, path: str, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.path = path
        self.segment_bytes = segment_bytes
        #: First seqs of the segments on disk, in order (the last one is appended to).
        self.segments: list[int] = []
        #: The seq the next append gets.
        self.next_seq = 1
        self._fd: int | None = None
        #: Where the next frame goes in the current segment, and the segment's size.
        self._size = 0
        self._capacity = 0
        self.appends = 0
        self.bytes_written = 0
        #: Set when an append failed part-way: no later frame may follow a torn one.
        self.broken: Exception | None = None

    # -- start ---------------------------------------------------------------------

    def _list(self) -> list[int]:
        out = []
        for name in os.listdir(self.path):
            if name.startswith(_PREFIX) and name.endswith(_SUFFIX):
                try:
                    out.append(int(name[len(_PREFIX) : -len(_SUFFIX)], 16))
                except ValueError:
                    raise WalDamaged(f"unexpected file {name!r} in the log {self.path}") from None
        return sorted(out)

    def _file(self, first: int) -> str:
        return os.path.join(self.path, segment_name(first))

    def recover(self, applied: int) -> Iterator[Frame]:
        """Check every segment (cutting a torn tail), then yield, in order, the frames
        past ``applied`` (the last seq LMDB holds); afterwards the log is open for
        appends.  :class:`WalDamaged` on damage that is not a torn tail, or a frame
        missing in the seq run."""
        os.makedirs(self.path, exist_ok=True)
        firsts = self._list()
        ends: list[int] = []  # per segment, the seq after its last frame
        stop = 0  # (the last segment's end of sound frames)
        for i, first in enumerate(firsts):
            fn = self._file(first)
            with open(fn, "rb") as f:
                data = f.read()
            scan = scan_frames(data, first)
            last = i == len(firsts) - 1
            if scan.problem is not None:
                if not last or scan.next_sound:
                    after = "sound frames follow it" if scan.next_sound else "a later segment follows"
                    raise WalDamaged(
                        f"{fn}: the frame at byte {scan.stop} is damaged ({scan.problem}) and {after}"
                    )
                log.warn(
                    "write-ahead log {file}: cut a torn tail at byte {at} ({why}): zeroed to the end",
                    file=fn,
                    at=scan.stop,
                    why=scan.problem,
                )
                with open(fn, "r+b") as f:
                    f.seek(scan.stop)
                    left = len(data) - scan.stop
                    while left > 0:
                        f.write(_ZEROS[: min(left, len(_ZEROS))])
                        left -= len(_ZEROS)
                    f.flush()
                    os.fsync(f.fileno())
            stop = scan.stop
            if ends and first != ends[-1]:
                raise WalDamaged(
                    f"{fn}: the segment starts at seq {first}, the one before ends at {ends[-1] - 1}"
                )
            if not scan.frames and not last:
                raise WalDamaged(f"{fn}: the segment holds no frame and is not the last")
            seq = first
            for fr in scan.frames:
                if fr.seq != seq:
                    raise WalDamaged(f"{fn}: the frame at byte {fr.start} has seq {fr.seq}, expected {seq}")
                seq += 1
            ends.append(seq)
        if firsts and firsts[0] > applied + 1 and ends[-1] > firsts[0]:
            raise WalDamaged(
                f"{self.path}: LMDB holds the frames up to seq {applied} but the log starts at {firsts[0]}"
            )
        self.segments = firsts
        self.next_seq = max(ends[-1] if ends else 1, applied + 1)
        for first, end in zip(firsts, ends, strict=True):
            if end - 1 <= applied:
                continue
            with open(self._file(first), "rb") as f:
                data = f.read()
            for fr in scan_frames(data).frames:
                if fr.seq > applied:
                    yield fr
        if self.segments and ends[-1] == self.next_seq:
            fn = self._file(self.segments[-1])
            self._fd = os.open(fn, os.O_RDWR)
            self._size = stop
            self._capacity = os.fstat(self._fd).st_size
        else:
            self._roll(0)

    def _roll(self, frame_bytes: int) -> None:
        """Start a new segment at the next seq: made at its full size, zero-filled and
        synced (its name too) before a frame in it is acked."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        first = self.next_seq
        size = max(self.segment_bytes, frame_bytes)
        fn = self._file(first)
        fd = os.open(fn, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            left = size
            while left > 0:
                left -= os.write(fd, _ZEROS[: min(left, len(_ZEROS))])
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._size = 0
        self._capacity = size
        if not self.segments or self.segments[-1] != first:
            self.segments.append(first)
        _fsync_dir(self.path)

    # -- appending -----------------------------------------------------------------

    def append(self, body: bytes) -> int:
        """Append one frame carrying ``body`` and ``fdatasync`` it; its seq."""
        if self.broken is not None:
            raise self.broken
        if self._fd is None:
            raise RuntimeError("the write-ahead log is not open")
        seq = self.next_seq
        frame = encode_frame(seq, body)
        if self._size + len(frame) > self._capacity:
            self._roll(len(frame))
        fd = self._fd
        assert fd is not None
        try:
            view = memoryview(frame)
            at = self._size
            while view:
                n = os.pwrite(fd, view, at)
                view = view[n:]
                at += n
            os.fdatasync(fd)
        except OSError as e:
            # A frame may be half written: zero it, or refuse every later append.
            try:
                os.pwrite(fd, bytes(len(frame)), self._size)
                os.fdatasync(fd)
            except OSError:
                self.broken = e
            raise
        self._size += len(frame)
        self.next_seq = seq + 1
        self.appends += 1
        self.bytes_written += len(frame)
        return seq

    # -- dropping ------------------------------------------------------------------

    def release(self, applied: int) -> int:
        """Delete the segments whose every frame is at or below ``applied`` (never the
        one being appended to); how many were deleted."""
        segs = self.segments
        n = 0
        while len(segs) > 1 and segs[1] - 1 <= applied:
            os.unlink(self._file(segs.pop(0)))
            n += 1
        if n:
            _fsync_dir(self.path)
        return n

    @property
    def size_bytes(self) -> int:
        """Bytes of the segments on disk (preallocated: their full sizes)."""
        total = self._capacity
        for first in self.segments[:-1]:
            try:
                total += os.stat(self._file(first)).st_size
            except OSError:
                pass
        return total

    def close(self) -> None:
        """Close the current segment."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
