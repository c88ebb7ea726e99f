"""Earned-trust balancing on a real node (``--earned-trust``, issue 18): the
node's forecaster, feed and controller get the values the simulator's
``--earned`` run uses (:mod:`sprawl.forecast.earned`), the profiles reach the
controller's balancer, recomputed at most once a minute, on a ``task.Clock``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import task

from harness.rate_gossip import RateGossip, rate_plane
from sprawl.cluster.balance import BalanceConfig, PartitionLoad
from sprawl.cluster.dataplane import DataPlane
from sprawl.config import NodeConfig
from sprawl.forecast import traces
from sprawl.forecast.earned import EarnedTrust, earned_trust
from sprawl.forecast.feed import TrafficFeed
from sprawl.forecast.holtwinters import ForecastConfig
from sprawl.forecast.replay import earned, season_seconds
from sprawl.forecast.traffic import TrafficForecaster
from sprawl.node.binding import bind_earned_trust, make_traffic_feed

STEP = 5.0


def _node_feed(c: NodeConfig) -> TrafficFeed:
    feed = make_traffic_feed(c, task.Clock(), RateGossip({}), SimpleNamespace())  # type: ignore[arg-type]
    assert feed is not None
    return feed


def _plane(gossip: RateGossip, clock: task.Clock) -> DataPlane:
    """A controller over four partitions on a and b, with no forecasts wired yet."""
    return rate_plane(gossip, clock)


@pytest.mark.parametrize(("trace", "seasons"), [(traces.daily, "daily"), (traces.hourly, "hourly")])
def test_the_node_runs_the_simulators_earned_values(trace: Any, seasons: str) -> None:
    """A node with ``--earned-trust`` builds its forecaster, feed and balancer
    with exactly the values of :func:`sprawl.forecast.replay.earned` for a
    trace of the same season: distrust (per partition, the surprised
    partition's profile kept: trust43), profile horizon, points and period,
    and the whole balance config (from the same defaults)."""
    tr = trace()
    sim = earned(tr)
    feed = _node_feed(NodeConfig(earned_trust=True, forecast_seasons=seasons).validate())
    assert season_seconds(tr) == max(NodeConfig(forecast_seasons=seasons).forecast_season_periods)
    assert feed.forecaster.distrust == sim.distrust > 0
    assert feed.forecaster.distrust_partition is sim.distrust_partition is True
    assert feed.forecaster.distrust_profiles is sim.distrust_profiles is False
    assert feed.earned == earned_trust(season_seconds(tr))
    assert (feed.earned.profile_horizon, feed.earned.profile_points, feed.earned.profile_every) == (
        sim.profile_horizon,
        sim.profile_points,
        sim.profile_every,
    )
    plane = _plane(RateGossip({}), task.Clock())
    bind_earned_trust(plane.controller, feed)
    assert plane.balancer.config == sim.balance
    assert plane.balancer.config.predict_lasting > 0
    assert plane.controller.profiles == feed.partition_profiles


def test_earned_trust_is_on_by_default() -> None:
    """A node's defaults (predictive balancing, the daily season) run earned
    trust: the rule that meets the simulation's bar where the plain
    predictive rule makes more moves than the reactive one (issue 18)."""
    feed = _node_feed(NodeConfig().validate())
    assert feed.earned is not None and feed.forecaster.distrust == 86400.0
    plane = _plane(RateGossip({}), task.Clock())
    bind_earned_trust(plane.controller, feed)
    assert plane.controller.profiles == feed.partition_profiles
    assert plane.balancer.config.predict_lasting > 0


def test_earned_trust_off_changes_nothing() -> None:
    """With ``--earned-trust false``: no distrust, no profiles, the default balance config."""
    feed = _node_feed(NodeConfig(earned_trust=False).validate())
    assert feed.earned is None and feed.forecaster.distrust == 0.0
    assert not feed.forecaster.distrust_partition
    assert feed.partition_profiles(0.0) is None
    plane = _plane(RateGossip({}), task.Clock())
    bind_earned_trust(plane.controller, feed)
    assert plane.controller.profiles is None and plane.balancer.config == BalanceConfig()


@pytest.mark.parametrize("on", [True, False])
def test_profiles_reach_the_balancer_recomputed_once_a_minute(on: bool) -> None:
    """The controller's balance step with earned trust: every decision's
    partitions carry the feed's profiles, yet the profiles are computed once
    per ``profile_every`` (60 s), not once per decision (every 10 s); with
    the mode off the partitions carry none and none is computed."""
    rates = {"a": {("t", 0): 60.0, ("t", 1): 20.0}, "b": {("t", 2): 30.0, ("t", 3): 10.0}}
    gossip = RateGossip(rates)
    clock = task.Clock()
    clock.advance(1_000_000.0)
    fc = TrafficForecaster(ForecastConfig(bucket=STEP, seasons=(), warmup=3), horizon=60.0)
    trust = EarnedTrust(distrust=600.0, profile_horizon=600.0, profile_points=6) if on else None
    feed = TrafficFeed(fc, clock, gossip, interval=STEP, earned=trust)
    plane = _plane(gossip, clock)
    plane.controller.forecasts = feed.partition_forecasts
    bind_earned_trust(plane.controller, feed)
    seen: list[list[PartitionLoad]] = []
    decide = plane.balancer.decide

    def spy(now: float, parts: list[PartitionLoad], *a: Any, **k: Any) -> Any:
        seen.append(list(parts))
        return decide(now, parts, *a, **k)

    plane.balancer.decide = spy  # type: ignore[method-assign]
    for _ in range(6):  # the model warms up
        feed.tick()
        clock.advance(STEP)
    for _ in range(36):  # 180 s: 18 decisions (one per 10 s), 3 minutes
        feed.tick()
        plane.controller.tick()
        clock.advance(STEP)
    assert len(seen) == 18
    if not on:
        assert all(p.profile is None for parts in seen for p in parts)
        assert feed.profiles_computed == 0
        return
    assert plane.balancer.config.predict_lasting == 0.5
    assert all(p.profile is not None and len(p.profile) == 6 for parts in seen for p in parts)
    assert {(p.topic, p.partition) for p in seen[-1]} == set(rates["a"]) | set(rates["b"])
    assert seen[-1][0].profile == pytest.approx((60.0,) * 6, rel=0.02)
    assert feed.profiles_computed == 3


def test_a_surprise_takes_the_profiles_away_for_the_distrust() -> None:
    """After a surprise (a sudden surge) the forecaster distrusts itself: the
    feed gives the controller no profiles (and no forecasts) until it has
    earned trust again."""
    gossip = RateGossip({"a": {("t", 0): 60.0}, "b": {("t", 2): 30.0}})
    clock = task.Clock()
    clock.advance(1_000_000.0)
    fc = TrafficForecaster(ForecastConfig(bucket=STEP, seasons=(), warmup=3), horizon=60.0, distrust=120.0)
    feed = TrafficFeed(fc, clock, gossip, interval=STEP, earned=EarnedTrust(120.0, 120.0, profile_points=4))
    for _ in range(8):
        feed.tick()
        clock.advance(STEP)
    assert feed.partition_profiles(clock.seconds())
    gossip.rates["a"][("t", 0)] = 6000.0  # far past the top of its interval
    for _ in range(12):
        feed.tick()
        clock.advance(STEP)
    assert not fc.trusted(clock.seconds())
    assert feed.partition_profiles(clock.seconds()) is None
    assert feed.partition_forecasts(clock.seconds()) == {}


def test_a_calm_cluster_computes_no_profiles() -> None:
    """Idle CPU: while every rate and forecast together stays under the bound,
    the controller reuses its last decision (``_quiet_again``) and asks for no
    profiles: after the first decision none is computed however long it runs."""
    gossip = RateGossip({"a": {("t", 0): 2.0, ("t", 1): 1.0}, "b": {("t", 2): 1.0, ("t", 3): 1.0}})
    clock = task.Clock()
    clock.advance(1_000_000.0)
    fc = TrafficForecaster(ForecastConfig(bucket=STEP, seasons=(), warmup=3), horizon=60.0)
    feed = TrafficFeed(fc, clock, gossip, interval=STEP, earned=EarnedTrust(600.0, 600.0, profile_points=6))
    plane = _plane(gossip, clock)
    plane.controller.forecasts = feed.partition_forecasts
    bind_earned_trust(plane.controller, feed)
    for _ in range(6):
        feed.tick()
        clock.advance(STEP)
    for _ in range(120):  # 10 minutes
        feed.tick()
        plane.controller.tick()
        clock.advance(STEP)
    assert plane.controller.balance_views_skipped >= 50
    assert feed.profiles_computed <= 1
