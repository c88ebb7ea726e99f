"""The memory budget: hot tails evicted, ephemeral tails spilled to LMDB and
their log ends checkpointed.

``--memory-budget`` bounds the memory of the node's message data, each pool
counted by what it really takes (measured object overheads, not only message
bytes; :meth:`MemoryBudget.memory_pools`): the hot tails' records, their
cached JSON/SSE encodings, the dedup windows, and the writes queued for LMDB.
When the pools pass the budget the hot tails are evicted (oldest stored
records first, biggest tails first) until the pools hold 80% of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec
from twisted.logger import Logger

from sprawl.log.partition import PartitionLog
from sprawl.log.record import Record
from sprawl.pubsub.memory_report import process_memory, release_free_memory
from sprawl.pubsub.reads import Reads
from sprawl.storage import keys
from sprawl.storage.lmdb import TXN_BYTES, Op

if TYPE_CHECKING:
    from sprawl.topics import Topic

_json_encode = msgspec.json.encode

log = Logger()

#: Memory a write queued for LMDB takes per byte of its records' sizes (the
#: storage value, its key and the op tuples: about 1.8x for 100-byte
#: messages, 1.2x for 1 KB ones; the larger figure is charged).
PENDING_MEMORY_FACTOR = 2
#: The part of the budget eviction brings the pools down to.
EVICT_TO = 0.8
#: The most of the budget the dedup windows may take: past it each forgets
#: its oldest ids (the biggest window first) -- the window is then shorter
#: than ``--dedup-window``.
DEDUP_SHARE = 0.5
#: When the process is beyond its baseline by more than its pools plus this
#: part of the budget, the C allocator's free pages are given back
#: (``malloc_trim``, at most once a second) before anything is evicted: what
#: glibc keeps after small frees was ~14 MB of a 64 MB budget's node in the
#: soak (docs/benchmarks.md).
TRIM_GAP = 1 / 16


def take_chunks(recs: list[Record], max_bytes: int) -> list[list[Record]]:
    """``recs`` cut, in order, into runs whose sizes sum to at most
    ``max_bytes`` (a larger record is a run of its own)."""
    out: list[list[Record]] = []
    run: list[Record] = []
    total = 0
    for r in recs:
        if run and total + r.size > max_bytes:
            out.append(run)
            run, total = [], 0
        run.append(r)
        total += r.size
    if run:
        out.append(run)
    return out


class MemoryBudget(Reads):
    """Keeps hot tails within ``--memory-budget``."""

    _dedup_warned = float("-inf")
    _last_release = float("-inf")
    #: Whether the budget holds the whole process to it too (its RssAnon
    #: beyond the baseline): set by the composition root, whose node owns its
    #: process -- a broker in a test shares its process with everything else.
    bound_process = False
    #: RssAnon of the idle node less its pools, read at the first tick (None before, or off Linux).
    memory_baseline: int | None = None

    def measure_memory_baseline(self) -> None:
        """Read the process's idle baseline once (the first tick: imports,
        LMDB and the recovered state are in; no load yet)."""
        if self.memory_baseline is not None:
            return
        anon = process_memory().get("rss_anon")
        if anon is not None:
            self.memory_baseline = max(0, anon - self.memory_used())

    def memory_pools(self) -> dict[str, int]:
        """Bytes each pool of message data takes now, as the budget counts them:
        ``hot_records`` (the hot tails' records), ``encodings`` (their cached
        JSON and SSE encodings), ``dedup`` (the idempotence windows' ids) and
        ``pending_writes`` (records queued for or in an LMDB commit)."""
        records = encodings = dedup = 0
        for t in self.topics.values():
            dedup += t.dedup.memory + t.recent.memory
            for lg in t.logs:
                records += lg.hot_records_memory
                encodings += lg.account.encoded
        return {
            "hot_records": records,
            "encodings": encodings,
            "dedup": dedup,
            "pending_writes": self.store.pending_bytes * PENDING_MEMORY_FACTOR,
        }

    def memory_used(self) -> int:
        """What counts against ``--memory-budget``: the sum of :meth:`memory_pools`."""
        return sum(self.memory_pools().values())

    def enforce_memory_budget(self, spill: bool = True) -> None:
        """Keep the message data within ``--memory-budget``: evict stored
        records from the hot tails (the biggest first) until every pool
        together holds 80% of it; spill ephemeral ones to LMDB first (on
        ticks; ``spill=False`` only evicts)."""
        budget = self.config.memory_budget
        pools = self.memory_pools()
        total = sum(pools.values())
        # The process beyond its baseline: the pools, plus what they leave
        # behind (allocator fragmentation) and what no pool counts.
        process = self.give_back_free_memory(total, self._process_beyond_baseline())
        self.hot_total_seen = max(total, process)
        if max(total, process) <= budget:
            return
        share = int(budget * DEDUP_SHARE)
        if pools["dedup"] > share:
            freed = self._trim_dedup(pools["dedup"] - int(share * EVICT_TO))
            total -= freed
            process -= freed
        # Evict until the pools are down by what either measure is over 80% of the budget.
        target = total - (max(total, process) - int(budget * EVICT_TO))
        before = total
        logs = [lg for t in self.topics.values() for lg in t.logs]
        for lg in sorted(logs, key=lambda x: x.hot_memory, reverse=True):
            if total <= target:
                break
            share = max(0, lg.hot_memory - (total - target))
            total -= lg.evict(share)
        if before - total >= budget // 16:
            self._release_free_memory()
        # Still over (what is left is unstored: ephemeral records): spill them so they can go.
        if max(total, process - (before - total)) > budget and spill:
            self._spill_ephemeral()

    def give_back_free_memory(self, total: int, process: int) -> int:
        """The process beyond its baseline (``process``) after giving the C
        allocator's free pages back when it is past the pools (``total``) by
        more than :data:`TRIM_GAP` of the budget: freed memory the allocator
        still holds (evicted payloads, request and answer buffers) is given
        back before it counts against the hot tails -- steady small
        evictions never reach the eviction's own trim."""
        if process - total > self.config.memory_budget * TRIM_GAP and self._release_free_memory():
            return self._process_beyond_baseline()
        return process

    def _process_beyond_baseline(self) -> int:
        """RssAnon beyond the idle baseline (0 unless :attr:`bound_process` and measured)."""
        if not self.bound_process or self.memory_baseline is None:
            return 0
        anon = process_memory().get("rss_anon")
        return 0 if anon is None else max(0, anon - self.memory_baseline)

    def _release_free_memory(self) -> bool:
        """Give the C allocator's free pages back to the system (at most once
        a second); True when it did."""
        now = self.clock.seconds()
        if self.bound_process and now - self._last_release >= 1.0:
            self._last_release = now
            return release_free_memory()
        return False

    def _trim_dedup(self, excess: int) -> int:
        """Forget the oldest ids of the biggest dedup windows until ``excess`` bytes are freed."""
        windows = [w for t in self.topics.values() for w in (t.dedup, t.recent)]
        freed = 0
        for w in sorted(windows, key=lambda x: x.memory, reverse=True):
            if freed >= excess:
                break
            freed += w.trim_to(max(0, w.memory - (excess - freed)))
        now = self.clock.seconds()
        if freed and now - self._dedup_warned >= 60:
            self._dedup_warned = now
            log.warn(
                "dedup windows trimmed by {freed} bytes: they hold more ids than half of --memory-budget",
                freed=freed,
            )
        return freed

    def note_hot_added(self, memory: int) -> None:
        """``memory`` bytes joined the hot tails: the budget holds between
        ticks too, so a fast publisher makes the eviction run as soon as an
        eighth of the budget was added."""
        self._hot_added += memory
        if self._hot_added > self.config.memory_budget // 8:
            self._hot_added = 0
            self.enforce_memory_budget(spill=False)

    def _spill_ephemeral(self) -> None:
        for t in self.topics.values():
            if t.config.durable:
                continue
            uid = t.config.uid
            for lg in t.logs:
                p = lg.partition
                queued = self._spilling.get((uid, p), 0)
                recs = [r for r in lg.unstored() if r.offset >= queued]
                # Writes of at most TXN_BYTES each: LMDB keeps the pages of
                # its biggest transaction in memory (storage/lmdb.py).
                for chunk in take_chunks(recs, TXN_BYTES):
                    self._spill_chunk(uid, lg, chunk)

    def _spill_chunk(self, uid: int, lg: PartitionLog, recs: list[Record]) -> None:
        p = lg.partition
        ops = self.store.put_records(uid, p, recs)
        for s in lg.segments:
            if s.last >= recs[0].offset and s.base <= recs[-1].offset:
                ops.append(("p", "segments", keys.segment_key(uid, p, s.base), _json_encode(s.to_tuple())))
        end = recs[-1].offset + 1
        self._spilling[(uid, p)] = end  # later ticks spill only what follows
        d = self.store.write(ops, sum(r.size for r in recs))

        def spilled(_: object, lg: PartitionLog = lg, end: int = end) -> None:
            lg.stored(end)

        d.addCallback(spilled)
        d.addErrback(lambda f: log.failure("ephemeral spill failed", f))

    def _checkpoint_ephemeral(self, force: bool = False, topics: Iterable[Topic] | None = None) -> None:
        """Remember ephemeral partitions' log ends (of ``topics``, by default
        every topic) so offsets are not reused after a restart."""
        ops: list[Op] = []
        for t in self.topics.values() if topics is None else topics:
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
