"""Unit tests of the pure replication cores: the epoch cache, a leader and
two followers exchanging messages by hand, and the controller's pick."""

from __future__ import annotations

import pytest

from sprawl.replication.epochs import EpochCache
from sprawl.replication.failover import FailoverCore
from sprawl.replication.messages import (
    Append,
    AppendResp,
    Assign,
    Fence,
    FenceResp,
    Handoff,
    HandoffReady,
    LeaderBeat,
    Resign,
)
from sprawl.replication.replica import LEADER, NotLeader, Output, Replica, SafetyError


def test_epoch_cache_answers_epochs_and_epoch_ends() -> None:
    """Runs answer "which epoch wrote offset o" and "where does epoch e end"."""
    c = EpochCache()
    c.append(1, 5)
    c.append(3, 4)
    c.append(4, 3)
    assert c.end == 12 and c.runs == [(1, 0), (3, 5), (4, 9)]
    assert [c.epoch_at(o) for o in (0, 4, 5, 8, 9, 11)] == [1, 1, 3, 3, 4, 4]
    assert c.epoch_at(12) == -1 and c.epoch_at(-1) == 0
    assert c.end_of_epoch(2) == 5 and c.end_of_epoch(3) == 9 and c.end_of_epoch(9) == 12
    assert c.first_offset_of(3) == 5 and c.last_epoch == 4
    c.truncate(7)
    assert c.end == 7 and c.runs == [(1, 0), (3, 5)]
    with pytest.raises(ValueError):
        c.append(2, 1)  # epochs never go back


def test_the_last_runs_epoch_costs_the_same_however_many_runs_came_before() -> None:
    """The epoch of an offset in the last run -- what a leader asks several times a
    replicated message (an append's previous epoch, its derivable high watermark, the
    high watermark's own check) -- is answered without building the list of every
    run's start: the same Python lines with 50 runs before it as with none (issue 16,
    lat40b); offsets in earlier runs are answered as before."""
    from harness.lines import lines_run
    from sprawl.replication import epochs

    def cache(runs: int) -> EpochCache:
        c = EpochCache()
        for e in range(1, runs + 1):
            c.append(e, 3)
        return c

    one, many = cache(1), cache(51)
    assert many.epoch_at(many.end - 1) == 51 and one.epoch_at(one.end - 1) == 1
    assert [many.epoch_at(o) for o in (0, 2, 3, 149, 150)] == [1, 1, 2, 50, 51]
    cost_one = lines_run(lambda: one.epoch_at(one.end - 1), epochs.__file__)
    cost_many = lines_run(lambda: many.epoch_at(many.end - 1), epochs.__file__)
    assert cost_many == cost_one, (cost_one, cost_many)


def test_epoch_cache_advances_its_start_past_retention() -> None:
    """Retention moving the log start keeps the epochs of what is left and
    records the epoch just before the new start as the base epoch; the
    start never moves back nor past the end."""
    c = EpochCache()
    c.append(1, 5)
    c.append(3, 4)
    c.append(4, 3)
    c.advance_start(7)
    assert c.log_start == 7 and c.base_epoch == 3 and c.runs == [(3, 7), (4, 9)]
    assert [c.epoch_at(o) for o in (6, 7, 8, 9, 11)] == [3, 3, 3, 4, 4]
    c.advance_start(9)
    assert c.base_epoch == 3 and c.runs == [(4, 9)] and c.epoch_at(8) == 3
    c.advance_start(2)  # never backwards
    assert c.log_start == 9
    c.advance_start(50)  # at most the end: an empty log
    assert c.log_start == c.end == 12 and c.runs == [] and c.base_epoch == 4 and c.last_epoch == 4
    c.append(5, 2)
    assert c.runs == [(5, 12)] and c.epoch_at(11) == 4 and c.epoch_at(12) == 5


def test_leader_commits_on_a_majority_and_followers_learn_the_high_watermark() -> None:
    """The high watermark moves only once a majority stores the records, and
    reaches the followers; a non-leader refuses publishes with a hint."""
    reps = ("a", "b", "c")
    nodes = {r: Replica(r, "ctrl") for r in reps}
    ctrl: list[tuple[str, object]] = []
    out = nodes["a"].receive("ctrl", Assign(1, "a", reps))
    out.extend(nodes["a"].stored(nodes["a"].end))
    assert nodes["a"].is_leader and nodes["a"].hw == 0  # the control record alone is not committed yet
    _route(out, nodes, ctrl, drop={"c"})
    first, out = nodes["a"].append(3)
    out.extend(nodes["a"].stored(nodes["a"].end))
    assert first == 1 and nodes["a"].hw <= 1
    _route(out, nodes, ctrl, drop={"c"})
    assert nodes["a"].hw == 4  # a + b: a majority of 3
    assert nodes["b"].hw == 4 and nodes["c"].end == 0
    with pytest.raises(NotLeader) as e:
        nodes["b"].append(1)
    assert e.value.leader == "a"


def test_a_pushed_high_watermark_is_answered_with_the_next_answer_only() -> None:
    """At one publish at a time the leader pushes each new high watermark to
    the followers the moment a majority holds the records; a caught-up
    follower learns it but does not answer the push (issue 16, quorum3: a
    frame each way per message) -- except the epoch's first push (the control
    record's: a failover's new leaders go idle without another round).  The
    leader, not knowing the follower's high watermark, is not idle, and its
    tick's heartbeat (not a push, after ``retry_ticks`` ticks) is answered;
    then it is idle."""
    reps = ("a", "b", "c")
    nodes = {r: Replica(r, "ctrl") for r in reps}
    a = nodes["a"]
    ctrl: list[tuple[str, object]] = []
    out = a.receive("ctrl", Assign(1, "a", reps))
    for r in ("b", "c"):
        out.extend(nodes[r].receive("ctrl", Assign(1, "a", reps)))
    out.extend(a.stored(a.end))
    _route(out, nodes, ctrl, drop=set())
    assert a.hw == 1 and a.idle  # the control record's push was answered
    _first, out = a.append(1)
    out.extend(a.stored(a.end))
    sent: list[tuple[str, str, object]] = []
    queue = [("a", dst, m) for dst, m in out.messages]
    while queue:
        src, dst, m = queue.pop(0)
        sent.append((src, dst, m))
        res = nodes[dst].receive(src, m)  # type: ignore[arg-type]
        queue.extend((dst, d, mm) for d, mm in res.messages if d != "ctrl")
    pushes = [(d, m) for s, d, m in sent if isinstance(m, Append) and m.push]
    # The leader's own copy was durable before any answer: the push is of its
    # durable end (issue 16, quorum37), from which each follower takes the high
    # watermark; the high watermark's own push, once the answers came, is not sent.
    assert sorted(d for d, _m in pushes) == ["b", "c"] and all(m.stored == 2 for _d, m in pushes)
    assert nodes["b"].hw == nodes["c"].hw == 2  # learned from the push
    answers = [m for s, d, m in sent if isinstance(m, AppendResp)]
    assert len(answers) == 2 and all(m.hw == 1 for m in answers)  # the records' answers only
    assert not a.idle
    # The leader's tick asks with a heartbeat (not a push) once the push has
    # gone unanswered for ``retry_ticks`` ticks (issue 23, failserve: a busy
    # follower is not chased every tick); its answer makes the leader idle.
    for _ in range(a.retry_ticks):
        _route(a.tick(), nodes, ctrl, drop=set())
    assert a.idle


def _three(n: int = 3) -> dict[str, Replica]:
    """A leader ``a`` of epoch 1 and its followers, every one holding the control record
    and the high watermark past it (the leader idle)."""
    reps = tuple("abcde"[:n])
    nodes = {r: Replica(r, "ctrl") for r in reps}
    a = nodes["a"]
    out = a.receive("ctrl", Assign(1, "a", reps))
    for r in reps[1:]:
        out.extend(nodes[r].receive("ctrl", Assign(1, "a", reps)))
    out.extend(a.stored(a.end))
    _route(out, nodes, [], drop=set())
    assert a.hw == 1 and a.idle
    return nodes


def _hand(nodes: dict[str, Replica], src: str, out: Output) -> list[tuple[str, str, object]]:
    """Deliver ``out``'s messages (the controller's aside); returns the answers
    they caused, undelivered, as (src, dst, message)."""
    replies: list[tuple[str, str, object]] = []
    for dst, m in out.messages:
        if dst != "ctrl":
            res = nodes[dst].receive(src, m)  # type: ignore[arg-type]
            replies += [(dst, d, mm) for d, mm in res.messages if d != "ctrl"]
    return replies


def test_a_follower_takes_the_high_watermark_from_the_leaders_durable_end() -> None:
    """Three replicas: the leader and one follower are a majority.  The
    leader's own copy durable, it tells its followers its durable end (on
    every append, and pushed when its write becomes durable); a follower
    holding the records takes that as its high watermark (shown once its own
    copy is durable: the adapter's cap) without waiting for its answer to
    reach the leader and the leader's push to come back (issue 16, quorum37).
    The leader's high watermark, moved by the answers after, is not pushed
    again to followers that took it so: no frame more than before."""
    nodes = _three()
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    _first, out = a.append(2)
    assert [m.stored for _d, m in out.messages if isinstance(m, Append)] == [1, 1]  # (not yet durable)
    answers = _hand(nodes, "a", out)  # the records reach the followers
    assert b.hw == c.hw == 1 and len(answers) == 2
    out = a.stored(a.end)  # the leader's own write is durable before any answer came
    assert a.hw == 1
    pushes = [m for _d, m in out.messages]
    assert sorted(d for d, _m in out.messages) == ["b", "c"]
    assert all(isinstance(m, Append) and m.push and m.stored == 3 and not m.count for m in pushes)
    assert _hand(nodes, "a", out) == []  # pushes are not answered
    assert b.hw == c.hw == 3  # committed: on the leader's disk and (once written) theirs
    later: list[tuple[str, object]] = []
    for s, _d, m in answers:  # now the answers reach the leader
        res = a.receive(s, m)  # type: ignore[arg-type]
        later += res.messages
    assert a.hw == 3
    assert later == []  # no push of the high watermark: both followers took it already
    for _ in range(a.retry_ticks):  # the tick's heartbeat learns their high watermark
        _route(a.tick(), nodes, [], drop=set())
    assert a.idle


def test_a_follower_waits_for_the_push_when_the_leaders_copy_is_no_majority_with_it() -> None:
    """Five replicas: the leader and one follower are no majority, so the
    leader sends no durable end (-1) and pushes nothing on its own write; a
    follower learns the high watermark from the leader's push, as before."""
    nodes = _three(5)
    a = nodes["a"]
    _first, out = a.append(1)
    assert all(m.stored == -1 for _d, m in out.messages if isinstance(m, Append))
    answers = _hand(nodes, "a", out)
    assert a.stored(a.end).messages == []
    assert all(nodes[r].hw == 1 for r in "bcde")
    for s, _d, m in answers:
        _route(a.receive(s, m), nodes, [], drop=set())  # type: ignore[arg-type]
    assert a.hw == 2 and all(nodes[r].hw == 2 for r in "bcde")  # from the push


def test_a_leaders_durable_end_commits_only_records_of_its_epoch() -> None:
    """A follower takes the leader's durable end as its high watermark only up
    to records of the leader's epoch (Raft's rule: older records commit with
    a record of the current epoch); and never past what it holds."""
    f = Replica("b", "ctrl")
    f.receive("a", Append(1, 0, 0, 3, ((1, 0),), 0))
    assert f.end == 3 and f.hw == 0
    f.receive("c", Append(2, 3, 1, 0, ((1, 0),), 0, stored=3))  # a new leader; the record at 2 is of epoch 1
    assert f.hw == 0
    f.receive("c", Append(2, 3, 1, 2, ((2, 3),), 0, stored=4))
    assert f.end == 5 and f.hw == 4  # the record at 3 is of epoch 2: [0, 4) committed
    f.receive("c", Append(2, 5, 2, 0, (), 0, stored=9))
    assert f.hw == 5  # not past what it holds


def _route(out: Output, nodes: dict[str, Replica], ctrl: list, drop: set[str]) -> None:
    queue = [("a", dst, m) for dst, m in out.messages]
    for _ in range(1000):
        if not queue:
            return
        src, dst, m = queue.pop(0)
        if dst == "ctrl":
            ctrl.append((src, m))
            continue
        if dst in drop:
            continue
        node = nodes[dst]
        res = node.receive(src, m)  # type: ignore[arg-type]
        if node.role == LEADER:
            res.extend(node.stored(node.end))
        queue.extend((dst, d, mm) for d, mm in res.messages)
    raise AssertionError("message storm")


def test_follower_truncates_a_divergent_uncommitted_suffix() -> None:
    """A follower holding records of an old epoch that the new leader lacks
    drops them (above its high watermark) and takes the leader's."""
    f = Replica("f", "ctrl")
    f.receive("old", Append(epoch=1, start=0, prev_epoch=0, count=4, runs=((1, 0),), hw=2))
    assert f.end == 4 and f.hw == 2
    out = f.receive("new", Append(epoch=2, start=2, prev_epoch=1, count=2, runs=((2, 2),), hw=2))
    assert out.writes[-1].truncate_to == 2
    assert f.cache.runs == [(1, 0), (2, 2)] and f.end == 4
    assert out.messages[-1][1] == AppendResp(2, True, 4, 2)


def test_follower_never_truncates_below_its_high_watermark() -> None:
    """A leader that disagrees below the follower's high watermark is a safety bug, and raises."""
    f = Replica("f", "ctrl")
    f.receive("old", Append(epoch=1, start=0, prev_epoch=0, count=4, runs=((1, 0),), hw=4))
    with pytest.raises(SafetyError):
        f.receive("bad", Append(epoch=2, start=1, prev_epoch=1, count=2, runs=((2, 1),), hw=0))


def test_fenced_replica_refuses_the_old_leader() -> None:
    """After Fence(2) a replica answers epoch-1 appends with a refusal naming epoch 2."""
    f = Replica("f", "ctrl")
    out = f.receive("ctrl", Fence(2))
    assert out.writes[0].fenced_epoch == 2 and out.messages == [("ctrl", FenceResp(2, True, 0, 0))]
    out = f.receive("old", Append(epoch=1, start=0, prev_epoch=0, count=1, runs=((1, 0),), hw=0))
    assert out.messages == [("old", AppendResp(2, False, 0, 0))] and f.end == 0


def test_a_restarted_leader_never_leads_the_same_epoch_again() -> None:
    """Assign(e, me) after a restart at led_epoch e is refused: the replica
    resigns to the controller (a new epoch is needed)."""
    r = Replica("a", "ctrl", fenced_epoch=3, led_epoch=3)
    assert r.receive("ctrl", Assign(3, "a", ("a", "b", "c"))).messages == [("ctrl", Resign(3))]
    assert not r.is_leader
    assert r.receive("ctrl", Assign(4, "a", ("a", "b", "c"))).writes[0].led_epoch == 4
    assert r.is_leader


def test_controller_picks_the_most_up_to_date_of_a_fenced_majority() -> None:
    """Failover fences epoch+1, waits for a majority, picks max (last_epoch, end), commits, then assigns."""
    c = FailoverCore(("a", "b", "c"), epoch=1, leader="a", beat_timeout_ticks=2)
    # Within the timeout only the (unconfirmed) assignment is repeated, every
    # retry_ticks (3) ticks from the first.
    assert c.tick().messages == [("a", Assign(1, "a", ("a", "b", "c")))]
    assert c.tick().messages == []
    out = c.tick()  # silent past the timeout
    assert sorted(out.messages) == [("a", Fence(2)), ("b", Fence(2)), ("c", Fence(2))]
    assert c.receive("b", FenceResp(2, True, 1, 7)).commit is None
    out = c.receive("c", FenceResp(2, True, 1, 9))
    assert out.commit is not None and out.commit.leader == "c" and out.commit.epoch == 2
    assert c.leader == "a"  # nothing changes until committed
    out = c.committed()
    assert c.epoch == 2 and c.leader == "c"
    assert ("c", Assign(2, "c", ("a", "b", "c"))) in out.messages
    c.receive("c", LeaderBeat(2, 0, 10))
    assert c.leader_confirmed


def test_a_reset_restarts_a_follower_behind_or_diverged_at_the_leaders_log_start() -> None:
    """A reset append restarts the follower's log empty at the leader's log
    start -- when the follower ends before it, and when its (uncommitted)
    record just before it is of another epoch (else the leader, unable to
    send anything below its log start, would reset it forever) -- but never
    drops records below the follower's high watermark."""
    behind = Replica("b", "ctrl")
    behind.cache.append(1, 3)
    out = behind.receive(
        "a", Append(epoch=2, start=10, prev_epoch=2, count=2, runs=((2, 10),), hw=11, reset=True)
    )
    resets = [(w.start, w.epoch) for w in out.writes if w.reset]
    assert resets == [(10, 2)]  # then the batch, at 10
    assert [(w.start, w.count) for w in out.writes if w.count] == [(10, 2)]
    assert out.writes.index(next(w for w in out.writes if w.reset)) < out.writes.index(
        next(w for w in out.writes if w.count)
    )
    assert (behind.cache.log_start, behind.end, behind.cache.base_epoch, behind.hw) == (10, 12, 2, 11)
    assert [m.ok for _d, m in out.messages] == [True]

    cache = EpochCache()
    cache.append(1, 12)  # offsets 0..11 of epoch 1; the leader's 9 is of epoch 2
    diverged = Replica("c", "ctrl", cache=cache, hw=2)
    out = diverged.receive(
        "a", Append(epoch=3, start=10, prev_epoch=2, count=2, runs=((3, 10),), hw=12, reset=True)
    )
    assert any(w.reset and w.start == 10 for w in out.writes)
    assert (diverged.cache.log_start, diverged.end, diverged.cache.epoch_at(9)) == (10, 12, 2)
    assert [m.ok for _d, m in out.messages] == [True]

    cache = EpochCache()
    cache.append(1, 12)
    committed = Replica("d", "ctrl", cache=cache, hw=11)
    with pytest.raises(SafetyError):
        committed.receive("a", Append(epoch=3, start=10, prev_epoch=2, count=0, runs=(), hw=12, reset=True))


def test_a_leader_whose_whole_log_went_to_retention_still_resets_a_follower() -> None:
    """Retention took everything up to the leader's end: a follower behind it
    is reset by an append with no records (else it would wait forever)."""
    leader = Replica("a", "ctrl")
    leader.receive("ctrl", Assign(1, "a", ("a", "b", "c")))
    leader.stored(leader.end)
    leader.cache.advance_start(leader.end)  # retention: nothing left
    out = leader.receive("b", AppendResp(1, False, 0))
    sent = [m for _d, m in out.messages if isinstance(m, Append)]
    assert [(m.reset, m.start, m.count, m.prev_epoch) for m in sent] == [(True, 1, 0, 1)]
    follower = Replica("b", "ctrl")
    follower.receive("ctrl", Assign(1, "a", ("a", "b", "c")))
    back = follower.receive("a", sent[0])
    assert (follower.cache.log_start, follower.end, follower.cache.base_epoch) == (1, 1, 1)
    assert [(m.ok, m.end) for _d, m in back.messages] == [(True, 1)]


def _confirmed(c: FailoverCore) -> FailoverCore:
    c.receive(str(c.leader), LeaderBeat(c.epoch, 0, 0))
    assert c.leader_confirmed
    return c


def test_move_leader_chooses_the_preferred_replica_when_it_is_as_up_to_date() -> None:
    """A deliberate move fences the next epoch; the preferred replica is
    committed when its (last_epoch, end) equals the best answer's."""
    c = _confirmed(FailoverCore(("a", "b", "c"), epoch=1, leader="a", handoff_ticks=0))
    out = c.move_leader("b")
    assert out is not None and sorted(out.messages) == [("a", Fence(2)), ("b", Fence(2)), ("c", Fence(2))]
    assert c.busy and c.move_leader("c") is None  # one at a time
    assert c.receive("a", FenceResp(2, True, 1, 9)).commit is None
    out = c.receive("b", FenceResp(2, True, 1, 9))
    assert out.commit is not None and out.commit.leader == "b" and out.commit.epoch == 2
    c.committed()
    assert (c.epoch, c.leader) == (2, "b")


def test_move_leader_falls_back_to_the_best_when_the_preferred_is_behind() -> None:
    """A preferred replica missing records is not chosen: the best is."""
    c = _confirmed(FailoverCore(("a", "b", "c"), epoch=1, leader="a", handoff_ticks=0))
    assert c.move_leader("b") is not None
    c.receive("b", FenceResp(2, True, 1, 8))
    out = c.receive("a", FenceResp(2, True, 1, 9))
    assert out.commit is not None and out.commit.leader == "a"


def test_move_leader_waits_a_bounded_time_for_the_preferred_answer() -> None:
    """With a majority but no word from the preferred replica, the core
    re-fences it and waits prefer_wait_ticks, then takes the best; an answer
    in time is still taken."""
    c = _confirmed(
        FailoverCore(
            ("a", "b", "c"), epoch=1, leader="a", prefer_wait_ticks=4, retry_ticks=3, handoff_ticks=0
        )
    )
    assert c.move_leader("c") is not None
    c.receive("a", FenceResp(2, True, 1, 9))
    assert c.receive("b", FenceResp(2, True, 1, 9)).commit is None  # waiting for c
    outs = [c.tick() for _ in range(4)]
    assert all(o.commit is None for o in outs)
    assert ("c", Fence(2)) in [m for o in outs for m in o.messages]  # re-asked
    out = c.tick()
    assert out.commit is not None and out.commit.leader == "a"  # best, ties go to replica order

    c = _confirmed(FailoverCore(("a", "b", "c"), epoch=1, leader="a", prefer_wait_ticks=4, handoff_ticks=0))
    assert c.move_leader("c") is not None
    c.receive("a", FenceResp(2, True, 1, 9))
    c.receive("b", FenceResp(2, True, 1, 9))
    c.tick()
    out = c.receive("c", FenceResp(2, True, 1, 9))
    assert out.commit is not None and out.commit.leader == "c"


def test_move_leader_refuses_non_replicas_and_the_leader_itself() -> None:
    c = _confirmed(FailoverCore(("a", "b", "c"), epoch=1, leader="a", handoff_ticks=0))
    assert c.move_leader("z") is None and c.move_leader("a") is None and not c.busy


def test_a_refused_fence_retries_the_move_with_the_same_preference() -> None:
    """Someone promised a later epoch: the move goes on at a later epoch, still preferring its target."""
    c = _confirmed(FailoverCore(("a", "b", "c"), epoch=1, leader="a", handoff_ticks=0))
    assert c.move_leader("b") is not None
    out = c.receive("a", FenceResp(2, False, 0, 0))
    assert ("b", Fence(3)) in out.messages
    c.receive("a", FenceResp(3, True, 1, 9))
    out = c.receive("b", FenceResp(3, True, 1, 9))
    assert out.commit is not None and (out.commit.leader, out.commit.epoch) == ("b", 3)


def _pair() -> tuple[Replica, Replica]:
    """Leader a and follower b of epoch 1, b caught up."""
    a, b = Replica("a", "ctl"), Replica("b", "ctl")
    out = a.receive("ctl", Assign(1, "a", ("a", "b")))
    b.receive("ctl", Assign(1, "a", ("a", "b")))
    _deliver(a, b, out)
    return a, b


def _deliver(a: Replica, b: Replica, out: Output) -> list[tuple[str, object]]:
    """Run a <-> b traffic to quiescence; return what went to the controller."""
    to_ctl: list[tuple[str, object]] = []
    pending = [("a", dst, m) for dst, m in out.messages]
    nodes = {"a": a, "b": b}
    while pending:
        src, dst, m = pending.pop(0)
        if dst == "ctl":
            to_ctl.append((src, m))
            continue
        o = nodes[dst].receive(src, m)  # type: ignore[arg-type]
        if o.writes and nodes[dst].role == LEADER:
            o.extend(nodes[dst].stored(nodes[dst].end))
        pending += [(dst, d, x) for d, x in o.messages]
    return to_ctl


def test_a_handoff_pauses_the_leader_until_the_target_caught_up() -> None:
    """The controller asks the leader to hand off: it refuses publishes,
    says ready once the target holds its whole log, the controller fences and
    the target -- now as up to date as the best -- is committed."""
    a, b = _pair()
    c = _confirmed(FailoverCore(("a", "b"), epoch=1, leader="a", handoff_ticks=10))
    _first, out = a.append(3)
    out.extend(a.stored(a.end))  # b has not answered yet: it is behind
    out = c.move_leader("b")
    assert out is not None and out.messages == [("a", Handoff(1, "b", 10))] and c.busy
    ho = a.receive("ctl", Handoff(1, "b", 10))
    assert ho.messages == []  # b is behind: not ready yet
    with pytest.raises(NotLeader):
        a.append(1)
    to_ctl = _deliver(a, b, _first_batch(a))
    ready = [m for _src, m in to_ctl if isinstance(m, HandoffReady)]
    assert ready and set(ready) == {HandoffReady(1, "b", a.end)}
    out = c.receive("a", ready[0])
    assert sorted(out.messages) == [("a", Fence(2)), ("b", Fence(2))]
    for r in (a, b):
        ((_dst, resp),) = r.receive("ctl", Fence(2)).messages
        got = c.receive(r.id, resp)
    assert got.commit is not None and got.commit.leader == "b"


def _first_batch(a: Replica) -> Output:
    """What a leader sends its followers on a tick (resends included)."""
    for f in a.followers.values():
        f.next = f.match
    return a.tick()


def test_the_handoff_pause_is_bounded_on_both_sides() -> None:
    """A leader resumes taking publishes after the pause; a controller that
    hears no ready fences anyway (the move still prefers the target)."""
    a, _b = _pair()
    a.receive("ctl", Handoff(1, "b", 2))
    a.tick()
    with pytest.raises(NotLeader):
        a.append(1)
    a.tick()
    a.append(1)  # resumed
    c = _confirmed(FailoverCore(("a", "b", "c"), epoch=1, leader="a", handoff_ticks=3, retry_ticks=2))
    assert c.move_leader("b") is not None
    outs = [c.tick() for _ in range(3)]
    assert ("a", Handoff(1, "b", 2)) in outs[1].messages  # asked again
    out = c.tick()
    assert c.fencing is not None and c.fencing.prefer == "b" and ("b", Fence(2)) in out.messages
    assert c.handing_off is None and c.moving_to == "b"


def test_a_stale_or_foreign_ready_is_ignored() -> None:
    c = _confirmed(FailoverCore(("a", "b", "c"), epoch=1, leader="a"))
    assert c.move_leader("b") is not None
    assert c.receive("b", HandoffReady(1, "b", 5)).messages == []  # not from the leader
    assert c.receive("a", HandoffReady(0, "b", 5)).messages == []  # another epoch
    assert c.receive("a", HandoffReady(1, "c", 5)).messages == []  # another target
    assert c.fencing is None and c.handing_off == ("b", 0) and c.moving_to == "b"
    c.cancel_move()
    assert c.moving_to is None
    assert not c.busy


def test_records_taken_unsent_leave_as_one_append_per_follower() -> None:
    """``append(send=False)`` takes the records (their write) and sends nothing;
    :meth:`Replica.send_appends` then sends everything taken since as one append
    per follower (issue 16, quorum36: a turn's publishes), once -- a follower sent
    them meanwhile (an answer's catch-up) is not sent them again, and a replica
    that stopped leading the epoch sends nothing.  The records commit as ever."""
    reps = ("a", "b", "c")
    nodes = {r: Replica(r, "ctrl") for r in reps}
    a = nodes["a"]
    ctrl: list[tuple[str, object]] = []
    out = a.receive("ctrl", Assign(1, "a", reps))
    for r in ("b", "c"):
        out.extend(nodes[r].receive("ctrl", Assign(1, "a", reps)))
    out.extend(a.stored(a.end))
    _route(out, nodes, ctrl, drop=set())
    taken = Output()
    for _ in range(3):
        _first, o = a.append(2, send=False)
        taken.extend(o)
    assert taken.messages == [] and [w.count for w in taken.writes] == [2, 2, 2]
    out = a.send_appends()
    appends = [(d, m) for d, m in out.messages if isinstance(m, Append)]
    assert sorted(d for d, _m in appends) == ["b", "c"]
    assert all(m.start == 1 and m.count == 6 for _d, m in appends)
    assert a.send_appends().messages == []  # once
    out.extend(a.stored(a.end))
    _route(out, nodes, ctrl, drop=set())
    assert a.hw == 7 and nodes["b"].end == nodes["c"].end == 7
    # Sent meanwhile (here: by the tick, the follower lacking them): not again.
    a.append(1, send=False)
    for _ in range(a.retry_ticks):
        _route(a.tick(), nodes, ctrl, drop=set())
    assert nodes["b"].end == 8
    assert a.send_appends().messages == []
    # Taken, then the epoch is lost: nothing is sent.
    a.append(1, send=False)
    a.receive("b", AppendResp(2, False, 8, 7))  # a follower promised epoch 2
    assert not a.is_leader and a.send_appends().messages == []


def test_more_records_taken_unsent_than_a_batch_leave_whole() -> None:
    """Records taken unsent beyond ``max_batch`` all leave with
    :meth:`Replica.send_appends`, in appends of ``max_batch`` (a fast turn's
    publishes are not left to the answers' catch-up, one batch a round trip)."""
    reps = ("a", "b", "c")
    nodes = {r: Replica(r, "ctrl", max_batch=4) for r in reps}
    a = nodes["a"]
    ctrl: list[tuple[str, object]] = []
    out = a.receive("ctrl", Assign(1, "a", reps))
    for r in ("b", "c"):
        out.extend(nodes[r].receive("ctrl", Assign(1, "a", reps)))
    out.extend(a.stored(a.end))
    _route(out, nodes, ctrl, drop=set())
    for _ in range(5):
        a.append(2, send=False)
    out = a.send_appends()
    sent = [(d, m.start, m.count) for d, m in out.messages if isinstance(m, Append)]
    assert sorted(sent) == sorted((d, s, n) for d in ("b", "c") for s, n in ((1, 4), (5, 4), (9, 2)))


def test_a_new_partitions_follower_derives_the_first_control_record_and_its_leaders_append_writes_nothing() -> (
    None
):
    """A partition's first epoch: its leader leads an empty log, so its first
    record is its control record at offset 0.  A follower with nothing and no
    promise, assigned that epoch, writes that record itself with the promise
    (one write, no word to the leader); the leader's first append then finds
    it held -- answered with no write -- and the high watermark moves only once
    a majority holds it and the leader says so (issue 23, create41)."""
    reps = ("a", "b", "c")
    nodes = {r: Replica(r, "ctrl", first_epoch=1) for r in reps}
    lead = nodes["a"].receive("ctrl", Assign(1, "a", reps))
    out = nodes["b"].receive("ctrl", Assign(1, "a", reps))
    assert [(w.start, w.count, w.epoch, w.control, w.fenced_epoch) for w in out.writes] == [
        (0, 1, 1, True, 1)
    ]
    assert out.messages == [] and nodes["b"].end == 1 and nodes["b"].hw == 0
    first = [m for dst, m in lead.messages if dst == "b"]
    assert len(first) == 1 and isinstance(first[0], Append) and (first[0].start, first[0].count) == (0, 1)
    answer = nodes["b"].receive("a", first[0])
    assert answer.writes == [] and answer.messages == [("a", AppendResp(1, True, 1, 0))]
    nodes["a"].stored(nodes["a"].end)
    assert nodes["a"].hw == 0  # not committed by being derived ...
    nodes["a"].receive("b", answer.messages[0][1])
    assert nodes["a"].hw == 1  # ... but once a majority holds it on disk, as any record


@pytest.mark.parametrize(
    ("replica", "epoch"),
    [
        (Replica("b", "ctrl", first_epoch=1), 2),  # not the partition's first epoch
        (Replica("b", "ctrl", first_epoch=1, fenced_epoch=1), 1),  # promised it (a restarted follower)
        (Replica("b", "ctrl", cache=EpochCache(runs=[(0, 0)], end=3), first_epoch=1), 1),  # holds records
        (
            Replica("b", "ctrl", cache=EpochCache(log_start=5, end=5), first_epoch=1),
            1,
        ),  # its log starts later
        (Replica("b", "ctrl"), 1),  # no first epoch known (the simulation's old default, a test's)
    ],
)
def test_a_follower_that_holds_or_promised_anything_derives_nothing(replica: Replica, epoch: int) -> None:
    """Only an empty, unpromised replica assigned the first epoch derives: any
    other writes no record on an Assign (and a restarted one says where it
    stands, as before)."""
    out = replica.receive("ctrl", Assign(epoch, "a", ("a", "b", "c")))
    assert not any(w.count for w in out.writes)
    assert replica.end == replica.cache.log_start + (3 if replica.cache.runs else 0)
