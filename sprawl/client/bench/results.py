"""What a benchmark run is asked to do and what it measured: :class:`BenchConfig`,
:class:`BenchResult`, the latency summaries and the payload format (every payload starts with
its send time, ``time.time_ns()`` as 19 ASCII digits, padded to ``size`` bytes)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sprawl.client.bench.offsets import PartitionDeliveries
from sprawl.client.errors import ClientError

#: Digits of the send timestamp (nanoseconds since the epoch) at the start of every payload.
TS_DIGITS = 19
#: Smallest payload ``run_bench`` accepts: the timestamp alone.
MIN_SIZE = TS_DIGITS
_ACKS = ("quorum", "leader", "none")
_STORAGE = ("durable", "ephemeral")

#: ``progress(published, publish_target, delivered, delivery_target)``
ProgressCallback = Callable[[int, int, int, int], None]


class BenchError(ClientError):
    """The benchmark could not run or could not finish; the message is one line."""


# --------------------------------------------------------------------------------------------
# configuration and results


@dataclass
class BenchConfig:
    """What to measure; see ``sprawlctl bench --help`` for the meaning of each field."""

    urls: Sequence[str] = ("http://localhost:8080",)
    topic: str | None = None
    messages: int = 100_000
    size: int = 100
    batch: int = 100
    publishers: int = 4
    subscribers: int = 1
    acks: str = "quorum"
    rate: float = 0.0
    storage: str = "durable"
    partitions: int | None = None
    replication_factor: int | None = None
    keep_topic: bool = False
    subscriber_process: bool = True
    #: Nodes the subscribers read from (round robin); empty: the same nodes as the publishers.
    subscriber_urls: Sequence[str] = ()
    timeout: float = 30.0
    #: Bearer token of every request (``sprawlctl --token``), or None.
    token: str | None = None
    #: CA bundle (PEM) https:// nodes' certificates must chain to (``sprawlctl --cacert``), or None.
    cacert: str | None = None
    drain_timeout: float = 10.0
    ready_timeout: float = 10.0
    #: ``json`` (JSON batch bodies, one SSE event per message), ``lean`` (msgpack bodies
    #: and ``?format=batch`` streams, :mod:`sprawl.client.wire`) or ``ndjson`` (msgpack
    #: bodies and ``?format=ndjson`` streams).
    wire: str = "json"
    #: How publishes go: ``http`` (one ``POST .../messages`` a batch, the default) or ``ws``
    #: (one binary msgpack publish frame a batch on a publish-only WebSocket per publisher,
    #: :mod:`sprawl.client.aiows`; each waits for its answer, as a POST does).
    publish: str = "http"

    def validate(self) -> None:
        """Raise :class:`BenchError` when a field is out of range."""
        if not self.urls:
            raise BenchError("no node URL given")
        if self.messages < 1:
            raise BenchError("--messages must be at least 1")
        if self.size < MIN_SIZE:
            raise BenchError(f"--size must be at least {MIN_SIZE} bytes (the send timestamp)")
        if self.batch < 1:
            raise BenchError("--batch must be at least 1")
        if self.publishers < 1:
            raise BenchError("--publishers must be at least 1")
        if self.subscribers < 0:
            raise BenchError("--subscribers must not be negative")
        if self.rate < 0:
            raise BenchError("--rate must not be negative")
        if self.acks not in _ACKS:
            raise BenchError(f"--acks must be one of {', '.join(_ACKS)}")
        if self.storage not in _STORAGE:
            raise BenchError(f"--storage must be one of {', '.join(_STORAGE)}")
        if self.wire not in ("json", "lean", "ndjson"):
            raise BenchError("--wire must be json, lean or ndjson")
        if self.publish not in ("http", "ws"):
            raise BenchError("--publish must be http or ws")


@dataclass
class LatencySummary:
    """Latency percentiles in milliseconds."""

    p50: float
    p99: float
    max: float


@dataclass
class BenchResult:
    """Everything one run measured. ``to_dict`` gives the ``--json`` form."""

    topic: str
    messages: int
    size: int
    batch: int
    publishers: int
    subscribers: int
    acks: str
    rate: float
    storage: str
    partitions: int | None
    replication_factor: int | None
    published: int
    publish_seconds: float
    publish_msgs_per_s: float
    publish_mb_per_s: float
    publish_requests: int
    publish_latency_ms: LatencySummary | None
    throttled: int
    delivered: int
    delivery_target: int
    delivery_seconds: float
    delivered_msgs_per_s: float
    delivered_mb_per_s: float
    e2e_latency_ms: LatencySummary | None
    per_subscriber: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: Per subscriber, what its stream delivered per partition: first and last offset,
    #: duplicates and gaps (:mod:`sprawl.client.bench.offsets`).
    deliveries: list[list[PartitionDeliveries]] = field(default_factory=list)
    #: Of the offsets in the gaps listed (the first 20 per stream and partition, each read up
    #: to 1,000 offsets), how many hold a message in the log (read back from the subscriber's
    #: node after the run): messages the stream skipped.  The rest of a gap is control
    #: records, which take no frame.
    skipped_messages: int = 0
    #: Per subscriber, its slowest deliveries: ``(send -> received ms, partition, offset,
    #: send -> the leader's timestamp ms)``, the slowest first.
    slowest: list[list[tuple[float, int, int, float]]] = field(default_factory=list)
    #: Every node's view of the topic's partitions right after the streams opened and at the
    #: end of the run: ``{url: [{"partition", "leader", "epoch", "high_watermark",
    #: "log_end", "followers"}, ...]}`` (``followers``: on a replicated partition's leader, each
    #: follower's match, else None; a node that did not answer is missing).
    views_at_open: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    views_at_end: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def duplicates(self) -> int:
        """Deliveries of an offset a stream had delivered already (must be 0)."""
        return sum(d.duplicates for sub in self.deliveries for d in sub)

    def breach(self) -> str | None:
        """What the streams did that a stream must never do -- deliver an offset twice, skip
        a message -- as one line, or None."""
        parts = []
        if self.duplicates:
            parts.append(f"{self.duplicates} offsets delivered twice")
        if self.skipped_messages:
            parts.append(f"{self.skipped_messages} messages skipped")
        return "streams broke their contract: " + ", ".join(parts) if parts else None

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-able data."""
        return asdict(self)

    @property
    def complete(self) -> bool:
        """True when every subscriber received every published message."""
        return self.delivered >= self.delivery_target


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of an ascending sequence; 0 when empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def quantize_us(us: int) -> int:
    """Round a latency in microseconds down to ~0.1 % so histograms stay small."""
    if us < 1024:
        return max(us, 0)
    shift = us.bit_length() - 10
    return (us >> shift) << shift


def histogram_summary(hist: dict[int, int]) -> LatencySummary | None:
    """p50/p99/max in ms of a ``{latency_us: count}`` histogram."""
    total = sum(hist.values())
    if not total:
        return None
    keys = sorted(hist)
    targets = [max(1, math.ceil(q * total)) for q in (0.5, 0.99)]
    found: list[int] = []
    seen = 0
    for key in keys:
        seen += hist[key]
        while len(found) < len(targets) and seen >= targets[len(found)]:
            found.append(key)
    return LatencySummary(p50=found[0] / 1000, p99=found[1] / 1000, max=keys[-1] / 1000)


def make_payload(size: int, ts_ns: int | None = None) -> bytes:
    """One bench payload: the send time in ns as 19 digits, padded with ``x`` to ``size``."""
    stamp = b"%019d" % (time.time_ns() if ts_ns is None else ts_ns)
    return stamp + b"x" * (size - len(stamp))
