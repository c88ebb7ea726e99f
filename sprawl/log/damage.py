"""Damaged offset ranges of a node's partitions.  Pure: no Twisted, no I/O.

A read, the background scrub or the start-time check that meets a record
whose checksum does not match, an entry whose key does not decode to the
offset expected there, a gap where the partition's segments say records
are, or a page LMDB cannot read, raises :class:`DamagedRange`.  The broker
records it in its :class:`DamageMap` (logged once per range, counted, shown
by ``/readyz`` and ``/v1/damage``, kept in LMDB ``meta`` so a restart still
knows it) and answers the read with ``corrupt_record`` -- never with fewer
records than the range holds.

A range leaves the map when it is *repaired* (rewritten from a healthy
replica) or when an operator *skips* it (a single node with nothing to
repair from): a skipped range stays listed as ``skipped`` and readers pass
over it as they pass over offsets retention deleted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

#: Where a damaged range was found.
TIERS = ("lmdb", "s3")
DAMAGED, SKIPPED = "damaged", "skipped"
#: A partition: (topic uid, partition).
Key = tuple[int, int]


class DamagedRange(Exception):
    """Offsets ``first..last`` (inclusive) of a partition cannot be read back
    as written; ``reason`` says what was found, ``tier`` where."""

    def __init__(self, first: int, last: int, reason: str, tier: str = "lmdb") -> None:
        super().__init__(f"offsets {first}-{last} are damaged ({tier}): {reason}")
        self.first = first
        self.last = last
        self.reason = reason
        self.tier = tier
        #: Bytes a scan read before it met the damage (for progress counts).
        self.nbytes = 0


@dataclass
class DamageEntry:
    """One damaged (or skipped) range of one partition."""

    first: int
    last: int
    reason: str
    tier: str = "lmdb"
    state: str = DAMAGED
    found_ms: int = 0
    #: Repairs tried and failed (a cluster retries with back-off).
    attempts: int = 0
    last_error: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, object]:
        """The entry as the API shows it."""
        return {
            "first_offset": self.first,
            "last_offset": self.last,
            "reason": self.reason,
            "tier": self.tier,
            "state": self.state,
            "found_ms": self.found_ms,
            "repair_attempts": self.attempts,
            "last_error": self.last_error,
        }


class DamageMap:
    """Damaged and skipped ranges per partition ``(topic uid, partition)``,
    merged, sorted and bounded in count."""

    #: Ranges kept per partition; past it, the newest are merged into one.
    MAX_RANGES = 256

    def __init__(self) -> None:
        self.parts: dict[Key, list[DamageEntry]] = {}

    # -- reading ---------------------------------------------------------------

    def entries(self, key: Key) -> list[DamageEntry]:
        """Every range of a partition, oldest offsets first."""
        return list(self.parts.get(key, ()))

    def damaged(self, key: Key) -> list[DamageEntry]:
        """The ranges of a partition that are damaged (not skipped)."""
        return [e for e in self.parts.get(key, ()) if e.state == DAMAGED]

    def skipped(self, key: Key) -> list[tuple[int, int]]:
        """``(first, last)`` of every skipped range: readers pass over them."""
        return [(e.first, e.last) for e in self.parts.get(key, ()) if e.state == SKIPPED]

    def overlapping(self, key: Key, lo: int, hi: int) -> DamageEntry | None:
        """The first damaged (not skipped) range meeting ``lo..hi``, if any."""
        for e in self.parts.get(key, ()):
            if e.state == DAMAGED and e.first <= hi and e.last >= lo:
                return e
        return None

    def count(self, state: str = DAMAGED) -> int:
        """How many ranges are in ``state`` over every partition."""
        return sum(1 for es in self.parts.values() for e in es if e.state == state)

    def __bool__(self) -> bool:
        return any(e.state == DAMAGED for es in self.parts.values() for e in es)

    # -- changing --------------------------------------------------------------

    def add(self, key: Key, first: int, last: int, reason: str, tier: str, now_ms: int) -> bool:
        """Record ``first..last`` as damaged; True when any of it was not known
        (the caller logs and counts only then: once per range)."""
        if last < first:
            raise ValueError(f"empty range {first}-{last}")
        es = self.parts.setdefault(key, [])
        if any(e.first <= first and e.last >= last for e in es):
            return False  # known (damaged, or skipped by an operator)
        new = DamageEntry(first, last, reason, tier, DAMAGED, now_ms)
        keep: list[DamageEntry] = []
        for e in es:
            if e.state == DAMAGED and e.first <= last and e.last >= first:
                new.first, new.last = min(new.first, e.first), max(new.last, e.last)
                new.found_ms = min(new.found_ms, e.found_ms) if e.found_ms else new.found_ms
                new.attempts = max(new.attempts, e.attempts)
                if e.reason != reason and e.reason not in new.reason:
                    new.reason = f"{e.reason}; {reason}"
            else:
                keep.append(e)
        keep.append(new)
        keep.sort(key=lambda e: e.first)
        while len(keep) > self.MAX_RANGES:
            a, b = keep[-2], keep.pop()
            a.last, a.reason = b.last, f"{a.reason}; {b.reason}"
        self.parts[key] = keep
        return True

    def clear(self, key: Key, first: int, last: int, state: str = DAMAGED) -> None:
        """Forget ``first..last`` in ranges of ``state`` (repaired), splitting
        ranges that reach past it."""
        es = self.parts.get(key)
        if not es:
            return
        out: list[DamageEntry] = []
        for e in es:
            if e.state != state or e.last < first or e.first > last:
                out.append(e)
                continue
            if e.first < first:
                out.append(DamageEntry(e.first, first - 1, e.reason, e.tier, e.state, e.found_ms, e.attempts))
            if e.last > last:
                out.append(DamageEntry(last + 1, e.last, e.reason, e.tier, e.state, e.found_ms, e.attempts))
        self._set(key, out)

    def skip(self, key: Key, first: int, last: int, now_ms: int) -> bool:
        """An operator gives up ``first..last`` (nothing to repair it from):
        its damaged ranges become skipped.  False if no damaged range meets it."""
        hit = [
            e for e in self.parts.get(key, ()) if e.state == DAMAGED and e.first <= last and e.last >= first
        ]
        if not hit:
            return False
        lo, hi = min(first, *(e.first for e in hit)), max(last, *(e.last for e in hit))
        reason = "; ".join(sorted({e.reason for e in hit}))
        self.clear(key, lo, hi)
        es = self.parts.setdefault(key, [])
        es.append(DamageEntry(lo, hi, reason, hit[0].tier, SKIPPED, now_ms))
        es.sort(key=lambda e: e.first)
        return True

    def drop_below(self, key: Key, start: int, tier: str | None = None) -> bool:
        """Retention (or a reset) removed every offset below ``start`` -- or,
        with ``tier``, that tier's copy of them (the S3 tier's shared segments
        took over a replica's LMDB copy); True if that changed anything."""
        es = self.parts.get(key)
        if not es or es[0].first >= start:
            return False
        out = []
        for e in es:
            if tier is not None and e.tier != tier:
                out.append(e)
                continue
            if e.last < start:
                continue
            if e.first < start:
                e = DamageEntry(start, e.last, e.reason, e.tier, e.state, e.found_ms, e.attempts)
            out.append(e)
        self._set(key, out)
        return True

    def drop(self, key: Key) -> None:
        """Forget a partition (its topic was deleted, or its log reset)."""
        self.parts.pop(key, None)

    def _set(self, key: Key, entries: list[DamageEntry]) -> None:
        if entries:
            entries.sort(key=lambda e: e.first)
            self.parts[key] = entries
        else:
            self.parts.pop(key, None)

    # -- storage ---------------------------------------------------------------

    def encode(self, key: Key) -> bytes | None:
        """A partition's ranges as stored in LMDB ``meta`` (None: nothing to keep)."""
        es = self.parts.get(key)
        if not es:
            return None
        rows = [[e.first, e.last, e.reason, e.tier, e.state, e.found_ms] for e in es]
        return json.dumps({"v": 1, "ranges": rows}).encode()

    def load(self, key: Key, data: bytes) -> None:
        """Restore a partition's ranges from :meth:`encode`'s bytes; ``ValueError`` if malformed."""
        try:
            doc = json.loads(data)
            if doc.get("v") != 1:
                raise ValueError(f"unknown damage record version {doc.get('v')!r}")
            es = []
            for first, last, reason, tier, state, found in doc["ranges"]:
                if state not in (DAMAGED, SKIPPED) or tier not in TIERS or int(last) < int(first):
                    raise ValueError("bad damage range")
                es.append(DamageEntry(int(first), int(last), str(reason), tier, state, int(found)))
        except (TypeError, KeyError, AttributeError, json.JSONDecodeError) as e:
            raise ValueError(f"corrupt damage record: {e}") from None
        self._set(key, es)


def subtract(ranges: list[tuple[int, int]], cut: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``ranges`` (sorted, inclusive) without the offsets of ``cut`` (sorted, inclusive)."""
    out: list[tuple[int, int]] = []
    for lo, hi in ranges:
        cur = lo
        for a, b in cut:
            if b < cur or a > hi:
                continue
            if a > cur:
                out.append((cur, a - 1))
            cur = max(cur, b + 1)
            if cur > hi:
                break
        if cur <= hi:
            out.append((cur, hi))
    return out
