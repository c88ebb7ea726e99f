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
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sprawl.replication.messages import Assign, Fence, FenceResp, LeaderBeat, Message


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
    ) -> None:
        self.replicas = tuple(replicas)
        #: The committed epoch and its leader.
        self.epoch = epoch
        self.leader = leader
        self.beat_timeout_ticks = beat_timeout_ticks
        self.retry_ticks = retry_ticks
        self.silent_ticks = 0
        self.fencing: _Fencing | None = None
        self.committing: Commit | None = None
        self.leader_confirmed = False
        self.hw = 0
        #: Every leader this core committed, by epoch (for checkers).
        self.history: dict[int, str] = {}

    @property
    def majority(self) -> int:
        """Replicas needed for a quorum."""
        return len(self.replicas) // 2 + 1

    def tick(self) -> ControlOutput:
        """One tick: start or retry a failover, or repeat an unconfirmed assignment."""
        out = ControlOutput()
        if self.committing is not None:
            return out
        if self.fencing is not None:
            self.fencing.ticks += 1
            if self.fencing.ticks % self.retry_ticks == 0:
                out.messages.extend(
                    (r, Fence(self.fencing.epoch)) for r in self.replicas if r not in self.fencing.answers
                )
            if self.fencing.ticks > self.beat_timeout_ticks * 3:
                return self.start_failover()  # a majority stayed silent: try a later epoch
            return out
        self.silent_ticks += 1
        if self.leader is None or self.silent_ticks > self.beat_timeout_ticks:
            return self.start_failover()
        if not self.leader_confirmed:
            out.messages.append((self.leader, Assign(self.epoch, self.leader, self.replicas)))
        return out

    def start_failover(self) -> ControlOutput:
        """Fence a majority at the next epoch (also: move leadership on purpose)."""
        nxt = max(self.epoch, self.fencing.epoch if self.fencing else 0) + 1
        self.fencing = _Fencing(nxt)
        self.leader_confirmed = False
        return ControlOutput(messages=[(r, Fence(nxt)) for r in self.replicas])

    def receive(self, src: str, m: Message) -> ControlOutput:
        """A replica's answer (fence) or a leader's heartbeat."""
        if isinstance(m, LeaderBeat):
            if src == self.leader and m.epoch == self.epoch:
                self.silent_ticks = 0
                self.leader_confirmed = True
                self.hw = max(self.hw, m.hw)
            return ControlOutput()
        if isinstance(m, FenceResp) and self.fencing is not None and src in self.replicas:
            f = self.fencing
            if m.epoch != f.epoch:
                return ControlOutput()
            if not m.ok:
                return self.start_failover()  # someone promised a later epoch already
            f.answers[src] = (m.last_epoch, m.end)
            if len(f.answers) >= self.majority and self.committing is None:
                rank = {r: i for i, r in enumerate(self.replicas)}
                best = max(f.answers, key=lambda r: (*f.answers[r], -rank[r]))
                self.committing = Commit(f.epoch, best, self.replicas)
                return ControlOutput(commit=self.committing)
        return ControlOutput()

    def committed(self, ok: bool = True) -> ControlOutput:
        """The pending choice is committed (or failed to be: retry later)."""
        c = self.committing
        self.committing = None
        if c is None:
            return ControlOutput()
        if not ok:
            self.fencing = None
            self.leader = None
            return ControlOutput()
        self.fencing = None
        self.epoch, self.leader = c.epoch, c.leader
        self.history[c.epoch] = c.leader
        self.silent_ticks = 0
        self.leader_confirmed = False
        return ControlOutput(messages=[(r, Assign(c.epoch, c.leader, c.replicas)) for r in c.replicas])
