"""The balancer's predictive rules (sprawl.cluster.balance, reason PREDICTED):
a node predicted hot sheds in a quiet moment before it is hot; without
forecasts nothing changes; and a hypothesis property that forecasts drawn at
random every decision cannot make leadership flap."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from harness.balance import FlapCheck, drawn
from sprawl.cluster.balance import OVERLOADED, PREDICTED, BalanceConfig, Balancer, PartitionLoad

NODES = ["a", "b", "c"]
FIVE = ["a", "b", "c", "d", "e"]


def part(topic: str, p: int, leader: str, msgs: float, forecast: float | None = None) -> PartitionLoad:
    return PartitionLoad(topic, p, leader, tuple(FIVE), msgs, 0.0, forecast=forecast)


def rising() -> list[PartitionLoad]:
    """a leads 30 + 88 now (not hot: mean 97.6, bound 122), t/0 forecast to 55:
    a predicted at 143 over a predicted bound of 130.75; b is cool now and as predicted."""
    return [
        part("t", 0, "a", 30, forecast=55),
        part("t", 1, "a", 88, forecast=88),
        part("u", 0, "b", 50, forecast=50),
        *(part("v", i, n, 110, forecast=110) for i, n in enumerate("cde")),
    ]


def decide_n(b: Balancer, parts: list[PartitionLoad], n: int, t0: float = 0.0, nodes: list[str] = FIVE):
    d = None
    for i in range(n):
        d = b.decide(t0 + 10.0 * i, parts, nodes)
        if d.moves:
            return i, d
    return n, d


def test_predicted_hot_node_sheds_before_it_is_hot() -> None:
    """After ``persist`` decisions predicted hot, a quiet partition moves off a with reason PREDICTED."""
    b = Balancer(BalanceConfig(min_load=100))
    i, d = decide_n(b, rising(), 5)
    assert d is not None and i == 2
    assert not d.nodes["a"].hot  # not hot now
    (mv,) = d.moves
    assert mv.reason == PREDICTED and mv.src == "a" and (mv.topic, mv.partition) == ("t", 0)
    assert b.moves_total == {PREDICTED: 1}
    assert d.as_dict()["nodes"]["a"]["predicted_hot"] is True


def test_without_forecasts_nothing_moves_early() -> None:
    """The same loads with no forecast: no move (the reactive rules alone)."""
    b = Balancer(BalanceConfig(min_load=100))
    parts = [replace(p, forecast=None) for p in rising()]
    _, d = decide_n(b, parts, 5)
    assert d is not None and d.moves == [] and "predicted_mean" not in d.as_dict()


def test_predict_off_ignores_forecasts() -> None:
    """``predict=False`` is the reactive balancer whatever the forecasts say."""
    b = Balancer(BalanceConfig(min_load=100, predict=False))
    _, d = decide_n(b, rising(), 5)
    assert d is not None and d.moves == []


def test_not_in_a_busy_moment() -> None:
    """A partition above its own forecast (a peak right now) is not moved early."""
    parts = rising()
    parts[0] = part("t", 0, "a", 30, forecast=25)  # falling: quiet later, not now
    parts[1] = part("t", 1, "a", 88, forecast=118)  # rising, but too big for a cool node now
    b = Balancer(BalanceConfig(min_load=100))
    _, d = decide_n(b, parts, 5)
    assert d is not None and d.moves == []
    assert any("no quiet partition" in h for h in d.held)


def test_hot_now_is_shed_reactively_not_twice() -> None:
    """A node hot now sheds with reason OVERLOADED; the predictive pass adds nothing on top for it."""
    parts = [part("t", i, "a", 300, forecast=600) for i in range(3)] + [
        part("u", 0, "b", 100),
        part("u", 1, "c", 100),
    ]
    parts = [replace(p, replicas=tuple(NODES)) for p in parts]
    b = Balancer(BalanceConfig(min_load=100))
    _, d = decide_n(b, parts, 5, nodes=NODES)
    assert d is not None and {m.reason for m in d.moves} == {OVERLOADED}


loads = st.floats(min_value=0, max_value=500, allow_nan=False)
fcs = st.one_of(st.none(), st.floats(min_value=0, max_value=2000, allow_nan=False), st.just(float("inf")))


@settings(max_examples=150, deadline=None, phases=[Phase.generate])
@given(
    st.lists(st.tuples(st.sampled_from(NODES), loads), min_size=2, max_size=9),
    st.lists(st.lists(fcs, min_size=9, max_size=9), min_size=60, max_size=60),
    st.sampled_from(["", "cap", "same"]),
    st.sampled_from([0.0, 100.0]),
)
def test_random_forecasts_cannot_make_it_flap(
    initial: list[tuple[str, float]], forecasts: list[list[float | None]], replace_mode: str, again: float
) -> None:
    """Steady present loads, forecasts redrawn at random every decision (with
    or without ``predict_replace``, ``predict_again``): between decisions with no plan under way
    every decision that moved lowers the sum of squared present node loads, so
    no leader assignment comes back and the moves stop (a relief plan, on by
    default, takes whole decisions and lowers it as a whole: ``test_balance_relief``)."""
    leaders = {("t", i): n for i, (n, _) in enumerate(initial)}
    rate = {("t", i): u for i, (_, u) in enumerate(initial)}
    replicas = dict.fromkeys(leaders, tuple(NODES))
    b = Balancer(
        BalanceConfig(
            min_load=10,
            cooldown=30.0,
            persist=1,
            predict_replace=replace_mode,
            replace_within=60.0,
            predict_again=again,
        )
    )
    check = FlapCheck(leaders, rate, NODES)
    moves = 0
    for step, fc in enumerate(forecasts):
        d = b.decide(10.0 * step, drawn(leaders, replicas, rate, [(f, None) for f in fc]), NODES)
        moves += len(d.moves)
        check.apply(b.plan, d.moves, d.held)
    assert moves <= 3 * len(initial)


def test_a_moved_partition_waits_predict_cooldown_before_moving_on_a_forecast() -> None:
    """Once moved, t/0 does not move again on a forecast for ``predict_cooldown``
    seconds, though the ordinary cooldown has passed; after it, it may."""
    b = Balancer(BalanceConfig(min_load=100, cooldown=300.0, predict_cooldown=3600.0))
    _, d = decide_n(b, rising(), 5)
    assert d is not None and d.moves
    # the same situation again later (say the leadership came back by a failover)
    _, d = decide_n(b, rising(), 5, t0=1000.0)
    assert d is not None and d.moves == []
    _, d = decide_n(b, rising(), 5, t0=5000.0)
    assert d is not None and [m.reason for m in d.moves] == [PREDICTED]


def test_predict_again_allows_one_move_on_a_forecast_per_partition_per_season() -> None:
    """``predict_again``: once t/0 moved on a forecast it does not move on one
    again for that many seconds, though ``predict_cooldown`` has passed (the
    same situation at 5,000 s moves it without the option); after it, it may."""
    day = 86400.0
    b = Balancer(BalanceConfig(min_load=100, cooldown=300.0, predict_cooldown=3600.0, predict_again=day))
    _, d = decide_n(b, rising(), 5)
    assert d is not None and [m.reason for m in d.moves] == [PREDICTED]
    _, d = decide_n(b, rising(), 5, t0=5000.0)
    assert d is not None and d.moves == []
    assert any("no quiet partition" in h for h in d.held)
    _, d = decide_n(b, rising(), 5, t0=day + 100.0)
    assert d is not None and [m.reason for m in d.moves] == [PREDICTED]


def test_predict_again_does_not_hold_a_reactive_move() -> None:
    """A partition moved on a forecast still moves when its node is hot now
    (``predict_again`` holds only moves on a forecast)."""
    b = Balancer(BalanceConfig(min_load=100, cooldown=300.0, predict_cooldown=3600.0, predict_again=86400.0))
    _, d = decide_n(b, rising(), 5)
    assert d is not None and [(m.topic, m.partition, m.reason) for m in d.moves] == [("t", 0, PREDICTED)]
    # later a is hot now: t/0 100 + t/1 60 against a bound of 125 (mean 100); b at 10 takes t/0
    hot = [
        part("t", 0, "a", 100, forecast=100),
        part("t", 1, "a", 60, forecast=60),
        part("u", 0, "b", 10, forecast=10),
        *(part("v", i, n, 110, forecast=110) for i, n in enumerate("cde")),
    ]
    _, d = decide_n(b, hot, 5, t0=1000.0)
    assert d is not None and [(m.topic, m.partition, m.reason) for m in d.moves] == [("t", 0, OVERLOADED)]


def test_predict_margin_needs_the_forecast_clearly_over_the_bound() -> None:
    """``predict_margin``: a predicted at 143 against a predicted bound of 130.75
    (mean 104.6, band 26.15) is over it by 0.47 of the band: a margin of 0.4
    still moves t/0 early, one of 0.5 does not (and says so)."""
    b = Balancer(BalanceConfig(min_load=100, predict_margin=0.4))
    _, d = decide_n(b, rising(), 5)
    assert d is not None and [m.reason for m in d.moves] == [PREDICTED]
    b = Balancer(BalanceConfig(min_load=100, predict_margin=0.5))
    _, d = decide_n(b, rising(), 5)
    assert d is not None and d.moves == [] and not d.nodes["a"].predicted_hot


def test_predict_persist_asks_for_more_decisions_predicted_hot() -> None:
    """``predict_persist=5``: the early move comes after five decisions predicted hot, not three."""
    i, d = decide_n(Balancer(BalanceConfig(min_load=100, predict_persist=5)), rising(), 8)
    assert d is not None and i == 4 and [m.reason for m in d.moves] == [PREDICTED]
