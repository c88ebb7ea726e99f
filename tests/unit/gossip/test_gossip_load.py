"""Per-partition rates in the gossiped load figures (:mod:`sprawl.gossip.load`)."""

from __future__ import annotations

import math

import msgspec
import pytest

from sprawl.gossip import wire
from sprawl.gossip.load import (
    MAX_PARTS,
    PARTS_BUDGET,
    decode_parts,
    encode_parts,
    parts_changed,
    rates_between,
    rates_by_node,
    view_rates,
)
from sprawl.gossip.messages import Alive


def test_rates_between_two_samples() -> None:
    """Rates are counter deltas over the interval; new partitions have none yet;
    a counter that went backwards counts as 0."""
    old = {("a", 0): (100, 10_000), ("b", 1): (50, 500)}
    new = {("a", 0): (600, 60_000), ("b", 1): (10, 100), ("c", 0): (5, 5)}
    assert rates_between(old, new, 5.0) == {("a", 0): (100.0, 10_000.0), ("b", 1): (0.0, 0.0)}
    assert rates_between(old, new, 0.0) == {}


def test_encode_keeps_the_hottest_within_count_and_bytes() -> None:
    """Hottest first, at most MAX_PARTS entries, at most ``budget`` bytes; a
    long name that does not fit leaves room for shorter ones."""
    rates = {(f"t{i}", i): (float(i), 0.0) for i in range(100)}
    parts = encode_parts(rates, budget=10_000)
    assert len(parts) == MAX_PARTS
    assert [e[1] for e in parts] == list(range(99, 99 - MAX_PARTS, -1))
    long = {("x" * 249, 0): (1000.0, 0.0), ("short", 0): (1.0, 0.0)}
    assert [e[0] for e in encode_parts(long, budget=100)] == ["short"]
    big = {("y" * 200 + str(i), i): (float(i), 1e9) for i in range(40)}
    assert len(msgspec.msgpack.encode(encode_parts(big))) <= PARTS_BUDGET


def test_round_trip_through_the_gossip_wire() -> None:
    """The figures survive an Alive packet's encoding and decoding."""
    rates = {("orders", 3): (1234.4, 5_000_000.0), ("clicks", 0): (7.0, 700.0), ("x" * 249, 2): (1.0, 2.0)}
    meta = {"version": "1", "load": {"led": 3, "msgs_s": 1242.0, "parts": encode_parts(rates)}}
    pkt = wire.encode_packet([Alive(3, "n1", ("10.0.0.1", 7000), meta)])
    (msg,) = wire.decode_packet(pkt)
    assert isinstance(msg, Alive)
    got = decode_parts(msg.meta["load"]["parts"])
    assert got == {k: (float(round(m)), float(round(b))) for k, (m, b) in rates.items()}
    view = {"id": "n1", "state": "alive", "partition_rates": view_rates(msg.meta["load"]["parts"])}
    assert rates_by_node([view, {"id": "n2", "state": "dead", "partition_rates": []}]) == {"n1": got}


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "parts",
        [["t", 0, 1]],
        [["t", -1, 1, 1]],
        [["t", True, 1, 1]],
        [["t", 0.5, 1, 1]],
        [["t", 0, -1, 1]],
        [["t", 0, math.inf, 1]],
        [["t", 0, math.nan, 1]],
        [[1, 0, 1, 1]],
        [{"t": 0}],
    ],
)
def test_decode_skips_malformed_entries(raw: object) -> None:
    """Whatever a peer sends, decoding gives only well-formed rates."""
    assert decode_parts(raw) == {}
    assert decode_parts([*(raw if isinstance(raw, list) else []), ["ok", 1, 2, 3]]) == {("ok", 1): (2.0, 3.0)}


def test_parts_changed_needs_20_percent_and_a_floor() -> None:
    """A partition's rate must move by more than 20% and 10 msgs/s (or 100 kB/s)."""
    base = [["a", 0, 100, 10_000]]
    assert not parts_changed(base, [["a", 0, 115, 10_000]])
    assert parts_changed(base, [["a", 0, 150, 10_000]])
    assert not parts_changed(base, [["a", 0, 100, 10_000], ["b", 0, 5, 1000]])  # new but tiny
    assert parts_changed(base, [["a", 0, 100, 10_000], ["b", 0, 50, 1000]])
    assert parts_changed(base, [])
    assert not parts_changed([["a", 0, 3, 0]], [])
