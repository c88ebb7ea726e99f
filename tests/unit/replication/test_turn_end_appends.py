"""A leader's publishes leave for its followers from the reactor's end-of-turn
queue (issue 16, turn44: :mod:`sprawl.turn_end`), sharing its one timed call
with the turn's other end-of-turn calls: no ``callLater`` of their own (one a
turn with publishes before).  The appends still leave at the end of the turn
that took the publishes, one a follower, and are answered."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from harness import WAIT, bounded, until
from harness.reactor import the_reactor
from harness.replication_nodes import IDS, Node, replicated_orders
from sprawl.log.record import Record
from sprawl.replication.messages import Append, decode
from sprawl.replication.replica import LEADER
from sprawl.turn_end import turn_end


@pytest_twisted.async_yield_fixture
async def nodes(tmp_path: Path) -> AsyncIterator[dict[str, Node]]:
    async with replicated_orders(tmp_path) as ns:
        yield ns


@pytest_twisted.ensureDeferred
async def test_a_turns_publishes_leave_from_the_shared_end_of_turn_call(
    nodes: dict[str, Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three publishes in one turn, with another end-of-turn call queued among
    them: no timed call asked for ``_send_appends`` (one without the change),
    one end-of-turn call armed for them all, nothing sent before the turn ends,
    then one append a follower carrying the three, answered."""

    def leaders() -> list[Node]:
        return [nodes[i] for i in IDS if nodes[i].service.replicas[("orders", 0)].core.role == LEADER]

    await until(lambda: len(leaders()) == 1, "a leader")
    leader = leaders()[0]
    rep = leader.service.replicas[("orders", 0)]
    await bounded(rep.publish([Record(-1, 0, 0, None, None, None, b"m0", True)]), WAIT)
    reactor = the_reactor()
    te = turn_end(reactor)
    asked: list[Any] = []
    real = reactor.callLater

    def counted(delay: float, f: Any, *a: Any, **kw: Any) -> Any:
        asked.append(getattr(f, "__name__", f))
        return real(delay, f, *a, **kw)

    monkeypatch.setattr(reactor, "callLater", counted)
    sent: list[tuple[str, int]] = []
    real_send = rep.send

    def send(dst: str, env: Any) -> None:
        m = decode(env.message)
        if isinstance(m, Append) and m.count:
            sent.append((dst, m.count))
        real_send(dst, env)

    monkeypatch.setattr(rep, "send", send)
    ran: list[str] = []
    armed = te.armed
    ds = [rep.publish([Record(-1, 0, 0, None, None, None, b"a", True)])]
    te.soon(ran.append, "other")
    ds += [rep.publish([Record(-1, 0, 0, None, None, None, b"%d" % i, True)]) for i in (1, 2)]
    assert "_send_appends" not in asked and te.armed == armed + 1
    assert sent == [] and ran == []
    got = [await bounded(d, WAIT) for d in ds]
    assert ran == ["other"] and [g[0] for g in got] == [got[0][0], got[0][0] + 1, got[0][0] + 2]
    followers = sorted(n for n in IDS if nodes[n] is not leader)
    assert sorted(sent) == [(f, 3) for f in followers]
