"""The gossip benchmark's convergence tracking (``benchmarks.gossip_sim``).

The benchmark follows each member's view from the events the cores report,
instead of reading every member's view of every member at every check (n^2
snapshots, what kept 1,000 nodes out of reach).  This holds the tracked views
to the real ones at every step of a lossy run with crashes and restarts.
"""

from __future__ import annotations

from typing import Any

from benchmarks.gossip_sim import Bench, Bounds
from sprawl.gossip import GossipConfig, Membership


def scanned_views(b: Bench) -> dict[Any, set[str]]:
    """Per live node, the other members it holds alive, read from its core."""
    out: dict[Any, set[str]] = {}
    for a, m in b.sim.nodes.items():
        assert isinstance(m, Membership)
        out[a] = {x.node_id for x in m.members() if x.state == "alive" and x.node_id != m.node_id}
    return out


def test_tracked_views_match_the_members_views_through_loss_crashes_and_rejoins() -> None:
    """20 nodes at 10% loss (false suspicions, refutations), two crash trials
    (suspect, dead, reaped, rejoined at a higher incarnation): after every
    step the tracked views equal the cores' and ``converged`` agrees with the
    n^2 scan."""
    b = Bench(20, 0.1, seed=3, config=GossipConfig())
    run_until = b.sim.run_until
    checks = {"steps": 0, "unconverged": 0}

    def checked(t: float) -> None:
        run_until(t)
        views = scanned_views(b)
        assert b.alive_views == views
        assert b.missing == sum(b.n - 1 - len(v) for v in views.values())
        assert b.converged() == b.converged_by_scan()
        checks["steps"] += 1
        checks["unconverged"] += not b.converged()

    b.sim.run_until = checked  # type: ignore[method-assign]
    b.sim.run_until_true(lambda: False, 20)  # 20 s in steps of 0.1 s
    detected, rejoined = zip(*(b.trial() for _ in range(2)), strict=True)
    assert all(0 < t < 60 for t in detected + rejoined)
    # the checks saw both states
    assert checks["steps"] > 300 and 50 < checks["unconverged"] < checks["steps"] - 50
    assert b.formed > 0


def test_the_harness_bounds_follow_the_configured_periods() -> None:
    """The benchmark's waits (formation, detection, rejoin) are derived from
    the configuration at each size, never shorter than the protocol's own
    periods there: at 1,000 nodes the push-pull period is 180 s, so a rejoin
    repaired by one exchange must not be cut off at a fixed 120 s (what
    stopped the 1,000-node, 10%-loss row); and they move with the config."""
    cfg = GossipConfig()
    for n, period in ((5, 30.0), (200, 120.0), (1000, 180.0)):
        b = Bounds.of(cfg, n)
        assert b.rejoin >= 2 * period + cfg.reconnect_interval
        assert b.formation > b.rejoin and b.detection > b.rejoin
    slow = GossipConfig(push_pull_interval=90.0, reconnect_interval=60.0)
    assert Bounds.of(slow, 1000).rejoin == 2 * 540.0 + 60.0
    assert Bounds.of(slow, 1000).formation > Bounds.of(cfg, 1000).formation
