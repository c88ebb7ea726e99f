"""The Raft driver: runs a :class:`~sprawl.raft.node.RaftNode` on a reactor.

It owns time (a tick every ``tick_seconds``), the order of work and the
waiting callers; the core owns the protocol and the storage owns the disk.
Each Ready is handled strictly in the order Raft's safety needs:

1. **persist** the snapshot, entries and hard state in one LMDB transaction
   on the storage writer thread (:meth:`LmdbRaftStorage.save_ready`);
2. **send** the messages (only now: a vote or an append acknowledgement must
   never leave before what it promises is on disk);
3. **apply** a received snapshot, then the committed entries in order (in
   memory; their durable side effects -- writes queued on the same storage
   writer -- are not waited for: the writer commits them before anything the
   next Readies queue, and a failed one stops the driver);
4. **advance** the core.

Only one Ready is in flight at a time; messages that arrive meanwhile are
stepped into the core at once and handled by the next Ready.

A leader sends its appends while it writes them (Raft thesis 10.2.1, as
etcd): in a Ready that changes neither term nor vote, the ``APP`` and
``HEARTBEAT`` messages go out *before* step 1's write instead of after it, so
the followers' writes overlap the leader's own.  They promise nothing that is
not yet durable: their term is on disk already, they acknowledge nothing, and
the commit index they carry counts the leader's copy of an entry only once the
leader's write of it is done (the core moves its own ``match`` in
:meth:`RaftNode.persisted`, called as soon as the write fires).  Everything
else -- votes, a follower's acknowledgements, anything of a new term -- still
leaves only after the write.

One exception to step 1's wait: a Ready whose only change to persist is the
commit index (no entries, no snapshot, term and vote unchanged) -- the usual
Ready that applies a proposal -- does not wait for that write before sending
and applying.  The commit index is volatile state in Raft (nothing sent
depends on it being on disk), and the storage writer commits in order, so
the write goes to disk in the same group commit as the application's own
writes (a created topic's broker record): whatever the application made
durable has the commit index too.  That saves one fsync per proposal
(issue 23, topic creation).  Neither that write nor the applied entries'
side effects hold the next Ready back (issue 23, create23): a client's next
proposal is appended while the previous one's applied transaction is still
on its way to disk, and the writer's order keeps everything durable in
Raft's order.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import msgspec
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from sprawl.interfaces import Clock
from sprawl.raft.lmdb_storage import LmdbRaftStorage
from sprawl.raft.messages import (
    ConfChange,
    ConfChangeType,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
)
from sprawl.raft.node import Config, ProposalDropped, RaftNode, Ready, Role, split_early
from sprawl.ticks import start_in_phase

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

log = Logger()

#: The application's hooks: apply one committed normal entry (may return a
#: Deferred that fires once its side effects are durable); replace the state
#: with a snapshot's.
ApplyEntry = Callable[[Entry], Any]
RestoreSnapshot = Callable[[Snapshot], Any]


class RaftStats:
    """Counters and gauges for /metrics and /v1/cluster."""

    def __init__(self) -> None:
        self.elections = 0
        self.leader_changes = 0
        self.proposals = 0
        self.proposals_failed = 0
        self.snapshots_taken = 0
        self.snapshots_installed = 0
        self.ready_seconds_total = 0.0
        self.readies = 0
        self.last_leader_change = 0.0


class RaftDriver:
    """Drives one Raft peer (see the module docstring)."""

    def __init__(
        self,
        storage: LmdbRaftStorage,
        config: Config,
        reactor: Clock,
        rng: random.Random,
        send: Callable[[Message], None],
        apply: ApplyEntry,
        restore: RestoreSnapshot,
        *,
        tick_seconds: float = 0.1,
        snapshot_entries: int = 1024,
        keep_entries: int = 256,
        snapshot_data: Callable[[], bytes] = lambda: b"",
    ) -> None:
        self.storage = storage
        self.reactor = reactor
        self.node = RaftNode(config, storage, rng)
        self.send = send
        self.apply = apply
        self.restore = restore
        self.snapshot_data = snapshot_data
        self.tick_seconds = tick_seconds
        self.snapshot_entries = snapshot_entries
        self.keep_entries = keep_entries
        self.applied = storage.snapshot().meta.index if config.applied == 0 else config.applied
        self.stats = RaftStats()
        self.failed: Failure | None = None
        #: Called after each entry is applied, with its index (for waiting readers).
        self.on_applied: list[Callable[[int], None]] = []
        #: Called when the role or leader changes.
        self.on_soft_state: list[Callable[[], None]] = []
        #: Called after each Ready is fully handled (advanced), with whether it
        #: applied committed entries: the controller acts on a committed
        #: change at once instead of at its next tick.
        self.on_advanced: list[Callable[[bool], None]] = []
        self._busy = False
        #: When the last tick ran (reactor seconds).
        self._last_tick: float | None = None
        self._loop: task.LoopingCall | None = None
        self._reads: dict[bytes, defer.Deferred[int]] = {}
        self._apply_waiters: list[tuple[int, defer.Deferred[None]]] = []
        self._snapshotting = False
        self._stopped = False
        self._lead = self.node.lead
        self._role = self.node.role
        #: The term and vote on disk (a Ready changing neither, and carrying
        #: no entries or snapshot, persists only the commit index).
        hs = storage.hard_state
        self._term_vote = (hs.term, hs.vote)

    # -- life ----------------------------------------------------------------

    def start(self) -> None:
        """Start ticking (and handle anything already pending)."""
        loop = task.LoopingCall(self.tick)
        loop.clock = cast("IReactorTime", self.reactor)  # (it uses only callLater and seconds)
        self._loop = loop
        start_in_phase(loop, self.tick_seconds).addErrback(self._crashed)
        self.kick()

    def stop(self) -> None:
        """Stop ticking; waiting callers fail with :class:`ProposalDropped`."""
        self._stopped = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for d in list(self._reads.values()):
            if not d.called:
                d.errback(ProposalDropped("node is stopping"))
        self._reads.clear()

    def _crashed(self, f: Failure) -> None:
        self.failed = f
        log.failure("Raft driver stopped after an error", f)

    # -- inputs ----------------------------------------------------------------

    def tick(self) -> None:
        """One logical clock tick (``late`` when more than one and a half
        periods passed since the last: see :meth:`RaftNode.tick`)."""
        now = self.reactor.seconds()
        late = self._last_tick is not None and now - self._last_tick > 1.5 * self.tick_seconds
        self._last_tick = now
        self.node.tick(late)
        self.kick()

    def step(self, m: Message) -> None:
        """A message from a peer."""
        if self._stopped:
            return
        if m.type in (MessageType.HUP, MessageType.BEAT, MessageType.CHECK_QUORUM):
            return  # local-only types never come from the wire
        self.node.step(m)
        self.kick()

    def propose(self, data: bytes) -> None:
        """Propose ``data``; raises :class:`ProposalDropped` when no leader takes it."""
        self.stats.proposals += 1
        try:
            self.node.propose(data)
        except ProposalDropped:
            self.stats.proposals_failed += 1
            raise
        self.kick()

    def propose_conf_change(self, cc: ConfChange) -> None:
        """Propose one membership change (leader only; raises :class:`ProposalDropped`)."""
        self.node.propose_conf_change(cc)
        self.kick()

    def read_index(self) -> defer.Deferred[int]:
        """Fires with an index once it is safe to read linearizably at it
        (this node has applied it, and a quorum confirmed the leader)."""
        ctx = os.urandom(12)
        d: defer.Deferred[int] = defer.Deferred()
        self.node.read_index(ctx)  # may raise ProposalDropped
        self._reads[ctx] = d
        self.kick()
        return d

    def wait_applied(self, index: int) -> defer.Deferred[None]:
        """Fires once entry ``index`` has been applied here."""
        if self.applied >= index:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._apply_waiters.append((index, d))
        return d

    def report_unreachable(self, raft_id: int) -> None:
        """The transport lost its connection to ``raft_id``."""
        self.node.report_unreachable(raft_id)

    def heard(self, raft_id: int) -> None:
        """The transport read a frame other than Raft's from ``raft_id``'s
        node (see :meth:`RaftNode.report_heard`)."""
        self.node.report_heard(raft_id)

    # -- views -----------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """Whether this node leads."""
        return self.node.role == Role.LEADER

    @property
    def leader(self) -> int:
        """The Raft id of the known leader (0: none)."""
        return self.node.lead

    # -- the Ready loop ------------------------------------------------------

    def kick(self) -> None:
        """Handle pending Readies unless a handler already runs."""
        if self._busy or self._stopped or self.failed is not None or not self.node.has_ready():
            return
        self._busy = True
        self._run()

    def _run(self) -> None:
        """Handle Readies in turn until none is pending (or the driver stops).

        Plain calls, not a coroutine (issue 23, create40): a Ready is handled
        at once to its end unless it must wait -- for the write of its
        entries, term or vote, or for a snapshot's install -- and only then
        does the rest of it (and the next Readies) run from that Deferred's
        callback.  The usual Ready of a proposal (the commit index and the
        entry to apply) waits for nothing, so the reactor turn that steps a
        message handles it without a coroutine and its Deferreds per kick."""
        try:
            while self.node.has_ready() and not self._stopped:
                waiting = self._handle(self.node.ready())
                if waiting is not None:
                    # (resumed by the callback, which may run at once: return now)
                    waiting.addErrback(self._stopped_by)
                    return
        except Exception:
            self._stopped_by(Failure())
            return
        self._busy = False

    def _stopped_by(self, f: Failure) -> None:
        """The Ready loop raised: the driver stops (as :meth:`_crashed`)."""
        self._busy = False
        self._crashed(f)

    def _handle(self, rd: Ready) -> defer.Deferred[None] | None:
        """Handle ``rd`` (persist, send, apply, advance: see the module
        docstring); None once done, or a Deferred that fires once the rest of
        it -- and the loop (:meth:`_run`) -- ran after the write it waits for."""
        started = time.perf_counter()
        if rd.soft_state is not None:
            self._soft_state_changed()
        saving: defer.Deferred[None] | None = None
        early, late = split_early(rd, self._term_vote)
        for m in early:
            self.send(m)
        if rd.hard_state is not None or rd.entries or rd.snapshot is not None:
            if self._commit_only(rd):
                # Only the commit index moved: nothing sent or applied
                # depends on it being on disk (it is volatile state in
                # Raft), so it is written with the application's own
                # writes -- the storage writer commits in order, so
                # whatever the application made durable has it too --
                # instead of costing an fsync of its own first.
                saving = self.storage.save_ready(rd, urgent=False)
            else:
                d = self.storage.save_ready(rd)
                return d.addCallback(self._written, rd, late, started)
        return self._sent(rd, late, saving, started)

    def _written(self, _: object, rd: Ready, late: list[Message], started: float) -> None:
        """``rd``'s write is on disk: the rest of it, then the loop."""
        # (a leader counts its own copy towards the quorum from now)
        self.node.persisted(rd)
        waiting = self._sent(rd, late, None, started)
        if waiting is None:
            self._run()
        else:
            waiting.addCallback(lambda _: self._run()).addErrback(self._stopped_by)

    def _sent(
        self, rd: Ready, late: list[Message], saving: defer.Deferred[None] | None, started: float
    ) -> defer.Deferred[None] | None:
        """``rd`` past its write: the messages that waited for it, then (once
        a snapshot in it is installed) its entries applied and the core advanced."""
        if rd.hard_state is not None:
            self._term_vote = (rd.hard_state.term, rd.hard_state.vote)
        for m in late:
            self.send(m)
            if m.type == MessageType.SNAP:
                self.node.report_snapshot(m.to, True)
        if rd.snapshot is not None:
            snap = rd.snapshot

            def installed(result: object) -> None:
                if isinstance(result, Failure):
                    # (peers' snapshots are checked before they are stepped;
                    # whatever still fails here must not stop Raft)
                    log.failure(
                        "installing the snapshot at index {index} failed", result, index=snap.meta.index
                    )
                self.applied = max(self.applied, snap.meta.index)
                self.stats.snapshots_installed += 1
                self._applied_and_advanced(rd, saving, started)

            return defer.maybeDeferred(self.restore, snap).addBoth(installed)
        self._applied_and_advanced(rd, saving, started)
        return None

    def _applied_and_advanced(self, rd: Ready, saving: defer.Deferred[None] | None, started: float) -> None:
        """Apply ``rd``'s committed entries, answer its reads, advance the core."""
        # Entries are applied in order without waiting for each one's
        # durable side effects (the storage writer commits them in
        # order, grouped).  Not awaited (issue 23, create23): the next
        # Ready's work -- a proposal's append, its messages -- no longer
        # waits behind this one's durable writes.  Nothing Raft sends or
        # keeps depends on them, and the single storage writer commits
        # them before anything queued later (the next append, a snapshot
        # of this state); a failed write still stops the driver.
        for e in rd.committed_entries:
            if e.index <= self.applied:
                continue
            if e.type == EntryType.CONF_CHANGE:
                try:
                    cc = ConfChange.decode(e.data)
                except (ValueError, msgspec.DecodeError):
                    log.error("raft entry {index} is not a configuration change; skipped", index=e.index)
                else:
                    self.node.apply_conf_change(cc)
            elif e.data:
                try:
                    effect = self.apply(e)
                except Exception:
                    self._side_effect_failed(Failure())
                else:
                    if isinstance(effect, defer.Deferred):
                        effect.addErrback(self._side_effect_failed)
            self.applied = e.index
            self._applied(e.index)
        if saving is not None:
            saving.addErrback(self._side_effect_failed)
        for rs in rd.read_states:
            d = self._reads.pop(rs.request_ctx, None)
            if d is not None:
                self._answer_read(d, rs.index)
        self.node.advance(rd)
        for fn in self.on_advanced:
            fn(bool(rd.committed_entries))
        self.stats.readies += 1
        self.stats.ready_seconds_total += time.perf_counter() - started
        self._maybe_snapshot()

    def _side_effect_failed(self, f: Failure) -> None:
        """An applied entry's durable side effect (or the commit index's
        write) failed: the driver stops, once."""
        if self.failed is None:
            self._crashed(f)

    def _commit_only(self, rd: Ready) -> bool:
        """Whether ``rd`` asks to persist nothing but a new commit index (no
        entries, no snapshot, term and vote as on disk already)."""
        hs = rd.hard_state
        return (
            not rd.entries
            and rd.snapshot is None
            and hs is not None
            and (hs.term, hs.vote) == self._term_vote
        )

    def _answer_read(self, d: defer.Deferred[int], index: int) -> None:
        def fire(_: object) -> None:
            if not d.called:
                d.callback(index)

        self.wait_applied(index).addCallback(fire)

    def _applied(self, index: int) -> None:
        if self._apply_waiters:
            due = [w for w in self._apply_waiters if w[0] <= index]
            if due:
                self._apply_waiters = [w for w in self._apply_waiters if w[0] > index]
                for _, d in due:
                    d.callback(None)
        for fn in self.on_applied:
            fn(index)

    def _soft_state_changed(self) -> None:
        ss = self.node.soft_state()
        if ss.role in (self._role,) and ss.lead == self._lead:
            return
        if ss.role == Role.CANDIDATE and self._role != Role.CANDIDATE:
            self.stats.elections += 1
        if ss.lead != self._lead:
            self.stats.leader_changes += 1
            self.stats.last_leader_change = time.time()
        self._lead, self._role = ss.lead, ss.role
        for fn in self.on_soft_state:
            fn()

    def _maybe_snapshot(self) -> None:
        snap_index = self.storage.snapshot().meta.index
        if self._snapshotting or self.applied - snap_index < self.snapshot_entries:
            return
        self._snapshotting = True
        index = self.applied
        data = self.snapshot_data()
        conf = self.node.conf_state()

        def compact(_: object) -> Any:
            self.stats.snapshots_taken += 1
            upto = index - self.keep_entries
            if upto > self.storage.first_index() - 1:
                return self.storage.compact(upto)
            return None

        def done(result: Any) -> Any:
            self._snapshotting = False
            return result

        d = self.storage.create_snapshot(index, conf, data)
        d.addCallback(compact)
        d.addBoth(done)
        d.addErrback(lambda f: log.failure("raft snapshot failed", f))


__all__ = ["ConfChangeType", "RaftDriver", "RaftStats"]
