"""The opt-in offset timeline (:mod:`sprawl.storage.timeline`): off unless asked,
every N-th offset's events and every commit's steps written as lines."""

from __future__ import annotations

import os
from pathlib import Path

from sprawl.storage.timeline import Timeline, from_env


def _lines(path: Path) -> list[list[str]]:
    return [line.split() for line in (path.parent / f"{path.name}.{os.getpid()}").read_text().splitlines()]


def test_off_unless_the_environment_asks() -> None:
    """No variable (or an empty one): no timeline."""
    assert from_env(None) is None
    assert from_env("") is None


def test_every_nth_offset_of_a_range_is_marked(tmp_path: Path) -> None:
    """A range's sampled offsets each get a line with the event and a time; the
    rest of the range none; a commit gets its steps; all reach the file on flush."""
    tl = from_env(f"{tmp_path / 'tl'}:10")
    assert isinstance(tl, Timeline) and tl.every == 10
    tl.mark("pub", 5, 25)  # 10 and 20
    tl.mark("f_hw", 21)  # not sampled
    tl.mark_at("fwd_sent", 1.5, 30, 31)
    assert tl.sampled(19, 21) and not tl.sampled(21, 30)
    tl.commit(1.0, 1.1, 1.2, 1.5, 1.6, 3)
    tl.flush()
    got = _lines(tmp_path / "tl")
    assert [(o, e) for o, e, *_ in got] == [
        ("10", "pub"),
        ("20", "pub"),
        ("30", "fwd_sent"),
        ("-1", "commit"),
    ]
    assert got[2][2] == "1.500000"
    assert got[3][2:] == ["1.000000", "1.100000", "1.200000", "1.500000", "1.600000", "3"]


def test_a_path_alone_samples_every_fiftieth(tmp_path: Path) -> None:
    """Without ``:EVERY`` the default is every 50th offset."""
    tl = from_env(str(tmp_path / "x"))
    assert tl is not None and tl.every == 50
