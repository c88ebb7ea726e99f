"""Raft's messages, log entries and persistent-state records.

Like etcd's ``raftpb`` there is a single :class:`Message` type whose
``type`` field says what it is; fields that a type does not use keep their
defaults.  Everything is a :mod:`msgspec` struct, so the TCP transport (a later
session) can encode it as msgpack without a second set of types.

Local message types (``HUP``, ``BEAT``, ``PROP``, ``CHECK_QUORUM``,
``READ_INDEX`` from the application, ``TRANSFER_LEADER``) never carry a term;
the core treats ``term == 0`` as "local".
"""

from __future__ import annotations

import enum

import msgspec

#: "No node": node ids are positive integers.
NONE = 0


class MessageType(enum.IntEnum):
    """What a :class:`Message` is."""

    HUP = 0  # local: start an election (or pre-election)
    BEAT = 1  # local: leader sends heartbeats
    PROP = 2  # propose entries (local, or forwarded to the leader)
    APP = 3  # AppendEntries
    APP_RESP = 4
    VOTE = 5  # RequestVote
    VOTE_RESP = 6
    PRE_VOTE = 7
    PRE_VOTE_RESP = 8
    SNAP = 9  # InstallSnapshot
    HEARTBEAT = 10
    HEARTBEAT_RESP = 11
    CHECK_QUORUM = 12  # local: leader checks it heard from a quorum
    TRANSFER_LEADER = 13  # local or forwarded: hand leadership to ``frm``
    TIMEOUT_NOW = 14  # leader -> transferee: campaign now
    READ_INDEX = 15  # local or forwarded: linearizable read request
    READ_INDEX_RESP = 16


class EntryType(enum.IntEnum):
    """A log entry's payload kind."""

    NORMAL = 0
    CONF_CHANGE = 1


class ConfChangeType(enum.IntEnum):
    """A single-server membership change."""

    ADD_VOTER = 0
    ADD_LEARNER = 1
    REMOVE = 2
    PROMOTE = 3  # learner -> voter


class Entry(msgspec.Struct, frozen=True, array_like=True):
    """One log entry.  ``data`` is opaque to Raft (for ``CONF_CHANGE`` it is an
    encoded :class:`ConfChange`); an empty ``NORMAL`` entry is the no-op a new
    leader appends."""

    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""

    def size(self) -> int:
        """An estimate of the entry's wire size, for ``max_size_per_msg``."""
        return len(self.data) + 16


class ConfChange(msgspec.Struct, frozen=True, array_like=True):
    """Add, remove or promote one server."""

    type: ConfChangeType
    node_id: int

    def encode(self) -> bytes:
        """The bytes stored in a ``CONF_CHANGE`` entry."""
        return msgspec.msgpack.encode(self)

    @staticmethod
    def decode(data: bytes) -> ConfChange:
        """Inverse of :meth:`encode`."""
        return msgspec.msgpack.decode(data, type=ConfChange)


class ConfState(msgspec.Struct, frozen=True, array_like=True):
    """The membership configuration: voters and learners (disjoint)."""

    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()


class SnapshotMeta(msgspec.Struct, frozen=True, array_like=True):
    """What a snapshot covers: the log up to ``index`` (of ``term``) and the
    configuration as of that index."""

    index: int = 0
    term: int = 0
    conf_state: ConfState = ConfState()


class Snapshot(msgspec.Struct, frozen=True, array_like=True):
    """A state-machine snapshot; ``data`` is opaque to Raft."""

    meta: SnapshotMeta = SnapshotMeta()
    data: bytes = b""

    def is_empty(self) -> bool:
        """True for the "no snapshot" placeholder."""
        return self.meta.index == 0


class HardState(msgspec.Struct, frozen=True, array_like=True):
    """What must be on disk before any message that depends on it is sent."""

    term: int = 0
    vote: int = NONE
    commit: int = 0


class Message(msgspec.Struct, frozen=True, array_like=True):
    """Every Raft message (see :class:`MessageType`).

    ``index``/``log_term`` are the previous entry for ``APP``, the candidate's
    last entry for votes, and the acknowledged/rejected index in ``APP_RESP``.
    A rejected ``APP_RESP`` carries the conflict hint: ``reject_hint`` is the
    first index the follower holds of term ``log_term`` (the conflicting term),
    or its last index + 1 when its log is too short (then ``log_term`` is 0).
    ``context`` tags heartbeats and read requests (ReadIndex) and marks
    transfer-forced campaigns.
    """

    type: MessageType
    to: int = NONE
    frm: int = NONE
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""


#: ``context`` of a vote request forced by leadership transfer.
CAMPAIGN_TRANSFER = b"transfer"


class ReadState(msgspec.Struct, frozen=True):
    """A linearizable read is safe once the node has applied ``index``."""

    index: int
    request_ctx: bytes


def encode_message(m: Message) -> bytes:
    """msgpack bytes of a message (used by the simulator; the TCP transport will add framing)."""
    return msgspec.msgpack.encode(m)


_decoder = msgspec.msgpack.Decoder(Message)


def decode_message(data: bytes) -> Message:
    """Inverse of :func:`encode_message`; raises ``msgspec.DecodeError`` on bad input."""
    return _decoder.decode(data)
