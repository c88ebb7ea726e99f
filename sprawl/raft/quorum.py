"""Majority arithmetic: the commit index from match indexes, and vote tallies."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping


class VoteResult(enum.Enum):
    """Outcome of an election so far."""

    PENDING = 0
    WON = 1
    LOST = 2


def majority(n: int) -> int:
    """Votes needed among ``n`` voters."""
    return n // 2 + 1


def committed_index(voters: Iterable[int], match: Mapping[int, int]) -> int:
    """The largest index stored on a majority of ``voters`` (0 without voters).

    ``match`` maps a voter to the highest index known to be on its disk;
    voters missing from it count as 0.
    """
    ids = list(voters)
    if not ids:
        return 0
    idx = sorted((match.get(v, 0) for v in ids), reverse=True)
    return idx[majority(len(ids)) - 1]


def vote_result(voters: Iterable[int], votes: Mapping[int, bool]) -> VoteResult:
    """Tally ``votes`` (voter -> granted) among ``voters``; non-voters' votes are ignored."""
    ids = set(voters)
    if not ids:
        return VoteResult.LOST
    need = majority(len(ids))
    granted = sum(1 for v, g in votes.items() if v in ids and g)
    rejected = sum(1 for v, g in votes.items() if v in ids and not g)
    if granted >= need:
        return VoteResult.WON
    if len(ids) - rejected < need:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Iterable[int], active: Iterable[int]) -> bool:
    """Whether ``active`` contains a majority of ``voters``."""
    ids = set(voters)
    return bool(ids) and len(ids & set(active)) >= majority(len(ids))
