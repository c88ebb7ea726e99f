"""Which nodes the controller heard from lately: the liveness of idle
partition leaders.  Pure.

An idle leader sends nothing per partition (:attr:`sprawl.replication.replica.Replica.idle`),
so the controller cannot count a partition's silence as it does for a
partition with work under way.  Instead every node beats once per tick (every
other tick while it has nothing with work)
(:class:`~sprawl.replication.messages.NodeBeat`), and any replication frame
from a node counts as hearing it.  A node silent for ``timeout`` seconds,
or one whose beat names a new ``boot`` (it restarted: it leads nothing it
led before), has its confirmed leaderships failed over -- all of them, in
one controller step.  Like Kafka's broker heartbeats to the KRaft controller:
liveness per node, not per partition.

Silence is counted up to the last time anything was heard from any node,
not up to the clock: a node is silent when the others were heard for
``timeout`` seconds after it went quiet.  After a stall of this node (a
blocking call, or a loaded machine not scheduling the process) the beats
sent to it meanwhile still wait unread in its sockets -- a timer runs before
the reactor reads them -- and judged against the clock every node would
look silent at once.  Judged against what this node has read, a stall
blames no one, however many come back to back, and a node really silent is
found as soon as another node's frame is read after the timeout.  (A
controller that hears no node at all fails over nothing: it could commit
nothing without a majority anyway, and gossip still says who is dead.)

A node whose peer port refused a connection (no process listens there: it
was killed) is silent at once (:meth:`NodeLiveness.mark_silent`).  Every
node remembers such a refusal (:meth:`NodeLiveness.refused`), controller or
not, for ``timeout`` seconds or until it hears the node again: a node that
becomes the controller within that time (the kill cost the old one its
Raft leadership) reports the refused node silent at its first judgement
instead of giving it a whole ``timeout`` from its election (issue 23,
failover37's run 4).  Past ``timeout`` the refusal says no more than the
beats' silence would.
"""

from __future__ import annotations

from collections.abc import Iterable


class NodeLiveness:
    """When each node was last heard from, and which went silent."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._heard: dict[str, float] = {}
        self._boot: dict[str, int] = {}
        #: When each node's last beat came (a beat names the node's boot).
        self._beat_at: dict[str, float] = {}
        self._silent: set[str] = set()
        self._since = float("-inf")
        #: When anything was last heard from any node: silences are counted up to it.
        self._latest = float("-inf")
        #: The longest silence of each node :meth:`newly_silent` judged since
        #: :meth:`take_gaps`: what a shorter ``timeout`` would have called
        #: silent (measured, issue 23).
        self.gaps: dict[str, float] = {}
        #: Nodes whose peer port refused a connection made at this time, not
        #: heard since (see :meth:`refused`).
        self._refused: dict[str, float] = {}

    def reset(self, now: float) -> None:
        """This node became the controller: every node gets a whole timeout
        from ``now`` to be heard (nothing it did not hear counts against it)."""
        self._since = now
        for n in self._heard:
            self._heard[n] = max(self._heard[n], now)
        self._silent.clear()

    def heard(self, node: str, now: float, boot: int | None = None) -> bool:
        """A frame (or a beat naming ``boot``) came from ``node``; True when the
        beat shows the node restarted since its last beat."""
        self._heard[node] = now
        self._latest = max(self._latest, now)
        self._silent.discard(node)
        if self._refused:
            self._refused.pop(node, None)
        if boot is None:
            return False
        self._beat_at[node] = now
        old = self._boot.get(node)
        self._boot[node] = boot
        return old is not None and old != boot

    def take_gaps(self) -> dict[str, float]:
        """The longest silence of each node judged since the last call (then
        forgotten): how close to ``timeout`` a live node came."""
        gaps, self.gaps = self.gaps, {}
        return gaps

    def beat_within(self, node: str, now: float, seconds: float) -> bool:
        """Whether ``node`` beat in the last ``seconds`` -- so a restart of it
        would have been noticed (its beat names its new boot) before it is
        given a leadership: a node restarted a moment ago whose first beat has
        not come yet would have that leadership failed over again when it does."""
        at = self._beat_at.get(node)
        return at is not None and now - at <= seconds

    def beats(self, node: str) -> bool:
        """Whether ``node`` ever sent a beat (its release has ``NodeBeat``:
        its idle leaders may be silent per partition)."""
        return node in self._boot

    def newly_silent(self, nodes: Iterable[str], now: float) -> list[str]:
        """Those of ``nodes`` silent for more than ``timeout`` that were not
        reported silent before (each silence is reported once).  Silence is
        counted up to the last time any node was heard (at most ``now``), so
        time this node spent not reading its sockets counts against no one
        (see the module docstring)."""
        upto = min(now, max(self._latest, self._since))
        out = []
        for n in nodes:
            if n in self._silent:
                continue
            at = self._refused.get(n) if self._refused else None
            if at is not None:
                if now - at <= self.timeout:
                    self._silent.add(n)  # its port refused lately, nothing heard since
                    out.append(n)
                    continue
                del self._refused[n]  # (past the timeout the beats' silence says as much)
            quiet = upto - max(self._heard.get(n, self._since), self._since)
            if quiet > self.gaps.get(n, 0.0):
                self.gaps[n] = quiet
            if quiet > self.timeout:
                self._silent.add(n)
                out.append(n)
        return out

    def heard_since(self, node: str, t: float) -> bool:
        """Whether anything came from ``node`` after time ``t``."""
        return self._heard.get(node, float("-inf")) > t

    def refused(self, node: str, since: float) -> None:
        """A connection to ``node``'s peer port, made at ``since``, was refused
        (on any node, the controller or not): unless ``node`` was heard
        after ``since``, :meth:`newly_silent` reports it silent for the
        next ``timeout`` seconds, whatever it heard before (see the module
        docstring); hearing it forgets the refusal."""
        if not self.heard_since(node, since):
            self._refused[node] = since

    def mark_silent(self, node: str) -> bool:
        """Report ``node`` silent now, whatever its time since last heard (its
        peer port refused a connection: no process listens there, issue 23);
        False when it was reported silent already.  Heard again, it is not."""
        if node in self._silent:
            return False
        self._silent.add(node)
        return True

    def is_silent(self, node: str) -> bool:
        """Whether ``node`` was reported silent and not heard since."""
        return node in self._silent
