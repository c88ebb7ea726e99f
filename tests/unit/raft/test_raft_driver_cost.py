"""What the Raft driver's Ready loop costs per proposal (issue 23, create40):
the Deferred plumbing around the Ready that applies a committed entry.

The usual Ready of a topic create on every node carries only the commit
index and the entry to apply: it waits for no write.  The driver handled
each kick in a coroutine (``ensureDeferred``), every applied entry through
``maybeDeferred`` and their side effects through ``gatherResults`` -- about
300 lines of Twisted's ``defer.py`` per create on each node of a real
cluster (``benchmarks.create_cost --lines``).  The work is counted, not
timed: the Python lines run in Twisted's package while the leader steps the
acknowledgement that commits an entry, and the entry is applied at once.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock

from harness.lines import lines_run
from sprawl.raft.driver import RaftDriver
from sprawl.raft.messages import ConfState, Entry, Message, MessageType
from sprawl.raft.node import Config, Ready, Role
from sprawl.raft.storage import MemoryStorage

TWISTED_DIR = str(Path(sys.modules[defer.__name__].__file__ or "").parent.parent)


class SyncStorage(MemoryStorage):
    """A :class:`MemoryStorage` with the driver's write call: a write the
    driver waits for is on "disk" at once (its Deferred fired), so the whole
    Ready loop runs in the call; one it does not wait for (the commit index
    alone) is committed later, as the store's next group commit does
    (:attr:`later`)."""

    def __init__(self, conf_state: ConfState) -> None:
        super().__init__(conf_state)
        self.later: list[defer.Deferred[None]] = []

    def save_ready(self, rd: Ready, urgent: bool = True) -> defer.Deferred[None]:
        if rd.snapshot is not None:
            self.apply_snapshot(rd.snapshot)
        if rd.entries:
            self.append(rd.entries)
        if rd.hard_state is not None:
            self.set_hard_state(rd.hard_state)
        if urgent:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self.later.append(d)
        return d


def leader() -> tuple[RaftDriver, list[defer.Deferred[None]], list[bytes]]:
    """Node 1 of three, leading (by hand: no ticks), its no-op committed;
    returns the driver, the writes committed later (the commit index's, the
    applied entries' side effects), and what it applied."""
    later: list[defer.Deferred[None]] = []
    applied: list[bytes] = []

    def apply(e: Entry) -> Any:
        applied.append(e.data)
        d: defer.Deferred[None] = defer.Deferred()  # (its durable side effect, as MetadataApply's)
        later.append(d)
        return d

    storage = SyncStorage(ConfState(voters=(1, 2, 3)))
    storage.later = later
    driver = RaftDriver(
        storage,  # type: ignore[arg-type]
        Config(id=1, election_tick=10, heartbeat_tick=1, pre_vote=False, check_quorum=False),
        Clock(),
        random.Random(1),
        lambda m: None,
        apply,
        lambda snap: None,
    )
    driver.node.campaign()
    driver.kick()
    driver.step(Message(MessageType.VOTE_RESP, to=1, frm=2, term=driver.node.term))
    assert driver.node.role == Role.LEADER
    driver.step(
        Message(MessageType.APP_RESP, to=1, frm=2, term=driver.node.term, index=driver.node.log.last_index())
    )
    assert driver.node.log.committed == driver.node.log.last_index()
    return driver, later, applied


def commit_later(later: list[defer.Deferred[None]]) -> None:
    """The store's next group commit: every write queued so far is on disk."""
    while later:
        later.pop(0).callback(None)


def test_the_ready_that_applies_a_committed_entry_runs_no_coroutine() -> None:
    """The follower's acknowledgement that commits a proposal: the commit,
    the apply and the advance run in the call, and cost at most a few lines
    of Twisted (the apply's side effect watched for failure), not the ~100
    of a coroutine, ``maybeDeferred`` and ``gatherResults`` per Ready."""
    driver, later, applied = leader()
    commit_later(later)
    costs = []
    for i in range(5):
        driver.propose(b"create-%d" % i)  # (the entry written -- at once here -- and sent)
        index = driver.node.log.last_index()
        ack = Message(MessageType.APP_RESP, to=1, frm=2, term=driver.node.term, index=index)
        costs.append(lines_run(lambda ack=ack: driver.step(ack), TWISTED_DIR))  # type: ignore[misc]
        assert driver.applied == index and applied[-1] == b"create-%d" % i
        assert not driver._busy and driver.failed is None
        commit_later(later)
    print(f"lines of Twisted per commit-and-apply Ready: {costs}")
    assert max(costs) <= 30, costs


def test_a_side_effect_that_fails_stops_the_driver_once() -> None:
    """An applied entry's durable side effect that fails (later, as a write
    does) stops the driver -- as before, through the same :meth:`_crashed`."""
    driver, later, _ = leader()
    commit_later(later)
    failing: defer.Deferred[None] = defer.Deferred()
    driver.apply = lambda e: failing
    driver.propose(b"x")
    driver.step(
        Message(MessageType.APP_RESP, to=1, frm=2, term=driver.node.term, index=driver.node.log.last_index())
    )
    assert driver.failed is None
    failing.errback(RuntimeError("disk gone"))
    assert driver.failed is not None
    driver.propose(b"y")  # (refused by no one, but the loop no longer runs)
    assert driver.applied < driver.node.log.last_index()
