"""Calls over the peer channel (:mod:`sprawl.peer.rpc`) between two real
channels on loopback: answers, remote errors, unknown methods, hop limits,
deadlines and failing the calls of a peer whose connection drops."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
from twisted.internet import defer

from harness import WAIT, PeerNet, bounded
from sprawl.errors import Conflict, Unavailable
from sprawl.peer.rpc import PeerRPC, RemoteError


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
            for p in list(ch.inbound_conns):
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


@pytest_twisted.ensureDeferred
async def test_bodies_members_sizes_and_load_are_bounded(pair: Any) -> None:
    """A method registered with a body type answers 400 to a body of another shape
    (the handler never sees it); a peer the node does not admit gets 403; an
    answer too large for a frame becomes a 507 error answer (logged, not a frame
    every receiver drops); a request too large is refused at the caller (413);
    more requests in flight from one peer than max_serving get 429."""
    from sprawl.peer.frames import RESPONSE
    from sprawl.peer.rpc_bodies import StatusBody

    _net, ra, rb, _ = pair
    seen: list[Any] = []
    rb.register("status", lambda caller, body, hops: seen.append(body) or {"ok": 1}, StatusBody)
    assert await bounded(ra.call("b", "status", {"topic": "t", "partition": 1}), WAIT) == {"ok": 1}
    for bad in (None, [], {"topic": "t"}, {"topic": "a/b", "partition": 0}, {"topic": "t", "partition": -1}):
        e = await _fails(ra.call("b", "status", bad))
        assert isinstance(e, RemoteError) and e.status == 400 and e.code == "bad_request"
    assert seen == [{"topic": "t", "partition": 1}]
    rb.channel.limits[RESPONSE] = 1000
    rb.register("big", lambda caller, body, hops: b"x" * 5000)
    e = await _fails(ra.call("b", "big", None))
    assert isinstance(e, RemoteError) and e.code == "answer_too_large"
    assert rb.oversized_answers == 1
    e = await _fails(ra.call("b", "status", {"topic": "t", "partition": 1, "pad": b"x" * (80 << 20)}))
    assert getattr(e, "code", None) == "request_too_large"
    never: defer.Deferred[Any] = defer.Deferred()
    rb.register("hang", lambda caller, body, hops: never)
    rb.max_serving = 3
    hanging = [ra.call("b", "hang", None, timeout=WAIT * 2) for _ in range(3)]
    e = await _fails(ra.call("b", "hang", None))
    assert isinstance(e, RemoteError) and e.status == 429
    never.callback(None)
    await bounded(defer.gatherResults(hanging), WAIT)
    rb.allow = lambda peer: peer != "a"
    e = await _fails(ra.call("b", "status", {"topic": "t", "partition": 1}))
    assert isinstance(e, RemoteError) and e.status == 403 and e.code == "not_a_member"


def test_rpc_bodies_decode_only_to_their_error() -> None:
    """Every method's body type, fed any value msgpack can carry, converts or raises
    msgspec.ValidationError (what PeerRPC turns into a 400) -- nothing else."""
    import msgspec
    from hypothesis import given
    from hypothesis import strategies as st

    from sprawl.peer.rpc_bodies import BODIES

    leaf = st.one_of(
        st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=8), st.binary(max_size=8)
    )
    values = st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
    )
    fields = st.fixed_dictionaries(
        {},
        optional={
            k: values
            for k in (
                "topic",
                "partition",
                "acks",
                "records",
                "group",
                "max",
                "wait_ms",
                "partitions",
                "ack_ids",
                "start",
            )
        },
    )

    @given(st.sampled_from(sorted(BODIES)), st.one_of(values, fields))
    def check(method: str, body: Any) -> None:
        raw = msgspec.msgpack.decode(msgspec.msgpack.encode(body))
        try:
            msgspec.convert(raw, BODIES[method])
        except msgspec.ValidationError:
            pass

    check()
