"""Who waits for a partition's high watermark to move: streams, long-poll
fetches, consumer-group pulls (:meth:`PartitionWatchers.wait_any`)."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from sprawl.interfaces import Clock

log = Logger()


class PartitionWatchers:
    """Callbacks per (topic name, partition), called when it gets new data
    (or is deleted, reset, or follows its remote segments)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._watchers: dict[tuple[str, int], set[Callable[[], None]]] = {}

    def watch(self, name: str, partition: int, fn: Callable[[], None]) -> Callable[[], None]:
        """Call ``fn`` whenever the partition's high watermark moves (or it is deleted).

        Returns a function that stops watching.
        """
        key = (name, partition)
        self._watchers.setdefault(key, set()).add(fn)

        def unwatch() -> None:
            s = self._watchers.get(key)
            if s is not None:
                s.discard(fn)
                if not s:
                    del self._watchers[key]

        return unwatch

    def count(self, name: str, partition: int) -> int:
        """How many watch the partition now."""
        return len(self._watchers.get((name, partition), ()))

    def notify(self, name: str, partition: int) -> None:
        """Wake the partition's watchers (a failing one is logged, the others still run)."""
        fns = self._watchers.get((name, partition))
        if fns:
            for fn in list(fns):
                try:
                    fn()
                except Exception:
                    log.failure("watcher of {topic}/{partition} failed", topic=name, partition=partition)

    def wait_any(self, name: str, partitions: int, seconds: float) -> Deferred[None]:
        """Fires when any of the first ``partitions`` partitions of topic
        ``name`` gets new data, or after ``seconds``; cancel to stop waiting."""
        unwatchers: list[Callable[[], None]] = []

        def fire() -> None:
            if not d.called:
                for u in unwatchers:
                    u()
                if timer.active():
                    timer.cancel()
                d.callback(None)

        def cancel(_: Deferred[None]) -> None:
            for u in unwatchers:
                u()
            if timer.active():
                timer.cancel()

        d: Deferred[None] = Deferred(cancel)
        timer = self.clock.callLater(seconds, fire)
        for p in range(partitions):
            unwatchers.append(self.watch(name, p, fire))
        return d
