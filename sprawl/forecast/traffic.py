"""Forecasts of every partition, node and topic rate the cluster sees.  Pure.

:class:`TrafficForecaster` keeps one :class:`~sprawl.forecast.holtwinters.Series`
and one :class:`~sprawl.forecast.anomaly.AnomalyDetector` per rate, fed from
what the nodes already gossip (:meth:`TrafficForecaster.observe_gossip`:
``member_views()`` entries, whose ``partition_rates`` are the publish rates
of the hottest partitions each node leads) and from counters a node keeps
(:meth:`TrafficForecaster.observe_counters`: e.g. the per-topic
``published``/``delivered`` totals of the dashboard snapshot).  Series:

* ``("partition", topic, p)``: publish load in balancer units
  (msgs/s + bytes/s / 1024), measured at the leader;
* ``("node", node_id)``: the sum over the partitions the node leads;
* ``("topic", topic, "publish")``: msgs/s, from the gossip (the cluster's);
* ``("topic", topic, KIND)`` for counters fed by :meth:`observe_counters`
  (``"deliver"`` from the delivery counters).

Delivery rates are not in the gossip: only the node that serves a
subscriber counts its deliveries, so delivery series come from that node's
counters.

Bounded: at most ``max_series`` series (the one observed longest ago is
dropped for a new one: about 6.3 KB each with the daily season, so 6.5 MB
for the default 1,024), and the last ``max_anomalies`` events.

The controller asks :meth:`TrafficForecaster.partition_forecasts` for the
balancer's view ``horizon`` seconds ahead (see
:func:`sprawl.cluster.balance.partitions_from`).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from sprawl.forecast.anomaly import SILENT, SURGE, Anomaly, AnomalyConfig, AnomalyDetector
from sprawl.forecast.holtwinters import Band, ForecastConfig, Series, series_bytes
from sprawl.gossip.load import BYTES_PER_UNIT, rates_by_node

Key = tuple[Any, ...]

#: A surge the guard takes as passing starts with a jump: its first sample at
#: least this many times the top of the interval expected (a launch that
#: ramps up leaves the interval by a little and is not guarded); the default
#: of ``TrafficForecaster(surge_jump=...)`` (0: every surge).
SUDDEN = 2.0

PARTITION = "partition"
NODE = "node"
TOPIC = "topic"


def partition_key(topic: str, partition: int) -> Key:
    """The series of a partition's publish load."""
    return (PARTITION, topic, partition)


def node_key(node: str) -> Key:
    """The series of a node's publish load (the partitions it leads)."""
    return (NODE, node)


def topic_key(topic: str, kind: str = "publish") -> Key:
    """The series of a topic's ``kind`` rate (``publish``, ``deliver``)."""
    return (TOPIC, topic, kind)


def key_name(key: Key) -> str:
    """A series as people read it: ``partition orders/3``, ``node n1``, ``topic orders publish``."""
    if key[0] == PARTITION:
        return f"partition {key[1]}/{key[2]}"
    return " ".join(str(k) for k in key)


class _Tracked:
    __slots__ = ("detector", "last", "seen", "series", "surge", "surprised", "surprising")

    def __init__(self, key: Key, config: ForecastConfig, anomaly: AnomalyConfig) -> None:
        self.series = Series(config)
        self.detector = AnomalyDetector(key_name(key), anomaly)
        #: The last sample: (time, value).
        self.last: tuple[float, float] | None = None
        self.seen = 0.0
        #: The last surge: (its start, the top of the interval expected then).
        self.surge: tuple[float, float] | None = None
        #: The last sample of this series' last surprise (-inf: never), and
        #: whether that surprise's event is still open (``distrust_partition``).
        self.surprised = -math.inf
        self.surprising = False

    def surging(self, now: float, guard: float) -> float | None:
        """The expected top while a surge that began less than ``guard``
        seconds ago still holds the rate above it; else None."""
        if self.surge is None or self.last is None or now - self.surge[0] >= guard:
            return None
        return self.surge[1] if self.last[1] > self.surge[1] else None


class TrafficForecaster:
    """Every tracked rate's model, its anomalies, and the views of them."""

    def __init__(
        self,
        config: ForecastConfig | None = None,
        anomaly: AnomalyConfig | None = None,
        *,
        max_series: int = 1024,
        max_anomalies: int = 200,
        horizon: float = 900.0,
        hold_seasons: bool = False,
        surge_guard: float = 0.0,
        surge_jump: float = SUDDEN,
        distrust: float = 0.0,
        distrust_partition: bool = False,
        distrust_profiles: bool = True,
    ) -> None:
        if max_series < 1 or max_anomalies < 1 or horizon < 0:
            raise ValueError("need max_series >= 1, max_anomalies >= 1, horizon >= 0")
        self.config = config or ForecastConfig()
        self.anomaly_config = anomaly or AnomalyConfig()
        self.max_series = max_series
        #: Seconds ahead the balancer looks (:meth:`partition_forecasts`).
        self.horizon = horizon
        #: Samples of a series whose anomaly is open do not teach its seasons
        #: (so a surge does not come back as a ghost a season later).  Off by
        #: default: measured on the balancer's traces it removes ghost surges
        #: but makes more moves on the daily trace (docs/benchmarks.md).
        self.hold_seasons = hold_seasons
        #: For this many seconds after a sudden surge began (:data:`SUDDEN`), while the rate stays
        #: above the interval expected at its start, the surge is taken as
        #: passing: the seasons do not learn it (no ghost a season later) and
        #: the balancer's forecasts (:meth:`partition_forecasts`,
        #: :meth:`partition_profiles`) are capped at that expected top.  0: off.
        self.surge_guard = surge_guard
        self.surge_jump = surge_jump
        #: The forecast must have earned the balancer's trust: for this many
        #: seconds after the model was grossly wrong about a partition (a
        #: *surprise*: a surge whose first sample is :data:`SUDDEN` times the
        #: top of its interval or more, or a producer gone silent), the
        #: balancer gets no forecast at all (:meth:`partition_paths` and
        #: :meth:`partition_forecasts` return nothing, so it runs the reactive
        #: rule alone).  Cluster-wide unless :attr:`distrust_partition`: one
        #: move on a forecast anywhere changes every later decision.  0: off.
        self.distrust = distrust
        #: Distrust per partition instead (off here; earned trust's value
        #: since trust43, :class:`sprawl.forecast.earned.EarnedTrust`;
        #: docs/benchmarks.md trust39-trust43): a surprise withholds only
        #: *that* partition's forecast, for
        #: :attr:`distrust` seconds after the surprise's event closed (so its
        #: season's echo a season later is withheld too); the other
        #: partitions, whose models were not wrong, keep theirs.
        self.distrust_partition = distrust_partition
        #: With :attr:`distrust_partition`: whether the distrust withholds the
        #: partition's profile too (:meth:`partition_profiles`; trust39's form,
        #: the default here) or only its short forecasts (:meth:`partition_paths`,
        #: :meth:`partition_forecasts`; trust40, earned trust's value since
        #: trust43).  A
        #: profile is the model's own forecast over the season (no anchor on
        #: the last sample past twice :attr:`horizon`): its seasonal shape.
        #: Withheld, the balancer takes the partition's present load as its
        #: load at every point of the season instead -- its cycle flattened
        #: for a whole season, a surge under way taken to last it -- and moves
        #: on that picture (docs/benchmarks.md, trust40).
        self.distrust_profiles = distrust_profiles
        #: When the last surprise opened (-inf: never).
        self.surprised_at = -math.inf
        self._series: OrderedDict[Key, _Tracked] = OrderedDict()
        #: Events, oldest first (open ones included, updated in place).
        self.anomalies: deque[Anomaly] = deque(maxlen=max_anomalies)
        #: Events opened, by kind (for a counter metric).
        self.anomalies_total: dict[str, int] = {}
        #: Series dropped to stay under ``max_series``.
        self.evicted = 0
        self._counters: dict[Key, tuple[float, float]] = {}

    # -- feeding -------------------------------------------------------------------

    def observe(self, now: float, key: Key, value: float, *, detect: bool = True) -> list[Anomaly]:
        """One sample of one series; returns the anomalies that opened or closed
        (none with ``detect`` False)."""
        if not math.isfinite(value) or value < 0 or not math.isfinite(now):
            return []
        tr = self._series.get(key)
        if tr is None:
            while len(self._series) >= self.max_series:
                self._series.popitem(last=False)
                self.evicted += 1
            tr = self._series[key] = _Tracked(key, self.config, self.anomaly_config)
        else:
            self._series.move_to_end(key)
        events = tr.detector.sample(now, value, tr.series.expect(now)) if detect else []
        for ev in events:
            if ev.kind == SURGE and ev.end is None and ev.observed >= self.surge_jump * ev.expected.high:
                tr.surge = (ev.start, ev.expected.high)
            if (
                key[0] == PARTITION
                and ev.end is None
                and (ev.kind == SILENT or (ev.kind == SURGE and ev.observed >= SUDDEN * ev.expected.high))
            ):
                self.surprised_at = max(self.surprised_at, now)
                tr.surprising = True
        if tr.surprising:
            tr.surprised = now
            tr.surprising = tr.detector.open is not None
        tr.last = (now, value)
        held = (self.hold_seasons and tr.detector.unusual) or (
            self.surge_guard > 0 and tr.surging(now, self.surge_guard) is not None
        )
        tr.series.observe(now, value, seasonal=not held)
        tr.seen = now
        for ev in events:
            if ev.end is None:
                self.anomalies.append(ev)
                self.anomalies_total[ev.kind] = self.anomalies_total.get(ev.kind, 0) + 1
        return events

    def observe_gossip(self, now: float, views: Iterable[Mapping[str, Any]]) -> list[Anomaly]:
        """Rates from ``member_views()``: every partition a live node reports,
        each live node's sum, and each topic's publish msgs/s."""
        events: list[Anomaly] = []
        topics: dict[str, float] = {}
        for node, rates in sorted(rates_by_node(views).items()):
            total = 0.0
            for (topic, p), (m, b) in sorted(rates.items()):
                units = m + b / BYTES_PER_UNIT
                total += units
                topics[topic] = topics.get(topic, 0.0) + m
                events += self.observe(now, partition_key(topic, p), units)
            # A node's load changes with placement (a leadership move is no
            # traffic anomaly): forecast it, do not watch it.
            events += self.observe(now, node_key(node), total, detect=False)
        for topic, m in sorted(topics.items()):
            events += self.observe(now, topic_key(topic, "publish"), m)
        return events

    def observe_counters(self, now: float, kind: str, totals: Mapping[str, float]) -> list[Anomaly]:
        """Per-topic counters (e.g. messages delivered so far): the rate since
        the previous call becomes a sample of ``topic_key(topic, kind)``.  A
        counter that went backwards (a restart) starts again."""
        events: list[Anomaly] = []
        gone = {k[1] for k in self._counters if k[2] == kind and k[1] not in totals}
        for topic in gone:
            self.forget_topic(topic)
        for topic, total in sorted(totals.items()):
            key = topic_key(topic, kind)
            prev = self._counters.get(key)
            self._counters[key] = (now, float(total))
            if prev is None or now <= prev[0] or total < prev[1]:
                continue
            events += self.observe(now, key, (total - prev[1]) / (now - prev[0]))
        if len(self._counters) > 4 * self.max_series:
            self._counters = {k: v for k, v in self._counters.items() if k in self._series}
        return events

    def forget_topic(self, topic: str) -> None:
        """Drop every series of ``topic`` (its partitions' and its own) and its
        counters: a counter that vanished (:meth:`observe_counters`) is a
        deleted topic's, and a node that churns topics would otherwise fill
        ``max_series`` with the dead ones (~6.3 KB each)."""
        for key in [k for k in self._series if k[0] in (PARTITION, TOPIC) and k[1] == topic]:
            del self._series[key]
        for key in [k for k in self._counters if k[1] == topic]:
            del self._counters[key]

    # -- reading ---------------------------------------------------------------------

    def keys(self) -> list[Key]:
        """Every tracked series, least recently observed first."""
        return list(self._series)

    def last(self, key: Key) -> tuple[float, float] | None:
        """The last sample of ``key``: (time, value)."""
        tr = self._series.get(key)
        return None if tr is None else tr.last

    def forecast(self, key: Key, at: float) -> Band | None:
        """``key``'s forecast for time ``at``; None when unknown or not warm yet."""
        tr = self._series.get(key)
        return None if tr is None else tr.series.forecast(at)

    def expect(self, key: Key, at: float) -> Band | None:
        """What one sample of ``key`` at ``at`` should be (the interval anomaly
        detection compares samples with); None when unknown or not warm yet."""
        tr = self._series.get(key)
        return None if tr is None else tr.series.expect(at)

    def predict(self, key: Key, now: float, at: float) -> Band | None:
        """``key``'s rate at ``at`` as the balancer reads it: the model's
        predicted *change* from ``now`` to ``at`` added to the last measured
        rate (anchoring removes the level's lag behind a ramp and keeps the
        prediction consistent with the present load the balancer sees)."""
        tr = self._series.get(key)
        if tr is None or tr.last is None:
            return None
        here, there = tr.series.forecast(now), tr.series.forecast(at)
        if here is None or there is None:
            return None
        shift = tr.last[1] - here.point
        return Band(max(0.0, there.point + shift), max(0.0, there.low + shift), max(0.0, there.high + shift))

    def _times(self, now: float, horizon: float | None, points: int) -> list[float]:
        """``points`` evenly spaced times up to ``horizon`` seconds after ``now``
        (default :attr:`horizon`), at most one per step."""
        h = self.horizon if horizon is None else horizon
        n = max(1, min(points, math.ceil(h / self.config.bucket)))
        return [now + h * (i + 1) / n for i in range(n)]

    def _peak(self, tr: _Tracked, now: float, times: list[float]) -> Band | None:
        shift = _anchor_shift(tr, now)
        if shift is None:
            return None
        bands = [b for b in map(tr.series.forecast, times) if b is not None]
        if not bands:
            return None
        top = max(bands, key=lambda b: b.point)
        return Band(max(0.0, top.point + shift), max(0.0, top.low + shift), max(0.0, top.high + shift))

    def peak(self, key: Key, now: float, horizon: float | None = None, points: int = 6) -> Band | None:
        """``key``'s predicted rate (:meth:`predict`, anchored on the last
        sample) at its highest over the next ``horizon`` seconds (default
        :attr:`horizon`), with that time's interval; None when unknown or
        not warm yet."""
        tr = self._series.get(key)
        return None if tr is None else self._peak(tr, now, self._times(now, horizon, points))

    def trusted(self, now: float) -> bool:
        """Whether the balancer may act on the forecasts now: no surprise in
        the last :attr:`distrust` seconds (always, with it off or
        :attr:`distrust_partition`: then per partition, :meth:`_trusts`)."""
        return self.distrust <= 0 or self.distrust_partition or now - self.surprised_at >= self.distrust

    def _trusts(self, tr: _Tracked, now: float) -> bool:
        """Whether ``tr``'s forecast reaches the balancer (:attr:`distrust_partition`)."""
        return not self.distrust_partition or self.distrust <= 0 or now - tr.surprised >= self.distrust

    def partition_paths(
        self, now: float, horizon: float | None = None, points: int = 6
    ) -> dict[tuple[str, int], tuple[float, ...]]:
        """Every warm partition's predicted load (:meth:`predict`) at ``points``
        evenly spaced times up to ``horizon`` seconds ahead (default
        :attr:`horizon`; at most one per step), capped while a surge is taken
        as passing (:attr:`surge_guard`): the path the balancer replays its
        reactive rule on (``BalanceConfig.predict_replace``).  Nothing while
        the forecasts are not :meth:`trusted`."""
        times = self._times(now, horizon, points)
        out: dict[tuple[str, int], tuple[float, ...]] = {}
        if not self.trusted(now):
            return out
        for key, tr in self._series.items():
            if key[0] != PARTITION or tr.last is None or not self._trusts(tr, now):
                continue
            here = tr.series.forecast(now)
            if here is None:
                continue
            shift = tr.last[1] - here.point
            row = [max(0.0, b.point + shift) for b in map(tr.series.forecast, times) if b is not None]
            if row:
                top = tr.surging(now, self.surge_guard) if self.surge_guard > 0 else None
                out[(str(key[1]), int(key[2]))] = (
                    tuple(row) if top is None else tuple(min(v, top) for v in row)
                )
        return out

    def partition_forecasts(
        self, now: float, horizon: float | None = None, points: int = 6
    ) -> dict[tuple[str, int], float]:
        """Every warm partition's predicted load (:meth:`predict`) at its
        highest over the next ``horizon`` seconds (default :attr:`horizon`),
        checked at ``points`` evenly spaced times up to the horizon (at most
        one per step): the highest of :meth:`partition_paths`, what
        :func:`sprawl.cluster.balance.partitions_from` takes."""
        return {k: max(v) for k, v in self.partition_paths(now, horizon, points).items()}

    def partition_profiles(
        self, now: float, horizon: float, points: int = 24
    ) -> dict[tuple[str, int], tuple[float, ...]]:
        """Every warm partition's predicted load at ``points`` evenly spaced
        times over the next ``horizon`` seconds (hours: the placement a
        forecast move leaves must hold up over them, see
        :class:`sprawl.cluster.balance.PartitionLoad`).  The model's own
        forecast, with the anchor of :meth:`predict` (the last sample's
        distance from the model) fading out linearly over twice
        :attr:`horizon`: a surge under way is not assumed to last for hours.
        One pass of :meth:`profile_steps`, run to its end."""
        out: dict[tuple[str, int], tuple[float, ...]] = {}
        for _ in self.profile_steps(now, horizon, points, out):
            pass
        return out

    def profile_steps(
        self, now: float, horizon: float, points: int, out: dict[tuple[str, int], tuple[float, ...]]
    ) -> Iterator[None]:
        """:meth:`partition_profiles` in steps: fills ``out`` and yields once
        after each partition series it forecast, so a caller can spread the
        pass over reactor turns in slices of so many series
        (:class:`sprawl.forecast.feed.TrafficFeed`).  The series are those
        tracked when the pass starts; run with no sample observed in between,
        ``out`` ends as :meth:`partition_profiles` of ``now`` would give it."""
        if points < 1 or horizon <= 0:
            raise ValueError("need points >= 1 and horizon > 0")
        return self._profile_steps(now, horizon, points, out)

    def _profile_steps(
        self, now: float, horizon: float, points: int, out: dict[tuple[str, int], tuple[float, ...]]
    ) -> Iterator[None]:
        if not self.trusted(now):
            return
        times = [now + horizon * (i + 1) / points for i in range(points)]
        fade = 2 * self.horizon
        weights = [max(0.0, 1.0 - (t - now) / fade) if fade > 0 else 0.0 for t in times]
        for key in list(self._series):  # the keys only: ~5x cheaper to copy than the items
            if key[0] != PARTITION:
                continue
            tr = self._series.get(key)
            if tr is None:  # dropped since the pass began
                continue
            if self.distrust_profiles and not self._trusts(tr, now):
                continue
            row = self._profile(tr, now, times, weights)
            if row is not None:
                out[(str(key[1]), int(key[2]))] = row
            yield

    def _profile(
        self, tr: _Tracked, now: float, times: list[float], weights: list[float]
    ) -> tuple[float, ...] | None:
        """One series' profile (:meth:`partition_profiles`); None when not warm."""
        shift = _anchor_shift(tr, now)
        if shift is None:
            return None
        row = []
        for t, w in zip(times, weights, strict=True):
            b = tr.series.forecast(t)
            if b is None:
                return None
            row.append(max(0.0, b.point + shift * w))
        top = tr.surging(now, self.surge_guard) if self.surge_guard > 0 else None
        return tuple(row) if top is None else tuple(min(v, top) for v in row)

    def open_anomalies(self) -> list[Anomaly]:
        """Events still under way."""
        return [a for a in self.anomalies if a.end is None]

    def memory_bytes(self) -> int:
        """Bytes the series' state takes (the models; keys and bookkeeping aside)."""
        return sum(series_bytes(tr.series) for tr in self._series.values())


def _anchor_shift(tr: _Tracked, now: float) -> float | None:
    """How far ``tr``'s last sample stands above its model's value now (what
    a forecast anchored on the last sample adds), or None when the series has
    no sample or is not warm yet."""
    if tr.last is None:
        return None
    here = tr.series.forecast(now)
    if here is None:
        return None
    return tr.last[1] - here.point
