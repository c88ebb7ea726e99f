"""The forecaster wired into a node (``sprawl.forecast.feed``), on a ``task.Clock``:
sampled from gossip views and counters every interval, its anomalies logged and
counted, its forecasts handed to the controller's balancer, and its views (the
``GET /v1/cluster/load`` body, a topic's ``predicted_*`` fields, the dashboard
bands)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet import task
from twisted.logger import capturedLogs

from harness.rate_gossip import RateGossip, rate_plane
from sprawl.cluster.dataplane import DataPlane
from sprawl.cluster.metadata import Metadata
from sprawl.forecast.anomaly import LOG_CLOSE, LOG_OPEN
from sprawl.forecast.feed import DELIVERED, PUBLISHED, ForecastCollector, TrafficFeed
from sprawl.forecast.holtwinters import ForecastConfig
from sprawl.forecast.traffic import TrafficForecaster
from sprawl.replication.failover import FailoverCore
from sprawl.replication.messages import LeaderBeat
from sprawl.testing import FakeRPC

STEP = 5.0


class Counters:
    """This node's per-topic published/delivered totals, advanced by the test."""

    def __init__(self) -> None:
        self.totals: dict[str, dict[str, float]] = {PUBLISHED: {}, DELIVERED: {}}

    def add(self, kind: str, topic: str, n: float) -> None:
        self.totals[kind][topic] = self.totals[kind].get(topic, 0.0) + n

    def __call__(self) -> dict[str, dict[str, float]]:
        return {k: dict(v) for k, v in self.totals.items()}


def _feed(
    gossip: RateGossip | None, counters: Counters | None = None, *, predictive: bool = True
) -> tuple[TrafficFeed, task.Clock]:
    clock = task.Clock()
    clock.advance(1_000_000.0)  # a wall-clock-like start: steps are floor(t / bucket)
    fc = TrafficForecaster(ForecastConfig(bucket=STEP, seasons=(), warmup=3), horizon=60.0)
    feed = TrafficFeed(fc, clock, gossip, counters=counters, interval=STEP, predictive=predictive)
    return feed, clock


def _run(clock: task.Clock, ticks: int, each: Any = None) -> None:
    for _ in range(ticks):
        if each is not None:
            each()
        clock.advance(STEP)


def test_the_feed_samples_every_interval_on_the_clock_and_stops() -> None:
    """start() samples once per interval (nothing at once), stop() ends it."""
    gossip = RateGossip({"a": {("t", 0): 10.0}})
    feed, clock = _feed(gossip)
    feed.start()
    assert feed.ticks == 0
    clock.pump([STEP] * 3)
    assert feed.ticks == 3
    feed.stop()
    clock.pump([STEP] * 3)
    assert feed.ticks == 3
    feed.stop()  # idempotent


def test_gossiped_rates_become_partition_node_and_topic_forecasts() -> None:
    """After warm-up every gossiped partition has a forecast for the balancer;
    None before, and None while predictive balancing is off."""
    gossip = RateGossip({"a": {("t", 0): 100.0, ("t", 1): 20.0}, "b": {("t", 2): 50.0}})
    feed, clock = _feed(gossip)
    feed.start()
    assert feed.partition_forecasts(clock.seconds()) == {}
    clock.pump([STEP] * 6)
    got = feed.partition_forecasts(clock.seconds())
    assert got is not None
    assert got == {
        ("t", 0): pytest.approx(100.0, rel=0.01),
        ("t", 1): pytest.approx(20.0, rel=0.01),
        ("t", 2): pytest.approx(50.0, rel=0.01),
    }
    feed.predictive = False
    assert feed.partition_forecasts(clock.seconds()) is None
    view = feed.load_view()
    assert [(n["node"], n["load"]) for n in view["nodes"]] == [("a", 120.0), ("b", 50.0)]
    assert view["nodes"][0]["predicted"] == pytest.approx(120.0, rel=0.01)
    assert view["nodes"][0]["predicted_low"] <= 120.0 <= view["nodes"][0]["predicted_high"]
    parts = {(p["topic"], p["partition"]): p for p in view["partitions"]}
    assert parts[("t", 2)]["leader"] == "b" and parts[("t", 2)]["load"] == 50.0
    assert parts[("t", 2)]["predicted"] == pytest.approx(50.0, rel=0.01)
    assert [(t["topic"], t["kind"], t["rate"]) for t in view["topics"]] == [("t", "publish", 170.0)]
    assert view["horizon_s"] == 60.0 and view["step_s"] == STEP and view["series"] == 6
    members = feed.member_fields()
    assert sorted(members) == ["a", "b"]
    assert members["b"]["predicted_load"] == pytest.approx(50.0, rel=0.01)
    assert members["b"]["predicted_load_low"] <= 50.0 <= members["b"]["predicted_load_high"]
    feed.stop()


def test_a_partition_that_stops_being_gossiped_leaves_the_load_view() -> None:
    """A series not sampled for two intervals is no longer shown as present load."""
    gossip = RateGossip({"a": {("t", 0): 100.0, ("t", 1): 20.0}})
    feed, clock = _feed(gossip)
    _run(clock, 6, feed.tick)
    del gossip.rates["a"][("t", 1)]
    _run(clock, 3, feed.tick)
    assert [p["partition"] for p in feed.load_view()["partitions"]] == [0]


def test_a_surge_is_logged_counted_and_listed_then_closes() -> None:
    """A 10x jump of this node's published rate opens one surge event (a
    warning with the constant format), counted by the collector, listed by the
    views; going back to normal closes it (an info line)."""
    counters = Counters()
    feed, clock = _feed(None, counters)
    _run(clock, 30, lambda: (counters.add(PUBLISHED, "orders", 100 * STEP), feed.tick()))
    assert feed.forecaster.anomalies_total == {}
    with capturedLogs() as opened:
        _run(clock, 3, lambda: (counters.add(PUBLISHED, "orders", 1000 * STEP), feed.tick()))
    assert [e["log_format"] for e in opened] == [LOG_OPEN]
    assert opened[0]["kind"] == "surge" and opened[0]["series"] == "topic orders published"
    assert opened[0]["log_level"].name == "warn"
    registry = CollectorRegistry()
    registry.register(ForecastCollector(feed))
    text = generate_latest(registry).decode()
    assert 'sprawl_traffic_anomalies_total{kind="surge"} 1.0' in text
    assert 'sprawl_traffic_open_anomalies{kind="surge"} 1.0' in text
    assert 'sprawl_traffic_anomalies_total{kind="silent"} 0.0' in text
    assert "sprawl_forecast_series 1.0" in text
    listed = feed.load_view()["anomalies"]
    assert [(a["kind"], a["series"], a["end"]) for a in listed] == [("surge", "topic orders published", None)]
    assert feed.load_view()["anomalies_open"] == 1
    with capturedLogs() as closed:
        _run(clock, 5, lambda: (counters.add(PUBLISHED, "orders", 100 * STEP), feed.tick()))
    assert [e["log_format"] for e in closed] == [LOG_CLOSE]
    assert feed.anomalies()[0]["end"] is not None
    assert 'sprawl_traffic_open_anomalies{kind="surge"} 0.0' in generate_latest(registry).decode()


def test_a_producer_gone_silent_is_an_event() -> None:
    """A topic's published rate falling to nothing is a ``silent`` event."""
    counters = Counters()
    feed, clock = _feed(None, counters)
    _run(clock, 30, lambda: (counters.add(PUBLISHED, "orders", 200 * STEP), feed.tick()))
    _run(clock, 3, feed.tick)
    assert [a["kind"] for a in feed.anomalies()] == ["silent"]


def test_dashboard_bands_and_topic_fields() -> None:
    """The dashboard gets, per warm topic, the band of its published rate now
    and a forecast ahead; a topic's description gets ``predicted_*`` fields."""
    counters = Counters()
    gossip = RateGossip({"a": {("orders", 0): 40.0, ("orders", 1): 60.0}})
    feed, clock = _feed(gossip, counters)
    assert feed.dashboard_view(["orders"]) == {}
    _run(clock, 10, lambda: (counters.add(PUBLISHED, "orders", 100 * STEP), feed.tick()))
    bands = feed.dashboard_view(["orders", "cold"])
    assert list(bands) == ["orders"]
    band = bands["orders"]
    assert band["low"] <= band["point"] <= band["high"] and band["point"] == pytest.approx(100.0, rel=0.01)
    now = clock.seconds()
    assert [row[0] > now for row in band["ahead"]] == [True] * 4
    assert all(row[2] <= row[1] <= row[3] for row in band["ahead"])
    view = feed.topic_view("orders", 3)
    assert view["predicted_publish_rate"] == pytest.approx(100.0, rel=0.01)
    assert view["predicted_publish_rate_low"] <= 100.0 <= view["predicted_publish_rate_high"]
    assert view["predicted_horizon_s"] == 60.0
    loads = [p["predicted_load"] for p in view["predicted_partitions"]]
    assert loads[:2] == [pytest.approx(40.0, rel=0.01), pytest.approx(60.0, rel=0.01)]
    assert loads[2] is None  # never gossiped


def _plane(gossip: RateGossip, feed: TrafficFeed | None, clock: task.Clock) -> DataPlane:
    """A controller over four partitions on a and b, the feed's forecasts
    wired in as the node wires them."""
    return rate_plane(gossip, clock, feed.partition_forecasts if feed is not None else None)


@pytest.mark.parametrize("predictive", [True, False])
def test_the_controller_balances_on_the_feeds_forecasts(predictive: bool) -> None:
    """The controller's balance step gets each partition's forecast from the
    feed: its decision carries every node's predicted load (a ramping
    partition's node predicted above its present load); with predictive
    balancing off it has no predicted figures at all."""
    rates = {"a": {("t", 0): 60.0, ("t", 1): 20.0}, "b": {("t", 2): 30.0, ("t", 3): 10.0}}
    gossip = RateGossip(rates)
    feed, clock = _feed(gossip, predictive=predictive)
    plane = _plane(gossip, feed, clock)

    def ramp() -> None:
        rates["a"][("t", 1)] += 10.0  # t/1 grows by 2 msgs/s every second
        feed.tick()

    _run(clock, 12, ramp)
    plane.controller.tick()
    d = plane.balancer.last
    assert d is not None
    if not predictive:
        assert d.predicted_mean is None and all(v.predicted is None for v in d.nodes.values())
        return
    present = rates["a"][("t", 0)] + rates["a"][("t", 1)]
    assert d.nodes["a"].load == pytest.approx(present)
    assert d.nodes["a"].predicted is not None and d.nodes["a"].predicted > present + 50.0
    assert d.nodes["b"].predicted == pytest.approx(40.0, rel=0.01)
    assert "predicted" in d.as_dict()["nodes"]["a"]


def test_without_a_feed_the_controller_acts_on_the_present() -> None:
    """No forecasts wired (``--forecast false``): no predicted figures."""
    gossip = RateGossip({"a": {("t", 0): 60.0}, "b": {("t", 2): 30.0}})
    clock = task.Clock()
    plane = _plane(gossip, None, clock)
    plane.controller.tick()
    d = plane.balancer.last
    assert d is not None and d.predicted_mean is None


def test_a_failing_sample_is_logged_and_sampling_goes_on() -> None:
    """An exception while sampling is logged; the next interval samples again."""
    gossip = RateGossip({"a": {("t", 0): 10.0}})
    feed, clock = _feed(gossip)
    broken = {"on": True}
    real = gossip.member_views

    def views() -> list[dict[str, Any]]:
        if broken["on"]:
            raise RuntimeError("boom")
        return real()

    gossip.member_views = views  # type: ignore[method-assign]
    feed.start()
    with capturedLogs() as logged:
        clock.pump([STEP])
    assert [e.get("log_format") for e in logged] == ["traffic forecast: a sample failed"]
    broken["on"] = False
    clock.pump([STEP])
    assert feed.ticks == 1
    feed.stop()


@pytest.mark.parametrize("predictive", [True, False])
def test_a_node_predicted_to_run_hot_sheds_before_it_does(predictive: bool) -> None:
    """End to end in one process: gossiped rates -> the feed -> the
    controller's balancer -> a leadership hand-off.  Node a leads a partition
    that keeps growing and four steady ones: 90-odd units/s now, under the
    100 units/s below which nothing is hot, but forecast past it.  With the
    forecasts wired in, after three decisions predicted hot it hands a
    partition to b, the coolest replica, reason ``predicted``; acting on the
    present only, it moves nothing."""
    rates = {
        "a": {("t", 0): 5.0, **{("t", p): 20.0 for p in (1, 2, 3, 4)}},
        "b": {("t", 5): 5.0},
        "c": {("t", 6): 60.0},
    }
    gossip = RateGossip(rates)
    feed, clock = _feed(gossip, predictive=predictive)
    meta = Metadata()
    for i, n in enumerate(["a", "b", "c"]):
        meta.nodes[n] = {"raft_id": i + 1, "peer": "", "http": ""}
    meta.topics["t"] = {"config": {"replication_factor": 3, "partitions": 7}}
    leaders = ["a"] * 5 + ["b", "c"]
    meta.placement["t"] = [{"leader": leader, "replicas": ["a", "b", "c"], "epoch": 1} for leader in leaders]
    control = SimpleNamespace(
        metadata=meta,
        leader_name="a",
        dead_grace=30.0,
        is_leader=True,
        watch_topics=lambda listener: None,
        is_foreign=lambda view: False,
    )
    plane = DataPlane(
        "a",
        SimpleNamespace(topics={}, notify=lambda t, p: None),  # type: ignore[arg-type]
        control,  # type: ignore[arg-type]
        SimpleNamespace(handlers={}),  # type: ignore[arg-type]
        FakeRPC(),  # type: ignore[arg-type]
        clock,
        gossip,
        forecasts=feed.partition_forecasts,
    )
    for p, leader in enumerate(leaders):
        core = FailoverCore(("a", "b", "c"), epoch=1, leader=leader)
        core.receive(leader, LeaderBeat(1, 0, 0))
        plane.service.controllers[("t", p)] = core
    # Every replica holds every committed record (a leadership goes only to such a one).
    plane.controller.in_sync = lambda key, leader, now: {"a", "b", "c"}  # type: ignore[method-assign]
    handed: list[tuple[tuple[str, int], str | None]] = []
    plane.service.run_control = lambda key, out: handed.append(  # type: ignore[method-assign]
        (key, plane.service.controllers[key].moving_to)
    )

    def step(ramp: float) -> None:
        rates["a"][("t", 0)] += ramp
        feed.tick()
        plane.controller.tick()

    with capturedLogs() as logged:
        _run(clock, 8, lambda: step(0.0))  # steady while the model warms up
        _run(clock, 14, lambda: step(1.0))  # then t/0 grows by 0.2 msgs/s every second
    present_a = sum(rates["a"].values())
    assert present_a < 100.0  # never hot by the present rule
    moves = [e for e in logged if "moving the leadership" in e.get("log_format", "")]
    if not predictive:
        assert handed == [] and moves == [] and plane.balancer.moves_total.get("predicted", 0) == 0
        return
    assert handed and {dst for _key, dst in handed} == {"b"}, handed
    assert {e["reason"] for e in moves} == {"predicted"} and {e["src"] for e in moves} == {"a"}
    assert plane.balancer.moves_total["predicted"] == len(handed)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["a", "b", "c"]),
            st.dictionaries(
                st.tuples(st.sampled_from(["t", "u"]), st.integers(0, 3)),
                st.one_of(st.integers(0, 2**63 - 1).map(float), st.floats(0, 1e6)),
                max_size=4,
            ),
            max_size=3,
        ),
        min_size=1,
        max_size=30,
    )
)
def test_any_gossiped_rates_give_views_that_encode_as_json(samples: list[dict[str, Any]]) -> None:
    """Whatever rates the members gossip (0, huge, jumping around), sampling
    never fails and every view encodes as strict JSON (no NaN, no infinity)."""
    gossip = RateGossip({})
    counters = Counters()
    feed, clock = _feed(gossip, counters)
    for rates in samples:
        gossip.rates = rates
        for node_rates in rates.values():
            for (topic, _p), m in node_rates.items():
                counters.add(PUBLISHED, topic, m)
        feed.tick()
        clock.advance(STEP)
    views = [feed.load_view(), feed.topic_view("t", 4), feed.dashboard_view(["t", "u"]), feed.member_fields()]
    json.dumps(views, allow_nan=False)
    assert feed.partition_forecasts(clock.seconds()) is not None
