"""Authentication and authorization: the pure core (sprawl.auth), every route
class over the in-process HTTP API (StubTreq, as in test_http_api), the
WebSocket publish check, and a bounded hypothesis fuzz of Authorization
headers (never a 5xx, never a grant)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import formatEvent

from harness.inproc_http import Node, Reply
from sprawl.auth import (
    ANONYMOUS,
    Authenticator,
    Forbidden,
    Grant,
    JWTVerifier,
    Principal,
    TokenTable,
    Unauthorized,
    load_authenticator,
)
from sprawl.config import ConfigError, NodeConfig
from sprawl.http import authz

SECRET = b"k" * 40
TOKENS = {
    "tokens": [
        {"name": "writer", "token": "writer-token-0123456789", "permissions": {"orders.*": ["publish"]}},
        {"name": "reader", "token": "reader-token-0123456789", "permissions": {"orders.*": ["subscribe"]}},
        {"name": "topic-admin", "token": "tadmin-token-0123456789", "permissions": {"orders.*": ["admin"]}},
        {
            "name": "root",
            "token_sha256": hashlib.sha256(b"root-token-0123456789xx").hexdigest(),
            "permissions": {"*": ["admin"]},
        },
    ]
}
BEARER = {
    name: {"Authorization": f"Bearer {tok}"}
    for name, tok in [
        ("writer", "writer-token-0123456789"),
        ("reader", "reader-token-0123456789"),
        ("tadmin", "tadmin-token-0123456789"),
        ("root", "root-token-0123456789xx"),
    ]
}


def make_jwt(
    perms: dict[str, list[str]], *, secret: bytes = SECRET, exp: float | None = None, **extra: Any
) -> str:
    claims = {"sub": "svc", "permissions": perms, "exp": int(exp if exp is not None else time.time() + 600)}
    claims.update(extra)
    return jwt.encode(claims, secret, algorithm="HS256")


# -- the pure core ------------------------------------------------------------------


def test_grants_match_topic_patterns_and_admin_implies_the_rest() -> None:
    """Patterns are fnmatch globs; admin on a pattern implies publish and subscribe there;
    node-wide checks need a grant on ``*``."""
    p = Principal("p", (Grant("orders.*", frozenset({"publish"})), Grant("logs", frozenset({"admin"}))))
    assert p.allows("publish", "orders.eu")
    assert not p.allows("subscribe", "orders.eu")
    assert not p.allows("publish", "ordersX")
    assert p.allows("subscribe", "logs") and p.allows("publish", "logs") and p.allows("admin", "logs")
    assert not p.allows("admin", None)
    assert Principal("r", (Grant("*", frozenset({"admin"})),)).allows("admin", None)
    assert ANONYMOUS.allows("admin", None)
    with pytest.raises(Forbidden):
        p.require("subscribe", "orders.eu")


def test_token_file_is_validated_and_tokens_are_hashed(tmp_path: Path) -> None:
    """Bad token files are refused with a clear message; lookups work by token and by sha256;
    the secret never shows in repr."""
    table = TokenTable.from_json(TOKENS)
    assert table.lookup("writer-token-0123456789").name == "writer"
    assert table.lookup("root-token-0123456789xx").name == "root"
    assert table.lookup("nope-nope-nope-nope") is None
    assert "writer-token" not in repr(table)
    for bad in [
        [],
        {"tokens": [{"name": "x", "token": "short", "permissions": {"*": ["admin"]}}]},
        {"tokens": [{"name": "x", "token": "a" * 20, "permissions": {"*": ["fly"]}}]},
        {
            "tokens": [
                {"name": "x", "token": "a" * 20, "token_sha256": "0" * 64, "permissions": {"*": ["admin"]}}
            ]
        },
        {"tokens": [{"name": "x", "token": "a" * 20}]},
        {"tokens": [{"name": "x", "token": "a" * 20, "permissions": {"*": ["admin"]}, "extra": 1}]},
    ]:
        with pytest.raises(ConfigError):
            TokenTable.from_json(bad)
    f = tmp_path / "tokens.json"
    f.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        TokenTable.load(str(f))
    with pytest.raises(ConfigError, match="cannot read"):
        TokenTable.load(str(tmp_path / "missing.json"))


def test_jwt_verification() -> None:
    """Valid HS256 tokens give their permissions; expired, wrongly signed, unsigned or
    other-algorithm tokens are refused with 401."""
    v = JWTVerifier(SECRET)
    p = v.verify(make_jwt({"orders.*": ["subscribe"]}))
    assert p.name == "svc" and p.allows("subscribe", "orders.x") and not p.allows("publish", "orders.x")
    with pytest.raises(Unauthorized) as e:
        v.verify(make_jwt({"*": ["admin"]}, exp=time.time() - 3600))
    assert e.value.code == "token_expired"
    for bad in [
        make_jwt({"*": ["admin"]}, secret=b"x" * 40),
        jwt.encode({"permissions": {"*": ["admin"]}, "exp": int(time.time()) + 60}, None, algorithm="none"),
        jwt.encode(
            {"permissions": {"*": ["admin"]}, "exp": int(time.time()) + 60}, SECRET, algorithm="HS512"
        ),
        jwt.encode({"permissions": {"*": ["admin"]}}, SECRET, algorithm="HS256"),  # no exp
        make_jwt({"*": ["root"]}),
        "a.b.c",
    ]:
        with pytest.raises(Unauthorized):
            v.verify(bad)
    with pytest.raises(ConfigError):
        JWTVerifier(b"short")


def test_authenticator_headers_and_off_by_default() -> None:
    """No tokens and no secret: everyone is unrestricted.  Otherwise only ``Bearer <valid>`` passes."""
    assert Authenticator().authenticate(None) is ANONYMOUS
    a = Authenticator(TokenTable.from_json(TOKENS), JWTVerifier(SECRET))
    assert a.authenticate(b"Bearer writer-token-0123456789").name == "writer"
    assert a.authenticate("bearer " + make_jwt({"x": ["publish"]})).name == "svc"
    for bad in [
        None,
        b"",
        b"Bearer",
        b"Basic d3JpdGVyOg==",
        b"Bearer nope-nope-nope",
        b"Bearer \xff\xfe",
        b"x" * 9000,
    ]:
        with pytest.raises(Unauthorized):
            a.authenticate(bad)


def test_node_config_checks_auth_options(tmp_path: Path) -> None:
    """A missing token file or a short JWT secret stops the node at start-up with a clear message."""
    with pytest.raises(ConfigError, match="cannot read"):
        NodeConfig(data_dir=str(tmp_path), auth_tokens=str(tmp_path / "nope")).validate()
    with pytest.raises(ConfigError, match="32 bytes"):
        NodeConfig(data_dir=str(tmp_path), jwt_secret="short").validate()
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET + b"\n")
    a = load_authenticator(None, None, str(secret_file))
    assert a.enabled and a.authenticate_token(make_jwt({"*": ["admin"]})).allows("admin")


# -- over HTTP ------------------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def node(tmp_path: Path, logged_failures: list[dict[str, Any]]) -> AsyncIterator[Node]:
    """An in-process node with tokens and a JWT secret; nothing may log an error."""
    n = Node(tmp_path)
    n.api.auth = Authenticator(TokenTable.from_json(TOKENS), JWTVerifier(SECRET))
    try:
        yield n
    finally:
        await n.close()
    assert not logged_failures, [formatEvent(e) + str(e.get("log_failure", "")) for e in logged_failures]


def error_code(r: Reply) -> str:
    return str(r.json()["error"]["code"])


@pytest_twisted.ensureDeferred
async def test_open_routes_need_no_token(node: Node) -> None:
    """/healthz, /readyz, /health and the dashboard page stay open."""
    for path in ["/healthz", "/readyz", "/health", "/"]:
        r = await node.http.get(path)
        assert r.code == 200, (path, r)


@pytest_twisted.ensureDeferred
async def test_missing_or_bad_token_is_401_with_www_authenticate(node: Node) -> None:
    """401 + ``WWW-Authenticate: Bearer`` + JSON error, for a missing, malformed or unknown token."""
    for headers in [{}, {"Authorization": "Basic eDp5"}, {"Authorization": "Bearer not-a-known-token"}]:
        r = await node.http.get("/v1/topics", headers=headers)
        assert r.code == 401, r
        assert (r.header("www-authenticate") or "").startswith("Bearer")
        assert error_code(r) in ("unauthorized", "invalid_token")
    r = await node.http.get(
        "/v1/topics", headers={"Authorization": "Bearer " + make_jwt({"*": ["admin"]}, exp=1)}
    )
    assert r.code == 401 and error_code(r) == "token_expired"


@pytest_twisted.ensureDeferred
async def test_publish_subscribe_admin_per_topic_pattern(node: Node) -> None:
    """Each route class against each principal: publish needs publish, reads need subscribe,
    topic/group definitions need admin on the topic, and nothing leaks past its pattern."""
    h = node.http
    body = {"messages": [{"payload": "x"}]}
    # topic admin creates topics and groups under its pattern only
    assert (await h.put("/v1/topics/orders.eu", json={}, headers=BEARER["tadmin"])).code == 201
    assert (await h.put("/v1/topics/billing", json={}, headers=BEARER["tadmin"])).code == 403
    assert (await h.put("/v1/topics/orders.eu", json={}, headers=BEARER["writer"])).code == 403
    g = await h.put("/v1/topics/orders.eu/groups/g1", json={"start": "earliest"}, headers=BEARER["tadmin"])
    assert g.code == 201
    assert (await h.put("/v1/topics/orders.eu/groups/g2", json={}, headers=BEARER["reader"])).code == 403
    # publish
    assert (await h.post("/v1/topics/orders.eu/messages", json=body, headers=BEARER["writer"])).code == 200
    r = await h.post("/v1/topics/orders.eu/messages", json=body, headers=BEARER["reader"])
    assert r.code == 403 and error_code(r) == "forbidden"
    assert (await h.post("/v1/topics/billing/messages", json=body, headers=BEARER["writer"])).code == 403
    assert "billing" not in node.broker.topics, "a refused publish auto-created its topic"
    # subscribe
    assert (await h.get("/v1/topics/orders.eu/messages?from=0", headers=BEARER["reader"])).code == 200
    assert (await h.get("/v1/topics/orders.eu/messages?from=0", headers=BEARER["writer"])).code == 403
    assert (await h.get("/v1/topics/orders.eu", headers=BEARER["reader"])).code == 200
    pull = await h.post("/v1/topics/orders.eu/groups/g1/pull", json={"max": 5}, headers=BEARER["reader"])
    assert pull.code == 200 and len(pull.json()["messages"]) == 1
    ack_ids = [m["ack_id"] for m in pull.json()["messages"]]
    assert (
        await h.post(
            "/v1/topics/orders.eu/groups/g1/ack", json={"ack_ids": ack_ids}, headers=BEARER["writer"]
        )
    ).code == 403
    assert (
        await h.post(
            "/v1/topics/orders.eu/groups/g1/ack", json={"ack_ids": ack_ids}, headers=BEARER["reader"]
        )
    ).code == 200
    # stream accepts ?access_token= (browsers cannot set headers on EventSource)
    r = await h.get("/v1/topics/orders.eu/stream?access_token=writer-token-0123456789")
    assert r.code == 403
    # node-wide admin
    for path in ["/v1/cluster", "/v1/cluster/placement", "/metrics", "/status", "/dht", "/store"]:
        assert (await h.get(path, headers=BEARER["tadmin"])).code == 403, path
        assert (await h.get(path, headers=BEARER["root"])).code == 200, path
    # any valid token may list topics
    assert (await h.get("/v1/topics", headers=BEARER["reader"])).code == 200
    # JWT principal
    tok = {"Authorization": "Bearer " + make_jwt({"orders.*": ["subscribe"]})}
    assert (await h.get("/v1/topics/orders.eu/messages?from=0", headers=tok)).code == 200
    assert (await h.post("/v1/topics/orders.eu/messages", json=body, headers=tok)).code == 403
    # deletion needs admin on the topic
    assert (await h.delete("/v1/topics/orders.eu", headers=BEARER["writer"])).code == 403
    assert (await h.delete("/v1/topics/orders.eu", headers=BEARER["tadmin"])).code == 204


@pytest_twisted.ensureDeferred
async def test_seed_routes_check_the_topics_in_their_bodies(node: Node) -> None:
    """POST /publish needs publish on the body's topic; POST /subscribe creates a group on each
    topic, so it needs what ``PUT .../groups/G`` needs: admin on each topic."""
    h = node.http
    ok = await h.post("/publish", json={"topic": "orders.x", "payload": "p"}, headers=BEARER["writer"])
    assert ok.code == 200
    no = await h.post("/publish", json={"topic": "other", "payload": "p"}, headers=BEARER["writer"])
    assert no.code == 403 and "other" not in node.broker.topics
    sub = await h.post("/subscribe", json={"topics": ["orders.x", "other"]}, headers=BEARER["reader"])
    assert sub.code == 403
    sub = await h.post("/subscribe", json={"topics": ["orders.x"], "id": "s1"}, headers=BEARER["reader"])
    assert sub.code == 403 and "s1" not in node.broker.topics["orders.x"].groups
    sub = await h.post("/subscribe", json={"topics": ["orders.x"], "id": "s1"}, headers=BEARER["tadmin"])
    assert sub.code == 200 and "s1" in node.broker.topics["orders.x"].groups


def test_every_route_is_classified() -> None:
    """Every Klein endpoint of the API is in exactly one route class (new routes must be placed)."""
    from sprawl.http.api import SprawlAPI

    endpoints = {r.endpoint for r in SprawlAPI.app.url_map.iter_rules()}
    classes = [
        authz.OPEN,
        authz.ANY_PRINCIPAL,
        set(authz.TOPIC_RULES),
        authz.NODE_ADMIN,
        {"seed_publish", "seed_subscribe"},
    ]
    for e in endpoints:
        assert sum(e in c for c in classes) == 1, e


@pytest_twisted.ensureDeferred
async def test_auth_off_by_default(tmp_path: Path) -> None:
    """Without tokens or a secret every route answers as before (no 401)."""
    n = Node(tmp_path)
    try:
        assert (await n.http.put("/v1/topics/t", json={})).code == 201
        assert (await n.http.get("/v1/cluster")).code == 200
    finally:
        await n.close()


# -- fuzz -------------------------------------------------------------------------------

_headers = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.builds(lambda s: b"Bearer " + s, st.binary(max_size=120)),
    st.builds(
        lambda a, b, c: b"Bearer %s.%s.%s" % (a, b, c),
        st.binary(min_size=0, max_size=40),
        st.binary(min_size=0, max_size=40),
        st.binary(min_size=0, max_size=40),
    ),
    st.sampled_from(
        [
            b"Bearer " + make_jwt({"*": ["admin"]}, secret=b"y" * 40).encode(),
            b"Bearer " + make_jwt({"*": ["admin"]}).encode()[:-2],
            b"Bearer writer-token-012345678",
            b"Bearer  writer-token-0123456789x",
            b"bearer\twriter-token-0123456789",
        ]
    ),
)


@settings(max_examples=300, deadline=None)
@given(_headers)
def test_fuzzed_authorization_headers_never_grant_and_never_crash(header: bytes) -> None:
    """Arbitrary Authorization values raise Unauthorized (a 401) or, for the one valid
    header shape, give the token's own principal -- nothing else, never an admin grant."""
    a = Authenticator(TokenTable.from_json(TOKENS), JWTVerifier(SECRET))
    try:
        p = a.authenticate(header)
    except Unauthorized:
        return
    assert p.name in ("writer", "reader", "topic-admin", "root", "svc")
    assert not p.unrestricted


@pytest_twisted.ensureDeferred
async def test_fuzzed_headers_over_http_are_401_never_5xx(node: Node) -> None:
    """A bounded sample of hostile headers through the real resource: always 401 with the JSON shape."""
    import random

    rng = random.Random(1234)
    samples = [bytes(rng.randrange(32, 127) for _ in range(rng.randrange(0, 80))) for _ in range(40)]
    samples += [b"Bearer " + s for s in samples[:20]] + [b"Bearer a.b.c", b"Bearer " + b"A" * 5000]
    for s in samples:
        r = await node.http.get("/v1/cluster", headers={b"Authorization": s})
        assert r.code == 401, (s, r)
        assert set(json.loads(r.body)["error"]) == {"code", "message"}


# -- a real node and sprawlctl --------------------------------------------------------------


@pytest.mark.integration
def test_real_node_with_token_file_and_sprawlctl_token(sprawl_nodes: Any, tmp_path: Path) -> None:
    """``twistd sprawl --auth-tokens FILE``: sprawlctl without a token gets a one-line 401 error,
    with ``SPRAWL_TOKEN`` it works within the token's permissions; the token is never logged."""
    from click.testing import CliRunner

    from sprawl.ctl import cli

    f = tmp_path / "tokens.json"
    f.write_text(json.dumps(TOKENS))
    node = sprawl_nodes("--auth-tokens", str(f))

    def ctl(*args: str, token: str | None = None) -> Any:
        env = {"SPRAWL_TOKEN": token} if token else {"SPRAWL_TOKEN": ""}
        return CliRunner().invoke(
            cli, ["-n", node.url, "--timeout", "10", *args], env=env, catch_exceptions=False
        )

    r = ctl("topics", "list")
    assert r.exit_code != 0 and ("401" in r.stderr or "unauthorized" in r.stderr), r.stderr
    r = ctl("topics", "create", "orders.a", "--partitions", "1", token="tadmin-token-0123456789")
    assert r.exit_code == 0, r.stderr
    r = ctl("publish", "-t", "orders.a", "-m", "hello", token="writer-token-0123456789")
    assert r.exit_code == 0, r.stderr
    r = ctl("publish", "-t", "orders.a", "-m", "hello", token="reader-token-0123456789")
    assert r.exit_code != 0 and "forbidden" in r.stderr
    r = ctl(
        "subscribe",
        "-t",
        "orders.a",
        "--from",
        "earliest",
        "-c",
        "1",
        "--idle-timeout",
        "10",
        token="reader-token-0123456789",
    )
    assert r.exit_code == 0 and r.stdout.strip() == "hello", r.stderr
    log = node.log_text()
    assert "token-0123456789" not in log
    assert "authentication on" in log


@pytest.mark.integration
def test_bench_uses_the_token(sprawl_nodes: Any, tmp_path: Path) -> None:
    """``sprawlctl --token T bench`` publishes and subscribes with the token; without it the
    bench fails in one line (401)."""
    from click.testing import CliRunner

    from sprawl.ctl import cli

    f = tmp_path / "tokens.json"
    f.write_text(json.dumps(TOKENS))
    node = sprawl_nodes("--auth-tokens", str(f))
    args = ["-n", node.url, "bench", "--messages", "500", "--batch", "50", "--publishers", "2", "--json"]
    bad = CliRunner().invoke(cli, args, env={"SPRAWL_TOKEN": ""}, catch_exceptions=False)
    assert bad.exit_code != 0 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    ok = CliRunner().invoke(
        cli, ["--token", "root-token-0123456789xx", *args], env={"SPRAWL_TOKEN": ""}, catch_exceptions=False
    )
    assert ok.exit_code == 0, ok.stderr
    r = json.loads(ok.stdout)
    assert r["published"] == 500 and r["delivered"] == 500


@pytest_twisted.ensureDeferred
async def test_odd_paths_do_not_skip_the_check(node: Node) -> None:
    """Doubled slashes, encoded slashes and unknown routes never reach a handler without a token."""
    for path in [
        "//v1/cluster",
        "/v1//cluster",
        "/v1/cluster/",
        "/v1/topics/a%2Fb/messages",
        "/nope",
        "//metrics",
    ]:
        r = await node.http.get(path)
        assert r.code == 401, (path, r)
    r = await node.http.get("//v1/cluster", headers=BEARER["reader"])
    assert r.code in (403, 404, 308), r
