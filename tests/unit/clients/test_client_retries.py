"""The Twisted client's retry rules on a fake clock and a stub HTTP server (``StubTreq``):
a 429 is sent again after its ``Retry-After`` (waited on the injected clock, bounded), a 503
makes an idempotent request try the next node, and a publish without ids is not sent twice."""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet import task
from twisted.web.resource import Resource

from sprawl.client.errors import ClientError
from sprawl.client.txclient import TxSprawlClient

ANSWER = {
    "offsets": [0],
    "ids": ["i"],
    "partitions": [0],
    "duplicates": [False],
    "acks": "quorum",
    "stored": "lmdb",
}


class Scripted(Resource):
    """Answers each request with the next ``(status, headers)`` of a script (then 200)."""

    isLeaf = True

    def __init__(self, script: list[tuple[int, dict[str, str]]]) -> None:
        super().__init__()
        self.script = list(script)
        self.hosts: list[bytes] = []

    def render(self, request: Any) -> bytes:
        self.hosts.append(request.getHeader(b"host"))
        status, headers = self.script.pop(0) if self.script else (200, {})
        request.setResponseCode(status)
        for k, v in headers.items():
            request.setHeader(k.encode(), v.encode())
        if status == 200:
            return json.dumps(ANSWER).encode()
        return json.dumps({"error": {"code": "busy", "message": f"status {status}"}}).encode()


def client(
    resource: Resource, clock: task.Clock, urls: list[str] | None = None
) -> tuple[TxSprawlClient, StubTreq]:
    """A TxSprawlClient on ``clock`` whose HTTP goes to ``resource``."""
    c = TxSprawlClient(urls or ["http://a.test"], reactor=clock)
    stub = StubTreq(resource)
    c._http = stub  # type: ignore[assignment]
    return c, stub


def test_429_is_retried_after_retry_after_on_the_clock() -> None:
    """Two 429s with Retry-After 2: the answer comes only after the clock moved 4 s."""
    clock = task.Clock()
    res = Scripted([(429, {"Retry-After": "2"}), (429, {"Retry-After": "2"})])
    c, stub = client(res, clock)
    results: list[Any] = []
    c.publish("t", "x", id="i").addBoth(results.append)
    for _ in range(2):
        stub.flush()
        assert results == []
        clock.advance(2)
    stub.flush()
    assert results and results[0].offsets == [0] and len(res.hosts) == 3


def test_429_gives_up_after_the_bound() -> None:
    """Past MAX_429_RETRIES the 429 is the caller's error."""
    clock = task.Clock()
    c, stub = client(Scripted([(429, {"Retry-After": "1"})] * 10), clock)
    results: list[Any] = []
    c.list_topics().addBoth(results.append)
    for _ in range(10):
        stub.flush()
        clock.advance(1)
    stub.flush()
    assert len(results) == 1 and isinstance(results[0].value, ClientError)


def test_503_moves_an_idempotent_request_to_the_next_node() -> None:
    """A read answered 503 goes to the next URL; a publish without ids does not."""
    clock = task.Clock()
    res = Scripted([(503, {})])
    c, stub = client(res, clock, ["http://a.test", "http://b.test"])
    results: list[Any] = []
    c.publish("t", "x", id="i").addBoth(results.append)  # ids: safe to send again
    stub.flush()
    assert results[0].offsets == [0] and res.hosts == [b"a.test", b"b.test"]
    assert c.urls[0] == "http://b.test"
    res.script = [(503, {})]
    results.clear()
    c.publish("t", "no id").addBoth(results.append)
    stub.flush()
    assert isinstance(results[0].value, ClientError) and "busy" in str(results[0].value)
    assert res.hosts[2:] == [b"b.test"]  # sent once, to the node tried first
