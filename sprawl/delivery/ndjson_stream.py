"""The ``ndjson`` stream format of ``GET .../stream?format=ndjson``: the SSE
stream's cursors, flow control and shared batch encoding, written as
newline-delimited JSON (``Content-Type: application/x-ndjson``) instead of SSE.

Every line is one JSON object, or blank (a keepalive):

* ``{"stream": NAME}`` -- first, once the stream is open;
* ``{"id": "P:OFFSET", "partition": P, "messages": [...]}`` -- a batch of one
  partition's messages (each as the default format shows it), ``id`` the last
  offset covered: send it as ``Last-Event-ID`` (or ``from=OFFSET+1``) to resume
  after it.  A line is at most the stream's ``max_bytes`` of messages (one
  message always fits, whatever its size);
* ``{"error": {"code", "message", ...}}`` -- last: the stream ends after it
  (``slow_consumer``, ``stopping``, ``token_expired``, ``topic_deleted``, ...).
"""

from __future__ import annotations

import msgspec

from sprawl.delivery.streams import SSEStream

_SSE_ERROR = b"event: error\ndata: "


class NdjsonStream(SSEStream):
    """An :class:`~sprawl.delivery.streams.SSEStream` framed as NDJSON (module docstring)."""

    #: NDJSON, not SSE.
    content_type = b"application/x-ndjson"

    def _preamble(self) -> bytes:
        """The line that says the stream is open."""
        return msgspec.json.encode({"stream": self.name}) + b"\n"

    def _waiting_note(self) -> None:
        """A blank line (a keepalive): the topic does not exist yet."""
        self.request.write(b"\n")

    def _keepalive(self) -> None:
        """A blank line keeps an idle connection alive."""
        self.request.write(b"\n")

    def _end(self, last: bytes) -> None:
        """End with the error line of ``last`` (an SSE ``error`` event, as the stream's
        paths build it)."""
        if last.startswith(_SSE_ERROR):
            last = b'{"error":' + last[len(_SSE_ERROR) :].strip() + b"}\n"
        else:
            last = b""
        super()._end(last)
