"""When each phase of a failover happened on this node: first and last
time, and how many times.  Pure (the adapter gives it the clock's time).

A dead node's thousands of leaderships move in phases -- found silent,
fenced, the fences answered, the choices made, one Raft entry proposed and
committed, applied on every node, the new leaders leading and their
followers holding their control record -- and one line per partition per
phase would be tens of thousands of log lines.  Instead each phase keeps its
first and last time and a count, and :meth:`PhaseTimeline.due` hands the
phases marked since the last report to the adapter, which logs one line per
phase at most every :data:`REPORT_SECONDS`.  All the nodes of a benchmark run
on one machine, so their times are one clock: ``benchmarks.failover_timeline``
merges the nodes' lines into one table (issue 23).

A phase not marked for :data:`WAVE_GAP_SECONDS` starts again at its next mark
(the next failover's phases are not mixed with the last one's, nor with the
topics created before it).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Seconds between two reports of the phases marked meanwhile.
REPORT_SECONDS = 1.0
#: A phase quiet this long starts over at its next mark (a dead node is
#: found silent after 2 s without a word, and ``benchmarks.scale`` lets the
#: cluster settle 3 s before it kills one: the failover's phases start anew).
WAVE_GAP_SECONDS = 3.0


@dataclass
class Phase:
    """One phase's times: first and last mark, and the marks counted (``n``)."""

    first: float
    last: float
    n: int


class PhaseTimeline:
    """First/last time and count of each named phase (see the module docstring)."""

    def __init__(self) -> None:
        self.phases: dict[str, Phase] = {}
        self._dirty: set[str] = set()
        self._reported = float("-inf")

    def mark(self, phase: str, now: float, n: int = 1) -> None:
        """``n`` more of ``phase`` happened at ``now``."""
        p = self.phases.get(phase)
        if p is None or now - p.last > WAVE_GAP_SECONDS:
            self.phases[phase] = Phase(now, now, n)
        else:
            p.last = now
            p.n += n
        self._dirty.add(phase)

    def due(self, now: float) -> list[tuple[str, Phase]]:
        """The phases marked since the last report, sorted by their first mark
        -- when :data:`REPORT_SECONDS` passed since it (else none)."""
        if not self._dirty or now - self._reported < REPORT_SECONDS:
            return []
        self._reported = now
        out = sorted(((k, self.phases[k]) for k in self._dirty), key=lambda kv: kv[1].first)
        self._dirty.clear()
        return out
