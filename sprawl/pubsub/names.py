"""Topic and group names: the rule both follow, checked where a name comes in."""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from sprawl.config import TOPIC_NAME
from sprawl.errors import BadRequest

V = TypeVar("V")

_GROUP_NAME = TOPIC_NAME


def check_topic_name(name: str) -> None:
    """Topic names are ``[A-Za-z0-9._-]{1,249}``, except ``.`` and ``..``
    (path segments a URL would resolve away)."""
    if not isinstance(name, str) or not TOPIC_NAME.match(name) or name in (".", ".."):
        raise BadRequest(
            "topic names are 1-249 characters of A-Z a-z 0-9 . _ -, and not . or ..",
            code="invalid_topic_name",
        )


def check_group_name(name: str) -> None:
    """Group names follow the topic name rule."""
    if not isinstance(name, str) or not _GROUP_NAME.match(name) or name in (".", ".."):
        raise BadRequest(
            "group names are 1-249 characters of A-Z a-z 0-9 . _ -, and not . or ..",
            code="invalid_group_name",
        )


def wall_clock_ms() -> int:
    """Milliseconds since the epoch (for callers without a clock)."""
    return int(time.time() * 1000)


class NameIndex(dict[str, V]):
    """A dict keyed by name that also keeps its names in sorted order, so a
    page of names past a given one costs O(log n + page) however many there
    are (the paginated topic list, issue 23) instead of a scan of them all.

    Every way of adding or removing a key keeps the order (``dict``'s own
    ``update``/``setdefault``/``pop``... bypass ``__setitem__``, so each is
    overridden); a lookup is a plain ``dict`` lookup."""

    def __init__(self, items: Mapping[str, V] | Iterable[tuple[str, V]] = ()) -> None:
        super().__init__(items)
        self._sorted: list[str] = sorted(super().keys())

    def __setitem__(self, name: str, value: V) -> None:
        if name not in self:
            bisect.insort(self._sorted, name)
        super().__setitem__(name, value)

    def __delitem__(self, name: str) -> None:
        super().__delitem__(name)
        del self._sorted[bisect.bisect_left(self._sorted, name)]

    def pop(self, name: str, *default: Any) -> Any:
        """As ``dict.pop``."""
        if name in self:
            value = super().__getitem__(name)
            del self[name]
            return value
        if default:
            return default[0]
        raise KeyError(name)

    def popitem(self) -> tuple[str, V]:
        """As ``dict.popitem``."""
        name, value = super().popitem()
        del self._sorted[bisect.bisect_left(self._sorted, name)]
        return name, value

    def setdefault(self, name: str, default: Any = None) -> Any:
        """As ``dict.setdefault``."""
        if name not in self:
            self[name] = default
        return super().__getitem__(name)

    def update(self, *args: Any, **kw: Any) -> None:
        """As ``dict.update``."""
        for name, value in dict(*args, **kw).items():
            self[name] = value

    def clear(self) -> None:
        """As ``dict.clear``."""
        super().clear()
        self._sorted.clear()

    def __ior__(self, other: Any) -> NameIndex[V]:  # type: ignore[override,misc]
        self.update(other)
        return self

    def names_after(self, after: str | None, limit: int) -> list[str]:
        """At most ``limit`` names, in order, of those sorting after ``after``
        (None: from the first)."""
        i = 0 if after is None else bisect.bisect_right(self._sorted, after)
        return self._sorted[i : i + limit]

    def sorted_names(self) -> list[str]:
        """Every name, in order (a copy)."""
        return list(self._sorted)
