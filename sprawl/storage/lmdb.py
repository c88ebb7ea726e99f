"""The LMDB tier: one environment, a dedicated writer thread with group
commit, and a small reader pool.

Every write transaction runs start to finish on the single writer thread.
Writes queued during one reactor turn (and while the previous commit is in
flight) are committed together in one transaction, which LMDB fsyncs before
the commit returns (``sync=True``); only then do the callers' Deferreds fire.
So when a publish is acked "stored in lmdb", it is on disk.

A transaction holds whole writes (each :meth:`LmdbStore.write` is atomic)
but at most about :data:`TXN_BYTES` of them when more are queued: LMDB
copies every page a transaction touches into memory it allocates and,
after the commit, keeps those pages for later transactions until the
environment closes -- so the biggest transaction ever committed stays in
the process's anonymous memory (a 48 MB transaction kept 47 MB).  Bounding
the transaction bounds that memory; a backlog is committed as several
transactions, each fsynced, in the order written.

Every record value carries a CRC32C (:mod:`sprawl.log.record`) and every
read checks it, with the keys it walks (:mod:`sprawl.storage.verify`): a
damaged record raises :class:`~sprawl.log.damage.DamagedRange` instead of
being skipped.  Records written before checksums existed are read as
*unchecked*: at the first open of such a data dir the store notes, per
partition, the offset below which records may lack a checksum
(``meta`` key ``node/unchecked``); above it -- and in every data dir made
since -- a record without one is damage.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import lmdb
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from sprawl.interfaces import Clock
from sprawl.log.record import CorruptRecord, Record, check_stored, storage_items
from sprawl.storage import keys, timeline
from sprawl.storage.verify import Scan, scan_records
from sprawl.storage.wal import SEGMENT_BYTES, WriteAheadLog, segment_name
from sprawl.storage.wal_format import decode_body, encode_body, loggable
from sprawl.storage.writer_thread import WriterThread, hand_back_quietly, os_named_thread
from sprawl.turn_end import turn_end

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorFromThreads

log = Logger()

#: ("p", db, key, value) | ("m", db, [(key, value)...]) | ("d", db, key) | ("r", db, start, end)
#: | ("x", db, fn): ``fn(env, txn, db)`` runs inside the transaction (a repair's rewrite).
Op = tuple

#: Seconds between measures of :attr:`LmdbStore.used_bytes` while commits go on: the
#: measure (a stat of every database, ~10-25 us) runs on the writer thread after the
#: commits, never between a commit and its acks (issue 16: it was 11 % of the reactor-side
#: samples of a one-publish-at-a-time run), so the disk budget sees writes at most this late.
USED_EVERY = 0.05

#: Named databases; ``raft_log``/``raft_meta`` hold the Raft state (:mod:`sprawl.raft.lmdb_storage`).
DBS = ("meta", "records", "segments", "raft_log", "raft_meta")

#: ``meta`` key: per partition, the offset below which records may predate checksums.
UNCHECKED_KEY = b"node/unchecked"

#: ``meta`` key: the seq of the last write-ahead-log frame LMDB holds (u64 big-endian),
#: put by the transaction that applies it (docs/architecture.md, "The write-ahead log").
WAL_APPLIED_KEY = b"node/wal_applied"

_DB_INDEX = {name: i for i, name in enumerate(DBS)}


class Then:
    """A write's waiter as a plain call (:meth:`LmdbStore.write_then`): where the store
    fires a write's Deferred it calls ``fn(None, *args)`` -- or ``fn(failure, *args)``
    -- instead: no Deferred made, linked and run for it (issue 16, lat41).  What ``fn``
    raises is logged, never passed to the writes acked after it."""

    __slots__ = ("args", "fn")

    def __init__(self, fn: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args

    def callback(self, result: None) -> None:
        """The write is where its ack says."""
        try:
            self.fn(None, *self.args)
        except Exception:
            log.failure("a write's completion call failed")

    def errback(self, err: Failure | BaseException | None = None) -> None:
        """The write failed with ``err``."""
        f = (
            err
            if isinstance(err, Failure)
            else Failure(err if err is not None else Exception("write failed"))
        )
        try:
            self.fn(f, *self.args)
        except Exception:
            log.failure("a write's failure call failed")


#: What a write's completion fires: its Deferred (:meth:`LmdbStore.write`) or a plain call.
Waiter = Deferred[None] | Then

#: A write waiting for the log: (ops, waiter, bytes, weight, logged, non-logged writes
#: made before it).
_WalWrite = tuple[list[Op], Waiter, int, int, bool, int]
_NO_FRAME: tuple[list[_WalWrite], bool, float] = ([], False, 0.0)


def _applied_op(seq: int) -> Op:
    return ("p", "meta", WAL_APPLIED_KEY, seq.to_bytes(8, "big"))


#: The most of the queued writes' weight (:func:`write_weight`) one
#: transaction takes when more is queued (a single larger write still
#: commits whole): LMDB keeps as many pages as its biggest transaction
#: dirtied, in the process's memory, for as long as the environment is open.
TXN_BYTES = 4 * 1000**2
#: Weight of an op beyond the bytes its write was given: the key, the page
#: slot, and the pages a delete or small put dirties.
OP_WEIGHT = 64


def write_weight(ops: list[Op], nbytes: int) -> int:
    """What a write weighs against :data:`TXN_BYTES`: its record bytes and
    :data:`OP_WEIGHT` per key it puts or deletes."""
    n = 0
    for op in ops:
        n += len(op[2]) if op[0] == "m" else 1
    return nbytes + n * OP_WEIGHT


class StorageFull(Exception):
    """LMDB reached its map size; nothing of the failed batch was written."""


class LmdbStore:
    """The durable tier of one node."""

    def __init__(
        self,
        path: str,
        *,
        reactor: Clock,
        map_size: int = 64 * 1024**3,
        on_commit: Callable[[float, int], None] | None = None,
        wal: bool = False,
        wal_segment_bytes: int = SEGMENT_BYTES,
    ):
        self.path = path
        #: The write-ahead log's directory (replayed at open whenever it exists).
        self.wal_path = path + "-wal"
        #: Whether writes made with ``wal=True`` are acked after the log's fsync.
        self.wal_enabled = wal
        self.wal_segment_bytes = wal_segment_bytes
        self.wal: WriteAheadLog | None = None
        self._wal_thread = WriterThread(reactor, "sprawl-wal")
        #: Writes waiting for the log, in order: (ops, waiter, bytes, weight, logged,
        #: non-logged writes made before it).  A non-logged write waits here too while
        #: a logged one is before it, so LMDB applies every write in the order made.
        self._wal_queue: deque[_WalWrite] = deque()
        self._wal_scheduled = False
        self._wal_in_flight = False
        #: The frame in flight on the log's thread: its writes, whether its LMDB apply is
        #: chained, and when it was handed over.
        self._wal_frame: tuple[list[_WalWrite], bool, float] = _NO_FRAME
        #: Synced frames' writes whose ack waits for a non-logged write made before
        #: them to commit: (waiter, non-logged writes it waits for).
        self._held: deque[tuple[Waiter, int]] = deque()
        #: Non-logged writes made (while the log is on) and committed, in order.
        self._direct_made = 0
        self._direct_done = 0
        #: The last frame synced (acked) and the last LMDB holds.
        self.wal_synced = 0
        self.wal_applied = 0
        #: Partition key prefix → the last frame holding records of it.
        self._wal_parts: dict[bytes, int] = {}
        #: LMDB reads waiting for a frame to be applied: (seq, waiter).
        self._read_waits: list[tuple[int, Deferred[None]]] = []
        self._wal_drained: list[Deferred[None]] = []
        self._releasing = False
        #: Synced frames whose LMDB apply the log's thread handed straight to the LMDB
        #: writer (:meth:`_apply_chained`) and that have not come back yet; whether their
        #: completion wakes the reactor (someone waits for LMDB); and, on the writer
        #: thread, the failure after which it commits nothing more.
        self._chained = 0
        #: Synced frames handed to the LMDB writer, waiting for it (it takes every one
        #: queued into one transaction), and whether a job to take them is queued there.
        self._chain_queue: deque[tuple[list[Op], int, int, float]] = deque()
        self._chain_posted = False
        self._wake_applies = False
        self._chain_broken: Exception | None = None
        #: Bytes queued or in flight (log and LMDB) past which a write is not logged
        #: (the broker sets half its backpressure limit).
        self.wal_lag_bytes = TXN_BYTES
        self.path = path
        self.reactor = reactor
        #: The reactor's end-of-turn queue, which a commit's hand-off joins when a call is
        #: already held there (:meth:`_schedule`).
        self._turn_end = turn_end(reactor)
        self.map_size = map_size
        self.env: lmdb.Environment | None = None
        self.dbs: dict[str, Any] = {}
        self._writer = WriterThread(reactor, "sprawl-lmdb-writer")
        self._readers = ThreadPool(minthreads=1, maxthreads=2, name="sprawl-lmdb-reader")
        self._readers.threadFactory = os_named_thread("sprawl-lmdb-rd")  # (as the OS shows it)
        #: Writes queued for the next commits: (ops, waiter, bytes, weight), in order.
        self._queue: deque[tuple[list[Op], Waiter, int, int]] = deque()
        self._pending_bytes = 0
        self._scheduled = False
        self._in_flight = False
        self._in_flight_bytes = 0
        self._stopping: Deferred[None] | None = None
        self.commits = 0
        self.committed_ops = 0
        self.last_commit_seconds = 0.0
        #: Called with (seconds, ops) after each commit (metrics hook).
        self.on_commit = on_commit
        #: Bytes of LMDB pages holding live data, measured at open and then at most
        #: :data:`USED_EVERY` seconds after a commit (:meth:`measure_used`).
        self.used_bytes = 0
        self._used_call: Any = None
        self.failed: Exception | None = None
        #: Whether a commit's writes are firing their callbacks now, and what runs once
        #: they all have (:meth:`after_callbacks`).
        self._firing = False
        self._after: list[Callable[[], None]] = []
        #: (topic uid, partition) → the offset below which records may lack a checksum.
        self.unchecked: dict[tuple[int, int], int] = {}
        #: While set (:meth:`hold`), queued writes wait for an urgent one or for this call.
        self._hold_call: Any = None
        #: Holds begun, and how many of them an urgent write ended (the rest timed out).
        self.holds = 0
        self.holds_joined = 0

    # -- lifecycle -------------------------------------------------------------

    def open(self) -> None:
        """Open (or create) the environment.  Called once at startup."""
        os.makedirs(self.path, exist_ok=True)
        self.env = lmdb.open(
            self.path,
            map_size=self.map_size,
            max_dbs=len(DBS) + 2,
            sync=True,
            metasync=True,
            readahead=False,
            max_readers=64,
        )
        for name in DBS:
            self.dbs[name] = self.env.open_db(name.encode())
        self._recover_wal()
        self._load_unchecked()
        self._update_used()
        self._writer.start()
        self._readers.start()
        if self.wal is not None:
            self._wal_thread.start()

    def _recover_wal(self) -> None:
        """Apply the log's frames LMDB does not hold yet (before anything reads LMDB),
        then keep the log open for appends (``wal=True``) or remove it."""
        if not self.wal_enabled and not os.path.isdir(self.wal_path):
            return
        raw = self.get("meta", WAL_APPLIED_KEY)
        applied = int.from_bytes(raw, "big") if raw else 0
        wal = WriteAheadLog(self.wal_path, segment_bytes=self.wal_segment_bytes)
        ops: list[Op] = []
        nbytes = frames = 0
        for fr in wal.recover(applied):
            ops.extend(decode_body(fr.body, DBS))
            ops.append(_applied_op(fr.seq))
            nbytes += len(fr.body)
            frames += 1
            applied = fr.seq
            if nbytes >= TXN_BYTES:
                self._commit(ops)
                ops, nbytes = [], 0
        if ops:
            self._commit(ops)
        if frames:
            log.info(
                "write-ahead log: applied {n} frame(s) LMDB did not hold, up to seq {seq}",
                n=frames,
                seq=applied,
            )
        self.wal_synced = self.wal_applied = applied
        wal.release(applied)
        if self.wal_enabled:
            self.wal = wal
        else:
            wal.close()
            for first in wal.segments:
                os.unlink(os.path.join(self.wal_path, segment_name(first)))
            try:
                os.rmdir(self.wal_path)
            except OSError as e:  # (something else is in it: left alone)
                log.warn("write-ahead log directory {path} not removed: {e}", path=self.wal_path, e=e)

    def _load_unchecked(self) -> None:
        """Know which records may predate checksums (see the module docstring):
        read the note, or -- at the first open of a data dir -- make it from
        the partitions' ends and write it."""
        raw = self.get("meta", UNCHECKED_KEY)
        if raw is not None:
            self.unchecked = decode_unchecked(raw)
            return
        self.unchecked = partition_ends(self.env, self.dbs["records"])
        if self.unchecked:
            log.info(
                "records of {n} partition(s) were written before record checksums: "
                "they are read as unchecked below their current ends",
                n=len(self.unchecked),
            )
        # At open, before the writer thread exists: nothing else writes yet.
        self._commit([("p", "meta", UNCHECKED_KEY, encode_unchecked(self.unchecked))])

    def unchecked_below(self, uid: int, partition: int) -> int:
        """Records of the partition below this offset may lack a checksum."""
        return self.unchecked.get((uid, partition), 0)

    def close(self) -> Deferred[None]:
        """Commit what is queued, stop the threads, close the environment."""
        d: Deferred[None] = Deferred()
        self._release_hold()

        def finish(_: object = None) -> None:
            if self._used_call is not None and self._used_call.active():
                self._used_call.cancel()
            self._used_call = None
            self._wal_thread.stop()
            self._writer.stop()
            self._readers.stop()
            if self.wal is not None:
                self.wal.close()
            if self.env is not None:
                self.env.close()
                self.env = None
            d.callback(None)

        if self._wal_queue or self._wal_in_flight:
            drained: Deferred[None] = Deferred()
            self._wal_drained.append(drained)
            drained.addCallback(lambda _: self.close())
            return drained.addCallback(lambda _: None)
        if self._queue or self._in_flight or self._chained:
            self._stopping = Deferred()
            self._stopping.addBoth(finish)
            self._want_applies()
            self._schedule()
        else:
            finish()
        return d

    # -- writing ---------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        """Bytes queued for or in the current commit (for backpressure)."""
        return self._pending_bytes + self._in_flight_bytes

    def write(
        self, ops: list[Op], nbytes: int = 0, *, wal: bool = False, urgent: bool = False
    ) -> Deferred[None]:
        """Queue ``ops`` for the next group commit; fires once they are on disk.

        ``wal=True`` (a message append) with the log on: fires once they are in a
        write-ahead-log frame, fsynced, and every write made before them is on disk
        too; LMDB gets them afterwards (docs/architecture.md, "The write-ahead log").
        ``urgent=True`` (a Raft append someone waits for) ends a :meth:`hold`: the
        writes held commit with it, in one transaction."""
        d: Deferred[None] = Deferred()
        self._write(ops, nbytes, d, wal, urgent)
        return d

    def write_then(
        self,
        ops: list[Op],
        nbytes: int,
        fn: Callable[..., object],
        *args: Any,
        wal: bool = False,
        urgent: bool = False,
    ) -> None:
        """:meth:`write`, answered by a plain call instead of a Deferred: ``fn(None,
        *args)`` when the Deferred would fire -- exactly then: once the write is on disk
        (``wal=True``: in a fsynced frame, every write made before it on disk too) --
        or ``fn(failure, *args)`` when it would fail (at once if the store failed
        already).  The publish path's write, one a message (issue 16, lat41)."""
        self._write(ops, nbytes, Then(fn, args), wal, urgent)

    def _write(self, ops: list[Op], nbytes: int, waiter: Waiter, wal: bool, urgent: bool) -> None:
        if self.failed is not None:
            waiter.errback(self.failed)
            return
        if urgent and self._hold_call is not None:
            self.holds_joined += 1
            self._release_hold()
        if self.wal is not None:
            # (past ``wal_lag_bytes`` not yet in LMDB, a write waits for LMDB as without
            # the log: the acks slow down with LMDB instead of running ahead into 429s)
            logged = wal and self.pending_bytes <= self.wal_lag_bytes and loggable(ops)
            self._pending_bytes += nbytes
            if not logged:
                self._direct_made += 1
                if isinstance(waiter, Deferred):
                    waiter.addBoth(self._direct_committed)
                else:
                    waiter = Then(self._direct_then, (waiter,))
            if logged or self._wal_queue or self._wal_in_flight:
                self._wal_queue.append(
                    (ops, waiter, nbytes, write_weight(ops, nbytes), logged, self._direct_made)
                )
                # (scheduled, not handed over at once: every write of this poll round
                # shares the frame -- lat41 measured handing a lone write over from here,
                # and a 4-connection HTTP client at 1,000 msg/s fell behind with it)
                self._wal_schedule()
                return
        else:
            self._pending_bytes += nbytes
        self._queue.append((ops, waiter, nbytes, write_weight(ops, nbytes)))
        self._schedule()

    def _direct_then(self, result: Failure | None, then: Then) -> None:
        """A non-logged :meth:`write_then`: as :meth:`_direct_committed`, then its call."""
        self._direct_committed(result)
        if result is None:
            then.callback(None)
        else:
            then.errback(result)

    # -- the write-ahead log ---------------------------------------------------------

    def _wal_schedule(self) -> None:
        if not self._wal_scheduled and not self._wal_in_flight:
            self._wal_scheduled = True
            self.reactor.callLater(0, self._wal_flush)

    def _wal_flush(self) -> None:
        """Hand the non-logged writes at the queue's head to LMDB, and the logged
        writes after them (whole, up to :data:`TXN_BYTES`) to the WAL thread as one frame."""
        self._wal_scheduled = False
        if self._wal_in_flight:
            return
        queue = self._wal_queue
        if self.failed is not None and queue:
            # (a failed commit poisoned the store: nothing more is acked)
            err = self.failed
            waiting = list(queue)
            queue.clear()
            self._pending_bytes -= sum(w[2] for w in waiting)
            for w in waiting:
                w[1].errback(err)
        moved = False
        while queue and not queue[0][4]:
            w_ops, w_d, w_bytes, w_weight, _logged, _made = queue.popleft()
            self._queue.append((w_ops, w_d, w_bytes, w_weight))
            moved = True
        if moved:
            self._schedule()
        if not queue:
            self._wal_idle()
            return
        group: list[_WalWrite] = []
        weight = 0
        while queue and queue[0][4] and (not group or weight + queue[0][3] <= TXN_BYTES):
            w = queue.popleft()
            group.append(w)
            weight += w[3]
        self._wal_in_flight = True
        wal = self.wal
        assert wal is not None
        # LMDB has every write made before this frame (nothing queued for it, none in a
        # commit; earlier chained frames are ahead in the writer's queue): once synced, the
        # log's thread hands the frame's apply straight to the LMDB writer -- no reactor
        # turn between the sync and LMDB's commit, and no wake-up when LMDB is done.
        chain = not self._queue and not self._in_flight
        chained_bytes = sum(w[2] for w in group) if chain else -1
        if chain:
            self._chained += 1
        self._wal_frame = (group, chain, self.reactor.seconds())
        # (the thread's answer is a plain call, :meth:`_wal_answered`: no Deferred)
        self._wal_thread.call(self._wal_append, self._wal_answered, wal, [w[0] for w in group], chained_bytes)

    def _wal_answered(self, result: tuple[int, float, float, float] | None, f: Failure | None) -> None:
        """The log's thread is done with the frame in flight: synced (``result``) or
        failed (``f``)."""
        group, chain, started = self._wal_frame
        self._wal_frame = _NO_FRAME
        if f is not None or result is None:
            self._wal_failed(group, chain, f if f is not None else Failure(Exception("no result")))
            return
        seq, began, body, synced = result
        self._wal_in_flight = False
        self.wal_synced = seq
        tl = timeline.TIMELINE
        if tl is not None:
            tl.commit(started, began, body, synced, self.reactor.seconds(), sum(len(w[0]) for w in group))
        last = len(group) - 1
        held = self._held
        ack: list[Waiter] = []
        for i, (w_ops, w_d, w_bytes, w_weight, _logged, made) in enumerate(group):
            for op in w_ops:
                if op[0] == "m" and op[1] == "records" and op[2]:
                    self._wal_parts[op[2][0][0][:8]] = seq
            if not chain:
                applied: Deferred[None] = Deferred()
                if i == last:
                    w_ops = [*w_ops, _applied_op(seq)]
                    applied.addCallback(self._frame_applied, seq)
                applied.addErrback(self._apply_failed)
                self._queue.append((w_ops, applied, w_bytes, w_weight))
            if held or made > self._direct_done:
                # (a non-logged write made before it is not on disk yet)
                held.append((w_d, made))
            else:
                ack.append(w_d)
        if not chain:
            self._schedule()
        self._firing = True
        try:
            for w_d in ack:
                w_d.callback(None)
        finally:
            self._firing = False
            self._run_after()
        self._wal_next()

    def _wal_failed(self, group: list[_WalWrite], chain: bool, f: Failure) -> None:
        self._wal_in_flight = False
        if chain:
            self._chained -= 1  # (nothing was handed to the LMDB writer)
        log.failure("write-ahead log append of {n} write(s) failed", f, n=len(group))
        err = f.value if isinstance(f.value, Exception) else Exception(str(f.value))
        self.failed = err
        waiters = [w[1] for w in group] + [w[1] for w in self._wal_queue]
        self._pending_bytes -= sum(w[2] for w in group) + sum(w[2] for w in self._wal_queue)
        self._wal_queue.clear()
        for w in waiters:
            w.errback(err)
        self._wake_readers(err)
        self._wal_next()

    def _wal_next(self) -> None:
        if self._wal_queue:
            self._wal_schedule()
        else:
            self._wal_idle()

    def _wal_idle(self) -> None:
        if not self._wal_in_flight and not self._wal_queue:
            drained, self._wal_drained = self._wal_drained, []
            for d in drained:
                d.callback(None)

    def _wal_append(
        self, wal: WriteAheadLog, writes: list[list[Op]], chained_bytes: int = -1
    ) -> tuple[int, float, float, float]:
        """WAL thread: one frame for the writes, fsynced: its seq, and when the thread
        began, had the frame encoded and had it synced (the opt-in timeline's marks).
        With ``chained_bytes`` >= 0 the frame's LMDB apply (those bytes) is handed to the
        LMDB writer from here, before the reactor hears of the sync."""
        began = time.time()
        ops: list[Op] = []
        for w in writes:
            ops.extend(w)
        body = encode_body(ops, _DB_INDEX)
        encoded = time.time()
        seq = wal.append(body)
        synced = time.time()
        if chained_bytes >= 0:
            ops.append(_applied_op(seq))
            self._chain_queue.append((ops, seq, chained_bytes, synced))
            if not self._chain_posted:
                self._chain_posted = True
                self._writer.post(self._apply_chained)
        return seq, began, encoded, synced

    def _apply_chained(self) -> None:
        """LMDB writer thread: apply every synced frame the log's thread chained here
        (:meth:`_wal_append`) in one transaction -- the frames synced while LMDB's last
        commit ran share its next, so a slow disk costs fewer LMDB syncs, not a growing
        queue of one-frame commits (bounded: past ``wal_lag_bytes`` not yet in LMDB a write
        is not logged) -- and hand the result back: with the reactor's next turn, not
        waking it, unless someone waits for LMDB (:meth:`_want_applies`) or the commit
        failed."""
        self._chain_posted = False  # (before taking: a frame queued after this posts anew)
        queue = self._chain_queue
        frames = []
        while queue:
            frames.append(queue.popleft())
        if not frames:
            return
        ops = frames[0][0] if len(frames) == 1 else [op for f in frames for op in f[0]]
        seq = frames[-1][1]
        nbytes = sum(f[2] for f in frames)
        err = self._chain_broken
        if err is None:
            try:
                self._commit(ops)
            except BaseException as e:  # (anything: the reactor must hear of it)
                err = self._chain_broken = e if isinstance(e, Exception) else Exception(repr(e))
        args = (seq, len(ops), time.time() - frames[0][3], nbytes, err, len(frames))
        reactor = cast(Any, self.reactor)
        if err is not None:
            reactor.callFromThread(self._chained_done, *args)
            return
        hand_back_quietly(reactor, self._chained_done, *args)
        if self._wake_applies:  # (read after the hand-back: see _want_applies)
            reactor.wakeUp()

    def _chained_done(
        self, seq: int, nops: int, seconds: float, nbytes: int, err: Exception | None, frames: int = 1
    ) -> None:
        """A chained apply (of ``frames`` frames, up to ``seq``) came back: as a commit's
        completion in :meth:`_flush`."""
        self._chained -= frames
        self._pending_bytes -= nbytes
        if err is None:
            self.commits += 1
            self.committed_ops += nops
            self.last_commit_seconds = seconds
            if self._used_call is None:
                self._used_call = self.reactor.callLater(USED_EVERY, self._measure_later)
            self._frame_applied(None, seq)
            if self.on_commit is not None:
                self.on_commit(seconds, nops)
        else:
            log.failure("LMDB apply of write-ahead log frame {seq} failed", Failure(err), seq=seq)
            if self.failed is None:
                self.failed = err
            waiting = list(self._queue)
            self._queue.clear()
            self._pending_bytes -= sum(w[2] for w in waiting)
            for w in waiting:
                w[1].errback(err)
            self._wake_readers(err)
        if not self._chained:
            self._wake_applies = bool(self._read_waits) or self._stopping is not None
            if self._stopping is not None and not self._in_flight and not self._queue:
                stopping, self._stopping = self._stopping, None
                stopping.callback(None)

    def _want_applies(self) -> None:
        """Someone waits for LMDB: chained applies wake the reactor from now on, and one
        already handed back quietly runs in the reactor's next turn (the writer thread
        reads :attr:`_wake_applies` after it hands back, so one of the two wakes it).
        A :meth:`hold` ends: a reader does not wait for it."""
        self._wake_applies = True
        if self._hold_call is not None:
            self._release_hold()
        if self._chained:
            wake = getattr(self.reactor, "wakeUp", None)
            if wake is not None:
                wake()

    def _direct_committed(self, result: object) -> object:
        """A non-logged write (made while the log is on) committed or failed: the
        synced writes it held back may be acked now."""
        self._direct_done += 1
        held = self._held
        if held:
            outer = self._firing  # (fired by a commit's loop: its after-callbacks run once, after it)
            self._firing = True
            try:
                while held and held[0][1] <= self._direct_done:
                    w_d, _made = held.popleft()
                    if isinstance(result, Failure):
                        w_d.errback(result.value)
                    else:
                        w_d.callback(None)
            finally:
                if not outer:
                    self._firing = False
                    self._run_after()
        return result

    def _frame_applied(self, _: object, seq: int) -> None:
        self.wal_applied = max(self.wal_applied, seq)
        wal = self.wal
        if wal is None or self._releasing:
            return
        segs = wal.segments
        if len(segs) > 1 and segs[1] - 1 <= self.wal_applied:
            # Segments LMDB holds wholly are dropped on the log's thread, between
            # appends (not inside one: an unlink and a directory sync).
            self._releasing = True
            self._wal_thread.submit(wal.release, self.wal_applied).addBoth(self._released)
        waits = self._read_waits
        if waits:
            self._read_waits = [(s, d) for s, d in waits if s > self.wal_applied]
            for s, d in waits:
                if s <= self.wal_applied:
                    d.callback(None)

    def _released(self, result: object) -> None:
        self._releasing = False
        if isinstance(result, Failure):
            log.failure("dropping applied write-ahead log segments failed", result)

    def _apply_failed(self, f: Failure) -> None:
        # The store is poisoned (``_flush``); the frames stay in the log for the next start.
        self._wake_readers(f.value if f.value is not None else Exception("LMDB commit failed"))

    def _wake_readers(self, err: BaseException) -> None:
        waits, self._read_waits = self._read_waits, []
        for _s, d in waits:
            d.errback(err)

    def _lmdb_caught_up(self, prefix: bytes | None = None) -> Deferred[None] | None:
        """None when LMDB holds every synced frame (of the partition with key
        ``prefix``, or every frame); else a Deferred firing once it does."""
        if self.wal is None:
            return None
        seq = self.wal_synced if prefix is None else self._wal_parts.get(prefix, 0)
        if seq <= self.wal_applied:
            return None
        if self.failed is not None:
            from twisted.internet.defer import fail

            return fail(self.failed)
        d: Deferred[None] = Deferred()
        self._read_waits.append((seq, d))
        self._want_applies()
        return d

    def put_records(self, uid: int, partition: int, records: list[Record]) -> list[Op]:
        """Ops storing ``records`` of one partition."""
        return [("m", "records", storage_items(uid, partition, records))]

    def hold(self, seconds: float) -> None:
        """Let the writes queued from now wait up to ``seconds`` before they are
        committed -- until an ``urgent`` write comes, which they then join in one
        transaction (issue 23, create38).  A topic's create or delete applied here
        queues its writes (the broker's record, the new replica's state and
        control record, the commit index) right when the proposer is answered,
        and the client's next create follows at once: its Raft append, the one
        write a create waits for on each node, waited for their commit (two
        synchronous disk writes) before its own.  Held, they join that append's
        commit.  Nothing is acked earlier or differently: every write still fires
        once its commit is on disk, in the order made; a held one at most
        ``seconds`` later.  A read waiting for LMDB ends the hold."""
        if self._hold_call is None and self._stopping is None and self.env is not None:
            self.holds += 1
            self._hold_call = self.reactor.callLater(seconds, self._release_hold)

    def _release_hold(self) -> None:
        call, self._hold_call = self._hold_call, None
        if call is not None and call.active():
            call.cancel()
        if self._queue:
            self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and not self._in_flight:
            self._scheduled = True
            if self._turn_end.due:
                # (a call is held for this turn's end -- a leader's appends to its
                # followers: the commit's hand-off joins it, one timed call a turn
                # fewer; alone in its turn -- a follower's commit -- it asks the
                # clock itself, without the queue's overhead; issue 16, turn44)
                self._turn_end.soon(self._flush)
            else:
                self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self._in_flight or self._hold_call is not None:
            return
        queue = self._queue
        if not queue:
            if self._stopping is not None and not self._chained:
                stopping, self._stopping = self._stopping, None
                stopping.callback(None)
            return
        ops, waiters, nbytes = self._take(queue, len(queue))
        self._in_flight = True
        self._in_flight_bytes = nbytes
        self._pending_bytes -= nbytes
        # (posted: the writer thread answers each commit itself, :meth:`_commit_run`)
        self._writer.post(self._commit_run, ops, waiters, nbytes, self.reactor.seconds())

    @staticmethod
    def _take(
        queue: deque[tuple[list[Op], Waiter, int, int]], most: int
    ) -> tuple[list[Op], list[Waiter], int]:
        """The queue's first whole writes -- at most ``most`` of them, at least one --
        up to :data:`TXN_BYTES` of weight: their ops, waiters and bytes."""
        ops: list[Op] = []
        waiters: list[Waiter] = []
        nbytes = weight = 0
        while most > 0 and queue and (not waiters or weight + queue[0][3] <= TXN_BYTES):
            w_ops, w_d, w_bytes, w_weight = queue.popleft()
            ops.extend(w_ops)
            waiters.append(w_d)
            nbytes += w_bytes
            weight += w_weight
            most -= 1
        return ops, waiters, nbytes

    def _commit_run(self, ops: list[Op], waiters: list[Waiter], nbytes: int, started: float) -> None:
        """Writer thread: commit ``ops``, hand the commit back to the reactor
        (:meth:`_committed`) and -- while writes queued meanwhile wait for the next
        commit and no other job waits for the thread -- take them and commit them too,
        here, each commit handed back before the next begins (issue 16, wthread43).

        Without this the next commit began only after a round through the reactor:
        this thread went to sleep on its job queue, the reactor woke for the hand-back,
        queued the next commit and this thread woke again -- and, the reactor holding
        the GIL then, slept once more until it let go: two more of the thread's
        wake-ups, each a wait for a core on a busy machine, for every commit that
        follows another.  Nothing is acked differently: each commit's writes are acked
        on the reactor once it is on disk, in the order made.

        While a commit runs, the reactor only appends to :attr:`_queue` (``_flush``
        waits for ``_in_flight``), so this thread is its only taker; it takes only the
        writes it saw before finding the job queue empty, so a job posted before them
        (a write-ahead-log frame's apply, :meth:`_apply_chained`) still runs first."""
        tl = timeline.TIMELINE
        queue = self._queue
        call = cast(Any, self.reactor).callFromThread
        while True:
            result: object = None
            f: Failure | None = None
            try:
                if tl is None:
                    self._commit(ops)
                else:
                    result = self._commit_timed(ops)
            except BaseException:
                f = Failure()
            seen = len(queue)
            if (
                f is None
                and seen
                and self._hold_call is None
                and self._chain_broken is None
                and not self._writer.has_jobs()
            ):
                nxt = self._take(queue, seen)
                call(self._committed, ops, waiters, nbytes, started, result, f, nxt[2])
                ops, waiters, nbytes = nxt
                started = self.reactor.seconds()
                continue
            call(self._committed, ops, waiters, nbytes, started, result, f, -1)
            return

    def _committed(
        self,
        ops: list[Op],
        waiters: list[Waiter],
        nbytes: int,
        started: float,
        result: object,
        f: Failure | None,
        next_bytes: int,
    ) -> None:
        """A commit came back from the writer thread (:meth:`_commit_run`): ``next_bytes``
        >= 0 when the thread took the next one already (those bytes), -1 when it is idle."""
        if f is not None:
            log.failure("LMDB commit of {n} ops failed", f, n=len(ops))
            result = f.value
        if next_bytes >= 0:
            self._in_flight_bytes = next_bytes
            self._pending_bytes -= next_bytes
        else:
            self._in_flight = False
            self._in_flight_bytes = 0
        self.commits += 1
        self.committed_ops += len(ops)
        self.last_commit_seconds = self.reactor.seconds() - started
        tl = timeline.TIMELINE
        if tl is not None and isinstance(result, list) and len(result) == 3:
            began, body, synced = result
            tl.commit(started, began, body, synced, self.reactor.seconds(), len(ops))
        if self._used_call is None and not isinstance(result, Exception):
            self._used_call = self.reactor.callLater(USED_EVERY, self._measure_later)
        if isinstance(result, Exception):
            # A failed commit poisons the store: later batches must not
            # commit past a gap, so everything queued fails too and the
            # node stops taking writes (readyz says why).
            self.failed = result
            waiters.extend(w[1] for w in self._queue)
            self._queue.clear()
            self._pending_bytes = 0
        elif self._queue and next_bytes < 0:
            # The writes queued meanwhile go to the disk now, before this
            # commit's callbacks run (issue 16: not a reactor turn later).
            self._flush()
        self._firing = True
        try:
            for w in waiters:
                if isinstance(result, Exception):
                    w.errback(result)
                else:
                    w.callback(None)
        finally:
            self._firing = False
            self._run_after()
        if self.on_commit is not None:
            # (the metrics after the acks and the streams' events: off their path)
            self.on_commit(self.last_commit_seconds, len(ops))
        if self._queue:
            self._schedule()
        elif self._stopping is not None and not self._in_flight and not self._chained:
            stopping, self._stopping = self._stopping, None
            stopping.callback(None)

    def after_callbacks(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once every write of the commit now firing its callbacks has
        fired them -- at once when no commit is firing.  The broker settles a group
        commit's writes there together: each partition's stream is woken once and
        sends the group's records in one event before the publishes are answered,
        instead of a record's event waiting for the answers of the writes committed
        before it in the same group (issue 16)."""
        if self._firing:
            self._after.append(fn)
        else:
            fn()

    def _run_after(self) -> None:
        after, self._after = self._after, []
        for fn in after:
            try:
                fn()
            except Exception:
                log.failure("a commit's after-callbacks call failed")

    def _commit_timed(self, ops: list[Op]) -> list[float]:
        """:meth:`_commit`, returning when it began, when its ops were done and when
        it was committed (the opt-in timeline, :mod:`sprawl.storage.timeline`)."""
        times: list[float] = []
        self._commit(ops, times)
        times.append(time.time())
        return times

    def _commit(self, ops: list[Op], times: list[float] | None = None) -> None:
        """Writer thread: apply ``ops`` in one transaction (fsynced on commit)."""
        env = self.env
        assert env is not None
        if self._chain_broken is not None:
            # (a chained apply failed: nothing commits past the gap)
            raise self._chain_broken
        dbs = self.dbs
        if times is not None:
            times.append(time.time())
        try:
            with env.begin(write=True) as txn:
                for op in ops:
                    kind = op[0]
                    if kind == "m":
                        txn.cursor(db=dbs[op[1]]).putmulti(op[2])
                    elif kind == "p":
                        txn.put(op[2], op[3], db=dbs[op[1]])
                    elif kind == "d":
                        txn.delete(op[2], db=dbs[op[1]])
                    elif kind == "r":
                        self._delete_range(txn, dbs[op[1]], op[2], op[3])
                    elif kind == "x":
                        op[2](env, txn, dbs[op[1]])
                if times is not None:
                    times.append(time.time())
        except lmdb.MapFullError:
            raise StorageFull("LMDB map is full") from None

    @staticmethod
    def _delete_range(txn: Any, db: Any, start: bytes, end: bytes) -> None:
        cur = txn.cursor(db=db)
        if not cur.set_range(start):
            return
        while cur.key() < end:
            if not cur.delete():
                break

    def measure_used(self) -> Deferred[None]:
        """Measure :attr:`used_bytes` now, on the writer thread after the commits
        queued there; fires once it is measured."""
        return self._writer.submit(self._update_used)

    def _measure_later(self) -> None:
        self._used_call = None
        if self.env is not None and self._stopping is None:
            self.measure_used().addErrback(lambda f: log.failure("measuring LMDB use failed", f))

    def _update_used(self) -> None:
        env = self.env
        if env is not None:
            # Pages holding live data, not the file's high-water mark
            # (last_pgno never shrinks): LMDB reuses the pages retention frees,
            # so the disk budget must count them as free again.
            st = env.stat()
            pages = st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
            with env.begin() as txn:
                for db in self.dbs.values():
                    s = txn.stat(db)
                    pages += s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"]
            self.used_bytes = pages * st["psize"]

    # -- reading ---------------------------------------------------------------

    def read_records(
        self,
        uid: int,
        partition: int,
        start: int,
        limit: int,
        end: int,
        dense: list[tuple[int, int]] | None = None,
        max_bytes: int | None = None,
    ) -> Deferred[list[Record]]:
        """Records ``[start, end)`` of one partition, at most ``limit`` (and,
        with ``max_bytes``, about that many bytes: the scan stops once it
        holds them), on a reader thread, checked (see :meth:`read_records_sync`).
        With the write-ahead log on, first waits for LMDB to hold the partition's
        acked records."""
        wait = self._lmdb_caught_up(keys.partition_prefix(uid, partition))
        if wait is not None:
            return wait.addCallback(
                lambda _: self.read_records(uid, partition, start, limit, end, dense, max_bytes)
            )
        return deferToThreadPool(
            cast("IReactorFromThreads", self.reactor),
            self._readers,
            self.read_records_sync,
            uid,
            partition,
            start,
            limit,
            end,
            dense,
            max_bytes,
        )

    def read_records_sync(
        self,
        uid: int,
        partition: int,
        start: int,
        limit: int,
        end: int,
        dense: list[tuple[int, int]] | None = None,
        max_bytes: int | None = None,
    ) -> list[Record]:
        """Blocking form of :meth:`read_records` (reader threads and startup
        only).  ``dense``: the offsets of ``[start, end)`` that must be
        present (default: all); raises
        :class:`~sprawl.log.damage.DamagedRange` at damage met before ``limit``."""
        budget = max_bytes if max_bytes is not None else 1 << 62
        return self.scan_sync(uid, partition, start, end, dense=dense, limit=limit, max_bytes=budget).records

    def scan_sync(
        self,
        uid: int,
        partition: int,
        start: int,
        end: int,
        *,
        dense: list[tuple[int, int]] | None = None,
        limit: int = 1 << 62,
        max_bytes: int = 1 << 62,
        collect: str = "records",
    ) -> Scan:
        """A checked scan of one partition (:func:`sprawl.storage.verify.scan_records`)."""
        env = self.env
        if env is None:
            return Scan(next=start)
        with env.begin(buffers=False) as txn:
            return scan_records(
                txn,
                self.dbs["records"],
                uid,
                partition,
                start,
                end,
                env=env,
                dense=dense,
                unchecked_below=self.unchecked_below(uid, partition),
                limit=limit,
                max_bytes=max_bytes,
                collect=collect,
            )

    def call_reader(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run a read-only function on the reader pool (with the write-ahead log on,
        once LMDB holds every write acked so far)."""
        wait = self._lmdb_caught_up()
        if wait is not None:
            return wait.addCallback(lambda _: self.call_reader(fn, *args))
        return deferToThreadPool(cast("IReactorFromThreads", self.reactor), self._readers, fn, *args)

    def last_record_offset(self, uid: int, partition: int) -> int | None:
        """Highest stored offset of a partition whose record is sound
        (startup recovery; see :func:`last_sound_offset`)."""
        env = self.env
        assert env is not None
        return last_sound_offset(
            env, self.dbs["records"], uid, partition, self.unchecked_below(uid, partition)
        )

    def scan(self, db: str, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """All (key, value) pairs under ``prefix`` (startup recovery)."""
        env = self.env
        assert env is not None
        with env.begin(db=self.dbs[db]) as txn:
            cur = txn.cursor()
            if not cur.set_range(prefix):
                return
            for k, v in cur:
                if not k.startswith(prefix):
                    break
                yield bytes(k), bytes(v)

    def get(self, db: str, key: bytes) -> bytes | None:
        """One value (startup and rare lookups)."""
        env = self.env
        assert env is not None
        with env.begin(db=self.dbs[db]) as txn:
            v = txn.get(key)
            return bytes(v) if v is not None else None


def partition_ends(env: Any, db: Any) -> dict[tuple[int, int], int]:
    """Every partition's end (last offset + 1) in the records database."""
    out: dict[tuple[int, int], int] = {}
    with env.begin(db=db) as txn:
        cur = txn.cursor()
        if not cur.first():
            return out
        for _ in range(1 << 32):
            k = bytes(cur.key())
            if len(k) != 16:
                if not cur.next():
                    break
                continue
            uid, p, _off = keys.parse_record_key(k)
            nxt = keys.partition_prefix(uid, p + 1) + b"\x00" * 8
            found = cur.set_range(nxt)
            if found:
                cur.prev()
            else:
                cur.last()
            u2, p2, last = keys.parse_record_key(bytes(cur.key()))
            out[(uid, p)] = (last if (u2, p2) == (uid, p) else _off) + 1
            if not found or not cur.set_range(nxt):
                break
    return out


def encode_unchecked(ends: dict[tuple[int, int], int]) -> bytes:
    """The ``node/unchecked`` note as stored."""
    return json.dumps({"v": 1, "parts": [[u, p, e] for (u, p), e in sorted(ends.items())]}).encode()


def decode_unchecked(data: bytes) -> dict[tuple[int, int], int]:
    """Inverse of :func:`encode_unchecked`."""
    doc = json.loads(data)
    return {(int(u), int(p)): int(e) for u, p, e in doc["parts"]}


def last_sound_offset(env: Any, db: Any, uid: int, partition: int, unchecked_below: int = 0) -> int | None:
    """Highest offset of a partition whose record is sound: walking back from
    its last key past entries that fail their checksum (a damaged key may
    decode to any offset), at most 1,000 of them."""
    with env.begin(db=db) as txn:
        cur = txn.cursor()
        nxt = keys.partition_prefix(uid, partition + 1) + b"\x00" * 8
        if cur.set_range(nxt):
            if not cur.prev():
                return None
        elif not cur.last():
            return None
        for _ in range(1000):
            u, p, off = keys.parse_record_key(bytes(cur.key()))
            if (u, p) != (uid, partition):
                return None
            try:
                check_stored(partition, off, bytes(cur.value()), unchecked_ok=off < unchecked_below)
                return off
            except CorruptRecord:
                log.warn(
                    "the last stored records of partition {uid}/{partition} include a damaged "
                    "entry (offset {off} by its key); looking further back",
                    uid=uid,
                    partition=partition,
                    off=off,
                )
            if not cur.prev():
                return None
        return None
