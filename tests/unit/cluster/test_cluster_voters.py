"""The membership policy (:mod:`sprawl.cluster.voters`): pure."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sprawl.cluster.voters import View, next_change, quorum, strength, target_voters
from sprawl.raft.messages import ConfChange, ConfChangeType

ADD, PROMOTE, REMOVE = ConfChangeType.ADD_LEARNER, ConfChangeType.PROMOTE, ConfChangeType.REMOVE
DEAD = 100.0  # seconds: past the default 30 s grace


def view(
    voters: set[int],
    learners: set[int] = frozenset(),  # type: ignore[assignment]
    live: set[int] | None = None,
    dead: dict[int, float] | None = None,
    caught_up: set[int] | None = None,
    leader: int = 1,
    max_voters: int = 5,
) -> View:
    """A View; ``live`` defaults to every member not in ``dead``, ``caught_up`` to every learner."""
    dead = dead or {}
    members = set(voters) | set(learners)
    return View(
        leader=leader,
        voters=frozenset(voters),
        learners=frozenset(learners),
        live=frozenset(live if live is not None else members - set(dead)),
        dead_for=dict(dead),
        caught_up=frozenset(caught_up if caught_up is not None else learners),
        max_voters=max_voters,
    )


def apply(v: View, c: ConfChange) -> View:
    """The view after ``c`` commits (a newly added learner catches up at once)."""
    voters, learners, caught = set(v.voters), set(v.learners), set(v.caught_up)
    if c.type == ADD:
        learners.add(c.node_id)
        caught.add(c.node_id)
    elif c.type == PROMOTE:
        assert c.node_id in learners, "promoted a non-learner"
        learners.discard(c.node_id)
        voters.add(c.node_id)
    elif c.type == REMOVE:
        assert c.node_id in voters | learners, "removed a non-member"
        voters.discard(c.node_id)
        learners.discard(c.node_id)
    else:  # pragma: no cover - the policy never adds voters directly
        raise AssertionError(c)
    return replace(v, voters=frozenset(voters), learners=frozenset(learners), caught_up=frozenset(caught))


@pytest.mark.parametrize(
    ("live", "target"),
    [(0, 1), (1, 1), (2, 1), (3, 3), (4, 3), (5, 5), (6, 5), (9, 5), (100, 5)],
)
def test_target_voters_table(live: int, target: int) -> None:
    """The target is 1 below 3 live members, 3 below 5, else 5 (never even)."""
    assert target_voters(live) == target


def test_target_voters_limit() -> None:
    """A lower limit caps the target at the odd size it allows."""
    assert target_voters(9, limit=3) == 3
    assert target_voters(9, limit=4) == 3
    assert target_voters(9, limit=1) == 1


def test_stable_cluster_does_nothing() -> None:
    """A healthy cluster at its target with no learners proposes no change."""
    assert next_change(view({1, 2, 3})) is None
    assert next_change(view({1})) is None


def test_newcomer_added_as_learner() -> None:
    """A live node that is not a member joins as a learner (before any other change)."""
    v = view({1, 2, 3}, live={1, 2, 3, 9}, dead={})
    assert next_change(v) == ConfChange(ADD, 9)


def test_newcomer_before_removal() -> None:
    """Adding a newcomer comes before removing a dead voter."""
    v = view({1, 2, 3}, live={1, 2, 7}, dead={3: DEAD})
    assert next_change(v) == ConfChange(ADD, 7)


@pytest.mark.parametrize(("n", "target"), [(3, 3), (5, 5), (7, 5)])
def test_promotes_up_to_target_never_beyond(n: int, target: int) -> None:
    """From one voter and n-1 caught-up learners the walk promotes exactly until the
    target (3 for 3-4 live, 5 for 5+) and then stops, leaving the rest learners."""
    v = view({1}, learners=set(range(2, n + 1)))
    for _ in range(20):
        c = next_change(v)
        if c is None:
            break
        assert c.type == PROMOTE
        v = apply(v, c)
    assert len(v.voters) == target
    assert len(v.learners) == n - target


def test_lagging_learner_not_promoted() -> None:
    """A learner that is not caught up is not promoted."""
    assert next_change(view({1}, learners={2, 3}, caught_up={2})) == ConfChange(PROMOTE, 2)
    assert next_change(view({1}, learners={2, 3}, caught_up=set())) is None


def test_promotes_replacement_then_removes_dead_voter() -> None:
    """A voter dead past grace with a caught-up learner: PROMOTE the learner first, then
    REMOVE the dead voter, then nothing."""
    v = view({1, 2, 3}, learners={4}, dead={3: DEAD})
    c1 = next_change(v)
    assert c1 == ConfChange(PROMOTE, 4)
    v = apply(v, c1)
    c2 = next_change(v)
    assert c2 == ConfChange(REMOVE, 3)
    v = apply(v, c2)
    assert next_change(v) is None
    assert v.voters == {1, 2, 4}


def test_voter_dead_within_grace_is_kept() -> None:
    """A voter dead for less than the grace is neither removed nor replaced."""
    v = view({1, 2, 3}, learners={4}, dead={3: 10.0})
    assert next_change(v) is None


def test_dead_voter_without_replacement_removed_from_three() -> None:
    """In a 3-voter cluster a voter dead past grace with no replacement is removed (3 -> 2)."""
    assert next_change(view({1, 2, 3}, dead={3: DEAD})) == ConfChange(REMOVE, 3)


def test_dead_voter_not_removed_from_two() -> None:
    """In a 2-voter cluster the dead voter stays: 1 of 2 is not a majority of 2."""
    assert next_change(view({1, 2}, dead={2: DEAD})) is None


def test_leader_never_removed() -> None:
    """Even if gossip reports the leader dead past grace, the leader is not removed."""
    v = view({1, 2, 3}, live={2, 3}, dead={1: DEAD}, leader=1)
    c = next_change(v)
    assert c is None or c.node_id != 1


def test_dead_learner_removed() -> None:
    """A learner dead past grace is removed; one dead within grace is kept."""
    assert next_change(view({1, 2, 3}, learners={5}, dead={5: DEAD})) == ConfChange(REMOVE, 5)
    assert next_change(view({1, 2, 3}, learners={5}, dead={5: 1.0})) is None


def test_grace_is_configurable() -> None:
    """The grace compared against is the view's own grace."""
    v = replace(view({1, 2, 3}, dead={3: 10.0}), grace=5.0)
    assert next_change(v) == ConfChange(REMOVE, 3)


# -- walking the policy ------------------------------------------------------------


@st.composite
def views(draw: st.DrawFn) -> View:
    """Consistent views: the leader is a live voter; a node is either live or dead for
    some time (gossip never reports both); non-members may be live (newcomers)."""
    n = draw(st.integers(1, 9))
    ids = list(range(1, n + 1))
    roles = draw(st.lists(st.sampled_from(["voter", "learner", "outsider"]), min_size=n, max_size=n))
    roles[0] = "voter"
    voters = {i for i, r in zip(ids, roles, strict=True) if r == "voter"}
    learners = {i for i, r in zip(ids, roles, strict=True) if r == "learner"}
    live, dead = {1}, {}
    for i in ids[1:]:
        state = draw(st.sampled_from(["live", "dead", "recent", "unknown"]))
        if state == "live":
            live.add(i)
        elif state == "dead":
            dead[i] = DEAD
        elif state == "recent":
            dead[i] = 5.0
    caught = {i for i in learners if draw(st.booleans())}
    return View(
        leader=1,
        voters=frozenset(voters),
        learners=frozenset(learners),
        live=frozenset(live),
        dead_for=dead,
        caught_up=frozenset(caught),
        max_voters=draw(st.sampled_from([1, 3, 5])),
    )


def has_live_majority(v: View) -> bool:
    return len(v.voters & v.live) >= len(v.voters) // 2 + 1


@given(views())
def test_walk_terminates_and_keeps_a_live_majority(v: View) -> None:
    """Applying the policy's changes one by one stops within a bounded number of steps,
    never removes the leader, never makes more voters than max(target, voters so far
    without a dead one), and never loses a live majority of voters that it had."""
    start_majority = has_live_majority(v)
    bound = 4 * (len(v.voters | v.learners | v.live) + 1)
    for _ in range(bound):
        c = next_change(v)
        if c is None:
            break
        assert not (c.type == REMOVE and c.node_id == v.leader), c
        before = v
        v = apply(v, c)
        if c.type == PROMOTE:
            dead_voters = any(before.dead_for.get(n, 0) > before.grace for n in before.voters)
            assert dead_voters or len(v.voters) <= target_voters(len(v.live), v.max_voters), c
        if start_majority:
            assert has_live_majority(v), (c, before, v)
    else:
        pytest.fail(f"policy did not settle within {bound} steps: {v}")
    assert v.leader in v.voters
    assert v.live <= v.voters | v.learners


# -- registration before addition ------------------------------------------------------


def test_unregistered_newcomer_waits_and_others_go_on() -> None:
    """A newcomer not yet registered (not addable) is not added; a registered one
    is, and with none addable a caught-up learner is promoted meanwhile."""
    v = replace(view({1}, learners={2}, live={1, 2, 3, 4}), addable=frozenset({4}))
    assert next_change(v) == ConfChange(ADD, 4)
    v = replace(view({1}, learners={2}, live={1, 2, 3}), addable=frozenset())
    assert next_change(v) == ConfChange(PROMOTE, 2)


# -- strength: how many failures the configuration survives ----------------------------


@pytest.mark.parametrize(
    ("voters", "live_voters", "live_members", "ft", "tolerant"),
    [
        (1, 1, 1, 0, True),  # a lone node: its target is 1, it survives nothing and that is all it can
        (1, 1, 3, 0, False),  # three members up, one voter: below the target of 3
        (2, 2, 3, 0, False),  # still below the target: 2 voters survive nothing
        (3, 3, 3, 1, True),
        (3, 2, 2, 0, False),  # one voter down: the next failure loses the majority
        (3, 3, 4, 1, True),  # a 4th member is a learner: 3 voters are the target
        (3, 3, 5, 0, False),  # five members: the target is 5
        (4, 3, 3, 0, False),  # 4 voters, 3 up: a majority of 4 is 3
        (4, 4, 4, 1, True),
        (5, 5, 5, 2, True),
        (5, 4, 4, 1, False),  # one of five down: survives one more, not the two 5 voters promise
        (5, 3, 3, 0, False),
    ],
)
def test_strength_table(voters: int, live_voters: int, live_members: int, ft: int, tolerant: bool) -> None:
    """Fault tolerance = voters up minus a majority of the voters (0 below the target);
    fault-tolerant = at the target with every failure the target is sized for survivable."""
    vs = frozenset(range(1, voters + 1))
    up = frozenset(range(1, live_voters + 1)) | frozenset(range(100, 100 + live_members - live_voters))
    s = strength(vs, frozenset(), up)
    assert s.target == target_voters(live_members)
    assert (s.fault_tolerance, s.fault_tolerant) == (ft, tolerant), s
    assert s.as_dict()["fault_tolerance"] == ft


@given(
    st.integers(1, 7),
    st.integers(0, 7),
    st.integers(0, 4),
)
def test_fault_tolerance_is_exactly_what_survives(voters: int, down: int, extra: int) -> None:
    """At the target, any ``fault_tolerance`` more voters may fail and a majority is
    still up -- and one more failure than that loses it (the figure is exact);
    with the majority already gone, or below the target, it is 0."""
    down = min(down, voters)
    vs = set(range(1, voters + 1))
    up = set(range(down + 1, voters + 1)) | set(range(100, 100 + extra)) | {voters}  # this node is up
    s = strength(vs, set(), up)
    live = len(vs & up)
    if s.voters < s.target:
        assert s.fault_tolerance == 0
        return
    f = s.fault_tolerance
    if live < quorum(voters):
        assert f == 0  # the majority is already gone
        return
    assert live - f >= quorum(voters)
    assert live - (f + 1) < quorum(voters)
