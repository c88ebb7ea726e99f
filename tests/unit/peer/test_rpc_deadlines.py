"""The peer RPC's deadlines share one timer (issue 16, turn44): a timer a call,
cancelled once the call was answered, was a timed call built, pushed on the
reactor's heap and cancelled there for every forwarded publish -- and a
cancelled one stays in the heap, making every other timer's push and pop
dearer.  Counted: the timers the RPC asks of its clock.  A call nobody
answers still fails at its own deadline, however the deadlines interleave;
a call forgotten (``drop``) fires nothing, ever."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from twisted.internet import defer, task
from twisted.python import failure

from harness.counting import count_calls
from sprawl.errors import Unavailable
from sprawl.peer.rpc import PeerRPC, _Request, _Response


class _Caller:
    """A :class:`PeerRPC` on a :class:`task.Clock` over a channel that records
    the requests it sends; the test answers them."""

    def __init__(self, timeout: float = 10.0) -> None:
        self.clock = task.Clock()
        self.sent: list[int] = []

        def send(dst: str, kind: int, payload: bytes) -> bool:
            self.sent.append(msgspec.msgpack.decode(payload, type=_Request).id)
            return True

        channel = SimpleNamespace(
            handlers={}, send=send, fits=lambda kind, size: True, on_unreachable=lambda p: None
        )
        self.rpc = PeerRPC(channel, self.clock, timeout=timeout)  # type: ignore[arg-type]

    def answer(self, rid: int, body: Any = "ok") -> None:
        self.rpc._on_response("L", msgspec.msgpack.encode(_Response(rid, True, body)))

    def call(self, timeout: float | None = None) -> list[Any]:
        """A call to ``L``: its outcome (a body or a Failure) once it has one."""
        out: list[Any] = []
        self.rpc.call("L", "m", None, timeout=timeout).addBoth(out.append)
        return out


def test_calls_answered_in_turn_ask_the_clock_for_one_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hundred calls, each answered before the next: one timer asked of the
    clock (a hundred without the change, each cancelled when answered), every
    answer delivered, and the deadlines' entries kept bounded."""
    c = _Caller()
    timers = count_calls(monkeypatch, c.clock, "callLater")
    for k in range(100):
        out = c.call()
        c.clock.advance(0.01)
        c.answer(c.sent[-1], k)
        assert out == [k]
    assert len(timers) == 1 and c.rpc.timers == 1
    assert c.rpc._pending == {} and len(c.rpc._deadlines) <= 65
    c.clock.advance(10)  # (the timer fires for a call answered long ago: to nothing)
    assert c.clock.getDelayedCalls() == [] and len(timers) == 1


def test_every_call_not_answered_fails_at_its_own_deadline() -> None:
    """Calls of different timeouts, some answered, some not: each one not
    answered fails with ``peer_timeout`` at its deadline -- not before, not
    later -- and a late answer to one is dropped."""
    c = _Caller(timeout=1.0)
    long_one = c.call()  # due 1.0
    answered = c.call()  # due 1.0, answered
    c.answer(c.sent[-1])
    c.clock.advance(0.5)
    short = c.call(timeout=0.2)  # due 0.7: sooner than the timer is armed for
    later = c.call(timeout=5.0)  # due 5.5
    c.clock.advance(0.19)
    assert short == [] and long_one == []
    c.clock.advance(0.01)
    assert len(short) == 1 and isinstance(short[0], failure.Failure)
    assert isinstance(short[0].value, Unavailable) and short[0].value.code == "peer_timeout"
    assert long_one == []
    c.clock.advance(0.29)
    assert long_one == []
    c.clock.advance(0.01)
    assert len(long_one) == 1 and long_one[0].value.code == "peer_timeout"
    assert answered == ["ok"]
    c.clock.advance(4.49)
    assert later == []
    c.clock.advance(0.01)
    assert len(later) == 1 and later[0].value.code == "peer_timeout"
    c.answer(c.sent[0])  # (the first call's late answer)
    assert c.rpc.dropped == 1 and c.clock.getDelayedCalls() == [] and c.rpc._pending == {}


def test_a_timeout_still_fires_among_many_answered_calls() -> None:
    """A thousand calls answered at once, one left unanswered among them (the
    deadlines' entries rebuilt on the way): it fails at its deadline."""
    c = _Caller(timeout=2.0)
    waiting = None
    for k in range(1000):
        out = c.call()
        if k == 500:
            waiting = out
        else:
            c.answer(c.sent[-1])
        c.clock.advance(0.001)
    assert waiting == [] and len(c.rpc._deadlines) <= 65 and len(c.rpc._pending) == 1
    c.clock.advance(2.0 - 0.5 - 0.001)  # (the call was made at 0.5 s)
    assert waiting == []
    c.clock.advance(0.002)
    assert waiting is not None and len(waiting) == 1 and waiting[0].value.code == "peer_timeout"
    assert c.clock.getDelayedCalls() == []


def test_a_dropped_call_fires_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """``drop``: the call's Deferred never fires -- no Failure built -- its late
    answer is dropped and its deadline passes without a word."""
    c = _Caller(timeout=1.0)
    made = count_calls(monkeypatch, failure.Failure, "__init__")
    d, rid = c.rpc.start("L", "m", None)
    assert rid == c.sent[-1]
    c.rpc.drop(rid)
    c.answer(rid)
    c.clock.advance(2.0)
    assert not d.called and made == [] and c.rpc.dropped == 1 and c.rpc._pending == {}


def test_close_fails_every_call_and_leaves_no_timer() -> None:
    c = _Caller()
    outs = [c.call() for _ in range(3)]
    c.rpc.close()
    assert all(len(o) == 1 and o[0].value.code == "stopping" for o in outs)
    assert c.clock.getDelayedCalls() == []


def test_a_cancelled_call_is_forgotten() -> None:
    """A caller that cancels its call: forgotten, its late answer dropped."""
    c = _Caller()
    d = c.rpc.call("L", "m", None)
    d.addErrback(lambda f: f.trap(defer.CancelledError))
    d.cancel()
    c.answer(c.sent[-1])
    assert c.rpc._pending == {} and c.rpc.dropped == 1
