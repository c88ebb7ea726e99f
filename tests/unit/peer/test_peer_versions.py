"""Peer protocol versions in the handshake (sprawl.peer.frames): ranges that overlap talk,
a peer too old or too new is refused with a reason both sides can log, an older node's
hello and welcome (no protocol fields) count as protocol 2, and the stated range and
features are authenticated with the cluster key."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sprawl.peer import frames
from sprawl.peer.frames import (
    FEATURES,
    MIN_PROTOCOL,
    PROTOCOL,
    UNSTATED_PROTOCOL,
    HandshakeError,
    Hello,
    PeerVersion,
    VersionRefused,
    Welcome,
    check_hello,
    check_protocol,
    check_welcome,
    hello_mac,
    hello_version,
    make_hello,
    make_refused,
    make_welcome,
    read_refused,
    welcome_mac,
)

KEY = b"k" * 32
CHAL = b"c" * 16
NONCE = b"n" * 16


def test_this_build_talks_to_the_release_before_and_after() -> None:
    """N talks to N-1 and N+1 (whose minimum is N); the stated range is this build's."""
    check_protocol("p", PeerVersion(PROTOCOL, MIN_PROTOCOL))
    check_protocol("p", PeerVersion(PROTOCOL - 1, PROTOCOL - 2))
    check_protocol("p", PeerVersion(PROTOCOL + 1, PROTOCOL))
    assert MIN_PROTOCOL <= UNSTATED_PROTOCOL <= PROTOCOL  # the releases before the negotiation


def test_too_old_and_too_new_are_refused_with_their_codes() -> None:
    with pytest.raises(VersionRefused, match="too old") as old:
        check_protocol("n9", PeerVersion(MIN_PROTOCOL - 1, MIN_PROTOCOL - 1))
    assert old.value.code == "protocol_too_old" and "n9" in str(old.value)
    with pytest.raises(VersionRefused, match="too new") as new:
        check_protocol("n9", PeerVersion(PROTOCOL + 2, PROTOCOL + 1))
    assert new.value.code == "protocol_too_new"
    with pytest.raises(VersionRefused):
        check_protocol("n9", PeerVersion(3, 7))  # minimum above its own protocol


@pytest.mark.parametrize("key", [None, KEY])
def test_hello_and_welcome_carry_the_range_and_features(key: bytes | None) -> None:
    h = check_hello(make_hello("a", "b", CHAL, NONCE, key), CHAL, key, "b")
    assert hello_version(h) == PeerVersion(PROTOCOL, MIN_PROTOCOL, FEATURES)
    w = check_welcome(make_welcome("b", "a", CHAL, NONCE, key), "b", "a", CHAL, NONCE, key)
    assert w == PeerVersion(PROTOCOL, MIN_PROTOCOL, FEATURES)


@pytest.mark.parametrize("key", [None, KEY])
def test_an_older_nodes_hello_and_welcome_count_as_protocol_2(key: bytes | None) -> None:
    """What a node of the releases before the negotiation sends (no protocol fields,
    MACs as they were) is accepted as protocol 2 with no features."""
    mac = hello_mac(key, CHAL, NONCE, "a", "b") if key else b""
    old_hello = msgspec.msgpack.encode({"node_id": "a", "version": 2, "mac": mac, "nonce": NONCE, "to": "b"})
    h = check_hello(old_hello, CHAL, key, "b")
    assert hello_version(h) == PeerVersion(2, 2, frozenset())
    wmac = welcome_mac(key, CHAL, NONCE, "b", "a") if key else b""
    old_welcome = msgspec.msgpack.encode({"node_id": "b", "mac": wmac})
    assert check_welcome(old_welcome, "b", "a", CHAL, NONCE, key) == PeerVersion(2, 2, frozenset())


def test_an_older_node_accepts_this_nodes_hello() -> None:
    """The new fields are extra: an older node's decoder (the fields it knew) reads the
    hello and its MAC checks out as before."""

    class OldHello(msgspec.Struct, frozen=True):
        node_id: str
        version: int = 2
        mac: bytes = b""
        nonce: bytes = b""
        to: str = ""

    old = msgspec.msgpack.decode(make_hello("a", "b", CHAL, NONCE, KEY), type=OldHello)
    assert old.version == 2 and old.mac == hello_mac(KEY, CHAL, NONCE, "a", "b")


def test_a_stated_range_must_carry_its_mac() -> None:
    """With a key, a range or feature list altered (or stated without its MAC) is refused."""
    good = msgspec.msgpack.decode(make_hello("a", "b", CHAL, NONCE, KEY), type=Hello)
    for forged in (
        msgspec.structs.replace(good, protocol=PROTOCOL + 5, min_protocol=PROTOCOL + 5),
        msgspec.structs.replace(good, features=["made-up"]),
        msgspec.structs.replace(good, info_mac=b""),
    ):
        with pytest.raises(HandshakeError, match="MAC"):
            check_hello(msgspec.msgpack.encode(forged), CHAL, KEY, "b")
    w = msgspec.msgpack.decode(make_welcome("b", "a", CHAL, NONCE, KEY), type=Welcome)
    with pytest.raises(HandshakeError, match="MAC"):
        bad = msgspec.structs.replace(w, protocol=PROTOCOL + 1)
        check_welcome(msgspec.msgpack.encode(bad), "b", "a", CHAL, NONCE, KEY)


def test_a_hello_too_new_is_refused_by_check_hello(monkeypatch: pytest.MonkeyPatch) -> None:
    """The acceptor's check of a hello refuses a peer whose range is above its own."""
    monkeypatch.setattr(frames, "PROTOCOL", PROTOCOL + 2)
    monkeypatch.setattr(frames, "MIN_PROTOCOL", PROTOCOL + 1)
    newer = make_hello("a", "b", CHAL, NONCE, KEY)
    monkeypatch.undo()
    with pytest.raises(VersionRefused) as e:
        check_hello(newer, CHAL, KEY, "b")
    assert e.value.code == "protocol_too_new"
    # and the welcome of such a node is refused by the connector the same way
    monkeypatch.setattr(frames, "PROTOCOL", PROTOCOL + 2)
    monkeypatch.setattr(frames, "MIN_PROTOCOL", PROTOCOL + 1)
    w = make_welcome("b", "a", CHAL, NONCE, KEY)
    monkeypatch.undo()
    with pytest.raises(VersionRefused):
        check_welcome(w, "b", "a", CHAL, NONCE, KEY)


def test_refusal_frame_round_trip_and_garbage() -> None:
    e = VersionRefused("protocol_too_old", "peer n9 speaks 1..1")
    assert read_refused(make_refused(e)) == "protocol_too_old: peer n9 speaks 1..1"
    assert "unreadable" in read_refused(b"\xc1garbage")


def test_features_taken_from_a_peer_are_bounded() -> None:
    h = Hello("a", 2, b"", NONCE, "b", PROTOCOL, MIN_PROTOCOL, ["x" * 500] * 100)
    v = hello_version(h)
    assert len(v.features) <= frames.MAX_FEATURES and all(
        len(f) <= frames.MAX_FEATURE_CHARS for f in v.features
    )


@given(st.integers(-5, 20), st.integers(-5, 20))
def test_any_stated_range_is_accepted_or_refused_cleanly(proto: int, minimum: int) -> None:
    payload = msgspec.msgpack.encode(Hello("a", 2, b"", NONCE, "b", proto, minimum, []))
    try:
        h = check_hello(payload, CHAL, None, "b")
    except VersionRefused:
        return
    assert (
        minimum <= proto
        and proto >= MIN_PROTOCOL
        and minimum <= PROTOCOL
        and hello_version(h).protocol == proto
    )
