"""Cluster ids: which Raft cluster this node, and each peer, belongs to.

Raft frames carry the sender's *cluster id* (8 bytes before the message).  A
node keeps only frames of its own cluster; a node without Raft state adopts
the id of the first leader that contacts it.  A cluster forced anew after
losing a majority (``--force-new-cluster``) has a new id, so what is left of
the old configuration can never exchange Raft messages with it.  Which
cluster a peer is in comes from what it said itself lately (the id on its
Raft frames, or in a status call), else from its gossip metadata.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from sprawl.cluster.features import advertised, lacking, protocol_range
from sprawl.peer.frames import MIN_PROTOCOL, PROTOCOL, UNSTATED_PROTOCOL

if TYPE_CHECKING:
    from sprawl.interfaces import Clock, Gossip

log = Logger()

#: The cluster id before each Raft message on the wire.
CLUSTER_HEADER = struct.Struct(">Q")
#: Seconds what a node said about its cluster (on a Raft frame, in a status
#: call) outranks its gossip metadata.
CLAIM_SECONDS = 30.0


def cluster_hex(cluster_id: int | None) -> str:
    """A cluster id as the API and gossip show it ("" for none)."""
    return format(cluster_id, "016x") if cluster_id else ""


class ClusterIds:
    """This node's cluster id (gossiped in its metadata) and what its peers
    said of theirs (see the module docstring)."""

    def __init__(
        self,
        reactor: Clock,
        rng: random.Random,
        membership: Gossip | None,
        latched: Callable[[], Collection[str]] = lambda: (),
    ) -> None:
        self.reactor = reactor
        self.rng = rng
        self.membership = membership
        #: The cluster this node's Raft state belongs to (None: not yet known; 0: from before ids).
        self.cluster_id: int | None = None
        #: node id -> (when, cluster id it said it is in).
        self._claims: dict[str, tuple[float, str]] = {}
        self._foreign_logged: dict[str, float] = {}
        #: The features the cluster latched (read from the Raft metadata by
        #: the control that owns these ids): a member lacking one is refused (issue 24).
        self.latched = latched

    def new_id(self) -> int:
        """A fresh random cluster id."""
        return self.rng.randrange(1, 1 << 64)

    def set(self, cluster_id: int | None) -> None:
        """This node is in ``cluster_id`` now (gossip says so too)."""
        self.cluster_id = cluster_id
        if self.membership is not None:
            self.membership.set_meta(cluster=cluster_hex(cluster_id))

    def claim(self, peer: str, cluster: str) -> None:
        """``peer`` said it is in ``cluster`` (hex) just now."""
        self._claims[peer] = (self.reactor.seconds(), cluster)

    def cluster_of(self, view: dict[str, Any]) -> str:
        """The cluster id (hex, "" unknown) a member view's node is in, as it said
        itself lately, else as its gossip metadata says."""
        claim = self._claims.get(str(view.get("id")))
        if claim is not None and self.reactor.seconds() - claim[0] < CLAIM_SECONDS:
            return claim[1]
        return str(view.get("cluster") or "")

    def is_foreign(self, view: dict[str, Any]) -> bool:
        """Whether a gossip member view is not of this cluster: of another Raft
        cluster (:meth:`in_other_cluster`), or speaking a peer protocol this
        node does not (:meth:`incompatible`).  It is not counted, added or
        given replicas until it joins this one (or is upgraded)."""
        return self.in_other_cluster(view) or self.incompatible(view) or bool(self.lacks_latched(view))

    def lacks_latched(self, view: dict[str, Any]) -> tuple[str, ...]:
        """The latched cluster features a gossip member view does not advertise
        (an older release started again in an upgraded cluster): it gets no
        Raft role and no replica.  Never this node itself."""
        latched = self.latched()
        if not latched or view.get("id") == getattr(self.membership, "node_id", None):
            return ()
        return lacking(latched, advertised(view))

    def in_other_cluster(self, view: dict[str, Any]) -> bool:
        """Whether a gossip member view belongs to another Raft cluster."""
        theirs = self.cluster_of(view)
        return bool(theirs) and self.cluster_id is not None and theirs != cluster_hex(self.cluster_id)

    @staticmethod
    def incompatible(view: dict[str, Any]) -> bool:
        """Whether a member gossips a peer protocol range that does not overlap
        this node's: the peer channel refuses it both ways, so it must get no
        Raft role and no replica (a member that states none is of a release
        before the negotiation: protocol 2)."""
        theirs = protocol_range(view) or (UNSTATED_PROTOCOL, UNSTATED_PROTOCOL)
        return theirs[1] < MIN_PROTOCOL or theirs[0] > PROTOCOL

    def log_foreign(self, peer: str, cluster: int) -> None:
        """Say (at most once a minute per peer) that ``peer``'s frames are dropped."""
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
