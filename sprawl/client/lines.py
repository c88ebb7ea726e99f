"""The bounded splitting the clients' stream decoders share: bytes fed as they
arrive (split anywhere) cut into the pieces between separators -- SSE lines
(:class:`sprawl.client.sse.SseParser`), SSE events
(:class:`sprawl.client.wire.BatchStreamDecoder`), NDJSON lines
(:class:`sprawl.client.wire.NdjsonStreamDecoder`) -- keeping at most a bound of
bytes of the unfinished piece (a hostile stream never grows the buffer)."""

from __future__ import annotations

from collections.abc import Callable


class BoundedSplitter:
    """Cuts a byte stream at ``sep``; the unfinished piece kept is at most ``limit`` bytes.

    ``crlf``: CRLF line ends are read as LF first (SSE allows both).  ``too_long``
    makes the exception raised when the unfinished piece passes ``limit``."""

    def __init__(
        self, sep: bytes, limit: int, too_long: Callable[[], Exception], *, crlf: bool = False
    ) -> None:
        self.sep = sep
        self.limit = limit
        self.too_long = too_long
        self.crlf = crlf
        self._buf = b""

    @property
    def pending(self) -> int:
        """Bytes of the unfinished piece kept (at most ``limit``)."""
        return len(self._buf)

    def feed(self, chunk: bytes) -> list[bytes]:
        """The pieces ``chunk`` completes (without their separator), in order; the
        unfinished rest is kept, and ``too_long()`` raised if it passes the limit
        (then the chunk's finished pieces are not handed out either)."""
        buf = self._buf + chunk if self._buf else chunk
        if self.crlf and b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        sep, step = self.sep, len(self.sep)
        out: list[bytes] = []
        start = 0
        while True:
            end = buf.find(sep, start)
            if end < 0:
                break
            out.append(buf[start:end])
            start = end + step
        self._buf = buf[start:]
        if len(self._buf) > self.limit:
            raise self.too_long()
        return out
