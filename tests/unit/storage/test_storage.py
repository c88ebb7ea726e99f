"""The LMDB tier with the real reactor: group commit on the writer thread, reads,
range deletes, failure poisoning, and clean shutdown."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater

from harness import the_reactor, until
from harness.counting import count_calls
from sprawl.log.record import Record
from sprawl.storage import keys
from sprawl.storage.lmdb import TXN_BYTES, LmdbStore, StorageFull, write_weight


def recs(start: int, n: int, size: int = 10, binary: bool = False) -> list[Record]:
    """``n`` records at offsets ``start..`` with distinct payloads."""
    out = []
    for i in range(start, start + n):
        payload = bytes([i % 256]) * size if binary else f"m{i}".encode().ljust(size, b".")
        out.append(Record(i, 0, 1000 + i, f"id{i}", None, {"i": str(i)}, payload, not binary))
    return out


@pytest_twisted.async_yield_fixture
async def store(tmp_path: Path) -> AsyncIterator[LmdbStore]:
    """An open store in tmp_path; closed (threads stopped) after the test."""
    s = LmdbStore(str(tmp_path / "lmdb"), reactor=the_reactor(), map_size=64 * 1024**2)
    s.open()
    yield s
    if s.env is not None:
        await s.close()


class Gate:
    """Holds the writer thread inside ``_commit`` until released (bounded wait)."""

    def __init__(self, store: LmdbStore):
        self.store = store
        self.release = threading.Event()
        self.entered: Deferred[None] = Deferred()
        self.calls = 0
        self._orig = store._commit
        store._commit = self._commit  # type: ignore[method-assign]

    def _commit(self, ops: list[Any]) -> None:
        self.calls += 1
        if self.calls == 1:
            the_reactor().callFromThread(self.entered.callback, None)
            assert self.release.wait(30), "gate never released"
        self._orig(ops)


@pytest_twisted.ensureDeferred
async def test_write_read_round_trip(store: LmdbStore) -> None:
    """Records written in one commit read back equal, binary payloads included;
    limit and end bound the read; the last offset is found for recovery."""
    rs = recs(0, 20) + recs(20, 5, binary=True)
    await store.write(store.put_records(7, 0, rs))
    await store.write(store.put_records(7, 1, recs(0, 3)))
    got = await store.read_records(7, 0, 0, 1000, 1000)
    assert [(r.offset, r.payload, r.is_text, r.headers, r.id) for r in got] == [
        (r.offset, r.payload, r.is_text, r.headers, r.id) for r in rs
    ]
    assert [r.offset for r in await store.read_records(7, 0, 5, 3, 1000)] == [5, 6, 7]
    assert [r.offset for r in await store.read_records(7, 0, 18, 100, 21)] == [18, 19, 20]
    assert await store.read_records(7, 0, 25, 10, 100) == []
    assert await store.read_records(8, 0, 0, 10, 100) == []
    assert store.last_record_offset(7, 0) == 24
    assert store.last_record_offset(7, 1) == 2
    assert store.last_record_offset(7, 2) is None
    assert store.last_record_offset(6, 0) is None
    assert store.commits == 2


@pytest_twisted.ensureDeferred
async def test_meta_scan_get_and_deletes(store: LmdbStore) -> None:
    """put/delete/range-delete ops in one transaction; scan by prefix; get."""
    await store.write(
        [("p", "meta", b"topic/a", b"1"), ("p", "meta", b"topic/b", b"2"), ("p", "meta", b"other", b"3")]
        + store.put_records(1, 0, recs(0, 10))
    )
    assert list(store.scan("meta", b"topic/")) == [(b"topic/a", b"1"), (b"topic/b", b"2")]
    assert store.get("meta", b"other") == b"3"
    await store.write(
        [
            ("d", "meta", b"topic/a"),
            ("d", "meta", b"never-there"),
            ("r", "records", keys.record_key(1, 0, 2), keys.record_key(1, 0, 7)),
        ]
    )
    assert store.get("meta", b"topic/a") is None
    assert [r.offset for r in store.read_records_sync(1, 0, 0, 100, 100)] == [0, 1, 7, 8, 9]
    await store.write([("r", "records", keys.topic_prefix(1), keys.topic_prefix(2))])
    assert store.read_records_sync(1, 0, 0, 100, 100) == []
    await store.write([("r", "records", keys.topic_prefix(1), keys.topic_prefix(2))])  # empty range


@pytest_twisted.ensureDeferred
async def test_group_commit_batches_one_turn(store: LmdbStore) -> None:
    """Many writes queued in one reactor turn share one fsynced transaction."""
    ds = [store.write(store.put_records(1, 0, recs(i, 1)), 74) for i in range(200)]
    assert store.pending_bytes == 200 * 74
    assert not any(d.called for d in ds), "nothing is acked before the commit"
    await DeferredList(ds, fireOnOneErrback=True)
    assert store.commits < 200
    assert store.commits == 1
    assert store.committed_ops == 200
    assert store.pending_bytes == 0
    assert len(store.read_records_sync(1, 0, 0, 1000, 1000)) == 200


@pytest_twisted.ensureDeferred
async def test_writes_during_a_commit_go_into_the_next_one(store: LmdbStore) -> None:
    """While a commit is in flight, new writes wait (unacked) and then commit together."""
    gate = Gate(store)
    first = store.write(store.put_records(1, 0, recs(0, 1)))
    await gate.entered
    later = [store.write(store.put_records(1, 0, recs(i, 1))) for i in range(1, 51)]
    try:
        assert not first.called and not any(d.called for d in later)
        assert store.read_records_sync(1, 0, 0, 100, 100) == [], "nothing visible before the commit"
    finally:
        gate.release.set()
    await DeferredList([first, *later], fireOnOneErrback=True)
    assert store.commits == 2
    assert len(store.read_records_sync(1, 0, 0, 100, 100)) == 51


@pytest_twisted.ensureDeferred
async def test_the_next_commit_starts_before_the_callbacks_of_the_last(store: LmdbStore) -> None:
    """Writes queued while a commit is in flight are handed to the writer thread
    when that commit is back, before its callbacks run -- not a reactor turn
    later (issue 16: a follower's next append waited for it)."""
    gate = Gate(store)
    first = store.write(store.put_records(1, 0, recs(0, 1)))
    await gate.entered
    later = store.write(store.put_records(1, 0, recs(1, 1)))
    seen: list[bool] = []
    first.addCallback(lambda _: seen.append(store._in_flight))
    gate.release.set()
    await DeferredList([first, later], fireOnOneErrback=True)
    assert seen == [True]
    assert store.commits == 2


def writer_jobs(monkeypatch: pytest.MonkeyPatch, store: LmdbStore) -> list[str]:
    """Every job handed to the store's LMDB writer thread from now on, by how."""
    jobs: list[str] = []
    for how in ("submit", "call", "post"):
        count_calls(monkeypatch, store._writer, how, jobs)
    return jobs


@pytest_twisted.ensureDeferred
async def test_the_writer_thread_takes_the_writes_queued_during_its_commit_itself(
    store: LmdbStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits that follow each other are one job of the writer thread: after a commit it
    hands that commit back and takes the writes queued meanwhile itself -- no sleep on
    its job queue, no reactor turn and no second wake-up between them (issue 16,
    wthread43: two of the LMDB writer's ~8 wake-ups a commit on the 3-node path).  Each
    write still fires after its own commit, in order, with the commit's failure-free
    result; the first commit's writes fire before the second commit is done."""
    monkeypatch.setattr(store, "_measure_later", lambda: None)  # (the use measure's job aside)
    jobs = writer_jobs(monkeypatch, store)
    gate = Gate(store)
    first = store.write(store.put_records(1, 0, recs(0, 1)))
    await gate.entered
    later = [store.write(store.put_records(1, 0, recs(i, 1))) for i in range(1, 4)]
    order: list[str] = []
    first.addCallback(lambda _: order.append(f"first fired after {store.commits} commit(s)"))
    later[-1].addCallback(lambda _: order.append(f"later fired after {store.commits} commit(s)"))
    gate.release.set()
    await DeferredList([first, *later], fireOnOneErrback=True)
    assert store.commits == 2 and gate.calls == 2
    assert jobs == ["post"], "the second commit was a job of its own"
    assert order == ["first fired after 1 commit(s)", "later fired after 2 commit(s)"]
    assert not store._in_flight and store.pending_bytes == 0
    assert [r.offset for r in store.read_records_sync(1, 0, 0, 100, 100)] == list(range(4))


@pytest_twisted.ensureDeferred
async def test_a_job_queued_before_the_writes_runs_before_their_commit(
    store: LmdbStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer thread takes queued writes itself only when no other job waits for it:
    a job posted before the writes were queued (a write-ahead-log frame's apply) runs
    before their commit, as when each commit was a job of its own."""
    monkeypatch.setattr(store, "_measure_later", lambda: None)
    gate = Gate(store)
    ran: list[str] = []
    real = gate._orig

    def commit(ops: list[Any]) -> None:
        real(ops)
        ran.append("commit")

    gate._orig = commit
    first = store.write(store.put_records(1, 0, recs(0, 1)))
    await gate.entered
    store._writer.post(ran.append, "posted job")
    later = store.write(store.put_records(1, 0, recs(1, 1)))
    gate.release.set()
    await DeferredList([first, later], fireOnOneErrback=True)
    assert ran == ["commit", "posted job", "commit"]


@pytest_twisted.ensureDeferred
async def test_after_callbacks_runs_once_every_write_of_the_commit_has_fired(store: LmdbStore) -> None:
    """``after_callbacks`` asked for from a write's callback runs once all the writes
    of the same group commit have fired theirs (each asked once, in order); asked for
    outside a commit's callbacks it runs at once."""
    seen: list[str] = []
    ds = [store.write(store.put_records(1, 0, recs(i, 1))) for i in range(3)]  # one turn: one commit
    for i, d in enumerate(ds):
        d.addCallback(lambda _, i=i: seen.append(f"fired {i}"))
        d.addCallback(lambda _, i=i: store.after_callbacks(lambda: seen.append(f"after {i}")))
    await DeferredList(ds, fireOnOneErrback=True)  # (resumes inside the last write's callbacks)
    await store.write([])
    assert store.commits == 2
    assert seen == ["fired 0", "fired 1", "fired 2", "after 0", "after 1", "after 2"]
    outside: list[list[str]] = []

    def ask() -> None:  # on a later reactor turn: no commit firing
        store.after_callbacks(lambda: seen.append("now"))
        outside.append(list(seen))

    await deferLater(the_reactor(), 0, ask)
    assert outside[0][-1] == "now"


@pytest_twisted.ensureDeferred
async def test_a_backlog_commits_in_bounded_transactions_of_whole_writes(store: LmdbStore) -> None:
    """Writes queued while a commit is in flight go into transactions of at
    most TXN_BYTES of weight each, whole writes in the order written (every
    write's ops commit together; a write over the bound still commits whole)."""
    gate = Gate(store)
    seen: list[list[Any]] = []
    orig = gate._orig

    def record(ops: list[Any]) -> None:
        seen.append(ops)
        orig(ops)

    gate._orig = record
    first = store.write(store.put_records(1, 0, recs(0, 1)))
    await gate.entered
    per = 10_000  # 10 records of 1,000 bytes a write: ~11 KB of weight
    later = [store.write(store.put_records(1, 0, recs(1 + 10 * i, 10, size=1000)), per) for i in range(1000)]
    big = store.write(store.put_records(1, 1, recs(0, 6000, size=1000)), 6_000_000)
    gate.release.set()
    await DeferredList([first, *later, big], fireOnOneErrback=True)
    weights = [write_weight(ops, 0) for ops in seen]
    assert len(seen) >= 4, "ten megabytes of writes were not one transaction"
    # Every transaction but the big write's stays within the bound; the big one is one write.
    assert all(w <= TXN_BYTES for w in weights[:-1])
    assert len(seen[-1]) == 1 and len(seen[-1][0][2]) == 6000
    # Whole writes, in order: the records' keys ascend across the transactions.
    keys_in_order = [k for ops in seen[1:-1] for op in ops for k, _ in op[2]]
    assert keys_in_order == sorted(keys_in_order) and len(keys_in_order) == 10_000
    assert len(store.read_records_sync(1, 0, 0, 20_000, 20_000)) == 10_001
    assert store.pending_bytes == 0


def _run_script(script: str, path: Path) -> str:
    """Run ``script`` in a fresh Python process with ``path`` as its argument; its stdout."""
    proc = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120, check=True
    )
    return proc.stdout


_BIG_TXN_MEMORY = """
import sys, lmdb
def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon"):
            return int(line.split()[1]) * 1024
env = lmdb.open(sys.argv[1], map_size=1 << 30, sync=False)
before = anon()
with env.begin(write=True) as txn:
    for i in range(200_000):
        txn.put(b"%012d" % i, b"x" * 200)
print(anon() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_lmdb_keeps_the_pages_of_its_biggest_transaction(tmp_path: Path) -> None:
    """Why TXN_BYTES exists: after a ~48 MB write transaction commits, LMDB
    still holds about that much anonymous memory (its dirty pages, kept for
    reuse until the environment closes)."""
    assert int(_run_script(_BIG_TXN_MEMORY, tmp_path / "big")) > 30 * 1000**2


_COUNT_RECORDS = """
import sys, lmdb
env = lmdb.open(sys.argv[1], max_dbs=5, readonly=True, lock=False)
db = env.open_db(b"records", create=False)
with env.begin(db=db) as txn:
    print(txn.stat(db)["entries"])
"""


@pytest_twisted.ensureDeferred
async def test_data_is_on_disk_when_the_write_fires(store: LmdbStore, tmp_path: Path) -> None:
    """When a write's Deferred fires, another process opening the same directory
    already sees the committed records (checked from inside the callback)."""
    seen: list[str] = []

    def check(_: object) -> None:
        seen.append(_run_script(_COUNT_RECORDS, tmp_path / "lmdb").strip())

    d = store.write(store.put_records(3, 0, recs(0, 4)))
    assert not d.called
    d.addCallback(check)
    await d
    assert seen == ["4"]


@pytest_twisted.ensureDeferred
async def test_failed_commit_poisons_the_store(store: LmdbStore) -> None:
    """A commit that raises fails its writers and the ones queued behind it; later
    writes fail at once; what was committed before stays intact."""
    await store.write(store.put_records(1, 0, recs(0, 3)))
    gate = Gate(store)
    boom = RuntimeError("disk on fire")
    orig = gate._orig

    def broken(ops: list[Any]) -> None:
        raise boom

    gate._orig = broken
    failing = store.write(store.put_records(1, 0, recs(3, 1)))
    await gate.entered
    queued = store.write(store.put_records(1, 0, recs(4, 1)))
    gate.release.set()
    for d in (failing, queued):
        with pytest.raises(RuntimeError, match="disk on fire"):
            await d
    assert store.failed is boom
    with pytest.raises(RuntimeError):
        await store.write([("p", "meta", b"x", b"y")])
    gate._orig = orig
    assert [r.offset for r in store.read_records_sync(1, 0, 0, 100, 100)] == [0, 1, 2]
    assert store.get("meta", b"x") is None


@pytest_twisted.ensureDeferred
async def test_a_commit_the_writer_thread_took_itself_fails_as_any_commit(
    store: LmdbStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writes the writer thread took after a commit (issue 16, wthread43) fail with
    their commit and so do the ones queued behind them; the commit before is acked, the
    store is poisoned, nothing is counted as pending, and the thread takes nothing past
    the failure."""
    monkeypatch.setattr(store, "_measure_later", lambda: None)
    jobs = writer_jobs(monkeypatch, store)
    gate = Gate(store)
    boom = RuntimeError("disk on fire")
    orig = gate._orig

    def second_fails(ops: list[Any]) -> None:
        if gate.calls == 2:
            raise boom
        orig(ops)

    gate._orig = second_fails
    first = store.write(store.put_records(1, 0, recs(0, 1)), 10)
    await gate.entered
    taken = store.write(store.put_records(1, 0, recs(1, 1)), 10)
    queued: list[Deferred[None]] = []
    taken.addErrback(lambda f: queued.append(store.write(store.put_records(1, 0, recs(2, 1)), 10)) or f)
    gate.release.set()
    await first
    with pytest.raises(RuntimeError, match="disk on fire"):
        await taken
    assert jobs == ["post"] and gate.calls == 2
    assert store.failed is boom and store.pending_bytes == 0 and not store._in_flight
    with pytest.raises(RuntimeError, match="disk on fire"):
        await queued[0]
    assert [r.offset for r in store.read_records_sync(1, 0, 0, 100, 100)] == [0]


@pytest_twisted.ensureDeferred
async def test_map_full_is_storage_full(tmp_path: Path) -> None:
    """Filling the LMDB map fails the batch with StorageFull and writes nothing of it."""
    s = LmdbStore(str(tmp_path / "small"), reactor=the_reactor(), map_size=256 * 1024)
    s.open()
    try:
        await s.write(s.put_records(1, 0, recs(0, 2)))
        big = s.put_records(1, 0, recs(2, 200, size=4000))
        with pytest.raises(StorageFull):
            await s.write(big)
        assert [r.offset for r in s.read_records_sync(1, 0, 0, 1000, 1000)] == [0, 1]
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_close_commits_what_is_queued(tmp_path: Path) -> None:
    """close() commits queued writes before stopping; a reopened store has them."""
    path = str(tmp_path / "lmdb")
    s = LmdbStore(path, reactor=the_reactor())
    s.open()
    ds = [s.write(s.put_records(2, 0, recs(i, 1))) for i in range(10)]
    await s.close()
    assert all(d.called for d in ds)
    assert s.env is None
    s2 = LmdbStore(path, reactor=the_reactor())
    s2.open()
    try:
        assert len(s2.read_records_sync(2, 0, 0, 100, 100)) == 10
        assert s2.last_record_offset(2, 0) == 9
        assert s2.used_bytes > 0
    finally:
        await s2.close()


@pytest_twisted.ensureDeferred
async def test_used_bytes_follows_the_commits_off_their_ack_path(store: LmdbStore) -> None:
    """A commit's acks do not wait for the disk budget's measure (a stat of every
    database); the measure follows on its own, USED_EVERY after a commit."""
    measured: list[int] = []
    real = store._update_used

    def counted() -> None:
        measured.append(1)
        real()

    store._update_used = counted  # type: ignore[method-assign]
    empty = store.used_bytes
    await store.write(store.put_records(1, 0, recs(0, 500, size=2000)))
    assert measured == []  # acked before any measure
    await until(lambda: store.used_bytes > empty + 500 * 2000, "used_bytes to follow the write")
    assert len(measured) == 1
    await store.write([("r", "records", keys.topic_prefix(1), keys.topic_prefix(2))])
    await until(lambda: store.used_bytes < empty + 100_000, "used_bytes to follow the delete")
    assert len(measured) == 2


@pytest_twisted.ensureDeferred
async def test_used_bytes_counts_live_data(store: LmdbStore) -> None:
    """used_bytes (the disk budget's measure) grows with data and falls again when
    a range delete frees pages, although the LMDB file never shrinks."""
    empty = store.used_bytes
    await store.write(store.put_records(1, 0, recs(0, 500, size=2000)))
    await store.measure_used()
    full = store.used_bytes
    assert full > empty + 500 * 2000
    await store.write([("r", "records", keys.topic_prefix(1), keys.topic_prefix(2))])
    await store.measure_used()
    assert store.used_bytes < empty + 100_000


async def _turns(n: int) -> None:
    """Let the reactor run ``n`` turns (a write's flush is scheduled for the next)."""
    for _ in range(n):
        await deferLater(the_reactor(), 0, lambda: None)


@pytest_twisted.ensureDeferred
async def test_held_writes_commit_with_the_next_urgent_one(store: LmdbStore) -> None:
    """Writes queued during a hold wait (unacked, uncommitted) for the next
    urgent write and commit with it in one transaction, in the order made
    (issue 23, create38: a create's applied writes join the next Raft append)."""
    store.hold(60.0)
    held = [store.write(store.put_records(1, 0, recs(i, 1))) for i in range(3)]
    await _turns(5)
    assert store.commits == 0 and not any(d.called for d in held)
    urgent = store.write([("p", "meta", b"raft", b"append")], urgent=True)
    await DeferredList([*held, urgent], fireOnOneErrback=True)
    assert store.commits == 1 and store.committed_ops == 4
    assert (store.holds, store.holds_joined) == (1, 1)
    assert len(store.read_records_sync(1, 0, 0, 10, 10)) == 3
    # Without a hold, a write commits at once as before.
    await store.write(store.put_records(1, 0, recs(3, 1)))
    assert store.commits == 2


@pytest_twisted.ensureDeferred
async def test_a_hold_ends_by_itself_and_for_a_reader(store: LmdbStore) -> None:
    """Held writes commit when the hold's time is up, or when a reader waits
    for LMDB (a reader never waits for a hold), or at close."""
    store.hold(0.0)
    await store.write(store.put_records(1, 0, recs(0, 1)))  # (fires once the hold ran out)
    assert store.commits == 1 and store.holds_joined == 0
    store.hold(60.0)
    d = store.write(store.put_records(1, 0, recs(1, 1)))
    await _turns(3)
    assert not d.called
    store._want_applies()
    await d
    assert store.commits == 2
    store.hold(60.0)
    d = store.write(store.put_records(1, 0, recs(2, 1)))
    await store.close()
    assert d.called and store.commits == 3


@pytest_twisted.ensureDeferred
async def test_a_commit_comes_back_without_a_deferred(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes one at a time (a follower's appends at one message per commit): the LMDB
    writer's answer is a plain call (the commit is ``WriterThread.post``-ed and hands itself
    back, wthread43), not a Deferred made by ``submit`` and linked to the commit's
    completion (20 before qfollow42); each write still
    fires only once its own commit returned on the writer thread (fsynced), one
    commit a write, in order (issue 16, qfollow42)."""
    s = LmdbStore(str(tmp_path / "lmdb"), reactor=the_reactor(), map_size=64 * 1024**2)
    s.open()
    monkeypatch.setattr(s, "_measure_later", lambda: None)  # (the use measure's submit aside)
    submitted = count_calls(monkeypatch, s._writer, "submit")
    posted = count_calls(monkeypatch, s._writer, "post")
    real = s._commit
    committed: list[int] = []

    def commit(ops: list[Any], *rest: Any) -> None:
        real(ops, *rest)
        committed.append(len(committed))  # (on the writer thread, once the commit returned)

    monkeypatch.setattr(s, "_commit", commit)
    try:
        for i in range(20):
            seen: list[int] = []
            d = s.write(s.put_records(5, 0, recs(i, 1)))
            d.addCallback(lambda _, seen=seen: seen.append(len(committed)))
            assert not d.called
            await d
            assert seen == [i + 1]  # (fired after its own commit, not before)
        assert len(submitted) == 0 and len(posted) == 20 and s.commits == 20
        assert [r.offset for r in s.read_records_sync(5, 0, 0, 100, 100)] == list(range(20))
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_a_commit_joins_the_calls_held_for_the_turns_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write made in a turn whose end already holds a call (a leader's appends to its
    followers, queued by ``publish``) hands its commit over with that call -- no timed
    call of its own; a write alone in its turn (a follower's) asks the reactor itself,
    without the queue. Both are committed and fire, in order (issue 16, turn44)."""
    from sprawl.turn_end import turn_end

    r = the_reactor()
    s = LmdbStore(str(tmp_path / "lmdb"), reactor=r, map_size=64 * 1024**2)
    s.open()
    monkeypatch.setattr(s, "_measure_later", lambda: None)  # (the use measure's timer aside)
    timers = count_calls(monkeypatch, r, "callLater")
    ran: list[str] = []
    try:
        q = turn_end(r)
        q.soon(ran.append, "appends")  # (the leader's appends, held for the turn's end)
        armed = len(timers)
        d = s.write(s.put_records(5, 0, recs(0, 1)))
        assert len(timers) == armed  # (joined the held call: no timed call of its own)
        await d
        assert ran == ["appends"]
        before = len(timers)
        d = s.write(s.put_records(5, 0, recs(1, 1)))  # (alone in its turn)
        assert len(timers) == before + 1 and not q.due
        await d
        assert [x.offset for x in s.read_records_sync(5, 0, 0, 100, 100)] == [0, 1]
    finally:
        await s.close()
