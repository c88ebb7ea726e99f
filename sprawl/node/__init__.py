"""The composition root: every object of one Sprawl node, built by constructor.

``twistd sprawl`` (:mod:`sprawl.tap`) parses the options into a
:class:`~sprawl.config.NodeConfig` and hands it to :class:`NodeService`,
which builds the node's parts in dependency order when it starts: metrics,
LMDB, the S3 tier, the broker (with its :class:`~sprawl.pubsub.links.ClusterLinks`),
the scrub, gossip and the peer channel, the peer RPC, the cluster control,
the data plane, then the HTTP API.  Only this module (and ``tap``) touches the
global reactor.  Services stop in reverse (the gossip adapter announces a
graceful leave first), so on SIGTERM the node stops accepting requests,
finishes queued commits and closes LMDB cleanly: everything acked is on disk.

What is known only later is handed over by methods called here, nowhere
else: :func:`bind_cluster_parts` (the broker's links upward, the repairs and
the scrub to its damage map, once the cluster parts built on the broker
exist), ``metrics.watch_state`` (the broker and the API's streams, read at
scrape time) and :func:`announce_http` (the HTTP URL, once HTTP listens).
"""

from sprawl.node.binding import announce_http, bind_cluster_parts, make_traffic_feed, watch_faults
from sprawl.node.service import STOP_HAND_OFF_SECONDS, STOP_REQUESTS_SECONDS, NodeService
from sprawl.node.settings import check_node_certificate, load_node_id, peer_tls, s3_settings, write_ports

__all__ = [
    "STOP_HAND_OFF_SECONDS",
    "STOP_REQUESTS_SECONDS",
    "NodeService",
    "announce_http",
    "bind_cluster_parts",
    "check_node_certificate",
    "load_node_id",
    "make_traffic_feed",
    "peer_tls",
    "s3_settings",
    "watch_faults",
    "write_ports",
]
