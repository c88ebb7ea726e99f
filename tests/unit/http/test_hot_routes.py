"""The hot routes' own router (:mod:`sprawl.http.hot`): it serves exactly what Klein would
route to publish, fetch and stream, nothing else, and behaves as Klein did for them."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from klein.resource import KleinResource
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from harness.inproc_http import Node, node  # noqa: F401  (the fixture)
from sprawl.http import hot
from sprawl.http.api import SprawlAPI
from sprawl.http.authz import route_of


class _Req:
    """What both routers read of a request: its method and its path segments, percent-decoded
    as twisted.web's ``Request.process`` decodes them."""

    def __init__(self, method: bytes, path: bytes):
        self.method = method
        self.postpath = [unquote_to_bytes(s) for s in path[1:].split(b"/")]


_segments = st.one_of(
    st.sampled_from(
        ["v1", "topics", "messages", "stream", "ws", "", "t", "a.b-c_d", "%2F", "%2f", "%25", "%41"]
    ),
    st.text(min_size=0, max_size=6),
)
_methods = st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH"])


@given(
    method=_methods,
    topic=_segments,
    tail=st.lists(_segments, min_size=0, max_size=2),
    head=st.sampled_from([["v1", "topics"], ["v1", "topics", ""], ["v1"], ["", "v1", "topics"]]),
)
@settings(max_examples=400, deadline=None)
def test_the_hot_router_matches_what_klein_routes(
    method: bytes, topic: str, tail: list[str], head: list[str]
) -> None:
    """Wherever the hot router answers, Klein's route table names the same route and topic;
    and every publish, fetch or stream Klein routes from a plain path (no empty segment, no
    encoded slash: werkzeug merges those) is hot, HEAD aside (Klein serves it)."""
    path = ("/" + "/".join([*head, topic, *tail])).encode("utf-8")
    req: Any = _Req(method, path)
    mine = hot.match(req)
    klein = route_of(SprawlAPI.app, req)
    if mine is not None:
        assert klein == (mine[0], {"topic": mine[1]}), (path, method)
    elif klein is not None and klein[0] in ("publish", "fetch", "stream"):
        plain = all(seg and b"/" not in seg for seg in req.postpath)
        assert method == b"HEAD" or not plain, (path, method, klein)


def test_the_hot_router_leaves_the_near_misses_to_klein() -> None:
    """A trailing slash, an encoded slash in the topic, HEAD, another method or route: Klein's."""
    for method, path in [
        (b"POST", b"/v1/topics/t/messages/"),
        (b"POST", b"/v1/topics/a%2Fb/messages"),
        (b"HEAD", b"/v1/topics/t/messages"),
        (b"PUT", b"/v1/topics/t/messages"),
        (b"GET", b"/v1/topics/t/ws"),
        (b"POST", b"/v1/topics//messages"),
        (b"GET", b"/v2/topics/t/stream"),
    ]:
        assert hot.match(_Req(method, path)) is None, path  # type: ignore[arg-type]
    assert hot.match(_Req(b"POST", b"/v1/topics/t%C3%A9/messages")) == ("publish", "t\u00e9")  # type: ignore[arg-type]


@pytest_twisted.ensureDeferred
async def test_publish_fetch_and_stream_do_not_go_through_klein(node: Node, monkeypatch: Any) -> None:  # noqa: F811
    """Klein renders the other routes only; the hot ones answer as before."""
    seen: list[bytes] = []
    klein_render = KleinResource.render

    def counted(self: Any, request: Any) -> Any:
        seen.append(request.path)
        return klein_render(self, request)

    monkeypatch.setattr(KleinResource, "render", counted)
    await node.create("t")
    assert seen == [b"/v1/topics/t"]
    answer = await node.publish("t", [{"payload": "x"}])
    assert answer["offsets"] == [0] and answer["stored"] == "lmdb"
    got = await node.fetch("t", **{"from": "earliest"})
    assert [m["payload"] for m in got["messages"]] == ["x"]
    stream = node.http.start("GET", "/v1/topics/t/stream?from=earliest")
    assert node.api.streams.count() == 1 and next(iter(node.api.streams.streams)).cursors == {0: 1}
    stream.server_request.connectionLost(Failure(ConnectionDone()))
    assert node.api.streams.count() == 0
    r = await node.http.get("/v1/topics/t/messages", params={"limit": "0"})
    assert r.code == 400 and r.json()["error"]["code"] == "invalid_parameter"
    assert seen == [b"/v1/topics/t"]


@pytest_twisted.ensureDeferred
async def test_a_long_poll_whose_client_leaves_stops_waiting(node: Node, monkeypatch: Any) -> None:  # noqa: F811
    """The client goes away mid long-poll: the hot router cancels the fetch (as Klein did),
    so the partition is no longer watched and the request is not finished (its own watch of
    the connection runs after the router's, as with Klein)."""
    await node.create("t")
    pending = node.http.start("GET", "/v1/topics/t/messages?wait_ms=30000&from=latest")
    assert node.broker.watchers.count("t", 0) == 1
    finishes: list[bool] = []
    monkeypatch.setattr(pending.server_request, "finish", lambda: finishes.append(True))
    pending.server_request.connectionLost(Failure(ConnectionDone()))
    assert node.broker.watchers.count("t", 0) == 0
    assert finishes == []  # (finishing a lost request raises in twisted.web)
