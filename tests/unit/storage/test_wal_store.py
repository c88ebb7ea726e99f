"""LmdbStore with the write-ahead log on (``wal=True``), the real reactor: a logged
write is acked after the log's fsync and before LMDB's commit, LMDB applies every write
in the order made, reads of LMDB wait for what was acked, and a log LMDB does not
hold yet is applied at open."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred

from harness import the_reactor, until
from sprawl.log.record import Record
from sprawl.storage import keys
from sprawl.storage.lmdb import DBS, WAL_APPLIED_KEY, LmdbStore
from sprawl.storage.wal import WriteAheadLog
from sprawl.storage.wal_format import encode_body


def recs(start: int, n: int) -> list[Record]:
    """``n`` small records at offsets ``start..``."""
    return [
        Record(i, 0, 1000 + i, f"id{i}", None, {}, f"m{i}".encode(), True) for i in range(start, start + n)
    ]


@pytest_twisted.async_yield_fixture
async def store(tmp_path: Path) -> AsyncIterator[LmdbStore]:
    """An open store with the log on; closed after the test."""
    s = LmdbStore(str(tmp_path / "lmdb"), reactor=the_reactor(), map_size=64 * 1024**2, wal=True)
    s.open()
    yield s
    if s.env is not None:
        await s.close()


class LmdbGate:
    """Holds the LMDB writer thread inside ``_commit`` until released (bounded wait)."""

    def __init__(self, store: LmdbStore):
        self.release = threading.Event()
        self.entered: Deferred[None] = Deferred()
        self.calls = 0
        self._orig = store._commit
        store._commit = self._commit  # type: ignore[method-assign,assignment]

    def _commit(self, ops: list[Any], *rest: Any) -> None:
        self.calls += 1
        if self.calls == 1:
            the_reactor().callFromThread(self.entered.callback, None)
            assert self.release.wait(30), "gate never released"
        self._orig(ops, *rest)


def applied(store: LmdbStore) -> int:
    """The frame seq LMDB says it holds."""
    raw = store.get("meta", WAL_APPLIED_KEY)
    return int.from_bytes(raw, "big") if raw else 0


@pytest_twisted.ensureDeferred
async def test_a_logged_write_is_acked_before_lmdb_commits_and_read_after(store: LmdbStore) -> None:
    """With LMDB's commit held, a logged write is acked (its frame fsynced); a read of
    LMDB waits until LMDB holds it and then returns it whole; the applied seq is stored."""
    first = store.write(store.put_records(3, 0, recs(0, 2)), wal=True)
    await first  # (LMDB free: applied in the background)
    gate = LmdbGate(store)
    acked = store.write(store.put_records(3, 0, recs(2, 3)), wal=True)
    await gate.entered  # LMDB holds frame 1's commit or frame 2's: either way held
    await acked
    assert store.wal is not None and store.wal.appends == 2 and store.wal_synced == 2
    read = store.read_records(3, 0, 0, 100, 100)
    assert not read.called
    gate.release.set()
    got = await read
    assert [r.offset for r in got] == [0, 1, 2, 3, 4]
    assert store.wal_applied == 2 == applied(store)


@pytest_twisted.ensureDeferred
async def test_a_write_made_before_a_logged_one_holds_its_ack(store: LmdbStore) -> None:
    """A non-logged write made first is on disk before a later logged write is acked
    (a crash may not keep the later write and lose the earlier); and a non-logged
    write made after a logged one is applied after it (a delete is never undone)."""
    gate = LmdbGate(store)
    key = keys.record_key(5, 0, 0)
    direct = store.write([("p", "meta", b"k1", b"v1")])
    await gate.entered
    logged = store.write(store.put_records(5, 0, recs(0, 1)), wal=True)
    after = store.write([("d", "records", key)])
    await until(lambda: store.wal_synced == 1, "the frame's fsync")
    assert not logged.called and not direct.called
    gate.release.set()
    await direct
    await logged
    await after
    assert store.get("meta", b"k1") == b"v1"
    assert store.get("records", key) is None  # the delete came after the put


@pytest_twisted.ensureDeferred
async def test_frames_lmdb_lacks_are_applied_at_open(tmp_path: Path) -> None:
    """Frames past LMDB's applied seq (a crash between the ack and LMDB's commit) are
    applied at open, before anything reads LMDB; a store opened without the log
    applies them too and removes the log."""
    path = str(tmp_path / "lmdb")
    s = LmdbStore(path, reactor=the_reactor(), map_size=64 * 1024**2, wal=True)
    s.open()
    await s.write(s.put_records(9, 0, recs(0, 2)), wal=True)
    await s.close()
    assert s.wal is not None
    # Two frames the store appended but LMDB never applied, as a crash leaves them.
    wal = WriteAheadLog(path + "-wal")
    assert [f.seq for f in wal.recover(1)] == []
    index = {n: i for i, n in enumerate(DBS)}
    ops = LmdbStore.put_records(s, 9, 0, recs(2, 3))
    wal.append(encode_body(ops, index))
    wal.append(encode_body([("p", "meta", b"after", b"yes")], index))
    wal.close()
    s2 = LmdbStore(path, reactor=the_reactor(), map_size=64 * 1024**2, wal=True)
    s2.open()
    try:
        assert applied(s2) == 3 and s2.get("meta", b"after") == b"yes"
        assert [r.offset for r in s2.read_records_sync(9, 0, 0, 100, 100)] == [0, 1, 2, 3, 4]
        assert s2.last_record_offset(9, 0) == 4
    finally:
        await s2.close()
    wal = WriteAheadLog(path + "-wal")
    list(wal.recover(3))
    wal.append(encode_body([("p", "meta", b"late", b"1")], index))
    wal.close()
    s3 = LmdbStore(path, reactor=the_reactor(), map_size=64 * 1024**2)  # the log off
    s3.open()
    try:
        assert s3.get("meta", b"late") == b"1" and not Path(path + "-wal").exists()
    finally:
        await s3.close()


@pytest_twisted.ensureDeferred
async def test_a_failed_append_fails_the_writes_and_poisons_the_store(store: LmdbStore) -> None:
    """An append that fails (a full disk) acks nothing of its group and later writes
    are refused, as after a failed commit."""
    assert store.wal is not None

    def broken(body: bytes) -> int:
        raise OSError(28, "No space left on device")

    store.wal.append = broken  # type: ignore[method-assign]
    d = store.write(store.put_records(1, 0, recs(0, 1)), wal=True)
    failures: list[Any] = []
    d.addErrback(failures.append)
    await until(lambda: bool(failures), "the failed append")
    assert failures[0].check(OSError)
    assert store.failed is not None
    later: list[Any] = []
    store.write(store.put_records(1, 0, recs(1, 1)), wal=True).addErrback(later.append)
    assert later


@pytest_twisted.ensureDeferred
async def test_segments_lmdb_holds_are_dropped_while_the_node_runs(tmp_path: Path) -> None:
    """The log stays bounded: once LMDB has applied every frame of a segment, the
    segment is deleted (between appends), the current one kept."""
    path = str(tmp_path / "lmdb")
    s = LmdbStore(path, reactor=the_reactor(), map_size=64 * 1024**2, wal=True, wal_segment_bytes=4096)
    s.open()
    try:
        for i in range(40):
            await s.write(
                s.put_records(2, 0, [Record(i, 0, 1, f"i{i}", None, {}, b"p" * 500, True)]), wal=True
            )
        await s.write([])  # (LMDB has applied every frame before this commits)
        assert s.wal is not None and s.wal_applied == 40
        await s.write(s.put_records(2, 0, recs(40, 1)), wal=True)  # (a release runs between appends)
        await s.write([])
        await until(lambda: len(list(Path(path + "-wal").iterdir())) <= 2, "the applied segments dropped")
        assert [r.offset for r in s.read_records_sync(2, 0, 0, 100, 100)] == list(range(41))
    finally:
        await s.close()


class CountingReactor:
    """The real reactor, counting the hand-backs that wake it (``callFromThread``) and
    the bare wake-ups; everything else (``threadCallQueue`` included) is the reactor's."""

    def __init__(self) -> None:
        self.real = the_reactor()
        self.from_thread = 0
        self.wake_ups = 0

    def callFromThread(self, f: Any, *args: Any, **kw: Any) -> None:
        self.from_thread += 1
        self.real.callFromThread(f, *args, **kw)

    def wakeUp(self) -> None:
        self.wake_ups += 1
        self.real.wakeUp()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest_twisted.ensureDeferred
async def test_a_frame_wakes_the_reactor_once_and_lmdb_applies_it_without_a_turn(tmp_path: Path) -> None:
    """Logged writes one at a time (nothing else queued for LMDB): each frame's sync
    comes back to the reactor (one wake-up), its LMDB apply is handed from the log's
    thread to the LMDB writer and comes back without waking the reactor; LMDB still
    holds every frame, in order, and a read made meanwhile is woken."""
    reactor = CountingReactor()
    s = LmdbStore(str(tmp_path / "lmdb"), reactor=reactor, map_size=64 * 1024**2, wal=True)
    s.open()
    s._measure_later = lambda: None  # type: ignore[method-assign]  # (its hand-backs aside)
    try:
        for i in range(20):
            await s.write(s.put_records(4, 0, recs(i, 1)), wal=True)
        assert reactor.from_thread == 20 and reactor.wake_ups == 0  # (two per frame before)
        await until(lambda: s.wal_applied == 20, "LMDB's applies")
        # (frames synced while LMDB commits share its next commit: 20 commits at most)
        assert applied(s) == 20 and 1 <= s.commits <= 20 and s.pending_bytes == 0
        gate = LmdbGate(s)
        await s.write(s.put_records(4, 0, recs(20, 1)), wal=True)
        await gate.entered  # (frame 21's apply held on the LMDB writer)
        read = s.read_records(4, 0, 0, 100, 100)
        assert not read.called
        gate.release.set()
        got = await read  # (the waiting read made the apply's completion wake the reactor)
        assert [r.offset for r in got] == list(range(21))
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_frames_synced_while_lmdb_commits_share_its_next_commit(store: LmdbStore) -> None:
    """While LMDB's writer is in a commit, the frames synced meanwhile wait for it and
    then go into one LMDB transaction (one commit, two syncs, for all of them) -- not
    one commit each -- and LMDB holds every one, in order."""
    gate = LmdbGate(store)
    await store.write(store.put_records(7, 0, recs(0, 1)), wal=True)
    await gate.entered  # (frame 1's apply held on the LMDB writer)
    for i in range(1, 4):
        await store.write(store.put_records(7, 0, recs(i, 1)), wal=True)  # (each acked alone)
    assert store.wal_synced == 4 and store.wal_applied == 0
    gate.release.set()
    await until(lambda: store.wal_applied == 4, "LMDB's applies")
    assert gate.calls == 2 and store.commits == 2 and store.pending_bytes == 0
    assert applied(store) == 4
    assert [r.offset for r in store.read_records_sync(7, 0, 0, 100, 100)] == [0, 1, 2, 3]


@pytest_twisted.ensureDeferred
async def test_a_failed_chained_apply_poisons_the_store_and_nothing_commits_after_it(
    store: LmdbStore,
) -> None:
    """A frame's LMDB apply fails on the writer thread (the frame is synced: its write
    stays acked and the log keeps it for the next start): the store refuses writes, and
    a non-logged write made after the logged one is not committed past the gap."""
    orig = store._commit
    release = threading.Event()

    def broken(ops: list[Any], *rest: Any) -> None:
        if any(op[0] == "m" for op in ops):
            # (held until the later write's commit is queued behind it on the writer)
            assert release.wait(30), "never released"
            raise OSError(5, "Input/output error")
        orig(ops, *rest)

    store._commit = broken  # type: ignore[method-assign,assignment]
    logged = store.write(store.put_records(6, 0, recs(0, 1)), wal=True)
    after = store.write([("p", "meta", b"after", b"1")])
    failures: list[Any] = []
    after.addErrback(failures.append)
    await logged
    await until(lambda: store._in_flight, "the later write's commit handed to the writer")
    release.set()
    await until(lambda: store.failed is not None and bool(failures), "the failed apply")
    assert store.get("meta", b"after") is None
    later: list[Any] = []
    store.write([("p", "meta", b"later", b"1")]).addErrback(later.append)
    assert later and store.get("meta", b"later") is None


class TimerCountingReactor(CountingReactor):
    """:class:`CountingReactor`, counting the calls made for the reactor's next turn too
    (``callLater(0, ...)``; the store's later measure of its use aside)."""

    def __init__(self) -> None:
        super().__init__()
        self.timed = 0

    def callLater(self, delay: float, f: Any, *args: Any, **kw: Any) -> Any:
        self.timed += delay == 0
        return self.real.callLater(delay, f, *args, **kw)


@pytest_twisted.ensureDeferred
async def test_a_frames_sync_comes_back_without_a_deferred(tmp_path: Path) -> None:
    """Logged writes one at a time: the log thread's answer is a plain call, not a
    Deferred made by ``submit`` (20 on main); the hand-over is still one ``callLater(0)``
    a frame (every write of a poll round shares it); each write is acked only once its
    frame is fsynced, one frame a write, and LMDB holds them all, in order."""
    reactor = TimerCountingReactor()
    s = LmdbStore(str(tmp_path / "lmdb"), reactor=reactor, map_size=64 * 1024**2, wal=True)
    s.open()
    s._measure_later = lambda: None  # type: ignore[method-assign]  # (its hand-backs aside)
    submitted = [0]
    submit = s._wal_thread.submit

    def counted(*args: Any) -> Deferred[Any]:
        submitted[0] += 1
        return submit(*args)

    s._wal_thread.submit = counted  # type: ignore[method-assign]
    appended = s._wal_append
    synced: list[int] = []

    def append(*args: Any) -> Any:
        out = appended(*args)
        synced.append(out[0])  # (on the log's thread, once the frame's fsync returned)
        return out

    s._wal_append = append  # type: ignore[method-assign]
    try:
        for i in range(20):
            d = s.write(s.put_records(4, 0, recs(i, 1)), wal=True)
            assert s._wal_scheduled and not s._wal_in_flight  # (handed over at the turn's end)
            await d
            assert synced[-1] == s.wal_synced == i + 1  # (acked after its frame's sync)
        assert submitted[0] == 0 and reactor.timed == 20
        assert s.wal is not None and s.wal.appends == 20
        await until(lambda: s.wal_applied == 20, "LMDB's applies")
        assert [r.offset for r in s.read_records_sync(4, 0, 0, 100, 100)] == list(range(20))
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_writes_made_while_a_frame_is_in_flight_share_the_next_frame(store: LmdbStore) -> None:
    """The grouping under load is kept: the first write goes alone, the writes made while
    its frame is on the log's thread wait for it and then go as one frame; every write is
    acked after its own frame's fsync, in the order made."""
    gate = threading.Event()
    entered: Deferred[None] = Deferred()
    appended = store._wal_append
    calls = [0]

    def append(*args: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            the_reactor().callFromThread(entered.callback, None)
            assert gate.wait(30), "gate never released"
        return appended(*args)

    store._wal_append = append  # type: ignore[method-assign]
    acked: list[int] = []
    first = store.write(store.put_records(8, 0, recs(0, 1)), wal=True)
    first.addCallback(lambda _: acked.append(0))
    await entered
    rest = [store.write(store.put_records(8, 0, recs(i, 1)), wal=True) for i in range(1, 6)]
    for i, d in enumerate(rest, 1):
        d.addCallback(lambda _, i=i: acked.append(i))
    assert not acked and store.wal_synced == 0
    gate.set()
    await first
    for d in rest:
        await d
    assert acked == [0, 1, 2, 3, 4, 5]
    assert store.wal is not None and store.wal.appends == 2 and store.wal_synced == 2
    await until(lambda: store.wal_applied == 2, "LMDB's applies")
    assert [r.offset for r in store.read_records_sync(8, 0, 0, 100, 100)] == list(range(6))


@pytest_twisted.ensureDeferred
async def test_write_then_is_called_where_the_writes_deferred_would_fire(store: LmdbStore) -> None:
    """``write_then``: the call comes once the frame is fsynced (not before: the log's
    thread held), in the order made; a non-logged one once LMDB holds it; a call that
    raises does not keep the writes acked after it from their calls; a failed store
    answers with the failure at once."""
    gate = threading.Event()
    entered: Deferred[None] = Deferred()
    appended = store._wal_append
    calls: list[tuple[object, str, int]] = []

    def append(*args: Any) -> Any:
        if not entered.called:
            the_reactor().callFromThread(entered.callback, None)
            assert gate.wait(30), "gate never released"
        return appended(*args)

    def then(result: object, tag: str) -> None:
        calls.append((result, tag, store.wal_synced))
        if tag == "raises":
            raise RuntimeError("a caller's bug")

    store._wal_append = append  # type: ignore[method-assign]
    store.write_then(store.put_records(9, 0, recs(0, 1)), 0, then, "first", wal=True)
    await entered
    store.write_then(store.put_records(9, 0, recs(1, 1)), 0, then, "raises", wal=True)
    store.write_then(store.put_records(9, 0, recs(2, 1)), 0, then, "after", wal=True)
    assert calls == []  # (the frame is not synced yet)
    gate.set()
    await until(lambda: len(calls) == 3, "the calls")
    assert [(r, tag) for r, tag, _ in calls] == [(None, "first"), (None, "raises"), (None, "after")]
    assert [seq for _, _, seq in calls] == [1, 2, 2]  # (each after its own frame's sync)
    direct: list[object] = []
    store.write_then([("p", "meta", b"d1", b"1")], 0, lambda r: direct.append((r, store.get("meta", b"d1"))))
    await until(lambda: bool(direct), "the non-logged write's call")
    assert direct == [(None, b"1")]
    store.failed = OSError(5, "Input/output error")
    failed: list[Any] = []
    store.write_then(store.put_records(9, 0, recs(3, 1)), 0, failed.append, wal=True)
    assert len(failed) == 1 and failed[0].check(OSError)
    store.failed = None
