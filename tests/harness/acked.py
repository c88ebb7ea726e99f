"""What a cluster acked, and whether its logs still hold it: a publisher
thread that records every ack (:class:`AckedWriter`), a whole-partition read
through one node (:func:`read_partition`) and the check that every node
serves the same log with every acked id at its acked offset
(:func:`check_logs`).  Used by the network-partition tests, where the writer
runs through one node while others are cut apart."""

from __future__ import annotations

import threading
from typing import Any

from harness.cluster import NodeCluster
from harness.nodes import http_json
from harness.waits import poll_until, scaled


def publish(
    cluster: NodeCluster, node: str, topic: str, mid: str, timeout: float = 5.0, acks: str = "quorum"
) -> tuple[int, Any]:
    """One message (payload and id ``mid``) through ``node``: the status and body."""
    return http_json(
        cluster.url(node) + f"/v1/topics/{topic}/messages",
        "POST",
        {"messages": [{"payload": mid, "id": mid}], "acks": acks},
        timeout=timeout,
    )


class AckedWriter(threading.Thread):
    """Publishes ``{prefix}-N`` to ``topic`` through one node, one at a time,
    until stopped (at most ``limit``, far more than any scenario's time
    allows): what was acked at which offset, and how many were refused.

    As a context manager it starts, waits for its first 20 acks, and stops
    (joined) on exit."""

    def __init__(
        self, cluster: NodeCluster, via: str, topic: str, prefix: str = "w", limit: int = 1_000_000
    ) -> None:
        super().__init__(daemon=True)
        self.cluster, self.via, self.topic, self.prefix, self.limit = cluster, via, topic, prefix, limit
        self.acked: dict[str, int] = {}
        self.refused = 0
        self.stop_ = threading.Event()

    def __enter__(self) -> AckedWriter:
        """Start, and wait until 20 publishes are acked (stopped again if not)."""
        self.start()
        if poll_until(lambda: self.acks() >= 20, scaled(30.0)) is None:
            self.stop()
            raise AssertionError(
                f"{self.topic} via {self.via}: no acks at the start ({self.refused} refused)"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run(self) -> None:
        for i in range(self.limit):
            if self.stop_.is_set():
                return
            mid = f"{self.prefix}-{i}"
            status, body = publish(self.cluster, self.via, self.topic, mid)
            if status == 200:
                self.acked[mid] = int(body["offsets"][0])
            else:
                self.refused += 1

    def acks(self) -> int:
        """Acks so far."""
        return len(self.acked)

    def stop(self) -> None:
        """Stop and join (bounded: one publish's timeout)."""
        self.stop_.set()
        if self.is_alive():
            self.join(30)
        assert not self.is_alive()


def read_partition(cluster: NodeCluster, node: str, topic: str, partition: int = 0) -> list[tuple[int, str]]:
    """One partition as ``node`` serves it, from its earliest offset: [(offset, id)]."""
    out: list[tuple[int, str]] = []
    cursor: int | str = "earliest"
    for _ in range(10_000):
        status, body = cluster.get(
            node, f"/v1/topics/{topic}/messages?partition={partition}&from={cursor}&limit=500", 30
        )
        assert status == 200, f"{node}: {status} {body}"
        out += [(int(m["offset"]), str(m["id"])) for m in body["messages"]]
        nxt = body["next"]
        if not body["messages"] and (nxt is None or nxt >= body["high_watermark"]):
            return out
        cursor = nxt
    raise AssertionError("unbounded read")


def check_logs(
    cluster: NodeCluster, topic: str, acked: dict[str, int], never: set[str] | None = None, partition: int = 0
) -> None:
    """Every node serves the same log of ``topic``/``partition``; every id in
    ``acked`` at its acked offset; no id twice; none of ``never`` anywhere."""
    logs = {n: read_partition(cluster, n, topic, partition) for n in cluster.names}
    first = logs[cluster.names[0]]
    for n, log in logs.items():
        assert log == first, (
            f"{topic}: {n} disagrees with {cluster.names[0]}: {len(log)} against {len(first)} messages"
        )
    ids = [mid for _, mid in first]
    assert len(ids) == len(set(ids)), f"{topic}: an id is stored twice"
    at = dict((mid, o) for o, mid in first)
    wrong = {mid: (o, at.get(mid)) for mid, o in acked.items() if at.get(mid) != o}
    assert not wrong, (
        f"{topic}: {len(wrong)} acked messages missing or moved (acked, served): {list(wrong.items())[:5]}"
    )
    survived = (never or set()) & set(ids)
    assert not survived, f"{topic}: messages no majority acked survived the heal: {sorted(survived)}"
