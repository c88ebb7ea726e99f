"""The partitions this node leads and how many of them are under-replicated,
kept up to date by what changed (issue 23): ``GET /v1/cluster`` and the
metrics scrape ask for the two counts, and an idle node of 10,000 partitions
must not walk them all to answer.  Pure: no Twisted, no clock.

:class:`LedTally` keeps a verdict per partition led here (under-replicated
or not) and the two counts.  Its owner marks what may have changed -- a
partition (its replica produced an output: a role, a follower's position or
the high watermark moved), a topic (its placement or configuration was
applied), or everything (a member's state, the registered nodes) -- and
:meth:`LedTally.refresh` judges again only what was marked.

The tests count the partitions judged (``tests/unit/cluster/test_led_tally.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

Key = tuple[str, int]


class LedTally:
    """Verdicts of the partitions led here, re-judged only when marked."""

    def __init__(self) -> None:
        #: Partitions led here -> under-replicated.
        self._led: dict[Key, bool] = {}
        #: Partition numbers led here, by topic (to forget a topic's).
        self._by_topic: dict[str, set[int]] = {}
        self._under = 0
        self._keys: set[Key] = set()
        self._topics: set[str] = set()
        self._all = True
        #: Partitions judged so far (the tests count a refresh's work with it).
        self.judged = 0

    @property
    def leading(self) -> int:
        """Partitions led here (or held alone), as last judged."""
        return len(self._led)

    @property
    def under_replicated(self) -> int:
        """Of them, those under-replicated, as last judged."""
        return self._under

    def mark(self, keys: Iterable[Key]) -> None:
        """These partitions may have changed: judged again on the next refresh."""
        if not self._all:
            self._keys.update(keys)

    def led_keys(self) -> list[Key]:
        """The partitions led here, as last judged."""
        return list(self._led)

    def mark_topic(self, name: str) -> None:
        """Topic ``name`` (its placement, configuration, or itself) changed."""
        if not self._all:
            self._topics.add(name)

    def mark_all(self) -> None:
        """What every verdict depends on changed: judge all again."""
        self._all = True
        self._keys.clear()
        self._topics.clear()

    @property
    def pending(self) -> int:
        """Partitions and topics marked and not judged yet (everything: -1)."""
        return -1 if self._all else len(self._keys) + len(self._topics)

    def refresh(
        self,
        judge: Callable[[Key], bool | None],
        every: Callable[[], Iterable[Key]],
        partitions: Callable[[str], int],
        limit: int | None = None,
    ) -> bool:
        """Judge what was marked: ``judge(key)`` is None when the partition is
        not led here, else whether it is under-replicated; ``every()`` lists
        every partition that may be led here (for :meth:`mark_all`);
        ``partitions(name)`` is how many partitions topic ``name`` has now
        (0: none, or deleted).  With ``limit``, at most that many are judged
        and the rest stay pending (the counts are partial meanwhile: a
        caller on the reactor judges a start's 10,000 partitions over several
        turns, tidy41); True once nothing is pending."""
        if self._all:
            self._all = False
            self._led.clear()
            self._by_topic.clear()
            self._under = 0
            self._keys = set(every())
        keys = self._keys
        topics, self._topics = self._topics, set()
        for name in topics:
            # Its partitions now, and those led here before (a topic deleted, or shrunk).
            keys.update((name, p) for p in range(partitions(name)))
            keys.update((name, p) for p in self._by_topic.get(name, ()))
        if limit is None or len(keys) <= limit:
            self._keys = set()  # (a new table: the judged keys' would stay as large)
            for key in keys:
                self._set(key, judge(key))
            return True
        for _ in range(limit):
            key = keys.pop()
            self._set(key, judge(key))
        return False

    def _set(self, key: Key, verdict: bool | None) -> None:
        self.judged += 1
        old = self._led.pop(key, None)
        if old:
            self._under -= 1
        if verdict is None:
            if old is not None:
                parts = self._by_topic.get(key[0])
                if parts is not None:
                    parts.discard(key[1])
                    if not parts:
                        del self._by_topic[key[0]]
            return
        self._led[key] = verdict
        self._by_topic.setdefault(key[0], set()).add(key[1])
        if verdict:
            self._under += 1
