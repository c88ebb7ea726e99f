"""Messages of partition replication.  Pure.

Node ids are strings.  The adapter wraps each message with the partition it
is about and carries the record payloads of an :class:`Append` beside it; the
core only sees how many records a batch holds and which epochs wrote them.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

#: Most records one Append may carry (the leader's batches hold at most 512).
MAX_APPEND_RECORDS = 100_000
_I64 = 2**63


class Append(msgspec.Struct, frozen=True, tag=True):
    """Leader → follower: records ``[start, start + count)``.

    ``prev_epoch`` is the epoch of the record at ``start - 1`` in the
    leader's log (the follower must hold the same to accept); ``runs`` are
    ``(epoch, first_offset)`` of the batch's records; ``hw`` is the leader's
    high watermark.  ``count == 0`` is a heartbeat (it still carries ``hw``).
    """

    epoch: int
    start: int
    prev_epoch: int
    count: int
    runs: tuple[tuple[int, int], ...]
    hw: int
    #: The follower must drop its log and restart it at ``start`` (its end is
    #: below the leader's log start: retention removed what it lacks).
    reset: bool = False
    #: With a reset: where the partition's log starts as the leader knows it
    #: (below ``start``: segments in the object store, which the follower
    #: reads from there once its list of them reaches that far).  Set by the
    #: adapter; the core does not look at it.
    log_start: int = 0
    #: A heartbeat pushing a high watermark the moment it moved (issue 16,
    #: quorum3): a follower that holds the leader's log answers it only with
    #: its next answer -- to the next append, or to a heartbeat of the
    #: leader's tick, which is not a push.  (A node of a version before it
    #: ignores the field and answers, as before.)
    push: bool = False
    #: The leader's own durable end when the leader and one follower make a
    #: majority (three replicas or fewer), else -1 (issue 16, quorum37): a
    #: follower that holds ``[0, n)`` as the leader does, with the record at
    #: ``n - 1`` of this epoch, knows ``[0, min(stored, n))`` is on a majority's
    #: disks once its own copy is -- the leader's and its own -- and takes that
    #: as its high watermark without waiting for the leader to hear its answer
    #: and push it.  (A node of a version before it ignores the field.)
    stored: int = -1


class AppendResp(msgspec.Struct, frozen=True, tag=True):
    """Follower → leader.  ``ok``: the follower's log matches the leader's up
    to ``end`` (durably).  Not ok: try again from ``end`` (the divergence
    hint).  ``epoch`` is the follower's fenced epoch (above the leader's: the
    leader is stale)."""

    epoch: int
    ok: bool
    end: int
    #: The follower's high watermark after the append (-1: not said, a node
    #: of a version before it was sent).  The leader stops heartbeating an
    #: idle follower once it knows the follower has its high watermark.
    hw: int = -1


class Fence(msgspec.Struct, frozen=True, tag=True):
    """Controller → replica: promise to refuse any leader older than ``epoch``."""

    epoch: int
    #: Replicas the controller knows dead, as :attr:`Assign.down`: a failover
    #: fences before anything else, so the survivors' new leaders know the
    #: dead node before their first appends (no Assign follows a commit any
    #: more: issue 23).  A node of a release before it ignores the field.
    down: tuple[str, ...] = ()


class FenceResp(msgspec.Struct, frozen=True, tag=True):
    """Replica → controller: the promise holds (``ok``) and the replica's log
    ends at ``end`` with a record of ``last_epoch``."""

    epoch: int
    ok: bool
    last_epoch: int
    end: int


class Assign(msgspec.Struct, frozen=True, tag=True):
    """Controller → replica: ``leader`` leads in ``epoch`` over ``replicas``."""

    epoch: int
    leader: str
    replicas: tuple[str, ...]
    #: Replicas the controller knows dead (silent past the beat timeout, or
    #: dead by gossip): the leader sends them nothing until they are heard
    #: again (issue 23).  A hint about the nodes, not about the partition;
    #: a node of a release before it ignores the field.
    down: tuple[str, ...] = ()


class LeaderBeat(msgspec.Struct, frozen=True, tag=True):
    """Leader → controller, every tick: still leading ``epoch``, up to ``hw``."""

    epoch: int
    hw: int
    end: int


class Handoff(msgspec.Struct, frozen=True, tag=True):
    """Controller → leader of ``epoch``: take no publishes for up to ``ticks``
    ticks and say :class:`HandoffReady` once the replica ``to`` holds the
    whole log (a deliberate leadership move is about to fence the epoch)."""

    epoch: int
    to: str
    ticks: int


class HandoffReady(msgspec.Struct, frozen=True, tag=True):
    """Leader → controller: paused in ``epoch``, and ``to`` holds the log up to ``end``."""

    epoch: int
    to: str
    end: int


class Resign(msgspec.Struct, frozen=True, tag=True):
    """Replica → controller: assigned to lead ``epoch``, which it cannot (it
    led that epoch before a restart or a rebuild of its replica, or it has
    promised a later epoch since: a fence whose choice was never committed): the
    controller fails the partition over at once instead of waiting for
    silence (idle leaders do not beat per partition)."""

    epoch: int


class NodeBeat(msgspec.Struct, frozen=True, tag=True):
    """Node → controller, every tick: this node is up (``boot`` tells one run
    of the node from the next) and holds ``replicas`` replicated partitions.
    One per node, not per partition: the controller's liveness of idle
    leaders (see :mod:`sprawl.replication.liveness`)."""

    boot: int
    replicas: int


Message = (
    Append | AppendResp | Fence | FenceResp | Assign | LeaderBeat | Handoff | HandoffReady | Resign | NodeBeat
)

_decoder = msgspec.msgpack.Decoder(Message)


def encode(m: Message) -> bytes:
    """msgpack bytes of a message."""
    return msgspec.msgpack.encode(m)


def decode(data: bytes) -> Message:
    """Inverse of :func:`encode`; raises ``msgspec.DecodeError`` on bad input."""
    return _decoder.decode(data)


def append_flaw(m: Append, offsets: Sequence[int]) -> str | None:
    """Why an Append from the wire (with its records' ``offsets``) is not one a
    leader could have sent, or None.  Checked before the replica sees it: the
    core trusts a batch's shape (counts, runs, records) and only judges epochs."""
    if not (0 <= m.start < _I64 and 0 <= m.count <= MAX_APPEND_RECORDS and 0 <= m.hw < _I64):
        return "offsets or count out of range"
    if not (0 < m.epoch < _I64 and -1 <= m.prev_epoch <= m.epoch):
        return "epochs out of range"
    if len(offsets) != m.count or any(o != m.start + i for i, o in enumerate(offsets)):
        return "its records do not match its offsets"
    runs = m.runs
    if not m.count:
        return None  # a heartbeat: its runs are not used
    if not runs or runs[0][1] != m.start:
        return "its epoch runs do not start at its first record"
    end = m.start + m.count
    last_epoch, last_start = m.prev_epoch, -1
    for e, s in runs:
        if not (m.start <= s < end) or s <= last_start or e < last_epoch or e > m.epoch or e < 0:
            return "its epoch runs are not in order within the batch"
        last_epoch, last_start = e, s
    return None


def slice_append(m: Append, start: int, count: int) -> Append:
    """The part ``[start, start + count)`` of a batch as an Append of its own (the
    leader sends a large batch in several frames): the previous record's epoch
    and the runs are the batch's own; only the first part carries ``reset``."""
    end = start + count
    prev = m.prev_epoch
    runs = []
    for i, (e, s) in enumerate(m.runs):
        run_end = m.runs[i + 1][1] if i + 1 < len(m.runs) else m.start + m.count
        if s < start:
            prev = e  # the record at start - 1 is of a run that began before it
        if s < end and run_end > start:
            runs.append((e, max(s, start)))
    if start == m.start:
        prev = m.prev_epoch
    return Append(
        epoch=m.epoch,
        start=start,
        prev_epoch=prev,
        count=count,
        runs=tuple(runs),
        hw=m.hw,
        reset=m.reset and start == m.start,
        log_start=m.log_start,
    )
