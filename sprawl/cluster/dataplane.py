"""The cluster data plane on one node: which partitions this node holds, who
leads each, and where a publish or a read must go.  An adapter.

* **Replicas from the placement.**  Every node applies the same Raft log; after
  each ``put_topic`` / ``set_partition`` / ``delete_topic`` (and a snapshot)
  :meth:`DataPlane.sync_topic` makes the local replicas match the applied
  placement: a partition with more than one replica that lists this node gets a
  :class:`~sprawl.replication.service.PartitionReplication`, which hears the
  committed ``Assign(epoch, leader, replicas)``.  A partition whose only replica
  is this node is served by the broker directly, as on a single node.
* **The controller.**  The Raft leader runs a
  :class:`~sprawl.replication.failover.FailoverCore` per replicated partition:
  a leader silent for :attr:`beat_timeout_ticks` (or dead by gossip) is
  replaced by fencing a majority and committing the best replica's new epoch
  through Raft (``set_partition``).  It also keeps replica sets at the topic's
  replication factor as nodes join, and replaces replicas dead longer than the
  grace period, a few partitions at a time.
* **Routing.**  A publish for a partition this node does not lead is forwarded
  to its leader over the peer channel (:mod:`sprawl.peer.rpc`, hop limited).
  A refusal (``not_leader``, ``no_leader``, a topic not applied there yet) or
  a leader that cannot be reached or does not answer is retried against the
  freshly applied placement until :attr:`route_timeout` -- so clients ride
  through a failover without seeing it -- then answered 503 ``no_leader``.
  A holder that has not applied a topic this node knows is asked again (a
  publish and a forwarded read alike): read-your-writes for metadata.
  Retrying is safe even when the first attempt was written: this node named
  every message first, and the leader (old or new) answers a repeated id
  with its first copy's offset.  Reads are served
  locally by any replica (below its high watermark: only committed records)
  and forwarded otherwise.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from sprawl.cluster.balance import BalanceConfig, Balancer, Move, partitions_from, replica_move
from sprawl.cluster.placement import raft_id_of
from sprawl.cluster.placement import replicas as rendezvous
from sprawl.delivery.remote_feed import RemoteFeeds
from sprawl.errors import BadRequest, NotFound, SprawlError, Unavailable
from sprawl.gossip.load import rates_by_node
from sprawl.log.record import Record, pack_record, unpack_record
from sprawl.peer.frames import BATCH_BYTES
from sprawl.peer.rpc import PeerRPC
from sprawl.pubsub import PublishResult
from sprawl.replication.failover import Commit, FailoverCore
from sprawl.replication.messages import Assign, Fence, Handoff
from sprawl.replication.replica import NotLeader
from sprawl.replication.service import PartitionReplication, ReplicationService
from sprawl.storage import keys

log = Logger()

#: Refusals of a leader that has not applied yet what this node applied (a topic
#: created, or given more partitions, a moment ago).  A node that knows the
#: partition waits for the leader to catch up: read-your-writes for metadata
#: from any entry node.
_NOT_APPLIED_THERE = {"topic_not_found", "partition_not_found"}
#: Errors after which a publish is retried (the message ids make a repeat harmless).
_RETRYABLE = {"not_leader", "no_leader", "peer_unreachable", "peer_timeout", "stopping", *_NOT_APPLIED_THERE}


#: Seconds before a partition may have a replica moved for load again.
REPLICA_MOVE_COOLDOWN = 600.0

#: What a publish answer's ``stored`` can say, the weakest promise first.
_WEAKEST_FIRST = ("pending", "memory", "lmdb", "quorum")


class NotLeaderError(Unavailable):
    """This node does not lead the partition (``hint``: who does, if known)."""

    code = "not_leader"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class DataPlane:
    """One node's view of the partitions (see the module docstring)."""

    def __init__(
        self,
        node_id: str,
        broker: Any,
        control: Any,
        channel: Any,
        rpc: PeerRPC,
        reactor: Any,
        membership: Any = None,
        *,
        tick_seconds: float = 0.1,
        beat_timeout_ticks: int = 20,
        route_timeout: float = 10.0,
        forward_timeout: float = 5.0,
        max_moves: int = 4,
        rng: random.Random | None = None,
    ) -> None:
        self.node_id = node_id
        self.broker = broker
        self.control = control
        self.channel = channel
        self.rpc = rpc
        self.reactor = reactor
        self.membership = membership
        self.tick_seconds = tick_seconds
        self.beat_timeout_ticks = beat_timeout_ticks
        self.route_timeout = route_timeout
        self.forward_timeout = forward_timeout
        self.max_moves = max_moves
        self.rng = rng or random.Random()
        self.service = ReplicationService(node_id, channel, reactor, tick_seconds=tick_seconds)
        self.service.commit = self._commit
        self.service.accept = self._accepts
        #: The epoch each local replica was last assigned (from the metadata).
        self._assigned: dict[tuple[str, int], int] = {}
        self._moving: set[tuple[str, int]] = set()
        #: The leaders' last word on which replicas hold their whole log.
        self._sync_views: dict[tuple[str, int], tuple[float, set[str] | None]] = {}
        self._asking: set[tuple[str, int]] = set()
        #: When a partition last had a replica moved for load.
        self._replica_moved: dict[tuple[str, int], float] = {}
        self._dead_since: dict[str, float] = {}
        self._foreign: set[str] = set()
        self._loop: task.LoopingCall | None = None
        #: Load-based leadership balancing (decides only while this node is the controller).
        self.balancer = Balancer(BalanceConfig())
        self.forwarded = 0
        self.retried = 0
        #: Replicas built again after their adapter failed.
        self.rebuilt = 0
        self.failovers = 0
        #: SSE / WebSocket reads of partitions held elsewhere: one long-poll
        #: per partition for all of this node's clients (decision 9a).
        self.feeds = RemoteFeeds(self.fetch_remote, self.read_source, reactor, broker.notify)
        rpc.register("publish", self._rpc_publish)
        rpc.register("fetch", self._rpc_fetch)
        rpc.register("partition_status", self._rpc_status)
        rpc.allow = self._member
        from sprawl.cluster.group_routes import GroupRoutes

        #: Consumer groups, each partition's state owned by its leader.
        self.groups = GroupRoutes(self)
        from sprawl.cluster.repair import Repairs

        #: Damaged ranges rewritten from healthy replicas (sprawl/cluster/repair.py).
        self.repairs = Repairs(self)

    # -- life ------------------------------------------------------------------------

    def start(self) -> None:
        """Build replicas from the applied metadata and start ticking."""
        for name in list(self.control.metadata.placement):
            self.sync_topic(name)
        loop = task.LoopingCall(self.tick)
        loop.clock = self.reactor
        self._loop = loop
        loop.start(self.tick_seconds, now=False).addErrback(
            lambda f: log.failure("data plane tick stopped", f)
        )

    async def drain(self, timeout: float) -> bool:
        """Before a graceful stop (this node already gossiped its leave): wait,
        bounded by ``timeout`` seconds, until the controller moved the
        leadership of every replicated partition this node leads elsewhere.
        True when none is led here any more."""
        deadline = self.reactor.seconds() + timeout
        for _ in range(int(timeout / 0.05) + 2):
            if not any(r.core.is_leader for r in self.service.replicas.values()):
                return True
            if self.reactor.seconds() >= deadline:
                break
            await task.deferLater(self.reactor, 0.05, lambda: None)
        return not any(r.core.is_leader for r in self.service.replicas.values())

    def stop(self) -> None:
        """Stop ticking."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.feeds.stop()

    # -- the placement -----------------------------------------------------------------

    def placement(self, topic: str, partition: int) -> dict[str, Any] | None:
        """The applied placement of one partition, or None."""
        parts = self.control.metadata.placement.get(topic)
        if parts is None or not 0 <= partition < len(parts):
            return None
        return parts[partition]  # type: ignore[no-any-return]

    def leads(self, topic: str, partition: int) -> bool:
        """Whether this node leads the partition now (or holds it alone)."""
        if self.is_local(topic, partition):
            return True
        r = self.service.replicas.get((topic, partition))
        return r is not None and r.core.is_leader

    def is_local(self, topic: str, partition: int) -> bool:
        """Whether the broker serves this partition alone here (this node is its only replica)."""
        pl = self.placement(topic, partition)
        if pl is None:
            return True  # not (yet) in the metadata: the broker's own partition
        reps = pl["replicas"]
        return not reps or list(reps) == [self.node_id]

    def holds(self, topic: str, partition: int) -> bool:
        """Whether this node has the partition's committed records (local or a replica)."""
        return self.is_local(topic, partition) or (topic, partition) in self.service.replicas

    def sync_topic(self, name: str) -> None:
        """Make this node's replicas of ``name`` match the applied placement."""
        parts = self.control.metadata.placement.get(name)
        t = self.broker.topics.get(name)
        for key in [k for k in self.service.replicas if k[0] == name]:
            r = self.service.replicas[key]
            if parts is None or t is None or r.topic is not t:
                self._drop(key)
        if parts is None or t is None:
            return
        for p, pl in enumerate(parts):
            if p >= len(t.logs):
                break
            lg = t.logs[p]
            reps = [str(x) for x in pl["replicas"]]
            leader, epoch = str(pl["leader"]), int(pl["epoch"])
            if reps:
                lg.replicas, lg.leader, lg.epoch = list(reps), leader, epoch
            key = (name, p)
            if len(reps) <= 1 or self.node_id not in reps:
                if key in self.service.replicas:
                    self._drop(key)
                if reps == [self.node_id] and lg.replicated:
                    self._alone(t, lg)
                continue
            existing = self.service.replicas.get(key)
            if existing is not None:
                r = existing
            else:
                r = PartitionReplication(
                    self.node_id,
                    self.control.leader_name or leader,
                    self.broker,
                    t,
                    p,
                    self.service._send_for(key),
                    committed_if_new=leader == self.node_id,
                )
                r.on_records = lambda recs, t=t, p=p: self.groups.follow(t, p, recs)
                self.service.add(r)
            if epoch > self._assigned.get(key, 0):
                self._assigned[key] = epoch
                r.receive(self.control.leader_name or leader, Assign(epoch, leader, tuple(reps)), [])
            c = self.service.controllers.get(key)
            if c is not None:
                self._sync_controller(c, pl)

    def _member(self, peer: str) -> bool:
        """Peer RPCs are taken from nodes the cluster metadata registered, or
        that gossip holds alive (a node that just joined forwards too)."""
        meta = getattr(self.control, "metadata", None)
        if meta is not None and peer in meta.nodes:
            return True
        if self.membership is None:
            return True  # no gossip to ask (in-process tests)
        return peer in self.membership.live_member_ids()

    def _accepts(self, peer: str, key: tuple[str, int], m: Any) -> bool:
        """Replication takes messages about a partition only from its replicas
        (and the nodes of its goal) in the applied placement, and the
        controller's (Fence, Assign, Handoff) only from a Raft voter: the
        controller is the Raft leader."""
        if isinstance(m, Fence | Assign | Handoff):
            drv = getattr(self.control, "driver", None)
            return drv is not None and raft_id_of(peer) in drv.node.voters
        pl = self.placement(*key)
        if pl is None:
            return False
        return peer in pl["replicas"] or peer in (pl.get("goal") or ())

    def _alone(self, t: Any, lg: Any) -> None:
        """This node became the partition's only replica: the broker serves it
        directly again -- its high watermark follows the local fsync (what
        this leader stored is all there is), and the replica state is
        forgotten, so a later replica set starts from this log as committed."""
        lg.replicated = False
        if lg.stored_end > lg.high_watermark:
            lg.high_watermark = lg.stored_end
            self.broker.notify(t.name, lg.partition)
        d = self.broker.store.write([("d", "meta", keys.replica_state_key(t.config.uid, lg.partition))])
        d.addErrback(lambda f: log.warn("forgetting a replica state failed: {err}", err=str(f.value)))

    def _drop(self, key: tuple[str, int]) -> None:
        self.service.replicas.pop(key, None)
        self._assigned.pop(key, None)

    # -- the controller --------------------------------------------------------------

    def tick(self) -> None:
        """Point replicas at the current controller, run the controller's work, tick replication."""
        broken = [key for key, r in self.service.replicas.items() if r.failed is not None]
        for key in broken:
            # A replica whose adapter failed (its error is logged) is built
            # again from what this node stored: it rejoins as a follower.
            self.rebuilt += 1
            log.warn(
                "rebuilding the replica of {topic}/{partition} from its stored state",
                topic=key[0],
                partition=key[1],
            )
            self._drop(key)
        for name in {key[0] for key in broken}:
            self.sync_topic(name)
        leader = self.control.leader_name
        if leader:
            for r in self.service.replicas.values():
                r.core.controller = leader
        if self.control.is_leader:
            self._control_partitions()
        elif self.service.controllers:
            self.service.controllers.clear()
            self._moving.clear()
        self.service.tick()
        self.groups.tick(self.reactor.seconds())
        self.repairs.tick()

    def _sync_controller(self, c: FailoverCore, pl: dict[str, Any]) -> None:
        epoch = int(pl["epoch"])
        if epoch > c.epoch:
            c.cancel_move()  # a pending leadership hand-off is for an epoch gone by
        if epoch > c.epoch or (epoch == c.epoch and c.leader is None and c.committing is None):
            c.epoch, c.leader = epoch, str(pl["leader"])
            c.replicas = tuple(str(x) for x in pl["replicas"])
            if c.committing is None:
                c.fencing = None
                c.silent_ticks = 0
                c.leader_confirmed = False

    def _control_partitions(self) -> None:
        meta = self.control.metadata
        states = self._member_states()
        now = self.reactor.seconds()
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
        for key in [k for k in self.service.controllers if self.placement(*k) is None]:
            del self.service.controllers[key]  # the topic (or partition) is gone
        moves = len(self._moving)
        for name, parts in meta.placement.items():
            topic = meta.topics.get(name)
            if topic is None:
                continue
            rf = int(topic["config"].get("replication_factor", 1))
            for p, pl in enumerate(parts):
                key = (name, p)
                reps = [str(x) for x in pl["replicas"]]
                if self._foreign.intersection(reps):
                    # A replica still in another Raft cluster (a survivor that
                    # has not rejoined after a forced recovery) hears neither
                    # our assignments nor our fencing: leave the partition
                    # alone until it has rejoined.
                    self.service.controllers.pop(key, None)
                    continue
                c = self.service.controllers.get(key)
                if len(reps) > 1:
                    if c is None:
                        c = FailoverCore(
                            tuple(reps),
                            epoch=int(pl["epoch"]),
                            leader=str(pl["leader"]),
                            beat_timeout_ticks=self.beat_timeout_ticks,
                        )
                        self.service.controllers[key] = c
                    else:
                        self._sync_controller(c, pl)
                    if (
                        c.leader is not None
                        and states.get(c.leader) in ("dead", "left")
                        and c.fencing is None
                        and c.committing is None
                    ):
                        log.info(
                            "controller: leader {leader} of {topic}/{partition} is dead by gossip; failing over",
                            leader=c.leader,
                            topic=name,
                            partition=p,
                        )
                        self.service._control(key, c.start_failover())
                elif c is not None:
                    del self.service.controllers[key]
                if moves < self.max_moves and key not in self._moving:
                    want = self._wanted_replicas(name, p, reps, rf, live, now, c, pl.get("goal"))
                    if want is not None:
                        moves += 1
                        self._move(key, pl, want)
        self._balance(now, live)

    def _balance(self, now: float, live: list[str]) -> None:
        """Move partition leadership off overloaded nodes (see :mod:`sprawl.cluster.balance`)."""
        if self.membership is None or not self.balancer.due(now):
            return
        ctl = self.service.controllers

        def movable(k: tuple[str, int]) -> bool:
            c = ctl.get(k)
            return c is not None and not c.busy and c.leader_confirmed and k not in self._moving

        parts = partitions_from(
            self.control.metadata.placement, rates_by_node(self.membership.member_views()), movable
        )
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
            out = c.move_leader(mv.dst) if c is not None else None
            if out is not None:
                log.info(
                    "controller: moving the leadership of {topic}/{partition} from {src} to {dst} ({reason})",
                    topic=mv.topic,
                    partition=mv.partition,
                    src=mv.src,
                    dst=mv.dst,
                    reason=mv.reason,
                )
                self.service._control(key, out)

    def _wanted_replicas(
        self,
        name: str,
        p: int,
        reps: list[str],
        rf: int,
        live: list[str],
        now: float,
        c: FailoverCore | None,
        goal: list[str] | None = None,
    ) -> list[str] | None:
        """The replica set this partition should move to next, or None to leave it.

        The goal is rendezvous hashing's top ``min(RF, eligible nodes)`` over
        the *eligible* nodes: registered nodes alive by gossip, or dead for
        less than the grace period (a node restarting keeps its partitions).
        One step at a time, never below the replicas that hold the data:

        * replicas dead past the grace period are dropped and the set is
          filled up again (from the goal's order);
        * a set smaller than the goal grows;
        * a load move (:func:`sprawl.cluster.balance.replica_move`) sets its own
          goal in the placement, used instead while all its nodes are eligible;
        * a set the goal differs from first gains the goal's missing node
          (one more replica than the goal), and only once every replica of
          the goal holds every committed record does it lose one that is not
          in the goal -- after the leadership moved, if it was the leader.
        """
        if c is not None and (
            c.fencing is not None or c.committing is not None or not c.leader_confirmed or c.busy
        ):
            return None  # only a partition with a working leader changes its replicas
        grace = float(getattr(self.control, "dead_grace", 30.0))
        gone = {r for r in reps if r in self._dead_since and now - self._dead_since[r] >= grace}
        keep = [r for r in reps if r not in gone]
        if not keep:
            return None
        registered = set(self.control.metadata.nodes) | {self.node_id}
        recently_dead = {n for n, since in self._dead_since.items() if now - since < grace} | self._foreign
        eligible = sorted(n for n in registered if n in live or n in recently_dead)
        target = max(min(rf, len(eligible)), 1)
        if goal and all(n in eligible for n in goal):
            ideal = list(goal)[:target]  # a load move's target (while all of it is up)
        else:
            ideal = rendezvous(name, p, eligible, target)
        if gone or len(keep) < target:
            out = list(keep)
            for n in [*ideal, *rendezvous(name, p, live, len(live))]:
                if len(out) >= target:
                    break
                if n not in out and n in live:
                    out.append(n)
            return out if out != reps else None
        if set(keep) == set(ideal):
            return None
        if len(keep) <= target:
            add = next((n for n in ideal if n not in keep and n in live), None)
            return [*keep, add] if add is not None else None
        extra = [r for r in keep if r not in ideal]
        if not extra or c is None or c.leader is None:
            return None
        in_sync = self._in_sync((name, p), c.leader, now)
        if in_sync is None or not set(ideal) <= in_sync:
            return None  # the goal's new replicas are still catching up
        if c.leader in extra:
            out_ = c.move_leader(ideal[0])  # hand the leadership over first
            if out_ is not None:
                self.service._control((name, p), out_)
            return None
        return [r for r in keep if r != extra[0]]

    def _in_sync(self, key: tuple[str, int], leader: str, now: float) -> set[str] | None:
        """The replicas holding every committed record, as the leader last said
        (asked over the peer channel at most once a second)."""
        if leader == self.node_id:
            return set(self.partition_view(*key).get("in_sync") or ())
        at, seen = self._sync_views.get(key, (float("-inf"), None))
        if now - at >= 1.0 and key not in self._asking:
            self._asking.add(key)
            d = self.rpc.call(
                leader, "partition_status", {"topic": key[0], "partition": key[1]}, hops=1, timeout=2.0
            )

            def got(view: dict[str, Any]) -> None:
                self._sync_views[key] = (self.reactor.seconds(), set(view.get("in_sync") or ()))

            def done(_: object) -> None:
                self._asking.discard(key)

            d.addCallbacks(got, lambda f: None).addBoth(done)
        return seen if now - at < 5.0 else None

    def _rpc_status(self, caller: str, body: Any, hops: int) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequest("malformed partition status request", code="bad_request")
        return self.partition_view(str(body["topic"]), int(body["partition"]))

    def _move_replica(self, mv: Move, now: float) -> None:
        """Steer a partition of a persistently hot node to a cooler one: a new
        epoch whose goal swaps the hot replica for the cool node (first in the
        goal: it takes the leadership once it holds every committed record)."""
        key = (mv.topic, mv.partition)
        pl = self.placement(*key)
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

    def _commit(self, topic: str, partition: int, c: Commit) -> defer.Deferred[None]:
        """The failover core's choice, committed through Raft."""
        self.failovers += 1
        log.info(
            "controller: {leader} leads {topic}/{partition} in epoch {epoch}",
            leader=c.leader,
            topic=topic,
            partition=partition,
            epoch=c.epoch,
        )

        def check(result: dict[str, Any]) -> None:
            err = result.get("error")
            if err:
                raise SprawlError(err["message"], code=err["code"], status=err["status"])

        return self._propose_partition((topic, partition), c.epoch, c.leader, list(c.replicas)).addCallback(
            check
        )

    def _member_states(self) -> dict[str, str]:
        """Gossip state by node id; ``foreign`` for a member of another Raft
        cluster (it gets no replicas until it has joined this one)."""
        if self.membership is None:
            return {}
        foreign = getattr(self.control, "is_foreign", None)
        return {
            str(v["id"]): "foreign" if foreign is not None and foreign(v) else str(v["state"])
            for v in self.membership.member_views()
        }

    # -- publishing ----------------------------------------------------------------------

    def publish(self, topic: Any, records: list[Record], acks: str) -> defer.Deferred[PublishResult]:
        """Publish ``records`` to ``topic`` through each partition's leader."""
        name = topic.name
        n = len(topic.logs)
        if all(self.is_local(name, p) for p in range(n)):
            return self.broker.publish(topic, records, acks)  # type: ignore[no-any-return]
        self.broker.check_message_sizes(records, topic.config.max_message_bytes)
        named: set[str] = set()
        for r in records:
            if r.id is None:
                # Named here, before the first attempt: a publish retried
                # through a failover carries the same id, and the partition's
                # (new) leader answers it with the first copy's offset.
                r.id = self.broker.new_message_id()
                named.add(r.id)
        groups: dict[int, list[int]] = {}
        if all(r.key is None for r in records):
            # No keys: the whole batch goes to one partition (round robin per
            # batch, Kafka's sticky partitioner) -- one leader, one replication
            # round, instead of a slice for every leader.
            groups[topic.partition_for(None)] = list(range(len(records)))
        else:
            for i, r in enumerate(records):
                groups.setdefault(topic.partition_for(r.key), []).append(i)
        ds = [
            defer.ensureDeferred(self._publish_partition(topic, p, [records[i] for i in idx], acks, 0, named))
            for p, idx in groups.items()
        ]

        def combine(results: list[PublishResult]) -> PublishResult:
            offsets = [0] * len(records)
            ids = [""] * len(records)
            parts = [0] * len(records)
            dups = [False] * len(records)
            stored = set()
            for (p, idx), res in zip(groups.items(), results, strict=True):
                stored.add(res.stored)
                for j, i in enumerate(idx):
                    offsets[i], ids[i], parts[i], dups[i] = res.offsets[j], res.ids[j], p, res.duplicates[j]
            weakest = next((k for k in _WEAKEST_FIRST if k in stored), "pending")
            return PublishResult(offsets, ids, parts, dups, weakest)

        d = defer.gatherResults(ds, consumeErrors=True)
        d.addErrback(lambda f: f.value.subFailure if isinstance(f.value, defer.FirstError) else f)
        return d.addCallback(combine)

    async def _publish_partition(
        self, topic: Any, p: int, records: list[Record], acks: str, hops: int, named: set[str]
    ) -> PublishResult:
        """Publish to one partition: here when this node leads it, else at its
        leader; retried through failovers until :attr:`route_timeout`."""
        deadline = self.reactor.seconds() + self.route_timeout
        last: SprawlError | None = None
        for attempt in range(1000):
            # Checked again before every attempt: a leader answering
            # topic_not_found is retried only while this node knows the topic.
            t = self.broker.topics.get(topic.name)
            if t is None:
                raise NotFound(f"topic {topic.name!r} does not exist", code="topic_not_found")
            if not 0 <= p < len(t.logs):
                raise NotFound(f"topic {topic.name!r} has no partition {p}", code="partition_not_found")
            try:
                return await self._publish_once(t, p, records, acks, hops, deadline, named)
            except SprawlError as e:
                if e.code not in _RETRYABLE:
                    raise
                last = e
            except NotLeader as e:
                last = NotLeaderError(str(e), e.leader)
            if self.reactor.seconds() + 0.05 >= deadline:
                break
            self.retried += 1
            await task.deferLater(self.reactor, min(0.05 * (attempt + 1), 0.25), lambda: None)
        raise Unavailable(
            f"partition {topic.name}/{p} has no reachable leader now ({last.message if last else 'no route'}); "
            "retry shortly",
            code="no_leader",
        )

    async def _publish_once(
        self,
        t: Any,
        p: int,
        records: list[Record],
        acks: str,
        hops: int,
        deadline: float,
        named: set[str],
    ) -> PublishResult:
        """One attempt at the partition's leader (``named``: the ids this
        cluster gave messages that came without one)."""
        name = t.name
        if self.is_local(name, p):
            pl0 = self.placement(name, p)
            if pl0 is not None and pl0["replicas"] and pl0["replicas"] != [self.node_id]:
                raise Unavailable(f"partition {name}/{p} has no replicas", code="no_leader")
            res: PublishResult = await self.broker.publish(t, records, acks, partition=p)
            return res
        r = self.service.replicas.get((name, p))
        if r is not None and r.core.is_leader:
            return await self._publish_replicated(t, r, records, acks, named)
        pl = self.placement(name, p)
        leader = str(pl["leader"]) if pl else ""
        if not leader or leader == self.node_id:
            raise Unavailable(f"partition {name}/{p} is between leaders", code="no_leader")
        if hops >= self.rpc.max_hops:
            raise NotLeaderError(f"this node does not lead {name}/{p}", leader)
        self.forwarded += 1
        body = {
            "topic": name,
            "partition": p,
            "acks": acks,
            "records": [pack_record(x) for x in records],
            "named": [x.id for x in records if x.id in named],
        }
        timeout = max(0.1, min(self.forward_timeout, deadline - self.reactor.seconds()))
        answer = await self.rpc.call(leader, "publish", body, hops=hops + 1, timeout=timeout)
        return PublishResult(
            list(answer["offsets"]),
            list(answer["ids"]),
            [p] * len(records),
            list(answer["duplicates"]),
            str(answer["stored"]),
        )

    async def _publish_replicated(
        self, t: Any, r: PartitionReplication, records: list[Record], acks: str, named: set[str]
    ) -> PublishResult:
        """As the partition's leader: dedup, append, wait for the acks level.

        Client ids are remembered for the dedup window; ids this cluster gave
        (``named``) only in the short window of recent ids, which is all a
        retry through a failover needs."""
        b = self.broker
        b.check_writable()
        now = b.now_ms()
        dedup = t.dedup
        recent = t.recent
        n = len(records)
        offsets: list[int] = [0] * n
        dups = [False] * n
        fresh: list[Record] = []
        seen: dict[str, int] = {}
        hits: list[int] = []
        for i, rec in enumerate(records):
            if rec.id is not None:
                hit = dedup.lookup(rec.id, now) or recent.lookup(rec.id, now)
                if hit is not None and hit[0] == r.partition:
                    offsets[i], dups[i] = hit[1], True
                    hits.append(hit[1])
                    continue
                if rec.id in seen:
                    dups[i] = True
                    continue
                seen[rec.id] = i
            fresh.append(rec)
        d = r.publish(fresh) if fresh else defer.succeed([])
        for rec in fresh:
            if rec.id in seen:
                (recent if rec.id in named else dedup).remember(rec.id, r.partition, rec.offset, now)
        for i, rec in enumerate(records):
            if dups[i] and rec.id in seen and records[seen[rec.id]] is not rec:
                offsets[i] = records[seen[rec.id]].offset
            elif not dups[i]:
                offsets[i] = rec.offset
        size = sum(x.message_bytes for x in fresh)
        b.published_total += len(fresh)
        b.published_bytes_total += size
        b.deduplicated_total += n - len(fresh)
        if b.metrics is not None:
            b.metrics.published(t.name, len(fresh), size)
        if acks == "quorum":
            await d
            if hits:
                await r.wait_committed(max(hits))  # the first copies are committed too
            stored = "quorum"
        else:
            d.addErrback(lambda f: None)  # the answer does not wait for it
            if acks == "leader" and fresh:
                await b.wait_stored(t.name, r.partition, max(x.offset for x in fresh))
                stored = "lmdb"
            else:
                stored = "pending"
        ids = [x.id or "" for x in records]
        for i, rec in enumerate(records):
            if dups[i] and rec.id is None:
                ids[i] = ""
        return PublishResult(offsets, ids, [r.partition] * n, dups, stored)

    def _rpc_publish(self, caller: str, body: Any, hops: int) -> defer.Deferred[dict[str, Any]]:
        if not isinstance(body, dict):
            raise BadRequest("malformed forwarded publish", code="bad_request")
        name, p, acks = str(body["topic"]), int(body["partition"]), str(body["acks"])
        t = self.broker.topics.get(name)
        if t is None:
            raise NotFound(f"topic {name!r} does not exist here yet", code="topic_not_found")
        if not 0 <= p < len(t.logs):
            raise NotFound(f"topic {name!r} has no partition {p}", code="partition_not_found")
        records = [unpack_record(x) for x in body["records"]]
        self.broker.check_message_sizes(records, t.config.max_message_bytes)
        named = {str(x) for x in body.get("named") or ()}
        for rec in records:
            rec.offset, rec.partition, rec.timestamp = -1, p, 0

        async def run() -> dict[str, Any]:
            res = await self._publish_once(
                t, p, records, acks, hops, self.reactor.seconds() + self.route_timeout, named
            )
            return {
                "offsets": res.offsets,
                "ids": res.ids,
                "duplicates": res.duplicates,
                "stored": res.stored,
            }

        def not_leader(f: Failure) -> Failure:
            e = f.value
            if isinstance(e, NotLeader):
                raise NotLeaderError(str(e), e.leader)
            return f

        return defer.ensureDeferred(run()).addErrback(not_leader)

    # -- reading ---------------------------------------------------------------------

    def read_source(self, topic: str, partition: int) -> str | None:
        """Where to read a partition this node does not hold: its leader (None: read here)."""
        if self.holds(topic, partition):
            return None
        pl = self.placement(topic, partition)
        if pl is None:
            return None
        leader = str(pl["leader"])
        return leader or (str(pl["replicas"][0]) if pl["replicas"] else None)

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
        """Read a partition at the node that holds it: fires with
        ``{"records": [Record], "start", "hw"}`` (records may include control
        ones); at most ``limit`` records and ``max_bytes`` bytes (the holder
        caps it at :data:`~sprawl.peer.frames.BATCH_BYTES`), at least one.

        A holder that has not applied the topic (or partition) yet is asked
        again, while this node knows it, until :attr:`route_timeout`."""
        src = self.read_source(topic, partition)
        if src is None:
            return defer.fail(Unavailable(f"no replica of {topic}/{partition} is known", code="no_leader"))
        body = {
            "topic": topic,
            "partition": partition,
            "start": start,
            "from_time": from_time,
            "limit": limit,
            "wait_ms": wait_ms,
            "max_bytes": max_bytes,
        }

        async def fetch(src: str) -> dict[str, Any]:
            deadline = self.reactor.seconds() + self.route_timeout
            for attempt in range(1000):
                try:
                    answer = await self.rpc.call(
                        src, "fetch", body, hops=1, timeout=self.forward_timeout + wait_ms / 1000.0
                    )
                    break
                except SprawlError as e:
                    t = self.broker.topics.get(topic)
                    known = t is not None and partition < len(t.logs)
                    if e.code not in _NOT_APPLIED_THERE or not known:
                        raise
                    if self.reactor.seconds() + 0.05 >= deadline:
                        raise
                self.retried += 1
                await task.deferLater(self.reactor, min(0.05 * (attempt + 1), 0.25), lambda: None)
                src = self.read_source(topic, partition) or src
            else:
                raise Unavailable(f"{topic}/{partition} cannot be read at {src} now", code="no_leader")
            return {
                "records": [unpack_record(x) for x in answer["records"]],
                "start": int(answer["start"]),
                "hw": int(answer["hw"]),
                "log_start": int(answer.get("log_start", 0)),
            }

        return defer.ensureDeferred(fetch(src))

    def _rpc_fetch(self, caller: str, body: Any, hops: int) -> defer.Deferred[dict[str, Any]]:
        if not isinstance(body, dict):
            raise BadRequest("malformed forwarded fetch", code="bad_request")
        name, p = str(body["topic"]), int(body["partition"])
        t = self.broker.get_topic(name)
        if not 0 <= p < len(t.logs):
            raise NotFound(f"topic {name!r} has no partition {p}", code="partition_not_found")
        if not self.holds(name, p):
            raise NotLeaderError(f"this node holds no replica of {name}/{p}", self.read_source(name, p))
        limit = max(1, min(int(body.get("limit") or 100), 10_000))
        # The answer is one peer frame: bounded in bytes whatever the caller asked.
        max_bytes = max(1, min(int(body.get("max_bytes") or BATCH_BYTES), BATCH_BYTES))
        wait = max(0.0, min(int(body.get("wait_ms") or 0), 60_000) / 1000.0)
        lg = t.logs[p]
        spec, from_time = body.get("start"), body.get("from_time")

        async def run() -> dict[str, Any]:
            if from_time is not None:
                start = int(await self.broker.find_time(t, p, int(from_time)))
            else:
                start = lg.resolve_start(spec if spec is not None else "earliest")
            deadline = self.reactor.seconds() + wait
            for _ in range(10_000):
                hw = lg.high_watermark
                got = await self.broker.read(t, p, start, limit, max_bytes=max_bytes) if start < hw else []
                if got or self.reactor.seconds() >= deadline or self.broker.topics.get(name) is not t:
                    break
                await self.changed(name, p, deadline - self.reactor.seconds())
            return {
                "records": [pack_record(x) for x in got],
                "start": start,
                "hw": lg.high_watermark,
                "log_start": lg.log_start,
            }

        return defer.ensureDeferred(run())

    def changed(self, name: str, p: int, seconds: float) -> defer.Deferred[None]:
        """Fires when the partition's high watermark moves, or after ``seconds``."""
        d: defer.Deferred[None] = defer.Deferred()
        timer: Any = None

        def fire() -> None:
            unwatch()
            if timer is not None and timer.active():
                timer.cancel()
            if not d.called:
                d.callback(None)

        unwatch = self.broker.watch(name, p, fire)
        timer = self.reactor.callLater(max(seconds, 0.0), fire)
        return d

    # -- views -------------------------------------------------------------------------

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
            full, want = self._full_strength(topic, core, self._member_states(), partition)
            out["full_strength"] = full
            out["replicas_wanted"] = want
            out["damaged_replicas"] = sorted(damaged)
        return out

    def _wanted(self, topic: str, states: dict[str, str]) -> int:
        """Replicas a partition of ``topic`` should have: its replication
        factor, capped by the cluster's size -- every registered node,
        dead ones included (a node down does not make the topic need fewer
        copies), but not members of another cluster."""
        meta = self.control.metadata
        rf = int(meta.topics.get(topic, {}).get("config", {}).get("replication_factor", 1))
        nodes = {n for n in meta.nodes if states.get(n) != "foreign"} | {self.node_id}
        return max(1, min(rf, len(nodes)))

    def _full_strength(
        self, topic: str, core: Any, states: dict[str, str], partition: int | None = None
    ) -> tuple[bool, int]:
        """Whether a partition this node leads is at full strength -- as many
        replicas as :meth:`_wanted`, each up (by gossip), holding every
        committed record and not reporting a damaged range -- and how many it wants."""
        want = self._wanted(topic, states)
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
        replication factor (capped by the number of registered nodes)."""
        leading = under = 0
        meta = self.control.metadata
        states = self._member_states()
        for (name, _p), r in self.service.replicas.items():
            core = r.core
            if not core.is_leader:
                continue
            leading += 1
            if not self._full_strength(name, core, states, _p)[0]:
                under += 1
        for name, parts in meta.placement.items():
            for pl in parts:
                if list(pl["replicas"]) == [self.node_id]:
                    leading += 1
                    if self._wanted(name, states) > 1:
                        under += 1
        return {
            "balance": self.balancer.last.as_dict()
            if getattr(self.control, "is_leader", False) and self.balancer.last
            else None,
            "leading": leading,
            "under_replicated": under,
            "replicas": len(self.service.replicas),
            "controller_partitions": len(self.service.controllers),
            "forwarded": self.forwarded,
            "retried": self.retried,
            "failovers": self.failovers,
            "rebuilt": self.rebuilt,
            **self.feeds.view(),
            **self.repairs.view(),
        }
