"""Integration: the asyncio publish socket (:mod:`sprawl.client.aiows`) against a real
``twistd sprawl`` node -- pipelined msgpack publish frames (text and binary payloads, ids)
stored once each, in order, answered by ref; a bad batch fails only its own future; a
refused upgrade is a clear error.  One node for the module, stopped by the fixture; every
wait bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import NodeProcess
from sprawl.client import ClientError, SprawlClient
from sprawl.client.aiows import open_publisher

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One real node for the module."""
    with NodeProcess(Path(tmp_path_factory.mktemp("aiows")) / "n") as n:
        yield n


def test_pipelined_frames_store_every_message_once_in_order(node: NodeProcess) -> None:
    """40 frames of 25 (window 8) are all answered; offsets 0..999 in send order; a repeat of
    the same ids is all duplicates; the binary payload comes back as bytes."""
    SprawlClient(node.url, timeout=10).create_topic("aiows", partitions=1)
    batches = [[{"payload": f"b{b}m{i}", "id": f"{b}-{i}"} for i in range(25)] for b in range(40)]
    batches[3][0] = {"payload": b"\x00\xff", "id": "3-0"}

    async def scenario() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        pub = await open_publisher(node.url, "aiows", window=8, timeout=10)
        futs = [await pub.publish(b, "leader") for b in batches]
        assert pub.in_flight <= 8
        got = await asyncio.wait_for(asyncio.gather(*futs), 30)
        again = await asyncio.wait_for(
            asyncio.gather(*[await pub.publish(b, "leader") for b in batches[:5]]), 30
        )
        pub.close()
        return list(got), list(again)

    got, again = asyncio.run(scenario())
    offsets = [o for p in got for o in p["offsets"]]  # type: ignore[attr-defined]
    assert offsets == list(range(1000))
    assert [p["ids"] for p in got] == [[m["id"] for m in b] for b in batches]
    assert all(all(p["duplicates"]) for p in again)  # type: ignore[arg-type]
    fetched = SprawlClient(node.url, timeout=10).fetch("aiows", 0, 0, limit=1000)
    assert len(fetched.messages) == 1000
    assert fetched.messages[75].payload == b"\x00\xff" and fetched.messages[999].payload == b"b39m24"


def test_a_bad_batch_fails_only_its_own_future(node: NodeProcess) -> None:
    """An invalid message's frame gets its error; the frames around it are stored."""

    async def scenario() -> list[object]:
        pub = await open_publisher(node.url, "aiows-bad", window=4, timeout=10)
        futs = [
            await pub.publish([{"payload": "ok1"}], "leader"),
            await pub.publish([{"payload": "x", "id": ""}], "leader"),
            await pub.publish([{"payload": "ok2"}], "leader"),
        ]
        res = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), 30)
        pub.close()
        return list(res)

    first, bad, last = asyncio.run(scenario())
    assert isinstance(bad, ClientError) and "invalid_message" in str(bad)
    assert isinstance(first, dict) and isinstance(last, dict)
    fetched = SprawlClient(node.url, timeout=10).fetch("aiows-bad", 0, 0, limit=10)
    assert [m.payload for m in fetched.messages] == [b"ok1", b"ok2"]


def test_a_refused_upgrade_is_a_clear_error(node: NodeProcess) -> None:
    """An invalid topic name: the node answers 400, the open fails saying so."""
    with pytest.raises(ClientError, match="refused the publish socket \\(400\\)"):
        asyncio.run(open_publisher(node.url, "bad name!", timeout=10))
