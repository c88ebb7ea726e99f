"""Recovery from a lost majority of Raft voters (``--force-new-cluster``).  Pure.

When a majority of the voters is gone for good, Raft can never commit again:
no election can be won and no configuration change can be committed.  The
way back is to rebuild, on one survivor, a one-voter configuration from what
that survivor holds, in a new cluster (a new cluster id, so the old
configuration's remnants can never exchange Raft messages with it):

1. :func:`majority_reachable` -- refuse unless a majority of the voters
   cannot be reached: the survivor asks every other registered node for its
   Raft status for a bounded time, and counts the voters that answer *in the
   old cluster* (the same cluster id).  A reachable majority means the
   cluster can still elect a leader; forcing a new one would split it.
2. :func:`recover_placement` -- every partition keeps the replicas that are
   still there (the recovering node and the nodes that answered), and the
   usual rules choose its leader among them; one that no survivor holds is
   given to the recovering node, empty (its records are lost).  The
   controller then grows each replica set back to its replication factor as
   nodes join.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


def majority_reachable(voters: Iterable[str], me: str, answered: Iterable[str]) -> bool:
    """Whether ``me`` plus the voters that ``answered`` (in the same cluster)
    are a majority of ``voters``."""
    vs = set(voters)
    reach = (set(answered) | {me}) & vs
    return len(reach) >= len(vs) // 2 + 1


@dataclass
class RecoveryPlan:
    """The placement after recovery, and what it did to each partition."""

    placement: dict[str, list[dict[str, Any]]]
    #: (topic, partition) the recovering node holds a replica of.
    kept: list[tuple[str, int]] = field(default_factory=list)
    #: (topic, partition) held only by other survivors -> its (named) leader.
    handed: dict[tuple[str, int], str] = field(default_factory=dict)
    #: (topic, partition) no survivor held: given to the recovering node, empty.
    lost: list[tuple[str, int]] = field(default_factory=list)


def recover_placement(
    placement: dict[str, list[dict[str, Any]]], me: str, survivors: Iterable[str]
) -> RecoveryPlan:
    """The placement of a forced new cluster on ``me`` (see the module docstring).

    ``survivors`` are the other nodes known to be up (they answered); every
    other node is treated as lost.  Per partition, the replicas that survive:

    * all of them, the leader included: unchanged;
    * none: the partition is given to ``me``, empty -- its records are lost;
    * one: it leads the partition alone (everything it stored counts as
      committed);
    * several, the leader among them: it keeps leading them;
    * several, the leader lost: the lost leader stays named, so the
      controller fails the partition over as usual -- it fences a majority of
      the surviving replicas and picks the most up-to-date one, which holds
      every record acknowledged to a quorum that survived.

    Every changed partition moves to the next epoch.  The input is not modified."""
    alive = set(survivors) | {me}
    out: dict[str, list[dict[str, Any]]] = {}
    plan = RecoveryPlan(out)
    for name in sorted(placement):
        parts: list[dict[str, Any]] = []
        for p, pl in enumerate(placement[name]):
            reps = [str(r) for r in pl.get("replicas") or ()]
            leader = str(pl.get("leader") or "")
            keep = [r for r in reps if r in alive]
            new = dict(pl)
            if keep == reps and reps and leader in keep:
                parts.append(new)  # nothing lost
            else:
                if not keep:
                    leader, keep = me, [me]
                    plan.lost.append((name, p))
                elif len(keep) == 1:
                    leader = keep[0]
                elif leader in keep:
                    keep = [leader, *(r for r in keep if r != leader)]
                new.update(replicas=keep, leader=leader, epoch=int(pl.get("epoch", 0)) + 1)
                new.pop("goal", None)  # a load move's goal may name lost nodes
                parts.append(new)
            if (name, p) in plan.lost:
                continue
            if me in keep:
                plan.kept.append((name, p))
            else:
                plan.handed[(name, p)] = leader
        out[name] = parts
    return plan
