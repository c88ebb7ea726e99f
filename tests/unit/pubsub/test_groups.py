"""The pure consumer-group core: leases, ack/nack, redelivery, attempts, dead-lettering, lag, state."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from sprawl.delivery.groups import (
    ConsumerGroup,
    DeadLetter,
    Delivery,
    GroupConfig,
    make_ack_id,
    parse_ack_id,
)

DEADLINE = 1000


class Sim:
    """Drives a ConsumerGroup like the broker does (tick before every operation)
    and checks it against a model after each step."""

    def __init__(self, partitions: int, max_deliveries: int, max_in_flight: int = 10_000):
        self.cfg = GroupConfig(
            ack_deadline_ms=DEADLINE, max_deliveries=max_deliveries, max_in_flight=max_in_flight
        )
        self.g = ConsumerGroup("g", self.cfg, {p: 0 for p in range(partitions)})
        self.now = 0
        self.hw = {p: 0 for p in range(partitions)}
        self.low = {p: 0 for p in range(partitions)}
        self.core_low = dict(self.low)  # the low the core last saw (pull clips)
        self.history: dict[tuple[int, int], list[int]] = {}
        self.done: set[tuple[int, int]] = set()
        self.acked: set[tuple[int, int]] = set()
        self.dead: dict[tuple[int, int], int] = {}
        self.valid: dict[str, Delivery] = {}  # ack ids the model says are live leases

    def visible(self) -> dict[int, tuple[int, int]]:
        return {p: (self.low[p], self.hw[p]) for p in self.hw}

    def _dead_letters(self, dls: list[DeadLetter]) -> None:
        for dl in dls:
            key = (dl.partition, dl.offset)
            assert key not in self.done, f"{key} dead-lettered after it was done"
            assert self.cfg.max_deliveries and dl.attempts == self.cfg.max_deliveries
            assert len(self.history[key]) == dl.attempts
            self.dead[key] = self.dead.get(key, 0) + 1
            self.done.add(key)
            self.valid.pop(make_ack_id(dl.partition, dl.offset, dl.attempts), None)

    def tick(self) -> None:
        for aid, dv in list(self.valid.items()):
            if dv.deadline_ms <= self.now:
                del self.valid[aid]
        self._dead_letters(self.g.tick(self.now))

    def publish(self, p: int, n: int) -> None:
        self.hw[p] += n

    def retain(self, p: int, n: int) -> None:
        self.low[p] = min(self.hw[p], self.low[p] + n)

    def pull(self, n: int) -> list[Delivery]:
        self.tick()
        out = self.g.pull(n, self.now, self.visible())
        self.core_low = dict(self.low)
        for aid in [a for a, dv in self.valid.items() if dv.offset < self.low[dv.partition]]:
            del self.valid[aid]
        assert len(out) <= n
        for dv in out:
            key = (dv.partition, dv.offset)
            assert key not in self.done, f"{key} delivered again after ack/dead-letter"
            assert self.low[dv.partition] <= dv.offset < self.hw[dv.partition]
            hist = self.history.setdefault(key, [])
            assert dv.attempt == len(hist) + 1, "attempts rise by one per delivery"
            hist.append(dv.attempt)
            assert dv.ack_id == make_ack_id(dv.partition, dv.offset, dv.attempt)
            assert dv.deadline_ms == self.now + DEADLINE
            for old in self.valid.values():
                assert (old.partition, old.offset) != key, "a live lease was handed out twice"
            self.valid[dv.ack_id] = dv
        return out

    def ack(self, aid: str) -> str | None:
        self.tick()
        why = self.g.ack(aid, self.now)
        dv = self.valid.pop(aid, None)
        if dv is not None:
            assert why is None, f"a live lease's ack was refused: {why}"
            self.done.add((dv.partition, dv.offset))
            self.acked.add((dv.partition, dv.offset))
        else:
            assert why is not None, "an ack of a dead lease was accepted"
        return why

    def nack(self, aid: str, delay: int) -> str | None:
        self.tick()
        why, dl = self.g.nack(aid, delay, self.now)
        dv = self.valid.pop(aid, None)
        if dv is not None:
            assert why is None, f"a live lease's nack was refused: {why}"
        else:
            assert why is not None and dl is None
        self._dead_letters([dl] if dl else [])
        return why

    def extend(self, aid: str, ms: int) -> str | None:
        self.tick()
        why, deadline = self.g.extend(aid, ms, self.now)
        dv = self.valid.get(aid)
        if dv is not None:
            assert why is None, f"a live lease's extend was refused: {why}"
            assert deadline == self.now + ms
            dv.deadline_ms = deadline
        else:
            assert why is not None, "an extend of a dead lease was accepted"
        return why

    def check(self) -> None:
        committed = self.g.committed()
        for p in self.hw:
            o = self.core_low[p]
            while (p, o) in self.done:
                o += 1
            assert committed[p] == o, "committed is exactly the done prefix"
        assert self.g.in_flight == len(self.valid)
        assert self.g.dead_lettered == len(self.dead)
        assert all(n == 1 for n in self.dead.values()), "exactly one DeadLetter per offset"
        assert self.g.lag(self.hw) == sum(max(0, self.hw[p] - committed[p]) for p in self.hw)

    def drain(self) -> None:
        """Pull and ack everything (bounded); afterwards all visible offsets are done."""
        for _ in range(200):
            self.now += DEADLINE + 10_000
            got = self.pull(10_000)
            for dv in got:
                self.ack(dv.ack_id)
            self.check()
            if not got and self.g.next_due_ms() is None:
                break
        for p in self.hw:
            for o in range(self.low[p], self.hw[p]):
                assert (p, o) in self.history, f"{(p, o)} was never delivered"
                assert (p, o) in self.done
            assert self.g.committed()[p] == max(self.hw[p], self.core_low[p])
        assert self.g.in_flight == 0


_step = st.one_of(
    st.tuples(st.just("publish"), st.integers(0, 2), st.integers(0, 6)),
    st.tuples(st.just("pull"), st.integers(1, 6), st.just(0)),
    st.tuples(st.just("ack"), st.integers(0, 50), st.just(0)),
    st.tuples(st.just("nack"), st.integers(0, 50), st.integers(0, 3000)),
    st.tuples(st.just("late"), st.integers(0, 50), st.just(0)),
    st.tuples(st.just("extend"), st.integers(0, 50), st.integers(1, 3000)),
    st.tuples(st.just("late_extend"), st.integers(0, 50), st.integers(1, 3000)),
    st.tuples(st.just("time"), st.integers(0, 2500), st.just(0)),
    st.tuples(st.just("retain"), st.integers(0, 2), st.integers(0, 4)),
)


def run(sim: Sim, steps: list, old_ids: list[str]) -> None:
    """Apply random steps; ``old_ids`` collects every ack id handed out."""
    parts = len(sim.hw)
    for kind, a, b in steps:
        if kind == "publish":
            sim.publish(a % parts, b)
        elif kind == "pull":
            old_ids.extend(dv.ack_id for dv in sim.pull(a))
        elif kind == "ack" and sim.valid:
            sim.ack(sorted(sim.valid)[a % len(sim.valid)])
        elif kind == "nack" and sim.valid:
            sim.nack(sorted(sim.valid)[a % len(sim.valid)], b)
        elif kind == "late" and old_ids:
            # Any ack id ever issued: the model knows whether it is still live.
            sim.ack(old_ids[a % len(old_ids)])
        elif kind == "extend" and sim.valid:
            sim.extend(sorted(sim.valid)[a % len(sim.valid)], b)
        elif kind == "late_extend" and old_ids:
            sim.extend(old_ids[a % len(old_ids)], b)
        elif kind == "time":
            sim.now += a
        elif kind == "retain":
            sim.retain(a % parts, b)
        sim.check()


@given(
    partitions=st.integers(1, 3),
    max_deliveries=st.sampled_from([0, 1, 2, 3]),
    max_in_flight=st.sampled_from([2, 10_000]),
    steps=st.lists(_step, min_size=10, max_size=60),
)
def test_random_schedules_keep_the_delivery_promises(
    partitions: int, max_deliveries: int, max_in_flight: int, steps: list
) -> None:
    """Random publish/pull/ack/nack/extend/expiry/retention: acked offsets are never
    redelivered, attempts rise by one, committed is exactly the done prefix,
    max_deliveries yields exactly one DeadLetter, and in the end every visible
    offset was delivered and is done."""
    sim = Sim(partitions, max_deliveries, max_in_flight)
    old_ids: list[str] = []
    run(sim, steps, old_ids)
    sim.drain()


@given(
    partitions=st.integers(1, 3),
    max_deliveries=st.sampled_from([0, 2, 4]),
    steps=st.lists(_step, min_size=5, max_size=40),
)
def test_state_round_trip_keeps_committed_attempts_and_done(
    partitions: int, max_deliveries: int, steps: list
) -> None:
    """to_state → JSON → from_state keeps committed offsets, attempt counts and
    done offsets; leased offsets come back for redelivery with the next attempt."""
    sim = Sim(partitions, max_deliveries)
    run(sim, steps, [])
    state = json.loads(json.dumps(sim.g.to_state()))
    g2 = ConsumerGroup.from_state("g", state, sim.now)
    assert g2.committed() == sim.g.committed()
    assert g2.dead_lettered == sim.g.dead_lettered
    assert g2.config == sim.g.config
    assert g2.in_flight == 0, "leases do not survive a restart"
    old_attempts = {(p, o): s.attempts for p, c in sim.g.cursors.items() for o, s in c.pending.items()}
    new_attempts = {(p, o): s.attempts for p, c in g2.cursors.items() for o, s in c.pending.items()}
    assert new_attempts == old_attempts
    # The restarted group goes on from there under the same model.
    sim.g = g2
    sim.valid.clear()
    sim.check()
    sim.drain()


def test_ack_after_lease_expiry_is_refused_as_expired() -> None:
    """An ack arriving at or after the deadline is refused with "expired", whether
    or not the lease was already released; the offset is redelivered as attempt 2."""
    g = ConsumerGroup("g", GroupConfig(ack_deadline_ms=100), {0: 0})
    vis = {0: (0, 2)}
    d0, d1 = g.pull(10, 0, vis)
    assert (d0.attempt, d0.deadline_ms) == (1, 100)
    assert g.ack(d0.ack_id, 100) == "expired", "deadline reached, not yet ticked"
    g.tick(100)
    assert g.ack(d1.ack_id, 100) == "expired", "released by tick"
    again = g.pull(10, 100, vis)
    assert [(d.offset, d.attempt) for d in again] == [(0, 2), (1, 2)]
    assert g.committed() == {0: 0}


def test_late_ack_of_an_old_attempt_is_refused() -> None:
    """Once redelivered, the first attempt's ack id no longer acks the message."""
    g = ConsumerGroup("g", GroupConfig(ack_deadline_ms=100), {0: 0})
    vis = {0: (0, 1)}
    (first,) = g.pull(1, 0, vis)
    g.tick(150)
    (second,) = g.pull(1, 150, vis)
    assert second.attempt == 2
    assert g.ack(first.ack_id, 160) == "unknown"
    assert g.committed() == {0: 0}
    assert g.ack(second.ack_id, 160) is None
    assert g.ack(second.ack_id, 160) == "unknown", "a second ack of the same delivery"
    assert g.committed() == {0: 1}
    assert g.pull(5, 10_000, vis) == []


def test_nack_with_delay_redelivers_only_when_due() -> None:
    """A nacked message comes back after delay_ms, not before, with attempt 2."""
    g = ConsumerGroup("g", GroupConfig(), {0: 0})
    vis = {0: (0, 1)}
    (d,) = g.pull(1, 0, vis)
    assert g.nack(d.ack_id, 500, 10) == (None, None)
    assert g.in_flight == 0
    assert g.pull(1, 509, vis) == []
    assert g.next_due_ms() == 510
    (again,) = g.pull(1, 510, vis)
    assert (again.offset, again.attempt) == (0, 2)
    assert g.nack(d.ack_id, 0, 520) == ("unknown", None)


def test_max_deliveries_dead_letters_exactly_once() -> None:
    """With max_deliveries=2: the second failed delivery (nack or expiry) yields one
    DeadLetter, the offset is settled and never delivered again."""
    g = ConsumerGroup("g", GroupConfig(ack_deadline_ms=100, max_deliveries=2), {0: 0})
    vis = {0: (0, 2)}
    a, _b = g.pull(2, 0, vis)
    assert g.nack(a.ack_id, 0, 1) == (None, None)
    assert g.tick(100) == []  # b's first lease expires: back to ready
    a2, b2 = g.pull(2, 100, vis)
    assert (a2.attempt, b2.attempt) == (2, 2)
    why, dl = g.nack(a2.ack_id, 0, 101)
    assert why is None and dl == DeadLetter(0, 0, 2)
    assert g.tick(200) == [DeadLetter(0, 1, 2)]
    assert g.tick(10_000) == []
    assert g.pull(10, 10_000, vis) == []
    assert g.dead_lettered == 2
    assert g.committed() == {0: 2}
    assert g.lag({0: 2}) == 0


def test_lag_and_describe() -> None:
    """Lag counts visible, unacked messages over all partitions."""
    g = ConsumerGroup("g", GroupConfig(), {0: 0, 1: 5})
    assert g.lag({0: 3, 1: 9}) == 7
    ds = g.pull(10, 0, {0: (0, 3), 1: (5, 9)})
    assert len(ds) == 7 and g.in_flight == 7
    for d in ds:
        if d.partition == 1:
            assert g.ack(d.ack_id, 1) is None
    desc = g.describe({0: 3, 1: 9})
    assert desc["lag"] == 3 and desc["committed"] == {"0": 0, "1": 9}
    assert desc["in_flight"] == 3 and desc["acked_total"] == 4 and desc["delivered_total"] == 7


def test_retention_below_a_done_run_advances_committed() -> None:
    """When retention removes an unacked head, committed skips the acked offsets
    after it too (lag must not stay overstated)."""
    g = ConsumerGroup("g", GroupConfig(), {0: 0})
    d0, d1, d2 = g.pull(3, 0, {0: (0, 3)})
    assert g.ack(d1.ack_id, 1) is None and g.ack(d2.ack_id, 1) is None
    assert g.committed() == {0: 0}
    assert g.pull(3, 2, {0: (1, 3)}) == []
    assert g.committed() == {0: 3}
    assert g.lag({0: 3}) == 0
    assert g.ack(d0.ack_id, 3) == "unknown", "the deleted offset's lease is gone"


def test_max_in_flight_limits_new_leases() -> None:
    """No new offsets are leased while max_in_flight leases are outstanding."""
    g = ConsumerGroup("g", GroupConfig(max_in_flight=2), {0: 0})
    vis = {0: (0, 10)}
    first = g.pull(10, 0, vis)
    assert len(first) == 2
    assert g.pull(10, 1, vis) == []
    assert g.ack(first[0].ack_id, 2) is None
    assert [d.offset for d in g.pull(10, 3, vis)] == [2]


def test_ack_ids() -> None:
    """Ack ids round-trip; malformed ones are refused without touching state."""
    assert parse_ack_id(make_ack_id(3, 99, 2)) == (3, 99, 2)
    for bad in ("", "1-2", "a-b-c", "1-2-0", "-1-2-3", "1-2-3-4", None, 5):
        assert parse_ack_id(bad) is None  # type: ignore[arg-type]
    g = ConsumerGroup("g", GroupConfig(), {0: 0})
    assert g.ack("nope", 0) == "malformed"
    assert g.nack("nope", 0, 0) == ("malformed", None)
    assert g.ack("7-0-1", 0) == "unknown", "no such partition"


def test_out_of_order_acks_behind_an_unacked_head_stay_bounded() -> None:
    """Settled offsets waiting behind one unacked head offset are bounded (10x
    max_in_flight per partition); acking the head lets delivery flow again."""
    g = ConsumerGroup("g", GroupConfig(max_in_flight=5, ack_deadline_ms=10**9), {0: 0})
    visible = {0: (0, 10_000)}
    head = g.pull(1, 0, visible)[0]
    for _ in range(100):
        got = g.pull(10, 0, visible)
        for d in got:
            assert g.ack(d.ack_id, 0) is None
    assert len(g.cursors[0].pending) <= 50
    assert g.pull(10, 0, visible) == []
    assert g.ack(head.ack_id, 0) is None
    assert g.committed()[0] == g.cursors[0].next
    assert len(g.pull(10, 0, visible)) == 5


def test_leases_taken_back_unseen_count_no_attempt() -> None:
    """unlease (an answer had no room for these leases) makes them ready again at once
    without using up a delivery: however often it happens, max_deliveries is not hit,
    and the lease given next expires at its own deadline, not the old one's."""
    g = ConsumerGroup("g", GroupConfig(ack_deadline_ms=100, max_deliveries=2), {0: 0})
    hw = {0: (0, 3)}
    for t in range(0, 50, 5):
        got = g.pull(3, t, hw)
        assert [d.offset for d in got] == [0, 1, 2] and all(d.attempt == 1 for d in got)
        g.unlease(got, t)
    assert g.dead_lettered == 0
    got = g.pull(3, 60, hw)
    assert all(d.attempt == 1 for d in got)
    assert g.tick(120) == []  # the first lease's deadline (5 + 100) is gone with it
    assert g.ack(got[0].ack_id, 150) is None  # still leased until 160
    assert g.tick(161) == []  # offsets 1 and 2 expire now, with one attempt used
    assert [(d.offset, d.attempt) for d in g.pull(2, 161, hw)] == [(1, 2), (2, 2)]


def test_an_extended_lease_is_redelivered_at_the_new_deadline_not_the_old() -> None:
    """extend() moves the deadline to now + extend_ms: ticks at the old deadline
    leave the lease alone (the ack id still acks), the new deadline releases it."""
    g = ConsumerGroup("g", GroupConfig(ack_deadline_ms=100), {0: 0})
    vis = {0: (0, 1)}
    (d,) = g.pull(1, 0, vis)
    assert g.extend(d.ack_id, 500, 50) == (None, 550)
    assert g.tick(100) == [] and g.tick(549) == []
    assert g.pull(1, 549, vis) == [], "not redelivered at the old deadline"
    assert g.in_flight == 1
    g.tick(550)
    (again,) = g.pull(1, 550, vis)
    assert (again.offset, again.attempt) == (0, 2), "redelivered at the new one"
    assert g.ack(d.ack_id, 551) == "unknown"


def test_an_extended_lease_can_still_be_acked_before_its_new_deadline() -> None:
    """The ack id stays valid past the original deadline once extended."""
    g = ConsumerGroup("g", GroupConfig(ack_deadline_ms=100), {0: 0})
    (d,) = g.pull(1, 0, {0: (0, 1)})
    assert g.extend(d.ack_id, 1000, 90)[0] is None
    g.tick(500)
    assert g.ack(d.ack_id, 500) is None
    assert g.committed() == {0: 1}


def test_extending_an_expired_unknown_or_malformed_lease_is_refused() -> None:
    """An expired lease (ticked or not), a settled one, an old attempt and a
    malformed id are refused with their reason; nothing changes."""
    g = ConsumerGroup("g", GroupConfig(ack_deadline_ms=100), {0: 0})
    vis = {0: (0, 3)}
    d0, d1, d2 = g.pull(3, 0, vis)
    assert g.extend(d0.ack_id, 500, 100) == ("expired", 0), "deadline reached, not yet ticked"
    g.tick(100)
    assert g.extend(d1.ack_id, 500, 100) == ("expired", 0), "released by tick"
    assert g.extend("nope", 500, 100) == ("malformed", 0)
    assert g.extend(make_ack_id(0, 99, 1), 500, 100) == ("unknown", 0)
    redelivered = g.pull(3, 100, vis)
    assert g.ack(redelivered[0].ack_id, 101) is None
    assert g.extend(redelivered[0].ack_id, 500, 101) == ("unknown", 0), "already acked"
    assert g.extend(d2.ack_id, 500, 101) == ("unknown", 0), "an older attempt"
