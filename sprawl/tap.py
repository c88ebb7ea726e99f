"""The composition root: ``twistd sprawl`` options and the node's services.

Only this module touches the global reactor.  Services start in dependency
order (storage → broker → peer listener and gossip → HTTP) and stop in
reverse (the gossip adapter announces a graceful leave first), so on
SIGTERM the node stops accepting requests, finishes queued commits and closes
LMDB cleanly: everything acked is on disk.
"""

from __future__ import annotations

import gc
import json
import os
import random
import socket
import sys
import time
import uuid
from typing import Any

from twisted.application import service
from twisted.internet import defer, threads
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from sprawl import __version__
from sprawl.cluster.control import ClusterControl, StartRefused
from sprawl.config import (
    ConfigError,
    NodeConfig,
    load_config_file,
    parse_bool,
    parse_cluster_key,
    parse_duration,
    parse_port,
    parse_seeds,
    parse_size,
)
from sprawl.gossip import GossipConfig
from sprawl.gossip.udp import GossipNode, LoadSample, listen_peer, save_incarnation
from sprawl.http.origin import parse_allowed_origins
from sprawl.peer.frames import frame_limits
from sprawl.peer.tcp import PeerChannel

log = Logger()

# option name → (NodeConfig field, parser)
_OPTIONS: dict[str, tuple[str, Any]] = {
    "node-id": ("node_id", str),
    "data-dir": ("data_dir", str),
    "bind-addr": ("bind_addr", str),
    "bind-port": ("bind_port", parse_port),
    "advertise-addr": ("advertise_addr", str),
    "http-addr": ("http_addr", str),
    "http-port": ("http_port", parse_port),
    "http-endpoint": ("http_endpoint", str),
    "seeds": ("seeds", parse_seeds),
    "cluster-key": ("cluster_key", parse_cluster_key),
    "cluster-key-file": ("cluster_key_file", str),
    "replication-factor": ("replication_factor", int),
    "memory-budget": ("memory_budget", parse_size),
    "disk-budget": ("disk_budget", parse_size),
    "segment-bytes": ("segment_bytes", parse_size),
    "segment-age": ("segment_age", parse_duration),
    "disk-to-s3-age": ("disk_to_s3_age", parse_duration),
    "s3-endpoint": ("s3_endpoint", str),
    "s3-bucket": ("s3_bucket", str),
    "s3-prefix": ("s3_prefix", str),
    "s3-region": ("s3_region", str),
    "partitions": ("default_partitions", int),
    "max-body-bytes": ("max_body_bytes", parse_size),
    "max-message-bytes": ("max_message_bytes", parse_size),
    "dedup-window": ("dedup_window", parse_duration),
    "retention-ms": ("retention_ms", int),
    "retention-bytes": ("retention_bytes", parse_size),
    "log-format": ("log_format", str),
    "raft-dead-grace": ("raft_dead_grace", parse_duration),
    "raft-snapshot-entries": ("raft_snapshot_entries", int),
    "partition-backlog": ("partition_backlog", parse_size),
    "slow-consumer-timeout": ("slow_consumer_timeout", parse_duration),
    "auth-tokens": ("auth_tokens", str),
    "jwt-secret": ("jwt_secret", str),
    "jwt-secret-file": ("jwt_secret_file", str),
    "tls-cert": ("tls_cert", str),
    "tls-key": ("tls_key", str),
    "tls-ca": ("tls_ca", str),
    "cluster-ca": ("cluster_ca", str),
    "peer-tls-cert": ("peer_tls_cert", str),
    "peer-tls-key": ("peer_tls_key", str),
    "s3-create-bucket": ("s3_create_bucket", parse_bool),
    "s3-concurrency": ("s3_concurrency", int),
    "s3-cache-bytes": ("s3_cache_bytes", parse_size),
    "s3-check-interval": ("s3_check_interval", parse_duration),
    "scrub-rate": ("scrub_rate", parse_size),
    "s3-orphan-grace": ("s3_orphan_grace", parse_duration),
    "disk-hard-limit": ("disk_hard_limit", parse_size),
    "allowed-origins": ("allowed_origins", parse_allowed_origins),
    "max-connections": ("max_connections", int),
    "header-timeout": ("header_timeout", parse_duration),
    "body-timeout": ("body_timeout", parse_duration),
    "body-min-rate": ("body_min_rate", parse_size),
}

_DOCS = {
    "node-id": "Node id (default: generated once, kept in DATA_DIR/node_id).",
    "data-dir": "Data directory [default: ./sprawl-data].",
    "bind-addr": (
        "Peer address: UDP gossip and the TCP peer channel [default: 127.0.0.1; 0.0.0.0 with a "
        "--cluster-key or --cluster-ca]. Beyond loopback it needs a key or CA (or --insecure-cluster)."
    ),
    "bind-port": "Peer port; 0 picks a free one [default: 7946].",
    "advertise-addr": "Address other nodes use to reach this one (NAT, containers).",
    "http-addr": "HTTP listen address [default: 0.0.0.0].",
    "http-port": "HTTP port; 0 picks a free one [default: 8080].",
    "http-endpoint": "HTTP listener as a Twisted endpoint string (overrides addr/port).",
    "seeds": "Comma-separated host:port peers to join (their --bind-port).",
    "cluster-key": (
        "Cluster key (hex, base64 or a string of 16+ bytes; `sprawlctl cluster keygen` makes one): "
        "authenticates gossip, authenticates and encrypts the peer channel; every node needs the same one. "
        "Prefer --cluster-key-file or SPRAWL_CLUSTER_KEY: arguments are visible to other users."
    ),
    "cluster-key-file": "File holding the cluster key (not readable by every user).",
    "replication-factor": "Default replication factor of new topics [default: 3, capped by cluster size].",
    "memory-budget": "Bytes of messages kept in memory [default: 256MB].",
    "disk-budget": "Bytes LMDB may use before publishes are refused [default: 4GB].",
    "segment-bytes": "Segment size [default: 64MB].",
    "segment-age": "Roll a segment after this age [default: 1h].",
    "disk-to-s3-age": "Move sealed segments to S3 after this age [default: 1h].",
    "s3-endpoint": "S3 endpoint URL (S3 tier off when absent).",
    "s3-bucket": "S3 bucket.",
    "s3-prefix": "S3 key prefix.",
    "s3-region": "S3 region [default: us-east-1].",
    "partitions": "Partitions of auto-created topics [default: 1].",
    "max-body-bytes": "Largest HTTP request body [default: 8MB].",
    "max-message-bytes": "Default largest message of a topic [default: 1MB].",
    "dedup-window": "How long message ids are remembered for idempotent publish [default: 10m].",
    "retention-ms": "Default retention by age of new topics, in ms (none by default).",
    "retention-bytes": "Default retention by size of new topics (none by default).",
    "log-format": "Log lines on stdout: text (one line per event) or json (one JSON object per line) [default: text].",
    "raft-dead-grace": "How long a Raft voter may be dead (by gossip) before it is replaced [default: 30s].",
    "raft-snapshot-entries": "Snapshot the cluster metadata every N Raft entries [default: 1024].",
    "config": "JSON file of options (keys as option names).",
    "partition-backlog": (
        "Bytes a partition may hold appended but not yet stored; beyond, publishes get 429 "
        "backpressure with Retry-After [default: memory budget / 4]."
    ),
    "slow-consumer-timeout": "How long a stream/WebSocket client may stall before it is cut off [default: 30s].",
    "auth-tokens": (
        "JSON file of bearer tokens with per-topic-pattern permissions (publish, subscribe, admin); "
        "authentication is off without it and without a JWT secret."
    ),
    "jwt-secret": "HS256 secret (32+ bytes) of bearer JWTs. Prefer SPRAWL_JWT_SECRET or --jwt-secret-file.",
    "jwt-secret-file": "File holding the HS256 secret of bearer JWTs.",
    "tls-cert": "Serve HTTPS with this PEM certificate (chain); needs --tls-key.",
    "tls-key": "PEM private key of --tls-cert.",
    "tls-ca": "PEM CA bundle: HTTPS clients must present a certificate signed by it (mutual TLS).",
    "cluster-ca": "PEM CA of the cluster: the TCP peer channel becomes mutual TLS, peers verified against it.",
    "peer-tls-cert": "PEM certificate this node presents to peers (server and client use) [default: --tls-cert].",
    "peer-tls-key": "PEM key of --peer-tls-cert [default: --tls-key].",
    "s3-create-bucket": "Create the S3 bucket when it is missing: true or false [default: true].",
    "s3-concurrency": "S3 uploads in flight at once (and S3 client threads) [default: 2].",
    "s3-cache-bytes": "Memory for segment chunks fetched from S3 by reads [default: 64MB].",
    "s3-check-interval": "How often the running node checks its S3 bucket (/readyz says when it fails) [default: 10s].",
    "scrub-rate": (
        "Bytes per second of stored records the background scrub reads back and checks; "
        "0 turns it off [default: 4MB]."
    ),
    "s3-orphan-grace": "Age before an S3 object no remote segment list names is deleted as an orphan [default: 1h].",
    "disk-hard-limit": (
        "LMDB bytes past which publishes get 507 [default: --disk-budget; 1.5x it when the S3 tier is on]."
    ),
    "allowed-origins": (
        "Comma-separated web origins (scheme://host[:port], or *) whose pages may POST/PUT/DELETE "
        "and open WebSockets; others get 403 origin_not_allowed [default: none but the node's own]."
    ),
    "max-connections": "Open HTTP connections at most; one more is answered 503 [default: 10000].",
    "header-timeout": "A request's line and headers must arrive within this [default: 10s].",
    "body-timeout": "A request body gets this long plus its size at --body-min-rate [default: 10s].",
    "body-min-rate": "Bytes per second a request body must average [default: 64KB].",
}

_ALIASES = {
    "bindAddr": "bind-addr",
    "bindPort": "bind-port",
    "httpAddr": "http-addr",
    "httpPort": "http-port",
}


class Options(usage.Options):
    """Command-line options of ``twistd sprawl`` (see ``twistd sprawl --help``)."""

    synopsis = "[options]"
    longdesc = (
        "Sprawl: an HTTP-native distributed pub/sub broker. With no options: a durable single node on :8080."
    )
    optParameters = [[name, None, None, _DOCS[name]] for name in (*_OPTIONS, "config")]
    optFlags = [
        ["no-auto-create", None, "Refuse publishes to topics that do not exist."],
        [
            "bootstrap",
            None,
            "Found a new cluster even though --seeds is given (default: only nodes without seeds do).",
        ],
        [
            "force-new-cluster",
            None,
            "Recovery after a majority of the Raft voters is lost for good: make this node the only "
            "voter of a new cluster built from what it holds (refused while a majority can still be "
            "reached; see docs/operations.md).",
        ],
        [
            "insecure-cluster",
            None,
            "Allow a --bind-addr beyond loopback without --cluster-key or --cluster-ca: anyone who "
            "reaches the peer port can then join and change the cluster. For isolated networks only.",
        ],
    ]

    # The seed's camelCase names.  usage.Options finds ``opt_*`` handlers on
    # the class (not the instance), so they are real methods here.
    def opt_bindAddr(self, value: str) -> None:
        """Alias of --bind-addr."""
        self["bind-addr"] = value

    def opt_bindPort(self, value: str) -> None:
        """Alias of --bind-port."""
        self["bind-port"] = value

    def opt_httpAddr(self, value: str) -> None:
        """Alias of --http-addr."""
        self["http-addr"] = value

    def opt_httpPort(self, value: str) -> None:
        """Alias of --http-port."""
        self["http-port"] = value

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"sprawl {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        """Build and validate the :class:`NodeConfig`."""
        try:
            self["node_config"] = build_config(self, os.environ)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def build_config(opts: dict[str, Any], environ: Any) -> NodeConfig:
    """Defaults < config file < environment (``SPRAWL_*``, ``MINIO_*``) < command line."""
    values: dict[str, Any] = {}
    cfg_path = opts.get("config") or environ.get("SPRAWL_CONFIG")
    if cfg_path:
        for k, v in load_config_file(cfg_path).items():
            values[k] = v
    if environ.get("MINIO_ENDPOINT"):
        values["s3_endpoint"] = environ["MINIO_ENDPOINT"]
    if environ.get("MINIO_ACCESS_KEY"):
        values["s3_access_key"] = environ["MINIO_ACCESS_KEY"]
    if environ.get("MINIO_SECRET_KEY"):
        values["s3_secret_key"] = environ["MINIO_SECRET_KEY"]
    if environ.get("MINIO_ENDPOINT") and not values.get("s3_bucket"):
        # The seed's environment names no bucket: without a default, a node
        # given only MINIO_* would refuse to start (endpoint needs a bucket).
        values["s3_bucket"] = environ.get("MINIO_BUCKET") or "sprawl"
    for env_name, field in (
        ("SPRAWL_S3_ACCESS_KEY", "s3_access_key"),
        ("SPRAWL_S3_SECRET_KEY", "s3_secret_key"),
    ):
        if environ.get(env_name):
            values[field] = environ[env_name]
    parsed: dict[str, Any] = {}
    for name, (field, parse) in _OPTIONS.items():
        env_name = "SPRAWL_" + name.upper().replace("-", "_")
        raw = opts.get(name)
        if raw is None:
            raw = environ.get(env_name)
        if raw is None and field in values:
            raw = values[field]
        if raw is None:
            continue
        try:
            parsed[field] = parse(raw) if not (parse is int and isinstance(raw, int)) else raw
        except (ConfigError, ValueError) as e:
            raise ConfigError(f"--{name}: {e}") from None
    values.update(parsed)
    if "max_body_bytes" in values and "max_message_bytes" not in values:
        # A small --max-body-bytes alone lowers the default message limit with it.
        values["max_message_bytes"] = min(values["max_body_bytes"], NodeConfig.max_message_bytes)
    if opts.get("no-auto-create") or environ.get("SPRAWL_NO_AUTO_CREATE") in ("1", "true", "yes"):
        values["auto_create_topics"] = False
    if opts.get("bootstrap") or environ.get("SPRAWL_BOOTSTRAP") in ("1", "true", "yes"):
        values["bootstrap"] = True
    # Deliberately no environment variable or config-file key: a recovery
    # that must not be repeated by accident on every restart.
    values["force_new_cluster"] = bool(opts.get("force-new-cluster"))
    if opts.get("insecure-cluster") or environ.get("SPRAWL_INSECURE_CLUSTER") in ("1", "true", "yes"):
        values["insecure_cluster"] = True
    return NodeConfig(**values).validate()


def load_node_id(data_dir: str, override: str | None) -> str:
    """The node id: ``--node-id``, else DATA_DIR/node_id, generated once."""
    path = os.path.join(data_dir, "node_id")
    if override:
        return override
    try:
        with open(path) as f:
            nid = f.read().strip()
            if nid:
                return nid
    except FileNotFoundError:
        pass
    nid = f"{socket.gethostname().split('.')[0][:24]}-{uuid.uuid4().hex[:8]}"
    nid = "".join(c if c.isalnum() or c in "._-" else "-" for c in nid)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(nid + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return nid


class NodeService(service.Service):
    """One Sprawl node: storage, broker, peer port with gossip, and HTTP API."""

    def __init__(self, config: NodeConfig, reactor: Any = None):
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.config = config
        self.reactor = reactor
        self.http_port: Any = None
        self.peer_port: Any = None
        self.broker: Any = None
        self.store: Any = None
        self.api: Any = None
        self.gossip: GossipNode | None = None
        self.udp_port: Any = None
        self.channel: Any = None
        self.control: Any = None
        self.plane: Any = None
        self.rpc: Any = None
        self.s3_client: Any = None
        self.bucket_watch: Any = None
        self.scrubber: Any = None

    def _make_gossip(self, node_id: str) -> GossipNode:
        """The gossip adapter, its load figures read from the broker."""
        import random

        c = self.config
        broker = self.broker
        store = self.store

        def load() -> LoadSample:
            logs = [lg for t in broker.topics.values() for lg in t.logs]
            led = {
                (name, p): (lg.appended_total, lg.appended_bytes_total)
                for name, t in broker.topics.items()
                for p, lg in enumerate(t.logs)
                if lg.leader == node_id
            }
            return LoadSample(
                partitions_led=len(led),
                published_total=broker.published_total,
                bytes_stored=store.used_bytes,
                memory_hot_bytes=sum(lg.hot_bytes for lg in logs),
                partitions=led,
            )

        return GossipNode(
            node_id,
            GossipConfig(cluster_key=c.cluster_key),
            self.reactor,
            random.Random(),
            c.data_dir,
            seeds=c.seeds,
            meta={"version": __version__},
            load=load,
            resolve=self.reactor.resolve,
            save=lambda data_dir, n: threads.deferToThreadPool(
                self.reactor, self.reactor.getThreadPool(), save_incarnation, data_dir, n
            ),
        )

    def _make_tier(self, metrics: Any) -> Any:
        """The S3 tier: a bounded-thread-pool client, the spill pipeline and the bucket watch."""
        from sprawl.storage.bucket_watch import BucketWatch
        from sprawl.storage.s3 import S3Client
        from sprawl.storage.tiering import S3Tier

        c = self.config
        self.s3_client = S3Client(s3_settings(c), self.reactor)
        self.s3_client.start()
        self.bucket_watch = BucketWatch(self.s3_client, self.reactor, c.s3_check_interval)
        self.bucket_watch.start()
        log.info(
            "S3 tier on: {endpoint} bucket {bucket} prefix {prefix!r}",
            endpoint=c.s3_endpoint,
            bucket=c.s3_bucket,
            prefix=c.s3_prefix,
        )
        return S3Tier(
            self.s3_client,
            self.store,
            self.reactor,
            budget=c.disk_budget,
            age_ms=int(c.disk_to_s3_age * 1000),
            concurrency=c.s3_concurrency,
            cache_bytes=c.s3_cache_bytes,
            metrics=metrics,
            orphan_grace=c.s3_orphan_grace,
        )

    def startService(self) -> None:
        """Open storage, recover, listen.  Failure to listen stops the process."""
        super().startService()
        d = defer.ensureDeferred(self._start())

        def failed(f: Any) -> None:
            import lmdb

            if f.check(StartRefused):
                log.critical("{reason}", reason=f.value.message)
                _exit_status_after_stop(self.reactor, 3)
            elif f.check(lmdb.Error):
                # LMDB's own pages (not a record: those are checked and named
                # per range) do not read or write back: the store is damaged.
                log.critical(
                    "the LMDB store in {path} is DAMAGED ({error}): the node refuses to start. "
                    "`sprawlctl verify {data_dir}` lists what it can still read; restore the data "
                    "dir, or (in a cluster) move it aside and start the node empty so it copies its "
                    "partitions from the other replicas",
                    path=os.path.join(self.config.data_dir, "lmdb"),
                    data_dir=self.config.data_dir,
                    error=str(f.value),
                )
                log.failure("sprawl node failed to start", f)
            else:
                log.failure("sprawl node failed to start", f)
            if getattr(self.reactor, "running", True):
                self.reactor.stop()
            else:  # failed before the reactor ran: stopping now would be ignored
                self.reactor.callWhenRunning(self.reactor.stop)

        d.addErrback(failed)

    async def _start(self) -> None:
        from sprawl.http.api import NodeInfo, SprawlAPI
        from sprawl.http.server import make_site
        from sprawl.metrics import NodeMetrics
        from sprawl.pubsub import Broker
        from sprawl.pubsub.links import ClusterLinks
        from sprawl.storage.lmdb import LmdbStore

        c = self.config
        os.makedirs(c.data_dir, exist_ok=True)
        node_id = load_node_id(c.data_dir, c.node_id)
        if c.cluster_ca:
            check_node_certificate(c, node_id)
        map_size = max(c.disk_budget * 2, (c.disk_hard_limit or 0) * 4 // 3, 1 << 30)
        from sprawl.delivery.topic_waiters import TopicWaiters

        # Subscribers waiting for a topic the cluster has not created yet
        # (the control wakes them; the metrics count them).
        cluster_waiters = TopicWaiters()
        metrics = NodeMetrics(cluster_waiters=cluster_waiters)
        self.store = LmdbStore(
            os.path.join(c.data_dir, "lmdb"),
            reactor=self.reactor,
            map_size=map_size,
            on_commit=metrics.committed,
        )
        self.store.open()
        tier = self._make_tier(metrics) if c.s3_endpoint and c.s3_bucket else None
        # The partitions' shared remote-segment lists live in the Raft
        # metadata: nothing moves to (or is trimmed from) S3 until the data
        # plane is up and says which partitions this node leads.
        links = ClusterLinks(remote_log=None)
        self.broker = Broker(c, self.store, self.reactor, node_id, metrics, tier=tier, links=links)
        self.broker.recover()
        self.broker.start()
        from sprawl.storage.scrub import Scrubber

        self.scrubber = Scrubber(self.broker, self.reactor, c.scrub_rate)
        self.broker.integrity.scrubber = self.scrubber
        self.scrubber.start()
        assert c.bind_addr is not None  # NodeConfig.validate resolved it
        if c.peer_port_exposed:
            log.critical(
                "INSECURE CLUSTER: gossip and the peer channel listen on {addr} without a cluster key "
                "or CA (--insecure-cluster): anyone who can reach port {port} can join this cluster, "
                "change or delete every topic and read every message. Use --cluster-key-file "
                "(sprawlctl cluster keygen) or --cluster-ca.",
                addr=c.bind_addr,
                port=c.bind_port,
            )
        advertise = c.advertise_addr or (c.bind_addr if c.bind_addr not in ("0.0.0.0", "::") else "127.0.0.1")
        self.gossip = self._make_gossip(node_id)
        if c.cluster_ca:
            if c.cluster_key is None:
                log.warn(
                    "gossip is not authenticated: --cluster-ca protects the peer channel, but only "
                    "--cluster-key authenticates gossip (a stranger reaching the UDP port can make members "
                    "look dead or alive); give both"
                )
        self.channel = PeerChannel(
            node_id,
            self.reactor,
            random.Random(),
            c.cluster_key,
            limits=frame_limits(c.max_body_bytes),
            **peer_tls(c),
        )
        bind = c.bind_addr.replace(":", chr(92) + ":")
        self.peer_port, self.udp_port = await listen_peer(
            self.reactor,
            c.bind_addr,
            c.bind_port,
            lambda port: serverFromString(self.reactor, f"tcp:{port}:interface={bind}").listen(
                self.channel.server_factory()
            ),
            self.gossip,
        )
        peer_port = self.peer_port.getHost().port
        peer = f"{advertise}:{peer_port}"
        bootstrap = c.bootstrap if c.bootstrap is not None else not c.seeds
        from sprawl.cluster.dataplane import DataPlane
        from sprawl.peer.rpc import PeerRPC

        self.rpc = PeerRPC(self.channel, self.reactor)
        self.control = ClusterControl(
            node_id,
            self.broker,
            self.store,
            self.reactor,
            self.channel,
            self.gossip,
            rpc=self.rpc,
            on_proposal_latency=metrics.raft_proposal_duration.observe,
            new_topics=cluster_waiters,
            bootstrap=bootstrap,
            dead_grace=c.raft_dead_grace,
            snapshot_entries=c.raft_snapshot_entries,
            peer=peer,
            force_new_cluster=c.force_new_cluster,
        )
        await self.control.start()
        links.bind(creator=self.control)
        self.plane = DataPlane(
            node_id, self.broker, self.control, self.channel, self.rpc, self.reactor, self.gossip
        )
        links.bind(publisher=self.plane, group_owner=self.plane.groups)
        from sprawl.cluster.shared_tier import ClusterRemoteLog

        links.bind_remote_log(ClusterRemoteLog(self.control, self.plane))
        self.plane.start()
        advertise_ip = advertise
        if not (isIPAddress(advertise) or isIPv6Address(advertise)):
            advertise_ip = await self.reactor.resolve(advertise)
        self.gossip.set_meta(peer=peer)
        self.gossip.start((advertise_ip, peer_port))
        from sprawl.metrics import BalanceCollector, DataPlaneCollector, GossipCollector, RaftCollector

        metrics.register(
            GossipCollector(self.gossip),
            RaftCollector(self.control, self.plane),
            BalanceCollector(self.plane.balancer),
            DataPlaneCollector(self.plane),
        )
        if c.force_new_cluster:
            # Gossip runs (the others learn where this node is); Raft does not
            # until the recovery is decided.
            await self.control.force_new_cluster()
        checks = [lambda: self.bucket_watch.problem] if self.bucket_watch is not None else []
        info = NodeInfo(
            node_id,
            peer=peer,
            started=time.time(),
            membership=self.gossip,
            raft=self.control,
            readiness_checks=checks,
        )
        from sprawl.auth import load_authenticator
        from sprawl.http.origin import OriginPolicy

        auth = load_authenticator(c.auth_tokens, c.jwt_secret, c.jwt_secret_file)
        self.api = SprawlAPI(
            self.broker,
            info,
            self.reactor,
            metrics,
            control=self.control,
            plane=self.plane,
            auth=auth,
            origins=OriginPolicy(c.allowed_origins),
        )
        if auth.enabled:
            log.info(
                "bearer-token authentication on (tokens: {tokens}, JWT: {jwt})",
                tokens=len(auth.tokens or ()),
                jwt=auth.jwt is not None,
            )
        site = make_site(
            self.api.resource(),
            max_body=c.max_body_bytes,
            metrics=metrics,
            header_timeout=c.header_timeout,
            body_timeout=c.body_timeout,
            body_min_rate=c.body_min_rate,
            max_connections=c.max_connections,
            reactor=self.reactor,
        )
        if c.tls_cert and c.tls_key:
            from sprawl.tlsconfig import server_endpoint

            http_ep = server_endpoint(self.reactor, c.http_port, c.http_addr, c.tls_cert, c.tls_key, c.tls_ca)
        else:
            http_ep = serverFromString(self.reactor, c.http_listen)
        self.http_port = await http_ep.listen(site)
        host = self.http_port.getHost()
        http_port = getattr(host, "port", 0)
        http_addr = c.advertise_addr or (c.http_addr if c.http_addr not in ("0.0.0.0", "::") else "127.0.0.1")
        tls = bool(c.tls_cert) or (c.http_endpoint or "").startswith("ssl:")
        info.http = f"{'https' if tls else 'http'}://{http_addr}:{http_port}"
        self.gossip.set_meta(http=info.http)
        self.control.http = info.http
        if self.control.driver is not None and self.control.driver.node.voters == {self.control.raft_id}:
            # A lone voter elects itself at once: wait for it (bounded), so a
            # single node is ready the moment it says so.
            await _bounded(self.reactor, self.control.leader_known(), 10.0)
        write_ports(c.data_dir, http_port, peer_port)
        # Everything built so far lives as long as the process: move it out of
        # the collector's way (records are not tracked at all), so collections
        # on the hot path only walk young objects.
        gc.collect()
        gc.freeze()
        from sprawl.metrics import GCPauses

        GCPauses(metrics.gc_pause).install()
        if not getattr(self.reactor, "running", True):
            # Services start in the reactor's "before startup" phase; twistd's
            # SIGTERM handler is installed "during startup".  Announce readiness
            # only once it is there, so a SIGTERM after the ready line always
            # gets a clean stop.
            running: defer.Deferred[None] = defer.Deferred()
            self.reactor.callWhenRunning(running.callback, None)
            await running
        info.ready = True
        log.info(
            "sprawl {version} node {node_id} serving HTTP on {http} (peer port {peer}), data in {data_dir}",
            version=__version__,
            node_id=node_id,
            http=info.http,
            peer=peer_port,
            data_dir=os.path.abspath(c.data_dir),
        )

    def stopService(self) -> Any:
        """Stop listening, end streams, commit what is queued, close LMDB."""
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self.api is not None:
            self.api.info.ready = False
            self.api.info.not_ready_reason = "node is stopping"
        if self.broker is not None:
            self.broker.begin_stop()
        if self.http_port is not None:
            await self.http_port.stopListening()
        if self.api is not None:
            self.api.streams.close_all()
            self.api.close_dashboards()
        if self.gossip is not None:
            # Gossip the leave first: the controller moves the leadership of
            # this node's partitions to other replicas at once (it fences this
            # node, which still answers) instead of waiting out a beat timeout.
            await self.gossip.stop()  # gossips the leave, then closes the UDP port
        if self.plane is not None:
            moved = await self.plane.drain(3.0)
            if not moved:
                log.warn("stopping while still leading partitions (their leadership did not move in time)")
            self.plane.stop()
        if self.rpc is not None:
            self.rpc.close()
        if self.control is not None:
            await self.control.hand_off()
            self.control.stop()
        if self.channel is not None:
            await self.channel.close()
        if self.peer_port is not None:
            await self.peer_port.stopListening()
        if self.scrubber is not None:
            self.scrubber.stop()
        if self.broker is not None:
            await self.broker.stop()
        if self.store is not None and self.store.env is not None:
            await self.store.close()
        if self.bucket_watch is not None:
            self.bucket_watch.stop()
        if self.s3_client is not None:
            self.s3_client.stop()
        log.info("sprawl node stopped cleanly")


def _exit_status_after_stop(reactor: Any, status: int) -> None:
    """Make the process exit with ``status`` once the reactor has shut down
    (twistd itself always exits 0): a refused start is an error to scripts."""
    add = getattr(reactor, "addSystemEventTrigger", None)
    if add is None:
        return

    def leave() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)

    add("after", "shutdown", leave)


def check_node_certificate(c: NodeConfig, node_id: str) -> None:
    """With ``--cluster-ca``: the node's own certificate must name its node id
    (common name or DNS subject alternative name), or peers would refuse it."""
    from cryptography import x509

    from sprawl.tlsconfig import certificate_names

    cert, _key = c.peer_tls_files
    assert cert
    with open(cert, "rb") as f:
        names = certificate_names(x509.load_pem_x509_certificate(f.read()))
    if node_id not in names:
        raise StartRefused(
            f"the peer certificate {cert} names {', '.join(sorted(names)) or 'nothing'}, not this node's id "
            f"{node_id!r}: with --cluster-ca every node needs a certificate whose common name or DNS "
            f"subject alternative name is its node id",
            code="certificate_not_for_this_node",
        )


def peer_tls(c: NodeConfig) -> dict[str, Any]:
    """PeerChannel TLS arguments: mutual TLS against ``--cluster-ca`` (each
    side's certificate must name its node id), or none."""
    if not c.cluster_ca:
        return {}
    from sprawl.tlsconfig import peer_certificate_names, peer_client_options, server_options

    cert, key = c.peer_tls_files
    assert cert and key  # NodeConfig.validate checked
    ca = c.cluster_ca
    client = peer_client_options(ca, cert, key)
    return {
        "server_tls": server_options(cert, key, ca),
        "client_tls": lambda host: client,
        "peer_names": peer_certificate_names,
    }


async def _bounded(reactor: Any, d: defer.Deferred[Any], seconds: float) -> None:
    """Wait for ``d`` at most ``seconds`` (then go on without it)."""
    timer = reactor.callLater(seconds, d.cancel)
    try:
        await d
    except defer.CancelledError:
        log.warn("no Raft leader after {seconds} s; serving anyway (not ready)", seconds=seconds)
    finally:
        if timer.active():
            timer.cancel()


def write_ports(data_dir: str, http: int, peer: int) -> None:
    """Write DATA_DIR/ports.json atomically for tests and scripts."""
    path = os.path.join(data_dir, "ports.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"http": http, "peer": peer}, f)
    os.replace(tmp, path)


def s3_settings(c: NodeConfig) -> Any:
    """The S3 client settings of a node with the S3 tier on."""
    from sprawl.storage.s3 import S3Settings

    assert c.s3_endpoint and c.s3_bucket
    return S3Settings(
        endpoint=c.s3_endpoint,
        bucket=c.s3_bucket,
        prefix=c.s3_prefix,
        region=c.s3_region,
        access_key=c.s3_access_key,
        secret_key=c.s3_secret_key,
        create_bucket=c.s3_create_bucket,
        concurrency=c.s3_concurrency + 2,  # uploads, plus room for reads, deletes and the bucket check
    )


def check_s3_at_start(c: NodeConfig) -> None:
    """Refuse to start (exit status 1, one line on stderr) when the S3 tier is
    asked for but cannot work: no usable client library, or a bucket that
    cannot be reached or created.  Runs before the reactor: a few seconds at
    most (see :func:`sprawl.storage.s3.check_at_start`)."""
    from sprawl.storage.s3 import S3Unusable, check_at_start

    try:
        check_at_start(s3_settings(c))
    except S3Unusable as e:
        raise SystemExit(f"sprawl: cannot start: {e}") from None


def makeService(options: Options) -> Any:
    """The ``twistd sprawl`` service (after the start-time checks)."""
    from sprawl.log_observers import LoggingMultiService

    config: NodeConfig = options["node_config"]
    if config.s3_endpoint and config.s3_bucket:
        check_s3_at_start(config)
    top = LoggingMultiService(config.log_format)
    NodeService(config).setServiceParent(top)
    return top
