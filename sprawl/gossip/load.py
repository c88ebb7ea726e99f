"""Per-partition publish rates in the gossiped load figures.  Pure.

A node gossips, in its metadata's ``load`` dict, the rates of the hottest
partitions it leads under ``"parts"``: a list of ``[topic, partition, msgs_s,
bytes_s]`` (integers per second), hottest first.  The list is bounded twice
so the metadata stays under ``GossipConfig.max_meta_bytes`` (and a member's
record fits one UDP packet): at most :data:`MAX_PARTS` entries and at most
``budget`` encoded bytes (topic names can be 249 bytes long).  A partition
not listed is colder than the coldest listed one, or not measured yet.

:func:`decode_parts` reads what a peer sent, defensively (anything malformed
is skipped); :func:`rates_by_node` turns ``member_views()`` into what
:func:`sprawl.cluster.balance.partitions_from` takes.

:class:`LoadSample` is what the node samples of itself for the figures, and
:func:`load_changed` says when they moved enough to be gossiped again.

The rates gossiped may be *windowed* (:class:`RateWindow`, the node's
``rate_window``): each partition's rate an exponentially weighted mean of
its 5-second samples, so the value a peer holds between two re-gossips does
not depend on the one sample the last re-gossip happened to take.  **Off by
default** (:data:`RATE_WINDOW` 0: the rate of the last sample alone):
measured in the simulator (docs/benchmarks.md, trust38b), a 60-s window
takes away the noise that kept re-gossiping the rates -- a node re-gossips
9x less often on the daily trace -- and with it the view's freshness: the
reactive balancer then missed sustained skew for hours.  The simulator
(:mod:`sprawl.forecast.replay`) runs the same class.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

#: At most this many partitions per node in the gossip.
MAX_PARTS = 32
#: Default byte budget of the encoded list.
PARTS_BUDGET = 480
#: Bytes/s counted like one message/s when ranking partitions by heat.
BYTES_PER_UNIT = 1024.0
#: A partition's rate must move by more than this (and 20%) to be re-gossiped.
PART_FLOORS = (10.0, 100_000.0)
#: The partitions' summed rate (units/s, :func:`heat`) must move by more than
#: this share of it (and :data:`PART_TOTAL_FLOOR`) to be re-gossiped: with
#: windowed rates the 20 % rule alone lets a node's load drift unseen by up
#: to 20 % per partition (0, the default: no such rule; trust38b measured 0.05).
PART_TOTAL_JUMP = 0.0
PART_TOTAL_FLOOR = 10.0
#: Time constant (seconds) of the windowed partition rates (:class:`RateWindow`);
#: 0: the last sample alone (the default: a window measured worse, trust38b).
RATE_WINDOW = 0.0
#: Samples in a row beyond :data:`RATE_JUMP` of the windowed rate, on the same
#: side, that replace it by their mean (a sustained change, not noise).
RATE_CONFIRM = 2
#: The relative distance from the windowed rate that counts as a change (the
#: re-gossip rule's 20%).
RATE_JUMP = 0.2

Rates = dict[tuple[str, int], tuple[float, float]]


def heat(msgs_s: float, bytes_s: float) -> float:
    """The ranking used to pick the hottest partitions."""
    return msgs_s + bytes_s / BYTES_PER_UNIT


def rates_between(
    old: Mapping[tuple[str, int], tuple[int, int]],
    new: Mapping[tuple[str, int], tuple[int, int]],
    seconds: float,
) -> Rates:
    """Rates from two samples of per-partition ``(appended_total,
    appended_bytes_total)`` counters ``seconds`` apart; partitions missing
    from ``old`` (just became led here) have no rate yet, and a counter that
    went backwards (a partition recreated) counts as 0."""
    if seconds <= 0:
        return {}
    out: Rates = {}
    for key, (n1, b1) in new.items():
        prev = old.get(key)
        if prev is None:
            continue
        n0, b0 = prev
        out[key] = (max(0, n1 - n0) / seconds, max(0, b1 - b0) / seconds)
    return out


class RateWindow:
    """Per-partition rates over a window: what a node gossips.  Pure.

    :meth:`update` takes the rates measured over the last ``seconds`` (as
    :func:`rates_between` gives them) and returns the windowed ones: each
    partition's exponentially weighted mean with time constant ``window``
    (a sample weighs ``1 - exp(-seconds / window)``), except that

    * a partition seen for the first time starts at its sample;
    * a sample of exactly 0 (no publish at all in it) sets the rate to 0, and
      the next sample starts it again --
      a stopped partition is seen stopped at once, and an idle node's
      rates are all 0 exactly when the samples are (issue 23);
    * ``confirm`` samples in a row more than ``jump`` (relative) above the
      windowed rate, or all below it, replace it by their mean: a sustained
      change is seen within ``confirm`` samples, as the raw samples would
      show it, while a 5 % noise sample moves the rate by a twelfth of
      itself (with the defaults);
    * a partition missing from ``rates`` is dropped: it is no longer led
      here, or (a partial sample) its counters did not move, a sample of 0.

    ``window <= 0`` passes the samples through unchanged (the rate of the last
    sample alone, as before trust38b).
    """

    def __init__(self, window: float = RATE_WINDOW, confirm: int = RATE_CONFIRM, jump: float = RATE_JUMP):
        if confirm < 1 or jump <= 0:
            raise ValueError("need confirm >= 1 and jump > 0")
        self.window = window
        self.confirm = confirm
        self.jump = jump
        self._rate: Rates = {}
        #: key -> (side, samples beyond the jump in a row, their sums)
        self._run: dict[tuple[str, int], tuple[int, int, float, float]] = {}

    @property
    def rates(self) -> Rates:
        """The windowed rates now."""
        return dict(self._rate)

    def update(self, rates: Mapping[tuple[str, int], tuple[float, float]], seconds: float) -> Rates:
        """Fold in the samples ``rates`` (measured over ``seconds``) and return
        the windowed rates (see the class docstring)."""
        old_rates, old_runs = self._rate, self._run
        self._rate, self._run = {}, {}
        w = 1.0 - math.exp(-seconds / self.window) if self.window > 0 and seconds > 0 else 1.0
        for key, (m0, b0) in rates.items():
            m, b = float(m0), float(b0)
            old = old_rates.get(key)
            if old is None or w >= 1.0 or (m <= 0 and b <= 0) or (old[0] <= 0 and old[1] <= 0):
                self._rate[key] = (m, b)
                continue
            x, y = heat(*old), heat(m, b)
            side = 1 if y > x * (1 + self.jump) else -1 if y < x * (1 - self.jump) else 0
            run = old_runs.get(key)
            if side and run is not None and run[0] == side:
                run = (side, run[1] + 1, run[2] + m, run[3] + b)
            elif side:
                run = (side, 1, m, b)
            else:
                run = None
            if run is not None and run[1] >= self.confirm:
                self._rate[key] = (run[2] / run[1], run[3] / run[1])
                continue
            if run is not None:
                self._run[key] = run
            self._rate[key] = (old[0] + w * (m - old[0]), old[1] + w * (b - old[1]))
        return dict(self._rate)


def encode_parts(
    rates: Mapping[tuple[str, int], tuple[float, float]], budget: int = PARTS_BUDGET
) -> list[Any]:
    """The hottest partitions, hottest first, as ``[topic, p, msgs_s, bytes_s]``
    integer entries, at most :data:`MAX_PARTS` and ``budget`` encoded bytes
    (the msgpack array header included)."""
    order = sorted(rates.items(), key=lambda kv: (-heat(*kv[1]), kv[0]))
    out: list[Any] = []
    used = 3  # array header for up to 65535 entries
    for (topic, p), (m, b) in order:
        if len(out) >= MAX_PARTS:
            break
        entry = [topic, int(p), round(m), round(b)]
        size = len(msgspec.msgpack.encode(entry))
        if used + size > budget:
            continue  # a long name; a shorter one may still fit
        used += size
        out.append(entry)
    return out


def decode_parts(raw: Any) -> Rates:
    """Rates from a peer's ``"parts"`` list; malformed entries are skipped."""
    out: Rates = {}
    if not isinstance(raw, list):
        return out
    for e in raw[: MAX_PARTS * 2]:
        if not isinstance(e, list | tuple) or len(e) != 4:
            continue
        topic, p, m, b = e
        if not isinstance(topic, str) or not isinstance(p, int) or isinstance(p, bool) or p < 0:
            continue
        if not all(_rate(x) for x in (m, b)):
            continue
        out[(topic, p)] = (float(m), float(b))
    return out


def _rate(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


def parts_changed(old: Any, new: Any, total: float = PART_TOTAL_JUMP) -> bool:
    """Whether a rate moved by more than 20% and a floor (10 msgs/s or
    100 kB/s) between two encoded lists, or their summed rate (:func:`heat`)
    by more than ``total`` of it and :data:`PART_TOTAL_FLOOR` units/s
    (``total`` 0: not that)."""
    a, b = decode_parts(old), decode_parts(new)
    if total > 0:
        x, y = sum(heat(*r) for r in a.values()), sum(heat(*r) for r in b.values())
        if abs(x - y) > max(PART_TOTAL_FLOOR, total * max(x, y)):
            return True
    for key in a.keys() | b.keys():
        ra, rb = a.get(key, (0.0, 0.0)), b.get(key, (0.0, 0.0))
        for x, y, floor in zip(ra, rb, PART_FLOORS, strict=True):
            if abs(x - y) > max(floor, 0.2 * max(x, y)):
                return True
    return False


def view_rates(parts: Any) -> list[dict[str, Any]]:
    """A ``"parts"`` list as JSON objects (for ``member_views()``)."""
    return [
        {"topic": t, "partition": p, "msgs_s": m, "bytes_s": b}
        for (t, p), (m, b) in decode_parts(parts).items()
    ]


def rates_by_node(
    views: Iterable[Mapping[str, Any]], states: tuple[str, ...] = ("alive", "suspect")
) -> dict[str, Rates]:
    """node -> {(topic, partition): (msgs_s, bytes_s)} from ``member_views()``
    entries in one of ``states`` (their ``partition_rates``)."""
    out: dict[str, Rates] = {}
    for v in views:
        if v.get("state") not in states:
            continue
        rates: Rates = {}
        for e in v.get("partition_rates") or ():
            try:
                rates[(str(e["topic"]), int(e["partition"]))] = (float(e["msgs_s"]), float(e["bytes_s"]))
            except (KeyError, TypeError, ValueError):
                continue
        out[str(v.get("id"))] = rates
    return out


@dataclass
class LoadSample:
    """Load figures of this node at one moment (read by the composition root)."""

    partitions_led: int = 0
    published_total: int = 0  # a counter: the rate is derived from two samples
    bytes_stored: int = 0
    memory_hot_bytes: int = 0
    #: (topic, partition) -> (appended_total, appended_bytes_total) of the
    #: partitions this node leads; counters, their rates are derived from
    #: two samples and the hottest gossiped as ``load["parts"]``
    #: (see :mod:`sprawl.gossip.load`).
    partitions: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    #: True when ``partitions`` lists only the led partitions whose counters
    #: may have moved since the previous sample (the others' counters stand,
    #: and an idle node's sample costs nothing per partition); ``gone`` then
    #: names the partitions no longer led here.
    partial: bool = False
    gone: list[tuple[str, int]] = field(default_factory=list)


def _busy(load: dict[str, Any]) -> bool:
    """Whether load figures say some traffic: a publish rate, or a partition's, above 0."""
    if _rate(load.get("msgs_s")) and float(load["msgs_s"]) > 0:
        return True
    return any(m > 0 or b > 0 for m, b in decode_parts(load.get("parts") or []).values())


def load_changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """True when the load figures moved enough to be worth an incarnation bump
    and a round of gossip: partitions led changed, or a figure changed by more
    than 20% and more than a floor (1 msg/s, 1 MB), or a partition's rate in
    ``parts`` did (see :func:`sprawl.gossip.load.parts_changed`), or the node
    went idle: every rate is 0 now and the figures gossiped last said some
    was not.  (Under the floors, the last small rates of a burst -- a
    control record's 12 bytes/s -- were gossiped on for as long as the node
    stayed idle, and the controller, seeing traffic, built its balancing
    view of every partition every 10 s: issue 23.)"""
    if old is None:
        return True
    if old.get("led") != new.get("led"):
        return True
    if _busy(old) and not _busy(new):
        return True
    floors = {"msgs_s": 1.0, "bytes": 1_000_000, "mem": 1_000_000}
    for key, floor in floors.items():
        a = float(old.get(key) or 0)
        b = float(new.get(key) or 0)
        if abs(a - b) > max(floor, 0.2 * max(abs(a), abs(b))):
            return True
    return parts_changed(old.get("parts") or [], new.get("parts") or [])
