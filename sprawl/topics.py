"""Topic configuration and the in-memory state of one topic.  Pure: no Twisted."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, fields
from typing import Any

from sprawl.delivery.groups import ConsumerGroup
from sprawl.log.dedup import DedupWindow, RecentIds
from sprawl.log.partition import PartitionLog

STORAGE_KINDS = ("durable", "ephemeral")


@dataclass
class TopicConfig:
    """What ``PUT /v1/topics/{topic}`` sets; persisted in the meta DB."""

    name: str
    uid: int
    partitions: int = 1
    replication_factor: int = 1
    storage: str = "durable"
    retention_ms: int | None = None
    retention_bytes: int | None = None
    max_message_bytes: int = 1000**2
    segment_bytes: int = 64 * 1000**2
    segment_ms: int = 3_600_000
    created_ms: int = 0

    @property
    def durable(self) -> bool:
        """Durable topics ack only after an fsynced commit."""
        return self.storage == "durable"

    def to_dict(self) -> dict[str, Any]:
        """JSON form (also the persisted form).  Every field is a scalar, so
        a flat copy is the same as ``dataclasses.asdict`` -- which deep-copies
        each value: ~200 lines of Python a call, run on every node for each
        topic created and twice on the node answering it (issue 23, create39)."""
        return {k: getattr(self, k) for k in TOPIC_CONFIG_FIELDS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TopicConfig:
        """Inverse of :meth:`to_dict`, ignoring unknown keys from newer versions."""
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})


#: :class:`TopicConfig`'s fields, in order (its JSON form's keys).
TOPIC_CONFIG_FIELDS = tuple(f.name for f in fields(TopicConfig))


@dataclass
class Topic:
    """A topic's partitions, dedup window and consumer groups."""

    config: TopicConfig
    logs: list[PartitionLog]
    dedup: DedupWindow
    groups: dict[str, ConsumerGroup] = field(default_factory=dict)
    #: Ids of the last minute whatever their origin (a replica remembers every
    #: record it stores here): a publish retried through a failover finds its
    #: first copy at the new leader.
    #: Ids this cluster named are kept as runs per producer (:class:`RecentIds`).
    recent: DedupWindow = field(default_factory=lambda: RecentIds(60_000, 500_000))
    rr: int = 0
    #: Set when the topic is deleted (work in flight for it must not touch storage).
    deleted: bool = False

    @property
    def name(self) -> str:
        """The topic name."""
        return self.config.name

    def partition_for(self, key: str | None) -> int:
        """Key hash (CRC-32, stable across restarts and nodes) or round robin."""
        n = len(self.logs)
        if n == 1:
            return 0
        if key is None:
            self.rr += 1
            return self.rr % n
        return zlib.crc32(key.encode()) % n

    def high_watermarks(self) -> dict[int, int]:
        """Partition → high watermark."""
        return {lg.partition: lg.high_watermark for lg in self.logs}

    def visible(self) -> dict[int, tuple[int, int]]:
        """Partition → (log start, high watermark), what consumers may read."""
        return {lg.partition: (lg.log_start, lg.high_watermark) for lg in self.logs}
