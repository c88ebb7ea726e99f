"""The reactor pytest-twisted runs, and the bound on every real wait of the in-process
tests."""

from __future__ import annotations

from typing import Any


def the_reactor() -> Any:
    """The reactor pytest-twisted installed and runs, looked up at call time.

    Tests never bind the global reactor at import: importing it at module level
    would install the default reactor before the test runner chooses one.
    """
    from twisted.internet import reactor

    return reactor


#: Seconds: the bound on every real wait in the in-process tests.
WAIT = 10.0


def bounded(d: Any, timeout: float = WAIT) -> Any:
    """``d``, failing with TimeoutError if it has not fired within ``timeout`` real seconds."""
    return d.addTimeout(timeout, the_reactor())
