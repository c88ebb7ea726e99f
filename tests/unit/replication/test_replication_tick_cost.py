"""What one replication tick costs (issue 23): the service ticks only replicas
and controller cores with work, so a node with 10,000 idle partition leaders
(and, as the controller, 10,000 confirmed failover cores) ticks none of them
and sends one frame per tick -- its beat to the controller -- however many
partitions it holds.  Counted, not timed: :attr:`ReplicationService.ticked`
and the frames sent."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet import task

from sprawl.replication.failover import FailoverCore
from sprawl.replication.liveness import NodeLiveness
from sprawl.replication.messages import AppendResp, Assign, LeaderBeat, Message
from sprawl.replication.replica import Output, Replica
from sprawl.replication.service import ReplicationService

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
    outs = {n: c.receive("ctl", Assign(1, "a", IDS)) for n, c in cores.items()}
    leader = cores["a"]
    outs["a"].extend(leader.stored(leader.end))
    _settle(cores, outs)
    for _ in range(3):  # heartbeats carry the last high watermark
        _settle(cores, {"a": leader.tick()})
    assert leader.is_leader and leader.idle, leader.followers
    return cores


class Held:
    """What the service needs of a partition's replica: its core, and ticks counted."""

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


def _tick_work(partitions: int) -> tuple[int, int]:
    """(cores ticked, frames sent) by one tick of an idle node holding ``partitions``."""
    svc, sent, _ = _service(partitions)
    svc.tick()  # cores just set are looked at once (and found idle)
    before, sent_before = svc.ticked, len(sent)
    svc.tick()
    return svc.ticked - before, len(sent) - sent_before


def test_an_idle_tick_ticks_nothing_however_many_partitions() -> None:
    """1,000 or 10,000 idle leaders and confirmed cores: a tick ticks none
    and sends one frame (the node's beat)."""
    assert _tick_work(1_000) == _tick_work(10_000) == (0, 1)


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
    assert lv.newly_silent(["b", "c"], 11.9) == []
    assert lv.newly_silent(["b", "c"], 12.1) == ["c"]  # never heard since the reset
    assert lv.newly_silent(["b", "c"], 12.6) == ["b"]
    assert lv.newly_silent(["b", "c"], 20.0) == []  # once
    assert lv.heard("b", 20.1, boot=7) is False and not lv.is_silent("b")
    assert lv.heard("b", 20.2, boot=8) is True


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
    svc.tick()
    now[0] = "b"  # believes it leads Raft
    svc.tick()
    now[0] = None  # knows no leader
    svc.tick()
    assert sent == ["a", "a", "a"]


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
