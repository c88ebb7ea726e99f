"""Recovery from a lost majority on one node: the adapter of the pure
:mod:`sprawl.cluster.recovery` (part of :class:`~sprawl.cluster.control.ClusterControl`).

* ``--force-new-cluster`` (:meth:`ClusterRecovery.force_new_cluster`): make
  this node the one voter of a new cluster (a new cluster id) built from
  everything it holds -- refused while a majority of its voters can still be
  reached (it asks the other nodes for their Raft status first).
* A survivor of the old configuration that finds its own majority gone and a
  forced cluster in gossip rejoins it: its Raft state is dropped (its
  partition data kept), and it is added there as a new member.
* Every node answers the ``raft_status`` peer RPC (what a recovering node
  asks): its cluster id, role, leader, term and voters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from twisted.internet import defer, task
from twisted.logger import Logger

from sprawl.cluster import recovery
from sprawl.cluster.cluster_ids import cluster_hex
from sprawl.cluster.metadata import Metadata, decode_command
from sprawl.errors import SprawlError
from sprawl.raft.lmdb_storage import LmdbRaftStorage
from sprawl.raft.messages import (
    ConfChange,
    ConfChangeType,
    ConfState,
    EntryType,
    HardState,
    Snapshot,
    SnapshotMeta,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from sprawl.cluster.control import ClusterControl
    from sprawl.peer.rpc import PeerRPC

log = Logger()

#: Gossip states that count as up.
_UP = ("alive", "suspect")
#: How many times ``status_wait`` a recovering node keeps asking a node that
#: gossip holds alive but has not answered yet.
_STATUS_PATIENCE = 6


class StartRefused(SprawlError):
    """The node must not start as asked (``--force-new-cluster`` while a
    majority of the voters can still be reached, or with nothing to recover)."""


class ClusterRecovery:
    """Forced recovery and rejoining (see the module docstring)."""

    def __init__(
        self,
        control: ClusterControl,
        rpc: PeerRPC | None,
        *,
        force_new_cluster: bool = False,
        rejoin_after: float = 5.0,
        status_wait: float = 5.0,
    ) -> None:
        self.control = control
        self.rpc = rpc
        #: Start without Raft until :meth:`force_new_cluster` ran (``--force-new-cluster``).
        self.forcing = force_new_cluster
        #: Seconds without a leader before a survivor looks for a forced cluster to rejoin.
        self.rejoin_after = rejoin_after
        #: Seconds :meth:`force_new_cluster` asks the other nodes before deciding.
        self.status_wait = status_wait
        #: The cluster id this process forced (``--force-new-cluster``), or "".
        self.forced = ""
        self.rejoining = False
        self._next_rejoin_check = 0.0
        if rpc is not None:
            rpc.register("raft_status", self._rpc_status)

    def _rpc_status(self, caller: str, body: Any, hops: int) -> dict[str, Any]:
        # The caller says where it listens: a node restarted on a new port (or
        # not yet in our gossip view) must still get the answer.
        if isinstance(body, dict) and isinstance(body.get("peer"), str) and caller != self.control.node_id:
            host, _, port = body["peer"].rpartition(":")
            if host and port.isdigit() and 0 < int(port) < 65536:
                self.control.channel.set_address(caller, host.strip("[]"), int(port))
        if isinstance(body, dict) and isinstance(body.get("cluster"), str) and len(body["cluster"]) <= 16:
            self.control.ids.claim(caller, body["cluster"])
        drv = self.control.driver
        return {
            "node_id": self.control.node_id,
            "cluster": cluster_hex(self.control.ids.cluster_id),
            "role": drv.node.role.value if drv is not None else "recovering",
            "leader": self.control.leader_name,
            "term": drv.node.term if drv is not None else 0,
            "voters": sorted(self.control.name_of(v) for v in drv.node.voters) if drv is not None else [],
        }

    async def _ask_status(
        self, names: list[str], wait: float, enough: Callable[[dict[str, dict[str, Any]]], bool]
    ) -> dict[str, dict[str, Any]]:
        """Ask ``names`` for their Raft status every half second until
        ``enough(answers)`` or everyone answered, for ``wait`` seconds -- and
        up to :data:`_STATUS_PATIENCE` times longer while one that has not
        answered is alive by gossip (it is up: a slow answer must not make
        it count as lost).  The answers by name."""
        answers: dict[str, dict[str, Any]] = {}
        if self.rpc is None or not names:
            return answers
        start = self.control.reactor.seconds()
        body = {"peer": self.control.peer}
        for _ in range(int(wait * _STATUS_PATIENCE / 0.5) + 2):
            self.control.voter_control.refresh(self.control.reactor.seconds())
            missing = [n for n in names if n not in answers]
            calls = []
            for name in missing:
                addr = self.control.metadata.nodes.get(name, {}).get("peer", "")
                if not self.control.channel.connected(name):
                    host, _, port = str(addr).rpartition(":")
                    if host and port.isdigit() and not self._known_address(name):
                        self.control.channel.set_address(name, host.strip("[]"), int(port))
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
            took = self.control.reactor.seconds() - start
            up = {str(v["id"]) for v in self.control.voter_control.members() if v["state"] == "alive"}
            if took >= wait and (
                took >= wait * _STATUS_PATIENCE or not up.intersection(names) - set(answers)
            ):
                break
            await task.deferLater(cast("IReactorTime", self.control.reactor), 0.5, lambda: None)
        return answers

    def _known_address(self, name: str) -> bool:
        return any(str(v["id"]) == name and not v.get("self") for v in self.control.voter_control.members())

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
        storage = self.control.storage
        assert storage is not None and self.control.driver is None, "call after start(), once"
        if storage.is_empty():
            raise StartRefused(
                "--force-new-cluster: this node holds no Raft state to recover from",
                code="nothing_to_recover",
            )
        meta, conf_voters, last = self._replay(storage)
        self.control.install_metadata(meta)
        voter_names = sorted(self.control.name_of(v) for v in conf_voters)
        if conf_voters == {self.control.raft_id}:
            log.warn("--force-new-cluster: this node is already the only voter; starting normally")
            self.forcing = False
            self.control.start_driver(storage)
            return
        others = sorted((set(meta.nodes) | set(voter_names)) - {self.control.node_id})
        mine = cluster_hex(self.control.ids.cluster_id)

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
            lambda a: recovery.majority_reachable(voter_names, self.control.node_id, same_cluster(a)),
        )
        up = same_cluster(answers)
        if recovery.majority_reachable(voter_names, self.control.node_id, up):
            reach = sorted((up | {self.control.node_id}) & set(voter_names))
            raise StartRefused(
                f"--force-new-cluster refused: a majority of the voters can still be reached "
                f"({', '.join(reach)} of {', '.join(voter_names)}): the cluster can still elect a "
                "leader. Start the node without --force-new-cluster.",
                code="majority_reachable",
            )
        lost = sorted(set(voter_names) - up - {self.control.node_id})
        plan = recovery.recover_placement(meta.placement, self.control.node_id, up)
        meta.placement = plan.placement
        meta.applied = last
        term = storage.term(last)
        cluster = self.control.ids.new_id()
        snap = Snapshot(SnapshotMeta(last, term, ConfState(voters=(self.control.raft_id,))), meta.snapshot())
        hs = HardState(max(storage.hard_state.term, term) + 1, 0, last)
        storage = await storage.replace(snap, hs, cluster)
        self.control.ids.set(cluster)
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
        await self.control.metadata_apply.reconcile()
        self.control.start_driver(storage)
        # Tell the other survivors at once (gossip spreads it too, in time):
        # they rejoin this cluster once they see their own majority is gone.
        if self.rpc is not None:
            for name in sorted(up):
                self.rpc.call(
                    name, "raft_status", {"peer": self.control.peer, "cluster": self.forced}, timeout=2.0
                ).addErrback(lambda f: None)

    def maybe_rejoin(self, now: float) -> None:
        """No leader for a while: if gossip shows a member of another cluster
        (one forced anew after this node's majority was lost), check that a
        majority of this node's voters is really gone, then rejoin it."""
        if self.rejoining or now < self._next_rejoin_check or self.control.driver is None:
            return
        others = [
            v
            for v in self.control.voter_control.members()
            if v["state"] in _UP and self.control.ids.in_other_cluster(v)
        ]
        if not others:
            return
        self._next_rejoin_check = now + max(self.rejoin_after, 1.0)
        self.rejoining = True

        async def run() -> None:
            try:
                await self._rejoin_if_lost(str(others[0]["id"]), self.control.ids.cluster_of(others[0]))
            finally:
                self.rejoining = False

        defer.ensureDeferred(run()).addErrback(lambda f: log.failure("raft: rejoining failed", f))

    async def _rejoin_if_lost(self, seen: str, theirs: str) -> None:
        drv = self.control.driver
        if drv is None:
            return
        voter_names = sorted(self.control.name_of(v) for v in drv.node.voters)
        mine = cluster_hex(self.control.ids.cluster_id)

        def same(answers: dict[str, dict[str, Any]]) -> set[str]:
            return {n for n, a in answers.items() if a.get("cluster") == mine and n in voter_names}

        others = [n for n in voter_names if n != self.control.node_id]
        answers = await self._ask_status(
            others,
            min(self.status_wait, 3.0),
            lambda a: recovery.majority_reachable(voter_names, self.control.node_id, same(a)),
        )
        if self.control.driver is not drv or drv.leader:
            return  # a leader turned up meanwhile
        if recovery.majority_reachable(voter_names, self.control.node_id, same(answers)):
            return
        log.critical(
            "raft: this node's cluster {ours} has lost its majority ({voters}; reachable: {up}) and "
            "{seen} belongs to cluster {theirs}: dropping this node's Raft state (partition data is "
            "kept) and rejoining as a new member",
            ours=mine or "(none)",
            voters=", ".join(voter_names),
            up=", ".join(sorted(same(answers) | {self.control.node_id})),
            seen=seen,
            theirs=theirs,
        )
        try:
            target: int | None = int(theirs, 16) or None
        except ValueError:
            target = None
        self.control.stop_driver()
        storage = self.control.storage
        assert storage is not None
        # An empty Raft state that already belongs to the forced cluster: it
        # can only ever be added there -- never adopted back by what is left
        # of the old configuration, where its forgotten votes would matter.
        storage = await storage.replace(None, HardState(), target)
        self.control.ids.set(target)
        self.control.voter_control.reset_leaderless()
        self.control.start_driver(storage)
        if self.rpc is not None:
            # Tell the forced cluster's node at once (gossip spreads it too, in time).
            body = {"peer": self.control.peer, "cluster": cluster_hex(target)}
            self.rpc.call(seen, "raft_status", body, timeout=2.0).addErrback(lambda f: None)
