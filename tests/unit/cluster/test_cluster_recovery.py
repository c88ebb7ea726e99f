"""Recovery from a lost majority (:mod:`sprawl.cluster.recovery`): pure.

When ``--force-new-cluster`` may go ahead (a majority of the voters does not
answer), and what happens to each partition: the replicas that survive keep
it, the usual rules choose its leader among them, and only a partition with
no surviving replica starts empty on the recovering node.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sprawl.cluster.recovery import majority_reachable, recover_placement

VOTERS = ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize(
    ("voters", "answered", "reachable"),
    [
        (["a", "b", "c"], [], False),  # the other two are gone
        (["a", "b", "c"], ["b"], True),  # a and b are a majority of three
        (["a", "b", "c", "d", "e"], ["d"], False),  # a and d: two of five
        (["a", "b", "c", "d", "e"], ["b", "d"], True),
        (["a", "b", "c"], ["x", "y"], False),  # answers from non-voters do not count
        (["a"], [], True),  # a lone voter is its own majority: nothing to recover
    ],
)
def test_majority_reachable(voters: list[str], answered: list[str], reachable: bool) -> None:
    """The recovering node ("a") plus the voters that answered, against a majority of the voters."""
    assert majority_reachable(voters, "a", answered) is reachable


def _pl(replicas: list[str], leader: str, epoch: int = 3, **extra: Any) -> dict[str, Any]:
    return {"replicas": list(replicas), "leader": leader, "epoch": epoch, **extra}


def test_partition_kept_by_the_recovering_node_alone() -> None:
    """A partition whose only surviving replica is the recovering node: it leads it
    alone at the next epoch (what it stored counts as committed)."""
    plan = recover_placement({"t": [_pl(["b", "a", "c"], "b")]}, "a", [])
    assert plan.placement["t"][0] == _pl(["a"], "a", 4)
    assert plan.kept == [("t", 0)] and not plan.lost and not plan.handed


def test_partition_of_another_survivor_stays_with_it() -> None:
    """A partition only another survivor holds is led by that survivor, alone."""
    plan = recover_placement({"t": [_pl(["b", "d", "c"], "b")]}, "a", ["d"])
    assert plan.placement["t"][0] == _pl(["d"], "d", 4)
    assert plan.handed == {("t", 0): "d"}


def test_surviving_leader_keeps_leading_the_survivors() -> None:
    """Several survivors with the leader among them: the leader stays (it holds
    everything acknowledged), the lost replicas are dropped."""
    plan = recover_placement({"t": [_pl(["d", "c", "a"], "d")]}, "a", ["d"])
    assert plan.placement["t"][0] == _pl(["d", "a"], "d", 4)
    assert plan.kept == [("t", 0)]


def test_lost_leader_is_failed_over_by_the_controller() -> None:
    """Several survivors, the leader lost: the lost leader stays named, so the
    controller's usual failover fences the survivors and picks the most up to
    date -- the plan itself never guesses which survivor holds more."""
    plan = recover_placement({"t": [_pl(["c", "a", "d"], "c")]}, "a", ["d"])
    assert plan.placement["t"][0] == _pl(["a", "d"], "c", 4)


def test_partition_without_survivors_starts_empty_here() -> None:
    """No replica survived: the partition is given to the recovering node (empty,
    its records lost) so the topic takes publishes again; the plan names it."""
    plan = recover_placement({"t": [_pl(["b", "c", "d"], "b")]}, "a", [])
    assert plan.placement["t"][0] == _pl(["a"], "a", 4)
    assert plan.lost == [("t", 0)]


def test_untouched_partition_keeps_its_epoch_and_a_goal_naming_lost_nodes_goes() -> None:
    """A partition whose replicas all survive is left exactly as it was; a changed
    one loses its load-move goal (it may name lost nodes)."""
    placement = {
        "t": [_pl(["a", "d"], "a", goal=["d", "a"]), _pl(["a", "b"], "a", goal=["b", "a"])],
    }
    plan = recover_placement(placement, "a", ["d"])
    assert plan.placement["t"][0] == placement["t"][0]
    assert plan.placement["t"][1] == _pl(["a"], "a", 4)
    assert placement["t"][1]["goal"] == ["b", "a"], "the input was modified"


@st.composite
def placements(draw: st.DrawFn) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for t in range(draw(st.integers(1, 3))):
        parts = []
        for _ in range(draw(st.integers(1, 4))):
            reps = draw(st.lists(st.sampled_from(VOTERS), min_size=1, max_size=5, unique=True))
            parts.append(_pl(reps, draw(st.sampled_from(reps)), draw(st.integers(1, 9))))
        out[f"t{t}"] = parts
    return out


@given(placements(), st.lists(st.sampled_from(VOTERS[1:]), unique=True))
def test_every_partition_ends_on_survivors_only(
    placement: dict[str, list[dict[str, Any]]], survivors: list[str]
) -> None:
    """Whatever the placement: every replica set afterwards holds survivors only,
    never drops a surviving replica, changes epoch only when it changed (by one),
    names a surviving leader unless the leader was lost among several survivors,
    and every partition is kept, handed or lost -- exactly one of them."""
    plan = recover_placement(placement, "a", survivors)
    alive = {"a", *survivors}
    for name, parts in placement.items():
        for p, before in enumerate(parts):
            after = plan.placement[name][p]
            survived = [r for r in before["replicas"] if r in alive]
            assert set(after["replicas"]) <= alive
            if survived:
                assert set(after["replicas"]) == set(survived)
            else:
                assert after["replicas"] == ["a"]
            changed = after["replicas"] != before["replicas"] or after["leader"] != before["leader"]
            assert after["epoch"] == before["epoch"] + (1 if changed else 0)
            if after["leader"] not in alive:
                assert len(after["replicas"]) >= 2 and after["leader"] == before["leader"]
            fates = [(name, p) in plan.kept, (name, p) in plan.handed, (name, p) in plan.lost]
            assert sum(fates) == 1, fates
