"""Counting the calls of one function a test patches (``monkeypatch``): the
counting tests' shared wrapper, so each names what it counts, not how."""

from __future__ import annotations

from typing import Any

import pytest


def count_calls(
    monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, into: list[str] | None = None
) -> list[str]:
    """Replace ``owner.name`` (a module's function, or a class's method) by a
    wrapper that appends ``name`` to ``into`` (a new list if None) and calls
    the real one; returns ``into``.  ``monkeypatch`` restores it after the test."""
    calls: list[str] = [] if into is None else into
    real = getattr(owner, name)

    def counted(*args: Any, **kw: Any) -> Any:
        calls.append(name)
        return real(*args, **kw)

    monkeypatch.setattr(owner, name, counted)
    return calls
