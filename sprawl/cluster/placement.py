"""Rendezvous (highest-random-weight) placement of partitions.  Pure.

Every node computes the same replica list for ``(topic, partition)`` from the
same member list; adding or removing a node moves only the partitions whose
top-``k`` set it enters or leaves.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable


def weight(node_id: str, topic: str, partition: int) -> int:
    """The node's weight for one partition (a stable 64-bit hash)."""
    h = hashlib.blake2b(f"{topic}\0{partition}\0{node_id}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "big")


def replicas(topic: str, partition: int, nodes: Iterable[str], k: int) -> list[str]:
    """The ``k`` nodes of highest weight, first = preferred leader."""
    return list(_ranked(topic, partition, tuple(sorted(set(nodes))))[: max(k, 0)])


@functools.lru_cache(maxsize=16384)
def _ranked(topic: str, partition: int, nodes: tuple[str, ...]) -> tuple[str, ...]:
    """Every node by falling weight (cached: the controller asks every tick)."""
    return tuple(sorted(nodes, key=lambda n: (weight(n, topic, partition), n), reverse=True))


def raft_id_of(node_id: str) -> int:
    """The Raft id of a node: a stable non-zero 63-bit hash of its node id."""
    h = hashlib.blake2b(node_id.encode(), digest_size=8, person=b"sprawl-raft-id")
    return (int.from_bytes(h.digest(), "big") & ((1 << 63) - 1)) or 1
