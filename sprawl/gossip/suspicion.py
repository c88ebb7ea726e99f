"""Lifeguard's dynamic suspicion timeout.

When a member is suspected, it is declared dead only after a suspicion
timeout, giving it time to refute.  Lifeguard starts that timeout at a
maximum and shrinks it logarithmically toward a minimum as ``k``
*independent* confirmations (other members suspecting it too) arrive::

    timeout(n) = max(min, max - (max - min) * log(n + 1) / log(k + 1))

so a truly failed node is declared dead quickly (many members notice), while
a lone, possibly mistaken, accuser has to wait the long maximum.  The
baseline (:func:`suspicion_timeout`) grows with ``log10`` of the cluster size
because dissemination takes longer in bigger clusters.
"""

from __future__ import annotations

import math


def suspicion_timeout(suspicion_mult: float, n_members: int, probe_interval: float) -> float:
    """The minimum suspicion timeout: ``mult * max(1, log10(n)) * probe_interval``."""
    scale = max(1.0, math.log10(max(1, n_members)))
    return suspicion_mult * scale * probe_interval


def confirmations_wanted(suspicion_mult: int, n_members: int) -> int:
    """``k``: confirmations that drive the timeout to its minimum.

    Two less than the multiplier (we expect to hear from the others a couple
    of probe intervals late), and zero in clusters too small to provide them.
    """
    k = suspicion_mult - 2
    if n_members - 2 < k:
        return 0
    return max(0, k)


def remaining_timeout(n: int, k: int, min_timeout: float, max_timeout: float) -> float:
    """Total suspicion timeout after ``n`` confirmations out of ``k`` wanted."""
    if k < 1:
        return min_timeout
    frac = math.log(n + 1.0) / math.log(k + 1.0)
    return max(min_timeout, max_timeout - frac * (max_timeout - min_timeout))


class Suspicion:
    """The suspicion timer of one suspected member.

    ``deadline`` is when the member is to be declared dead unless it refutes.
    The accuser that started the suspicion counts as seen but not as a
    confirmation (our own suspicion may be gossiped back to us).
    ``checks`` is free for the owner to schedule direct checks of the suspect.
    """

    __slots__ = (
        "_from",
        "checks",
        "deadline",
        "incarnation",
        "k",
        "max_timeout",
        "min_timeout",
        "n",
        "start",
    )

    def __init__(
        self,
        from_id: str,
        incarnation: int,
        k: int,
        min_timeout: float,
        max_timeout: float,
        start: float,
    ):
        self._from = {from_id}
        self.incarnation = incarnation
        self.k = k
        self.min_timeout = min_timeout
        self.max_timeout = max(max_timeout, min_timeout)
        self.start = start
        self.n = 0
        self.deadline = start + remaining_timeout(0, k, min_timeout, self.max_timeout)
        #: Times (ascending) at which the owner wants to re-check the suspect.
        self.checks: list[float] = []

    def confirm(self, from_id: str) -> bool:
        """Count an independent confirmation from ``from_id``.

        Returns True if it was new information (worth re-gossiping): a node
        not heard from before, while fewer than ``k`` confirmations are in.
        """
        if self.n >= self.k or from_id in self._from:
            return False
        self._from.add(from_id)
        self.n += 1
        self.deadline = self.start + remaining_timeout(self.n, self.k, self.min_timeout, self.max_timeout)
        return True

    def expired(self, now: float) -> bool:
        """True once the (current) timeout has run out."""
        return now >= self.deadline
