"""The controller's part for partitions, run by the Raft leader.  An adapter
(part of the data plane, :mod:`sprawl.cluster.dataplane`): the decisions are
the pure cores' (:mod:`sprawl.replication.failover`,
:mod:`sprawl.cluster.balance`, :mod:`sprawl.cluster.placement`).

* **Failover.**  A :class:`~sprawl.replication.failover.FailoverCore` per
  replicated partition: a leader silent for ``beat_timeout_ticks`` (or dead by
  gossip) is replaced by fencing a majority and committing the best replica's
  new epoch through Raft (``set_partition``).
* **Replica-set steps.**  Replica sets are kept at the topic's replication
  factor as nodes join, and replicas dead longer than the grace period are
  replaced, a few partitions at a time (:meth:`PartitionController.wanted_replicas`).
* **Balancing.**  Leadership moves off overloaded nodes, and a persistently hot
  node hands a replica to a cooler one (:mod:`sprawl.cluster.balance`).

A step costs what changed, not the number of partitions (issue 23): the
controller looks only at the partitions a change touched -- a topic applied
(:meth:`PartitionController.topic_changed`), a node whose gossip state,
eligibility or beat changed (an index of partitions by replica node), a
partition whose last look was inconclusive (its core busy, its new replicas
catching up, the step's move budget spent) -- and computes the eligible nodes
once per step.  Becoming the controller (or installing a snapshot) looks at
every partition once.  Leaders whose node went silent, or restarted, fail
over in the tick that notices it (the replication service's node liveness,
:mod:`sprawl.replication.liveness`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from sprawl.cluster.balance import (
    PROFILES_PENDING,
    BalanceConfig,
    Balancer,
    Move,
    NodeLoad,
    partitions_from,
    replica_move,
)
from sprawl.cluster.drain import UP, avoided, drained_nodes, handoff_target, placeable
from sprawl.cluster.metadata import MAX_PARTITION_BATCH
from sprawl.cluster.placement import replicas as rendezvous
from sprawl.cluster.replica_sync import ReplicaSync, sync_core
from sprawl.errors import SprawlError
from sprawl.gossip.load import rates_by_node
from sprawl.interfaces import Clock, Delayed
from sprawl.replication.failover import Commit, FailoverCore, LeaderSpread
from sprawl.replication.service import ReplicationService

if TYPE_CHECKING:
    from sprawl.interfaces import ControlView, Members
    from sprawl.peer.rpc import PeerRPC

log = Logger()

#: Seconds before a partition may have a replica moved for load again.
REPLICA_MOVE_COOLDOWN = 600.0
#: A hand-off goes only to a node whose beat this controller heard within this many seconds.
HANDOFF_BEAT_WITHIN = 1.0
#: With more failover cores than this at work (fencing, committing, or a new
#: leader not yet confirmed: a dead node's leaderships moving), the balancer
#: waits: what it would look at is moving under it, it could move none of
#: those partitions, and at 10,000 partitions its view took seconds of the
#: controller's CPU in the middle of the failover (issue 23).
BALANCE_WAITS_FOR_CORES = 64
#: Gossip states between which a node's change of state concerns only the
#: partitions it leads (see :meth:`PartitionController._control_partitions`).
GOSSIP_LIVENESS = frozenset({"alive", "suspect", "dead"})
#: While failover cores are still fencing (their choices are coming: a dead
#: node's thousands of fence answers arrive over many reactor turns), the
#: batch of choices waits for them -- rechecked every ``COMMIT_HOLD_STEP``
#: seconds, and proposed as soon as a recheck finds no new choice (the
#: answers stalled) or the first choice waited ``COMMIT_HOLD_MAX`` seconds:
#: a mass failover is one Raft entry, not one for the first answers and
#: another, waiting for it, for the rest.
COMMIT_HOLD_STEP = 0.05
COMMIT_HOLD_MAX = 1.0


class PartitionController:
    """The controller's work for partitions (see the module docstring).  It
    acts only while this node is the Raft leader; ``local_view`` is this
    node's view of a partition it leads (which replicas are in sync)."""

    def __init__(
        self,
        node_id: str,
        control: ControlView,
        service: ReplicationService,
        sync: ReplicaSync,
        rpc: PeerRPC,
        reactor: Clock,
        membership: Members | None,
        local_view: Callable[[str, int], dict[str, Any]],
        *,
        beat_timeout_ticks: int = 20,
        max_moves: int = 4,
        forecasts: Callable[[float], Mapping[tuple[str, int], float] | None] | None = None,
        profiles: Callable[[float], Mapping[tuple[str, int], Sequence[float]] | None] | None = None,
        batch_commits: Callable[[], bool] | None = None,
    ) -> None:
        self.node_id = node_id
        self.control = control
        self.service = service
        self.sync = sync
        self.rpc = rpc
        self.reactor = reactor
        self.membership = membership
        self.local_view = local_view
        self.beat_timeout_ticks = beat_timeout_ticks
        self.max_moves = max_moves
        self._moving: set[tuple[str, int]] = set()
        #: The leaders' last word on which replicas hold their whole log.
        self._sync_views: dict[tuple[str, int], tuple[float, set[str] | None]] = {}
        self._asking: set[tuple[str, int]] = set()
        #: When a partition last had a replica moved for load.
        self._replica_moved: dict[tuple[str, int], float] = {}
        self._dead_since: dict[str, float] = {}
        self._foreign: set[str] = set()
        #: Load-based leadership balancing (decides only while this node is the controller).
        self.balancer = Balancer(BalanceConfig())
        self.failovers = 0
        #: This node is stopping gracefully (set by the stop path while it is
        #: still the controller): it hands its own leaderships over first.
        self.stopping = False
        #: Nodes that should lead nothing (drained or stopping), and the drained ones.
        self._avoid: frozenset[str] = frozenset()
        self._drained: set[str] = set()
        #: Each partition's predicted load at ``now`` for predictive balancing
        #: (:meth:`sprawl.forecast.feed.TrafficFeed.partition_forecasts`; None:
        #: the balancer acts on the present only).
        self.forecasts = forecasts
        #: Each partition's predicted load over a longer horizon (earned trust:
        #: :meth:`sprawl.forecast.feed.TrafficFeed.partition_profiles`, which
        #: recomputes them at most once a minute, in slices over reactor turns);
        #: None: no profiles; :data:`~sprawl.cluster.balance.PROFILES_PENDING`:
        #: being computed, this decision acts on the present alone.
        self.profiles = profiles
        #: Decisions made on the present alone because the profiles were being
        #: computed (``profiles`` answered :data:`~sprawl.cluster.balance.PROFILES_PENDING`).
        self.profiles_pending = 0
        #: Partitions to look at in the next step (see the module docstring).
        self._dirty: set[tuple[str, int]] = set()
        #: Partitions whose last look was inconclusive only because their
        #: failover core was at work (fencing, committing, its new leader not
        #: yet confirmed): looked at again once the core is idle, not every
        #: step meanwhile (a dead node's thousands of new leaders are
        #: confirmed over seconds; issue 23).
        self._after_work: set[tuple[str, int]] = set()
        #: Partitions by replica node (goal nodes included), from the applied placement.
        self._by_node: dict[str, set[tuple[str, int]]] = {}
        #: What each partition was indexed under, and each topic's partition count.
        self._indexed: dict[tuple[str, int], tuple[str, ...]] = {}
        self._topic_parts: dict[str, int] = {}
        #: The previous step's view: whether this node led, member states, eligible nodes.
        self._was_leader = False
        self._states: dict[str, str] = {}
        self._eligible: list[str] = []
        self._live: list[str] = []
        #: Work counters of the steps (tests count them; see tests/unit/cluster/test_controller_cost.py).
        self.visits = 0
        #: Balancer views built (each over every partition) and views found
        #: unchanged and quiet, so not built again (see :meth:`_quiet_again`).
        self.balance_views = 0
        self.balance_views_skipped = 0
        #: Balance decisions put off while a mass failover was under way
        #: (:data:`BALANCE_WAITS_FOR_CORES`).
        self.balance_waited = 0
        self._balance_key: tuple[Any, ...] | None = None
        #: The applied index the reused decision's lead counts are of.
        self._leads_applied = -1
        #: An extra step due at once (see :meth:`poke`), and how many ran.
        self._poked: Delayed | None = None
        self.pokes = 0
        #: Whether every node can apply ``set_partitions`` (the cluster feature
        #: ``epoch-batch``; the data plane asks the feature gate; off without one):
        #: failover choices are then committed in batches (:meth:`commit`).
        self.batch_commits: Callable[[], bool] = batch_commits or (lambda: False)
        #: Failover choices waiting for the next batch proposal, and whether one is in flight.
        self._commits: list[tuple[tuple[str, int], Commit, defer.Deferred[dict[str, Any]]]] = []
        self._flush_call: Any = None
        self._committing = False
        #: When the oldest waiting choice was held first, and how many were waiting at the last recheck.
        self._held_since: float | None = None
        self._held_count = 0
        #: ``set_partitions`` proposals made (tests count them).
        self.batch_proposals = 0
        #: The new leaderships chosen per node in the failovers under way,
        #: shared by every core: a dead node's partitions are split evenly
        #: over the replicas as up to date as the best (issue 23); counted
        #: anew once no core's choice is still to come (see :meth:`_control_partitions`).
        self.spread = LeaderSpread()
        listeners = getattr(membership, "listeners", None)
        if isinstance(listeners, list):
            listeners.append(self._member_event)

    def _member_event(self, ev: Any) -> None:
        """Gossip's word about a node.  On every node, the replication service
        hears of nodes dead, gone or back (a leader sends a dead node nothing:
        issue 23).  As the controller, a node that left (a graceful stop) has
        its leaderships handed over at once rather than at the next tick."""
        member = getattr(ev, "member", None)
        if member is not None:
            self.service.member_event(str(ev.kind), str(member.node_id))
        if getattr(ev, "kind", None) == "left" and self.control.is_leader:
            self.poke()

    def poke(self) -> None:
        """Run a step as soon as the reactor is free (at most one pending):
        a hand-off waits for no tick (issue 24).  A step looks only at what
        changed, so an extra one costs what changed."""
        if self._poked is not None and self._poked.active():
            return

        def step() -> None:
            self._poked = None
            self.pokes += 1
            self.tick()

        self._poked = self.reactor.callLater(0, step)

    def topic_changed(self, name: str) -> None:
        """A change to topic ``name`` (or its placement) was applied here: its
        partitions are looked at in the next step (O(the topic's partitions))."""
        parts = self.control.metadata.placement.get(name)
        n = max(self._topic_parts.get(name, 0), len(parts) if parts is not None else 0)
        for p in range(n):
            self._reindex((name, p), parts[p] if parts is not None and p < len(parts) else None)
        if parts is None:
            self._topic_parts.pop(name, None)
        else:
            self._topic_parts[name] = len(parts)

    def _reindex(self, key: tuple[str, int], pl: dict[str, Any] | None) -> None:
        nodes = () if pl is None else tuple({*map(str, pl["replicas"]), *map(str, pl.get("goal") or ())})
        old = self._indexed.get(key, ())
        if old != nodes:
            for n in old:
                ks = self._by_node.get(n)
                if ks is not None:
                    ks.discard(key)
                    if not ks:
                        del self._by_node[n]
            for n in nodes:
                self._by_node.setdefault(n, set()).add(key)
            if nodes:
                self._indexed[key] = nodes
            else:
                self._indexed.pop(key, None)
        self._dirty.add(key)

    def tick(self) -> None:
        """As the controller, run its work for every partition; otherwise drop its cores."""
        if self.control.is_leader:
            self._control_partitions()
        else:
            self._was_leader = False
            self._after_work.clear()
            if self.service.controllers:
                self.service.controllers.clear()
                self._moving.clear()

    def _control_partitions(self) -> None:
        if self.spread.counts and not self.service.cores_fencing():
            self.spread.reset()  # every failover under way has chosen (one pass over the cores at work)
        meta = self.control.metadata
        states = self.member_states()
        now = self.reactor.seconds()
        if not self._was_leader:
            # Just became the controller: look at every partition once, and
            # give every node a whole beat timeout to be heard by this one.
            self._was_leader = True
            self.service.liveness.reset(now)
            for name in list(meta.placement):
                self.topic_changed(name)
        for n, st in states.items():
            if st in ("dead", "left"):
                self._dead_since.setdefault(n, now)
            else:
                self._dead_since.pop(n, None)
        # A member of another Raft cluster (a survivor of a lost majority that
        # has not rejoined yet) keeps its replicas, like a node that just died,
        # but gets no new ones.
        self._foreign = {n for n, st in states.items() if st == "foreign"}
        live = sorted(n for n in meta.nodes if states.get(n) in ("alive", "suspect") or n == self.node_id)
        # Drained nodes and nodes stopping gracefully lead nothing (issue 24).
        avoid = avoided(states, drained_nodes(meta))
        if self.stopping:
            avoid |= {self.node_id}
        drained = set(drained_nodes(meta))
        for n in (avoid ^ self._avoid) | (drained ^ self._drained):
            self._dirty.update(self._by_node.get(n, ()))  # their partitions are looked at again
        self._avoid, self._drained = avoid, drained
        eligible = self.eligible_nodes(live, now)
        if eligible != self._eligible:
            # Who may hold replicas changed: every partition may want others.
            self._dirty.update(self._indexed)
        # (``live`` alone changing -- a node dead within the grace period, or
        # back -- moves no settled partition: one whose step depends on it is
        # unsettled, and looked at every step anyway; see :meth:`_unsettled`.)
        self._eligible, self._live = eligible, live
        for n in {*states, *self._states}:
            was, now_st = self._states.get(n), states.get(n)
            if now_st == was:
                continue
            if was in GOSSIP_LIVENESS and now_st in GOSSIP_LIVENESS:
                # Suspect, dead or back within the grace period: only the
                # partitions it leads may act on it (a dead leader fails
                # over); the rest when the grace ends (the eligible nodes
                # change).  Issue 23: 10,000 partitions looked at twice
                # in the middle of a failover, on the controller's node.
                self._dirty.update(self._led_by(n))
            else:
                self._dirty.update(self._by_node.get(n, ()))
        self._states = states
        if self._after_work:
            # Those whose core went idle (the service ticks every core at work).
            done = self._after_work - self.service.cores_due()
            if done:
                self._after_work -= done
                self._dirty |= done
        moves = len(self._moving)
        todo, self._dirty = self._dirty, set()
        self._after_work -= todo
        with self.service.held():  # (a dead node's fences: one frame per node)
            for key in todo:
                self.visits += 1
                moves = self._control_one(key, meta, states, live, eligible, now, moves)
        self._balance(now, live)

    def _led_by(self, node: str) -> list[tuple[str, int]]:
        """The partitions held by ``node`` that it leads by their failover
        core, or that have no core (one pass over its partitions' cores)."""
        cores = self.service.controllers
        out = []
        for key in self._by_node.get(node, ()):
            c = cores.get(key)
            if c is None or c.leader == node:
                out.append(key)
        return out

    def _control_one(
        self,
        key: tuple[str, int],
        meta: Any,
        states: dict[str, str],
        live: list[str],
        eligible: list[str],
        now: float,
        moves: int,
    ) -> int:
        """Look at one partition: its failover core, a dead leader, its
        replica set.  Keeps it for the next step when the look was
        inconclusive; returns the step's moves so far."""
        name, p = key
        parts = meta.placement.get(name)
        topic = meta.topics.get(name)
        if parts is None or topic is None or p >= len(parts):
            self.service.controllers.pop(key, None)  # the topic (or partition) is gone
            return moves
        pl = parts[p]
        rf = int(topic["config"].get("replication_factor", 1))
        reps = [str(x) for x in pl["replicas"]]
        if self._foreign.intersection(reps):
            # A replica still in another Raft cluster (a survivor that
            # has not rejoined after a forced recovery) hears neither
            # our assignments nor our fencing: leave the partition
            # alone until it has rejoined (its state change looks again).
            self.service.controllers.pop(key, None)
            return moves
        c = self.service.controllers.get(key)
        if len(reps) > 1:
            if c is None:
                c = FailoverCore(
                    tuple(reps),
                    epoch=int(pl["epoch"]),
                    leader=str(pl["leader"]),
                    beat_timeout_ticks=self.beat_timeout_ticks,
                    # Every replica's node applies the committed entry (its
                    # replica sync tells the replica): no Assigns after it.
                    assign_on_commit=False,
                )
                c.spread = self.spread
                self.service.controllers[key] = c
            else:
                sync_core(c, pl)
            self.service.wake_control(key)
            c.avoid = self._avoid
            if c.leader is not None and c.leader in self._avoid and states.get(c.leader) != "dead":
                self._hand_off(key, c, reps, now)
            elif (
                c.leader is not None
                and (states.get(c.leader) == "dead" or self.service.liveness.is_silent(c.leader))
                and c.fencing is None
                and c.committing is None
            ):
                # Dead by gossip, or found silent already (its port refused, or its
                # beats stopped) before this leadership of it was applied here: the
                # one-time failover of its leaderships did not include this one
                # (a move committed just before the kill, applied just after).
                log.info(
                    "controller: leader {leader} of {topic}/{partition} is dead or silent; failing over",
                    leader=c.leader,
                    topic=name,
                    partition=p,
                )
                self.service.run_control(key, c.start_failover())
        elif c is not None:
            del self.service.controllers[key]
            c = None
        if key in self._moving:
            return moves  # its proposal's answer looks again
        if moves >= self.max_moves:
            self._dirty.add(key)  # the step's budget is spent: next step
            return moves
        if c is not None and not c.idle and c.leader not in self._avoid:
            # Its core is at work: no replica-set step until it is idle
            # (:meth:`wanted_replicas` would say so); looked at again then.
            self._after_work.add(key)
            return moves
        want = self.wanted_replicas(name, p, reps, rf, live, now, c, pl.get("goal"), eligible=eligible)
        if want is not None:
            moves += 1
            self._move(key, pl, want)
        elif self._unsettled(key, reps, rf, eligible, c, pl.get("goal")):
            self._dirty.add(key)
        return moves

    def _unsettled(
        self,
        key: tuple[str, int],
        reps: list[str],
        rf: int,
        eligible: list[str],
        c: FailoverCore | None,
        goal: list[str] | None,
    ) -> bool:
        """Whether a partition left alone now may want a step later without
        any change the controller hears of: its core is busy or unconfirmed,
        or its replica set is not yet the goal (new replicas catching up).
        A replica dying, or dead past the grace period, changes the member
        states or the eligible nodes: that looks again by itself."""
        if c is not None and (not c.idle or c.leader in self._avoid):
            return True  # busy, or a hand-off off a drained or stopping leader to come
        eligible = placeable(eligible, self._drained - set(reps))
        target = max(min(rf, len(eligible)), 1)
        if goal and all(n in eligible for n in goal):
            ideal = list(goal)[:target]
        else:
            ideal = rendezvous(key[0], key[1], eligible, target)
        return set(reps) != set(ideal)

    def _hand_off(self, key: tuple[str, int], c: FailoverCore, reps: list[str], now: float) -> None:
        """Move the leadership of a partition whose leader is drained or
        stopping to an in-sync replica (the leader pauses until the target
        holds its whole log, then both are fenced and the target chosen).
        Nothing while a move is under way, the leader is not confirmed yet or
        no replica is known to be in sync: a later step tries again (the
        partition stays among those looked at)."""
        if c.busy or not c.leader_confirmed or c.leader is None:
            return
        up = [n for n, st in self.member_states().items() if st in UP]
        if self.service.node_beats():
            # Only a node this controller heard beat lately: one restarted a
            # moment ago, whose first beat (naming its new boot) is still to
            # come, would have the leadership failed over again when it comes.
            beat = self.service.liveness.beat_within
            up = [n for n in up if beat(n, now, HANDOFF_BEAT_WITHIN)]
        up.append(self.node_id)
        dst = handoff_target(reps, c.leader, self._avoid, self.in_sync(key, c.leader, now), up)
        out = c.move_leader(dst) if dst is not None else None
        if out is not None:
            log.info(
                "controller: handing the leadership of {topic}/{partition} from {src} to {dst} "
                "(drained or stopping)",
                topic=key[0],
                partition=key[1],
                src=c.leader,
                dst=dst,
            )
            self.service.run_control(key, out)

    def _balance(self, now: float, live: list[str]) -> None:
        """Move partition leadership off overloaded nodes (see :mod:`sprawl.cluster.balance`)."""
        if self.membership is None or not self.balancer.due(now):
            return
        if self.service.cores_at_work() > BALANCE_WAITS_FOR_CORES or self._commits or self._committing:
            # (Cores whose choice waits for Raft count as idle -- no tick
            # moves them -- so a dead node's thousands of failovers in one
            # entry, applied here in slices for a second or more, are seen
            # by the batch waiting or in flight: the view built meanwhile
            # was 6 % of the controller's samples in a 10,000-topic
            # failover, fail38.)
            self.balance_waited += 1
            return
        live = [n for n in live if n not in self._avoid]  # drained and stopping nodes take no leadership
        ctl = self.service.controllers
        rates = rates_by_node(self.membership.member_views())
        forecasts = self.forecasts(now) if self.forecasts is not None else None
        if self._quiet_again(now, live, rates, forecasts):
            return

        def movable(k: tuple[str, int]) -> bool:
            c = ctl.get(k)
            return c is not None and not c.busy and c.leader_confirmed and k not in self._moving

        self.balance_views += 1
        profiles = self.profiles(now) if self.profiles is not None else None
        if profiles is PROFILES_PENDING:  # being computed: the present alone this time
            forecasts = profiles = None
            self.profiles_pending += 1
        parts = partitions_from(self.control.metadata.placement, rates, movable, forecasts, profiles)
        in_flight = sum(1 for c in ctl.values() if c.moving_to is not None)
        decision = self.balancer.decide(now, parts, live, in_flight)
        rm = replica_move(
            decision,
            parts,
            live,
            bytes_per_unit=self.balancer.config.bytes_per_unit,
            recently_moved=lambda k: now - self._replica_moved.get(k, float("-inf")) < REPLICA_MOVE_COOLDOWN,
        )
        if rm is not None:
            self._move_replica(rm, now)
        for mv in decision.moves:
            key = (mv.topic, mv.partition)
            c = ctl.get(key)
            if c is None or c.leader is None or mv.dst not in (self.in_sync(key, c.leader, now) or ()):
                continue  # a replica still catching up (one just restarted) takes no leadership
            out = c.move_leader(mv.dst)
            if out is not None:
                log.info(
                    "controller: moving the leadership of {topic}/{partition} from {src} to {dst} ({reason})",
                    topic=mv.topic,
                    partition=mv.partition,
                    src=mv.src,
                    dst=mv.dst,
                    reason=mv.reason,
                )
                self.service.run_control(key, out)

    def _quiet_again(
        self,
        now: float,
        live: list[str],
        rates: Mapping[str, Mapping[tuple[str, int], Any]],
        forecasts: Mapping[tuple[str, int], float] | None,
    ) -> bool:
        """Whether the balancer's decision would be the last one again, so its
        view of every partition need not be built (issue 23: an idle
        cluster's controller does nothing per partition every 10 s).

        A node is hot only at ``min_load`` or more, measured or predicted, so
        while the reported rates and the forecasts *all together* stay under
        it no decision can move anything or hold a move back.  So when the
        last decision was calm -- no move, nothing held, no plan under way,
        and every rate and forecast together with the most any node's load
        (projected, predicted: a recently moved partition's load counts
        there until its new leader reports it) came to under ``min_load`` --
        and its inputs did not change: the same applied metadata (hence the
        same placement: who leads what), the same live nodes, the same
        reported rates, and rates and forecasts still under the bound, the decision
        is the last one with its time moved on (its figures are the last
        view's: a forecast moving under the bound does not rebuild it);
        otherwise the view is built and the key of its inputs kept.  (An
        idle cluster's gossip lists rates of 0 or a last small one -- a
        control record's bytes/s -- and the forecaster predicts a little
        load for the partitions it once saw traffic on: before, either
        rebuilt the view of every partition at every decision.)"""
        last = self.balancer.last
        cfg = self.balancer.config
        bound = cfg.min_load
        unit = cfg.bytes_per_unit
        reported = sum(m + b / unit for r in rates.values() for m, b in r.values())
        predicted = sum(f if f > 0 else 0.0 for f in (forecasts or {}).values())
        calm_now = reported + predicted < bound
        applied = self.control.metadata.applied
        key = (
            # (the placement -- who leads what -- matters to a calm decision
            # only through the loads of partitions moved within the cooldown,
            # which count on their new leader until it reports them: without
            # such, a create, a delete or a leadership applied cannot make a
            # node hot while every rate and forecast together is under the
            # bound, and at 10,000 topics each rebuilt view cost 50-110 ms on
            # the controller's reactor, create39)
            applied if self.balancer.moved_loads else None,
            tuple(live),
            # (a rate of 0 weighs as much as none: a node lists the partitions
            # it led when it last sampled a change, at 0 once they went idle)
            tuple(sorted((n, tuple(sorted(k for k in r.items() if any(k[1])))) for n, r in rates.items())),
        )
        calm_last = (
            last is not None
            and not last.moves
            and not last.held
            and not self.balancer.plan
            and reported
            + predicted
            + max((max(v.load, v.projected, v.predicted or 0.0) for v in last.nodes.values()), default=0.0)
            < bound
        )
        if calm_now and calm_last and key == self._balance_key and last is not None:
            if applied != self._leads_applied:  # the decision's lead counts kept true
                self._leads_applied = applied
                last = dataclasses.replace(last, nodes=self._counted_leads(last.nodes))
            self.balancer.last = dataclasses.replace(last, at=now)
            self.balance_views_skipped += 1
            return True
        self._balance_key = key if calm_now else None
        self._leads_applied = applied  # (the view built next counts them)
        return False

    def _counted_leads(self, nodes: Mapping[str, NodeLoad]) -> dict[str, NodeLoad]:
        """``nodes`` with their partitions led counted again from the applied
        placement (one pass, no view built: a calm decision reused after
        metadata changed)."""
        counts: Counter[str] = Counter()
        for parts in self.control.metadata.placement.values():
            counts.update(str(pl["leader"]) for pl in parts if pl.get("leader"))
        return {n: dataclasses.replace(v, leads=counts.get(n, 0)) for n, v in nodes.items()}

    def wanted_replicas(
        self,
        name: str,
        p: int,
        reps: list[str],
        rf: int,
        live: list[str],
        now: float,
        c: FailoverCore | None,
        goal: list[str] | None = None,
        *,
        eligible: list[str] | None = None,
    ) -> list[str] | None:
        """The replica set this partition should move to next, or None to leave it.

        The goal is rendezvous hashing's top ``min(RF, eligible nodes)`` over
        the *eligible* nodes: registered nodes alive by gossip, or dead for
        less than the grace period (a node restarting keeps its partitions).
        One step at a time, never below the replicas that hold the data:

        * replicas dead past the grace period are dropped and the set is
          filled up again (from the goal's order, a node gossip suspects
          last);
        * a set smaller than the goal grows;
        * a load move (:func:`sprawl.cluster.balance.replica_move`) sets its own
          goal in the placement, used instead while all its nodes are eligible;
        * a set the goal differs from first gains the goal's missing node
          (one more replica than the goal; not while gossip suspects that
          node), and only once every replica of
          the goal holds every committed record does it lose one that is not
          in the goal -- after the leadership moved, if it was the leader.
        """
        if c is not None and (
            c.fencing is not None or c.committing is not None or not c.leader_confirmed or c.busy
        ):
            return None  # only a partition with a working leader changes its replicas
        grace = self.control.dead_grace
        gone = {r for r in reps if r in self._dead_since and now - self._dead_since[r] >= grace}
        keep = [r for r in reps if r not in gone]
        if not keep:
            return None
        if eligible is None:
            eligible = self.eligible_nodes(live, now)
        # A drained node keeps the replicas it holds but gets no new one.
        eligible = placeable(eligible, self._drained - set(keep))
        live = [n for n in live if n not in self._drained or n in keep]
        target = max(min(rf, len(eligible)), 1)
        if goal and all(n in eligible for n in goal):
            ideal = list(goal)[:target]  # a load move's target (while all of it is up)
        else:
            ideal = rendezvous(name, p, eligible, target)
        suspect = {n for n in live if self._states.get(n) == "suspect"}
        if gone or len(keep) < target:
            # Filling up: a node gossip suspects (maybe cut off, about to be
            # declared dead) only when no other will do -- a replica placed
            # there could not catch up, and would be replaced again once its
            # grace ran out.  The set then differs from the goal, and moves
            # to it (the steps below) once the suspect node is alive again.
            out = list(keep)
            order = [*ideal, *rendezvous(name, p, live, len(live))]
            for n in sorted(order, key=lambda n: n in suspect):
                if len(out) >= target:
                    break
                if n not in out and n in live:
                    out.append(n)
            return out if out != reps else None
        if set(keep) == set(ideal):
            return None
        if len(keep) <= target:
            # (a move towards the goal waits while its node is suspect)
            add = next((n for n in ideal if n not in keep and n in live and n not in suspect), None)
            return [*keep, add] if add is not None else None
        extra = [r for r in keep if r not in ideal]
        if not extra or c is None or c.leader is None:
            return None
        in_sync = self.in_sync((name, p), c.leader, now)
        if in_sync is None or not set(ideal) <= in_sync:
            return None  # the goal's new replicas are still catching up
        if c.leader in extra:
            to = next((n for n in ideal if n not in self._avoid), None)
            out_ = c.move_leader(to) if to is not None else None  # hand the leadership over first
            if out_ is not None:
                self.service.run_control((name, p), out_)
            return None
        return [r for r in keep if r != extra[0]]

    def eligible_nodes(self, live: list[str], now: float) -> list[str]:
        """The nodes that may hold replicas now (computed once per step):
        registered nodes alive by gossip, or dead for less than the grace
        period, or members of another Raft cluster (they keep theirs)."""
        grace = self.control.dead_grace
        registered = set(self.control.metadata.nodes) | {self.node_id}
        recently_dead = {n for n, since in self._dead_since.items() if now - since < grace} | self._foreign
        live_set = set(live)
        return sorted(n for n in registered if n in live_set or n in recently_dead)

    def in_sync(self, key: tuple[str, int], leader: str, now: float) -> set[str] | None:
        """The replicas holding every committed record, as the leader last said
        (asked over the peer channel at most once a second)."""
        if leader == self.node_id:
            return set(self.local_view(*key).get("in_sync") or ())
        at, seen = self._sync_views.get(key, (float("-inf"), None))
        if now - at >= 1.0 and key not in self._asking:
            self._asking.add(key)
            d = self.rpc.call(
                leader, "partition_status", {"topic": key[0], "partition": key[1]}, hops=1, timeout=2.0
            )

            def got(view: dict[str, Any]) -> None:
                self._sync_views[key] = (self.reactor.seconds(), set(view.get("in_sync") or ()))
                c = self.service.controllers.get(key)
                if c is not None and c.leader in self._avoid and self.control.is_leader:
                    # A hand-off was waiting for this answer: now, not at the next tick.
                    self._dirty.add(key)
                    self.poke()

            def done(_: object) -> None:
                self._asking.discard(key)

            d.addCallbacks(got, lambda f: None).addBoth(done)
        return seen if now - at < 5.0 else None

    def _move_replica(self, mv: Move, now: float) -> None:
        """Steer a partition of a persistently hot node to a cooler one: a new
        epoch whose goal swaps the hot replica for the cool node (first in the
        goal: it takes the leadership once it holds every committed record)."""
        key = (mv.topic, mv.partition)
        pl = self.sync.placement(*key)
        if pl is None or key in self._moving:
            return
        reps = [str(x) for x in pl["replicas"]]
        goal = [mv.dst, *(r for r in reps if r != mv.src)]
        self._replica_moved[key] = now
        self._moving.add(key)
        totals = self.balancer.moves_total
        totals[mv.reason] = totals.get(mv.reason, 0) + 1
        log.info(
            "controller: moving a replica of {topic}/{partition} from {src} to {dst} ({reason})",
            topic=mv.topic,
            partition=mv.partition,
            src=mv.src,
            dst=mv.dst,
            reason=mv.reason,
        )

        def done(_: object) -> None:
            self._moving.discard(key)
            self._dirty.add(key)

        self._propose_partition(key, int(pl["epoch"]) + 1, str(pl["leader"]), reps, goal).addBoth(done)

    def _move(self, key: tuple[str, int], pl: dict[str, Any], want: list[str]) -> None:
        leader = str(pl["leader"])
        if leader not in want:
            return
        epoch = int(pl["epoch"]) + 1
        self._moving.add(key)
        log.info(
            "controller: replicas of {topic}/{partition} become {replicas} (epoch {epoch})",
            topic=key[0],
            partition=key[1],
            replicas=",".join(want),
            epoch=epoch,
        )

        def done(_: object) -> None:
            self._moving.discard(key)
            self._dirty.add(key)

        self._propose_partition(key, epoch, leader, want).addBoth(done)

    def _propose_partition(
        self, key: tuple[str, int], epoch: int, leader: str, reps: list[str], goal: list[str] | None = None
    ) -> defer.Deferred[dict[str, Any]]:
        cmd: dict[str, Any] = {
            "op": "set_partition",
            "topic": key[0],
            "partition": key[1],
            "epoch": epoch,
            "leader": leader,
            "replicas": list(reps),
        }
        if goal is not None:
            cmd["goal"] = list(goal)
        try:
            d: defer.Deferred[dict[str, Any]] = self.control.propose(cmd)
        except SprawlError as e:
            return defer.fail(e)
        return d

    def commit(self, topic: str, partition: int, c: Commit) -> defer.Deferred[None]:
        """The failover core's choice, committed through Raft.  With the
        ``epoch-batch`` feature on (:attr:`batch_commits`), choices made
        together go in one ``set_partitions`` proposal (:meth:`_flush_commits`):
        a dead node's thousands of leaderships cost one Raft entry, not one
        each; while it is off, one ``set_partition`` per choice."""
        self.failovers += 1
        if self.batch_commits():
            d: defer.Deferred[dict[str, Any]] = defer.Deferred()
            self._commits.append(((topic, partition), c, d))
            if self._flush_call is None and not self._committing:
                self._flush_call = self.reactor.callLater(0, self._flush_commits)
            return d.addCallback(self._check_choice, topic, partition, c)
        log.info(
            "controller: {leader} leads {topic}/{partition} in epoch {epoch}",
            leader=c.leader,
            topic=topic,
            partition=partition,
            epoch=c.epoch,
        )
        return self._propose_partition((topic, partition), c.epoch, c.leader, list(c.replicas)).addCallback(
            self._check_choice, topic, partition, c
        )

    def _check_choice(self, result: dict[str, Any], topic: str, partition: int, c: Commit) -> None:
        """A choice's commit result as success, or its error raised -- except
        ``stale_epoch`` when the applied placement already is this very
        choice (epoch, leader and replicas): an earlier proposal of it timed
        out and landed later (a 10,000-partition entry applied for longer
        than the proposal timeout on a loaded machine, issue 23), so it is
        committed, not refused."""
        err = result.get("error")
        if err and err.get("code") == "stale_epoch":
            parts = self.control.metadata.placement.get(topic)
            pl = parts[partition] if parts is not None and 0 <= partition < len(parts) else None
            if (
                pl is not None
                and int(pl["epoch"]) == c.epoch
                and str(pl["leader"]) == c.leader
                and tuple(str(r) for r in pl["replicas"]) == tuple(c.replicas)
            ):
                return
        _check(result)

    def _flush_commits(self) -> None:
        """Propose the failover choices waiting (at most
        :data:`~sprawl.cluster.metadata.MAX_PARTITION_BATCH`) as one
        ``set_partitions`` command and answer each with its item's result.
        Choices made while it is in flight wait for it and go together in
        the next one (a group commit: a dead node's failovers, whose fence
        answers arrive spread over a few reads, cost one or a few entries)."""
        self._flush_call = None
        if self._hold_commits():
            self._flush_call = self.reactor.callLater(COMMIT_HOLD_STEP, self._flush_commits)
            return
        batch, self._commits = self._commits[:MAX_PARTITION_BATCH], self._commits[MAX_PARTITION_BATCH:]
        if not batch:
            return
        items = [
            {
                "topic": key[0],
                "partition": key[1],
                "epoch": c.epoch,
                "leader": c.leader,
                "replicas": list(c.replicas),
            }
            for key, c, _ in batch
        ]
        log.info(
            "controller: committing {n} partition leaders in one proposal (first {topic}/{partition}: "
            "{leader} in epoch {epoch})",
            n=len(batch),
            topic=batch[0][0][0],
            partition=batch[0][0][1],
            leader=batch[0][1].leader,
            epoch=batch[0][1].epoch,
        )
        self._committing = True
        self.batch_proposals += 1
        self.service.timeline.mark("proposed", self.reactor.seconds(), len(batch))
        try:
            d: defer.Deferred[dict[str, Any]] = self.control.propose({"op": "set_partitions", "items": items})
        except SprawlError as e:
            d = defer.fail(e)

        def answered(result: dict[str, Any]) -> None:
            self.service.timeline.mark("committed", self.reactor.seconds(), len(batch))
            results = result.get("results")
            if not isinstance(results, list) or len(results) != len(batch):
                results = [result] * len(batch)  # the whole command refused: each item hears why
            for (_, _, w), r in zip(batch, results, strict=True):
                w.callback(r)

        def failed(f: Failure) -> None:
            for _, _, w in batch:
                w.errback(f)

        def next_batch(_: object) -> None:
            self._committing = False
            if self._commits and self._flush_call is None:
                self._flush_call = self.reactor.callLater(0, self._flush_commits)

        d.addCallbacks(answered, failed).addBoth(next_batch)

    def _hold_commits(self) -> bool:
        """Whether the waiting choices wait for more (see :data:`COMMIT_HOLD_STEP`):
        cores are still fencing, new choices came since the last recheck, the
        first has waited less than :data:`COMMIT_HOLD_MAX`, and the batch is not full."""
        waiting = len(self._commits)
        now = self.reactor.seconds()
        if self._held_since is None:
            self._held_since, self._held_count = now, 0
        hold = (
            0 < waiting < MAX_PARTITION_BATCH
            and waiting > self._held_count
            and now - self._held_since < COMMIT_HOLD_MAX
            and self.service.cores_fencing() > 0
        )
        self._held_count = waiting
        if not hold:
            self._held_since = None
        return hold

    def member_states(self) -> dict[str, str]:
        """Gossip state by node id; ``foreign`` for a member of another Raft
        cluster (it gets no replicas until it has joined this one)."""
        if self.membership is None:
            return {}
        # The gossip node's light views (no member copies, no partition rates
        # decoded: asked every step, issue 23); a stand-in without them: the full ones.
        light = getattr(self.membership, "member_states", None)
        views = light() if light is not None else self.membership.member_views()
        return {str(v["id"]): "foreign" if self.control.is_foreign(v) else str(v["state"]) for v in views}


def _check(result: dict[str, Any]) -> None:
    """A ``set_partition`` result (or a batch item's) as success, or its error raised."""
    err = result.get("error")
    if err:
        raise SprawlError(err["message"], code=err["code"], status=err["status"])
