"""Integration: a long 2/3 split of five live ``twistd sprawl`` processes.

The short cuts of :mod:`test_integration_partitions` heal before gossip
declares anybody dead.  Here the cut lasts past gossip's verdict and past
the dead grace (``--raft-dead-grace``), so every step a long outage takes
runs on real processes while the cut-off nodes are alive and still think
they hold what they held:

- the majority side (three nodes) elects a Raft leader, removes the two
  cut-off voters one at a time (never below a majority), takes a new topic,
  and re-replicates every partition it can: a replica dead past the grace is
  dropped and the set filled up from the majority's nodes, which catch up
  from the surviving replicas -- while the node that was dropped still
  holds its copy and cannot hear that it lost it;
- a partition with a majority of its replicas on the minority side keeps
  its epoch there (the controller cannot fence a majority of it) and loses
  nothing;
- after the heal both cut-off nodes rejoin (learners, then voters: five
  again), learn the placement made without them, every node is ready, every
  topic is fully replicated, and every node serves each topic's log with
  every acked message at its acked offset and no id twice.

Bounds are load-scaled; each wait is for the condition it needs.  The cut
is held until the majority has done what the test watches for, never for a
fixed time.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from harness import NodeCluster, http_json, poll_until
from harness.acked import AckedWriter, check_logs
from harness.netcut import LoopbackCuts, loopback_hosts, required_cuts
from harness.waits import scaled

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("chaos")]

#: Single-partition topics (RF 3) spread over the five nodes by rendezvous hashing.
TOPICS = [f"split-{i}" for i in range(6)]
#: Gossip's verdict (suspicion over a few probe rounds), the grace (3 s) and
#: two voter removals one at a time, scaled.
REMOVAL_BOUND = 60.0
#: A replica set filled up again after the grace, and its new replica caught up, scaled.
REFILL_BOUND = 60.0
#: After the heal: both nodes back as voters, every topic fully replicated, scaled.
HEAL_BOUND = 90.0


@pytest.fixture
def cuts() -> Iterator[LoopbackCuts]:
    """``lo``'s packet filter, healed and removed after the test (root and tc, or skipped)."""
    with required_cuts() as c:
        yield c


@pytest.fixture
def cluster(tmp_path: Path, cuts: LoopbackCuts) -> Iterator[NodeCluster]:
    """Five nodes on five 127.x addresses, a dead grace of 3 s, ``TOPICS`` created and
    each taking quorum publishes."""
    c = NodeCluster(tmp_path, 5, "--raft-dead-grace", "3s", hosts=loopback_hosts(5))
    try:
        c.start()
        for t in TOPICS:
            status, body = http_json(
                c.url("n0") + f"/v1/topics/{t}", "PUT", {"partitions": 1, "replication_factor": 3}, timeout=30
            )
            assert status in (200, 201), body
        yield c
    finally:
        c.close()


def _replicas(cluster: NodeCluster, via: str) -> dict[str, tuple[list[str], str | None, int]]:
    """Each topic's (replicas, leader, epoch) as ``via`` applied them."""
    out = {}
    topics = cluster.placement(via)
    for t in TOPICS:
        pl = (topics.get(t) or {}).get("0") or {}
        out[t] = (list(pl.get("replicas") or []), pl.get("leader") or None, int(pl.get("epoch") or 0))
    return out


def _stuck(before: dict[str, tuple[list[str], str | None, int]], minority: list[str]) -> list[str]:
    """Topics led on the minority side with a majority of their replicas there:
    the controller cannot fence them, so they keep their leader and epoch."""
    return [
        t
        for t, (reps, leader, _) in before.items()
        if leader in minority and len([r for r in reps if r in minority]) >= 2
    ]


def _minority(cluster: NodeCluster, before: dict[str, tuple[list[str], str | None, int]]) -> list[str]:
    """The two nodes to cut off: the Raft leader (the controller must move),
    and the node that leaves the most topics stuck on the minority side with
    it (then the most sharing a replica set with it), ties broken by name."""
    raft = cluster.raft_leader()
    assert raft is not None
    rank = {
        n: (
            len(_stuck(before, [raft, n])),
            sum(1 for reps, _, _ in before.values() if {raft, n} <= set(reps)),
        )
        for n in cluster.names
        if n != raft
    }
    other = max(sorted(rank), key=lambda n: rank[n])
    return [raft, other]


def test_a_long_split_two_from_three_heals_with_nothing_acked_lost(
    cluster: NodeCluster, cuts: LoopbackCuts
) -> None:
    """Two of five nodes cut off past gossip's verdict and the dead grace;
    the majority re-forms and re-replicates, the minority keeps what it
    holds, and after the heal the cluster is whole with every acked message
    in place (see the module docstring)."""
    before = _replicas(cluster, "n0")
    assert all(reps and leader for reps, leader, _ in before.values()), before
    minority = _minority(cluster, before)
    majority = [n for n in cluster.names if n not in minority]
    rng = random.Random(0)
    # A writer per topic through a majority node, and -- for a topic stuck on
    # the minority side -- one through a minority node.
    writers: list[AckedWriter] = []
    stuck = _stuck(before, minority)
    with ExitStack() as stack:
        for t in TOPICS:
            writers.append(stack.enter_context(AckedWriter(cluster, rng.choice(majority), t, prefix="maj")))
        for t in stuck:
            writers.append(stack.enter_context(AckedWriter(cluster, minority[0], t, prefix="min")))
        for a in minority:
            for b in majority:
                cuts.cut(cluster.hosts[a], cluster.hosts[b])
        cluster.note(
            f"cut {minority} off from {majority}; stuck on the minority side: {stuck}; before: {before}"
        )
        at_cut = {id(w): w.acks() for w in writers}

        # The majority side: a Raft leader of its own, then the cut-off voters removed.
        def voters_removed() -> bool:
            views = [cluster.cluster_view(n).get("raft", {}) for n in majority]
            return all(v.get("leader") in majority and v.get("voters") == sorted(majority) for v in views)

        assert poll_until(voters_removed, scaled(REMOVAL_BOUND)) is not None, {
            n: cluster.cluster_view(n).get("raft") for n in majority
        }
        cluster.note("the majority removed the cut-off voters")
        status, body = http_json(
            cluster.url(majority[1]) + "/v1/topics/made-apart",
            "PUT",
            {"partitions": 1, "replication_factor": 3},
            timeout=scaled(20.0),
        )
        assert status in (200, 201), (status, body)

        # Every other topic is re-replicated onto the majority's nodes alone
        # (failed over first where its leader was cut off; a leader on the
        # majority side holds every committed record, so two dead replicas
        # may be replaced at once), and takes publishes.
        movable = [t for t in TOPICS if t not in stuck]
        assert any(set(before[t][0]) & set(minority) for t in movable), (
            f"no topic to re-replicate (the placement before: {before})"
        )

        def refilled() -> bool:
            now = _replicas(cluster, majority[0])
            return all(
                len(now[t][0]) == 3 and set(now[t][0]) <= set(majority) and now[t][1] in majority
                for t in movable
            )

        assert poll_until(refilled, scaled(REFILL_BOUND)) is not None, (
            f"not re-replicated on the majority side: {_replicas(cluster, majority[0])}"
        )
        cluster.note(f"re-replicated on the majority side: {_replicas(cluster, majority[0])}")
        for w in writers:
            if w.topic in movable or w.prefix == "min":
                base = w.acks()
                assert poll_until(lambda w=w, base=base: w.acks() >= base + 10, scaled(30.0)) is not None, (
                    f"{w.topic} via {w.via}: no publishes after the majority re-formed ({w.refused} refused)"
                )
        # A stuck topic kept its replicas, leader and epoch: the majority's
        # controller could not fence a majority of them.
        now = _replicas(cluster, majority[0])
        for t in stuck:
            assert now[t] == before[t], (t, before[t], now[t])
        assert all(w.acks() > at_cut[id(w)] for w in writers if w.topic in movable)
        assert cuts.dropped() > 0, "the cut dropped no packet"
        cuts.heal_all()
        cluster.note("healed")

        assert poll_until(cluster.formed, scaled(HEAL_BOUND)) is not None, (
            f"the cut-off nodes did not rejoin as voters: {cluster.raft_views()}"
        )
        cluster.note("five voters again, every node ready")
        after = {id(w): w.acks() for w in writers}
        for w in writers:
            assert poll_until(lambda w=w: w.acks() >= after[id(w)] + 10, scaled(30.0)) is not None, (
                f"{w.topic} via {w.via}: no publishes after the heal ({w.refused} refused)"
            )
    # (the writers stopped: every replica can reach the leader's end) Whole:
    # every topic fully replicated and every node applied the same placement,
    # the same at two looks in a row (moves back toward the rendezvous goal
    # may still be landing at the first).
    everything = [*TOPICS, "made-apart"]
    seen: list[Any] = []

    def settled() -> bool:
        views = {n: _replicas(cluster, n) for n in cluster.names}
        same = all(v == views["n0"] for v in views.values())
        ok = same and not cluster.replication_problems(everything)
        seen.append(views["n0"] if ok else None)
        return ok and len(seen) >= 2 and seen[-2] == seen[-1]

    assert poll_until(settled, scaled(HEAL_BOUND), step=0.5) is not None, (
        cluster.replication_problems(everything)[:6],
        {n: _replicas(cluster, n) for n in cluster.names},
    )
    cluster.note(f"whole again: {seen[-1]}")
    for t in TOPICS:
        acked: dict[str, Any] = {}
        for w in writers:
            if w.topic == t:
                acked.update(w.acked)
        check_logs(cluster, t, acked)
