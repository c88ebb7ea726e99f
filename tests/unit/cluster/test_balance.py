"""Load-based leadership balancing (:mod:`sprawl.cluster.balance`): one test
per rule, the "why" view, the view builder, and a hypothesis property that
a steady load never makes leadership flap."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sprawl.cluster.balance import (
    OVERLOADED,
    BalanceConfig,
    Balancer,
    Move,
    PartitionLoad,
    partitions_from,
    replica_move,
)

NODES = ["a", "b", "c"]


def part(
    topic: str, p: int, leader: str, replicas: str, msgs: float | None, nbytes: float | None = 0.0
) -> PartitionLoad:
    return PartitionLoad(topic, p, leader, tuple(replicas), msgs, nbytes)


def skewed() -> list[PartitionLoad]:
    """a leads 3 x 300 msgs/s, b and c lead 100 each: mean 366, upper 458."""
    return [
        part("t", 0, "a", "abc", 300),
        part("t", 1, "a", "abc", 300),
        part("t", 2, "a", "abc", 300),
        part("u", 0, "b", "abc", 100),
        part("u", 1, "c", "abc", 100),
    ]


def run(
    b: Balancer, parts: list[PartitionLoad], n: int, start: float = 0.0, every: float = 10.0
) -> list[list[Move]]:
    return [b.decide(start + i * every, parts, NODES).moves for i in range(n)]


def test_a_hot_node_sheds_to_the_coldest_replica_after_persisting() -> None:
    """Hysteresis: the imbalance must last ``persist`` decisions; then one
    partition moves from the hot node to the least loaded replica."""
    b = Balancer(BalanceConfig(persist=3, max_moves=1))
    moves = run(b, skewed(), 3)
    assert moves[:2] == [[], []]
    assert moves[2] == [Move("t", 0, "a", "b", OVERLOADED)]
    assert b.moves_total == {OVERLOADED: 1}


def test_a_passing_spike_does_not_move() -> None:
    """The streak restarts when the node cools down in between."""
    b = Balancer(BalanceConfig(persist=3))
    cool = [replace(p, msgs_s=40.0) if p.topic == "t" else p for p in skewed()]  # a: 120, upper 133
    for i, parts in enumerate([skewed(), skewed(), cool, skewed(), skewed()]):
        assert b.decide(i * 10.0, parts, NODES).moves == []
    assert b.last is not None and b.last.nodes["a"].streak == 2


def test_small_imbalance_does_not_move() -> None:
    """Within threshold of the mean nothing moves."""
    parts = [part("t", 0, "a", "abc", 120), part("t", 1, "b", "abc", 100), part("t", 2, "c", "abc", 100)]
    b = Balancer(BalanceConfig(persist=1, min_load=10))
    assert run(b, parts, 5) == [[]] * 5  # 120 < 106.7 * 1.25


def test_an_idle_cluster_never_moves() -> None:
    """However skewed, a node under min_load does not shed."""
    parts = [part("t", p, "a", "abc", 10) for p in range(5)]
    b = Balancer(BalanceConfig(persist=1, min_load=100))
    assert run(b, parts, 5) == [[]] * 5
    assert b.last is not None and not b.last.nodes["a"].hot


def test_moves_stay_inside_the_replica_set_and_on_live_nodes() -> None:
    """An idle non-replica or a dead replica is never a target."""
    parts = [part("t", p, "a", "ab", 300) for p in range(3)] + [part("u", 0, "c", "c", 300)]
    b = Balancer(BalanceConfig(persist=1, max_moves=5))
    d = b.decide(0.0, parts + [part("v", 0, "d", "d", 0)], ["a", "b", "c", "d"])
    assert [m.dst for m in d.moves] == ["b"]  # c and d are idler, but not replicas
    b2 = Balancer(BalanceConfig(persist=1, max_moves=5))
    assert b2.decide(0.0, parts, ["a", "c"]).moves == []  # b is dead
    assert b2.last is not None and any("no replica" in h for h in b2.last.held)


def test_a_single_hot_partition_does_not_move() -> None:
    """Moving it would make the target hot: it stays (no ping-pong)."""
    parts = [part("t", 0, "a", "abc", 1000), part("t", 1, "b", "abc", 10)]
    b = Balancer(BalanceConfig(persist=1))
    assert run(b, parts, 10) == [[]] * 10


def test_at_most_max_moves_per_decision_in_flight_included() -> None:
    """The budget bounds each decision, and moves still in flight use it up."""
    parts = [part("t", p, "a", "abcdef", 100) for p in range(12)]
    nodes = list("abcdef")
    b = Balancer(BalanceConfig(persist=1, max_moves=3))
    assert len(b.decide(0.0, parts, nodes).moves) == 3
    b = Balancer(BalanceConfig(persist=1, max_moves=3))
    assert len(b.decide(0.0, parts, nodes, in_flight=2).moves) == 1
    b = Balancer(BalanceConfig(persist=1, max_moves=3))
    d = b.decide(0.0, parts, nodes, in_flight=3)
    assert d.moves == [] and any("budget" in h for h in d.held)


def test_cooldown_keeps_a_moved_partition_put() -> None:
    """A partition that moved does not move again within the cooldown, even
    if the load turns around; after it, it may."""
    b = Balancer(BalanceConfig(persist=1, max_moves=1, cooldown=100.0))
    parts = [part("t", 0, "a", "ab", 300), part("t", 1, "a", "ab", 300), part("u", 0, "b", "ab", 0)]
    (mv,) = b.decide(0.0, parts, ["a", "b"]).moves
    assert mv == Move("t", 0, "a", "b", OVERLOADED)
    # t/0 now led by b, and b got much hotter: t/0 is the only thing b could shed
    after = [part("t", 0, "b", "ab", 900), part("t", 1, "a", "ab", 50), part("u", 0, "b", "ab", 0)]
    for now in (10.0, 50.0, 90.0):
        d = b.decide(now, after, ["a", "b"])
        assert d.moves == [] and any("cooldown" in h for h in d.held)
    # (900 alone would make a hot: it stays even after the cooldown)
    later = [part("t", 0, "b", "ab", 400), part("t", 1, "a", "ab", 50), part("u", 0, "b", "ab", 300)]
    assert b.decide(150.0, later, ["a", "b"]).moves == [Move("t", 0, "b", "a", OVERLOADED)]


def test_partitions_not_movable_or_cold_are_skipped() -> None:
    """The controller marks partitions under failover not movable; cold ones never move."""
    parts = [replace(p, movable=p.partition != 0) for p in skewed()]
    b = Balancer(BalanceConfig(persist=1, max_moves=1))
    assert b.decide(0.0, parts, NODES).moves == [Move("t", 1, "a", "b", OVERLOADED)]
    b = Balancer(BalanceConfig(persist=1, max_moves=1))
    d = b.decide(0.0, [replace(p, movable=False) for p in skewed()], NODES)
    assert d.moves == [] and d.held == [
        "a: no replica below the mean can take any of its partitions (3 failing over or moving)"
    ]
    cold = [part("t", p, "a", "ab", 0.5) for p in range(400)]
    b = Balancer(BalanceConfig(persist=1, min_load=100, min_partition_load=1.0))
    assert b.decide(0.0, cold, ["a", "b"]).moves == []


def test_bytes_count_as_load() -> None:
    """A node hot in bytes alone sheds: a KiB/s counts like a message/s."""
    parts = [part("t", p, "a", "ab", 1, 1024 * 500) for p in range(2)] + [part("u", 0, "b", "ab", 1)]
    b = Balancer(BalanceConfig(persist=1))
    d = b.decide(0.0, parts, ["a", "b"])
    assert d.moves == [Move("t", 0, "a", "b", OVERLOADED)]
    assert d.nodes["a"].bytes_s == 1024 * 1000 and d.nodes["a"].msgs_s == 2


def test_a_moved_partition_keeps_its_rate_until_the_new_leader_reports() -> None:
    """Right after a move the new leader has not gossiped the rate (None): the
    moved rate still counts, so the new leader does not look idle."""
    b = Balancer(BalanceConfig(persist=1, max_moves=1, cooldown=60.0))
    parts = [part("t", p, "a", "abc", 300) for p in range(3)] + [part("u", 0, "c", "abc", 100)]
    (mv,) = b.decide(0.0, parts, NODES).moves
    assert (mv.dst, mv.partition) == ("b", 0)
    moved = [part("t", 0, "b", "abc", None, None), *parts[1:]]
    d = b.decide(10.0, moved, NODES)
    assert d.nodes["b"].load == 300
    assert b.decide(100.0, moved, NODES).nodes["b"].load == 0  # past the cooldown: unknown is 0


def test_the_why_view() -> None:
    """The last decision says per-node loads, mean, upper bound, streaks,
    moves and why hot nodes held back."""
    b = Balancer(BalanceConfig(persist=2, max_moves=1))
    b.decide(0.0, skewed(), NODES)
    assert b.last is not None
    v = b.last.as_dict()
    assert v["mean"] == pytest.approx(366.667) and v["upper"] == pytest.approx(458.333)
    assert v["nodes"]["a"] == {
        "load": 900.0,
        "projected": 900.0,
        "msgs_s": 900.0,
        "bytes_s": 0.0,
        "leads": 3,
        "ratio": pytest.approx(2.455, abs=1e-3),
        "hot": True,
        "streak": 1,
    }
    assert v["held"] == ["a: hot for 1/2 decisions"] and v["moves"] == []
    b.decide(10.0, skewed(), NODES)
    v = b.last.as_dict()
    assert v["moves"] == [{"topic": "t", "partition": 0, "from": "a", "to": "b", "reason": OVERLOADED}]
    assert v["nodes"]["a"]["streak"] == 0  # shed: persist again before the next move
    assert v["nodes"]["a"]["load"] == 900 and v["nodes"]["a"]["projected"] == 600
    assert v["nodes"]["b"]["projected"] == 400


def test_partitions_from_placement_and_gossip() -> None:
    """Rates come from the current leader's report only."""
    placement = {
        "t": [
            {"leader": "a", "replicas": ["a", "b"], "epoch": 1},
            {"leader": "b", "replicas": ["a", "b"], "epoch": 2},
            {"leader": "", "replicas": [], "epoch": 0},
        ],
        "solo": [{"leader": "c", "replicas": ["c"], "epoch": 1}],
    }
    rates = {"a": {("t", 0): (10.0, 100.0), ("t", 1): (99.0, 99.0)}, "c": {("solo", 0): (5.0, 0.0)}}
    got = partitions_from(placement, rates, movable=lambda k: k != ("t", 0))
    assert got == [
        PartitionLoad("t", 0, "a", ("a", "b"), 10.0, 100.0, movable=False),
        PartitionLoad("t", 1, "b", ("a", "b"), None, None),
        PartitionLoad("solo", 0, "c", ("c",), 5.0, 0.0),
    ]


def test_decisions_are_due_every_interval() -> None:
    """``due`` paces decisions so ``persist`` counts decisions, not ticks."""
    b = Balancer(BalanceConfig(interval=10.0))
    assert b.due(0.0)
    b.decide(0.0, skewed(), NODES)
    assert not b.due(9.9) and b.due(10.0)


def test_config_is_checked() -> None:
    with pytest.raises(ValueError):
        BalanceConfig(threshold=0)
    with pytest.raises(ValueError):
        BalanceConfig(persist=0)


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list[str], list[PartitionLoad], BalanceConfig]:
    n = draw(st.integers(2, 6))
    nodes = [f"n{i}" for i in range(n)]
    parts = []
    for p in range(draw(st.integers(1, 25))):
        reps = draw(st.lists(st.sampled_from(nodes), min_size=1, max_size=min(3, n), unique=True))
        rate = draw(st.sampled_from([0.0, 0.5, 10.0, 50.0, 100.0, 300.0, 1000.0, 5000.0]))
        nbytes = draw(st.sampled_from([0.0, 1024.0, 1e6]))
        parts.append(PartitionLoad("t", p, reps[0], tuple(reps), rate, nbytes))
    cfg = BalanceConfig(
        threshold=draw(st.sampled_from([0.1, 0.25, 0.5])),
        min_load=draw(st.sampled_from([0.0, 100.0])),
        persist=draw(st.integers(1, 3)),
        cooldown=draw(st.sampled_from([0.0, 30.0, 300.0])),
        max_moves=draw(st.integers(1, 4)),
        # The per-move rules below are the reactive moves'; a relief plan
        # (on by default) may load the stuck node on its way and lowers the
        # sum of squares as a whole: its own property, test_balance_relief.
        unstick_after=0,
    )
    return nodes, parts, cfg


@given(clusters())
def test_steady_load_never_flaps(case: tuple[list[str], list[PartitionLoad], BalanceConfig]) -> None:
    """Under a steady load, applying every move: each decision makes at most
    max_moves moves, each inside the replica set, from a hot node, never
    making the target hot; the total excess over the upper bound falls with
    every move; no partition ever returns to a node it left (no back and
    forth); and the moves stop."""
    nodes, parts, cfg = case
    b = Balancer(cfg)
    left: dict[tuple[str, int], set[str]] = {}
    quiet = 0
    for i in range(200):
        before = {p.key: p for p in parts}
        d = b.decide(i * 10.0, parts, nodes)
        assert len(d.moves) <= cfg.max_moves
        if not d.moves:
            quiet += 1
            if quiet > cfg.persist + 2 and i * 10.0 > cfg.cooldown:
                break
            continue
        quiet = 0
        loads = {n: v.load for n, v in d.nodes.items()}
        assert all(d.nodes[n].projected <= d.upper + 1e-9 for n in {m.dst for m in d.moves})
        excess = sum(max(0.0, x - d.upper) for x in loads.values())
        for m in d.moves:
            p = before[(m.topic, m.partition)]
            assert p.leader == m.src and m.dst in p.replicas and m.dst != m.src
            assert d.nodes[m.src].hot and m.dst in nodes
            assert m.dst not in left.get(p.key, set()), f"{p.key} went back to {m.dst}"
            left.setdefault(p.key, set()).add(m.src)
            units = p.msgs_s + p.bytes_s / cfg.bytes_per_unit  # type: ignore[operator]
            before[p.key] = replace(p, leader=m.dst)
            assert units > 0
        parts = list(before.values())
        after = {n: 0.0 for n in nodes}
        for p in parts:
            after[p.leader] += p.msgs_s + p.bytes_s / cfg.bytes_per_unit  # type: ignore[operator]
        new_excess = sum(max(0.0, x - d.upper) for x in after.values())
        assert new_excess < excess + 1e-9
        assert all(after[m.dst] <= d.upper + 1e-9 for m in d.moves)
    else:
        pytest.fail("moves never stopped under a steady load")


def test_metrics_show_moves_and_load_ratios() -> None:
    """Nothing is exported until a balancer is attached; then the moves by
    reason and every node's load over the mean at the last decision."""
    from prometheus_client.parser import text_string_to_metric_families

    from sprawl.metrics import NodeMetrics
    from sprawl.metrics.cluster import BalanceCollector

    def samples(m: NodeMetrics) -> dict[tuple[str, str], float]:
        out = {}
        for fam in text_string_to_metric_families(m.render().decode()):
            for s in fam.samples:
                if s.name.startswith(("sprawl_balance", "sprawl_node_load")):
                    out[(s.name, next(iter(s.labels.values()), ""))] = s.value
        return out

    m = NodeMetrics()
    assert samples(m) == {}
    b = Balancer(BalanceConfig(persist=1, max_moves=1))
    m.register(BalanceCollector(b))
    assert samples(m) == {("sprawl_balance_moves_total", OVERLOADED): 0}
    b.decide(0.0, skewed(), NODES)
    got = samples(m)
    assert got[("sprawl_balance_moves_total", OVERLOADED)] == 1
    assert got[("sprawl_node_load_ratio", "a")] == pytest.approx(900 / (1100 / 3))
    assert got[("sprawl_node_load_ratio", "c")] == pytest.approx(100 / (1100 / 3))


def test_the_controller_loop_with_failover_cores_converges() -> None:
    """The wiring the controller does, on pure cores: placement and gossiped
    rates -> partitions_from -> decide (when due) -> move_leader on the
    partition's FailoverCore -> handoff, fence, commit -> placement.  Six
    equally hot partitions all led by one node end up spread, each move lands
    on its target, and nothing moves once balanced."""
    from sprawl.gossip.load import rates_by_node
    from sprawl.replication.failover import ControlOutput, FailoverCore
    from sprawl.replication.messages import Assign
    from sprawl.replication.replica import Output, Replica

    nodes = ("a", "b", "c")
    keys = [("t", p) for p in range(6)]
    ctl = {k: FailoverCore(nodes, epoch=1, leader="a") for k in keys}
    reps = {k: {n: Replica(n, "ctl") for n in nodes} for k in keys}
    placement = {"t": [{"leader": "a", "replicas": list(nodes), "epoch": 1} for _ in keys]}

    def pump(k: tuple[str, int], first: list[tuple[str, str, object]]) -> None:
        q = list(first)
        while q:
            src, dst, m = q.pop(0)
            if dst == "ctl":
                out = ctl[k].receive(src, m)  # type: ignore[arg-type]
                q += control(k, out)
                continue
            r = reps[k][dst]
            o: Output = r.receive(src, m)  # type: ignore[arg-type]
            if r.is_leader and o.writes:
                o.extend(r.stored(r.end))
            q += [(dst, d, x) for d, x in o.messages]

    def control(k: tuple[str, int], out: ControlOutput) -> list[tuple[str, str, object]]:
        msgs = [("ctl", d, m) for d, m in out.messages]
        if out.commit is not None:  # "Raft" commits at once
            placement["t"][k[1]].update(leader=out.commit.leader, epoch=out.commit.epoch)
            msgs += [("ctl", d, m) for d, m in ctl[k].committed().messages]
        return msgs

    for k in keys:  # epoch 1: a leads everything
        pump(k, [("ctl", n, Assign(1, "a", nodes)) for n in nodes])

    def gossip() -> list[dict[str, object]]:
        views = []
        for n in nodes:
            led = [p for p, pl in enumerate(placement["t"]) if pl["leader"] == n]
            rates = [{"topic": "t", "partition": p, "msgs_s": 200.0, "bytes_s": 0.0} for p in led]
            views.append({"id": n, "state": "alive", "partition_rates": rates})
        return views

    b = Balancer(BalanceConfig(persist=2, max_moves=2, interval=1.0, cooldown=30.0))
    moved: list[Move] = []
    for tick in range(600):  # 0.1 s ticks
        now = tick * 0.1
        for k in keys:
            for n in nodes:
                o = reps[k][n].tick()
                pump(k, [(n, d, m) for d, m in o.messages])
            pump(k, control(k, ctl[k].tick()))
        if b.due(now):
            parts = partitions_from(
                placement,
                rates_by_node(gossip()),
                lambda k: not ctl[k].busy and ctl[k].leader_confirmed,
            )
            in_flight = sum(1 for c in ctl.values() if c.moving_to is not None)
            d = b.decide(now, parts, nodes, in_flight)
            for mv in d.moves:
                k = (mv.topic, mv.partition)
                out2 = ctl[k].move_leader(mv.dst)
                assert out2 is not None
                moved.append(mv)
                pump(k, control(k, out2))
    leaders = [pl["leader"] for pl in placement["t"]]
    assert sorted(leaders.count(n) for n in nodes) == [2, 2, 2], leaders
    assert len(moved) == 4
    for mv in moved:
        assert placement["t"][mv.partition]["leader"] == mv.dst  # every move landed on its target
        c = ctl[("t", mv.partition)]
        assert c.history == {2: mv.dst} and reps[("t", mv.partition)][mv.dst].is_leader


def stuck() -> list[PartitionLoad]:
    """a and b lead everything hot and hold each other's replicas; c and d idle."""
    return [
        part("t", 0, "a", "ab", 300),
        part("t", 1, "a", "ab", 300),
        part("t", 2, "a", "ab", 300),
        part("u", 0, "b", "ba", 300),
        part("u", 1, "b", "ba", 300),
        part("v", 0, "c", "cd", 10),
        part("v", 1, "d", "dc", 5),
    ]


def test_a_persistently_hot_node_moves_a_replica_to_the_coolest_node() -> None:
    """No replica of a's partitions is below the mean, so leadership cannot
    move; once a has been hot for three times the persistence, its hottest
    partition gets a replica on the least loaded node that holds none."""
    b = Balancer(BalanceConfig(persist=2, max_moves=1))
    nodes = ["a", "b", "c", "d"]
    got = []
    for i in range(8):
        d = b.decide(i * 10.0, stuck(), nodes)
        assert d.moves == []  # leadership has nowhere to go
        got.append((d.nodes["a"].streak, replica_move(d, stuck(), nodes)))
    assert all(mv is None for streak, mv in got if streak < 6)
    first = next(mv for streak, mv in got if streak >= 6)
    assert first == Move("t", 0, "a", "d", "persistently_hot")


def test_replica_moves_respect_cooldown_and_leadership_moves() -> None:
    """A partition moved recently is skipped for the next one; a node that shed
    leadership in this decision moves no replica; a cool cluster moves none."""
    b = Balancer(BalanceConfig(persist=1, max_moves=1))
    nodes = ["a", "b", "c", "d"]
    for i in range(3):
        d = b.decide(i * 10.0, stuck(), nodes)
    mv = replica_move(d, stuck(), nodes, recently_moved=lambda k: k == ("t", 0))
    assert mv == Move("t", 1, "a", "d", "persistently_hot")
    shed = replace(d, moves=[Move("t", 0, "a", "b", OVERLOADED), Move("u", 0, "b", "a", OVERLOADED)])
    assert replica_move(shed, stuck(), nodes) is None
    calm = Balancer(BalanceConfig(persist=1))
    even = [
        part("t", 0, "a", "ab", 100),
        part("u", 0, "b", "ba", 100),
        part("v", 0, "c", "cd", 100),
        part("w", 0, "d", "dc", 100),
    ]
    for i in range(5):
        d = calm.decide(i * 10.0, even, ["a", "b", "c", "d"])
    assert replica_move(d, even, ["a", "b", "c", "d"]) is None
