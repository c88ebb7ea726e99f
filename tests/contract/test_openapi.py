"""docs/openapi.yaml against a real node: schemathesis fuzzing of every operation
(except the endless SSE stream, tested separately with a bounded read), and a
check that the spec and the Klein app's routes name the same operations."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    allow_header_conformance,
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import ServerError

from harness import NodeProcess
from harness.paths import DOCS
from sprawl.http.api import SprawlAPI

SPEC_PATH = DOCS / "openapi.yaml"
STREAM_PATH = "/v1/topics/{topic}/stream"
DASHBOARD_STREAM_PATH = (
    "/v1/dashboard/stream"  # endless too: tests/unit/http/test_dashboard.py reads it bounded
)
TIMEOUT = 10.0  # seconds for any one request; the server bounds long-polls at 30 s
MAX_WAIT_MS = 20  # long-polls the fuzzer asks for are shortened to this

# An explicit config (no schemathesis.toml discovery): fixed seed, and invalid
# input may also be refused as too large (413: batch or message limits).
CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": 20240611,
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": [
                    "400",
                    "401",
                    "403",
                    "404",
                    "405",
                    "406",
                    "409",
                    "413",
                    "415",
                    "422",
                    "429",
                ]
            }
        },
    }
)


def _packable(value: Any) -> Any:
    """``value`` with every integer msgpack cannot carry (below -2**63 or above
    2**64 - 1: hypothesis generates them) written as its decimal string, so the
    body stays a msgpack body and the node judges it."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, list):
        return [_packable(v) for v in value]
    if isinstance(value, dict):
        return {k: _packable(v) for k, v in value.items()}
    return value


@schemathesis.serializer("application/msgpack")
def _msgpack(ctx: Any, value: Any) -> bytes:
    """A lean msgpack publish body (docs/api.md): the generated object, packed."""
    return msgspec.msgpack.encode(_packable(value))


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx: Any, value: Any) -> bytes:
    """A lean NDJSON publish body: each generated item on its own line."""
    items = value if isinstance(value, list) else [value]
    return b"".join(msgspec.json.encode(v) + b"\n" for v in items)


schema = schemathesis.openapi.from_path(str(SPEC_PATH), config=CONFIG).exclude(
    path=[STREAM_PATH, DASHBOARD_STREAM_PATH]
)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One real node shared by every fuzzed operation (a node per operation
    would spend the time budget on start-ups)."""
    n = NodeProcess(tmp_path_factory.mktemp("openapi") / "node")
    n.start()
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    """A keep-alive HTTP session for the fuzzer."""
    with requests.Session() as s:
        yield s


SEED_TOPIC = SEED_GROUP = "0"  # the names the generator tries first


@pytest.fixture
def seeded(node: NodeProcess, session: requests.Session) -> None:
    """Before each operation's run: topic "0" holds text and binary messages and
    group "0" has some to lease, so fetch and pull answers carry real messages
    for the response schemas to check (earlier operations may have deleted or
    drained them)."""
    base = f"{node.url}/v1/topics/{SEED_TOPIC}"
    r = session.put(base, json={"max_message_bytes": 1000}, timeout=TIMEOUT)
    assert r.status_code in (200, 201), r.text
    msgs = [
        {"payload": "text", "key": "k", "headers": {"h": "v"}},
        {"payload_b64": "AAEC/w=="},
        {"payload": "é ✓"},
    ]
    r = session.post(base + "/messages", json={"messages": msgs}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    session.delete(f"{base}/groups/{SEED_GROUP}", timeout=TIMEOUT)
    r = session.put(f"{base}/groups/{SEED_GROUP}", json={"start": "earliest"}, timeout=TIMEOUT)
    assert r.status_code in (200, 201), r.text


def no_server_error(ctx: Any, response: Any, case: Any) -> bool:
    """No 5xx, except the documented 501 of the WebSocket route."""
    if response.status_code >= 500 and not (
        response.status_code == 501 and case.operation.path == "/v1/topics/{topic}/ws"
    ):
        raise ServerError(operation=case.operation.label, status_code=response.status_code)
    return True


CHECKS = [
    no_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    unsupported_method,  # methods a path does not serve: 405 ...
    allow_header_conformance,  # ... with an Allow header naming the ones it does
]


def _shorten_waits(case: Any) -> None:
    """Cap valid long-poll waits (fetch ``wait_ms`` query, pull ``wait_ms`` body)
    so an empty topic answers within milliseconds; invalid values stay as they
    are so the server still has to reject them."""
    for holder in (case.query, case.body):
        if isinstance(holder, dict):
            v = holder.get("wait_ms")
            if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 30_000:
                holder["wait_ms"] = min(v, MAX_WAIT_MS)
            elif isinstance(v, str) and v.isdigit() and int(v) <= 30_000:
                holder["wait_ms"] = str(min(int(v), MAX_WAIT_MS))


@schema.parametrize()
@settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_api_conforms_to_openapi(
    case: Any, node: NodeProcess, session: requests.Session, seeded: None
) -> None:
    """Every operation, with generated valid and invalid input: no 5xx, only
    documented status codes, content types, headers and bodies, invalid input
    rejected, and every answer within TIMEOUT (no hang)."""
    _shorten_waits(case)
    case.call_and_validate(base_url=node.url, session=session, checks=CHECKS, timeout=TIMEOUT)


def test_node_healthy_after_fuzzing(node: NodeProcess) -> None:
    """After the fuzzing the node still answers (runs after it: same module node)."""
    r = requests.get(node.url + "/healthz", timeout=TIMEOUT)
    assert r.status_code == 200
    r = requests.get(node.url + "/readyz", timeout=TIMEOUT)
    assert r.status_code == 200
    assert "unexpected error serving" not in node.log_text()


# -- routes ------------------------------------------------------------------------


def _spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text())


def _spec_operations() -> set[tuple[str, str]]:
    methods = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    return {(m.upper(), path) for path, item in _spec()["paths"].items() for m in item if m in methods}


def _app_operations() -> set[tuple[str, str]]:
    out = set()
    for rule in SprawlAPI.app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for m in rule.methods or ():
            if m not in ("HEAD", "OPTIONS"):
                out.add((m, path))
    return out


def test_every_route_is_in_the_spec_and_vice_versa() -> None:
    """The Klein app's url_map and openapi.yaml name the same (method, path) pairs."""
    app, spec = _app_operations(), _spec_operations()
    assert app - spec == set(), "routes missing from docs/openapi.yaml"
    assert spec - app == set(), "operations in docs/openapi.yaml the server does not route"


def test_spec_is_valid_openapi() -> None:
    """The spec loads, every $ref resolves and error responses use the Error schema."""
    spec = _spec()
    assert spec["openapi"].startswith("3.")
    assert spec["components"]["schemas"]["Error"]["required"] == ["error"]
    text = SPEC_PATH.read_text()
    for ref in set(re.findall(r'\$ref: "#/components/(\w+)/(\w+)"', text)):
        assert ref[1] in spec["components"][ref[0]], ref
    for name, resp in spec["components"]["responses"].items():
        assert resp["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, name
    # The topic and group name rule is the server's.
    assert spec["components"]["schemas"]["Name"]["pattern"] == "^[A-Za-z0-9._-]{1,249}$"
    loaded = schemathesis.openapi.from_path(str(SPEC_PATH))
    assert len(list(loaded.get_all_operations())) == len(_spec_operations())


# -- the SSE stream (never ends: bounded reads) ------------------------------------------


def _read_frames(sock: socket.socket, n: int, limit: int = 1 << 20) -> tuple[bytes, list[str]]:
    """Read an SSE answer from ``sock`` (which has a timeout) until ``n``
    complete message frames have arrived; returns (head, frames)."""
    buf = b""
    while True:
        head, sep, body = buf.partition(b"\r\n\r\n")
        if sep:
            complete = body.decode("utf-8").split("\n\n")[:-1]
            frames = [f for f in complete if "\ndata: " in "\n" + f]
            if len(frames) >= n:
                return head, frames
        assert len(buf) < limit, buf[-500:]
        chunk = sock.recv(65536)
        assert chunk, f"connection closed early: {buf[-500:]!r}"
        buf += chunk


def test_stream_serves_documented_frames(sprawl_node: NodeProcess) -> None:
    """GET /stream answers text/event-stream and sends `id: P:OFFSET` / `data:
    <message JSON>` frames for messages already published (bounded read)."""
    r = requests.post(
        sprawl_node.url + "/v1/topics/sse/messages",
        json={"messages": [{"payload": "one", "key": "k"}, {"payload_b64": "AAEC"}]},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, r.text
    required = set(_spec()["components"]["schemas"]["Message"]["required"])
    with socket.create_connection(("127.0.0.1", sprawl_node.http_port), timeout=TIMEOUT) as s:
        # HTTP/1.0: no chunked framing to undo.
        s.sendall(b"GET /v1/topics/sse/stream?from=earliest HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n")
        head, frames = _read_frames(s, 2)
    assert head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.0 200"), head
    assert b"content-type: text/event-stream" in head.lower()
    msgs = []
    for i, frame in enumerate(frames[:2]):
        fields = dict(line.split(": ", 1) for line in frame.splitlines() if not line.startswith(":"))
        assert fields["id"] == f"0:{i}"
        msg = json.loads(fields["data"])
        assert required <= set(msg)
        assert (msg["partition"], msg["offset"]) == (0, i)
        msgs.append(msg)
    assert msgs[0]["payload"] == "one" and msgs[0]["key"] == "k"
    assert msgs[1]["payload_b64"] == "AAEC"


def test_stream_errors_are_documented_json(sprawl_node: NodeProcess) -> None:
    """The stream's error answers (bad name, bad query, missing partition, bad
    Last-Event-ID) are the documented statuses with the JSON error shape.  (A
    missing topic is waited for where topics are auto-created, as here.)"""
    url = sprawl_node.url
    assert requests.put(url + "/v1/topics/sse2", timeout=TIMEOUT).status_code == 201
    documented = {int(c) for c in _spec()["paths"][STREAM_PATH]["get"]["responses"]}
    cases = [
        ("/v1/topics/bad%20name/stream", {}, 400, "invalid_topic_name"),
        ("/v1/topics/sse2/stream?from=soon", {}, 400, "invalid_parameter"),
        ("/v1/topics/sse2/stream?partition=7", {}, 404, "partition_not_found"),
        ("/v1/topics/sse2/stream", {"Last-Event-ID": "x"}, 400, "invalid_last_event_id"),
    ]
    for path, headers, status, code in cases:
        r = requests.get(url + path, headers=headers, timeout=TIMEOUT)
        assert r.status_code == status, (path, r.text)
        assert r.status_code in documented
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["error"]["code"] == code
        assert isinstance(r.json()["error"]["message"], str)
