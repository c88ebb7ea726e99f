"""The HTTP server side: a request class that bounds bodies, and the Site.

Bodies are held in memory up to ``max_body`` bytes; past that the rest is
read and discarded and the request answered 413 with the JSON error shape,
so an oversize upload costs the node no memory and hurts no other request.
"""

from __future__ import annotations

import io
from typing import Any

import msgspec
from twisted.web.resource import IResource
from twisted.web.server import Request, Site


class BoundedRequest(Request):
    """A :class:`twisted.web.server.Request` with a body size limit."""

    max_body = 8 * 1000**2
    metrics: Any = None
    _oversize = False
    _received = 0

    def __init__(self, *args: Any, **kw: Any) -> None:
        # Form bodies are message payloads here, never request arguments: no
        # multipart parsing (memory, and a bare 400 without the JSON shape).
        kw.setdefault("parsePOSTFormSubmission", False)
        super().__init__(*args, **kw)

    def gotLength(self, length: int | None) -> None:
        """Keep bodies in memory (never a temp file); flag declared oversize."""
        if length is not None and length > self.max_body:
            self._oversize = True
        self.content = io.BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        """Accumulate up to ``max_body`` bytes; discard the rest."""
        if self._oversize:
            return
        self._received += len(data)
        if self._received > self.max_body:
            self._oversize = True
            self.content = io.BytesIO()
            return
        assert self.content is not None
        self.content.write(data)

    def process(self) -> None:
        """Answer 413 for oversize bodies without routing them."""
        if self._oversize:
            if self.metrics is not None:
                self.metrics.rejected_requests.labels("oversize").inc()
            self.setResponseCode(413)
            self.setHeader(b"content-type", b"application/json")
            self.setHeader(b"connection", b"close")
            self.write(
                msgspec.json.encode(
                    {
                        "error": {
                            "code": "payload_too_large",
                            "message": f"request body exceeds {self.max_body} bytes",
                        }
                    }
                )
            )
            self.finish()
            return
        super().process()


class QuietSite(Site):
    """A Site without a per-request access log line (the hot path stays quiet;
    request counts and latencies are in /metrics)."""

    access_log = False

    def buildProtocol(self, addr: Any) -> Any:
        """Connections send small frames (acks, SSE events) at once: no Nagle delay."""
        proto = super().buildProtocol(addr)
        if proto is None:
            return None
        make_connection = proto.makeConnection

        def with_nodelay(transport: Any) -> None:
            set_nodelay = getattr(transport, "setTcpNoDelay", None)
            if set_nodelay is not None:
                try:
                    set_nodelay(True)
                except OSError:
                    pass
            make_connection(transport)

        proto.makeConnection = with_nodelay
        return proto

    def log(self, request: Any) -> None:
        """Write an access-log line only when asked for."""
        if self.access_log:
            super().log(request)


def make_site(
    resource: IResource,
    *,
    max_body: int,
    metrics: Any = None,
    timeout: float = 75.0,
    access_log: bool = False,
) -> Site:
    """A Site whose requests bound their bodies and whose idle connections time out."""

    class _Request(BoundedRequest):
        pass

    _Request.max_body = max_body
    _Request.metrics = metrics
    site = QuietSite(resource, requestFactory=_Request, timeout=timeout)
    site.access_log = access_log
    site.displayTracebacks = False
    site.noisy = False
    return site
