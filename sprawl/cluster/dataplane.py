"""The cluster data plane on one node: which partitions this node holds, who
leads each, and where a publish or a read must go.  An adapter, built of
three parts, each in its own module:

* **Replicas from the placement** (:mod:`sprawl.cluster.replica_sync`): every
  node applies the same Raft log and makes its local replicas match the
  applied placement; a partition whose only replica is this node is served by
  the broker directly, as on a single node.
* **The controller** (:mod:`sprawl.cluster.controller`): the Raft leader runs
  a failover core per replicated partition, keeps replica sets at the topic's
  replication factor, replaces replicas dead past the grace period and
  balances load, a few partitions at a time.
* **Routing** (:mod:`sprawl.cluster.routing`): publishes and reads go to the
  partition's leader (or any replica, for reads) over the peer channel,
  retried through failovers; the ``publish`` and ``fetch`` RPCs answer other
  nodes' forwarded ones.

:class:`DataPlane` composes them with the consumer-group routes
(:mod:`sprawl.cluster.group_routes`), the repairs of damaged ranges
(:mod:`sprawl.cluster.repair`) and the remote feeds
(:mod:`sprawl.delivery.remote_feed`), ticks them, and answers what the HTTP
API and the metrics ask of the cluster (:meth:`DataPlane.partition_view`,
:meth:`DataPlane.summary`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from sprawl.cluster.controller import PartitionController
from sprawl.cluster.drain import drained_nodes
from sprawl.cluster.group_routes import GroupRoutes
from sprawl.cluster.led_tally import LedTally
from sprawl.cluster.repair import Repairs
from sprawl.cluster.replica_sync import ReplicaSync
from sprawl.cluster.routing import NotLeaderError, Router
from sprawl.delivery.remote_feed import RemoteFeeds
from sprawl.errors import BadRequest
from sprawl.interfaces import Clock
from sprawl.log.record import Record
from sprawl.pubsub import PublishResult
from sprawl.replication.failover import Commit
from sprawl.replication.messages import Message
from sprawl.replication.replica import Replica
from sprawl.replication.service import ReplicationService
from sprawl.ticks import start_in_phase

#: The most led partitions judged again a reactor turn by :meth:`DataPlane.summary_ready`
#: and the metrics scrape's steps (tidy41: ~100 ms at 10,000 in one turn otherwise).
LED_SLICE = 2000
#: The most reactor turns :meth:`DataPlane.summary_ready` takes (40,000 partitions).
SUMMARY_STEPS = 20

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from sprawl.interfaces import ControlView, Members
    from sprawl.peer.rpc import PeerRPC
    from sprawl.peer.tcp import PeerChannel
    from sprawl.pubsub import Broker
    from sprawl.topics import Topic

log = Logger()

#: Seconds between a drained Raft leader's tries to hand its leadership over.
RAFT_HAND_OFF_RETRY = 5.0

#: Seconds between the log's descriptions of replicas still catching up after a start.
CATCHING_UP_LOG_SECONDS = 10.0

__all__ = ["DataPlane", "NotLeaderError"]


class DataPlane:
    """One node's view of the partitions (see the module docstring)."""

    def __init__(
        self,
        node_id: str,
        broker: Broker,
        control: ControlView,
        channel: PeerChannel,
        rpc: PeerRPC,
        reactor: Clock,
        membership: Members | None = None,
        *,
        tick_seconds: float = 0.1,
        beat_timeout_ticks: int = 20,
        route_timeout: float = 10.0,
        forward_timeout: float = 5.0,
        max_moves: int = 4,
        rng: random.Random | None = None,
        forecasts: Callable[[float], Mapping[tuple[str, int], float] | None] | None = None,
        feature_on: Callable[[str], bool] | None = None,
    ) -> None:
        self.node_id = node_id
        self.broker = broker
        self.control = control
        self.channel = channel
        self.rpc = rpc
        self.reactor = reactor
        self.membership = membership
        self.tick_seconds = tick_seconds
        self.rng = rng or random.Random()
        #: Whether a cluster feature is on (the cluster feature gate, asked at each
        #: use: the composition root builds it after the plane); None: none is.
        on = feature_on or (lambda name: False)
        # The service asks the parts built after it (which hold it): through
        # these two methods of the plane, which forward to them.
        self.service = ReplicationService(
            node_id,
            channel,
            reactor,
            tick_seconds=tick_seconds,
            commit=self._commit,
            accept=self._accepts,
            beat_timeout=beat_timeout_ticks * tick_seconds,
            # Idle leaders go quiet (one NodeBeat per node) only once every node can hear it;
            # until then, the release before issue 23's ticks.
            node_beats=lambda: on("node-beat"),
            # A burst's messages to a node as one frame once every node takes it.
            batch_frames=lambda: on("repl-batch"),
            # A node whose store failed beats no more: its leaderships fail over.
            storage_failed=lambda: getattr(getattr(broker, "store", None), "failed", None) is not None,
        )
        metrics = getattr(broker, "metrics", None)  # (test fakes of the broker have none)
        if metrics is not None:
            self.service.on_hop = metrics.hop  # the replication hops' histogram (issue 16)
        self.sync = ReplicaSync(node_id, broker, control, self.service, self._follow)
        control.watch_topics(self.sync_topic)  # replicas follow every placement applied from now on
        self.controller = PartitionController(
            node_id,
            control,
            self.service,
            self.sync,
            rpc,
            reactor,
            membership,
            self.partition_view,
            beat_timeout_ticks=beat_timeout_ticks,
            max_moves=max_moves,
            forecasts=forecasts,
            # A dead node's failovers in one Raft entry once every node can apply it.
            batch_commits=lambda: on("epoch-batch"),
        )
        control.watch_topics(self.controller.topic_changed)  # the controller looks at what changed
        # Idle leaders do not beat per partition: nodes beat the controller instead.
        self.service.controller_of = lambda: control.leader_name or None
        self.router = Router(
            node_id,
            broker,
            self.sync,
            rpc,
            reactor,
            route_timeout=route_timeout,
            forward_timeout=forward_timeout,
        )
        #: Load-based leadership balancing (the controller's).
        self.balancer = self.controller.balancer
        self._loop: task.LoopingCall | None = None
        #: Set once every replica followed here had caught up (see :meth:`readiness`).
        self._caught_up_once = False
        #: When the replicas still catching up are next described in the log
        #: (:meth:`_describe_catching_up`; first ``CATCHING_UP_LOG_SECONDS`` after the start).
        self._describe_behind_at: float | None = None
        #: When a drained Raft leader may try to hand its leadership over again.
        self._raft_hand_off_after = float("-inf")
        #: SSE / WebSocket reads of partitions held elsewhere: one long-poll
        #: per partition for all of this node's clients (decision 9a).
        self.feeds = RemoteFeeds(self.router.fetch_remote, self.router.read_source, reactor, broker.notify)
        rpc.register("partition_status", self._rpc_status)
        rpc.allow = self._member
        #: Consumer groups, each partition's state owned by its leader.
        self.groups = GroupRoutes(self)
        #: Damaged ranges rewritten from healthy replicas (sprawl/cluster/repair.py).
        self.repairs = Repairs(self)
        #: The partitions led here and under-replicated, judged again only
        #: where something changed (:meth:`summary`; issue 23).
        self.tally = LedTally()
        control.watch_topics(self.tally.mark_topic)
        self._tally_basis: tuple[Any, dict[str, str], frozenset[str]] | None = None
        self._tally_damaged: set[tuple[str, int]] = set()
        #: Who waits for :meth:`summary_ready` (one slice a reactor turn for all).
        self._summary_waiters: list[defer.Deferred[None]] = []

    @property
    def forward_timeout(self) -> float:
        """Seconds a forwarded call waits for its answer."""
        return self.router.forward_timeout

    # -- life ------------------------------------------------------------------------

    def start(self) -> None:
        """Build replicas from the applied metadata and start ticking."""
        for node, state in self.controller.member_states().items():
            self.service.member_event(state, node)  # those gossip holds dead already
        for name in list(self.control.metadata.placement):
            self.sync_topic(name)
        loop = task.LoopingCall(self.tick)
        loop.clock = cast("IReactorTime", self.reactor)
        self._loop = loop
        start_in_phase(loop, self.tick_seconds).addErrback(
            lambda f: log.failure("data plane tick stopped", f)
        )

    async def drain(self, timeout: float) -> bool:
        """Before a graceful stop (this node already gossiped its leave): wait,
        bounded by ``timeout`` seconds, until the controller moved the
        leadership of every replicated partition this node leads elsewhere.
        True when none is led here any more."""
        deadline = self.reactor.seconds() + timeout
        for _ in range(int(timeout / 0.02) + 2):
            if self.handed_off():
                return True
            if self.reactor.seconds() >= deadline or not self._can_hand_off():
                break
            await task.deferLater(cast("IReactorTime", self.reactor), 0.02, lambda: None)
        return self.handed_off()

    def _can_hand_off(self) -> bool:
        """Whether some partition led here has a follower that is up and holds
        every committed record (a hand-off can happen).  The last node of a
        cluster stopping has none: it does not wait for nothing."""
        states = self.controller.member_states()
        for r in self.service.replicas.values():
            core = r.core
            if not core.is_leader:
                continue
            for f, st in core.followers.items():
                if st.match >= core.hw and (not states or states.get(f) in ("alive", "suspect")):
                    return True
        # Nothing led here (only the placement is still to be applied) counts as possible.
        return not any(r.core.is_leader for r in self.service.replicas.values())

    def handed_off(self) -> bool:
        """No replicated partition is led here any more, and the applied
        placement of each names its new leader (so the entry nodes, which
        apply the same Raft log, route there rather than here)."""
        for (name, p), r in self.service.replicas.items():
            if r.core.is_leader:
                return False
            pl = self.sync.placement(name, p)
            if pl is not None and len(pl["replicas"]) > 1 and str(pl["leader"]) == self.node_id:
                return False
        return True

    def catching_up(self) -> list[str]:
        """The partitions (``topic/p``) this node follows and has not caught
        up with since it started: its copy has not yet reached what the
        leader had committed.  Only partitions whose leader is up count (one
        whose leader is gone waits for a failover, not for this node)."""
        states = self.controller.member_states()
        out = []
        for (name, p), r in self.service.replicas.items():
            core = r.core
            if core.is_leader or core.caught_up:
                continue
            pl = self.sync.placement(name, p)
            leader = str(pl["leader"]) if pl is not None else ""
            if (
                leader
                and leader != self.node_id
                and (not states or states.get(leader) in ("alive", "suspect"))
            ):
                out.append(f"{name}/{p}")
        return sorted(out)

    def readiness(self) -> str | None:
        """A readiness check (``/readyz``): why this node is not ready yet
        because it is still catching up after its start, or None.  Once it
        has caught up it never answers again: a follower that falls behind
        under load later does not make the node unready."""
        if self._caught_up_once:
            return None
        behind = self.catching_up()
        if not behind:
            self._caught_up_once = True
            return None
        more = f" and {len(behind) - 3} more" if len(behind) > 3 else ""
        return f"catching up: {len(behind)} partition replica(s) behind their leaders ({', '.join(behind[:3])}{more})"

    def _describe_catching_up(self) -> None:
        """While this node is not ready because replicas are catching up, say
        in the log every ``CATCHING_UP_LOG_SECONDS`` where the first few stand
        (their epoch, leader, log end and high watermark, whether they are
        ticked): an operator -- or a test that waited in vain -- sees why."""
        now = self.reactor.seconds()
        if self._describe_behind_at is None:
            self._describe_behind_at = now + CATCHING_UP_LOG_SECONDS
            return
        if now < self._describe_behind_at:
            return
        self._describe_behind_at = now + CATCHING_UP_LOG_SECONDS
        behind = self.catching_up()
        if not behind:
            # Caught up, as :meth:`readiness` would find: no more walks over
            # every replica every few seconds (issue 23, idle39: ~2 ms of CPU
            # a second at 10,000 on a node whose ``/readyz`` nobody asks).
            self._caught_up_once = True
            return
        for name in behind[:3]:
            topic, _, p = name.rpartition("/")
            key = (topic, int(p))
            core = self.service.replicas[key].core
            log.info(
                "replication: {partition} still catching up: epoch {epoch} (fenced {fenced}, led {led}),"
                " leader {leader} (placed {placed}), end {end}, high watermark {hw}, ticked {ticked},"
                " unheard for {unheard} of {ask} ticks",
                partition=name,
                epoch=core.epoch,
                fenced=core.fenced_epoch,
                led=core.led_epoch,
                leader=core.leader,
                placed=core.placed_leader,
                end=core.end,
                hw=core.hw,
                ticked=self.service.is_ticked(key),
                unheard=core.unheard_ticks,
                ask=core.ask_ticks,
            )

    def stop(self) -> None:
        """Stop ticking."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.feeds.stop()

    def tick(self) -> None:
        """Rebuild failed replicas, point them at the current controller, run
        the controller's work, tick replication, groups and repairs."""
        self.sync.rebuild_failed()
        self.sync.follow_controller()
        self.controller.tick()
        self.service.tick()
        self.groups.tick(self.reactor.seconds())
        self.repairs.tick()
        self._hand_off_raft_if_drained()
        if not self._caught_up_once:
            self._describe_catching_up()
        if len(self.service.changed) > len(self.service.replicas) + 4096:
            # Nobody asked for the summary for long (deleted topics' keys pile
            # up): judge everything on the next one instead.
            self.service.changed.clear()
            self.tally.mark_all()

    def _hand_off_raft_if_drained(self) -> None:
        """A drained node that leads Raft -- or one whose store failed (a
        full disk: it could not write the next Raft entry either, and would
        lead until it had to) -- hands the leadership (and with it the
        controller) to a caught-up voter, at most one try every
        :data:`RAFT_HAND_OFF_RETRY` seconds."""
        hand_off = getattr(self.control, "hand_off", None)
        now = self.reactor.seconds()
        if hand_off is None or not self.control.is_leader or now < self._raft_hand_off_after:
            return
        failed = self.service.storage_failed()
        if not failed and self.node_id not in drained_nodes(self.control.metadata):
            return
        self._raft_hand_off_after = now + RAFT_HAND_OFF_RETRY
        if failed:
            log.warn("raft: this node's storage failed; handing the Raft leadership over")
        else:
            log.info("raft: this node is drained; handing the Raft leadership over")
        defer.ensureDeferred(hand_off()).addErrback(lambda f: log.failure("Raft hand-off failed", f))

    # -- the parts' seams --------------------------------------------------------------

    def _commit(self, topic: str, partition: int, c: Commit) -> defer.Deferred[None]:
        return self.controller.commit(topic, partition, c)

    def _accepts(self, peer: str, key: tuple[str, int], m: Message) -> bool:
        return self.sync.accepts(peer, key, m)

    def _follow(self, topic: Topic, partition: int, records: list[Record]) -> None:
        self.groups.follow(topic, partition, records)

    def _member(self, peer: str) -> bool:
        """Peer RPCs are taken from nodes the cluster metadata registered, or
        that gossip holds alive (a node that just joined forwards too)."""
        if peer in self.control.metadata.nodes:
            return True
        if self.membership is None:
            return True  # no gossip to ask (in-process tests)
        return peer in self.membership.live_member_ids()

    # -- what the rest of the node asks ----------------------------------------------------

    def placement(self, topic: str, partition: int) -> dict[str, Any] | None:
        """The applied placement of one partition, or None."""
        return self.sync.placement(topic, partition)

    def leads(self, topic: str, partition: int) -> bool:
        """Whether this node leads the partition now (or holds it alone)."""
        return self.sync.leads(topic, partition)

    def is_local(self, topic: str, partition: int) -> bool:
        """Whether the broker serves this partition alone here (this node is its only replica)."""
        return self.sync.is_local(topic, partition)

    def holds(self, topic: str, partition: int) -> bool:
        """Whether this node has the partition's committed records (local or a replica)."""
        return self.sync.holds(topic, partition)

    def sync_topic(self, name: str) -> None:
        """Make this node's replicas of ``name`` match the applied placement."""
        self.sync.sync_topic(name)
        self.router.placement_changed(name)

    def publish(
        self, topic: Topic, records: list[Record], acks: str, partition: int | None = None
    ) -> defer.Deferred[PublishResult]:
        """Publish ``records`` to ``topic`` through each partition's leader (all of
        them to ``partition`` when given)."""
        return self.router.publish(topic, records, acks, partition)

    def read_source(self, topic: str, partition: int) -> str | None:
        """Where to read a partition this node does not hold: its leader (None: read here)."""
        return self.router.read_source(topic, partition)

    def fetch_remote(
        self,
        topic: str,
        partition: int,
        start: str | int | None,
        from_time: int | None,
        limit: int,
        wait_ms: int,
        max_bytes: int | None = None,
    ) -> defer.Deferred[dict[str, Any]]:
        """Read a partition at the node that holds it (see :meth:`Router.fetch_remote`)."""
        return self.router.fetch_remote(topic, partition, start, from_time, limit, wait_ms, max_bytes)

    def changed(self, name: str, p: int, seconds: float) -> defer.Deferred[None]:
        """Fires when the partition's high watermark moves, or after ``seconds``."""
        return self.router.changed(name, p, seconds)

    # -- views -------------------------------------------------------------------------

    def _rpc_status(self, caller: str, body: Any, hops: int) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequest("malformed partition status request", code="bad_request")
        return self.partition_view(str(body["topic"]), int(body["partition"]))

    def partition_view(self, topic: str, partition: int) -> dict[str, Any]:
        """This node's replica of one partition, for ``GET /v1/topics/{topic}``."""
        r = self.service.replicas.get((topic, partition))
        t = self.broker.topics.get(topic)
        groups = {}
        if t is not None:
            for name, g in t.groups.items():
                c = g.checkpoint(partition)
                if c is not None:
                    groups[name] = c
        if r is None:
            return {
                "role": "leader" if self.is_local(topic, partition) else "none",
                "groups_committed": groups,
            }
        core = r.core
        out: dict[str, Any] = {"role": core.role, "replica_epoch": core.epoch, "groups_committed": groups}
        if core.is_leader:
            # A replica whose copy of a range is damaged is not in sync until repaired.
            damaged = self.repairs.damaged_replicas(topic, partition)
            out["followers"] = {f: st.match for f, st in core.followers.items()}
            out["in_sync"] = sorted(
                [
                    *([self.node_id] if self.node_id not in damaged else []),
                    *(f for f, st in core.followers.items() if st.match >= core.hw and f not in damaged),
                ]
            )
            full, want = self._full_strength(topic, core, self.controller.member_states(), partition)
            out["full_strength"] = full
            out["replicas_wanted"] = want
            out["damaged_replicas"] = sorted(damaged)
        return out

    def wanted_replicas(self, topic: str, states: dict[str, str]) -> int:
        """Replicas a partition of ``topic`` should have: its replication
        factor, capped by the cluster's size -- every registered node,
        dead ones included (a node down does not make the topic need fewer
        copies), but not members of another cluster."""
        return self._wanted(topic, self._cluster_size(states))

    def _cluster_size(self, states: dict[str, str]) -> int:
        """Registered nodes not of another cluster, this one included."""
        return len({n for n in self.control.metadata.nodes if states.get(n) != "foreign"} | {self.node_id})

    def _wanted(self, topic: str, size: int) -> int:
        """:meth:`wanted_replicas` for a cluster of ``size`` nodes (computed once per summary)."""
        rf = int(self.control.metadata.topics.get(topic, {}).get("config", {}).get("replication_factor", 1))
        return max(1, min(rf, size))

    def _full_strength(
        self,
        topic: str,
        core: Replica,
        states: dict[str, str],
        partition: int | None = None,
        size: int | None = None,
    ) -> tuple[bool, int]:
        """Whether a partition this node leads is at full strength -- as many
        replicas as :meth:`wanted_replicas`, each up (by gossip), holding every
        committed record and not reporting a damaged range -- and how many it
        wants (``size``: the cluster's, when the caller computed it)."""
        want = self._wanted(topic, self._cluster_size(states) if size is None else size)
        known = self.membership is not None
        damaged = self.repairs.damaged_replicas(topic, partition) if partition is not None else set()
        good = (self.node_id not in damaged) + sum(
            1
            for f, st in core.followers.items()
            if st.match >= core.hw
            and (not known or states.get(f) in ("alive", "suspect"))
            and f not in damaged
        )
        return good >= want, want

    def summary(self) -> dict[str, Any]:
        """Counts for ``GET /v1/cluster``: partitions this node leads, and how
        many of them are under-replicated -- not at full strength: fewer
        replicas up and holding every committed record than the topic's
        replication factor (capped by the number of registered nodes).  The
        two counts are kept by :class:`~sprawl.cluster.led_tally.LedTally`:
        only the partitions whose replica produced an output, the topics
        applied, the partitions with damage reported, or everything after a
        member's state or the registered nodes changed, are judged again."""
        leading, under = self.led_counts()
        return {
            "balance": self.balancer.last.as_dict()
            if self.control.is_leader and self.balancer.last
            else None,
            "leading": leading,
            "under_replicated": under,
            "replicas": len(self.service.replicas),
            "controller_partitions": len(self.service.controllers),
            "forwarded": self.router.forwarded,
            "retried": self.router.retried,
            "failovers": self.controller.failovers,
            "rebuilt": self.sync.rebuilt,
            **self.feeds.view(),
            **self.repairs.view(),
        }

    def summary_ready(self) -> defer.Deferred[None]:
        """Fires once :meth:`summary` finds nothing left to judge: after a start or a
        snapshot every led partition is judged again (~100 ms of one reactor turn at
        10,000 on a loaded host), so ``GET /v1/cluster`` judges :data:`LED_SLICE` a
        turn first, as the metrics scrape does, instead of all in its own turn.
        Every request waiting shares the same slices."""
        if not self._summary_waiters and self.refresh_led_slice():
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._summary_waiters.append(d)
        if len(self._summary_waiters) == 1:
            self.reactor.callLater(0, self._summary_step, SUMMARY_STEPS)
        return d

    def refresh_led_slice(self) -> bool:
        """:meth:`refresh_led` of at most :data:`LED_SLICE` partitions (one reactor
        turn's share); True once nothing is left to judge."""
        return self.refresh_led(LED_SLICE)

    def _summary_step(self, left: int) -> None:
        try:
            done = self.refresh_led_slice()
        except Exception:
            waiters, self._summary_waiters = self._summary_waiters, []
            failure = Failure()
            for d in waiters:
                d.errback(failure)
            return
        if not done and left > 1:
            # (bounded: under changes faster than a slice a turn the waiters are
            # answered after ``SUMMARY_STEPS`` turns, and ``summary`` judges the rest)
            self.reactor.callLater(0, self._summary_step, left - 1)
            return
        waiters, self._summary_waiters = self._summary_waiters, []
        for d in waiters:
            d.callback(None)

    def led_counts(self) -> tuple[int, int]:
        """(partitions led here or held alone, of them under-replicated), as
        :meth:`led_counts_walked` counts them, judging again only what changed."""
        self.refresh_led()
        return self.tally.leading, self.tally.under_replicated

    def refresh_led(self, limit: int | None = None) -> bool:
        """Judge again what changed for :meth:`led_counts` -- at most ``limit``
        partitions (the rest on the next call: a start or a snapshot judges
        every partition, ~100 ms of one reactor turn at 10,000 on a loaded
        host, tidy41); True once nothing is left to judge."""
        meta = self.control.metadata
        states = self.controller.member_states()
        basis = (meta, states, frozenset(meta.nodes))
        old = self._tally_basis
        if old is None or old[0] is not meta or old[2] != basis[2]:
            self.tally.mark_all()
        elif old[1] != states:
            # A member's state changed (a node went down mid-failover: alive,
            # suspect, dead): only the verdicts of partitions led here depend
            # on it -- whether their followers are up -- not all 20,000 keys
            # of a 10,000-topic node (issue 23, apply36); a partition not led
            # here is judged again on its own change.
            self.tally.mark(self.tally.led_keys())
        self._tally_basis = basis
        changed = self.service.changed
        self.tally.mark(changed)
        changed.clear()
        # Damage reports lapse with time: those reported now, and those gone since.
        damaged = set(self.repairs.damaged_keys())
        self.tally.mark(damaged | self._tally_damaged)
        self._tally_damaged = damaged

        def every() -> set[tuple[str, int]]:
            keys = set(self.service.replicas)
            keys.update((name, p) for name, parts in meta.placement.items() for p in range(len(parts)))
            return keys

        size = self._cluster_size(states)
        return self.tally.refresh(
            lambda key: self._led_verdict(key, states, size),
            every,
            lambda name: len(meta.placement.get(name) or ()),
            limit,
        )

    def _led_verdict(
        self, key: tuple[str, int], states: dict[str, str], size: int | None = None
    ) -> bool | None:
        """None when this node does not lead ``key`` (nor holds it alone),
        else whether it is under-replicated."""
        name, p = key
        if size is None:
            size = self._cluster_size(states)
        r = self.service.replicas.get(key)
        if r is not None and r.core.is_leader:
            return not self._full_strength(name, r.core, states, p, size)[0]
        parts = self.control.metadata.placement.get(name)
        if parts is not None and p < len(parts) and list(parts[p]["replicas"]) == [self.node_id]:
            return self._wanted(name, size) > 1
        return None

    def led_counts_walked(self) -> tuple[int, int]:
        """What :meth:`led_counts` keeps, counted by walking every replica and
        placement (the tests' reference)."""
        states = self.controller.member_states()
        keys = set(self.service.replicas)
        keys.update((n, p) for n, parts in self.control.metadata.placement.items() for p in range(len(parts)))
        verdicts = [v for k in keys if (v := self._led_verdict(k, states)) is not None]
        return len(verdicts), sum(verdicts)
