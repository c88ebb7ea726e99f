"""Integration: server-side ``?filter=`` and ``?fields=`` against a real node -- on the SSE
stream, the WebSocket (cursor mode), fetch and a group pull (which acks what its filter
leaves out) -- through :class:`SprawlClient` and raw HTTP; a bad expression is a 400 naming
the error.  Filters select on unencrypted key and headers of end-to-end encrypted messages."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import FeedReader, NodeProcess, poll_until
from sprawl.client import ClientError, SprawlClient, outgoing
from sprawl.client.e2e import generate_key

pytestmark = pytest.mark.integration

EXPR = "headers.kind == 'order' && payload.total >= `50`"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One real node with a topic of 20 messages: every 4th an order of total >= 50."""
    with NodeProcess(Path(tmp_path_factory.mktemp("filters")) / "n") as n:
        c = SprawlClient(n.url)
        c.create_topic("flt", partitions=2)
        batch = [
            outgoing(
                json.dumps({"n": i, "total": 10 * i, "note": "x" * 50}),
                key=f"k{i % 2}",
                headers={"kind": "order" if i % 2 == 0 else "refund"},
            )
            for i in range(20)
        ]
        c.publish_batch("flt", batch, acks="leader")
        yield n


WANT = [i for i in range(20) if i % 2 == 0 and 10 * i >= 50]  # 6, 8, ..., 18


def test_fetch_filter_and_fields(node: NodeProcess) -> None:
    """A filtered fetch returns only the selected messages, projected; ``next`` moves past the
    others so the read goes on."""
    c = SprawlClient(node.url)
    got = []
    for p in (0, 1):
        start: int | str = "earliest"
        for _ in range(20):
            page = c.fetch("flt", p, start, limit=3, filter=EXPR, fields=["n", "total"])
            got += [m.json() for m in page.messages]
            start = page.next
            if page.next >= page.high_watermark:
                break
    assert sorted(m["n"] for m in got) == WANT
    assert all(set(m) == {"n", "total"} for m in got)


def test_stream_filter(node: NodeProcess) -> None:
    """The SSE stream of every partition delivers only what the filter selects."""
    c = SprawlClient(node.url)
    with c.subscribe("flt", start="earliest", filter=EXPR, idle_timeout=3) as sub:
        got = sorted(m.json()["n"] for m in sub)
    assert got == WANT


def test_websocket_filter(node: NodeProcess) -> None:
    """WebSocket cursor mode takes the same filter and projection."""
    q = urllib.parse.urlencode({"from": "earliest", "filter": EXPR, "fields": "n"})
    reader = FeedReader(node.http_port, f"/v1/topics/flt/ws?{q}", websocket=True)
    try:
        assert poll_until(lambda: len(reader.received()) >= len(WANT), 20) is not None
        got = [json.loads(m["payload"]) for m in reader.received()]
    finally:
        reader.close()
    assert sorted(m["n"] for m in got) == WANT and all(set(m) == {"n"} for m in got)


def test_group_pull_filter_acks_the_rest(node: NodeProcess) -> None:
    """A filtered group pull leases only selected messages; the node acks the others, so the
    group's lag reaches 0 once the selected ones are acked."""
    c = SprawlClient(node.url)
    c.create_group("flt", "g-orders", start="earliest")
    got = []
    for _ in range(20):
        batch = c.pull("flt", "g-orders", 5, wait_ms=500, filter=EXPR)
        got += batch
        if batch:
            c.ack("flt", "g-orders", batch)
        if c.describe_group("flt", "g-orders")["lag"] == 0:
            break
    assert sorted(m.json()["n"] for m in got) == WANT
    assert c.describe_group("flt", "g-orders")["lag"] == 0


@pytest.mark.parametrize(
    "path",
    [
        "/v1/topics/flt/messages?filter=payload.%5B",
        "/v1/topics/flt/stream?filter=nope(payload)",
        "/v1/topics/flt/ws?filter=payload.%5B",
        "/v1/topics/flt/messages?fields=a..b",
    ],
)
def test_bad_filter_is_a_400_naming_the_error(node: NodeProcess, path: str) -> None:
    """Bad expressions and field lists: 400 invalid_filter with the reason."""
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(node.url + path, timeout=10)
    assert info.value.code == 400
    err = json.loads(info.value.read())["error"]
    assert err["code"] == "invalid_filter" and ("filter" in err["message"] or "field" in err["message"])


def test_filter_on_clear_key_of_encrypted_messages(node: NodeProcess) -> None:
    """Encrypted payloads stay opaque, yet a filter selects on their clear key and headers."""
    key = generate_key()
    producer = SprawlClient(node.url, encrypt_for=[key.public])
    producer.publish_batch("flt-e2e", [outgoing(f"secret {i}", key=f"acct-{i % 3}") for i in range(9)])
    reader = SprawlClient(node.url, decrypt_with=[key])
    page = reader.fetch("flt-e2e", 0, "earliest", limit=100, filter="key == 'acct-1'")
    assert sorted(m.text() for m in page.messages) == ["secret 1", "secret 4", "secret 7"]
    with pytest.raises(ClientError, match="invalid_filter"):
        reader.fetch("flt-e2e", filter="payload.[")


def test_sprawlctl_subscribe_filter(node: NodeProcess) -> None:
    """``sprawlctl subscribe --filter --fields`` on the stream and through a group."""
    from click.testing import CliRunner

    from sprawl.ctl import cli

    def run(*args: str) -> list[dict[str, int]]:
        r = CliRunner().invoke(cli, ["-n", node.url, "subscribe", "-t", "flt", "--from", "earliest", *args])
        assert r.exit_code == 0, r.output
        return [json.loads(line) for line in r.stdout.split()]

    want = len(WANT)
    streamed = run("-c", str(want), "--idle-timeout", "10", "--filter", EXPR, "--fields", "n")
    assert sorted(m["n"] for m in streamed) == WANT and all(set(m) == {"n"} for m in streamed)
    grouped = run(
        "--group", "ctl-g", "-c", str(want), "--idle-timeout", "10", "--filter", EXPR, "--fields", "n"
    )
    assert sorted(m["n"] for m in grouped) == WANT
    bad = CliRunner().invoke(cli, ["-n", node.url, "subscribe", "-t", "flt", "--filter", "payload.["])
    assert bad.exit_code == 1 and "invalid_filter" in bad.output
