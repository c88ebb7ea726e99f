"""A new leader awaiting its follower's answer is not ticked while its ticks
would only count (issue 23, fail39).

After a dead node's failover each survivor leads ~2,500 new partitions, and
each stays "due" until its follower -- the other survivor, busy with its own
apply -- answers its first append: every 0.1 s tick walked all of them (31 %
of the other survivor's samples in fail38's profile) to count towards a
re-send every few ticks.  Such a leader is now parked as a quiet follower
is (:attr:`Replica.quiet_ticks`): ticked on the ticks that re-send, and
sending on the same ticks as when ticked every tick.  Counted, not timed:
:attr:`ReplicationService.ticked` and the ticks each leader spoke on."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet import task

from sprawl.replication.messages import AppendResp, Assign, Message
from sprawl.replication.replica import Replica
from sprawl.replication.service import ReplicationService

IDS = ("a", "b", "c")


class _NewLeader:
    """What the service needs of a replica: a core that leads epoch 2 of
    ``IDS`` (c dead, b silent), and the ticks it spoke on."""

    holds_sends = False

    def __init__(self, name: str, clock: task.Clock) -> None:
        self.topic = SimpleNamespace(name=name)
        self.partition = 0
        self.clock = clock
        self.core = Replica("a", "ctl")
        self.wake: Any = None
        self.changed: Any = None
        self.on_failed: Any = None
        self.on_hop: Any = None
        self.failed = None
        self.words: list[float] = []

    def lead(self) -> None:
        """The Assign naming it leader (as the node's apply hands it over)."""
        self.receive("ctl", Assign(2, "a", IDS))
        self.core.stored(self.core.end)

    def tick(self) -> int:
        out = self.core.tick()
        self.words += [round(self.clock.seconds(), 1) for _d, _m in out.messages]
        return len(out.messages)

    def receive(self, src: str, m: Message) -> None:
        """An input: a core output that leaves it with work wakes its ticks."""
        self.core.receive(src, m)
        if not self.core.idle and self.wake is not None:
            self.wake((self.topic.name, 0))


def _leaders(partitions: int) -> tuple[ReplicationService, list[_NewLeader]]:
    channel = SimpleNamespace(handlers={}, send=lambda dst, kind, payload: None)
    svc = ReplicationService("a", channel, task.Clock())
    svc.controller_of = lambda: "ctl"
    svc.node_dead("c", float("inf"))
    held = [_NewLeader(f"t{i:05d}", svc.reactor) for i in range(partitions)]  # type: ignore[arg-type]
    for h in held:
        svc.add(h)  # type: ignore[arg-type]
        h.lead()
    return svc, held


def _run(svc: ReplicationService, seconds: float) -> None:
    for _ in range(round(seconds / svc.tick_seconds)):
        svc.reactor.advance(svc.tick_seconds)  # type: ignore[attr-defined]
        svc.tick()


def _words_ticked_every_tick(seconds: float, answer_at: float | None = None) -> list[float]:
    """When a lone new leader like :class:`_NewLeader`'s speaks, ticked on every
    tick (b answering its first append at ``answer_at``)."""
    clock = task.Clock()
    h = _NewLeader("x", clock)
    h.core.dead = {"c"}
    h.core.tick_beats = False
    h.lead()
    for _ in range(round(seconds / 0.1)):
        clock.advance(0.1)
        h.tick()
        if answer_at is not None and round(clock.seconds(), 1) == answer_at:
            h.receive("b", AppendResp(2, True, h.core.end, 0))
    return h.words


def test_new_leaders_awaiting_a_busy_follower_are_ticked_only_when_they_send() -> None:
    """2,500 new leaders whose follower b says nothing for 10 s (c dead):
    each re-sends its first append on the same ticks as when ticked every
    tick (the wait doubling from 0.3 s up to 3 s), and is ticked about once
    per re-send -- not 100 times."""
    svc, held = _leaders(2_500)
    _run(svc, 10.0)
    words = _words_ticked_every_tick(10.0)
    assert held[0].words == held[-1].words == words
    assert words == [0.3, 0.9, 2.1, 4.5, 7.5]
    assert svc.ticked <= 2_500 * (1 + len(words))  # 250,000 before


def test_a_parked_new_leader_woken_by_its_followers_answer_goes_idle() -> None:
    """b answers the first append of half of them after the tick at 0.5 s
    (between two re-sends): those are woken, send b the high watermark again
    on the same ticks as a leader ticked every tick would, and go idle once
    b says it holds it; the others keep their re-sends on the same ticks."""
    svc, held = _leaders(10)
    _run(svc, 0.5)
    for h in held[:5]:
        h.receive("b", AppendResp(2, True, h.core.end, 0))
    _run(svc, 4.5)
    assert held[0].words == _words_ticked_every_tick(5.0, answer_at=0.5)
    assert held[9].words == _words_ticked_every_tick(5.0) == [0.3, 0.9, 2.1, 4.5]
    for h in held[:5]:
        h.receive("b", AppendResp(2, True, h.core.end, h.core.hw))
        assert h.core.idle


def test_new_leaders_whose_follower_answers_others_resend_on_the_same_ticks() -> None:
    """b answers other partitions' appends on every tick (its node works
    through its queue: the leaders' appends wait in it, not lost): each
    re-sends only after :data:`ANSWERED_WAIT_TICKS`, on the same ticks as
    a leader ticked every tick, and is ticked far less."""
    svc, held = _leaders(100)
    for _ in range(50):
        svc._answers_heard.add("b")  # (an AppendResp from b about another partition)
        _run(svc, 0.1)
    clock = task.Clock()
    lone = _NewLeader("x", clock)
    lone.core.dead = {"c"}
    lone.core.answering = {"b"}
    lone.core.tick_beats = False
    lone.lead()
    for _ in range(50):
        clock.advance(0.1)
        lone.tick()
    assert held[0].words == held[-1].words == lone.words == [1.2, 2.7, 4.8]
    assert svc.ticked <= 100 * 2 * (1 + len(lone.words))  # 5,000 before
