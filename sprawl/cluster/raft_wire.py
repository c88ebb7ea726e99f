"""The Raft wire on one node: Raft messages in peer frames, each after the
sender's cluster id (:mod:`sprawl.cluster.cluster_ids`), and what is refused
before the Raft core sees it.  An adapter (part of
:class:`~sprawl.cluster.control.ClusterControl`).

A frame is dropped when it does not decode, is misaddressed or spoofed
(its sender is not the peer the channel authenticated), carries a message
type that never comes from the wire, comes from a node that is not a member,
carries a snapshot or configuration change that does not check out
(:func:`message_flaw`), or belongs to another cluster.  A node without Raft
state adopts the cluster of the first leader that contacts it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from twisted.logger import Logger

from sprawl.cluster.cluster_ids import CLUSTER_HEADER, ClusterIds, cluster_hex
from sprawl.cluster.metadata import BadSnapshot, check_snapshot
from sprawl.cluster.placement import raft_id_of
from sprawl.peer.frames import RAFT
from sprawl.raft.messages import ConfChange, EntryType, Message, MessageType, decode_message, encode_message

if TYPE_CHECKING:
    from sprawl.cluster.control import ClusterControl

log = Logger()

#: Messages only a leader sends: a node without Raft state adopts the cluster of the first one.
_LEADER_MESSAGES = (MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP)
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


class RaftWire:
    """Sends this node's Raft messages and takes its peers' (see the module docstring)."""

    def __init__(self, control: ClusterControl, ids: ClusterIds) -> None:
        self.control = control
        self.ids = ids
        self.dropped_frames = 0
        #: Raft frames of another cluster (dropped).
        self.foreign_frames = 0
        #: Raft messages refused: from a node that is not a member, or carrying
        #: a snapshot or configuration change that does not check out.
        self.refused_not_member = 0
        self.refused_bad_snapshot = 0
        self._refusals_logged: dict[str, float] = {}
        #: Raft ids of the peers heard (:meth:`peer_heard`), by node id.
        self._raft_ids: dict[str, int] = {}

    def peer_heard(self, peer: str) -> None:
        """The peer channel delivered a frame other than Raft's from ``peer``
        (its replication traffic): the Raft leader counts it as hearing the
        peer for CheckQuorum (:meth:`~sprawl.raft.node.RaftNode.report_heard`)
        -- its Raft answers may be queued behind thousands of such frames."""
        drv = self.control.driver
        if drv is None:
            return
        rid = self._raft_ids.get(peer)
        if rid is None:
            if len(self._raft_ids) > 4096:
                self._raft_ids.clear()
            rid = self._raft_ids[peer] = raft_id_of(peer)
        drv.heard(rid)

    def send(self, m: Message) -> None:
        name = self.control.names.get(m.to)
        frame = CLUSTER_HEADER.pack(self.ids.cluster_id or 0) + encode_message(m)
        if name is None or not self.control.channel.send(name, RAFT, frame):
            if self.control.driver is not None:
                self.control.driver.report_unreachable(m.to)

    def received(self, peer: str, payload: bytes) -> None:
        if len(payload) < CLUSTER_HEADER.size:
            self.dropped_frames += 1
            return
        (cluster,) = CLUSTER_HEADER.unpack_from(payload)
        try:
            m = decode_message(payload[CLUSTER_HEADER.size :])
        except (msgspec.DecodeError, ValueError):
            self.dropped_frames += 1
            return
        if m.to != self.control.raft_id or m.frm != raft_id_of(peer) or m.frm == self.control.raft_id:
            self.dropped_frames += 1  # misaddressed or spoofed sender
            return
        if m.type in _LOCAL_ONLY:
            self.dropped_frames += 1
            return
        if self.control.driver is None:
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
        self.ids.claim(peer, cluster_hex(cluster))
        if self.ids.cluster_id is None:
            if m.type not in _LEADER_MESSAGES:
                self.foreign_frames += 1
                return
            self._adopt(cluster, peer)
        elif cluster != self.ids.cluster_id:
            self.foreign_frames += 1
            self.ids.log_foreign(peer, cluster)
            return
        self.control.names.setdefault(m.frm, peer)
        self.control.driver.step(m)

    def is_member(self, raft_id: int, peer: str) -> bool:
        """Whether Raft takes messages from ``peer``: a voter or learner of this
        node's configuration; or, while that configuration lags (it is empty:
        this node waits to be added; or the sender joined after it), a node
        gossip holds alive -- and on a cluster with a key or CA the peer channel
        has already checked that it is who it says."""
        drv = self.control.driver
        if drv is None:
            return False
        node = drv.node
        if raft_id in node.voters or raft_id in node.learners:
            return True
        if not node.voters and not node.learners:
            return True  # joining: the first leader to reach us brings the configuration
        return peer in self.control.voter_control.gossip_live

    def _log_refusal(self, peer: str, why: str) -> None:
        now = self.control.reactor.seconds()
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
        self.ids.set(cluster)
        log.info(
            "raft: joining cluster {cluster} (first contact from {peer})",
            cluster=cluster_hex(cluster),
            peer=peer,
        )
        if cluster and self.control.storage is not None:
            self.control.storage.set_cluster_id(cluster).addErrback(
                lambda f: log.failure("raft: storing the cluster id failed", f)
            )

    def unreachable(self, peer: str) -> None:
        if self.control.driver is not None:
            self.control.driver.report_unreachable(raft_id_of(peer))
