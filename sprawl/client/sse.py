"""The server-sent-events parser of every Sprawl client (``text/event-stream``, as a node's
``GET /v1/topics/{topic}/stream`` sends it): ``data``, ``event`` and ``id`` fields; comments
are skipped (or kept, ``keep_comments``), the last ``retry`` is kept (:attr:`SseParser.retry`);
an event ends at a blank line.

:class:`SseParser` is fed bytes as they arrive (any split); :func:`sse_events` parses a
stream given as lines.  The bench's subscribers do not decode events at all (they pull
timestamps out of raw blocks, :mod:`sprawl.client.bench.subscribers`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sprawl.client.lines import BoundedSplitter

#: The longest line a parser keeps while waiting for its end (a bound on a hostile stream).
MAX_LINE_BYTES = 16 * 1024 * 1024


@dataclass
class SseEvent:
    """One server-sent event."""

    event: str
    id: str | None
    data: str


class SseParser:
    """Incremental SSE parser: :meth:`feed` bytes, get the events they complete."""

    def __init__(self, max_line: int = MAX_LINE_BYTES, *, keep_comments: bool = False) -> None:
        self.max_line = max_line
        #: The comment lines seen, without their ``:`` (with ``keep_comments``; else None).
        self.comments: list[str] | None = [] if keep_comments else None
        self._lines = BoundedSplitter(
            b"\n", max_line, lambda: ValueError(f"SSE line longer than {max_line} bytes")
        )
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        #: The reconnection time the stream asked for last (its ``retry`` field, milliseconds), if any.
        self.retry: str | None = None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """The events ``chunk`` completes, in order."""
        out: list[SseEvent] = []
        for raw in self._lines.feed(chunk):
            event = self.line(raw)
            if event is not None:
                out.append(event)
        return out

    def line(self, raw: bytes) -> SseEvent | None:
        """Take one line (without or with its line end); the event it ends, if any."""
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            event = None
            if self._data:
                event = SseEvent(self._event or "message", self._id, "\n".join(self._data))
            self._data, self._event, self._id = [], "", None
            return event
        if line.startswith(":"):
            if self.comments is not None:
                self.comments.append(line[1:].strip())
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        elif name == "retry":
            self.retry = value
        return None


def sse_events(lines: Iterable[bytes]) -> Iterator[SseEvent]:
    """Parse an SSE byte stream given as lines (comments and retry fields are skipped)."""
    parser = SseParser()
    for raw in lines:
        event = parser.line(raw)
        if event is not None:
            yield event
