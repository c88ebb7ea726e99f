"""The Raft driver on real LMDB stores and the real reactor: three drivers
wired to each other in-process elect a leader, commit and apply proposals
on every node, answer ReadIndex reads, and never send a message before what it
promises is on disk (persist → send → apply → advance) -- except the leader's
appends, which leave while the leader writes them (Raft thesis 10.2.1) and
whose commit index never counts a copy that is not on disk."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import LoopingCall

from harness import WAIT, bounded, the_reactor
from sprawl.raft.driver import RaftDriver
from sprawl.raft.lmdb_storage import LmdbRaftStorage
from sprawl.raft.messages import ConfState, Entry, Message, MessageType
from sprawl.raft.node import Config
from sprawl.storage.lmdb import LmdbStore

IDS = (1, 2, 3)


class Peer:
    """One driver with its store; records applied entries and send-time violations."""

    def __init__(self, rid: int, path: Path, net: dict[int, Peer]) -> None:
        self.rid = rid
        self.net = net
        self.store = LmdbStore(str(path / f"lmdb{rid}"), reactor=the_reactor(), map_size=32 * 1024**2)
        self.store.open()
        self.applied: list[bytes] = []
        self.violations: list[str] = []
        #: Appends sent with entries this (leading) node had not yet written.
        self.early_appends = 0
        self.driver: RaftDriver | None = None

    async def start(self) -> None:
        storage = await LmdbRaftStorage.open(self.store, ConfState(voters=IDS))
        self.driver = RaftDriver(
            storage,
            Config(id=self.rid, election_tick=10, heartbeat_tick=1),
            the_reactor(),
            random.Random(self.rid),
            self.send,
            self.apply,
            lambda snap: None,
            tick_seconds=0.01,
        )
        self.driver.start()

    def send(self, m: Message) -> None:
        """Check that what ``m`` promises is already durable, then deliver it."""
        assert self.driver is not None
        storage = self.driver.storage
        hs = storage.hard_state  # replayed from LMDB only after a commit: durable
        prevote = (MessageType.PRE_VOTE, MessageType.PRE_VOTE_RESP)  # carry the next term by design
        if m.term > hs.term and m.type not in prevote:
            self.violations.append(f"{m.type.name} of term {m.term} sent before the term was on disk")
        if m.type == MessageType.APP_RESP and not m.reject and m.index > storage.last_index():
            self.violations.append(f"append of {m.index} acknowledged before it was on disk")
        if m.type == MessageType.VOTE_RESP and not m.reject and hs.vote != m.to:
            self.violations.append(f"vote for {m.to} sent before it was on disk")
        if m.type == MessageType.APP and m.entries and m.entries[-1].index > storage.last_index():
            self.early_appends += 1  # allowed: the leader writes them meanwhile (its term is on disk)
        if m.type in (MessageType.APP, MessageType.HEARTBEAT) and m.commit > 0:
            term = self.driver.node.log.term(m.commit)
            holders = [p.rid for p in self.net.values() if p.holds_durably(m.commit, term)]
            if len(holders) < len(IDS) // 2 + 1:
                self.violations.append(f"commit {m.commit} sent while only {holders} had it on disk")
        to = self.net.get(m.to)
        if to is not None and to.driver is not None:
            the_reactor().callLater(0, to.driver.step, m)

    def holds_durably(self, index: int, term: int) -> bool:
        """Whether this node's disk holds entry ``index`` of ``term`` (the
        storage's reads replay LMDB only after a commit: durable)."""
        if self.driver is None:
            return False
        storage = self.driver.storage
        if index < storage.first_index() - 1 or index > storage.last_index():
            return False
        return storage.term(index) == term

    def apply(self, e: Entry) -> None:
        self.applied.append(e.data)

    async def close(self) -> None:
        if self.driver is not None:
            self.driver.stop()
        await self.store.close()


async def _until(cond: Any, what: str) -> None:
    """Poll ``cond`` on the reactor (bounded by WAIT seconds)."""
    d: defer.Deferred[None] = defer.Deferred()

    def check() -> None:
        if cond():
            loop.stop()
            d.callback(None)

    loop = LoopingCall(check)
    loop.clock = the_reactor()
    loop.start(0.01)
    try:
        await bounded(d, WAIT)
    finally:
        if loop.running:
            loop.stop()


@pytest_twisted.ensureDeferred
async def test_three_drivers_elect_commit_apply_and_read(tmp_path: Path) -> None:
    """A leader is elected; 50 proposals (some through followers) are applied
    in the same order on all three nodes; a ReadIndex read on a follower
    fires at an index it has applied; no message ever promised what was not
    yet on disk -- the leader did send appends before writing their entries
    (its own write in parallel with the followers'), and no commit index left
    before a majority held the entry on disk."""
    net: dict[int, Peer] = {}
    for rid in IDS:
        net[rid] = Peer(rid, tmp_path, net)
    try:
        for p in net.values():
            await p.start()
        await _until(lambda: any(p.driver and p.driver.is_leader for p in net.values()), "a leader")
        await _until(lambda: all(p.driver and p.driver.leader for p in net.values()), "everyone knows it")
        leader = next(p for p in net.values() if p.driver and p.driver.is_leader)
        follower = next(p for p in net.values() if p is not leader)
        for i in range(50):
            via = leader if i % 2 else follower
            assert via.driver is not None
            via.driver.propose(f"cmd-{i}".encode())
        await _until(lambda: all(len(p.applied) == 50 for p in net.values()), "50 applied everywhere")
        orders = {tuple(p.applied) for p in net.values()}
        assert len(orders) == 1 and set(next(iter(orders))) == {f"cmd-{i}".encode() for i in range(50)}
        assert follower.driver is not None
        index = await bounded(follower.driver.read_index(), WAIT)
        assert follower.driver.applied >= index >= 50
        assert [v for p in net.values() for v in p.violations] == []
        assert leader.early_appends > 0
    finally:
        for p in net.values():
            await p.close()


class WritingPeer(Peer):
    """A peer whose application writes each entry to the same store (as the
    metadata's broker writes do) and records, per entry, the commit index on
    disk when it was applied and when its own write was durable."""

    def __init__(self, rid: int, path: Path, net: dict[int, Peer]) -> None:
        super().__init__(rid, path, net)
        self.at_apply: list[tuple[int, int]] = []
        self.at_durable: list[tuple[int, int]] = []

    def apply(self, e: Entry) -> Any:
        assert self.driver is not None
        storage = self.driver.storage
        self.at_apply.append((e.index, storage.hard_state.commit))
        self.applied.append(e.data)
        d = self.store.write([("p", "meta", b"app-" + e.data, b"x")])

        def durable(_: object) -> None:
            self.at_durable.append((e.index, self.store_commit_on_disk()))

        return d.addCallback(durable)

    def store_commit_on_disk(self) -> int:
        """The commit index of the hard state as LMDB holds it now."""
        from sprawl.raft import codec

        env, dbs = self.store.env, self.store.dbs
        assert env is not None
        with env.begin() as txn:
            raw = txn.get(codec.HARD_STATE_KEY, db=dbs["raft_meta"])
        return codec.decode_hard_state(raw).commit if raw else 0


@pytest_twisted.ensureDeferred
async def test_a_commit_index_alone_costs_no_fsync_before_applying(tmp_path: Path) -> None:
    """A Ready that only moves the commit index applies its entries without
    waiting for that index's own fsync (it goes to disk with the
    application's writes, in order): some entry is applied while the commit
    on disk is still below it, yet every entry's own durable write finds the
    commit index on disk covering it; no message leaves early."""
    net: dict[int, Peer] = {}
    for rid in IDS:
        net[rid] = WritingPeer(rid, tmp_path, net)
    try:
        for p in net.values():
            await p.start()
        await _until(lambda: any(p.driver and p.driver.is_leader for p in net.values()), "a leader")
        leader = next(p for p in net.values() if p.driver and p.driver.is_leader)
        assert isinstance(leader, WritingPeer) and leader.driver is not None
        for i in range(20):
            leader.driver.propose(f"w-{i}".encode())
            await _until(lambda i=i: len(leader.at_durable) > i, f"entry {i} applied")
        early = [(i, c) for i, c in leader.at_apply if c < i]
        assert early, leader.at_apply
        assert all(c >= i for i, c in leader.at_durable), leader.at_durable
        assert [v for p in net.values() for v in p.violations] == []
    finally:
        for p in net.values():
            await p.close()
