"""Hypothesis fuzzing of the cluster plane's decoders, through the entry points a
peer's bytes reach: nothing raises but the decoder's own error, and where the
node's adapter takes the bytes (the RPC layer, the replication service, the
gossip core) nothing raises at all.

Elsewhere: the gossip wire (``test_gossip_wire.py``), peer frames and the
hello/welcome (``test_peer_frames.py``), the Raft storage codec
(``test_raft_storage.py``), metadata snapshots (``test_cluster_metadata.py``)
and RPC bodies (``test_peer_rpc.py``).
"""

from __future__ import annotations

import random
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from sprawl.cluster.raft_wire import message_flaw
from sprawl.gossip import GossipConfig, Membership, wire
from sprawl.gossip.membership import MAX_INCARNATION
from sprawl.gossip.messages import Alive, Dead, Leave, MemberState, PushPull, Suspect
from sprawl.peer.frames import REQUEST, RESPONSE
from sprawl.peer.rpc import PeerRPC
from sprawl.peer.rpc_bodies import BODIES
from sprawl.raft.messages import decode_message
from sprawl.replication.messages import Append, append_flaw, decode
from sprawl.replication.service import ReplicationService

INTS = st.one_of(
    st.integers(-3, 5), st.integers(-(2**63), 2**64 - 1), st.sampled_from([0, 1, 2**62, 2**63 - 1, 2**64 - 1])
)
LEAF = st.one_of(st.none(), st.booleans(), INTS, st.text(max_size=6), st.binary(max_size=12), st.floats())
VALUES = st.recursive(
    LEAF,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=30,
)


def packed(v: Any) -> bytes:
    return msgspec.msgpack.encode(v)


# -- Raft -----------------------------------------------------------------------


@given(st.one_of(st.binary(max_size=300), VALUES.map(packed)))
def test_raft_messages_decode_or_raise_their_error_and_are_judged_without_raising(data: bytes) -> None:
    """Any bytes as a RAFT frame: a Message or msgspec's DecodeError; a decoded one is
    judged (message_flaw) without an exception, whatever snapshot or entries it holds."""
    try:
        m = decode_message(data)
    except msgspec.DecodeError:
        return
    assert message_flaw(m) is None or isinstance(message_flaw(m), str)


snapshots = st.builds(
    lambda idx, term, voters, learners, data: [[idx, term, [voters, learners]], data],
    INTS,
    INTS,
    st.lists(INTS, max_size=3),
    st.lists(INTS, max_size=3),
    st.one_of(st.binary(max_size=50), VALUES.map(packed)),
)
entries = st.lists(
    st.tuples(INTS, INTS, st.sampled_from([0, 1, 2]), st.one_of(st.binary(max_size=30), VALUES.map(packed))),
    max_size=4,
)


@given(st.sampled_from([3, 9]), INTS, entries, snapshots)
def test_raft_appends_and_snapshots_shaped_by_hand(kind: int, term: int, ents: list[Any], snap: Any) -> None:
    """Appends and snapshot messages with any numbers, configuration changes and
    snapshot data: decoded ones are judged without an exception."""
    raw = packed(
        [kind, 1, 2, term, 0, 0, [list(e) for e in ents], 0, False, 0, snap if kind == 9 else None, b""]
    )
    try:
        m = decode_message(raw)
    except msgspec.DecodeError:
        return
    message_flaw(m)


# -- replication ----------------------------------------------------------------


class _Channel:
    """The parts of PeerChannel the adapters use; answers are kept."""

    def __init__(self) -> None:
        self.handlers: dict[int, Any] = {}
        self.sent: list[tuple[str, int, bytes]] = []
        self.on_unreachable = lambda peer: None
        self.limits = {REQUEST: 1 << 20, RESPONSE: 1 << 20}

    def send(self, peer: str, kind: int, payload: bytes) -> bool:
        self.sent.append((peer, kind, payload))
        return True

    def fits(self, kind: int, size: int) -> bool:
        return size + 5 <= self.limits.get(kind, 1 << 20)


class _Clock:
    def seconds(self) -> float:
        return 0.0

    def callLater(self, *a: Any, **kw: Any) -> Any:
        class _Timer:
            def active(self) -> bool:
                return False

            def cancel(self) -> None:
                pass

        return _Timer()


@given(
    st.one_of(
        st.binary(max_size=300),
        VALUES.map(packed),
        st.tuples(st.text(max_size=5), INTS, st.binary(max_size=80), st.lists(VALUES, max_size=3)).map(
            lambda t: packed(list(t))
        ),
    )
)
def test_replication_frames_never_raise(data: bytes) -> None:
    """Any bytes as a REPLICATION frame reach the service's entry point and are
    decoded, checked and dropped (counted) without an exception."""
    ch = _Channel()
    svc = ReplicationService("me", ch, _Clock())
    svc._frame("peer", data)
    assert svc.dropped + svc.refused <= 1


@given(
    st.one_of(
        st.binary(max_size=300),
        VALUES.map(packed),
        st.lists(
            st.one_of(
                st.binary(max_size=80),
                st.tuples(
                    st.text(max_size=5), INTS, st.binary(max_size=80), st.lists(VALUES, max_size=3)
                ).map(lambda t: packed(list(t))),
            ),
            max_size=6,
        ).map(packed),
    )
)
def test_replication_batch_frames_never_raise(data: bytes) -> None:
    """Any bytes as a REPLICATION_BATCH frame (issue 23, apply36: a msgpack list of
    REPLICATION payloads) are decoded, each message checked and dropped (counted)
    on its own, without an exception -- and nothing of it is left held."""
    ch = _Channel()
    svc = ReplicationService("me", ch, _Clock())
    svc._batch_frame("peer", data)
    assert svc.dropped + svc.refused <= 6
    assert not svc._held and not svc._holds


@given(st.binary(max_size=200))
def test_replication_messages_decode_or_raise_their_error(data: bytes) -> None:
    """A replication message is one of its types or msgspec's DecodeError."""
    try:
        decode(data)
    except msgspec.DecodeError:
        pass


@given(
    INTS,
    INTS,
    INTS,
    INTS,
    st.lists(st.tuples(INTS, INTS), max_size=4),
    INTS,
    st.booleans(),
    st.lists(INTS, max_size=5),
)
def test_append_flaw_judges_any_append(
    epoch: int,
    start: int,
    prev: int,
    count: int,
    runs: list[tuple[int, int]],
    hw: int,
    reset: bool,
    offsets: list[int],
) -> None:
    """append_flaw names a flaw or passes for any field values, never raising; an
    Append it passes has records matching its count and runs inside its batch."""
    m = Append(epoch, start, prev, count, tuple(runs), hw, reset)
    if append_flaw(m, offsets) is None:
        assert len(offsets) == count >= 0
        assert all(start <= s < start + count for _e, s in runs) or count == 0


# -- peer RPC -------------------------------------------------------------------


@given(
    st.one_of(
        st.binary(max_size=300),
        VALUES.map(packed),
        st.tuples(INTS, st.sampled_from([*BODIES, "x"]), INTS, VALUES).map(lambda t: packed(list(t))),
    )
)
def test_rpc_requests_and_answers_never_raise(data: bytes) -> None:
    """Any bytes as a REQUEST or RESPONSE frame: the RPC layer answers, refuses or
    drops without an exception, and a handler only ever sees a body of its shape."""
    ch = _Channel()
    rpc = PeerRPC(ch, _Clock())  # type: ignore[arg-type]
    seen: list[Any] = []
    for method, shape in BODIES.items():

        def handler(caller: str, body: Any, hops: int, shape: Any = shape) -> Any:
            msgspec.convert(body, shape)  # raises (failing the test) if a bad body got through
            seen.append(body)
            return {"ok": True}

        rpc.register(method, handler, shape)
    ch.handlers[REQUEST]("peer", data)
    ch.handlers[RESPONSE]("peer", data)
    for _peer, kind, payload in ch.sent:
        assert kind == RESPONSE
        msgspec.msgpack.decode(payload)


# -- gossip ---------------------------------------------------------------------

incarnations = st.one_of(
    st.integers(0, 10),
    st.integers(0, 2**63 - 1),
    st.sampled_from([MAX_INCARNATION - 1, MAX_INCARNATION, 2**63 - 1]),
)
ids = st.sampled_from(["me", "a", "b", "c"])
addrs = st.tuples(st.sampled_from(["10.0.0.1", "10.0.0.2", ""]), st.integers(0, 65535))
updates = st.one_of(
    st.builds(
        Alive,
        incarnations,
        ids,
        addrs,
        st.dictionaries(st.text(max_size=4), st.integers(-(2**63), 2**63 - 1), max_size=2),
    ),
    st.builds(Suspect, incarnations, ids, ids),
    st.builds(Dead, incarnations, ids, ids),
    st.builds(Leave, incarnations, ids),
    st.builds(
        PushPull,
        st.integers(0, 2**63 - 1),
        st.booleans(),
        st.booleans(),
        st.just(0),
        st.just(1),
        st.lists(
            st.builds(MemberState, ids, addrs, st.just({}), st.integers(0, 3), incarnations), max_size=5
        ),
    ),
)


@given(st.lists(st.lists(updates, min_size=1, max_size=6), max_size=6))
def test_gossip_updates_with_any_incarnation_keep_the_bounds(packets: list[list[Any]]) -> None:
    """Well-formed packets with any incarnations (the wire's top included) never
    raise in the core, and this node's incarnation never passes MAX_INCARNATION."""
    m = Membership("me", ("10.0.0.9", 7000), {}, GossipConfig(), random.Random(1), 0.0, 3)
    now = 0.0
    for msgs in packets:
        now += 0.3
        m.receive(("10.0.0.2", 7001), wire.encode_packet(msgs), now)
        m.tick(now)
        assert m.incarnation <= MAX_INCARNATION
        assert all(x.incarnation <= MAX_INCARNATION for x in m.members())
