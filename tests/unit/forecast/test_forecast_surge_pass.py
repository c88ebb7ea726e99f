"""A sudden surge taken as passing under earned trust (trust40,
docs/benchmarks.md "Distrust per partition without extra moves"): while a
partition's surprise -- a surge opening at twice the top of its interval or
more -- is open, the forecaster (``TrafficForecaster(surge_pass=True)``, with
distrust per partition) gives it the top expected when the surge began
instead of no forecast, and the balancer (``BalanceConfig.surge_veto``) does
not shed its node while the node's forecast load is within the forecast
bound: no move into the surge and back out at its end.  Nodes without such a
partition shed as before."""

from __future__ import annotations

from dataclasses import replace

from sprawl.cluster.balance import BalanceConfig, Balancer, PartitionLoad
from sprawl.forecast.holtwinters import ForecastConfig
from sprawl.forecast.traffic import TrafficForecaster, partition_key

NODES = ["a", "b", "c"]
VETO = BalanceConfig(min_load=100, surge_veto=True)
#: A 60-step season of 10 s buckets: one "day" is 600 s.
CFG = ForecastConfig(bucket=10.0, seasons=(60,), warmup=3)


def part(topic: str, p: int, leader: str, msgs: float, forecast: float | None) -> PartitionLoad:
    return PartitionLoad(topic, p, leader, tuple(NODES), msgs, 0.0, forecast=forecast)


def surged_a(forecast_t1: float | None) -> list[PartitionLoad]:
    """a leads 40 + 160 = 200 (hot: mean 110, bound 137.5), b 40, c 90: t/1
    is at 4x its usual 40; its forecast ``forecast_t1`` (the others' their
    present load)."""
    return [
        part("t", 0, "a", 40, 40.0),
        part("t", 1, "a", 160, forecast_t1),
        part("u", 0, "b", 40, 40.0),
        part("v", 0, "c", 90, 90.0),
    ]


def moves_in(config: BalanceConfig, parts: list[PartitionLoad], decisions: int = 6) -> int:
    b = Balancer(config)
    return sum(len(b.decide(10.0 * i, parts, NODES).moves) for i in range(decisions))


def test_a_node_hot_with_a_passing_surge_does_not_shed() -> None:
    """t/1's forecast is its usual 40 (the surge taken as passing): a's
    forecast load 80 is within the forecast bound, so a holds with
    ``surge_veto`` and sheds without it."""
    assert moves_in(VETO, surged_a(40.0)) == 0
    assert moves_in(replace(VETO, surge_veto=False), surged_a(40.0)) > 0
    d = Balancer(VETO)
    for i in range(4):
        dec = d.decide(10.0 * i, surged_a(40.0), NODES)
    assert any("passing" in h for h in dec.held), dec.held


def test_the_veto_needs_a_surge_taken_as_passing() -> None:
    """The same hot node with t/1's forecast at its present load (no surge
    taken as passing, or no forecast at all): it sheds, ``surge_veto`` or not."""
    assert moves_in(VETO, surged_a(160.0)) > 0
    assert moves_in(VETO, surged_a(None)) > 0


def run(fc: TrafficForecaster, t: float, seconds: float, rate: dict[int, float]) -> float:
    """``seconds`` with partition p at ``rate[p]`` times 100 (every 5 s); returns the time after."""
    end = t + seconds
    while t < end:
        for p in (0, 1):
            fc.observe(t, partition_key("t", p), 100.0 * rate.get(p, 1.0))
        t += 5.0
    return t


def test_a_sudden_surge_under_way_is_forecast_at_the_top_expected_before_it() -> None:
    """With ``surge_pass`` (and distrust per partition) a 4x surge on
    partition 0 gets, while it is open, a flat path at the top of the
    interval expected when it began (near its usual 100, far under the 400
    it is at); once it closed, its forecast is withheld for the distrust as
    before.  Without ``surge_pass`` it gets none during the surge either."""
    for surge_pass in (True, False):
        fc = TrafficForecaster(
            CFG, horizon=30.0, distrust=300.0, distrust_partition=True, surge_pass=surge_pass
        )
        t = run(fc, 0.0, 1800.0, {})
        t = run(fc, t, 30.0, {0: 4.0})
        paths = fc.partition_paths(t)
        assert ("t", 1) in paths
        if not surge_pass:
            assert ("t", 0) not in paths
            continue
        top = paths[("t", 0)]
        assert len(set(top)) == 1 and 100.0 <= top[0] < 200.0, top
        t = run(fc, t, 120.0, {})  # over: the event closes
        assert fc._series[partition_key("t", 0)].detector.open is None
        assert ("t", 0) not in fc.partition_paths(t)
