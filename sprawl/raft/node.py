"""The Raft state machine (pure: no I/O, no clock, no Twisted).

:class:`RaftNode` is driven by :meth:`~RaftNode.tick` (one logical clock
tick), :meth:`~RaftNode.step` (a message from a peer) and the application
calls (:meth:`~RaftNode.propose`, :meth:`~RaftNode.propose_conf_change`,
:meth:`~RaftNode.read_index`, :meth:`~RaftNode.transfer_leadership`).  It
never performs I/O; instead :meth:`~RaftNode.ready` hands the driver a
:class:`Ready`, which the driver must handle strictly in this order:

1. persist ``snapshot``, ``entries`` and ``hard_state`` (durably);
2. send ``messages``;
3. apply ``committed_entries`` (calling :meth:`~RaftNode.apply_conf_change`
   for configuration entries) and restore ``snapshot`` into the state machine;
   serve ``read_states`` once applied up to their index;
4. call :meth:`~RaftNode.advance` with the same Ready.

One relaxation of step 2 (Raft thesis 10.2.1; etcd's raft does the same): a
leader's appends and heartbeats may be sent *while* the same Ready's entries
are being written, as long as the Ready changes neither term nor vote -- they
acknowledge nothing and carry only commit indexes that are already true.
That holds because the leader counts *itself* towards the commit quorum only
once its own append is durable: its progress ``match`` moves when the driver
reports the entries stored (:meth:`~RaftNode.persisted`, also called by
:meth:`~RaftNode.advance`), never when they are appended.  An entry is thus
committed only when a majority holds it on disk, whether or not the leader
is part of that majority -- what a commit means is unchanged.

Features (the etcd raft design, written anew): leader election with
randomized timeouts (``election_tick .. 2*election_tick - 1`` ticks, from an
injected :class:`random.Random`), PreVote, CheckQuorum with leader stickiness,
log replication with conflict-term hints and flow control, commitment of
current-term entries only, a no-op entry on election, ReadIndex reads,
leadership transfer (TimeoutNow), snapshots (InstallSnapshot to lagging
followers), and single-server membership changes with learners.
Configuration entries take effect when *applied*; a leader allows one
unapplied configuration change at a time.

Why one module of more than 600 lines: it is one state machine.  Every role's
step function reads and changes the same term, vote, log and progress in one
step, as in etcd's ``raft.go``; its self-contained parts already live apart
(messages, the log, progress, quorum arithmetic, storage).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec

from sprawl.raft.log import RaftLog
from sprawl.raft.messages import (
    CAMPAIGN_TRANSFER,
    NONE,
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
)
from sprawl.raft.progress import Progress, ProgressState
from sprawl.raft.quorum import VoteResult, committed_index, has_quorum, vote_result
from sprawl.raft.storage import Storage, StorageError

MT = MessageType


class Role(enum.Enum):
    """A node's role."""

    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class ProposalDropped(Exception):
    """A proposal (or read/transfer request) could not be accepted now: no
    known leader, a transfer in progress, or a configuration change pending."""


@dataclass
class Config:
    """Tuning of one node; ticks are the driver's logical clock."""

    id: int
    election_tick: int = 10
    heartbeat_tick: int = 1
    #: A leader with nothing in flight (see :meth:`RaftNode.quiet`) heartbeats
    #: only every this many ticks (issue 23: the idle cluster's CPU); 0: every
    #: ``heartbeat_tick`` as when busy.  At most half of ``election_tick``, so
    #: a follower hears at least two within its shortest election timeout and
    #: CheckQuorum sees every live follower answer in each of its rounds.
    idle_heartbeat_tick: int = 0
    max_size_per_msg: int = 1 << 20
    max_inflight_msgs: int = 256
    max_apply_size: int | None = None
    check_quorum: bool = True
    pre_vote: bool = True
    #: On restart: the index the state machine has already applied (>= snapshot).
    applied: int = 0

    def validate(self) -> None:
        """Raise ValueError on impossible settings."""
        if self.id == NONE:
            raise ValueError("node id must be non-zero")
        if self.heartbeat_tick <= 0 or self.election_tick <= self.heartbeat_tick:
            raise ValueError("need 0 < heartbeat_tick < election_tick")
        if self.idle_heartbeat_tick and not (
            self.heartbeat_tick <= self.idle_heartbeat_tick
            and 2 * self.idle_heartbeat_tick <= self.election_tick
        ):
            raise ValueError("need heartbeat_tick <= idle_heartbeat_tick <= election_tick / 2")
        if self.max_inflight_msgs <= 0:
            raise ValueError("max_inflight_msgs must be positive")


@dataclass(frozen=True)
class SoftState:
    """Volatile state the application may want to observe (not persisted)."""

    lead: int
    role: Role


@dataclass
class Ready:
    """Work for the driver: persist, then send, then apply, then advance."""

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    messages: list[Message] = field(default_factory=list)
    committed_entries: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)


#: What a leader may send while the Ready that made it is still being written
#: (see the module docstring): its appends and heartbeats.
SENT_WHILE_WRITING = frozenset({MessageType.APP, MessageType.HEARTBEAT})


def split_early(rd: Ready, term_vote_on_disk: tuple[int, int]) -> tuple[list[Message], list[Message]]:
    """``rd``'s messages as (those that may leave before its write, the
    rest): the appends and heartbeats of a Ready that installs no snapshot
    and keeps the term and vote already on disk (none when there is nothing
    to write: then nothing waits anyway)."""
    hs = rd.hard_state
    if (
        (hs is None and not rd.entries)
        or rd.snapshot is not None
        or (hs is not None and (hs.term, hs.vote) != term_vote_on_disk)
    ):
        return [], list(rd.messages)
    early = [m for m in rd.messages if m.type in SENT_WHILE_WRITING]
    return early, [m for m in rd.messages if m.type not in SENT_WHILE_WRITING]


@dataclass
class _ReadRequest:
    index: int
    frm: int
    acks: set[int]


class RaftNode:
    """One Raft peer's protocol state (see the module docstring)."""

    def __init__(self, config: Config, storage: Storage, rng: random.Random) -> None:
        """A node restored from ``storage`` (empty storage: a fresh node)."""
        config.validate()
        self.cfg = config
        self.id = config.id
        self.rng = rng
        self.storage = storage
        self.log = RaftLog(storage, config.max_apply_size)
        hs, cs = storage.initial_state()
        self.voters: set[int] = set(cs.voters)
        self.learners: set[int] = set(cs.learners)
        self.term = 0
        self.vote = NONE
        if hs != HardState():
            if hs.commit > self.log.last_index():
                raise AssertionError(
                    f"hard state commit {hs.commit} beyond last index {self.log.last_index()}"
                )
            self.term, self.vote = hs.term, hs.vote
            self.log.commit_to(hs.commit)
        if config.applied:
            self.log.applied = max(self.log.applied, min(config.applied, self.log.committed))
        self.lead = NONE
        self.role = Role.FOLLOWER
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_tick
        self.lead_transferee = NONE
        self.pending_conf_index = 0
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self._reads: dict[bytes, _ReadRequest] = {}
        self._read_queue: list[bytes] = []
        self._pending_reads: list[Message] = []
        self._become_follower(self.term, NONE)
        self._prev_hs = self.hard_state()
        self._prev_ss = self.soft_state()

    # ------------------------------------------------------------ observers

    def hard_state(self) -> HardState:
        """Current persistent state."""
        return HardState(self.term, self.vote, self.log.committed)

    def soft_state(self) -> SoftState:
        """Current volatile state."""
        return SoftState(self.lead, self.role)

    def conf_state(self) -> ConfState:
        """The configuration this node currently uses."""
        return ConfState(tuple(sorted(self.voters)), tuple(sorted(self.learners)))

    def caught_up(self, peer: int) -> bool:
        """(Leader) whether ``peer`` holds everything committed and is being
        replicated to normally -- the condition for promoting a learner."""
        pr = self.progress.get(peer)
        return (
            self.role == Role.LEADER
            and pr is not None
            and pr.state == ProgressState.REPLICATE
            and pr.match >= self.log.committed
        )

    def promotable(self) -> bool:
        """Whether this node may campaign (it is a voter)."""
        return self.id in self.voters

    # --------------------------------------------------------- application

    def tick(self, late: bool = False) -> None:
        """Advance the logical clock by one tick.  ``late``: the driver's
        clock ran well past a tick since the last one (its process stalled or
        was not scheduled) -- an idle leader then heartbeats on this tick as a
        busy one does, so its followers, whose own ticks may have run on time,
        do not wait ``idle_heartbeat_tick`` more of its ticks."""
        if self.role == Role.LEADER:
            self._tick_heartbeat(late)
        else:
            self._tick_election()

    def campaign(self) -> None:
        """Start an election now (as if the election timeout fired)."""
        self.step(Message(MT.HUP, frm=self.id))

    def propose(self, data: bytes) -> None:
        """Propose ``data`` for the log; raises :class:`ProposalDropped` if it
        cannot be accepted now (it may still be lost later: watch the log)."""
        self._propose(Entry(0, 0, EntryType.NORMAL, data))

    def propose_conf_change(self, cc: ConfChange) -> None:
        """Propose a single-server membership change."""
        self._propose(Entry(0, 0, EntryType.CONF_CHANGE, cc.encode()))

    def _propose(self, e: Entry) -> None:
        m = Message(MT.PROP, frm=self.id, entries=(e,))
        if self.role == Role.LEADER:
            if not self._leader_propose(m):
                raise ProposalDropped("leader cannot accept the proposal now")
        elif self.lead == NONE:
            raise ProposalDropped("no leader")
        else:
            self._send(msgspec.structs.replace(m, to=self.lead))

    def read_index(self, ctx: bytes) -> None:
        """Request a linearizable read tagged ``ctx`` (unique per request); a
        :class:`ReadState` with that ctx later appears in a Ready."""
        if self.role != Role.LEADER and self.lead == NONE:
            raise ProposalDropped("no leader")
        self.step(Message(MT.READ_INDEX, frm=self.id, context=ctx))

    def transfer_leadership(self, to: int) -> None:
        """Ask the leader to hand leadership to ``to``."""
        self.step(Message(MT.TRANSFER_LEADER, frm=to, to=self.id))

    def report_unreachable(self, peer: int) -> None:
        """The transport failed to deliver to ``peer``: stop pipelining to it."""
        pr = self.progress.get(peer)
        if self.role == Role.LEADER and pr and pr.state == ProgressState.REPLICATE:
            pr.become_probe()

    def report_heard(self, peer: int) -> None:
        """The transport read something else from ``peer``'s node (its
        replication frames): as leader, that counts as hearing the peer for
        CheckQuorum, as a Raft answer would.  A peer's Raft answers share its
        connection with everything else its node sends, in order; after a
        data node's failover a survivor sends thousands of replication
        frames, and a leader reading them a socket buffer per reactor turn
        met the answers queued behind them only after its CheckQuorum window
        -- it stepped down with a live quorum and took a new term (issue 23,
        failserve).  CheckQuorum asks whether the leader can still reach a
        quorum; a frame read from the peer's node says the connection works.
        Nothing else depends on it (reads confirm leadership by heartbeat
        answers, not by a lease), and a peer of a higher term still deposes
        this leader with its first Raft message."""
        if self.role != Role.LEADER or peer == self.id:
            return
        pr = self.progress.get(peer)
        if pr is not None:
            pr.recent_active = True

    def report_snapshot(self, peer: int, ok: bool) -> None:
        """The transport finished (or failed) sending a snapshot to ``peer``."""
        pr = self.progress.get(peer)
        if self.role != Role.LEADER or pr is None or pr.state != ProgressState.SNAPSHOT:
            return
        if not ok:
            pr.pending_snapshot = 0
        pr.become_probe()
        pr.probe_sent = True  # wait for the next heartbeat response before probing

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Apply a committed configuration change (the driver calls this when
        applying a ``CONF_CHANGE`` entry); returns the new configuration."""
        nid = cc.node_id
        if cc.type == ConfChangeType.ADD_VOTER:
            self.learners.discard(nid)
            self.voters.add(nid)
        elif cc.type == ConfChangeType.ADD_LEARNER:
            if nid not in self.voters:
                self.learners.add(nid)
        elif cc.type == ConfChangeType.PROMOTE:
            if nid in self.learners:
                self.learners.discard(nid)
                self.voters.add(nid)
        elif cc.type == ConfChangeType.REMOVE:
            self.voters.discard(nid)
            self.learners.discard(nid)
        if self.role == Role.LEADER:
            new_member = nid not in self.progress
            self._sync_progress()
            if new_member and nid in self.progress and nid != self.id:
                # Probe a new member at once rather than at the next heartbeat:
                # the sooner it catches up, the sooner it can be promoted.
                self._send_append(nid)
            if self.id not in self.voters:
                self._become_follower(self.term, NONE)  # removed: step down
            elif self.lead_transferee != NONE and self.lead_transferee not in self.voters:
                self.lead_transferee = NONE
            elif self._maybe_commit():
                self._bcast_append()
        return self.conf_state()

    # ------------------------------------------------------------ readiness

    def has_ready(self) -> bool:
        """Whether :meth:`ready` would return any work."""
        return bool(
            self.soft_state() != self._prev_ss
            or self.hard_state() != self._prev_hs
            or self.log.unstable.entries
            or self.log.unstable.snapshot
            or self.msgs
            or self.read_states
            or self.log.has_next_committed_entries()
        )

    def ready(self) -> Ready:
        """Take the pending work (see the module docstring for the order)."""
        ss, hs = self.soft_state(), self.hard_state()
        rd = Ready(
            soft_state=ss if ss != self._prev_ss else None,
            hard_state=hs if hs != self._prev_hs else None,
            entries=self.log.unstable_entries(),
            snapshot=self.log.unstable.snapshot,
            messages=self.msgs,
            committed_entries=self.log.next_committed_entries(),
            read_states=self.read_states,
        )
        self.msgs = []
        self.read_states = []
        self._prev_ss, self._prev_hs = ss, hs
        return rd

    def persisted(self, rd: Ready) -> None:
        """The driver made ``rd``'s snapshot and entries durable (it may say so
        before applying ``rd``; :meth:`advance` says it too).  A leader now
        counts its own copy of them towards the commit quorum -- and only now
        (see the module docstring)."""
        if rd.snapshot is not None:
            self.log.stable_snap_to(rd.snapshot.meta.index)
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
            if self.role == Role.LEADER:
                me = self.progress.get(self.id)
                if me is not None and me.maybe_update(self.log.stable_last_index()) and self._maybe_commit():
                    self._bcast_append()

    def advance(self, rd: Ready) -> None:
        """The driver persisted, sent and applied ``rd``."""
        self.persisted(rd)
        if rd.snapshot is not None:
            self.log.applied = max(self.log.applied, rd.snapshot.meta.index)
        if rd.committed_entries:
            self.log.applied_to(rd.committed_entries[-1].index)

    # ------------------------------------------------------------- stepping

    def step(self, m: Message) -> None:
        """Handle one message (from a peer, or a local one with term 0)."""
        if m.term == 0:
            pass
        elif m.term > self.term:
            if m.type in (MT.VOTE, MT.PRE_VOTE):
                force = m.context == CAMPAIGN_TRANSFER
                in_lease = (
                    self.cfg.check_quorum
                    and self.lead != NONE
                    and self.election_elapsed < self.cfg.election_tick
                )
                if not force and in_lease:
                    return  # leader stickiness: we heard from a leader recently
            if m.type == MT.PRE_VOTE or (m.type == MT.PRE_VOTE_RESP and not m.reject):
                pass  # pre-votes never change terms
            elif m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP):
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, NONE)
        elif m.term < self.term:
            if m.type in (MT.HEARTBEAT, MT.APP):
                # AppendEntries rule 1: reply false with our term, so a stale leader steps down
                self._send(Message(MT.APP_RESP, to=m.frm, reject=True, index=m.index))
            elif m.type in (MT.VOTE, MT.PRE_VOTE):
                # RequestVote rule 1: reply false with our term
                resp = MT.VOTE_RESP if m.type == MT.VOTE else MT.PRE_VOTE_RESP
                self._send(Message(resp, to=m.frm, term=self.term, reject=True))
            return

        if m.type == MT.HUP:
            self._hup(transfer=False)
        elif m.type in (MT.VOTE, MT.PRE_VOTE):
            self._handle_vote_request(m)
        elif self.role == Role.LEADER:
            self._step_leader(m)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def _handle_vote_request(self, m: Message) -> None:
        resp = MT.VOTE_RESP if m.type == MT.VOTE else MT.PRE_VOTE_RESP
        can_vote = (
            self.vote == m.frm
            or (self.vote == NONE and self.lead == NONE)
            or (m.type == MT.PRE_VOTE and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            self._send(Message(resp, to=m.frm, term=m.term))
            if m.type == MT.VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(resp, to=m.frm, term=self.term, reject=True))

    # ------------------------------------------------------ role changes

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.cfg.election_tick + self.rng.randrange(self.cfg.election_tick)
        self.lead_transferee = NONE
        self.votes = {}
        self.progress = {}
        self.pending_conf_index = 0
        self._reads = {}
        self._read_queue = []
        self._pending_reads = []

    def _become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER

    def _become_pre_candidate(self) -> None:
        self.role = Role.PRE_CANDIDATE
        self.votes = {}
        self.lead = NONE

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        self._sync_progress()
        me = self.progress.get(self.id)
        if me is not None:
            me.become_replicate()
        self._append_entries([Entry(0, 0)])  # the no-op that commits earlier terms
        # No configuration change until an entry of our own term (the no-op) is
        # applied: the fix for the single-server change bug (Ongaro, raft-dev 2015).
        self.pending_conf_index = self.log.last_index()

    def _sync_progress(self) -> None:
        """Make ``progress`` track exactly the voters and learners."""
        members = self.voters | self.learners
        for nid in list(self.progress):
            if nid not in members:
                del self.progress[nid]
        last = self.log.last_index()
        for nid in members:
            pr = self.progress.get(nid)
            if pr is None:
                pr = Progress(last + 1, self.cfg.max_inflight_msgs)
                pr.recent_active = True
                if nid == self.id:
                    pr.match = self.log.stable_last_index()  # (its own copy counts once durable)
                    pr.become_replicate()
                self.progress[nid] = pr
            pr.is_learner = nid in self.learners

    # ------------------------------------------------------------ elections

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.step(Message(MT.HUP, frm=self.id))

    def _tick_heartbeat(self, late: bool = False) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_tick:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                self._check_quorum()
            if self.role != Role.LEADER:
                return
            self.lead_transferee = NONE  # a transfer that did not finish in time is abandoned
        for nid, pr in self.progress.items():
            if nid != self.id and pr.state == ProgressState.SNAPSHOT:
                pr.snapshot_elapsed += 1
                if pr.snapshot_elapsed >= self.cfg.election_tick:
                    pr.become_probe()  # the snapshot was probably lost: try again
        every = self.cfg.heartbeat_tick
        if self.cfg.idle_heartbeat_tick and not late and self.heartbeat_elapsed >= every and self.quiet():
            every = self.cfg.idle_heartbeat_tick
        if self.heartbeat_elapsed >= every:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat(b"")

    def quiet(self) -> bool:
        """(Leader) whether nothing is in flight: every entry committed, every
        follower replicating normally with all of them acknowledged, no
        learner (one is promoted once caught up: the application looks after
        each Ready, and a heartbeat's is what comes next), no leadership
        transfer and no read waiting.  Only then may heartbeats thin out to
        ``idle_heartbeat_tick`` -- a follower to probe or catch up, an
        unacknowledged append (lost on a broken connection: the heartbeat's
        answer is what sends it again) or a read keep the heartbeat every
        ``heartbeat_tick``."""
        last = self.log.last_index()
        if (
            self.role != Role.LEADER
            or self.log.committed != last
            or self.learners
            or self.lead_transferee != NONE
            or self._pending_reads
            or self._reads
        ):
            return False
        for nid, pr in self.progress.items():
            if nid != self.id and (pr.state != ProgressState.REPLICATE or pr.match != last or pr.inflights):
                return False
        return True

    def _check_quorum(self) -> None:
        active = {nid for nid, pr in self.progress.items() if pr.recent_active or nid == self.id}
        if not has_quorum(self.voters, active):
            self._become_follower(self.term, NONE)
            return
        for nid, pr in self.progress.items():
            if nid != self.id:
                pr.recent_active = False

    def _has_unapplied_conf_change(self) -> bool:
        lo, hi = self.log.applied + 1, self.log.committed + 1
        if lo >= hi:
            return False
        try:
            ents = self.log.slice(max(lo, self.log.first_index()), hi)
        except StorageError:
            return True
        return any(e.type == EntryType.CONF_CHANGE for e in ents)

    def _hup(self, transfer: bool) -> None:
        if self.role == Role.LEADER or not self.promotable():
            return
        if self._has_unapplied_conf_change():
            return  # our configuration may be stale: apply first
        self._campaign(pre=self.cfg.pre_vote and not transfer, transfer=transfer)

    def _campaign(self, pre: bool, transfer: bool = False) -> None:
        if pre:
            self._become_pre_candidate()
            kind, term = MT.PRE_VOTE, self.term + 1
        else:
            self._become_candidate()
            kind, term = MT.VOTE, self.term
        if self._poll(self.id, True) == VoteResult.WON:
            self._won(pre)
            return
        ctx = CAMPAIGN_TRANSFER if transfer else b""
        for nid in sorted(self.voters):
            if nid != self.id:
                self._send(
                    Message(
                        kind,
                        to=nid,
                        term=term,
                        index=self.log.last_index(),
                        log_term=self.log.last_term(),
                        context=ctx,
                    )
                )

    def _poll(self, nid: int, granted: bool) -> VoteResult:
        self.votes.setdefault(nid, granted)
        return vote_result(self.voters, self.votes)

    def _won(self, pre: bool) -> None:
        if pre:
            self._campaign(pre=False)
        else:
            self._become_leader()
            self._bcast_append()

    # ---------------------------------------------------- role step functions

    def _step_candidate(self, m: Message) -> None:
        my_resp = MT.PRE_VOTE_RESP if self.role == Role.PRE_CANDIDATE else MT.VOTE_RESP
        if m.type == MT.APP:
            self._become_follower(m.term, m.frm)
            self._handle_append(m)
        elif m.type == MT.HEARTBEAT:
            self._become_follower(m.term, m.frm)
            self._handle_heartbeat(m)
        elif m.type == MT.SNAP:
            self._become_follower(m.term, m.frm)
            self._handle_snapshot(m)
        elif m.type == my_resp:
            res = self._poll(m.frm, not m.reject)
            if res == VoteResult.WON:
                self._won(self.role == Role.PRE_CANDIDATE)
            elif res == VoteResult.LOST:
                self._become_follower(self.term, NONE)

    def _step_follower(self, m: Message) -> None:
        if m.type in (MT.PROP, MT.TRANSFER_LEADER, MT.READ_INDEX):
            if self.lead != NONE:
                self._send(msgspec.structs.replace(m, to=self.lead, term=0))
        elif m.type == MT.APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_append(m)
        elif m.type == MT.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_heartbeat(m)
        elif m.type == MT.SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_snapshot(m)
        elif m.type == MT.TIMEOUT_NOW:
            self._hup(transfer=True)
        elif m.type == MT.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))

    def _step_leader(self, m: Message) -> None:
        if m.type == MT.BEAT:
            self._bcast_heartbeat(b"")
            return
        if m.type == MT.CHECK_QUORUM:
            self._check_quorum()
            return
        if m.type == MT.PROP:
            self._leader_propose(m)
            return
        if m.type == MT.READ_INDEX:
            self._leader_read_index(m)
            return
        if m.type == MT.TRANSFER_LEADER:
            self._leader_transfer(m.frm)
            return
        pr = self.progress.get(m.frm)
        if pr is None:
            return
        if m.type == MT.APP_RESP:
            pr.recent_active = True
            self._handle_append_response(m, pr)
        elif m.type == MT.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state == ProgressState.REPLICATE and pr.is_paused():
                pr.free_first_one()
            if pr.match < self.log.last_index():
                self._send_append(m.frm)
            if m.context:
                self._read_ack(m.frm, m.context)

    # ---------------------------------------------------------- replication

    def _append_entries(self, ents: Iterable[Entry]) -> None:
        last = self.log.last_index()
        stamped = [Entry(self.term, last + 1 + i, e.type, e.data) for i, e in enumerate(ents)]
        self.log.append(stamped)
        # The leader's own copy counts towards the commit quorum once it is
        # durable (persisted), not now: it may be sent before it is written.

    def _leader_propose(self, m: Message) -> bool:
        if not m.entries or self.id not in self.progress or self.lead_transferee != NONE:
            return False
        ents = list(m.entries)
        for i, e in enumerate(ents):
            if e.type == EntryType.CONF_CHANGE:
                if self.pending_conf_index > self.log.applied:
                    return False  # one configuration change at a time
                self.pending_conf_index = self.log.last_index() + i + 1
        self._append_entries(ents)
        self._bcast_append()
        return True

    def _maybe_commit(self) -> bool:
        match = {nid: pr.match for nid, pr in self.progress.items()}
        ci = committed_index(self.voters, match)
        committed = self.log.maybe_commit(ci, self.term)
        if committed and self._pending_reads and self._committed_in_current_term():
            pending, self._pending_reads = self._pending_reads, []
            for rm in pending:
                self._leader_read_index(rm)
        return committed

    def _committed_in_current_term(self) -> bool:
        return self.log.term_or_zero(self.log.committed) == self.term

    def _bcast_append(self) -> None:
        for nid in sorted(self.progress):
            if nid != self.id:
                self._send_append(nid)

    def _send_append(self, to: int, send_if_empty: bool = True) -> bool:
        pr = self.progress[to]
        if pr.is_paused():
            return False
        prev = pr.next - 1
        try:
            prev_term = self.log.term(prev)
            ents = self.log.entries_from(pr.next, self.cfg.max_size_per_msg)
        except StorageError:
            snap = self.log.snapshot()
            if snap.is_empty():
                return False
            self._send(Message(MT.SNAP, to=to, snapshot=snap))
            pr.become_snapshot(snap.meta.index)
            return True
        if not ents and not send_if_empty:
            return False
        self._send(
            Message(
                MT.APP,
                to=to,
                index=prev,
                log_term=prev_term,
                entries=tuple(ents),
                commit=self.log.committed,
            )
        )
        pr.sent_entries(ents[-1].index if ents else None)
        return True

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        if m.reject:
            hint = m.reject_hint
            if m.log_term > 0:
                # Skip the whole conflicting term: if we hold it, resume after our last entry of it.
                i = min(m.index, self.log.last_index())
                lo = self.log.first_index() - 1
                while i > lo and self.log.term_or_zero(i) > m.log_term:
                    i -= 1
                if i >= lo and self.log.term_or_zero(i) == m.log_term:
                    hint = i + 1
            if pr.maybe_decr_to(m.index, hint):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        was_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            return
        if pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT and pr.match + 1 >= self.log.first_index():
            pr.become_probe()
            pr.become_replicate()
        elif pr.state == ProgressState.REPLICATE:
            pr.free_le(m.index)
        if self._maybe_commit():
            self._bcast_append()
        elif was_paused:
            self._send_append(m.frm)
        for _ in range(self.cfg.max_inflight_msgs):  # fill the window (bounded)
            if not self._send_append(m.frm, send_if_empty=False):
                break
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self._send(Message(MT.TIMEOUT_NOW, to=m.frm))

    def _bcast_heartbeat(self, ctx: bytes) -> None:
        for nid in sorted(self.progress):
            if nid != self.id:
                pr = self.progress[nid]
                commit = min(pr.match, self.log.committed)
                self._send(Message(MT.HEARTBEAT, to=nid, commit=commit, context=ctx))

    # ------------------------------------------------------ follower handlers

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self._send(Message(MT.APP_RESP, to=m.frm, index=self.log.committed))
            return
        last = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last is not None:
            self._send(Message(MT.APP_RESP, to=m.frm, index=last))
            return
        if m.index > self.log.last_index():
            hint, hint_term = self.log.last_index() + 1, 0
        else:
            hint_term = self.log.term(m.index)
            hint = self.log.first_index_of_term_at(m.index)
        self._send(
            Message(MT.APP_RESP, to=m.frm, index=m.index, reject=True, reject_hint=hint, log_term=hint_term)
        )

    def _handle_heartbeat(self, m: Message) -> None:
        self.log.commit_to(m.commit)
        self._send(Message(MT.HEARTBEAT_RESP, to=m.frm, context=m.context))

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        if snap is not None and self._restore(snap):
            self._send(Message(MT.APP_RESP, to=m.frm, index=self.log.last_index()))
        else:
            self._send(Message(MT.APP_RESP, to=m.frm, index=self.log.committed))

    def _restore(self, snap: Snapshot) -> bool:
        meta = snap.meta
        if meta.index <= self.log.committed:
            return False
        if self.log.match_term(meta.index, meta.term):
            self.log.commit_to(meta.index)  # we already have it: just fast-forward
            return False
        self.log.restore(snap)
        self.voters = set(meta.conf_state.voters)
        self.learners = set(meta.conf_state.learners)
        return True

    # ------------------------------------------------------------- ReadIndex

    def _leader_read_index(self, m: Message) -> None:
        if len(self.voters) == 1 and self.id in self.voters:
            self._release_read(m.frm, self.log.committed, m.context)
            return
        if not self._committed_in_current_term():
            self._pending_reads.append(m)  # wait for our no-op to commit
            return
        if m.context in self._reads:
            return
        self._reads[m.context] = _ReadRequest(self.log.committed, m.frm, {self.id})
        self._read_queue.append(m.context)
        self._bcast_heartbeat(m.context)

    def _read_ack(self, frm: int, ctx: bytes) -> None:
        req = self._reads.get(ctx)
        if req is None:
            return
        req.acks.add(frm)
        if not has_quorum(self.voters, req.acks):
            return
        # Everything queued up to ctx was confirmed by this round too.
        upto = self._read_queue.index(ctx) + 1
        done, self._read_queue = self._read_queue[:upto], self._read_queue[upto:]
        for c in done:
            r = self._reads.pop(c)
            self._release_read(r.frm, r.index, c)

    def _release_read(self, frm: int, index: int, ctx: bytes) -> None:
        if frm in (NONE, self.id):
            self.read_states.append(ReadState(index, ctx))
        else:
            self._send(Message(MT.READ_INDEX_RESP, to=frm, index=index, context=ctx))

    # ------------------------------------------------------- leader transfer

    def _leader_transfer(self, transferee: int) -> None:
        if transferee == self.id or transferee not in self.voters:
            return
        if self.lead_transferee == transferee:
            return
        self.lead_transferee = transferee
        self.election_elapsed = 0  # the transfer must finish within an election timeout
        pr = self.progress[transferee]
        if pr.match == self.log.last_index():
            self._send(Message(MT.TIMEOUT_NOW, to=transferee))
        else:
            self._send_append(transferee)

    # ---------------------------------------------------------------- output

    def _send(self, m: Message) -> None:
        if m.type not in (MT.PROP, MT.READ_INDEX) and m.term == 0:
            m = msgspec.structs.replace(m, term=self.term)
        self.msgs.append(msgspec.structs.replace(m, frm=self.id) if m.type != MT.TRANSFER_LEADER else m)
