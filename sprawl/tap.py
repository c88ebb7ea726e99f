"""``twistd sprawl``: the command-line options, and the node's service built from them.

This module only parses: options, the config file and the environment into a
validated :class:`~sprawl.config.NodeConfig`, and the start checks that
refuse with one line.  The node's objects are built by the composition root,
:mod:`sprawl.node`.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.python import usage

from sprawl import __version__
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
from sprawl.http.origin import parse_allowed_origins
from sprawl.node import NodeService, s3_settings

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
    "forecast": ("forecast", parse_bool),
    "predictive-balance": ("predictive_balance", parse_bool),
    "earned-trust": ("earned_trust", parse_bool),
    "forecast-interval": ("forecast_interval", parse_duration),
    "forecast-step": ("forecast_step", parse_duration),
    "forecast-horizon": ("forecast_horizon", parse_duration),
    "forecast-seasons": ("forecast_seasons", str),
    "forecast-max-series": ("forecast_max_series", int),
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
    "forecast": (
        "Learn traffic forecasts from the gossiped rates: anomaly events, the dashboard's forecast band, "
        "predicted load (sprawlctl top): true or false [default: true]."
    ),
    "predictive-balance": (
        "Let the balancer move partitions predicted to run hot before they do (needs --forecast): "
        "true or false [default: true]."
    ),
    "earned-trust": (
        "Predictive balancing only on forecasts that earned trust: none of a partition's short forecasts "
        "for one season after a surprise on it, "
        "and a node sheds on a forecast only if predicted hot over half of the next season "
        "(needs --predictive-balance and a season): true or false [default: on whenever predictive "
        "balancing has a season]."
    ),
    "forecast-interval": "How often every rate is sampled for the forecasts [default: 5s].",
    "forecast-step": "The forecast model's step and seasonal bucket [default: 1m].",
    "forecast-horizon": "How far ahead the balancer and the predicted loads look [default: 15m].",
    "forecast-seasons": "Seasons the forecasts learn: daily, hourly, daily,hourly or none [default: daily].",
    "forecast-max-series": "Rate series the forecaster keeps at most (about 6KB each) [default: 1024].",
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
            "wal",
            None,
            "Ack durable publishes to partitions this node holds alone after one fsync of a "
            "write-ahead log of the node's own (DATA_DIR/lmdb-wal), LMDB written after, off the "
            "ack's path (the default; env SPRAWL_WAL=1).",
        ],
        [
            "no-wal",
            None,
            "No write-ahead log: ack durable publishes after LMDB's own commit (two synchronous "
            'disk writes instead of one; env SPRAWL_WAL=0, config file "wal": false).',
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
    wal = _switch(opts, environ, "wal", "SPRAWL_WAL")
    if wal is not None:
        values["wal"] = wal
    return NodeConfig(**values).validate()


def _switch(opts: dict[str, Any], environ: Any, name: str, env_name: str) -> bool | None:
    """A setting on by default with a ``--NAME`` / ``--no-NAME`` pair of flags and an
    environment variable (``1``/``true``/``yes`` or ``0``/``false``/``no``): what the
    command line or else the environment says, None when neither says (the config
    file's value or the default stands)."""
    on, off = bool(opts.get(name)), bool(opts.get("no-" + name))
    if on and off:
        raise ConfigError(f"--{name} and --no-{name} contradict each other")
    if on or off:
        return on
    raw = environ.get(env_name)
    if raw is None or raw == "":
        return None
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise ConfigError(f"{env_name}={raw!r}: expected 1/true/yes or 0/false/no")


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
    from twisted.internet import reactor

    from sprawl.log_observers import LoggingMultiService
    from sprawl.node.clock import install_steady_clock

    config: NodeConfig = options["node_config"]
    install_steady_clock(reactor)  # (before any timer: a step of the system clock back freezes none)
    if config.s3_endpoint and config.s3_bucket:
        check_s3_at_start(config)
    top = LoggingMultiService(config.log_format)
    NodeService(config).setServiceParent(top)
    return top
