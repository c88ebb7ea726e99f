"""The pure fault diagnosis (sprawl.cluster.diagnosis): one test per named fault, and the
healthy cluster that names none."""

from __future__ import annotations

from sprawl.cluster.diagnosis import (
    Diagnosis,
    DiskObs,
    LagWatch,
    MemberObs,
    Observation,
    PartitionObs,
    RaftObs,
)

NODES = ("n1", "n2", "n3")


def members(**over: MemberObs) -> tuple[MemberObs, ...]:
    return tuple(over.get(n, MemberObs(n, "alive", "answers", protocol=(2, 3))) for n in NODES)


def led(topic: str, p: int, hw: int, matches: dict[str, int], wanted: int = 3) -> PartitionObs:
    """A partition n1 leads, its followers at ``matches``."""
    in_sync = ("n1", *sorted(f for f, m in matches.items() if m >= hw))
    return PartitionObs(
        topic, p, ("n1", *sorted(matches)), "n1", in_sync, wanted, hw, tuple(sorted(matches.items()))
    )


def placed(topic: str, p: int, leader: str | None, replicas: tuple[str, ...] = NODES) -> PartitionObs:
    return PartitionObs(topic, p, replicas, leader)


def obs(now_ms: int = 10_000, **kw: object) -> Observation:
    base: dict[str, object] = {
        "node_id": "n1",
        "now_ms": now_ms,
        "members": members(),
        "raft": RaftObs(NODES, "n1"),
        "partitions": (led("t", 0, 10, {"n2": 10, "n3": 10}), placed("t", 1, "n2")),
        "disk": DiskObs(100, 1000),
        "protocol": (2, 3),
    }
    base.update(kw)
    return Observation(**base)  # type: ignore[arg-type]


def codes(faults: list) -> list[str]:
    return [f.code for f in faults]


def test_a_healthy_cluster_has_no_faults() -> None:
    d = Diagnosis()
    assert d.diagnose(obs(0)) == []
    assert d.diagnose(obs(5_000)) == []


def test_a_killed_node_is_named_down_with_its_partitions() -> None:
    f = Diagnosis().diagnose(obs(members=members(n2=MemberObs("n2", "suspect", "refused"))))
    down = [x for x in f if x.code == "node_down"]
    assert len(down) == 1 and down[0].node == "n2" and down[0].severity == "critical"
    assert down[0].partitions == ("t/0", "t/1")
    assert "killed" in down[0].message and "Restart node n2" in down[0].next_step
    # and the partition it led has no leader alive
    assert any(x.code == "partition_without_leader" and x.partitions == ("t/1",) for x in f)


def test_a_refusing_port_names_a_node_down_before_gossip_notices() -> None:
    """Gossip still says alive, but nothing listens on the node's peer port: down, and it
    no longer counts toward the Raft majority."""
    f = Diagnosis().diagnose(
        obs(members=members(n2=MemberObs("n2", "alive", "refused"), n3=MemberObs("n3", "alive", "refused")))
    )
    assert [x.node for x in f if x.code == "node_down"] == ["n2", "n3"]
    assert "not noticed yet" in f[0].message
    assert "raft_no_quorum" in codes(f)
    # a live member that does not answer the probe in time is not named while gossip trusts it
    assert Diagnosis().diagnose(obs(members=members(n2=MemberObs("n2", "alive", "silent")))) == []


def test_a_stopped_node_is_named_unresponsive() -> None:
    f = Diagnosis().diagnose(obs(members=members(n3=MemberObs("n3", "dead", "silent"))))
    (x,) = [x for x in f if x.node == "n3" and x.code.startswith("node_")]
    assert x.code == "node_unresponsive" and "SIGSTOP" in x.message and "SIGCONT" in x.next_step


def test_a_node_not_probed_or_cut_off_is_named_unreachable() -> None:
    for reach in ("unknown", "unreachable", "answers"):
        f = Diagnosis().diagnose(obs(members=members(n3=MemberObs("n3", "suspect", reach))))
        assert "node_unreachable" in codes(f), reach


def test_under_replication_is_named_with_its_partitions() -> None:
    parts = (led("t", 0, 10, {"n2": 10, "n3": 4}), led("t", 2, 7, {"n2": 7}, wanted=3))
    f = Diagnosis().diagnose(obs(partitions=parts))
    (x,) = [x for x in f if x.code == "partition_under_replicated"]
    assert x.partitions == ("t/0", "t/2") and x.node is None and "led by n1" in x.message
    assert "t/0 2/3" in x.message


def test_a_lost_replica_is_not_in_sync_whatever_its_position() -> None:
    """A follower gossip has lost counts as out of sync at once, before any
    publish moves the high watermark past it."""
    f = Diagnosis().diagnose(obs(members=members(n3=MemberObs("n3", "suspect", "refused"))))
    (x,) = [x for x in f if x.code == "partition_under_replicated"]
    assert x.partitions == ("t/0",) and "t/0 2/3" in x.message


def test_disk_budget_exceeded_here_and_gossiped() -> None:
    f = Diagnosis().diagnose(
        obs(disk=DiskObs(2000, 1000), members=members(n3=MemberObs("n3", "alive", "answers", disk_over=True)))
    )
    over = {x.node: x for x in f if x.code == "disk_budget_exceeded"}
    assert set(over) == {"n1", "n3"}
    assert over["n1"].partitions == ("t/0", "t/1") and "2000" in over["n1"].message
    assert "--disk-budget" in over["n3"].next_step


def test_a_follower_not_catching_up_is_named_after_the_window() -> None:
    d = Diagnosis(lag_window_ms=3000)
    # the leader's high watermark moves on; n3 stays at 5, n2 trails it by a little
    for i, now in enumerate(range(0, 3000, 500)):
        hw = 10 + 10 * i
        f = d.diagnose(obs(now, partitions=(led("t", 0, hw, {"n2": hw - 2, "n3": 5}, wanted=2),)))
        assert "follower_lagging" not in codes(f), now
    f = d.diagnose(obs(3000, partitions=(led("t", 0, 70, {"n2": 68, "n3": 5}, wanted=2),)))
    (x,) = [x for x in f if x.code == "follower_lagging"]
    assert x.node == "n3" and x.partitions == ("t/0",) and "65 records behind" in x.message


def test_a_follower_that_catches_up_is_not_named() -> None:
    d = Diagnosis(lag_window_ms=1000)
    for now in range(0, 5000, 250):
        hw = now // 10
        f = d.diagnose(obs(now, partitions=(led("t", 0, hw, {"n2": max(0, hw - 20), "n3": hw}),)))
        assert "follower_lagging" not in codes(f)


def test_lag_history_is_bounded() -> None:
    w = LagWatch(window_ms=1000, max_rounds=8)
    for now in range(0, 100_000, 10):
        w.observe(now, [led("t", 0, now, {"n2": now})])
    assert len(w._rounds) <= 8
    w.observe(100_000, [])
    assert w._rounds[-1][1] == {}


def test_a_recreated_partition_is_not_taken_for_a_lagging_follower() -> None:
    """The high watermark went down (the log truncated or the topic recreated): the old
    mark is above it, and a follower below that mark is not behind for that reason."""
    d = Diagnosis(lag_window_ms=1000)
    d.diagnose(obs(0, partitions=(led("t", 0, 500, {"n2": 500}),)))
    for now in (500, 1000):
        f = d.diagnose(obs(now, partitions=(led("t", 0, 10, {"n2": 8}),)))
        assert "follower_lagging" not in codes(f), now
    # (stuck below the new high watermark for a whole window, it is named)
    f = d.diagnose(obs(1500, partitions=(led("t", 0, 10, {"n2": 8}),)))
    assert "follower_lagging" in codes(f)


def test_lost_quorum_is_named() -> None:
    lost = members(n2=MemberObs("n2", "suspect", "refused"), n3=MemberObs("n3", "dead", "refused"))
    f = Diagnosis().diagnose(obs(members=lost, raft=RaftObs(NODES, None)))
    (x,) = [x for x in f if x.code.startswith("raft_")]
    assert x.code == "raft_no_quorum" and x.severity == "critical"
    assert "only 1 of 3" in x.message and "--force-new-cluster" in x.next_step
    assert codes(f)[0] in ("node_down", "raft_no_quorum")  # critical first


def test_no_leader_with_a_majority_alive() -> None:
    f = Diagnosis().diagnose(obs(raft=RaftObs(NODES, None)))
    assert "raft_no_leader" in codes(f)


def test_an_incompatible_peer_version_is_named_both_ways() -> None:
    old = MemberObs("n2", "alive", "answers", protocol=(0, 1))
    new = MemberObs("n3", "alive", "answers", protocol=(4, 5))
    f = Diagnosis().diagnose(obs(members=members(n2=old, n3=new)))
    x = {x.node: x for x in f if x.code == "peer_version_incompatible"}
    assert set(x) == {"n2", "n3"}
    assert "too old" in x["n2"].next_step and "too new" in x["n3"].next_step
    # an overlapping range is fine
    ok = MemberObs("n2", "alive", "answers", protocol=(3, 4))
    assert Diagnosis().diagnose(obs(members=members(n2=ok))) == []


def test_as_dict_is_json_shaped() -> None:
    (x, *_) = Diagnosis().diagnose(obs(members=members(n2=MemberObs("n2", "suspect", "refused"))))
    d = x.as_dict()
    assert set(d) == {"code", "severity", "node", "partitions", "message", "next_step"}
    assert isinstance(d["partitions"], list)


def test_a_drained_node_is_named_with_the_leaderships_it_has_left() -> None:
    """A drained node is a warning naming the partitions it still leads and the
    step that ends it (undrain); with none left it says the work can start."""
    (f,) = Diagnosis().diagnose(obs(drained=("n2",)))
    assert (f.code, f.severity, f.node, f.partitions) == ("node_drained", "warning", "n2", ("t/1",))
    assert "node n2 is drained: 1 leadership(s) left" in f.message
    assert f.next_step.endswith("sprawlctl cluster undrain n2")
    (f,) = Diagnosis().diagnose(obs(drained=("n3",)))
    assert f.partitions == () and "no leadership left" in f.message


def test_drained_nodes_are_a_gauge_and_their_partitions_are_observed() -> None:
    """sprawl_node_drained{node} is 1 per drained node; the watch observes the
    partitions a drained node leads even when nothing else makes them interesting."""
    from types import SimpleNamespace

    from sprawl.cluster.fault_watch import FaultCollector, FaultWatch

    watch = FaultWatch("n1", None, None, None, None, None, (2, 3))  # type: ignore[arg-type]
    watch.control = SimpleNamespace(metadata=SimpleNamespace(drained=["n2"]))  # type: ignore[assignment]
    families = {f.name: f for f in FaultCollector(watch).collect()}
    assert [(s.labels, s.value) for s in families["sprawl_node_drained"].samples] == [({"node": "n2"}, 1)]
    lg = SimpleNamespace(replicas=["n1", "n2", "n3"], leader="n2")
    watch.broker = SimpleNamespace(topics={"t": SimpleNamespace(logs=[lg])})  # type: ignore[assignment]
    parts = watch._partitions([], SimpleNamespace(used=0, limit=1))  # type: ignore[arg-type]
    assert [(p.name, p.leader) for p in parts] == [("t/0", "n2")]
    watch.control = SimpleNamespace(metadata=SimpleNamespace(drained=[]))  # type: ignore[assignment]
    assert watch._partitions([], SimpleNamespace(used=0, limit=1)) == []  # type: ignore[arg-type]
