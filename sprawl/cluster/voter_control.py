"""The voter and member controller on one node.  An adapter (part of
:class:`~sprawl.cluster.control.ClusterControl`); the decisions are
:mod:`sprawl.cluster.voters`' (pure).

Every node refreshes its peers' addresses from gossip.  The leader (the
controller) registers members gossip finds (once the peer channel has
reached them and they proved who they are), adds them as learners, promotes
them up to 3 or 5 voters and replaces voters that stay dead longer than a
grace period, one change at a time (:func:`sprawl.cluster.voters.next_change`).
It takes the next step as soon as the previous one is applied, a member joins
in gossip or a learner has caught up -- not at its next tick -- so a forming
cluster reaches its voter target within a second.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from sprawl.cluster import voters
from sprawl.cluster.drain import drained_nodes, placeable
from sprawl.cluster.placement import raft_id_of
from sprawl.errors import SprawlError
from sprawl.raft.messages import ConfChangeType
from sprawl.raft.node import ProposalDropped, Role

if TYPE_CHECKING:
    from sprawl.cluster.control import ClusterControl
    from sprawl.gossip.membership import MemberEvent
    from sprawl.interfaces import Delayed

log = Logger()

#: Gossip states that count as up.
UP = ("alive", "suspect")
#: Members not yet reached that the controller probes per round, and how often each.
_PROBES_PER_ROUND = 8
_PROBE_EVERY = 5.0


class VoterControl:
    """Keeps the Raft configuration following the live members (see the module docstring)."""

    def __init__(self, control: ClusterControl) -> None:
        self.control = control
        self._last_alive: dict[int, float] = {}
        #: Node ids gossip holds alive or suspect (refreshed by the control loop).
        self.gossip_live: set[str] = set()
        #: Members gossip holds up that the peer channel has not reached yet.
        self._unproven: list[str] = []
        #: When the controller last probed a member it has not reached yet.
        self._probed: dict[str, float] = {}
        self._soon_call: Delayed | None = None
        self._registering: dict[str, float] = {}
        #: A learner would be promoted once it has caught up: act when it has.
        self._promote_waiting = False
        self._leaderless_since: float | None = None
        self._conf_seen: tuple[frozenset[int], frozenset[int]] | None = None
        #: When the live member set last grew (reactor seconds), while the target is not reached.
        self._grew_at: float | None = None
        #: Seconds from the last member joining (in gossip) to the voter target, as this leader saw it.
        self.time_to_target: float | None = None
        #: Gossip's member views as of its last event (None: ask again).
        self._views: list[dict[str, Any]] | None = None

    def saw_alive(self, raft_ids: Iterable[int], now: float) -> None:
        """Count ``raft_ids`` as alive at ``now`` (a Raft configuration just loaded)."""
        for rid in raft_ids:
            self._last_alive[rid] = now

    def reset_leaderless(self) -> None:
        """Forget how long this node has been without a leader (its Raft state was replaced)."""
        self._leaderless_since = None

    def stop(self) -> None:
        """Cancel a step asked for the next reactor turn."""
        if self._soon_call is not None and self._soon_call.active():
            self._soon_call.cancel()
        self._soon_call = None

    def members(self) -> list[dict[str, Any]]:
        """Gossip's member views (:meth:`GossipNode.member_views`), built again
        only after a gossip event (:meth:`member_event`: a member joined,
        changed state, address or metadata) -- not on every step twice a
        second, each decoding every member's partition rates (issue 23)."""
        if self.control.membership is None:
            return []
        if self._views is None:
            self._views = list(self.control.membership.member_views())
        return list(self._views)

    def refresh(self, now: float) -> set[int]:
        """Peer addresses from gossip; the Raft ids of members up (this node included)."""
        live: set[int] = {self.control.raft_id}
        self._last_alive[self.control.raft_id] = now
        gossip_live: set[str] = set()
        unproven: list[str] = []
        drv = self.control.driver
        conf = (drv.node.voters | drv.node.learners) if drv is not None else set()
        for view in self.members():
            nid = view["id"]
            rid = raft_id_of(nid)
            self.control.names[rid] = nid
            if view.get("self"):
                continue
            host, _, port = str(view["peer"]).rpartition(":")
            if host and port.isdigit():
                self.control.channel.set_address(nid, host.strip("[]"), int(port))
            if view["state"] in UP and not self.control.ids.is_foreign(view):
                gossip_live.add(nid)
                # A member gossip found counts (and is registered, then added to
                # Raft) only once the peer channel reached it at its address and
                # the handshake showed it is that node (the cluster key, or its
                # certificate): fake members cost gossip work at most.
                if rid in conf or nid in self.control.channel.proven:
                    live.add(rid)
                    self._last_alive[rid] = now
                else:
                    unproven.append(nid)
        self.gossip_live = gossip_live
        self._unproven = unproven
        return live

    def _probe_unproven(self, now: float) -> None:
        """(Leader) dial a few members gossip found that the peer channel has not
        reached yet, each at most every few seconds."""
        for nid in self._unproven[:_PROBES_PER_ROUND]:
            if now - self._probed.get(nid, float("-inf")) >= _PROBE_EVERY:
                self._probed[nid] = now
                self.control.channel.probe(nid)
        if len(self._probed) > 4 * _PROBES_PER_ROUND + len(self.gossip_live):
            self._probed = {n: t for n, t in self._probed.items() if n in self.gossip_live}

    def soon(self) -> None:
        """Run the controller step in the next reactor turn (once, however often asked)."""
        if self._soon_call is None or not self._soon_call.active():
            self._soon_call = self.control.reactor.callLater(0, self.step)

    def member_event(self, ev: MemberEvent) -> None:
        """Gossip saw a member change: the member views are built again and
        the controller looks at once."""
        self._views = None
        if ev.kind in ("join", "alive") and self.control.driver is not None:
            st = self.strength()
            if st.voters < st.target:
                self._grew_at = self.control.reactor.seconds()  # the clock of time-to-target starts (again)
        if ev.kind != "refuted":
            self.soon()

    def advanced(self, applied: bool) -> None:
        """After each Ready: a committed change was applied, or a learner the
        controller waits for caught up -- take the next step now."""
        drv = self.control.driver
        if drv is None:
            return
        if applied:
            conf = (frozenset(drv.node.voters), frozenset(drv.node.learners))
            if conf != self._conf_seen:
                self._conf_seen = conf
                log.info(
                    "raft: configuration applied: {voters} voters ({names}), {learners} learners",
                    voters=len(conf[0]),
                    names=", ".join(sorted(self.control.name_of(v) for v in conf[0])),
                    learners=len(conf[1]),
                )
            self._check_target()
        if drv.node.role != Role.LEADER:
            return
        if applied or (self._promote_waiting and any(drv.node.caught_up(r) for r in drv.node.learners)):
            self.soon()

    def _check_target(self) -> None:
        """Log (once per growth of the membership) when the voter target is reached."""
        if self._grew_at is None or self.control.driver is None:
            return
        st = self.strength()
        if st.voters < st.target:
            return
        took = self.control.reactor.seconds() - self._grew_at
        self._grew_at = None
        if self.control.driver.node.role != Role.LEADER:
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

    def step(self) -> None:
        """Refresh peer addresses from gossip; as leader, move membership one step."""
        self._soon_call = None
        now = self.control.reactor.seconds()
        live = self.refresh(now)
        drv = self.control.driver
        if drv is None:
            return
        if drv.leader:
            self._leaderless_since = None
        elif self._leaderless_since is None:
            self._leaderless_since = now
        elif now - self._leaderless_since >= self.control.recovery.rejoin_after:
            self.control.recovery.maybe_rejoin(now)
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
            leader=self.control.raft_id,
            voters=frozenset(node.voters),
            learners=frozenset(node.learners),
            live=frozenset(live),
            dead_for=dead_for,
            caught_up=frozenset(r for r in node.learners if node.caught_up(r)),
            grace=self.control.dead_grace,
            max_voters=self.control.max_voters,
            addable=frozenset(int(n["raft_id"]) for n in self.control.metadata.nodes.values()),
        )
        cc = voters.next_change(state)
        if cc is None:
            # Would a learner be promoted once caught up?  Then act the moment it is.
            everyone = voters.next_change(replace(state, caught_up=frozenset(node.learners)))
            self._promote_waiting = everyone is not None and everyone.type == ConfChangeType.PROMOTE
            return
        self._promote_waiting = False
        name = self.control.names.get(cc.node_id, str(cc.node_id))
        try:
            drv.propose_conf_change(cc)
        except ProposalDropped:
            return
        log.info("raft: proposing {change} of {node}", change=cc.type.name.lower(), node=name)

    def _register_newcomers(self, live: set[int]) -> None:
        """Register (name and addresses, a normal entry) this node and every
        live member the metadata does not know yet -- all at once: only the
        configuration changes must go one at a time."""
        now = self.control.reactor.seconds()
        views = {str(v["id"]): v for v in self.members()}
        wanted = [self.control.node_id] + sorted(
            self.control.names[r] for r in live if r in self.control.names
        )
        for name in wanted:
            if name in self.control.metadata.nodes:
                self._registering.pop(name, None)
                continue
            if now - self._registering.get(name, float("-inf")) < self.control.proposal_timeout:
                continue  # already proposed
            if name == self.control.node_id:
                peer, http = self.control.peer, self.control.http
            else:
                v = views.get(name, {})
                peer, http = str(v.get("peer", "")), str(v.get("http", ""))
            self._registering[name] = now
            self._register(name, peer, http)

    def _register(self, name: str, peer: str, http: str) -> None:
        try:
            d = self.control.propose(
                {"op": "put_node", "node_id": name, "raft_id": raft_id_of(name), "peer": peer, "http": http}
            )
        except SprawlError:
            self._registering.pop(name, None)
            return

        def failed(_: Failure) -> None:
            self._registering.pop(name, None)

        d.addErrback(failed)

    def live_nodes(self) -> list[str]:
        """Registered nodes gossip sees alive (or suspect), this node included,
        less the drained ones, sorted: where new partitions are placed."""
        states = {
            str(v["id"]): "foreign" if self.control.ids.is_foreign(v) else str(v["state"])
            for v in self.members()
        }
        live = {n for n in self.control.metadata.nodes if states.get(n) in UP}
        live.add(self.control.node_id)
        # Drained nodes get no new partitions (sprawlctl cluster drain).
        return placeable(live, drained_nodes(self.control.metadata))

    def live_ids(self) -> set[int]:
        """Raft ids of the members gossip holds up (not of another cluster), this node included."""
        live = {self.control.raft_id}
        for v in self.members():
            if v["state"] in UP and not self.control.ids.is_foreign(v):
                live.add(raft_id_of(str(v["id"])))
        return live

    def strength(self) -> voters.Strength:
        """How many voter failures the configuration this node applied survives now."""
        drv = self.control.driver
        if drv is None:
            return voters.Strength(
                0, 0, 0, voters.target_voters(len(self.live_ids()), self.control.max_voters)
            )
        n = drv.node
        return voters.strength(n.voters, n.learners, self.live_ids(), self.control.max_voters)
