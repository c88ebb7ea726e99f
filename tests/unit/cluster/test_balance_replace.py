"""Moves on a forecast that replace reactive ones (``BalanceConfig.predict_replace``):
the reactive rule replayed on the forecast loads bounds how many moves a node
predicted hot gets ("cap") or which ones ("same": the replayed moves
themselves), and a node that moved on a forecast has its later reactive move
pre-empted -- held for ``replace_within`` seconds while its load stays at or
below what the forecast said, and counted (``Balancer.preempted_total``).  The
no-flapping property with the rule on is
``test_balance_predictive.test_random_forecasts_cannot_make_it_flap``."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sprawl.cluster.balance import (
    OVERLOADED,
    PREDICTED,
    BalanceConfig,
    Balancer,
    Decision,
    PartitionLoad,
    replica_move,
)

FIVE = ["a", "b", "c", "d", "e"]


def part(topic: str, p: int, leader: str, msgs: float, forecast: float | None = None) -> PartitionLoad:
    return PartitionLoad(topic, p, leader, tuple(FIVE), msgs, 0.0, forecast=forecast)


def rising() -> list[PartitionLoad]:
    """a leads 30 + 88 now (not hot: mean 97.6, bound 122); forecast 55 + 100
    against a forecast bound of 133.75: predicted hot.  The reactive rule on
    the forecast loads moves t/0 to b (t/1 does not fit there: 150)."""
    return [
        part("t", 0, "a", 30, forecast=55),
        part("t", 1, "a", 88, forecast=100),
        part("u", 0, "b", 50, forecast=50),
        *(part("v", i, n, 110, forecast=110) for i, n in enumerate("cde")),
    ]


def later(w: float = 10.0) -> list[PartitionLoad]:
    """After t/0 moved to b, the other nodes quieten (60 each): a (88 + w/0's
    ``w``) is hot against a bound of 89.5 and w/0 fits on c -- a reactive
    move, unless pre-empted.  With w = 10 a is at 98, within the 100 the
    forecast gave it after the move; with w = 20 it is above (the forecast was wrong)."""
    out = [replace(p, leader="b") if p.key == ("t", 0) else p for p in rising()]
    out = [replace(p, msgs_s=60.0, forecast=60.0) if p.topic == "v" else p for p in out]
    return [*out, part("w", 0, "a", w, forecast=w)]


def first_moves(b: Balancer, parts: list[PartitionLoad], t0: float = 0.0, n: int = 6) -> Decision:
    """Decisions 10 s apart from ``t0`` until one moves (or ``n`` of them)."""
    d = b.decide(t0, parts, FIVE)
    for i in range(1, n):
        if d.moves:
            break
        d = b.decide(t0 + 10.0 * i, parts, FIVE)
    return d


def test_off_by_default_and_checked() -> None:
    assert BalanceConfig().predict_replace == ""
    with pytest.raises(ValueError):
        BalanceConfig(predict_replace="some")
    with pytest.raises(ValueError):
        BalanceConfig(replace_within=-1.0)
    with pytest.raises(ValueError):
        BalanceConfig(replace_points=0)


@pytest.mark.parametrize("mode", ["", "cap", "same"])
def test_the_first_move_is_the_same_in_every_mode(mode: str) -> None:
    """Where the forecast pass and the replayed reactive rule agree, the rule changes nothing."""
    d = first_moves(Balancer(BalanceConfig(min_load=50, predict_replace=mode)), rising())
    assert [(m.topic, m.partition, m.src, m.dst, m.reason) for m in d.moves] == [
        ("t", 0, "a", "b", PREDICTED)
    ]


@pytest.mark.parametrize("mode", ["cap", "same"])
def test_a_move_on_a_forecast_pre_empts_the_reactive_one(mode: str) -> None:
    """Without the rule a sheds w/0 once hot; with it that reactive move is held
    as pre-empted (counted once) until ``replace_within`` has passed, then made."""
    plain = Balancer(BalanceConfig(min_load=50))
    first_moves(plain, rising())
    d = first_moves(plain, later(), t0=100.0)
    assert [(m.topic, m.src, m.reason) for m in d.moves] == [("w", "a", OVERLOADED)]

    b = Balancer(BalanceConfig(min_load=50, predict_replace=mode, replace_within=900.0))
    assert first_moves(b, rising()).moves
    d = first_moves(b, later(), t0=100.0)
    assert d.moves == [] and d.nodes["a"].hot and d.nodes["a"].streak >= 3
    assert "a: hot, its reactive move pre-empted by a move on a forecast" in d.held
    assert b.preempted_total == 1
    d = first_moves(b, later(), t0=1000.0)  # the move on the forecast was at 20 s
    assert [(m.topic, m.src, m.reason) for m in d.moves] == [("w", "a", OVERLOADED)]
    assert b.preempted_total == 1


def test_a_wrong_forecast_lifts_the_pre_emption() -> None:
    """a above the load its forecast gave it after the move: it sheds at once."""
    b = Balancer(BalanceConfig(min_load=50, predict_replace="same"))
    first_moves(b, rising())
    d = first_moves(b, later(20.0), t0=100.0)
    assert [(m.topic, m.src) for m in d.moves] == [("w", "a")]
    assert b.preempted_total == 0


def needs_two() -> list[PartitionLoad]:
    """a leads 40 + 5 + 5 (forecast 60 + 6 + 6 = 72 against a forecast bound of
    65); the reactive rule on the forecast loads relieves it with one move
    (t/2 to b: 62), which is not a quiet move now (b would be over the room a
    move on a forecast leaves); the forecast pass would move both small ones."""
    return [
        part("t", 2, "a", 40, forecast=60),
        part("t", 0, "a", 5, forecast=6),
        part("t", 1, "a", 5, forecast=6),
        part("u", 0, "b", 2, forecast=2),
        *(part("v", i, n, 58, forecast=62) for i, n in enumerate("cde")),
    ]


@pytest.mark.parametrize(("mode", "moved"), [("", [("t", 0), ("t", 1)]), ("cap", [("t", 0)]), ("same", [])])
def test_no_more_moves_than_the_reactive_rule_would_make(mode: str, moved: list[tuple[str, int]]) -> None:
    """Off: two small moves; "cap": one, as the replayed rule makes; "same":
    none, since the replayed move is not a quiet one now (it waits for the
    reactive rule)."""
    d = first_moves(Balancer(BalanceConfig(min_load=60, predict_replace=mode)), needs_two())
    assert not d.nodes["a"].hot
    assert [(m.topic, m.partition) for m in d.moves] == moved
    assert all(m.reason == PREDICTED for m in d.moves)
    if not moved:
        assert any("a: predicted hot" in h for h in d.held)


def apart() -> list[PartitionLoad]:
    """a's partitions peak at different times over the horizon: t/0 now-ish
    (55, then 30), t/1 later (70, then 95).  Their highest forecasts add up
    to 150 against a forecast bound of 132.5 (predicted hot), but at neither
    time is a over that time's bound (125 against 126.25 both times)."""
    paths = {("t", 0): (55.0, 30.0), ("t", 1): (70.0, 95.0)}
    out = []
    for p in rising():
        path = paths.get(p.key, (p.forecast or 0.0,) * 2)
        out.append(replace(p, forecast=max(path), path=path))
    return out


@pytest.mark.parametrize(("mode", "moves"), [("", 1), ("cap", 0), ("same", 0)])
def test_the_replay_follows_the_paths(mode: str, moves: int) -> None:
    """Off, a sheds on the sum of its partitions' highest forecasts; with the
    rule, replayed along the paths the reactive rule would never move off a:
    no move, and the reason in the "why" view."""
    d = first_moves(Balancer(BalanceConfig(min_load=50, predict_replace=mode)), apart())
    assert d.nodes["a"].predicted_hot
    assert len(d.moves) == moves
    if not moves:
        assert "a: predicted hot, the reactive rule on the forecast loads would not move off it" in d.held


@pytest.mark.parametrize(("points", "moves"), [(1, 1), (2, 0)])
def test_replace_points_asks_for_a_node_hot_along_the_path(points: int, moves: int) -> None:
    """a is predicted over the bound at the path's last point only (155
    against 136.25; 118 against 127 before): the replay moves with
    ``replace_points=1``, not with 2 (hot at two points in a row)."""
    paths = {("t", 0): (30.0, 55.0), ("t", 1): (88.0, 100.0)}
    parts = [replace(p, path=paths.get(p.key, (p.forecast or 0.0,) * 2)) for p in rising()]
    cfg = BalanceConfig(min_load=50, predict_replace="same", replace_points=points)
    d = first_moves(Balancer(cfg), parts)
    assert [(m.topic, m.partition, m.dst) for m in d.moves] == [("t", 0, "b")] * moves


@pytest.mark.parametrize(("mode", "streak"), [("", 1), ("same", 0)])
def test_a_replacing_move_restarts_the_hot_streak(mode: str, streak: int) -> None:
    """a turns hot (130 against 127.5) in the decision its forecast move is
    made: with the rule that move is the reactive one made early, so a's hot
    streak starts again from 0 as after a reactive shed (the gossip lags
    behind a move); without, it keeps counting."""
    b = Balancer(BalanceConfig(min_load=50, predict_replace=mode))
    for t in (0.0, 10.0):
        assert b.decide(t, rising(), FIVE).moves == []
    hot = [replace(p, msgs_s=100.0) if p.key == ("t", 1) else p for p in rising()]
    d = b.decide(20.0, hot, FIVE)
    assert [(m.topic, m.partition, m.reason) for m in d.moves] == [("t", 0, PREDICTED)]
    assert d.nodes["a"].hot and d.nodes["a"].streak == streak


@pytest.mark.parametrize(("mode", "moved"), [("", True), ("same", False)])
def test_a_pre_empted_node_gets_no_replica_move(mode: str, moved: bool) -> None:
    """a stays hot for ten decisions with its partitions on a and b only (no
    leadership move fits): the controller's replica move takes one off it --
    but not while its moves are held as pre-empted by a move on a forecast."""
    b = Balancer(BalanceConfig(min_load=50, predict_replace=mode))
    first_moves(b, rising())
    parts = [replace(p, replicas=("a", "b")) if p.leader == "a" else p for p in later()]
    for i in range(10):
        d = b.decide(100.0 + 10.0 * i, parts, FIVE)
        assert d.moves == []
    assert d.nodes["a"].hot and d.nodes["a"].streak == 10
    assert d.preempted == (["a"] if mode else [])
    assert (replica_move(d, parts, FIVE) is not None) is moved
