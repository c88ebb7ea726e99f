"""Cluster control: the Raft driver, the peer channel, gossip and the broker
glued together on one node.  An adapter: it owns time and wiring, while the
decisions live in pure modules (:mod:`sprawl.raft.node`,
:mod:`sprawl.cluster.metadata`, :mod:`sprawl.cluster.voters`,
:mod:`sprawl.cluster.recovery`).

:class:`ClusterControl` holds the node's Raft state (driver, storage, applied
metadata, node names) and runs the driver; its parts, each in its own module:

* :mod:`sprawl.cluster.raft_wire` -- Raft messages in peer frames, and what is
  refused before the core sees it;
* :mod:`sprawl.cluster.cluster_ids` -- which cluster this node and each peer
  belong to (a forced cluster has a new id);
* :mod:`sprawl.cluster.metadata_apply` -- the committed commands applied to
  the metadata and materialised in the broker;
* :mod:`sprawl.cluster.voter_control` -- the controller of Raft voters and
  members (learners added, promoted, dead voters replaced);
* :mod:`sprawl.cluster.recovery_adapter` -- ``--force-new-cluster`` and a
  survivor rejoining a forced cluster;
* :mod:`sprawl.cluster.metadata_seam` -- the metadata seam (topic and group
  definitions as proposals), a part of the class itself.

Topic and group definitions are Raft proposals.  The waiting caller is
answered once the entry is committed *and* applied on this node -- the
broker's own durable write included -- so a 2xx means every later read on
this node sees the change and a majority of voters hold it on disk.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from twisted.internet import defer, task
from twisted.logger import Logger

from sprawl.cluster import voters
from sprawl.cluster.cluster_ids import ClusterIds, cluster_hex
from sprawl.cluster.metadata import Metadata, encode_command
from sprawl.cluster.metadata_apply import MetadataApply
from sprawl.cluster.metadata_seam import MetadataSeam
from sprawl.cluster.placement import raft_id_of
from sprawl.cluster.raft_wire import RaftWire
from sprawl.cluster.recovery_adapter import ClusterRecovery, StartRefused
from sprawl.cluster.voter_control import VoterControl
from sprawl.delivery.topic_waiters import TopicWaiters
from sprawl.errors import SprawlError, Unavailable
from sprawl.interfaces import Clock, Delayed
from sprawl.peer.frames import RAFT
from sprawl.peer.tcp import PeerChannel
from sprawl.raft.driver import RaftDriver
from sprawl.raft.lmdb_storage import LmdbRaftStorage
from sprawl.raft.messages import ConfState
from sprawl.raft.node import Config, ProposalDropped
from sprawl.ticks import start_in_phase

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from sprawl.interfaces import Gossip
    from sprawl.peer.rpc import PeerRPC
    from sprawl.pubsub import Broker
    from sprawl.storage.lmdb import LmdbStore

__all__ = ["ClusterControl", "StartRefused", "cluster_hex"]

log = Logger()

_HISTORY = 512
#: An idle Raft leader's heartbeat period in ticks (``Config.idle_heartbeat_tick``;
#: at most half the election timeout): busy, it heartbeats every tick.
IDLE_HEARTBEAT_TICKS = 2


class ClusterControl(MetadataSeam):
    """One node's part in keeping the cluster metadata (see the module docstring).

    ``rpc`` answers other nodes' ``raft_status`` calls and asks theirs (a
    recovering node); ``on_proposal_latency`` hears each answered proposal's
    latency (the metrics histogram); ``new_topics`` holds the subscribers
    waiting for a topic to be created (the metrics count them)."""

    def __init__(
        self,
        node_id: str,
        broker: Broker,
        store: LmdbStore | None,
        reactor: Clock,
        channel: PeerChannel,
        membership: Gossip | None = None,
        *,
        rpc: PeerRPC | None = None,
        on_proposal_latency: Callable[[float], None] | None = None,
        new_topics: TopicWaiters | None = None,
        bootstrap: bool = True,
        rng: random.Random | None = None,
        tick_seconds: float = 0.1,
        election_ticks: int = 10,
        dead_grace: float = 30.0,
        snapshot_entries: int = 1024,
        proposal_timeout: float = 10.0,
        max_voters: int = 5,
        peer: str = "",
        http: str = "",
        force_new_cluster: bool = False,
        rejoin_after: float = 5.0,
        status_wait: float = 5.0,
    ) -> None:
        self.node_id = node_id
        self.raft_id = raft_id_of(node_id)
        self.broker = broker
        self.store = store
        self.reactor = reactor
        self.channel = channel
        self.membership = membership
        self.rpc = rpc
        self.bootstrap = bootstrap
        self.rng = rng or random.Random()
        self.tick_seconds = tick_seconds
        self.election_ticks = election_ticks
        self.dead_grace = dead_grace
        self.snapshot_entries = snapshot_entries
        self.proposal_timeout = proposal_timeout
        self.max_voters = max_voters
        self.peer = peer
        self.http = http
        self.metadata = Metadata()
        self.driver: RaftDriver | None = None
        self.storage: LmdbRaftStorage | None = None
        self.names: dict[int, str] = {self.raft_id: node_id}
        self._waiting: dict[str, tuple[defer.Deferred[dict[str, Any]], float]] = {}
        #: The proposal timeout of each waiting proposal (see :meth:`applied_here`).
        self._timers: dict[str, Delayed] = {}
        self._creating: dict[str, defer.Deferred[Any]] = {}
        self._loop: task.LoopingCall | None = None
        self.proposal_seconds: list[float] = []
        #: Called with each answered proposal's latency (the metrics histogram).
        self.on_proposal_latency = on_proposal_latency
        self.ids = ClusterIds(reactor, self.rng, membership, latched=lambda: self.metadata.features)
        self.wire = RaftWire(self, self.ids)
        self.metadata_apply = MetadataApply(self, broker, new_topics)
        self.voter_control = VoterControl(self)
        self.recovery = ClusterRecovery(
            self, rpc, force_new_cluster=force_new_cluster, rejoin_after=rejoin_after, status_wait=status_wait
        )

    def serving_http(self, url: str) -> None:
        """This node's HTTP API answers at ``url`` (named in its Raft membership).

        Known only once HTTP listens, after the API built on this control:
        the composition root says it here (:func:`sprawl.node.announce_http`)."""
        self.http = url

    # -- life ------------------------------------------------------------------

    async def start(self, storage: LmdbRaftStorage | None = None) -> None:
        """Recover Raft state (bootstrapping a one-voter cluster on a fresh
        founding node), restore the metadata, start ticking and listening.
        With ``force_new_cluster`` set, Raft itself waits for :meth:`force_new_cluster`.
        ``storage`` replaces the LMDB Raft storage (tests: one in memory)."""
        if storage is None:
            # A forced recovery never founds a cluster: an empty data dir there
            # is a mistake (it is refused), not a new cluster.
            conf = ConfState(voters=(self.raft_id,)) if self.bootstrap and not self.recovery.forcing else None
            assert self.store is not None, "a store, or a Raft storage to run on"
            storage = await LmdbRaftStorage.open(self.store, conf, cluster_id=self.ids.new_id())
        self.storage = storage
        snap = storage.snapshot()
        self.install_metadata(Metadata.restore(snap.data))
        self.ids.set(storage.cluster_id if storage.cluster_id or storage.is_empty() else 0)
        self.channel.handlers[RAFT] = self.wire.received
        previous = self.channel.on_unreachable

        def unreachable(peer: str) -> None:
            previous(peer)
            self.wire.unreachable(peer)

        self.channel.on_unreachable = unreachable
        self.channel.on_proven = lambda peer: self.voter_control.soon()
        if self.membership is not None:
            self.membership.listeners.append(self.voter_control.member_event)
        if not self.recovery.forcing:
            self.start_driver(storage)
        loop = task.LoopingCall(self.voter_control.step)
        loop.clock = cast("IReactorTime", self.reactor)
        self._loop = loop
        start_in_phase(loop, max(self.tick_seconds * 5, 0.1), now=True).addErrback(
            lambda f: log.failure("cluster control loop stopped", f)
        )

    def start_driver(self, storage: LmdbRaftStorage) -> None:
        """Run Raft on ``storage`` (the metadata already matches its snapshot)."""
        self.storage = storage
        snap = storage.snapshot()
        cfg = Config(
            id=self.raft_id,
            election_tick=self.election_ticks,
            heartbeat_tick=1,
            # Idle, the leader heartbeats every other tick (issue 23, idle34).
            idle_heartbeat_tick=min(IDLE_HEARTBEAT_TICKS, self.election_ticks // 2),
            applied=snap.meta.index,
        )
        self.driver = RaftDriver(
            storage,
            cfg,
            self.reactor,
            self.rng,
            self.wire.send,
            self.metadata_apply.apply,
            self.metadata_apply.restore,
            tick_seconds=self.tick_seconds,
            snapshot_entries=self.snapshot_entries,
            keep_entries=max(self.snapshot_entries // 4, 1),
            snapshot_data=self.metadata_apply.metadata_snapshot,
        )
        self.driver.on_soft_state.append(self._leader_changed)
        self.driver.on_advanced.append(self.voter_control.advanced)
        self.voter_control.saw_alive(
            (*self.driver.node.voters, *self.driver.node.learners), self.reactor.seconds()
        )
        self.driver.start()
        if self.driver.node.voters == {self.raft_id}:
            self.driver.node.campaign()  # alone: no need to wait out an election timeout
            self.driver.kick()

    def stop(self) -> None:
        """Stop ticking; waiting callers are told the node is stopping."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.voter_control.stop()
        if self.driver is not None:
            self.driver.stop()
        for req, (d, _) in list(self._waiting.items()):
            del self._waiting[req]
            if not d.called:
                d.errback(Unavailable("node is stopping", code="stopping"))

    async def hand_off(self, timeout: float = 3.0) -> str | None:
        """Before a graceful stop (or when drained, or its store failed): if
        this node leads, hand leadership to the most caught-up live voter
        (Raft's TimeoutNow) and wait, bounded, for it to take over, so the
        cluster does not sit out an election timeout.
        Returns the new leader's name, or None (not leading, alone, or the
        transfer did not finish in time -- the stop goes on either way)."""
        drv = self.driver
        if drv is None or not drv.is_leader:
            return None
        node = drv.node
        candidates = [
            (pr.match, rid)
            for rid, pr in node.progress.items()
            if rid != self.raft_id and rid in node.voters and self.channel.connected(self.name_of(rid))
        ]
        if not candidates:
            return None
        _match, target = max(candidates)
        drv.node.transfer_leadership(target)
        drv.kick()
        d: defer.Deferred[None] = defer.Deferred()

        def check() -> None:
            if drv.leader not in (self.raft_id, 0) and not d.called:
                d.callback(None)

        loop = task.LoopingCall(check)
        loop.clock = cast("IReactorTime", self.reactor)
        loop.start(0.01, now=True)

        def give_up() -> None:
            if not d.called:
                d.callback(None)

        timer = self.reactor.callLater(timeout, give_up)
        try:
            await d
        finally:
            if loop.running:
                loop.stop()
            if timer.active():
                timer.cancel()
        if drv.leader in (self.raft_id, 0):
            log.warn(
                "raft: leadership hand-off to {target} did not finish in time", target=self.name_of(target)
            )
            return None
        log.info("raft: handed the leadership to {leader}", leader=self.leader_name)
        return self.leader_name

    def leader_known(self) -> defer.Deferred[None]:
        """Fires once a leader is known (checked once per tick); cancellable."""

        def cancel(_: defer.Deferred[None]) -> None:
            if loop.running:
                loop.stop()

        d: defer.Deferred[None] = defer.Deferred(cancel)

        def check() -> None:
            if self.driver is not None and self.driver.leader and not d.called:
                loop.stop()
                d.callback(None)

        loop = task.LoopingCall(check)
        loop.clock = cast("IReactorTime", self.reactor)
        loop.start(self.tick_seconds, now=True)
        return d

    def _leader_changed(self) -> None:
        drv = self.driver
        assert drv is not None
        log.info(
            "raft: leader is {leader} (term {term}); this node is {role}",
            leader=self.leader_name or "unknown",
            term=drv.node.term,
            role=drv.node.role.value,
        )

    # -- proposals ---------------------------------------------------------------------

    def propose(self, cmd: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
        """Propose a metadata command; fires with its result once applied
        here, or fails with 503 (no leader, not committed in time)."""
        if self.driver is None:
            raise Unavailable("the cluster metadata is not loaded yet", code="no_leader")
        req = os.urandom(8).hex()
        data = encode_command({**cmd, "req": req})
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        started = time.perf_counter()
        # Waiting before the proposal is made: a one-node cluster may commit
        # and apply it before ``propose`` returns.
        self._waiting[req] = (d, started)

        def expire() -> None:
            w = self._waiting.pop(req, None)
            if w is not None and not w[0].called:
                self.driver.stats.proposals_failed += 1  # type: ignore[union-attr]
                w[0].errback(
                    Unavailable(
                        "the change was not committed in time (leader lost?); it may still apply",
                        code="proposal_timeout",
                    )
                )

        timer = self._timers[req] = self.reactor.callLater(self.proposal_timeout, expire)

        def done(result: Any) -> Any:
            self._timers.pop(req, None)
            if timer.active():
                timer.cancel()
            return result

        d.addBoth(done)
        try:
            self.driver.propose(data)
        except ProposalDropped as e:
            self._waiting.pop(req, None)
            self._timers.pop(req, None)
            timer.cancel()
            raise Unavailable(f"no Raft leader can take the change now ({e})", code="no_leader") from None
        return d

    def applied_here(self, req: str) -> None:
        """The entry of proposal ``req`` (if made here) is applied to the
        metadata here: it is committed and its result known, so it no longer
        times out; its caller is answered once this node followed it
        (:meth:`answer`).  A dead node's thousands of failovers in one
        ``set_partitions`` entry are followed a slice per reactor turn: on a
        loaded machine that took longer than the proposal timeout, and the
        controller, told "not committed in time", failed them all over again
        (issue 23)."""
        timer = self._timers.pop(req, None)
        if timer is not None and timer.active():
            timer.cancel()

    async def _propose_checked(self, cmd: dict[str, Any]) -> dict[str, Any]:
        result = await self.propose(cmd)
        err = result.get("error")
        if err:
            raise SprawlError(err["message"], code=err["code"], status=err["status"])
        return result

    def linearizable(self) -> defer.Deferred[None]:
        """Fires once this node has applied everything committed before the
        call (ReadIndex confirmed by a quorum); 503 without a leader."""
        if self.driver is None:
            raise Unavailable("the cluster metadata is not loaded yet", code="no_leader")
        try:
            d = self.driver.read_index()
        except ProposalDropped:
            raise Unavailable("no Raft leader known: cannot read linearizably", code="no_leader") from None

        def expire() -> None:
            if not d.called:
                d.errback(Unavailable("read index not confirmed in time", code="read_timeout"))

        timer = self.reactor.callLater(self.proposal_timeout, expire)

        def done(_: object) -> None:
            if timer.active():
                timer.cancel()

        return d.addCallback(done)

    def answer(self, req: str, result: dict[str, Any]) -> None:
        """A proposal made here was applied (broker included): answer its caller."""
        w = self._waiting.pop(req, None)
        if w is not None and not w[0].called:
            took = time.perf_counter() - w[1]
            self.proposal_seconds.append(took)
            if self.on_proposal_latency is not None:
                self.on_proposal_latency(took)
            del self.proposal_seconds[:-_HISTORY]
            w[0].callback(result)

    # -- views ---------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """Whether this node is the Raft leader (the controller)."""
        return self.driver is not None and self.driver.is_leader

    def name_of(self, raft_id: int) -> str:
        """A node's name for a Raft id ("" for none)."""
        if not raft_id:
            return ""
        return self.names.get(raft_id) or self.metadata.node_name(raft_id) or str(raft_id)

    @property
    def leader_name(self) -> str:
        """The leader's node id, or "" when none is known."""
        return self.name_of(self.driver.leader) if self.driver is not None else ""

    @property
    def forced(self) -> str:
        """The cluster id this node forced (``--force-new-cluster``), or "" (``/readyz`` reads it)."""
        return self.recovery.forced

    def raft_view(self) -> dict[str, Any]:
        """The ``raft`` block of ``GET /v1/cluster``."""
        drv = self.driver
        if drv is None:
            return {
                "role": "recovering" if self.recovery.forcing or self.recovery.rejoining else "starting",
                "term": 0,
                "commit_index": 0,
                "applied": 0,
                "voters": [],
                "learners": [],
                "target_voters": voters.target_voters(len(self.voter_control.live_ids()), self.max_voters),
                "live_voters": 0,
                "fault_tolerance": 0,
                "fault_tolerant": False,
                "cluster_id": cluster_hex(self.ids.cluster_id),
            }
        n = drv.node
        lat = sorted(self.proposal_seconds)
        return {
            **self.voter_control.strength().as_dict(),
            "cluster_id": cluster_hex(self.ids.cluster_id),
            "forced_new_cluster": self.recovery.forced or None,
            "time_to_target_s": round(self.voter_control.time_to_target, 3)
            if self.voter_control.time_to_target is not None
            else None,
            "role": n.role.value,
            "term": n.term,
            "leader": self.leader_name,
            "commit_index": n.log.committed,
            "applied": drv.applied,
            "last_index": n.log.last_index(),
            "snapshot_index": drv.storage.snapshot().meta.index,
            "voters": sorted(self.name_of(v) for v in n.voters),
            "learners": sorted(self.name_of(v) for v in n.learners),
            "elections": drv.stats.elections,
            "leader_changes": drv.stats.leader_changes,
            "proposal_ms_p50": round(lat[len(lat) // 2] * 1000, 3) if lat else None,
        }

    def is_voter(self, raft_id: int) -> bool:
        """Whether ``raft_id`` is a voter of the Raft configuration this node uses."""
        return self.driver is not None and raft_id in self.driver.node.voters

    def is_foreign(self, view: dict[str, Any]) -> bool:
        """Whether a gossip member view belongs to another Raft cluster (see
        :meth:`sprawl.cluster.cluster_ids.ClusterIds.is_foreign`)."""
        return self.ids.is_foreign(view)

    @property
    def cluster_id(self) -> int | None:
        """The cluster this node's Raft state belongs to (None: not yet known; 0: from before ids)."""
        return self.ids.cluster_id

    def live_nodes(self) -> list[str]:
        """Registered nodes gossip sees alive (or suspect), this node included,
        sorted: where new partitions are placed."""
        return self.voter_control.live_nodes()

    def strength(self) -> voters.Strength:
        """How many voter failures the configuration this node applied survives now."""
        return self.voter_control.strength()

    @property
    def time_to_target(self) -> float | None:
        """Seconds from the last member joining to the voter target, as this node last saw it as leader."""
        return self.voter_control.time_to_target

    # -- the state its parts share --------------------------------------------------------

    def install_metadata(self, meta: Metadata) -> None:
        """Replace the applied metadata (a snapshot, a recovery) and learn its node names."""
        self.metadata = meta
        for name, n in meta.nodes.items():
            self.names[int(n["raft_id"])] = name

    def stop_driver(self) -> None:
        """Stop running Raft (its state is about to be replaced)."""
        if self.driver is not None:
            self.driver.stop()
        self.driver = None

    # -- applying (see sprawl.cluster.metadata_apply) -------------------------------------

    @property
    def new_topics(self) -> TopicWaiters:
        """Subscribers waiting for a topic to be created (see :meth:`wait_topic`)."""
        return self.metadata_apply.new_topics

    def wait_topic(self, name: str) -> defer.Deferred[None]:
        """Fires once a topic ``name`` is created here: its creation applied,
        broker and data plane included (it may have been made on any node);
        cancel to stop waiting."""
        return self.metadata_apply.wait_topic(name)

    def watch_topics(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(name)`` after each change to a topic (or its
        placement) is applied here, broker included (the data plane follows it)."""
        self.metadata_apply.watch_topics(listener)

    def metadata_snapshot(self) -> bytes:
        """The state machine's snapshot bytes (the driver stores them)."""
        return self.metadata_apply.metadata_snapshot()

    # -- recovery (see sprawl.cluster.recovery_adapter) -----------------------------------

    async def force_new_cluster(self) -> None:
        """``--force-new-cluster`` (see :meth:`ClusterRecovery.force_new_cluster`)."""
        await self.recovery.force_new_cluster()
