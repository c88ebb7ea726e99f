"""The pure Raft core, claim by claim.

One test per rule of Figure 2 of the Raft paper ("In Search of an
Understandable Consensus Algorithm", Ongaro & Ousterhout) -- rules for all
servers, followers, candidates and leaders; AppendEntries receiver rules 1-5;
RequestVote receiver rules 1-2 -- and per claim of section 5.4 (the election
restriction; the commitment rule, including the Figure 8 scenario), then the
extensions: PreVote, CheckQuorum, ReadIndex, leadership transfer, snapshots,
learners, one-at-a-time membership change and flow control.

The Figure 2 tests run with PreVote and CheckQuorum off (the paper's plain
algorithm); the extension tests turn them on.  Everything is driven by hand:
messages are delivered explicitly by a tiny in-test network, ticks are
virtual, and every RNG is seeded.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sprawl.raft import (
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    ProposalDropped,
    RaftNode,
    Ready,
    Role,
)
from sprawl.raft.log import RaftLog
from sprawl.raft.messages import CAMPAIGN_TRANSFER, decode_message, encode_message
from sprawl.raft.progress import ProgressState
from sprawl.raft.quorum import VoteResult, committed_index, vote_result
from sprawl.raft.storage import CompactedError, UnavailableError

MT = MessageType
ET = 10  # election ticks


def make(
    nid: int,
    voters: Iterable[int] = (1, 2, 3),
    *,
    learners: Iterable[int] = (),
    storage: MemoryStorage | None = None,
    pre_vote: bool = False,
    check_quorum: bool = False,
    seed: int | None = None,
    **cfg: int,
) -> RaftNode:
    """A node (plain Raft unless asked) over a bootstrapped MemoryStorage."""
    st_ = storage if storage is not None else MemoryStorage(ConfState(tuple(voters), tuple(learners)))
    config = Config(
        nid, election_tick=ET, heartbeat_tick=1, pre_vote=pre_vote, check_quorum=check_quorum, **cfg
    )
    return RaftNode(config, st_, random.Random(nid if seed is None else seed))


def handle(
    node: RaftNode, apply: list[Entry] | None = None, reads: list[tuple[int, bytes]] | None = None
) -> list[Message]:
    """Drive one node's Ready: persist -> (collect) messages -> apply -> advance;
    applied entries and released reads are appended to ``apply``/``reads``."""
    out: list[Message] = []
    st_ = node.storage
    assert isinstance(st_, MemoryStorage)
    while node.has_ready():
        rd = node.ready()
        if rd.snapshot is not None:
            st_.apply_snapshot(rd.snapshot)
        st_.append(rd.entries)
        if rd.hard_state is not None:
            st_.set_hard_state(rd.hard_state)
        out.extend(rd.messages)
        for e in rd.committed_entries:
            if e.type == EntryType.CONF_CHANGE:
                node.apply_conf_change(ConfChange.decode(e.data))
            if apply is not None:
                apply.append(e)
        if reads is not None:
            reads += [(r.index, r.request_ctx) for r in rd.read_states]
        node.advance(rd)
    return out


class Net:
    """A hand-driven network of nodes: ``deliver`` runs messages to quiescence."""

    def __init__(self, nodes: Iterable[RaftNode]) -> None:
        """Wire up ``nodes`` (by id)."""
        self.nodes = {n.id: n for n in nodes}
        self.cut: set[tuple[int, int]] = set()
        self.down: set[int] = set()
        self.applied: dict[int, list[Entry]] = {i: [] for i in self.nodes}
        self.reads: dict[int, list[tuple[int, bytes]]] = {i: [] for i in self.nodes}
        self.filter: Callable[[Message], bool] = lambda m: True

    def isolate(self, nid: int) -> None:
        """Cut ``nid`` off in both directions."""
        for other in self.nodes:
            if other != nid:
                self.cut |= {(nid, other), (other, nid)}

    def heal(self) -> None:
        """Remove every cut."""
        self.cut.clear()

    def deliver(self, msgs: list[Message] | None = None, limit: int = 10_000) -> list[Message]:
        """Deliver ``msgs`` plus everything they cause; returns every message seen."""
        queue = list(msgs or [])
        for nid, n in self.nodes.items():
            if nid not in self.down:
                queue += handle(n, self.applied[nid], self.reads[nid])
        seen: list[Message] = []
        while queue:
            limit -= 1
            assert limit > 0, "network did not quiesce"
            m = queue.pop(0)
            seen.append(m)
            if (m.frm, m.to) in self.cut or m.to in self.down or m.to not in self.nodes or not self.filter(m):
                continue
            node = self.nodes[m.to]
            node.step(m)
            queue += handle(node, self.applied[m.to], self.reads[m.to])
        return seen

    def elect(self, nid: int) -> None:
        """Make ``nid`` campaign and deliver the election."""
        self.nodes[nid].campaign()
        self.deliver()
        assert self.nodes[nid].role == Role.LEADER

    def tick(self, nid: int, n: int = 1) -> list[Message]:
        """Tick one node ``n`` times, delivering what results."""
        seen: list[Message] = []
        for _ in range(n):
            self.nodes[nid].tick()
            seen += self.deliver()
        return seen

    def propose(self, nid: int, data: bytes) -> None:
        """Propose on ``nid`` and deliver."""
        self.nodes[nid].propose(data)
        self.deliver()


def cluster(n: int = 3, **kw: int | bool) -> Net:
    """A net of ``n`` voters 1..n."""
    ids = tuple(range(1, n + 1))
    return Net(make(i, ids, **kw) for i in ids)  # type: ignore[arg-type]


def storage_with(terms: list[int], voters: tuple[int, ...] = (1, 2, 3), term: int = 0) -> MemoryStorage:
    """A bootstrapped storage whose log continues with entries of ``terms`` from index 2."""
    s = MemoryStorage(ConfState(voters))
    s.append([Entry(t, i + 2, data=b"e%d" % (i + 2)) for i, t in enumerate(terms)])
    s.set_hard_state(HardState(max([term, 1, *terms]), 0, 1))
    return s


def msg(t: MessageType, frm: int, to: int, term: int, **kw: object) -> Message:
    """A message (shorthand)."""
    return Message(t, to=to, frm=frm, term=term, **kw)  # type: ignore[arg-type]


def sent(node: RaftNode) -> list[Message]:
    """Messages the node produced (after persisting its Ready)."""
    return handle(node)


# ================================================== Figure 2: all servers


def test_all_servers_apply_committed_entries_in_log_order() -> None:
    """All servers: if commitIndex > lastApplied, apply log[lastApplied+1..] in order."""
    net = cluster(3)
    net.elect(1)
    for i in range(5):
        net.propose(1, b"x%d" % i)
    net.tick(1)  # a heartbeat carries the final commit index to followers
    for nid in (1, 2, 3):
        idx = [e.index for e in net.applied[nid]]
        assert idx == sorted(idx) and idx == list(range(2, 2 + len(idx)))
        assert [e.data for e in net.applied[nid] if e.data] == [b"x%d" % i for i in range(5)]


@pytest.mark.parametrize("role", [Role.FOLLOWER, Role.CANDIDATE, Role.LEADER])
@pytest.mark.parametrize("kind", [MT.APP, MT.HEARTBEAT, MT.VOTE, MT.APP_RESP, MT.VOTE_RESP])
def test_all_servers_step_down_on_a_higher_term(role: Role, kind: MessageType) -> None:
    """All servers: a request or response with term T > currentTerm sets currentTerm = T
    and converts the server to follower."""
    net = cluster(3)
    n = net.nodes[1]
    if role == Role.CANDIDATE:
        n.campaign()
    elif role == Role.LEADER:
        net.elect(1)
    assert n.role == role
    t = n.term + 3
    n.step(msg(kind, 2, 1, t, index=n.log.last_index(), log_term=n.log.last_term()))
    assert n.term == t and n.role == Role.FOLLOWER


# ================================================== Figure 2: followers


def test_followers_respond_to_rpcs_from_candidates_and_leaders() -> None:
    """Followers respond to RPCs from candidates and leaders."""
    n = make(1)
    n.step(msg(MT.VOTE, 2, 1, 2, index=1, log_term=1))
    n.step(msg(MT.APP, 2, 1, 2, index=1, log_term=1, entries=(Entry(2, 2),), commit=1))
    out = sent(n)
    assert [m.type for m in out] == [MT.VOTE_RESP, MT.APP_RESP]
    assert all(m.to == 2 and not m.reject for m in out)


def test_follower_becomes_candidate_after_election_timeout_without_contact() -> None:
    """Followers: if the election timeout elapses without AppendEntries from the
    current leader or a vote granted, convert to candidate -- after between
    electionTick and 2*electionTick ticks."""
    n = make(1)
    ticks = 0
    while n.role == Role.FOLLOWER:
        n.tick()
        ticks += 1
        assert ticks < 2 * ET + 1
    assert ET <= ticks < 2 * ET
    assert n.role == Role.CANDIDATE


def test_election_timeouts_are_randomized_by_the_injected_rng() -> None:
    """Timeouts are drawn from the injected RNG over [electionTick, 2*electionTick)."""
    seen = set()
    for seed in range(40):
        n = make(1, seed=seed)
        seen.add(n.randomized_election_timeout)
    assert seen <= set(range(ET, 2 * ET)) and len(seen) > ET // 2
    assert make(1, seed=7).randomized_election_timeout == make(1, seed=7).randomized_election_timeout


def test_follower_election_timer_is_reset_by_the_leader() -> None:
    """Followers: AppendEntries/heartbeats from the current leader keep them followers."""
    net = cluster(3)
    net.elect(1)
    for _ in range(5 * ET):
        net.tick(1)
        net.tick(2)
        net.tick(3)
    assert net.nodes[1].role == Role.LEADER and net.nodes[2].role == Role.FOLLOWER


def test_follower_grants_a_vote_which_resets_its_timer() -> None:
    """Followers: granting a vote resets the election timer."""
    n = make(1)
    for _ in range(ET - 1):
        n.tick()
    n.step(msg(MT.VOTE, 2, 1, 2, index=1, log_term=1))
    assert n.election_elapsed == 0 and n.vote == 2


# ================================================== Figure 2: candidates


def test_candidate_on_conversion_increments_term_votes_for_self_and_requests_votes() -> None:
    """Candidates: on conversion increment currentTerm, vote for self, reset the
    election timer, and send RequestVote to all other servers."""
    n = make(1)
    term = n.term
    n.campaign()
    assert n.role == Role.CANDIDATE and n.term == term + 1 and n.vote == 1
    assert n.election_elapsed == 0
    out = sent(n)
    assert sorted(m.to for m in out if m.type == MT.VOTE) == [2, 3]
    assert all(m.term == term + 1 and m.index == 1 and m.log_term == 1 for m in out)


def test_candidate_becomes_leader_with_votes_from_a_majority() -> None:
    """Candidates: if votes are received from a majority of servers, become leader."""
    n = make(1, (1, 2, 3, 4, 5))
    n.campaign()
    n.step(msg(MT.VOTE_RESP, 2, 1, n.term))
    assert n.role == Role.CANDIDATE
    n.step(msg(MT.VOTE_RESP, 3, 1, n.term))
    assert n.role == Role.LEADER


def test_candidate_loses_when_a_majority_rejects() -> None:
    """Candidates: rejections from a majority end the election (back to follower)."""
    n = make(1)
    n.campaign()
    n.step(msg(MT.VOTE_RESP, 2, 1, n.term, reject=True))
    n.step(msg(MT.VOTE_RESP, 3, 1, n.term, reject=True))
    assert n.role == Role.FOLLOWER


def test_candidate_becomes_follower_on_append_entries_from_the_new_leader() -> None:
    """Candidates: if AppendEntries is received from a new leader (same term), convert to follower."""
    n = make(1)
    n.campaign()
    n.step(msg(MT.APP, 2, 1, n.term, index=1, log_term=1))
    assert n.role == Role.FOLLOWER and n.lead == 2


def test_candidate_starts_a_new_election_on_timeout() -> None:
    """Candidates: if the election timeout elapses (split vote), start a new election."""
    n = make(1)
    n.campaign()
    term = n.term
    for _ in range(2 * ET):
        n.tick()
    assert n.role == Role.CANDIDATE and n.term == term + 1


# ================================================== Figure 2: leaders


def test_leader_sends_heartbeats_upon_election_and_during_idle_periods() -> None:
    """Leaders: upon election send AppendEntries to each server; repeat during idle
    periods to prevent election timeouts."""
    n = make(1)
    n.campaign()
    sent(n)
    n.step(msg(MT.VOTE_RESP, 2, 1, n.term))
    out = sent(n)
    assert {m.to for m in out if m.type == MT.APP} == {2, 3}
    n.tick()
    out = sent(n)
    assert {m.to for m in out if m.type == MT.HEARTBEAT} == {2, 3}


def test_leader_appends_a_command_and_it_is_applied_once_committed() -> None:
    """Leaders: a client command is appended to the local log and applied (responded
    to) only after the entry is committed."""
    net = cluster(3)
    net.elect(1)
    net.cut = {(1, 2), (1, 3)}
    net.propose(1, b"cmd")
    assert net.nodes[1].log.last_index() == 3
    assert b"cmd" not in [e.data for e in net.applied[1]]
    net.heal()
    net.tick(1)
    assert b"cmd" in [e.data for e in net.applied[1]]


def test_leader_sends_entries_starting_at_next_index() -> None:
    """Leaders: if last log index >= nextIndex for a follower, send entries from nextIndex."""
    net = cluster(3)
    net.elect(1)
    net.cut = {(1, 3)}
    net.propose(1, b"a")
    net.propose(1, b"b")
    net.heal()
    ld = net.nodes[1]
    net.nodes[1].tick()
    out = net.deliver()
    apps = [m for m in out if m.type == MT.APP and m.to == 3 and m.entries]
    assert apps and apps[0].entries[0].index == ld.progress[3].match - len(apps[0].entries) + 1
    assert net.nodes[3].log.last_index() == ld.log.last_index()


def test_leader_decrements_next_index_on_rejection_and_retries() -> None:
    """Leaders: if AppendEntries fails because of log inconsistency, decrement
    nextIndex (here: skip the conflicting term using the hint) and retry."""
    ld = make(1, storage=storage_with([2, 2, 4, 4], term=4))
    fl = make(2, storage=storage_with([2, 3, 3, 3, 3, 3], term=3))
    net = Net([ld, fl, make(3, storage=storage_with([2, 2, 4, 4], term=4))])
    net.elect(1)
    net.tick(1, 2)
    assert fl.log.last_index() == ld.log.last_index()
    assert [fl.log.term(i) for i in range(2, fl.log.last_index() + 1)] == [2, 2, 4, 4, 5]
    rejects = [m for m in net.deliver() if m.type == MT.APP_RESP and m.reject]
    assert not rejects  # converged


def test_leader_conflict_hint_skips_a_whole_term() -> None:
    """The follower's rejection names the conflicting term and its first index,
    so one round trip skips every entry of that term."""
    fl = make(2, storage=storage_with([2, 3, 3, 3, 3, 3], term=3))
    fl.step(msg(MT.APP, 1, 2, 5, index=7, log_term=4))
    (r,) = sent(fl)
    assert r.reject and r.log_term == 3 and r.reject_hint == 3


def test_leader_commits_when_a_majority_stores_a_current_term_entry() -> None:
    """Leaders: if N > commitIndex, a majority has matchIndex >= N and log[N].term ==
    currentTerm, set commitIndex = N."""
    n = make(1, (1, 2, 3, 4, 5))
    n.campaign()
    for v in (2, 3):
        n.step(msg(MT.VOTE_RESP, v, 1, n.term))
    n.propose(b"x")
    sent(n)
    last = n.log.last_index()
    n.step(msg(MT.APP_RESP, 2, 1, n.term, index=last))
    assert n.log.committed < last
    n.step(msg(MT.APP_RESP, 3, 1, n.term, index=last))
    assert n.log.committed == last


def _leader_with_unwritten_entry(voters: tuple[int, ...] = (1, 2, 3)) -> tuple[RaftNode, Ready, int]:
    """Node 1 leads ``voters`` (its no-op written and committed); a proposal
    is appended and its Ready taken but NOT yet persisted (as a driver does
    while the leader's write of it is in flight, its appends already sent)."""
    n = make(1, voters)
    n.campaign()
    for v in voters[1 : len(voters) // 2 + 1]:
        n.step(msg(MT.VOTE_RESP, v, 1, n.term))
    handle(n)  # the no-op is written
    for v in voters[1:]:
        n.step(msg(MT.APP_RESP, v, 1, n.term, index=n.log.last_index()))
    handle(n)
    assert n.log.committed == n.log.last_index()
    n.propose(b"x")
    rd = n.ready()
    last = n.log.last_index()
    assert [e.index for e in rd.entries] == [last]
    assert {m.to for m in rd.messages if m.type == MT.APP and m.entries} == set(voters[1:])
    return n, rd, last


def test_the_leader_counts_itself_towards_the_quorum_only_once_its_append_is_durable() -> None:
    """(Raft thesis 10.2.1) The leader may send an entry before it has written
    it, so its own copy counts only once the driver reports it durable: with
    one follower's acknowledgement the entry is not committed while the
    leader's write is in flight, and is committed (and the new commit index
    sent) the moment the leader reports it persisted."""
    n, rd, last = _leader_with_unwritten_entry()
    n.step(msg(MT.APP_RESP, 2, 1, n.term, index=last))
    assert n.log.committed == last - 1  # 1 durable copy of 3 (the leader's is in flight)
    assert n.progress[1].match == last - 1
    st_ = n.storage
    assert isinstance(st_, MemoryStorage)
    st_.append(rd.entries)
    n.persisted(rd)
    assert n.progress[1].match == last and n.log.committed == last
    out = n.ready()
    assert any(m.type == MT.APP and m.commit == last for m in out.messages)
    assert [e.index for e in out.committed_entries] == [last]


def test_a_majority_without_the_leader_commits_while_its_write_is_in_flight() -> None:
    """An entry on the disks of a majority is committed even if the leader's
    own write of it has not finished -- commitment needs a durable majority,
    not the leader; and advance() (persisted included) moves the leader's
    own progress afterwards."""
    n, rd, last = _leader_with_unwritten_entry()
    n.step(msg(MT.APP_RESP, 2, 1, n.term, index=last))
    n.step(msg(MT.APP_RESP, 3, 1, n.term, index=last))
    assert n.log.committed == last and n.progress[1].match == last - 1
    st_ = n.storage
    assert isinstance(st_, MemoryStorage)
    st_.append(rd.entries)
    n.advance(rd)
    assert n.progress[1].match == last


def test_a_lone_voter_commits_only_what_it_has_written() -> None:
    """With one voter the leader's own copy is the whole quorum: a proposal's
    first Ready carries the entry to write and nothing to apply; it is
    committed (and handed out to apply) only after that Ready is persisted."""
    n = make(1, (1,))
    n.campaign()
    handle(n)
    n.propose(b"solo")
    rd = n.ready()
    last = n.log.last_index()
    assert [e.index for e in rd.entries] == [last] and rd.committed_entries == []
    assert n.log.committed == last - 1
    st_ = n.storage
    assert isinstance(st_, MemoryStorage)
    st_.append(rd.entries)
    n.advance(rd)
    assert n.log.committed == last
    assert [e.data for e in n.ready().committed_entries] == [b"solo"]


# ================================================== AppendEntries receiver


def test_append_entries_rule1_reject_stale_term() -> None:
    """AppendEntries 1: reply false if term < currentTerm (the reply carries our term)."""
    n = make(1, storage=storage_with([], term=5))
    n.step(msg(MT.APP, 2, 1, 3, index=1, log_term=1, entries=(Entry(3, 2),)))
    (r,) = sent(n)
    assert r.type == MT.APP_RESP and r.term == 5 and n.log.last_index() == 1


def test_append_entries_rule2_reject_when_prev_entry_does_not_match() -> None:
    """AppendEntries 2: reply false if the log has no entry at prevLogIndex whose term
    matches prevLogTerm."""
    n = make(1, storage=storage_with([2, 2]))
    n.step(msg(MT.APP, 2, 1, 3, index=3, log_term=3, entries=(Entry(3, 4),)))
    n.step(msg(MT.APP, 2, 1, 3, index=9, log_term=3, entries=(Entry(3, 10),)))
    a, b = sent(n)
    assert a.reject and a.index == 3 and (a.log_term, a.reject_hint) == (2, 2)
    assert b.reject and b.log_term == 0 and b.reject_hint == 4  # too short: last + 1
    assert n.log.last_index() == 3


def test_append_entries_rule3_delete_conflicting_entry_and_all_that_follow() -> None:
    """AppendEntries 3: if an existing entry conflicts with a new one (same index,
    different term), delete it and all that follow."""
    n = make(1, storage=storage_with([2, 2, 2, 2]))
    n.step(msg(MT.APP, 2, 1, 3, index=2, log_term=2, entries=(Entry(3, 3, data=b"new"),)))
    (r,) = sent(n)
    assert not r.reject and r.index == 3
    assert n.log.last_index() == 3 and n.log.term(3) == 3
    assert n.storage.last_index() == 3


def test_append_entries_rule4_append_new_entries_and_keep_matching_ones() -> None:
    """AppendEntries 4: append any new entries not already in the log; a stale or
    duplicated message with matching entries never truncates the log."""
    n = make(1, storage=storage_with([2]))
    e3, e4 = Entry(2, 3, data=b"c"), Entry(2, 4, data=b"d")
    n.step(msg(MT.APP, 2, 1, 2, index=2, log_term=2, entries=(e3, e4)))
    n.step(msg(MT.APP, 2, 1, 2, index=2, log_term=2, entries=(e3,)))  # late duplicate
    sent(n)
    assert n.log.last_index() == 4 and n.log.slice(3, 5) == [e3, e4]


def test_append_entries_rule5_commit_is_min_of_leader_commit_and_last_new_entry() -> None:
    """AppendEntries 5: if leaderCommit > commitIndex, commitIndex = min(leaderCommit,
    index of last new entry)."""
    n = make(1, storage=storage_with([2, 2, 2, 2, 2]))  # up to index 6, unverified
    n.step(msg(MT.APP, 2, 1, 2, index=2, log_term=2, entries=(Entry(2, 3),), commit=6))
    assert n.log.committed == 3
    n.step(msg(MT.APP, 2, 1, 2, index=3, log_term=2, entries=(Entry(2, 4),), commit=2))
    assert n.log.committed == 3  # never decreases


# ================================================== RequestVote receiver


def test_request_vote_rule1_reject_stale_term() -> None:
    """RequestVote 1: reply false if term < currentTerm."""
    n = make(1, storage=storage_with([], term=5))
    n.step(msg(MT.VOTE, 2, 1, 4, index=9, log_term=4))
    (r,) = sent(n)
    assert r.type == MT.VOTE_RESP and r.reject and r.term == 5 and n.vote == 0


def test_request_vote_rule2_one_vote_per_term_persisted_before_replying() -> None:
    """RequestVote 2: grant if votedFor is null or candidateId and the candidate's log
    is up to date; at most one vote per term, and the vote is in the same Ready
    (persisted before the reply is sent) -- so it survives a restart."""
    n = make(1)
    n.step(msg(MT.VOTE, 2, 1, 2, index=1, log_term=1))
    rd = n.ready()
    assert rd.hard_state is not None and rd.hard_state.vote == 2
    assert [(m.type, m.reject) for m in rd.messages] == [(MT.VOTE_RESP, False)]
    storage = n.storage
    assert isinstance(storage, MemoryStorage)
    storage.set_hard_state(rd.hard_state)
    n.advance(rd)
    n.step(msg(MT.VOTE, 2, 1, 2, index=1, log_term=1))  # same candidate again: yes
    n.step(msg(MT.VOTE, 3, 1, 2, index=1, log_term=1))  # another one: no
    assert [m.reject for m in sent(n)] == [False, True]
    again = make(1, storage=storage)  # restart
    again.step(msg(MT.VOTE, 3, 1, 2, index=1, log_term=1))
    assert [m.reject for m in sent(again)] == [True]


# ================================================== 5.4 safety


@pytest.mark.parametrize(
    ("cand_index", "cand_term", "granted"),
    [(3, 2, True), (4, 2, True), (2, 2, False), (2, 3, True), (9, 1, False)],
)
def test_election_restriction_votes_only_for_up_to_date_logs(
    cand_index: int, cand_term: int, granted: bool
) -> None:
    """5.4.1: a voter denies its vote if its own log is more up to date (later last
    term, or same last term and longer)."""
    n = make(1, storage=storage_with([2, 2]))  # last (3, term 2)
    n.step(msg(MT.VOTE, 2, 1, 5, index=cand_index, log_term=cand_term))
    (r,) = sent(n)
    assert r.reject is (not granted)


def test_commitment_rule_no_counting_of_previous_term_entries() -> None:
    """5.4.2: a leader never commits an entry from a previous term by counting
    replicas; once an entry of its own term is on a majority, everything before
    it is committed too."""
    n = make(1, storage=storage_with([2, 2]))  # entries 2,3 of term 2, uncommitted
    n.campaign()
    n.step(msg(MT.VOTE_RESP, 2, 1, n.term))
    assert n.role == Role.LEADER
    sent(n)
    n.step(msg(MT.APP_RESP, 2, 1, n.term, index=3))  # majority has the term-2 entries
    assert n.log.committed == 1
    n.step(msg(MT.APP_RESP, 2, 1, n.term, index=4))  # and now the no-op of this term
    assert n.log.committed == 4


def test_leader_completeness_a_node_missing_a_committed_entry_cannot_win() -> None:
    """5.4.3 (leader completeness, via the election restriction): once an entry is
    committed, a node lacking it cannot collect a majority."""
    net = cluster(3)
    net.elect(1)
    net.cut = {(1, 3)}
    net.propose(1, b"committed")
    assert net.nodes[1].log.committed == net.nodes[1].log.last_index()
    net.down = {1}
    net.heal()
    net.nodes[3].campaign()
    net.deliver()
    assert net.nodes[3].role != Role.LEADER
    net.nodes[2].campaign()
    net.deliver()
    assert net.nodes[2].role == Role.LEADER
    assert b"committed" in [e.data for e in net.nodes[2].log.entries_from(2)]


def test_figure_8_a_replicated_old_term_entry_can_be_overwritten() -> None:
    """Figure 8 (c)-(e): S1 (term 4) gets its term-2 entry onto a majority but must not
    commit it; after S1 fails, S5 (last term 3) can win and overwrite it.  In (e)
    S1 first replicates an entry of term 4 to a majority: then both are committed
    and S5 can no longer win."""
    voters = (1, 2, 3, 4, 5)

    def fig8() -> Net:
        return Net(
            [
                make(1, storage=storage_with([2], voters, term=3)),
                make(2, storage=storage_with([2], voters, term=3)),
                make(3, storage=storage_with([], voters, term=3)),
                make(4, storage=storage_with([], voters, term=3)),
                make(5, storage=storage_with([3], voters, term=3)),
            ]
        )

    # (c): S1 is leader of term 4 and the term-2 entry is on S1, S2, S3.
    net = fig8()
    net.down = {5}
    net.filter = lambda m: m.type != MT.APP  # the election only; no replication yet
    net.elect(1)
    s1 = net.nodes[1]
    assert s1.term == 4
    s1.step(msg(MT.APP_RESP, 2, 1, 4, index=2))
    s1.step(msg(MT.APP_RESP, 3, 1, 4, index=2))
    assert s1.log.committed == 1, "committed an old-term entry by counting"
    # (d): S1 crashes; S5 is elected with votes from S2, S3, S4 and overwrites index 2.
    net = fig8()
    net.nodes[3].step(msg(MT.APP, 1, 3, 4, index=1, log_term=1, entries=(Entry(2, 2, data=b"e2"),)))
    handle(net.nodes[3])
    net.down = {1}
    net.elect(5)
    net.tick(5)
    assert [net.nodes[i].log.term(2) for i in (2, 3, 4, 5)] == [3, 3, 3, 3]
    # (e): had S1 replicated its term-4 no-op to a majority, both commit and S5 loses.
    net = fig8()
    net.down = {5}
    net.elect(1)
    net.tick(1)
    assert net.nodes[1].log.committed == 3
    net.down = {1}
    net.nodes[5].campaign()
    net.deliver()
    assert net.nodes[5].role != Role.LEADER


# ================================================== PreVote


@pytest.mark.parametrize("pre_vote", [True, False])
def test_prevote_a_returning_partitioned_node_does_not_disrupt(pre_vote: bool) -> None:
    """PreVote: an isolated node keeps failing pre-elections without raising its
    term, so when it returns the leader is undisturbed.  (Without PreVote it
    inflates its term and forces a new election -- the contrast shows the test
    can fail.)"""
    net = cluster(3, pre_vote=pre_vote)
    net.elect(1)
    term = net.nodes[1].term
    net.isolate(3)
    net.tick(3, 5 * ET)
    assert (net.nodes[3].term == term) is pre_vote
    net.heal()
    net.tick(3)
    net.tick(1)
    assert (net.nodes[1].role == Role.LEADER and net.nodes[1].term == term) is pre_vote


def test_prevote_does_not_change_anyones_term_and_wins_then_elects() -> None:
    """A pre-candidate asks for votes at term+1 without incrementing; voters do
    not change term either; on a pre-vote majority the real election follows."""
    net = cluster(3, pre_vote=True)
    n = net.nodes[1]
    n.campaign()
    assert n.role == Role.PRE_CANDIDATE and n.term == 1
    out = sent(n)
    assert {(m.type, m.term) for m in out} == {(MT.PRE_VOTE, 2)}
    for m in out:
        net.nodes[m.to].step(m)
        assert net.nodes[m.to].term == 1
    net.deliver()
    assert n.role == Role.LEADER and n.term == 2


def test_prevote_is_refused_to_a_stale_log() -> None:
    """A pre-vote is granted only to an up-to-date log (same rule as votes)."""
    n = make(1, storage=storage_with([2, 2]), pre_vote=True)
    n.step(msg(MT.PRE_VOTE, 2, 1, 3, index=2, log_term=2))
    (r,) = sent(n)
    assert r.type == MT.PRE_VOTE_RESP and r.reject


# ================================================== CheckQuorum


def test_check_quorum_leader_steps_down_without_a_quorum() -> None:
    """CheckQuorum: a leader that does not hear from a quorum within an election
    timeout steps down."""
    net = cluster(3, check_quorum=True, pre_vote=True)
    net.elect(1)
    net.isolate(1)
    net.tick(1, 2 * ET)
    assert net.nodes[1].role == Role.FOLLOWER


def test_check_quorum_leader_stays_with_a_quorum() -> None:
    """CheckQuorum: with a quorum responding, the leader stays (the test can fail)."""
    net = cluster(3, check_quorum=True, pre_vote=True)
    net.elect(1)
    net.cut = {(1, 3), (3, 1)}
    net.tick(1, 3 * ET)
    assert net.nodes[1].role == Role.LEADER


def test_leader_stickiness_followers_ignore_votes_while_the_leader_is_live() -> None:
    """CheckQuorum: a follower that heard from its leader within the election
    timeout ignores RequestVote (even at a higher term) -- unless the request is
    a forced leadership-transfer campaign."""
    net = cluster(3, check_quorum=True)
    net.elect(1)
    f = net.nodes[2]
    term = f.term
    f.step(msg(MT.VOTE, 3, 2, term + 1, index=99, log_term=99))
    assert f.term == term and sent(f) == []
    f.step(msg(MT.VOTE, 3, 2, term + 1, index=99, log_term=99, context=CAMPAIGN_TRANSFER))
    assert f.term == term + 1 and f.vote == 3


# ================================================== idle heartbeats (issue 23)


def heartbeats(seen: list[Message]) -> int:
    """How many heartbeats ``seen`` holds."""
    return sum(1 for m in seen if m.type == MT.HEARTBEAT)


def tick_all(net: Net, n: int) -> list[Message]:
    """Tick every node ``n`` times (the leader first), delivering what results."""
    seen: list[Message] = []
    for _ in range(n):
        for nid in sorted(net.nodes):
            seen += net.tick(nid)
    return seen


def test_an_idle_leader_heartbeats_every_idle_heartbeat_tick_and_keeps_its_followers() -> None:
    """An idle leader (everything committed and acknowledged) heartbeats every
    ``idle_heartbeat_tick`` ticks -- a third of the frames with 3 -- and no
    follower's election timeout (10-19 ticks) fires: the term and the leader
    stay over 300 ticks, CheckQuorum and PreVote on."""
    counts = {}
    for idle in (0, 3):
        net = cluster(3, check_quorum=True, pre_vote=True, idle_heartbeat_tick=idle)
        net.elect(1)
        tick_all(net, 3)  # (the election's no-op entry committed and acknowledged)
        assert net.nodes[1].quiet()
        term = net.nodes[1].term
        counts[idle] = heartbeats(tick_all(net, 300))
        assert all(n.term == term and n.lead == 1 for n in net.nodes.values())
        assert net.nodes[1].role == Role.LEADER
    assert counts == {0: 600, 3: 200}


def test_a_leader_with_an_unacknowledged_append_heartbeats_every_tick() -> None:
    """An append a follower has not acknowledged (lost: its heartbeat answer is
    what sends it again), an uncommitted entry, or a pending read keeps the
    heartbeat every tick; once everything is acknowledged it thins out again."""
    net = cluster(3, check_quorum=True, pre_vote=True, idle_heartbeat_tick=3)
    net.elect(1)
    tick_all(net, 3)
    leader = net.nodes[1]
    net.filter = lambda m: not (m.type == MT.APP and m.to == 2)  # 2 loses the append
    net.propose(1, b"x")
    assert not leader.quiet()
    net.filter = lambda m: True
    seen = net.tick(1)
    assert heartbeats(seen) == 2  # the next tick, not the third
    assert [e.data for e in net.applied[2] if e.data] == [b"x"]  # its answer sent the append again
    assert leader.quiet()
    assert heartbeats(net.tick(1, 2)) == 0
    leader.read_index(b"r")
    assert not leader.quiet()
    net.deliver()
    assert leader.quiet()
    leader.learners.add(4)  # (a learner waits to be promoted once caught up)
    assert not leader.quiet()


def test_an_idle_leader_heartbeats_on_every_late_tick() -> None:
    """A tick the driver marks late (its process stalled or was starved: the
    followers' ticks may have run on time meanwhile) makes an idle leader
    heartbeat at once, as a busy one would; on-time ticks then thin out
    again."""
    net = cluster(3, check_quorum=True, pre_vote=True, idle_heartbeat_tick=3)
    net.elect(1)
    tick_all(net, 3)
    leader = net.nodes[1]
    assert leader.quiet()
    seen: list[Message] = []
    for _ in range(6):
        leader.tick(late=True)
        seen += net.deliver()
    assert heartbeats(seen) == 2 * 6
    assert heartbeats(net.tick(1, 6)) == 2 * 2


def test_idle_heartbeat_tick_must_fit_twice_in_the_election_timeout() -> None:
    """``idle_heartbeat_tick`` above half the election timeout (a follower
    could time out between two heartbeats) or below ``heartbeat_tick`` is
    refused."""
    with pytest.raises(ValueError):
        make(1, idle_heartbeat_tick=ET // 2 + 1)
    with pytest.raises(ValueError):
        Config(1, election_tick=ET, heartbeat_tick=2, idle_heartbeat_tick=1).validate()
    make(1, idle_heartbeat_tick=ET // 2)


# ================================================== ReadIndex


def test_read_index_on_leader_needs_a_heartbeat_quorum() -> None:
    """ReadIndex: the leader records its commit index and releases the read only
    after a quorum acknowledges a heartbeat carrying the request; an earlier
    pending read is released by the same (later) round."""
    net = cluster(3)
    net.elect(1)
    ld = net.nodes[1]
    net.cut = {(1, 2), (1, 3)}
    ld.read_index(b"r1")
    net.deliver()
    assert net.reads[1] == []
    net.heal()
    ld.read_index(b"r2")
    net.deliver()
    assert net.reads[1] == [(ld.log.committed, b"r1"), (ld.log.committed, b"r2")]


def test_read_index_waits_for_the_leaders_first_commit() -> None:
    """ReadIndex: a new leader answers reads only once an entry of its term is
    committed (before that its commit index may be stale)."""
    net = cluster(3)
    net.filter = lambda m: m.type != MT.APP
    net.elect(1)
    ld = net.nodes[1]
    ld.read_index(b"r")
    net.deliver()
    net.tick(1, 2)
    assert net.reads[1] == [] and ld.log.term(ld.log.committed) != ld.term
    net.filter = lambda m: True
    net.tick(1, 2)
    assert ld.log.term(ld.log.committed) == ld.term
    assert net.reads[1] == [(ld.log.committed, b"r")]


def test_read_index_from_a_follower_is_forwarded_to_the_leader() -> None:
    """ReadIndex on a follower: forwarded to the leader, answered with the leader's
    commit index, surfaced as a ReadState on the follower."""
    net = cluster(3)
    net.elect(1)
    net.nodes[2].read_index(b"fr")
    seen = net.deliver()
    assert [(m.type, m.to) for m in seen if m.type == MT.READ_INDEX] == [(MT.READ_INDEX, 1)]
    assert net.reads[2] == [(net.nodes[1].log.committed, b"fr")]
    assert net.reads[1] == []


def test_read_index_without_a_leader_is_refused() -> None:
    """ReadIndex with no known leader raises ProposalDropped (the client retries)."""
    with pytest.raises(ProposalDropped):
        make(1).read_index(b"x")


# ================================================== leadership transfer


def test_transfer_to_an_up_to_date_follower_sends_timeout_now() -> None:
    """Transfer: to a caught-up follower the leader sends TimeoutNow; it campaigns
    immediately (bypassing PreVote and stickiness) and wins the next term."""
    net = cluster(3, pre_vote=True, check_quorum=True)
    net.elect(1)
    term = net.nodes[1].term
    net.nodes[1].transfer_leadership(2)
    seen = net.deliver()
    assert any(m.type == MT.TIMEOUT_NOW and m.to == 2 for m in seen)
    assert net.nodes[2].role == Role.LEADER and net.nodes[2].term == term + 1
    assert net.nodes[1].role == Role.FOLLOWER


def test_transfer_to_a_lagging_follower_catches_it_up_first_and_blocks_proposals() -> None:
    """Transfer: a lagging transferee is first brought up to date; proposals are
    refused while the transfer is in progress."""
    net = cluster(3)
    net.elect(1)
    net.cut = {(1, 3)}
    net.propose(1, b"a")
    ld = net.nodes[1]
    ld.transfer_leadership(3)
    net.deliver()
    with pytest.raises(ProposalDropped):
        ld.propose(b"b")
    net.heal()
    net.tick(1)
    assert net.nodes[3].role == Role.LEADER


def test_transfer_is_abandoned_after_an_election_timeout() -> None:
    """Transfer: if the transferee does not take over within an election timeout,
    the leader resumes accepting proposals."""
    net = cluster(3)
    net.elect(1)
    net.isolate(3)
    net.nodes[1].transfer_leadership(3)
    net.deliver()
    net.cut.discard((1, 2))
    net.cut.discard((2, 1))
    net.tick(1, ET)
    net.propose(1, b"ok")
    assert net.nodes[1].role == Role.LEADER and net.nodes[1].lead_transferee == 0


# ================================================== snapshots


def compact_leader(net: Net, nid: int) -> int:
    """Snapshot and compact the leader's storage at its applied index."""
    n = net.nodes[nid]
    storage = n.storage
    assert isinstance(storage, MemoryStorage)
    idx = n.log.applied
    storage.create_snapshot(idx, n.conf_state(), b"state@%d" % idx)
    storage.compact(idx)
    return idx


def test_snapshot_installs_on_a_follower_behind_the_compacted_log() -> None:
    """InstallSnapshot: a follower that needs entries the leader compacted away
    receives the snapshot, persists it (log replaced) and then catches up."""
    net = cluster(3)
    net.elect(1)
    net.down = {3}
    for i in range(6):
        net.propose(1, b"x%d" % i)
    net.tick(1)
    idx = compact_leader(net, 1)
    net.propose(1, b"after")
    net.down = set()
    seen = net.tick(1, 3)
    assert any(m.type == MT.SNAP and m.to == 3 for m in seen)
    f = net.nodes[3]
    assert f.storage.snapshot().meta.index == idx and f.storage.snapshot().data == b"state@%d" % idx
    assert f.log.last_index() == net.nodes[1].log.last_index()
    assert net.nodes[1].progress[3].state == ProgressState.REPLICATE


def test_snapshot_older_than_commit_is_ignored() -> None:
    """A snapshot at or below the follower's commit index does not replace its log."""
    net = cluster(3)
    net.elect(1)
    for i in range(4):
        net.propose(1, b"x%d" % i)
    net.tick(1)
    f = net.nodes[2]
    last = f.log.last_index()
    old = net.nodes[1].storage.snapshot()
    f.step(msg(MT.SNAP, 1, 2, f.term, snapshot=old))
    (r,) = sent(f)
    assert not r.reject and r.index == f.log.committed and f.log.last_index() == last


def test_restart_recovers_hard_state_log_and_snapshot() -> None:
    """A node rebuilt from its storage recovers term, vote, commit and log."""
    net = cluster(3)
    net.elect(1)
    for i in range(3):
        net.propose(1, b"x%d" % i)
    net.tick(1)
    old = net.nodes[2]
    again = make(2, storage=old.storage)  # type: ignore[arg-type]
    assert again.hard_state() == old.hard_state()
    assert again.log.last_index() == old.log.last_index()
    assert again.role == Role.FOLLOWER


# ================================================== learners and membership


def test_learner_receives_the_log_but_does_not_count_or_campaign() -> None:
    """Learners get every entry, but are not in the commit quorum and never campaign."""
    voters = (1, 2, 3)
    net = Net([make(i, voters, learners=(4,)) for i in (1, 2, 3, 4)])
    net.elect(1)
    net.down = {2, 3}
    net.propose(1, b"x")
    assert net.nodes[4].log.last_index() == net.nodes[1].log.last_index()
    assert net.nodes[1].log.committed < net.nodes[1].log.last_index()  # 1 + learner is no quorum
    net.down = set()
    net.tick(1)
    net.tick(1)
    l4 = net.nodes[4]
    for _ in range(5 * ET):
        l4.tick()
    assert l4.role == Role.FOLLOWER and not l4.promotable()


def test_add_learner_then_promote_once_caught_up() -> None:
    """Membership: a new node joins as a learner (empty log: it gets the bootstrap
    snapshot), catches up, and is promoted to voter; then it counts in the quorum."""
    net = cluster(3)
    net.elect(1)
    fresh = make(4, storage=MemoryStorage())
    assert not net.nodes[1].caught_up(4)
    net.nodes[4] = fresh
    net.applied[4] = []
    net.reads[4] = []
    ld = net.nodes[1]
    ld.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    net.deliver()
    net.tick(1, 3)
    assert ld.learners == {4} and fresh.learners == {4}
    assert ld.progress[4].match == ld.log.last_index() and ld.caught_up(4)
    ld.propose_conf_change(ConfChange(ConfChangeType.PROMOTE, 4))
    net.deliver()
    net.tick(1, 2)
    assert ld.voters == {1, 2, 3, 4} and fresh.voters == {1, 2, 3, 4} and fresh.promotable()
    net.down = {2, 3}
    net.propose(1, b"needs-4")
    assert ld.log.committed < ld.log.last_index()  # 2 of 4 is not a majority


def test_new_member_is_probed_as_soon_as_it_is_added() -> None:
    """Membership: the leader contacts a member the moment its addition is
    applied -- no heartbeat tick needed -- so a learner can be caught up (and
    promoted) within a few round trips of being added."""
    net = cluster(3)
    net.elect(1)
    ld = net.nodes[1]
    net.propose(1, b"before")
    fresh = make(4, storage=MemoryStorage())
    net.nodes[4], net.applied[4], net.reads[4] = fresh, [], []
    ld.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    seen = net.deliver()  # no tick at all
    assert ld.learners == {4}
    assert any(m.to == 4 for m in seen), "the new member was not contacted"
    assert ld.caught_up(4) and fresh.log.last_index() == ld.log.last_index()


def test_only_one_configuration_change_at_a_time() -> None:
    """Membership: a second config change is refused while one is unapplied."""
    net = cluster(3)
    net.elect(1)
    net.down = {2, 3}
    ld = net.nodes[1]
    ld.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    with pytest.raises(ProposalDropped):
        ld.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 5))
    net.down = set()
    net.tick(1, 2)
    ld.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 5))  # now accepted


def test_new_leader_waits_for_its_earlier_entries_before_a_config_change() -> None:
    """Membership: a new leader refuses a config change until its no-op (and all
    before it) is applied (the single-server change bug fix)."""
    net = cluster(3)
    net.filter = lambda m: m.type != MT.APP
    net.elect(1)
    with pytest.raises(ProposalDropped):
        net.nodes[1].propose_conf_change(ConfChange(ConfChangeType.REMOVE, 3))


def test_removing_a_voter_shrinks_the_quorum_and_a_removed_leader_steps_down() -> None:
    """Membership: after removing a voter, commit needs a majority of the new
    configuration; a leader that removes itself steps down."""
    net = cluster(3)
    net.elect(1)
    net.tick(1)
    ld = net.nodes[1]
    ld.propose_conf_change(ConfChange(ConfChangeType.REMOVE, 3))
    net.deliver()
    net.tick(1)
    assert ld.voters == {1, 2}
    net.down = {3}
    net.propose(1, b"x")
    assert ld.log.committed == ld.log.last_index()
    ld.propose_conf_change(ConfChange(ConfChangeType.REMOVE, 1))
    net.deliver()
    net.tick(1)
    assert ld.role == Role.FOLLOWER and not ld.promotable()


def test_a_node_with_unapplied_conf_changes_does_not_campaign() -> None:
    """A node whose committed-but-unapplied entries include a config change does
    not campaign (its configuration may be stale)."""
    s = MemoryStorage(ConfState((1, 2, 3)))
    s.append([Entry(1, 2, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.REMOVE, 1).encode())])
    s.set_hard_state(HardState(1, 0, 2))
    n = make(1, storage=s)
    n.campaign()
    assert n.role == Role.FOLLOWER


# ================================================== flow control


def test_flow_control_limits_inflight_appends() -> None:
    """Flow control: in REPLICATE state at most max_inflight_msgs appends are
    unacknowledged; a heartbeat response frees one slot."""
    net = Net([make(i, (1, 2), max_inflight_msgs=2) for i in (1, 2)])
    net.elect(1)
    net.tick(1)
    ld = net.nodes[1]
    assert ld.progress[2].state == ProgressState.REPLICATE
    net.cut = {(1, 2)}
    for i in range(5):
        ld.propose(b"p%d" % i)
    apps = [m for m in handle(ld) if m.type == MT.APP]
    assert len(apps) == 2 and ld.progress[2].is_paused()
    ld.step(msg(MT.HEARTBEAT_RESP, 2, 1, ld.term))
    assert len([m for m in handle(ld) if m.type == MT.APP]) == 1  # one slot freed


def test_flow_control_limits_bytes_per_message() -> None:
    """Flow control: one append carries at most max_size_per_msg bytes (but at
    least one entry)."""
    net = Net([make(i, (1, 2), max_size_per_msg=100) for i in (1, 2)])
    net.elect(1)
    net.down = {2}
    for i in range(6):
        net.propose(1, b"z" * 60 + bytes([i]))
    net.down = set()
    seen = net.tick(1, 3)
    apps = [m for m in seen if m.type == MT.APP and m.entries]
    assert apps and all(sum(e.size() for e in m.entries) <= 100 or len(m.entries) == 1 for m in apps)
    assert net.nodes[2].log.last_index() == net.nodes[1].log.last_index()


# ================================================== building blocks


def test_quorum_commit_index_and_votes() -> None:
    """The commit index is the highest index on a majority; vote tallies decide early."""
    assert committed_index([1, 2, 3], {1: 5, 2: 3, 3: 1}) == 3
    assert committed_index([1, 2, 3, 4], {1: 5, 2: 3, 3: 1, 4: 9}) == 3
    assert committed_index([1, 2, 3], {1: 5, 9: 9}) == 0
    assert vote_result([1, 2, 3], {1: True, 2: True}) == VoteResult.WON
    assert vote_result([1, 2, 3], {1: True, 2: False}) == VoteResult.PENDING
    assert vote_result([1, 2, 3], {2: False, 3: False}) == VoteResult.LOST
    assert vote_result([1, 2, 3], {1: True, 7: True}) == VoteResult.PENDING  # non-voter ignored


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.integers(1, 7), st.integers(0, 50), min_size=1))
def test_quorum_commit_index_is_on_a_majority(match: dict[int, int]) -> None:
    """Property: the computed index is stored on a majority, and no higher index is."""
    voters = list(match)
    ci = committed_index(voters, match)
    assert sum(1 for v in voters if match[v] >= ci) > len(voters) // 2
    assert sum(1 for v in voters if match[v] >= ci + 1) <= len(voters) // 2


def test_memory_storage_compaction_and_errors() -> None:
    """MemoryStorage: terms, ranges, compaction boundary and errors."""
    s = storage_with([2, 2, 3])
    assert (s.first_index(), s.last_index(), s.term(4)) == (2, 4, 3)
    s.compact(3)
    assert (s.first_index(), s.term(3)) == (4, 2)
    with pytest.raises(CompactedError):
        s.term(2)
    with pytest.raises(UnavailableError):
        s.entries(4, 9)
    assert [e.index for e in s.entries(4, 5)] == [4]


def test_raft_log_find_conflict_and_truncation() -> None:
    """RaftLog: conflicts are found at the first mismatching term; appending
    truncates the unstable tail there."""
    log = RaftLog(storage_with([2, 2]))
    assert log.find_conflict([Entry(2, 2), Entry(2, 3)]) == 0
    assert log.find_conflict([Entry(2, 3), Entry(2, 4)]) == 4
    assert log.find_conflict([Entry(2, 2), Entry(5, 3)]) == 3
    assert log.maybe_append(2, 2, 0, [Entry(5, 3), Entry(5, 4)]) == 4
    assert [log.term(i) for i in (2, 3, 4)] == [2, 5, 5]
    assert log.maybe_append(3, 9, 0, []) is None


def test_message_wire_round_trip() -> None:
    """Messages (with entries and snapshots) survive msgpack encoding."""
    m = Message(
        MT.APP,
        to=2,
        frm=1,
        term=3,
        index=4,
        log_term=2,
        entries=(Entry(3, 5, EntryType.NORMAL, b"d"),),
        commit=4,
    )
    assert decode_message(encode_message(m)) == m
    with pytest.raises(msgspec.DecodeError):
        decode_message(b"\x91\x63")


def test_ready_is_persist_then_send_then_apply() -> None:
    """A Ready carries, together, the entries and hard state to persist and the
    messages that depend on them; advance() marks them stable/applied."""
    net = cluster(3)
    net.elect(1)
    ld = net.nodes[1]
    ld.propose(b"p")
    rd: Ready = ld.ready()
    assert rd.entries and rd.entries[-1].data == b"p"
    assert any(m.type == MT.APP and m.entries and m.entries[-1] == rd.entries[-1] for m in rd.messages)
    assert not rd.committed_entries or rd.committed_entries[-1].index <= rd.entries[-1].index
    storage = ld.storage
    assert isinstance(storage, MemoryStorage)
    storage.append(rd.entries)
    ld.advance(rd)
    assert ld.log.unstable.entries == []


def test_lost_snapshot_is_retried_and_report_snapshot_resumes_probing() -> None:
    """A snapshot that never arrives is re-sent after an election timeout; the
    transport's report_snapshot(ok=False) returns the follower to probing."""
    net = cluster(3)
    net.elect(1)
    net.down = {3}
    for i in range(4):
        net.propose(1, b"x%d" % i)
    net.tick(1)
    compact_leader(net, 1)
    net.filter = lambda m: m.type != MT.SNAP  # every snapshot is lost
    net.down = set()
    net.tick(1)
    ld = net.nodes[1]
    assert ld.progress[3].state == ProgressState.SNAPSHOT
    seen = net.tick(1, ET + 2)
    assert sum(1 for m in seen if m.type == MT.SNAP and m.to == 3) >= 1  # retried
    ld.report_snapshot(3, ok=False)
    assert ld.progress[3].state == ProgressState.PROBE
    net.filter = lambda m: True
    net.tick(1, 3)
    assert net.nodes[3].log.last_index() == ld.log.last_index()


def test_report_unreachable_stops_pipelining() -> None:
    """report_unreachable moves a replicating follower back to probing."""
    net = cluster(3)
    net.elect(1)
    net.tick(1)
    ld = net.nodes[1]
    assert ld.progress[2].state == ProgressState.REPLICATE
    ld.report_unreachable(2)
    assert ld.progress[2].state == ProgressState.PROBE


def test_a_deposed_leader_steps_down_when_it_hears_the_new_term() -> None:
    """A leader cut off while the others elect a new one learns the higher term
    from the reply to its next heartbeat and steps down."""
    net = cluster(3)
    net.elect(1)
    net.isolate(1)
    net.elect(2)
    net.heal()
    net.tick(1)
    assert net.nodes[1].role == Role.FOLLOWER and net.nodes[1].term == net.nodes[2].term


def test_single_voter_cluster_commits_and_reads_alone() -> None:
    """A one-voter cluster (the embedded default) elects itself, commits and
    serves ReadIndex without any peer."""
    n = make(1, (1,))
    net = Net([n])
    net.elect(1)
    net.propose(1, b"solo")
    assert n.log.committed == n.log.last_index()
    n.read_index(b"q")
    net.deliver()
    assert net.reads[1] == [(n.log.committed, b"q")]
