"""An opt-in timeline of sampled offsets across the nodes of one machine (issue 16).

Off unless the node's environment has ``SPRAWL_TIMELINE=PATH[:EVERY]`` (benchmarks set it:
``benchmarks.quorum_latency --timeline``).  Then every ``EVERY``-th offset (default 50)
of every partition leaves one line per event it passes on this node, appended to
``PATH`` as ``offset event seconds`` (``time.time()``: all nodes of one machine share that
clock, so the lines of three nodes merge into one timeline per offset; each process
writes its own file, ``PATH.PID``), and every LMDB
group commit one ``commit`` line with the times of its steps (see
:meth:`Timeline.commit`).  The events, in the order a replicated publish passes them:

* ``fwd_sent`` / ``fwd_back`` -- an entry node forwards the publish to the leader / has
  its answer (both written when the answer is in, with the offsets it names);
* ``read`` / ``pub`` -- one node's HTTP channel began handling the bytes of the publish
  (:data:`READ_AT`) / the leader's core takes the records (one node: they go to LMDB);
* ``lw_sub`` / ``lw_sync`` -- the leader's own write handed to LMDB / durable;
* ``app>NODE`` -- the leader sends the records to a follower;
* ``f_recv`` / ``f_sub`` / ``f_sync`` / ``f_ack`` -- a follower receives them / hands its
  write to LMDB / has it durable / sends its answer;
* ``quorum`` -- the leader's high watermark passes the offset (publishes answered);
* ``hw>NODE`` -- the leader sends that high watermark to a follower;
* ``f_hw`` -- a follower's visible high watermark passes the offset (its subscribers
  may read it);
* ``stored`` / ``sse`` -- one node: the records' commit is back on the reactor / an SSE
  event holding the offset was handed to the socket.

It writes through a buffer flushed every :data:`FLUSH_LINES` lines and at exit: a
measurement aid, never on unless asked.
"""

from __future__ import annotations

import atexit
import os
import time
from typing import IO

#: Lines buffered before they are written out.
FLUSH_LINES = 512


class Timeline:
    """Sampled offsets' events, written as lines (see the module docstring)."""

    def __init__(self, path: str, every: int = 50) -> None:
        self.every = max(1, every)
        self._out: IO[str] = open(f"{path}.{os.getpid()}", "a", encoding="ascii")
        self._lines: list[str] = []
        atexit.register(self.flush)

    def mark(self, event: str, start: int, end: int | None = None) -> None:
        """``event`` happened now to offsets ``[start, end)`` (``end`` default ``start + 1``):
        a line for each sampled one."""
        self.mark_at(event, time.time(), start, end)

    def mark_at(self, event: str, when: float, start: int, end: int | None = None) -> None:
        """:meth:`mark` for an event that happened at ``when`` (``time.time()``)."""
        every = self.every
        first = -(-start // every) * every
        stop = start + 1 if end is None else end
        if first >= stop:
            return
        t = f"{when:.6f}"
        lines = self._lines
        for o in range(first, stop, every):
            lines.append(f"{o} {event} {t}\n")
        if len(lines) >= FLUSH_LINES:
            self.flush()

    def sampled(self, start: int, end: int) -> bool:
        """Whether ``[start, end)`` holds a sampled offset."""
        return -(-start // self.every) * self.every < end

    def commit(
        self, submitted: float, began: float, body: float, synced: float, back: float, ops: int
    ) -> None:
        """One LMDB group commit: handed to the writer thread (reactor), started there,
        its operations done (before the commit), committed and fsynced, its result back
        on the reactor; ``ops`` operations."""
        self._lines.append(
            f"-1 commit {submitted:.6f} {began:.6f} {body:.6f} {synced:.6f} {back:.6f} {ops}\n"
        )
        if len(self._lines) >= FLUSH_LINES:
            self.flush()

    def flush(self) -> None:
        """Write the buffered lines out."""
        if self._lines:
            self._out.write("".join(self._lines))
            self._lines = []
            self._out.flush()


def from_env(value: str | None) -> Timeline | None:
    """The timeline ``SPRAWL_TIMELINE`` asks for (``PATH[:EVERY]``), or None."""
    if not value:
        return None
    path, _, every = value.rpartition(":") if value.rpartition(":")[2].isdigit() else (value, "", "")
    return Timeline(path, int(every) if every else 50)


#: While the timeline is on: when the HTTP channel began handling the bytes of the
#: request now being handled (``time.time()``; the publish marks it as ``read``).
READ_AT = 0.0

#: This process's timeline, or None (the default: off).
TIMELINE: Timeline | None = from_env(os.environ.get("SPRAWL_TIMELINE"))
