"""The controller splits a dead node's leaderships evenly over the survivors
(issue 23, fail38): its cores share one
:class:`~sprawl.replication.failover.LeaderSpread`, counted anew once no
failover's choice is still to come.  Before, every partition placed b, a, c
went to a.  Counted, not timed."""

from __future__ import annotations

from test_controller_cost import _fail_over_b


def test_a_dead_nodes_10000_leaderships_split_evenly_in_one_entry() -> None:
    """b leads 10,000 partitions (all placed b, a, c) and dies; a and c
    answer alike: the one proposal gives 5,000 to each, and the applied
    placement and the cores agree."""
    plane, proposed = _fail_over_b(10_000, batch=True)
    assert [len(c["items"]) for c in proposed] == [10_000]
    items = proposed[0]["items"]
    by = {n: sum(1 for i in items if i["leader"] == n) for n in ("a", "b", "c")}
    assert by == {"a": 5_000, "b": 0, "c": 5_000}
    meta = plane.control.metadata
    cores = plane.service.controllers
    assert all(cores[(name, 0)].leader == parts[0]["leader"] for name, parts in meta.placement.items())


def test_the_count_starts_anew_once_every_choice_is_made() -> None:
    """Once no core is fencing, the controller's next step forgets the
    counts: the next failover splits from zero."""
    plane, _ = _fail_over_b(300, batch=True)
    ctl = plane.controller
    assert ctl.spread.counts == {"a": 150, "c": 150}
    ctl.tick()
    assert ctl.spread.counts == {}
