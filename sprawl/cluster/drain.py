"""Nodes that should lead nothing -- drained by the operator, or stopping --
and where their partitions' leadership goes.  Pure (issue 24).

A node is *avoided* while the cluster metadata marks it drained
(``sprawlctl cluster drain``; it survives restarts) or while gossip says it
left (a graceful stop gossips the leave before the node closes).  The
controller moves the leadership of every partition an avoided node leads to
a replica that holds every committed record (:func:`handoff_target`), never
moves a leadership *to* an avoided node, and places no new replica on a
drained one (:func:`placeable`).  A drained node keeps the replicas it has:
it stays a follower, so undraining it needs no copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

#: The gossip state of a node that stopped (or is stopping) gracefully.
LEFT = "left"
#: Gossip states of a node that is up.
UP = ("alive", "suspect")


def avoided(states: Mapping[str, str], drained: Iterable[str]) -> frozenset[str]:
    """The nodes that should lead no partition: ``drained`` ones, and those
    gossip (``states``: node id -> gossip state) says left."""
    return frozenset(drained) | {n for n, st in states.items() if st == LEFT}


def handoff_target(
    replicas: Sequence[str],
    leader: str,
    avoid: Iterable[str],
    in_sync: Iterable[str] | None,
    up: Iterable[str],
) -> str | None:
    """The replica that should take over from ``leader``: the first of
    ``replicas`` (placement order: the preferred leader first) that is up,
    not avoided, and in ``in_sync`` (holds every committed record, as the
    leader last said).  None when there is none, or ``in_sync`` is unknown:
    then the leadership stays until one catches up (a node that just
    restarted never takes a leadership before it has caught up)."""
    if in_sync is None:
        return None
    ok = set(in_sync) & set(up)
    avoid = set(avoid)
    return next((r for r in replicas if r != leader and r in ok and r not in avoid), None)


def placeable(nodes: Iterable[str], drained: Iterable[str]) -> list[str]:
    """The nodes new replicas may be placed on, sorted: ``nodes`` less the
    drained ones -- or all of ``nodes`` when every one is drained (a topic
    must be placed somewhere)."""
    every = sorted(set(nodes))
    gone = set(drained)
    rest = [n for n in every if n not in gone]
    return rest or every


def drained_nodes(metadata: object) -> list[str]:
    """The drained node ids of a cluster metadata state (none for a state
    without the field: a single node's, or a test fake's)."""
    return list(getattr(metadata, "drained", ()) or ())
