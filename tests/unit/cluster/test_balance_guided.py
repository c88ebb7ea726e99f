"""Forecast-guided choice in every move (``BalanceConfig.choose_target``,
``choose_partition``, ``shed_skip``): the reactive rule's moves, picked by the
partitions' forecast paths -- the target that stays coolest over the horizon,
the partition whose move relieves the source longest -- and a shed skipped
when the path says the node's excess ends soon.  They choose among the same
improving moves or skip one, so a hypothesis property checks that random paths
every decision cannot make leadership flap."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from harness.balance import FlapCheck, drawn
from sprawl.cluster.balance import OVERLOADED, PREDICTED, BalanceConfig, Balancer, PartitionLoad, replica_move

FOUR = ["a", "b", "c", "d"]


def part(topic: str, leader: str, msgs: float, path: Sequence[float] | None = None) -> PartitionLoad:
    """Partition ``topic``/0 led by ``leader`` at ``msgs`` now, its forecast the highest of ``path``."""
    return PartitionLoad(
        topic,
        0,
        leader,
        tuple(FOUR),
        msgs,
        0.0,
        forecast=None if path is None else max(path),
        path=None if path is None else tuple(path),
    )


def config(**kw: object) -> BalanceConfig:
    """Reactive on the first hot decision, one move per decision, no move on a forecast."""
    base: dict[str, object] = {"min_load": 10.0, "persist": 1, "max_moves": 1, "predict": False}
    base.update(kw)
    return BalanceConfig(**base)  # type: ignore[arg-type]


def target_case() -> list[PartitionLoad]:
    """a is hot (100 against a bound of 75); s (70) fits nowhere, t (30) moves;
    b (20) and c (30) can take it now, but b's u is about to triple (b with t:
    90 against a bound of 87.5 at the last point; c stays at 60)."""
    return [
        part("t", "a", 30, [30, 30, 30]),
        part("s", "a", 70, [70, 70, 70]),
        part("u", "b", 20, [20, 40, 60]),
        part("v", "c", 30, [30, 30, 30]),
        part("w", "d", 90, [90, 90, 90]),
    ]


@pytest.mark.parametrize(("choose", "dst"), [(False, "b"), (True, "c")])
def test_the_target_is_the_replica_that_stays_coolest(choose: bool, dst: str) -> None:
    """Reactive today: the least loaded replica now (b); with ``choose_target``
    the one whose path keeps it furthest below the bound (c)."""
    d = Balancer(config(choose_target=choose)).decide(0.0, target_case(), FOUR)
    assert [(m.topic, m.src, m.dst, m.reason) for m in d.moves] == [("t", "a", dst, OVERLOADED)]


def a_hot_now(x: list[float], y: list[float], z: list[float]) -> list[PartitionLoad]:
    """a leads x 30, y 25 and z 25 now (80 against a bound of 50), along the
    paths given; b, c and d lead p 20, q 20 and r 40, steady."""
    return [
        part("x", "a", 30, x),
        part("y", "a", 25, y),
        part("z", "a", 25, z),
        part("p", "b", 20, [20, 20, 20]),
        part("q", "c", 20, [20, 20, 20]),
        part("r", "d", 40, [40, 40, 40]),
    ]


def partition_case() -> list[PartitionLoad]:
    """a leads x 30 (about to fall), y 25 (about to rise), z 25: 80 against a
    bound of 50.  Moving x brings a to the bound now, y leaves it 5 over now but
    under the bound along the path (x falling), x leaves it over later."""
    return a_hot_now([30, 10, 5], [25, 35, 40], [25, 25, 25])


@pytest.mark.parametrize(("choose", "moved"), [(False, "x"), (True, "y")])
def test_the_partition_is_the_one_whose_move_relieves_longest(choose: bool, moved: str) -> None:
    """Reactive today: the largest now (x, about to fall); with
    ``choose_partition`` the one leaving a least over the bound over the path (y)."""
    d = Balancer(config(choose_partition=choose)).decide(0.0, partition_case(), FOUR)
    assert [m.topic for m in d.moves] == [moved]


FIVE = ["a", "b", "c", "d", "e"]


def quiet_case() -> list[PartitionLoad]:
    """a is not hot now (50 against 55) but predicted hot (80 against 60); x
    (forecast 40, a spike: 10 at the end) and y (a steady 30) are both quiet
    moves to b, either leaves a under the bound along the path."""
    five = tuple(FIVE)
    return [
        replace(part("x", "a", 20, [20, 40, 10]), replicas=five),
        replace(part("y", "a", 20, [20, 30, 30]), replicas=five),
        replace(part("z", "a", 10, [10, 10, 10]), replicas=five),
        replace(part("w", "b", 20, [10, 10, 10]), replicas=five),
        *(replace(part(t, n, 50, [50, 50, 50]), replicas=five) for t, n in zip("pqr", "cde", strict=True)),
    ]


@pytest.mark.parametrize(("choose", "moved"), [(False, "x"), (True, "y")])
def test_the_predictive_pass_moves_the_partition_that_relieves_longest(choose: bool, moved: str) -> None:
    """On a forecast, without the choice: the partition of highest forecast
    (x, a spike); with ``choose_partition``: of the moves that leave a under
    the bound, the one whose relief lasts (y)."""
    b = Balancer(config(predict=True, choose_partition=choose))
    d = b.decide(0.0, quiet_case(), FIVE)
    assert [(m.topic, m.dst, m.reason) for m in d.moves] == [(moved, "b", PREDICTED)]


def test_without_forecasts_the_choices_change_nothing() -> None:
    """No forecast, no path: the reactive rule's own picks."""
    bare = [replace(p, forecast=None, path=None) for p in partition_case()]
    on = Balancer(config(choose_partition=True, choose_target=True, shed_skip=1)).decide(0.0, bare, FOUR)
    off = Balancer(config()).decide(0.0, bare, FOUR)
    assert on.moves == off.moves and [m.topic for m in on.moves] == ["x"]


def falling() -> list[PartitionLoad]:
    """a is hot now (80 against 50) and still at the first path point, but
    from the second on it is at 30 against a bound of 34.4."""
    return a_hot_now([30, 10, 10], [25, 10, 10], [25, 10, 10])


@pytest.mark.parametrize(
    ("case", "skip", "moves"),
    [(falling, 0, 1), (falling, 1, 0), (falling, 3, 1), (partition_case, 1, 1)],
    ids=["off", "excess-ends", "no-points-left", "excess-lasts"],
)
def test_a_shed_is_skipped_when_the_excess_ends_before_it_pays(case, skip: int, moves: int) -> None:  # type: ignore[no-untyped-def]
    """``shed_skip``: no move off a node at or below the bound at every path
    point after the first ``shed_skip``; a node over it later still sheds."""
    d = Balancer(config(shed_skip=skip)).decide(0.0, case(), FOUR)
    assert len(d.moves) == moves
    assert any("along its path" in h for h in d.held) == (moves == 0)


def test_a_skipped_node_gets_no_replica_move() -> None:
    """A node whose shed is skipped (its excess ends soon) runs up its hot
    streak; the controller's replica move leaves it alone as well (without the
    skip it would copy x to b, a node that holds no replica of it)."""
    parts = [replace(p, replicas=("a", "d")) if p.leader == "a" else p for p in falling()]
    b = Balancer(config(shed_skip=1))
    for i in range(3):
        d = b.decide(10.0 * i, parts, FOUR)
    assert d.moves == [] and d.skipped == ["a"] and d.nodes["a"].streak == 3
    assert replica_move(d, parts, FOUR) is None
    assert replica_move(replace(d, skipped=[]), parts, FOUR) is not None


def test_off_by_default_and_checked() -> None:
    """All three are off by default; a negative ``shed_skip`` is refused."""
    c = BalanceConfig()
    assert (c.choose_target, c.choose_partition, c.shed_skip) == (False, False, 0)
    with pytest.raises(ValueError, match="shed_skip"):
        BalanceConfig(shed_skip=-1)


NODES = ["a", "b", "c"]
loads = st.floats(min_value=0, max_value=500, allow_nan=False)
paths = st.one_of(
    st.none(),
    st.lists(st.floats(min_value=0, max_value=2000, allow_nan=False), min_size=3, max_size=3),
)


@settings(max_examples=120, deadline=None, phases=[Phase.generate])
@given(
    st.lists(st.tuples(st.sampled_from(NODES), loads), min_size=2, max_size=9),
    st.lists(st.lists(paths, min_size=9, max_size=9), min_size=40, max_size=40),
    st.booleans(),
    st.sampled_from([0, 1, 2]),
)
def test_random_paths_cannot_make_it_flap(
    initial: list[tuple[str, float]], drawn_paths: list[list[list[float] | None]], predict: bool, skip: int
) -> None:
    """Steady present loads, paths redrawn at random every decision, every
    choice on (with or without moves on a forecast): between decisions with no
    plan under way every decision that moved lowers the sum of squared present
    node loads, so no leader assignment comes back (a relief plan, on by
    default, lowers it as a whole: ``test_balance_relief``)."""
    leaders = {("t", i): n for i, (n, _) in enumerate(initial)}
    rate = {("t", i): u for i, (_, u) in enumerate(initial)}
    replicas = dict.fromkeys(leaders, tuple(NODES))
    b = Balancer(
        BalanceConfig(
            min_load=10,
            cooldown=30.0,
            persist=1,
            predict=predict,
            choose_target=True,
            choose_partition=True,
            shed_skip=skip,
        )
    )
    check = FlapCheck(leaders, rate, NODES)
    for step, row in enumerate(drawn_paths):
        parts = drawn(leaders, replicas, rate, [(None if p is None else max(p), None) for p in row])
        parts = [
            replace(p, path=None if row[p.partition] is None else tuple(row[p.partition])) for p in parts
        ]
        d = b.decide(10.0 * step, parts, NODES)
        check.apply(b.plan, d.moves, d.held)
