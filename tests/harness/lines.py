"""Counting the work of one step: the Python lines a call runs in part of the tree.

The cost tests of issue 23 (a gossip round, a topic's apply) assert that the
work of one step does not grow with the number of idle members or partitions;
a line count is what the machine's load does not move."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import FrameType
from typing import Any


def lines_run(fn: Callable[[], Any], root: str) -> int:
    """Python lines executed in files under ``root`` while ``fn`` runs."""
    count = 0

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return local

    def calls(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename.startswith(root) else None

    previous = sys.gettrace()
    sys.settrace(calls)
    try:
        fn()
    finally:
        sys.settrace(previous)
    return count
