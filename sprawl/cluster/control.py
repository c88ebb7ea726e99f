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
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import msgspec
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from sprawl.cluster import voters
from sprawl.cluster.metadata import TOPIC_FIELDS, Metadata, decode_command, encode_command
from sprawl.cluster.placement import raft_id_of, replicas
from sprawl.delivery.topic_waiters import TopicWaiters
from sprawl.errors import SprawlError, Unavailable
from sprawl.peer.frames import RAFT
from sprawl.peer.tcp import PeerChannel
from sprawl.raft.driver import RaftDriver
from sprawl.raft.lmdb_storage import LmdbRaftStorage
from sprawl.raft.messages import ConfState, Entry, Snapshot, decode_message, encode_message
from sprawl.raft.node import Config, ProposalDropped, Role

log = Logger()

_HISTORY = 512


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
        self.bad_entries = 0
        #: Called with a topic's name after a change to it (or its placement)
        #: is applied here, broker included (the data plane follows it).
        self.on_topic_changed: Any = None
        #: Subscribers waiting for a topic to be created (see :meth:`wait_topic`).
        self.new_topics = TopicWaiters()

    # -- life ------------------------------------------------------------------

    async def start(self) -> None:
        """Recover Raft state (bootstrapping a one-voter cluster on a fresh
        founding node), restore the metadata, start ticking and listening."""
        conf = ConfState(voters=(self.raft_id,)) if self.bootstrap else None
        storage = await LmdbRaftStorage.open(self.store, conf)
        snap = storage.snapshot()
        self.metadata = Metadata.restore(snap.data)
        for name, n in self.metadata.nodes.items():
            self.names[int(n["raft_id"])] = name
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
        self.channel.handlers[RAFT] = self._received
        self.channel.on_unreachable = self._unreachable
        now = self.reactor.seconds()
        for rid in (*self.driver.node.voters, *self.driver.node.learners):
            self._last_alive[rid] = now
        self.driver.start()
        if self.driver.node.voters == {self.raft_id}:
            self.driver.node.campaign()  # alone: no need to wait out an election timeout
            self.driver.kick()
        loop = task.LoopingCall(self._control)
        loop.clock = self.reactor
        self._loop = loop
        loop.start(max(self.tick_seconds * 5, 0.1), now=True).addErrback(
            lambda f: log.failure("cluster control loop stopped", f)
        )

    def stop(self) -> None:
        """Stop ticking; waiting callers are told the node is stopping."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
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
        if name is None or not self.channel.send(name, RAFT, encode_message(m)):
            if self.driver is not None:
                self.driver.report_unreachable(m.to)

    def _received(self, peer: str, payload: bytes) -> None:
        try:
            m = decode_message(payload)
        except (msgspec.DecodeError, ValueError):
            self.dropped_frames += 1
            return
        if m.to != self.raft_id or m.frm != raft_id_of(peer):
            self.dropped_frames += 1  # misaddressed or spoofed sender
            return
        self.names.setdefault(m.frm, peer)
        if self.driver is not None:
            self.driver.step(m)

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
            for name in sorted(set(self.metadata.placement) | set(self.broker.topics)):
                self._topic_changed(None, name)

        return defer.ensureDeferred(reconcile())

    # -- the controller --------------------------------------------------------------------

    def _members(self) -> list[dict[str, Any]]:
        if self.membership is None:
            return []
        return list(self.membership.member_views())

    def _control(self) -> None:
        """Refresh peer addresses from gossip; as leader, move membership one step."""
        drv = self.driver
        if drv is None:
            return
        now = self.reactor.seconds()
        live: set[int] = {self.raft_id}
        self._last_alive[self.raft_id] = now
        for view in self._members():
            nid = view["id"]
            rid = raft_id_of(nid)
            self.names[rid] = nid
            if view.get("self"):
                continue
            host, _, port = str(view["peer"]).rpartition(":")
            if host and port.isdigit():
                self.channel.set_address(nid, host.strip("[]"), int(port))
            if view["state"] in ("alive", "suspect"):
                live.add(rid)
                self._last_alive[rid] = now
        if drv.node.role != Role.LEADER:
            return
        node = drv.node
        if node.pending_conf_index > drv.applied:
            return  # one change at a time
        if self.node_id not in self.metadata.nodes:
            self._register(self.node_id, self.peer, self.http)
            return
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
        )
        cc = voters.next_change(state)
        if cc is None:
            return
        name = self.names.get(cc.node_id, str(cc.node_id))
        if cc.type == voters.ConfChangeType.ADD_LEARNER and name not in self.metadata.nodes:
            m = next((v for v in self._members() if v["id"] == name), None)
            self._register(name, str(m["peer"]) if m else "", str(m.get("http", "")) if m else "")
            return
        try:
            drv.propose_conf_change(cc)
        except ProposalDropped:
            return
        log.info("raft: proposing {change} of {node}", change=cc.type.name.lower(), node=name)

    def _register(self, name: str, peer: str, http: str) -> None:
        try:
            self.propose(
                {"op": "put_node", "node_id": name, "raft_id": raft_id_of(name), "peer": peer, "http": http}
            )
        except SprawlError:
            pass

    # -- views ---------------------------------------------------------------------------

    def live_nodes(self) -> list[str]:
        """Registered nodes gossip sees alive (or suspect), this node included,
        sorted: where new partitions are placed."""
        states = {str(v["id"]): str(v["state"]) for v in self._members()}
        live = {n for n in self.metadata.nodes if states.get(n) in ("alive", "suspect")}
        live.add(self.node_id)
        return sorted(live)

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

    def raft_view(self) -> dict[str, Any]:
        """The ``raft`` block of ``GET /v1/cluster``."""
        drv = self.driver
        if drv is None:
            return {
                "role": "starting",
                "term": 0,
                "commit_index": 0,
                "applied": 0,
                "voters": [],
                "learners": [],
            }
        n = drv.node
        lat = sorted(self.proposal_seconds)
        return {
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
