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


def parts_changed(old: Any, new: Any) -> bool:
    """Whether a rate moved by more than 20% and a floor (10 msgs/s or
    100 kB/s) between two encoded lists."""
    a, b = decode_parts(old), decode_parts(new)
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
