"""The JSON views of a topic: ``GET /v1/topics/{topic}`` and one line of
``GET /v1/topics``."""

from __future__ import annotations

from typing import Any

from sprawl.log.partition import PartitionLog
from sprawl.log.segments import Segment
from sprawl.pubsub.retention import Retention
from sprawl.topics import Topic


class Views(Retention):
    """Describes topics."""

    def describe_topic(self, t: Topic) -> dict[str, Any]:
        """``GET /v1/topics/{topic}``."""
        parts = []
        for lg in t.logs:
            d = lg.describe()
            hs = lg.hot_start
            mem_n = max(0, lg.next_offset - hs) if lg.hot else 0
            remote = [s for s in lg.segments if s.remote is not None]
            lmdb_low = max(lg.log_start, remote[-1].last + 1) if remote else lg.log_start
            lmdb_high = lg.stored_end if t.config.durable else min(lg.stored_end, hs)
            lmdb_bytes = sum(s.bytes for s in lg.segments if s.base < lmdb_high and s.remote is None)
            d["tiers"] = {
                "memory": {
                    "low": hs if lg.hot else None,
                    "high": lg.next_offset if lg.hot else None,
                    "messages": mem_n,
                    "bytes": lg.hot_bytes,
                },
                "lmdb": {
                    "low": lmdb_low if lmdb_high > lmdb_low else None,
                    "high": lmdb_high if lmdb_high > lmdb_low else None,
                    "messages": max(0, lmdb_high - lmdb_low),
                    "bytes": lmdb_bytes,
                },
                "s3": self._s3_tier_view(t, lg, remote),
            }
            d["damaged"] = self.integrity.partition_view(t, lg.partition)
            parts.append(d)
        out = t.config.to_dict()
        out.pop("uid", None)
        out["messages"] = sum(max(0, lg.high_watermark - lg.log_start) for lg in t.logs)
        out["bytes"] = sum(p["bytes"] for p in parts)
        out["groups"] = sorted(t.groups)
        out["partition_details"] = parts
        return out

    def _s3_tier_view(self, t: Topic, lg: PartitionLog, remote: list[Segment]) -> dict[str, Any]:
        """The ``s3`` entry of a partition's ``tiers``: range, bytes, objects and upload status."""
        view: dict[str, Any] = {
            "enabled": self.tier is not None,
            "low": remote[0].base if remote else None,
            "high": remote[-1].last + 1 if remote else None,
            "messages": sum(s.count for s in remote),
            "bytes": sum(s.bytes for s in remote),
            "segments": len(remote),
            "object_bytes": sum(s.remote.size for s in remote if s.remote is not None),
        }
        if self.tier is not None:
            view.update(self.tier.partition_status(t.config.uid, lg.partition))
            # Only the partition's leader uploads (and trims); the others follow.
            rl = self.remote_log
            view["uploader"] = (
                rl is not None and t.config.durable and rl.leader_epoch(t, lg.partition) is not None
            )
            view["legacy_segments"] = len(self._legacy.get((t.config.uid, lg.partition), ()))
        return view

    def summarize_topic(self, t: Topic) -> dict[str, Any]:
        """One line of ``GET /v1/topics``."""
        return {
            "name": t.name,
            "partitions": len(t.logs),
            "replication_factor": t.config.replication_factor,
            "storage": t.config.storage,
            "messages": sum(max(0, lg.high_watermark - lg.log_start) for lg in t.logs),
            "bytes": sum(s.bytes for lg in t.logs for s in lg.segments),
            "high_watermarks": [lg.high_watermark for lg in t.logs],
            "groups": len(t.groups),
        }
