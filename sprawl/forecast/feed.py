"""The traffic forecaster on a running node: fed online, read by the
controller, the HTTP API, the dashboard and the metrics.  An adapter (the
only module of :mod:`sprawl.forecast` that touches Twisted).

Every ``interval`` seconds on the injected clock, :class:`TrafficFeed`
hands the pure :class:`~sprawl.forecast.traffic.TrafficForecaster`

* the rates the nodes already gossip (``member_views()``: each live node's
  hottest partitions, see :mod:`sprawl.gossip.load`), which become the
  per-partition, per-node and per-topic ``publish`` series -- the same on
  every node, since every node hears the same gossip;
* this node's own per-topic counters (``published`` and ``delivered``
  messages, the ones the dashboard's chart draws), which become
  ``("topic", T, "published")`` and ``("topic", T, "delivered")`` series:
  deliveries are counted only where a subscriber is served, so they are not
  in the gossip.

Each anomaly (:mod:`sprawl.forecast.anomaly`) is an event: a warning when it
opens and an info line when it closes (the constant format strings
:data:`~sprawl.forecast.anomaly.LOG_OPEN` and
:data:`~sprawl.forecast.anomaly.LOG_CLOSE`), a counter by kind
(:class:`ForecastCollector`), and a mark on the dashboard's chart.

Readers: :meth:`TrafficFeed.partition_forecasts` is the controller's input
(each partition's ``forecast`` for the balancer; None while predictive
balancing is off), :meth:`TrafficFeed.load_view` answers ``GET
/v1/cluster/load`` (``sprawlctl top``), :meth:`TrafficFeed.topic_view` adds
the ``predicted_*`` fields of ``GET /v1/topics/{topic}``, and
:meth:`TrafficFeed.dashboard_view` gives the dashboard its forecast bands.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.internet import task
from twisted.logger import Logger

from sprawl.cluster.balance import PROFILES_PENDING
from sprawl.forecast.anomaly import DROP, LOG_CLOSE, LOG_OPEN, SILENT, SURGE, Anomaly
from sprawl.forecast.earned import EarnedTrust
from sprawl.forecast.holtwinters import Band
from sprawl.forecast.traffic import NODE, PARTITION, Key, TrafficForecaster, topic_key
from sprawl.gossip.load import rates_by_node

if TYPE_CHECKING:
    from sprawl.interfaces import Clock, Delayed, Members

log = Logger()

#: Anomalies a view lists (newest first).
VIEW_ANOMALIES = 50
#: Seconds ahead a dashboard band reaches (and its points).
AHEAD_SECONDS = 60.0
AHEAD_POINTS = 4
#: The per-topic counter series this node feeds (kind names of ``topic_key``).
PUBLISHED = "published"
DELIVERED = "delivered"
KINDS = (SURGE, DROP, SILENT)
#: Partition series a profile pass forecasts per reactor turn (each ~60 us of
#: CPU on a quiet machine at the node's default model: ~2 ms a slice;
#: docs/benchmarks.md, "trust35").
PROFILE_SLICE = 32

#: The per-topic message counters of this node: kind -> topic -> total so far.
Counters = Callable[[], Mapping[str, Mapping[str, float]]]


def band_fields(band: Band | None, name: str) -> dict[str, float | None]:
    """``{name, name_low, name_high}`` from a band (rounded; None without one)."""
    if band is None:
        return {name: None, f"{name}_low": None, f"{name}_high": None}
    return {
        name: round(band.point, 3),
        f"{name}_low": round(band.low, 3),
        f"{name}_high": round(band.high, 3),
    }


class TrafficFeed:
    """The forecaster fed from gossip and this node's counters (see the module docstring)."""

    def __init__(
        self,
        forecaster: TrafficForecaster,
        clock: Clock,
        members: Members | None,
        *,
        counters: Counters | None = None,
        interval: float = 5.0,
        predictive: bool = True,
        earned: EarnedTrust | None = None,
        profile_slice: int = PROFILE_SLICE,
    ) -> None:
        if interval <= 0 or profile_slice < 1:
            raise ValueError("need interval > 0 and profile_slice >= 1")
        self.forecaster = forecaster
        self.clock = clock
        self.members = members
        self.counters = counters
        self.interval = interval
        #: Whether the controller gets the partitions' forecasts.
        self.predictive = predictive
        #: Earned-trust balancing (``--earned-trust``): the controller also gets
        #: the partitions' profiles (:meth:`partition_profiles`); None: off.
        self.earned = earned
        #: The profiles last computed, when (-inf: never), and how many times.
        self._profiles: dict[tuple[str, int], tuple[float, ...]] = {}
        self._profiled_at = -math.inf
        self.profiles_computed = 0
        #: Partition series forecast per slice of a profile pass (one slice
        #: per reactor turn: :meth:`partition_profiles`).
        self.profile_slice = profile_slice
        #: The pass under way: its time, its steps and what it has filled so far.
        self._pass: tuple[float, Iterator[None], dict[tuple[str, int], tuple[float, ...]]] | None = None
        self._next_slice: Delayed | None = None
        #: The sizes (partition series) of the slices of the last pass, in order.
        self.last_slices: list[int] = []
        #: A sample due while a pass was under way (taken when it ends: its
        #: series must not change under it).
        self._tick_waiting = False
        #: Samples taken (ticks).
        self.ticks = 0
        #: Each partition's leader at the last tick (from the gossip).
        self.leaders: dict[tuple[str, int], str] = {}
        self._loop: task.LoopingCall | None = None

    # -- life --------------------------------------------------------------------------

    def start(self) -> None:
        """Sample every ``interval`` seconds from now on."""
        if self._loop is not None:
            return
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.clock  # type: ignore[assignment]  # an IReactorTime
        self._loop.start(self.interval, now=False).addErrback(
            lambda f: log.failure("traffic forecast: sampling stopped", f)
        )

    def stop(self) -> None:
        """Stop sampling and any profile pass under way (idempotent)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._next_slice is not None and self._next_slice.active():
            self._next_slice.cancel()
        self._next_slice = None
        self._pass = None
        self._tick_waiting = False

    def _tick(self) -> None:
        if self._pass is not None:  # the profiles' series must not change under the pass
            self._tick_waiting = True
            return
        try:
            self.tick()
        except Exception:  # one bad sample must not stop the forecasts for good
            log.failure("traffic forecast: a sample failed")

    def tick(self) -> list[Anomaly]:
        """One sample of every rate; logs the anomalies that opened or closed on it."""
        now = self.clock.seconds()
        fc = self.forecaster
        events: list[Anomaly] = []
        if self.members is not None:
            views = self.members.member_views()
            self.leaders = {key: node for node, rates in rates_by_node(views).items() for key in rates}
            events += fc.observe_gossip(now, views)
        if self.counters is not None:
            for kind, totals in sorted(self.counters().items()):
                events += fc.observe_counters(now, kind, totals)
        self.ticks += 1
        for ev in events:
            if ev.end is None:
                log.warn(LOG_OPEN, **ev.log_fields())
            else:
                log.info(LOG_CLOSE, **ev.log_fields())
        return events

    # -- the controller's input ------------------------------------------------------------

    def partition_forecasts(self, now: float) -> dict[tuple[str, int], float] | None:
        """Each warm partition's predicted load over the horizon, for the
        balancer; None while predictive balancing is off."""
        if not self.predictive:
            return None
        return self.forecaster.partition_forecasts(now)

    def partition_profiles(self, now: float) -> Mapping[tuple[str, int], Sequence[float]] | None:
        """Each warm partition's predicted load over one season, for the
        balancer with earned trust (:mod:`sprawl.forecast.earned`), recomputed
        at most every ``profile_every`` seconds (not per decision, as the
        simulator's ``--earned`` run); None while it is off or the forecaster
        has none to give (distrusted after a surprise, or not warm yet).

        The computation never holds the reactor for long: a pass forecasts
        :attr:`profile_slice` partition series per reactor turn (the first
        slice at once, each next one ``callLater(0)``), the feed's samples
        waiting for its end (so its result is that of one pass at ``now``).
        While a pass is under way the profiles of the last one are given if
        there are some and they are under two ``profile_every`` old, else
        :data:`~sprawl.cluster.balance.PROFILES_PENDING` (the controller's
        decision then acts on the present alone: forecasts without profiles
        would shed unchecked)."""
        e = self.earned
        if not self.predictive or e is None:
            return None
        if now - self._profiled_at >= e.profile_every:
            if self._pass is None:
                out: dict[tuple[str, int], tuple[float, ...]] = {}
                steps = self.forecaster.profile_steps(now, e.profile_horizon, e.profile_points, out)
                self._pass = (now, steps, out)
                self.last_slices = []
                self._slice()
            if self._pass is not None and (
                not self._profiles or now - self._profiled_at >= 2 * e.profile_every
            ):
                return PROFILES_PENDING  # under way, and nothing recent enough to stand in
        return self._profiles or None

    def _slice(self) -> None:
        """One slice of the profile pass under way: :attr:`profile_slice`
        partition series, then the next slice on the next reactor turn, or
        the pass's end (its profiles kept, a sample that waited taken)."""
        self._next_slice = None
        if self._pass is None:
            return
        at, steps, out = self._pass
        done = 0
        try:
            for _ in steps:
                done += 1
                if done >= self.profile_slice:
                    break
            else:
                self.last_slices.append(done)
                self._profiles = out
                self._profiled_at = at
                self.profiles_computed += 1
                self._end_pass()
                return
        except Exception:
            log.failure("traffic forecast: a profile pass failed")
            self._end_pass()
            return
        self.last_slices.append(done)
        self._next_slice = self.clock.callLater(0, self._slice)

    def _end_pass(self) -> None:
        """No pass under way any more: the sample that waited for it is taken."""
        self._pass = None
        if self._tick_waiting:
            self._tick_waiting = False
            self._tick()

    # -- views ---------------------------------------------------------------------------

    def _fresh(self, key: Key, now: float) -> tuple[float, float] | None:
        """The last sample of ``key`` if it was taken at the last tick or the one before."""
        last = self.forecaster.last(key)
        if last is None or now - last[0] > 2 * self.interval + 1e-9:
            return None
        return last

    def anomalies(self) -> list[dict[str, Any]]:
        """The latest anomaly events, newest first (open ones have ``end`` null)."""
        return [a.as_dict() for a in reversed(self.forecaster.anomalies)][:VIEW_ANOMALIES]

    def load_view(self) -> dict[str, Any]:
        """``GET /v1/cluster/load``: present and predicted load per node, per
        partition and per topic, and the latest anomalies."""
        now = self.clock.seconds()
        fc = self.forecaster
        nodes: list[dict[str, Any]] = []
        partitions: list[dict[str, Any]] = []
        topics: list[dict[str, Any]] = []
        for key in sorted(fc.keys(), key=repr):
            last = self._fresh(key, now)
            if last is None:
                continue
            pred = band_fields(fc.peak(key, now), "predicted")
            if key[0] == NODE:
                nodes.append({"node": key[1], "load": round(last[1], 3), **pred})
            elif key[0] == PARTITION:
                topic, p = str(key[1]), int(key[2])
                partitions.append(
                    {
                        "topic": topic,
                        "partition": p,
                        "leader": self.leaders.get((topic, p)),
                        "load": round(last[1], 3),
                        **pred,
                    }
                )
            else:
                topics.append({"topic": key[1], "kind": key[2], "rate": round(last[1], 3), **pred})
        return {
            "ts": round(now, 3),
            "predictive": self.predictive,
            "horizon_s": fc.horizon,
            "step_s": fc.config.bucket,
            "interval_s": self.interval,
            "series": len(fc.keys()),
            "nodes": nodes,
            "partitions": partitions,
            "topics": topics,
            "anomalies": self.anomalies(),
            "anomalies_open": len(fc.open_anomalies()),
        }

    def topic_view(self, topic: str, partitions: int) -> dict[str, Any]:
        """The ``predicted_*`` fields of a topic's description: the cluster's
        publish rate of the topic over the horizon (msgs/s, from gossip) and
        each partition's predicted load (``partition_details``'s order)."""
        now = self.clock.seconds()
        fc = self.forecaster
        out: dict[str, Any] = band_fields(fc.peak(topic_key(topic, "publish"), now), "predicted_publish_rate")
        out["predicted_horizon_s"] = fc.horizon
        out["predicted_partitions"] = [
            band_fields(fc.peak((PARTITION, topic, p), now), "predicted_load") for p in range(partitions)
        ]
        return out

    def dashboard_view(self, topics: Iterable[str]) -> dict[str, Any]:
        """Per topic, what the model expects of this node's published rate
        now (``low``/``point``/``high``, the band anomalies are judged by) and
        the forecast ``ahead`` (``[t, point, low, high]``, up to a minute
        ahead); topics without a warm model are left out."""
        now = self.clock.seconds()
        fc = self.forecaster
        step = fc.config.bucket
        ahead_s = max(AHEAD_SECONDS, step)
        times = [now + ahead_s * (i + 1) / AHEAD_POINTS for i in range(AHEAD_POINTS)]
        bands: dict[str, Any] = {}
        for name in topics:
            key = topic_key(name, PUBLISHED)
            here = fc.expect(key, now)
            if here is None:
                continue
            ahead = []
            for t in times:
                b = fc.forecast(key, t)
                if b is not None:
                    ahead.append([round(t, 3), round(b.point, 3), round(b.low, 3), round(b.high, 3)])
            bands[name] = {
                "point": round(here.point, 3),
                "low": round(here.low, 3),
                "high": round(here.high, 3),
                "ahead": ahead,
            }
        return bands

    def member_fields(self) -> dict[str, dict[str, Any]]:
        """Per node, the ``predicted_load*`` fields of its ``GET /v1/cluster``
        member entry (nodes whose forecast is not warm are left out)."""
        now = self.clock.seconds()
        return {node: band_fields(band, "predicted_load") for node, band in self.node_forecasts(now).items()}

    def node_forecasts(self, now: float) -> dict[str, Band]:
        """Each node's predicted load (from its gossiped partitions) over the horizon."""
        out: dict[str, Band] = {}
        for key in self.forecaster.keys():
            if key[0] == NODE and self._fresh(key, now) is not None:
                band = self.forecaster.peak(key, now)
                if band is not None:
                    out[str(key[1])] = band
        return out


class ForecastCollector:
    """The forecaster's figures at scrape time: anomaly events by kind (opened
    so far, and open now), the series tracked and their memory, and each
    node's predicted load."""

    def __init__(self, feed: TrafficFeed):
        self.feed = feed

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        fc = self.feed.forecaster
        total = CounterMetricFamily(
            "sprawl_traffic_anomalies",
            "Traffic anomalies opened (a rate outside its forecast's interval), by kind",
            labels=["kind"],
        )
        open_ = GaugeMetricFamily(
            "sprawl_traffic_open_anomalies", "Traffic anomalies under way, by kind", labels=["kind"]
        )
        now_open: dict[str, int] = {}
        for a in fc.open_anomalies():
            now_open[a.kind] = now_open.get(a.kind, 0) + 1
        for kind in KINDS:
            total.add_metric([kind], fc.anomalies_total.get(kind, 0))
            open_.add_metric([kind], now_open.get(kind, 0))
        yield total
        yield open_
        yield GaugeMetricFamily(
            "sprawl_forecast_series", "Rate series the forecaster tracks", value=len(fc.keys())
        )
        yield GaugeMetricFamily(
            "sprawl_forecast_memory_bytes", "Bytes the forecaster's models hold", value=fc.memory_bytes()
        )
        pred = GaugeMetricFamily(
            "sprawl_node_predicted_load_per_second",
            "Each node's predicted publish load (msgs/s + KiB/s of the partitions it leads) at its "
            "highest over the forecast horizon",
            labels=["node"],
        )
        for node, band in sorted(self.feed.node_forecasts(self.feed.clock.seconds()).items()):
            pred.add_metric([node], band.point)
        yield pred
