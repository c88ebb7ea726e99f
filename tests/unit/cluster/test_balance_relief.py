"""The balancer's way out of the *stuck state* (``BalanceConfig.unstick_after``,
:mod:`sprawl.cluster.relief`): a hot node no single move relieves gets the
shortest plan of leadership moves that does, reactive and predictive alike; a
node hovering at the bound or predicted to cool gets none; the search takes
the fewest moves, then the least load moved; and a hypothesis property that
with steady loads the plans cannot make leadership flap."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from harness.balance import FlapCheck, drawn
from sprawl.cluster import relief
from sprawl.cluster.balance import PLANNED, BalanceConfig, Balancer, Move, PartitionLoad, replica_move

NODES = ["n0", "n1", "n2", "n3"]


def ramp_stuck(scale: float = 1.0) -> list[PartitionLoad]:
    """The ramp trace (seed 3) at 32.5 h, as the reactive run left it: n0
    leads two launch partitions (728 units/s against a bound of 666.6); their
    other replicas n1 (516) and n2 (379) cannot take one (n2 + 361 = 740),
    nor can ``replica_move`` (n3 + 361 > 666.6).  ``scale`` multiplies the
    launch partitions' rates."""
    rows = [
        ("launch", 1, "n0", ("n0", "n1", "n2"), 367.0 * scale),
        ("launch", 2, "n0", ("n0", "n1", "n2"), 361.0 * scale),
        ("launch", 0, "n1", ("n0", "n1", "n2"), 396.0),
        ("steady", 4, "n1", ("n0", "n1", "n2"), 120.0),
        ("cycle", 0, "n2", ("n1", "n2", "n3"), 86.0),
        ("cycle", 1, "n2", ("n2", "n3", "n0"), 92.0),
        ("cycle", 2, "n2", ("n2", "n0", "n1"), 86.0),
        ("steady", 1, "n2", ("n1", "n2", "n3"), 115.0),
        ("steady", 0, "n3", ("n0", "n1", "n3"), 135.0),
        ("steady", 2, "n3", ("n2", "n3", "n0"), 124.0),
        ("steady", 3, "n3", ("n3", "n0", "n1"), 132.0),
        ("steady", 5, "n3", ("n1", "n2", "n3"), 119.0),
    ]
    return [PartitionLoad(t, i, ld, reps, u, 0.0) for t, i, ld, reps, u in rows]


def applied(parts: list[PartitionLoad], moves: list[Move]) -> list[PartitionLoad]:
    """The partitions once ``moves`` are done (the new leader reports the same rate)."""
    dst = {(m.topic, m.partition): m.dst for m in moves}
    return [replace(p, leader=dst.get(p.key, p.leader)) for p in parts]


def run(b: Balancer, parts: list[PartitionLoad], n: int) -> tuple[list[PartitionLoad], list[Move]]:
    """``n`` decisions 10 s apart, each one's moves applied before the next."""
    log: list[Move] = []
    for i in range(n):
        d = b.decide(10.0 * i, parts, NODES)
        log += d.moves
        parts = applied(parts, d.moves)
    return parts, log


def test_the_stuck_state_is_stuck_without_a_plan() -> None:
    """With the plan off (``unstick_after=0``) the reactive rule moves nothing
    in 100 decisions and n0 stays hot: the state the ramp trace fell into."""
    b = Balancer(BalanceConfig(unstick_after=0))
    _, log = run(b, ramp_stuck(), 100)
    assert log == []
    assert b.last is not None and b.last.nodes["n0"].hot
    assert any("no replica below the mean" in h for h in b.last.held)


def test_a_stuck_node_gets_the_shortest_plan_after_unstick_after_decisions() -> None:
    """The 30th hot decision (the default): a swap -- cycle/2 n2 -> n0, then
    launch/2 n0 -> n2 -- the two-move plan moving the least load (447 units/s)
    and, of those, leaving the lowest sum of squares; then no node is hot."""
    b = Balancer(BalanceConfig())
    assert b.config.unstick_after == 30
    parts, log = run(b, ramp_stuck(), 29)
    assert log == []
    d = b.decide(290.0, parts, NODES)
    assert [(m.topic, m.partition, m.src, m.dst, m.reason) for m in d.moves] == [
        ("cycle", 2, "n2", "n0", PLANNED),
        ("launch", 2, "n0", "n2", PLANNED),
    ]
    assert d.planned == [] and b.plan == ()
    d = b.decide(300.0, applied(parts, d.moves), NODES)
    assert not any(v.hot for v in d.nodes.values()) and d.moves == []


def test_a_node_hovering_at_the_bound_gets_no_plan() -> None:
    """n0 just over the bound (within ``unstick_margin`` of the band) for 100
    decisions: its heat is the noise's, no plan is made."""
    b = Balancer(BalanceConfig())
    _, log = run(b, ramp_stuck(scale=0.94), 100)  # n0 686 against a bound of 662
    assert b.last is not None and b.last.nodes["n0"].hot
    assert log == []


def test_a_stuck_node_predicted_to_cool_gets_no_plan_and_one_predicted_hot_does() -> None:
    """With forecasts a plan is made only for a node still predicted hot: the
    same stuck state with the launch partitions forecast to fall to 100 gets
    none; forecast at their present rates, it gets the plan."""
    cool = [replace(p, forecast=100.0 if p.topic == "launch" else p.msgs_s) for p in ramp_stuck()]
    b = Balancer(BalanceConfig())
    parts, log = run(b, cool, 29)
    d = b.decide(290.0, parts, NODES)
    assert not any(m.reason == PLANNED for m in log + d.moves)
    assert any("n0: stuck hot, predicted at or below the bound" in h for h in d.held)
    same = [replace(p, forecast=p.msgs_s) for p in ramp_stuck()]
    _, log = run(Balancer(BalanceConfig()), same, 40)
    assert [m.reason for m in log] == [PLANNED, PLANNED]


def test_a_plan_is_not_taken_when_a_node_it_loads_is_predicted_hot() -> None:
    """The search leaves out a plan whose nodes would be over the predicted bound."""
    parts = [
        relief.Part(("p", 0), "a", ("a", "b"), 150.0, 150.0),
        relief.Part(("q", 0), "b", ("b", "c"), 60.0, 60.0),
    ]
    loads = {"a": 300.0, "b": 100.0, "c": 100.0, "d": 100.0}
    plan = relief.search("a", parts, loads, 206.25)
    assert plan is not None and plan.moves == ((("q", 0), "b", "c"), (("p", 0), "a", "b"))
    pred = {"a": 300.0, "b": 100.0, "c": 200.0, "d": 100.0}  # c predicted to rise
    assert relief.search("a", parts, loads, 206.25, predicted=pred, predicted_upper=206.0) is None


def test_the_search_takes_the_fewest_moves_then_the_least_load_moved() -> None:
    """A one-move plan beats any two-move one; of two-move plans, the one
    moving the least load; nothing when no plan of ``depth`` moves relieves it."""
    loads = {"a": 300.0, "b": 180.0, "c": 100.0, "d": 80.0}
    one = [relief.Part(("p", 0), "a", ("a", "d"), 110.0, 110.0)]
    plan = relief.search("a", one, loads, 206.25)
    assert plan is not None and plan.moves == ((("p", 0), "a", "d"),)
    # a 300 against a bound of 175: p/0 fits on b once q/0 (100) went to c
    # (250 moved), p/1 on d once r/0 (80) did (230 moved: taken)
    loads = {"a": 300.0, "b": 120.0, "c": 40.0, "d": 100.0}
    two = [
        relief.Part(("p", 0), "a", ("a", "b"), 150.0, 150.0),
        relief.Part(("p", 1), "a", ("a", "d"), 150.0, 150.0),
        relief.Part(("q", 0), "b", ("b", "c"), 100.0, 100.0),
        relief.Part(("q", 1), "b", ("b", "c"), 20.0, 20.0),
        relief.Part(("r", 0), "d", ("d", "c"), 80.0, 80.0),
        relief.Part(("r", 1), "d", ("d", "c"), 20.0, 20.0),
    ]
    plan = relief.search("a", two, loads, 175.0)
    assert plan is not None and plan.moves == ((("r", 0), "d", "c"), (("p", 1), "a", "d"))
    assert plan.moved == 230.0
    assert relief.search("a", two, loads, 175.0, depth=1) is None
    # ``slack``: both two-move plans leave a node at 170, 5 under the bound;
    # asked for more, it takes three moves (d left at 150)
    assert relief.search("a", two, loads, 175.0, slack=5.0) == plan
    wide = relief.search("a", two, loads, 175.0, slack=5.5)
    assert wide is not None and [m[0] for m in wide.moves] == [("r", 0), ("r", 1), ("p", 1)]
    assert relief.search("a", two, loads, 175.0, slack=5.5, depth=2) is None


def test_replica_move_leaves_a_node_with_a_plan_under_way_alone() -> None:
    """A plan spread over two decisions (one move in flight): the decision that
    makes its first move names the node in ``planned`` and :func:`replica_move`
    does not also move a replica off it."""
    b = Balancer(BalanceConfig(max_moves=1))
    parts, _ = run(b, ramp_stuck(), 29)
    d = b.decide(290.0, parts, NODES)
    assert len(d.moves) == 1 and d.planned == ["n0"] and len(b.plan) == 1
    assert replica_move(d, parts, NODES, persist_factor=1) is None
    d = b.decide(300.0, applied(parts, d.moves), NODES)
    assert [(m.topic, m.partition) for m in d.moves] == [("launch", 2)] and b.plan == ()


def test_unstick_options_are_checked() -> None:
    import pytest

    with pytest.raises(ValueError):
        BalanceConfig(unstick_after=-1)
    with pytest.raises(ValueError):
        BalanceConfig(unstick_moves=0)


ABCD = ["a", "b", "c", "d"]
REPS = [("a", "b"), ("b", "c"), ("c", "d"), ("a", "d"), ("a", "b", "c"), ("b", "c", "d")]
fcs = st.one_of(st.none(), st.floats(min_value=0, max_value=2000, allow_nan=False))


@settings(max_examples=150, deadline=None, phases=[Phase.generate])
@given(
    st.lists(
        st.tuples(st.sampled_from(ABCD), st.floats(min_value=0, max_value=500), st.sampled_from(REPS)),
        min_size=2,
        max_size=10,
    ),
    st.lists(st.lists(st.tuples(fcs, st.none()), min_size=10, max_size=10), min_size=40, max_size=40),
)
def test_relief_plans_cannot_make_it_flap(
    initial: list[tuple[str, float, tuple[str, ...]]], draws: list[list[tuple[float | None, None]]]
) -> None:
    """Steady present loads, forecasts redrawn every decision, plans after one
    hot decision with no margin: a plan under way takes whole decisions and
    completes under steady loads, so between decisions with no plan under way
    the sum of squared node loads falls whenever anything moved, and no leader
    assignment comes back."""
    leaders = {("t", i): (n if n in reps else reps[0]) for i, (n, _, reps) in enumerate(initial)}
    reps_of = {("t", i): reps for i, (_, _, reps) in enumerate(initial)}
    rate = {("t", i): u for i, (_, u, _) in enumerate(initial)}
    b = Balancer(
        BalanceConfig(min_load=10, cooldown=30.0, persist=1, unstick_after=1, unstick_margin=0.0, max_moves=1)
    )
    check = FlapCheck(leaders, rate, ABCD)
    for step, draw in enumerate(draws):
        d = b.decide(10.0 * step, drawn(leaders, reps_of, rate, draw), ABCD)
        check.apply(b.plan, d.moves, d.held)


def test_the_flap_check_sees_plans() -> None:
    """The property's setting does make plans: the stuck ramp state, its rates
    steady, gets one within a few decisions."""
    b = Balancer(BalanceConfig(persist=1, unstick_after=1, max_moves=1))
    _, log = run(b, ramp_stuck(), 5)
    assert [m.reason for m in log] == [PLANNED, PLANNED]
