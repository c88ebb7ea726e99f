"""The gossip wire format: round trips, compound packing, limits, authentication,
and a fuzzed decoder that never raises anything but ``DecodeError``."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sprawl.gossip import wire
from sprawl.gossip.messages import (
    Ack,
    Alive,
    Dead,
    Leave,
    MemberState,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Suspect,
)
from sprawl.gossip.wire import DecodeError

KEY = b"k" * 32

node_ids = st.text(min_size=1, max_size=40)
hosts = st.text(max_size=40)
ports = st.integers(0, 65535)
incs = st.integers(0, 2**63 - 1)
seqs = st.integers(0, 2**63 - 1)
addrs = st.tuples(hosts, ports)
meta_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
metas = st.dictionaries(st.text(max_size=16), meta_values, max_size=4)
member_states = st.builds(MemberState, node_ids, addrs, metas, st.integers(0, 3), incs)

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Ping, seqs, st.text(max_size=40), st.text(max_size=40)),
    st.builds(Ack, seqs, st.text(max_size=40)),
    st.builds(Nack, seqs),
    st.builds(PingReq, seqs, node_ids, addrs, st.text(max_size=40), st.booleans()),
    st.builds(Alive, incs, node_ids, addrs, metas),
    st.builds(Suspect, incs, node_ids, node_ids),
    st.builds(Dead, incs, node_ids, node_ids),
    st.builds(Leave, incs, node_ids),
    st.builds(
        PushPull,
        seqs,
        st.booleans(),
        st.booleans(),
        st.integers(0, 4095),
        st.integers(1, 4096),
        st.lists(member_states, max_size=3),
    ),
)


def sample_messages() -> list[Message]:
    """One message of every type."""
    ms = MemberState("n2", ("10.0.0.2", 7946), {"http": "10.0.0.2:8080"}, 1, 4)
    return [
        Ping(1, "n2", "n1"),
        Ack(1, "n2"),
        Nack(7),
        PingReq(2, "n3", ("10.0.0.3", 7946), "n1", True),
        Alive(3, "n1", ("10.0.0.1", 7946), {"http": "10.0.0.1:8080", "load": {"mps": 1.5, "led": 2}}),
        Suspect(3, "n2", "n1"),
        Dead(3, "n2", "n1"),
        Leave(5, "n4"),
        PushPull(9, True, False, 0, 1, [ms, ms]),
    ]


@pytest.mark.parametrize("key", [None, KEY])
def test_every_message_type_round_trips(key: bytes | None) -> None:
    """Each message type, alone and all together, decodes to what was encoded."""
    msgs = sample_messages()
    for m in msgs:
        assert wire.decode_packet(wire.encode_packet([m], key), key) == [m]
    assert wire.decode_packet(wire.encode_packet(msgs, key), key) == msgs


@given(st.lists(messages, min_size=1, max_size=5))
def test_generated_messages_round_trip(msgs: list[Message]) -> None:
    """Arbitrary valid messages survive encode/decode unchanged."""
    data = wire.encode_packet(msgs)
    assert wire.decode_packet(data, max_bytes=wire.ABSOLUTE_MAX_PACKET) == msgs


@pytest.mark.parametrize("key", [None, KEY])
def test_pack_fills_packets_within_the_limit_and_keeps_order(key: bytes | None) -> None:
    """Compound packing puts many messages per packet, never over the byte
    limit, and the concatenated decoded packets give back the original list."""
    msgs: list[Message] = [Suspect(i, f"node-{i:04d}", "accuser") for i in range(300)]
    parts = [wire.encode_message(m) for m in msgs]
    packets = wire.pack(parts, 1400, key)
    assert all(len(p) <= 1400 for p in packets)
    assert 1 < len(packets) < 20  # compound: many messages in each
    decoded = [m for p in packets for m in wire.decode_packet(p, key)]
    assert decoded == msgs
    # and nearly full: packing leaves less than one message of slack per packet
    assert all(len(p) > 1400 - max(map(len, parts)) for p in packets[:-1])


def test_pack_rejects_a_message_that_cannot_fit() -> None:
    """A single message larger than a packet is a caller error."""
    with pytest.raises(ValueError):
        wire.pack([b"x" * 1400], 1400)


def test_overhead_accounts_for_header_mac_and_array() -> None:
    """packet_overhead is exactly what assemble adds for up to 15 and for more messages."""
    for key in (None, KEY):
        for n in (1, 15, 16, 200):
            parts = [wire.encode_message(Nack(1))] * n
            data = wire.assemble(parts, key)
            assert len(data) - sum(map(len, parts)) <= wire.packet_overhead(key is not None, n)
            assert len(data) - sum(map(len, parts)) == wire.packet_overhead(key is not None, n)


def _reason(data: bytes, key: bytes | None = None, max_bytes: int = 1400) -> str:
    with pytest.raises(DecodeError) as exc:
        wire.decode_packet(data, key, max_bytes)
    return exc.value.reason


def test_truncated_packets_are_rejected() -> None:
    """Every strict prefix of a valid packet is rejected with DecodeError."""
    for key in (None, KEY):
        data = wire.encode_packet(sample_messages()[:5], key)
        for cut in range(len(data)):
            with pytest.raises(DecodeError):
                wire.decode_packet(data[:cut], key)


def test_oversize_packets_are_rejected() -> None:
    """A packet over the receive limit is rejected before decoding."""
    data = wire.encode_packet([Suspect(i, f"n{i}", "x") for i in range(200)])
    assert len(data) > 1000
    assert _reason(data, max_bytes=1000) == "oversize"
    assert wire.decode_packet(data, max_bytes=len(data))
    assert _reason(b"\x01\x00" + b"\x90" * 70000, max_bytes=10**6) == "oversize"


def test_wrong_version_is_rejected() -> None:
    """Any version byte other than the current one is rejected."""
    data = bytearray(wire.encode_packet([Nack(1)]))
    for v in (0, 2, 255):
        data[0] = v
        assert _reason(bytes(data)) == "version"


def test_unknown_flags_are_rejected() -> None:
    """Reserved flag bits must be zero."""
    data = bytearray(wire.encode_packet([Nack(1)]))
    data[1] = 0x80
    assert _reason(bytes(data)) == "malformed"


def test_bad_or_missing_mac_is_rejected() -> None:
    """With a key, a packet needs a valid MAC: a flipped bit anywhere, another
    key, or no MAC at all is an auth failure.  Without a key, MAC'd packets
    cannot be checked and are rejected too."""
    good = wire.encode_packet(sample_messages(), KEY)
    assert wire.decode_packet(good, KEY)
    for i in range(2, len(good)):
        bad = bytearray(good)
        bad[i] ^= 0x01
        assert _reason(bytes(bad), KEY) == "auth"
    assert _reason(good, b"other key, 16+ bytes") == "auth"
    assert _reason(wire.encode_packet([Nack(1)]), KEY) == "auth"
    assert _reason(good, None) == "auth"


def test_out_of_range_fields_are_rejected() -> None:
    """Field limits hold: port, incarnation, node-id length, state, empty packet."""
    enc = msgspec.msgpack.encode
    assert _reason(b"\x01\x00" + enc([[5, 1, "n", ["h", 70000], {}]])) == "malformed"
    assert _reason(b"\x01\x00" + enc([[6, -1, "n", "m"]])) == "malformed"
    assert _reason(b"\x01\x00" + enc([[6, 1, "n" * 129, "m"]])) == "malformed"
    assert _reason(b"\x01\x00" + enc([[6, 1, "", "m"]])) == "malformed"
    assert (
        _reason(b"\x01\x00" + enc([[9, 1, False, False, 0, 1, [["n", ["h", 1], {}, 4, 0]]]])) == "malformed"
    )
    assert _reason(b"\x01\x00" + enc([[9, 1, False, False, 0, 0, []]])) == "malformed"
    assert wire.decode_packet(b"\x01\x00" + enc([[9, 1, False, False, 0, 1, [["n", ["h", 1], {}, 3, 0]]]]))
    assert _reason(b"\x01\x00" + enc([[99, 1]])) == "malformed"
    assert _reason(b"\x01\x00" + enc([])) == "malformed"
    assert _reason(b"\x01\x00" + enc({"not": "a list"})) == "malformed"


def test_deeply_nested_metadata_is_a_decode_error() -> None:
    """Nesting deep enough to hit the recursion limit is reported as malformed."""
    depth = 1300
    body = b"\x91\x95\x05\x01\xa1n\x92\xa1h\x01\x81\xa1m" + b"\x91" * depth + b"\xc0"
    assert _reason(b"\x01\x00" + body) == "malformed"


@given(st.binary(max_size=2000))
@example(b"")
@example(b"\x01")
@example(b"\x01\x00")
@example(b"\x01\x00\x90")
@example(b"\x01\x01" + b"\x00" * 40)
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    """Whatever arrives, decoding either succeeds or raises DecodeError."""
    for key in (None, KEY):
        try:
            msgs = wire.decode_packet(data, key, 1400)
        except DecodeError:
            continue
        assert msgs and len(data) <= 1400


@given(st.lists(messages, min_size=1, max_size=4), st.data())
def test_mutated_packets_raise_only_decode_error(msgs: list[Message], data: st.DataObject) -> None:
    """Bit flips, truncations and insertions in a valid packet never raise
    anything but DecodeError (and, with a key, are all rejected)."""
    packet = bytearray(wire.encode_packet(msgs))
    op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
    pos = data.draw(st.integers(0, len(packet) - 1))
    if op == "flip":
        packet[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif op == "cut":
        del packet[pos:]
    else:
        packet[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        wire.decode_packet(bytes(packet), None, wire.ABSOLUTE_MAX_PACKET)
    except DecodeError:
        pass
    keyed = bytearray(wire.encode_packet(msgs, KEY))
    keyed[min(pos, len(keyed) - 1)] ^= 0x40
    with pytest.raises(DecodeError):
        wire.decode_packet(bytes(keyed), KEY, wire.ABSOLUTE_MAX_PACKET)


def test_non_bytes_input_is_a_decode_error() -> None:
    """A caller handing the decoder something that is not bytes gets DecodeError."""
    with pytest.raises(DecodeError):
        wire.decode_packet("text")  # type: ignore[arg-type]
