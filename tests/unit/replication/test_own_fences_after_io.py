"""The controller takes its own fences a reactor turn after the frame of the
same fences to the other survivor is queued (issue 23, fail39).

Twisted runs a turn's timers before its I/O, and a call made within a
turn's timers runs in the next turn's: a fence taken on ``callLater(0)``
from an I/O callback (a refused probe finds the dead node) ran before the
reactor wrote the frame carrying the other survivor's fences, so the other
survivor heard its 5,000 fences only after the controller took its own
5,000 (one LMDB write and 5,000 answers).  Now the controller's own fences
wait one turn more; fences from another node are taken on the next turn as
before.  Modelled with a reactor that runs turns as Twisted does."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from sprawl.replication.envelope import Envelope
from sprawl.replication.failover import FailoverCore
from sprawl.replication.messages import Fence, encode
from sprawl.replication.service import ReplicationService

IDS = ("b", "a", "c")


class _Call:
    def __init__(self, f: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.f, self.args, self.live = f, args, True

    def active(self) -> bool:
        return self.live

    def cancel(self) -> None:
        self.live = False


class _Turns:
    """A reactor of turns: the calls made during a turn run in the next one."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[_Call] = []

    def seconds(self) -> float:
        return self.now

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any) -> _Call:
        c = _Call(f, args)
        self.calls.append(c)
        return c

    def turn(self) -> None:
        calls, self.calls = self.calls, []
        for c in calls:
            if c.live:
                c.live = False
                c.f(*c.args)


class _Replica:
    """A replica the fences reach (the batch's write is not under test)."""

    def __init__(self, name: str) -> None:
        self.topic = SimpleNamespace(name=name)
        self.partition = 0
        self.core = SimpleNamespace(idle=True, dead=set(), answering=set())
        self.wake: Any = None
        self.changed: Any = None
        self.on_failed: Any = None
        self.on_hop: Any = None


def _controller(partitions: int) -> tuple[ReplicationService, _Turns, list[str], list[int]]:
    sent: list[str] = []
    reactor = _Turns()
    channel: Any = SimpleNamespace(handlers={}, send=lambda dst, kind, payload: sent.append(dst))
    svc = ReplicationService("a", channel, reactor)  # type: ignore[arg-type]
    svc.controller_of = lambda: "a"
    for i in range(partitions):
        key = (f"t{i:05d}", 0)
        svc.add(_Replica(key[0]))  # type: ignore[arg-type]
        c = FailoverCore(IDS, epoch=1, leader="b", beat_timeout_ticks=20)
        c.leader_confirmed = True
        svc.controllers[key] = c
    taken: list[int] = []
    svc._take_fences = lambda: taken.append(len(svc._fences)) or svc._fences.clear()  # type: ignore[method-assign]
    for n in ("b", "c"):
        svc.heard(n, 7)
    return svc, reactor, sent, taken


def test_the_controllers_own_fences_wait_one_turn_more() -> None:
    """b's port refuses (an I/O callback): the frame of c's 1,000 fences is
    queued at once; the turn after, the controller has not taken its own
    1,000 yet (the reactor writes c's frame in that turn's I/O); the turn
    after that it takes all 1,000 at once."""
    svc, reactor, sent, taken = _controller(1_000)
    assert svc.node_refused("b", reactor.seconds())
    assert sent == ["c"]  # one frame with c's 1,000 fences, queued
    reactor.turn()
    assert taken == []
    reactor.turn()
    assert taken == [1_000]


def test_fences_from_the_controller_are_taken_on_the_next_turn_as_before() -> None:
    """On a node that is not the controller, fences heard in a frame are taken
    together on the next turn."""
    svc, reactor, _sent, taken = _controller(10)
    svc.controllers.clear()
    for i in range(10):
        svc._deliver("c", Envelope(f"t{i:05d}", 0, encode(Fence(2))))
    reactor.turn()
    assert taken == [10]
