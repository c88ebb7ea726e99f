"""Raft consensus for cluster metadata: a pure core (no Twisted, no I/O).

* :mod:`sprawl.raft.messages` -- messages, entries, hard state, snapshots.
* :mod:`sprawl.raft.storage` -- the stable-storage interface and :class:`MemoryStorage`.
* :mod:`sprawl.raft.log` -- the log as the core sees it (stable + unstable).
* :mod:`sprawl.raft.quorum` -- majority commit index and vote tallies.
* :mod:`sprawl.raft.progress` -- the leader's per-follower replication state.
* :mod:`sprawl.raft.node` -- the state machine (:class:`RaftNode`, :class:`Ready`).
"""

from sprawl.raft.messages import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Snapshot,
    SnapshotMeta,
)
from sprawl.raft.node import Config, ProposalDropped, RaftNode, Ready, Role, SoftState
from sprawl.raft.storage import MemoryStorage, Storage

__all__ = [
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Config",
    "Entry",
    "EntryType",
    "HardState",
    "MemoryStorage",
    "Message",
    "MessageType",
    "ProposalDropped",
    "RaftNode",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "SoftState",
    "Storage",
]
