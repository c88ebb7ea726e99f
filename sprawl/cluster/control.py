"""Cluster control: the Raft driver, the peer channel, gossip and the broker
glued together on one node.  An adapter: it owns time and wiring, while the
decisions live in pure modules (:mod:`sprawl.raft.node`,
:mod:`sprawl.cluster.metadata`, :mod:`sprawl.cluster.voters`).

* Topic and group definitions are Raft proposals.  The waiting caller is
  answered once the entry is committed *and* applied on this node -- the
  broker's own durable write included -- so a 2xx means every later read on
  this node sees the change and a majority of voters hold it on disk.
* Every node applies the same log to its :class:`Metadata` and materialises
  topics and groups in its broker; a snapshot from the leader replaces the
  state and reconciles the broker with it.
* The leader (the controller) adds nodes gossip finds as learners, promotes
  them up to 3 or 5 voters and replaces voters that stay dead longer than a
  grace period, one change at a time (:func:`sprawl.cluster.voters.next_change`).
  It takes the next step as soon as the previous one is applied, a member
  joins in gossip or a learner has caught up -- not at its next tick -- so a
  forming cluster reaches its voter target within a second.
* Raft frames carry the sender's *cluster id* (8 bytes before the message).
  A node keeps only frames of its own cluster; a node without Raft state
  adopts the id of the first leader that contacts it.  A cluster forced anew
  after losing a majority (``--force-new-cluster``, :meth:`force_new_cluster`)
  has a new id, so what is left of the old configuration can never exchange
  Raft messages with it; a survivor of the old configuration that finds its
  own majority gone and a forced cluster in gossip rejoins it (its Raft state
  dropped, its partition data kept).
"""

from __future__ import annotations

import os
import random
import struct
import time
from dataclasses import replace
from typing import Any

import msgspec
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from sprawl.cluster import recovery, voters
from sprawl.cluster.metadata import (
    TOPIC_FIELDS,
    BadSnapshot,
    Metadata,
    check_snapshot,
    decode_command,
    encode_command,
)
from sprawl.cluster.placement import raft_id_of, replicas
from sprawl.delivery.topic_waiters import TopicWaiters
from sprawl.errors import SprawlError, Unavailable
from sprawl.peer.frames import RAFT
from sprawl.peer.tcp import PeerChannel
from sprawl.raft.driver import RaftDriver
from sprawl.raft.lmdb_storage import LmdbRaftStorage
from sprawl.raft.messages import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
    decode_message,
    encode_message,
)
from sprawl.raft.node import Config, ProposalDropped, Role

log = Logger()

_HISTORY = 512
#: The cluster id before each Raft message on the wire.
_CLUSTER = struct.Struct(">Q")
#: Messages only a leader sends: a node without Raft state adopts the cluster of the first one.
_LEADER_MESSAGES = (MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP)
#: Gossip states that count as up.
_UP = ("alive", "suspect")
#: How many times ``status_wait`` a recovering node keeps asking a node that
#: gossip holds alive but has not answered yet.
_STATUS_PATIENCE = 6
#: Seconds what a node said about its cluster (on a Raft frame, in a status
#: call) outranks its gossip metadata.
_CLAIM_SECONDS = 30.0


#: Members not yet reached that the controller probes per round, and how often each.
_PROBES_PER_ROUND = 8
_PROBE_EVERY = 5.0
#: Message types that never come from the wire.
_LOCAL_ONLY = frozenset((MessageType.HUP, MessageType.BEAT, MessageType.CHECK_QUORUM))


def message_flaw(m: Message) -> str | None:
    """Why a Raft message from a peer must be refused before the core sees it,
    or None: a snapshot (SNAP) must be one this node can store and restore --
    a valid configuration and valid metadata (:func:`check_snapshot`) -- and
    every configuration change an append carries must decode.  Checked before
    anything is stored, so a bad one is never persisted."""
    if m.type == MessageType.SNAP:
        snap = m.snapshot
        if snap is None or snap.meta.index <= 0 or snap.meta.term <= 0:
            return "a snapshot message without a snapshot"
        cs = snap.meta.conf_state
        if not cs.voters or set(cs.voters) & set(cs.learners):
            return "a snapshot whose configuration has no voters, or voters that are also learners"
        if any(not 0 < x < 1 << 64 for x in (*cs.voters, *cs.learners)):
            return "a snapshot whose configuration names invalid node ids"
        try:
            check_snapshot(snap.data, snap.meta.index)
        except BadSnapshot as e:
            return f"a snapshot that does not check out: {e}"
    for ent in m.entries:
        if ent.type == EntryType.CONF_CHANGE:
            try:
                cc = ConfChange.decode(ent.data)
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
                return f"a configuration change at index {ent.index} that does not decode"
            if not 0 < cc.node_id < 1 << 64:
                return f"a configuration change at index {ent.index} naming an invalid node"
    return None


class StartRefused(SprawlError):
    """The node must not start as asked (``--force-new-cluster`` while a
    majority of the voters can still be reached, or with nothing to recover)."""


def cluster_hex(cluster_id: int | None) -> str:
    """A cluster id as the API and gossip show it ("" for none)."""
    return format(cluster_id, "016x") if cluster_id else ""


class ClusterControl:
    """One node's part in keeping the cluster metadata (see the module docstring)."""

    def __init__(
        self,
        node_id: str,
        broker: Any,
        store: Any,
        reactor: Any,
        channel: PeerChannel,
        membership: Any = None,
        *,
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
        self.names: dict[int, str] = {self.raft_id: node_id}
        self._waiting: dict[str, tuple[defer.Deferred[dict[str, Any]], float]] = {}
        self._last_alive: dict[int, float] = {}
        self._creating: dict[str, defer.Deferred[Any]] = {}
        self._loop: task.LoopingCall | None = None
        self.proposal_seconds: list[float] = []
        #: Called with each answered proposal's latency (the metrics histogram).
        self.on_proposal_latency: Any = None
        self.dropped_frames = 0
        #: Raft frames of another cluster (dropped).
        self.foreign_frames = 0
        self.bad_entries = 0
        #: Raft messages refused: from a node that is not a member, or carrying
        #: a snapshot or configuration change that does not check out.
        self.refused_not_member = 0
        self.refused_bad_snapshot = 0
        self._refusals_logged: dict[str, float] = {}
        #: Node ids gossip holds alive or suspect (refreshed by the control loop).
        self._gossip_live: set[str] = set()
        #: Members gossip holds up that the peer channel has not reached yet.
        self._unproven: list[str] = []
        #: When the controller last probed a member it has not reached yet.
        self._probed: dict[str, float] = {}
        #: Start without Raft until :meth:`force_new_cluster` ran (``--force-new-cluster``).
        self.forcing = force_new_cluster
        #: Seconds without a leader before a survivor looks for a forced cluster to rejoin.
        self.rejoin_after = rejoin_after
        #: Seconds :meth:`force_new_cluster` asks the other nodes before deciding.
        self.status_wait = status_wait
        #: The cluster this node's Raft state belongs to (None: not yet known; 0: from before ids).
        self.cluster_id: int | None = None
        self.storage: LmdbRaftStorage | None = None
        self.rpc: Any = None
        self._soon_call: Any = None
        self._registering: dict[str, float] = {}
        #: A learner would be promoted once it has caught up: act when it has.
        self._promote_waiting = False
        self._leaderless_since: float | None = None
        self._next_rejoin_check = 0.0
        self._rejoining = False
        self._foreign_logged: dict[str, float] = {}
        #: node id -> (when, cluster id it said it is in).
        self._claims: dict[str, tuple[float, str]] = {}
        self._conf_seen: tuple[frozenset[int], frozenset[int]] | None = None
        #: The cluster id this process forced (``--force-new-cluster``), or "".
        self.forced = ""
        #: When the live member set last grew (reactor seconds), while the target is not reached.
        self._grew_at: float | None = None
        #: Seconds from the last member joining (in gossip) to the voter target, as this leader saw it.
        self.time_to_target: float | None = None

        #: Called with a topic's name after a change to it (or its placement)
        #: is applied here, broker included (the data plane follows it).
        self.on_topic_changed: Any = None
        #: Subscribers waiting for a topic to be created (see :meth:`wait_topic`).
        self.new_topics = TopicWaiters()

    # -- life ------------------------------------------------------------------

    async def start(self, storage: Any = None) -> None:
        """Recover Raft state (bootstrapping a one-voter cluster on a fresh
        founding node), restore the metadata, start ticking and listening.
        With ``force_new_cluster`` set, Raft itself waits for :meth:`force_new_cluster`.
        ``storage`` replaces the LMDB Raft storage (tests: one in memory)."""
        if storage is None:
            # A forced recovery never founds a cluster: an empty data dir there
            # is a mistake (it is refused), not a new cluster.
            conf = ConfState(voters=(self.raft_id,)) if self.bootstrap and not self.forcing else None
            storage = await LmdbRaftStorage.open(self.store, conf, cluster_id=self._new_cluster_id())
        self.storage = storage
        snap = storage.snapshot()
        self.metadata = Metadata.restore(snap.data)
        for name, n in self.metadata.nodes.items():
            self.names[int(n["raft_id"])] = name
        self._set_cluster_id(storage.cluster_id if storage.cluster_id or storage.is_empty() else 0)
        self.channel.handlers[RAFT] = self._received
        self.channel.on_unreachable = self._unreachable
        self.channel.on_proven = lambda peer: self._soon()
        listeners = getattr(self.membership, "listeners", None)
        if isinstance(listeners, list):
            listeners.append(self._member_event)
        if not self.forcing:
            self._start_driver(storage)
        loop = task.LoopingCall(self._control)
        loop.clock = self.reactor
        self._loop = loop
        loop.start(max(self.tick_seconds * 5, 0.1), now=True).addErrback(
            lambda f: log.failure("cluster control loop stopped", f)
        )

    def _new_cluster_id(self) -> int:
        return self.rng.randrange(1, 1 << 64)

    def _set_cluster_id(self, cluster_id: int | None) -> None:
        self.cluster_id = cluster_id
        set_meta = getattr(self.membership, "set_meta", None)
        if set_meta is not None:
            set_meta(cluster=cluster_hex(cluster_id))

    def _start_driver(self, storage: LmdbRaftStorage) -> None:
        """Run Raft on ``storage`` (the metadata already matches its snapshot)."""
        self.storage = storage
        snap = storage.snapshot()
        cfg = Config(
            id=self.raft_id,
            election_tick=self.election_ticks,
            heartbeat_tick=1,
            applied=snap.meta.index,
        )
        self.driver = RaftDriver(
            storage,
            cfg,
            self.reactor,
            self.rng,
            self._send,
            self._apply,
            self._restore,
            tick_seconds=self.tick_seconds,
            snapshot_entries=self.snapshot_entries,
            keep_entries=max(self.snapshot_entries // 4, 1),
            snapshot_data=self.metadata_snapshot,
        )
        self.driver.on_soft_state.append(self._leader_changed)
        self.driver.on_advanced.append(self._advanced)
        now = self.reactor.seconds()
        for rid in (*self.driver.node.voters, *self.driver.node.learners):
            self._last_alive[rid] = now
        self.driver.start()
        if self.driver.node.voters == {self.raft_id}:
            self.driver.node.campaign()  # alone: no need to wait out an election timeout
            self.driver.kick()

    def stop(self) -> None:
        """Stop ticking; waiting callers are told the node is stopping."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._soon_call is not None and self._soon_call.active():
            self._soon_call.cancel()
        self._soon_call = None
        if self.driver is not None:
            self.driver.stop()
        for req, (d, _) in list(self._waiting.items()):
            del self._waiting[req]
            if not d.called:
                d.errback(Unavailable("node is stopping", code="stopping"))

    async def hand_off(self, timeout: float = 3.0) -> str | None:
        """Before a graceful stop: if this node leads, hand leadership to the
        most caught-up live voter (Raft's TimeoutNow) and wait, bounded, for it
        to take over, so the cluster does not sit out an election timeout.
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
        loop.clock = self.reactor
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
        log.info("raft: handed leadership to {leader} before stopping", leader=self.leader_name)
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
        loop.clock = self.reactor
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

    # -- the wire --------------------------------------------------------------------

    def _send(self, m: Any) -> None:
        name = self.names.get(m.to)
        frame = _CLUSTER.pack(self.cluster_id or 0) + encode_message(m)
        if name is None or not self.channel.send(name, RAFT, frame):
            if self.driver is not None:
                self.driver.report_unreachable(m.to)

    def _received(self, peer: str, payload: bytes) -> None:
        if len(payload) < _CLUSTER.size:
            self.dropped_frames += 1
            return
        (cluster,) = _CLUSTER.unpack_from(payload)
        try:
            m = decode_message(payload[_CLUSTER.size :])
        except (msgspec.DecodeError, ValueError):
            self.dropped_frames += 1
            return
        if m.to != self.raft_id or m.frm != raft_id_of(peer) or m.frm == self.raft_id:
            self.dropped_frames += 1  # misaddressed or spoofed sender
            return
        if m.type in _LOCAL_ONLY:
            self.dropped_frames += 1
            return
        if self.driver is None:
            return  # Raft not running (yet): a forced start still deciding, or a rejoin under way
        if not self.is_member(m.frm, peer):
            self.refused_not_member += 1
            self._log_refusal(
                peer, "not a member of this node's Raft configuration nor a live member of the cluster"
            )
            return
        why = message_flaw(m)
        if why is not None:
            self.refused_bad_snapshot += 1
            log.warn("raft: refused a message from {peer}: {why}", peer=peer, why=why)
            return
        self._claim(peer, cluster_hex(cluster))
        if self.cluster_id is None:
            if m.type not in _LEADER_MESSAGES:
                self.foreign_frames += 1
                return
            self._adopt(cluster, peer)
        elif cluster != self.cluster_id:
            self.foreign_frames += 1
            self._foreign(peer, cluster)
            return
        self.names.setdefault(m.frm, peer)
        self.driver.step(m)

    def is_member(self, raft_id: int, peer: str) -> bool:
        """Whether Raft takes messages from ``peer``: a voter or learner of this
        node's configuration; or, while that configuration lags (it is empty:
        this node waits to be added; or the sender joined after it), a node
        gossip holds alive -- and on a cluster with a key or CA the peer channel
        has already checked that it is who it says."""
        drv = self.driver
        if drv is None:
            return False
        node = drv.node
        if raft_id in node.voters or raft_id in node.learners:
            return True
        if not node.voters and not node.learners:
            return True  # joining: the first leader to reach us brings the configuration
        return peer in self._gossip_live

    def _log_refusal(self, peer: str, why: str) -> None:
        now = self.reactor.seconds()
        if now - self._refusals_logged.get(peer, float("-inf")) < 30.0:
            return
        if len(self._refusals_logged) > 1024:
            self._refusals_logged.clear()
        self._refusals_logged[peer] = now
        log.warn("raft: ignoring messages from {peer}: {why}", peer=peer, why=why)

    def _adopt(self, cluster: int, peer: str) -> None:
        """A node without Raft state joins the cluster of the first leader that
        contacts it.  The id is written before anything Raft persists next
        (the storage writes in order), so a restart keeps it."""
        self._set_cluster_id(cluster)
        log.info(
            "raft: joining cluster {cluster} (first contact from {peer})",
            cluster=cluster_hex(cluster),
            peer=peer,
        )
        if cluster and self.storage is not None:
            self.storage.set_cluster_id(cluster).addErrback(
                lambda f: log.failure("raft: storing the cluster id failed", f)
            )

    def _foreign(self, peer: str, cluster: int) -> None:
        now = self.reactor.seconds()
        if now - self._foreign_logged.get(peer, float("-inf")) < 60.0:
            return
        self._foreign_logged[peer] = now
        log.warn(
            "raft: dropping messages from {peer}: it belongs to cluster {theirs}, this node to {ours}",
            peer=peer,
            theirs=cluster_hex(cluster) or "(none)",
            ours=cluster_hex(self.cluster_id) or "(none)",
        )

    def _unreachable(self, peer: str) -> None:
        if self.driver is not None:
            self.driver.report_unreachable(raft_id_of(peer))

    # -- proposals ---------------------------------------------------------------------

    def propose(self, cmd: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
        """Propose a metadata command; fires with its result once applied
        here, or fails with 503 (no leader, not committed in time)."""
        if self.driver is None:
            raise Unavailable("the cluster metadata is not loaded yet", code="no_leader")
        req = os.urandom(8).hex()
        data = encode_command({**cmd, "req": req})
        try:
            self.driver.propose(data)
        except ProposalDropped as e:
            raise Unavailable(f"no Raft leader can take the change now ({e})", code="no_leader") from None
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        started = time.perf_counter()
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

        timer = self.reactor.callLater(self.proposal_timeout, expire)

        def done(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        d.addBoth(done)
        return d

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

    # -- the metadata seam (same shape as LocalControl) ----------------------------------

    def _topic_command(self, name: str, body: dict[str, Any], if_absent: bool = False) -> dict[str, Any]:
        existing = self.broker.topics.get(name)
        cfg = self.broker.topic_config_from(
            name, body, existing.config if existing and not if_absent else None
        )
        config = {k: getattr(cfg, k) for k in TOPIC_FIELDS}
        nodes = self.live_nodes()
        old = self.metadata.placement.get(name, [])
        placement = [
            list(old[p]["replicas"]) if p < len(old) else replicas(name, p, nodes, cfg.replication_factor)
            for p in range(cfg.partitions)
        ]
        return {
            "op": "put_topic",
            "name": name,
            "config": config,
            "placement": placement,
            "if_absent": if_absent,
        }

    def put_topic(self, name: str, body: dict[str, Any]) -> defer.Deferred[tuple[Any, bool]]:
        """Create or update a topic through Raft; fires with (topic, created)."""
        cmd = self._topic_command(name, body)

        async def run() -> tuple[Any, bool]:
            result = await self._propose_checked(cmd)
            return self.broker.get_topic(name), bool(result["created"])

        return defer.ensureDeferred(run())

    def ensure_topic(self, name: str) -> defer.Deferred[Any]:
        """The topic, auto-created (through Raft) with defaults when allowed."""
        t = self.broker.topics.get(name)
        if t is not None:
            return defer.succeed(t)
        if not self.broker.config.auto_create_topics:
            return defer.maybeDeferred(self.broker.get_topic, name)  # the 404
        pending = self._creating.get(name)
        if pending is None:
            cmd = self._topic_command(name, {}, if_absent=True)

            async def run() -> Failure | None:
                try:
                    await self._propose_checked(cmd)
                    return None
                except Exception:
                    return Failure()
                finally:
                    self._creating.pop(name, None)

            # Concurrent publishes to a new topic share one proposal.
            pending = self._creating[name] = defer.ensureDeferred(run())
        waiter: defer.Deferred[Any] = defer.Deferred()

        def settle(outcome: Failure | None) -> Failure | None:
            if outcome is not None:
                waiter.errback(outcome)
            else:
                waiter.callback(None)
            return outcome

        pending.addCallback(settle)
        waiter.addCallback(lambda _: self.broker.get_topic(name))
        return waiter

    def delete_topic(self, name: str) -> defer.Deferred[None]:
        """Delete a topic everywhere through Raft."""
        self.broker.get_topic(name)  # 404 before proposing

        async def run() -> None:
            await self._propose_checked({"op": "delete_topic", "name": name})

        return defer.ensureDeferred(run())

    def put_group(self, topic: Any, group: str, body: dict[str, Any]) -> defer.Deferred[tuple[Any, bool]]:
        """Create or update a consumer group through Raft; fires with (group, created)."""
        g = topic.groups.get(group)
        cfg = self.broker.group_config_from(topic.name, group, body, g.config if g else None)

        async def run() -> tuple[Any, bool]:
            result = await self._propose_checked(
                {"op": "put_group", "topic": topic.name, "group": group, "config": cfg.to_dict()}
            )
            t = self.broker.get_topic(topic.name)
            return self.broker.get_group(t, group), bool(result["created"])

        return defer.ensureDeferred(run())

    def delete_group(self, topic: Any, group: str) -> defer.Deferred[None]:
        """Forget a consumer group everywhere through Raft."""
        self.broker.get_group(topic, group)

        async def run() -> None:
            await self._propose_checked({"op": "delete_group", "topic": topic.name, "group": group})

        return defer.ensureDeferred(run())

    # -- applying ------------------------------------------------------------------------

    def metadata_snapshot(self) -> bytes:
        """The state machine's snapshot bytes (the driver stores them)."""
        return self.metadata.snapshot()

    def _apply(self, e: Entry) -> Any:
        cmd = decode_command(e.data)
        if cmd is None:
            self.bad_entries += 1
            log.warn("raft entry {index} is not a metadata command; skipped", index=e.index)
            return None
        result = self.metadata.apply(e.index, cmd)
        if cmd.get("op") == "put_node" and "error" not in result:
            self.names[int(cmd["raft_id"])] = cmd["node_id"]
        d = self._materialise(cmd) if "error" not in result else defer.succeed(None)
        if "error" not in result and cmd.get("op") in ("put_topic", "delete_topic", "set_partition"):
            d.addCallback(self._topic_changed, str(cmd.get("topic") or cmd.get("name")))

        def answer(_: object) -> None:
            w = self._waiting.pop(str(cmd.get("req", "")), None)
            if w is not None and not w[0].called:
                took = time.perf_counter() - w[1]
                self.proposal_seconds.append(took)
                if self.on_proposal_latency is not None:
                    self.on_proposal_latency(took)
                del self.proposal_seconds[:-_HISTORY]
                w[0].callback(result)

        return d.addCallback(answer)

    def _materialise(self, cmd: dict[str, Any]) -> defer.Deferred[Any]:
        """Make the broker match the metadata for what ``cmd`` touched."""
        op = cmd["op"]
        if op == "put_topic":
            return self._ensure_broker_topic(cmd["name"])
        if op == "delete_topic":
            return self._drop_broker_topic(cmd["name"])
        if op == "put_group":
            return self._ensure_broker_group(cmd["topic"], cmd["group"])
        if op == "delete_group":
            t = self.broker.topics.get(cmd["topic"])
            if t is not None and cmd["group"] in t.groups:
                return self._quietly(self.broker.delete_group, t, cmd["group"])
        if op in ("remote_add", "remote_trim"):
            # The partition's shared remote list changed: its log follows
            # (the S3 tier; see sprawl.cluster.shared_tier).
            t = self.broker.topics.get(cmd["topic"])
            p = int(cmd["partition"])
            if t is not None and 0 <= p < len(t.logs):
                return self._quietly(self.broker.follow_remote, t, p)
        return defer.succeed(None)

    def _topic_changed(self, _: object, name: str) -> None:
        if self.on_topic_changed is not None:
            try:
                self.on_topic_changed(name)
            except Exception:
                log.failure("following the placement of {topic} failed", topic=name)
        if name in self.broker.topics:
            self.new_topics.fire(name)

    def wait_topic(self, name: str) -> defer.Deferred[None]:
        """Fires once a topic ``name`` is created here: its creation applied,
        broker and data plane included (it may have been made on any node);
        cancel to stop waiting."""
        return self.new_topics.wait(name)

    def _quietly(self, fn: Any, *args: Any) -> defer.Deferred[Any]:
        """Run a broker write; a refusal is logged, never stops the log."""

        def failed(f: Failure) -> None:
            log.warn("applying cluster metadata to the broker failed: {err}", err=str(f.value))

        return defer.maybeDeferred(fn, *args).addErrback(failed)

    def _ensure_broker_topic(self, name: str) -> defer.Deferred[Any]:
        t = self.metadata.topics.get(name)
        if t is None:
            return defer.succeed(None)
        config = t["config"]
        existing = self.broker.topics.get(name)
        if existing is not None:
            current = {k: getattr(existing.config, k) for k in TOPIC_FIELDS}
            if current == config or existing.config.partitions > config.get("partitions", 1):
                return defer.succeed(None)
        return self._quietly(self.broker.put_topic, name, dict(config))

    def _drop_broker_topic(self, name: str) -> defer.Deferred[Any]:
        if name not in self.broker.topics:
            return defer.succeed(None)
        return self._quietly(self.broker.delete_topic, name)

    def _ensure_broker_group(self, topic: str, group: str) -> defer.Deferred[Any]:
        t = self.broker.topics.get(topic)
        mt = self.metadata.topics.get(topic)
        if t is None or mt is None or group not in mt["groups"]:
            return defer.succeed(None)
        config = dict(mt["groups"][group])
        g = t.groups.get(group)
        if g is not None and g.config.to_dict() == config:
            return defer.succeed(None)
        if g is not None:
            config.pop("start", None)  # where a group starts is fixed at creation
        return self._quietly(self.broker.put_group, t, group, config)

    def _restore(self, snap: Snapshot) -> defer.Deferred[Any]:
        """Install a leader's snapshot: replace the metadata, reconcile the broker."""
        self.metadata = Metadata.restore(snap.data)
        for name, n in self.metadata.nodes.items():
            self.names[int(n["raft_id"])] = name
        log.info("raft: installed snapshot at index {index}", index=snap.meta.index)
        return self._reconcile()

    def _reconcile(self) -> defer.Deferred[Any]:
        """Make the broker match the whole metadata (topics, groups) and tell
        the data plane about every topic."""

        async def reconcile() -> None:
            for name in list(self.broker.topics):
                if name not in self.metadata.topics:
                    await self._drop_broker_topic(name)
            for name, t in self.metadata.topics.items():
                await self._ensure_broker_topic(name)
                bt = self.broker.topics.get(name)
                for g in list(bt.groups) if bt is not None else []:
                    if g not in t["groups"]:
                        await self._quietly(self.broker.delete_group, bt, g)
                for g in t["groups"]:
                    await self._ensure_broker_group(name, g)
                for p in range(len(bt.logs) if bt is not None else 0):
                    await self._quietly(self.broker.follow_remote, bt, p)
            for name in sorted(set(self.metadata.placement) | set(self.broker.topics)):
                self._topic_changed(None, name)

        return defer.ensureDeferred(reconcile())

    # -- the controller --------------------------------------------------------------------

    def _members(self) -> list[dict[str, Any]]:
        if self.membership is None:
            return []
        return list(self.membership.member_views())

    def is_foreign(self, view: dict[str, Any]) -> bool:
        """Whether a gossip member view belongs to another Raft cluster: it is
        not counted, added or given replicas until it joins this one.  Which
        cluster a node is in comes from what it said itself lately -- the
        cluster id on its Raft frames, or in a status call -- else from its
        gossip metadata (which can take a while to spread)."""
        theirs = self.cluster_of(view)
        return bool(theirs) and self.cluster_id is not None and theirs != cluster_hex(self.cluster_id)

    def cluster_of(self, view: dict[str, Any]) -> str:
        """The cluster id (hex, "" unknown) a member view's node is in, as it said
        itself lately, else as its gossip metadata says."""
        claim = self._claims.get(str(view.get("id")))
        if claim is not None and self.reactor.seconds() - claim[0] < _CLAIM_SECONDS:
            return claim[1]
        return str(view.get("cluster") or "")

    def _claim(self, peer: str, cluster: str) -> None:
        self._claims[peer] = (self.reactor.seconds(), cluster)

    def _refresh(self, now: float) -> set[int]:
        """Peer addresses from gossip; the Raft ids of members up (this node included)."""
        live: set[int] = {self.raft_id}
        self._last_alive[self.raft_id] = now
        gossip_live: set[str] = set()
        unproven: list[str] = []
        drv = self.driver
        conf = (drv.node.voters | drv.node.learners) if drv is not None else set()
        for view in self._members():
            nid = view["id"]
            rid = raft_id_of(nid)
            self.names[rid] = nid
            if view.get("self"):
                continue
            host, _, port = str(view["peer"]).rpartition(":")
            if host and port.isdigit():
                self.channel.set_address(nid, host.strip("[]"), int(port))
            if view["state"] in _UP and not self.is_foreign(view):
                gossip_live.add(nid)
                # A member gossip found counts (and is registered, then added to
                # Raft) only once the peer channel reached it at its address and
                # the handshake showed it is that node (the cluster key, or its
                # certificate): fake members cost gossip work at most.
                if rid in conf or nid in self.channel.proven:
                    live.add(rid)
                    self._last_alive[rid] = now
                else:
                    unproven.append(nid)
        self._gossip_live = gossip_live
        self._unproven = unproven
        return live

    def _probe_unproven(self, now: float) -> None:
        """(Leader) dial a few members gossip found that the peer channel has not
        reached yet, each at most every few seconds."""
        for nid in self._unproven[:_PROBES_PER_ROUND]:
            if now - self._probed.get(nid, float("-inf")) >= _PROBE_EVERY:
                self._probed[nid] = now
                self.channel.probe(nid)
        if len(self._probed) > 4 * _PROBES_PER_ROUND + len(self._gossip_live):
            self._probed = {n: t for n, t in self._probed.items() if n in self._gossip_live}

    def _soon(self) -> None:
        """Run the controller step in the next reactor turn (once, however often asked)."""
        if self._soon_call is None or not self._soon_call.active():
            self._soon_call = self.reactor.callLater(0, self._control)

    def _member_event(self, ev: Any) -> None:
        """Gossip saw a member change: the controller looks at once."""
        if ev.kind in ("join", "alive") and self.driver is not None:
            st = self.strength()
            if st.voters < st.target:
                self._grew_at = self.reactor.seconds()  # the clock of time-to-target starts (again)
        if ev.kind != "refuted":
            self._soon()

    def _advanced(self, applied: bool) -> None:
        """After each Ready: a committed change was applied, or a learner the
        controller waits for caught up -- take the next step now."""
        drv = self.driver
        if drv is None:
            return
        if applied:
            conf = (frozenset(drv.node.voters), frozenset(drv.node.learners))
            if conf != self._conf_seen:
                self._conf_seen = conf
                log.info(
                    "raft: configuration applied: {voters} voters ({names}), {learners} learners",
                    voters=len(conf[0]),
                    names=", ".join(sorted(self.name_of(v) for v in conf[0])),
                    learners=len(conf[1]),
                )
            self._check_target()
        if drv.node.role != Role.LEADER:
            return
        if applied or (self._promote_waiting and any(drv.node.caught_up(r) for r in drv.node.learners)):
            self._soon()

    def _check_target(self) -> None:
        """Log (once per growth of the membership) when the voter target is reached."""
        if self._grew_at is None or self.driver is None:
            return
        st = self.strength()
        if st.voters < st.target:
            return
        took = self.reactor.seconds() - self._grew_at
        self._grew_at = None
        if self.driver.node.role != Role.LEADER:
            return
        self.time_to_target = took
        log.info(
            "raft: voter target reached: {voters} voters of {target}, fault tolerance {ft}, "
            "{seconds:.3f} s after the last member joined",
            voters=st.voters,
            target=st.target,
            ft=st.fault_tolerance,
            seconds=took,
        )

    def _control(self) -> None:
        """Refresh peer addresses from gossip; as leader, move membership one step."""
        self._soon_call = None
        now = self.reactor.seconds()
        live = self._refresh(now)
        drv = self.driver
        if drv is None:
            return
        if drv.leader:
            self._leaderless_since = None
        elif self._leaderless_since is None:
            self._leaderless_since = now
        elif now - self._leaderless_since >= self.rejoin_after:
            self._maybe_rejoin(now)
        if drv.node.role != Role.LEADER:
            return
        node = drv.node
        self._probe_unproven(now)
        self._register_newcomers(live)
        if node.pending_conf_index > node.log.applied:
            return  # one change at a time
        conf = node.voters | node.learners
        for rid in conf:
            self._last_alive.setdefault(rid, now)
        dead_for = {rid: now - self._last_alive[rid] for rid in conf if rid not in live}
        state = voters.View(
            leader=self.raft_id,
            voters=frozenset(node.voters),
            learners=frozenset(node.learners),
            live=frozenset(live),
            dead_for=dead_for,
            caught_up=frozenset(r for r in node.learners if node.caught_up(r)),
            grace=self.dead_grace,
            max_voters=self.max_voters,
            addable=frozenset(int(n["raft_id"]) for n in self.metadata.nodes.values()),
        )
        cc = voters.next_change(state)
        if cc is None:
            # Would a learner be promoted once caught up?  Then act the moment it is.
            everyone = voters.next_change(replace(state, caught_up=frozenset(node.learners)))
            self._promote_waiting = everyone is not None and everyone.type == ConfChangeType.PROMOTE
            return
        self._promote_waiting = False
        name = self.names.get(cc.node_id, str(cc.node_id))
        try:
            drv.propose_conf_change(cc)
        except ProposalDropped:
            return
        log.info("raft: proposing {change} of {node}", change=cc.type.name.lower(), node=name)

    def _register_newcomers(self, live: set[int]) -> None:
        """Register (name and addresses, a normal entry) this node and every
        live member the metadata does not know yet -- all at once: only the
        configuration changes must go one at a time."""
        now = self.reactor.seconds()
        views = {str(v["id"]): v for v in self._members()}
        wanted = [self.node_id] + sorted(self.names[r] for r in live if r in self.names)
        for name in wanted:
            if name in self.metadata.nodes:
                self._registering.pop(name, None)
                continue
            if now - self._registering.get(name, float("-inf")) < self.proposal_timeout:
                continue  # already proposed
            if name == self.node_id:
                peer, http = self.peer, self.http
            else:
                v = views.get(name, {})
                peer, http = str(v.get("peer", "")), str(v.get("http", ""))
            self._registering[name] = now
            self._register(name, peer, http)

    def _register(self, name: str, peer: str, http: str) -> None:
        try:
            d = self.propose(
                {"op": "put_node", "node_id": name, "raft_id": raft_id_of(name), "peer": peer, "http": http}
            )
        except SprawlError:
            self._registering.pop(name, None)
            return

        def failed(_: Failure) -> None:
            self._registering.pop(name, None)

        d.addErrback(failed)

    # -- views ---------------------------------------------------------------------------

    def live_nodes(self) -> list[str]:
        """Registered nodes gossip sees alive (or suspect), this node included,
        sorted: where new partitions are placed."""
        states = {str(v["id"]): "foreign" if self.is_foreign(v) else str(v["state"]) for v in self._members()}
        live = {n for n in self.metadata.nodes if states.get(n) in _UP}
        live.add(self.node_id)
        return sorted(live)

    @property
    def is_leader(self) -> bool:
        """Whether this node is the Raft leader (the controller)."""
        return self.driver is not None and self.driver.is_leader

    def is_voter(self, raft_id: int) -> bool:
        """Whether ``raft_id`` is a voter of the Raft configuration this node uses."""
        return self.driver is not None and raft_id in self.driver.node.voters

    def name_of(self, raft_id: int) -> str:
        """A node's name for a Raft id ("" for none)."""
        if not raft_id:
            return ""
        return self.names.get(raft_id) or self.metadata.node_name(raft_id) or str(raft_id)

    @property
    def leader_name(self) -> str:
        """The leader's node id, or "" when none is known."""
        return self.name_of(self.driver.leader) if self.driver is not None else ""

    def raft_view(self) -> dict[str, Any]:
        """The ``raft`` block of ``GET /v1/cluster``."""
        drv = self.driver
        if drv is None:
            return {
                "role": "recovering" if self.forcing or self._rejoining else "starting",
                "term": 0,
                "commit_index": 0,
                "applied": 0,
                "voters": [],
                "learners": [],
                "target_voters": voters.target_voters(len(self._live_ids()), self.max_voters),
                "live_voters": 0,
                "fault_tolerance": 0,
                "fault_tolerant": False,
                "cluster_id": cluster_hex(self.cluster_id),
            }
        n = drv.node
        lat = sorted(self.proposal_seconds)
        return {
            **self.strength().as_dict(),
            "cluster_id": cluster_hex(self.cluster_id),
            "forced_new_cluster": self.forced or None,
            "time_to_target_s": round(self.time_to_target, 3) if self.time_to_target is not None else None,
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

    def _live_ids(self) -> set[int]:
        """Raft ids of the members gossip holds up (not of another cluster), this node included."""
        live = {self.raft_id}
        for v in self._members():
            if v["state"] in _UP and not self.is_foreign(v):
                live.add(raft_id_of(str(v["id"])))
        return live

    def strength(self) -> voters.Strength:
        """How many voter failures the configuration this node applied survives now."""
        drv = self.driver
        if drv is None:
            return voters.Strength(0, 0, 0, voters.target_voters(len(self._live_ids()), self.max_voters))
        n = drv.node
        return voters.strength(n.voters, n.learners, self._live_ids(), self.max_voters)

    # -- the status other nodes ask for (recovery) ---------------------------------------

    def attach_rpc(self, rpc: Any) -> None:
        """Answer ``raft_status`` calls (what a recovering node asks) on ``rpc``."""
        self.rpc = rpc
        rpc.register("raft_status", self._rpc_status)

    def _rpc_status(self, caller: str, body: Any, hops: int) -> dict[str, Any]:
        # The caller says where it listens: a node restarted on a new port (or
        # not yet in our gossip view) must still get the answer.
        if isinstance(body, dict) and isinstance(body.get("peer"), str) and caller != self.node_id:
            host, _, port = body["peer"].rpartition(":")
            if host and port.isdigit() and 0 < int(port) < 65536:
                self.channel.set_address(caller, host.strip("[]"), int(port))
        if isinstance(body, dict) and isinstance(body.get("cluster"), str) and len(body["cluster"]) <= 16:
            self._claim(caller, body["cluster"])
        drv = self.driver
        return {
            "node_id": self.node_id,
            "cluster": cluster_hex(self.cluster_id),
            "role": drv.node.role.value if drv is not None else "recovering",
            "leader": self.leader_name,
            "term": drv.node.term if drv is not None else 0,
            "voters": sorted(self.name_of(v) for v in drv.node.voters) if drv is not None else [],
        }

    async def _ask_status(self, names: list[str], wait: float, enough: Any) -> dict[str, dict[str, Any]]:
        """Ask ``names`` for their Raft status every half second until
        ``enough(answers)`` or everyone answered, for ``wait`` seconds -- and
        up to :data:`_STATUS_PATIENCE` times longer while one that has not
        answered is alive by gossip (it is up: a slow answer must not make
        it count as lost).  The answers by name."""
        answers: dict[str, dict[str, Any]] = {}
        if self.rpc is None or not names:
            return answers
        start = self.reactor.seconds()
        body = {"peer": self.peer}
        for _ in range(int(wait * _STATUS_PATIENCE / 0.5) + 2):
            self._refresh(self.reactor.seconds())
            missing = [n for n in names if n not in answers]
            calls = []
            for name in missing:
                addr = self.metadata.nodes.get(name, {}).get("peer", "")
                if not self.channel.connected(name):
                    host, _, port = str(addr).rpartition(":")
                    if host and port.isdigit() and not self._known_address(name):
                        self.channel.set_address(name, host.strip("[]"), int(port))
                d = self.rpc.call(name, "raft_status", body, timeout=1.0)
                d.addCallbacks(
                    lambda a, name=name: answers.__setitem__(name, a) if isinstance(a, dict) else None,
                    lambda f: None,
                )
                calls.append(d)
            if calls:
                await defer.DeferredList(calls, consumeErrors=True)
            if enough(answers) or len(answers) == len(names):
                break
            took = self.reactor.seconds() - start
            up = {str(v["id"]) for v in self._members() if v["state"] == "alive"}
            if took >= wait and (
                took >= wait * _STATUS_PATIENCE or not up.intersection(names) - set(answers)
            ):
                break
            await task.deferLater(self.reactor, 0.5, lambda: None)
        return answers

    def _known_address(self, name: str) -> bool:
        return any(str(v["id"]) == name and not v.get("self") for v in self._members())

    # -- recovery from a lost majority -------------------------------------------------------

    def _replay(self, storage: LmdbRaftStorage) -> tuple[Metadata, set[int], int]:
        """The metadata and voters after *every* entry ``storage`` holds (this
        node's log taken as it is), and the last index."""
        snap = storage.snapshot()
        meta = Metadata.restore(snap.data)
        conf_voters = set(snap.meta.conf_state.voters)
        learners = set(snap.meta.conf_state.learners)
        first, last = storage.first_index(), storage.last_index()
        for i in range(first, last + 1, 256):
            for e in storage.entries(i, min(i + 256, last + 1)):
                if e.type == EntryType.CONF_CHANGE:
                    # The same rules as RaftNode.apply_conf_change.
                    cc = ConfChange.decode(e.data)
                    nid = cc.node_id
                    if cc.type == ConfChangeType.ADD_VOTER or (
                        cc.type == ConfChangeType.PROMOTE and nid in learners
                    ):
                        learners.discard(nid)
                        conf_voters.add(nid)
                    elif cc.type == ConfChangeType.ADD_LEARNER and nid not in conf_voters:
                        learners.add(nid)
                    elif cc.type == ConfChangeType.REMOVE:
                        conf_voters.discard(nid)
                        learners.discard(nid)
                elif e.data:
                    cmd = decode_command(e.data)
                    if cmd is not None:
                        meta.apply(e.index, cmd)
        return meta, conf_voters, last

    async def force_new_cluster(self) -> None:
        """``--force-new-cluster``: make this node the one voter of a new
        cluster built from everything it holds -- unless a majority of its
        voters can still be reached, which raises :class:`StartRefused`.

        The other registered nodes are asked for their Raft status for
        ``status_wait`` seconds; the voters that answer in this node's
        cluster, with this node, must not be a majority.  Then, in one
        transaction: the log is folded into a snapshot at its last index (the
        entries this node holds are taken as committed), the configuration is
        this node alone, the term moves past every term it knew, and the
        cluster gets a new id.  Every partition keeps the replicas that
        answered (:func:`sprawl.cluster.recovery.recover_placement`); the
        broker is made to match the metadata, and Raft starts."""
        storage = self.storage
        assert storage is not None and self.driver is None, "call after start(), once"
        if storage.is_empty():
            raise StartRefused(
                "--force-new-cluster: this node holds no Raft state to recover from",
                code="nothing_to_recover",
            )
        meta, conf_voters, last = self._replay(storage)
        for name, n in meta.nodes.items():
            self.names[int(n["raft_id"])] = name
        self.metadata = meta
        voter_names = sorted(self.name_of(v) for v in conf_voters)
        if conf_voters == {self.raft_id}:
            log.warn("--force-new-cluster: this node is already the only voter; starting normally")
            self.forcing = False
            self._start_driver(storage)
            return
        others = sorted((set(meta.nodes) | set(voter_names)) - {self.node_id})
        mine = cluster_hex(self.cluster_id)

        def same_cluster(answers: dict[str, dict[str, Any]]) -> set[str]:
            return {n for n, a in answers.items() if a.get("cluster") == mine}

        log.warn(
            "--force-new-cluster: asking {n} other nodes for {s:.0f} s whether a majority of the voters "
            "({voters}) is still up",
            n=len(others),
            s=self.status_wait,
            voters=", ".join(voter_names),
        )
        answers = await self._ask_status(
            others,
            self.status_wait,
            lambda a: recovery.majority_reachable(voter_names, self.node_id, same_cluster(a)),
        )
        up = same_cluster(answers)
        if recovery.majority_reachable(voter_names, self.node_id, up):
            reach = sorted((up | {self.node_id}) & set(voter_names))
            raise StartRefused(
                f"--force-new-cluster refused: a majority of the voters can still be reached "
                f"({', '.join(reach)} of {', '.join(voter_names)}): the cluster can still elect a "
                "leader. Start the node without --force-new-cluster.",
                code="majority_reachable",
            )
        lost = sorted(set(voter_names) - up - {self.node_id})
        plan = recovery.recover_placement(meta.placement, self.node_id, up)
        meta.placement = plan.placement
        meta.applied = last
        term = storage.term(last)
        cluster = self._new_cluster_id()
        snap = Snapshot(SnapshotMeta(last, term, ConfState(voters=(self.raft_id,))), meta.snapshot())
        hs = HardState(max(storage.hard_state.term, term) + 1, 0, last)
        self.storage = await storage.replace(snap, hs, cluster)
        self._set_cluster_id(cluster)
        self.forcing = False
        self.forced = cluster_hex(cluster)
        log.critical(
            "FORCED A NEW CLUSTER {cluster}: this node is now its only voter, rebuilt from its log up to "
            "index {index}. Lost voters: {lost}. Other survivors: {up}. Partitions kept here: {kept}, "
            "led by other survivors: {handed}, lost with every replica (now empty here): {gone}.",
            cluster=cluster_hex(cluster),
            index=last,
            lost=", ".join(lost) or "none",
            up=", ".join(sorted(up)) or "none",
            kept=len(plan.kept),
            handed=len(plan.handed),
            gone=len(plan.lost),
        )
        for topic, p in plan.lost[:50]:
            log.critical(
                "FORCED A NEW CLUSTER: partition {topic}/{partition} had no surviving replica; "
                "its records are lost and it starts empty on this node",
                topic=topic,
                partition=p,
            )
        await self._reconcile()
        self._start_driver(self.storage)
        # Tell the other survivors at once (gossip spreads it too, in time):
        # they rejoin this cluster once they see their own majority is gone.
        for name in sorted(up):
            self.rpc.call(
                name, "raft_status", {"peer": self.peer, "cluster": self.forced}, timeout=2.0
            ).addErrback(lambda f: None)

    def _maybe_rejoin(self, now: float) -> None:
        """No leader for a while: if gossip shows a member of another cluster
        (one forced anew after this node's majority was lost), check that a
        majority of this node's voters is really gone, then rejoin it."""
        if self._rejoining or now < self._next_rejoin_check or self.driver is None:
            return
        others = [v for v in self._members() if v["state"] in _UP and self.is_foreign(v)]
        if not others:
            return
        self._next_rejoin_check = now + max(self.rejoin_after, 1.0)
        self._rejoining = True

        async def run() -> None:
            try:
                await self._rejoin_if_lost(str(others[0]["id"]), self.cluster_of(others[0]))
            finally:
                self._rejoining = False

        defer.ensureDeferred(run()).addErrback(lambda f: log.failure("raft: rejoining failed", f))

    async def _rejoin_if_lost(self, seen: str, theirs: str) -> None:
        drv = self.driver
        if drv is None:
            return
        voter_names = sorted(self.name_of(v) for v in drv.node.voters)
        mine = cluster_hex(self.cluster_id)

        def same(answers: dict[str, dict[str, Any]]) -> set[str]:
            return {n for n, a in answers.items() if a.get("cluster") == mine and n in voter_names}

        others = [n for n in voter_names if n != self.node_id]
        answers = await self._ask_status(
            others,
            min(self.status_wait, 3.0),
            lambda a: recovery.majority_reachable(voter_names, self.node_id, same(a)),
        )
        if self.driver is not drv or drv.leader:
            return  # a leader turned up meanwhile
        if recovery.majority_reachable(voter_names, self.node_id, same(answers)):
            return
        log.critical(
            "raft: this node's cluster {ours} has lost its majority ({voters}; reachable: {up}) and "
            "{seen} belongs to cluster {theirs}: dropping this node's Raft state (partition data is "
            "kept) and rejoining as a new member",
            ours=mine or "(none)",
            voters=", ".join(voter_names),
            up=", ".join(sorted(same(answers) | {self.node_id})),
            seen=seen,
            theirs=theirs,
        )
        try:
            target: int | None = int(theirs, 16) or None
        except ValueError:
            target = None
        drv.stop()
        self.driver = None
        storage = self.storage
        assert storage is not None
        # An empty Raft state that already belongs to the forced cluster: it
        # can only ever be added there -- never adopted back by what is left
        # of the old configuration, where its forgotten votes would matter.
        self.storage = await storage.replace(None, HardState(), target)
        self._set_cluster_id(target)
        self._leaderless_since = None
        self._start_driver(self.storage)
        if self.rpc is not None:
            # Tell the forced cluster's node at once (gossip spreads it too, in time).
            body = {"peer": self.peer, "cluster": cluster_hex(target)}
            self.rpc.call(seen, "raft_status", body, timeout=2.0).addErrback(lambda f: None)
