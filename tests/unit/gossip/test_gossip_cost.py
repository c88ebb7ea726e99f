"""What a probe period costs the membership core, against the member count.

SWIM's promise is constant work per member per probe period (one probe, a
few gossip packets, the updates in flight); only the anti-entropy passes
(push-pull, reconnect: one every 30 s or more) read the whole table.  These
tests count the core's work -- the Python lines it executes, through
``sys.settrace``, so any hidden walk over the members is counted whatever its
shape -- over 20 probe periods of a node in a steady cluster of 100 and of
1,000 members (push-pull and reconnect set out of the window), and hold the
two to the same figure.  The work is counted, not timed.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from harness.lines import lines_run
from sprawl.gossip import GossipConfig, Membership
from sprawl.gossip.messages import STATE_ALIVE, Ack, Dead, MemberState, Ping, PushPull
from sprawl.gossip.wire import decode_packet, encode_packet

GOSSIP_DIR = str(Path(sys.modules[Membership.__module__].__file__ or "").parent)
#: Anti-entropy (O(members) by design, every 30 s or more) kept out of the window.
CFG = GossipConfig(push_pull_interval=10_000.0, reconnect_interval=10_000.0)
TICK = 0.1


def steady_node(n: int) -> Membership:
    """A node that learned ``n - 1`` alive members (push-pull chunks from a
    peer) and has sent every resulting update its full number of times,
    every probe answered."""
    m = Membership("me", ("10.0.0.1", 7000), {"http": "10.0.0.1:8080"}, CFG, random.Random(7), 0.0)
    peer = ("10.0.0.2", 7000)
    states = [
        MemberState(f"n{i:04d}", ("10.0.1.1", 8000 + i), {"http": f"10.0.1.1:{9000 + i}"}, STATE_ALIVE, 0)
        for i in range(1, n)
    ]
    for k in range(0, len(states), 10):
        m.receive(peer, encode_packet([PushPull(1, False, True, 0, 1, states[k : k + 10])]), 0.0)
    assert len(m.members()) == n
    run(m, 0.0, 300.0)  # every join's Alive gossiped its retransmit limit
    return m


def run(m: Membership, start: float, seconds: float) -> float:
    """Tick every 0.1 s for ``seconds``, every probe acked at once; the end time."""
    t = start
    for _ in range(round(seconds / TICK)):
        t += TICK
        for dst, data in m.tick(t).datagrams:
            for msg in decode_packet(data):
                if isinstance(msg, Ping):
                    m.receive(dst, encode_packet([Ack(msg.seq, msg.target)]), t)
    return t


def period_work(n: int) -> tuple[int, Membership]:
    """Lines the core runs over 20 probe periods at ``n`` members, while one
    member is held dead (waiting to be reaped, as after every failure)."""
    m = steady_node(n)
    t = 300.0
    m.receive(("10.0.0.2", 7000), encode_packet([Dead(0, "n0001", "n0002")]), t)
    work = lines_run(lambda: run(m, t, 20.0), GOSSIP_DIR)
    return work, m


def test_a_probe_period_costs_the_same_at_100_and_1000_members() -> None:
    """20 probe periods with a dead member awaiting reaping: the core's work
    at 1,000 members is within 25% of its work at 100 (a pass over the
    members in every period -- the reaper used to walk the whole table once
    a second while anyone was dead -- makes it several times more)."""
    small, m100 = period_work(100)
    large, m1000 = period_work(1000)
    for m in (m100, m1000):
        assert m.stats["probes_sent"] > 300 and m.stats["probe_failures"] == 0
        dead = m.member("n0001")
        assert dead is not None and dead.state == "dead"
    assert large < 1.25 * small, (small, large)
