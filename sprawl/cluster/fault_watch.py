"""The fault watch on one node: the adapter of the pure :mod:`sprawl.cluster.diagnosis`.

Every :data:`INTERVAL` seconds it gathers what this node observes -- gossip
members and their metadata, the Raft voters and leader, the partitions of
the applied metadata and, for those it leads, each follower's position, the
LMDB use against its limit -- runs the diagnosis and keeps the faults for
``GET /v1/cluster/faults``, the dashboard and ``sprawlctl diagnose``.

Gossip alone cannot tell a killed node from a stopped one: both stop
answering probes.  So each member gossip has lost (suspect or dead) is
probed on its peer port, at most once per :data:`PROBE_EVERY` seconds and
for at most :data:`PROBE_TIMEOUT` seconds, and so is a live member as soon
as this node's peer connection to it fails or ends (:meth:`FaultWatch.peer_lost`),
and one live member per round in turn, each at most once per
:data:`LIVE_PROBE_EVERY` seconds (a killed node's port refuses at once,
before gossip's suspicion has run its course; not with a TLS peer channel,
where a live node says nothing first): a refused connection means no
process listens (killed, crashed), an accepted one on which the CHALLENGE
never comes means the process is there but answers nothing (SIGSTOP, hung),
and a timeout means the host or the network.  The probe only reads: it
closes as soon as the CHALLENGE arrives, so the peer logs nothing.

It also gossips this node's disk state (``disk_over`` in its metadata, on
change only), so every node names a node whose disk budget is exceeded; and,
on the Raft leader, latches the features every node has in the metadata
(:func:`sprawl.cluster.features.to_latch`), logging each member refused for
lacking a latched one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from twisted.internet import error, protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from sprawl.cluster.cluster_ids import ClusterIds
from sprawl.cluster.diagnosis import (
    LOST,
    Diagnosis,
    DiskObs,
    Fault,
    MemberObs,
    Observation,
    PartitionObs,
    RaftObs,
)
from sprawl.cluster.features import (
    FEATURE_LATCH_RETRY,
    LatchClock,
    advertised,
    lacking,
    protocol_range,
    to_latch,
)
from sprawl.peer.frames import PeerVersion, VersionRefused, check_protocol
from sprawl.peer.outbound import is_self_connection, source_binding
from sprawl.ticks import start_in_phase

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from sprawl.cluster.control import ClusterControl
    from sprawl.cluster.dataplane import DataPlane
    from sprawl.cluster.features import FeatureGate
    from sprawl.gossip.udp import GossipNode
    from sprawl.interfaces import PeerReactor
    from sprawl.pubsub import Broker

log = Logger()

#: Seconds between two rounds of the diagnosis.
INTERVAL = 0.5
#: The most of the reactor's time the rounds may take: a round that took
#: longer delays the next ones.
CPU_SHARE = 0.05
#: A lost member's peer port is probed at most this often.
PROBE_EVERY = 1.0
#: A live member's peer port at most this often (issue 23: a probe is a TCP
#: connection made, accepted and closed on both nodes, work an idle node did
#: once a second per member).  Gossip suspects a killed member within a few
#: seconds anyway, and then it is probed every :data:`PROBE_EVERY`.
LIVE_PROBE_EVERY = 5.0
#: A probe waits this long for the connection and then for the CHALLENGE.
PROBE_TIMEOUT = 1.0
#: A probe whose connection was closed before the peer said anything is made
#: again this soon, up to :data:`QUICK_PROBES` times per lost connection: a
#: killed process's listening socket still completes connections while the
#: kernel frees its memory, then resets them (13-16 ms for a 400 MB process
#: here), so the probe that :meth:`FaultWatch.peer_lost` makes at once is
#: often reset rather than refused -- and the refusal came only with the
#: next probe, a second later (issue 23: failover at 10,400 partitions,
#: its detection 0.99-1.27 s in two runs of five, 0.01-0.05 s in the others).
QUICK_REPROBE = 0.05
QUICK_PROBES = 3
#: The cluster feature gate is worked out again after this many seconds (it
#: follows gossip, which takes longer than that to tell every node of a member).
GATE_FRESH = 0.5
#: Replicas looked at in turn by a round that does not walk them all, besides
#: those the replication service ticks (a led core that is not idle -- a
#: follower behind, one restarted lower that answered -- is there at once):
#: so a led partition out of sync that nothing woke is still seen within
#: ``replicas / SLICE`` rounds (issue 23, scrub35: 256 before, a quarter of
#: every idle node's fault-watch time at 10,000 partitions).
SLICE = 64
#: A table of partitions without a leader past this many bytes while it holds at most
#: :data:`SMALL_KEYS` topics is rebuilt (a failover's burst gone, issue 23, tidy41).
SMALL_BYTES = 8192
SMALL_KEYS = 64
#: While a failover is at work on this node -- the replication service took a
#: batch of fences, leaderships or new leaders' first appends since the last
#: look, marked a failover phase (:mod:`sprawl.replication.timeline`) within
#: :data:`HOLD_QUIET` seconds, or a peer's port refused less than
#: :data:`HOLD_MIN` seconds ago (the fences are on their way) -- a round
#: waits, for at most :data:`HOLD_MAX`
#: seconds: with a node of interest a round walks every partition with a
#: replica on it (10,000: a third of a second of the reactor), and run in the
#: middle of the failover it held the fences' frame or their answers behind it
#: (issue 23, fail38).  The diagnosis names the dead node's partitions once
#: the failover has moved them (or after :data:`HOLD_MAX`).
HOLD_MIN = 0.5
HOLD_QUIET = 1.0
HOLD_MAX = 5.0


class _Probe(protocol.Protocol):
    """One probe connection: any byte from the peer means it answers."""

    transport: Any

    def __init__(self, done: Any) -> None:
        self.done = done
        self.timer: Any = None

    def connectionMade(self) -> None:
        if is_self_connection(self.transport):
            # (a dead node's port taken as this probe's own: nobody listens there)
            self.done.result("refused")
            self.transport.abortConnection()
            return
        self.timer = self.done.clock.callLater(PROBE_TIMEOUT, self._silent)

    def _silent(self) -> None:
        self.timer = None
        self.done.result("silent")
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self.done.result("answers")
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:
        closed = self.timer is not None and self.timer.active()
        if closed:
            self.timer.cancel()
        self.timer = None
        # closed (or reset) before saying anything (no-op once answered or timed out)
        self.done.result("silent", closed=closed)


class _ProbeFactory(protocol.ClientFactory):
    noisy = False

    def __init__(self, watch: FaultWatch, node: str) -> None:
        self.watch = watch
        self.clock = watch.clock
        self.node = node
        self.done_ = False

    def buildProtocol(self, addr: Any) -> _Probe:
        return _Probe(self)

    def result(self, reach: str, closed: bool = False) -> None:
        if not self.done_:
            self.done_ = True
            self.watch.probed(self.node, reach, closed=closed)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.result("refused" if reason.check(error.ConnectionRefusedError) else "unreachable")


def fresh_for(seconds: float, make: Callable[[], FeatureGate], clock: Any) -> Callable[[], FeatureGate]:
    """``make`` called again only once ``seconds`` have passed on ``clock``
    since its last answer (or the clock went back); its last answer meanwhile."""
    last: list[Any] = [0.0, None]

    def gate() -> FeatureGate:
        now = clock.seconds()
        if last[1] is None or not 0 <= now - last[0] < seconds:
            last[0], last[1] = now, make()
        return cast("FeatureGate", last[1])

    return gate


def _split_addr(addr: str) -> tuple[str, int] | None:
    host, _, port = str(addr).rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


class FaultWatch:
    """The diagnosis of one node, run on its reactor (see the module docstring)."""

    def __init__(
        self,
        node_id: str,
        reactor: PeerReactor,
        broker: Broker,
        control: ClusterControl,
        plane: DataPlane,
        gossip: GossipNode,
        protocol_range: tuple[int, int],
        lag_window: float = 3.0,
        tls: bool = False,
        feature_gate: Callable[[], FeatureGate] | None = None,
    ) -> None:
        self.node_id = node_id
        self.clock = reactor
        self.reactor = reactor
        #: The local address probes leave from (the peer channel's
        #: :attr:`~sprawl.peer.tcp.PeerChannel.source`), or None.
        self.source: str | None = None
        self.broker = broker
        self.control = control
        self.plane = plane
        #: Topics written to or re-placed since the last round, and the
        #: partitions without a leader as last seen: a round looks again only
        #: at those (issue 23: an idle round costs nothing per partition).
        self._changed: set[str] = set()
        if broker is not None:  # (a test may watch without one)
            self._changed = broker.touched.subscribe()
            self._changed.update(broker.topics)
        #: Topic → its partitions without a leader as last seen (a topic changed is
        #: looked at again whole: deleted, re-placed, or made again with fewer partitions).
        self._leaderless: dict[str, tuple[int, ...]] = {}
        #: Led partitions observed last round (looked at again until in sync),
        #: the replicas in the order the slices take them and where the next
        #: slice starts, and what a walk over every replica depends on (the
        #: nodes of interest, the member states, the registered nodes).
        self._led_seen: set[tuple[str, int]] = set()
        self._order: list[tuple[str, int]] = []
        self._order_at = 0
        self._walk_key: tuple[Any, ...] | None = None
        #: Replicas looked at by the rounds so far (the tests count an idle round's work).
        self.replicas_looked = 0
        self.gossip = gossip
        self.protocol = protocol_range
        #: The peer channel runs TLS: a live node says nothing before the client's
        #: TLS hello, so only lost members are probed (a live one would look silent).
        self.tls = tls
        self.core = Diagnosis(int(lag_window * 1000))
        self.faults: list[Fault] = []
        self.checked: float | None = None
        #: Last probe result of each lost member, and when the last probe started.
        self.reach: dict[str, tuple[str, float]] = {}
        self._turn = 0
        #: Members whose protocol range does not overlap, as logged.
        self._incompatible: dict[str, tuple[int, int]] = {}
        self._probed_at: dict[str, float] = {}
        self._probing: set[str] = set()
        #: Quick probes made since the node's connection was last lost.
        self._quick: dict[str, int] = {}
        self._quick_calls: dict[str, Any] = {}
        self._disk_over: bool | None = None
        self._loop: LoopingCall | None = None
        #: No round before this time (the CPU share, see :meth:`tick`).
        self._next_round = 0.0
        #: The replication service's failover batches as last seen, when a
        #: round was first held (None: none is), when a port last refused,
        #: and the rounds held (see :data:`HOLD_MAX`).
        self._work_seen: tuple[int, ...] = ()
        self._held_since: float | None = None
        self._refused_at = float("-inf")
        self.rounds_held = 0
        #: The cluster feature gate now (:func:`sprawl.cluster.features.cluster_gate`), from
        #: the composition root: ``feature_gate().on(NAME)`` before using a new feature.
        #: Worked out at most once per :data:`GATE_FRESH` seconds: the replication
        #: tick asks it ten times a second on every node (issue 23).
        self.feature_gate = None if feature_gate is None else fresh_for(GATE_FRESH, feature_gate, reactor)
        #: Members refused for lacking latched features, as logged; when a latch may be proposed again.
        self._lacking: dict[str, tuple[str, ...]] = {}
        self._latch_after = 0.0
        self.latch_clock = LatchClock()

    def start(self) -> None:
        """Run a round every :data:`INTERVAL` seconds."""
        self._loop = LoopingCall(self.tick)
        self._loop.clock = cast("IReactorTime", self.clock)  # (it uses only callLater and seconds)
        start_in_phase(self._loop, INTERVAL, now=True).addErrback(
            lambda f: log.failure("the fault watch stopped", f)  # type: ignore[arg-type]
        )

    def stop(self) -> None:
        """Stop the rounds."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        for call in self._quick_calls.values():
            if call.active():
                call.cancel()
        self._quick_calls.clear()

    # -- one round --------------------------------------------------------------------------

    def tick(self) -> None:
        """Observe, diagnose, probe the lost members, gossip the disk state --
        unless the last round was so long that running now would take more
        than :data:`CPU_SHARE` of the reactor (many partitions, most of them
        in trouble): then the next round waits."""
        now = self.clock.seconds()
        if now < self._next_round:
            return
        # The disk state first: a look at two numbers, gossiped whatever holds the
        # round (a full disk is news the other nodes act on at once).
        b = self.broker
        if b is not None and self.gossip is not None:
            self._gossip_disk(DiskObs(int(b.store.used_bytes), int(b.disk_hard_limit)))
        if self._failover_at_work(now):
            if self._held_since is None:
                self._held_since = now
            if now - self._held_since < HOLD_MAX:
                self.rounds_held += 1
                return
        self._held_since = None
        started = time.perf_counter()
        try:
            obs = self.observe()
            self.faults = self.core.diagnose(obs)
            self.checked = self.clock.seconds()
        except Exception:
            log.failure("fault diagnosis failed")
            return
        took = time.perf_counter() - started
        self._next_round = self.clock.seconds() + took / CPU_SHARE - INTERVAL
        live = []
        for m in obs.members:
            if m.state in LOST:
                self._maybe_probe(m.node_id)
            elif m.state == "alive":
                live.append(m.node_id)
        if live and not self.tls:
            self._turn = (self._turn + 1) % len(live)
            self._maybe_probe(live[self._turn], LIVE_PROBE_EVERY)
        known = {m.node_id for m in obs.members}
        for node in list(self.reach):
            if node not in known:
                del self.reach[node]
                self._probed_at.pop(node, None)
        self._gossip_disk(obs.disk)
        self._latch()

    def _gossip_disk(self, disk: DiskObs | None) -> None:
        """Gossip whether this node's LMDB is past its disk budget, when that changed."""
        over = disk is not None and disk.used > disk.limit
        if over != self._disk_over and self.gossip is not None:
            self._disk_over = over
            self.gossip.set_meta(disk_over=over)

    def _failover_at_work(self, now: float) -> bool:
        """Whether a failover is at work on this node (see :data:`HOLD_MAX`):
        a peer's port refused within :data:`HOLD_MIN`, the replication
        service marked a failover phase within :data:`HOLD_QUIET` (the
        phases between two batches: the answers awaited, the choices, the
        Raft round), or it took a batch of fences, leaderships or first
        appends since the last look."""
        svc = getattr(self.plane, "service", None) if self.plane is not None else None
        work = tuple(int(getattr(svc, k, 0)) for k in ("fence_batches", "lead_batches", "first_batches"))
        seen, self._work_seen = self._work_seen, work
        phases = getattr(getattr(svc, "timeline", None), "phases", None) or {}
        marked = max((p.last for p in phases.values()), default=float("-inf"))
        return now - self._refused_at < HOLD_MIN or now - marked < HOLD_QUIET or (bool(seen) and work != seen)

    def _latch(self) -> None:
        """As the Raft leader: latch the features every node has had for
        :data:`~sprawl.cluster.features.LATCH_AFTER` seconds (at most one
        proposal every :data:`FEATURE_LATCH_RETRY` seconds)."""
        if self.feature_gate is None or self.control is None or not self.control.is_leader:
            return
        now = self.clock.seconds()
        if now < self._latch_after:
            return
        latched = list(getattr(self.control.metadata, "features", ()) or ())
        new = self.latch_clock.ready(now, to_latch(self.feature_gate(), latched))
        if not new:
            return
        self._latch_after = now + FEATURE_LATCH_RETRY

        def done(result: dict[str, Any]) -> None:
            if result.get("changed"):
                log.info(
                    "cluster features latched on: {features} (every node has them; a node lacking one "
                    "is refused from now on)",
                    features=", ".join(new),
                )

        try:
            d = self.control.propose({"op": "latch_features", "features": new})
        except Exception as e:  # no Raft leader can take it now: a later round tries again
            log.info("latching cluster features must wait: {why}", why=str(e))
            return
        d.addCallbacks(
            done, lambda f: log.info("latching cluster features must wait: {why}", why=str(f.value))
        )

    def observe(self) -> Observation:
        """What this node sees now."""
        members = self._members()
        raft = self._raft()
        store = self.broker.store
        disk = DiskObs(int(store.used_bytes), int(self.broker.disk_hard_limit))
        return Observation(
            self.node_id,
            int(self.clock.seconds() * 1000),
            tuple(members),
            raft,
            tuple(self._partitions(members, disk)),
            disk,
            self.protocol,
            tuple(self.drained_nodes()),
        )

    def drained_nodes(self) -> list[str]:
        """The nodes the applied Raft metadata marks drained."""
        return list(getattr(self.control.metadata, "drained", ()) or ()) if self.control is not None else []

    def _members(self) -> list[MemberObs]:
        if self.gossip is None:
            return []
        states = self.plane.controller.member_states() if self.plane is not None else {}
        out = []
        for mem in self.gossip.members():
            meta = mem.meta if isinstance(mem.meta, dict) else {}
            if mem.node_id == self.node_id:
                continue
            incompatible = ClusterIds.incompatible(meta) and mem.state not in ("dead", "left")
            self._note_version(mem.node_id, protocol_range(meta) if incompatible else None)
            self._note_lacking(mem.node_id, mem.state, meta)
            if states.get(mem.node_id) == "foreign" and not incompatible:
                continue  # of another Raft cluster (an incompatible one is named)
            out.append(
                MemberObs(
                    mem.node_id,
                    mem.state,
                    self._reach_of(mem.node_id, mem.state),
                    meta.get("disk_over") is True,
                    protocol_range(meta),
                )
            )
        return out

    def _note_version(self, node: str, theirs: tuple[int, int] | None) -> None:
        """Log (once, and again if it changes) a member whose peer protocol range
        does not overlap this node's: it gets no Raft role and no replica."""
        if theirs is None:
            self._incompatible.pop(node, None)
            return
        if self._incompatible.get(node) == theirs:
            return
        self._incompatible[node] = theirs
        try:
            check_protocol(node, PeerVersion(theirs[1], theirs[0]), self.protocol[1], self.protocol[0])
        except VersionRefused as e:
            log.warn(
                "gossip member {node} refused: {why}; it gets no Raft role and no replica",
                node=node,
                why=str(e),
            )

    def _note_lacking(self, node: str, state: str, meta: dict[str, Any]) -> None:
        """Log (once, and again if it changes) a member that lacks a feature the
        cluster latched: it gets no Raft role and no replica."""
        latched = getattr(self.control.metadata, "features", ()) if self.control is not None else ()
        missing = lacking(latched, advertised(meta)) if latched and state not in ("dead", "left") else ()
        if not missing:
            self._lacking.pop(node, None)
            return
        if self._lacking.get(node) == missing:
            return
        self._lacking[node] = missing
        log.error(
            "gossip member {node} refused: it lacks the cluster feature(s) {features}, latched on once every "
            "node had them (an older release?); it gets no Raft role and no replica -- run the cluster's "
            "release on it",
            node=node,
            features=", ".join(missing),
        )

    def _reach_of(self, node: str, state: str) -> str:
        """The last probe's result: for a live member only while fresh (its
        port refused moments ago), for a lost one whatever was found last."""
        reach, at = self.reach.get(node, ("unknown", 0.0))
        if state in LOST or self.clock.seconds() - at <= LIVE_PROBE_EVERY + PROBE_EVERY + PROBE_TIMEOUT:
            return reach
        return "unknown"

    def _raft(self) -> RaftObs | None:
        if self.control is None:
            return None
        # The voters and the leader straight from the Raft node: the whole
        # ``raft_view`` (twice a second here) worked out the voter strength
        # from every gossip member's full view, partition rates decoded.
        drv = self.control.driver
        if drv is None:
            return RaftObs((), None)
        voters = tuple(sorted(str(self.control.name_of(v)) for v in drv.node.voters))
        return RaftObs(voters, self.control.leader_name or None)

    def _partitions(self, members: list[MemberObs], disk: DiskObs) -> list[PartitionObs]:
        """The partitions the diagnosis needs -- those this node leads that
        are not in sync (with their followers' positions), those without a
        leader, and those with a replica on a node of interest (lost, or past
        its disk budget) -- and no others: every round stays cheap with many
        idle partitions (issue 23).  The led replicas are all looked at only
        when what their verdict depends on changed (a node of interest, a
        member's state, the registered nodes) or while there is a node of
        interest; otherwise a round looks at those of the topics written to
        or re-placed since, those it observed last round, those the
        replication service ticks (a core not idle) and a slice of
        :data:`SLICE` others in turn."""
        out = []
        interest = {m.node_id for m in members if m.state in LOST or m.reach == "refused" or m.disk_over}
        interest.update(self.drained_nodes())  # how many leaderships a drained node has left
        if disk.used > disk.limit:
            interest.add(self.node_id)
        replicas = self.plane.service.replicas if self.plane is not None else {}
        states = self.plane.controller.member_states() if self.plane is not None else {}
        registered = getattr(getattr(self.control, "metadata", None), "nodes", None) or {}
        key = (frozenset(interest), tuple(sorted(states.items())), tuple(sorted(registered)))
        topics = self.broker.topics
        changed = self._changed
        if interest or key != self._walk_key:
            self._walk_key = key
            looked: Any = list(replicas)
        else:
            looked = set(self._led_seen)
            looked.update(
                (name, p) for name in changed if (t := topics.get(name)) for p in range(len(t.logs))
            )
            looked.update(self._slice(replicas))
            due = getattr(self.plane.service, "replicas_due", None) if self.plane is not None else None
            if due is not None:
                looked.update(due())
        wanted: dict[str, int] = {}
        led_seen: set[tuple[str, int]] = set()
        for part in looked:
            r = replicas.get(part)
            if r is None:
                continue
            self.replicas_looked += 1
            core = r.core
            if not core.is_leader:
                continue  # (first: most replicas are followers)
            name, p = part
            t = topics.get(name)
            if t is None or p >= len(t.logs):
                continue
            lg = t.logs[p]
            if name not in wanted:
                wanted[name] = int(self.plane.wanted_replicas(name, states))
            if core.idle and 1 + len(core.followers) >= wanted[name] and interest.isdisjoint(lg.replicas):
                # Every follower holds the log and the high watermark, none on a
                # node of interest: in sync, not lagging -- nothing to diagnose.
                continue
            led_seen.add(part)
            followers = tuple(sorted((str(f), int(st.match)) for f, st in core.followers.items()))
            out.append(
                PartitionObs(
                    name,
                    p,
                    tuple(str(x) for x in lg.replicas or ()),
                    lg.leader or None,
                    (self.node_id, *(f for f, m in followers if m >= core.hw)),
                    wanted[name],
                    int(core.hw),
                    followers,
                )
            )
        self._led_seen = led_seen
        leaderless = self._leaderless
        for name in changed:
            leaderless.pop(name, None)
            t = topics.get(name)
            if t is not None:
                ps = tuple(p for p, lg in enumerate(t.logs) if lg.replicas and not lg.leader)
                if ps:
                    leaderless[name] = ps
        if len(leaderless) <= SMALL_KEYS and sys.getsizeof(leaderless) > SMALL_BYTES:
            # (a dict keeps its table as keys go, and a walk over it walks the table: after
            # a failover left 10,000 partitions leaderless, every later round walked it)
            leaderless = self._leaderless = dict(leaderless.items())
        changed.clear()  # (clear() gives a set its small table back)
        if interest:
            # A node of interest: every partition with a replica on it.
            seen = (((name, p), lg) for name, t in topics.items() for p, lg in enumerate(t.logs))
        else:
            seen = (
                ((name, p), topics[name].logs[p])
                for name in sorted(leaderless)
                if name in topics
                for p in leaderless[name]
                if p < len(topics[name].logs)
            )
        for (name, p), lg in seen:
            reps = lg.replicas
            if reps and (not lg.leader or (interest and not interest.isdisjoint(reps))):
                r = replicas.get((name, p))
                if r is None or not r.core.is_leader:  # (one led here is observed above)
                    out.append(PartitionObs(name, p, tuple(str(x) for x in reps), lg.leader or None))
        return out

    def _slice(self, replicas: dict[tuple[str, int], Any]) -> list[tuple[str, int]]:
        """The next :data:`SLICE` replicas in turn (the order taken afresh
        once all were looked at)."""
        if self._order_at >= len(self._order):
            self._order, self._order_at = list(replicas), 0
        out = self._order[self._order_at : self._order_at + SLICE]
        self._order_at += SLICE
        return out

    # -- probes -----------------------------------------------------------------------------

    def _maybe_probe(self, node: str, every: float = PROBE_EVERY) -> None:
        """Probe ``node``'s peer port unless a probe of it runs or started
        less than ``every`` seconds ago."""
        now = self.clock.seconds()
        if node in self._probing or now - self._probed_at.get(node, -1e9) < every:
            return
        addr = self._peer_addr(node)
        if addr is None:
            return
        self._probed_at[node] = now
        self._probing.add(node)
        try:
            kw = source_binding(self.source, addr[0])
            self.reactor.connectTCP(addr[0], addr[1], _ProbeFactory(self, node), timeout=PROBE_TIMEOUT, **kw)
        except Exception:
            self._probing.discard(node)

    def _quick_probe(self, node: str) -> None:
        self._quick_calls.pop(node, None)
        self._maybe_probe(node, 0.0)

    def peer_lost(self, node: str) -> None:
        """The peer channel's connection to ``node`` failed or ended: probe
        it now (at most once per :data:`PROBE_EVERY`) -- a killed node's port
        refuses at once, so it is named without waiting for the next live
        probe's turn or for gossip's suspicion."""
        if not self.tls and node != self.node_id:
            self._quick.pop(node, None)
            self._maybe_probe(node)

    def _peer_addr(self, node: str) -> tuple[str, int] | None:
        for mem in self.gossip.members():
            if mem.node_id == node:
                meta = mem.meta if isinstance(mem.meta, dict) else {}
                got = _split_addr(meta.get("peer", ""))
                return got or (str(mem.addr[0]), int(mem.addr[1]))
        return None

    def probed(self, node: str, reach: str, *, closed: bool = False) -> None:
        """A probe's result.  A refused one, on the controller, fails over
        the leaderships of ``node`` now unless it was heard since the probe
        began (:meth:`~sprawl.replication.service.ReplicationService.node_refused`):
        no process listens on its peer port, so waiting out the beat timeout
        only keeps its partitions without a leader (issue 23).  One whose
        connection was ``closed`` before the peer said anything (a dying
        process's listening socket) is made again :data:`QUICK_REPROBE` later,
        at most :data:`QUICK_PROBES` times per lost connection."""
        self._probing.discard(node)
        if reach != "silent":
            self._quick.pop(node, None)
        elif closed and self._quick.get(node, 0) < QUICK_PROBES:
            self._quick[node] = self._quick.get(node, 0) + 1
            self._quick_calls[node] = self.clock.callLater(QUICK_REPROBE, self._quick_probe, node)
        if reach == "refused":
            self._refused_at = self.clock.seconds()
        if reach == "refused" and self.plane is not None:
            since = self._probed_at.get(node, self.clock.seconds())
            # Remembered on every node: one that becomes the controller soon
            # after (the kill cost the old one its Raft leadership) fails the
            # node over at its first judgement, not a beat timeout later.
            self.plane.service.liveness.refused(node, since)
            if self.plane.service.node_refused(node, since):
                log.info(
                    "fault watch: {node}'s peer port refuses connections; its leaderships fail over",
                    node=node,
                )
        old = self.reach.get(node, ("unknown", 0.0))[0]
        self.reach[node] = (reach, self.clock.seconds())
        if reach != old:
            self.tick()  # name (or clear) it now rather than at the next round

    # -- views ------------------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """``GET /v1/cluster/faults``."""
        return {
            "node_id": self.node_id,
            "checked_at": self.checked,
            "faults": [f.as_dict() for f in self.faults],
        }


class FaultCollector:
    """``sprawl_faults{code,severity,node}``: the faults this node names now
    (1 each), read at scrape time -- what an alert rule watches; and
    ``sprawl_node_drained{node}``: the drained nodes (1 each)."""

    def __init__(self, watch: FaultWatch) -> None:
        self.watch = watch

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        g = GaugeMetricFamily(
            "sprawl_faults",
            "Faults this node names now (GET /v1/cluster/faults), by code, severity and node at fault",
            labels=["code", "severity", "node"],
        )
        for f in self.watch.faults:
            g.add_metric([f.code, f.severity, f.node or ""], 1)
        yield g
        drained = GaugeMetricFamily(
            "sprawl_node_drained",
            "Nodes the Raft metadata marks drained (sprawlctl cluster drain), 1 each, by node",
            labels=["node"],
        )
        for n in self.watch.drained_nodes():
            drained.add_metric([n], 1)
        yield drained
