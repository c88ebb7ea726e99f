"""The memory budget: hot tails evicted, ephemeral tails spilled to LMDB and
their log ends checkpointed."""

from __future__ import annotations

import msgspec
from twisted.logger import Logger

from sprawl.log.partition import PartitionLog
from sprawl.pubsub.reads import Reads
from sprawl.storage import keys
from sprawl.storage.lmdb import Op

_json_encode = msgspec.json.encode

log = Logger()


class MemoryBudget(Reads):
    """Keeps hot tails within ``--memory-budget``."""

    def enforce_memory_budget(self, spill: bool = True) -> None:
        """Keep hot tails within ``--memory-budget``: evict stored records,
        spill ephemeral ones to LMDB first (on ticks; ``spill=False`` only evicts)."""
        budget = self.config.memory_budget
        logs = [lg for t in self.topics.values() for lg in t.logs]
        total = sum(lg.hot_bytes for lg in logs)
        if total <= budget:
            return
        target = int(budget * 0.8)
        for lg in sorted(logs, key=lambda x: x.hot_bytes, reverse=True):
            if total <= target:
                break
            share = max(0, lg.hot_bytes - (total - target))
            total -= lg.evict(share)
        if total > budget and spill:
            self._spill_ephemeral()

    def _spill_ephemeral(self) -> None:
        for t in self.topics.values():
            if t.config.durable:
                continue
            uid = t.config.uid
            for lg in t.logs:
                p = lg.partition
                queued = self._spilling.get((uid, p), 0)
                recs = [r for r in lg.unstored() if r.offset >= queued]
                if not recs:
                    continue
                ops = self.store.put_records(uid, p, recs)
                for s in lg.segments:
                    if s.last >= recs[0].offset:
                        ops.append(
                            ("p", "segments", keys.segment_key(uid, p, s.base), _json_encode(s.to_tuple()))
                        )
                end = recs[-1].offset + 1
                self._spilling[(uid, p)] = end  # later ticks spill only what follows
                d = self.store.write(ops, sum(r.size for r in recs))

                def spilled(_: object, lg: PartitionLog = lg, end: int = end) -> None:
                    lg.stored(end)

                d.addCallback(spilled)
                d.addErrback(lambda f: log.failure("ephemeral spill failed", f))

    def _checkpoint_ephemeral(self, force: bool = False) -> None:
        """Remember ephemeral partitions' log ends so offsets are not reused after a restart."""
        ops: list[Op] = []
        for t in self.topics.values():
            if t.config.durable:
                continue
            for lg in t.logs:
                key = (t.config.uid, lg.partition)
                if self._ephemeral_checkpoint.get(key) != lg.next_offset or force:
                    self._ephemeral_checkpoint[key] = lg.next_offset
                    ops.append(
                        (
                            "p",
                            "meta",
                            keys.partition_meta_key(*key),
                            _json_encode({"log_start": lg.log_start, "next_offset": lg.next_offset}),
                        )
                    )
        if ops:
            self.store.write(ops).addErrback(lambda f: None)
