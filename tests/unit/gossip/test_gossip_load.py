"""Per-partition rates in the gossiped load figures (:mod:`sprawl.gossip.load`)."""

from __future__ import annotations

import math
import random

import msgspec
import pytest

from sprawl.gossip import wire
from sprawl.gossip.load import (
    MAX_PARTS,
    PARTS_BUDGET,
    RATE_WINDOW,
    RateWindow,
    decode_parts,
    encode_parts,
    load_changed,
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


# ---------------------------------------------------------------- the windowed rate (trust38b)

K = ("t", 0)


def test_a_noise_sample_moves_the_windowed_rate_by_a_twelfth() -> None:
    """One 10 % sample over a steady 100 msgs/s moves the gossiped rate by
    ``1 - exp(-5/60)`` of the difference (0.8), not to 110; the rate held
    between re-gossips is not the one sample it was taken at."""
    assert RATE_WINDOW == 0.0  # off by default (docs/benchmarks.md, trust38b)
    w = RateWindow(60.0)
    for _ in range(20):
        w.update({K: (100.0, 1000.0)}, 5.0)
    got = w.update({K: (110.0, 1100.0)}, 5.0)[K]
    assert got[0] == pytest.approx(100.0 + 10.0 * (1 - math.exp(-5 / 60)))
    assert got[1] == pytest.approx(1000.0 + 100.0 * (1 - math.exp(-5 / 60)))


def test_the_windowed_rate_of_noisy_samples_stays_near_the_true_rate() -> None:
    """5 % noise per 5-s sample (the simulator's traces): every windowed rate
    after the first minute is within 4 % of the true rate, where samples
    range over +-10 %: which sample a re-gossip takes no longer decides what
    a peer holds."""
    rng = random.Random(7)
    w = RateWindow(60.0)
    samples, windowed = [], []
    for i in range(720):
        x = 200.0 * rng.gauss(1.0, 0.05)
        got = w.update({K: (x, 0.0)}, 5.0)[K][0]
        if i >= 12:
            samples.append(x)
            windowed.append(got)
    assert max(abs(x / 200.0 - 1) for x in samples) > 0.1
    assert max(abs(x / 200.0 - 1) for x in windowed) < 0.04


def test_a_sustained_change_is_seen_within_two_samples() -> None:
    """A step beyond the re-gossip rule's 20 % (up or down) held for two
    samples replaces the windowed rate by those samples' mean: the window
    does not slow the balancer's view of a real skew; one sample beyond it
    (a spike) is only folded in."""
    for new in (160.0, 50.0):
        w = RateWindow(60.0)
        for _ in range(20):
            w.update({K: (100.0, 0.0)}, 5.0)
        first = w.update({K: (new, 0.0)}, 5.0)[K][0]
        assert abs(first - 100.0) < 0.1 * abs(new - 100.0)  # one sample: folded in
        second = w.update({K: (new * 1.02, 0.0)}, 5.0)[K][0]
        assert second == pytest.approx(new * 1.01)
    w = RateWindow(60.0)
    for x in (100.0, 100.0, 160.0, 100.0, 160.0):  # spikes apart: never two in a row
        got = w.update({K: (x, 0.0)}, 5.0)[K][0]
    assert got < 115.0


def test_a_stopped_partition_is_at_zero_at_once_and_a_gone_one_is_dropped() -> None:
    """A sample of 0 (nothing published) is 0 at once, and the next sample
    starts the rate again; a partition missing from the samples (not led
    any more, or a partial sample's unmoved counters) is dropped."""
    w = RateWindow(60.0)
    for _ in range(10):
        w.update({K: (500.0, 5e5), ("u", 1): (40.0, 0.0)}, 5.0)
    assert w.update({K: (0.0, 0.0), ("u", 1): (40.0, 0.0)}, 5.0)[K] == (0.0, 0.0)
    assert w.update({K: (300.0, 3e5)}, 5.0) == {K: (300.0, 3e5)}
    assert w.rates == {K: (300.0, 3e5)}


def test_an_idle_node_gossips_its_idleness_once_as_with_raw_samples() -> None:
    """Issue 23: a node busy for a minute then idle for an hour re-gossips
    (``load_changed``) exactly once in the idle hour, the same as with the
    raw samples (``window=0``): the window adds no gossip to an idle node."""
    for window in (0.0, 60.0):
        w = RateWindow(window)
        sent: dict[str, object] | None = None
        idle_sends = 0
        for i in range(12 + 720):
            busy = i < 12
            sample = {("t", p): ((300.0, 30_000.0) if busy else (0.0, 0.0)) for p in range(4)}
            load = {"led": 4, "msgs_s": 1200.0 if busy else 0.0, "parts": encode_parts(w.update(sample, 5.0))}
            if load_changed(sent, load):
                sent = load
                idle_sends += 0 if busy else 1
        assert idle_sends == 1, window


def test_window_zero_passes_the_samples_through() -> None:
    """``window <= 0``: every sample as it is (the rate before trust38b)."""
    w = RateWindow(0.0)
    for x in (100.0, 130.0, 90.0):
        assert w.update({K: (x, 1.0)}, 5.0) == {K: (x, 1.0)}
    with pytest.raises(ValueError):
        RateWindow(confirm=0)


def test_parts_changed_on_a_drift_of_the_summed_rate() -> None:
    """With ``total`` (off by default), a node whose partitions each moved
    under 20 % but whose sum moved by more than ``total`` (and 10 units/s)
    re-gossips; under the floor or the share it does not."""
    old = [["a", 0, 200, 0], ["b", 0, 200, 0]]
    new = [["a", 0, 230, 0], ["b", 0, 230, 0]]  # +15 % each
    assert not parts_changed(old, new)
    assert parts_changed(old, new, 0.05)
    assert not parts_changed(old, new, 0.2)
    assert not parts_changed([["a", 0, 50, 0]], [["a", 0, 58, 0]], 0.05)  # 8 units/s: under the floor
