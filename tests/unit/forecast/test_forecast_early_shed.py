"""The early shed (``BalanceConfig.early_shed``, :func:`sprawl.forecast.replay.early`):
a node hot now whose heat the forecast says lasts sheds at its first hot
decision instead of after ``persist`` -- the reactive rule's own move
(the same partition to the same target), made sooner, with the reason
PREDICTED; a forecast that says the heat passes, or is within the margin, or
no forecast at all, leaves the reactive rule as it is; and forecasts drawn
at random cannot make it flap."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from harness.balance import FlapCheck
from sprawl.cluster.balance import OVERLOADED, PREDICTED, BalanceConfig, Balancer, PartitionLoad
from sprawl.forecast import traces
from sprawl.forecast.replay import SimConfig, early

NODES = ["a", "b", "c"]
EARLY = BalanceConfig(min_load=100, predict=False, early_shed=1)


def part(topic: str, p: int, leader: str, msgs: float, path: Sequence[float] | None = None) -> PartitionLoad:
    return PartitionLoad(
        topic, p, leader, tuple(NODES), msgs, 0.0, path=None if path is None else tuple(path)
    )


def hot_a(t1_path: Sequence[float] | None = (80.0,) * 6) -> list[PartitionLoad]:
    """a leads 40 + 80 = 120 (hot: mean 70, bound 87.5), b 30, c 60; the
    reactive rule moves t/0 (40) to b (70 after: the only replica that fits).
    Every path flat at the present load but t/1's (``t1_path``)."""
    flat = 6
    return [
        part("t", 0, "a", 40, None if t1_path is None else (40.0,) * flat),
        part("t", 1, "a", 80, t1_path),
        part("u", 0, "b", 30, None if t1_path is None else (30.0,) * flat),
        part("v", 0, "c", 60, None if t1_path is None else (60.0,) * flat),
    ]


def first_moves(b: Balancer, parts: list[PartitionLoad], n: int = 6) -> tuple[int, list]:  # type: ignore[type-arg]
    """The index of the first decision that moved (``n`` if none) and its moves."""
    for i in range(n):
        d = b.decide(10.0 * i, parts, NODES)
        if d.moves:
            return i, d.moves
    return n, []


def test_a_lasting_heat_sheds_at_the_first_hot_decision_the_reactive_move() -> None:
    """Flat paths over the bound: the move at decision 0, with reason
    PREDICTED, is the one the reactive rule makes at decision 2."""
    i, moves = first_moves(Balancer(EARLY), hot_a())
    j, reactive = first_moves(Balancer(replace(EARLY, early_shed=0)), hot_a())
    assert (i, j) == (0, 2)
    assert [m[:4] for m in moves] == [m[:4] for m in reactive] == [("t", 0, "a", "b")]
    assert moves[0].reason == PREDICTED and reactive[0].reason == OVERLOADED


def test_a_heat_the_forecast_says_passes_waits_for_persist() -> None:
    """t/1 forecast to fall to 30 within the horizon: a is not over the bound
    along its path, so it sheds only after ``persist`` decisions, reactively."""
    i, moves = first_moves(Balancer(EARLY), hot_a((80.0, 80.0, 60.0, 40.0, 30.0, 30.0)))
    assert i == 2 and moves[0].reason == OVERLOADED


def test_early_points_look_only_at_the_first_points() -> None:
    """The same falling path read over its first two points only: lasting there, so early."""
    i, moves = first_moves(
        Balancer(replace(EARLY, early_points=2)), hot_a((80.0, 80.0, 60.0, 40.0, 30.0, 30.0))
    )
    assert i == 0 and moves[0].reason == PREDICTED


def test_over_the_bound_within_the_margin_is_not_early() -> None:
    """t/1 forecast at 70: a at 110 against a predicted mean of 66.7 and a
    bound of 83.3 (a band of 16.7), over it by 1.6 bands: early with a margin
    of 1.5 bands, not with 2 (the forecast's own error), nor under ``min_load``."""
    i, moves = first_moves(Balancer(replace(EARLY, early_margin=1.5)), hot_a((70.0,) * 6))
    assert i == 0 and moves[0].reason == PREDICTED
    i, moves = first_moves(Balancer(replace(EARLY, early_margin=2.0)), hot_a((70.0,) * 6))
    assert i == 2 and moves[0].reason == OVERLOADED
    # t/1 at 52: a at 92 is over the bound by far, but predicted under min_load (100)
    assert first_moves(Balancer(EARLY), hot_a((52.0,) * 6))[0] == 2


def test_without_paths_or_with_it_off_the_reactive_rule() -> None:
    """No forecast: the reactive rule (decision 2); ``early_shed`` 0: the same with paths."""
    assert first_moves(Balancer(EARLY), hot_a(None))[0] == 2
    assert first_moves(Balancer(replace(EARLY, early_shed=0)), hot_a())[0] == 2


def test_early_shed_two_waits_one_decision() -> None:
    """``early_shed`` counts hot decisions: 2 sheds at the second."""
    i, moves = first_moves(Balancer(replace(EARLY, early_shed=2)), hot_a())
    assert i == 1 and moves[0].reason == PREDICTED


def test_the_sim_combination() -> None:
    """:func:`early` turns the forecast pass off and the early shed on."""
    c = early(traces.hourly(), SimConfig())
    assert c.balance.predict is False and c.balance.early_shed == 1


loads = st.floats(min_value=0.0, max_value=200.0, allow_nan=False)
paths = st.one_of(st.none(), st.lists(loads, min_size=6, max_size=6))


@settings(max_examples=150, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(
    st.lists(st.tuples(st.sampled_from(NODES), loads), min_size=2, max_size=9),
    st.lists(st.lists(paths, min_size=9, max_size=9), min_size=60, max_size=60),
)
def test_random_paths_cannot_make_it_flap(
    initial: list[tuple[str, float]], drawn: list[list[list[float] | None]]
) -> None:
    """Steady present loads, paths redrawn at random every decision: every
    early shed is a reactive move (off a node over the bound, to one that
    stays at or below it), so the sum of squared node loads falls with each
    decision that moves and no leader assignment comes back."""
    leaders = {("t", i): n for i, (n, _) in enumerate(initial)}
    rate = {("t", i): u for i, (_, u) in enumerate(initial)}
    b = Balancer(BalanceConfig(min_load=10, cooldown=30.0, persist=3, predict=False, early_shed=1))
    check = FlapCheck(leaders, rate, NODES)
    moves = 0
    for step, row in enumerate(drawn):
        parts = [
            PartitionLoad(
                k[0],
                k[1],
                n,
                tuple(NODES),
                rate[k],
                0.0,
                path=None if (path := row[k[1]]) is None else tuple(path),
            )
            for k, n in leaders.items()
        ]
        d = b.decide(10.0 * step, parts, NODES)
        moves += len(d.moves)
        check.apply(b.plan, d.moves, d.held)
    assert moves <= 3 * len(initial)
