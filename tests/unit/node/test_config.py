"""Option parsing (sizes, durations, ports, seeds), NodeConfig validation and
``build_config`` precedence: CLI > SPRAWL_* env > config file > defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.python import usage

from sprawl.config import (
    ConfigError,
    NodeConfig,
    load_config_file,
    normalize_endpoint_url,
    parse_duration,
    parse_hostport,
    parse_port,
    parse_seeds,
    parse_size,
)
from sprawl.tap import Options, build_config

_SIZE_MULT = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "kb": 1000,
    "k": 1000,
    "KiB": 1024,
    "MB": 10**6,
    "MiB": 2**20,
    "GB": 10**9,
}
_SIZE_MULT |= {"GiB": 2**30, "TB": 10**12, "TiB": 2**40}


@given(n=st.integers(0, 10**6), unit=st.sampled_from(sorted(_SIZE_MULT)), space=st.sampled_from(["", " "]))
def test_parse_size_units(n: int, unit: str, space: str) -> None:
    """Decimal units are powers of 1000, binary ones of 1024; case and a space are allowed."""
    assert parse_size(f"{n}{space}{unit}") == n * _SIZE_MULT[unit]


def test_parse_size_fractions_ints_and_errors() -> None:
    """Fractions round down to bytes; ints pass; junk and negatives are ConfigErrors."""
    assert parse_size("1.5KB") == 1500
    assert parse_size("0.5MiB") == 512 * 1024
    assert parse_size(4096) == 4096
    for bad in ("", "MB", "12XB", "-5", "1e3", "1,000", "1 2MB", -1):
        with pytest.raises(ConfigError):
            parse_size(bad)


@given(n=st.integers(0, 10**6))
def test_parse_duration_units(n: int) -> None:
    """ms, s (or none), m, h, d."""
    assert parse_duration(f"{n}ms") == pytest.approx(n / 1000)
    assert parse_duration(f"{n}s") == n == parse_duration(str(n))
    assert parse_duration(f"{n}m") == n * 60
    assert parse_duration(f"{n}h") == n * 3600
    assert parse_duration(f"{n}d") == n * 86400


def test_parse_duration_errors_and_numbers() -> None:
    """Numbers are seconds; unknown units and negatives are refused."""
    assert parse_duration(2.5) == 2.5
    assert parse_duration("250ms") == 0.25
    for bad in ("1w", "soon", "", "-1s", -3):
        with pytest.raises(ConfigError):
            parse_duration(bad)


@given(port=st.integers(0, 65535))
def test_parse_port_range(port: int) -> None:
    """Every port 0..65535 parses, as int or text."""
    assert parse_port(port) == port == parse_port(str(port))


@pytest.mark.parametrize("bad", [-1, 65536, "http", "", None, "80.5"])
def test_parse_port_errors(bad: object) -> None:
    """Out of range or non-numeric ports are ConfigErrors."""
    with pytest.raises(ConfigError):
        parse_port(bad)  # type: ignore[arg-type]


def test_seeds() -> None:
    """Comma-separated host:port, IPv6 in brackets, blanks ignored; port 0 refused."""
    assert parse_seeds("a:1, b.example:7946,,[::1]:80 ") == [("a", 1), ("b.example", 7946), ("::1", 80)]
    assert parse_seeds(["x:2"]) == [("x", 2)]
    assert parse_seeds("") == []
    assert parse_hostport(" 10.0.0.1:7946 ") == ("10.0.0.1", 7946)
    for bad in ("nohost", "a:", ":80", "a:0", "a:99999", "::1:80", "a b:1"):
        with pytest.raises(ConfigError):
            parse_hostport(bad)


def test_normalize_endpoint_url() -> None:
    """A scheme-less S3 endpoint gets http://; others are kept."""
    assert normalize_endpoint_url("localhost:9000") == "http://localhost:9000"
    assert normalize_endpoint_url(" https://s3.example ") == "https://s3.example"
    assert normalize_endpoint_url("") == ""


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("node_id", "bad id!", "--node-id"),
        ("data_dir", "", "--data-dir"),
        ("http_port", 70000, "port"),
        ("replication_factor", 0, "--replication-factor"),
        ("memory_budget", 1000, "--memory-budget"),
        ("disk_budget", 1000, "--disk-budget"),
        ("segment_bytes", 10, "--segment-bytes"),
        ("default_partitions", 0, "--partitions"),
        ("max_message_bytes", 10**9, "--max-message-bytes"),
        ("s3_endpoint", "localhost:9000", "--s3-bucket"),
    ],
)
def test_validate_errors(field: str, value: object, message: str) -> None:
    """Each cross-field rule gives a ConfigError naming the option."""
    with pytest.raises(ConfigError, match=message):
        NodeConfig(**{field: value}).validate()


def test_validate_defaults_and_listen() -> None:
    """The defaults validate; the HTTP listener is an endpoint string (IPv6 escaped)."""
    c = NodeConfig().validate()
    assert c.http_listen == "tcp:8080:interface=0.0.0.0"
    assert NodeConfig(http_addr="::1", http_port=0).http_listen == "tcp:0:interface=\\:\\:1"
    assert NodeConfig(http_endpoint="unix:/tmp/s").http_listen == "unix:/tmp/s"
    c = NodeConfig(s3_endpoint="minio:9000", s3_bucket="b").validate()
    assert c.s3_endpoint == "http://minio:9000"


def test_load_config_file(tmp_path: Path) -> None:
    """Dashed or underscored keys; unknown keys, bad JSON, non-objects and missing files refused."""
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"http-port": 9000, "data_dir": "/d"}))
    assert load_config_file(str(p)) == {"http_port": 9000, "data_dir": "/d"}
    for text, msg in (('{"nope": 1}', "unknown option"), ("{", "not valid JSON"), ("[1]", "JSON object")):
        p.write_text(text)
        with pytest.raises(ConfigError, match=msg):
            load_config_file(str(p))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(str(tmp_path / "missing.json"))


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No SPRAWL_* / MINIO_* variables leak in from the environment."""
    import os

    for k in list(os.environ):
        if k.startswith(("SPRAWL_", "MINIO_")):
            monkeypatch.delenv(k)
    return monkeypatch


def parse(*argv: str) -> NodeConfig:
    """Parse a twistd sprawl command line the way twistd does."""
    o = Options()
    o.parseOptions(list(argv))
    return o["node_config"]


def test_no_options_is_the_default_node(clean_env: pytest.MonkeyPatch) -> None:
    """With nothing set: port 8080, data in ./sprawl-data, no S3, auto-create on."""
    c = parse()
    assert c == NodeConfig().validate()
    assert (c.http_port, c.bind_port, c.data_dir, c.s3_endpoint) == (8080, 7946, "./sprawl-data", None)


def test_precedence_cli_env_file_defaults(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each option comes from the CLI if given, else SPRAWL_*, else the config file, else the default."""
    cfg = tmp_path / "sprawl.json"
    cfg.write_text(
        json.dumps({"http-port": 1111, "bind-port": 2222, "memory-budget": "64MB", "segment_bytes": "2MB"})
    )
    clean_env.setenv("SPRAWL_HTTP_PORT", "3333")
    clean_env.setenv("SPRAWL_BIND_PORT", "4444")
    c = parse("--config", str(cfg), "--http-port", "5555")
    assert c.http_port == 5555, "CLI beats env"
    assert c.bind_port == 4444, "env beats file"
    assert c.memory_budget == 64 * 10**6, "file beats default"
    assert c.segment_bytes == 2 * 10**6
    assert c.disk_budget == NodeConfig.disk_budget, "default"
    clean_env.setenv("SPRAWL_CONFIG", str(cfg))
    clean_env.delenv("SPRAWL_HTTP_PORT")
    assert parse().http_port == 1111, "SPRAWL_CONFIG names the file too"


def test_seed_aliases(clean_env: pytest.MonkeyPatch) -> None:
    """--bindAddr --bindPort --httpAddr --httpPort --seeds behave like the dashed names."""
    c = parse(
        "--bindAddr",
        "10.1.2.3",
        "--bindPort",
        "0",
        "--httpAddr",
        "127.0.0.1",
        "--httpPort",
        "0",
        "--insecure-cluster",
    )
    assert (c.bind_addr, c.bind_port, c.http_addr, c.http_port) == ("10.1.2.3", 0, "127.0.0.1", 0)
    c = parse("--seeds", "a:1,b:2", "--bind-addr", "::1")
    assert c.seeds == [("a", 1), ("b", 2)] and c.bind_addr == "::1"


def test_env_for_every_kind_of_option(clean_env: pytest.MonkeyPatch) -> None:
    """SPRAWL_* variables cover sizes, durations, seeds and flags."""
    clean_env.setenv("SPRAWL_MEMORY_BUDGET", "2MiB")
    clean_env.setenv("SPRAWL_DEDUP_WINDOW", "90s")
    clean_env.setenv("SPRAWL_SEEDS", "h:7946")
    clean_env.setenv("SPRAWL_DATA_DIR", "/var/lib/sprawl")
    clean_env.setenv("SPRAWL_NO_AUTO_CREATE", "1")
    c = parse()
    assert c.memory_budget == 2 * 2**20
    assert c.dedup_window == 90.0
    assert c.seeds == [("h", 7946)]
    assert c.data_dir == "/var/lib/sprawl"
    assert c.auto_create_topics is False
    assert parse("--no-auto-create").auto_create_topics is False


def test_the_write_ahead_log_is_on_unless_turned_off(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The node's write-ahead log is on by default; ``--no-wal``, ``SPRAWL_WAL=0`` or the
    config file's ``"wal": false`` turn it off, ``--wal`` / ``SPRAWL_WAL=1`` keep it on;
    the command line beats the environment, which beats the file; both flags at once,
    or a value of SPRAWL_WAL that is neither, are refused."""
    assert NodeConfig().wal is True
    assert parse().wal is True
    assert parse("--wal").wal is True
    assert parse("--no-wal").wal is False
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"wal": False}))
    assert parse("--config", str(cfg)).wal is False
    clean_env.setenv("SPRAWL_WAL", "1")
    assert parse("--config", str(cfg)).wal is True
    assert parse("--no-wal").wal is False
    for off in ("0", "false", "no", "NO"):
        clean_env.setenv("SPRAWL_WAL", off)
        assert parse().wal is False
        assert parse("--wal").wal is True
    clean_env.setenv("SPRAWL_WAL", "maybe")
    with pytest.raises(usage.UsageError, match="SPRAWL_WAL"):
        parse()
    clean_env.delenv("SPRAWL_WAL")
    with pytest.raises(usage.UsageError, match="contradict"):
        parse("--wal", "--no-wal")


def test_minio_env(clean_env: pytest.MonkeyPatch) -> None:
    """The seed's MINIO_* variables configure S3 (scheme-less endpoint accepted);
    SPRAWL_S3_* and the CLI override them."""
    clean_env.setenv("MINIO_ENDPOINT", "localhost:9000")
    clean_env.setenv("MINIO_ACCESS_KEY", "ak")
    clean_env.setenv("MINIO_SECRET_KEY", "sk")
    c = parse()
    assert c.s3_endpoint == "http://localhost:9000"
    assert (c.s3_access_key, c.s3_secret_key) == ("ak", "sk")
    assert c.s3_bucket, "MINIO_* alone must give a startable node"
    clean_env.setenv("SPRAWL_S3_ACCESS_KEY", "ak2")
    clean_env.setenv("SPRAWL_S3_ENDPOINT", "https://s3.example")
    c = parse("--s3-bucket", "mine")
    assert (c.s3_endpoint, c.s3_bucket, c.s3_access_key) == ("https://s3.example", "mine", "ak2")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--http-port", "http"], "--http-port"),
        (["--memory-budget", "lots"], "--memory-budget"),
        (["--seeds", "nohost"], "--seeds"),
        (["--replication-factor", "three"], "--replication-factor"),
        (["--segment-age", "1w"], "--segment-age"),
        (["--memory-budget", "10KB"], "--memory-budget"),
        (["--s3-endpoint", "x:1"], "--s3-bucket"),
        (["--s3-create-bucket", "maybe"], "--s3-create-bucket"),
        (["--s3-concurrency", "0"], "--s3-concurrency"),
        (["--disk-budget", "1GB", "--disk-hard-limit", "500MB"], "--disk-hard-limit"),
    ],
)
def test_bad_options_are_usage_errors(clean_env: pytest.MonkeyPatch, argv: list[str], message: str) -> None:
    """A bad value stops option parsing with a message naming the option."""
    with pytest.raises(usage.UsageError, match=message):
        parse(*argv)


def test_bad_env_value_names_the_option(clean_env: pytest.MonkeyPatch) -> None:
    """An invalid SPRAWL_* value is reported like the matching option."""
    clean_env.setenv("SPRAWL_BIND_PORT", "99999")
    with pytest.raises(ConfigError, match="--bind-port"):
        build_config({}, {"SPRAWL_BIND_PORT": "99999"})
    with pytest.raises(usage.UsageError, match="--bind-port"):
        parse()


def test_s3_tier_options(clean_env: pytest.MonkeyPatch) -> None:
    """The S3 tier's settings parse from options and SPRAWL_* like every other option."""
    c = parse("--s3-endpoint", "s3:9000", "--s3-bucket", "b", "--s3-create-bucket", "false")
    assert (c.s3_endpoint, c.s3_create_bucket, c.s3_concurrency, c.disk_hard_limit) == (
        "http://s3:9000",
        False,
        2,
        None,
    )
    clean_env.setenv("SPRAWL_S3_CONCURRENCY", "5")
    clean_env.setenv("SPRAWL_S3_CACHE_BYTES", "8MB")
    clean_env.setenv("SPRAWL_DISK_HARD_LIMIT", "6GB")
    c = parse("--disk-to-s3-age", "10m")
    assert (c.s3_concurrency, c.s3_cache_bytes, c.disk_hard_limit, c.disk_to_s3_age) == (
        5,
        8 * 1000**2,
        6 * 1000**3,
        600.0,
    )


def test_peer_port_is_loopback_only_without_a_key(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No key and no CA: gossip and the peer channel bind 127.0.0.1 by default; with a
    key (or CA) the default is 0.0.0.0.  Loopback addresses are always allowed."""
    assert parse().bind_addr == "127.0.0.1"
    assert NodeConfig().validate().bind_addr == "127.0.0.1"
    assert parse("--cluster-key", "k" * 32).bind_addr == "0.0.0.0"
    for addr in ("127.0.0.1", "127.0.0.2", "::1", "localhost", "[::1]"):
        assert parse("--bind-addr", addr).bind_addr == addr


@pytest.mark.parametrize("addr", ["0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "2001:db8::1", "example.com"])
def test_wider_peer_address_without_key_refuses_to_start(clean_env: pytest.MonkeyPatch, addr: str) -> None:
    """A non-loopback --bind-addr without a key or CA is one clear error naming the way
    out (sprawlctl cluster keygen); --insecure-cluster (or its variable) allows it."""
    with pytest.raises(usage.UsageError, match="sprawlctl cluster keygen") as e:
        parse("--bind-addr", addr)
    assert "\n" not in str(e.value)
    assert parse("--bind-addr", addr, "--insecure-cluster").peer_port_exposed
    assert parse("--bind-addr", addr, "--cluster-key", "k" * 32).bind_addr == addr
    assert not parse("--bind-addr", addr, "--cluster-key", "k" * 32).peer_port_exposed
    clean_env.setenv("SPRAWL_BIND_ADDR", addr)
    with pytest.raises(usage.UsageError, match="--insecure-cluster"):
        parse()
    clean_env.setenv("SPRAWL_INSECURE_CLUSTER", "1")
    assert parse().bind_addr == addr


def test_cluster_key_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--cluster-key-file (or SPRAWL_CLUSTER_KEY_FILE) reads the key; a file every
    user can read, an empty one, or a key given twice is a clear error."""
    from sprawl.config import generate_cluster_key

    key = generate_cluster_key()
    f = tmp_path / "cluster.key"
    f.write_text(key + "\n")
    f.chmod(0o600)
    c = parse("--cluster-key-file", str(f))
    assert c.cluster_key is not None and len(c.cluster_key) == 32
    assert c.cluster_key == parse("--cluster-key", key).cluster_key
    clean_env.setenv("SPRAWL_CLUSTER_KEY_FILE", str(f))
    assert parse().cluster_key == c.cluster_key
    clean_env.delenv("SPRAWL_CLUSTER_KEY_FILE")
    with pytest.raises(usage.UsageError, match="not both"):
        parse("--cluster-key-file", str(f), "--cluster-key", key)
    f.chmod(0o644)
    with pytest.raises(usage.UsageError, match="chmod 600"):
        parse("--cluster-key-file", str(f))
    empty = tmp_path / "empty.key"
    empty.write_text("\n")
    empty.chmod(0o600)
    with pytest.raises(usage.UsageError, match="empty"):
        parse("--cluster-key-file", str(empty))
    with pytest.raises(usage.UsageError, match="cannot read"):
        parse("--cluster-key-file", str(tmp_path / "missing"))


def test_generated_keys_are_new_and_accepted() -> None:
    """generate_cluster_key gives 32 random bytes in a form parse_cluster_key reads."""
    from sprawl.config import generate_cluster_key, parse_cluster_key

    a, b = generate_cluster_key(), generate_cluster_key()
    assert a != b
    assert len(parse_cluster_key(a)) == 32


def test_http_limit_options(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--allowed-origins, --max-connections, --header-timeout, --body-timeout and --body-min-rate:
    parsed from the CLI, SPRAWL_* and a config file (a list there); nonsense refused at start."""
    from twisted.python import usage

    c = parse()
    assert (c.allowed_origins, c.max_connections, c.header_timeout, c.body_timeout, c.body_min_rate) == (
        (),
        10_000,
        10.0,
        10.0,
        64_000,
    )
    c = parse(
        "--allowed-origins",
        "https://app.example,http://localhost:3000",
        "--max-connections",
        "50",
        "--header-timeout",
        "2s",
        "--body-timeout",
        "500ms",
        "--body-min-rate",
        "1MB",
    )
    assert c.allowed_origins == ("https://app.example", "http://localhost:3000")
    assert (c.max_connections, c.header_timeout, c.body_timeout, c.body_min_rate) == (50, 2.0, 0.5, 10**6)
    clean_env.setenv("SPRAWL_ALLOWED_ORIGINS", "*")
    assert parse().allowed_origins == ("*",)
    clean_env.delenv("SPRAWL_ALLOWED_ORIGINS")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"allowed-origins": ["https://a.example"]}))
    assert parse("--config", str(cfg)).allowed_origins == ("https://a.example",)
    for bad in (
        ["--allowed-origins", "app.example"],
        ["--max-connections", "0"],
        ["--header-timeout", "0"],
        ["--body-timeout", "2h"],
        ["--body-min-rate", "0"],
    ):
        with pytest.raises(usage.UsageError):
            parse(*bad)


def test_forecast_options(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--forecast, --predictive-balance, --forecast-interval/-step/-horizon/-seasons/-max-series:
    defaults, the CLI, SPRAWL_* and a config file; a season that is not a whole number of
    2..1,440 steps, and other nonsense, refused at start with the option named."""
    c = parse()
    assert (c.forecast, c.predictive_balance, c.forecast_interval, c.forecast_step, c.forecast_horizon) == (
        True,
        True,
        5.0,
        60.0,
        900.0,
    )
    assert (c.forecast_seasons, c.forecast_season_periods, c.forecast_max_series) == (
        "daily",
        (86400.0,),
        1024,
    )
    c = parse(
        "--forecast-interval",
        "1s",
        "--forecast-step",
        "10s",
        "--forecast-horizon",
        "2m",
        "--forecast-seasons",
        "hourly",
        "--forecast-max-series",
        "64",
        "--predictive-balance",
        "false",
    )
    assert (c.forecast_interval, c.forecast_step, c.forecast_horizon, c.forecast_max_series) == (
        1.0,
        10.0,
        120.0,
        64,
    )
    assert c.forecast_season_periods == (3600.0,) and c.predictive_balance is False and c.forecast is True
    assert parse("--forecast-seasons", "daily,hourly").forecast_season_periods == (86400.0, 3600.0)
    fast = ("--forecast-interval", "1s", "--forecast-step", "1s", "--forecast-seasons", "none")
    assert parse(*fast).forecast_season_periods == ()
    clean_env.setenv("SPRAWL_FORECAST", "off")
    assert parse().forecast is False
    clean_env.delenv("SPRAWL_FORECAST")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"forecast-horizon": "1h", "predictive_balance": False}))
    c = parse("--config", str(cfg))
    assert c.forecast_horizon == 3600.0 and c.predictive_balance is False
    for bad, named in (
        (["--forecast", "maybe"], "--forecast"),
        (["--forecast-interval", "0"], "--forecast-interval"),
        (
            ["--forecast-step", "1s", "--forecast-interval", "1s"],
            "--forecast-seasons",
        ),  # a daily season of 86,400 steps
        (["--forecast-step", "7s", "--forecast-seasons", "hourly"], "--forecast-seasons"),  # not whole
        (
            ["--forecast-step", "2s", "--forecast-interval", "5s", "--forecast-seasons", "none"],
            "--forecast-step",
        ),
        (["--forecast-seasons", "weekly"], "--forecast-seasons"),
        (["--forecast-seasons", "daily,daily"], "--forecast-seasons"),
        (["--forecast-horizon", "30d"], "--forecast-horizon"),
        (["--forecast-max-series", "0"], "--forecast-max-series"),
    ):
        with pytest.raises(usage.UsageError, match=named):
            parse(*bad)


def test_earned_trust_option(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--earned-trust: by default on whenever predictive balancing has a season
    (and off without one, not refused); the CLI, SPRAWL_EARNED_TRUST and a config
    file set it; ``true`` is refused at start without a season or predictive
    balancing; ``false`` turns it off."""
    assert parse().earned_trust is None and parse().earned_trust_on is True
    assert parse("--earned-trust", "false").earned_trust_on is False
    for without in (
        ["--forecast-seasons", "none", "--forecast-step", "5s"],
        ["--predictive-balance", "false"],
        ["--forecast", "false"],
    ):
        assert parse(*without).earned_trust_on is False
    assert parse("--earned-trust", "true").earned_trust is True
    clean_env.setenv("SPRAWL_EARNED_TRUST", "on")
    assert parse().earned_trust is True
    clean_env.delenv("SPRAWL_EARNED_TRUST")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"earned-trust": True}))
    assert parse("--config", str(cfg)).earned_trust is True
    for bad in (
        ["--forecast-seasons", "none", "--forecast-step", "5s"],
        ["--predictive-balance", "false"],
        ["--forecast", "false"],
    ):
        with pytest.raises(usage.UsageError, match="--earned-trust needs"):
            parse("--earned-trust", "true", *bad)
