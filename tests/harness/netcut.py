"""Network partitions between real nodes on one host: packets between two
loopback addresses dropped by the kernel (``tc`` filters on ``lo``).

Each node of the cluster listens on its own 127.x address and talks to its
peers from it (``--bind-addr``: the peer channel's connections leave from
it, and gossip's UDP socket is bound to it), so a pair of nodes is told apart
by its addresses.  :class:`LoopbackCuts` puts an ``htb`` qdisc on ``lo``
with one class that holds no packet, and one ``u32`` filter per direction
of each cut pair that sends there what one address sends the other: TCP segments and gossip datagrams vanish -- a real
partition, not a refused connection -- while the test's own HTTP requests
(from 127.0.0.1) still reach every node.

It needs root (``CAP_NET_ADMIN``) and iproute2's ``tc``.  Only one holder at
a time on a host (a lock file; the chaos tests and a second xdist worker
wait); :meth:`LoopbackCuts.close` restores ``lo``'s default qdisc even when
the test failed, and a qdisc left by a killed run is replaced at the next
start.  The addresses are random in 127.0.0.0/8 (never 127.0.0.1), so a
filter left behind drops nothing anybody else uses.
"""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

#: Where the holders of ``lo``'s qdisc queue (one at a time on a host).
LOCK_PATH = Path("/tmp/sprawl-netcut.lock")


def missing_tools() -> list[str]:
    """What :class:`LoopbackCuts` lacks here: ``tc`` (Debian's iproute2), ``flock``
    (util-linux) and root."""
    missing = []
    if shutil.which("tc") is None:
        missing.append("tc")
    if shutil.which("flock") is None:
        missing.append("flock")
    if os.geteuid() != 0:
        missing.append("root (CAP_NET_ADMIN)")
    return missing


@contextmanager
def required_cuts() -> Iterator[LoopbackCuts]:
    """``lo``'s packet filter for one test, healed and removed after it; the
    test is skipped (failed under CI) without root and tc."""
    from harness.nodes import require_tools

    require_tools(missing_tools(), "Debian's iproute2 for tc, and root")
    with LoopbackCuts() as c:
        yield c


def loopback_hosts(n: int, rng: random.Random | None = None) -> list[str]:
    """``n`` distinct addresses in one random 127.a.b.0/24, from .2 up."""
    r = rng or random.Random()
    a, b = r.randrange(1, 255), r.randrange(1, 255)
    return [f"127.{a}.{b}.{i + 2}" for i in range(n)]


class LoopbackCuts:
    """Cuts and heals pairs of loopback addresses (see the module docstring)."""

    def __init__(self, dev: str = "lo") -> None:
        self.dev = dev
        #: The filters in place: (a, b) -> the two filter priorities that drop a->b and b->a.
        self.cuts: dict[tuple[str, str], tuple[int, int]] = {}
        #: The one-way drops in place: (src, dst) -> the filter's priority.
        self.oneway: dict[tuple[str, str], int] = {}
        self._next_pref = 10
        self._lock: IO[str] | None = None

    def _tc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(["tc", *args], capture_output=True, text=True, timeout=10)
        if check and p.returncode != 0:
            raise RuntimeError(f"tc {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
        return p

    def open(self) -> LoopbackCuts:
        """Take the host's lock (bounded) and put the ``prio`` qdisc on ``lo``."""
        lock = LOCK_PATH.open("a")
        deadline = time.monotonic() + 600
        for _ in range(100_000):
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    lock.close()
                    raise RuntimeError(f"{LOCK_PATH} stayed locked for 600 s") from None
                # (another holder: a bounded wait on the lock itself, not a sleep)
                _wait_for_lock(lock, 1.0)
        else:
            lock.close()
            raise RuntimeError(f"{LOCK_PATH} could not be taken")
        self._lock = lock
        # An htb root whose unclassified packets go straight through (``default
        # 0``: its direct queue, unshaped), and one class whose queue holds
        # nothing (``pfifo limit 0``): what a filter sends there is dropped.
        # (This host's kernel has htb, pfifo and u32, but no ``prio`` qdisc
        # and no ``gact`` action, so no ``action drop``.)
        # (the direct queue longer than ``lo``'s own 1,000: the other tests'
        # loopback traffic meanwhile is never dropped by it in a burst)
        self._tc(
            "qdisc", "replace", "dev", self.dev, "root", "handle", "1:", "htb", "default", "0",
            "direct_qlen", "100000",
        )  # fmt: skip
        self._tc("class", "add", "dev", self.dev, "parent", "1:", "classid", "1:2", "htb", "rate", "8bit")
        self._tc("qdisc", "add", "dev", self.dev, "parent", "1:2", "handle", "20:", "pfifo", "limit", "0")
        return self

    def cut(self, a: str, b: str) -> None:
        """Drop every packet between ``a`` and ``b``, both ways."""
        key = (min(a, b), max(a, b))
        if key in self.cuts:
            return
        self.cuts[key] = (self._drop(a, b), self._drop(b, a))

    def cut_oneway(self, src: str, dst: str) -> None:
        """Drop what ``src`` sends ``dst`` only (an asymmetric partition: ``dst``
        still reaches ``src``; TCP needs both ways, so only datagrams and the
        inbound half of an open connection get through)."""
        key = (src, dst)
        if key in self.oneway:
            return
        self.oneway[key] = self._drop(src, dst)

    def _drop(self, src: str, dst: str) -> int:
        """One filter sending what ``src`` sends ``dst`` to the class that holds
        nothing; its priority (to delete it by)."""
        pref = self._next_pref
        self._next_pref += 1
        self._tc(
            "filter", "add", "dev", self.dev, "parent", "1:", "protocol", "ip", "pref", str(pref),
            "u32", "match", "ip", "src", f"{src}/32", "match", "ip", "dst", f"{dst}/32",
            "flowid", "1:2",
        )  # fmt: skip
        return pref

    def isolate(self, node: str, others: list[str]) -> None:
        """Cut ``node`` from each of ``others``."""
        for o in others:
            self.cut(node, o)

    def heal(self, a: str, b: str) -> None:
        """Let packets between ``a`` and ``b`` through again."""
        prefs = self.cuts.pop((min(a, b), max(a, b)), None)
        for pref in prefs or ():
            self._tc("filter", "del", "dev", self.dev, "parent", "1:", "pref", str(pref))

    def heal_all(self) -> None:
        """Heal every cut, both ways and one way."""
        for a, b in list(self.cuts):
            self.heal(a, b)
        for key, pref in list(self.oneway.items()):
            del self.oneway[key]
            self._tc("filter", "del", "dev", self.dev, "parent", "1:", "pref", str(pref))

    def dropped(self) -> int:
        """Packets the filters dropped so far (from ``tc -s``): a cut that
        dropped nothing tested nothing."""
        out = self._tc("-s", "qdisc", "show", "dev", self.dev, check=False).stdout
        lines = out.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("qdisc pfifo 20:") and i + 1 < len(lines):
                # " Sent 0 bytes 0 pkt (dropped 56, overlimits 0 requeues 0)"
                words = lines[i + 1].replace("(", " ").replace(",", " ").split()
                if "dropped" in words:
                    return int(words[words.index("dropped") + 1])
        return 0

    def close(self) -> None:
        """Heal everything and give ``lo`` its default qdisc back (idempotent)."""
        try:
            if self._lock is not None:
                self.cuts.clear()
                self.oneway.clear()
                self._tc("qdisc", "del", "dev", self.dev, "root", check=False)
        finally:
            if self._lock is not None:
                self._lock.close()  # (releases the flock)
                self._lock = None

    def __enter__(self) -> LoopbackCuts:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wait_for_lock(lock: IO[str], seconds: float) -> None:
    """Block on ``lock`` for at most ``seconds`` (an alarm-free bounded wait:
    a child ``flock -w`` holds nothing of ours)."""
    subprocess.run(
        ["flock", "-w", str(seconds), lock.name, "true"], capture_output=True, timeout=seconds + 10
    )
