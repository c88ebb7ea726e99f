"""What one replication tick costs (issue 23): the service ticks only replicas
and controller cores with work, so a node with 10,000 idle partition leaders
(and, as the controller, 10,000 confirmed failover cores) ticks none of them
and sends one frame per tick -- its beat to the controller -- however many
partitions it holds.  Counted, not timed: :attr:`ReplicationService.ticked`
and the frames sent."""

from __future__ import annotations

import copy
import itertools
import sys
from types import SimpleNamespace
from typing import Any

import msgspec
from twisted.internet import task

from sprawl.replication.envelope import Envelope
from sprawl.replication.failover import FailoverCore
from sprawl.replication.liveness import NodeLiveness
from sprawl.replication.messages import (
    Append,
    AppendResp,
    Assign,
    Fence,
    FenceResp,
    LeaderBeat,
    Message,
    NodeBeat,
    decode,
    encode,
)
from sprawl.replication.replica import Output, Replica
from sprawl.replication.service import COMPACT_BYTES, DEAD_HINT_SECONDS, ReplicationService

IDS = ("a", "b", "c")


def _settle(cores: dict[str, Replica], out_of: dict[str, Output]) -> None:
    """Deliver messages among the replicas of one partition (their writes
    count as stored at once) until none is left; controller messages drop."""
    queue: list[tuple[str, str, Message]] = [(src, d, m) for src, o in out_of.items() for d, m in o.messages]
    for _ in range(1_000):
        if not queue:
            return
        src, dst, m = queue.pop(0)
        if dst not in cores:
            continue
        core = cores[dst]
        out = core.receive(src, m)
        if any(w.count for w in out.writes):
            out.extend(core.stored(core.end))
        queue += [(dst, d, x) for d, x in out.messages]
    raise AssertionError("the replicas did not settle")


def idle_partition() -> dict[str, Replica]:
    """The replicas of one partition led by "a", its followers holding its log
    and high watermark (by the protocol)."""
    cores = {n: Replica(n, "ctl") for n in IDS}
    leader = _assign(cores, 1)
    assert leader.is_leader and leader.idle, leader.followers
    return cores


def _assign(cores: dict[str, Replica], epoch: int) -> Replica:
    """Assign ``epoch`` led by "a" to ``cores`` and settle them (heartbeats
    included); returns the leader."""
    outs = {n: c.receive("ctl", Assign(epoch, "a", IDS)) for n, c in cores.items()}
    leader = cores["a"]
    outs["a"].extend(leader.stored(leader.end))
    _settle(cores, outs)
    for _ in range(3):  # heartbeats carry the last high watermark
        _settle(cores, {"a": leader.tick()})
    return leader


class Held:
    """What the service needs of a partition's replica: its core, and ticks counted."""

    holds_sends = False  # (no batched output waits for a write)

    def __init__(self, name: str, cores: dict[str, Replica]) -> None:
        self.topic = SimpleNamespace(name=name)
        self.partition = 0
        self.cores = cores
        self.core = cores["a"]
        self.wake: Any = None
        self.on_failed: Any = None
        self.failed = None
        self.ticks = 0

    def tick(self) -> None:
        self.ticks += 1
        _settle(self.cores, {"a": self.core.tick()})

    def receive(self, src: str, m: Message, records: list[Any]) -> None:
        self.core.receive(src, m)


def _service(partitions: int) -> tuple[ReplicationService, list[Any], dict[str, Held]]:
    sent: list[Any] = []
    channel = SimpleNamespace(handlers={}, send=lambda dst, kind, payload: sent.append(dst))
    svc = ReplicationService("a", channel, task.Clock())
    svc.controller_of = lambda: "ctl"
    template = idle_partition()
    held = {}
    for i in range(partitions):
        core = Replica("a", "ctl")
        core.__dict__.update(template["a"].__dict__)  # an idle leader like the template's
        h = Held(f"t{i:05d}", {**template, "a": core})
        svc.add(h)  # type: ignore[arg-type]
        held[h.topic.name] = h
    for i in range(partitions):
        c = FailoverCore(IDS, epoch=1, leader="a")
        c.receive("a", LeaderBeat(1, 0, 0))
        svc.controllers[(f"t{i:05d}", 0)] = c
    return svc, sent, held


def _tick_work(partitions: int, ticks: int = 1) -> tuple[int, int]:
    """(cores ticked, frames sent) by ``ticks`` ticks of an idle node holding ``partitions``."""
    svc, sent, _ = _service(partitions)
    svc.tick()  # cores just set are looked at once (and found idle)
    before, sent_before = svc.ticked, len(sent)
    for _ in range(ticks):
        svc.reactor.advance(svc.tick_seconds)  # type: ignore[attr-defined]
        svc.tick()
    return svc.ticked - before, len(sent) - sent_before


def test_an_idle_tick_ticks_nothing_however_many_partitions() -> None:
    """1,000 or 10,000 idle leaders and confirmed cores: a tick ticks none,
    and the node's beat (its only frame) goes every other tick: 10 frames in
    20 ticks (issue 23, idle34: 20 before)."""
    assert _tick_work(1_000, 20) == _tick_work(10_000, 20) == (0, 10)


def test_a_node_with_work_beats_every_tick() -> None:
    """A replica with work under way (a publish on one of 1,000 idle
    leaders) and the beat goes on every tick again; a new controller gets
    one at once."""
    svc, sent, _held = _service(1_000)
    svc.tick()
    busy = SimpleNamespace(core=SimpleNamespace(idle=False, quiet_ticks=0), tick=lambda: None)
    svc.replicas[("busy", 0)] = busy  # type: ignore[assignment]
    svc._due.add(("busy", 0))  # (what a core's output with work does)
    before = len(sent)
    for _ in range(6):
        svc.reactor.advance(svc.tick_seconds)  # type: ignore[attr-defined]
        svc.tick()
    assert sent[before:] == ["ctl"] * 6
    busy.core.idle = True
    for _ in range(4):
        svc.reactor.advance(svc.tick_seconds)  # type: ignore[attr-defined]
        svc.tick()
    assert sent[before + 6 :] == ["ctl"] * 2  # idle: every other tick
    svc.controller_of = lambda: "other"
    svc.reactor.advance(svc.tick_seconds)  # type: ignore[attr-defined]
    svc.tick()  # (an idle tick that would not beat "ctl")
    assert sent[before + 8 :] == ["other"]


def test_a_partition_with_work_is_ticked_until_it_is_idle_again() -> None:
    """A publish on one of 10,000 idle leaders wakes that one only; once its
    followers hold the record and the watermark it is not ticked again."""
    svc, _, held = _service(10_000)
    svc.tick()
    h = held["t00042"]
    h.cores = idle_partition()  # replicas of its own
    h.core = h.cores["a"]
    _first, out = h.core.append(1)  # a publish
    h.wake(("t00042", 0))  # what the adapter does after any output of a core that is not idle
    before = svc.ticked
    svc.tick()
    assert svc.ticked - before == 1  # that partition only
    out.extend(h.core.stored(h.core.end))
    _settle(h.cores, {"a": out})
    for _ in range(5):  # the followers hear the new high watermark
        svc.tick()
    assert h.core.idle and h.cores["b"].hw == h.cores["c"].hw == h.core.hw == h.core.end
    before = svc.ticked
    svc.tick()
    assert svc.ticked == before


def test_node_liveness_reports_each_silence_once_and_restarts() -> None:
    """A node is silent once nothing came from it for the timeout (counted from
    the last reset: a new controller waits a whole timeout), reported once
    until heard again; a beat with a new boot is a restart."""
    lv = NodeLiveness(2.0)
    lv.reset(10.0)
    assert lv.heard("b", 10.5, boot=7) is False
    nodes = ["b", "c", "d"]  # d beats all along
    lv.heard("d", 11.9)
    assert lv.newly_silent(nodes, 11.9) == []
    lv.heard("d", 12.1)
    assert lv.newly_silent(nodes, 12.1) == ["c"]  # never heard since the reset
    lv.heard("d", 12.6)
    assert lv.newly_silent(nodes, 12.6) == ["b"]
    lv.heard("d", 20.0)
    assert lv.newly_silent(nodes, 20.0) == []  # once
    assert lv.heard("b", 20.1, boot=7) is False and not lv.is_silent("b")
    assert lv.heard("b", 20.2, boot=8) is True


def test_node_liveness_counts_silence_only_up_to_what_this_node_has_read() -> None:
    """This node stalls (or is not scheduled) for 5 s, several times in a
    row: the beats sent to it meanwhile wait unread in its sockets, so
    however late its ticks, no node is silent until something is read; read
    after the stall, every live node is heard again, and one that really went
    quiet during it is silent at once; later a node quiet for the timeout
    while another is heard is silent as before."""
    lv = NodeLiveness(2.0)
    lv.reset(0.0)
    for n in "bcd":
        lv.heard(n, 10.0, boot=1)
    for now in (15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0):  # stalls back to back, nothing read
        assert lv.newly_silent(["b", "c", "d"], now) == []
    lv.heard("b", 45.01)  # the reactor reads its sockets: b and c beat meanwhile, d did not
    lv.heard("c", 45.01)
    assert lv.newly_silent(["b", "c", "d"], 45.02) == ["d"]
    for i in range(1, 22):  # 2.1 s of running time: b beats, c does not
        lv.heard("b", 45.01 + 0.1 * i)
    assert lv.newly_silent(["b", "c", "d"], 47.2) == ["c"]


def test_a_restarted_leaders_partitions_fail_over_at_its_first_beat() -> None:
    """The controller's cores led by "a" start fencing when a's beat names a
    new boot (it leads nothing it led: a restarted replica never leads its
    old epoch again); the others are left alone."""
    svc, _, _ = _service(100)
    svc.controllers[("other", 0)] = FailoverCore(("b", "c", "a"), epoch=1, leader="b")
    svc.controllers[("other", 0)].receive("b", LeaderBeat(1, 0, 0))
    svc.heard("a", 1)
    assert not any(c.fencing for c in svc.controllers.values())
    svc.heard("a", 2)
    fencing = {k for k, c in svc.controllers.items() if c.fencing is not None}
    assert fencing == {(f"t{i:05d}", 0) for i in range(100)}


def test_a_node_that_believes_it_is_the_controller_still_beats_the_last_other_one() -> None:
    """A deposed Raft leader that has not heard of the new one yet (it thinks
    the controller is itself), or a node that knows none, keeps beating the
    last other controller it knew: the real controller must not take its
    silence for a dead node and fail its partitions over."""
    sent: list[str] = []
    svc = ReplicationService(
        "b", SimpleNamespace(handlers={}, send=lambda dst, kind, p: sent.append(dst)), task.Clock()
    )
    now: list[str | None] = ["a"]
    svc.controller_of = lambda: now[0]
    for _ in range(2):
        svc.tick()
    now[0] = "b"  # believes it leads Raft
    for _ in range(2):
        svc.tick()
    now[0] = None  # knows no leader
    for _ in range(2):
        svc.tick()
    assert sent == ["a", "a", "a"]  # (idle: every other tick)


def test_a_restarted_follower_asks_its_silent_leader_until_an_append_answers() -> None:
    """A follower built again after a restart is not caught up (its node is
    not ready) until an append reaches the leader's high watermark.  The word
    it sends its leader on its Assign may be lost (the connection is not up
    yet) and an idle leader sends nothing unprompted: so it says where it
    stands again every ``retry_ticks`` until an append answers, then idles."""
    import copy

    cores = idle_partition()
    leader, old = cores["a"], cores["b"]
    b = Replica("b", "ctl", cache=copy.deepcopy(old.cache), fenced_epoch=old.fenced_epoch, hw=old.hw)
    cores["b"] = b
    lost = b.receive("ctl", Assign(1, "a", IDS))  # its word to the leader is lost
    assert [d for d, _ in lost.messages] == ["a"]
    assert not b.caught_up and not b.idle
    for _ in range(b.retry_ticks - 1):
        assert b.tick().messages == []
    again = b.tick()
    assert again.messages == [("a", AppendResp(1, False, b.end, b.hw))]
    _settle(cores, {"b": again})
    assert b.caught_up and b.idle and leader.idle
    assert all(b.tick().messages == [] for _ in range(3 * b.retry_ticks))


def test_without_the_node_beat_feature_every_leader_and_core_ticks_as_before() -> None:
    """While ``node-beat`` is not on across the cluster (an older node may be
    the controller: it counts silence per partition), every idle leader
    heartbeats and beats per partition on every tick and every controller
    core of a leader that never sent a NodeBeat is ticked (once a tick);
    once the feature is on, a tick ticks nothing.  The NodeBeat goes out
    either way (an older node drops it)."""
    svc, sent, held = _service(100)
    gate = [False]
    svc.node_beats = lambda: gate[0]
    beats: list[Message] = []
    for h in held.values():
        tick = h.core.tick

        def counted(tick: Any = tick) -> Output:
            out = tick()
            beats.extend(m for d, m in out.messages if d == "ctl")
            return out

        h.core.tick = counted  # type: ignore[method-assign]
    for _ in range(2):
        before = svc.ticked
        svc.tick()
        assert svc.ticked - before == 200  # 100 leaders and 100 controller cores
    assert sent == ["ctl", "ctl"]  # the node's beat, one a tick
    assert len(beats) == 200 and all(isinstance(m, LeaderBeat) for m in beats)
    assert all(h.ticks == 2 for h in held.values())
    gate[0] = True
    svc.tick()  # the cores ticked last are looked at once more (and found idle)
    before, beats_before = svc.ticked, len(beats)
    svc.tick()
    assert (svc.ticked - before, len(beats) - beats_before, sent[-1:]) == (0, 0, ["ctl"])


def test_without_the_node_beat_feature_a_silent_partition_fails_over_by_its_own_silence() -> None:
    """With the feature off, a confirmed core whose leader (of the older
    release: it never sent a NodeBeat) stops beating for the partition fails
    over after ``beat_timeout_ticks`` (the older release's rule), though the
    node itself is heard; with it on, or for a leader that sends NodeBeats,
    the idle core waits for the node's silence instead."""
    for on, boot in ((False, None), (True, None), (False, 7)):
        svc, _, _ = _service(1)
        svc.node_beats = lambda on=on: on
        core = svc.controllers[("t00000", 0)]
        for _ in range(core.beat_timeout_ticks + 2):
            svc.heard("a", boot)  # the node is heard (other partitions' frames, or its NodeBeat)
            svc.tick()
        # Per-partition silence counts only with the feature off for a leader
        # that never beat (an older node): one that beats is watched by node.
        assert (core.fencing is not None) is (not on and boot is None), (on, boot)


def failed_over_partition(dead: set[str]) -> dict[str, Replica]:
    """The replicas of one partition after a failover away from "c", which is
    dead: "a" leads epoch 2, "b" holds its log and high watermark, "c" heard
    nothing (its core stays as it was in epoch 1).  ``dead`` is the set the
    leader's core is given (the service's, in a node)."""
    cores = idle_partition()
    cores["a"].dead = dead
    _assign({n: cores[n] for n in ("a", "b")}, 2)
    return cores


def test_a_leader_waits_for_no_follower_on_a_node_known_dead() -> None:
    """A leader whose only follower behind is on a node known dead is idle,
    and its tick sends that node nothing; while the node is not known dead
    the same leader is never idle (it sends the dead node its unanswered
    append again after ``retry_ticks`` ticks, then after twice as many...)."""
    cores = failed_over_partition(set())
    leader = cores["a"]
    assert not leader.idle  # "c" lacks the epoch's control record
    to_c = [i for i in range(30) if "c" in [d for d, _ in leader.tick().messages]]
    assert len(to_c) >= 2 and all(b - a >= 2 * max(a, 1) for a, b in itertools.pairwise([0, *to_c])), to_c
    dead = {"c"}
    leader.dead = dead
    assert leader.idle
    assert "c" not in [d for d, _ in leader.tick().messages]
    _first, out = leader.append(2)  # a publish goes to "b" only, and commits with it
    assert [d for d, _ in out.messages] == ["b"]
    out.extend(leader.stored(leader.end))
    _settle({n: cores[n] for n in ("a", "b")}, {"a": out})
    for _ in range(leader.retry_ticks):  # the push is not answered: the tick's heartbeat is
        _settle({n: cores[n] for n in ("a", "b")}, {"a": leader.tick()})
    assert leader.hw == leader.end and leader.idle


def _dead_service(partitions: int, how: str) -> tuple[ReplicationService, list[Any], dict[str, Held]]:
    """A node "a" leading ``partitions`` partitions failed over away from the
    dead node "c", which the node knows dead ``how``: by gossip, or from the
    controller's Assign (``down``)."""
    sent: list[Any] = []
    channel = SimpleNamespace(handlers={}, send=lambda dst, kind, payload: sent.append(dst))
    svc = ReplicationService("a", channel, task.Clock())
    svc.controller_of = lambda: "ctl"
    if how == "gossip":
        svc.member_event("dead", "c")
    else:
        assign = Assign(2, "a", IDS, down=("c",))
        svc._frame("ctl", msgspec.msgpack.encode(Envelope("t00000", 0, encode(assign))))
    template = failed_over_partition(svc.dead)
    held = {}
    for i in range(partitions):
        core = Replica("a", "ctl")
        core.__dict__.update(template["a"].__dict__)  # a leader like the template's
        core.followers = {f: copy.copy(st) for f, st in core.followers.items()}
        h = Held(f"t{i:05d}", {"a": core, "b": template["b"]})
        svc.add(h)  # type: ignore[arg-type]
        held[h.topic.name] = h
    return svc, sent, held


def _dead_tick_work(partitions: int, how: str) -> tuple[int, int]:
    svc, sent, _ = _dead_service(partitions, how)
    svc.tick()  # replicas just added are looked at once (and found idle)
    before, sent_before = svc.ticked, len(sent)
    for _ in range(2):
        svc.tick()
    return svc.ticked - before, len(sent) - sent_before


def test_a_tick_does_nothing_for_leaders_whose_missing_follower_is_dead() -> None:
    """10,000 partitions whose new leader is here and whose third replica's
    node is dead (gossip said so, or the controller's Assign did): two ticks
    tick none of them and send one frame (the node's beat, every other tick
    while idle) -- as with 1,000, and as a node whose leaders' followers are
    all up."""
    for how in ("gossip", "assign"):
        assert _dead_tick_work(1_000, how) == _dead_tick_work(10_000, how) == (0, 1), how


def test_a_dead_node_back_is_caught_up_by_the_leaders_it_follows() -> None:
    """While "c" is dead its leader takes publishes (committed with "b") and
    stays idle; once "c" is back -- gossip says it is alive, or (dead on the
    controller's word only) a frame comes from it -- the leaders it follows
    are woken, their ticks catch it up (log and high watermark) and they go
    idle again.  A frame does not end gossip's word."""
    for how, back in (("assign", "frame"), ("gossip", "gossip")):
        svc, _, held = _dead_service(20, how)
        every = {}
        for h in held.values():  # replicas of their own, "c" cut off
            every[h.topic.name] = cores = failed_over_partition(svc.dead)
            h.cores, h.core = {"a": cores["a"], "b": cores["b"]}, cores["a"]
        svc.tick()
        h = held["t00012"]
        cores = every["t00012"]
        _first, out = h.core.append(3)
        out.extend(h.core.stored(h.core.end))
        _settle(h.cores, {"a": out})
        # The high watermark's push is not answered (issue 16, quorum3): the
        # leader's tick (the adapter wakes it: it is not idle) asks b with a
        # heartbeat once the push went unanswered ``retry_ticks`` ticks.
        assert not h.core.idle
        for _ in range(h.core.retry_ticks):
            _settle(h.cores, {"a": h.core.tick()})
        svc.tick()
        before = svc.ticked
        svc.tick()
        assert svc.ticked == before and h.core.idle and h.core.hw == h.core.end
        c = cores["c"]
        assert c.end < h.core.end
        for name, other in held.items():  # "c" is up again: messages reach it
            other.cores["c"] = every[name]["c"]
        beat = msgspec.msgpack.encode(Envelope("", 0, encode(NodeBeat(9, 1))))
        svc._frame("c", beat)
        assert ("c" in svc.dead) is (how == "gossip")
        if back == "gossip":
            svc.member_event("alive", "c")
        assert "c" not in svc.dead
        for _ in range(10):
            svc.tick()
        assert (c.end, c.hw) == (h.core.end, h.core.hw), back
        assert c.cache.runs == h.core.cache.runs
        before = svc.ticked
        svc.tick()
        assert svc.ticked == before and h.core.idle, back


def test_the_controllers_word_that_a_node_is_dead_lapses() -> None:
    """A node known dead only from the controller's Assign is woken again
    after DEAD_HINT_SECONDS (gossip, which would hold it dead, never said so:
    a stale hint must not keep a live follower unfed); gossip's word holds."""
    for how, lapses in (("assign", True), ("gossip", False)):
        svc, _, _ = _dead_service(10, how)
        clock = svc.reactor
        assert isinstance(clock, task.Clock)
        clock.advance(DEAD_HINT_SECONDS + 1)
        svc.tick()
        assert ("c" in svc.dead) is not lapses, how


def test_the_controller_tells_the_replicas_of_the_dead_and_sends_it_nothing() -> None:
    """As the controller, a node silent past the beat timeout fails over the
    partitions it led; the failover's Assign names it (``down``: the new
    leader waits for it in none of them) and neither the fence nor the
    Assign goes to it."""
    sent: list[tuple[str, Any]] = []
    channel = SimpleNamespace(
        handlers={},
        send=lambda dst, kind, p: sent.append(
            (dst, decode(msgspec.msgpack.decode(p, type=Envelope).message))
        ),
    )
    clock = task.Clock()
    svc = ReplicationService("a", channel, clock)
    core = FailoverCore(IDS, epoch=1, leader="c")
    core.receive("c", LeaderBeat(1, 0, 0))
    svc.controllers[("t", 0)] = core
    for _ in range(30):  # 3 s: "b" beats, "c" is silent
        clock.advance(0.1)
        svc.heard("b", 1)
        svc.tick()
    assert core.fencing is not None and "c" in svc.dead
    for n in ("a", "b"):
        svc.run_control(("t", 0), core.receive(n, FenceResp(2, True, 1, 5)))
    assert sent and all(dst != "c" for dst, _ in sent)
    assigns = [m for _, m in sent if isinstance(m, Assign)]
    assert assigns and all(m.down == ("c",) and m.epoch == 2 for m in assigns)


def test_a_follower_whose_leader_never_answers_asks_less_and_less_often() -> None:
    """A whole cluster restarting: thousands of followers whose leader (as the
    metadata says) leads nothing yet and drops their word.  Each asks again
    after 3, 6, 12, 24, then every 30 ticks -- not every 3 ticks, which kept
    the restarted 10,000-partition nodes busy answering each other -- and is
    prompt again once an append or a new Assign comes."""
    b = Replica("b", "ctl")
    b.receive("ctl", Assign(1, "a", IDS))
    asked = [t for t in range(1, 121) if b.tick().messages]
    assert asked == [3, 9, 21, 45, 75, 105]
    b.receive("ctl", Assign(2, "c", IDS))  # a new leader: prompt again
    assert [t for t in range(1, 10) if b.tick().messages] == [3, 9]


class _Follower:
    """A follower replica on the service's node ("a") that restarted behind
    its leader "b": its core has not caught up, and "b" does not answer (it
    leads nothing yet).  Records each word the core says, by tick."""

    holds_sends = False  # (no batched output waits for a write)

    def __init__(self, name: str, clock: task.Clock) -> None:
        self.topic = SimpleNamespace(name=name)
        self.partition = 0
        self.clock = clock
        self.core = Replica("a", "ctl")
        self.core.receive("ctl", Assign(1, "b", IDS))  # its word on the Assign: unanswered
        self.wake: Any = None
        self.on_failed: Any = None
        self.failed = None
        self.words: list[float] = []

    def tick(self) -> int:
        out = self.core.tick()
        self.words += [round(self.clock.seconds(), 1) for _dst, _m in out.messages]
        return len(out.messages)

    def receive(self, src: str, m: Message) -> None:
        """An input, as the adapter hands it: a core output that leaves the
        core with work wakes its ticks."""
        self.core.receive(src, m)
        if not self.core.idle:
            self.wake((self.topic.name, 0))


def _followers(partitions: int) -> tuple[ReplicationService, list[_Follower]]:
    channel = SimpleNamespace(handlers={}, send=lambda dst, kind, payload: None)
    svc = ReplicationService("a", channel, task.Clock())
    svc.controller_of = lambda: "ctl"
    held = [_Follower(f"t{i:05d}", svc.reactor) for i in range(partitions)]  # type: ignore[arg-type]
    for h in held:
        svc.add(h)  # type: ignore[arg-type]
    return svc, held


def _run(svc: ReplicationService, seconds: float) -> None:
    for _ in range(round(seconds / svc.tick_seconds)):
        svc.reactor.advance(svc.tick_seconds)  # type: ignore[attr-defined]
        svc.tick()


def _words_ticked_every_tick(seconds: float) -> list[float]:
    """When a lone follower core like :class:`_Follower`'s speaks, ticked on every tick."""
    clock = task.Clock()
    f = _Follower("x", clock)
    for _ in range(round(seconds / 0.1)):
        clock.advance(0.1)
        f.tick()
    return f.words


def test_followers_waiting_for_their_leader_are_ticked_only_when_they_speak() -> None:
    """10,000 followers not caught up after a restart, their leader silent
    (issue 23, idle36: thousands of them were in the ticked set of each node
    for the seconds to minutes after a 10,000-partition cluster restarted,
    ticked ten times a second each to count towards their next word): over
    ten seconds each is ticked once per word it says -- not 100 times -- and
    says its words on the same ticks as when ticked on every tick."""
    svc, held = _followers(10_000)
    _run(svc, 10.0)
    assert held[0].words == held[-1].words == _words_ticked_every_tick(10.0)
    assert len(held[0].words) == 5  # after 0.3, 0.9, 2.1, 4.5 and 7.5 s (the wait doubles up to 3 s)
    assert svc.ticked <= 10_000 * (1 + 5)  # 1,000,000 before
    before = svc.ticked
    _run(svc, 1.0)
    assert svc.ticked - before <= 10_000 * 1  # ~3,333: one word in 3 s each


def test_a_follower_woken_early_keeps_its_count() -> None:
    """An input that leaves a parked follower's count alone (a fence of the
    epoch it promised already) wakes it, and it says its next word on the
    same tick as before; an append from its
    leader catches it up (idle: never ticked again); an Assign again (its
    count starts over) moves the word as on a follower ticked every tick."""
    svc, (fenced, caught, assigned) = _followers(3)
    _run(svc, 1.0)  # words at 0.3 and 0.9 s; the next at 2.1
    fenced.receive("ctl", Fence(1))
    caught.receive("b", Append(epoch=1, start=0, prev_epoch=0, count=0, runs=(), hw=0))
    assert caught.core.idle
    assigned.receive("ctl", Assign(1, "b", IDS))  # (a repeat: the count starts over)
    before = svc.ticked
    _run(svc, 0.1)
    assert svc.ticked - before == 2  # the woken: the fenced and the assigned, not the caught up
    _run(svc, 9.9)
    assert fenced.words == _words_ticked_every_tick(11.0) == [0.3, 0.9, 2.1, 4.5, 7.5, 10.5]
    assert caught.words == [0.3, 0.9]
    lone = task.Clock()
    f = _Follower("x", lone)
    for _ in range(10):
        lone.advance(0.1)
        f.tick()
    f.core.receive("ctl", Assign(1, "b", IDS))
    for _ in range(100):
        lone.advance(0.1)
        f.tick()
    assert assigned.words == f.words


def test_the_due_sets_shrink_back_once_a_burst_of_work_is_done() -> None:
    """A start or a failover makes every one of 10,000 replicas (and cores)
    due; once they are idle again the due sets get a small table back, the
    same set objects (a replica's ``wake`` is the set's ``add``) -- a set
    never shrinks by itself, and every later tick walked its whole table
    (~0.15-0.4 ms a tick, ten times a second, on an idle node: issue 23)."""
    svc, _, held = _service(10_000)
    svc.tick()
    due, due_control = svc._due, svc._due_control
    for key in list(svc.replicas):
        held[key[0]].wake(key)  # every replica woken (as its outputs do)
    due_control.update(svc.controllers)
    grown = sys.getsizeof(due)
    svc.reactor.advance(svc.tick_seconds)  # type: ignore[attr-defined]
    svc.tick()  # every one of them is idle: all discarded
    assert not due and not due_control
    assert svc._due is due and svc._due_control is due_control
    assert sys.getsizeof(due) <= COMPACT_BYTES < grown
    assert sys.getsizeof(due_control) <= COMPACT_BYTES
    held["t00042"].wake(("t00042", 0))  # the replicas' bound add still reaches it
    assert ("t00042", 0) in svc._due


def test_a_node_whose_store_failed_beats_no_more_and_says_so_once() -> None:
    """Once this node's store failed (a full disk: every write refused until
    a restart), its ticks send the controller no beat -- the controller
    finds it silent and fails its leaderships over to replicas that can
    write -- and it logs why once."""
    from twisted.logger import globalLogPublisher

    svc, sent, _ = _service(10)
    failed = [False]
    svc.storage_failed = lambda: failed[0]
    svc.tick()
    assert sent == ["ctl"]
    failed[0] = True
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for _ in range(10):
            svc.reactor.advance(svc.tick_seconds)  # type: ignore[attr-defined]
            svc.tick()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert sent == ["ctl"]
    said = [e for e in events if "storage failed" in e.get("log_format", "")]
    assert len(said) == 1 and said[0]["log_level"].name == "critical"
