"""What one fault-watch round costs with many idle partitions (issue 23): led
partitions whose followers all hold the log and the high watermark, on no
node of interest, are not observed (nothing to diagnose), the partitions
without a leader are kept as a set refreshed from the topics that changed,
and the replicas are walked only when what their verdict depends on changed
(otherwise those of changed topics, those out of sync last round and a slice
in turn), so a round does not walk every partition.  Counted: the partitions
observed, the replicas looked at and the walks over every topic."""

from __future__ import annotations

import itertools
import sys
from types import SimpleNamespace
from typing import Any

from sprawl.cluster.diagnosis import DiskObs
from sprawl.cluster.fault_watch import GATE_FRESH, SLICE, FaultWatch
from sprawl.pubsub.housekeeping import Touched


class Topics(dict[str, Any]):
    """The broker's topics, counting the walks over all of them."""

    walks = 0

    def items(self) -> Any:
        Topics.walks += 1
        return super().items()


def _watch(partitions: int) -> tuple[FaultWatch, Topics, dict[tuple[str, int], Any], Touched]:
    """Node a leads ``partitions`` single-partition topics of RF 3, all idle and in sync."""
    topics = Topics()
    replicas: dict[tuple[str, int], Any] = {}
    for i in range(partitions):
        name = f"t{i:05d}"
        lg = SimpleNamespace(replicas=["a", "b", "c"], leader="a")
        topics[name] = SimpleNamespace(logs=[lg])
        core = SimpleNamespace(
            is_leader=True,
            idle=True,
            hw=5,
            followers={"b": SimpleNamespace(match=5), "c": SimpleNamespace(match=5)},
        )
        replicas[(name, 0)] = SimpleNamespace(core=core)
    touched = Touched()
    broker = SimpleNamespace(topics=topics, touched=touched)
    plane = SimpleNamespace(
        service=SimpleNamespace(replicas=replicas),
        controller=SimpleNamespace(member_states=lambda: dict.fromkeys("abc", "alive")),
        wanted_replicas=lambda name, states: 3,
    )
    watch = FaultWatch("a", SimpleNamespace(), broker, None, plane, None, (1, 1))  # type: ignore[arg-type]
    return watch, topics, replicas, touched


def _observed(watch: FaultWatch) -> list[Any]:
    return watch._partitions([], DiskObs(0, 1))


def test_an_idle_round_observes_no_partition_and_walks_no_topic_list() -> None:
    """10,000 idle in-sync partitions: nothing observed, no walk over every
    topic after the first round; a busy one, a leaderless one (its topic
    re-placed) and one with a follower short are observed."""
    watch, topics, replicas, touched = _watch(10_000)
    assert _observed(watch) == []  # the first round looks at every topic once
    Topics.walks = 0
    for _ in range(5):
        assert _observed(watch) == []
    assert Topics.walks == 0
    replicas[("t00001", 0)].core.idle = False
    topics["t00002"].logs[0].leader = ""  # (and this node no longer leads it)
    replicas[("t00002", 0)].core.is_leader = False
    replicas[("t00003", 0)].core.followers.pop("c")
    replicas[("t09999", 0)].core.idle = False
    touched.touch("t00002")
    touched.touch("t00003")
    got = {(o.topic, o.partition) for o in _observed(watch)}
    # The topics written to or re-placed at once, the others in turn.
    assert {("t00002", 0), ("t00003", 0)} <= got
    for _ in range(10_000 // SLICE + 1):
        got |= {(o.topic, o.partition) for o in _observed(watch)}
    assert got == {("t00001", 0), ("t00002", 0), ("t00003", 0), ("t09999", 0)}
    assert Topics.walks == 0
    # Observed every round until in sync again (t00002: leaderless, kept as a set).
    every = {("t00001", 0), ("t00002", 0), ("t00003", 0)}
    assert {(o.topic, o.partition) for o in _observed(watch)} == every | {("t09999", 0)}
    replicas[("t09999", 0)].core.idle = True
    assert {(o.topic, o.partition) for o in _observed(watch)} == every


def _idle_round_looks(partitions: int) -> int:
    """Replicas an idle round looks at, after the first."""
    watch, _topics, _replicas, _touched = _watch(partitions)
    _observed(watch)
    before = watch.replicas_looked
    for _ in range(10):
        assert _observed(watch) == []
    return (watch.replicas_looked - before) // 10


def test_an_idle_round_looks_at_a_slice_of_the_replicas_not_all() -> None:
    """The first round looks at every replica; an idle one at a slice of
    :data:`SLICE` (at most), with 1,000 partitions as with 10,000."""
    assert _idle_round_looks(1_000) <= _idle_round_looks(10_000) == SLICE


def test_a_led_replica_at_work_is_observed_in_the_next_round_not_its_slice() -> None:
    """A led partition whose core is not idle (a follower behind, with no write
    to its topic) is in the replication service's ticked set: the next idle
    round observes it, wherever its turn in the slices is (issue 23, scrub35:
    the slice shrank to :data:`SLICE` = 64 a round, so a turn comes every
    ~78 s at 10,000 partitions) -- and looks at no more than the slice and it."""
    watch, _topics, replicas, _touched = _watch(10_000)
    due: set[tuple[str, int]] = set()
    watch.plane.service.replicas_due = lambda: due  # type: ignore[union-attr]
    _observed(watch)
    _observed(watch)
    replicas[("t07777", 0)].core.idle = False  # its follower c fell behind
    due.add(("t07777", 0))  # (what the core's output does: the service ticks it)
    before = watch.replicas_looked
    assert [(o.topic, o.partition) for o in _observed(watch)] == [("t07777", 0)]
    assert watch.replicas_looked - before == SLICE + 1


def test_a_change_of_member_state_looks_at_every_replica_again() -> None:
    """A member's state changed (its partitions' verdicts may change): the
    next round walks every replica, then idle rounds take slices again."""
    watch, _topics, _replicas, _touched = _watch(3_000)
    states = dict.fromkeys("abc", "alive")
    watch.plane.controller.member_states = lambda: states  # type: ignore[union-attr]
    _observed(watch)
    before = watch.replicas_looked
    _observed(watch)
    assert watch.replicas_looked - before == SLICE
    states["c"] = "suspect"
    before = watch.replicas_looked
    _observed(watch)
    assert watch.replicas_looked - before == 3_000
    before = watch.replicas_looked
    _observed(watch)
    assert watch.replicas_looked - before == SLICE


def test_the_feature_gate_is_worked_out_twice_a_second_not_on_every_tick() -> None:
    """The replication tick asks the cluster feature gate ten times a
    second: the watch works it out (over every gossip member) at most once
    per :data:`GATE_FRESH` seconds and answers the last one meanwhile."""
    from twisted.internet.task import Clock

    clock = Clock()
    made: list[float] = []

    def gate() -> Any:
        made.append(clock.seconds())
        return SimpleNamespace(on=lambda name: True)

    watch = FaultWatch("a", clock, None, None, None, None, (1, 1), feature_gate=gate)  # type: ignore[arg-type]
    assert watch.feature_gate is not None
    for _ in range(30):  # three seconds of ticks
        assert watch.feature_gate().on("node-beat")
        clock.advance(0.1)
    assert len(made) == 6
    assert all(b - a >= GATE_FRESH - 1e-9 for a, b in itertools.pairwise(made))


def test_a_round_reads_the_raft_voters_without_the_whole_raft_view() -> None:
    """The round's Raft observation (voters and leader, twice a second) comes
    from the Raft node itself: ``raft_view`` works out the voter strength
    from every gossip member's full view, partition rates decoded."""
    watch, _, _, _ = _watch(10)
    names = {1: "a", 2: "b", 3: "c"}

    def whole() -> dict[str, Any]:
        raise AssertionError("the round asked for the whole raft view")

    watch.control = SimpleNamespace(  # type: ignore[assignment]
        driver=SimpleNamespace(node=SimpleNamespace(voters={3, 1, 2})),
        name_of=names.__getitem__,
        leader_name="b",
        raft_view=whole,
    )
    obs = watch._raft()
    assert obs is not None and (obs.voters, obs.leader) == (("a", "b", "c"), "b")
    watch.control.driver = None  # type: ignore[attr-defined]
    obs = watch._raft()
    assert obs is not None and (obs.voters, obs.leader) == ((), None)


class _ProbeReactor:
    """A clock whose ``connectTCP`` records each probe and answers it a moment later."""

    def __init__(self) -> None:
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.callLater = self.clock.callLater
        self.seconds = self.clock.seconds
        self.probes: list[tuple[float, int]] = []
        #: Each probe's local address (``bindAddress``), None when the OS chooses.
        self.sources: list[tuple[str, int] | None] = []
        self.watch: FaultWatch | None = None

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: Any,
        timeout: float = 30,
        bindAddress: tuple[str, int] | None = None,
    ) -> None:
        self.probes.append((self.clock.seconds(), port))
        self.sources.append(bindAddress)
        self.clock.callLater(0.01, factory.result, "answers")


def _probing_watch(live: int) -> tuple[FaultWatch, _ProbeReactor]:
    """A watch of ``live`` alive members whose rounds only probe (no observation)."""
    from sprawl.cluster.diagnosis import MemberObs, Observation

    reactor = _ProbeReactor()
    members = [
        SimpleNamespace(node_id=f"m{i}", meta={"peer": f"127.0.0.1:{7000 + i}"}, addr=("127.0.0.1", 0))
        for i in range(live)
    ]
    gossip = SimpleNamespace(members=lambda: members, set_meta=lambda **kw: None)
    watch = FaultWatch("me", reactor, None, None, None, gossip, (1, 1))  # type: ignore[arg-type]
    obs = Observation("me", 0, tuple(MemberObs(m.node_id, "alive") for m in members))
    watch.observe = lambda: obs  # type: ignore[method-assign]
    watch.core.diagnose = lambda o: []  # type: ignore[method-assign]
    return watch, reactor


def test_live_members_are_probed_every_few_seconds_not_every_round() -> None:
    """Idle rounds twice a second with two live members: each member's peer
    port is probed once per :data:`LIVE_PROBE_EVERY` seconds (a TCP connection
    on both nodes), not once a second -- 2 x 60 / 5 = 24 probes a minute, not
    120; a member whose peer connection broke is probed at once."""
    from sprawl.cluster.fault_watch import INTERVAL, LIVE_PROBE_EVERY

    watch, reactor = _probing_watch(2)
    for _ in range(int(60 / INTERVAL)):
        watch.tick()
        reactor.clock.advance(INTERVAL)
    assert len(reactor.probes) == 2 * 60 / LIVE_PROBE_EVERY == 24
    by_port: dict[int, list[float]] = {}
    for at, port in reactor.probes:
        by_port.setdefault(port, []).append(at)
    assert all(b - a >= LIVE_PROBE_EVERY for times in by_port.values() for a, b in itertools.pairwise(times))
    reactor.clock.advance(1.5)
    before = len(reactor.probes)
    watch.peer_lost("m1")
    assert reactor.probes[before:] == [(reactor.clock.seconds(), 7001)]
    watch.peer_lost("m1")  # (at most once per PROBE_EVERY)
    assert len(reactor.probes) == before + 1


def test_probes_leave_from_the_peer_channels_source_address() -> None:
    """A node bound to one address probes its peers from it, as its peer
    channel connects from it (``FaultWatch.source``, set from the channel's):
    a partition between two nodes' addresses cuts the probes too, so a
    probe cannot find alive a node the peer channel cannot reach.  Without
    a source the OS chooses, as before."""
    watch, reactor = _probing_watch(1)
    watch.peer_lost("m0")
    watch.source = "127.31.7.2"
    reactor.clock.advance(60)
    watch.peer_lost("m0")
    assert reactor.sources == [None, ("127.31.7.2", 0)]


def test_the_leaderless_partitions_leave_with_their_leaders_and_topics() -> None:
    """10,000 partitions left leaderless (a failover) and led again, then as many topics
    leaderless and deleted: nothing is kept after either, and the table a round walks is
    back to a small one (a dict keeps its table as keys go: 295 kB walked every round
    for good, tidy41).
    """
    watch, topics, replicas, touched = _watch(10_000)
    _observed(watch)
    for name, t in topics.items():
        t.logs[0].leader = ""
        replicas[(name, 0)].core.is_leader = False
        touched.touch(name)
    assert len(_observed(watch)) == 10_000 == len(watch._leaderless)
    for name, t in topics.items():
        t.logs[0].leader = "b"
        touched.touch(name)
    assert _observed(watch) == []
    assert not watch._leaderless and sys.getsizeof(watch._leaderless) < 1024
    for name, t in topics.items():
        t.logs[0].leader = ""
        touched.touch(name)
    assert len(_observed(watch)) == 10_000
    for name in list(topics):
        del topics[name]
        touched.touch(name)  # (a deleted topic is announced as changed)
    assert _observed(watch) == []
    assert not watch._leaderless and sys.getsizeof(watch._leaderless) < 1024


def test_a_topic_made_again_with_fewer_partitions_leaves_none_leaderless_past_its_end() -> None:
    """A leaderless topic deleted and made again under its name with fewer partitions
    between two rounds: the round observes the new one's partitions only (it looked up
    the old entry past the end: IndexError)."""
    watch, topics, _replicas, touched = _watch(10)
    _observed(watch)
    lost = SimpleNamespace(replicas=["a", "b", "c"], leader="")
    topics["again"] = SimpleNamespace(logs=[lost, SimpleNamespace(**vars(lost))])
    touched.touch("again")
    assert len(_observed(watch)) == 2
    topics["again"] = SimpleNamespace(logs=[SimpleNamespace(**vars(lost))])
    touched.touch("again")
    assert [(o.topic, o.partition) for o in _observed(watch)] == [("again", 0)]
