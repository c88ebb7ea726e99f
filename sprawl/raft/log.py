"""The Raft log as the core sees it: stable storage plus an unstable tail.

:class:`RaftLog` joins what is already persisted (a :class:`Storage`) with
entries and a snapshot the core has accepted but the driver has not yet
persisted (:class:`Unstable`).  It owns term lookup, matching
(``match_term``), conflict finding, truncation on conflict, the commit and
applied indexes, and the compaction boundary (``first_index() - 1`` is the
snapshot index, whose term is always known).
"""

from __future__ import annotations

from sprawl.raft.messages import Entry, Snapshot
from sprawl.raft.storage import CompactedError, Storage, StorageError, UnavailableError, limit_size


class Unstable:
    """Entries (from ``offset``) and maybe a snapshot not yet persisted."""

    def __init__(self, offset: int) -> None:
        """An empty tail starting at ``offset``."""
        self.offset = offset
        self.entries: list[Entry] = []
        self.snapshot: Snapshot | None = None

    def maybe_first_index(self) -> int | None:
        """First index implied by an unstable snapshot."""
        return self.snapshot.meta.index + 1 if self.snapshot else None

    def maybe_last_index(self) -> int | None:
        """Last index held here, if any."""
        if self.entries:
            return self.offset + len(self.entries) - 1
        return self.snapshot.meta.index if self.snapshot else None

    def maybe_term(self, i: int) -> int | None:
        """Term of ``i`` if this tail knows it."""
        if i < self.offset:
            if self.snapshot and self.snapshot.meta.index == i:
                return self.snapshot.meta.term
            return None
        last = self.maybe_last_index()
        if last is None or i > last:
            return None
        return self.entries[i - self.offset].term

    def stable_to(self, index: int, term: int) -> None:
        """The driver persisted entries up to ``index`` (of ``term``)."""
        t = self.maybe_term(index)
        if t is None or t != term or index < self.offset:
            return  # superseded by a later truncation: keep them
        self.entries = self.entries[index + 1 - self.offset :]
        self.offset = index + 1

    def stable_snap_to(self, index: int) -> None:
        """The driver persisted the snapshot at ``index``."""
        if self.snapshot and self.snapshot.meta.index == index:
            self.snapshot = None

    def restore(self, snap: Snapshot) -> None:
        """Replace everything with a snapshot to persist."""
        self.offset = snap.meta.index + 1
        self.entries = []
        self.snapshot = snap

    def truncate_and_append(self, ents: list[Entry]) -> None:
        """Append, replacing anything from ``ents[0].index`` on."""
        after = ents[0].index
        if after == self.offset + len(self.entries):
            self.entries.extend(ents)
        elif after <= self.offset:
            self.offset = after
            self.entries = list(ents)
        else:
            self.entries = self.entries[: after - self.offset] + ents


class RaftLog:
    """Stable storage + unstable tail, with commit and applied indexes."""

    def __init__(self, storage: Storage, max_apply_size: int | None = None) -> None:
        """A log over ``storage``; committed/applied start at the snapshot index."""
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(last + 1)
        self.committed = first - 1
        self.applied = first - 1
        self.max_apply_size = max_apply_size

    # -- boundaries and terms

    def first_index(self) -> int:
        """First available entry (snapshot index + 1)."""
        i = self.unstable.maybe_first_index()
        return i if i is not None else self.storage.first_index()

    def last_index(self) -> int:
        """Index of the last entry (or the snapshot)."""
        i = self.unstable.maybe_last_index()
        return i if i is not None else self.storage.last_index()

    def last_term(self) -> int:
        """Term of the last entry."""
        return self.term(self.last_index())

    def term(self, i: int) -> int:
        """Term at ``i``; raises :class:`CompactedError`/:class:`UnavailableError`."""
        if i < self.first_index() - 1:
            raise CompactedError(i)
        if i > self.last_index():
            raise UnavailableError(i)
        t = self.unstable.maybe_term(i)
        if t is not None:
            return t
        return self.storage.term(i)

    def term_or_zero(self, i: int) -> int:
        """Term at ``i``, or 0 when unknown (compacted or missing)."""
        try:
            return self.term(i)
        except StorageError:
            return 0

    def match_term(self, i: int, term: int) -> bool:
        """Whether the entry at ``i`` has ``term`` (the AppendEntries consistency check)."""
        try:
            return self.term(i) == term
        except StorageError:
            return False

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """The election restriction: is a log ending at (``last_index``, ``term``)
        at least as up to date as ours (section 5.4.1)?"""
        lt = self.last_term()
        return term > lt or (term == lt and last_index >= self.last_index())

    # -- appending

    def find_conflict(self, ents: tuple[Entry, ...] | list[Entry]) -> int:
        """First index of ``ents`` whose term differs from ours (or that we
        lack); 0 if every entry already matches."""
        for e in ents:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def first_index_of_term_at(self, i: int) -> int:
        """The first index we hold of the term of entry ``i`` (conflict hint)."""
        t = self.term(i)
        lo = self.first_index()
        while i > lo and self.term_or_zero(i - 1) == t:
            i -= 1
        return i

    def maybe_append(
        self, index: int, log_term: int, committed: int, ents: tuple[Entry, ...] | list[Entry]
    ) -> int | None:
        """AppendEntries receiver rules 2-5: if our entry at ``index`` has
        ``log_term``, drop conflicting entries, append new ones, advance the
        commit index to ``min(committed, last new index)`` and return the
        last new index; otherwise None."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(ents)
        ci = self.find_conflict(ents)
        if ci:
            if ci <= self.committed:
                raise AssertionError(
                    f"entry {ci} conflicts with committed entry (committed {self.committed})"
                )
            self.append(list(ents[ci - (index + 1) :]))
        self.commit_to(min(committed, last_new))
        return last_new

    def append(self, ents: list[Entry]) -> int:
        """Append to the unstable tail (truncating anything after ``ents[0].index - 1``)."""
        if not ents:
            return self.last_index()
        if ents[0].index - 1 < self.committed:
            raise AssertionError(f"append at {ents[0].index} below commit {self.committed}")
        self.unstable.truncate_and_append(ents)
        return self.last_index()

    # -- reading

    def slice(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)`` from storage and the unstable tail (size-limited)."""
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise CompactedError(lo)
        if hi > self.last_index() + 1:
            raise UnavailableError(hi)
        out: list[Entry] = []
        uoff = self.unstable.offset
        if lo < uoff:
            out = self.storage.entries(lo, min(hi, uoff), max_size)
            if len(out) < min(hi, uoff) - lo:
                return out  # size limit hit
        if hi > uoff:
            out = out + self.unstable.entries[max(lo, uoff) - uoff : hi - uoff]
        return limit_size(out, max_size)

    def entries_from(self, i: int, max_size: int | None = None) -> list[Entry]:
        """Entries from ``i`` to the end (size-limited)."""
        return self.slice(i, self.last_index() + 1, max_size)

    def stable_last_index(self) -> int:
        """The last index of the persisted prefix of this log (what the
        driver reported durable and nothing since replaced); 0 while a
        snapshot waits to be persisted."""
        if self.unstable.snapshot is not None:
            return 0
        return self.unstable.offset - 1

    def unstable_entries(self) -> list[Entry]:
        """Entries the driver must persist."""
        return list(self.unstable.entries)

    def next_committed_entries(self) -> list[Entry]:
        """Committed entries not yet applied (size-limited)."""
        lo = max(self.applied + 1, self.first_index())
        if self.committed + 1 > lo:
            return self.slice(lo, self.committed + 1, self.max_apply_size)
        return []

    def has_next_committed_entries(self) -> bool:
        """Whether there is something to apply."""
        return self.committed + 1 > max(self.applied + 1, self.first_index())

    def snapshot(self) -> Snapshot:
        """The newest snapshot (unstable, else stored)."""
        return self.unstable.snapshot or self.storage.snapshot()

    # -- commit / apply / persist bookkeeping

    def commit_to(self, to: int) -> None:
        """Raise the commit index (never lowers it)."""
        if to > self.committed:
            if to > self.last_index():
                raise AssertionError(f"commit {to} beyond last index {self.last_index()}")
            self.committed = to

    def maybe_commit(self, max_index: int, term: int) -> bool:
        """Commit ``max_index`` if its entry is of ``term`` (the leader commits
        only entries of its own term by counting -- section 5.4.2)."""
        if max_index > self.committed and self.term_or_zero(max_index) == term:
            self.commit_to(max_index)
            return True
        return False

    def applied_to(self, i: int) -> None:
        """The application applied up to ``i``."""
        if i:
            if i > self.committed or i < self.applied:
                raise AssertionError(f"applied {i} outside [{self.applied}, {self.committed}]")
            self.applied = i

    def stable_to(self, index: int, term: int) -> None:
        """The driver persisted entries up to ``index``."""
        self.unstable.stable_to(index, term)

    def stable_snap_to(self, index: int) -> None:
        """The driver persisted the snapshot at ``index``."""
        self.unstable.stable_snap_to(index)

    def restore(self, snap: Snapshot) -> None:
        """Install a snapshot (from a leader): log replaced, commit = its index."""
        self.committed = snap.meta.index
        self.unstable.restore(snap)
