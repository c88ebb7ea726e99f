"""Integration: the public client library (:mod:`sprawl.client`) against a real ``twistd
sprawl`` node -- the blocking :class:`SprawlClient` and the Twisted :class:`TxSprawlClient`:
publish (single, batch, keys, headers, ids, acks), fetch from an offset and a time, subscribe
with resume (``Last-Event-ID``), fail-over past a dead URL, consumer groups (pull, ack, nack),
topics admin.  The core cases run with ``wire="lean"`` (msgpack publish bodies, batched
stream events) and ``wire="json"`` alike.  One node for the module, stopped by the fixture;
every wait bounded."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.task import deferLater

from harness import NodeProcess, free_port
from harness.nodes import metric_value
from harness.reactor import bounded, the_reactor
from harness.waits import poll_until
from sprawl.client import ClientError, Message, SprawlClient, TxSprawlClient, outgoing

pytestmark = pytest.mark.integration


@pytest.fixture(params=["lean", "json"])
def wire(request: pytest.FixtureRequest) -> str:
    """The client's wire formats: every core case runs in both, with the same results."""
    return str(request.param)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One real node for the module."""
    with NodeProcess(Path(tmp_path_factory.mktemp("client")) / "n") as n:
        yield n


def test_publish_and_fetch_round_trip(node: NodeProcess, wire: str) -> None:
    """Key, headers, id and bytes survive a publish and a fetch; a repeated id is a duplicate."""
    c = SprawlClient(node.url, wire=wire)
    first = c.publish(
        f"lib-rt-{wire}", b"\x00\xffbinary", key="k1", headers={"kind": "bin"}, id="m-1", acks="leader"
    )
    again = c.publish(f"lib-rt-{wire}", b"\x00\xffbinary", key="k1", id="m-1")
    assert again.duplicates == [True] and again.offsets == first.offsets
    batch = c.publish_batch(f"lib-rt-{wire}", ["text", outgoing("{}", key="k1", headers={"a": "b"})])
    assert len(batch.offsets) == 2 and batch.stored in ("lmdb", "quorum")
    got = c.fetch(f"lib-rt-{wire}", first.partitions[0], "earliest", limit=10)
    msgs = [m for m in got.messages if m.key == "k1"]
    assert msgs[0].payload == b"\x00\xffbinary" and msgs[0].headers == {"kind": "bin"} and msgs[0].id == "m-1"
    assert msgs[1].headers == {"a": "b"} and msgs[1].json() == {}
    # Stored the same way on either wire: binary as binary, text as text.
    assert "payload_b64" in msgs[0].raw and msgs[1].raw["payload"] == "{}"
    assert got.next == got.high_watermark


def test_fetch_from_time(node: NodeProcess, wire: str) -> None:
    """``from_time`` starts at the first message stamped at or after it."""
    c = SprawlClient(node.url, wire=wire)
    c.create_topic(f"lib-time-{wire}", partitions=1)
    c.publish(f"lib-time-{wire}", "old")
    cut = c.fetch(f"lib-time-{wire}").messages[0].timestamp
    assert cut is not None
    # The wall clock moves past the first message's millisecond (bounded wait).
    assert poll_until(lambda: int(time.time() * 1000) > cut, 2.0, step=0.005) is not None
    c.publish(f"lib-time-{wire}", "new")
    later = c.fetch(f"lib-time-{wire}", from_time=cut + 1)
    assert [m.text() for m in later.messages] == ["new"]


def test_subscribe_resumes_after_last_event_id_and_fails_over(node: NodeProcess, wire: str) -> None:
    """A subscription sees every message once; a new one from its ``last_event_id`` (through a
    URL list whose first node is down) gets only what came after."""
    dead = f"http://127.0.0.1:{free_port()}"
    c = SprawlClient([dead, node.url], timeout=5, wire=wire)
    c.create_topic(f"lib-sub-{wire}", partitions=3)
    c.publish_batch(f"lib-sub-{wire}", [outgoing(f"m{i}", key=f"k{i}") for i in range(30)])
    with c.subscribe(f"lib-sub-{wire}", start="earliest", idle_timeout=10) as sub:
        seen = [next(sub).text() for _ in range(30)]
        resume = sub.last_event_id
    assert sorted(seen) == sorted(f"m{i}" for i in range(30))
    assert c.urls[0] == node.url  # the node that answered is tried first from now on
    c.publish_batch(f"lib-sub-{wire}", [outgoing(f"n{i}", key=f"k{i}") for i in range(6)])
    with c.subscribe(f"lib-sub-{wire}", resume=resume, idle_timeout=10) as sub:
        after = [next(sub).text() for _ in range(6)]
    assert sorted(after) == sorted(f"n{i}" for i in range(6))


def test_subscribe_idle_timeout_ends_iteration(node: NodeProcess, wire: str) -> None:
    """With nothing to read, iteration ends after ``idle_timeout``."""
    c = SprawlClient(node.url, wire=wire)
    c.create_topic(f"lib-idle-{wire}")
    assert list(c.subscribe(f"lib-idle-{wire}", idle_timeout=0.5)) == []


def test_groups_pull_ack_nack(node: NodeProcess, wire: str) -> None:
    """A nacked message comes again with its attempt counted; acked ones do not."""
    c = SprawlClient(node.url, wire=wire)
    c.create_group(f"lib-grp-{wire}", "workers", start="earliest", ack_deadline_ms=30000)
    c.publish_batch(f"lib-grp-{wire}", ["a", "b"])
    got = c.pull(f"lib-grp-{wire}", "workers", 10, wait_ms=5000)
    assert sorted(m.text() for m in got) == ["a", "b"]
    a = next(m for m in got if m.text() == "a")
    b = next(m for m in got if m.text() == "b")
    assert c.ack(f"lib-grp-{wire}", "workers", [a])["acked"] == 1
    assert c.nack(f"lib-grp-{wire}", "workers", [b.ack_id or ""])["nacked"] == 1
    again = c.pull(f"lib-grp-{wire}", "workers", 10, wait_ms=5000)
    assert [m.text() for m in again] == ["b"] and again[0].delivery_attempt == 2
    c.ack(f"lib-grp-{wire}", "workers", again)
    assert c.describe_group(f"lib-grp-{wire}", "workers")["in_flight"] == 0
    with pytest.raises(ValueError):
        c.ack(f"lib-grp-{wire}", "workers", [Message(f"lib-grp-{wire}", 0, 0, b"")])


def test_groups_extend_keeps_a_lease_past_its_old_deadline(node: NodeProcess) -> None:
    """An extended lease is not redelivered at its old deadline (a pull that waits past it
    brings nothing, the ack after it is accepted); extending an acked lease raises
    ``lease_not_found``, an expired one ``lease_expired``."""
    c = SprawlClient(node.url)
    c.create_topic("lib-ext", partitions=1)
    c.create_group("lib-ext", "slow", start="earliest", ack_deadline_ms=1000)
    c.publish("lib-ext", "long job")
    (m,) = c.pull("lib-ext", "slow", 1)
    got = c.extend("lib-ext", "slow", [m], extend_ms=120_000)
    assert got["extended"] == 1 and got["ack_deadlines"][m.ack_id] >= m.raw["ack_deadline"] + 100_000
    # The node waits 2.5 s for a message: the old deadline (1 s) passes meanwhile.
    assert c.pull("lib-ext", "slow", 1, wait_ms=2500) == []
    assert c.ack("lib-ext", "slow", [m])["acked"] == 1
    with pytest.raises(ClientError, match="lease_not_found"):
        c.extend("lib-ext", "slow", [m])
    c.publish("lib-ext", "too slow")
    (late,) = c.pull("lib-ext", "slow", 1)

    def expired() -> bool:
        try:
            c.extend("lib-ext", "slow", [late], extend_ms=1)  # live still: ends 1 ms from now
        except ClientError as e:
            assert "lease_expired" in str(e)
            return True
        return False

    assert any(expired() for _ in range(500)), "a 1 ms lease never expired"


def test_topics_admin_and_errors(node: NodeProcess) -> None:
    """Create, describe, list and delete a topic; a missing one is a ClientError naming the code."""
    c = SprawlClient(node.url)
    desc = c.create_topic("lib-admin", partitions=2, retention_ms=60000)
    assert desc.partitions == 2
    assert c.describe_topic("lib-admin").name == "lib-admin"
    assert "lib-admin" in [t["name"] for t in c.list_topics()]
    c.delete_topic("lib-admin")
    with pytest.raises(ClientError, match="topic_not_found"):
        c.describe_topic("lib-admin")


def test_every_url_down_is_one_clear_error() -> None:
    """No node answering: ClientError naming each URL."""
    c = SprawlClient([f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"], timeout=2)
    with pytest.raises(ClientError, match="cannot reach any node"):
        c.list_topics()


@pytest_twisted.ensureDeferred
async def test_twisted_client(node: NodeProcess, wire: str) -> None:
    """The Twisted client: publish, fetch, group pull/ack, and a subscription that delivers
    to its callback and stops on close (a dead first URL is skipped)."""
    c = TxSprawlClient(
        [f"http://127.0.0.1:{free_port()}", node.url], reactor=the_reactor(), timeout=5, wire=wire
    )
    pub = await bounded(c.publish(f"lib-tx-{wire}", "hello", key="k", headers={"h": "1"}))
    got = await bounded(c.fetch(f"lib-tx-{wire}", pub.partitions[0], pub.offsets[0], limit=1))
    assert got.messages[0].text() == "hello" and got.messages[0].headers == {"h": "1"}
    await bounded(c.create_group(f"lib-tx-{wire}", "g", start="earliest"))
    leased = await bounded(c.pull(f"lib-tx-{wire}", "g", 5, wait_ms=2000))
    assert (await bounded(c.ack(f"lib-tx-{wire}", "g", leased)))["acked"] == 1
    seen: list[str] = []
    from twisted.internet.defer import Deferred

    two: Deferred[None] = Deferred()

    def on_message(m: Message) -> None:
        seen.append(m.text())
        if len(seen) == 2:
            two.callback(None)

    sub = c.subscribe(f"lib-tx-{wire}", on_message, start="earliest")
    await bounded(c.publish(f"lib-tx-{wire}", "world", key="k"))
    await bounded(two)
    assert metric_value(node.url, "sprawl_stream_subscribers") >= 1
    sub.close()
    await bounded(sub.done)
    assert seen == ["hello", "world"] and sub.last_event_id is not None
    # close() drops the connection at once (not at the next keepalive): the node sees it go.
    for _ in range(100):
        if metric_value(node.url, "sprawl_stream_subscribers") == 0:
            break
        await bounded(deferLater(the_reactor(), 0.05, lambda: None))
    assert metric_value(node.url, "sprawl_stream_subscribers") == 0


@pytest_twisted.ensureDeferred
async def test_twisted_publish_many_pipelines_batches_on_one_socket(node: NodeProcess) -> None:
    """``publish_many``: 40 batches (text and binary payloads, ids) on one WebSocket past a
    dead first URL; one answer per batch in order, every message stored once; a repeat of
    the same ids is all duplicates; a bad batch fails the call with its error."""
    c = TxSprawlClient([f"http://127.0.0.1:{free_port()}", node.url], reactor=the_reactor(), timeout=5)
    await bounded(c.create_topic("lib-many", partitions=1))
    batches = [[outgoing(f"b{b}m{i}", id=f"{b}-{i}") for i in range(25)] for b in range(40)]
    batches[3][0] = outgoing(b"\x00\xff", id="3-0")
    got = await bounded(c.publish_many("lib-many", batches, acks="leader", window=8))
    assert len(got) == 40 and [len(p.offsets) for p in got] == [25] * 40
    offsets = [o for p in got for o in p.offsets]
    assert sorted(offsets) == list(range(1000)) and not any(d for p in got for d in p.duplicates)
    assert [p.ids for p in got] == [[m["id"] for m in b] for b in batches]
    again = await bounded(c.publish_many("lib-many", batches[:5]))
    assert all(all(p.duplicates) for p in again)
    fetched = await bounded(c.fetch("lib-many", 0, 0, limit=1000))
    assert len(fetched.messages) == 1000 and fetched.messages[75].payload == b"\x00\xff"
    with pytest.raises(ClientError, match="invalid_message"):
        await bounded(c.publish_many("lib-many", [["ok"], [outgoing("x", id="")]]))


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, dict[str, str]]]:
    """A node serving HTTPS with a test CA and requiring bearer tokens."""
    import json

    from harness.pki import make_test_pki

    base = Path(tmp_path_factory.mktemp("client-tls"))
    pki = make_test_pki(base / "pki")
    tokens = base / "tokens.json"
    tokens.write_text(
        json.dumps(
            {
                "tokens": [
                    {"name": "app", "token": TOKEN, "permissions": {"*": ["publish", "subscribe", "admin"]}}
                ]
            }
        )
    )
    args = ("--tls-cert", pki["server_cert"], "--tls-key", pki["server_key"], "--auth-tokens", str(tokens))
    with NodeProcess(base / "n", *args) as n:
        yield n, pki


TOKEN = "client-lib-test-token-0123456789"


def test_tls_and_token(tls_node: tuple[NodeProcess, dict[str, str]], wire: str) -> None:
    """https checked against the CA, the token sent: publish and subscribe work; without the
    token a 401, with another CA a certificate failure."""
    node, pki = tls_node
    url = node.url.replace("http://", "https://")
    c = SprawlClient(url, token=TOKEN, cacert=pki["ca"], wire=wire)
    c.publish(f"lib-tls-{wire}", "over tls")
    with c.subscribe(f"lib-tls-{wire}", start="earliest", idle_timeout=10) as sub:
        assert next(sub).text() == "over tls"
    with pytest.raises(ClientError, match=r"unauthorized|401"):
        SprawlClient(url, cacert=pki["ca"], wire=wire).list_topics()
    with pytest.raises(ClientError, match=r"(?i)certificate"):
        SprawlClient(url, token=TOKEN, cacert=pki["other_ca"], wire=wire).list_topics()


@pytest_twisted.ensureDeferred
async def test_twisted_client_tls_and_token(tls_node: tuple[NodeProcess, dict[str, str]], wire: str) -> None:
    """The Twisted client checks the node's certificate against ``cacert`` and sends the token."""
    node, pki = tls_node
    url = node.url.replace("http://", "https://")
    c = TxSprawlClient(url, token=TOKEN, cacert=pki["ca"], reactor=the_reactor(), wire=wire)
    pub = await bounded(c.publish(f"lib-tls-tx-{wire}", "over tls"))
    many = await bounded(c.publish_many(f"lib-tls-tx-{wire}", [["a", "b"], ["c"]]))
    assert [len(p.offsets) for p in many] == [2, 1]
    got = await bounded(c.fetch(f"lib-tls-tx-{wire}", pub.partitions[0], pub.offsets[0]))
    assert got.messages[0].text() == "over tls"
    stranger = TxSprawlClient(url, token=TOKEN, cacert=pki["other_ca"], reactor=the_reactor(), wire=wire)
    with pytest.raises(ClientError, match="cannot reach"):
        await bounded(stranger.list_topics())
