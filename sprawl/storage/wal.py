"""The node's write-ahead log on disk: segments of frames, one ``fdatasync`` per append.

Blocking file I/O, called from one thread at a time (the store's WAL thread, or the
store's ``open`` before any thread runs).  The frames' bytes are
:mod:`sprawl.storage.wal_format`'s; how the store uses the log is in
:mod:`sprawl.storage.lmdb` and docs/architecture.md ("The write-ahead log").

Files: ``wal-<first seq, 16 hex digits>.log`` in one directory; frames in ``seq`` order,
each segment's first frame carrying the ``seq`` of its name, ``seq`` +1 per frame across
the files.  At :meth:`WriteAheadLog.recover` a torn tail (the last segment's last frame
cut short, or failing its checksum with no sound frame after it) is cut off; any other
damage raises :class:`WalDamaged`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from twisted.logger import Logger

from sprawl.storage.wal_format import Frame, encode_frame, scan_frames

log = Logger()

#: A new segment once the current one holds this many bytes.
SEGMENT_BYTES = 64 * 1024**2

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
        self._size = 0
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
        for i, first in enumerate(firsts):
            fn = self._file(first)
            with open(fn, "rb") as f:
                data = f.read()
            scan = scan_frames(data)
            last = i == len(firsts) - 1
            if scan.problem is not None:
                if not last or scan.next_sound:
                    after = "sound frames follow it" if scan.next_sound else "a later segment follows"
                    raise WalDamaged(
                        f"{fn}: the frame at byte {scan.stop} is damaged ({scan.problem}) and {after}"
                    )
                log.warn(
                    "write-ahead log {file}: cut a torn tail of {n} bytes at byte {at} ({why})",
                    file=fn,
                    n=len(data) - scan.stop,
                    at=scan.stop,
                    why=scan.problem,
                )
                with open(fn, "r+b") as f:
                    f.truncate(scan.stop)
                    f.flush()
                    os.fsync(f.fileno())
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
        self._open_active(ends[-1] if ends else None)

    def _open_active(self, end: int | None) -> None:
        if self.segments and end == self.next_seq:
            fn = self._file(self.segments[-1])
            self._fd = os.open(fn, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._size = os.fstat(self._fd).st_size
        else:
            self._roll()

    def _roll(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        first = self.next_seq
        self._fd = os.open(self._file(first), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = 0
        if not self.segments or self.segments[-1] != first:
            self.segments.append(first)
        _fsync_dir(self.path)  # the new file's name is durable before a frame in it is acked

    # -- appending -----------------------------------------------------------------

    def append(self, body: bytes) -> int:
        """Append one frame carrying ``body`` and ``fdatasync`` it; its seq."""
        if self.broken is not None:
            raise self.broken
        if self._fd is None:
            raise RuntimeError("the write-ahead log is not open")
        seq = self.next_seq
        frame = encode_frame(seq, body)
        if self._size > 0 and self._size + len(frame) > self.segment_bytes:
            self._roll()
        fd = self._fd
        assert fd is not None
        try:
            view = memoryview(frame)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fdatasync(fd)
        except OSError as e:
            # A frame may be half written: cut it, or refuse every later append.
            try:
                os.ftruncate(fd, self._size)
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
        """Bytes of the segments on disk (the current one exactly, the others by stat)."""
        total = self._size
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
