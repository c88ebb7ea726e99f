"""Metadata of many single-partition topics on three nodes (the controller's and
the failover apply's count tests at 1,000-10,000 partitions)."""

from __future__ import annotations

from collections.abc import Sequence

from sprawl.cluster.metadata import Metadata


def round_robin(partitions: int, nodes: Sequence[str], leader: str | None = None) -> Metadata:
    """``partitions`` topics ``t00000``... of one partition each, replicated on
    every node of ``nodes`` (raft ids 1, 2, ... in that order), the leaders
    spread round robin -- or all on ``leader``."""
    meta = Metadata()
    for i, n in enumerate(nodes):
        meta.nodes[n] = {"raft_id": i + 1, "peer": "", "http": ""}
    for i in range(partitions):
        name = f"t{i:05d}"
        meta.topics[name] = {
            "config": {"partitions": 1, "replication_factor": len(nodes)},
            "created_index": 1,
            "groups": {},
        }
        reps = [nodes[(i + k) % len(nodes)] for k in range(len(nodes))]
        if leader is not None:
            reps = [leader, *(n for n in nodes if n != leader)]
        meta.placement[name] = [{"replicas": reps, "leader": reps[0], "epoch": 1}]
    return meta
