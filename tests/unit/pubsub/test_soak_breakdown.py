"""The soak's breakdown of a process's anonymous memory by where it lives
(``benchmarks.soak_memory.anon_breakdown``), read from ``/proc/PID/smaps``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from benchmarks.soak_memory import anon_breakdown

SMAPS = """\
55d3171c8000-55d3179d0000 rw-p 00000000 00:00 0                          [heap]
Size:               8224 kB
Anonymous:          4000 kB
VmFlags: rd wr mr mw me ac sd
7f8eac000000-7f8eac100000 rw-p 00000000 00:00 0
Size:               1024 kB
Anonymous:           900 kB
7f8eb1b00000-7f8eb4000000 rw-p 00000000 00:00 0
Size:              37888 kB
Anonymous:         37000 kB
7f90a025f000-7f90a02f8000 r--p 00123000 fe:01 123                        /usr/lib/libfoo.so
Size:                612 kB
Anonymous:            12 kB
7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Anonymous:           100 kB
"""


def test_anon_breakdown_sorts_each_mapping_by_kind() -> None:
    """[heap] is the main arena, a 64 MiB-aligned anonymous mapping a thread
    arena, any other anonymous mapping pymalloc's arenas or large blocks, and
    named mappings (libraries, the stack) the rest."""
    assert anon_breakdown(SMAPS) == {
        "main_arena": 4000 * 1024,
        "thread_arenas": 900 * 1024,
        "other_anon": 37000 * 1024,
        "files": 112 * 1024,
    }


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_anon_breakdown_of_this_process_adds_up_to_about_its_rss_anon() -> None:
    """Summed, the kinds are this process's RssAnon (within what changed between the two reads)."""
    parts = anon_breakdown(Path("/proc/self/smaps").read_text())
    status = Path(f"/proc/{os.getpid()}/status").read_text()
    anon = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("RssAnon:"))
    assert abs(sum(parts.values()) - anon) < max(2 * 1024**2, anon // 20), (parts, anon)
