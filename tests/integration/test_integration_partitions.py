"""Integration: network partitions between live ``twistd sprawl`` processes.

The chaos test kills, stops and restarts nodes; a node that is up but cut off
from some of the others -- the partition Jepsen made famous -- needs more
than signals.  Here every node listens on its own 127.x address and talks to
its peers from it, and :mod:`harness.netcut` drops the packets between two
addresses in the kernel (``tc`` on ``lo``; root), so TCP segments and gossip
datagrams vanish while the test's own requests (from 127.0.0.1) reach every
node.  Three nodes, one partition with three replicas, ``acks=quorum``:

- **The leader cut off from both followers** (a minority of one).  A writer
  publishing through a majority node keeps getting acks once the majority
  has failed the partition over; the old leader acks none of the publishes
  sent to it during the cut, and answers each 503 ``quorum_timeout`` within
  its bound (``QUORUM_TIMEOUT``) -- while it answers ``acks=leader`` ones, as
  stored on its own disk; after the heal it follows the new leader, every
  node holds the same log, every acked message is at its acked offset, and
  nothing the old leader wrote alone during the cut survives anywhere (its
  suffix was truncated, not merged).
- **One pair cut, the third node reaching both** (the leader and one
  follower; or the controller and the leader).  The writer through the third node keeps getting acks (a
  majority -- the leader and the third -- still replicates); gossip's
  indirect probes through the third node keep every member from being
  declared dead by it; after the heal the logs agree and nothing acked is
  lost.

Bounds are load-scaled (``harness.waits.scaled``); each wait is for the
condition it needs.  The cut is held while the test watches what it must
watch (a fault schedule, like the chaos test's), never to let something
happen.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from harness import NodeCluster, http_json, poll_until
from harness.acked import AckedWriter, check_logs, publish
from harness.netcut import LoopbackCuts, loopback_hosts, required_cuts
from harness.waits import scaled

# (with the chaos test, the other holder of ``lo``'s filter, on one xdist
# worker: one waits for the other's lock without holding up a second worker)
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("chaos")]

TOPIC = "cut"
#: Bound on a failover after the cut (beat timeout 2 s, fencing, a Raft commit), scaled.
FAILOVER_BOUND = 30.0
#: Bound on the old leader catching up after the heal, scaled.
HEAL_BOUND = 60.0
#: How long a pair stays cut while the test watches gossip (over SWIM's
#: suspicion timeout for three members: probes every 0.2-1 s, suspicion
#: a few probe rounds).
PAIR_HOLD = 8.0


@pytest.fixture
def cuts() -> Iterator[LoopbackCuts]:
    """``lo``'s packet filter, healed and removed after the test (root and tc, or skipped)."""
    with required_cuts() as c:
        yield c


@pytest.fixture
def cluster(tmp_path: Path, cuts: LoopbackCuts) -> Iterator[NodeCluster]:
    """Three nodes on three 127.x addresses, one topic of one partition, RF 3."""
    c = NodeCluster(tmp_path, 3, hosts=loopback_hosts(3))
    try:
        c.start()
        status, body = http_json(
            c.url("n0") + f"/v1/topics/{TOPIC}", "PUT", {"partitions": 1, "replication_factor": 3}, timeout=30
        )
        assert status in (200, 201), body
        # Every replica is in place once a quorum publish is acked.
        assert poll_until(lambda: _publish(c, "n0", "warm-0")[0] == 200, scaled(30.0)) is not None
        yield c
    finally:
        c.close()


def _publish(cluster: NodeCluster, node: str, mid: str, timeout: float = 5.0) -> tuple[int, Any]:
    return publish(cluster, node, TOPIC, mid, timeout)


def _placement(cluster: NodeCluster, via: str) -> dict[str, Any]:
    """Partition 0's placement as ``via`` applied it ({} when it does not answer)."""
    topics = cluster.placement(via)
    return dict((topics.get(TOPIC) or {}).get("0") or {})


def _writer(cluster: NodeCluster, via: str) -> AckedWriter:
    """The scenario's writer: ``w-N`` to the topic through ``via``."""
    return AckedWriter(cluster, via, TOPIC)


def _leader_and_others(cluster: NodeCluster) -> tuple[str, int, list[str]]:
    """Partition 0's leader and epoch (as n0 applied them), and the other nodes."""
    pl = _placement(cluster, "n0")
    leader = str(pl["leader"])
    return leader, int(pl["epoch"]), [n for n in cluster.names if n != leader]


def _ends(cluster: NodeCluster) -> dict[str, int]:
    """Each node's high watermark of partition 0 (-1 when it does not answer)."""
    out = {}
    for n in cluster.names:
        status, body = cluster.get(n, f"/v1/topics/{TOPIC}", 10)
        out[n] = int(body["partition_details"][0]["high_watermark"]) if status == 200 else -1
    return out


def _healed(cluster: NodeCluster) -> bool:
    """Every node applied the same leader and epoch, and every replica holds as much as the leader."""
    views = [_placement(cluster, n) for n in cluster.names]
    if not all(views) or len({(v["leader"], v["epoch"]) for v in views}) != 1:
        return False
    ends = _ends(cluster)
    return min(ends.values()) >= 0 and len(set(ends.values())) == 1


def _majority_fails_over(cluster: NodeCluster, writer: AckedWriter, others: list[str], epoch: int) -> int:
    """Wait until ``others`` (the majority side) placed partition 0 past
    ``epoch`` on one of them, and ``writer`` (through one of them) got 20 acks
    more after that; the acks it had when the failover showed."""

    def failed_over() -> bool:
        now = _placement(cluster, others[0])
        return bool(now) and int(now["epoch"]) > epoch and now["leader"] in others

    assert poll_until(failed_over, scaled(FAILOVER_BOUND)) is not None, (
        f"no failover on the majority side: {_placement(cluster, others[0])}"
    )
    after = writer.acks()
    assert poll_until(lambda: writer.acks() >= after + 20, scaled(FAILOVER_BOUND)) is not None, (
        f"the majority took no publishes after its failover ({writer.refused} refused)"
    )
    return after


def _check_logs(cluster: NodeCluster, writer: AckedWriter, never: set[str]) -> None:
    """Every node serves the same log; every acked id at its acked offset;
    no id twice; none of ``never`` anywhere."""
    check_logs(cluster, TOPIC, writer.acked, never)


def test_a_leader_cut_off_from_both_followers_loses_nothing_acked(
    cluster: NodeCluster, cuts: LoopbackCuts
) -> None:
    """The leader alone on its side: the majority fails over and goes on;
    the old leader acks nothing; after the heal it follows and its lone
    writes are gone (see the module docstring)."""
    old, epoch, others = _leader_and_others(cluster)
    with _writer(cluster, others[0]) as writer:
        cuts.isolate(cluster.hosts[old], [cluster.hosts[o] for o in others])
        cluster.note(f"cut {old} off from {others}")
        at_cut = writer.acks()
        # Publishes to the cut-off leader: none is acked, and each is answered
        # 503 quorum_timeout within the leader's bound (8 s), under the
        # client's own timeout (before: no answer at all until the heal).
        lone = [f"lone-{i}" for i in range(3)]
        with ThreadPoolExecutor(len(lone)) as pool:
            answers = list(pool.map(lambda mid: _publish(cluster, old, mid, timeout=scaled(20.0)), lone))
        cluster.note(f"the cut-off leader answered {answers}")
        assert all(status != 200 for status, _ in answers), (
            f"the cut-off leader acked a quorum publish: {answers}"
        )
        codes = [(status, (body or {}).get("error", {}).get("code")) for status, body in answers]
        assert codes == [(503, "quorum_timeout")] * len(lone), answers
        # acks=leader is answered there (fsynced on that leader, as it says),
        # and is lost with it: the heal drops it (docs/api.md).
        for mid in ("alone-0", "alone-1"):
            status, body = http_json(
                cluster.url(old) + f"/v1/topics/{TOPIC}/messages",
                "POST",
                {"messages": [{"payload": mid, "id": mid}], "acks": "leader"},
                timeout=scaled(20.0),
            )
            assert (status, (body or {}).get("stored")) == (200, "lmdb"), (status, body)
            lone.append(mid)

        after = _majority_fails_over(cluster, writer, others, epoch)
        assert writer.acks() > at_cut
        assert cuts.dropped() > 0, "the cut dropped no packet"
        cuts.heal_all()
        cluster.note("healed")
        assert poll_until(lambda: writer.acks() >= after + 40, scaled(FAILOVER_BOUND)) is not None
    assert poll_until(lambda: _healed(cluster), scaled(HEAL_BOUND)) is not None, (
        f"the old leader did not rejoin: {[_placement(cluster, n) for n in cluster.names]} {_ends(cluster)}"
    )
    _check_logs(cluster, writer, set(lone))


@pytest.mark.parametrize("pair", ["leader-follower", "controller-leader"])
def test_one_pair_cut_while_the_third_node_reaches_both(
    cluster: NodeCluster, cuts: LoopbackCuts, pair: str
) -> None:
    """Two nodes cut apart, the third reaching both -- the partition's leader
    and a follower, or the controller (the Raft leader) and the partition's
    leader (when one node is both: the controller and a follower): publishes
    through the third node go on, its gossip declares nobody dead, and after
    the heal the logs agree (see the module docstring).  Cut from the
    controller, the partition's leader may be failed over by it (the
    controller reaches a majority of the replicas); it is fenced then, and
    nothing it takes commits."""
    leader = str(_placement(cluster, "n0")["leader"])
    if pair == "leader-follower":
        a = leader
        b = next(n for n in cluster.names if n != leader)
    else:
        a = cluster.raft_leader() or ""
        assert a in cluster.names
        b = leader if leader != a else next(n for n in cluster.names if n != a)
    third = next(n for n in cluster.names if n not in (a, b))
    dead_seen: list[Any] = []
    with _writer(cluster, third) as writer:
        cuts.cut(cluster.hosts[a], cluster.hosts[b])
        cluster.note(f"cut {a} from {b} ({pair}); {third} reaches both")
        at_cut = writer.acks()
        t0 = time.monotonic()

        def watched() -> bool:
            """The third node's gossip, looked at through the cut's length."""
            members = cluster.cluster_view(third).get("members", [])
            dead_seen.extend(m for m in members if m.get("state") == "dead")
            return time.monotonic() - t0 >= PAIR_HOLD

        assert poll_until(watched, PAIR_HOLD + 10.0, step=0.2) is not None
        assert not dead_seen, f"{third}, which reaches every node, declared a member dead: {dead_seen[:3]}"
        assert poll_until(lambda: writer.acks() >= at_cut + 20, scaled(FAILOVER_BOUND)) is not None, (
            f"publishes through {third} stopped during the cut ({writer.refused} refused)"
        )
        assert cuts.dropped() > 0, "the cut dropped no packet"
        cuts.heal_all()
        cluster.note("healed")
        after = writer.acks()
        assert poll_until(lambda: writer.acks() >= after + 20, scaled(FAILOVER_BOUND)) is not None
    assert poll_until(lambda: _healed(cluster), scaled(HEAL_BOUND)) is not None, (
        f"the replicas did not agree after the heal: {[_placement(cluster, n) for n in cluster.names]} "
        f"{_ends(cluster)}"
    )
    _check_logs(cluster, writer, set())


def test_the_raft_leader_cut_off_steps_down_and_the_majority_goes_on(
    cluster: NodeCluster, cuts: LoopbackCuts
) -> None:
    """The Raft leader (the controller) cut off from both other nodes: the
    majority elects a new one and takes a topic creation and publishes; the
    cut-off node stops calling itself leader (CheckQuorum) and refuses a
    topic creation with a 503 instead of taking it; after the heal there is
    one Raft leader, the node that was cut off has the topic created without
    it, and the partition's logs agree with nothing acked lost."""
    old = cluster.raft_leader()
    assert old is not None
    others = [n for n in cluster.names if n != old]
    with _writer(cluster, others[0]) as writer:
        cuts.isolate(cluster.hosts[old], [cluster.hosts[o] for o in others])
        cluster.note(f"cut the Raft leader {old} off from {others}")

        def majority_elected() -> bool:
            views = [cluster.cluster_view(o).get("raft", {}) for o in others]
            return (
                all(v.get("leader") in others for v in views) and len({v.get("leader") for v in views}) == 1
            )

        assert poll_until(majority_elected, scaled(FAILOVER_BOUND)) is not None, (
            f"the majority elected no Raft leader: {[cluster.cluster_view(o).get('raft') for o in others]}"
        )
        assert poll_until(lambda: cluster.cluster_view(old).get("raft", {}).get("role") != "leader",
                          scaled(FAILOVER_BOUND)) is not None, (
            f"{old}, cut off from a majority, still says it leads: {cluster.cluster_view(old).get('raft')}"
        )  # fmt: skip
        status, body = http_json(
            cluster.url(others[1]) + "/v1/topics/made-apart", "PUT", {"partitions": 1}, timeout=scaled(20.0)
        )
        assert status in (200, 201), (status, body)
        status, body = http_json(
            cluster.url(old) + "/v1/topics/made-alone", "PUT", {"partitions": 1}, timeout=scaled(30.0)
        )
        cluster.note(f"a creation on the cut-off node answered {status} {body}")
        assert status == 503 and body["error"]["code"], (status, body)
        after = writer.acks()
        assert poll_until(lambda: writer.acks() >= after + 20, scaled(FAILOVER_BOUND)) is not None, (
            f"the majority took no publishes while {old} was cut off ({writer.refused} refused)"
        )
        assert cuts.dropped() > 0, "the cut dropped no packet"
        cuts.heal_all()
        cluster.note("healed")

    def one_leader() -> bool:
        leaders = {cluster.cluster_view(n).get("raft", {}).get("leader") for n in cluster.names}
        return len(leaders) == 1 and leaders.pop() in cluster.names

    assert poll_until(one_leader, scaled(HEAL_BOUND)) is not None, cluster.raft_views()
    assert (
        poll_until(lambda: cluster.get(old, "/v1/topics/made-apart")[0] == 200, scaled(HEAL_BOUND))
        is not None
    )
    assert cluster.get(old, "/v1/topics/made-alone")[0] == 404  # (refused, so never made)
    assert poll_until(lambda: _healed(cluster), scaled(HEAL_BOUND)) is not None, _ends(cluster)
    _check_logs(cluster, writer, set())


def test_a_leader_whose_packets_are_lost_one_way(cluster: NodeCluster, cuts: LoopbackCuts) -> None:
    """An asymmetric partition: everything the partition's leader sends the
    other two is lost, while theirs reach it (gossip's datagrams arrive; TCP,
    which needs both ways, fails both ways).  The majority fails over and
    goes on; after the heal gossip says every member is alive again on every
    node, the old leader follows, and the logs agree with nothing acked
    lost."""
    old, epoch, others = _leader_and_others(cluster)
    with _writer(cluster, others[0]) as writer:
        for o in others:
            cuts.cut_oneway(cluster.hosts[old], cluster.hosts[o])
        cluster.note(f"what {old} sends {others} is lost")

        _majority_fails_over(cluster, writer, others, epoch)
        views = {
            n: [m.get("state") for m in cluster.cluster_view(n).get("members", [])] for n in cluster.names
        }
        cluster.note(f"gossip during the cut: {views}")
        assert cuts.dropped() > 0, "the cut dropped no packet"
        cuts.heal_all()
        cluster.note("healed")

    def all_alive() -> bool:
        for n in cluster.names:
            members = cluster.cluster_view(n).get("members", [])
            if len(members) != len(cluster.names) or any(m.get("state") != "alive" for m in members):
                return False
        return True

    assert poll_until(all_alive, scaled(HEAL_BOUND)) is not None, {
        n: cluster.cluster_view(n).get("members") for n in cluster.names
    }
    assert poll_until(lambda: _healed(cluster), scaled(HEAL_BOUND)) is not None, _ends(cluster)
    _check_logs(cluster, writer, set())
