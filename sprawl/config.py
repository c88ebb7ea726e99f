"""Node configuration: parsing of sizes, durations and addresses, and the
validated :class:`NodeConfig` every service is built from.

Pure: no Twisted import.  ``sprawl.tap`` maps command-line options, the
``SPRAWL_*`` environment and an optional config file onto :class:`NodeConfig`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import secrets
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sprawl.errors import ConfigError

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUM_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")

TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}\Z")  # \Z: "$" would let a trailing newline through


def parse_size(text: str | int) -> int:
    """Parse ``"256MB"``, ``"4GiB"``, ``"1000"`` into bytes.

    Decimal units (KB, MB, GB) are powers of 1000, binary ones (KiB, MiB) of 1024.
    """
    if isinstance(text, int):
        if text < 0:
            raise ConfigError(f"size must not be negative: {text}")
        return text
    m = _NUM_UNIT.match(str(text))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ConfigError(f"not a size: {text!r} (use e.g. 256MB, 4GiB, 1000)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_duration(text: str | float | int) -> float:
    """Parse ``"1h"``, ``"30s"``, ``"250ms"``, ``"7d"`` or a number of seconds."""
    if isinstance(text, (int, float)):
        if text < 0:
            raise ConfigError(f"duration must not be negative: {text}")
        return float(text)
    m = _NUM_UNIT.match(str(text))
    if not m or m.group(2).lower() not in _DURATION_UNITS:
        raise ConfigError(f"not a duration: {text!r} (use e.g. 250ms, 30s, 1h, 7d)")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]


def parse_port(text: str | int) -> int:
    """A TCP/UDP port number; 0 asks the OS for a free one."""
    try:
        port = int(text)
    except (TypeError, ValueError):
        raise ConfigError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"port out of range 0-65535: {port}")
    return port


def parse_hostport(text: str) -> tuple[str, int]:
    """Parse ``host:port`` or ``[v6]:port``."""
    text = text.strip()
    m = re.match(r"^\[([^\]]+)\]:(\d+)$", text) or re.match(r"^([^:\s]+):(\d+)$", text)
    if not m:
        raise ConfigError(f"not host:port: {text!r}")
    port = parse_port(m.group(2))
    if port == 0:
        raise ConfigError(f"seed port must not be 0: {text!r}")
    return m.group(1), port


def parse_seeds(text: str | list[str]) -> list[tuple[str, int]]:
    """A comma-separated list of ``host:port`` seeds."""
    items = text if isinstance(text, list) else [s for s in str(text).split(",") if s.strip()]
    return [parse_hostport(s) for s in items]


#: Shortest cluster key accepted (HMAC-SHA256 wants at least this much secret).
MIN_CLUSTER_KEY_BYTES = 16


def parse_cluster_key(text: str | bytes) -> bytes:
    """The gossip cluster key as bytes.

    Accepted forms: ``hex:...``, ``base64:...`` or ``raw:...`` explicitly;
    otherwise an even-length hex string, then a (padded) base64 string that
    decodes to at least 16 bytes, then the raw UTF-8 string.  The result
    must be at least 16 bytes.
    """
    if isinstance(text, bytes):
        key = text
    else:
        s = str(text).strip()
        low = s.lower()
        try:
            if low.startswith("hex:"):
                key = bytes.fromhex(s[4:])
            elif low.startswith("base64:"):
                key = base64.b64decode(s[7:], validate=True)
            elif low.startswith("raw:"):
                key = s[4:].encode()
            elif s and len(s) % 2 == 0 and re.fullmatch(r"[0-9A-Fa-f]+", s):
                key = bytes.fromhex(s)
            else:
                key = _maybe_base64(s) or s.encode()
        except (ValueError, binascii.Error) as e:
            raise ConfigError(f"cluster key not decodable: {e}") from None
    if len(key) < MIN_CLUSTER_KEY_BYTES:
        raise ConfigError(f"cluster key must be at least {MIN_CLUSTER_KEY_BYTES} bytes (got {len(key)})")
    return key


def generate_cluster_key() -> str:
    """A new random cluster key (32 bytes) in the form :func:`parse_cluster_key` reads."""
    return "base64:" + base64.b64encode(secrets.token_bytes(32)).decode()


def read_cluster_key_file(path: str) -> bytes:
    """The cluster key held in a file (surrounding whitespace ignored).

    A file every user may read is refused: the key is the cluster's only
    secret when no cluster CA is used.
    """
    import os
    import stat

    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            raw = f.read(4096)
    except OSError as e:
        raise ConfigError(f"cannot read cluster key file {path}: {e.strerror}") from None
    if st.st_mode & stat.S_IRWXO:
        raise ConfigError(
            f"cluster key file {path} is readable by every user (mode {stat.S_IMODE(st.st_mode):o}); "
            f"chmod 600 it"
        )
    try:
        text = raw.decode().strip()
    except UnicodeDecodeError:
        raise ConfigError(f"cluster key file {path} is not text (use sprawlctl cluster keygen)") from None
    if not text:
        raise ConfigError(f"cluster key file {path} is empty (use sprawlctl cluster keygen)")
    return parse_cluster_key(text)


def is_loopback(addr: str) -> bool:
    """Whether ``addr`` (an interface address or ``localhost``) is a loopback address."""
    a = addr.strip().strip("[]")
    if a.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(a.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


#: The message of a node refusing to open its peer port beyond loopback without a key or CA.
UNSAFE_BIND = (
    "--bind-addr {addr} opens the gossip and peer port beyond this host, but the cluster has no "
    "--cluster-key and no --cluster-ca: anyone who can reach the port could join, change and "
    "delete topics. Make a key with `sprawlctl cluster keygen -o cluster.key` and give every node "
    "--cluster-key-file cluster.key (or --cluster-ca certificates); --insecure-cluster overrides this."
)


def _maybe_base64(s: str) -> bytes | None:
    if len(s) % 4 or not re.fullmatch(r"[A-Za-z0-9+/_-]+={0,2}", s):
        return None
    try:
        key = base64.b64decode(s.replace("-", "+").replace("_", "/"), validate=True)
    except (ValueError, binascii.Error):
        return None
    return key if len(key) >= MIN_CLUSTER_KEY_BYTES else None


def parse_bool(text: str | bool) -> bool:
    """``true/false``, ``yes/no``, ``on/off``, ``1/0``."""
    if isinstance(text, bool):
        return text
    v = str(text).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"not a boolean: {text!r} (use true or false)")


def normalize_endpoint_url(url: str) -> str:
    """Accept a scheme-less S3 endpoint (``localhost:9000``) as ``http://``."""
    url = url.strip()
    if not url:
        return url
    if "://" not in url:
        url = "http://" + url
    return url


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def origin_key(origin: str) -> tuple[str, str, int] | None:
    """``scheme://host[:port]`` → (scheme, host, port), ports defaulted; None if malformed
    (the HTTP ``Origin`` check compares these)."""
    try:
        u = urlsplit(origin.strip())
        port = u.port
    except ValueError:
        return None
    scheme = u.scheme.lower()
    host = (u.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host or u.path not in ("", "/") or u.query or u.username:
        return None
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]


def parse_allowed_origins(text: str | list[str] | None) -> tuple[str, ...]:
    """``--allowed-origins``: a comma-separated list of ``scheme://host[:port]``
    (or ``*`` for every origin, or ``null``); :class:`ConfigError` otherwise."""
    if text is None:
        return ()
    items = text if isinstance(text, list) else str(text).split(",")
    out: list[str] = []
    for raw in items:
        item = str(raw).strip()
        if not item:
            continue
        if item in ("*", "null"):
            out.append(item)
            continue
        if origin_key(item) is None:
            raise ConfigError(f"--allowed-origins: not an origin (scheme://host[:port]): {item!r}")
        out.append(item.rstrip("/"))
    return tuple(out)


#: The seasons ``--forecast-seasons`` names, in seconds.
SEASON_PERIODS = {"daily": 86400.0, "hourly": 3600.0}
#: Buckets of one season at most (a daily season at one-minute steps: ~6 KB a series).
MAX_SEASON_BUCKETS = 1440


@dataclass
class NodeConfig:
    """Everything a node needs to start, validated.

    Cluster fields (seeds, bind, advertise, replication factor) are parsed and
    validated now; the gossip, Raft and replication services act on them.
    """

    node_id: str | None = None
    data_dir: str = "./sprawl-data"
    #: Gossip + peer channel address.  None: 127.0.0.1 without a cluster key
    #: or CA, 0.0.0.0 with one (resolved by :meth:`validate`).
    bind_addr: str | None = None
    bind_port: int = 7946
    advertise_addr: str | None = None
    http_addr: str = "0.0.0.0"
    http_port: int = 8080
    http_endpoint: str | None = None
    seeds: list[tuple[str, int]] = field(default_factory=list)
    #: Gossip packets and peer-channel frames are authenticated with this key when set.
    cluster_key: bytes | None = field(default=None, repr=False)
    #: A file holding the cluster key (read by :meth:`validate`; ``cluster_key`` wins).
    cluster_key_file: str | None = field(default=None, repr=False)
    #: Allow a peer port beyond loopback without a key or CA (loudly logged).
    insecure_cluster: bool = False
    #: Ack durable publishes after one fsync of the node's write-ahead log, LMDB
    #: written after (on by default since issue 16's wal37; ``--no-wal`` /
    #: ``SPRAWL_WAL=0`` turn it off; docs/architecture.md, "The write-ahead log").
    wal: bool = True
    replication_factor: int = 3
    memory_budget: int = 256 * 1000**2
    disk_budget: int = 4 * 1000**3
    segment_bytes: int = 64 * 1000**2
    segment_age: float = 3600.0
    disk_to_s3_age: float = 3600.0
    s3_endpoint: str | None = None
    s3_bucket: str | None = None
    s3_prefix: str = ""
    s3_region: str = "us-east-1"
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    #: Create the bucket when it is missing.
    s3_create_bucket: bool = True
    #: Uploads (and S3 threads) in flight at once.
    s3_concurrency: int = 2
    #: Bytes of fetched segment chunks kept in memory for reads below LMDB.
    s3_cache_bytes: int = 64 * 1000**2
    #: Seconds between checks of the S3 bucket while the node runs (``/readyz``).
    s3_check_interval: float = 10.0
    #: Bytes/s of stored records the background scrub reads back and checks (0: off).
    scrub_rate: int = 4 * 1000**2
    #: Seconds an object no shared remote list names must have existed before
    #: the partition leader's sweep deletes it as an orphan.
    s3_orphan_grace: float = 3600.0
    #: LMDB bytes past which publishes are refused (default: the budget, or 1.5x it with S3).
    disk_hard_limit: int | None = None
    default_partitions: int = 1
    auto_create_topics: bool = True
    max_body_bytes: int = 8 * 1000**2
    max_message_bytes: int = 1000**2
    max_batch_messages: int = 10_000
    dedup_window: float = 600.0
    retention_ms: int | None = None
    retention_bytes: int | None = None
    flush_interval: float = 0.0
    log_format: str = "text"
    #: Found a new one-voter Raft cluster when the Raft state is empty (the
    #: default without --seeds; a node with seeds waits to be added).
    bootstrap: bool | None = None
    #: Recovery after losing a majority of the Raft voters for good: make this
    #: node the only voter of a new cluster built from what it holds (refused
    #: while a majority can still be reached).  Command line only.
    force_new_cluster: bool = False
    #: How long a Raft voter may stay dead (by gossip) before it is replaced.
    raft_dead_grace: float = 30.0
    #: Snapshot the metadata every this many applied entries.
    raft_snapshot_entries: int = 1024
    #: Bytes a partition may have appended but not yet durably stored before
    #: publishes to it get 429 ``backpressure`` (None: a quarter of the memory budget).
    partition_backlog: int | None = None
    #: Seconds a stream/WebSocket client may keep its socket full before it is cut off.
    slow_consumer_timeout: float = 30.0
    #: Static bearer tokens (JSON file; see sprawl.auth).  Auth is off without it and a JWT secret.
    auth_tokens: str | None = None
    #: HS256 secret of bearer JWTs (prefer SPRAWL_JWT_SECRET or the file).
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_secret_file: str | None = None
    #: HTTPS: PEM certificate (chain) and key; with ``tls_ca`` clients must present certificates.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    #: Peer channel TLS: with a cluster CA every peer connection is mutual TLS,
    #: each side presenting ``peer_tls_cert`` (default: ``tls_cert``) signed by it.
    cluster_ca: str | None = None
    peer_tls_cert: str | None = None
    peer_tls_key: str | None = None
    #: Web origins (``scheme://host[:port]``) whose pages may change state
    #: (POST/PUT/DELETE, WebSocket); the node's own origin always may.
    allowed_origins: tuple[str, ...] = ()
    #: Open HTTP connections at most; past it a new one is answered 503.
    max_connections: int = 10_000
    #: Seconds a request's line and headers may take to arrive.
    header_timeout: float = 10.0
    #: Seconds a request body may take on top of its size at ``body_min_rate``.
    body_timeout: float = 10.0
    #: Bytes/s a request body must average (past ``body_timeout``).
    body_min_rate: int = 64_000
    #: Learn traffic forecasts online from the gossiped rates (and this
    #: node's counters): anomaly events, the dashboard band, ``predicted_*`` fields.
    forecast: bool = True
    #: Let the controller's balancer act on the forecasts too (needs ``forecast``).
    predictive_balance: bool = True
    #: Predictive balancing with *earned trust* (needs ``predictive_balance``
    #: and a season): no forecasts for one season after a surprise, the
    #: partitions' one-season profiles to the balancer, ``predict_lasting``
    #: (:mod:`sprawl.forecast.earned`; the simulator's ``--earned`` run).
    #: None (the default): on whenever predictive balancing has a season
    #: (:attr:`earned_trust_on`); True insists on it, False turns it off.
    earned_trust: bool | None = None
    #: Seconds between two samples of every rate.
    forecast_interval: float = 5.0
    #: Seconds per model step (and per seasonal bucket).
    forecast_step: float = 60.0
    #: Seconds ahead the balancer (and ``predicted_*``) look.
    forecast_horizon: float = 900.0
    #: Seasons the model learns: ``daily``, ``hourly``, ``daily,hourly`` or ``none``.
    forecast_seasons: str = "daily"
    #: Rate series kept at most (about 6 KB each with the daily season).
    forecast_max_series: int = 1024

    @property
    def _earned_trust_possible(self) -> bool:
        return bool(self.forecast and self.predictive_balance and self.forecast_season_periods)

    @property
    def earned_trust_on(self) -> bool:
        """Whether the balancer acts on forecasts only once they earned trust:
        ``earned_trust`` when set, else whenever predictive balancing has a
        season -- the rule that meets the simulation's bar on every family the
        plain predictive rule loses moves on (docs/benchmarks.md, issue 18)."""
        if self.earned_trust is not None:
            return self.earned_trust
        return self._earned_trust_possible

    def validate(self) -> NodeConfig:
        """Check cross-field rules; raise :class:`ConfigError` with a clear message."""
        if self.node_id is not None and not re.match(r"^[A-Za-z0-9._-]{1,64}$", self.node_id):
            raise ConfigError(f"--node-id must match [A-Za-z0-9._-]{{1,64}}: {self.node_id!r}")
        if not self.data_dir:
            raise ConfigError("--data-dir must not be empty")
        parse_port(self.bind_port)
        parse_port(self.http_port)
        if self.replication_factor < 1:
            raise ConfigError("--replication-factor must be at least 1")
        if self.memory_budget < 1000**2:
            raise ConfigError("--memory-budget must be at least 1MB")
        if self.disk_budget < 10 * 1000**2:
            raise ConfigError("--disk-budget must be at least 10MB")
        if self.segment_bytes < 1000:
            raise ConfigError("--segment-bytes must be at least 1KB")
        if self.default_partitions < 1 or self.default_partitions > 1024:
            raise ConfigError("--partitions must be 1..1024")
        if self.max_message_bytes > self.max_body_bytes:
            raise ConfigError("--max-message-bytes must not exceed --max-body-bytes")
        if bool(self.s3_endpoint) != bool(self.s3_bucket):
            raise ConfigError("--s3-endpoint and --s3-bucket go together (S3 tier is off without both)")
        if self.s3_endpoint:
            self.s3_endpoint = normalize_endpoint_url(self.s3_endpoint)
        if not 1 <= self.s3_concurrency <= 64:
            raise ConfigError("--s3-concurrency must be 1..64")
        if not 0.1 <= self.s3_check_interval <= 3600:
            raise ConfigError("--s3-check-interval must be 100ms..1h")
        if self.disk_hard_limit is not None and self.disk_hard_limit < self.disk_budget:
            raise ConfigError("--disk-hard-limit must not be below --disk-budget")
        if self.cluster_key is not None and self.cluster_key_file:
            raise ConfigError("give --cluster-key (or SPRAWL_CLUSTER_KEY) or --cluster-key-file, not both")
        if self.cluster_key is not None:
            self.cluster_key = parse_cluster_key(self.cluster_key)
        elif self.cluster_key_file:
            self.cluster_key = read_cluster_key_file(self.cluster_key_file)
        if self.log_format not in ("text", "json"):
            raise ConfigError("--log-format must be text or json")
        if self.partition_backlog is not None and self.partition_backlog < 64 * 1000:
            raise ConfigError("--partition-backlog must be at least 64KB")
        if not 0 < self.slow_consumer_timeout <= 3600:
            raise ConfigError("--slow-consumer-timeout must be in (0, 1h]")
        self.allowed_origins = parse_allowed_origins(list(self.allowed_origins))
        if self.max_connections < 1:
            raise ConfigError("--max-connections must be at least 1")
        if not 0 < self.header_timeout <= 3600:
            raise ConfigError("--header-timeout must be in (0, 1h]")
        if not 0 < self.body_timeout <= 3600:
            raise ConfigError("--body-timeout must be in (0, 1h]")
        if self.body_min_rate < 1:
            raise ConfigError("--body-min-rate must be at least 1 byte/s")
        self.check_forecast()
        if self.auth_tokens or self.jwt_secret or self.jwt_secret_file:
            from sprawl.auth import load_authenticator

            load_authenticator(self.auth_tokens, self.jwt_secret, self.jwt_secret_file)  # fail early
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together")
        if self.tls_ca and not self.tls_cert:
            raise ConfigError("--tls-ca (client certificates) needs --tls-cert and --tls-key")
        if self.tls_cert and self.http_endpoint:
            raise ConfigError("give --tls-cert/--tls-key or an ssl: --http-endpoint, not both")
        if self.tls_cert and self.tls_key:
            from sprawl.tlsconfig import check_pem_files

            check_pem_files(self.tls_cert, self.tls_key, self.tls_ca)
        if bool(self.peer_tls_cert) != bool(self.peer_tls_key):
            raise ConfigError("--peer-tls-cert and --peer-tls-key go together")
        if self.peer_tls_cert and not self.cluster_ca:
            raise ConfigError("--peer-tls-cert needs --cluster-ca (peers verify each other against it)")
        if self.cluster_ca:
            cert, key = self.peer_tls_files
            if not (cert and key):
                raise ConfigError(
                    "--cluster-ca needs a node certificate: --peer-tls-cert/--peer-tls-key or --tls-cert/--tls-key"
                )
            from sprawl.tlsconfig import check_pem_files

            check_pem_files(cert, key, self.cluster_ca)
        secured = self.cluster_key is not None or bool(self.cluster_ca)
        if self.bind_addr is None or not str(self.bind_addr).strip():
            self.bind_addr = "0.0.0.0" if secured else "127.0.0.1"
        if not secured and not self.insecure_cluster and not is_loopback(self.bind_addr):
            raise ConfigError(UNSAFE_BIND.format(addr=self.bind_addr))
        return self

    def check_forecast(self) -> None:
        """The forecast options' rules (:meth:`validate`)."""
        if not 0.1 <= self.forecast_interval <= 3600:
            raise ConfigError("--forecast-interval must be 100ms..1h")
        if not self.forecast_interval <= self.forecast_step <= 86400:
            raise ConfigError("--forecast-step must be at least --forecast-interval and at most 1d")
        if not 0 <= self.forecast_horizon <= 7 * 86400:
            raise ConfigError("--forecast-horizon must be 0..7d")
        if not 1 <= self.forecast_max_series <= 1_000_000:
            raise ConfigError("--forecast-max-series must be 1..1000000")
        if self.earned_trust is True and not self._earned_trust_possible:
            raise ConfigError(
                "--earned-trust needs --forecast true, --predictive-balance true and a season "
                "(--forecast-seasons daily, hourly or daily,hourly)"
            )
        for period in self.forecast_season_periods:
            buckets = period / self.forecast_step
            if not 2 <= buckets <= MAX_SEASON_BUCKETS or buckets != int(buckets):
                raise ConfigError(
                    f"--forecast-seasons: a {period:g}s season must be a whole number of --forecast-step "
                    f"({self.forecast_step:g}s) steps, 2..{MAX_SEASON_BUCKETS} of them (use a longer step, "
                    f"or fewer seasons: none, hourly)"
                )

    @property
    def forecast_season_periods(self) -> tuple[float, ...]:
        """``--forecast-seasons`` as season lengths in seconds (ConfigError when unknown)."""
        names = [n.strip().lower() for n in self.forecast_seasons.split(",") if n.strip()]
        if names == ["none"]:
            return ()
        if not names or len(set(names)) != len(names) or not set(names) <= set(SEASON_PERIODS):
            raise ConfigError(
                f"--forecast-seasons must be daily, hourly, daily,hourly or none: {self.forecast_seasons!r}"
            )
        return tuple(SEASON_PERIODS[n] for n in names)

    @property
    def peer_port_exposed(self) -> bool:
        """Whether gossip and the peer channel listen beyond loopback without a key or CA."""
        secured = self.cluster_key is not None or bool(self.cluster_ca)
        return not secured and not is_loopback(self.bind_addr or "127.0.0.1")

    @property
    def peer_tls_files(self) -> tuple[str | None, str | None]:
        """The node certificate and key the peer channel presents."""
        if self.peer_tls_cert:
            return self.peer_tls_cert, self.peer_tls_key
        return self.tls_cert, self.tls_key

    @property
    def http_listen(self) -> str:
        """The HTTP listener as a Twisted endpoint string."""
        if self.http_endpoint:
            return self.http_endpoint
        addr = self.http_addr.replace(":", "\\:")
        return f"tcp:{self.http_port}:interface={addr}"


def load_config_file(path: str) -> dict[str, Any]:
    """Read a JSON config file whose keys are option names (``http-port`` or ``http_port``)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except ValueError as e:
        raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    known = {f.name for f in fields(NodeConfig)}
    out: dict[str, Any] = {}
    for k, v in data.items():
        name = k.replace("-", "_")
        if name not in known:
            raise ConfigError(f"config file {path}: unknown option {k!r}")
        out[name] = v
    return out
