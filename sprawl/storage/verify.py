"""Reading a partition's records back from LMDB, checked.  No Twisted: the
functions run on LMDB reader threads, on the scrub's reader thread and in
``sprawlctl verify`` (the node stopped, the environment opened read-only).

A scan walks the partition's keys from ``start`` and knows which offsets
must be there: every offset of the partition's local segments below
``end`` (the *dense* ranges; offsets between segments -- an ephemeral tail
lost in a restart, ranges an operator skipped -- may be absent).  Each
entry must be the key expected next and its value must pass its checksum
(:func:`sprawl.log.record.check_stored`, which covers the offset too).
Anything else is damage, raised as :class:`~sprawl.log.damage.DamagedRange`
with the offsets it covers:

- a value whose checksum does not match (or, for a record written before
  checksums, that does not decode);
- an entry whose key is not the offset expected there (a damaged key: it
  sorts elsewhere, so a plain cursor walk would skip records or stop early
  -- the short read of issue 22);
- expected offsets with no entry at all (a gap, or the walk ending early);
- a page LMDB itself refuses (``MDB_CORRUPTED``, a page that is not
  found): the range is found by probing forward for the next readable key.

A damaged range is extended past its first offset while the entries that
follow are damaged too, so one read names the whole run.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import lmdb

from sprawl.log.damage import DamagedRange, subtract
from sprawl.log.record import CorruptRecord, Record, check_stored
from sprawl.storage import keys

#: Entries a damaged range is followed for, past its first offset.
MAX_EXTEND = 100_000
#: Forward probes that look for the end of a range LMDB cannot read.
MAX_PROBES = 64


def dense_ranges(
    segments: Iterable[tuple[int, int]], start: int, end: int, skipped: Iterable[tuple[int, int]] = ()
) -> list[tuple[int, int]]:
    """The offsets of ``[start, end)`` that must be in LMDB: those of the
    local segments ``(base, last)`` (sorted), without skipped ranges."""
    out: list[tuple[int, int]] = []
    for base, last in segments:
        lo, hi = max(base, start), min(last, end - 1)
        if lo <= hi:
            if out and out[-1][1] + 1 >= lo:
                out[-1] = (out[-1][0], max(out[-1][1], hi))
            else:
                out.append((lo, hi))
    skip = sorted(skipped)
    return subtract(out, skip) if skip else out


@dataclass
class Scan:
    """What a scan found: records (or raw values), where to resume, what it read."""

    records: list[Record] = field(default_factory=list)
    raw: list[tuple[int, bytes]] = field(default_factory=list)
    #: The offset after the last one examined (the next scan starts here).
    next: int = 0
    #: Value bytes examined.
    nbytes: int = 0


class _Expect:
    """The next offset that must be present, walking the dense ranges."""

    def __init__(self, dense: list[tuple[int, int]]) -> None:
        self.dense = dense
        self._lows = [lo for lo, _hi in dense]

    def at_or_after(self, offset: int) -> int | None:
        i = bisect.bisect_right(self._lows, offset) - 1
        if i >= 0 and self.dense[i][1] >= offset:
            return offset
        if i + 1 < len(self.dense):
            return self.dense[i + 1][0]
        return None

    def run_end(self, offset: int) -> int:
        """The last offset of the dense range holding ``offset``."""
        i = bisect.bisect_right(self._lows, offset) - 1
        return self.dense[i][1]


def scan_records(
    txn: Any,
    db: Any,
    uid: int,
    partition: int,
    start: int,
    end: int,
    **kw: Any,
) -> Scan:
    """Records of ``[start, end)`` in offset order, checked (see :func:`_scan`);
    a :class:`DamagedRange` raised carries ``nbytes``, the value bytes read
    before it."""
    out = Scan(next=start)
    try:
        return _scan(txn, db, uid, partition, start, end, out, **kw)
    except DamagedRange as d:
        d.nbytes = out.nbytes
        raise


def _scan(
    txn: Any,
    db: Any,
    uid: int,
    partition: int,
    start: int,
    end: int,
    out: Scan,
    *,
    env: Any = None,
    dense: list[tuple[int, int]] | None = None,
    unchecked_below: int = 0,
    limit: int = 1 << 62,
    max_bytes: int = 1 << 62,
    collect: str = "records",
) -> Scan:
    """Records of ``[start, end)`` in offset order, at most ``limit`` (and
    about ``max_bytes`` of values), each checked; raises
    :class:`DamagedRange` at the first damage met before the limit.
    ``dense`` (default: all of ``[start, end)``) says which offsets must be
    present (without it, a missing offset is not damage -- only entries
    that fail their checks are); ``unchecked_below``: records below it may
    predate checksums.
    ``collect``: ``records`` (decoded), ``raw`` (``(offset, value)``) or
    ``none`` (check only)."""
    strict = dense is not None
    if dense is None:
        dense = [(start, end - 1)] if end > start else []
    exp_of = _Expect(dense)
    prefix = keys.partition_prefix(uid, partition)
    stop = keys.record_key(uid, partition, end)
    exp = exp_of.at_or_after(start)
    bad: list[int] = []  # [first, last, entries followed] of a damaged run being followed
    reason = ""
    n = 0
    try:
        cur = txn.cursor(db=db)
        positioned = cur.set_range(keys.record_key(uid, partition, start))
        for _ in range(1 << 62):
            if not positioned:
                if exp is not None and strict:  # the walk ended while offsets were still expected
                    why = reason or "records missing: the key walk ended before the end of the segments"
                    return _raise(
                        bad, exp, _probe(txn, env, db, uid, partition, exp, exp_of.run_end(exp)), why
                    )
                break
            k = cur.key()
            v = cur.value()
            off: int | None = None
            sound = False
            rec: Record | None = None
            if len(k) == 16:
                off = keys.parse_record_key(k)[2]
                mine = k.startswith(prefix)
                if mine and off == exp and collect == "records":
                    try:  # the decode checks the checksum: one pass over the value
                        rec = Record.from_storage(partition, off, v, unchecked_ok=off < unchecked_below)
                        sound = True
                    except CorruptRecord:
                        sound = False
                else:
                    sound = _valid(partition, off, v, unchecked_below if mine else 1 << 62)
                if not mine or off >= end or off < out.next:
                    off = None if not sound else off
                    mine = False
            else:
                mine = False
            took = False
            if mine and sound and off is not None and off == exp and not bad:
                took = True
            elif mine and sound and off == exp:
                break  # a damaged run ends at a good record
            elif sound and off is not None and mine and (exp is None or off < exp or not strict):
                took = not bad  # a sound record between segments (nothing was expected there)
            elif sound and off is not None:
                # A sound entry past what is expected next (or past the
                # partition): the offsets up to it are missing.
                if exp is None or not strict:
                    break
                last = min(exp_of.run_end(exp), off - 1 if mine else end - 1)
                if not mine:  # past the partition: where do its keys resume, if anywhere?
                    last = _probe(txn, env, db, uid, partition, exp, last)
                return _raise(bad, exp, last, reason or "records missing where the segments hold offsets")
            else:
                # A damaged entry: a value failing its checksum, or a key that is
                # not the one expected here.  It stands for the offset expected.
                if exp is None or (mine and off is not None and off < exp):
                    if k >= stop:
                        break  # nothing more expected, and past the range
                    positioned = cur.next()
                    continue  # an unreadable entry between segments: nothing was expected there
                if not bad:
                    bad = [exp, exp, 0]
                    reason = _why(partition, k, v, prefix, exp, unchecked_below)
                bad[1] = exp
                bad[2] += 1
                nxt = exp_of.at_or_after(exp + 1)
                if nxt is None or nxt > exp + 1 or bad[2] >= MAX_EXTEND:
                    break  # the run reaches the end of a segment (or is long enough to name)
                exp = nxt
            if took and off is not None:
                n += 1
                out.nbytes += len(v)
                if collect == "records":
                    out.records.append(
                        rec
                        if rec is not None
                        else Record.from_storage(partition, off, v, unchecked_ok=off < unchecked_below)
                    )
                elif collect == "raw":
                    out.raw.append((off, bytes(v)))
                out.next = off + 1
                exp = exp_of.at_or_after(off + 1)
                if n >= limit or out.nbytes >= max_bytes:
                    return out
            positioned = cur.next()
    except lmdb.Error as e:
        if exp is None:
            raise DamagedRange(out.next, out.next, f"LMDB cannot read a page: {e}") from None
        last = _probe(txn, env, db, uid, partition, exp, exp_of.run_end(exp))
        return _raise(bad, exp, last, reason or f"LMDB cannot read a page: {e}")
    if bad:
        raise DamagedRange(bad[0], bad[1], reason)
    return out


def _raise(bad: list[int], first: int, last: int, reason: str) -> Scan:
    if bad:
        raise DamagedRange(bad[0], max(bad[1], last if first == bad[1] + 1 else bad[1]), reason)
    raise DamagedRange(first, last, reason)


def _offset_of(k: bytes, prefix: bytes) -> int | None:
    if len(k) != 16 or not k.startswith(prefix):
        return None
    return keys.parse_record_key(k)[2]


def _valid(partition: int, off: int, v: bytes, unchecked_below: int) -> bool:
    try:
        check_stored(partition, off, v, unchecked_ok=off < unchecked_below)
    except CorruptRecord:
        return False
    return True


def _why(partition: int, k: bytes, v: bytes, prefix: bytes, exp: int, unchecked_below: int) -> str:
    if len(k) == 16 and k.startswith(prefix) and keys.parse_record_key(k)[2] == exp:
        try:
            check_stored(partition, exp, v, unchecked_ok=exp < unchecked_below)
        except CorruptRecord as e:
            return str(e).split(": ", 2)[-1]
    return f"key {bytes(k).hex() or '(empty)'} found where offset {exp} belongs (a damaged key)"


def _readable(txn: Any, env: Any, db: Any, uid: int, partition: int, o: int) -> bool:
    """Whether a fresh cursor reaches offset ``o`` and reads it sound.  In a
    transaction of its own when the environment is known: LMDB marks a
    transaction that met a damaged page as failed, and refuses every later
    operation in it."""
    try:
        if env is not None:
            with env.begin(db=db, buffers=False) as t:
                return _reach(t, db, uid, partition, o)
        return _reach(txn, db, uid, partition, o)
    except lmdb.Error:
        return False


def _reach(txn: Any, db: Any, uid: int, partition: int, o: int) -> bool:
    cur = txn.cursor(db=db)
    if not cur.set_range(keys.record_key(uid, partition, o)):
        return True  # past the last key: nothing unreadable on the way
    return _offset_of(cur.key(), keys.partition_prefix(uid, partition)) == o and _valid(
        partition, o, cur.value(), 1 << 62
    )


def _probe(txn: Any, env: Any, db: Any, uid: int, partition: int, bad: int, hi: int) -> int:
    """The last offset of the unreadable run starting at ``bad`` (at most
    ``hi``): an exponential then a binary search for the first offset a
    fresh cursor reaches and reads."""
    lo_bad, step, good = bad, 1, None
    for _ in range(MAX_PROBES // 2):
        o = bad + step
        if o > hi:
            break
        if _readable(txn, env, db, uid, partition, o):
            good = o
            break
        lo_bad = o
        step *= 2
    if good is None:
        if hi > lo_bad and _readable(txn, env, db, uid, partition, hi):
            good = hi
        else:
            return hi
    for _ in range(MAX_PROBES // 2):
        if good - lo_bad <= 1:
            break
        mid = (lo_bad + good) // 2
        if _readable(txn, env, db, uid, partition, mid):
            good = mid
        else:
            lo_bad = mid
    return good - 1


def _scan_in(txn: Any, db: Any, *args: Any, env: Any = None, **kw: Any) -> Scan:
    """A scan in a read transaction of its own when the environment is known
    (one that met a damaged page is refused by LMDB from then on)."""
    if env is None:
        return scan_records(txn, db, *args, **kw)
    with env.begin(db=db, buffers=False) as t:
        return scan_records(t, db, *args, env=env, **kw)


def find_damage(
    txn: Any,
    db: Any,
    uid: int,
    partition: int,
    start: int,
    end: int,
    *,
    dense: list[tuple[int, int]] | None = None,
    unchecked_below: int = 0,
    max_ranges: int = 1000,
    env: Any = None,
) -> tuple[list[DamagedRange], int]:
    """Every damaged range of ``[start, end)`` (at most ``max_ranges``) and
    the value bytes examined: what ``sprawlctl verify`` prints."""
    found: list[DamagedRange] = []
    nbytes = 0
    pos = start
    if dense is None:
        dense = [(start, end - 1)] if end > start else []
    for _ in range(max_ranges * 4 + 4):
        if pos >= end or len(found) >= max_ranges:
            break
        part = [(max(lo, pos), hi) for lo, hi in dense if hi >= pos]
        try:
            s = _scan_in(
                txn,
                db,
                uid,
                partition,
                pos,
                end,
                env=env,
                dense=part,
                unchecked_below=unchecked_below,
                collect="none",
            )
            nbytes += s.nbytes
            break
        except DamagedRange as d:
            found.append(d)
            nbytes += d.nbytes
            pos = d.last + 1
    return found, nbytes
