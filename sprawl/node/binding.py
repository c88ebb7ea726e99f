"""The hand-overs of the composition root: what is known only once other parts exist (see :mod:`sprawl.node`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from sprawl.cluster.control import ClusterControl
from sprawl.config import NodeConfig
from sprawl.gossip.udp import GossipNode
from sprawl.peer.frames import FEATURES, MIN_PROTOCOL, PROTOCOL

if TYPE_CHECKING:
    from sprawl.cluster.controller import PartitionController
    from sprawl.cluster.dataplane import DataPlane
    from sprawl.cluster.fault_watch import FaultWatch
    from sprawl.cluster.features import FeatureGate
    from sprawl.cluster.pipeline_loop import PipelineLoop
    from sprawl.forecast.feed import TrafficFeed
    from sprawl.http.api import SprawlAPI
    from sprawl.http.status import NodeInfo
    from sprawl.interfaces import Clock, PeerReactor
    from sprawl.metrics import NodeMetrics
    from sprawl.pubsub import Broker
    from sprawl.pubsub.links import ClusterLinks
    from sprawl.storage.integrity import Integrity
    from sprawl.storage.scrub import Scrubber

# The node's log lines keep the namespace they have always had (operators'
# log filters and tests select the "serving" line by it).
log = Logger(namespace="sprawl.tap")


def bind_cluster_parts(
    links: ClusterLinks,
    control: ClusterControl,
    plane: DataPlane,
    integrity: Integrity,
    scrubber: Scrubber,
) -> None:
    """Bind the parts below to those built on them, once these exist.

    The broker is built first (control, data plane and scrub are built on
    it), so it cannot be handed them at construction: it gets the forwarding
    :class:`~sprawl.pubsub.links.ClusterLinks`, bound here, in one step,
    before the data plane starts -- auto-creation through the Raft control,
    its own publishes through the data plane, group ownership to the
    partitions' leaders, the shared remote-segment lists to the Raft
    metadata.  The damage map (:meth:`~sprawl.storage.integrity.Integrity.attach`)
    is handed the cluster's repairs and the scrub (its progress is read by
    ``GET /v1/damage`` and the metrics) for the same reason: both are built
    on the broker that holds the map.
    """
    from sprawl.cluster.shared_tier import ClusterRemoteLog

    links.bind(creator=control, publisher=plane, group_owner=plane.groups)
    links.bind_remote_log(ClusterRemoteLog(control, plane))
    integrity.attach(repairs=plane.repairs, scrubber=scrubber)


def watch_faults(
    node_id: str,
    reactor: PeerReactor,
    broker: Broker,
    control: ClusterControl,
    plane: DataPlane,
    gossip: GossipNode,
    info: NodeInfo,
    tls: bool = False,
    metrics: NodeMetrics | None = None,
) -> FaultWatch:
    """The node's fault watch (:mod:`sprawl.cluster.fault_watch`), started, and
    its faults and the cluster feature gate handed to the HTTP API's ``info``.
    A part that must wait for every node asks ``watch.feature_gate().on(NAME)``."""
    from sprawl.cluster.fault_watch import FaultCollector, FaultWatch
    from sprawl.cluster.features import cluster_gate

    def gate() -> FeatureGate:
        states = plane.controller.member_states()
        members = [
            (m.node_id, m.state, m.meta) for m in gossip.members() if states.get(m.node_id) != "foreign"
        ]
        return cluster_gate(node_id, FEATURES, members, list(control.metadata.nodes), latched())

    def latched() -> list[str]:
        return list(control.metadata.features)

    def features() -> dict[str, Any]:
        return {"protocol": [MIN_PROTOCOL, PROTOCOL], "advertised": sorted(FEATURES), **gate().as_dict()}

    watch = FaultWatch(
        node_id, reactor, broker, control, plane, gossip, (MIN_PROTOCOL, PROTOCOL), tls=tls, feature_gate=gate
    )
    channel = control.channel
    watch.source = channel.source  # (probes leave from where the peer channel's connections do)
    watch.start()
    previous = channel.on_unreachable

    def unreachable(peer: str) -> None:
        previous(peer)
        watch.peer_lost(peer)  # a killed node's port refuses: probed now, not at its turn

    channel.on_unreachable = unreachable
    # A connection the peer opened here ended (its process killed: every
    # socket of it closes): probed now as well.
    channel.on_inbound_lost = watch.peer_lost
    info.watching_faults(watch.view, features)
    if metrics is not None:
        metrics.register(FaultCollector(watch))
    return watch


def announce_http(url: str, info: NodeInfo, gossip: GossipNode, control: ClusterControl) -> None:
    """Tell the parts that advertise this node where its HTTP API answers.

    The URL is known only once HTTP listens (``--http-port 0`` picks a free
    port), and the API, built before that, is built on the control and
    gossip: so it is set here, after the fact, in one place -- the node's own
    info, its gossip metadata, and the control (which names it in the node's
    Raft membership).
    """
    info.serving_http(url)
    gossip.set_meta(http=url)
    control.serving_http(url)


def make_traffic_feed(
    c: NodeConfig, reactor: Clock, gossip: GossipNode, metrics: NodeMetrics
) -> TrafficFeed | None:
    """The traffic forecaster and its feed (``--forecast``), or None when off:
    fed from the gossiped rates and this node's published and delivered
    counters (the ones the dashboard draws), read by the controller's balancer
    with ``--predictive-balance`` (and, with ``--earned-trust``, the
    forecaster distrusts a surprised partition's short forecasts for a season
    and the feed gives profiles:
    :mod:`sprawl.forecast.earned`)."""
    if not c.forecast:
        return None
    from sprawl.forecast.earned import earned_trust
    from sprawl.forecast.feed import DELIVERED, PUBLISHED, TrafficFeed
    from sprawl.forecast.holtwinters import ForecastConfig
    from sprawl.forecast.traffic import TrafficForecaster
    from sprawl.http.dashboard import counter_by_topic

    model = ForecastConfig(
        bucket=c.forecast_step,
        seasons=tuple(round(period / c.forecast_step) for period in c.forecast_season_periods),
    )
    earned = earned_trust(max(c.forecast_season_periods)) if c.earned_trust_on else None
    forecaster = TrafficForecaster(
        model,
        max_series=c.forecast_max_series,
        horizon=c.forecast_horizon,
        distrust=earned.distrust if earned is not None else 0.0,
        distrust_partition=earned.distrust_partition if earned is not None else False,
        distrust_profiles=earned.distrust_profiles if earned is not None else True,
    )
    return TrafficFeed(
        forecaster,
        reactor,
        gossip,
        counters=lambda: {
            PUBLISHED: counter_by_topic(metrics.published_messages),
            DELIVERED: counter_by_topic(metrics.delivered_messages),
        },
        interval=c.forecast_interval,
        predictive=c.predictive_balance,
        earned=earned,
    )


def bind_earned_trust(controller: PartitionController, feed: TrafficFeed) -> None:
    """With ``--earned-trust`` (the feed has :attr:`~sprawl.forecast.feed.TrafficFeed.earned`):
    the controller's balancer gets the partitions' profiles and the
    earned-trust balance values (:mod:`sprawl.forecast.earned`); otherwise nothing."""
    if feed.earned is None:
        return
    controller.profiles = feed.partition_profiles
    controller.balancer.config = feed.earned.balance(controller.balancer.config)


def run_pipelines(
    broker: Broker, control: ClusterControl, clock: Clock, api: SprawlAPI, metrics: NodeMetrics
) -> PipelineLoop:
    """The node's pipeline loop (derived topics, :mod:`sprawl.cluster.pipeline_loop`),
    started: it follows the pipelines of the Raft metadata, its lag is read by the
    HTTP API (``GET /v1/pipelines``), the dashboard and the metrics."""
    from sprawl.cluster.pipeline_loop import PipelineCollector, PipelineLoop

    loop = PipelineLoop(broker, lambda: control.metadata.pipelines, clock)
    api.pipelines.running = loop.lag
    api.pipelines.info.pipeline_stalled = loop.stalled
    metrics.register(PipelineCollector(loop))
    loop.start()
    return loop
