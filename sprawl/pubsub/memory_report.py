"""The memory budget made visible: the process's resident memory read from
``/proc/self/status``, each accounted pool beside it on ``/metrics``, and the
warning ``/readyz`` carries when the process passes its budget.

What an operator sizes a container by is the process's *anonymous* resident
memory (``RssAnon``): LMDB's file pages (``RssFile``) are the kernel's to
reclaim and count against a cgroup limit only as cache.  A node takes
``RssAnon`` of about its idle baseline (measured at its first tick, with its
imports, LMDB and recovered state) plus ``--memory-budget``; the warning
fires past ``baseline + RSS_WARN_FACTOR x budget``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from sprawl.pubsub.memory import MemoryBudget

#: How far past its baseline plus budget the process may go before ``/readyz`` warns.
RSS_WARN_FACTOR = 1.3

_FIELDS = {"VmRSS": "rss", "RssAnon": "rss_anon", "RssFile": "rss_file"}


def process_memory(status: Path = Path("/proc/self/status")) -> dict[str, int]:
    """``rss``, ``rss_anon`` and ``rss_file`` of this process in bytes (an
    empty dict where ``/proc`` has no such file, e.g. off Linux)."""
    out: dict[str, int] = {}
    try:
        text = status.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        name, _, value = line.partition(":")
        key = _FIELDS.get(name)
        if key is not None:
            parts = value.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0]) * 1024
    return out


_malloc_trim: object = None


def release_free_memory() -> bool:
    """Return the C allocator's free pages to the system (glibc's
    ``malloc_trim``): memory the evicted records' large payloads held is
    otherwise kept by the process.  False where there is no such call."""
    global _malloc_trim
    if _malloc_trim is None:
        _malloc_trim = False
        name = ctypes.util.find_library("c")
        if name is not None:
            try:
                _malloc_trim = ctypes.CDLL(name).malloc_trim
            except (OSError, AttributeError):
                pass
    if not _malloc_trim:
        return False
    _malloc_trim(0)  # type: ignore[operator]
    return True


def memory_status(budget: MemoryBudget, pools: dict[str, int] | None = None) -> dict[str, Any]:
    """The budget, what counts against it (each pool and their sum: ``pools`` if
    given, else counted now), the process's resident memory and its idle baseline;
    ``warning`` when the process is past its baseline plus :data:`RSS_WARN_FACTOR`
    times the budget."""
    if pools is None:
        pools = budget.memory_pools()
    proc = process_memory()
    return {
        "budget": budget.config.memory_budget,
        "used": sum(pools.values()),
        "pools": pools,
        "rss": proc.get("rss"),
        "rss_anon": proc.get("rss_anon"),
        "baseline": budget.memory_baseline,
        "warning": memory_warning(budget, proc),
    }


def memory_warning(budget: MemoryBudget, proc: dict[str, int] | None = None) -> str | None:
    """The warning ``/readyz`` carries (see :func:`memory_status`), or None:
    the process's ``RssAnon`` (read now unless ``proc`` is given) against
    its baseline and budget -- no pool is summed (that walks every
    partition's caches, issue 23: ``/readyz`` is polled)."""
    anon = (process_memory() if proc is None else proc).get("rss_anon")
    limit = budget.config.memory_budget
    base = budget.memory_baseline
    if anon is None or base is None or anon <= base + RSS_WARN_FACTOR * limit:
        return None
    return (
        f"resident memory {anon // 1000**2} MB (RssAnon) is past the idle baseline of "
        f"{base // 1000**2} MB plus {RSS_WARN_FACTOR}x --memory-budget {limit // 1000**2} MB: "
        "memory the budget does not bound is growing (connections, consumer groups, feeds)"
    )


class MemoryCollector:
    """``/metrics``: each accounted pool (``sprawl_memory_pool_bytes{pool}``),
    their sum (``sprawl_memory_used_bytes``), and the process's anonymous
    resident memory and its idle baseline beside them."""

    def __init__(
        self, budget: MemoryBudget, walked: Callable[[], tuple[int, int, int] | None] | None = None
    ) -> None:
        self.budget = budget
        #: The pools ``(hot records, encodings, dedup)`` the scrape's own walk over the
        #: partitions summed, or None (e.g. :meth:`sprawl.metrics.NodeMetrics.walked_pools`):
        #: then no second walk over every partition (issue 23, tidy41).
        self.walked = walked

    def describe(self) -> list[Any]:
        """No fixed description: the families are built at each scrape."""
        return []

    def _walked_pools(self) -> dict[str, int] | None:
        """The pools as :meth:`~sprawl.pubsub.memory.MemoryBudget.memory_pools` names them,
        from :attr:`walked` (None: none walked)."""
        walked = self.walked() if self.walked is not None else None
        if walked is None:
            return None
        from sprawl.pubsub.memory import PENDING_MEMORY_FACTOR

        records, encodings, dedup = walked
        return {
            "hot_records": records,
            "encodings": encodings,
            "dedup": dedup,
            "pending_writes": self.budget.store.pending_bytes * PENDING_MEMORY_FACTOR,
        }

    def collect(self) -> Iterator[Any]:
        """The pools, their sum, RssAnon and the baseline."""
        st = memory_status(self.budget, self._walked_pools())
        pool = GaugeMetricFamily(
            "sprawl_memory_pool_bytes",
            "Bytes each pool of message data takes (counted against --memory-budget)",
            labels=["pool"],
        )
        for name, value in sorted(st["pools"].items()):
            pool.add_metric([name], value)
        yield pool
        yield GaugeMetricFamily(
            "sprawl_memory_used_bytes",
            "Bytes counted against --memory-budget (the sum of the pools)",
            value=st["used"],
        )
        if st["rss_anon"] is not None:
            yield GaugeMetricFamily(
                "sprawl_process_rss_anon_bytes",
                "Anonymous resident memory of the node process (RssAnon; LMDB's file pages are not in it)",
                value=st["rss_anon"],
            )
        if st["baseline"] is not None:
            yield GaugeMetricFamily(
                "sprawl_process_memory_baseline_bytes",
                "RssAnon of the node when idle at start (imports, LMDB, recovered state), less its pools",
                value=st["baseline"],
            )
        if st["rss_anon"] is not None and st["baseline"] is not None:
            yield GaugeMetricFamily(
                "sprawl_process_memory_budget_ratio",
                "RssAnon beyond the idle baseline over --memory-budget (/readyz warns past 1.3)",
                value=max(0, st["rss_anon"] - st["baseline"]) / st["budget"],
            )
