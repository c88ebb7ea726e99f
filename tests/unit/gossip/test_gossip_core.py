"""Unit tests of the SWIM/Lifeguard membership core.

Small clusters run on the deterministic simulator (zero loss unless said
otherwise, virtual time); a few tests drive a single :class:`Membership` by
hand.  Each test names the protocol claim it checks.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sprawl.gossip import GossipConfig, Member, MemberEvent, Membership, Output, wire
from sprawl.gossip.messages import (
    Ack,
    Alive,
    Dead,
    Leave,
    MemberState,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Suspect,
)
from sprawl.gossip.suspicion import Suspicion, confirmations_wanted, remaining_timeout, suspicion_timeout
from sprawl.sim import Simulator

CFG = GossipConfig()
TICK = 0.1


def addr(i: int, port_base: int = 7000) -> tuple[str, int]:
    """The simulated peer address of node ``i``."""
    return ("10.0.0.1", port_base + i)


def nid(i: int) -> str:
    """The node id of node ``i``."""
    return f"n{i}"


def new_node(
    sim: Simulator, i: int, config: GossipConfig = CFG, incarnation: int = 0, **kw: Any
) -> Membership:
    """A fresh membership for node ``i`` on ``sim`` (not yet attached)."""
    a = kw.pop("address", addr(i))
    return Membership(
        nid(i), a, {"http": f"10.0.0.1:{8000 + i}"}, config, sim.node_rng(a), sim.now, incarnation
    )


def alive_count(m: Membership) -> int:
    """How many members (self included) ``m`` holds alive."""
    return sum(1 for x in m.members() if x.state == "alive")


def cluster(n: int, seed: int = 1, config: GossipConfig = CFG, **simkw: Any) -> Simulator:
    """``n`` nodes joined through node 0, converged (every node sees all alive)."""
    sim = Simulator(seed, **simkw)
    for i in range(n):
        sim.add_node(addr(i), new_node(sim, i, config))
    for i in range(1, n):
        sim.call(addr(i), lambda node, now: node.join([addr(0)], now))
    assert sim.run_until_true(lambda: all(alive_count(m) == n for m in sim.nodes.values()), 60)
    return sim


def node(sim: Simulator, i: int) -> Membership:
    """The live membership of node ``i``."""
    m = sim.nodes[addr(i)]
    assert isinstance(m, Membership)
    return m


def state_of(sim: Simulator, viewer: int, subject: int) -> str | None:
    """The state node ``viewer`` holds for node ``subject`` (None: unknown)."""
    m = node(sim, viewer).member(nid(subject))
    return m.state if m else None


class Capture:
    """Every datagram put on the simulated network, decoded."""

    def __init__(self, sim: Simulator, key: bytes | None = None):
        self.log: list[tuple[float, Any, Any, list[Message]]] = []
        self.key = key
        sim.on_send.append(self._record)

    def _record(self, t: float, src: Any, dst: Any, payload: bytes) -> None:
        self.log.append((t, src, dst, wire.decode_packet(payload, self.key, wire.ABSOLUTE_MAX_PACKET)))

    def messages(self, kind: type, src: Any = None, dst: Any = None) -> list[tuple[float, Any, Any, Any]]:
        """(time, src, dst, message) of every message of ``kind`` (optionally from/to)."""
        return [
            (t, s, d, m)
            for t, s, d, msgs in self.log
            for m in msgs
            if isinstance(m, kind) and (src is None or s == src) and (dst is None or d == dst)
        ]


def events(
    sim: Simulator, kind: str | None = None, about: str | None = None
) -> list[tuple[float, Any, MemberEvent]]:
    """Member events reported to the simulator, filtered by kind and subject."""
    return [
        (t, a, e)
        for t, a, e in sim.events
        if (kind is None or e.kind == kind) and (about is None or e.member.node_id == about)
    ]


def packet(*msgs: Message, key: bytes | None = None) -> bytes:
    """One encoded packet."""
    return wire.encode_packet(list(msgs), key)


def answer_pings(m: Membership, out: Output, now: float) -> None:
    """Act as every peer of a hand-driven node: ack each ping it sends."""
    for dst, data in out.datagrams:
        for msg in wire.decode_packet(data, m.config.cluster_key):
            if isinstance(msg, Ping):
                m.receive(dst, packet(Ack(msg.seq, msg.target), key=m.config.cluster_key), now)


def lone_node_with_peers(n_peers: int, config: GossipConfig = CFG) -> Membership:
    """A hand-driven node that has heard Alive from ``n_peers`` peers p1..pn."""
    m = Membership("me", ("10.0.0.9", 7000), {}, config, random.Random(5), 0.0)
    alive = [Alive(0, f"p{i}", ("10.0.0.2", 7000 + i), {}) for i in range(1, n_peers + 1)]
    if alive:
        m.receive(("10.0.0.2", 7001), packet(*alive, key=config.cluster_key), 0.0)
    return m


def run_by_hand(m: Membership, start: float, end: float) -> list[MemberEvent]:
    """Tick a hand-driven node every TICK from ``start`` to ``end``, acking its
    pings; returns the events with their times in ``member.state_since``."""
    evs: list[MemberEvent] = []
    t = start
    for _ in range(int((end - start) / TICK) + 1):
        out = m.tick(t)
        evs.extend(out.events)
        answer_pings(m, out, t)
        t = round(t + TICK, 6)
    return evs


# ------------------------------------------------------------------ probing


def test_probe_is_answered_by_ack() -> None:
    """SWIM: a ping to a live member is answered by an ack with the same
    sequence number; no indirect probe, no suspicion."""
    sim = cluster(2)
    cap = Capture(sim)
    before = node(sim, 0).stats["acks_received"]
    sim.run_for(5)
    pings = cap.messages(Ping, src=addr(0), dst=addr(1))
    acks = cap.messages(Ack, src=addr(1), dst=addr(0))
    assert len(pings) >= 4
    assert {m.seq for *_, m in pings} == {m.seq for *_, m in acks}
    assert all(m.target == nid(1) for *_, m in pings)
    assert node(sim, 0).stats["acks_received"] - before == len(pings)
    assert not cap.messages(PingReq)
    assert not events(sim, "suspect")


def test_probe_timeout_sends_ping_req_through_k_members() -> None:
    """A probe unanswered within probe_timeout is retried through
    ``indirect_checks`` distinct other members, who ping the target and nack
    when it stays silent; with every nack back, the prober's health score is
    untouched and the target becomes suspect at the end of the period."""
    sim = cluster(6)
    victim = addr(5)
    sim.crash(victim)
    cap = Capture(sim)
    etas = {a: m.probe_eta(nid(5), sim.now) for a, m in sim.nodes.items()}
    prober = min(etas, key=lambda a: etas[a] or 1e9)
    sim.run_for((etas[prober] or 0) - sim.now + 2 * CFG.probe_interval)
    t_ping, _, _, ping = cap.messages(Ping, src=prober, dst=victim)[0]
    reqs = [x for x in cap.messages(PingReq, src=prober) if x[3].seq == ping.seq]
    assert len(reqs) == CFG.indirect_checks
    relays = {d for _, _, d, _ in reqs}
    assert len(relays) == CFG.indirect_checks and victim not in relays and prober not in relays
    for t, _, _, req in reqs:
        assert req.target == nid(5) and req.target_addr == victim
        assert CFG.probe_timeout <= t - t_ping <= CFG.probe_timeout + TICK + 1e-9
    assert {s for _, s, _, _ in cap.messages(Ping, dst=victim)} >= relays
    nacks = [x for x in cap.messages(Nack, dst=prober) if x[3].seq == ping.seq]
    assert {s for _, s, _, _ in nacks} == relays
    p = sim.nodes[prober]
    assert p.stats["nacks_received"] >= len(relays)
    assert p.awareness == 0
    suspects = [(t, a) for t, a, _ in events(sim, "suspect", nid(5)) if a == prober]
    assert suspects and suspects[0][0] <= t_ping + CFG.probe_interval + 2 * TICK


def test_indirect_ack_prevents_suspicion() -> None:
    """When the direct path between two members is broken but others can reach
    the target, the relayed ack counts: no suspicion is raised."""
    sim = cluster(5)
    sim.block(addr(0), addr(1))
    sim.block(addr(1), addr(0))
    sim.run_for(40)
    a = node(sim, 0)
    assert a.stats["indirect_acks"] >= 5
    assert a.stats["probe_failures"] == 0
    assert not events(sim, "suspect")
    assert state_of(sim, 0, 1) == "alive"


def test_unanswered_member_is_suspected_then_declared_dead_after_the_timeout() -> None:
    """No ack (direct or indirect) → suspect; no refutation within the
    suspicion timeout → dead, at every member.  In a 3-node cluster no
    confirmations are expected (k = 0), so the timeout is the minimum."""
    sim = cluster(3)
    sim.crash(addr(2))
    assert sim.run_until_true(lambda: all(state_of(sim, i, 2) == "dead" for i in (0, 1)), 30)
    lo = suspicion_timeout(CFG.suspicion_mult, 3, CFG.probe_interval)
    assert lo == 4.0
    for viewer in (addr(0), addr(1)):
        t_s = min(t for t, a, _ in events(sim, "suspect", nid(2)) if a == viewer)
        t_d = min(t for t, a, _ in events(sim, "dead", nid(2)) if a == viewer)
        assert lo - 1e-9 <= t_d - t_s <= lo + TICK + 0.01
    assert sum(node(sim, i).stats["dead_declared"] for i in (0, 1)) >= 1


def test_suspected_member_refutes_by_bumping_its_incarnation() -> None:
    """A live member that hears it is suspected gossips Alive with a higher
    incarnation; every member takes it back as alive and nobody declares it dead."""
    sim = cluster(4)
    b = node(sim, 1)
    inc = b.incarnation
    sim.inject(addr(0), addr(2), packet(Suspect(inc, nid(1), nid(0))))
    sim.run_for(10)
    assert b.incarnation == inc + 1
    assert b.stats["refuted"] == 1
    assert [e.member.node_id for _, a, e in events(sim, "refuted")] == [nid(1)]
    assert events(sim, "suspect", nid(1))
    for i in (0, 2, 3):
        m = node(sim, i).member(nid(1))
        assert m is not None and m.state == "alive" and m.incarnation == inc + 1
    assert not events(sim, "dead")


def test_buddy_system_probe_of_a_suspect_carries_the_suspicion() -> None:
    """Buddy system: when a node probes a member it suspects, the ping carries
    a Suspect from the prober, so the suspect learns of it at once."""
    m = lone_node_with_peers(1)
    m.receive(("10.0.0.2", 7005), packet(Suspect(0, "p1", "rumour")), 0.0)
    assert m.member("p1").state == "suspect"  # type: ignore[union-attr]
    probe_packets = []
    t = 0.0
    for _ in range(30):
        t += TICK
        for _, data in m.tick(t).datagrams:
            msgs = wire.decode_packet(data)
            if any(isinstance(x, Ping) for x in msgs):
                probe_packets.append(msgs)
    assert probe_packets
    assert all(
        any(isinstance(x, Suspect) and x.from_id == "me" and x.node_id == "p1" for x in msgs)
        for msgs in probe_packets
    )


def test_suspect_is_told_directly_even_when_no_rumour_can_reach_it() -> None:
    """Between its probes, a node holding a suspicion pings the suspect with it
    (at fractions of the minimum timeout), and the suspect refutes on hearing it."""
    sim = cluster(8)
    cap = Capture(sim)
    accuser, subject = 3, 6
    for i in range(8):
        sim.block(addr(subject), addr(i))  # the subject cannot answer anyone
        if i != accuser:
            sim.block(addr(i), addr(subject))  # and only the accuser reaches it
    t0 = sim.now
    sim.inject(addr(0), addr(accuser), packet(Suspect(0, nid(subject), "rumour")))
    lo = suspicion_timeout(CFG.suspicion_mult, 8, CFG.probe_interval)
    sim.run_for(lo)
    direct = [
        t
        for t, s, d, msgs in cap.log
        if s == addr(accuser)
        and d == addr(subject)
        and any(isinstance(m, Ping) for m in msgs)
        and any(isinstance(m, Suspect) and m.from_id == nid(accuser) for m in msgs)
    ]
    assert len(direct) >= 3, "the accuser did not keep telling the suspect"
    assert direct[0] - t0 <= 0.25 * lo + TICK + 0.01
    assert node(sim, subject).stats["refuted"] >= 1


def test_stale_accusations_are_answered_with_the_newer_alive() -> None:
    """Whoever gossips an accusation older than what we know (it missed a
    refutation) is sent the newer Alive directly -- about us or about another
    member -- so its own suspicion timer does not run out on a live node."""
    m = lone_node_with_peers(2)
    m.receive(("10.0.0.2", 7001), packet(Alive(3, "p1", ("10.0.0.2", 7001), {})), 0.0)
    m.set_meta({"x": 1})  # our incarnation is now 1
    src = ("10.0.0.7", 7000)
    for stale in (Suspect(1, "p1", "p2"), Dead(2, "p1", "p2"), Suspect(0, "me", "p2"), Dead(0, "me", "p2")):
        out = m.receive(src, packet(stale), 1.0)
        sent = [(d, x) for d, data in out.datagrams for x in wire.decode_packet(data)]
        alives = [x for d, x in sent if d == src and isinstance(x, Alive) and x.node_id == stale.node_id]
        assert alives and alives[0].incarnation == (3 if stale.node_id == "p1" else 1)
    assert m.member("p1").state == "alive" and m.incarnation == 1  # type: ignore[union-attr]
    assert m.stats["corrections_sent"] == 4
    # rate-limited: a flood of stale rumours does not become a flood of answers
    for _ in range(100):
        m.receive(src, packet(Suspect(1, "p1", "p2")), 1.0)
    assert m.stats["corrections_sent"] <= 4 + 16


# ---------------------------------------------------------------- Lifeguard


def test_local_health_stretches_probe_interval_and_timeout_when_acks_and_nacks_are_missed() -> None:
    """Lifeguard LHA: a node that hears nothing back (no acks, no nacks) raises
    its health score to the maximum, which multiplies its probe interval and
    probe timeout -- it accuses others less often and more patiently."""
    sim = cluster(9)
    deaf = addr(0)
    for i in range(1, 9):
        sim.block(addr(i), deaf)
    m = node(sim, 0)
    probe_starts: list[float] = []
    indirect_after: list[float] = []
    last = dict(m.stats)
    for _ in range(250):  # 25 s, sampled every tick
        sim.run_for(TICK)
        if m.stats["probes_sent"] > last["probes_sent"]:
            probe_starts.append(sim.now)
        if m.stats["ping_reqs_sent"] > last["ping_reqs_sent"]:
            indirect_after.append(sim.now - probe_starts[-1])
        last = dict(m.stats)
    top = CFG.awareness_max_multiplier
    assert m.multiplier == top
    gaps = [b - a for a, b in itertools.pairwise(probe_starts)]
    assert gaps[0] == pytest.approx(CFG.probe_interval, abs=TICK + 0.01)
    assert gaps[-1] == pytest.approx(CFG.probe_interval * top, abs=TICK + 0.01)
    assert indirect_after[0] == pytest.approx(CFG.probe_timeout, abs=TICK + 0.01)
    assert indirect_after[-1] == pytest.approx(CFG.probe_timeout * top, abs=TICK + 0.01)


def test_local_health_recovers_with_successful_probes() -> None:
    """Each successful probe lowers the health score by one, back to healthy."""
    m = lone_node_with_peers(3)
    m.awareness = 5
    run_by_hand(m, 0.0, 25.0)
    assert m.awareness == 0
    assert m.stats["acks_received"] >= 5


def test_nacks_keep_the_health_score_when_the_target_is_really_down() -> None:
    """A failed probe whose intermediaries all nack is the target's fault,
    not ours: the score does not rise (contrast with the deaf node above)."""
    sim = cluster(6)
    sim.crash(addr(5))
    sim.run_for(15)
    for i in range(5):
        assert node(sim, i).awareness == 0
    assert sum(node(sim, i).stats["probe_failures"] for i in range(5)) >= 1


def test_suspicion_timeout_shrinks_with_independent_confirmations() -> None:
    """Lifeguard's dynamic suspicion: max timeout with no confirmation, min
    with k, logarithmic in between; repeats and the accuser do not count."""
    lo, hi, k = 4.0, 24.0, 2
    assert remaining_timeout(0, k, lo, hi) == hi
    assert remaining_timeout(k, k, lo, hi) == lo
    assert remaining_timeout(10, k, lo, hi) == lo
    assert lo < remaining_timeout(1, k, lo, hi) < hi
    assert remaining_timeout(0, 0, lo, hi) == lo
    s = Suspicion("a", 0, k, lo, hi, start=100.0)
    assert s.deadline == 100.0 + hi
    assert not s.confirm("a")
    assert s.confirm("b") and not s.confirm("b")
    mid = s.deadline
    assert 100.0 + lo < mid < 100.0 + hi
    assert s.confirm("c") and s.deadline == 100.0 + lo
    assert not s.confirm("d")  # k reached
    assert confirmations_wanted(4, 10) == 2 and confirmations_wanted(4, 3) == 0


def test_confirmations_declare_a_suspect_dead_sooner() -> None:
    """In the core: a lone accusation waits the maximum timeout, two further
    independent accusers bring it down to the minimum."""
    n_peers = 9
    lo, hi = suspicion_timeout(4, n_peers + 1, 1.0), 6 * suspicion_timeout(4, n_peers + 1, 1.0)

    def time_to_dead(accusers: list[str]) -> float:
        m = lone_node_with_peers(n_peers)
        for a in accusers:
            m.receive(("10.0.0.2", 7001), packet(Suspect(0, "p5", a)), 0.0)
        evs = run_by_hand(m, 0.0, hi + 2)
        dead = [e for e in evs if e.kind == "dead" and e.member.node_id == "p5"]
        assert len(dead) == 1
        return dead[0].member.state_since

    assert time_to_dead(["p1"]) == pytest.approx(hi, abs=TICK + 1e-6)
    assert time_to_dead(["p1", "p2", "p2", "p1"]) < hi - 1
    assert time_to_dead(["p1", "p2", "p3"]) == pytest.approx(lo, abs=TICK + 1e-6)


# --------------------------------------------------------- leave, push-pull


def test_graceful_leave_is_disseminated_as_left_not_dead() -> None:
    """A node that leaves is seen as ``left`` by every member (never suspect
    or dead), even though it stops answering; after dead_reclaim_time it is
    forgotten."""
    sim = cluster(6)
    out = sim.call(addr(4), lambda m, now: m.leave(now))
    assert len(out.datagrams) >= 3  # told several members at once
    sim.run_for(1.0)
    sim.crash(addr(4))
    sim.run_for(20)
    for i in (0, 1, 2, 3, 5):
        assert state_of(sim, i, 4) == "left"
    assert {a for _, a, _ in events(sim, "left", nid(4))} == {addr(i) for i in (0, 1, 2, 3, 5)}
    assert not events(sim, "dead", nid(4)) and not events(sim, "suspect", nid(4))
    sim.run_for(CFG.dead_reclaim_time)
    assert all(state_of(sim, i, 4) is None for i in (0, 1, 2, 3, 5))


def test_push_pull_merges_two_clusters() -> None:
    """Two clusters formed apart become one after a single join across:
    push-pull exchanges full state and gossip spreads it."""
    sim = Simulator(3)
    for i in range(8):
        sim.add_node(addr(i), new_node(sim, i))
    for i in (1, 2, 3):
        sim.call(addr(i), lambda m, now: m.join([addr(0)], now))
    for i in (5, 6, 7):
        sim.call(addr(i), lambda m, now: m.join([addr(4)], now))
    sim.run_for(5)
    assert alive_count(node(sim, 0)) == 4 and alive_count(node(sim, 4)) == 4
    sim.call(addr(2), lambda m, now: m.join([addr(6)], now))
    # gossip spreads most of it; the periodic push-pull guarantees the rest
    assert sim.run_until_true(
        lambda: all(alive_count(m) == 8 for m in sim.nodes.values()), CFG.push_pull_interval + 5
    )


def test_push_pull_treats_a_remote_dead_record_as_suspicion() -> None:
    """Someone else's "dead" may be stale: merged push-pull state makes a live
    member suspect (so it can refute), not dead; a remote "left" is taken as is."""
    m = lone_node_with_peers(4)
    states = [
        MemberState("p1", ("10.0.0.2", 7001), {}, 2, 0),
        MemberState("p2", ("10.0.0.2", 7002), {}, 3, 0),
        MemberState("p3", ("10.0.0.2", 7003), {}, 1, 0),
    ]
    out = m.receive(("10.0.0.2", 7004), packet(PushPull(1, False, False, 0, 1, states)), 0.0)
    assert {(e.kind, e.member.node_id) for e in out.events} == {
        ("suspect", "p1"),
        ("left", "p2"),
        ("suspect", "p3"),
    }
    # a request is answered with our own full state
    replies = [msg for _, d in out.datagrams for msg in wire.decode_packet(d) if isinstance(msg, PushPull)]
    assert replies and all(r.reply for r in replies)
    assert {s.node_id for r in replies for s in r.members} == {"me", "p1", "p2", "p3", "p4"}


def test_state_larger_than_a_packet_travels_in_chunks() -> None:
    """Full state of many members is split into packets within the limit and
    all of it arrives."""
    m = lone_node_with_peers(0)
    alive = [
        Alive(0, f"peer-{i:03d}", ("10.0.0.3", 9000 + i), {"http": f"h{i}", "x": "y" * 40})
        for i in range(120)
    ]
    for i in range(0, 120, 10):
        m.receive(("10.0.0.3", 9000), packet(*alive[i : i + 10]), 0.0)
    out = m.join([("10.0.0.4", 7000)], 0.0)
    assert len(out.datagrams) > 3
    assert all(len(d) <= CFG.max_packet_bytes for _, d in out.datagrams)
    got = {
        s.node_id
        for _, d in out.datagrams
        for msg in wire.decode_packet(d)
        if isinstance(msg, PushPull)
        for s in msg.members
    }
    assert len(got) == 121


def test_incomplete_push_pull_reply_is_asked_again() -> None:
    """A reply whose chunks did not all arrive (UDP loss) makes the requester
    ask again after two probe intervals, a bounded number of times; a
    complete reply ends the exchange."""
    seed = lone_node_with_peers(0)
    alive = [Alive(0, f"peer-{i:03d}", ("10.0.0.3", 9000 + i), {"pad": "y" * 60}) for i in range(100)]
    for i in range(0, 100, 10):
        seed.receive(("10.0.0.3", 9000), packet(*alive[i : i + 10]), 0.0)
    joiner = Membership("j", ("10.0.0.8", 7000), {}, CFG, random.Random(2), 0.0)

    def exchange(now: float, keep: Any) -> int:
        """Deliver the joiner's requests to the seed (others are lost), and the
        chunks of the seed's replies that ``keep(i)`` lets through; count them."""
        requests = 0
        for dst, data in joiner.tick(now).datagrams:
            msgs = wire.decode_packet(data)
            if dst == seed.addr and any(isinstance(x, PushPull) and not x.reply for x in msgs):
                requests += 1
                out = seed.receive(joiner.addr, data, now)
                replies = [d for _, d in out.datagrams]
                for i, d in enumerate(replies):
                    if keep(i):
                        joiner.receive(seed.addr, d, now)
        return requests

    out = joiner.join([seed.addr], 0.0)
    replies = [d for _, d in seed.receive(joiner.addr, out.datagrams[0][1], 0.0).datagrams]
    for _, d in out.datagrams[1:]:
        replies += [x for _, x in seed.receive(joiner.addr, d, 0.0).datagrams]
    assert len(replies) > 4
    joiner.receive(seed.addr, replies[0], 0.0)  # only the first chunk arrives
    assert len(joiner.members()) < 50
    assert exchange(1.0, lambda i: True) == 0  # not yet
    assert exchange(2.05, lambda i: i % 2 == 0) >= 1  # asked again; half arrives
    assert exchange(4.1, lambda i: True) >= 1  # asked once more; all arrives
    assert len(joiner.members()) == 102
    assert sum(exchange(t, lambda i: True) for t in (6.2, 8.3, 10.4)) == 0


def test_metadata_update_propagates() -> None:
    """set_meta bumps the incarnation and every member learns the new HTTP
    address and load figures, with an ``update`` event."""
    sim = cluster(10)
    b = node(sim, 3)
    inc = b.incarnation
    meta = {
        "http": "10.9.9.9:8443",
        "version": "0.2",
        "load": {"led": 7, "mps": 1234.5, "bytes": 10**9, "mem": 0.4},
    }
    b.set_meta(meta)
    assert b.incarnation == inc + 1
    sim.run_for(5)
    for i in range(10):
        if i != 3:
            m = node(sim, i).member(nid(3))
            assert m is not None and m.meta == meta and m.incarnation == inc + 1
    assert {a for _, a, _ in events(sim, "update", nid(3))} == {addr(i) for i in range(10) if i != 3}


def test_set_meta_rejects_what_would_not_fit_a_packet() -> None:
    """Metadata over max_meta_bytes (or not encodable) is refused up front."""
    m = lone_node_with_peers(0)
    with pytest.raises(ValueError):
        m.set_meta({"blob": "x" * 1000})
    with pytest.raises(ValueError):
        m.set_meta({"x": object()})
    assert m.incarnation == 0


# ------------------------------------------------------------------ restarts


def test_restarted_node_with_higher_incarnation_is_accepted_even_if_held_dead() -> None:
    """A crashed node declared dead comes back (same id, higher incarnation from
    the adapter) and every member takes it as alive again -- at a new port too."""
    sim = cluster(5)
    sim.crash(addr(3))
    assert sim.run_until_true(lambda: all(state_of(sim, i, 3) == "dead" for i in (0, 1, 2, 4)), 40)
    new_addr = addr(3, port_base=9000)
    sim.add_node(new_addr, new_node(sim, 3, incarnation=1, address=new_addr))
    sim.call(new_addr, lambda m, now: m.join([addr(0)], now))
    sim.run_for(5)
    for i in (0, 1, 2, 4):
        m = node(sim, i).member(nid(3))
        assert m is not None and m.state == "alive" and m.incarnation == 1 and m.addr == new_addr
    assert {a for _, a, _ in events(sim, "alive", nid(3))} == {addr(i) for i in (0, 1, 2, 4)}


def test_restart_without_a_higher_incarnation_refutes_its_way_back() -> None:
    """If the adapter could not supply a higher incarnation, the restarted node
    hears it is dead, refutes past the recorded incarnation and is accepted."""
    sim = cluster(4)
    sim.crash(addr(2))
    assert sim.run_until_true(lambda: all(state_of(sim, i, 2) == "dead" for i in (0, 1, 3)), 40)
    fresh = sim.restart(addr(2), lambda now: new_node(sim, 2, incarnation=0))
    sim.call(addr(2), lambda m, now: m.join([addr(0)], now))
    sim.run_for(5)
    assert fresh.incarnation >= 1
    assert all(state_of(sim, i, 2) == "alive" for i in (0, 1, 3))


def test_same_incarnation_from_another_address_does_not_move_a_member() -> None:
    """Only a higher incarnation may move a member to a new address."""
    m = lone_node_with_peers(2)
    m.receive(("6.6.6.6", 1), packet(Alive(0, "p1", ("6.6.6.6", 1), {})), 0.0)
    assert m.member("p1").addr == ("10.0.0.2", 7001)  # type: ignore[union-attr]
    out = m.receive(("6.6.6.6", 1), packet(Alive(1, "p1", ("6.6.6.6", 1), {})), 0.0)
    assert m.member("p1").addr == ("6.6.6.6", 1)  # type: ignore[union-attr]
    assert [e.kind for e in out.events] == ["update"]


# ----------------------------------------------------------- robustness


def test_bad_packets_are_counted_and_dropped_never_raised() -> None:
    """Malformed, oversize, wrong-version and unauthenticated packets only bump
    their counters."""
    keyed = GossipConfig(cluster_key=b"0123456789abcdef")
    m = lone_node_with_peers(1, keyed)
    src = ("10.0.0.2", 7001)
    m.receive(src, b"\x01\x01" + b"\x00" * 40, 0.0)
    m.receive(src, packet(Nack(1)), 0.0)
    m.receive(src, b"\x09" * 20, 0.0)
    m.receive(src, b"\x01\x01" + b"\x00" * 2000, 0.0)
    m.receive(src, b"", 0.0)
    m.receive(src, b"\x01\x01" + b"\x00" * 32 + b"\xc1", 0.0)
    s = m.stats
    assert (s["dropped_auth"], s["dropped_version"], s["dropped_oversize"], s["dropped_decode"]) == (
        3,
        1,
        1,
        1,
    )
    plain = lone_node_with_peers(1)
    plain.receive(src, b"\x01\x00\xc1", 0.0)
    plain.receive(src, packet(Nack(1), key=b"0123456789abcdef"), 0.0)
    assert (plain.stats["dropped_decode"], plain.stats["dropped_auth"]) == (1, 1)


def test_keyed_cluster_forms_and_ignores_nodes_without_the_key() -> None:
    """With a cluster key every packet is authenticated: keyed nodes converge,
    an outsider without the key learns nothing and is not admitted."""
    key = b"sprawl-cluster-key-0001"
    keyed = GossipConfig(cluster_key=key)
    sim = cluster(4, config=keyed)
    outsider = addr(9)
    sim.add_node(outsider, new_node(sim, 9))
    sim.call(outsider, lambda m, now: m.join([addr(0)], now))
    sim.run_for(10)
    assert alive_count(sim.nodes[outsider]) == 1
    assert all(node(sim, i).member(nid(9)) is None for i in range(4))
    assert node(sim, 0).stats["dropped_auth"] >= 1


def test_ping_meant_for_another_node_is_not_acked() -> None:
    """A ping naming another node id (e.g. a stale address after a restart) is
    ignored, so the prober does not mistake us for its target."""
    m = lone_node_with_peers(1)
    out = m.receive(("10.0.0.2", 7001), packet(Ping(5, "someone-else", "p1")), 0.0)
    assert out.datagrams == [] and m.stats["ping_wrong_target"] == 1
    out = m.receive(("10.0.0.2", 7001), packet(Ping(6, "me", "p1")), 0.0)
    assert isinstance(wire.decode_packet(out.datagrams[0][1])[0], Ack)


def test_members_include_self_and_snapshots_are_copies() -> None:
    """members() lists this node too, and mutating a snapshot changes nothing."""
    m = lone_node_with_peers(2)
    ms = m.members()
    assert {x.node_id for x in ms} == {"me", "p1", "p2"}
    ms[0].state = "dead"
    ms[0].meta["x"] = 1
    me = m.member("me")
    assert me is not None and me.state == "alive" and me.meta == {}


def test_config_is_validated() -> None:
    """Inconsistent timing or limits are refused."""
    with pytest.raises(ValueError):
        GossipConfig(probe_timeout=2.0).validate()
    with pytest.raises(ValueError):
        GossipConfig(max_packet_bytes=100).validate()
    with pytest.raises(ValueError):
        GossipConfig(cluster_key=b"short").validate()
    GossipConfig().validate()


def test_next_deadline_is_when_work_is_due() -> None:
    """next_deadline() is exact: ticking before it does nothing, ticking at it
    does the due work and moves the deadline on."""
    m = lone_node_with_peers(4)
    m.receive(("10.0.0.2", 7001), packet(Suspect(0, "p2", "p3")), 0.0)  # timers of every kind
    prev, worked = 0.0, 0
    for _ in range(300):
        d = m.next_deadline()
        assert d > prev - 1e-9
        if d > prev + 1e-6:
            idle = m.tick((prev + d) / 2)
            assert idle.datagrams == [] and idle.events == []
        out = m.tick(d)
        worked += bool(out.datagrams or out.events)
        answer_pings(m, out, d)
        assert m.next_deadline() > d
        prev = d
    assert worked > 50 and prev > 30


def test_a_cluster_ticked_only_at_deadlines_works() -> None:
    """In the simulator's deadline mode (ticks only at next_deadline) a cluster
    converges and detects a crash, with far fewer ticks than every 0.1 s."""
    sim = cluster(6, tick_mode="deadline")
    sim.crash(addr(5))
    assert sim.run_until_true(lambda: all(state_of(sim, i, 5) == "dead" for i in range(5)), 60)
    assert sim.stats["ticks"] < 6 * 10 * sim.now / 2


def test_address_tuples_from_ipv6_sockets_are_accepted() -> None:
    """A (host, port, flowinfo, scope) source address is handled like (host, port)."""
    m = lone_node_with_peers(1)
    out = m.receive(("::1", 7001, 0, 0), packet(Ping(1, "me", "p1")), 0.0)  # type: ignore[arg-type]
    assert out.datagrams[0][0] == ("::1", 7001)


def test_set_meta_after_leave_does_not_undo_the_leave() -> None:
    """After leave(), a metadata change is kept locally but not gossiped as Alive."""
    m = lone_node_with_peers(2)
    m.leave(0.0)
    inc = m.incarnation
    m.set_meta({"x": 1})
    assert m.incarnation == inc
    sent = [x for t in (0.3, 0.6, 0.9) for _, d in m.tick(t).datagrams for x in wire.decode_packet(d)]
    assert not [x for x in sent if isinstance(x, Alive) and x.node_id == "me"]


member_ids = st.sampled_from(["me", "p1", "p2", "p3", "zz"])
small_incs = st.integers(0, 5)
fuzz_messages = st.one_of(
    st.builds(Ping, st.integers(0, 9), st.sampled_from(["", "me", "p1"]), member_ids),
    st.builds(Ack, st.integers(0, 2**32), member_ids),
    st.builds(Nack, st.integers(0, 2**32)),
    st.builds(PingReq, st.integers(0, 9), member_ids, st.just(("10.0.0.2", 7001)), member_ids, st.booleans()),
    st.builds(
        Alive, small_incs, member_ids, st.sampled_from([("10.0.0.2", 7001), ("10.0.0.5", 1)]), st.just({})
    ),
    st.builds(Suspect, small_incs, member_ids, member_ids),
    st.builds(Dead, small_incs, member_ids, member_ids),
    st.builds(Leave, small_incs, member_ids),
    st.builds(
        PushPull,
        st.integers(0, 3),
        st.booleans(),
        st.booleans(),
        st.integers(0, 3),
        st.integers(1, 3),
        st.lists(
            st.builds(
                MemberState,
                member_ids,
                st.just(("10.0.0.2", 7002)),
                st.just({}),
                st.integers(0, 3),
                small_incs,
            ),
            max_size=3,
        ),
    ),
)


@settings(max_examples=40)
@given(st.lists(st.tuples(st.floats(0, 3), st.lists(fuzz_messages, min_size=1, max_size=4)), max_size=25))
def test_arbitrary_valid_messages_keep_the_core_consistent(script: list[tuple[float, list[Message]]]) -> None:
    """Any sequence of well-formed messages and ticks: the core never raises,
    this node stays alive in its own view, its incarnation never decreases,
    and every datagram it sends fits a packet."""
    m = lone_node_with_peers(3)
    now, last_inc = 0.0, m.incarnation
    for dt, msgs in script:
        now += dt
        outs = [m.receive(("10.0.0.2", 7001), packet(*msgs), now), m.tick(now)]
        me = m.member("me")
        assert me is not None and me.state == "alive"
        assert m.incarnation >= last_inc
        last_inc = m.incarnation
        for out in outs:
            for _, data in out.datagrams:
                assert len(data) <= CFG.max_packet_bytes
                wire.decode_packet(data)
    assert isinstance(m.members()[0], Member)
