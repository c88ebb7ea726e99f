#!/usr/bin/env python3
"""Run ``twistd`` with a reactor-stall probe, for finding what holds a node's reactor:

    python stall_probe.py REPORT.json [--threshold-ms 2] -- TWISTD ARGS...

(``benchmarks.latency_profile --stalls REPORT.json`` starts its node this way.)  Three
parts, all in the node's process and none in Sprawl's code:

* a ``LoopingCall`` every millisecond stamps the time (a reactor free to run its timers
  stamps it at least every ~1 ms);
* a watchdog thread looks every millisecond (the interpreter's switch interval is lowered
  from 5 to 1 ms so it gets the GIL; a shorter one made the two threads convoy on a loaded
  machine): when the last stamp is older than the threshold the reactor is stalled, and it
  samples the main thread's stack (``sys._current_frames``) until the stamp moves again,
  and reads how long the main thread ran meanwhile (``/proc``'s schedstat: a stall in which
  it hardly ran is the machine's load, not the node's work).  A stall is reported with its length and the frames seen most often
  in its samples (Sprawl's frames first): what the reactor was doing;
* ``gc.callbacks`` time every collection (generation, milliseconds), so a stall that is a
  collection says so.

Where the main thread was during a stall, from every thread's ``/proc/self/task/TID``
counters read when the stall is seen and when it ends: its share **on a CPU** (the node's
own work), **runnable but waiting for a CPU** (schedstat's run-queue time: the machine's
load took the core), and **asleep** (neither: blocked in ``epoll_wait`` past its timeout
is impossible, so asleep means waiting for the GIL -- or a page fault's I/O, counted as
major faults); how much the node's other threads ran meanwhile (the LMDB writer thread
is the one that runs Python besides the reactor: if it ran while the main thread slept,
it held the GIL); and the main thread's voluntary and involuntary context switches.
Each stall gets a ``cause``: ``work`` (on a CPU for 70 %+), ``cpu`` (waiting for a CPU
for half of it or more), ``gil`` (asleep for half of it or more while another thread of
the node -- the probe's own included -- ran or waited for a CPU: one of them held the
GIL), else ``mixed`` (asleep with no other thread busy: a poll or lock wait).

At the node's stop the report is written as JSON: the stalls (longest first), the
collections over 1 ms, counts of both.  The probe itself costs the node a wake-up per
millisecond and a sampling thread: its latency figures are not figures; the stalls are.
"""

from __future__ import annotations

import collections
import gc
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any


def _frame_names(frame: Any) -> list[str]:
    """Innermost-first ``file:function`` of a stack (paths cut to the package)."""
    out: list[str] = []
    while frame is not None:
        code = frame.f_code
        path = code.co_filename
        for mark in ("/sprawl/", "/twisted/", "/lmdb", "/prometheus_client/", "/klein/", "/msgspec"):
            i = path.find(mark)
            if i >= 0:
                path = path[i + 1 :]
                break
        else:
            path = path.rsplit("/", 1)[-1]
        out.append(f"{path}:{code.co_name}")
        frame = frame.f_back
    return out


_ZERO = (0, 0, 0, 0, 0, 0)


def task_counters() -> dict[int, tuple[int, ...]]:
    """Per thread of this process: (ns on a CPU, ns runnable waiting for a CPU, time slices,
    voluntary and involuntary context switches, major page faults), from ``/proc``."""
    import os

    out: dict[int, tuple[int, ...]] = {}
    for name in os.listdir("/proc/self/task"):
        base = f"/proc/self/task/{name}"
        try:
            with open(base + "/schedstat") as f:
                run, wait, slices = (int(x) for x in f.read().split()[:3])
            vol = invol = 0
            with open(base + "/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        vol = int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        invol = int(line.split()[1])
            with open(base + "/stat") as f:
                majflt = int(f.read().rsplit(")", 1)[1].split()[9])
        except (OSError, ValueError, IndexError):
            continue
        out[int(name)] = (run, wait, slices, vol, invol, majflt)
    return out


def _cause(on_cpu: float, where: dict[str, Any]) -> str:
    """A stall's likeliest cause (see the module docstring)."""
    if on_cpu >= 0.7:
        return "work"
    if where["main_runqueue"] >= 0.5:
        return "cpu"
    asleep = 1.0 - on_cpu - where["main_runqueue"]
    others = sum(where["others_on_cpu"].values()) + sum(where["others_waiting"].values())
    if asleep >= 0.5 and others >= 0.2:
        return "gil"
    return "mixed"


class StallProbe:
    """The three parts of the module docstring; :meth:`report` summarizes them."""

    def __init__(self, threshold: float = 0.002, tick: float = 0.001, look: float = 0.001) -> None:
        self.threshold = threshold
        self.tick = tick
        self.look = look
        self.beat = time.perf_counter()
        self.main = threading.main_thread().ident or 0
        #: The main thread's time on a CPU (ns), from the kernel's schedstat: a stall in which
        #: the thread ran is work; one in which it did not is the machine's load (or a wait).
        self._schedstat = f"/proc/self/task/{threading.main_thread().native_id}/schedstat"
        self.stalls: list[dict[str, Any]] = []
        self.collections: list[tuple[int, float]] = []
        self.collections_total = 0
        self._gc_started = 0.0
        self._stop = threading.Event()

    def start(self, reactor: Any) -> None:
        """Start stamping on ``reactor``, the watchdog and the collection timer."""
        from twisted.internet import task

        def stamp() -> None:
            self.beat = time.perf_counter()

        task.LoopingCall(stamp).start(self.tick)
        sys.setswitchinterval(self.look)
        gc.callbacks.append(self._gc)
        threading.Thread(target=self._watch, name="stall-probe", daemon=True).start()

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            took = time.perf_counter() - self._gc_started
            self.collections_total += 1
            if took > 0.001:
                self.collections.append((int(info.get("generation", -1)), took * 1000))

    def _on_cpu(self) -> float:
        """Seconds the main thread has run on a CPU."""
        try:
            with open(self._schedstat) as f:
                return int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            return 0.0

    def _watch(self) -> None:
        stall_start = 0.0
        samples: list[list[str]] = []
        cpu0 = wall0 = 0.0
        tasks0: dict[int, tuple[int, ...]] = {}
        while not self._stop.is_set():
            time.sleep(self.look)
            now = time.perf_counter()
            beat = self.beat
            if now - beat > self.threshold:
                if not samples:
                    stall_start = beat
                    cpu0, wall0 = self._on_cpu(), now
                    tasks0 = task_counters()
                frame = sys._current_frames().get(self.main)
                samples.append(_frame_names(frame))
            elif samples:
                ran = (self._on_cpu() - cpu0) / max(1e-9, now - wall0)
                where = self._where(tasks0, task_counters(), now - wall0)
                self._record(stall_start, beat, samples, ran, where)
                samples = []

    def _where(
        self, before: dict[int, tuple[int, ...]], after: dict[int, tuple[int, ...]], seconds: float
    ) -> dict[str, Any]:
        """Where the main thread and the others were between two :func:`task_counters`.
        The probe's own thread counts among the others: it takes the GIL to sample, and a
        GIL holder that waits for a CPU holds the main thread up like any other."""
        main = threading.main_thread().native_id or 0
        span = max(1e-9, seconds) * 1e9
        names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
        d = [a - b for a, b in zip(after.get(main, _ZERO), before.get(main, _ZERO), strict=True)]

        def shares(field: int) -> dict[str, float]:
            got = {
                tid: (c[field] - before.get(tid, _ZERO)[field]) / span
                for tid, c in after.items()
                if tid != main and c[field] > before.get(tid, _ZERO)[field]
            }
            top = sorted(got.items(), key=lambda kv: -kv[1])[:4]
            return {names.get(t, str(t)): round(v, 2) for t, v in top}

        return {
            "main_runqueue": round(min(1.0, d[1] / span), 2),
            "main_voluntary": d[3],
            "main_involuntary": d[4],
            "main_major_faults": d[5],
            # Other threads' time on a CPU in the stall, and waiting for one (name: share).
            "others_on_cpu": shares(0),
            "others_waiting": shares(1),
        }

    def _record(
        self, start: float, end: float, samples: list[list[str]], ran: float, where: dict[str, Any]
    ) -> None:
        own: collections.Counter[str] = collections.Counter()
        every: collections.Counter[str] = collections.Counter()
        for stack in samples:
            for name in set(stack):
                every[name] += 1
            inner = next((f for f in stack if f.startswith("sprawl/")), stack[0] if stack else "?")
            own[inner] += 1
        self.stalls.append(
            {
                # The reactor was free at ``start`` and stamped again at ``end`` (less one tick).
                "ms": round(max(0.0, end - start - self.tick) * 1000, 2),
                "samples": len(samples),
                # The share of the stall (from its detection) the main thread spent on a CPU.
                "on_cpu": round(min(1.0, ran), 2),
                **where,
                "cause": _cause(min(1.0, ran), where),
                "innermost_sprawl": own.most_common(4),
                "frames": [f for f, _ in every.most_common(40) if not f.startswith("threading.py")][:25],
                "innermost": samples[len(samples) // 2][:12],
            }
        )

    def report(self) -> dict[str, Any]:
        """The stalls (longest first) and the collections over 1 ms."""
        self._stop.set()
        stalls = sorted(self.stalls, key=lambda s: -s["ms"])
        return {
            "threshold_ms": self.threshold * 1000,
            "stalls": len(stalls),
            "stalls_over_5ms": sum(1 for s in stalls if s["ms"] > 5),
            # Stalls in which the main thread ran most of the time: the node's own work.
            "working_stalls": sum(1 for s in stalls if s["on_cpu"] >= 0.7),
            "causes": dict(collections.Counter(s["cause"] for s in stalls)),
            # (the node shortens it after its start; the probe sets 1 ms when the reactor runs)
            "switch_interval_ms": sys.getswitchinterval() * 1000,
            "collections": self.collections_total,
            "collections_over_1ms": [(g, round(ms, 2)) for g, ms in self.collections],
            "longest": stalls[:60],
        }


def main() -> None:
    """Run twistd with the probe: ``REPORT.json [--threshold-ms MS] -- TWISTD ARGS...``."""
    args = sys.argv[1:]
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return
    if "--" not in args or args.index("--") == 0:
        sys.exit(
            f"usage: python -m benchmarks.stall_probe REPORT.json [--threshold-ms 2] -- TWISTD ARGS...\n{__doc__}"
        )
    split = args.index("--")
    mine, twistd = args[:split], args[split + 1 :]
    out = Path(mine[0])
    threshold = 0.002
    if "--threshold-ms" in mine:
        threshold = float(mine[mine.index("--threshold-ms") + 1]) / 1000
    from twisted.internet import reactor as installed  # the default (epoll), as twistd would install

    reactor: Any = installed

    probe = StallProbe(threshold)
    reactor.callWhenRunning(probe.start, reactor)

    def write() -> None:
        out.write_text(json.dumps(probe.report(), indent=1))

    reactor.addSystemEventTrigger("after", "shutdown", write)
    sys.argv = ["twistd", *twistd]
    from twisted.scripts.twistd import run

    run()


if __name__ == "__main__":
    main()
