"""One replica of one partition: the leader or a follower.  Pure.

The core decides; the adapter stores and sends.  Every call returns an
:class:`Output`: first make its :attr:`Output.writes` durable (in order),
then send its :attr:`Output.messages` -- the same rule as Raft's Ready, and
for the same reason: an acknowledgement must never promise what is not on
disk.  The leader's own appends count towards the high watermark only once
the adapter reports them stored (:meth:`Replica.stored`).

Safety rests on three rules (Raft's, with offsets for indexes and leader
epochs for terms):

* a follower accepts a batch only when it holds the leader's record before
  it with the same epoch, and drops its own conflicting suffix -- never
  anything below its high watermark (that would be losing committed data,
  and raises :class:`SafetyError`);
* the leader advances the high watermark to ``N`` only when a majority of
  the replicas hold ``[0, N)`` and the record at ``N - 1`` is of its own
  epoch (older records commit with it: Raft's §5.4.2); each new leader
  writes a control record so that happens without waiting for a publish;
* a replica that promised the controller epoch ``e`` (:class:`Fence`)
  refuses every leader of an older epoch, so the controller can pick the
  most up-to-date replica of a fenced majority as the next leader.

Before a deliberate leadership move the controller may ask the leader to
pause (:class:`Handoff`): it refuses publishes (:class:`NotLeader`, no hint)
for a bounded number of ticks and says :class:`HandoffReady` once the target
replica holds its whole log, so the target ranks equal to the best when the
controller fences.  The pause changes none of the rules above.

A leader sends nothing to a follower on a node known dead (:attr:`Replica.dead`:
gossip says it died or left, or the controller found it silent) and does not
wait for it: with only such followers behind, it is idle (issue 23).  That
changes none of the rules above either -- the high watermark still needs a
majority holding the records -- only when the leader sends: once the node is
no longer known dead, the leader's ticks heartbeat it again and catch it up
as any follower that fell behind.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass, field

from sprawl.replication.epochs import EpochCache
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
    Resign,
)

LEADER = "leader"
FOLLOWER = "follower"

#: Ticks an answer awaited from a node that answers others is waited for
#: before it counts towards a re-send again (see :attr:`Replica.answering`).
ANSWERED_WAIT_TICKS = 10


class SafetyError(AssertionError):
    """An invariant of replication would break (a bug, never an input error)."""


class NotLeader(Exception):
    """This replica cannot take publishes now; ``leader`` is the hint (or None)."""

    def __init__(self, leader: str | None, epoch: int) -> None:
        super().__init__(f"not the leader (leader {leader!r}, epoch {epoch})")
        self.leader = leader
        self.epoch = epoch


@dataclass
class Write:
    """Make the log durable as: drop records at ``truncate_to`` and after (if
    set), then write ``count`` records at ``start`` -- taken from the incoming
    batch after skipping its first ``skip`` records, or a control record when
    ``control`` -- and store ``fenced_epoch`` / ``hw`` when set.  ``reset``
    drops the whole log and restarts it at ``start`` (the leader no longer has
    what this replica lacks, or what it holds just before ``start`` diverges
    from the leader's); ``epoch`` is then the epoch of the leader's record at
    ``start - 1``, the new base epoch."""

    truncate_to: int | None = None
    start: int = 0
    count: int = 0
    skip: int = 0
    epoch: int = 0
    control: bool = False
    reset: bool = False
    fenced_epoch: int | None = None
    led_epoch: int | None = None
    hw: int | None = None


@dataclass
class Output:
    """What the adapter must do, in order: writes, then messages."""

    writes: list[Write] = field(default_factory=list)
    messages: list[tuple[str, Message]] = field(default_factory=list)

    def extend(self, other: Output) -> Output:
        """Append ``other``'s work after this one's."""
        self.writes.extend(other.writes)
        self.messages.extend(other.messages)
        return self


@dataclass
class _Follower:
    match: int = 0  # the follower holds [0, match) as the leader does
    next: int = 0  # the next offset to send
    idle_ticks: int = 0  # ticks since we last sent anything
    stalled_ticks: int = 0  # ticks with unacknowledged data outstanding
    hw: int = -1  # the follower's high watermark, as it last said (-1: unknown)
    sent_hw: int = 0  # the high watermark we last sent it
    sent_from: int = 0  # where the last append with records we sent it starts ([sent_from, next))
    stall_limit: int = 3  # ticks without an answer before what is in flight is sent again
    unanswered: bool = False  # records were sent that no answer has covered yet
    hw_limit: int = 3  # ticks without an answer before the high watermark sent is sent again
    derives: int = 0  # the high watermark it can take from the leader's durable end we sent (Append.stored)


class Replica:
    """One replica's replication state (see the module docstring)."""

    def __init__(
        self,
        node_id: str,
        controller: str,
        *,
        cache: EpochCache | None = None,
        fenced_epoch: int = 0,
        led_epoch: int = 0,
        hw: int = 0,
        max_batch: int = 512,
        max_in_flight: int = 4096,
        retry_ticks: int = 3,
        max_ask_ticks: int = 30,
        first_epoch: int = 0,
    ) -> None:
        self.id = node_id
        self.controller = controller
        self.cache = cache if cache is not None else EpochCache()
        self.fenced_epoch = fenced_epoch
        #: The last epoch this replica led (persisted): it never leads it twice.
        self.led_epoch = led_epoch
        self.hw = hw
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self.retry_ticks = retry_ticks
        self.role = FOLLOWER
        self.epoch = fenced_epoch
        self.leader: str | None = None
        self.replicas: tuple[str, ...] = ()
        self.stored_end = self.cache.end  # on (re)start everything in the log is durable
        self.followers: dict[str, _Follower] = {}
        #: Nodes known dead (gossip says dead or left, or the controller found
        #: them silent): as leader, nothing is sent to a follower there and it
        #: is not waited for (see :attr:`idle`).  The adapter shares one set
        #: among a node's replicas and wakes the leaders of a node that is
        #: removed from it.
        self.dead: Set[str] = frozenset()
        #: Nodes that answered appends (of any partition) since the tick before
        #: this one, shared by the adapter among a node's replicas: in a new
        #: epoch's first exchange (the follower has not said it holds a high
        #: watermark past the epoch's control record), an answer awaited from
        #: a follower there is not counted as lost in a tick -- the follower
        #: works through its inbound queue, in order, and ours is in it (issue
        #: 23: after a failover each of thousands of new leaders sent its
        #: append again one to three times while the follower's node worked
        #: through the burst).  Counted again after :data:`ANSWERED_WAIT_TICKS`
        #: without an answer whatever the node does (an append the follower
        #: dropped, having no replica yet, is sent again then: about a second
        #: later than before).  Past the first
        #: exchange (a steady leader, a restarted follower catching up) the
        #: waits are as before.
        self.answering: Set[str] = frozenset()
        #: While handing off: (target replica, ticks left of the pause).
        self.handoff: tuple[str, int] | None = None
        #: Whether, as a follower, this replica has once held everything its
        #: leader had committed (an append reached the leader's high
        #: watermark) since it was built: a restarted node is not ready before.
        self.caught_up = False
        #: Ticks since a follower not yet caught up last heard an append (it
        #: says where it stands again after ``ask_ticks``: see :meth:`tick`).
        self.unheard_ticks = 0
        #: Ticks between a follower's unanswered words to its leader: from
        #: ``retry_ticks``, doubling after each up to ``max_ask_ticks`` (a whole
        #: cluster restarting has thousands of followers whose leader leads
        #: nothing yet); back to ``retry_ticks`` once an append or an Assign comes.
        self.ask_ticks = retry_ticks
        self.max_ask_ticks = max(retry_ticks, max_ask_ticks)
        #: The epoch of a partition's first placement (0: none known).  Its
        #: leader starts the partition's log: it leads with an empty log, so
        #: its control record is the record at offset 0.  A follower with an
        #: empty log and no promise yet, assigned that epoch, takes that
        #: record as its own at once (:meth:`_derive_first`) instead of
        #: waiting for the leader's append to write it (issue 23, create41).
        self.first_epoch = first_epoch
        #: A follower with no leader, fenced past the placement: the leader
        #: an ``Assign`` older than its promise named (see :meth:`_on_assign`).
        #: Asked where a leader would be until one is heard.
        self.placed_leader: str | None = None
        #: Whether a leader's every tick beats the controller for its partition
        #: (:class:`LeaderBeat`), as the release before node beats needs.  With
        #: node beats (the adapter clears it) the controller hears a leader's
        #: partition once -- the beat of :meth:`_become_leader`, or the answer
        #: to its repeated Assign -- and its node's beat after: a new leader
        #: that is not idle for seconds (thousands of them after a failover)
        #: no longer beats ten times a second each (issue 23).
        self.tick_beats = True
        #: (epoch, first offset) of the records taken with ``append(send=False)``
        #: not yet sent by :meth:`send_appends`.
        self._held: tuple[int, int] | None = None
        #: A leader's ticks counted ahead per follower by :meth:`skip_ticks`
        #: (idle, stalled), taken back when an input wakes it early.
        self._ahead: dict[str, tuple[int, int]] = {}
        if hw > self.cache.end:
            raise SafetyError(f"high watermark {hw} beyond the log end {self.cache.end}")

    # -- views -----------------------------------------------------------------------

    @property
    def end(self) -> int:
        """The log end offset (next offset to be written)."""
        return self.cache.end

    @property
    def is_leader(self) -> bool:
        """Whether this replica leads its partition now."""
        return self.role == LEADER

    @property
    def idle(self) -> bool:
        """Whether :meth:`tick` has nothing to do but the controller's beat:
        a follower, or a leader not handing off whose followers hold its
        whole log and its high watermark (as they said) -- followers on nodes
        known dead (:attr:`dead`) aside: nothing is sent to them until their
        node is back.  The adapter ticks only replicas that are not idle; the
        controller knows an idle leader is alive from its node's beat
        (:class:`NodeBeat`)."""
        if self.role != LEADER:
            # A follower waits for nothing, unless it has not caught up since
            # it was built: then it asks its leader (or, fenced past the
            # placement with no leader, the leader the placement names) until
            # an append answers.
            if self.caught_up or self.leader == self.id:
                return True
            return self.leader is None and self.placed_leader is None
        if self.handoff is not None:
            return False
        end, hw, dead = self.cache.end, self.hw, self.dead
        return all((f.match >= end and f.hw >= hw) or fid in dead for fid, f in self.followers.items())

    @property
    def quiet_ticks(self) -> int:
        """How many of the next ticks would do nothing but count: a follower
        not caught up (not :attr:`idle`) waits ``ask_ticks`` between its words
        to its leader, and each tick in between only counts towards the next
        (issue 23, idle36: after a restart of a 10,000-partition cluster
        thousands of such followers were ticked ten times a second each, for
        the seconds to minutes their leaders took to answer).  The adapter
        may leave such a replica unticked for these ticks, then call
        :meth:`skip_ticks` for them.

        A leader not handing off and not beating per tick is quiet while
        every follower on a live node only waits (issue 23, fail39: a
        failover's thousands of new leaders were walked every tick for the
        seconds their busy follower took to answer the first append): an
        append in flight until its ``stall_limit`` -- or, its follower's node
        answering others (:attr:`answering`, as this tick found it), until
        :data:`ANSWERED_WAIT_TICKS` --, a high watermark sent until its
        ``hw_limit``.  One follower to send to now, or no follower waiting
        (idle), makes it 0."""
        if self.role == LEADER:
            return self._leader_quiet_ticks()
        if self.idle:
            return 0
        if self.leader is None and self.placed_leader is None:
            return 0
        return max(0, self.ask_ticks - self.unheard_ticks - 1)

    def _leader_quiet_ticks(self) -> int:
        """:attr:`quiet_ticks` of a leader (see there)."""
        if self.handoff is not None or self.tick_beats:
            return 0
        quiet: int | None = None
        end, hw = self.cache.end, self.hw
        for fid, f in self.followers.items():
            if fid in self.dead:
                continue
            if f.unanswered and f.next > f.match:
                if self._queued_next(fid, f):
                    n = ANSWERED_WAIT_TICKS - f.idle_ticks - 1
                else:
                    n = f.stall_limit - f.stalled_ticks - 1
            elif f.match < end:
                return 0
            elif f.hw < hw:
                if f.sent_hw < hw:
                    return 0
                n = f.hw_limit - f.idle_ticks - 1
            else:
                continue  # (it holds everything: nothing to wait for)
            if n <= 0:
                return 0
            quiet = n if quiet is None else min(quiet, n)
        return quiet or 0

    def _queued_next(self, fid: str, f: _Follower) -> bool:
        """Whether the next tick counts ``fid``'s append in flight as queued
        behind its node's other answers (not towards a re-send: see :meth:`tick`)."""
        runs = self.cache.runs
        first = runs[-1][1] if runs and runs[-1][0] == self.epoch else -1
        return fid in self.answering and f.hw <= first and f.idle_ticks + 1 < ANSWERED_WAIT_TICKS

    def skip_ticks(self, ticks: int) -> None:
        """Count ``ticks`` ticks this replica was not ticked for (at most its
        :attr:`quiet_ticks`: they would have only counted); a negative count
        takes back ticks counted ahead that did not pass (the adapter counts a
        replica's quiet ticks when it leaves it unticked, and takes back the
        rest when an input wakes it early -- an input that reset the count
        leaves it at 0).  A leader counts them for every follower on a live
        node, each as its next tick would (an append in flight counted as
        stalled unless queued, as :attr:`answering` is now)."""
        if self.role != LEADER:
            self.unheard_ticks = max(0, self.unheard_ticks + ticks)
            return
        if ticks < 0:
            back, self._ahead = self._ahead, {}
            for fid, (idle, stalled) in back.items():
                f = self.followers.get(fid)
                if f is not None:
                    took = min(-ticks, idle)
                    f.idle_ticks = max(0, f.idle_ticks - took)
                    f.stalled_ticks = max(0, f.stalled_ticks - min(-ticks, stalled))
            return
        self._ahead = {}
        for fid, f in self.followers.items():
            if fid in self.dead:
                continue
            stalled = ticks if f.unanswered and f.next > f.match and not self._queued_next(fid, f) else 0
            f.idle_ticks += ticks
            f.stalled_ticks += stalled
            self._ahead[fid] = (ticks, stalled)

    # -- the leader's side -----------------------------------------------------------

    def append(self, count: int, send: bool = True) -> tuple[int, Output]:
        """Take ``count`` new records; returns their first offset and the work
        (write them, send them on).  Raises :class:`NotLeader`.

        With ``send`` false the work is the write alone: the records go to the
        followers with the next :meth:`send_appends` (an adapter taking several
        publishes in one turn sends them as one append per follower), or
        sooner with anything else that sends a follower what it lacks."""
        if self.role != LEADER:
            raise NotLeader(self.leader, self.epoch)
        if self.handoff is not None:
            raise NotLeader(None, self.epoch)  # paused: leadership is moving
        first = self.cache.end
        self.cache.append(self.epoch, count)
        out = Output(writes=[Write(start=first, count=count, epoch=self.epoch)])
        if not send:
            if self._held is None or self._held[0] != self.epoch:
                self._held = (self.epoch, first)
            return first, out
        for fid, f in self.followers.items():
            if f.next == first and fid not in self.dead:
                out.extend(self._send(fid, f))
        return first, out

    def send_appends(self) -> Output:
        """Send the records taken with ``append(send=False)`` since the last call
        to every follower that was sent everything before them (one append
        each, or as many as ``max_batch`` takes); a follower sent them
        meanwhile, or behind, is not sent them again."""
        held, self._held = self._held, None
        out = Output()
        if held is None or self.role != LEADER or held[0] != self.epoch:
            return out
        end = self.cache.end
        for fid, f in self.followers.items():
            if f.next == held[1] and fid not in self.dead:
                # All of it, in appends of up to ``max_batch`` (as many as the
                # publishes would have sent one each), within ``max_in_flight``.
                for _ in range(end - f.next):
                    before = f.next
                    out.extend(self._send(fid, f))
                    if f.next == before or f.next >= end:
                        break
        return out

    def stored(self, end: int) -> Output:
        """The adapter made this replica's own log durable up to ``end``.

        A leader whose own copy and one follower's make a majority tells its
        caught-up followers its durable end at once when that moves past what
        they can take as committed (:attr:`Append.stored`, issue 16, quorum37):
        each then shows the records once its own copy is durable, instead of
        after its answer reached the leader and the leader's push came back."""
        if end > self.stored_end:
            self.stored_end = min(end, self.cache.end)
        out = self._advance_hw()
        if self.role != LEADER or self._stored_hint() < 0:
            return out
        # Past the epoch's first exchange only -- records past its control
        # record, to a follower that said it holds a high watermark past it:
        # a failover's new leaders send nothing more (their followers' queues
        # are long then, and the answer carries the same news).
        runs = self.cache.runs
        if not runs or runs[-1][0] != self.epoch:
            return out
        first = runs[-1][1]
        for fid, f in self.followers.items():
            if fid not in self.dead and f.next >= self.cache.end and f.hw > first:
                n = self._derivable(f.next)
                if n > first + 1 and n > max(f.derives, f.sent_hw, self.hw):
                    out.extend(self._send(fid, f, heartbeat=True, push=True))
        return out

    def _stored_hint(self) -> int:
        """:attr:`Append.stored` for this leader's appends: its durable end when
        it and one follower make a majority, else -1."""
        if self.role != LEADER or len(self.replicas) // 2 + 1 > 2 or self.id not in self.replicas:
            return -1
        return self.stored_end

    def _derivable(self, end: int) -> int:
        """The high watermark a follower holding ``[0, end)`` takes from this
        leader's durable end (0: none -- the record before it is not of this epoch)."""
        hint = self._stored_hint()
        n = min(hint, end)
        if n <= 0 or self.cache.epoch_at(n - 1) != self.epoch:
            return 0
        return n

    def _send(self, fid: str, f: _Follower, heartbeat: bool = False, push: bool = False) -> Output:
        cache = self.cache
        out = Output()
        if f.next < cache.log_start:
            f.next = cache.log_start  # the follower resets to our log start
            reset = True
        else:
            reset = False
        count = max(0, min(cache.end - f.next, self.max_batch))
        if f.next - f.match >= self.max_in_flight:
            count = 0
        if count == 0 and not heartbeat and not reset:  # a reset goes out even with nothing to add
            return out
        start = f.next
        runs = tuple(
            (e, max(s, start)) for e, s in cache.runs if s < start + count and _run_end(cache, e) > start
        )
        msg = Append(
            epoch=self.epoch,
            start=start,
            prev_epoch=cache.epoch_at(start - 1),
            count=count,
            runs=runs,
            hw=self.hw,
            reset=reset,
            push=push and not count and not reset,
            stored=-1 if reset else self._stored_hint(),
        )
        if not reset:
            f.derives = max(f.derives, self._derivable(start + count))
        f.next = start + count
        if count:
            f.sent_from = start
            f.unanswered = True
        f.idle_ticks = 0
        f.sent_hw = self.hw
        out.messages.append((fid, msg))
        return out

    def _on_append_resp(self, src: str, m: AppendResp) -> Output:
        out = Output()
        if m.epoch > self.epoch:
            # A follower promised a later epoch: this leader steps down.  Say
            # so to the controller (``Resign`` of the epoch it led): when that
            # later epoch was a fence whose choice was never committed (the
            # controller changed, or the cluster restarted, mid-failover), the
            # placement still names this node, its core is confirmed and idle,
            # and without a word the partition would have no leader at all --
            # its followers, fenced past the placement's epoch, ignore its
            # Assign (issue 23: replicas stuck "catching up" after a restart).
            # A controller that has moved on ignores it.
            led = self.epoch
            out = self._step_down(m.epoch)
            out.messages.append((self.controller, Resign(led)))
            return out
        f = self.followers.get(src)
        if f is None:
            return out
        f.hw = m.hw if m.hw >= 0 else max(f.hw, f.sent_hw)
        if f.hw >= f.sent_hw:
            f.hw_limit = self.retry_ticks  # the last high watermark sent is answered
        if m.ok:
            if m.end > f.match:
                f.match = m.end
                f.stalled_ticks = 0
                f.stall_limit = self.retry_ticks
            f.next = max(f.next, f.match)
            f.unanswered = f.unanswered and f.match < f.next
            out.extend(self._advance_hw())
        elif (
            f.unanswered
            and max(f.sent_from, self.cache.log_start) <= m.end < f.next
            and f.stall_limit <= self.retry_ticks
            and src not in self.dead
        ):
            # A word the follower sent before our last append reached it (its
            # answer to an Assign, or a restarted follower asking; a refusal
            # of an append always names an end below that append's start):
            # the append is on its way, in order, and its answer is what
            # counts -- sending it again would only double the work (issue
            # 23: each new leader of a failover hears one such word per
            # follower).  Were it lost, the stalled ticks send it again.  A
            # follower below our log start is answered (reset) at once: what
            # is in flight may not have been readable to send.
            #
            # Only while nothing sent to it has counted as lost yet: once an
            # append went again unanswered (its node dropped them: it had no
            # replica yet, a restart), or while its node is known dead (the
            # ticks send it nothing), the follower's word is the first sign
            # it can take them, and it is answered at once -- else it waited
            # for the stall timer, doubled meanwhile up to ``max_ask_ticks``,
            # its every ask unanswered (issue 23, restart36: followers
            # "catching up" seconds after their replica was built, for as
            # long as gossip called their node dead).
            return out.extend(self._handoff_ready())
        elif f.unanswered and f.next > f.match and m.end >= f.next:
            # The follower names an end at or past everything sent to it while
            # records are in flight unanswered: either their answers are lost,
            # or what it holds there is not ours (a node killed just after it
            # was placed leader of new topics restarts, leads their epoch 1
            # from a Raft snapshot -- a control record at offset 0 -- and then
            # follows the failover's leader, whose first append to it was
            # dropped).  A heartbeat from ``next`` would only be refused
            # (naming an end in the range in flight, not answered above), and
            # each such answer restarted the wait of a node that answers
            # others (:attr:`answering`): the re-send never came and the node
            # was "catching up" for good (flaky40).  What is in flight goes
            # again now, as the stall timer would send it.
            f.next = max(f.match, f.sent_from)
            f.stalled_ticks = 0
        else:
            rewound = max(f.match, min(m.end, f.next))
            if rewound < f.next:
                # What is sent again from there is a new wait.  A word that
                # rewinds nothing (a follower that is not caught up says
                # where it stands every few ticks) leaves the count alone:
                # reset by every such word, an append in flight that was
                # lost never counted as lost, and a follower whose refusals
                # of the heartbeats fell in its range waited for it forever
                # (stuck34: a restarted node "catching up" for good).
                f.stalled_ticks = 0
            f.next = rewound
        # A refusal (or a follower telling where it stands after an Assign:
        # one that restarted) gets an answer even with nothing to add: an idle
        # leader sends nothing unprompted, and the follower learns from it
        # that it holds what the leader committed (it is caught up).
        out.extend(self._send(src, f, heartbeat=not m.ok))
        return out.extend(self._handoff_ready())

    def _on_handoff(self, m: Handoff) -> Output:
        if self.role != LEADER or m.epoch != self.epoch or m.to not in self.followers:
            return Output()
        self.handoff = (m.to, max(0, m.ticks))
        return self._handoff_ready()

    def _handoff_ready(self) -> Output:
        if self.handoff is None or self.role != LEADER:
            return Output()
        to = self.handoff[0]
        f = self.followers.get(to)
        if f is None or f.match < self.cache.end:
            return Output()
        return Output(messages=[(self.controller, HandoffReady(self.epoch, to, self.cache.end))])

    def _advance_hw(self) -> Output:
        if self.role != LEADER or not self.replicas:
            return Output()
        ends = sorted(
            [self.stored_end, *(self.followers[r].match for r in self.replicas if r in self.followers)],
            reverse=True,
        )
        majority = len(self.replicas) // 2 + 1
        if len(ends) < majority:
            return Output()
        n = ends[majority - 1]
        if n > self.hw and self.cache.epoch_at(n - 1) == self.epoch:
            self.hw = n
            out = Output(writes=[Write(hw=n)])
            # A push past this epoch's control record (records published in
            # it) is answered only with the follower's next answer: to the next
            # append, or to the heartbeat the tick sends while the follower's
            # high watermark is not known to be this one (after ``hw_limit``
            # ticks without a word, see :meth:`tick`).  The epoch's first
            # push is answered at once as before: a failover's thousands of
            # new leaders go idle without a tick's heartbeat more each.
            runs = self.cache.runs
            push = bool(runs) and runs[-1][0] == self.epoch and n > runs[-1][1] + 1
            for fid, f in self.followers.items():  # followers learn the new hw promptly
                if f.next >= self.cache.end and fid not in self.dead:
                    if push and f.derives >= n:
                        # It holds the records and took this high watermark from
                        # our durable end already (:meth:`stored`): as a push it
                        # would be answered only with its next answer.
                        f.sent_hw = max(f.sent_hw, n)
                        continue
                    out.extend(self._send(fid, f, heartbeat=True, push=push))
            return out
        return Output()

    def _become_leader(self, epoch: int, replicas: tuple[str, ...]) -> Output:
        self.handoff = None
        self.role = LEADER
        self.epoch = epoch
        self.leader = self.id
        self.replicas = replicas
        self.followers = {
            r: _Follower(
                match=0, next=self.cache.end, stall_limit=self.retry_ticks, hw_limit=self.retry_ticks
            )
            for r in replicas
            if r != self.id
        }
        self.fenced_epoch = max(self.fenced_epoch, epoch)
        self.led_epoch = epoch
        out = Output(writes=[Write(fenced_epoch=self.fenced_epoch, led_epoch=epoch)])
        # The epoch's first record: a control record, so older records commit
        # (with it) without waiting for a publish.
        first = self.cache.end
        self.cache.append(epoch, 1)
        out.writes.append(Write(start=first, count=1, epoch=epoch, control=True))
        for fid, f in self.followers.items():
            if fid not in self.dead:
                out.extend(self._send(fid, f, heartbeat=True))
        out.messages.append((self.controller, LeaderBeat(epoch, self.hw, self.cache.end)))
        return out

    def _step_down(self, epoch: int) -> Output:
        out = Output()
        if epoch > self.fenced_epoch:
            self.fenced_epoch = epoch
            out.writes.append(Write(fenced_epoch=epoch))
        if epoch > self.epoch or self.role == LEADER:
            self.role = FOLLOWER
            self.leader = None
            self.followers = {}
            self.handoff = None
            self.epoch = max(self.epoch, epoch)
        return out

    # -- the follower's side ---------------------------------------------------------

    def _on_append(self, src: str, m: Append) -> Output:
        out = Output()
        cache = self.cache
        if m.epoch < self.fenced_epoch:
            out.messages.append((src, AppendResp(self.fenced_epoch, False, cache.end, self.hw)))
            return out
        if self.role == LEADER and m.epoch == self.epoch:
            raise SafetyError(f"{src} sent appends of epoch {m.epoch}, which {self.id} leads")
        # A high watermark pushed by the leader this replica already follows,
        # caught up: its answer would only tell the leader it was heard (see
        # the end).  (The push may start before this replica's end: a publish
        # answered at the watermark may send its next records before the push
        # leaves.)
        quiet = (
            m.push
            and m.count == 0
            and not m.reset
            and self.caught_up
            and self.role != LEADER
            and self.leader == src
            and m.epoch == self.epoch == self.fenced_epoch
            and m.start <= cache.end
        )
        if m.epoch > self.fenced_epoch or self.role == LEADER:
            out.extend(self._step_down(m.epoch))
        self.epoch = m.epoch
        self.leader = src
        self.placed_leader = None
        self.role = FOLLOWER
        self.unheard_ticks = 0
        self.ask_ticks = self.retry_ticks
        # A reset: the leader's log starts at ``m.start`` and we lack what
        # comes before it, or what we hold just before it is not the leader's
        # (an uncommitted suffix of an old epoch: the leader cannot send what
        # would let us find where we diverge, so we start over).
        diverged = (
            cache.log_start < m.start <= cache.end
            and cache.epoch_at(m.start - 1) != m.prev_epoch
            and self.hw < m.start
        )
        if m.reset and (m.start > cache.end or diverged):
            if self.hw > m.start:
                raise SafetyError(f"reset to {m.start} below high watermark {self.hw}")
            cache.runs, cache.log_start, cache.end, cache.base_epoch = [], m.start, m.start, m.prev_epoch
            self.stored_end = m.start
            out.writes.append(Write(start=m.start, reset=True, epoch=m.prev_epoch))
        if m.start > cache.end:
            out.messages.append((src, AppendResp(self.fenced_epoch, False, cache.end, self.hw)))
            return out
        if m.start > cache.log_start and cache.epoch_at(m.start - 1) != m.prev_epoch:
            ours = cache.epoch_at(m.start - 1)
            hint = cache.first_offset_of(ours) if ours >= 0 else m.start - 1
            if self.hw > m.start - 1:
                raise SafetyError(
                    f"leader of epoch {m.epoch} disagrees at offset {m.start - 1} below the "
                    f"high watermark {self.hw}"
                )
            out.messages.append(
                (src, AppendResp(self.fenced_epoch, False, max(hint, self.hw, cache.log_start), self.hw))
            )
            return out
        batch_end = m.start + m.count
        # Find the first offset where our log and the batch disagree.
        conflict = None
        for o in range(max(m.start, cache.log_start), min(batch_end, cache.end)):
            if cache.epoch_at(o) != _epoch_in(m.runs, o):
                conflict = o
                break
        write = Write()
        if conflict is not None:
            if conflict < self.hw:
                raise SafetyError(f"truncating at {conflict} below the high watermark {self.hw}")
            cache.truncate(conflict)
            self.stored_end = min(self.stored_end, conflict)
            write.truncate_to = conflict
        first_new = max(m.start, cache.end)
        if first_new < batch_end:
            write.start = first_new
            write.count = batch_end - first_new
            write.skip = first_new - m.start
            for e, s in m.runs:
                run_end = _next_start(m.runs, e, batch_end)
                lo, hi = max(s, first_new), run_end
                if hi > lo:
                    cache.append(e, hi - lo)
            self.stored_end = cache.end
        if batch_end >= m.hw:
            self.caught_up = True
        new_hw = max(self.hw, min(m.hw, batch_end))
        if m.stored > new_hw:
            # The leader's copy is durable to ``m.stored`` and ours, once our
            # writes are (the adapter shows nothing past them), makes a
            # majority with it (the leader sends it only then): records of
            # this epoch below both are committed (issue 16, quorum37).
            n = min(m.stored, batch_end)
            if n > new_hw and cache.epoch_at(n - 1) == m.epoch:
                new_hw = n
        if new_hw > self.hw:
            self.hw = new_hw
            write.hw = new_hw
        if write.truncate_to is not None or write.count or write.hw is not None:
            out.writes.append(write)
        if quiet and write.truncate_to is None:
            # Not answered (issue 16, quorum3): at one publish at a time the
            # leader pushes each new high watermark the moment a majority
            # holds the records, and answering each push was a frame each way
            # per message.  The leader learns this replica's high watermark
            # from its next answer (to the next append, or to the tick's
            # heartbeat, which the leader sends while it does not know it).
            return out
        out.messages.append((src, AppendResp(self.fenced_epoch, True, batch_end, self.hw)))
        return out

    def _on_fence(self, src: str, m: Fence) -> Output:
        if m.epoch < self.fenced_epoch:
            return Output(messages=[(src, FenceResp(m.epoch, False, self.cache.last_epoch, self.cache.end))])
        out = self._step_down(m.epoch) if m.epoch > self.fenced_epoch else Output()
        out.messages.append((src, FenceResp(m.epoch, True, self.cache.last_epoch, self.cache.end)))
        return out

    def _on_assign(self, src: str, m: Assign) -> Output:
        if m.epoch < self.fenced_epoch:
            if m.leader == self.id:
                # Named leader of an epoch this replica has since promised
                # away (a move's fence whose choice was never committed: the
                # controller that fenced lost its Raft leadership): it will
                # never lead that epoch again, and the asker -- a new
                # controller confirming the leaders it inherited -- would
                # otherwise wait for a word that never comes.  Say so: the
                # controller moves to a new epoch.
                return Output(messages=[(src, Resign(m.epoch))])
            if self.leader is None:
                # A follower fenced past the placement with no leader (the
                # failover that fenced it was never committed): it can never
                # follow the placement's leader of this older epoch, and that
                # leader -- unfenced, idle, its followers holding its log --
                # sends nothing, so nothing else would ever move (issue 23,
                # stuck34: replicas "catching up" forever after a restart).
                # Tell it where this replica stands, as to its append: it
                # steps down and resigns, and the controller fails the
                # partition over.  Said again on ticks while not caught up
                # (the word may be lost); a leader of a later epoch takes it
                # as any refusal.
                self.placed_leader = m.leader
                self.unheard_ticks = 0
                self.ask_ticks = self.retry_ticks
                return Output(
                    messages=[(m.leader, AppendResp(self.fenced_epoch, False, self.cache.end, self.hw))]
                )
            return Output()
        if m.leader == self.id:
            if self.role == LEADER and self.epoch == m.epoch:  # a repeat: just say so, to the asker
                return Output(messages=[(src, LeaderBeat(self.epoch, self.hw, self.cache.end))])
            if self.led_epoch >= m.epoch:
                # Led this epoch before a restart: leading it again could write a
                # second, different record at an (offset, epoch) a follower
                # already holds.  Say so: the controller moves to a new epoch.
                return Output(messages=[(self.controller, Resign(m.epoch))])
            return self._become_leader(m.epoch, tuple(m.replicas))
        if self.role == LEADER and self.epoch == m.epoch:
            raise SafetyError(f"{m.leader} assigned epoch {m.epoch}, which {self.id} leads")
        repeat = (self.epoch, self.leader, self.replicas) == (m.epoch, m.leader, tuple(m.replicas))
        derive = self._derives_first(m.epoch)
        out = self._step_down(m.epoch)
        self.epoch = m.epoch
        self.leader = m.leader
        self.placed_leader = None
        self.replicas = tuple(m.replicas)
        self.unheard_ticks = 0
        self.ask_ticks = self.retry_ticks
        if derive:
            # The new leader sends its appends unasked (it starts the log):
            # no word of where this replica stands is needed.
            return self._derive_first(out)
        if repeat or self.caught_up:
            # Only a replica that has not caught up since it was built (a
            # restart) says where it stands: a new leader (each epoch's)
            # sends its appends unasked, and the same assignment again (a
            # node hears each twice: from its own apply of the metadata and
            # from the controller) was answered the first time -- a word
            # more would only have the leader send its appends again (issue
            # 23: thousands of partitions failing over at once).
            return out
        # Tell the leader where this replica stands (its end and high
        # watermark; a refusal, so it claims no match): an idle leader sends
        # nothing unprompted, so a follower that restarted behind it (a high
        # watermark restored lower than it had said) would wait for the next
        # publish to hear the watermark again.
        out.messages.append((m.leader, AppendResp(self.fenced_epoch, False, self.cache.end, self.hw)))
        return out

    def _derives_first(self, epoch: int) -> bool:
        """Whether an ``Assign`` of ``epoch`` to another leader lets this
        replica derive the epoch's first record (:meth:`_derive_first`): the
        partition's first epoch, and a replica that holds nothing and has
        promised nothing -- so no leader has written to it, and it never led."""
        c = self.cache
        return (
            epoch == self.first_epoch > 0
            and self.role != LEADER
            and self.fenced_epoch == 0
            and self.led_epoch == 0
            and self.hw == 0
            and c.end == 0
            and c.log_start == 0
            and not c.runs
        )

    def _derive_first(self, out: Output) -> Output:
        """Take the first epoch's control record at offset 0 as the leader
        writes it (issue 23, create41).  The leader of a partition's first
        epoch leads an empty log -- no leader came before it, and every later
        placement has a later epoch -- so the first record it writes, and
        sends every follower, is its control record at offset 0 of that
        epoch (:meth:`_become_leader`); a replica that holds nothing holds no
        other record there.  Written here (one write with the epoch's promise)
        it joins the transaction that applies the placement on this node, and
        the leader's first append finds it held: nothing to write, only to
        answer (once this write is durable, as every answer).  The record is
        not committed by being derived: the high watermark still moves only
        when a majority holds it on disk and the leader says so."""
        self.cache.append(self.epoch, 1)
        self.stored_end = self.cache.end
        write = Write(start=0, count=1, epoch=self.epoch, control=True, fenced_epoch=self.fenced_epoch)
        out.writes = [w for w in out.writes if not _promise_only(w)]
        out.writes.append(write)
        return out

    # -- inputs ----------------------------------------------------------------------

    def receive(self, src: str, m: Message) -> Output:
        """Handle one message."""
        if isinstance(m, Append):
            return self._on_append(src, m)
        if isinstance(m, AppendResp):
            if self.role == LEADER:
                return self._on_append_resp(src, m)
            if self.leader is None and 0 < self.led_epoch < m.epoch:
                # A follower fenced past the epoch this replica last led still
                # takes it for the placement's leader (see :meth:`_on_assign`):
                # the controller did not hear that it stepped down (its
                # ``Resign`` was lost, or it was never said: a restart).  Say
                # it again; a controller that moved on ignores it.
                return Output(messages=[(self.controller, Resign(self.led_epoch))])
            return Output()
        if isinstance(m, Fence):
            return self._on_fence(src, m)
        if isinstance(m, Assign):
            return self._on_assign(src, m)
        if isinstance(m, Handoff):
            return self._on_handoff(m)
        return Output()

    def tick(self) -> Output:
        """One tick: a leader heartbeats idle followers, resends what seems
        lost, and tells the controller it still leads; a follower not caught
        up since it was built tells its silent leader where it stands."""
        out = Output()
        if self.role != LEADER:
            if not self.idle:
                # Not caught up since it was built (a restart) and no append
                # heard for ``retry_ticks``: say where this replica stands
                # again.  The word it sent on its Assign may have been lost (a
                # connection not up yet after the restart), and an idle leader
                # sends nothing unprompted; its answer (an append) catches the
                # follower up (:attr:`caught_up`: the node's readiness).  Each
                # unanswered word doubles the wait for the next (the leader may
                # lead nothing yet: a whole cluster restarting).
                self.unheard_ticks += 1
                ask = self.leader if self.leader is not None else self.placed_leader
                if self.unheard_ticks >= self.ask_ticks and ask is not None:
                    self.unheard_ticks = 0
                    self.ask_ticks = min(2 * self.ask_ticks, self.max_ask_ticks)
                    out.messages.append((ask, AppendResp(self.fenced_epoch, False, self.cache.end, self.hw)))
            return out
        if self.handoff is not None:
            to, left = self.handoff
            self.handoff = (to, left - 1) if left > 1 else None  # the pause is bounded
            out.extend(self._handoff_ready())
        runs = self.cache.runs
        # The offset of this epoch's control record: a follower that has not
        # said it holds a high watermark past it is still in the epoch's first
        # exchange (see :attr:`answering`).
        first = runs[-1][1] if runs and runs[-1][0] == self.epoch else -1
        for fid, f in self.followers.items():
            if fid in self.dead:
                continue  # nothing to a dead node: its return wakes this leader
            f.idle_ticks += 1
            queued = fid in self.answering and f.hw <= first and f.idle_ticks < ANSWERED_WAIT_TICKS
            if f.unanswered and f.next > f.match:
                # Appends in flight: their answer is awaited, not chased with a
                # heartbeat each tick (each would cost the follower a write
                # check and an answer: a follower behind thousands of new
                # leaders' appends after a failover was sent ten a second per
                # partition, issue 23).  Unanswered for ``stall_limit`` ticks
                # they count as lost and go again; each time again without an
                # answer the wait doubles, up to ``max_ask_ticks``.
                if not queued:
                    f.stalled_ticks += 1
                if f.stalled_ticks >= f.stall_limit:
                    # Assume the last batch in flight was lost and send it
                    # again -- not everything past ``match``: a new leader
                    # knows no follower's match yet (0), and thousands of
                    # them re-read their whole logs.  A follower that lacks
                    # more refuses it, naming its end, and is sent that.
                    f.next = max(f.match, f.sent_from)
                    f.stalled_ticks = 0
                    f.stall_limit = min(2 * f.stall_limit, self.max_ask_ticks)
                    out.extend(self._send(fid, f, heartbeat=True))
                continue
            if f.match < self.cache.end:
                out.extend(self._send(fid, f, heartbeat=True))
            elif f.hw < self.hw:
                # The follower holds the log but has not said it holds the
                # high watermark.  Sent already (every move of it goes out at
                # once, :meth:`_advance_hw`): its answer is awaited as an
                # append's is, and the watermark goes again only after
                # ``hw_limit`` ticks without a word, doubling each time -- not
                # every tick (issue 23: thousands of new leaders after a
                # failover each chased their busy follower ten times a second,
                # and every heartbeat was read, answered and read again,
                # lengthening the queues their first publishes waited in).
                if f.sent_hw >= self.hw:
                    if f.idle_ticks < f.hw_limit or queued:
                        continue  # (its node answers others: ours is in its queue, see :attr:`answering`)
                    f.hw_limit = min(2 * f.hw_limit, self.max_ask_ticks)
                out.extend(self._send(fid, f, heartbeat=True))
        if self.tick_beats:
            out.messages.append((self.controller, LeaderBeat(self.epoch, self.hw, self.cache.end)))
        return out


def _promise_only(w: Write) -> bool:
    """A write of the replica state alone (no records, truncation or reset)."""
    return w.count == 0 and w.truncate_to is None and not w.reset and not w.control


def _epoch_in(runs: tuple[tuple[int, int], ...], offset: int) -> int:
    """The epoch of ``offset`` within a batch's runs."""
    epoch = -1
    for e, s in runs:
        if s <= offset:
            epoch = e
        else:
            break
    return epoch


def _next_start(runs: tuple[tuple[int, int], ...], epoch: int, end: int) -> int:
    """Where the run of ``epoch`` in a batch ends."""
    for i, (e, _s) in enumerate(runs):
        if e == epoch:
            return runs[i + 1][1] if i + 1 < len(runs) else end
    return end


def _run_end(cache: EpochCache, epoch: int) -> int:
    for i, (e, _s) in enumerate(cache.runs):
        if e == epoch:
            return cache.runs[i + 1][1] if i + 1 < len(cache.runs) else cache.end
    return cache.end
