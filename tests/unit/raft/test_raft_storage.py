"""Raft persistence: the checksummed codec and :class:`LmdbRaftStorage`.

A contract suite runs the same cases against ``MemoryStorage`` (the simulator's
disk) and ``LmdbRaftStorage`` over a real LMDB in tmp_path with the real
reactor, so the fake and the real thing agree.  Then the LMDB-only claims:
restart recovery (a restarted ``RaftNode`` keeps its term and log), reads see
only durable state, and corruption -- a flipped byte, a torn tail, a gap, a
lost tail -- is refused loudly on open.  The codec is fuzzed with hypothesis.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import msgspec
import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred

from harness import the_reactor
from sprawl.raft import codec
from sprawl.raft.codec import CodecError, RaftStorageCorrupt
from sprawl.raft.lmdb_storage import SNAPSHOT_FILE_BYTES, LmdbRaftStorage
from sprawl.raft.messages import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMeta
from sprawl.raft.node import Config, RaftNode, Role
from sprawl.raft.storage import CompactedError, MemoryStorage, UnavailableError
from sprawl.storage.lmdb import LmdbStore

T = TypeVar("T")
CS = ConfState((1, 2, 3))


def ents(lo: int, hi: int, term: int = 1) -> list[Entry]:
    """Entries ``[lo, hi)`` of ``term`` with distinguishable data."""
    return [Entry(term, i, EntryType.NORMAL, f"e{i}t{term}".encode()) for i in range(lo, hi)]


async def done(x: T | Deferred[T]) -> T:
    """The result of a write: MemoryStorage returns it, LmdbRaftStorage a Deferred."""
    if isinstance(x, Deferred):
        return await x  # type: ignore[no-any-return]
    return x


class Stores:
    """Opens LmdbStores on one path (reopening = restart) and closes every one."""

    def __init__(self, path: Path) -> None:
        """Stores will live under ``path``."""
        self.path = str(path / "lmdb")
        self.opened: list[LmdbStore] = []

    def open(self) -> LmdbStore:
        """A freshly opened store on the path."""
        s = LmdbStore(self.path, reactor=the_reactor(), map_size=64 * 1024**2)
        s.open()
        self.opened.append(s)
        return s

    async def close_all(self) -> None:
        """Close whatever is still open."""
        for s in self.opened:
            if s.env is not None:
                await s.close()


@pytest_twisted.async_yield_fixture
async def stores(tmp_path: Path) -> AsyncIterator[Stores]:
    """A store factory on tmp_path; every store it opened is closed afterwards."""
    s = Stores(tmp_path)
    yield s
    await s.close_all()


class Subject:
    """One storage under contract test; ``restart`` is a crash-free reopen."""

    def __init__(self, kind: str, stores: Stores) -> None:
        """``kind`` is ``"memory"`` or ``"lmdb"``."""
        self.kind = kind
        self.stores = stores
        self.store: LmdbStore | None = None
        self.s: Any = None

    async def start(self, conf_state: ConfState | None) -> Any:
        """Fresh (or, with ``conf_state``, bootstrapped) storage."""
        if self.kind == "memory":
            self.s = MemoryStorage(conf_state)
        else:
            self.store = self.stores.open()
            self.s = await LmdbRaftStorage.open(self.store, conf_state)
        return self.s

    async def restart(self) -> Any:
        """Reopen from disk (memory: the same object -- the simulator's surviving disk)."""
        if self.kind == "lmdb":
            assert self.store is not None
            await self.store.close()
            self.store = self.stores.open()
            self.s = await LmdbRaftStorage.open(self.store)
        return self.s


@pytest_twisted.async_yield_fixture(params=["memory", "lmdb"])
async def subject(request: pytest.FixtureRequest, stores: Stores) -> AsyncIterator[Subject]:
    """The contract's subject, once per implementation (stores closed by ``stores``)."""
    yield Subject(request.param, stores)


def state(s: Any) -> tuple[Any, ...]:
    """Everything a storage exposes, for before/after-restart comparison."""
    first, last = s.first_index(), s.last_index()
    return (s.initial_state(), s.snapshot(), first, last, s.term(first - 1), s.entries(first, last + 1))


# -- the contract: MemoryStorage and LmdbRaftStorage alike ------------------------


@pytest_twisted.ensureDeferred
async def test_contract_fresh_storage(subject: Subject) -> None:
    """A fresh storage is empty: zero hard state, no snapshot, dummy at 0."""
    s = await subject.start(None)
    assert s.initial_state() == (HardState(), ConfState())
    assert (s.first_index(), s.last_index(), s.term(0)) == (1, 0, 0)
    assert s.snapshot().is_empty()
    assert s.entries(1, 1) == []
    with pytest.raises(UnavailableError):
        s.term(1)
    s = await subject.restart()
    assert s.initial_state() == (HardState(), ConfState())


@pytest_twisted.ensureDeferred
async def test_contract_bootstrap(subject: Subject) -> None:
    """A founding member starts from the snapshot at index 1, term 1 with the
    configuration, and keeps it across a restart."""
    s = await subject.start(CS)
    assert s.initial_state() == (HardState(1, 0, 1), CS)
    assert (s.first_index(), s.last_index(), s.term(1)) == (2, 1, 1)
    assert s.snapshot() == Snapshot(SnapshotMeta(1, 1, CS))
    before = state(s)
    s = await subject.restart()
    assert state(s) == before


@pytest_twisted.ensureDeferred
async def test_contract_append_read_and_restart(subject: Subject) -> None:
    """Appended entries and hard state read back (bounds and max_size honoured)
    and survive a restart."""
    s = await subject.start(CS)
    await done(s.append(ents(2, 10)))
    await done(s.set_hard_state(HardState(1, 2, 5)))
    assert s.last_index() == 9
    assert s.entries(2, 10) == ents(2, 10)
    assert s.entries(3, 6) == ents(3, 6)
    assert len(s.entries(2, 10, max_size=1)) == 1  # never empty
    assert len(s.entries(2, 10, max_size=2 * ents(2, 3)[0].size())) == 2
    with pytest.raises(CompactedError):
        s.entries(1, 3)
    with pytest.raises(UnavailableError):
        s.entries(2, 11)
    before = state(s)
    s = await subject.restart()
    assert state(s) == before
    assert s.initial_state()[0] == HardState(1, 2, 5)


@pytest_twisted.ensureDeferred
async def test_contract_conflict_truncation(subject: Subject) -> None:
    """Appending entries that overwrite a suffix deletes the old suffix beyond them."""
    s = await subject.start(CS)
    await done(s.append(ents(2, 10)))
    await done(s.append(ents(5, 7, term=2)))
    assert s.last_index() == 6
    assert s.entries(2, 7) == ents(2, 5) + ents(5, 7, term=2)
    with pytest.raises(UnavailableError):
        s.term(7)
    s = await subject.restart()
    assert s.last_index() == 6
    assert s.entries(2, 7) == ents(2, 5) + ents(5, 7, term=2)
    await done(s.append(ents(7, 9, term=2)))  # extending past the old suffix works
    assert s.entries(6, 9) == ents(6, 7, term=2) + ents(7, 9, term=2)


@pytest_twisted.ensureDeferred
async def test_contract_append_edges(subject: Subject) -> None:
    """A gap is refused; entries already compacted are skipped, partly compacted trimmed."""
    s = await subject.start(CS)
    await done(s.append(ents(2, 6)))
    with pytest.raises(UnavailableError):
        await done(s.append(ents(8, 9)))
    await done(s.compact(4))
    await done(s.append(ents(1, 4, term=9)))  # all compacted: no-op
    assert s.entries(5, 6) == ents(5, 6)
    await done(s.append(ents(3, 7, term=1)))  # 3, 4 skipped; 5 rewritten; 6 added
    assert (s.first_index(), s.last_index()) == (5, 6)
    assert s.entries(5, 7) == ents(5, 7)
    before = state(s)
    s = await subject.restart()
    assert state(s) == before


@pytest_twisted.ensureDeferred
async def test_contract_compaction(subject: Subject) -> None:
    """Compaction drops entries up to the index, keeping its term as the dummy;
    below is a no-op, beyond the log is refused; it survives a restart."""
    s = await subject.start(CS)
    await done(s.append(ents(2, 6) + ents(6, 10, term=3)))
    await done(s.compact(6))
    assert (s.first_index(), s.last_index(), s.term(6)) == (7, 9, 3)
    with pytest.raises(CompactedError):
        s.term(5)
    with pytest.raises(CompactedError):
        s.entries(6, 8)
    await done(s.compact(3))  # below: no-op
    assert s.first_index() == 7
    with pytest.raises(UnavailableError):
        await done(s.compact(10))
    before = state(s)
    s = await subject.restart()
    assert state(s) == before
    assert s.entries(7, 10) == ents(7, 10, term=3)


@pytest_twisted.ensureDeferred
async def test_contract_create_snapshot(subject: Subject) -> None:
    """A snapshot of stored entries takes their term; an older index returns the
    current snapshot; an index beyond the log is refused."""
    s = await subject.start(CS)
    await done(s.append(ents(2, 5) + ents(5, 8, term=2)))
    snap = await done(s.create_snapshot(6, ConfState((1, 2)), b"state@6"))
    assert snap == Snapshot(SnapshotMeta(6, 2, ConfState((1, 2))), b"state@6")
    assert s.snapshot() == snap
    assert await done(s.create_snapshot(4, CS, b"old")) == snap
    with pytest.raises(UnavailableError):
        await done(s.create_snapshot(8, CS, b""))
    await done(s.compact(6))
    before = state(s)
    s = await subject.restart()
    assert state(s) == before
    assert s.initial_state()[1] == ConfState((1, 2))


@pytest_twisted.ensureDeferred
async def test_contract_apply_snapshot(subject: Subject) -> None:
    """A newer snapshot from a leader replaces the whole log; an older one is ignored."""
    s = await subject.start(CS)
    await done(s.append(ents(2, 8)))
    snap = Snapshot(SnapshotMeta(20, 4, ConfState((1, 2, 3, 4))), b"big state")
    await done(s.apply_snapshot(snap))
    assert (s.first_index(), s.last_index(), s.term(20)) == (21, 20, 4)
    assert s.snapshot() == snap
    await done(s.apply_snapshot(Snapshot(SnapshotMeta(10, 3, CS), b"older")))
    assert s.snapshot() == snap
    await done(s.append(ents(21, 23, term=4)))
    s = await subject.restart()
    assert s.snapshot() == snap
    assert s.initial_state()[1] == ConfState((1, 2, 3, 4))
    assert (s.first_index(), s.last_index()) == (21, 22)
    assert s.entries(21, 23) == ents(21, 23, term=4)


# -- LMDB only ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_reads_see_only_durable_state(stores: Stores) -> None:
    """Until a write's commit fires, the core reads the state before it; queued
    writes are planned against each other (a queued append then a truncating one)."""
    s = await LmdbRaftStorage.open(stores.open(), CS)
    d1 = s.append(ents(2, 10))
    d2 = s.append(ents(4, 6, term=2))
    d3 = s.set_hard_state(HardState(2, 1, 3))
    assert (s.last_index(), s.hard_state) == (1, HardState(1, 0, 1))
    await d1
    assert s.last_index() == 9
    await d2
    await d3
    assert s.last_index() == 5
    assert s.hard_state == HardState(2, 1, 3)


@pytest_twisted.ensureDeferred
async def test_save_is_one_transaction(stores: Stores) -> None:
    """``save`` persists snapshot, entries and hard state of a Ready in one commit."""
    store = stores.open()
    s = await LmdbRaftStorage.open(store, CS)
    commits = store.commits
    snap = Snapshot(SnapshotMeta(5, 2, CS), b"s")
    await s.save(HardState(2, 1, 6), ents(6, 8, term=2), snap)
    assert store.commits == commits + 1
    assert (s.snapshot(), s.first_index(), s.last_index(), s.hard_state) == (snap, 6, 7, HardState(2, 1, 6))


def drive(node: RaftNode) -> Any:
    """Handle the node's Readys strictly persist -> (send) -> apply -> advance (bounded)."""

    async def run() -> list[Entry]:
        applied: list[Entry] = []
        st_ = node.storage
        assert isinstance(st_, LmdbRaftStorage)
        for _ in range(50):
            if not node.has_ready():
                return applied
            rd = node.ready()
            await st_.save_ready(rd)
            applied += rd.committed_entries
            node.advance(rd)
        raise AssertionError("node never quiesced")

    return run()


@pytest_twisted.ensureDeferred
async def test_raft_node_restarts_with_its_term_and_log(stores: Stores) -> None:
    """A one-voter node elects itself, commits proposals through LMDB; after the
    store is closed and reopened a new RaftNode has the same term, vote, commit and log."""
    store = stores.open()
    cfg = Config(1, election_tick=10, heartbeat_tick=1)
    node = RaftNode(cfg, await LmdbRaftStorage.open(store, ConfState((1,))), random.Random(1))
    node.campaign()
    await drive(node)
    assert node.role == Role.LEADER
    for i in range(3):
        node.propose(f"p{i}".encode())
    applied = await drive(node)
    assert [e.data for e in applied if e.data] == [b"p0", b"p1", b"p2"]
    term, last, committed = node.term, node.log.last_index(), node.log.committed
    assert committed == last

    await store.close()
    s2 = await LmdbRaftStorage.open(stores.open(), ConfState((9,)))  # existing state wins
    node2 = RaftNode(cfg, s2, random.Random(2))
    assert (node2.term, node2.vote, node2.log.last_index(), node2.log.committed) == (term, 1, last, committed)
    assert node2.voters == {1}
    assert [e.data for e in s2.entries(2, last + 1) if e.data] == [b"p0", b"p1", b"p2"]
    node2.campaign()
    await drive(node2)
    assert node2.role == Role.LEADER
    assert node2.term == term + 1


def tamper(path: str, db: bytes, fn: Any) -> None:
    """Edit a named DB of a *closed* store directly with LMDB: ``fn(txn, dbi)``."""
    env = lmdb.open(path, max_dbs=16)
    try:
        dbi = env.open_db(db)
        with env.begin(write=True, db=dbi) as txn:
            fn(txn, dbi)
    finally:
        env.close()


async def seeded(stores: Stores) -> str:
    """A closed store holding a bootstrapped log with entries 2..9 and commit 5."""
    store = stores.open()
    s = await LmdbRaftStorage.open(store, CS)
    await s.save(HardState(1, 1, 5), ents(2, 10), None)
    await store.close()
    return stores.path


async def expect_corrupt(stores: Stores, what: str, index: int | None, reason: str) -> None:
    """Opening refuses loudly (both constructors), naming the record and index."""
    store = stores.open()
    with pytest.raises(RaftStorageCorrupt) as ei:
        LmdbRaftStorage(store)
    assert (ei.value.what, ei.value.index) == (what, index)
    assert reason in str(ei.value)
    if index is not None:
        assert f"index {index}" in str(ei.value)
    with pytest.raises(RaftStorageCorrupt):
        await LmdbRaftStorage.open(store)
    await store.close()


@pytest_twisted.ensureDeferred
async def test_flipped_byte_in_an_entry_is_refused(stores: Stores) -> None:
    """One flipped byte in entry 4's record fails its checksum on open."""
    path = await seeded(stores)

    def flip(txn: Any, dbi: Any) -> None:
        v = bytearray(txn.get(codec.log_key(4)))
        v[len(v) // 2] ^= 0x01
        txn.put(codec.log_key(4), bytes(v))

    tamper(path, b"raft_log", flip)
    await expect_corrupt(stores, "log", 4, "checksum")


@pytest_twisted.ensureDeferred
async def test_torn_tail_is_refused(stores: Stores) -> None:
    """The last entry's record cut short (a torn write) is refused, never dropped."""
    path = await seeded(stores)
    tamper(path, b"raft_log", lambda txn, dbi: txn.put(codec.log_key(9), txn.get(codec.log_key(9))[:-3]))
    await expect_corrupt(stores, "log", 9, "torn")


@pytest_twisted.ensureDeferred
async def test_gap_and_lost_tail_are_refused(stores: Stores) -> None:
    """A missing entry in the middle names the missing index; a log shorter than
    the commit index (lost tail) is refused too."""
    path = await seeded(stores)
    tamper(path, b"raft_log", lambda txn, dbi: txn.delete(codec.log_key(6)))
    await expect_corrupt(stores, "log", 6, "missing")

    def lose_tail(txn: Any, dbi: Any) -> None:
        for i in range(4, 10):
            txn.delete(codec.log_key(i))

    tamper(path, b"raft_log", lose_tail)
    await expect_corrupt(stores, "log", 4, "tail lost")


@pytest_twisted.ensureDeferred
async def test_corrupt_hard_state_and_snapshot_are_refused(stores: Stores) -> None:
    """A flipped byte in the hard state or in the snapshot record is refused."""
    path = await seeded(stores)

    def flip(key: bytes) -> Any:
        def fn(txn: Any, dbi: Any) -> None:
            v = bytearray(txn.get(key))
            v[-1] ^= 0x80
            txn.put(key, bytes(v))

        return fn

    tamper(path, b"raft_meta", flip(codec.HARD_STATE_KEY))
    await expect_corrupt(stores, "hard_state", None, "checksum")
    tamper(path, b"raft_meta", flip(codec.HARD_STATE_KEY))  # flip back
    tamper(path, b"raft_meta", flip(codec.SNAPSHOT_KEY))
    await expect_corrupt(stores, "snapshot", None, "checksum")


@pytest_twisted.ensureDeferred
async def test_entry_under_the_wrong_key_is_refused(stores: Stores) -> None:
    """A valid record stored under another index (misdirected write) is refused."""
    path = await seeded(stores)
    tamper(path, b"raft_log", lambda txn, dbi: txn.put(codec.log_key(7), codec.encode_entry(ents(3, 4)[0])))
    await expect_corrupt(stores, "log", 7, "stored under 7")


# -- the codec -----------------------------------------------------------------------

entry_st = st.builds(
    Entry,
    st.integers(0, 2**63),
    st.integers(0, 2**63),
    st.sampled_from(list(EntryType)),
    st.binary(max_size=64),
)
hard_state_st = st.builds(HardState, st.integers(0, 2**63), st.integers(0, 2**63), st.integers(0, 2**63))
ids_st = st.lists(st.integers(1, 2**32), max_size=5).map(tuple)
snapshot_st = st.builds(
    Snapshot,
    st.builds(
        SnapshotMeta, st.integers(0, 2**63), st.integers(0, 2**63), st.builds(ConfState, ids_st, ids_st)
    ),
    st.binary(max_size=64),
)
DECODERS: list[tuple[int, Callable[[bytes], object]]] = [
    (codec.KIND_ENTRY, codec.decode_entry),
    (codec.KIND_HARD_STATE, codec.decode_hard_state),
    (codec.KIND_SNAPSHOT, codec.decode_snapshot),
]


@given(st.binary(max_size=200))
def test_codec_any_bytes_raise_only_codec_error(data: bytes) -> None:
    """Arbitrary bytes decode to a value or raise CodecError -- nothing else."""
    for _, dec in DECODERS:
        try:
            dec(data)
        except CodecError:
            pass


_msgpack_ish = st.builds(
    msgspec.msgpack.encode,
    st.lists(
        st.one_of(
            st.integers(-(2**63), 2**64 - 1),
            st.binary(max_size=8),
            st.none(),
            st.booleans(),
            st.lists(st.integers(-(2**63), 2**64 - 1), max_size=3),
            st.lists(st.lists(st.integers(-1, 5), max_size=3), max_size=3),
        ),
        max_size=5,
    ),
)


@given(st.one_of(st.binary(max_size=200), _msgpack_ish), st.integers(0, 2))
def test_codec_any_checksummed_payload_raises_only_codec_error(payload: bytes, which: int) -> None:
    """Arbitrary payloads in valid framing (right kind, length and CRC) reach the
    msgpack decoder: they decode or raise CodecError -- nothing else."""
    kind, dec = DECODERS[which]
    head = struct.pack(">BBI", kind, codec.VERSION, len(payload))
    raw = head + payload + struct.pack(">I", zlib.crc32(head + payload))
    try:
        dec(raw)
    except CodecError:
        pass


@given(st.one_of(entry_st, hard_state_st, snapshot_st), st.data())
def test_codec_round_trip_and_any_damage_detected(value: Any, data: st.DataObject) -> None:
    """Records round-trip; any single flipped byte, truncation or extension of a
    valid record raises CodecError (never a wrong value)."""
    codecs: dict[type, tuple[Callable[[Any], bytes], Callable[[bytes], Any]]] = {
        Entry: (codec.encode_entry, codec.decode_entry),
        HardState: (codec.encode_hard_state, codec.decode_hard_state),
        Snapshot: (codec.encode_snapshot, codec.decode_snapshot),
    }
    enc, dec = codecs[type(value)]
    raw = enc(value)
    assert dec(raw) == value
    i = data.draw(st.integers(0, len(raw) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(raw)
    flipped[i] ^= 1 << bit
    cut = data.draw(st.integers(0, len(raw) - 1))
    for bad in (bytes(flipped), raw[:cut], raw + data.draw(st.binary(min_size=1, max_size=8))):
        with pytest.raises(CodecError):
            dec(bad)


def test_codec_kinds_and_keys() -> None:
    """A record of one kind is not accepted as another; log keys sort by index."""
    with pytest.raises(CodecError, match="kind"):
        codec.decode_hard_state(codec.encode_entry(Entry(1, 1)))
    assert codec.parse_log_key(codec.log_key(258)) == 258
    assert codec.log_key(255) < codec.log_key(256) < codec.LOG_KEY_END
    with pytest.raises(CodecError):
        codec.parse_log_key(b"\x00" * 7)


@pytest_twisted.ensureDeferred
async def test_failed_write_changes_nothing_and_poisons(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit that fails leaves the readable state as it was and fails every later write."""
    store = stores.open()
    s = await LmdbRaftStorage.open(store, CS)

    def broken(ops: list[Any]) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(store, "_commit", broken)
    with pytest.raises(OSError):
        await s.append(ents(2, 5))
    assert (s.last_index(), s.hard_state) == (1, HardState(1, 0, 1))
    assert isinstance(s.failed, OSError)
    with pytest.raises(OSError):
        await s.set_hard_state(HardState(2, 0, 1))
    assert s.hard_state == HardState(1, 0, 1)


# -- which cluster the state belongs to; replacing it (recovery) ---------------------


@pytest_twisted.ensureDeferred
async def test_cluster_id_bootstrapped_adopted_and_kept_across_restarts(stores: Stores) -> None:
    """A founding node writes its cluster id with the bootstrap; a joining node has
    none until it adopts one; either way a restart reads it back."""
    store = stores.open()
    s = await LmdbRaftStorage.open(store, CS, cluster_id=0xC1)
    assert s.cluster_id == 0xC1
    await store.close()
    store = stores.open()
    assert LmdbRaftStorage(store).cluster_id == 0xC1
    await store.close()


@pytest_twisted.ensureDeferred
async def test_joining_node_adopts_a_cluster_id(tmp_path: Path) -> None:
    """Empty storage has no cluster id; ``set_cluster_id`` makes it durable."""
    st_ = Stores(tmp_path)
    try:
        store = st_.open()
        s = await LmdbRaftStorage.open(store, None, cluster_id=0xC1)  # not bootstrapping: ignored
        assert s.cluster_id is None and s.is_empty()
        await s.set_cluster_id(0xBEEF)
        assert s.cluster_id == 0xBEEF
        await store.close()
        store = st_.open()
        assert LmdbRaftStorage(store).cluster_id == 0xBEEF
    finally:
        await st_.close_all()


@pytest_twisted.ensureDeferred
async def test_corrupt_cluster_id_is_refused(stores: Stores) -> None:
    """A damaged cluster id record refuses to open, like the other records."""
    store = stores.open()
    await LmdbRaftStorage.open(store, CS, cluster_id=7)
    await store.close()
    tamper(stores.path, b"raft_meta", lambda txn, dbi: txn.put(codec.CLUSTER_ID_KEY, b"\x43\x01junk"))
    await expect_corrupt(stores, "cluster_id", None, "torn")


@pytest_twisted.ensureDeferred
async def test_replace_folds_the_log_into_one_snapshot(stores: Stores) -> None:
    """``replace`` (``--force-new-cluster``): the whole log goes, the new snapshot,
    hard state and cluster id are what a restart finds -- one transaction."""
    path = await seeded(stores)
    store = stores.open()
    s = LmdbRaftStorage(store)
    snap = Snapshot(SnapshotMeta(9, 1, ConfState((5,))), b"state")
    fresh = await s.replace(snap, HardState(2, 0, 9), 0xF00D)
    assert fresh.snapshot() == snap and fresh.first_index() == 10 and fresh.last_index() == 9
    assert fresh.initial_state() == (HardState(2, 0, 9), ConfState((5,)))
    assert fresh.cluster_id == 0xF00D
    with pytest.raises(RuntimeError):
        await s.save(HardState(3, 0, 9), [], None)  # the replaced instance is dead
    await store.close()
    store = stores.open()
    again = LmdbRaftStorage(store)
    assert state(again) == state(fresh) and again.cluster_id == 0xF00D
    await store.close()
    assert path


@pytest_twisted.ensureDeferred
async def test_replace_with_nothing_empties_the_node(stores: Stores) -> None:
    """``replace(None, HardState(), None)`` (a survivor rejoining a forced cluster):
    no log, no snapshot, no cluster id -- a fresh node as far as Raft knows."""
    await seeded(stores)
    store = stores.open()
    fresh = await LmdbRaftStorage(store).replace(None, HardState(), None)
    assert fresh.is_empty() and fresh.cluster_id is None
    await store.close()
    store = stores.open()
    assert LmdbRaftStorage(store).is_empty()
    await store.close()


def test_codec_cluster_id() -> None:
    """Cluster ids round-trip; 0, out-of-range and damaged records are refused."""
    assert codec.decode_cluster_id(codec.encode_cluster_id(1)) == 1
    assert codec.decode_cluster_id(codec.encode_cluster_id((1 << 64) - 1)) == (1 << 64) - 1
    for bad in (0, 1 << 64, -1):
        with pytest.raises(ValueError):
            codec.encode_cluster_id(bad)
    rec = bytearray(codec.encode_cluster_id(99))
    rec[7] ^= 1
    with pytest.raises(CodecError):
        codec.decode_cluster_id(bytes(rec))
    zero = codec._frame(codec.KIND_CLUSTER_ID, b"\0" * 8)
    with pytest.raises(CodecError, match="cluster id 0"):
        codec.decode_cluster_id(zero)


# -- a big snapshot is a file beside LMDB (issue 23, create38) ----------------------

BIG = bytes(range(256)) * (SNAPSHOT_FILE_BYTES // 256 + 1)


def snapshot_files(stores: Stores) -> list[str]:
    """The snapshot files beside the store, by name."""
    d = Path(stores.path + "-raft")
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


async def with_big_snapshots(stores: Stores) -> str:
    """A closed store whose log 2..19 was snapshotted at 9 (small data), then at
    12 and at 15 (:data:`BIG` data each time, the second one last)."""
    store = stores.open()
    s = await LmdbRaftStorage.open(store, CS)
    await s.save(HardState(1, 1, 19), ents(2, 20), None)
    await s.create_snapshot(9, CS, b"small")
    await s.create_snapshot(12, CS, BIG + b"12")
    assert len(snapshot_files(stores)) == 1
    await s.create_snapshot(15, CS, BIG + b"15")
    assert len(snapshot_files(stores)) == 2  # (the one before kept: a hot backup may name it)
    await s.compact(15)
    await store.close()
    return stores.path


@pytest_twisted.ensureDeferred
async def test_a_big_snapshot_is_a_file_and_survives_a_restart(stores: Stores) -> None:
    """A snapshot of at least SNAPSHOT_FILE_BYTES is kept in one file (the one
    before the last deleted once the new one's record is durable; at open, all
    but the one named), LMDB holding only the record naming it -- and a
    restart reads it back whole."""
    await with_big_snapshots(stores)
    assert len(snapshot_files(stores)) == 2
    env = lmdb.open(stores.path, max_dbs=16, readonly=True, lock=False)
    try:
        with env.begin(db=env.open_db(b"raft_meta")) as txn:
            raw = bytes(txn.get(codec.SNAPSHOT_KEY))
    finally:
        env.close()
    assert codec.is_snapshot_file(raw) and len(raw) < 200
    store = stores.open()
    s = await LmdbRaftStorage.open(store)
    assert s.snapshot() == Snapshot(SnapshotMeta(15, 1, CS), BIG + b"15")
    assert (s.first_index(), s.last_index()) == (16, 19)
    assert [n[:14] for n in snapshot_files(stores)] == ["snapshot-15-1-"]
    # A leader's snapshot received later replaces it (and its file) the same way.
    await s.apply_snapshot(Snapshot(SnapshotMeta(30, 2, CS), BIG + b"30"))
    assert [n[:14] for n in snapshot_files(stores)] == ["snapshot-15-1-", "snapshot-30-2-"]
    await store.close()
    s = await LmdbRaftStorage.open(stores.open())
    assert s.snapshot().data == BIG + b"30" and s.last_index() == 30


@pytest_twisted.ensureDeferred
async def test_a_small_snapshot_after_a_big_one_leaves_no_file(stores: Stores) -> None:
    """A snapshot under the size stays an LMDB value, and the file of the big
    one it replaces goes (and a file no record names is deleted at open)."""
    await with_big_snapshots(stores)
    Path(stores.path + "-raft", "snapshot-99-1-00000000.raft.tmp").write_bytes(b"half written")
    store = stores.open()
    s = await LmdbRaftStorage.open(store)
    assert len(snapshot_files(stores)) == 1  # (the stray one deleted)
    await s.apply_snapshot(Snapshot(SnapshotMeta(40, 2, CS), b"small again"))
    assert len(snapshot_files(stores)) == 1  # (the one named before, for a hot backup)
    await s.apply_snapshot(Snapshot(SnapshotMeta(41, 2, CS), b"small once more"))
    assert snapshot_files(stores) == []
    await store.close()
    s = await LmdbRaftStorage.open(stores.open())
    assert s.snapshot().data == b"small once more"


@pytest_twisted.ensureDeferred
async def test_a_damaged_or_missing_snapshot_file_is_refused(stores: Stores) -> None:
    """The file a snapshot record names is checked on open: a flipped byte, a
    torn file, a missing one -- each refused, naming the snapshot."""
    await with_big_snapshots(stores)
    name = snapshot_files(stores)[-1]
    assert name.startswith("snapshot-15-")
    path = Path(stores.path + "-raft", name)
    good = path.read_bytes()
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0x01
    path.write_bytes(bytes(flipped))
    await expect_corrupt(stores, "snapshot", None, "checksum")
    path.write_bytes(good[:-10])
    await expect_corrupt(stores, "snapshot", None, f"{len(good) - 10} bytes")
    path.unlink()
    await expect_corrupt(stores, "snapshot", None, "No such file")
    path.write_bytes(good)
    s = await LmdbRaftStorage.open(stores.open())
    assert s.snapshot().meta.index == 15
