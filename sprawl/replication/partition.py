"""One replicated partition on a node: the adapter between its pure replica
core, the broker (records in memory and LMDB) and the node's replication
service (:mod:`sprawl.replication.service`), which routes its messages.

Every core output is handled in order on one chain per partition: its
writes are made durable through the broker (follower appends, truncations,
the leader's own records and control records), then its messages are sent
-- an ``Append`` with the records it covers, read from the hot tail or LMDB.
The chain is pipelined (issue 16): an output's writes are handed to the
store as soon as it is queued, in order (LMDB commits them in that order),
without waiting for the earlier outputs' writes to be durable; what waits is
its messages, sent in output order once its own writes and every earlier
one's are durable.  The leader's own new records are the exception Raft
allows: their ``Append`` leaves while they are written here (the core counts
them only once stored).  After the leader's own write the core hears the new
stored end; whenever the core's high watermark moves, the partition's
visible high watermark follows (never past what this node has durable) and
publishes waiting for ``acks=quorum`` are answered -- at the core's high
watermark: once any majority holds them on disk, the leader's own copy
included or not (issue 16, quorum3; see :meth:`_advance_hw`).

An output whose messages need no write (none but the high watermark's, no
records or reset in them) is sent at once when nothing is queued or unsent
before it (the leader's own records on their way to its disk do not count:
their messages are out): the high watermark pushed to the followers the
moment a majority holds the records leaves then instead of after that fsync,
and before the publishes it covers are answered (the answers' work does not
delay the followers' subscribers).

A write whose only news is a higher high watermark is not a transaction of
its own (issue 16): the watermark is stored with the replica state of the
next write -- every write carries it -- or, when no write follows within
:data:`HW_SAVE_SECONDS`, on its own then.  It promises nothing (a restart
with an older one only catches up again from its leader), so it costs no
fsync on the publish path: at one publish at a time that was every node's
second commit per message, and it held the partition's chain (the next
append's write and send) behind its own fsync.

A follower whose log ends below the leader's log start is reset: its local
log is dropped and restarts empty there (:meth:`Broker.reset_partition`,
with the replica state, in one transaction).  The core's log start follows
this node's retention and S3 tier: a leader sends only what it can read
from memory and LMDB, so it resets followers to the first offset it holds
in LMDB.  Segments that moved to S3 are not sent: they are the partition's
shared remote segments, which the reset keeps at the front of the
follower's log and which it reads from the object store itself (the reset
message carries where the partition starts, see ``Append.log_start``).

A new leader's control record is a :class:`Record` with ``control`` set:
it takes an offset, and every consumer path skips it (fetch, SSE and
WebSocket cursors move past it; a group settles it unseen).

The replica state it stores with its writes: :mod:`sprawl.replication.replica_state`.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from sprawl.errors import Overloaded, Unavailable
from sprawl.interfaces import Clock, ReplicaStore
from sprawl.log.damage import DamagedRange
from sprawl.log.record import Record
from sprawl.peer.frames import BATCH_BYTES
from sprawl.replication.envelope import Envelope, pack_record, record_bytes
from sprawl.replication.messages import (
    Append,
    AppendResp,
    Assign,
    Fence,
    encode,
    slice_append,
)
from sprawl.replication.replica import LEADER, NotLeader, Output, Replica, Write
from sprawl.replication.replica_state import dump_state, load_state
from sprawl.storage import keys, timeline
from sprawl.turn_end import TurnEnd, turn_end

if TYPE_CHECKING:
    from sprawl.topics import Topic

#: The log lines keep the namespace they had before the module was split out.
log = Logger(namespace="sprawl.replication.service")

#: Seconds a higher high watermark waits for a write to carry it before it is
#: written on its own (see the module docstring).
HW_SAVE_SECONDS = 0.1

#: The leader epoch of a partition's first placement (the metadata's
#: ``put_topic`` places new partitions -- a new topic's, or those added to one
#: -- at epoch 1; every later placement, ``set_partition(s)``, has a later
#: epoch): a follower with an empty log assigned it derives the leader's
#: control record at offset 0 (``Replica.first_epoch``).
FIRST_EPOCH = 1

#: Seconds a publish waits for a majority of the replicas before it is
#: answered 503 ``quorum_timeout``: past a failover's few seconds, under the
#: clients' own 10 s timeout.
QUORUM_TIMEOUT = 8.0


class PartitionReplication:
    """One replicated partition on this node (see the module docstring)."""

    def __init__(
        self,
        node_id: str,
        controller: str,
        broker: ReplicaStore,
        topic: Topic,
        partition: int,
        send: Callable[[str, Envelope], None],
        *,
        max_batch: int = 512,
        max_waiting: int = 10_000,
        quorum_timeout: float = QUORUM_TIMEOUT,
        committed_if_new: bool = False,
        batch_bytes: int = BATCH_BYTES,
        on_records: Callable[[list[Record]], None] | None = None,
    ) -> None:
        self.broker = broker
        #: Bytes of records one replication frame carries at most (but always one record).
        self.batch_bytes = batch_bytes
        #: Publishes waiting for a majority at most (then 429): a leader cut
        #: off from its followers must not queue publishes without bound.
        self.max_waiting = max_waiting
        #: Seconds a publish waits for a majority before it is answered 503
        #: ``quorum_timeout`` (see :meth:`_quorum_due`).
        self.quorum_timeout = quorum_timeout
        #: The clock of that timeout and of the waits' start (the broker's: the
        #: reactor, or a test's ``task.Clock``).
        self.quorum_clock: Clock = broker.clock
        self._quorum_timer: Any = None
        #: Publishes answered ``quorum_timeout`` (tests and the log count them).
        self.quorum_timeouts = 0
        self.topic = topic
        self.partition = partition
        self.send = send
        #: Called with the partition's key whenever its core has work for
        #: ticks (it is not idle): the service ticks only those (issue 23).
        self.wake: Callable[[tuple[str, int]], None] | None = None
        #: Called with the partition's key on every output of its core (the
        #: data plane's count of partitions led and under-replicated follows it).
        self.changed: Callable[[tuple[str, int]], None] | None = None
        #: Called with the partition's key when its output chain failed.
        self.on_failed: Callable[[tuple[str, int]], None] | None = None
        lg = topic.logs[partition]
        lg.replicated = True
        self.log = lg
        self.state_key = keys.replica_state_key(topic.config.uid, partition)
        cache, fenced, led, hw = load_state(
            broker.store.get("meta", self.state_key), lg.log_start, lg.next_offset, committed_if_new
        )
        self.core = Replica(
            node_id,
            controller,
            cache=cache,
            fenced_epoch=fenced,
            led_epoch=led,
            hw=hw,
            max_batch=max_batch,
            first_epoch=FIRST_EPOCH,
        )
        # Recovery made everything stored visible; only what is committed is.
        lg.high_watermark = min(lg.high_watermark, hw)
        #: The epoch runs, log start and base epoch last stored with the log
        #: they describe (see :meth:`_state_ops`).
        self._stored_cache: tuple[list[tuple[int, int]], int, int] = (
            list(cache.runs),
            cache.log_start,
            cache.base_epoch,
        )
        #: Appends this leader could not send because it no longer holds
        #: their records (retention or the S3 tier raced the send).
        self.unreadable = 0
        self._unreadable_logged = float("-inf")
        self._sync_log_start()
        self._queued: list[_Queued] = []
        #: Queued outputs that drop records (truncations, resets) not yet made.
        self._pending_cuts = 0
        #: Whether queued outputs are being issued now (:meth:`_drain`).
        self._running = False
        #: Issued outputs whose messages wait to be sent, in order (see :meth:`_drain`).
        self._unsent: deque[_Step] = deque()
        self._sending = False
        #: Whether :meth:`_after_commit` is due once the commit firing now has fired
        #: every write's callbacks, and whether the leader's own records were
        #: stored meanwhile (the core is told once for them all).
        self._after_due = False
        self._own_due = False
        #: Whether the publishes of this turn are yet to be sent (:meth:`publish`),
        #: and the reactor's end-of-turn queue they are sent from (on first use).
        self._appends_due = False
        self._turn_end: TurnEnd | None = None
        #: The core's high watermark as of the last issued batch (shown, capped at
        #: what is durable here, whenever a write of this partition becomes durable).
        self._issued_hw = 0
        #: Publishes (and duplicates' first copies) waiting for a majority:
        #: (last offset, the epoch this replica led when it took them, Deferred,
        #: what it fires with: a publish's offsets or its caller's value, and
        #: when it was taken: for the ``quorum`` hop -- timed as it is answered,
        #: not by a callback link: issue 16, qlead42 -- and its timeout).
        self._waiters: list[tuple[int, int, defer.Deferred[Any], Any, float | None]] = []
        #: The lowest offset in :attr:`_waiters` (:data:`_NONE_WAITING` when none):
        #: while leading, a high watermark below it answers nothing, and
        #: :meth:`_advance_hw` -- called several times a message -- does not walk them.
        self._waiters_low = _NONE_WAITING
        self.failed: Failure | None = None
        #: Called with the records a follower's write stored (group checkpoints ride in them).
        self.on_records = on_records
        #: Reset point -> the partition's log start the leader sent with it.
        self._floors: dict[int, int] = {}
        #: Whether the core's high watermark moved since the replica state was last written.
        self._hw_unsaved = False
        self._hw_timer: Any = None
        #: Replica-state writes made for the high watermark alone (tests count them).
        self.hw_saves = 0
        #: Times hops (``quorum``: a leader's append until a majority holds it;
        #: ``visible``: a follower's receipt of records until its high watermark passes them).
        self.on_hop: Callable[[str, float], None] | None = None
        #: As a follower: (end, when received) of the appends not yet visible.
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=1024)
        #: The opt-in timeline (:mod:`sprawl.storage.timeline`): the ends last marked
        #: as answered (``f_ack``) and as sent in a high watermark per follower.
        self._marked_ack = 0
        self._marked_hw: dict[str, int] = {}
        #: Waits for a follower's acknowledged end (:meth:`when_held`): (follower,
        #: end, when it gives up, the follower's entry it waits on, Deferred), by deadline.
        self._held_waits: deque[tuple[str, int, float, Any, defer.Deferred[bool]]] = deque()
        self._held_timer: Any = None
        self._held_timer_due = 0.0
        #: A batched fence's answer, sent once the batch is durable (:meth:`fence_ops`).
        self._fence_answers: list[tuple[str, Any]] = []
        #: A batched output (:meth:`lead_ops`, :meth:`follow_ops`) waiting for
        #: its batch's write: its messages, the end of the records it stores,
        #: whether it was the leader's; None when no batch holds this partition.
        self._batched: tuple[list[tuple[str, Any]], int, bool] | None = None

    @property
    def holds_sends(self) -> bool:
        """Whether a batched output waits for its batch's write: its messages
        (a new leader's first appends) are not sent yet, and a tick does
        nothing meanwhile (see :meth:`tick`)."""
        return self._batched is not None

    @property
    def settled(self) -> bool:
        """Whether every output of the core so far is written and sent: what
        this node stored of the partition (its log and the replica state
        written with it) is what the core holds, so a replica built again
        from the store starts where this one stands.  Not while outputs wait:
        the log in memory runs ahead of the replica state on disk."""
        return not (self._queued or self._running or self._unsent or self._pending_cuts)

    # -- inputs ----------------------------------------------------------------------

    def publish(self, records: list[Record], value: Any = None) -> defer.Deferred[Any]:
        """Append ``records`` as leader; fires with their offsets (or ``value``,
        when given: the caller's answer, with no callback link to make it) once
        a majority of the replicas stored them (acks=quorum).  Raises
        :class:`NotLeader` (with the leader hint) when this node does not lead."""
        if len(self._waiters) >= self.max_waiting:
            raise Overloaded("too many publishes waiting for replication; retry shortly", retry_after=1)
        # The records leave for the followers at the end of the reactor turn, with
        # every other publish the turn took as one append per follower (issue 16,
        # quorum36): the frames would leave at the next poll either way.  Queued
        # with the turn's other end-of-turn calls, behind one timed call (turn44).
        first, out = self.core.append(len(records), send=False)
        if not self._appends_due:
            self._appends_due = True
            te = self._turn_end
            if te is None:
                te = self._turn_end = turn_end(self.broker.store.reactor)
            te.soon(self._send_appends)
        now = self.broker.now_ms()
        for i, r in enumerate(records):
            r.offset = first + i
            r.partition = self.partition
            r.timestamp = now
            if r.id is None:
                r.id = self.broker.new_message_id()
        last = first + len(records) - 1
        if timeline.TIMELINE is not None:
            timeline.TIMELINE.mark("pub", first, last + 1)
        d: defer.Deferred[Any] = defer.Deferred()
        # (the waiter fires with the offsets, or the caller's value, and times
        # the quorum hop itself: no callback link for either)
        since = self.quorum_clock.seconds()
        self._waiters.append(
            (last, self.core.epoch, d, list(range(first, last + 1)) if value is None else value, since)
        )
        if last < self._waiters_low:
            self._waiters_low = last
        if self._quorum_timer is None:
            self._quorum_timer = self.quorum_clock.callLater(self.quorum_timeout, self._quorum_due)
        tl = timeline.TIMELINE
        if tl is not None and tl.sampled(first, last + 1):
            d.addCallback(_mark_acked, tl, first, last + 1)
        self._handle(out, records)
        return d

    def _send_appends(self) -> None:
        """The turn's publishes leave for the followers (see :meth:`publish`)."""
        self._appends_due = False
        if self.failed is None:
            self._handle(self.core.send_appends(), [])

    def wait_committed(self, offset: int) -> defer.Deferred[None]:
        """Fires once ``offset`` is below the high watermark (a duplicate's
        first copy, answered only once committed); fails with
        :class:`NotLeader` if this replica stops leading first."""
        core = self.core
        if offset < self.log.high_watermark or (
            core.role == LEADER and self._pending_cuts == 0 and offset < core.hw
        ):
            return defer.succeed(None)
        if self.core.role != LEADER:
            return defer.fail(NotLeader(self.core.leader, self.core.epoch))
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((offset, self.core.epoch, d, None, self.quorum_clock.seconds()))
        if offset < self._waiters_low:
            self._waiters_low = offset
        if self._quorum_timer is None:
            self._quorum_timer = self.quorum_clock.callLater(self.quorum_timeout, self._quorum_due)
        return d

    def _quorum_due(self) -> None:
        """Answer 503 ``quorum_timeout`` the publishes that waited
        :attr:`quorum_timeout` seconds for a majority: a leader cut off from
        its followers (a network partition: the majority failed over without
        it, and it cannot hear the new epoch) commits nothing, and its
        clients must hear so within a bound -- before, they waited until
        their own timeout, or until the partition healed.  The records may
        still be committed (the followers may only be slow): the answer says
        to publish again with the same ids, which answers a committed copy's
        offset.  One timer per partition while publishes wait, re-armed for
        the oldest one: no timer per publish."""
        self._quorum_timer = None
        if not self._waiters:
            return
        now = self.quorum_clock.seconds()
        limit = now - self.quorum_timeout
        expired = [w for w in self._waiters if w[4] is not None and w[4] <= limit]
        if expired:
            gone = {id(w[2]) for w in expired}
            self._waiters = [w for w in self._waiters if id(w[2]) not in gone]
            self._waiters_low = min((w[0] for w in self._waiters), default=_NONE_WAITING)
            self.quorum_timeouts += len(expired)
            more = _QUORUM_LOG.unlogged(now)
            if more is not None:
                # (one line a second for the node: a node cut off leads thousands)
                log.warn(
                    "replication of {topic}/{partition}: {n} publishes not stored on a majority of the "
                    "replicas {replicas} within {seconds} s, answered quorum_timeout (end {end}, high "
                    "watermark {hw}; {more} more partitions timed out since the last line)",
                    topic=self.topic.name,
                    partition=self.partition,
                    n=len(expired),
                    replicas=list(self.core.replicas),
                    seconds=self.quorum_timeout,
                    end=self.core.cache.end,
                    hw=self.core.hw,
                    more=more,
                )
            for w in expired:
                if not w[2].called:
                    w[2].errback(
                        Unavailable(
                            f"not stored on a majority of the replicas of {self.topic.name}/{self.partition} "
                            f"within {self.quorum_timeout:g} s (its leader cannot reach them); it may still be "
                            "committed: publish again with the same ids",
                            code="quorum_timeout",
                        )
                    )
        if self._waiters and self._quorum_timer is None:
            oldest = min((w[4] for w in self._waiters if w[4] is not None), default=now)
            self._quorum_timer = self.quorum_clock.callLater(
                max(0.0, oldest + self.quorum_timeout - now), self._quorum_due
            )

    def when_held(self, follower: str, end: int, seconds: float) -> defer.Deferred[bool]:
        """As leader: fires True once ``follower`` has acknowledged holding this
        replica's log up to ``end`` (its acknowledged end passes it), False after
        ``seconds`` (or at once) when it has not, or this replica stops leading
        meanwhile, or ``follower`` is not one of its live followers.  Checked as
        the followers' answers come in; one timer for all the waits (issue 16,
        qlead42: a quiet forward committed before its entry node's copy was
        durable is left unanswered once that copy is -- the entry shows it)."""
        core = self.core
        f = core.followers.get(follower) if core.role == LEADER and self.failed is None else None
        if f is None or follower in core.dead:
            return defer.succeed(False)
        if f.match >= end:
            return defer.succeed(True)
        d: defer.Deferred[bool] = defer.Deferred()
        due = self.broker.clock.seconds() + seconds
        self._held_waits.append((follower, end, due, f, d))
        timer = self._held_timer
        if timer is None or (timer.active() and due < self._held_timer_due):
            if timer is not None:
                timer.cancel()  # (a shorter wait than the one the timer is for)
            self._held_timer = self.broker.store.reactor.callLater(seconds, self._held_due)
            self._held_timer_due = due
        return d

    def _check_held(self, expire: bool = False) -> None:
        """Fire the waits of :meth:`when_held` that are settled (``expire``: and those due)."""
        core = self.core
        leading = core.role == LEADER and self.failed is None
        now = self.broker.clock.seconds() if expire else 0.0
        keep: deque[tuple[str, int, float, Any, defer.Deferred[bool]]] = deque()
        fire: list[tuple[defer.Deferred[bool], bool]] = []
        for w in self._held_waits:
            fid, end, due, f, d = w
            now_f = core.followers.get(fid) if leading else None
            if now_f is not None and now_f is f and fid not in core.dead:
                if now_f.match >= end:
                    fire.append((d, True))
                    continue
                if not expire or now < due:
                    keep.append(w)
                    continue
            fire.append((d, False))
        self._held_waits = keep  # (before any callback runs: one may wait again)
        for d, held in fire:
            d.callback(held)

    def _held_due(self) -> None:
        self._held_timer = None
        self._check_held(expire=True)
        if self._held_waits:
            due = min(w[2] for w in self._held_waits)
            self._held_timer = self.broker.store.reactor.callLater(
                max(0.0, due - self.broker.clock.seconds()), self._held_due
            )
            self._held_timer_due = due

    def receive(self, src: str, message: Any, records: list[Record]) -> None:
        """A replication message from a peer (the leader, a follower or the controller)."""
        self._sync_log_start()
        if isinstance(message, Append) and message.reset:
            # Where the partition starts, for the reset this may cause (the
            # shared remote segments below the reset point).
            self._floors[message.start] = message.log_start
            while len(self._floors) > 16:
                del self._floors[next(iter(self._floors))]
        if records and self.on_hop is not None and isinstance(message, Append):
            self._arrivals.append((records[-1].offset + 1, self.broker.clock.seconds()))
        if records and timeline.TIMELINE is not None:
            timeline.TIMELINE.mark("f_recv", records[0].offset, records[-1].offset + 1)
        self._handle(self.core.receive(src, message), records)
        if self._held_waits:
            self._check_held()

    def fence_ops(self, src: str, message: Fence) -> list[tuple[Any, ...]] | None:
        """Take the controller's fence as one of a batch (:func:`take_fences`):
        the replica state ops that make its promise durable, to be written
        with every other partition's of the batch in one write -- after which
        :meth:`fence_written` sends the answer.  Meanwhile the chain counts as
        running, so any later output waits behind the promise, as on the
        chain.  None when the fence was taken the usual way instead (the
        chain is at work, the topic is gone, or the fence needs more than a
        promise)."""
        if self._chain_busy():
            self.receive(src, message, [])
            return None
        self._sync_log_start()
        out = self.core.receive(src, message)
        if not out.writes or not all(_promise_only(w) for w in out.writes):
            self._handle(out, [])
            return None
        self._note_output(out)
        self._running = True
        self._fence_answers = out.messages
        return self._state_ops()

    def fence_written(self, failure: Failure | None = None) -> None:
        """The batch holding this partition's fence is durable (or failed):
        send the answer, then run whatever queued behind it."""
        answers, self._fence_answers = self._fence_answers, []
        self._running = False
        if failure is not None:
            self._crashed(failure)
            return
        for dst, m in answers:
            self.send(dst, Envelope(self.topic.name, self.partition, encode(m)))
        if self._queued and self.failed is None:
            self._drain()

    def _chain_busy(self) -> bool:
        """Whether the output chain is at work (or stopped): an input is then taken on it, in order."""
        return bool(
            self.failed is not None
            or self._running
            or self._queued
            or self._unsent
            or self._sending
            or self._pending_cuts
            or self.topic.deleted
        )

    def lead_ops(self, src: str, message: Assign) -> list[tuple[Any, ...]] | None:
        """Take an ``Assign`` that makes this replica leader as one of a batch
        (:func:`take_leaderships`, issue 23): the core becomes leader, its
        control record joins the log in memory, and the ops that store the
        record and the epoch's promise are returned, to be written with every
        other new leader's of the batch in one write -- after which
        :meth:`batch_written` sends its first appends.  Meanwhile the chain
        counts as running (later outputs wait behind the promise, as on the
        chain) and ticks do not count the appends as unanswered (they have
        not left).  None when the Assign was taken the usual way instead (the
        chain is at work, the topic is gone, or it did not make this replica
        leader with a control record)."""
        if self._chain_busy():
            self.receive(src, message, [])
            return None
        self._sync_log_start()
        out = self.core.receive(src, message)
        if not _becomes_leader(out):
            self._handle(out, [])
            return None
        w = out.writes[1]
        rec = Record(w.start, self.partition, self.broker.now_ms(), None, None, None, b"", True, control=True)
        return self._stage(out, [rec], leader=True)

    def follow_ops(self, src: str, message: Append, records: list[Record]) -> list[tuple[Any, ...]] | None:
        """Take a new leader's first append (its control record) as one of a
        batch (:func:`take_first_appends`, issue 23): as :meth:`lead_ops`,
        the record joins the log in memory and the ops that store it with the
        replica state are returned, written with the batch's others in one
        write, after which :meth:`batch_written` answers.  None when it was
        taken the usual way (the chain at work, or an output that is not one
        plain write of the records)."""
        if self._chain_busy():
            self.receive(src, message, records)
            return None
        self._sync_log_start()
        out = self.core.receive(src, message)
        if not _plain_follow(out) or not any(w.count for w in out.writes):
            # (nothing to write but the high watermark -- the record was
            # derived, create41: the chain answers at once, the watermark lazily)
            self._handle(out, records)
            return None
        recs: list[Record] = []
        for w in out.writes:
            if w.count:
                recs = records[w.skip : w.skip + w.count]
                if len(recs) != w.count or recs[0].offset != w.start:
                    self._handle(out, records)  # (the chain raises: a bug, never an input)
                    return None
        ops = self._stage(out, recs, leader=False)
        if ops is not None and recs and self.on_records is not None:
            self.on_records(recs)
        return ops

    def _stage(self, out: Output, recs: list[Record], leader: bool) -> list[tuple[Any, ...]] | None:
        """A batched output's writes made in memory now (``recs`` joining the
        log); the ops that make them durable (records, then the replica state)."""
        b = self.broker
        try:
            b.check_writable()
            ops = b.stage_replicated(self.topic, self.partition, recs) if recs else []
        except Exception:
            self._crashed(Failure())
            return None
        ops.extend(self._state_ops())
        self._note_output(out)
        self._issued_hw = self.core.hw
        self._running = True
        self._batched = (out.messages, recs[-1].offset + 1 if recs else 0, leader)
        return ops

    def batch_written(self, failure: Failure | None = None) -> None:
        """The batch holding this partition's output (:meth:`lead_ops`,
        :meth:`follow_ops`) is durable (or failed): its messages leave, then
        whatever queued behind them."""
        if self._batched is None:
            return
        (messages, end, leader), self._batched = self._batched, None
        self._running = False
        if failure is not None:
            self._crashed(failure)
            return
        if end and not self.topic.deleted:
            self.broker.replicated_stored(self.topic, self.partition, end)
        for i, (dst, m) in enumerate(messages):
            env = self._envelope_now(dst, m)
            if env is None:
                # Records not in the hot tail (cannot be, right after they
                # joined it; but never skipped): the chain sends the rest, in order.
                self._queued.insert(
                    0, _Queued(Output(messages=messages[i:]), [], self.core.hw, leader, False)
                )
                break
            self.send(dst, env)
        if self._queued and self.failed is None:
            self._drain()
        if self.failed is None:
            if leader:
                self._handle(self.core.stored(self.log.stored_end), [])
            self._advance_hw(self._issued_hw)

    def _envelope_now(self, dst: str, m: Any) -> Envelope | None:
        """``m`` as one frame now, its records read from the hot tail; None
        when it carries a reset or records not all there."""
        if timeline.TIMELINE is not None:
            self._mark_sent(dst, m)
        if not isinstance(m, Append):
            return Envelope(self.topic.name, self.partition, encode(m))
        if m.reset:
            return None
        if not m.count:
            return Envelope(self.topic.name, self.partition, encode(m))
        lg = self.log
        hs = lg.hot_start
        if m.start < hs or m.start + m.count > lg.next_offset or m.count > 16:
            return None
        recs = [lg.hot[i] for i in range(m.start - hs, m.start + m.count - hs)]
        return Envelope(self.topic.name, self.partition, encode(m), [pack_record(r) for r in recs])

    def tick(self) -> int:
        """Heartbeats and retransmission (leader), beats to the controller; a
        follower not caught up counts towards its next word to its leader
        (an empty output is not queued: a whole cluster restarting ticks
        thousands of such followers).  Returns the messages the tick made."""
        if self._batched is not None:
            return 0  # a new leader whose first appends wait for the batch's write: nothing is in flight
        self._sync_log_start()
        out = self.core.tick()
        if out.writes or out.messages:
            self._handle(out, [])
        return len(out.messages)

    def servable_start(self) -> int:
        """The first offset this node can send to a follower: its first local
        record -- past the segments in the object store (the catch-up read
        serves only LMDB and memory; a follower lacking them is reset past
        them and reads them from the object store itself)."""
        lg = self.log
        start = lg.log_start
        for seg in lg.segments:
            if seg.remote is None:
                return max(start, seg.base)
            start = max(start, seg.last + 1)
        return max(start, lg.next_offset) if lg.follows_remote else start

    def _sync_log_start(self) -> None:
        """Retention (or the S3 tier) moved the start of what this node can
        send: the core's log starts there too, so a follower that lacks
        records below it is reset to it instead of waiting for records this
        node cannot read."""
        start = self.servable_start()
        if start > self.core.cache.log_start:
            self.core.cache.advance_start(start)

    # -- the output chain -----------------------------------------------------------

    def _handle(self, out: Output, records: list[Record]) -> None:
        """Queue one core output, with what the core was when it made it: its
        role (which decides how the write finds its records and whether its
        messages may leave before the write is durable) and its high
        watermark (the partition shows it once the output's writes are made)."""
        if self._batched is not None and not out.writes and not self._queued and self.failed is None:
            # Messages alone behind a batched output (the controller's Assign
            # repeated to a new leader whose batch is not written yet: its
            # answer): sent with the batch's, after them -- not a chain run.
            self._note_output(out)
            self._batched[0].extend(out.messages)
            return
        now = bool(
            self.failed is None
            and not self._queued
            and not self._running
            and not self._unsent
            and self._pending_cuts == 0
            and (out.writes or out.messages)
            and _needs_nothing(out)
        )
        # With publishes waiting, the watermark is shown (and they are
        # answered) only once the messages are out: see below.
        later = now and bool(self._waiters)
        cuts = self._note_output(out, show=not later)
        if not out.writes and not out.messages:
            return
        if now:
            # Messages that need no write and nothing queued or unsent before
            # them leave now, as the chain would send them: while the chain is
            # idle (a dead node's failover gives each of thousands of
            # partitions several such outputs: a chain run each was most of
            # applying it, issue 23), or while only the leader's own records
            # are on their way to its disk, their messages out already -- the
            # high watermark pushed to the followers the moment a majority
            # holds the records leaves then, not after that fsync (issue 16:
            # the followers' subscribers waited for it).
            if out.writes:
                self._save_hw_later()
            for dst, m in out.messages:
                if timeline.TIMELINE is not None:
                    self._mark_sent(dst, m)
                self.send(dst, Envelope(self.topic.name, self.partition, encode(m)))
            if later:
                # Shown (and the publishes it covers answered) only once the
                # messages are out: the high watermark's push to the followers
                # no longer waits for the answers' work (issue 16, quorum3).
                # (Only then: with nothing to answer the order is as it was --
                # a failover's apply groups its commits as before.)
                self._advance_hw(self.core.hw)
            return
        self._queued.append(_Queued(out, records, self.core.hw, self.core.role == LEADER, cuts))
        if not self._running and self.failed is None:
            self._drain()

    def _note_output(self, out: Output, show: bool = True) -> bool:
        """What every core output does first: wake the ticks, note the change,
        count a cut, show the core's high watermark when no cut is queued
        (unless not ``show``: the caller shows it once the output's messages
        are sent).  Returns whether ``out`` cuts records (a truncation or reset)."""
        if self.wake is not None and not self.core.idle:
            self.wake((self.topic.name, self.partition))
        if self.changed is not None:
            self.changed((self.topic.name, self.partition))
        cuts = any(w.truncate_to is not None or w.reset for w in out.writes)
        if cuts:
            self._pending_cuts += 1
        if show and self._pending_cuts == 0:
            # Nothing queued drops records the core already dropped, so the
            # core's high watermark covers only records the log holds as the
            # core does: publishes waiting for it are answered now, not after
            # the watermark itself is written down (that is for restarts;
            # it never makes a record committed).
            self._advance_hw(self.core.hw)
        return cuts

    def _crashed(self, f: Failure) -> None:
        if self.failed is not None:
            return  # (the first failure stopped the chain already)
        self.failed = f
        self._queued = []
        self._unsent.clear()
        if getattr(f.value, "code", None) == "stopping":  # the node stops: not a fault
            log.info(
                "replication of {topic}/{partition} ends: the node is stopping",
                topic=self.topic.name,
                partition=self.partition,
            )
        else:
            log.failure(
                "replication of {topic}/{partition} stopped",
                f,
                topic=self.topic.name,
                partition=self.partition,
            )
        for _off, _epoch, d, _value, _since in self._waiters:
            if not d.called:
                d.errback(f)
        self._waiters = []
        self._waiters_low = _NONE_WAITING
        if self._held_waits:
            self._check_held()  # (none is held now: each fires False)
        if self.on_failed is not None:
            self.on_failed((self.topic.name, self.partition))

    def _drain(self) -> None:
        """Issue the queued outputs in batches, each as soon as it is queued: every
        write of a batch is handed to the store at once (in order: the LMDB writer
        commits in that order, several in one group commit), without waiting for
        the writes of the batches before it to be durable -- a follower's next
        append is written while the previous one is committed, a leader's next
        records leave for the followers while its previous ones are on their way
        to its disk (issue 16).  What waits is each batch's messages: they are sent
        in batch order, each batch's only once its writes (but the leader's own
        records, see :meth:`_issue`) and every earlier batch's are durable and
        their messages sent (:meth:`_send_ready`) -- the core's rule, writes
        before messages, holds for every output."""
        self._running = True
        try:
            for _ in range(1_000_000):
                if not self._queued or self.failed is not None:
                    return
                batch, self._queued = self._queued, []
                self._issue(batch)
        except Exception:
            self._crashed(Failure())
        finally:
            self._running = False

    def _issue(self, batch: list[_Queued]) -> None:
        if (
            len(batch) == 1
            and timeline.TIMELINE is None
            and not self.topic.deleted
            and _lone_follower_append(batch[0])
        ):
            self._issue_lone(batch[0])
            return
        own: list[defer.Deferred[Any]] = []
        writes: list[defer.Deferred[Any]] = []
        stored_own = False  # records written as leader (new ones or a control record)
        for q in batch:
            for w in q.out.writes:
                if _hw_only(w):
                    self._save_hw_later()  # carried by the next write (see the module docstring)
                    continue
                if q.leader and w.count and _plain_append(w) and timeline.TIMELINE is None:
                    # The leader's own new records, answered by a plain call (the
                    # Deferred, its link and its firing were one of each a publish on
                    # the leader; issue 16, qpath43): see ``own`` below.
                    self._write(w, q.records, True, self._own_written)
                    stored_own = True
                    continue
                d = self._write(w, q.records, q.leader)
                stored_own |= q.leader and w.count > 0
                if d is not None and w.count and timeline.TIMELINE is not None:
                    self._mark_write(d, "lw" if q.leader else "f", w.start, w.start + w.count)
                if d is not None:
                    # The leader's own records go to the followers while they are
                    # written here (Raft's parallel leader write): the core counts
                    # them towards the high watermark only once reported stored.
                    # Everything else -- a follower's records, truncations and
                    # promises -- is durable before any message leaves.
                    lazy = q.leader and w.count and _plain_append(w)
                    (own if lazy else writes).append(d)
            if q.cuts:
                self._pending_cuts -= 1
        # Every write of the batch is made in memory: the log is what the
        # core was when it made the batch's last output.
        hw = self._issued_hw = batch[-1].hw
        self._advance_hw(hw)
        step = _Step(batch, ready=not writes)
        self._unsent.append(step)
        if writes:
            # (a control record is such a write: the core hears it stored then)
            _gather(writes).addCallbacks(self._step_ready, self._crashed, callbackArgs=(step, stored_own))
        elif not self._sending:
            self._send_soon()
        if own:
            _gather(own).addCallbacks(self._own_stored, self._crashed, callbackArgs=(stored_own,))

    def _issue_lone(self, q: _Queued) -> None:
        """:meth:`_issue` for a follower's lone output whose one write appends records
        (:func:`_lone_follower_append`): the same steps in the same order, the write
        answered by a plain call (:meth:`_lone_stored`) instead of a Deferred and its
        link -- one of each a replicated message on every follower (issue 16, qfollow42)."""
        step = _Step([q], ready=False)
        for w in q.out.writes:
            if _hw_only(w):
                self._save_hw_later()  # carried by the next write (see the module docstring)
            else:
                self._write(w, q.records, False, lambda f: self._lone_stored(f, step))
        hw = self._issued_hw = q.hw
        self._advance_hw(hw)
        self._unsent.append(step)

    def _own_written(self, f: Failure | None) -> None:
        """A write of the leader's own new records (:meth:`_issue`) is durable (``f``
        None: :meth:`_own_stored`, as the gathered ``own`` writes' link calls it) or
        failed (:meth:`_crashed`)."""
        if f is None:
            self._own_stored(None, True)
        else:
            self._crashed(f)

    def _lone_stored(self, f: Failure | None, step: _Step) -> None:
        """The write of :meth:`_issue_lone` is durable (``f`` None) or failed."""
        if f is None:
            self._step_ready(None, step, False)
        else:
            self._crashed(f)

    def _step_ready(self, _: object, step: _Step, stored_own: bool) -> None:
        step.ready = True
        self._own_stored(None, stored_own)  # what is durable here may show more; then sent

    def _send_soon(self) -> None:
        """Send the ready batches' messages (:meth:`_send_ready`): at once, without
        a coroutine, when none of them carries a reset or records to be read -- a
        follower's answers, a leader's high watermarks, what :meth:`_send` sends
        without a read (issue 16, cpu39: the coroutine was a fifth of a follower's
        lines a message), and a leader's appends of records still in the hot tail
        that fit one frame (qlead42) --, else through :meth:`_send_ready`."""
        try:
            if self._send_plain():
                return
        except Exception:
            self._crashed(Failure())
            return
        defer.ensureDeferred(self._send_ready()).addErrback(self._crashed)

    def _send_plain(self) -> bool:
        """:meth:`_send_ready` for ready batches whose messages need no read (see
        :meth:`_send_soon`), in the same order with the same answers left out, an
        append's records taken from the hot tail (:meth:`_hot_records`); False,
        nothing sent, when one of them carries a reset or records to be read."""
        unsent = self._unsent
        ready: list[_Step] = []
        for st in unsent:
            if not st.ready:
                break
            ready.append(st)
        messages = [m for st in ready for q in st.batch for m in q.out.messages]
        carried: dict[int, list[Record]] = {}
        for _dst, m in messages:
            if isinstance(m, Append) and (m.count or m.reset):
                recs = self._hot_records(m)
                if recs is None:
                    return False
                carried[id(m)] = recs
        skip = _superseded_answers(messages)
        self._sending = True
        try:
            for step in ready:
                for q in step.batch:
                    for dst, m in q.out.messages:
                        if id(m) not in skip:
                            if timeline.TIMELINE is not None:
                                self._mark_sent(dst, m)
                            recs = carried.get(id(m))
                            self.send(
                                dst,
                                Envelope(self.topic.name, self.partition, encode(m))
                                if recs is None
                                else Envelope(
                                    self.topic.name, self.partition, encode(m), [pack_record(r) for r in recs]
                                ),
                            )
                if unsent and unsent[0] is step:
                    unsent.popleft()
                if self.failed is not None:
                    return True
        finally:
            self._sending = False
        if unsent and unsent[0].ready:
            self._send_soon()  # made ready while these were sent (the loop of _send_ready)
        return True

    def _hot_records(self, m: Append) -> list[Record] | None:
        """The records an append ``m`` carries, when :meth:`_send` would send it as
        one frame read from the hot tail: no reset, every record in the tail, and
        within ``batch_bytes`` (or a lone record).  None otherwise: the coroutine
        reads and slices it.  A leader's new records at one publish a turn are
        always there (issue 16, qlead42: the coroutine, its read and its Deferreds
        were ~80 lines of Python an append on the leader)."""
        if m.reset:
            return None
        lg = self.log
        hs = lg.hot_start
        end = m.start + m.count
        if m.start < hs or end > lg.next_offset:
            return None
        hot = lg.hot
        recs = [hot[i] for i in range(m.start - hs, end - hs)]
        if len(recs) > 1 and sum(record_bytes(r) for r in recs) > self.batch_bytes:
            return None
        return recs

    async def _send_ready(self) -> None:
        """Send the messages of the issued batches whose writes are durable, in
        batch order, up to the first that still waits -- but an answer to the
        leader that a later one of the same ready batches supersedes
        (:func:`_superseded_answers`)."""
        self._sending = True
        try:
            unsent = self._unsent
            for _ in range(1_000_000):
                if not unsent or not unsent[0].ready or self.failed is not None:
                    return
                ready: list[_Step] = []
                for st in unsent:
                    if not st.ready:
                        break
                    ready.append(st)
                skip = _superseded_answers([m for st in ready for q in st.batch for m in q.out.messages])
                for step in ready:
                    for q in step.batch:
                        for dst, m in q.out.messages:
                            if id(m) not in skip:
                                await self._send(dst, m)
                    if unsent and unsent[0] is step:
                        unsent.popleft()
                    if self.failed is not None:
                        return
        finally:
            self._sending = False

    def _own_stored(self, _: object, stored_own: bool) -> None:
        """Writes of this partition are durable (``stored_own``: the leader's own
        records among them): once the commit firing now has fired every write's
        callbacks (at once outside a commit's), the core hears what is stored, the
        partition shows what it may, and the batches ready are sent --
        together: a follower whose commit held several appends answers once
        (:meth:`_send_ready`), a leader whose commit held several of its own
        writes moves its high watermark (and pushes it) once (issue 16, quorum36)."""
        if self.failed is not None:
            return
        self._own_due |= stored_own
        if not self._after_due:
            self._after_due = True
            self.broker.store.after_callbacks(self._after_commit)

    def _after_commit(self) -> None:
        """See :meth:`_own_stored`."""
        self._after_due = False
        if self.failed is not None:
            return
        if self._own_due:
            self._own_due = False
            self._handle(self.core.stored(self.log.stored_end), [])
        self._advance_hw(self._issued_hw)
        if not self._sending and self.failed is None and self._unsent and self._unsent[0].ready:
            self._send_soon()

    def _state_ops(self, reset: Write | None = None) -> list[tuple[Any, ...]]:
        """The replica state as it stands, for the transaction of a write
        (``reset``: the write that restarts the log at ``reset.start``).

        It may be ahead of that write (the core has moved on while earlier
        outputs were being written): runs are cut back to the log end on
        restart, and an early fenced/led epoch or high watermark only makes
        the replica more careful.  Not so a reset the chain has not written
        yet: its runs describe a log that is not on disk, so until then the
        runs stored with the log (or the empty log the reset writes) are
        stored instead."""
        self._hw_unsaved = False  # the state written holds the core's high watermark
        c = self.core.cache
        disk_end = reset.start if reset is not None else self.log.next_offset
        if c.log_start <= disk_end:
            cached = (list(c.runs), c.log_start, c.base_epoch)
        elif reset is not None:
            cached = ([], reset.start, reset.epoch)
        else:
            cached = self._stored_cache
        self._stored_cache = cached
        return [("p", "meta", self.state_key, dump_state(self.core, cached))]

    def _save_hw_later(self) -> None:
        """The core's high watermark moved: store it with the next write, or
        on its own within :data:`HW_SAVE_SECONDS` -- with every other
        partition's of this store due by then, in one write (:class:`_HighWatermarkSaves`)."""
        self._hw_unsaved = True
        if self._hw_timer is None:
            self._hw_timer = _saves_of(self).due(self)

    def _save_hw(self) -> None:
        """Write the replica state for its high watermark, unless a write
        carried it meanwhile; while the chain has outputs to write it waits
        for them (a state written beside the chain must not overtake a
        truncation or reset it has not written yet)."""
        self._hw_timer = None
        if not self._hw_unsaved or self.failed is not None or self.topic.deleted or not self.log.replicated:
            return  # (not replicated: the node became the only replica and forgot the state)
        if self._running or self._queued or self._pending_cuts:
            self._save_hw_later()
            return
        self.hw_saves += 1
        _saves_of(self).save(self, self._state_ops())

    def _hw_save_failed(self, f: Failure) -> None:
        if self.failed is None:
            self._crashed(f)

    def _write(
        self,
        w: Write,
        records: list[Record],
        leader: bool,
        then: Callable[[Failure | None], object] | None = None,
    ) -> defer.Deferred[Any] | None:
        """Issue one write (memory now, LMDB queued) of an output the core made
        as leader (``leader``) or follower; returns its durability Deferred --
        or, with ``then`` (a plain append, :meth:`_issue_lone`), None: ``then``
        is called when the Deferred would fire or fail."""
        b, t, p = self.broker, self.topic, self.partition
        if t.deleted:
            return None  # the topic was deleted meanwhile: its storage is gone, write nothing
        ds: list[defer.Deferred[Any]] = []
        if w.reset:
            # Everything this replica held lies below the leader's log start.
            floor = self._floors.pop(w.start, None)
            ds.append(b.reset_partition(t, p, w.start, self._state_ops(reset=w), floor=floor))
            t.dedup.forget_from(p, 0)
            t.recent.forget_from(p, 0)
        if w.truncate_to is not None:
            ds.append(b.truncate_partition(t, p, w.truncate_to, [] if w.count else self._state_ops()))
            t.dedup.forget_from(p, w.truncate_to)
            t.recent.forget_from(p, w.truncate_to)
        if not w.count:
            if w.truncate_to is None and (
                w.fenced_epoch is not None or w.led_epoch is not None or w.hw is not None
            ):
                ds.append(b.store.write(self._state_ops()))  # promises are durable before any message leaves
            return _all(ds)
        if w.control:
            recs = [Record(w.start, p, b.now_ms(), None, None, None, b"", True, control=True)]
        elif leader and records and records[0].offset == w.start:
            recs = records[: w.count]
        else:
            recs = records[w.skip : w.skip + w.count]
        if len(recs) != w.count or recs[0].offset != w.start:
            raise AssertionError(f"write of {w.count} at {w.start} without its records")
        # An epoch's control record is no ack's: it joins a metadata apply's
        # held writes (a new topic's, issue 23, create41) rather than end the
        # hold -- a commit of its own on every node a create.
        if then is None:
            ds.append(b.append_replicated(t, p, recs, self._state_ops(), urgent=not w.control))
        else:
            b.append_replicated_then(t, p, recs, self._state_ops(), then, urgent=not w.control)
        if not leader:
            # A follower knows the ids of what it holds: as the next leader it
            # answers a publish retried through the failover with the first
            # offset instead of storing the message twice.
            now = b.now_ms()
            remember = t.recent.remember
            for r in recs:
                if r.id is not None and not r.control:
                    remember(r.id, p, r.offset, now)
            if self.on_records is not None:
                self.on_records(recs)
        return _all(ds)

    async def _send(self, dst: str, m: Any) -> None:
        """Send one core message; an Append's records go with it, in as many
        frames as ``batch_bytes`` asks (each a valid Append of its own, at least
        one record each), read a piece at a time.  A reset tells the follower
        where the partition's log starts (below it: the shared S3 tier)."""
        if isinstance(m, Append) and m.reset:
            m = msgspec.structs.replace(m, log_start=min(self.log.log_start, m.start))
        if timeline.TIMELINE is not None:
            self._mark_sent(dst, m)
        if not (isinstance(m, Append) and m.count):
            self.send(dst, Envelope(self.topic.name, self.partition, encode(m)))
            return
        end = m.start + m.count
        pos = m.start
        for _ in range(m.count):
            if pos >= end:
                return
            try:
                recs = await self._records_bounded(pos, end)
            except DamagedRange as d:
                # This copy is damaged there: noted (and repaired from another
                # replica); until then the range is not sent -- never skipped.
                # (Records that retention or the S3 tier took meanwhile are not
                # damage: the core resends from where the log is now.)
                if not self.broker.integrity.raced(self.topic, self.partition, d):
                    self.broker.integrity.note(self.topic, self.partition, d)
                recs = []
            if not recs or recs[0].offset != pos or recs[-1].offset != pos + len(recs) - 1:
                # Not readable now (retention or the S3 tier raced the send):
                # the core retransmits from the new log start after a few ticks.
                self._unreadable(dst, m)
                return
            part = m if (pos == m.start and len(recs) == m.count) else slice_append(m, pos, len(recs))
            env = Envelope(self.topic.name, self.partition, encode(part), [pack_record(r) for r in recs])
            self.send(dst, env)
            pos += len(recs)

    async def _records_bounded(self, start: int, end: int) -> list[Record]:
        """Records from ``start`` (before ``end``) worth at most ``batch_bytes``
        (at least one), read in pieces sized by what the previous piece held."""
        out: list[Record] = []
        size = 0
        want = 16
        pos = start
        while pos < end:
            try:
                got = await self._records(pos, min(want, end - pos))
            except DamagedRange:
                if out:
                    return out  # send what reads well; the next round meets the damage
                raise
            if not got or got[0].offset != pos:
                return out
            for r in got:
                n = record_bytes(r)
                if out and size + n > self.batch_bytes:
                    return out
                out.append(r)
                size += n
            pos = out[-1].offset + 1
            average = max(1, size // len(out))
            want = max(1, min(512, (self.batch_bytes - size) // average + 1))
        return out

    def _unreadable(self, dst: str, m: Append) -> None:
        self.unreadable += 1
        now = self.broker.clock.seconds()
        if now - self._unreadable_logged >= 30:
            self._unreadable_logged = now
            log.warn(
                "replication of {topic}/{partition} to {dst}: offsets {start}-{last} are not "
                "readable here (log start {low}, servable from {servable}); retrying "
                "({n} unsent so far)",
                topic=self.topic.name,
                partition=self.partition,
                dst=dst,
                start=m.start,
                last=m.start + m.count - 1,
                low=self.log.log_start,
                servable=self.servable_start(),
                n=self.unreadable,
            )

    async def _records(self, start: int, count: int) -> list[Record]:
        lg = self.log
        end = start + count
        if start >= lg.hot_start:
            hs = lg.hot_start
            return [lg.hot[i] for i in range(start - hs, min(end, lg.next_offset) - hs)]
        got: list[Record] = await self.broker.store.read_records(
            self.topic.config.uid,
            self.partition,
            start,
            count,
            end,
            self.broker.integrity.dense(self.topic, lg, start, min(end, lg.stored_end)),
        )
        if got and got[-1].offset + 1 < end and end > lg.hot_start:
            got += await self._records(got[-1].offset + 1, end - got[-1].offset - 1)
        return got

    def _mark_write(self, d: defer.Deferred[Any], kind: str, start: int, end: int) -> None:
        """The timeline: a write of ``[start, end)`` handed to LMDB now, and when durable."""
        tl = timeline.TIMELINE
        if tl is not None and tl.sampled(start, end):
            tl.mark(kind + "_sub", start, end)

            def synced(result: Any) -> Any:
                tl.mark(kind + "_sync", start, end)
                return result

            d.addCallback(synced)

    def _mark_sent(self, dst: str, m: Any) -> None:
        """The timeline: records, a high watermark or an answer leave for ``dst`` now."""
        tl = timeline.TIMELINE
        if tl is None:
            return
        if isinstance(m, Append):
            if m.count:
                tl.mark("app>" + dst, m.start, m.start + m.count)
            low = self._marked_hw.get(dst, 0)
            # What the follower may take as its high watermark: the leader's, or
            # its durable end up to what the follower holds (Append.stored).
            hw = max(m.hw, min(m.stored, m.start + m.count))
            if hw > low:
                tl.mark("hw>" + dst, max(low, hw - 10_000), hw)
                self._marked_hw[dst] = hw
        elif isinstance(m, AppendResp) and m.ok and m.end > self._marked_ack:
            tl.mark("f_ack", max(self._marked_ack, m.end - 10_000), m.end)
            self._marked_ack = m.end

    def _advance_hw(self, core_hw: int) -> None:
        """Show the partition up to ``core_hw`` (the core's high watermark as
        of the outputs whose writes are made; capped at what is durable
        here) and answer the publishes it covers."""
        before = self.log.high_watermark
        if self.log.advance_high_watermark(core_hw):
            self.broker.notify(self.topic.name, self.partition)
            if timeline.TIMELINE is not None:
                event = "quorum" if self.core.role == LEADER else "f_hw"
                timeline.TIMELINE.mark(
                    event, max(before, self.log.high_watermark - 10_000), self.log.high_watermark
                )
        hw = self.log.high_watermark
        arrivals = self._arrivals
        if arrivals and arrivals[0][0] <= hw and self.on_hop is not None:
            now = self.broker.clock.seconds()
            for _ in range(len(arrivals)):
                if not arrivals or arrivals[0][0] > hw:
                    break
                self.on_hop("visible", now - arrivals.popleft()[1])
        if self._waiters:
            # A publish is answered once a majority of the replicas holds it on
            # disk -- any majority: the two followers' copies without this
            # leader's own (Raft commits without the leader's fsync).  That is
            # the core's high watermark while it leads the epoch that took the
            # publish and no queued cut makes its log differ from this node's;
            # the partition's visible high watermark (``hw``) stays capped at
            # what this node has durable, so a record may be answered here a
            # moment before it is readable here (issue 16, quorum3).
            core = self.core
            leading = core.role == LEADER and self._pending_cuts == 0
            committed = max(hw, core.hw) if leading else hw
            if self._waiters_low >= committed and core.role == LEADER:
                return  # (no waiter is below either watermark: none answered, none lost)
            keep, done, lost = [], [], []
            low = _NONE_WAITING
            for w in self._waiters:
                off = w[0]
                if off < hw or (off < committed and w[1] == core.epoch):
                    done.append(w)
                elif core.role != LEADER:
                    lost.append(w[2])
                else:
                    keep.append(w)
                    if off < low:
                        low = off
            self._waiters = keep  # before any callback runs: a callback may publish again
            self._waiters_low = low
            on_hop = self.on_hop
            now = self.broker.clock.seconds() if on_hop is not None and done else 0.0
            for w in done:
                if on_hop is not None and w[3] is not None and w[4] is not None:
                    # (a publish's append; not a duplicate's wait for its first
                    # copy, :meth:`wait_committed`, whose value is None)
                    on_hop("quorum", now - w[4])
                w[2].callback(w[3])
            for d in lost:
                d.errback(NotLeader(self.core.leader, self.core.epoch))


#: :attr:`PartitionReplication._waiters_low` with no publish waiting.
_NONE_WAITING = 1 << 62


class _OncePerSecond:
    """A log line at most once a second for the whole node, counting the rest."""

    def __init__(self) -> None:
        self.last = float("-inf")
        self.skipped = 0

    def unlogged(self, now: float) -> int | None:
        """None when a line went out less than a second ago (counted); else how
        many were not logged since the last one."""
        if now - self.last < 1.0:
            self.skipped += 1
            return None
        self.last, more, self.skipped = now, self.skipped, 0
        return more


#: The ``quorum_timeout`` lines of every partition of the node.
_QUORUM_LOG = _OncePerSecond()


@dataclass
class _Step:
    """An issued batch whose messages are not all sent yet; ``ready`` once its writes
    are durable."""

    batch: list[_Queued]
    ready: bool


@dataclass
class _Queued:
    """A core output waiting for the adapter, with the core's state when it was made."""

    out: Output
    records: list[Record]
    hw: int
    leader: bool
    cuts: bool


def _superseded_answers(messages: list[tuple[str, Any]]) -> set[int]:
    """The ids of the answers (``AppendResp``, ok) in ``messages`` whose next message
    to the same node is an answer of the same epoch that says at least as much (an
    end and a high watermark as high): the leader takes the later one alone to the
    same state -- its match, its view of the follower's watermark, the high
    watermark it moves -- so the earlier is not sent.  A follower's commit that
    made several appends durable answers them once, not once each: at 1,000
    publishes a second a commit holds ~3 appends, and each answer moved the
    leader's high watermark and pushed it to every follower (issue 16, quorum36)."""
    skip: set[int] = set()
    after: dict[str, Any] = {}
    for dst, m in reversed(messages):
        nxt = after.get(dst)
        if (
            isinstance(m, AppendResp)
            and m.ok
            and isinstance(nxt, AppendResp)
            and nxt.ok
            and nxt.epoch == m.epoch
            and nxt.end >= m.end
            and nxt.hw >= m.hw
        ):
            skip.add(id(m))
        after[dst] = m
    return skip


def _mark_acked(result: Any, tl: Any, start: int, end: int) -> Any:
    """The timeline: the publish of ``[start, end)`` is answered now (``acked``)."""
    tl.mark("acked", start, end)
    return result


def _plain_append(w: Write) -> bool:
    """A write of new records only: no truncation, control record or promise."""
    return (
        w.truncate_to is None
        and not w.control
        and not w.reset
        and w.fenced_epoch is None
        and w.led_epoch is None
    )


def _promise_only(w: Write) -> bool:
    """A write of the replica state alone (a fence's promise): no records, no cut."""
    return w.count == 0 and w.truncate_to is None and not w.reset and not w.control


def take_fences(
    items: list[tuple[PartitionReplication, str, Fence]],
    around: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> int:
    """The controller's fences for many partitions of this node, taken at once
    (issue 23): each replica's core takes its fence, and the promises of all
    of them are made durable in one write per store -- not an output chain
    (a coroutine, a write and a gather) per partition, which was most of a
    node's CPU for a dead node's thousands of fences -- then each answer is
    sent (all within ``around()``: the service holds them for one frame
    per node).  A replica whose chain is at work takes its fence on the
    chain, in order.  Returns the fences batched."""
    return _write_batches(
        [(r, r.fence_ops(src, m)) for r, src, m in items], PartitionReplication.fence_written, around
    )


class _HighWatermarkSaves:
    """One store's high watermarks saved on their own: the partitions due and the
    one timer that saves them (:meth:`due`), and the states gathered for one
    write at the end of the reactor turn (:meth:`save`).  One per store
    (:func:`_saves_of`), kept while the store lives."""

    def __init__(self, store: Any, clock: Any) -> None:
        #: The store, weakly (the table of saves is keyed by it: a strong one here
        #: would keep every store alive).
        self.store = weakref.ref(store)
        self.clock = clock
        #: The timer of :meth:`due` and the partitions it saves (None: none due).
        self._timer: Any = None
        self._due: list[PartitionReplication] = []
        #: The states gathered by :meth:`save` (None: no write scheduled).
        self._ops: list[tuple[Any, ...]] | None = None
        self._saving: list[PartitionReplication] = []

    def due(self, r: PartitionReplication) -> Any:
        """Count ``r``'s high watermark among the store's due: saved (unless a
        write carried it meanwhile) when the store's timer fires, at most
        :data:`HW_SAVE_SECONDS` from now -- the timer runs from the first
        partition due, and every partition due by then is saved with it in one
        write (issue 23, create41: a new partition's first high watermark moves
        on every replica one exchange after its create, and each partition's own
        timer was a commit of its own per node at one create every few ms).
        Returns the timer (the partition's ``_hw_timer``)."""
        if self._timer is None:
            self._timer = self.clock.callLater(HW_SAVE_SECONDS, self._save_due)
        self._due.append(r)
        return self._timer

    def _save_due(self) -> None:
        """The store's high-watermark timer fired: save every partition due."""
        rs, self._due, self._timer = self._due, [], None
        for r in rs:
            r._save_hw()

    def save(self, r: PartitionReplication, ops: list[tuple[Any, ...]]) -> None:
        """Write ``r``'s replica state for its high watermark with every other
        partition's whose timer fired in this reactor turn, in one write (issue
        23: a failover's thousands of new leaders and followers each saved its
        first high watermark 0.1 s after it moved -- a write per partition)."""
        if self._ops is None:
            self._ops = []
            self.clock.callLater(0, self._write)
        self._ops.extend(ops)
        self._saving.append(r)

    def _write(self) -> None:
        """Write the gathered saves (:meth:`save`)."""
        ops, rs = self._ops or [], self._saving
        self._ops, self._saving = None, []

        def failed(f: Failure) -> None:
            for r in rs:
                r._hw_save_failed(f)

        store = self.store()
        if store is not None:  # (else gone, and its partitions with it)
            store.write(ops).addErrback(failed)


#: Each store's :class:`_HighWatermarkSaves` (by the store itself, not its ``id``:
#: gone with it).
_SAVES: weakref.WeakKeyDictionary[Any, _HighWatermarkSaves] = weakref.WeakKeyDictionary()


def _saves_of(r: PartitionReplication) -> _HighWatermarkSaves:
    """The high-watermark saves of ``r``'s store (made on first use)."""
    store = r.broker.store
    saves = _SAVES.get(store)
    if saves is None:
        saves = _SAVES[store] = _HighWatermarkSaves(store, r.broker.clock)
    return saves


def _becomes_leader(out: Output) -> bool:
    """The output of a replica becoming leader: the epoch's promise, then its
    control record; messages without a reset (the first appends, the beat)."""
    ws = out.writes
    return (
        len(ws) == 2
        and _promise_only(ws[0])
        and ws[0].led_epoch is not None
        and ws[1].control
        and ws[1].count == 1
        and ws[1].truncate_to is None
        and not ws[1].reset
        and not any(isinstance(m, Append) and m.reset for _dst, m in out.messages)
    )


def _plain_follow(out: Output) -> bool:
    """A follower's output that writes records (and the replica state) only:
    no truncation, reset or control record of its own; no message that
    carries records."""
    return (
        bool(out.writes)
        and all(w.truncate_to is None and not w.reset and not w.control for w in out.writes)
        and not any(isinstance(m, Append) for _dst, m in out.messages)
    )


def _write_batches(
    staged: list[tuple[PartitionReplication, list[tuple[Any, ...]] | None]],
    done: Callable[[PartitionReplication, Failure | None], None] = PartitionReplication.batch_written,
    around: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> int:
    """Write the staged outputs' ops (None: the replica takes its part on its
    chain instead) in one write per store, then tell each replica with
    ``done`` (:meth:`PartitionReplication.batch_written`, or
    :meth:`~PartitionReplication.fence_written` for fences), within
    ``around()`` (what they send is held for one frame per node).  Returns how many."""
    by_store: dict[int, tuple[Any, list[tuple[Any, ...]], list[PartitionReplication]]] = {}
    for r, ops in staged:
        if ops is None:
            continue
        store = r.broker.store
        _, all_ops, rs = by_store.setdefault(id(store), (store, [], []))
        all_ops.extend(ops)
        rs.append(r)
    for store, all_ops, rs in by_store.values():

        def written(_: object, rs: list[PartitionReplication] = rs) -> None:
            with around():
                for r in rs:
                    done(r, None)

        def failed(f: Failure, rs: list[PartitionReplication] = rs) -> None:
            with around():
                for r in rs:
                    done(r, f)

        store.write(all_ops).addCallbacks(written, failed)
    return sum(len(rs) for _, _, rs in by_store.values())


def take_first_appends(
    items: list[tuple[PartitionReplication, str, Append, list[Record]]],
    around: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> int:
    """New leaders' first appends (their control records) heard in one
    reactor turn, taken at once (issue 23): each follower core takes its
    append, the records and replica states of all of them are made durable
    in one write per store, then each answer leaves.  A replica whose chain
    is at work takes its append on the chain, in order.  Returns the appends
    batched."""
    return _write_batches([(r, r.follow_ops(src, m, recs)) for r, src, m, recs in items], around=around)


def take_leaderships(
    items: list[tuple[PartitionReplication, str, Assign]],
    around: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> int:
    """The ``Assign`` s that make many partitions' replicas on this node
    leader, taken at once (issue 23: a dead node's leaderships move to the
    survivors by thousands in one Raft entry): each core becomes leader, and
    the promises and control records of all of them are made durable in one
    write per store -- not an output chain (two writes, a gather and a
    coroutine) per partition -- then each sends its first appends.  A
    replica whose chain is at work takes its Assign on the chain, in order.
    Returns the leaderships batched."""
    return _write_batches([(r, r.lead_ops(src, m)) for r, src, m in items], around=around)


def _lone_follower_append(q: _Queued) -> bool:
    """A follower's output whose one write (high watermarks' aside) appends new
    records and nothing else: :meth:`PartitionReplication._issue_lone` issues it."""
    if q.leader or q.cuts:
        return False
    n = 0
    for w in q.out.writes:
        if _hw_only(w):
            continue
        if not (w.count and _plain_append(w)):
            return False
        n += 1
    return n == 1


def _hw_only(w: Write) -> bool:
    """A write of the replica state whose only news is a higher high watermark."""
    return w.count == 0 and w.hw is not None and _plain_append(w)


def _needs_nothing(out: Output) -> bool:
    """An output whose messages may leave before any write: no write but the
    high watermark's (which promises nothing), and no message that carries
    records or a reset (those are read from the log, in order)."""
    return all(_hw_only(w) for w in out.writes) and not any(
        isinstance(m, Append) and (m.count or m.reset) for _dst, m in out.messages
    )


def _gather(ds: list[defer.Deferred[Any]]) -> defer.Deferred[Any]:
    """One Deferred for the writes ``ds`` (at least one): fires once every one
    has, fails with the first failure.  A lone write is itself (one a message
    at one publish at a time: no ``DeferredList`` -- whose firing alone runs
    a hundred lines of Python -- on every node's path, issue 16, cpu39);
    its callers' callbacks take no result."""
    if len(ds) == 1:
        return ds[0]
    d = defer.gatherResults(ds, consumeErrors=True)
    return d.addErrback(lambda f: f.value.subFailure if isinstance(f.value, defer.FirstError) else f)


def _all(ds: list[defer.Deferred[Any]]) -> defer.Deferred[Any] | None:
    if not ds:
        return None
    if len(ds) == 1:
        return ds[0]
    return defer.gatherResults(ds, consumeErrors=True)
