"""Raft's stable storage in the node's LMDB environment.

:class:`LmdbRaftStorage` offers the core the same read interface as
:class:`~sprawl.raft.storage.MemoryStorage` (it *is* a
:class:`~sprawl.raft.storage.Storage`), backed by two named databases of the
:class:`~sprawl.storage.lmdb.LmdbStore`: ``raft_log`` (entries keyed by
big-endian index, the lowest being the "dummy" at the compaction point) and
``raft_meta`` (hard state; snapshot with its configuration).  Every record is
checksummed (:mod:`sprawl.raft.codec`).

Writes go through the store's single writer thread and group commit, so they
are fsynced before their Deferred fires; the driver handles a Ready as
``await storage.save_ready(rd)`` -> send messages -> apply -> ``advance``.
The reads the core makes are served from an in-memory copy that is updated
only when a write's commit has fired, so the core never sees state that is not
yet durable.  (The whole uncompacted log is kept in memory: this storage is
for cluster metadata, compacted behind snapshots.)  To keep a queue of writes
consistent, each write is *planned* against a projection of the state after
every write already queued (first and last index, snapshot), then queued; the
commits fire in queue order, so the in-memory copy replays them in that order.

Argument errors (a gap in appended entries, compacting beyond the log) raise
immediately, as in ``MemoryStorage``; I/O errors errback the Deferred and poison
this storage (as they poison the store).

A snapshot of at least :data:`SNAPSHOT_FILE_BYTES` (the cluster metadata of
thousands of topics: 2.2 MB at 10,000) is not an LMDB value: its record goes
to a file in :attr:`LmdbRaftStorage.snapshot_dir`, written and fsynced on the
writer thread inside the transaction that stores a
:class:`~sprawl.raft.codec.SnapshotFile` naming it (issue 23, create38).  As an
LMDB value, every snapshot freed the pages of the one before: LMDB's free
list held a snapshot's worth of pages, and every later commit wrote that list
again -- the pages each topic creation wrote grew with the topic count.  Once
the commit naming a new file is durable, the files named by neither it nor
the record before it are deleted (the one before stays for a hot backup's
``mdb_copy`` begun before the switch; at open only the file named is kept).

On open the state is verified -- every record's checksum and framing, the
log's contiguity and term order, the snapshot and the commit index against the
log -- and anything amiss raises :class:`~sprawl.raft.codec.RaftStorageCorrupt`
naming the record and index.  Nothing is ever truncated or repaired silently.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from sprawl.raft import codec
from sprawl.raft.codec import CodecError, RaftStorageCorrupt
from sprawl.raft.messages import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from sprawl.raft.node import Ready
from sprawl.raft.storage import BOOTSTRAP_INDEX, BOOTSTRAP_TERM, MemoryStorage, UnavailableError
from sprawl.storage.lmdb import LmdbStore, Op

log = Logger()

LOG_DB = "raft_log"
META_DB = "raft_meta"

#: A snapshot whose data is at least this big is kept in a file, not in LMDB (see the
#: module docstring); smaller ones (a cluster of a few hundred topics) stay LMDB values.
SNAPSHOT_FILE_BYTES = 64 * 1024
#: Names of the snapshot files (``snapshot-INDEX-TERM-TOKEN.raft``), in :attr:`LmdbRaftStorage.snapshot_dir`.
SNAPSHOT_PREFIX = "snapshot-"
SNAPSHOT_SUFFIX = ".raft"

_Apply = Callable[[], None]


class _Cache(MemoryStorage):
    """The durable state in memory, with the two restorations ``MemoryStorage`` lacks."""

    @classmethod
    def restore(cls, hs: HardState, snap: Snapshot, ents: list[Entry]) -> _Cache:
        """A cache holding exactly what recovery read (``ents[0]`` is the dummy)."""
        c = cls()
        c.hard_state = hs
        c._snapshot = snap
        c._ents = ents
        return c

    def set_snapshot(self, snap: Snapshot) -> None:
        """Record a snapshot already computed (and now durable)."""
        self._snapshot = snap


def _corrupt(what: str, index: int | None, reason: str) -> RaftStorageCorrupt:
    err = RaftStorageCorrupt(what, index, reason)
    log.critical("Refusing to start Raft from corrupt storage: {error}", error=str(err))
    return err


class LmdbRaftStorage:
    """:class:`~sprawl.raft.storage.Storage` on LMDB, plus the driver's writes."""

    _cluster_id: int | None = None

    def __init__(self, store: LmdbStore) -> None:
        """Recover (and verify) the state in an open ``store``; raises
        :class:`RaftStorageCorrupt` if any of it fails verification."""
        self.store = store
        #: Where snapshots too big for LMDB are kept (beside the LMDB directory).
        self.snapshot_dir = store.path + "-raft"
        #: The snapshot file LMDB names now (durably), the one it named before (kept too:
        #: a hot backup's ``mdb_copy`` may have begun before the switch), and those written
        #: for commits not yet done.
        self._snapshot_file: str | None = None
        self._previous_file: str | None = None
        self._files_pending: set[str] = set()
        self._cache = self._load()
        self._drop_snapshot_files()
        self._p_dummy = self._cache.first_index() - 1
        self._p_last = self._cache.last_index()
        self._p_snapshot = self._cache.snapshot()
        self.failed: Exception | None = None

    @classmethod
    def open(
        cls, store: LmdbStore, conf_state: ConfState | None = None, cluster_id: int | None = None
    ) -> Deferred[LmdbRaftStorage]:
        """Recover from ``store``; if it holds no Raft state and ``conf_state``
        is given, bootstrap a founding member (as ``MemoryStorage(conf_state)``)
        of cluster ``cluster_id`` durably first.  Fails with
        :class:`RaftStorageCorrupt` on bad state."""
        try:
            s = cls(store)
        except RaftStorageCorrupt:
            return fail(Failure())
        d: Deferred[None]
        if conf_state is not None and s.is_empty():
            snap = Snapshot(SnapshotMeta(BOOTSTRAP_INDEX, BOOTSTRAP_TERM, conf_state))
            ops: list[Op] = []
            applies: list[_Apply] = []
            if cluster_id is not None:
                s._plan_cluster_id(cluster_id, ops, applies)
            s._plan_snapshot(snap, ops, applies)
            s._plan_hard_state(HardState(BOOTSTRAP_TERM, 0, BOOTSTRAP_INDEX), ops, applies)
            d = s._submit(ops, applies)
        else:
            d = s.store.write([])  # nothing to write; fire on the reactor like the other path
        return d.addCallback(lambda _: s)

    # -- which cluster ------------------------------------------------------------

    @property
    def cluster_id(self) -> int | None:
        """The id of the cluster this state belongs to (None: never set -- a
        fresh node that has not yet heard from a leader, or state written
        before cluster ids existed)."""
        return self._cluster_id

    def set_cluster_id(self, cluster_id: int) -> Deferred[None]:
        """Persist the cluster id (a joining node adopts its first leader's)."""
        ops: list[Op] = []
        applies: list[_Apply] = []
        self._plan_cluster_id(cluster_id, ops, applies)
        return self._submit(ops, applies)

    def _plan_cluster_id(self, cluster_id: int, ops: list[Op], applies: list[_Apply]) -> None:
        ops.append(("p", META_DB, codec.CLUSTER_ID_KEY, codec.encode_cluster_id(cluster_id)))

        def set_id() -> None:
            self._cluster_id = cluster_id

        applies.append(set_id)

    def replace(
        self, snapshot: Snapshot | None, hard_state: HardState, cluster_id: int | None
    ) -> Deferred[LmdbRaftStorage]:
        """Replace the whole Raft state in one transaction -- the log dropped,
        then ``snapshot`` (None: none, an empty node), ``hard_state`` and
        ``cluster_id`` (None: none) -- and fire with a storage recovered from
        it.  This instance must not be used afterwards.  Only for recovery
        from a lost majority: it discards what Raft promised before."""
        if self.failed is not None:
            return fail(self.failed)
        ops: list[Op] = [
            ("r", LOG_DB, codec.log_key(0), codec.LOG_KEY_END),
            ("d", META_DB, codec.SNAPSHOT_KEY),
            ("d", META_DB, codec.CLUSTER_ID_KEY),
        ]
        if snapshot is not None:
            index, term = snapshot.meta.index, snapshot.meta.term
            ops.append(("p", META_DB, codec.SNAPSHOT_KEY, codec.encode_snapshot(snapshot)))
            ops.append(("p", LOG_DB, codec.log_key(index), codec.encode_entry(Entry(term, index))))
        ops.append(("p", META_DB, codec.HARD_STATE_KEY, codec.encode_hard_state(hard_state)))
        if cluster_id is not None:
            ops.append(("p", META_DB, codec.CLUSTER_ID_KEY, codec.encode_cluster_id(cluster_id)))
        d = self._submit(ops, [])
        self.failed = RuntimeError("this Raft storage was replaced")
        return d.addCallback(lambda _: LmdbRaftStorage(self.store))

    def is_empty(self) -> bool:
        """Whether no Raft state was ever stored (a fresh node)."""
        c = self._cache
        return c.hard_state == HardState() and c.snapshot().is_empty() and c.last_index() == 0

    # -- recovery ---------------------------------------------------------------

    def _load(self) -> _Cache:
        env = self.store.env
        assert env is not None, "open the LmdbStore first"
        dbs = self.store.dbs
        with env.begin(buffers=False) as txn:
            raw_hs = txn.get(codec.HARD_STATE_KEY, db=dbs[META_DB])
            raw_snap = txn.get(codec.SNAPSHOT_KEY, db=dbs[META_DB])
            raw_cid = txn.get(codec.CLUSTER_ID_KEY, db=dbs[META_DB])
            try:
                self._cluster_id = codec.decode_cluster_id(raw_cid) if raw_cid else None
            except CodecError as e:
                raise _corrupt("cluster_id", None, str(e)) from None
            try:
                hs = codec.decode_hard_state(raw_hs) if raw_hs is not None else HardState()
            except CodecError as e:
                raise _corrupt("hard_state", None, str(e)) from None
            try:
                snap = self._read_snapshot(raw_snap) if raw_snap is not None else Snapshot()
            except CodecError as e:
                raise _corrupt("snapshot", None, str(e)) from None
            ents = self._scan_log(txn.cursor(db=dbs[LOG_DB]))
        if not ents:
            ents = [Entry(snap.meta.term, snap.meta.index)]
        dummy, last = ents[0].index, ents[-1].index
        if not snap.is_empty():
            si = snap.meta.index
            if si > last:
                raise _corrupt("snapshot", si, f"snapshot beyond the log's last index {last} (tail lost)")
            if si >= dummy and ents[si - dummy].term != snap.meta.term:
                raise _corrupt(
                    "snapshot", si, f"snapshot term {snap.meta.term}, log has {ents[si - dummy].term}"
                )
        if hs.commit > last:
            raise _corrupt(
                "log", last + 1, f"hard state commits {hs.commit} beyond last index {last} (tail lost)"
            )
        return _Cache.restore(hs, snap, [Entry(ents[0].term, dummy), *ents[1:]])

    def _read_snapshot(self, raw: bytes) -> Snapshot:
        """The snapshot a ``snapshot`` record holds or names (:class:`CodecError` when it
        or its file does not check out)."""
        if not codec.is_snapshot_file(raw):
            return codec.decode_snapshot(raw)
        ref = codec.decode_snapshot_file(raw)
        path = os.path.join(self.snapshot_dir, ref.name)
        try:
            with open(path, "rb") as f:
                data = f.read(ref.length + 1)
        except OSError as e:
            raise CodecError(f"snapshot file {ref.name}: {e.strerror or e}") from None
        if len(data) != ref.length:
            raise CodecError(f"snapshot file {ref.name}: {len(data)} bytes, {ref.length} written")
        if codec.crc(data) != ref.crc:
            raise CodecError(f"snapshot file {ref.name}: checksum mismatch")
        snap = codec.decode_snapshot(data)
        if snap.meta != ref.meta:
            raise CodecError(
                f"snapshot file {ref.name} holds index {snap.meta.index}, named for {ref.meta.index}"
            )
        self._snapshot_file = ref.name
        return snap

    def _drop_snapshot_files(self, keep: set[str] | None = None) -> None:
        """Delete the snapshot files LMDB does not name (durably) and no queued write
        is for (``keep``: more to keep)."""
        try:
            names = os.listdir(self.snapshot_dir)
        except FileNotFoundError:
            return
        keep = {*(keep or ()), *self._files_pending, *(n + ".tmp" for n in self._files_pending)}
        keep.update(n for n in (self._snapshot_file, self._previous_file) if n is not None)
        for name in names:
            if name.startswith(SNAPSHOT_PREFIX) and name not in keep:
                try:
                    os.unlink(os.path.join(self.snapshot_dir, name))
                except OSError as e:
                    log.warn("could not delete the old Raft snapshot file {name}: {e}", name=name, e=e)

    @staticmethod
    def _scan_log(cur: Any) -> list[Entry]:
        ents: list[Entry] = []
        for k, v in cur:
            try:
                index = codec.parse_log_key(k)
            except CodecError as err:
                prev = ents[-1].index if ents else None
                raise _corrupt("log", prev, f"bad key after it: {err}") from None
            try:
                e = codec.decode_entry(v, index)
            except CodecError as err:
                raise _corrupt("log", index, str(err)) from None
            if ents:
                if index != ents[-1].index + 1:
                    raise _corrupt("log", ents[-1].index + 1, f"missing (next stored entry is {index})")
                if e.term < ents[-1].term:
                    raise _corrupt("log", index, f"term {e.term} below the previous entry's {ents[-1].term}")
            ents.append(e)
        return ents

    # -- reads (the Storage interface) -------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        """See :meth:`Storage.initial_state` (durable state only)."""
        return self._cache.initial_state()

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """See :meth:`Storage.entries`."""
        return self._cache.entries(lo, hi, max_size)

    def term(self, index: int) -> int:
        """See :meth:`Storage.term`."""
        return self._cache.term(index)

    def first_index(self) -> int:
        """See :meth:`Storage.first_index`."""
        return self._cache.first_index()

    def last_index(self) -> int:
        """See :meth:`Storage.last_index`."""
        return self._cache.last_index()

    def snapshot(self) -> Snapshot:
        """See :meth:`Storage.snapshot`."""
        return self._cache.snapshot()

    @property
    def hard_state(self) -> HardState:
        """The durable hard state (as ``MemoryStorage.hard_state``)."""
        return self._cache.hard_state

    # -- writes (the driver's) ----------------------------------------------------

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        urgent: bool = True,
    ) -> Deferred[None]:
        """Persist one Ready's snapshot, entries and hard state in a single
        transaction; fires once they are on disk (and visible to reads).
        ``urgent`` (someone waits for it: see :meth:`LmdbStore.hold`) ends the
        store's hold; a Ready that persists only the commit index is not."""
        ops: list[Op] = []
        applies: list[_Apply] = []
        if snapshot is not None:
            self._plan_snapshot(snapshot, ops, applies)
        self._plan_append(entries, ops, applies)
        if hard_state is not None:
            self._plan_hard_state(hard_state, ops, applies)
        return self._submit(ops, applies, urgent)

    def save_ready(self, rd: Ready, urgent: bool = True) -> Deferred[None]:
        """:meth:`save` what ``rd`` asks to persist (before sending its messages)."""
        return self.save(rd.hard_state, rd.entries, rd.snapshot, urgent)

    def set_hard_state(self, hs: HardState) -> Deferred[None]:
        """Persist the hard state."""
        ops: list[Op] = []
        applies: list[_Apply] = []
        self._plan_hard_state(hs, ops, applies)
        return self._submit(ops, applies)

    def append(self, entries: Sequence[Entry]) -> Deferred[None]:
        """Persist entries, deleting any conflicting suffix (as ``MemoryStorage.append``)."""
        ops: list[Op] = []
        applies: list[_Apply] = []
        self._plan_append(entries, ops, applies)
        return self._submit(ops, applies)

    def apply_snapshot(self, snap: Snapshot) -> Deferred[None]:
        """Replace the whole log with a newer snapshot received from a leader."""
        ops: list[Op] = []
        applies: list[_Apply] = []
        self._plan_snapshot(snap, ops, applies)
        return self._submit(ops, applies)

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Deferred[Snapshot]:
        """Record a snapshot of the applied state at ``index`` (which must be
        durable); fires with it (or with the newer one already recorded)."""
        if self.failed is not None:
            return fail(self.failed)
        ops: list[Op] = []
        applies: list[_Apply] = []
        if index > self._p_snapshot.meta.index:
            if index > self._p_last:
                raise UnavailableError(index)
            snap = Snapshot(SnapshotMeta(index, self._cache.term(index), conf_state), data)
            self._plan_snapshot_record(snap, ops, applies)
            applies.append(lambda: self._cache.set_snapshot(snap))
            self._p_snapshot = snap
        result = self._p_snapshot
        return self._submit(ops, applies, urgent=False).addCallback(lambda _: result)

    def compact(self, index: int) -> Deferred[None]:
        """Delete the entries up to and including ``index``, keeping a dummy
        (index and term) there.  The driver compacts up to a durable snapshot."""
        if self.failed is not None:
            return fail(self.failed)
        ops: list[Op] = []
        applies: list[_Apply] = []
        if index > self._p_dummy:
            if index > self._p_last:
                raise UnavailableError(index)
            term = self._cache.term(index)
            ops.append(("r", LOG_DB, codec.log_key(0), codec.log_key(index)))
            ops.append(("p", LOG_DB, codec.log_key(index), codec.encode_entry(Entry(term, index))))
            applies.append(lambda: self._cache.compact(index))
            self._p_dummy = index
        return self._submit(ops, applies, urgent=False)

    # -- planning: ops for the writer, replays for the cache once committed --------

    def _plan_hard_state(self, hs: HardState, ops: list[Op], applies: list[_Apply]) -> None:
        ops.append(("p", META_DB, codec.HARD_STATE_KEY, codec.encode_hard_state(hs)))
        applies.append(lambda: self._cache.set_hard_state(hs))

    def _plan_append(self, entries: Sequence[Entry], ops: list[Op], applies: list[_Apply]) -> None:
        if not entries:
            return
        first = self._p_dummy + 1
        ents = list(entries)
        if ents[-1].index < first:
            return  # all compacted already
        if ents[0].index < first:
            ents = ents[first - ents[0].index :]
        if ents[0].index > self._p_last + 1:
            raise UnavailableError(f"gap: missing log entry before {ents[0].index}")
        ops.append(("m", LOG_DB, [(codec.log_key(e.index), codec.encode_entry(e)) for e in ents]))
        if ents[-1].index < self._p_last:
            ops.append(("r", LOG_DB, codec.log_key(ents[-1].index + 1), codec.LOG_KEY_END))
        applies.append(lambda: self._cache.append(ents))
        self._p_last = ents[-1].index

    def _plan_snapshot(self, snap: Snapshot, ops: list[Op], applies: list[_Apply]) -> None:
        if snap.meta.index <= self._p_snapshot.meta.index:
            return
        index, term = snap.meta.index, snap.meta.term
        self._plan_snapshot_record(snap, ops, applies)
        ops.append(("r", LOG_DB, codec.log_key(0), codec.LOG_KEY_END))
        ops.append(("p", LOG_DB, codec.log_key(index), codec.encode_entry(Entry(term, index))))
        applies.append(lambda: self._cache.apply_snapshot(snap))
        self._p_snapshot = snap
        self._p_dummy = self._p_last = index

    def _plan_snapshot_record(self, snap: Snapshot, ops: list[Op], applies: list[_Apply]) -> None:
        """The ``snapshot`` record of ``snap``: the snapshot itself, or -- at least
        :data:`SNAPSHOT_FILE_BYTES` of data -- a file written (fsynced, renamed in
        place, its directory fsynced) on the writer thread inside the transaction
        that stores the record naming it; the files named before are deleted
        once that transaction is durable."""
        if len(snap.data) < SNAPSHOT_FILE_BYTES:
            ops.append(("p", META_DB, codec.SNAPSHOT_KEY, codec.encode_snapshot(snap)))

            def inline() -> None:
                self._previous_file, self._snapshot_file = self._snapshot_file, None
                self._drop_snapshot_files()

            applies.append(inline)
            return
        name = f"{SNAPSHOT_PREFIX}{snap.meta.index}-{snap.meta.term}-{os.urandom(4).hex()}{SNAPSHOT_SUFFIX}"
        self._files_pending.add(name)
        directory = self.snapshot_dir

        def write(env: Any, txn: Any, db: Any) -> None:
            record = codec.encode_snapshot(snap)
            os.makedirs(directory, exist_ok=True)
            path = os.path.join(directory, name)
            with open(path + ".tmp", "wb") as f:
                f.write(record)
                f.flush()
                os.fdatasync(f.fileno())
            os.replace(path + ".tmp", path)
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            ref = codec.SnapshotFile(snap.meta, name, len(record), codec.crc(record))
            txn.put(codec.SNAPSHOT_KEY, codec.encode_snapshot_file(ref), db=db)

        ops.append(("x", META_DB, write))

        def written() -> None:
            self._files_pending.discard(name)
            self._previous_file, self._snapshot_file = self._snapshot_file, name
            self._drop_snapshot_files()

        applies.append(written)

    def _submit(self, ops: list[Op], applies: list[_Apply], urgent: bool = True) -> Deferred[None]:
        """Queue ``ops`` (even none: the Deferred then still fires in order
        after every earlier write); replay ``applies`` once they are durable.
        ``urgent``: see :meth:`save`."""
        if self.failed is not None:
            return fail(self.failed)
        nbytes = sum(len(op[3]) for op in ops if op[0] == "p")
        nbytes += sum(len(v) for op in ops if op[0] == "m" for _, v in op[2])

        def committed(_: object) -> None:
            for apply in applies:
                apply()

        def failed(f: Failure) -> Failure:
            if self.failed is None:
                self.failed = f.value if isinstance(f.value, Exception) else RuntimeError(str(f.value))
                log.failure("Raft storage write failed; storage is now read-only", f)
            return f

        d = self.store.write(ops, nbytes, urgent=urgent)
        d.addCallbacks(committed, failed)
        return d
