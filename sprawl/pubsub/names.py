"""Topic and group names: the rule both follow, checked where a name comes in."""

from __future__ import annotations

import time

from sprawl.config import TOPIC_NAME
from sprawl.errors import BadRequest

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
