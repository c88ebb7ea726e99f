"""A dead node's fences are taken in one batch per reactor turn (issue 23,
failover23): each partition's promise used to go through its output chain
-- a coroutine, an LMDB write and a gather per partition -- which was most of
the controller's own CPU in the failover step (0.56 s of 0.74 s at 2,000
partitions).  Now the fences a node hears in one turn are taken together:
every promise in one write, then the answers.

Real brokers on LMDB and the real services (:mod:`benchmarks.failover_apply`),
not ticking: counted, not timed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from benchmarks.failover_apply import Failover
from harness import the_reactor
from sprawl.replication.messages import Fence, FenceResp
from sprawl.replication.partition import PartitionReplication


async def _fences(path: Path, partitions: int, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """One failover of ``partitions``: per survivor, the fences batched, the
    batches, the outputs with a fence answer that went through an output
    chain, and the LMDB commits until every choice was made."""
    chained: dict[str, int] = {"a": 0, "c": 0}
    handle = PartitionReplication._handle

    def counting(self: PartitionReplication, out: Any, records: Any) -> None:
        if any(isinstance(m, FenceResp) for _, m in out.messages):
            chained[self.core.id] += 1
        handle(self, out, records)

    monkeypatch.setattr(PartitionReplication, "_handle", counting)
    fo = Failover(path, partitions, the_reactor(), ticking=False)
    try:
        await fo.setup()
        fo.start()
        await fo.until_led()
        await fo.quiet()
        cores = fo.nodes["a"].service.controllers.values()
        assert all(c.epoch == 2 and c.leader == "a" for c in cores)
        return {
            n: (node.service.fences_batched, node.service.fence_batches, chained[n])
            for n, node in fo.nodes.items()
        }
    finally:
        await fo.close()


@pytest_twisted.ensureDeferred
async def test_a_dead_nodes_fences_are_one_batch_per_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With 100 and with 1,000 partitions failing over, each survivor takes
    every fence in one batch (the controller's own in the turn it fails
    them over, the other survivor's in the turn their frames arrive) and no
    fence answer goes through an output chain."""
    for n in (100, 1_000):
        got = await _fences(tmp_path / str(n), n, monkeypatch)
        assert got == {"a": (n, 1, 0), "c": (n, 1, 0)}, (n, got)


def test_a_fence_behind_a_busy_chain_waits_its_turn() -> None:
    """A partition whose chain is at work takes the fence on the chain, in
    order (its answer leaves after the writes queued before it)."""
    from sprawl.replication.replica import Replica

    r: Any = PartitionReplication.__new__(PartitionReplication)
    r.failed, r._running, r._queued, r._pending_cuts = None, True, [], 0
    r.topic = type("T", (), {"deleted": False})()
    got: list[Any] = []
    r.receive = lambda src, m, recs: got.append((src, m))
    r.core = Replica("a", "ctrl")
    assert r.fence_ops("ctrl", Fence(2)) is None
    assert got == [("ctrl", Fence(2))] and r.core.fenced_epoch == 0  # the chain's turn, not the batch's


def test_unanswered_fences_are_sent_again_with_doubling_gaps() -> None:
    """A replica that does not answer is fenced again after ``retry_ticks``
    (3), then 6 and 12 ticks later -- not every 3 ticks: a busy survivor's
    late answers for thousands of partitions are not chased with a fence
    each (a frame and an answer) every 0.3 s; the fencing still gives up
    and starts a later epoch after ``3 * beat_timeout_ticks``."""
    from sprawl.replication.failover import FailoverCore

    c = FailoverCore(("a", "b", "c"), epoch=1, leader="a", beat_timeout_ticks=10)
    c.start_failover()
    c.receive("b", FenceResp(2, True, 1, 5))  # one answer: no majority yet
    again = []
    for tick in range(1, 31):
        out = c.tick()
        if any(isinstance(m, Fence) for _, m in out.messages):
            assert sorted(d for d, _ in out.messages) == ["a", "c"]  # not b, which answered
            again.append(tick)
    assert again == [3, 9, 21]
    assert c.fencing is not None and c.fencing.epoch == 2
    out = c.tick()  # the 31st: past 3 beat timeouts
    assert c.fencing is not None and c.fencing.epoch == 3
