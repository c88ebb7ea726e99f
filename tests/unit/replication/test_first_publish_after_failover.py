"""From "you lead" to the first ``acks=quorum`` publish answered, counted on
the pure cores with 10,000 partitions failing over at once (issue 23,
failserve).

A dead node "c" led 10,000 partitions replicated on "a", "b" and "c"; the
failover made "a" the leader of every one of them at epoch 2 ("b" follows).
The moment "a" learns it leads a partition, a publish comes for it.  The
two nodes are busy -- a node reads at most :data:`PER_TICK` replication
messages a tick, in order, as a reactor working through its sockets does --
so the new leaders' first appends and the follower's answers queue up
behind each other.  Every message a leader sends while its last one is
still unanswered only lengthens those queues: what is counted here is the
ticks until every partition's publish is answered and the messages each
side sent meanwhile.  Writes count as durable at once (the disk is not the
subject)."""

from __future__ import annotations

from collections import deque

from sprawl.replication.messages import Append, AppendResp, Assign, Message
from sprawl.replication.replica import Output, Replica

PARTITIONS = 10_000
#: Replication messages a node reads per tick (a loaded node's reactor, ~10 ms of CPU per 1,000).
PER_TICK = 2_000
REPLICAS = ("c", "a", "b")


def _held(node: str) -> Replica:
    """A replica of the partition as epoch 1 (led by "c") left it: one record, committed."""
    r = Replica(node, "ctl", fenced_epoch=2)
    r.cache.append(1, 1)
    r.stored_end = r.hw = 1
    r.caught_up = True
    r.tick_beats = False  # (the node beats the controller, not each partition)
    return r


class Pair:
    """The new leaders on "a", their followers on "b", and the queue of
    messages each node has yet to read (FIFO, :data:`PER_TICK` a tick)."""

    def __init__(self, partitions: int) -> None:
        self.leaders = [_held("a") for _ in range(partitions)]
        self.followers = [_held("b") for _ in range(partitions)]
        for r in (*self.leaders, *self.followers):
            r.dead = frozenset({"c"})
        self.inbox: dict[str, deque[tuple[int, Message]]] = {"a": deque(), "b": deque()}
        self.sent = {"a": 0, "b": 0}
        self.published: dict[int, int] = {}  # partition -> offset of its publish
        self.answered: set[int] = set()

    def _route(self, src: str, i: int, out: Output, core: Replica) -> None:
        if any(w.count for w in out.writes):
            out.extend(core.stored(core.end))  # durable at once
        for dst, m in out.messages:
            if dst in self.inbox:
                self.sent[src] += 1
                self.inbox[dst].append((i, m))
        self._check(i)

    def _check(self, i: int) -> None:
        off = self.published.get(i)
        if off is not None and i not in self.answered and self.leaders[i].hw > off:
            self.answered.add(i)

    def lead_all(self) -> None:
        """Every partition's metadata applied on both nodes: "a" leads (and
        a publish comes at once), "b" follows."""
        assign = Assign(2, "a", REPLICAS)
        for i, (lead, follow) in enumerate(zip(self.leaders, self.followers, strict=True)):
            follow.receive("ctl", assign)
            self._route("a", i, lead.receive("ctl", assign), lead)
            assert lead.is_leader
            first, out = lead.append(1)
            self.published[i] = first
            self._route("a", i, out, lead)

    def tick(self) -> None:
        """One tick: each node reads up to :data:`PER_TICK` messages, then ticks its replicas."""
        for node, cores in (("b", self.followers), ("a", self.leaders)):
            box = self.inbox[node]
            src = "a" if node == "b" else "b"
            for _ in range(min(PER_TICK, len(box))):
                i, m = box.popleft()
                self._route(node, i, cores[i].receive(src, m), cores[i])
        for i, lead in enumerate(self.leaders):
            if not lead.idle:
                self._route("a", i, lead.tick(), lead)


def test_new_leaders_first_publishes_are_answered_without_chasing_late_answers() -> None:
    """10,000 new leaders each take a publish the moment they lead; with the
    follower's node reading 2,000 messages a tick, every publish is answered
    once the queue their first appends make is read (20,000 appends: 10
    ticks), and each leader sends its follower fewer than six messages until
    then: its control record and the publish, each high watermark that
    covers them, and the last append again after 3 and 9 ticks unanswered --
    not a high watermark more per tick while its follower's answer is on its
    way (10.3 a partition before: each was read, answered and read again,
    lengthening the very queue the publishes waited in)."""
    pair = Pair(PARTITIONS)
    pair.lead_all()
    ticks = 0
    for ticks in range(1, 200):  # noqa: B007 (the count is the result)
        pair.tick()
        if len(pair.answered) == PARTITIONS:
            break
    assert len(pair.answered) == PARTITIONS, len(pair.answered)
    appends = pair.sent["a"]
    assert ticks <= 11, (ticks, pair.sent)
    assert appends <= 6 * PARTITIONS, (ticks, pair.sent)
    assert pair.sent["b"] <= 2 * PARTITIONS, (ticks, pair.sent)
    # And the leaders settle: every follower holds the log and the high watermark.
    for _ in range(200):
        if all(r.idle for r in pair.leaders) and not any(pair.inbox.values()):
            break
        pair.tick()
    assert all(r.idle for r in pair.leaders)
    assert all(f.hw == r.hw for f, r in zip(pair.followers, pair.leaders, strict=True))


def test_a_high_watermark_whose_answer_is_late_is_sent_again_after_doubling_waits() -> None:
    """A leader whose follower holds its log but has not answered the high
    watermark sent to it sends it again after ``retry_ticks`` ticks, then
    after twice as long each time (as unanswered appends are) -- not every
    tick -- and is prompt again once the follower answers."""
    pair = Pair(1)
    lead, follow = pair.leaders[0], pair.followers[0]
    out = lead.receive("ctl", Assign(2, "a", REPLICAS))
    out.extend(lead.stored(lead.end))
    (append,) = [m for d, m in out.messages if d == "b"]
    assert isinstance(append, Append)
    (answer,) = [m for _d, m in follow.receive("a", append).messages]
    assert isinstance(answer, AppendResp) and answer.ok
    out = lead.receive("b", answer)  # the control record is held by a majority
    assert lead.hw == lead.end and [d for d, _ in out.messages] == ["b"]
    sent = [t for t in range(1, 40) if lead.tick().messages]
    assert sent == [3, 9, 21], sent
    follow_out = follow.receive("a", Append(2, lead.end, 2, 0, (), lead.hw))
    (ack,) = [m for _d, m in follow_out.messages]
    lead.receive("b", ack)
    assert lead.idle and not lead.tick().messages
