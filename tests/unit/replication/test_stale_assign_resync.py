"""A follower fenced past the placement's epoch finds its leader again
(stuck34: replicas "catching up" forever after a restart).

The state idle23 saw in two of six restarts of a 10,000-topic data set:
a failover fenced the followers at epoch 2 and its choice was never
committed (the controller lost its Raft leadership), so the placement still
names the old leader at epoch 1 -- which the fence never reached: it still
leads epoch 1, its followers hold its whole log, so it is idle and sends
nothing.  A follower that restarts then has promised epoch 2 and no leader;
its node's apply hands it the placement's ``Assign(1, leader)``, older than
its promise, which it dropped without a word: idle (no leader), never
ticked, never asking, not caught up -- ``/readyz`` 503 for good.  Nothing
else moves: the controller's core is confirmed and idle, the leader is
heard (its node beats).

Now such a follower tells the named leader where it stands (its promised
epoch, its end), as it would answer that leader's append: the leader, unable
to lead with it, steps down and resigns, and the controller fails the
partition over at once -- every replica then hears the committed epoch's
``Assign`` and follows its leader.  Until a leader is heard the follower
asks again on its ticks, less often each time (the word may be lost on a
connection not yet up after the restart); a caught-up follower that hears a
stale ``Assign`` says so once and is not ticked for it (issue 23)."""

from __future__ import annotations

from sprawl.replication.failover import ControlOutput, FailoverCore
from sprawl.replication.messages import Append, AppendResp, Assign, Fence, Message, Resign
from sprawl.replication.replica import Replica

IDS = ("a", "b", "c")
CTRL = "ctrl"


class _Net:
    """Replicas and the controller's core; delivers messages in order."""

    def __init__(self, replicas: dict[str, Replica], core: FailoverCore) -> None:
        self.replicas = replicas
        self.core = core
        self.todo: list[tuple[str, str, Message]] = []
        self.commits = 0

    def said(self, src: str, messages: list[tuple[str, Message]]) -> None:
        self.todo.extend((src, dst, m) for dst, m in messages)

    def control(self, out: ControlOutput) -> None:
        self.said(CTRL, out.messages)
        if out.commit is not None:  # committed at once (the Raft proposal succeeds)
            self.commits += 1
            self.control(self.core.committed(True))

    def settle(self) -> None:
        for _ in range(1000):
            if not self.todo:
                return
            src, dst, m = self.todo.pop(0)
            if dst == CTRL:
                self.control(self.core.receive(src, m))
            else:
                self.said(dst, self.replicas[dst].receive(src, m).messages)
        raise AssertionError("the messages did not settle")


def _led_by_a() -> tuple[dict[str, Replica], FailoverCore, _Net]:
    """Three replicas, ``a`` assigned the leader of epoch 1, settled."""
    replicas = {r: Replica(r, CTRL) for r in IDS}
    core = FailoverCore(IDS, epoch=1, leader="a")
    net = _Net(replicas, core)
    for r in IDS:
        net.said(r, replicas[r].receive(CTRL, Assign(1, "a", IDS)).messages)
    net.settle()
    return replicas, core, net


def _stuck_after_restart() -> tuple[_Net, dict[str, Replica]]:
    """``a`` leads epoch 1 and is idle; an uncommitted failover fenced ``b``
    and ``c`` at epoch 2 (not ``a``); then ``b`` and ``c`` restarted from what
    they stored (their log, the promise of epoch 2)."""
    replicas, core, net = _led_by_a()
    assert core.leader_confirmed and core.idle
    assert replicas["a"].is_leader and replicas["a"].idle
    assert all(r.end == 1 and r.hw == 1 for r in replicas.values())
    for r in ("b", "c"):
        replicas[r].receive("old-ctrl", Fence(2))  # the choice never committed
    for r in ("b", "c"):  # restart: the stored log, epochs and promise
        old = replicas[r]
        replicas[r] = Replica(r, CTRL, cache=old.cache, fenced_epoch=old.fenced_epoch, hw=old.hw)
    assert replicas["a"].is_leader and replicas["a"].epoch == 1
    return net, replicas


def test_a_restarted_follower_fenced_past_the_placement_follows_a_leader_again() -> None:
    """Each restarted follower hears the placement's stale ``Assign(1, a)``
    from its node's apply; the leader it names steps down and resigns, the
    controller commits epoch 2, and both followers catch up -- without a
    single tick."""
    net, replicas = _stuck_after_restart()
    for r in ("b", "c"):
        net.said(r, replicas[r].receive(CTRL, Assign(1, "a", IDS)).messages)
    net.settle()
    assert net.commits == 1 and net.core.epoch == 2
    leader = replicas[str(net.core.leader)]
    assert leader.is_leader and leader.epoch == 2
    for r in ("b", "c"):
        assert replicas[r].caught_up and replicas[r].leader == net.core.leader
        assert replicas[r].epoch == 2


def test_a_lost_word_is_said_again_on_ticks_until_a_leader_is_heard() -> None:
    """The word said on the stale Assign is lost (the restarted node's
    connections are not up yet): the not-caught-up follower is not idle,
    and its ticks say it again, within ``retry_ticks``, until the
    failover's leader catches it up; then it is idle again."""
    net, replicas = _stuck_after_restart()
    b = replicas["b"]
    lost = b.receive(CTRL, Assign(1, "a", IDS)).messages
    assert lost and all(isinstance(m, AppendResp) and m.epoch == 2 for _, m in lost)
    assert not b.idle  # it has a leader to ask: the placement's
    ticks = 0
    while not b.caught_up:
        assert ticks < 10 * b.retry_ticks, f"b never caught up ({ticks} ticks)"
        ticks += 1
        net.said("b", b.tick().messages)
        net.settle()
    assert ticks == b.retry_ticks
    assert net.commits == 1 and b.idle and b.leader == net.core.leader


def test_a_caught_up_follower_says_it_once_and_is_not_ticked() -> None:
    """A follower that caught up since it was built, fenced past the
    placement (no restart), says where it stands on a stale Assign but
    stays idle: no tick per idle partition (issue 23)."""
    replicas = _led_by_a()[0]
    b = replicas["b"]
    assert b.caught_up
    b.receive("old-ctrl", Fence(2))
    said = b.receive(CTRL, Assign(1, "a", IDS)).messages
    assert said == [("a", AppendResp(2, False, b.end, b.hw))]
    assert b.idle and b.tick().messages == []


def test_a_stale_word_from_a_follower_changes_nothing_for_a_newer_leader() -> None:
    """The follower's word reaches a leader of the promised epoch (or a
    later one): it is the usual refusal (answered with an append: here the
    one already on its way), and the leader keeps leading."""
    a = Replica("a", CTRL)
    first = a.receive(CTRL, Assign(2, "a", IDS)).messages
    assert any(d == "b" and isinstance(m, Append) for d, m in first)
    out = a.receive("b", AppendResp(2, False, 0, 0))
    assert a.is_leader and a.epoch == 2
    assert not any(isinstance(m, Resign) for _, m in out.messages)


def test_a_stale_leader_whose_resign_was_lost_resigns_again_when_asked() -> None:
    """The leader stepped down on the follower's word, but its ``Resign``
    was lost: the controller's core stays confirmed and idle.  The
    follower, still not caught up, asks again on its ticks; the former
    leader, no longer leading, resigns the epoch it led again, and the
    partition fails over."""
    net, replicas = _stuck_after_restart()
    b = replicas["b"]
    word = b.receive(CTRL, Assign(1, "a", IDS)).messages
    stepped = replicas["a"].receive("b", word[0][1]).messages
    assert ("ctrl", Resign(1)) in stepped and not replicas["a"].is_leader  # ... and lost
    assert net.core.idle and net.core.leader == "a"
    ticks = 0
    while not b.caught_up:
        assert ticks < 10 * b.retry_ticks, f"b never caught up ({ticks} ticks)"
        ticks += 1
        net.said("b", b.tick().messages)
        net.settle()
    assert net.commits == 1 and net.core.epoch == 2 and b.leader == net.core.leader


def test_a_follower_whose_first_append_was_lost_is_caught_up_though_it_keeps_asking() -> None:
    """The integration test's failure (``test_three_nodes_elect_fail_over_and_catch_up_by_snapshot``,
    ``/readyz`` 503 with "catching up: ... while-down-12/0"): ``x`` came back
    and, before the failover's commit reached it, led the placement's epoch
    1 for a moment (a control record of epoch 1 at offset 0).  ``a`` leads
    epoch 2 (its own control record at 0, committed with ``c``); its first
    append to ``x`` was dropped (``x``'s node had no replica of the partition
    yet: "not a replica of the partition", as were its resends).  ``x`` says where it stands on
    the Assign and on its ticks -- its end, 1 -- and each time ``a`` sends a
    heartbeat at 1, which ``x`` refuses naming 0 (its record at 0 is of
    another epoch): a refusal that ``a`` took for a word sent before its
    lost append (in flight, so not sent again), while every ask reset the
    ticks after which that append counts as lost.  ``x`` never caught up.
    Now an ask that rewinds nothing does not reset them: the append goes
    again within the stall bound and ``x`` catches up."""
    from sprawl.replication.epochs import EpochCache

    reps = ("x", "a", "c")
    a, c = Replica("a", CTRL), Replica("c", CTRL)
    first = a.receive(CTRL, Assign(2, "a", reps)).messages
    c.receive(CTRL, Assign(2, "a", reps))
    to_c = [m for d, m in first if d == "c"]
    assert [m for d, m in first if d == "x" and isinstance(m, Append) and m.count == 1]  # ... lost
    for m in to_c:
        for _d, r in c.receive("a", m).messages:
            a.receive("c", r)
    a.stored(a.end)
    assert a.hw == 1 and a.end == 1
    for _ in range(20):  # its resends to x are dropped too, until x's node applies the snapshot
        for d, m in a.tick().messages:
            for _d, r in c.receive("a", m).messages if d == "c" else []:
                a.receive("c", r)
    assert a.followers["x"].stall_limit > a.retry_ticks  # (it waits longer after each)
    x = Replica("x", CTRL, cache=EpochCache(runs=[(1, 0)], end=1), fenced_epoch=2, led_epoch=1)
    nodes = {"a": a, "c": c, "x": x}
    todo: list[tuple[str, str, Message]] = [
        ("x", d, m) for d, m in x.receive(CTRL, Assign(2, "a", reps)).messages
    ]
    ticks = 0
    while True:
        for _ in range(100):  # (x's word on the Assign first)
            if not todo:
                break
            src, dst, m = todo.pop(0)
            if dst in nodes:
                todo.extend((dst, d, x2) for d, x2 in nodes[dst].receive(src, m).messages)
        if x.caught_up:
            break
        assert ticks < 100, f"x never caught up ({ticks} ticks): end {x.end}, hw {x.hw}"
        ticks += 1
        for n, r in nodes.items():
            todo.extend((n, d, m) for d, m in r.tick().messages)
    assert ticks <= a.max_ask_ticks  # within the stall bound
    assert x.hw == 1 and x.cache.epoch_at(0) == 2 and a.followers["x"].match == 1
