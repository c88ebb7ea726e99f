"""Which membership change the Raft leader makes next.  Pure.

The leader calls :func:`next_change` on every controller tick with what it
sees; at most one change is in flight at a time (Raft's one-server rule), so
the cluster walks towards its target one step per committed change:

1. a live member that Raft does not know joins as a learner;
2. a caught-up learner is promoted while there are fewer voters than the
   target, or when it will replace a voter dead for longer than the grace;
3. a voter dead for longer than the grace is removed -- only when the number
   of voters left is still a majority of the number before the removal, so a
   cluster never shrinks below a majority of what it was (1-of-2 is
   refused); whether the change can commit at all is Raft's business (it
   needs a live majority of the current voters);
4. a learner dead for longer than the grace is removed.

The target is 1 voter below 3 live members, 3 below 5, else 5: even-sized
voter sets add load without adding fault tolerance.

A newcomer is added only once it is *addable* (its name and addresses are
registered in the metadata); registering is a normal entry, so every
newcomer is registered at once while the configuration changes go one at a
time.

:func:`strength` says how many voter failures the configuration survives
now (:class:`Strength`): what ``GET /v1/cluster`` reports and what
``/readyz?fault_tolerant=1`` waits for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sprawl.raft.messages import ConfChange, ConfChangeType


def target_voters(live_members: int, limit: int = 5) -> int:
    """How many voters a cluster of ``live_members`` should have."""
    n = min(live_members, limit)
    if n >= 5:
        return 5
    if n >= 3:
        return 3
    return 1


@dataclass(frozen=True)
class View:
    """What the leader knows when it decides."""

    leader: int
    voters: frozenset[int]
    learners: frozenset[int]
    #: Raft ids of members gossip reports alive or suspect (the leader included).
    live: frozenset[int]
    #: Raft id -> seconds it has been dead (gossip), for members in the configuration.
    dead_for: dict[int, float] = field(default_factory=dict)
    #: Learners that hold everything committed.
    caught_up: frozenset[int] = frozenset()
    grace: float = 30.0
    max_voters: int = 5
    #: Newcomers that may be added now (registered); None: every live one.
    addable: frozenset[int] | None = None


def next_change(v: View) -> ConfChange | None:
    """The one change to propose now, or None."""
    members = v.voters | v.learners
    target = target_voters(len(v.live), v.max_voters)
    dead_voters = sorted(n for n in v.voters if v.dead_for.get(n, 0.0) > v.grace and n != v.leader)
    ready = sorted(n for n in v.learners if n in v.caught_up and n in v.live)
    # 1. newcomers
    for n in sorted(v.live - members):
        if v.addable is None or n in v.addable:
            return ConfChange(ConfChangeType.ADD_LEARNER, n)
    live_voters = len(v.voters - set(dead_voters))
    # 2. promotions
    if ready and (len(v.voters) < target or (dead_voters and live_voters < target)):
        return ConfChange(ConfChangeType.PROMOTE, ready[0])
    # 3. dead voters
    for n in dead_voters:
        left = len(v.voters) - 1
        if left >= len(v.voters) // 2 + 1:
            return ConfChange(ConfChangeType.REMOVE, n)
    # 4. dead learners
    for n in sorted(v.learners):
        if v.dead_for.get(n, 0.0) > v.grace:
            return ConfChange(ConfChangeType.REMOVE, n)
    return None


def quorum(voters: int) -> int:
    """Votes a configuration of ``voters`` needs: a majority."""
    return voters // 2 + 1


@dataclass(frozen=True)
class Strength:
    """How fault-tolerant the Raft configuration is now (see :func:`strength`)."""

    voters: int
    live_voters: int
    learners: int
    target: int

    @property
    def fault_tolerance(self) -> int:
        """Voters that may fail (on top of those already down) while a majority
        remains -- 0 while the configuration is below its target, since a
        configuration still growing is not what the cluster promises."""
        if self.voters < self.target:
            return 0
        return max(0, self.live_voters - quorum(self.voters))

    @property
    def fault_tolerant(self) -> bool:
        """The voter target is reached and every voter is up, so the cluster
        survives every failure its size is meant to (3 voters: one; 5: two).
        A lone node is as fault-tolerant as one node can be.  Not while a voter
        is down, even when the members left up make a smaller target: a
        3-voter configuration with one voter gone survives nothing more.
        ``/readyz?fault_tolerant=1`` answers 200 exactly when this holds."""
        return self.voters >= self.target and self.live_voters == self.voters

    def as_dict(self) -> dict[str, int | bool]:
        """The fields ``GET /v1/cluster`` shows in ``raft``."""
        return {
            "target_voters": self.target,
            "live_voters": self.live_voters,
            "fault_tolerance": self.fault_tolerance,
            "fault_tolerant": self.fault_tolerant,
        }


def strength(
    voters: frozenset[int] | set[int],
    learners: frozenset[int] | set[int],
    live: frozenset[int] | set[int],
    max_voters: int = 5,
) -> Strength:
    """The configuration's strength: ``live`` are the Raft ids gossip holds
    alive or suspect (this node included); the target is
    :func:`target_voters` of how many that is."""
    return Strength(
        voters=len(voters),
        live_voters=len(set(voters) & set(live)),
        learners=len(learners),
        target=target_voters(len(live), max_voters),
    )
