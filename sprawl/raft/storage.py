"""Stable storage for the Raft core: the interface and an in-memory implementation.

The core only *reads* storage (:class:`Storage`); the driver *writes* it while
handling a :class:`~sprawl.raft.node.Ready` (hard state, entries, snapshot),
before sending that Ready's messages.  :class:`MemoryStorage` is the reference
implementation the LMDB adapter will mirror; in the simulator it plays the
disk that survives a crash.

Layout (as etcd's ``MemoryStorage``): ``_ents[0]`` is a dummy entry at the
snapshot's index and term, so ``term(first_index() - 1)`` is always known.
"""

from __future__ import annotations

from typing import Protocol

from sprawl.raft.messages import ConfState, Entry, HardState, Snapshot, SnapshotMeta

#: Index and term of the bootstrap snapshot every founding member starts from.
BOOTSTRAP_INDEX = 1
BOOTSTRAP_TERM = 1


class StorageError(Exception):
    """Base of the storage lookup errors."""


class CompactedError(StorageError):
    """The requested index is below the snapshot (compacted away)."""


class UnavailableError(StorageError):
    """The requested index is beyond the last stored entry."""


class Storage(Protocol):
    """What the Raft core reads from stable storage."""

    def initial_state(self) -> tuple[HardState, ConfState]:
        """Saved hard state and the configuration as of the snapshot."""
        ...

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)``; at least one if any, at most ``max_size`` bytes after the first."""
        ...

    def term(self, index: int) -> int:
        """Term of the entry at ``index`` (``first_index() - 1`` allowed)."""
        ...

    def first_index(self) -> int:
        """Index of the first entry still available (snapshot index + 1)."""
        ...

    def last_index(self) -> int:
        """Index of the last stored entry (or the snapshot index)."""
        ...

    def snapshot(self) -> Snapshot:
        """The most recent snapshot."""
        ...


def limit_size(ents: list[Entry], max_size: int | None) -> list[Entry]:
    """The longest prefix of ``ents`` within ``max_size`` bytes (never empty if ``ents`` is not)."""
    if max_size is None or not ents:
        return ents
    total = ents[0].size()
    n = 1
    while n < len(ents):
        total += ents[n].size()
        if total > max_size:
            break
        n += 1
    return ents[:n]


class MemoryStorage:
    """:class:`Storage` in memory, plus the writes a driver makes."""

    def __init__(self, conf_state: ConfState | None = None) -> None:
        """Empty storage (a node that will join an existing cluster), or, with
        ``conf_state``, a bootstrapped founding member: every founder starts
        from the same snapshot at index 1, term 1 carrying the initial
        configuration, so a node added later receives that configuration by
        InstallSnapshot rather than starting with none."""
        self.hard_state = HardState()
        self._snapshot = Snapshot()
        self._ents: list[Entry] = [Entry(0, 0)]
        if conf_state is not None:
            self._snapshot = Snapshot(SnapshotMeta(BOOTSTRAP_INDEX, BOOTSTRAP_TERM, conf_state))
            self._ents = [Entry(BOOTSTRAP_TERM, BOOTSTRAP_INDEX)]
            self.hard_state = HardState(BOOTSTRAP_TERM, 0, BOOTSTRAP_INDEX)

    # -- reads (the Storage interface)

    def initial_state(self) -> tuple[HardState, ConfState]:
        """See :meth:`Storage.initial_state`."""
        return self.hard_state, self._snapshot.meta.conf_state

    def first_index(self) -> int:
        """See :meth:`Storage.first_index`."""
        return self._ents[0].index + 1

    def last_index(self) -> int:
        """See :meth:`Storage.last_index`."""
        return self._ents[0].index + len(self._ents) - 1

    def term(self, index: int) -> int:
        """See :meth:`Storage.term`."""
        offset = self._ents[0].index
        if index < offset:
            raise CompactedError(index)
        if index - offset >= len(self._ents):
            raise UnavailableError(index)
        return self._ents[index - offset].term

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """See :meth:`Storage.entries`."""
        offset = self._ents[0].index
        if lo <= offset:
            raise CompactedError(lo)
        if hi > self.last_index() + 1:
            raise UnavailableError(hi)
        return limit_size(self._ents[lo - offset : hi - offset], max_size)

    def snapshot(self) -> Snapshot:
        """See :meth:`Storage.snapshot`."""
        return self._snapshot

    # -- writes (the driver's)

    def set_hard_state(self, hs: HardState) -> None:
        """Persist the hard state."""
        self.hard_state = hs

    def append(self, entries: list[Entry] | tuple[Entry, ...]) -> None:
        """Persist entries, replacing any conflicting suffix."""
        if not entries:
            return
        first = self.first_index()
        ents = list(entries)
        if ents[-1].index < first:
            return  # all compacted already
        if ents[0].index < first:
            ents = ents[first - ents[0].index :]
        offset = ents[0].index - self._ents[0].index
        if offset > len(self._ents):
            raise UnavailableError(f"gap: missing log entry before {ents[0].index}")
        self._ents = self._ents[:offset] + ents

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace the whole log with a (newer) snapshot received from a leader."""
        if snap.meta.index <= self._snapshot.meta.index:
            return
        self._snapshot = snap
        self._ents = [Entry(snap.meta.term, snap.meta.index)]

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Record a snapshot of the applied state at ``index`` (must be stored)."""
        if index <= self._snapshot.meta.index:
            return self._snapshot
        if index > self.last_index():
            raise UnavailableError(index)
        snap = Snapshot(SnapshotMeta(index, self.term(index), conf_state), data)
        self._snapshot = snap
        return snap

    def compact(self, index: int) -> None:
        """Discard entries up to and including ``index`` (keeping a dummy there)."""
        offset = self._ents[0].index
        if index <= offset:
            return
        if index > self.last_index():
            raise UnavailableError(index)
        i = index - offset
        self._ents = [Entry(self._ents[i].term, index), *self._ents[i + 1 :]]
