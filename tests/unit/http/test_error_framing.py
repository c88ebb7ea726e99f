"""Every JSON error of a streaming route is framed like every other JSON error:
with ``Content-Length``, never ``Transfer-Encoding: chunked``.

A streaming route (SSE, WebSocket, the dashboard feed) answers its errors
outside the JSON-rendering wrapper the other routes share, so each one is
checked here over a real loopback HTTP/1.1 connection (the framing is what
goes on the wire; an in-process client would not see it).  The node is the
in-process one of test_streams (real LMDB, a task.Clock; its ``server``
fixture, imported by name).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from harness import bounded, the_reactor
from harness.inproc_sse import Server
from harness.inproc_sse import server as server
from sprawl.http import dashboard as dashboard_ui

WS_HEADERS = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


class RawHTTP11(Protocol):
    """Sends one HTTP/1.1 request and keeps every byte of the answer until the
    server closes the connection (``Connection: close``) or the body is complete."""

    def __init__(self, method: str, path: str, headers: dict[str, str]):
        self.method, self.path, self.headers = method, path, headers
        self.data = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        lines = [f"{self.method} {self.path} HTTP/1.1", "Host: 127.0.0.1"]
        hdrs = {"Connection": "close", **self.headers}
        lines += [f"{k}: {v}" for k, v in hdrs.items()]
        if self.method != "GET":
            lines.append("Content-Length: 0")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        head, sep, body = self.data.partition(b"\r\n\r\n")
        for line in head.split(b"\r\n")[1:] if sep else ():
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length" and len(body) >= int(v):
                # Complete (a request with "Connection: Upgrade" keeps the connection open).
                self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(self.data)


async def raw(
    server: Server, method: str, path: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """The answer's status, headers (lower-case names) and body, as they came off the wire."""
    p = RawHTTP11(method, path, headers or {})
    ep = TCP4ClientEndpoint(the_reactor(), "127.0.0.1", server.port.getHost().port)
    await bounded(connectProtocol(ep, p))
    data = await bounded(p.done)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    hdrs: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return {"status": int(lines[0].split()[1]), "headers": hdrs, "body": body}


def assert_framed(answer: dict[str, Any], status: int, code: str) -> None:
    """The documented error shape, with a Content-Length that matches the body and no chunking."""
    assert answer["status"] == status, answer
    h = answer["headers"]
    assert "transfer-encoding" not in h, answer
    assert h.get("content-type") == "application/json", answer
    assert int(h["content-length"]) == len(answer["body"]), answer
    assert json.loads(answer["body"])["error"]["code"] == code, answer


@pytest_twisted.ensureDeferred
async def test_stream_route_errors_have_a_content_length(server: Server) -> None:
    """``GET .../stream``: a missing topic where auto-create is off (404), a missing partition
    (404), a bad query (400) and a wrong method (405) all carry ``Content-Length``."""
    await server.publish("t", ["m"])
    assert_framed(await raw(server, "GET", "/v1/topics/t/stream?partition=7"), 404, "partition_not_found")
    assert_framed(await raw(server, "GET", "/v1/topics/t/stream?from=soon"), 400, "invalid_parameter")
    assert_framed(await raw(server, "POST", "/v1/topics/t/stream"), 405, "method_not_allowed")
    assert_framed(
        await raw(server, "GET", "/v1/topics/t/stream", {"Last-Event-ID": "x"}), 400, "invalid_last_event_id"
    )
    server.broker.config.auto_create_topics = False  # as --no-auto-create
    assert_framed(await raw(server, "GET", "/v1/topics/nothing/stream"), 404, "topic_not_found")


@pytest_twisted.ensureDeferred
async def test_websocket_route_errors_have_a_content_length(server: Server) -> None:
    """``GET .../ws``: the errors answered before the upgrade (missing topic or group, bad query,
    no ``Upgrade`` header) carry ``Content-Length``, with and without the upgrade headers."""
    await server.publish("t", ["m"])
    for headers in (WS_HEADERS, {}):
        assert_framed(
            await raw(server, "GET", "/v1/topics/t/ws?group=nobody", headers), 404, "group_not_found"
        )
        assert_framed(await raw(server, "GET", "/v1/topics/t/ws?from=-1", headers), 400, "invalid_parameter")
        assert_framed(
            await raw(server, "GET", "/v1/topics/t/ws?partition=7", headers), 404, "partition_not_found"
        )
        assert_framed(await raw(server, "GET", "/v1/topics/none/ws?group=g", headers), 404, "topic_not_found")
    assert_framed(await raw(server, "GET", "/v1/topics/t/ws"), 426, "upgrade_required")
    server.broker.config.auto_create_topics = False
    assert_framed(await raw(server, "GET", "/v1/topics/nothing/ws", WS_HEADERS), 404, "topic_not_found")


@pytest_twisted.ensureDeferred
async def test_dashboard_stream_refusal_has_a_content_length(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``GET /v1/dashboard/stream`` past its cap answers 503 with ``Content-Length``."""
    monkeypatch.setattr(dashboard_ui, "MAX_STREAMS", 0)
    assert_framed(await raw(server, "GET", "/v1/dashboard/stream"), 503, "too_many_dashboards")
