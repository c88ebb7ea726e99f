"""The scale benchmark's note of the nodes whose background scrub ran during an
idle-CPU window (``benchmarks.scale.scrubbed``): a pass reads every partition,
so such a window measures the scrub (issue 23: the "restarted node stays busy"
of the quiet run was its scrub pass, out of phase with the others')."""

from __future__ import annotations

from benchmarks.scale import scrubbed


def test_a_node_idle_at_both_ends_with_no_pass_done_did_not_scrub() -> None:
    """Same passes, not running before or after: not named."""
    assert scrubbed({"n0": (2, False), "n1": (1, False)}, {"n0": (2, False), "n1": (1, False)}) == []


def test_a_pass_running_at_either_end_or_done_within_is_named() -> None:
    """Running at the start, running at the end, or a pass done in between."""
    before = {"n0": (2, True), "n1": (1, False), "n2": (3, False)}
    after = {"n0": (3, False), "n1": (1, True), "n2": (4, False)}
    assert scrubbed(before, after) == ["n0", "n1", "n2"]


def test_a_node_unknown_before_counts_as_scrubbing() -> None:
    """A node that did not answer before the window: its state is unknown, named."""
    assert scrubbed({}, {"n0": (1, False)}) == ["n0"]
