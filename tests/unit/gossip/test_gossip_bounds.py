"""Gossip bounds against hostile or broken peers (:mod:`sprawl.gossip.membership`
and the adapter's incarnation writes in :mod:`sprawl.gossip.udp`).

* incarnations are bounded: an update claiming an absurd one is dropped, a
  refutation goes just above the accusation and never past what peers take;
* push-pull answers are rate-limited per source address and in total;
* at most ``max_new_members_per_packet`` members are learned from one packet;
* the refutation's ``gossip.json`` write leaves the reactor (the node's
  ``save`` runs it elsewhere), a burst of changes costs at most two writes,
  and nothing carrying an unsaved incarnation leaves before it is saved.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from sprawl.gossip import GossipConfig, Membership, wire
from sprawl.gossip.incarnation_file import load_incarnation, save_incarnation
from sprawl.gossip.membership import MAX_INCARNATION
from sprawl.gossip.messages import Alive, Dead, MemberState, Message, Ping, PushPull, Suspect
from sprawl.gossip.udp import GossipNode

SRC = ("10.0.0.2", 7001)


def packet(*msgs: Message) -> bytes:
    return wire.encode_packet(list(msgs))


def me(config: GossipConfig | None = None, incarnation: int = 5) -> Membership:
    return Membership(
        "me", ("10.0.0.9", 7000), {}, config or GossipConfig(), random.Random(1), 0.0, incarnation
    )


def sent(out: Any) -> list[Message]:
    return [
        m for _dst, data in out.datagrams for m in wire.decode_packet(data, None, wire.ABSOLUTE_MAX_PACKET)
    ]


def test_absurd_accusations_of_this_node_are_dropped() -> None:
    """Suspect/Dead/Alive about this node at the wire's top incarnation, or further
    above ours than any restart could explain, change nothing: no refutation, no
    incarnation jump (the issue's Suspect(self, 2**63-1))."""
    m = me()
    for msg in (
        Suspect(2**63 - 1, "me", "x"),
        Dead(MAX_INCARNATION, "me", "x"),
        Alive(MAX_INCARNATION - 1 + 10, "me", ("6.6.6.6", 1), {}),
        Suspect(5 + m.config.max_incarnation_jump + 1, "me", "x"),
    ):
        m.receive(SRC, packet(msg), 1.0)
    assert m.incarnation == 5
    assert m.stats["refuted"] == 0
    assert m.stats["dropped_absurd"] == 4


def test_a_refutation_goes_just_above_the_accusation() -> None:
    """A plausible accusation (a peer remembers a higher incarnation of us, as after
    a lost data dir) is refuted at accused + 1, never more."""
    m = me()
    out = m.receive(SRC, packet(Suspect(1000, "me", "x")), 1.0)
    assert m.incarnation == 1001 and m.stats["refuted"] == 1
    m.tick(1.2)
    m.receive(SRC, packet(Suspect(3, "me", "x")), 2.0)  # stale: nothing to refute
    assert m.incarnation == 1001
    m.receive(SRC, packet(Suspect(1001, "me", "x")), 3.0)  # ours: ours + 1
    assert m.incarnation == 1002
    assert any(isinstance(msg, Alive) and msg.incarnation == 1001 for msg in sent(out))


def test_the_largest_accusation_taken_still_refutes_within_bounds() -> None:
    """Even the highest accusation taken leaves the refutation at MAX_INCARNATION,
    which every peer's core takes (nothing above it is ever sent)."""
    cfg = GossipConfig(max_incarnation_jump=2**62)
    m = me(cfg, incarnation=MAX_INCARNATION - 10)
    m.receive(SRC, packet(Suspect(MAX_INCARNATION - 1, "me", "x")), 1.0)
    assert m.incarnation == MAX_INCARNATION
    peer = Membership("p", SRC, {}, cfg, random.Random(2), 0.0)
    peer.receive(("10.0.0.9", 7000), packet(Alive(m.incarnation, "me", ("10.0.0.9", 7000), {})), 1.0)
    assert peer.member("me") is not None and peer.member("me").incarnation == MAX_INCARNATION  # type: ignore[union-attr]
    assert peer.stats["dropped_absurd"] == 0


def test_absurd_updates_about_others_are_dropped() -> None:
    """An Alive moving a known member far beyond its incarnation (or any member
    past MAX_INCARNATION) is dropped: the member keeps its address."""
    m = me()
    m.receive(SRC, packet(Alive(3, "a", ("10.0.0.3", 7003), {})), 1.0)
    m.receive(SRC, packet(Alive(3 + m.config.max_incarnation_jump + 1, "a", ("6.6.6.6", 6666), {})), 2.0)
    m.receive(SRC, packet(Alive(MAX_INCARNATION + 1, "b", ("6.6.6.6", 6666), {})), 2.0)
    a = m.member("a")
    assert a is not None and a.addr == ("10.0.0.3", 7003) and a.incarnation == 3
    assert m.member("b") is None
    assert m.stats["dropped_absurd"] == 2


def test_members_learned_per_packet_are_capped() -> None:
    """One packet (here a push-pull chunk of 200 members) teaches at most
    max_new_members_per_packet new members; the rest are counted and ignored."""
    cfg = GossipConfig(max_new_members_per_packet=10, max_packet_bytes=65507)
    m = me(cfg)
    members = [MemberState(f"f{i}", ("10.1.0.1", 1000 + i), {}, 0, 1) for i in range(200)]
    m.receive(SRC, packet(PushPull(1, False, True, 0, 1, members)), 1.0)
    assert len(m.members()) == 1 + 10
    assert m.stats["dropped_members_cap"] == 190


def test_push_pull_answers_are_rate_limited_per_source() -> None:
    """A stream of push-pull requests from one address, each with a new ``req`` (or
    replayed with a spoofed source), gets a burst of answers, then one a second --
    while another source is still answered."""
    cfg = GossipConfig()
    m = me(cfg)

    def ask(src: tuple[str, int], req: int, now: float) -> int:
        out = m.receive(src, packet(PushPull(req, False, False, 0, 1, [])), now)
        return sum(1 for msg in sent(out) if isinstance(msg, PushPull) and msg.reply)

    answered = sum(ask(SRC, req, 1.0) for req in range(100))
    assert answered == cfg.push_pull_replies_burst
    assert m.stats["push_pulls_limited"] == 100 - cfg.push_pull_replies_burst
    assert ask(("10.0.0.3", 7003), 1, 1.0) == 1
    assert ask(SRC, 500, 1.5) == 0
    assert ask(SRC, 501, 2.1) == 1  # a second later: one more


def test_push_pull_answers_are_rate_limited_in_total() -> None:
    """Requests from ever new (spoofed) source addresses are bounded by the total rate."""
    cfg = GossipConfig(push_pull_replies_total_burst=20, push_pull_replies_total_per_second=5.0)
    m = me(cfg)
    answered = 0
    for i in range(300):
        out = m.receive(
            (f"10.9.{i // 250}.{i % 250}", 9000), packet(PushPull(i, False, False, 0, 1, [])), 1.0
        )
        answered += sum(1 for msg in sent(out) if isinstance(msg, PushPull) and msg.reply)
    assert answered == 20


class _Transport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def write(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))


def test_refutation_writes_leave_the_reactor_and_coalesce(tmp_path: Path) -> None:
    """The node's ``save`` (a thread pool in the real node) writes gossip.json: while a
    write is in flight, datagrams wait, and a burst of 50 refutations costs two writes
    -- the one in flight and one with the latest value -- after which everything is
    sent, no packet ever carrying an incarnation that is not on disk."""
    clock = task.Clock()
    pending: list[tuple[int, defer.Deferred[None]]] = []

    def save(data_dir: str, n: int) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        pending.append((n, d))
        return d

    g = GossipNode("me", GossipConfig(), clock, random.Random(1), str(tmp_path), save=save)
    t = _Transport()
    g.makeConnection(t)  # type: ignore[arg-type]
    g.start(("10.0.0.9", 7000))
    assert len(pending) == 1 and t.sent == []  # the start's own incarnation first
    n, d = pending.pop()
    save_incarnation(str(tmp_path), n)
    d.callback(None)
    for i in range(50):
        g.datagramReceived(packet(Suspect(g.incarnation, "me", "x"), Ping(i, "me", "x")), SRC)
    assert g.stats["refuted"] == 50
    assert len(pending) == 1, "one write in flight"
    assert t.sent == [], "acks and refutations wait for it"
    n, d = pending.pop()
    save_incarnation(str(tmp_path), n)
    d.callback(None)
    assert len(pending) == 1 and pending[0][0] == g.incarnation, "then one write with the latest value"
    n, d = pending.pop()
    save_incarnation(str(tmp_path), n)
    d.callback(None)
    assert pending == []
    assert g.adapter_stats["incarnation_saves"] == 3
    on_disk = load_incarnation(str(tmp_path))
    assert on_disk == g.incarnation
    carried = [
        msg.incarnation
        for data, _ in t.sent
        for msg in wire.decode_packet(data, None, wire.ABSOLUTE_MAX_PACKET)
        if isinstance(msg, Alive) and msg.node_id == "me"
    ]
    assert carried and max(carried) <= on_disk
    assert (
        sum(1 for data, _ in t.sent for msg in wire.decode_packet(data) if type(msg).__name__ == "Ack") == 50
    )


def test_an_absurd_saved_incarnation_is_ignored(tmp_path: Path) -> None:
    """A gossip.json holding an incarnation past the bound (written by an older
    version after a hostile Suspect) is ignored, so the node starts within bounds."""
    save_incarnation(str(tmp_path), 2**63 - 1)
    assert load_incarnation(str(tmp_path)) is None
    save_incarnation(str(tmp_path), MAX_INCARNATION - 1)
    assert load_incarnation(str(tmp_path)) == MAX_INCARNATION - 1
