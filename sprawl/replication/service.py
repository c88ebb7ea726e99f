"""Replication on a node: the adapter between the pure replica and failover
cores, the broker (records in memory and LMDB) and the peer channel.

One :class:`~sprawl.replication.partition.PartitionReplication` per
replicated partition this node holds; one :class:`ReplicationService` per
node routes peer frames (each an :class:`~sprawl.replication.envelope.Envelope`)
to them and to the failover cores the node runs as controller, and ticks
those that have work (issue 23): a replica or core that is idle
(:attr:`Replica.idle <sprawl.replication.replica.Replica.idle>`,
:attr:`FailoverCore.idle <sprawl.replication.failover.FailoverCore.idle>`)
is not ticked until an input gives it work again, so an idle node's tick
costs nothing per partition.  Instead of per-partition beats from idle
leaders, the node beats the controller once per tick -- every
:data:`IDLE_BEAT_TICKS` ticks while it has nothing with work
(:class:`~sprawl.replication.messages.NodeBeat`) --, and every frame from a peer
counts as hearing it (:mod:`sprawl.replication.liveness`).

Nodes known dead (:attr:`ReplicationService.dead`) -- gossip said dead or
left (:meth:`ReplicationService.member_event`), or the controller found them
silent and said so on its ``Assign`` (``down``) -- get nothing from this
node's leaders, which go idle once their other followers hold their log: a
dead node's former partitions cost no tick on their new leaders (issue 23).
Gossip's word holds until gossip says the node is alive again; the
controller's is a hint, which ends when anything is heard from the node (any
frame) and lapses after :data:`DEAD_HINT_SECONDS` (by then gossip has said
the node is dead, if it is), so a stale one never keeps a live follower
unfed.  When a node stops being known dead, the leaders it follows are
woken and catch it up (meanwhile a leader still answers what the node says).

The cluster data plane (:mod:`sprawl.cluster`) builds one
:class:`PartitionReplication` for every replicated partition this node holds
and gives the service the function that commits a failover choice as a Raft
proposal (``set_partition``); see docs/architecture.md, "Replication" and
"The data plane".
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

import msgspec
from twisted.internet import defer, task
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from sprawl.interfaces import Clock, Delayed, ReplicaStore
from sprawl.peer.frames import BATCH_BYTES, REPLICATION, REPLICATION_BATCH
from sprawl.replication.envelope import Envelope, unpack_record
from sprawl.replication.failover import Commit, ControlOutput, FailoverCore
from sprawl.replication.liveness import NodeLiveness
from sprawl.replication.messages import (
    Append,
    AppendResp,
    Assign,
    Fence,
    FenceResp,
    Handoff,
    HandoffReady,
    LeaderBeat,
    Message,
    NodeBeat,
    Resign,
    append_flaw,
    decode,
    encode,
)
from sprawl.replication.partition import (
    PartitionReplication,
    take_fences,
    take_first_appends,
    take_leaderships,
)
from sprawl.replication.timeline import PhaseTimeline

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from sprawl.log.record import Record
    from sprawl.peer.tcp import PeerChannel

log = Logger()

_WAIT = (
    LogLevel.info,
    "committing the leader of {topic}/{partition} must wait ({code}); retrying "
    "({more} more not logged since the last)",
)

#: Failover commits that fail in the course of things, by error code, and how
#: they are logged (at most once a second a code: a batch of thousands of
#: choices fails as one); any other failure is critical.
#: ``no_leader``, ``stopping``: Raft has no leader to take it now (an election,
#: a Raft hand-off on a graceful stop or drain); the core retries in a later
#: tick (issue 24).  ``proposal_timeout``: it may still land (restart36).
#: ``stale_epoch``: the metadata's fencing -- a choice of this epoch or a later
#: one was committed first (this node's controller deposed with its proposal
#: in flight, stop 46's chaos run).
EXPECTED_COMMIT_FAILURES: dict[str, tuple[LogLevel, str]] = {
    "no_leader": _WAIT,
    "stopping": _WAIT,
    "proposal_timeout": (
        LogLevel.warn,
        "committing the leader of {topic}/{partition} timed out; retrying "
        "({more} more not logged since the last)",
    ),
    "stale_epoch": (
        LogLevel.warn,
        "committing the leader of {topic}/{partition} was refused: a choice of its epoch or a "
        "later one was committed first ({more} more not logged since the last)",
    ),
}

#: Seconds a node stays known dead on the controller's word alone (gossip's
#: ``dead`` or ``left`` holds until gossip or the node itself says otherwise).
DEAD_HINT_SECONDS = 10.0

#: Late ticks in a row (this node stalled) that count no silences (see :meth:`ReplicationService.tick`).
MAX_SKIPPED_JUDGEMENTS = 5
#: While this node has no replica or core with work, it beats the controller
#: every this many ticks (issue 23, idle34: half the frames of an idle
#: cluster's beats); with work under way, after a stall or to a new
#: controller, on every tick.  The controller's judgement is unchanged (a node
#: silent for ``beat_timeout`` after it was last heard): a node killed is
#: found as soon on average, give or take a tick (its last beat up to a tick
#: earlier, the others' next beat up to a tick later).
IDLE_BEAT_TICKS = 2

#: A held replication message larger than this (it carries records) leaves as
#: its own frame, not in a ``REPLICATION_BATCH`` (see :meth:`ReplicationService.held`).
HELD_ALONE_BYTES = 4096

#: Seconds between the controller's log lines of the longest gap it heard
#: from each node (how close a live node came to the beat timeout, issue 23).
GAP_REPORT_SECONDS = 60.0

#: A set of keys due whose hash table is past this many bytes while it holds
#: at most :data:`COMPACT_BELOW` keys is rebuilt in place (:func:`compact`).
COMPACT_BYTES = 8192
COMPACT_BELOW = 64


def compact(keys: set[tuple[str, int]]) -> None:
    """Give ``keys`` a table as small as what it holds, the same set object
    (replicas hold its bound ``add``).  A set never shrinks as keys are
    discarded, and iterating it walks its whole table: after a failover or a
    start made 10,000 replicas due, every later tick's walk of the few (or
    none) still due cost ~0.15-0.4 ms, 10 times a second, on an idle node
    (issue 23: the idle tick idle39 could not place)."""
    if len(keys) <= COMPACT_BELOW and sys.getsizeof(keys) > COMPACT_BYTES:
        kept = list(keys)
        keys.clear()  # (frees the table: back to the small one)
        keys.update(kept)


class ReplicationService:
    """Routes replication frames on one node and ticks its replicas and controller cores."""

    def __init__(
        self,
        node_id: str,
        channel: PeerChannel,
        reactor: Clock,
        *,
        tick_seconds: float = 0.1,
        commit: Callable[[str, int, Commit], defer.Deferred[None]] | None = None,
        accept: Callable[[str, tuple[str, int], Message], bool] | None = None,
        beat_timeout: float = 2.0,
        node_beats: Callable[[], bool] | None = None,
        batch_frames: Callable[[], bool] | None = None,
        storage_failed: Callable[[], bool] | None = None,
    ) -> None:
        self.node_id = node_id
        self.channel = channel
        self.reactor = reactor
        self.tick_seconds = tick_seconds
        #: Replicas and controller cores with work for ticks (the others are idle).
        self._due: set[tuple[str, int]] = set()
        #: Replicas not idle whose next ticks would only count (followers not
        #: caught up between their words to their leader, leaders awaiting
        #: their followers' answers, :attr:`Replica.quiet_ticks
        #: <sprawl.replication.replica.Replica.quiet_ticks>`): left out of
        #: :attr:`_due` until the tick number here, or until an input wakes them.
        self._parked: dict[tuple[str, int], int] = {}
        #: Those keys by the tick that wakes them.
        self._wake_at: dict[int, list[tuple[str, int]]] = {}
        #: Ticks so far (what :attr:`_parked` counts in).
        self._tick_no = 0
        #: Partitions whose replica was added here or produced an output (its
        #: role, a follower's position or its high watermark may have moved)
        #: since the data plane's summary last drained this set.
        self.changed: set[tuple[str, int]] = set()
        self._due_control: set[tuple[str, int]] = set()
        #: Replicas whose adapter failed since the data plane last rebuilt them.
        self.broken: set[tuple[str, int]] = set()
        self.replicas: dict[tuple[str, int], PartitionReplication] = {}
        #: Failover cores this node runs as the controller, by partition, with
        #: the function that commits a choice (Raft, in the real node;
        #: without one, every choice counts as committed at once).
        self.controllers: dict[tuple[str, int], FailoverCore] = _Cores(self._core_set)
        self.commit: Callable[[str, int, Commit], defer.Deferred[None]] = commit or (
            lambda t, p, c: defer.succeed(None)
        )
        #: Whether a message about a partition is taken from a peer (the data
        #: plane's rule: replicas of the partition, controller messages from a
        #: Raft voter); everything is taken without one.
        self.accept: Callable[[str, tuple[str, int], Message], bool] = accept or (lambda peer, key, m: True)
        self.dropped = 0
        #: Messages refused: from a node that is no replica (or controller), or
        #: an Append that is not one a leader could have sent.
        self.refused = 0
        self._refusals_logged: dict[str, float] = {}
        channel.handlers[REPLICATION] = self._frame
        channel.handlers[REPLICATION_BATCH] = self._batch_frame
        #: Whether every node takes a ``REPLICATION_BATCH`` frame (the ``repl-batch``
        #: feature; on without a gate): while it is not, every message is a frame.
        self.batch_frames: Callable[[], bool] = batch_frames or (lambda: True)
        #: Messages held for one frame per node (:meth:`held`), and the depth of holds.
        self._held: dict[str, list[bytes]] = {}
        self._holds = 0
        #: Frames sent and messages carried by them (tests count them).
        self.batch_frames_sent = 0
        self.batched_messages = 0
        self._loop: task.LoopingCall | None = None
        #: When :meth:`tick` last ran (a late tick means this node stalled).
        self._last_tick: float | None = None
        self._judge_skipped = 0
        #: Nodes heard from lately: as the controller, a node silent for
        #: ``beat_timeout`` seconds, or restarted, has its leaderships failed over.
        self.liveness = NodeLiveness(beat_timeout)
        #: The nodes watched for silence: every replica of a controller core.
        self._watched: set[str] = set()
        #: The node that last acted as controller here (Fence, Assign, Handoff).
        self._last_controller: str | None = None
        #: The controller's node id now (None: not known), which the node
        #: beats; by default the node that last acted as one.
        self.controller_of: Callable[[], str | None] = lambda: self._last_controller
        #: Where the node's beats go: the controller, or the last other one it knew.
        self._beat_to: str | None = None
        #: Where the last beat went, idle ticks to wait before the next, beats sent.
        self._beat_sent_to: str | None = None
        self._beat_wait = 0
        self.beats_sent = 0
        #: Nodes known dead, shared by every replica core here (:attr:`Replica.dead`).
        self.dead: set[str] = set()
        #: Nodes that answered appends since the tick before the last, shared
        #: by every replica core here (:attr:`Replica.answering`), and those
        #: heard answering since the last tick.
        self.answering: set[str] = set()
        self._answers_heard: set[str] = set()
        #: Until when each of them is dead on the controller's word (inf: gossip's).
        self._dead_until: dict[str, float] = {}
        #: Commit failures by code: when one was last logged, how many not since.
        self._commit_logs: dict[str, tuple[float, int]] = {}
        #: This run of the node (a restart beats another).
        self.boot = random.SystemRandom().getrandbits(62)
        #: Ticks of replicas and controller cores so far (tests count them).
        self.ticked = 0
        #: Whether every node of the cluster has the ``node-beat`` feature
        #: (the data plane asks the cluster feature gate; on without one).  While it is
        #: not on, an older node may be the controller (it knows a leader is
        #: alive only from its per-partition beats, and drops a NodeBeat), or
        #: lead partitions (it sends no NodeBeat).  So every leader ticks as
        #: before (heartbeats and a LeaderBeat per partition per tick), and as
        #: the controller every core whose leader never sent a NodeBeat counts
        #: its partition's silence as before; the idle path only when on.
        self.node_beats: Callable[[], bool] = node_beats or (lambda: True)
        #: Whether this node's store failed (a full disk, a disk error: the
        #: broker refuses every write until a restart).  Such a node beats
        #: no more: the controller finds it silent and fails every
        #: leadership it holds over to replicas that can write, instead of
        #: its partitions answering 503 ``storage_failed`` until an operator
        #: comes.  Its replicas, failed at their first write, are not built
        #: again, and answer no fence: it is chosen to lead nothing.
        self.storage_failed: Callable[[], bool] = storage_failed or (lambda: False)
        self._storage_failure_logged = False
        #: Times the hops of replicated publishes (``quorum`` on a leader, ``visible``
        #: on a follower; the node's metrics), given to every replica added.
        self.on_hop: Callable[[str, float], None] | None = None
        #: When each phase of a failover happened here (logged as ``timeline:``
        #: lines, at most one per phase a second; benchmarks.failover_timeline).
        self.timeline = PhaseTimeline()
        #: New leaders here -> the log end their followers must hold (the
        #: epoch's control record) for the ``followers_hold`` phase.
        self._new_leads: dict[tuple[str, int], int] = {}
        #: Fences heard this reactor turn, taken together at its end (:meth:`_take_fences`).
        self._fences: list[tuple[tuple[str, int], PartitionReplication, str, Fence]] = []
        self._fence_keys: set[tuple[str, int]] = set()
        self._fence_call: Delayed | None = None
        #: Fences taken in a batch so far, and the batches (tests count them).
        self.fences_batched = 0
        self.fence_batches = 0
        #: Assigns naming this node leader heard this reactor turn (from the
        #: apply of a failover's entry, or the controller), taken together at
        #: its end (:meth:`_take_leaderships`): (key, replica, source, Assign,
        #: whether it led before).
        self._leads: list[tuple[tuple[str, int], PartitionReplication, str, Assign, bool]] = []
        self._lead_keys: set[tuple[str, int]] = set()
        self._lead_call: Delayed | None = None
        #: Leaderships taken in a batch so far, and the batches (tests count them).
        self.leads_batched = 0
        self.lead_batches = 0
        #: New leaders' first appends (a control record) heard this reactor
        #: turn, taken together at its end (:meth:`_take_first_appends`).
        self._firsts: list[tuple[tuple[str, int], PartitionReplication, str, Append, list[Record]]] = []
        self._first_keys: set[tuple[str, int]] = set()
        self._first_call: Delayed | None = None
        #: First appends taken in a batch so far, and the batches (tests count them).
        self.firsts_batched = 0
        self.first_batches = 0
        #: When the longest gaps heard were last logged (:meth:`_report_gaps`).
        self._gaps_reported = float("-inf")
        #: Called with the peer of every replication frame read (the composition
        #: root: the Raft leader counts it as hearing that node for CheckQuorum).
        self.on_heard: Callable[[str], None] | None = None

    def start(self) -> None:
        """Start ticking."""
        loop = task.LoopingCall(self.tick)
        loop.clock = cast("IReactorTime", self.reactor)
        self._loop = loop
        loop.start(self.tick_seconds, now=False)

    def stop(self) -> None:
        """Stop ticking."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def add(self, replica: PartitionReplication) -> None:
        """Serve a replicated partition on this node."""
        key = (replica.topic.name, replica.partition)
        self.replicas[key] = replica
        replica.wake = self._due.add
        replica.changed = self._changed
        self.changed.add(key)
        replica.on_failed = self.broken.add
        replica.core.dead = self.dead
        replica.core.answering = self.answering
        replica.on_hop = self.on_hop
        self._parked.pop(key, None)  # (a replica built again: its own count)
        if not replica.core.idle:
            self._due.add(key)

    def replica(
        self, topic: str, partition: int, broker: ReplicaStore, controller: str
    ) -> PartitionReplication:
        """The partition's replica here, created on first use."""
        key = (topic, partition)
        r = self.replicas.get(key)
        if r is None:
            r = PartitionReplication(
                self.node_id, controller, broker, broker.topics[topic], partition, self.sender(key)
            )
            self.add(r)
        return r

    def sender(self, key: tuple[str, int]) -> Callable[[str, Envelope], None]:
        """The function a partition's replica sends its messages with (to itself: delivered here)."""

        def send(dst: str, env: Envelope) -> None:
            if dst == self.node_id:
                self._deliver(self.node_id, env)
            elif self._holds:
                self._held.setdefault(dst, []).append(msgspec.msgpack.encode(env))
            else:
                self.channel.send(dst, REPLICATION, msgspec.msgpack.encode(env))

        return send

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the replication messages sent to other nodes within it and
        send them at its end as one ``REPLICATION_BATCH`` frame per node (a
        burst of thousands of partitions' messages: a failover's fences,
        answers and first appends, issue 23) -- each node's in the order
        sent; a lone message as a plain frame.  Nested holds send at the
        outermost's end.  While the ``repl-batch`` feature is not on, one
        frame per message, sent then, as before."""
        self._holds += 1
        try:
            yield
        finally:
            self._holds -= 1
            if not self._holds and self._held:
                held, self._held = self._held, {}
                batch = self.batch_frames()
                for dst, payloads in held.items():
                    self._send_held(dst, payloads, batch)

    def _send_held(self, dst: str, payloads: list[bytes], batch: bool) -> None:
        """Send one node's held messages, in order: the small ones together in
        frames of at most :data:`~sprawl.peer.frames.BATCH_BYTES`, one that
        carries records (over :data:`HELD_ALONE_BYTES`) as its own frame -- a
        replica bounds its appends' bytes per frame (``batch_bytes``), and a
        follower catching up gets them so."""
        if not batch or len(payloads) == 1:
            for p in payloads:
                self.channel.send(dst, REPLICATION, p)
            return
        start, size = 0, 0
        for i, p in enumerate(payloads):
            if len(p) > HELD_ALONE_BYTES:
                if i > start:
                    self._send_batch(dst, payloads[start:i])
                self.channel.send(dst, REPLICATION, p)
                start, size = i + 1, 0
                continue
            if size and size + len(p) > BATCH_BYTES:
                self._send_batch(dst, payloads[start:i])
                start, size = i, 0
            size += len(p) + 5
        if start < len(payloads):
            self._send_batch(dst, payloads[start:])

    def _send_batch(self, dst: str, payloads: list[bytes]) -> None:
        if len(payloads) == 1:
            self.channel.send(dst, REPLICATION, payloads[0])
            return
        self.batch_frames_sent += 1
        self.batched_messages += len(payloads)
        self.channel.send(dst, REPLICATION_BATCH, msgspec.msgpack.encode(payloads))

    def tick(self) -> None:
        """Tick the replicas and controller cores that have work (the others
        are idle), and beat the controller.  While the ``node-beat`` feature is
        not on across the cluster (:attr:`node_beats`), every leader and every
        controller core of a leader that never beat ticks, as on a node of
        the release before it."""
        # A tick more than a period late means this node stalled (or was not
        # scheduled), and the frames it could not read meanwhile -- beats
        # among them -- still wait in its sockets: the reactor runs due
        # timers before it reads.  Such a tick counts no silences (the next
        # one does, after the reactor read them), or a controller that
        # stalled past the beat timeout would fail over every leader of the
        # cluster at once.  Stalls may come back to back, so up to
        # :data:`MAX_SKIPPED_JUDGEMENTS` late ticks in a row skip; a node late
        # on every tick still counts silences every few ticks.
        now = self.reactor.seconds()
        late = self._last_tick is not None and now - self._last_tick > 2 * self.tick_seconds
        self._last_tick = now
        judge = not late or self._judge_skipped >= MAX_SKIPPED_JUDGEMENTS
        self._judge_skipped = 0 if judge else self._judge_skipped + 1
        for node in [n for n, until in self._dead_until.items() if until <= now]:
            self.node_alive(node)  # the controller's hint lapsed (gossip never said dead)
        self.answering.clear()
        self.answering |= self._answers_heard
        self._answers_heard.clear()
        beats = self.node_beats()
        done_r, done_c = self._tick_as_before() if not beats else (set(), set())
        sent = 0
        self._tick_no += 1
        for key in self._wake_at.pop(self._tick_no, ()):
            if self._parked.get(key) == self._tick_no:
                del self._parked[key]
                self._due.add(key)
        # The ticks' messages to other nodes leave as one frame per node (a
        # failover's thousands of new leaders re-send and beat in the same
        # tick: issue 23), as :meth:`held` does for the bursts of messages.
        ticked = self.ticked
        with self.held():
            parked = self._parked
            for key in list(self._due):
                r = self.replicas.get(key)
                if r is None or r.core.idle:
                    self._due.discard(key)
                    parked.pop(key, None)
                    continue
                if key in done_r:
                    continue  # ticked already
                wake = parked.pop(key, None)
                if wake is not None:
                    # Woken by an input before its quiet ticks passed: take back
                    # those counted ahead that did not pass.
                    r.core.skip_ticks(self._tick_no - wake)
                self.ticked += 1
                r.core.tick_beats = not beats  # (a leader's beat per tick: for the release before)
                n = r.tick()
                if n:
                    sent += n
                quiet = r.core.quiet_ticks
                if quiet > 0 and not r.holds_sends:
                    # Its next ``quiet`` ticks would only count: counted now, and
                    # not ticked until the one after them (or an input wakes it).
                    # A follower between its words to its leader; a leader whose
                    # followers' answers are awaited (a failover's new leaders
                    # waiting for their busy follower, issue 23, fail39).
                    r.core.skip_ticks(quiet)
                    self._due.discard(key)
                    wake = self._tick_no + quiet + 1
                    parked[key] = wake
                    self._wake_at.setdefault(wake, []).append(key)
            if self._new_leads:
                # Messages the replicas' ticks made (re-sends, heartbeats) while new
                # leaders wait for their followers: the timeline's ``tick_sends``;
                # and the replicas ticked meanwhile (``tick_replicas``).
                if sent:
                    self.timeline.mark("tick_sends", now, sent)
                if self.ticked > ticked:
                    self.timeline.mark("tick_replicas", now, self.ticked - ticked)
            heard = self._nodes_heard() if self._due_control else frozenset()
            for key in list(self._due_control):
                c = self.controllers.get(key)
                if c is None or c.idle:
                    self._due_control.discard(key)
                    continue
                if key in done_c:
                    continue  # ticked already
                self.ticked += 1
                self.run_control(key, c.tick(self._leader_heard(c), heard))
            compact(self._due)
            compact(self._due_control)
            if self.controllers and judge:
                now = self.reactor.seconds()
                for node in self.liveness.newly_silent(self._watched - {self.node_id}, now):
                    self._leader_lost(node, "nothing heard from it")
        for controller in (self.controller_of(), self._last_controller):
            if controller and controller != self.node_id:
                # The controller as this node knows it; else the last node
                # that acted as one towards it (a deposed Raft leader that has
                # not heard of its successor yet hears of it from its Assigns).
                self._beat_to = controller
                break
        if self._beat_to is not None and self.storage_failed():
            if not self._storage_failure_logged:
                self._storage_failure_logged = True
                log.critical(
                    "this node's storage failed: it beats the controller no more, so every partition "
                    "it leads fails over to a replica that can write; free the disk (or fix it) and "
                    "restart the node"
                )
        elif self._beat_to is not None:
            # Also while this node does not know the controller, or believes
            # it is the controller itself (a deposed Raft leader that has not
            # heard yet): the last other controller it knew still hears it.
            # Idle, every IDLE_BEAT_TICKS ticks.
            busy = bool(self._due or self._due_control) or late or not beats
            if busy or self._beat_to != self._beat_sent_to or self._beat_wait <= 0:
                env = Envelope("", 0, encode(NodeBeat(self.boot, len(self.replicas))))
                self.channel.send(self._beat_to, REPLICATION, msgspec.msgpack.encode(env))
                self.beats_sent += 1
                self._beat_sent_to = self._beat_to
                self._beat_wait = IDLE_BEAT_TICKS - 1
            else:
                self._beat_wait -= 1
        if self.controllers and now - self._gaps_reported >= GAP_REPORT_SECONDS:
            self._report_gaps(now)
        for phase, p in self.timeline.due(now):
            log.info(
                "timeline: {phase} first={first:.3f} last={last:.3f} n={n}",
                phase=phase,
                first=p.first,
                last=p.last,
                n=p.n,
            )

    def _report_gaps(self, now: float) -> None:
        """As the controller: log the longest gap heard from each watched node
        since the last report -- with the beat timeout, how close live nodes
        came to being failed over (a shorter timeout must stay clear of it)."""
        first = self._gaps_reported == float("-inf")
        self._gaps_reported = now
        gaps = self.liveness.take_gaps()
        if first or not gaps:
            return  # (the first window began whenever this node last heard each)
        log.info(
            "liveness: the longest gap heard from each node in {seconds:.0f} s: {gaps} "
            "(beat timeout {timeout:.1f} s)",
            seconds=GAP_REPORT_SECONDS,
            gaps=" ".join(f"{n}={g:.2f}" for n, g in sorted(gaps.items())),
            timeout=self.liveness.timeout,
        )

    def assigned(self, key: tuple[str, int], r: PartitionReplication, was_leader: bool) -> None:
        """The replica of ``key`` here heard an Assign (from the controller or
        this node's apply of the metadata): one more for the timeline, and a
        new leader's followers are watched until they hold its control record."""
        now = self.reactor.seconds()
        self.timeline.mark("assign_heard", now)
        if r.core.is_leader and not was_leader:
            self.timeline.mark("leading", now)
            self._new_leads[key] = r.core.cache.end

    def _changed(self, key: tuple[str, int]) -> None:
        """A replica's core made an output (its role, a follower's position or
        its high watermark may have moved): noted for the data plane; a new
        leader whose high watermark now covers its control record -- its
        followers hold it, a publish can be acked -- is the timeline's
        ``followers_hold`` (looked at on its own outputs only, not per tick)."""
        self.changed.add(key)
        end = self._new_leads.get(key)
        if end is None:
            return
        r = self.replicas.get(key)
        if r is None or not r.core.is_leader:
            del self._new_leads[key]
        elif r.core.hw >= end:
            del self._new_leads[key]
            self.timeline.mark("followers_hold", self.reactor.seconds())

    def _leader_heard(self, c: FailoverCore) -> bool:
        """Whether ``c``'s leader is this node, or a node that beats and is
        not silent: its silence is then counted per node (a node silent past
        the beat timeout fails over all it leads in :meth:`tick`), and the
        core fails over only a partition stuck on it (``FailoverCore.tick``)."""
        lead = c.leader
        if lead is None:
            return False
        return lead == self.node_id or (self.liveness.beats(lead) and not self.liveness.is_silent(lead))

    def _nodes_heard(self) -> frozenset[str]:
        """The watched nodes heard lately -- this node, and every node that
        beats and is not silent: a fence one of them has not answered yet is
        in its queue, not lost (:meth:`FailoverCore.tick
        <sprawl.replication.failover.FailoverCore.tick>`'s ``heard``).  One
        pass over the watched nodes (a handful), once per tick."""
        lv = self.liveness
        return frozenset(
            n for n in self._watched if n == self.node_id or (lv.beats(n) and not lv.is_silent(n))
        )

    def _tick_as_before(self) -> tuple[set[tuple[str, int]], set[tuple[str, int]]]:
        """What the release before ``node-beat`` ticks: every leader replica
        (it heartbeats its followers and beats the controller for its
        partition) and, as the controller, every core whose leader never sent
        a NodeBeat (an older node: its partition's silence is counted).  The
        others are ticked by :meth:`tick` as with the feature on.  Returns
        the replicas and cores ticked (not to be ticked twice)."""
        done_r, done_c = set(), set()
        for key, r in list(self.replicas.items()):
            if r.core.is_leader:
                done_r.add(key)
                self.ticked += 1
                r.core.tick_beats = True
                r.tick()
        for key, c in list(self.controllers.items()):
            if not (c.leader and self.liveness.beats(c.leader)):
                done_c.add(key)
                self.ticked += 1
                self.run_control(key, c.tick())
        return done_r, done_c

    def heard(self, peer: str, boot: int | None = None) -> None:
        """A frame (or, with ``boot``, a beat) came from ``peer``."""
        if self._dead_until.get(peer, float("inf")) < float("inf"):
            self.node_alive(peer)  # the controller's word only (gossip's holds until it says alive)
        if self.liveness.heard(peer, self.reactor.seconds(), boot) and self.controllers:
            self._leader_lost(peer, "it restarted")

    def member_event(self, kind: str, node: str) -> None:
        """Gossip's word about ``node`` (``dead``, ``left``, ``alive``, ``join``, ...):
        a node dead or gone is known dead, one alive again no longer is."""
        if node == self.node_id:
            return
        if kind in ("dead", "left"):
            self.node_dead(node, float("inf"))
        elif kind in ("alive", "join") and node in self.dead:
            self.node_alive(node)

    def node_dead(self, node: str, until: float | None = None) -> None:
        """``node`` is known dead until ``until`` (default: the controller's hint,
        :data:`DEAD_HINT_SECONDS` from now; inf: until heard): this node's
        leaders send it nothing and stop waiting for it (they go idle once
        their other followers caught up)."""
        if node == self.node_id:
            return
        if until is None:
            until = self.reactor.seconds() + DEAD_HINT_SECONDS
        self._dead_until[node] = max(until, self._dead_until.get(node, until))
        if node not in self.dead:
            self.dead.add(node)
            log.info("replication: {node} is known dead; its followers here wait for its return", node=node)

    def node_alive(self, node: str) -> None:
        """``node`` is no longer known dead: wake the leaders here it follows
        (one pass over the replicas, on this event only), whose ticks catch it up."""
        self._dead_until.pop(node, None)
        if node not in self.dead:
            return
        self.dead.discard(node)
        woken = 0
        for key, r in self.replicas.items():
            core = r.core
            if core.is_leader and node in core.followers and not core.idle:
                self._due.add(key)
                woken += 1
        log.info(
            "replication: {node} is no longer known dead; waking the {n} partitions led here it follows",
            node=node,
            n=woken,
        )

    def node_refused(self, node: str, since: float) -> bool:
        """As the controller: a connection to ``node``'s peer port, made at
        ``since``, was refused -- no process listens there (killed, crashed;
        the fault watch probes a peer as soon as the peer channel's
        connection to it ends).  Unless something came from ``node`` after
        ``since``, it is silent now and its leaderships fail over at once,
        as after ``beat_timeout`` of silence (issue 23: a crashed node's
        detection without the 2 s beat timeout; a host or network failure
        still takes that).  True when they did."""
        if not self.controllers or node == self.node_id or node not in self._watched:
            return False
        if self.liveness.heard_since(node, since) or not self.liveness.mark_silent(node):
            return False
        self._leader_lost(node, "its peer port refuses connections")
        return True

    def _leader_lost(self, node: str, why: str) -> None:
        """As the controller: fail over every partition ``node`` leads (one
        pass over the cores, on this event only; those with a failover under
        way carry on as they are)."""
        lost = [
            key
            for key, c in self.controllers.items()
            if c.leader == node and c.fencing is None and c.committing is None
        ]
        silent = why != "it restarted"
        if silent:
            self.node_dead(node)  # (its replicas hear it on the Assigns that follow)
        self.timeline.mark(
            "found_silent" if silent else "found_restarted",
            self.reactor.seconds(),
            len(lost),
        )
        if lost:
            log.info(
                "replication: {why}, failing over the {n} partitions {node} leads",
                why=why,
                n=len(lost),
                node=node,
            )
        with self.held():  # (their fences: one frame per node)
            for key in lost:
                self.run_control(key, self.controllers[key].start_failover())

    def _core_set(self, key: tuple[str, int], core: FailoverCore) -> None:
        """A controller core was set: ticked until it is idle, its replicas watched."""
        if not self._due_control and len(self.controllers) == 1:
            self.liveness.reset(self.reactor.seconds())  # (again) the controller
        self._due_control.add(key)
        self._watched.update(core.replicas)

    def cores_at_work(self) -> int:
        """Controller cores ticked now (not idle: a failover or move under way,
        or a leader not yet confirmed) -- at most; some may have gone idle
        since their last tick."""
        return len(self._due_control)

    def replicas_due(self) -> AbstractSet[tuple[str, int]]:
        """The partitions whose replica is ticked now (a read-only view): every
        leader whose core is not idle -- a follower behind it -- is among them
        (woken by its core's output; some may have gone idle since their last
        tick), and every follower catching up except those between their words
        to their leader (:meth:`is_ticked`)."""
        return self._due

    def is_ticked(self, key: tuple[str, int]) -> bool:
        """Whether the replica of ``key`` is ticked now or at a later tick (a
        follower catching up, unticked until its next word to its leader)."""
        return key in self._due or key in self._parked

    def cores_due(self) -> AbstractSet[tuple[str, int]]:
        """The partitions whose controller core is ticked now (a read-only
        view): every core not idle is among them (some may have gone idle
        since their last tick).  The controller looks again at a partition
        whose core was at work once it is no longer here."""
        return self._due_control

    def cores_fencing(self) -> int:
        """Controller cores fencing whose choice is still to come (no majority
        answered yet): a batch of choices may wait for them.  One pass over
        the cores at work (:meth:`cores_at_work`), not over every partition."""
        n = 0
        for key in self._due_control:
            c = self.controllers.get(key)
            if c is not None and c.fencing is not None and c.committing is None:
                n += 1
        return n

    def wake_control(self, key: tuple[str, int]) -> None:
        """A controller core may have work for ticks (built, or its partition
        changed): tick it while it is not idle."""
        c = self.controllers.get(key)
        if c is not None and not c.idle:
            self._due_control.add(key)
            self._watched.update(c.replicas)

    def _frame(self, peer: str, payload: bytes) -> None:
        self.heard(peer)
        if self.on_heard is not None:
            self.on_heard(peer)
        try:
            env = msgspec.msgpack.decode(payload, type=Envelope)
        except msgspec.DecodeError:
            self.dropped += 1
            return
        self._deliver(peer, env)

    def _batch_frame(self, peer: str, payload: bytes) -> None:
        """A ``REPLICATION_BATCH`` frame: each message taken in order, as if
        it came alone; what they make this node send back is held
        (:meth:`held`) and leaves as one frame per node."""
        self.heard(peer)
        if self.on_heard is not None:
            self.on_heard(peer)
        try:
            payloads = msgspec.msgpack.decode(payload, type=list[bytes])
        except msgspec.DecodeError:
            self.dropped += 1
            return
        with self.held():
            for one in payloads:
                try:
                    env = msgspec.msgpack.decode(one, type=Envelope)
                except msgspec.DecodeError:
                    self.dropped += 1
                    continue
                self._deliver(peer, env)

    def _refuse(self, peer: str, key: tuple[str, int], why: str) -> None:
        self.refused += 1
        now = self.reactor.seconds()
        if now - self._refusals_logged.get(peer, float("-inf")) >= 30.0:
            if len(self._refusals_logged) > 1024:
                self._refusals_logged.clear()
            self._refusals_logged[peer] = now
            log.warn(
                "replication: refused a message about {topic}/{partition} from {peer}: {why}",
                topic=key[0],
                partition=key[1],
                peer=peer,
                why=why,
            )

    def _deliver(self, peer: str, env: Envelope) -> None:
        try:
            m = decode(env.message)
        except msgspec.DecodeError:
            self.dropped += 1
            return
        if isinstance(m, NodeBeat):
            self.heard(peer, m.boot)  # about the node, no partition's
            return
        key = (env.topic, env.partition)
        self.flush(key)  # the partition's fence or leadership first: its messages stay in order
        if peer != self.node_id:
            if isinstance(m, Append):
                why = append_flaw(m, [t[0] for t in env.records])
                if why is not None:
                    self._refuse(peer, key, why)
                    return
            elif env.records:
                self._refuse(peer, key, "records on a message that carries none")
                return
            if not self.accept(peer, key, m):
                self._refuse(peer, key, "not a replica of the partition (nor its controller)")
                return
        if isinstance(m, Fence | Assign | Handoff):
            self._last_controller = peer  # (accepted: from a Raft voter, in a cluster)
            if isinstance(m, Fence):
                self.timeline.mark("fence_heard", self.reactor.seconds())
        if isinstance(m, Assign | Fence):
            for n in m.down:
                self.node_dead(n)
        c = self.controllers.get(key)
        if c is not None and isinstance(m, FenceResp | LeaderBeat | HandoffReady | Resign):
            confirmed = c.leader_confirmed
            self.run_control(key, c.receive(peer, m))
            if isinstance(m, FenceResp):
                self.timeline.mark("fence_answered", self.reactor.seconds())
            elif c.leader_confirmed and not confirmed:
                self.timeline.mark("leader_confirmed", self.reactor.seconds())
            return
        r = self.replicas.get(key)
        if r is None:
            self.dropped += 1
            return
        if isinstance(m, Fence):
            # Taken with the turn's other fences (a dead node's thousands of
            # partitions are fenced at once): one write for all their promises.
            self._fences.append((key, r, peer, m))
            self._fence_keys.add(key)
            if self._fence_call is None:
                # The controller's own fences wait one reactor turn more: the
                # frame of the same fences to the other replicas' nodes, queued
                # on their connections now, is written in the reactor's I/O
                # before them, not after this node took its own thousands
                # (issue 23, fail39: timers run before the reactor writes).
                later = self._fences_after_io if peer == self.node_id else self._take_fences
                self._fence_call = self.reactor.callLater(0, later)
            return
        if isinstance(m, Assign) and m.leader == self.node_id:
            self.lead(key, r, peer, m)
            return
        if isinstance(m, AppendResp):
            self._answers_heard.add(peer)
        if isinstance(m, Append) and len(env.records) == 1 and env.records[0][7] and not m.reset:
            # A new leader's first append (its control record): taken with
            # the turn's others in one write, answered after it (issue 23).
            self._firsts.append((key, r, peer, m, [unpack_record(env.records[0], env.partition)]))
            self._first_keys.add(key)
            if self._first_call is None:
                self._first_call = self.reactor.callLater(0, self._take_first_appends)
            return
        was_leader = r.core.is_leader
        r.receive(peer, m, [unpack_record(t, env.partition) for t in env.records])
        if isinstance(m, Assign):
            self.assigned(key, r, was_leader)

    def flush(self, key: tuple[str, int]) -> None:
        """Take the batched fences and leaderships now if one is the
        partition's: anything else about it comes after them."""
        if key in self._fence_keys:
            self._take_fences()
        if key in self._lead_keys:
            self._take_leaderships()
        if key in self._first_keys:
            self._take_first_appends()

    def lead(self, key: tuple[str, int], r: PartitionReplication, src: str, m: Assign) -> None:
        """An ``Assign`` naming this node the partition's leader: taken with the
        turn's others at its end (:func:`take_leaderships`: a failover moves
        thousands of leaderships here at once, one write for all their
        promises and control records, issue 23)."""
        if key in self._fence_keys or key in self._first_keys:
            self.flush(key)  # (they came first)
        self._leads.append((key, r, src, m, r.core.is_leader))
        self._lead_keys.add(key)
        if self._lead_call is None:
            self._lead_call = self.reactor.callLater(0, self._take_leaderships)

    def _take_leaderships(self) -> None:
        """Take the leaderships heard this turn together (:func:`take_leaderships`)."""
        call, self._lead_call = self._lead_call, None
        if call is not None and call.active():
            call.cancel()
        leads, self._leads = self._leads, []
        self._lead_keys.clear()
        live = [(key, r, was) for key, r, _src, _m, was in leads if self.replicas.get(key) is r]
        items = [(r, src, m) for key, r, src, m, _was in leads if self.replicas.get(key) is r]
        if items:
            self.lead_batches += 1
            self.leads_batched += take_leaderships(items, self.held)
        for key, r, was in live:
            self.assigned(key, r, was)

    def _take_first_appends(self) -> None:
        """Take the first appends heard this turn together (:func:`take_first_appends`)."""
        call, self._first_call = self._first_call, None
        if call is not None and call.active():
            call.cancel()
        firsts, self._firsts = self._firsts, []
        self._first_keys.clear()
        items = [(r, peer, m, recs) for key, r, peer, m, recs in firsts if self.replicas.get(key) is r]
        if items:
            self.first_batches += 1
            self.firsts_batched += take_first_appends(items, self.held)

    def _fences_after_io(self) -> None:
        """The first of the two turns the controller's own fences wait
        (:meth:`_deliver`): a call made in a turn's timers runs in the next
        turn's, after the reactor's I/O between them."""
        self._fence_call = self.reactor.callLater(0, self._take_fences)

    def _take_fences(self) -> None:
        """Take the fences heard this turn together (:func:`take_fences`):
        their promises are durable in one write, then each is answered."""
        call, self._fence_call = self._fence_call, None
        if call is not None and call.active():
            call.cancel()
        fences, self._fences = self._fences, []
        self._fence_keys.clear()
        items = [(r, peer, m) for key, r, peer, m in fences if self.replicas.get(key) is r]
        if items:
            self.fence_batches += 1
            self.fences_batched += take_fences(items, self.held)

    def run_control(self, key: tuple[str, int], out: ControlOutput) -> None:
        """Carry out what a partition's failover core decided: send its messages,
        commit its choice (then tell the core how that went)."""
        send = self.sender(key)
        core = self.controllers.get(key)
        for dst, m in out.messages:
            if self.liveness.is_silent(dst):
                continue  # a silent node hears nothing (a restart of it reads the metadata)
            if isinstance(m, Fence):
                self.timeline.mark("fence_sent", self.reactor.seconds())
            if isinstance(m, Assign | Fence) and not m.down and self.dead:
                reps = m.replicas if isinstance(m, Assign) else core.replicas if core is not None else ()
                down = tuple(r for r in reps if r in self.dead)
                if down:
                    m = msgspec.structs.replace(m, down=down)
            send(dst, Envelope(key[0], key[1], encode(m)))
        self.wake_control(key)
        if out.commit is not None:
            c = self.controllers[key]
            self.timeline.mark("choice", self.reactor.seconds())

            def committed(_: object) -> None:
                now = self.reactor.seconds()
                self.timeline.mark("choice_committed", now)
                was = c.leader_confirmed
                out = c.committed(True)
                if c.leader_confirmed and not was:
                    self.timeline.mark("leader_confirmed", now)  # (its word came before the commit)
                self.run_control(key, out)

            def failed(f: Failure) -> None:
                code = getattr(f.value, "code", None)
                expected = EXPECTED_COMMIT_FAILURES.get(str(code))
                if expected is None:
                    log.failure(
                        "committing the leader of {topic}/{partition} failed",
                        f,
                        topic=key[0],
                        partition=key[1],
                    )
                else:
                    more = self._unlogged(str(code))
                    if more is not None:
                        level, fmt = expected
                        log.emit(level, fmt, topic=key[0], partition=key[1], code=code, more=more)
                # A timeout may still land: the core keeps its choice a while.
                self.run_control(key, c.committed(False, may_land=code == "proposal_timeout"))

            self.commit(key[0], key[1], out.commit).addCallbacks(committed, failed)

    def _unlogged(self, code: str) -> int | None:
        """None when a commit failure of ``code`` was logged less than a second
        ago (it is counted), else how many were not logged since the last."""
        now = self.reactor.seconds()
        last, n = self._commit_logs.get(code, (float("-inf"), 0))
        if now - last < 1.0:
            self._commit_logs[code] = (last, n + 1)
            return None
        self._commit_logs[code] = (now, 0)
        return n


class _Cores(dict[tuple[str, int], FailoverCore]):
    """The controller cores by partition: a core set here is ticked until idle."""

    def __init__(self, on_set: Callable[[tuple[str, int], FailoverCore], None]) -> None:
        super().__init__()
        self._on_set = on_set

    def __setitem__(self, key: tuple[str, int], core: FailoverCore) -> None:
        super().__setitem__(key, core)
        self._on_set(key, core)
