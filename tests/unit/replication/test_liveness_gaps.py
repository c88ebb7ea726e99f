"""The longest silence of each node, as the controller's liveness judges it
(issue 23, failserve): the measure that says whether the beat timeout could
be shorter without failing over nodes that were only slow."""

from __future__ import annotations

import pytest

from sprawl.replication.liveness import NodeLiveness


def test_the_longest_silence_judged_is_taken_and_forgotten() -> None:
    """Each judgement records each node's silence (counted up to the last
    time anything was heard); the longest per node is handed out once, then
    forgotten -- a node found silent included (its silence was judged)."""
    lv = NodeLiveness(2.0)
    lv.heard("a", 0.0)
    lv.heard("b", 0.0)
    for i in range(1, 15):
        lv.heard("b", i / 10)
        assert lv.newly_silent(["a", "b"], i / 10) == []
    lv.heard("a", 1.5)
    assert lv.newly_silent(["a", "b"], 1.5) == []
    assert lv.take_gaps() == pytest.approx({"a": 1.4, "b": 0.1})
    assert lv.take_gaps() == {}
    for i in range(16, 40):
        lv.heard("b", i / 10)
        lv.newly_silent(["a", "b"], i / 10)
    assert lv.is_silent("a") and lv.take_gaps()["a"] == pytest.approx(2.1)


def test_a_stall_of_the_controller_counts_against_no_one() -> None:
    """Nothing read for 5 s (this node stalled): the judgement after it, before
    the frames waiting in its sockets are read, sees no silence."""
    lv = NodeLiveness(2.0)
    lv.heard("a", 0.0)
    lv.heard("b", 0.0)
    assert lv.newly_silent(["a", "b"], 5.0) == []
    assert max(lv.take_gaps().values(), default=0.0) == 0.0
