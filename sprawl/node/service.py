"""The node service: builds every part of one node in dependency order and stops them gracefully (see :mod:`sprawl.node`)."""

from __future__ import annotations

import gc
import os
import random
import time
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet import defer, threads
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure

from sprawl import __version__
from sprawl.cluster.control import ClusterControl, StartRefused
from sprawl.config import NodeConfig
from sprawl.gossip import GossipConfig
from sprawl.gossip.incarnation_file import save_incarnation
from sprawl.gossip.load import LoadSample
from sprawl.gossip.peer_port import listen_peer
from sprawl.gossip.udp import GossipNode
from sprawl.node.binding import (
    announce_http,
    bind_cluster_parts,
    bind_earned_trust,
    make_traffic_feed,
    run_pipelines,
    watch_faults,
)
from sprawl.node.settings import check_node_certificate, load_node_id, peer_tls, s3_settings, write_ports
from sprawl.node.waits import bounded, exit_status_after_stop, until
from sprawl.peer.frames import FEATURES, MIN_PROTOCOL, PROTOCOL, frame_limits
from sprawl.peer.tcp import PeerChannel

if TYPE_CHECKING:
    from sprawl.cluster.dataplane import DataPlane
    from sprawl.cluster.fault_watch import FaultWatch
    from sprawl.cluster.pipeline_loop import PipelineLoop
    from sprawl.forecast.feed import TrafficFeed
    from sprawl.http.api import SprawlAPI
    from sprawl.metrics import NodeMetrics
    from sprawl.peer.rpc import PeerRPC
    from sprawl.pubsub import Broker
    from sprawl.storage.bucket_watch import BucketWatch
    from sprawl.storage.lmdb import LmdbStore
    from sprawl.storage.s3 import S3Client
    from sprawl.storage.scrub import Scrubber
    from sprawl.storage.tiering import S3Tier

# The node's log lines keep the namespace they have always had (operators'
# log filters and tests select the "serving" line by it).
log = Logger(namespace="sprawl.tap")


#: A graceful stop waits at most this long for the leadership of the
#: partitions led here to move (and the move to be applied here).
STOP_HAND_OFF_SECONDS = 10.0
#: ... and then at most this long for the HTTP requests under way to be answered.
STOP_REQUESTS_SECONDS = 5.0


class NodeService(service.Service):
    """One Sprawl node: storage, broker, peer port with gossip, and HTTP API."""

    def __init__(self, config: NodeConfig, reactor: Any = None):
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.config = config
        self.reactor = reactor
        # (The listening ports are Twisted's IListeningPort: a zope interface
        # the type checker cannot call through.)
        self.http_port: Any = None
        self.peer_port: Any = None
        self.broker: Broker | None = None
        self.store: LmdbStore | None = None
        self.api: SprawlAPI | None = None
        self.gossip: GossipNode | None = None
        self.udp_port: Any = None
        self.channel: PeerChannel | None = None
        self.control: ClusterControl | None = None
        self.plane: DataPlane | None = None
        self.rpc: PeerRPC | None = None
        self.s3_client: S3Client | None = None
        self.bucket_watch: BucketWatch | None = None
        self.scrubber: Scrubber | None = None
        self.site: Any = None
        self.fault_watch: FaultWatch | None = None
        self.pipeline_loop: PipelineLoop | None = None
        #: The traffic forecaster's feed (None with ``--forecast false``).
        self.traffic: TrafficFeed | None = None

    def _make_gossip(self, node_id: str) -> GossipNode:
        """The gossip adapter, its load figures read from the broker."""
        import random

        c = self.config
        broker = self.broker
        store = self.store
        assert broker is not None and store is not None  # (built before gossip)

        def load() -> LoadSample:
            # Only the partitions written to since the last sample (issue 23).
            led, moved, gone = broker.load_counters(node_id)
            return LoadSample(
                partitions_led=led,
                published_total=broker.published_total,
                bytes_stored=store.used_bytes,
                memory_hot_bytes=broker.pool_tally.hot_bytes,
                partitions=moved,
                partial=True,
                gone=gone,
            )

        return GossipNode(
            node_id,
            GossipConfig(cluster_key=c.cluster_key),
            self.reactor,
            random.Random(),
            c.data_dir,
            seeds=c.seeds,
            meta={"version": __version__, "protocol": [MIN_PROTOCOL, PROTOCOL], "features": sorted(FEATURES)},
            load=load,
            resolve=self.reactor.resolve,
            save=lambda data_dir, n: threads.deferToThreadPool(
                self.reactor, self.reactor.getThreadPool(), save_incarnation, data_dir, n
            ),
        )

    def _latched_features(self) -> list[str]:
        """The cluster features latched in the Raft metadata (none before the
        control is built): the peer channel refuses a peer lacking one."""
        return list(self.control.metadata.features) if self.control is not None else []

    def _make_tier(self, metrics: NodeMetrics) -> S3Tier:
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
        assert self.store is not None  # (opened before the tier is built)
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
        d = defer.ensureDeferred(self._start_uncollected())

        def failed(f: Failure) -> None:
            import lmdb

            if isinstance(f.value, StartRefused):
                log.critical("{reason}", reason=f.value.message)
                exit_status_after_stop(self.reactor, 3)
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

    async def _start_uncollected(self) -> None:
        """:meth:`_start` with the garbage collector's automatic runs paused
        (it ends with one collection; see :mod:`sprawl.node.collector`)."""
        from sprawl.node.collector import collector_paused

        with collector_paused():
            await self._start()

    async def _start(self) -> None:
        from sprawl.http.api import NodeInfo, SprawlAPI
        from sprawl.http.server import make_site
        from sprawl.metrics import NodeMetrics
        from sprawl.pubsub import Broker
        from sprawl.pubsub.links import ClusterLinks
        from sprawl.pubsub.memory_report import MemoryCollector
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
            wal=c.wal,
        )
        self.store.open()
        tier = self._make_tier(metrics) if c.s3_endpoint and c.s3_bucket else None
        # The partitions' shared remote-segment lists live in the Raft
        # metadata: nothing moves to (or is trimmed from) S3 until the data
        # plane is up and says which partitions this node leads.
        links = ClusterLinks(remote_log=None)
        self.broker = Broker(c, self.store, self.reactor, node_id, metrics, tier=tier, links=links)
        self.broker.recover()
        self.broker.bound_process = True  # this node owns its process: the budget bounds its RssAnon
        self.broker.start()
        metrics.register(MemoryCollector(self.broker, walked=metrics.walked_pools))
        from sprawl.storage.scrub import Scrubber

        self.scrubber = Scrubber(self.broker, self.reactor, c.scrub_rate)
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
        log.info(
            "peer plane on {addr}: {how}",
            addr=c.bind_addr,
            how=peer_plane_protection(c.cluster_key is not None, bool(c.cluster_ca)),
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
        self.channel = channel = PeerChannel(
            node_id,
            self.reactor,
            random.Random(),
            c.cluster_key,
            limits=frame_limits(c.max_body_bytes),
            latched_features=self._latched_features,
            source=None if c.bind_addr in ("0.0.0.0", "::") else c.bind_addr,
            **peer_tls(c),
        )
        bind = c.bind_addr.replace(":", chr(92) + ":")
        self.peer_port, self.udp_port = await listen_peer(
            self.reactor,
            c.bind_addr,
            c.bind_port,
            lambda port: serverFromString(self.reactor, f"tcp:{port}:interface={bind}").listen(
                channel.server_factory()
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
        self.traffic = make_traffic_feed(c, self.reactor, self.gossip, metrics)

        def feature_on(name: str) -> bool:
            # The cluster feature gate comes with the fault watch, built on the plane below.
            gate = self.fault_watch.feature_gate if self.fault_watch is not None else None
            return gate is not None and gate().on(name)

        self.plane = DataPlane(
            node_id,
            self.broker,
            self.control,
            self.channel,
            self.rpc,
            self.reactor,
            self.gossip,
            forecasts=self.traffic.partition_forecasts if self.traffic is not None else None,
            feature_on=feature_on,
        )
        # A peer's replication frames count as hearing it for Raft's CheckQuorum:
        # its Raft answers share the connection, queued behind them (issue 23).
        self.plane.service.on_heard = self.control.wire.peer_heard
        if self.traffic is not None:
            bind_earned_trust(self.plane.controller, self.traffic)
        bind_cluster_parts(links, self.control, self.plane, self.broker.integrity, self.scrubber)
        self.plane.start()
        advertise_ip = advertise
        if not (isIPAddress(advertise) or isIPv6Address(advertise)):
            advertise_ip = await self.reactor.resolve(advertise)
        self.gossip.set_meta(peer=peer)
        self.gossip.start((advertise_ip, peer_port))
        from sprawl.metrics.cluster import (
            BalanceCollector,
            DataPlaneCollector,
            GossipCollector,
            RaftCollector,
        )

        metrics.register(
            GossipCollector(self.gossip),
            RaftCollector(self.control, self.plane),
            BalanceCollector(self.plane.balancer),
            DataPlaneCollector(self.plane),
        )
        if self.traffic is not None:
            from sprawl.forecast.feed import ForecastCollector

            metrics.register(ForecastCollector(self.traffic))
            self.traffic.start()
        if c.force_new_cluster:
            # Gossip runs (the others learn where this node is); Raft does not
            # until the recovery is decided.
            await self.control.force_new_cluster()
        watch = self.bucket_watch
        checks = [lambda: watch.problem] if watch is not None else []
        # A restarted node is not ready before its replicas caught up with
        # their leaders (a rolling restart waits for it before the next stop).
        checks.append(self.plane.readiness)
        info = NodeInfo(
            node_id,
            peer=peer,
            started=time.time(),
            membership=self.gossip,
            raft=self.control,
            readiness_checks=checks,
        )
        self.fault_watch = watch_faults(
            node_id,
            self.reactor,
            self.broker,
            self.control,
            self.plane,
            self.gossip,
            info,
            bool(c.cluster_ca),
            metrics,
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
            traffic=self.traffic,
        )
        metrics.watch_state(self.broker, self.api.streams)
        self.pipeline_loop = run_pipelines(self.broker, self.control, self.reactor, self.api, metrics)
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
        self.site = site
        self.http_port = await http_ep.listen(site)
        host = self.http_port.getHost()
        http_port = getattr(host, "port", 0)
        http_addr = c.advertise_addr or (c.http_addr if c.http_addr not in ("0.0.0.0", "::") else "127.0.0.1")
        tls = bool(c.tls_cert) or (c.http_endpoint or "").startswith("ssl:")
        announce_http(
            f"{'https' if tls else 'http'}://{http_addr}:{http_port}", info, self.gossip, self.control
        )
        if self.control.driver is not None and self.control.driver.node.voters == {self.control.raft_id}:
            # A lone voter elects itself at once: wait for it (bounded), so a
            # single node is ready the moment it says so.
            await bounded(self.reactor, self.control.leader_known(), 10.0)
        write_ports(c.data_dir, http_port, peer_port)
        # Everything built so far lives as long as the process: move it out of
        # the collector's way (records are not tracked at all), so collections
        # on the hot path only walk young objects.
        gc.collect()
        gc.freeze()
        from sprawl.node.collector import shorten_switch_interval

        shorten_switch_interval()  # the LMDB threads hand back in 0.5 ms, not 5 (issue 16)
        from sprawl.node.collector import FreezeAfterSlowCollections

        # A full collection walking a warm heap's big containers (the hot tails) freezes them.
        FreezeAfterSlowCollections(self.reactor.callLater).install()
        from sprawl.metrics import GCPauses

        GCPauses(metrics.gc_pause, cpu=metrics.gc_cpu).install()
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
        # A failure here would end the reactor's shutdown trigger silently: name it.
        return defer.ensureDeferred(self._stop()).addErrback(lambda f: log.failure("graceful stop failed", f))

    async def _stop(self) -> None:
        """The graceful stop (issue 24): nothing a client sees.

        1. ``/readyz`` answers 503 (load balancers stop choosing this node);
           HTTP keeps listening and the broker keeps working, so requests
           still arriving are served -- a publish for a partition that moved
           is forwarded to its new leader.
        2. A Raft leader -- the controller -- first moves the leadership of
           every partition led here to an in-sync replica itself (it knows
           which are in sync and its cores are confirmed: no new controller
           has to learn either), then hands its Raft leadership to a
           caught-up voter, so the controller runs on a node that stays.
        3. Gossip the leave: the controller moves the leadership of every
           partition still led here to an in-sync replica (a hand-off: the
           target catches up while the leader pauses, then it is fenced and
           chosen) -- and waits, bounded, until no partition is led here and
           the applied placement names the new leaders.
        4. Stop listening, end streams, and wait (bounded) for the requests
           under way to be answered; then close the rest.
        """
        if self.api is not None:
            self.api.info.ready = False
            self.api.info.not_ready_reason = "node is stopping"
        hand_off_until = self.reactor.seconds() + STOP_HAND_OFF_SECONDS  # both waits below
        if self.plane is not None and self.control is not None and self.control.is_leader:
            # Still the controller: hand this node's partitions over from
            # here (its cores are confirmed and it knows which replicas are
            # in sync without asking), before a new controller would have to
            # learn both (issue 24: most of a stopping Raft leader's hand-off).
            self.plane.controller.stopping = True
            self.plane.controller.poke()
            await self.plane.drain(STOP_HAND_OFF_SECONDS)
        if self.control is not None:
            await self.control.hand_off()
        # Gossip the leave: the controller (no longer this node) moves the
        # leadership of this node's partitions to in-sync replicas at once.
        left = self.gossip.stop() if self.gossip is not None else defer.succeed(None)
        if self.plane is not None:
            moved = await self.plane.drain(max(0.0, hand_off_until - self.reactor.seconds()))
            if not moved:
                log.warn("stopping while still leading partitions (their leadership did not move in time)")
        await left
        if self.http_port is not None:
            await self.http_port.stopListening()
        if self.api is not None:
            self.api.streams.close_all()
            self.api.close_dashboards()
        if self.site is not None:
            site = self.site
            await until(self.reactor, lambda: site.active_requests <= 0, STOP_REQUESTS_SECONDS)
        if self.pipeline_loop is not None:
            loop = self.pipeline_loop
            loop.stop()
            await until(self.reactor, lambda: loop.idle, STOP_REQUESTS_SECONDS)
        if self.broker is not None:
            self.broker.begin_stop()
        if self.traffic is not None:
            self.traffic.stop()
        if self.plane is not None:
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
        if self.fault_watch is not None:
            self.fault_watch.stop()
        if self.broker is not None:
            await self.broker.stop()
        if self.store is not None and self.store.env is not None:
            await self.store.close()
        if self.bucket_watch is not None:
            self.bucket_watch.stop()
        if self.s3_client is not None:
            self.s3_client.stop()
        log.info("sprawl node stopped cleanly")


def peer_plane_protection(keyed: bool, ca: bool) -> str:
    """How gossip and the peer channel are protected, as the start-up line says it."""
    if keyed and ca:
        return "cluster key (gossip and every peer frame tagged) and cluster CA (TLS, node certificates)"
    if keyed:
        return "cluster key (gossip and every peer frame tagged)"
    if ca:
        return "cluster CA (TLS, node certificates); gossip is not authenticated"
    return "no cluster key or CA (open to whoever reaches the port)"
