"""No Assign follows a failover's commit (issue 23, apply36): every node
applies the committed ``set_partitions`` entry and its replica sync tells
its replicas (the new leader takes over and says so), so the two Assigns per
partition the controller sent once the proposal was answered -- to the new
leader and the follower, whose node was still applying the same entry --
were answered again, or queued behind the apply.  Most partitions of a
10,000-topic failover were still unconfirmed when the answer came (the
controller answers after its own last slice, the other survivor applies
later), so this was two frames per moved partition.  The dead nodes the
Assigns told the survivors of ride on the fences instead, which come first.

An unconfirmed leader is still asked (its word may be lost): after
``beat_timeout_ticks`` while its node is heard, every ``retry_ticks`` when
it is not.  Counted, not timed."""

from __future__ import annotations

from typing import Any

import msgspec
from test_controller_cost import _b_dies, _leaders, _plane
from twisted.internet import defer

from sprawl.cluster.metadata import Metadata
from sprawl.peer.frames import REPLICATION_BATCH
from sprawl.replication.envelope import Envelope
from sprawl.replication.failover import FailoverCore
from sprawl.replication.messages import Assign, Fence, FenceResp, LeaderBeat, decode, encode

IDS = ("a", "b", "c")


def _messages(frames: list[tuple[str, int, bytes]]) -> list[tuple[str, Any]]:
    """(peer, message) of every message the frames carry, in order."""
    out = []
    for dst, kind, payload in frames:
        for one in (
            msgspec.msgpack.decode(payload, type=list[bytes]) if kind == REPLICATION_BATCH else [payload]
        ):
            out.append((dst, decode(msgspec.msgpack.decode(one, type=Envelope).message)))
    return out


def test_a_dead_nodes_10000_failovers_send_no_assign_after_the_commit() -> None:
    """b (leader of 10,000 partitions) dies; a (the controller) fences, c and
    a answer, the choices are committed in one proposal: the fences to c
    carry b as down, in one frame, and from the commit on nothing goes to any
    node -- not at the commit, nor in the ten ticks after it (the new
    leaders' nodes, a and c -- half each -- apply the entry and say they
    lead on their own; c beats the controller meanwhile)."""
    n = 10_000
    proposed: list[dict[str, Any]] = []
    meta_box: list[Metadata] = []

    def propose(cmd: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
        proposed.append(cmd)
        return defer.succeed(meta_box[0].apply(len(proposed) + 1, cmd))

    plane, states, clock = _plane(
        n, propose=propose, leader="b", features=("node-beat", "epoch-batch", "repl-batch")
    )
    meta_box.append(plane.control.metadata)
    frames: list[tuple[str, int, bytes]] = []
    plane.service.channel.send = lambda dst, kind, payload: frames.append((dst, kind, payload))  # type: ignore[attr-defined]
    plane.service.member_event("dead", "b")  # (gossip's word reaches the service, as on a node)
    assert _b_dies(plane, states, clock) == n
    fences = _messages(frames)
    to_c = [m for dst, m in fences if dst == "c"]
    assert len(to_c) == n and all(isinstance(m, Fence) and m.down == ("b",) for m in to_c)
    assert len([f for f in frames if f[0] == "c"]) == 1  # one frame, not 10,000
    frames.clear()
    for key, c in plane.service.controllers.items():
        assert c.fencing is not None
        for node in ("a", "c"):
            resp = FenceResp(c.fencing.epoch, True, 1, 0)
            plane.service._deliver(node, Envelope(key[0], key[1], encode(resp)))
    clock.advance(0)  # the batch is proposed, committed, and each core told
    assert [len(c["items"]) for c in proposed] == [n]
    cores = plane.service.controllers.values()
    assert all(c.epoch == 2 and not c.busy for c in cores)
    assert _leaders(cores) == {"a": n // 2, "c": n // 2}  # (split evenly: a and c were alike)
    for _ in range(10):
        plane.service.heard("c", 1)  # c beats the controller, as a live node does
        plane.service.tick()
        clock.advance(0.1)
    assert _messages(frames) == []


def _committed(assign_on_commit: bool) -> FailoverCore:
    """A core whose dead leader a was fenced and b chosen at epoch 2, committed."""
    c = FailoverCore(IDS, epoch=1, leader="a", assign_on_commit=assign_on_commit)
    c.leader_confirmed = True
    c.start_failover()
    c.receive("b", FenceResp(2, True, 1, 10))
    assert c.receive("c", FenceResp(2, True, 1, 9)).commit is not None
    return c


def test_an_unconfirmed_leader_is_asked_again_only_after_the_beat_timeout() -> None:
    """Without ``assign_on_commit`` the commit sends nothing; a leader whose
    node is heard is asked (one Assign, to it alone) only once
    ``beat_timeout_ticks`` passed without its word; one whose node is not
    heard is asked at the first tick, as before; its word ends the asking."""
    c = _committed(assign_on_commit=False)
    assert c.committed(True).messages == []
    sent = {t: c.tick(leader_heard=True).messages for t in range(1, 31)}
    asked = [t for t, ms in sent.items() if ms]
    assert asked and asked[0] > c.beat_timeout_ticks
    assert all(sent[t] == [("b", Assign(2, "b", IDS))] for t in asked)
    c.receive("b", LeaderBeat(2, 0, 11))
    assert c.leader_confirmed and c.idle
    d = _committed(assign_on_commit=False)
    d.committed(True)
    assert d.tick(leader_heard=False).messages == [("b", Assign(2, "b", IDS))]


def test_by_default_the_commit_is_told_to_every_replica() -> None:
    """A core without the adapter's word that each node applies the commit
    (the pure simulations) tells the replicas, as before."""
    c = _committed(assign_on_commit=True)
    assert sorted(dst for dst, m in c.committed(True).messages if isinstance(m, Assign)) == list(IDS)


def test_a_leaders_word_before_this_node_applied_the_commit_confirms_it() -> None:
    """The new leader's node applied the entry before the controller's node
    did (each applies a 10,000-partition entry in slices): its beat for the
    epoch being committed comes while the core still commits -- before, it
    was dropped (another epoch than the core's), and the leader was asked
    again only after the beat timeout.  It counts once the commit is
    answered: confirmed, idle, nothing sent.  A beat of another epoch or
    from another replica does not."""
    c = _committed(assign_on_commit=False)
    c.receive("b", LeaderBeat(2, 0, 11))
    assert not c.leader_confirmed  # (the commit is not answered yet)
    assert c.committed(True).messages == [] and c.leader_confirmed and c.idle
    for beat in (("b", LeaderBeat(1, 0, 11)), ("c", LeaderBeat(2, 0, 11))):
        d = _committed(assign_on_commit=False)
        d.receive(*beat)
        assert d.committed(True).messages == [] and not d.leader_confirmed and not d.idle
