"""The test harness (not in the wheel): real node processes, clusters, SeaweedFS, a test PKI,
the peer channel in tests, and the waits on real time with their load-scaled bounds.  The
tests and the benchmark scripts import it as ``harness`` (``tests/`` is on pytest's
``pythonpath``; the benchmarks run with ``PYTHONPATH=tests``, see docs/benchmarks.md).

* :mod:`harness.reactor` -- the reactor pytest-twisted runs, ``WAIT`` and ``bounded``;
* :mod:`harness.waits` -- ``scaled``, ``poll_until``, ``until``, ``first_success``;
* :mod:`harness.nodes` -- :class:`NodeProcess`, the nodes' cleaned environment, the blocking
  HTTP helpers (``http_json``, ``metric_value``, ``metrics_text``) and the rule for missing tools;
* :mod:`harness.cluster` -- :class:`NodeCluster` and ``time_to_voters``;
* :mod:`harness.rolling` -- :class:`PublishLoad` (a load-balanced publish load) and ``restart_node``;
* :mod:`harness.seaweed` -- :class:`SeaweedProcess`;
* :mod:`harness.pki` -- ``make_test_pki``, ``make_node_cert``, ``make_key_file``;
* :mod:`harness.feeds` -- :class:`FeedReader` (SSE and WebSocket);
* :mod:`harness.peers` -- :class:`PeerNet`, :class:`HostilePeer`, ``send_gossip``.

The in-memory fakes the tests share (fake request, memory S3, fake RPC, fake broker) ship
in the package: :mod:`sprawl.testing`.
"""

from harness.cluster import NodeCluster, time_to_voters
from harness.feeds import FeedReader
from harness.nodes import (
    NODE_CONFIG_PREFIXES,
    READY_MARK,
    NodeProcess,
    free_port,
    http_json,
    in_ci,
    key_for_partition,
    metric_value,
    metrics_text,
    node_environment,
    node_pythonpath,
    partition_views,
    require_tools,
    twistd_command,
)
from harness.peers import HostilePeer, PeerNet, link_peers, send_gossip
from harness.pki import make_key_file, make_node_cert, make_test_pki
from harness.reactor import WAIT, bounded, the_reactor
from harness.seaweed import SeaweedProcess, weed_binary
from harness.waits import MAX_LOAD_FACTOR, first_success, load_factor, poll_until, scaled, until

__all__ = [
    "MAX_LOAD_FACTOR",
    "NODE_CONFIG_PREFIXES",
    "READY_MARK",
    "WAIT",
    "FeedReader",
    "HostilePeer",
    "NodeCluster",
    "NodeProcess",
    "PeerNet",
    "SeaweedProcess",
    "bounded",
    "first_success",
    "free_port",
    "http_json",
    "in_ci",
    "key_for_partition",
    "link_peers",
    "load_factor",
    "make_key_file",
    "make_node_cert",
    "make_test_pki",
    "metric_value",
    "metrics_text",
    "node_environment",
    "node_pythonpath",
    "partition_views",
    "poll_until",
    "require_tools",
    "scaled",
    "send_gossip",
    "the_reactor",
    "time_to_voters",
    "twistd_command",
    "until",
    "weed_binary",
]
