"""A dead node's leaderships split evenly over the survivors (issue 23, fail38).

The controller's cores share a :class:`~sprawl.replication.failover.LeaderSpread`:
among the replicas as up to date as the best, the one with the fewest new
leaderships in the failovers under way is chosen, then the first in the
placement's order.  Before, the placement's order alone decided, and one
survivor of a 10,000-topic failover took 3,373 leaderships to the other's
1,663 (it was the critical path).  A replica behind is never chosen for the
spread's sake; a deliberate move is neither spread nor counted.  Counted,
not timed."""

from __future__ import annotations

import itertools

from sprawl.replication.failover import FailoverCore, LeaderSpread
from sprawl.replication.messages import FenceResp

#: Placement orders of the dead node b's partitions (b first: it led them).
ORDERS = [("b", "a", "c"), ("b", "c", "a")]


def _fail_over(
    spread: LeaderSpread | None,
    n: int,
    ends: dict[str, int] | None = None,
    orders: list[tuple[str, ...]] | None = None,
    avoid: frozenset[str] = frozenset(),
) -> list[str]:
    """``n`` partitions led by b (placement orders cycling through
    ``orders``) fail over; a and c answer every fence with the log ends
    ``ends`` (equal by default); the leaders chosen, in order."""
    ends = ends or {"a": 10, "c": 10}
    chosen = []
    for order, _ in zip(itertools.cycle(orders or ORDERS), range(n), strict=False):
        c = FailoverCore(order, epoch=1, leader="b")
        c.spread = spread
        c.avoid = avoid
        c.leader_confirmed = True
        c.start_failover()
        assert c.receive("a", FenceResp(2, True, 1, ends["a"])).commit is None
        out = c.receive("c", FenceResp(2, True, 1, ends["c"]))
        assert out.commit is not None
        chosen.append(out.commit.leader)
    return chosen


def test_ten_thousand_leaderships_split_evenly_within_one() -> None:
    """b's 10,000 partitions, every one placed b, a, c (the order that gave
    all of them to a before): 5,000 each, and after every choice the two
    counts differ by at most one."""
    spread = LeaderSpread()
    chosen = _fail_over(spread, 10_000, orders=[("b", "a", "c")])
    assert chosen.count("a") == chosen.count("c") == 5_000
    assert spread.counts == {"a": 5_000, "c": 5_000}
    running = {"a": 0, "c": 0}
    for leader in chosen:
        running[leader] += 1
        assert abs(running["a"] - running["c"]) <= 1
    # Without a spread the placement's order decides, as before.
    assert set(_fail_over(None, 100, orders=[("b", "a", "c")])) == {"a"}


def test_the_placement_order_breaks_the_spreads_ties() -> None:
    """Equal counts: the first replica in the placement's (rendezvous) order;
    the same answers in the same order give the same choices."""
    first = _fail_over(LeaderSpread(), 7, orders=[("b", "c", "a")])
    assert first[0] == "c"
    assert first == _fail_over(LeaderSpread(), 7, orders=[("b", "c", "a")])
    assert first == ["c", "a", "c", "a", "c", "a", "c"]


def test_a_replica_behind_is_never_chosen_for_the_spread() -> None:
    """c lacks a's last record in every partition: a leads all 1,000 however
    many a already took (being up to date comes before the spread)."""
    spread = LeaderSpread()
    chosen = _fail_over(spread, 1_000, ends={"a": 10, "c": 9})
    assert set(chosen) == {"a"} and spread.counts == {"a": 1_000}


def test_an_avoided_node_comes_before_the_spread() -> None:
    """c is draining: a takes every leadership, counts or not."""
    chosen = _fail_over(LeaderSpread(), 100, avoid=frozenset({"c"}))
    assert set(chosen) == {"a"}


def test_a_deliberate_move_is_not_spread_nor_counted() -> None:
    """A move to c with c as up to date as a goes to c although c has more
    new leaderships, and counts for nobody."""
    spread = LeaderSpread()
    spread.counts = {"c": 50}
    c = FailoverCore(("a", "b", "c"), epoch=1, leader="a")
    c.spread = spread
    c.leader_confirmed = True
    c.move_leader("c")  # (a confirmed leader is first asked to pause)
    c.start_failover("c")
    c.receive("a", FenceResp(2, True, 1, 10))
    out = c.receive("c", FenceResp(2, True, 1, 10))
    assert out.commit is not None and out.commit.leader == "c"
    assert spread.counts == {"c": 50}


def test_reset_counts_anew() -> None:
    """After a reset the next failover splits from zero again."""
    spread = LeaderSpread()
    _fail_over(spread, 3, orders=[("b", "a", "c")])
    assert spread.counts == {"a": 2, "c": 1}
    spread.reset()
    assert spread.counts == {}
    assert _fail_over(spread, 1, orders=[("b", "c", "a")]) == ["c"]
