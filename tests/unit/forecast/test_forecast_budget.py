"""The move budget from a shadow reactive run (sprawl.forecast.budget): the
token arithmetic, and that the shadow, when nothing else acts, *is* the
reactive run of the simulator move for move (the proof that R(t) counts what
the reactive balancer would have done); and that a budgeted predictive run
stays within the shadow's moves plus its debt and credit."""

from __future__ import annotations

import math
import os

import pytest

from harness.paths import DATA
from sprawl.cluster.balance import BalanceConfig
from sprawl.forecast import traces
from sprawl.forecast.budget import MoveBudget, ShadowReactive
from sprawl.forecast.replay import SimConfig, simulate

RECORDED = DATA / "forecast_trace.csv"
LONG = bool(os.environ.get("SPRAWL_SIM_LONG"))


def test_tokens_are_earned_spent_and_owed() -> None:
    """R - M without expiry; a move with no token is debt, paid off by the next token."""
    b = MoveBudget()
    assert b.available(0.0) == 0
    b.spend(1.0)  # the real cluster moves first: debt
    assert (b.available(1.0), b.debt) == (-1, 1)
    b.earn(2.0, 3)  # the first token pays the debt
    assert (b.available(2.0), b.debt, len(b.tokens)) == (2, 0, 2)
    b.spend(3.0)
    assert b.available(3.0) == 1 and (b.earned, b.spent) == (3, 2)


def test_tokens_expire_oldest_first() -> None:
    """A token unspent ``expire`` seconds after it was earned is dropped; spending takes the oldest."""
    b = MoveBudget(expire=100.0)
    b.earn(0.0)
    b.earn(50.0)
    assert b.available(100.0) == 2
    assert b.available(101.0) == 1 and b.expired == 1
    b.earn(120.0)
    b.spend(130.0)  # spends the one from 50
    assert list(b.tokens) == [120.0]
    assert b.available(221.0) == 0 and b.expired == 2
    assert MoveBudget().expire == math.inf


def _view(rates: dict[tuple[str, int], float]) -> dict[tuple[str, int], tuple[float, float]]:
    return {k: (u, 0.0) for k, u in rates.items()}


def test_shadow_moves_its_own_placement_only() -> None:
    """The shadow sheds a hot node of its own leader map, counts the move,
    lands it after ``move_seconds``, and the caller's maps are not touched."""
    reps = {("t", i): ("a", "b", "c") for i in range(4)}
    leaders = dict.fromkeys(reps, "a")
    s = ShadowReactive(BalanceConfig(), reps, leaders, move_seconds=2.0)
    rates = _view({("t", 0): 200.0, ("t", 1): 150.0, ("t", 2): 100.0, ("t", 3): 50.0})
    made = []
    for i in range(5):
        s.observe(10.0 * i, rates)
        made.append(s.decide(10.0 * i, ["a", "b", "c"]))
    assert made[:2] == [0, 0] and made[2] >= 1 and s.moves == sum(made)
    assert all(mv.src == "a" for _, mv in s.log)
    assert set(leaders.values()) == {"a"}  # the caller's map is the caller's
    assert any(n != "a" for n in s.leader.values())  # landed on the shadow's own
    assert s.config.predict is False


def test_shadow_keeps_the_last_rate_known() -> None:
    """A partition its real leader has not reported yet (None) keeps its last rate."""
    reps = {("t", 0): ("a", "b")}
    s = ShadowReactive(BalanceConfig(), reps, {("t", 0): "a"})
    s.observe(0.0, {("t", 0): (120.0, 0.0)})
    s.observe(5.0, {("t", 0): (None, None)})
    s.decide(10.0, ["a", "b"])
    assert s.last is not None and s.last.nodes["a"].load == 120.0


CASES = [
    pytest.param(lambda: (traces.hourly(), SimConfig()), id="hourly"),
    pytest.param(
        lambda: (traces.recorded(RECORDED, period=300.0, bucket=10.0), SimConfig(horizon=60.0)),
        id="recorded",
    ),
    *(
        pytest.param(
            case,
            id=name,
            marks=pytest.mark.skipif(not LONG, reason="day-long trace: tox -e sim (SPRAWL_SIM_LONG=1)"),
        )
        for name, case in [
            ("daily", lambda: (traces.daily(days=2.0), SimConfig())),
            ("ramp", lambda: (traces.ramp(), SimConfig())),
            ("surges", lambda: (traces.surges(), SimConfig())),
        ]
    ),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("feed", ["view", "regossip", "exact"])
def test_shadow_only_is_the_reactive_run_move_for_move(case, feed: str) -> None:  # type: ignore[no-untyped-def]
    """In the reactive run (nothing else acts) the shadow makes the same
    moves at the same times as the run itself, whatever it is fed."""
    trace, cfg = case()
    r = simulate(trace, False, SimConfig(**{**cfg.__dict__, "budget": True, "shadow_feed": feed}))
    assert r.moves > 0
    assert r.shadow_log == r.log and r.shadow_moves == r.moves
    assert r.budget_debt == 0


def test_a_budgeted_run_stays_within_the_shadows_moves() -> None:
    """Predictive with the budget (hourly trace, regossip feed): with no
    credit no move on a forecast is ever paid for (the real cluster is the
    reactive one, so it never banks a token); with a credit of one, moves
    on a forecast are made and all moves stay within the shadow's moves
    plus the credit and the debt."""
    base = SimConfig(budget=True, shadow_feed="regossip")
    none = simulate(traces.hourly(), True, base)
    assert none.moves_by_reason.get("predicted", 0) == 0
    assert none.log == none.shadow_log
    one = simulate(traces.hourly(), True, SimConfig(**{**base.__dict__, "budget_reserve": -1}))
    assert one.moves_by_reason.get("predicted", 0) > 0
    assert one.moves <= one.shadow_moves + 1 + one.budget_debt
    assert one.hot_seconds < none.hot_seconds


def test_a_quiet_decision_builds_no_view() -> None:
    """At 10,000 partitions: with no node hot the shadow decides on one
    stand-in per node carrying its load (nothing moves), with a node hot it
    hands over that node's partitions and sheds (timed in docs/benchmarks.md:
    ``benchmarks.forecast_sim --shadow-cost``)."""
    nodes = ["a", "b", "c", "d"]
    reps = {("t", i): tuple(nodes[(i + j) % 4] for j in range(3)) for i in range(10_000)}
    leaders = {k: v[0] for k, v in reps.items()}
    s = ShadowReactive(BalanceConfig(), reps, leaders)
    rates = {k: (float(1 + (i % 7)), 0.0) for i, k in enumerate(reps)}
    s.observe(0.0, rates)
    assert s.decide(0.0, nodes) == 0
    assert s.last is not None and s.last.mean == sum(u for u, _ in rates.values()) / 4
    assert {v.leads for v in s.last.nodes.values()} == {1}
    hot = {k: (r[0] * (3 if leaders[k] == "a" else 1), 0.0) for k, r in rates.items()}
    made = 0
    for i in range(1, 4):
        s.observe(10.0 * i, hot)
        made += s.decide(10.0 * i, nodes)
    assert s.last.nodes["a"].hot and s.last.nodes["a"].leads == 2500
    assert made > 0 and all(mv.src == "a" for _, mv in s.log)
