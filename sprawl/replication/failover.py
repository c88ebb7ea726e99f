"""The controller's side of one partition: notice a silent leader, fence a
majority of the replicas at the next epoch, pick the most up-to-date of them,
commit the choice, and tell the replicas.  Pure.

Why the pick is safe (Raft's election restriction, §5.4.1, with the
controller as the only voter-counter): a record acknowledged with
``acks=quorum`` is on a majority of the replicas; every majority the
controller fences intersects it, and a fenced replica refuses the old
leader from then on, so the replica with the highest ``(last_epoch, end)``
among a fenced majority holds every acknowledged record.

The choice must be committed (in the real system: a Raft proposal of the
partition's leader and epoch) before any replica hears of it --
:meth:`FailoverCore.committed` is the adapter saying it is -- so one epoch
never gets two leaders, even when a controller dies mid-failover and the
next one fences the same epoch again.

Moving leadership on purpose (load balancing): :meth:`FailoverCore.move_leader`
runs the same fencing at the next epoch with a *preferred* replica.  Once a
majority answered, the preferred replica is chosen only if it answered and
its ``(last_epoch, end)`` equals the best among the answers; the core waits
up to ``prefer_wait_ticks`` ticks for its answer, then takes the best replica
as any failover does.  Why that is as safe as taking the best: the argument
above needs only that the chosen replica (a) was fenced at the new epoch
(it answered the fence, so it refuses the old leader from then on) and (b)
is at least as up to date as every replica of a fenced majority -- the
preferred one ranks equal to the best of them, so it holds every record
acknowledged with ``acks=quorum`` (two logs with the same last epoch and end
are both prefixes of that epoch's only leader's log, hence the same).  The
commit-before-assign rule is unchanged.  A preferred replica that is behind
(for example it missed the old leader's last batch) is simply not chosen:
the move fails safe, and the old leader (or whoever is best) leads the new
epoch.  Among replicas that rank equal to the best, one outside
:attr:`FailoverCore.avoid` (nodes stopping or drained) is chosen first,
then (with a :class:`LeaderSpread`) the one with the fewest new leaderships
in the failovers under way, then the first in the placement's order: a
tie, so the same argument holds.

So that the target is not behind merely because publishes keep arriving,
a move to a confirmed leader first asks it to pause (:class:`Handoff`): it
takes no publishes for up to ``handoff_ticks`` ticks and answers
:class:`HandoffReady` once the target holds its whole log; the fencing
starts then, or when ``handoff_ticks`` ran out without the answer.  The
pause only delays the fencing; nothing above depends on it.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field

from sprawl.replication.messages import (
    Assign,
    Fence,
    FenceResp,
    Handoff,
    HandoffReady,
    LeaderBeat,
    Message,
    Resign,
)


class LeaderSpread:
    """The new leaderships chosen per node in the failovers under way, shared
    by the controller's cores (issue 23): a dead node's thousands of
    partitions go to the replicas that rank equal to the best -- usually
    every survivor -- and each such choice takes the node with the fewest so
    far, so the survivors split the work of taking them over evenly instead
    of by the placement's order (1,663 / 3,373 in one 10,000-topic run: the
    survivor with two thirds was the failover's critical path).

    It only breaks ties among replicas as up to date as the best (the
    choice's safety argument, see the module docstring, is unchanged), after
    :attr:`FailoverCore.avoid` and before the placement's (rendezvous) order,
    so the choice is deterministic given the order of the answers.  A
    deliberate move (a preferred replica) is not spread and not counted.
    The owner calls :meth:`reset` once no failover's choice is still to come."""

    def __init__(self) -> None:
        #: New leaderships chosen per node since the last :meth:`reset`.
        self.counts: dict[str, int] = {}

    def took(self, node: str) -> None:
        """``node`` was chosen to lead one more partition."""
        self.counts[node] = self.counts.get(node, 0) + 1

    def reset(self) -> None:
        """The failovers under way are all chosen: start counting anew."""
        self.counts.clear()


@dataclass
class Commit:
    """Commit ``leader`` for ``epoch`` over ``replicas``, then call :meth:`FailoverCore.committed`."""

    epoch: int
    leader: str
    replicas: tuple[str, ...]


@dataclass
class ControlOutput:
    """Messages to send, and at most one choice to commit."""

    messages: list[tuple[str, Message]] = field(default_factory=list)
    commit: Commit | None = None


@dataclass
class _Fencing:
    epoch: int
    answers: dict[str, tuple[int, int]] = field(default_factory=dict)
    ticks: int = 0
    #: The replica to choose if it is as up to date as the best (a deliberate move).
    prefer: str | None = None
    #: Ticks since a majority answered while waiting for ``prefer``.
    waited: int = 0
    #: The tick at which the replicas not yet answering are fenced again, and
    #: the gap to the next time after it (doubling: see :meth:`FailoverCore.tick`).
    retry_at: int = 0
    gap: int = 0


class FailoverCore:
    """The controller's state for one partition."""

    def __init__(
        self,
        replicas: tuple[str, ...],
        *,
        epoch: int = 0,
        leader: str | None = None,
        beat_timeout_ticks: int = 10,
        retry_ticks: int = 3,
        prefer_wait_ticks: int = 6,
        handoff_ticks: int = 10,
        stuck_ticks: int | None = None,
        landing_ticks: int = 200,
        assign_on_commit: bool = True,
    ) -> None:
        self.replicas = tuple(replicas)
        #: The committed epoch and its leader.
        self.epoch = epoch
        self.leader = leader
        self.beat_timeout_ticks = beat_timeout_ticks
        self.retry_ticks = retry_ticks
        self.prefer_wait_ticks = prefer_wait_ticks
        self.handoff_ticks = handoff_ticks
        #: Ticks without a word about this partition after which its leader
        #: fails over though its node is heard (a partition stuck on a live
        #: node); default ten beat timeouts.  See :meth:`tick`.
        self.stuck_ticks = 10 * beat_timeout_ticks if stuck_ticks is None else stuck_ticks
        #: A move waiting for the leader's :class:`HandoffReady`: (target, ticks waited).
        self.handing_off: tuple[str, int] | None = None
        self.silent_ticks = 0
        self.fencing: _Fencing | None = None
        self.committing: Commit | None = None
        #: Ticks waited since the pending choice's proposal timed out (None:
        #: it did not): its entry may still be applied, so the core keeps
        #: the choice (no new failover, no fence at a later epoch) until the
        #: applied placement reaches its epoch (:func:`sync_core` clears it)
        #: or ``landing_ticks`` pass.  See :meth:`committed`.
        self.landing: int | None = None
        self.landing_ticks = landing_ticks
        self.leader_confirmed = False
        self.hw = 0
        #: Every leader this core committed, by epoch (for checkers).
        self.history: dict[int, str] = {}
        #: Replicas that should not lead (stopping or drained): among replicas
        #: as up to date as the best, one outside this set is chosen.
        self.avoid: frozenset[str] = frozenset()
        #: Whether a committed choice is told to its replicas (``Assign``).
        #: Off where every replica's node applies the committed choice itself
        #: (the Raft metadata, :mod:`sprawl.cluster.replica_sync`): the new
        #: leader then says it leads on its own (issue 23: two frames and a
        #: second confirmation per partition of a dead node's failover), and
        #: an unconfirmed leader whose node is heard is asked again only
        #: after ``beat_timeout_ticks`` (its word lost), see :meth:`tick`.
        self.assign_on_commit = assign_on_commit
        #: Ticks after a commit during which an unconfirmed leader whose node
        #: is heard is not asked again (its node applies the choice).
        self.assign_wait = 0
        #: The (epoch, leader) being committed whose leader said it leads
        #: before this core learnt the commit (see :meth:`receive`).
        self.heard_early: tuple[int, str] | None = None
        #: Shared with the other cores of a controller: among replicas as up
        #: to date as the best, the one with the fewest new leaderships so
        #: far is chosen (None: the placement's order decides, as before).
        self.spread: LeaderSpread | None = None
        #: Fences sent again to replicas that had not answered (tests count them).
        self.fences_again = 0

    @property
    def majority(self) -> int:
        """Replicas needed for a quorum."""
        return len(self.replicas) // 2 + 1

    def tick(self, leader_heard: bool = False, heard: Container[str] = ()) -> ControlOutput:
        """One tick: start or retry a failover, or repeat an unconfirmed assignment.

        ``leader_heard``: the adapter heard the leader's node lately (its
        beats, its frames about other partitions).  Silence is then counted
        per node: the leader is not silent however long this partition's own
        word takes (a new leader busy with thousands of partitions answers
        late), and fails over only after ``stuck_ticks`` ticks without it (a
        partition stuck on a live node).  Without it (the node not heard, or
        an older node that never beats) ``beat_timeout_ticks`` of this
        partition's silence fail it over, as before.

        ``heard``: the replicas whose node the adapter hears lately (beats,
        frames).  While fencing, such a replica that has not answered yet is
        busy, not lost -- its node works through a dead node's thousands of
        fences in order, and ours is among them -- so it is fenced again only
        once ``beat_timeout_ticks`` passed (issue 23: the other survivor of a
        10,000-partition failover took every fence two or three times); a
        replica not heard is fenced again after ``retry_ticks`` as before."""
        out = ControlOutput()
        if self.committing is not None:
            if self.landing is not None:
                self.landing += 1
                if self.landing > self.landing_ticks:
                    return self.committed(False)  # it never landed: a new failover
            return out
        if self.handing_off is not None:
            to, waited = self.handing_off
            waited += 1
            self.handing_off = (to, waited)
            if waited > self.handoff_ticks:
                return self.start_failover(to)  # no word from the leader: move anyway
            if waited % self.retry_ticks == 0 and self.leader is not None:
                out.messages.append((self.leader, Handoff(self.epoch, to, self.handoff_ticks - waited + 1)))
        if self.fencing is not None:
            f = self.fencing
            f.ticks += 1
            if len(f.answers) >= self.majority:
                f.waited += 1  # only while waiting for the preferred replica
                if f.waited > self.prefer_wait_ticks:
                    return self._choose(final=True)
            if f.ticks >= f.retry_at:
                # Fenced again after ``retry_ticks``, then after twice as long
                # each time: an answer late because its node is busy (a dead
                # node's thousands of fences at once, issue 23) is not chased
                # with a fence -- a frame and an answer -- every few ticks.
                f.retry_at, f.gap = f.ticks + 2 * f.gap, 2 * f.gap
                busy = heard if f.ticks < self.beat_timeout_ticks else ()
                again = [(r, Fence(f.epoch)) for r in self.replicas if r not in f.answers and r not in busy]
                self.fences_again += len(again)
                out.messages.extend(again)
            if f.ticks > self.beat_timeout_ticks * 3:
                return self.start_failover(f.prefer)  # a majority stayed silent: try a later epoch
            return out
        self.silent_ticks += 1
        bound = self.stuck_ticks if leader_heard else self.beat_timeout_ticks
        if self.leader is None or self.silent_ticks > bound:
            return self.start_failover()
        if (
            not self.leader_confirmed
            and self.silent_ticks % self.retry_ticks == 1 % self.retry_ticks
            and not (leader_heard and self.silent_ticks <= self.assign_wait)
        ):
            # Every ``retry_ticks`` ticks, not every tick: a new controller
            # has thousands of leaders to confirm at once.  Right after a
            # commit not told (``assign_on_commit`` off), a leader whose node
            # is heard is left to apply it for ``assign_wait`` ticks.
            out.messages.append((self.leader, Assign(self.epoch, self.leader, self.replicas)))
        return out

    @property
    def idle(self) -> bool:
        """Whether :meth:`tick` has nothing to do: a confirmed leader, no move
        or failover under way (or a commit waiting for Raft, which no tick
        advances).  The adapter ticks only cores that are not idle; an idle
        core's leader is watched through its node's beat instead (a silent
        node's partitions fail over in one controller step)."""
        if self.committing is not None:
            return self.landing is None  # (one that timed out is ticked: its wait is bounded)
        return self.leader is not None and self.leader_confirmed and not self.busy

    @property
    def busy(self) -> bool:
        """A failover (or move) is under way: handing off, fencing or committing."""
        return self.handing_off is not None or self.fencing is not None or self.committing is not None

    @property
    def moving_to(self) -> str | None:
        """The target of a deliberate move under way (handing off or fencing), or None."""
        if self.handing_off is not None:
            return self.handing_off[0]
        return self.fencing.prefer if self.fencing is not None else None

    def start_failover(self, prefer: str | None = None) -> ControlOutput:
        """Fence a majority at the next epoch; with ``prefer``, choose that
        replica if it is as up to date as the best (see the module docstring)."""
        nxt = max(self.epoch, self.fencing.epoch if self.fencing else 0) + 1
        self.handing_off = None
        gap = max(1, self.retry_ticks)
        self.fencing = _Fencing(
            nxt, prefer=prefer if prefer in self.replicas else None, retry_at=gap, gap=gap
        )
        self.leader_confirmed = False
        self.assign_wait = 0
        self.heard_early = None
        return ControlOutput(messages=[(r, Fence(nxt)) for r in self.replicas])

    def move_leader(self, to: str) -> ControlOutput | None:
        """Move leadership to the replica ``to`` on purpose (load balancing).

        None (and nothing starts) when ``to`` is not a replica, already
        leads, or a failover or move is under way.  Otherwise the outputs go
        out as any failover's: the commit that follows names ``to`` if it was
        as up to date as the best of a fenced majority, else the best.  A
        confirmed leader is first asked to pause (``Handoff``, at most
        ``handoff_ticks``; 0 skips it) so the target can catch up; then it is
        fenced.  Publishes to it meanwhile are refused and retried."""
        if to not in self.replicas or to == self.leader or self.busy:
            return None
        if self.handoff_ticks > 0 and self.leader is not None and self.leader_confirmed:
            self.handing_off = (to, 0)
            return ControlOutput(messages=[(self.leader, Handoff(self.epoch, to, self.handoff_ticks))])
        return self.start_failover(prefer=to)

    def cancel_move(self) -> None:
        """Forget a move still waiting for the leader's handoff (e.g. the
        partition's epoch changed under it); a fencing already started goes on."""
        self.handing_off = None

    def receive(self, src: str, m: Message) -> ControlOutput:
        """A replica's answer (fence) or a leader's heartbeat."""
        if isinstance(m, LeaderBeat):
            c = self.committing
            if src == self.leader and m.epoch == self.epoch:
                self.silent_ticks = 0
                self.leader_confirmed = True
                self.hw = max(self.hw, m.hw)
            elif c is not None and src == c.leader and m.epoch == c.epoch:
                # The chosen leader leads the epoch being committed already:
                # its node applied the entry before this one did (a 10,000-
                # partition entry is applied in slices on every node, issue
                # 23).  Its word counts once the commit is answered.
                self.heard_early = (c.epoch, c.leader)
                self.hw = max(self.hw, m.hw)
            return ControlOutput()
        if isinstance(m, Resign):
            if (
                src == self.leader
                and m.epoch == self.epoch
                and self.fencing is None
                and self.committing is None
            ):
                return self.start_failover()
            return ControlOutput()
        if isinstance(m, HandoffReady):
            h = self.handing_off
            if h is not None and src == self.leader and m.epoch == self.epoch and m.to == h[0]:
                return self.start_failover(h[0])
            return ControlOutput()
        if isinstance(m, FenceResp) and self.fencing is not None and src in self.replicas:
            f = self.fencing
            if m.epoch != f.epoch:
                return ControlOutput()
            if not m.ok:
                return self.start_failover(f.prefer)  # someone promised a later epoch already
            f.answers[src] = (m.last_epoch, m.end)
            if len(f.answers) >= self.majority and self.committing is None:
                return self._choose(final=False)
        return ControlOutput()

    def _choose(self, final: bool) -> ControlOutput:
        """With a fenced majority's answers: the preferred replica if it is as
        up to date as the best, else the best; without the preferred one's
        answer, wait unless ``final``."""
        f = self.fencing
        assert f is not None and self.committing is None
        rank = {r: i for i, r in enumerate(self.replicas)}
        spread = self.spread if f.prefer is None else None
        taken = spread.counts if spread is not None else {}
        best = max(f.answers, key=lambda r: (*f.answers[r], r not in self.avoid, -taken.get(r, 0), -rank[r]))
        chosen = best
        if f.prefer is not None:
            if f.prefer in f.answers:
                if f.answers[f.prefer] == f.answers[best]:
                    chosen = f.prefer
            elif not final:
                return ControlOutput()  # give it prefer_wait_ticks to answer
        if spread is not None:
            spread.took(chosen)
        self.committing = Commit(f.epoch, chosen, self.replicas)
        return ControlOutput(commit=self.committing)

    def committed(self, ok: bool = True, may_land: bool = False) -> ControlOutput:
        """The pending choice is committed (or failed to be: retry later).

        ``may_land``: it failed by a timeout -- the entry may still be
        applied (Raft behind a backlog: a restarted 10,000-partition cluster's
        failover entries).  The choice is then kept, and the core waits for
        the applied placement to reach its epoch (:func:`sync_core`) for up
        to ``landing_ticks`` ticks before it fails over anew.  Before, it
        fenced the replicas again at once and proposed again: entries piled
        up behind the backlog, and the one that landed late named a leader
        its followers had since promised away (fenced past the placement),
        which started yet another failover (issue 23, restart36: epochs
        climbing to 5, followers "catching up" for minutes)."""
        c = self.committing
        if not ok and c is not None and self.epoch >= c.epoch and self.leader is not None:
            # The applied placement reached this choice's epoch while it was
            # being committed (:func:`sync_core` brought the core to it): the
            # choice was refused because a choice of this epoch or a later
            # one -- another controller's, made before this one took over --
            # is committed already.  That placement is followed: its leader is
            # asked to confirm, as after any commit.  Before, the core forgot
            # its leader and failed over at the next tick, a new epoch for a
            # partition whose leader was fine (a chaos run's ``stale_epoch``).
            self.committing, self.landing, self.fencing = None, None, None
            self.heard_early = None
            self.silent_ticks = 0
            return ControlOutput()
        if not ok and may_land and c is not None and self.landing is None:
            self.landing = 0
            return ControlOutput()
        self.landing = None
        self.committing = None
        early, self.heard_early = self.heard_early, None
        if c is None:
            return ControlOutput()
        if not ok:
            self.fencing = None
            self.leader = None
            return ControlOutput()
        self.fencing = None
        heard = early == (c.epoch, c.leader) or (
            self.leader_confirmed and (self.epoch, self.leader) == (c.epoch, c.leader)
        )
        self.epoch, self.leader = c.epoch, c.leader
        self.history[c.epoch] = c.leader
        self.silent_ticks = 0
        if heard:
            self.leader_confirmed = True
            # The committed entry was applied here before the commit was
            # answered (the adapter brought this core to it), or the new
            # leader's node applied it before this one, and the new leader
            # already said it leads this epoch:
            # the Assigns would only be answered again (issue 23: two frames
            # and a confirmation per partition of a dead node's failover).
            # Followers learn the epoch from their node's apply and from the
            # leader's appends.
            return ControlOutput()
        self.leader_confirmed = False
        if not self.assign_on_commit:
            # Every replica's node applies the committed choice (the adapter
            # says so): the leader says it leads once it took over.
            self.assign_wait = self.beat_timeout_ticks
            return ControlOutput()
        return ControlOutput(messages=[(r, Assign(c.epoch, c.leader, c.replicas)) for r in c.replicas])
