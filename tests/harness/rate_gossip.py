"""A stand-in for gossip's member views carrying partition rates (forecast tests)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from sprawl.cluster.dataplane import DataPlane
from sprawl.cluster.metadata import Metadata
from sprawl.testing import FakeRPC


class RateGossip:
    """``member_views()`` of nodes leading partitions at given msgs/s (the
    test changes :attr:`rates`), and ``live_member_ids()``: the two calls the
    traffic feed makes of :class:`sprawl.gossip.membership.Membership`'s
    adapter."""

    def __init__(self, rates: dict[str, dict[tuple[str, int], float]]) -> None:
        self.rates = rates

    def member_views(self) -> list[dict[str, Any]]:
        """One alive view per node, its partitions' rates sorted."""
        return [
            {
                "id": n,
                "state": "alive",
                "partition_rates": [
                    {"topic": t, "partition": p, "msgs_s": m, "bytes_s": 0.0}
                    for (t, p), m in sorted(r.items())
                ],
            }
            for n, r in sorted(self.rates.items())
        ]

    def live_member_ids(self) -> list[str]:
        """Every node named in :attr:`rates`."""
        return sorted(self.rates)


def rate_plane(gossip: RateGossip, clock: Any, forecasts: Any = None) -> DataPlane:
    """A controller's data plane (node ``a``, the Raft leader) over a topic of
    four partitions replicated on a and b (a leads 0 and 1, b leads 2 and 3),
    fed partition rates by ``gossip`` and forecasts by ``forecasts`` (the
    feed's ``partition_forecasts``, as the node wires it; None: none)."""
    meta = Metadata()
    for i, n in enumerate(["a", "b"]):
        meta.nodes[n] = {"raft_id": i + 1, "peer": "", "http": ""}
    meta.topics["t"] = {"config": {"replication_factor": 2, "partitions": 4}}
    leaders = {0: "a", 1: "a", 2: "b", 3: "b"}
    meta.placement["t"] = [{"leader": leaders[p], "replicas": ["a", "b"], "epoch": 1} for p in range(4)]
    control = SimpleNamespace(
        metadata=meta,
        leader_name="a",
        dead_grace=30.0,
        is_leader=True,
        watch_topics=lambda listener: None,
        is_foreign=lambda view: False,
    )
    broker = SimpleNamespace(topics={}, notify=lambda t, p: None)
    return DataPlane(
        "a",
        broker,  # type: ignore[arg-type]
        control,  # type: ignore[arg-type]
        SimpleNamespace(handlers={}),  # type: ignore[arg-type]
        FakeRPC(),  # type: ignore[arg-type]
        clock,
        gossip,
        forecasts=forecasts,
    )
