"""A topic as a node describes it: ``TopicDescription`` of ``docs/openapi.yaml`` (the answer
of ``GET`` and ``PUT /v1/topics/{topic}``) -- ``partitions`` is the count, and the
per-partition entries (``PartitionDetail``: ``partition``, ``leader``, ``epoch``,
``replicas``, ``low``, ``high_watermark``, ``log_end``, ``tiers``, ...) are the list
``partition_details``.  The one reading of that shape for every client (``sprawlctl``,
the bench engine, the test harness); anything else is a :class:`ClientError`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sprawl.client.errors import ClientError


@dataclass(frozen=True)
class TopicDescription:
    """The fields of a topic description the clients read, and the whole answer in ``raw``."""

    name: str
    partitions: int
    replication_factor: int
    storage: str
    partition_details: list[dict[str, Any]]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def parse(cls, value: Any) -> TopicDescription:
        """Read a decoded ``TopicDescription``; :class:`ClientError` when it is not one."""
        if not isinstance(value, dict):
            raise ClientError(f"not a topic description: {value!r}"[:200])
        details = value.get("partition_details")
        ok = (
            isinstance(value.get("name"), str)
            and _is_int(value.get("partitions"))
            and _is_int(value.get("replication_factor"))
            and isinstance(value.get("storage"), str)
            and isinstance(details, list)
            and all(isinstance(p, dict) and _is_int(p.get("partition")) for p in details)
        )
        if not ok:
            raise ClientError(f"not a topic description: {value!r}"[:200])
        return cls(
            name=value["name"],
            partitions=value["partitions"],
            replication_factor=value["replication_factor"],
            storage=value["storage"],
            partition_details=list(details or []),
            raw=value,
        )

    def partition(self, partition: int) -> dict[str, Any] | None:
        """The entry of one partition, or None."""
        return next((p for p in self.partition_details if p["partition"] == partition), None)

    def replicas_in_use(self) -> int:
        """How many replicas partition 0 really has when the description lists them (a topic
        asking for 3 on a one-node cluster has 1); else the replication factor."""
        first = self.partition(0)
        replicas = first.get("replicas") if first is not None else None
        if isinstance(replicas, list) and replicas:
            return len(replicas)
        return self.replication_factor


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
