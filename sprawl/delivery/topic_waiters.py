"""Subscribers waiting for a topic that does not exist yet.

Where topics are created on first use (auto-create on), an SSE stream, a
WebSocket feed or a long-poll fetch of a missing topic waits for it instead of
answering 404.  Each waiter is one cancellable Deferred, kept under the topic's
name until the topic appears here (:meth:`TopicWaiters.fire`) or the waiter
gives up (the client left, the long-poll's deadline passed): cancelling removes
it, so an abandoned wait costs nothing.

Who fires: on a node without Raft (:class:`sprawl.cluster.local.LocalControl`)
the broker, once a new topic is committed to LMDB; on a cluster node
(:class:`sprawl.cluster.control.ClusterControl`) the control, once the topic's
creation is applied here, broker and placement included (so a stream knows
whether to read the partition here or through a remote feed).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred


class TopicWaiters:
    """Waiters per topic name; fired (all of a name at once) when the topic appears."""

    def __init__(self) -> None:
        self._waiting: dict[str, list[Deferred[None]]] = {}

    def wait(self, name: str) -> Deferred[None]:
        """Fires (with None) the next time ``name`` appears; cancel to stop waiting."""

        def cancel(d: Deferred[None]) -> None:
            ds = self._waiting.get(name)
            if ds is not None and d in ds:
                ds.remove(d)
                if not ds:
                    del self._waiting[name]

        d: Deferred[None] = Deferred(cancel)
        self._waiting.setdefault(name, []).append(d)
        return d

    def fire(self, name: str) -> None:
        """The topic ``name`` exists now: wake every waiter of it."""
        for d in self._waiting.pop(name, []):
            if not d.called:
                d.callback(None)

    def count(self) -> int:
        """Waiters of every topic."""
        return sum(len(ds) for ds in self._waiting.values())
