"""A publish load that behaves like a client behind a load balancer, and a
rolling restart of a :class:`~harness.cluster.NodeCluster` under it (the
graceful-stop test and benchmark of issue 24).

:class:`PublishLoad` sends batches with ``acks=quorum`` at a steady rate from
a few threads, each request to the next node of the *eligible* set (round
robin), and records every answer: its latency, status and error.
:meth:`PublishLoad.withdraw` takes a node out of the set the way a load
balancer does before a node is stopped: no new request goes to it, and it
returns once the requests already sent to it are answered (connection
draining), so a stop never cuts a request the client sent on purpose.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.cluster import NodeCluster
from harness.waits import poll_until


@dataclass
class Answer:
    """One publish request: when it was sent (monotonic), how long it took, to which node, and what came back."""

    sent: float
    seconds: float
    node: str
    status: int
    error: str = ""
    #: The partition an acknowledged batch went to (-1: not known).
    partition: int = -1


@dataclass
class LoadReport:
    """What a load run saw: every answer, and the figures the tests and benchmark print."""

    answers: list[Answer] = field(default_factory=list)

    @property
    def ok(self) -> list[Answer]:
        """The acknowledged publishes."""
        return [a for a in self.answers if a.status == 200]

    @property
    def errors(self) -> list[Answer]:
        """Every publish not acknowledged (an error status, or no answer)."""
        return [a for a in self.answers if a.status != 200]

    def slowest(self) -> float:
        """Seconds of the slowest acknowledged publish (0 with none)."""
        return max((a.seconds for a in self.ok), default=0.0)

    def percentile(self, q: float) -> float:
        """The ``q`` quantile (0..1) of the acknowledged publishes' latency."""
        xs = sorted(a.seconds for a in self.ok)
        if not xs:
            return 0.0
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    def summary(self) -> str:
        """One line: counts, p50, p99 and the slowest publish."""
        return (
            f"{len(self.ok)} acked, {len(self.errors)} errors, p50 {self.percentile(0.5) * 1000:.0f} ms, "
            f"p99 {self.percentile(0.99) * 1000:.0f} ms, slowest {self.slowest() * 1000:.0f} ms"
        )


class PublishLoad:
    """``rate`` publish requests a second of ``batch`` messages (``acks=quorum``,
    no keys: each batch goes to one partition) to ``topic``, from ``threads``
    threads, round robin over the eligible nodes of ``cluster``."""

    def __init__(
        self,
        cluster: NodeCluster,
        topic: str,
        *,
        rate: float = 50.0,
        threads: int = 4,
        batch: int = 5,
        timeout: float = 30.0,
    ) -> None:
        self.cluster = cluster
        self.topic = topic
        self.rate = rate
        self.threads = threads
        self.batch = batch
        self.timeout = timeout
        self.report = LoadReport()
        self._lock = threading.Lock()
        self._eligible = list(cluster.names)
        self._in_flight: dict[str, int] = {n: 0 for n in cluster.names}
        self._next = 0
        self._seq = 0
        self._t0 = 0.0
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    # -- the load balancer's side ---------------------------------------------------------

    def withdraw(self, name: str, bound: float = 30.0) -> None:
        """Stop choosing ``name``; return once no request to it is still unanswered."""
        with self._lock:
            self._eligible = [n for n in self._eligible if n != name]
        if poll_until(lambda: self._in_flight[name] == 0, bound, step=0.01) is None:
            raise AssertionError(f"requests to {name} still unanswered after {bound} s")

    def restore(self, name: str) -> None:
        """Choose ``name`` again."""
        with self._lock:
            if name not in self._eligible:
                self._eligible.append(name)

    # -- running --------------------------------------------------------------------------

    def start(self) -> PublishLoad:
        """Start the threads."""
        self._t0 = time.monotonic()
        for i in range(self.threads):
            t = threading.Thread(target=self._run, name=f"publish-load-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def stop(self) -> LoadReport:
        """Stop the threads (each finishes its request) and return the report."""
        self._stop.set()
        for t in self._workers:
            t.join(self.timeout + 5)
        self._workers.clear()
        return self.report

    def _take(self) -> tuple[int, str, float] | None:
        """The next request's sequence number, node and due time."""
        with self._lock:
            if not self._eligible:
                return None
            seq = self._seq
            self._seq += 1
            node = self._eligible[self._next % len(self._eligible)]
            self._next += 1
            self._in_flight[node] += 1
            return seq, node, self._t0 + seq / self.rate

    def _run(self) -> None:
        pause = threading.Event()
        for _ in range(10_000_000):
            if self._stop.is_set():
                return
            got = self._take()
            if got is None:
                pause.wait(0.01)
                continue
            seq, node, due = got
            try:
                wait = due - time.monotonic()
                if wait > 0:
                    pause.wait(wait)
                self.report.answers.append(self._publish(seq, node))
            finally:
                with self._lock:
                    self._in_flight[node] -= 1

    def _publish(self, seq: int, node: str) -> Answer:
        body = json.dumps(
            {"messages": [{"payload": f"m{seq}-{i}"} for i in range(self.batch)], "acks": "quorum"}
        ).encode()
        port = self.cluster.nodes[node].http_port
        sent = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=self.timeout)
        try:
            conn.request(
                "POST", f"/v1/topics/{self.topic}/messages", body, {"Content-Type": "application/json"}
            )
            resp = conn.getresponse()
            data = resp.read()
            took = time.monotonic() - sent
            err = "" if resp.status == 200 else data.decode(errors="replace")[:300]
            part = -1
            if resp.status == 200:
                try:
                    part = int(json.loads(data)["partitions"][0])
                except (ValueError, KeyError, IndexError, TypeError):
                    pass
            return Answer(sent, took, node, resp.status, err, part)
        except (OSError, http.client.HTTPException) as e:
            return Answer(sent, time.monotonic() - sent, node, 0, f"{type(e).__name__}: {e}")
        finally:
            conn.close()


def restart_node(
    cluster: NodeCluster,
    load: PublishLoad,
    name: str,
    *,
    stop_bound: float = 30.0,
    ready_bound: float = 60.0,
    on_event: Callable[[str], Any] = print,
) -> dict[str, float]:
    """One step of a rolling restart: withdraw ``name`` from the load, SIGTERM it
    (wait for the exit), start it again on its data dir, wait until it answers
    ``/readyz`` 200 and every node names the same leader and all the voters,
    then give it back to the load.  Returns the seconds each phase took."""
    out: dict[str, float] = {}
    t = time.monotonic()
    load.withdraw(name)
    out["withdraw"] = time.monotonic() - t
    t = time.monotonic()
    node = cluster.nodes[name]
    node.stop(timeout=stop_bound)
    cluster.down.add(name)
    out["stop"] = time.monotonic() - t
    on_event(f"{name} stopped in {out['stop']:.2f} s")
    t = time.monotonic()
    cluster.restart(name)
    took = poll_until(cluster.formed, ready_bound)
    if took is None:
        raise AssertionError(f"{name} did not rejoin: {cluster.raft_views()}")
    out["rejoin"] = time.monotonic() - t
    load.restore(name)
    on_event(f"{name} back in {out['rejoin']:.2f} s")
    return out
