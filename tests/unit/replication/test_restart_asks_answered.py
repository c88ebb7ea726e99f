"""A leader answers a restarted follower's word once its appends to it were
lost (issue 23, restart36).

After a restart of a 10,000-partition cluster, followers stayed "catching
up" with their leader up and leading: the leader's first append to such a
follower went while the follower's node had no replica of the partition yet
(its apply of the metadata came later: dropped), and so did its re-sends --
each unanswered one doubling the wait for the next, up to ``max_ask_ticks``.
When the replica was built it said where it stands (on its ``Assign``, then
every few ticks), naming its end: inside the range of the append in flight,
which the leader took for a word sent before that append arrived, and did
not answer (lead35's rule against doubling a failover's first exchange).
The follower waited for the leader's stall timer -- up to 3 s, 4 s with the
``answering`` wait -- and, while gossip called its node dead, for good: a
leader sends a dead node nothing, and its ticks re-send nothing to it.

Now such a word is taken as "sent before the append" only while nothing
sent to that follower has counted as lost yet, and its node is not known
dead: otherwise the follower is answered at once."""

from __future__ import annotations

from sprawl.replication.messages import Append, AppendResp, Assign, Message
from sprawl.replication.replica import ANSWERED_WAIT_TICKS, Replica

REPS = ("a", "b", "c")
CTRL = "ctrl"


def _deliver(nodes: dict[str, Replica], todo: list[tuple[str, str, Message]]) -> int:
    """Deliver in order until quiet (a node without a replica drops what it
    is sent); returns how many messages were delivered."""
    n = 0
    while todo:
        assert n < 1000, "the messages did not settle"
        src, dst, m = todo.pop(0)
        if dst in nodes:
            n += 1
            todo.extend((dst, d, x) for d, x in nodes[dst].receive(src, m).messages)
    return n


def _led_by_a_without_c() -> tuple[Replica, Replica, dict[str, Replica]]:
    """``a`` leads epoch 2 with ``b`` caught up; ``c``'s node has no replica
    yet: the first append and 40 ticks of re-sends to it are dropped."""
    a, b = Replica("a", CTRL), Replica("b", CTRL)
    nodes = {"a": a, "b": b}
    b.receive(CTRL, Assign(2, "a", REPS))
    todo = [("a", d, m) for d, m in a.receive(CTRL, Assign(2, "a", REPS)).messages]
    assert any(d == "c" and isinstance(m, Append) and m.count == 1 for _, d, m in todo)
    _deliver(nodes, todo)
    a.stored(a.end)
    for _ in range(40):
        _deliver(nodes, [("a", d, m) for d, m in a.tick().messages])
    assert a.hw == 1 and b.caught_up
    assert a.followers["c"].unanswered and a.followers["c"].stall_limit > a.retry_ticks
    return a, b, nodes


def test_a_follower_built_after_its_appends_were_lost_is_answered_on_its_first_word() -> None:
    """``c``'s replica is built at last and says where it stands on its
    ``Assign`` (its end, 0: inside the lost append's range).  The leader,
    whose re-sends to it went unanswered, answers at once: ``c`` is caught
    up without a tick (before: not until the leader's stall timer, up to
    ``max_ask_ticks`` ticks, every ask meanwhile unanswered)."""
    a, _b, nodes = _led_by_a_without_c()
    c = Replica("c", CTRL)
    nodes["c"] = c
    word = c.receive(CTRL, Assign(2, "a", REPS)).messages
    assert word == [("a", AppendResp(2, False, 0, 0))]
    _deliver(nodes, [("c", d, m) for d, m in word])
    assert c.caught_up and c.hw == 1 and c.end == 1
    assert a.followers["c"].match == 1 and a.idle


def test_a_follower_on_a_node_known_dead_is_answered_when_it_asks() -> None:
    """The leader's first append to ``c`` is lost and then gossip calls
    ``c``'s node dead: the leader's ticks send it nothing (and it is idle).
    ``c`` asks -- its word names an end in the lost append's range -- and is
    answered at once (before: never, for as long as its node was known dead,
    however often it asked)."""
    a, b = Replica("a", CTRL), Replica("b", CTRL)
    c = Replica("c", CTRL)
    nodes = {"a": a, "b": b, "c": c}
    b.receive(CTRL, Assign(2, "a", REPS))
    c.receive(CTRL, Assign(2, "a", REPS))  # (its word on it lost too)
    first = a.receive(CTRL, Assign(2, "a", REPS)).messages
    _deliver(nodes, [("a", d, m) for d, m in first if d != "c"])  # the one to c lost
    a.dead = frozenset({"c"})
    _deliver(nodes, [("a", d, m) for d, m in a.stored(a.end).messages])
    for _ in range(50):
        said = a.tick().messages
        assert all(d != "c" for d, _ in said)  # nothing to a node known dead
        _deliver(nodes, [("a", d, m) for d, m in said])
    assert a.hw == 1 and a.idle and not c.caught_up
    asks = 0
    for _ in range(100):
        said = c.tick().messages
        if said:
            asks += 1
            assert said == [("a", AppendResp(2, False, 0, 0))]
            _deliver(nodes, [("c", d, m) for d, m in said])
            break
    assert asks == 1 and c.caught_up and c.hw == 1
    assert a.followers["c"].match == 1


def test_the_first_exchange_still_waits_for_the_append_on_its_way() -> None:
    """lead35's rule holds where it was made for: a new leader's append is in
    flight to a follower whose word (sent before the append reached it)
    names an end in its range, and nothing sent to it has counted as lost:
    the word is not answered (the append's answer is what counts), and the
    follower is caught up by that append alone."""
    a, c = Replica("a", CTRL), Replica("c", CTRL)
    first = [(d, m) for d, m in a.receive(CTRL, Assign(2, "a", ("a", "c"))).messages if d == "c"]
    word = c.receive(CTRL, Assign(2, "a", ("a", "c"))).messages
    assert word == [("a", AppendResp(2, False, 0, 0))]
    assert a.receive("c", word[0][1]).messages == []  # on its way: not sent again
    a.stored(a.end)
    sent = _deliver({"a": a, "c": c}, [("a", d, m) for d, m in first])
    assert c.caught_up and a.followers["c"].match == 1 and sent >= 2


def test_a_follower_that_led_an_older_epoch_is_caught_up_while_its_node_answers_others() -> None:
    """flaky40: a node killed just after it was placed leader of new topics
    restarts, builds their replicas from a Raft snapshot that still names it
    leader of epoch 1 (it writes epoch 1's control record at offset 0) and
    then follows the failover's leader of epoch 2, whose first append to it
    was dropped (no replica yet).  Its word names end 1 (past the lost
    append's start: a heartbeat from there is sent); that heartbeat is
    refused (offset 0 is of epoch 1 here), naming end 0 -- in the range of
    the append still counted in flight, so not answered.  Its node answers
    others (``answering``): the leader waits ``ANSWERED_WAIT_TICKS`` since it
    last sent it anything before it counts towards the re-send.  Before, the
    heartbeat answering each of the follower's words (every 3 ticks) started
    that wait again: the re-send never came, and the node was "catching up"
    for good.  Now a word naming an end at or past everything sent while
    records are in flight is answered with those records again: the
    follower truncates epoch 1's record and is caught up by that answer."""
    a, b = Replica("a", CTRL), Replica("b", CTRL)
    nodes: dict[str, Replica] = {"a": a, "b": b}
    b.receive(CTRL, Assign(2, "a", REPS))
    first = a.receive(CTRL, Assign(2, "a", REPS)).messages
    _deliver(nodes, [("a", d, m) for d, m in first])  # the one to c: dropped, no replica yet
    a.stored(a.end)
    a.answering = frozenset({"c"})  # c's node answers other partitions' appends
    c = Replica("c", CTRL)
    nodes["c"] = c
    c.receive(CTRL, Assign(1, "c", REPS))  # the snapshot's placement: it leads epoch 1
    assert c.is_leader and c.end == 1
    word = c.receive(CTRL, Assign(2, "a", REPS)).messages
    assert word == [("a", AppendResp(2, False, 1, 0))]
    _deliver(nodes, [("c", d, m) for d, m in word])
    assert c.caught_up, "not caught up by the answer to its word"
    assert c.end == 1 and c.cache.epoch_at(0) == 2 and c.hw == 1
    assert a.followers["c"].match == 1 and not a.followers["c"].unanswered
    for _ in range(3 * ANSWERED_WAIT_TICKS):  # and the leader goes quiet
        _deliver(nodes, [("a", d, m) for d, m in a.tick().messages])
    assert a.idle
