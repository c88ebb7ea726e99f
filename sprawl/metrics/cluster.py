"""The collectors of a cluster node's figures (gossip, Raft and the peer
channel, balancing, the data plane), read from those parts at scrape time and
registered with :meth:`sprawl.metrics.NodeMetrics.register` once the parts exist.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from sprawl.cluster.balance import Balancer
    from sprawl.cluster.control import ClusterControl
    from sprawl.cluster.dataplane import DataPlane
    from sprawl.gossip.udp import GossipNode


class GossipCollector:
    """Gossip membership figures read from the adapter at scrape time."""

    def __init__(self, gossip: GossipNode):
        self.gossip = gossip

    def describe(self) -> list:
        return []

    def collect(self) -> Any:
        g = self.gossip
        stats = g.stats
        members = GaugeMetricFamily(
            "sprawl_gossip_members", "Members in this node's gossip view, by state", labels=["state"]
        )
        for state, n in g.state_counts().items():
            members.add_metric([state], n)
        yield members
        for name, key, doc in (
            ("sprawl_gossip_probes", "probes_sent", "Failure-detector probes this node started"),
            ("sprawl_gossip_probe_failures", "probe_failures", "Probes that got no ack, direct or indirect"),
            ("sprawl_gossip_suspicions", "suspicions", "Members this node started to suspect"),
            (
                "sprawl_gossip_refuted",
                "refuted",
                "Suspicions of this node it refuted by bumping its incarnation (false positives)",
            ),
            ("sprawl_gossip_dead_declared", "dead_declared", "Suspects whose timeout ran out on this node"),
            ("sprawl_gossip_packets_sent", "packets_sent", "Gossip datagrams sent"),
            ("sprawl_gossip_packets_received", "packets_received", "Gossip datagrams accepted"),
            (
                "sprawl_gossip_push_pulls_limited",
                "push_pulls_limited",
                "Push-pull requests left unanswered by the per-source or total rate limit",
            ),
        ):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], stats.get(key, 0))
            yield c
        dropped = CounterMetricFamily(
            "sprawl_gossip_packets_dropped", "Gossip datagrams dropped, by reason", labels=["reason"]
        )
        for reason, n in g.dropped().items():
            dropped.add_metric([reason], n)
        yield dropped
        inc = GaugeMetricFamily("sprawl_gossip_incarnation", "This node's gossip incarnation number")
        inc.add_metric([], g.incarnation)
        yield inc


class RaftCollector:
    """Raft and peer-channel figures read from the cluster control (and the
    refusals of the data plane's peer protocols) at scrape time."""

    def __init__(self, control: ClusterControl, plane: DataPlane):
        self.control = control
        self.plane = plane

    def describe(self) -> list:
        return []

    def collect(self) -> Any:
        ctl = self.control
        if ctl.driver is None:
            return
        drv = ctl.driver
        node = drv.node
        strength = ctl.strength()
        for name, value, doc in (
            ("sprawl_raft_term", node.term, "This node's current Raft term"),
            ("sprawl_raft_commit_index", node.log.committed, "Highest Raft log index known committed"),
            ("sprawl_raft_applied_index", drv.applied, "Highest Raft log index applied to the metadata here"),
            ("sprawl_raft_last_index", node.log.last_index(), "Last index of this node's Raft log"),
            ("sprawl_raft_voters", len(node.voters), "Voters in the Raft configuration this node uses"),
            ("sprawl_raft_learners", len(node.learners), "Learners in the Raft configuration this node uses"),
            ("sprawl_raft_has_leader", 1 if node.lead else 0, "1 when this node knows a Raft leader"),
            (
                "sprawl_raft_target_voters",
                strength.target,
                "Voters the configuration should have for the members up now (1, 3 or 5)",
            ),
            (
                "sprawl_raft_fault_tolerance_voters",
                strength.fault_tolerance,
                "Voters that may fail while Raft keeps a majority (0 while below the target)",
            ),
            (
                "sprawl_raft_fault_tolerant",
                1 if strength.fault_tolerant else 0,
                "1 when the voter target is reached and every voter is up (/readyz?fault_tolerant=1)",
            ),
        ):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            yield g
        g = GaugeMetricFamily(
            "sprawl_raft_time_to_target_seconds",
            "Seconds from the last member joining (gossip) to the voter target, last measured as leader (NaN: never)",
        )
        g.add_metric([], ctl.time_to_target if ctl.time_to_target is not None else float("nan"))
        yield g
        role = GaugeMetricFamily("sprawl_raft_role", "1 for this node's Raft role", labels=["role"])
        for r in ("follower", "pre-candidate", "candidate", "leader"):
            role.add_metric([r], 1 if node.role.value == r else 0)
        yield role
        st = drv.stats
        peer = ctl.channel.stats
        for name, value, doc in (
            ("sprawl_raft_elections", st.elections, "Elections this node started (as candidate)"),
            ("sprawl_raft_leader_changes", st.leader_changes, "Times this node saw the leader change"),
            ("sprawl_raft_proposals", st.proposals, "Metadata proposals made on this node"),
            (
                "sprawl_raft_proposals_failed",
                st.proposals_failed,
                "Proposals refused or not committed in time",
            ),
            ("sprawl_raft_snapshots_taken", st.snapshots_taken, "Metadata snapshots this node wrote"),
            ("sprawl_raft_snapshots_installed", st.snapshots_installed, "Snapshots received from a leader"),
            ("sprawl_peer_frames_sent", peer.frames_sent, "Frames written to peer connections"),
            ("sprawl_peer_frames_received", peer.frames_received, "Frames received from peers"),
            ("sprawl_peer_connects", peer.connects, "Outbound peer connection attempts"),
            (
                "sprawl_peer_handshake_failures",
                peer.handshake_failures,
                "Peer connections refused at the hello",
            ),
            (
                "sprawl_peer_connections_refused",
                peer.connections_refused,
                "Inbound peer connections closed at once: over the connection cap, or evicted in their handshake",
            ),
        ):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], value)
            yield c
        dropped = CounterMetricFamily(
            "sprawl_peer_frames_dropped", "Peer frames dropped, by reason", labels=["reason"]
        )
        dropped.add_metric(["queue"], peer.frames_dropped_queue)
        dropped.add_metric(["oversize"], peer.frames_dropped_oversize)
        dropped.add_metric(["unhandled"], peer.frames_unhandled)
        dropped.add_metric(["undecodable"], ctl.wire.dropped_frames)
        dropped.add_metric(["other_cluster"], ctl.wire.foreign_frames)
        dropped.add_metric(["bad_tag"], peer.frames_auth_failed)
        dropped.add_metric(["too_large_to_send"], peer.frames_too_large)
        yield dropped
        refused = CounterMetricFamily(
            "sprawl_peer_messages_refused",
            "Peer messages refused before they reached their protocol, by what and why",
            labels=["reason"],
        )
        refused.add_metric(["raft_not_member"], ctl.wire.refused_not_member)
        refused.add_metric(["raft_bad_snapshot"], ctl.wire.refused_bad_snapshot)
        refused.add_metric(["replication"], self.plane.service.refused)
        refused.add_metric(["request"], self.plane.rpc.refused)
        yield refused


class BalanceCollector:
    """Load balancing figures read from the controller's balancer at scrape time:
    moves made by reason, and each live node's load against the mean at the
    last decision (the rest of the "why" is in ``GET /v1/cluster``)."""

    def __init__(self, balancer: Balancer):
        self.balancer = balancer

    def describe(self) -> list:
        return []

    def collect(self) -> Any:
        b = self.balancer
        moves = CounterMetricFamily(
            "sprawl_balance_moves",
            "Partition leaderships this node (as controller) moved to balance load, by reason",
            labels=["reason"],
        )
        for reason, n in sorted({"overloaded": 0, **b.moves_total}.items()):
            moves.add_metric([reason], n)
        yield moves
        ratio = GaugeMetricFamily(
            "sprawl_node_load_ratio",
            "Each live node's publish load (msgs/s + KiB/s of the partitions it leads) over the "
            "cluster mean, at the controller's last balancing decision",
            labels=["node"],
        )
        last = b.last
        if last is not None:
            for node, v in sorted(last.nodes.items()):
                ratio.add_metric([node], v.ratio)
        yield ratio


class DataPlaneCollector:
    """The data plane's figures at scrape time: remote feeds, partitions led
    and under-replicated, publishes forwarded and retried, failovers
    committed, group checkpoints written and adopted."""

    def __init__(self, plane: DataPlane):
        self.plane = plane

    def describe(self) -> list:
        return []

    def steps(self) -> Iterator[None]:
        """Before a scrape in steps (:meth:`sprawl.metrics.NodeMetrics.scrape_in_steps`)
        collects: the led partitions judged again, a slice a reactor turn
        (:meth:`DataPlane.refresh_led_slice`) -- after a start or a snapshot every one
        is (~100 ms of one turn at 10,000 on a loaded host, the largest part of the
        first scrape's stall once the lines were built in slices, tidy41);
        :meth:`collect` then finds nothing left to judge."""
        while not self.plane.refresh_led_slice():
            yield

    def collect(self) -> Any:
        plane = self.plane
        yield from self._feeds()
        s = plane.summary()
        yield GaugeMetricFamily(
            "sprawl_led_partitions", "Partitions this node leads (or holds alone)", value=s["leading"]
        )
        yield GaugeMetricFamily(
            "sprawl_under_replicated_partitions",
            "Partitions this node leads with a follower behind, or fewer replicas than the replication "
            "factor allows",
            value=s["under_replicated"],
        )
        yield CounterMetricFamily(
            "sprawl_forwarded_publishes",
            "Publishes of a partition led elsewhere, forwarded to its leader",
            value=s["forwarded"],
        )
        yield CounterMetricFamily(
            "sprawl_publish_retries",
            "Publishes retried after a refusal that proved nothing was written (a failover under way)",
            value=s["retried"],
        )
        yield CounterMetricFamily(
            "sprawl_failovers", "Partition leaders this node committed as controller", value=s["failovers"]
        )
        groups = plane.groups
        yield CounterMetricFamily(
            "sprawl_group_checkpoints_written",
            "Consumer-group checkpoints this node wrote into partitions it leads",
            value=groups.checkpoints_written,
        )
        yield CounterMetricFamily(
            "sprawl_group_checkpoints_adopted",
            "Consumer-group checkpoints this node adopted as a follower",
            value=groups.checkpoints_adopted,
        )

    def _feeds(self) -> Any:
        """The remote feeds' figures (partitions held elsewhere read here)."""
        v = self.plane.feeds.view()
        for name, doc, key in (
            (
                "sprawl_remote_feeds",
                "Remote feeds running (partitions held elsewhere read here)",
                "remote_feeds",
            ),
            (
                "sprawl_remote_feed_subscribers",
                "Local streams reading remote feeds",
                "remote_subscribers",
            ),
            (
                "sprawl_remote_feed_window_messages",
                "Records in remote feeds' windows",
                "remote_window_records",
            ),
            ("sprawl_remote_feed_window_bytes", "Bytes in remote feeds' windows", "remote_window_bytes"),
        ):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], v[key])
            yield g
        for name, doc, key in (
            (
                "sprawl_remote_feeds_started",
                "Remote feeds started (a partition's first local stream)",
                "remote_feeds_started",
            ),
            (
                "sprawl_remote_catch_up_reads",
                "Stream reads sent to a holder below a feed's window",
                "remote_catch_ups",
            ),
        ):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], v[key])
            yield c
