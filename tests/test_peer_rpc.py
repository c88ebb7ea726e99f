"""Calls over the peer channel (:mod:`sprawl.peer.rpc`) between two real
channels on loopback: answers, remote errors, unknown methods, hop limits,
deadlines and failing the calls of a peer whose connection drops."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
from twisted.internet import defer

from sprawl.errors import Conflict, Unavailable
from sprawl.peer.rpc import PeerRPC, RemoteError
from sprawl.testing import WAIT, PeerNet, bounded


@pytest_twisted.async_yield_fixture
async def pair() -> AsyncIterator[tuple[PeerNet, PeerRPC, PeerRPC, Any]]:
    """a and b, each listening and knowing the other's address."""
    net = PeerNet()
    a, b = net.channel("a"), net.channel("b")
    pa, pb = net.listen(a), net.listen(b)
    a.set_address("b", "127.0.0.1", pb.getHost().port)
    b.set_address("a", "127.0.0.1", pa.getHost().port)
    ra, rb = PeerRPC(a, a.reactor, timeout=WAIT), PeerRPC(b, b.reactor, timeout=WAIT)
    try:
        yield net, ra, rb, pb
    finally:
        ra.close()
        rb.close()
        await net.close()


async def _fails(d: defer.Deferred[Any]) -> Exception:
    try:
        await bounded(d, WAIT)
    except Exception as e:
        return e
    raise AssertionError("the call did not fail")


@pytest_twisted.ensureDeferred
async def test_call_answer_and_remote_errors(pair: Any) -> None:
    """A call gets the handler's answer (sync or Deferred); a SprawlError comes
    back with its status and code; an unknown method is a 400; a request past
    the hop limit is refused."""
    _net, ra, rb, _ = pair
    rb.register("echo", lambda caller, body, hops: {"from": caller, "body": body, "hops": hops})
    rb.register("later", lambda caller, body, hops: defer.succeed(body * 2))

    def refuse(caller: str, body: Any, hops: int) -> Any:
        raise Conflict("no way", code="nope")

    rb.register("refuse", refuse)
    assert await bounded(ra.call("b", "echo", [1, "x"], hops=2), WAIT) == {
        "from": "a",
        "body": [1, "x"],
        "hops": 2,
    }
    assert await bounded(ra.call("b", "later", 21), WAIT) == 42
    e = await _fails(ra.call("b", "refuse", None))
    assert isinstance(e, RemoteError) and e.status == 409 and e.code == "nope" and e.message == "no way"
    e = await _fails(ra.call("b", "missing", None))
    assert isinstance(e, RemoteError) and e.status == 400 and e.code == "unknown_method"
    e = await _fails(ra.call("b", "echo", None, hops=4))
    assert isinstance(e, RemoteError) and e.code == "routing_loop"
    # many calls at once all get their own answers
    got = await bounded(defer.gatherResults([ra.call("b", "later", i) for i in range(200)]), WAIT)
    assert got == [2 * i for i in range(200)]


@pytest_twisted.ensureDeferred
async def test_deadline_and_dropped_peer(pair: Any) -> None:
    """A call nobody answers fails with peer_timeout; calls to a peer whose
    listener goes away fail with peer_unreachable, not at their deadline."""
    net, ra, rb, pb = pair
    never: defer.Deferred[Any] = defer.Deferred()
    rb.register("hang", lambda caller, body, hops: never)
    e = await _fails(ra.call("b", "hang", None, timeout=0.2))
    assert isinstance(e, Unavailable) and e.code == "peer_timeout"
    pending = ra.call("b", "hang", None, timeout=WAIT * 2)
    await net.unlisten(pb)
    for ch in net.channels:
        if ch.node_id == "b":
            for p in list(ch._inbound):
                p.transport.loseConnection()
    e = await _fails(pending)
    assert isinstance(e, Unavailable) and e.code == "peer_unreachable"
    assert ra.call("nobody", "echo", None).called  # no address: fails at once


def test_rpc_registers_its_frame_kinds() -> None:
    """Building the adapter registers its frame handlers on the channel."""
    from sprawl.peer.frames import REQUEST, RESPONSE

    net = PeerNet()
    ch = net.channel("z")
    PeerRPC(ch, ch.reactor)
    assert REQUEST in ch.handlers and RESPONSE in ch.handlers
