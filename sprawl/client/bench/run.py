"""The run of one benchmark: publishers on keep-alive connections
(:class:`~sprawl.client.aio.HttpClient`), the subscribers of
:mod:`sprawl.client.bench.subscribers`, and the result."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any
from urllib.parse import quote

from sprawl.client import wire
from sprawl.client.aio import Endpoint, HttpClient
from sprawl.client.bench.results import (
    TS_DIGITS,
    BenchConfig,
    BenchError,
    BenchResult,
    LatencySummary,
    ProgressCallback,
    histogram_summary,
    percentile,
)
from sprawl.client.bench.subscribers import (
    ChildSubscribers,
    InlineSubscribers,
    SubscriberReport,
    SubscriberSpec,
)
from sprawl.client.errors import ClientError, retry_after_seconds
from sprawl.client.topics import TopicDescription

MSGPACK = wire.MSGPACK.encode()


class _PublishState:
    """Work shared by the publisher tasks."""

    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        self.remaining = config.messages
        self.published = 0
        self.requests = 0
        self.throttled = 0
        self.next_batch = 0
        self.latencies_us: list[int] = []
        self.start_mono = time.monotonic()

    def take(self) -> tuple[int, int]:
        """Claim the next batch: (index, size); size 0 when all work is claimed."""
        n = min(self.config.batch, self.remaining)
        self.remaining -= n
        index = self.next_batch
        self.next_batch += 1
        return index, n

    async def take_paced(self) -> int:
        """Claim the next batch and wait for its turn at ``config.rate``: its size (0
        when all work is claimed)."""
        index, n = self.take()
        rate = self.config.rate
        if n and rate > 0:
            delay = self.start_mono + index * self.config.batch / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        return n


async def _publisher(client: HttpClient, topic: str, state: _PublishState) -> None:
    config = state.config
    path = f"/v1/topics/{quote(topic, safe='')}/messages"
    pad = b"x" * (config.size - TS_DIGITS)
    head = b'{"acks":"%s","messages":[' % config.acks.encode()
    lean = config.wire != "json"
    text_pad = pad.decode()
    while True:
        n = await state.take_paced()
        if n == 0:
            return
        if lean:
            one = {"payload": f"{time.time_ns():019d}{text_pad}"}
            request = client.build("POST", path, wire.encode_publish([one] * n, config.acks), MSGPACK)
        else:
            item = b'{"payload":"%019d%s"}' % (time.time_ns(), pad)
            request = client.build("POST", path, head + b",".join([item] * n) + b"]}")
        refusals = 0
        while True:
            t0 = time.perf_counter_ns()
            resp = await client.send(request)
            state.latencies_us.append((time.perf_counter_ns() - t0) // 1000)
            state.requests += 1
            if resp.status == 429:
                state.throttled += 1
                refusals += 1
                if refusals > MAX_THROTTLED_RETRIES:
                    raise BenchError(f"publish refused {refusals} times in a row: {resp.error_text()}")
                await asyncio.sleep(retry_after_seconds(resp.headers.get("retry-after")))
                continue
            if resp.status != 200:
                raise BenchError(f"publish failed: {resp.error_text()}")
            break
        state.published += n


#: Consecutive 429 answers to one publish before the run fails (each waits Retry-After).
MAX_THROTTLED_RETRIES = 50
#: Error codes of a WebSocket publish's answer that ask for it again later (as a 429 does).
_WS_RETRY = ("backpressure", "overloaded", "too_many_in_flight")


async def _ws_publisher(url: str, topic: str, state: _PublishState) -> None:
    """A publisher on its own publish-only WebSocket (:mod:`sprawl.client.aiows`): one binary
    msgpack publish frame a batch, each sent once the last was answered -- as
    :func:`_publisher` sends its POSTs -- and timed from its send to its answer."""
    from sprawl.client.aiows import open_publisher

    config = state.config
    pub = await open_publisher(
        url, topic, window=1, timeout=config.timeout, token=config.token, cacert=config.cacert
    )
    pad = "x" * (config.size - TS_DIGITS)
    try:
        while True:
            n = await state.take_paced()
            if n == 0:
                return
            one = {"payload": f"{time.time_ns():019d}{pad}"}
            refusals = 0
            while True:
                t0 = time.perf_counter_ns()
                fut = await pub.publish([one] * n, config.acks)
                try:
                    await fut
                except ClientError as exc:
                    state.latencies_us.append((time.perf_counter_ns() - t0) // 1000)
                    state.requests += 1
                    if not str(exc).startswith(_WS_RETRY):
                        raise BenchError(f"publish failed: {exc}") from None
                    state.throttled += 1
                    refusals += 1
                    if refusals > MAX_THROTTLED_RETRIES:
                        raise BenchError(f"publish refused {refusals} times in a row: {exc}") from None
                    await asyncio.sleep(0.1)
                    continue
                state.latencies_us.append((time.perf_counter_ns() - t0) // 1000)
                state.requests += 1
                break
            state.published += n
    finally:
        pub.close()


# --------------------------------------------------------------------------------------------
# the run


async def _live_endpoints(config: BenchConfig) -> list[Endpoint]:
    """The configured nodes that answer ``/healthz``."""
    endpoints = [Endpoint.parse(u) for u in config.urls]
    problems: list[str] = []

    async def probe(ep: Endpoint) -> bool:
        client = HttpClient(ep, min(config.timeout, 5.0), config.token, config.cacert)
        try:
            resp = await client.send(client.build("GET", "/healthz"))
            return resp.status == 200
        except ClientError as exc:
            problems.append(str(exc))
            return False
        finally:
            client.close()

    alive = await asyncio.gather(*(probe(ep) for ep in endpoints))
    live = [ep for ep, ok in zip(endpoints, alive, strict=True) if ok]
    if not live:
        raise BenchError("no node is reachable: " + "; ".join(problems or ["not healthy"]))
    return live


#: What :func:`_partition_views` keeps of each partition in a node's topic description.
_VIEW_KEYS = ("partition", "leader", "epoch", "high_watermark", "log_end", "followers")


async def _partition_views(
    config: BenchConfig, endpoints: list[Endpoint], topic: str
) -> dict[str, list[dict[str, Any]]]:
    """Every node's view of the topic's partitions (``GET /v1/topics/{topic}``): its leader,
    epoch, high watermark and log end each (and, on a replicated partition's leader, each
    follower's match); a node that does not answer is left out."""

    async def view(ep: Endpoint) -> tuple[str, list[dict[str, Any]] | None]:
        client = HttpClient(ep, min(config.timeout, 10.0), config.token, config.cacert)
        try:
            resp, desc = await client.request("GET", f"/v1/topics/{quote(topic, safe='')}")
        except ClientError:
            return ep.url, None
        finally:
            client.close()
        if resp.status != 200 or not isinstance(desc, dict):
            return ep.url, None
        return ep.url, [{k: d.get(k) for k in _VIEW_KEYS} for d in desc.get("partition_details", [])]

    got = await asyncio.gather(*(view(ep) for ep in endpoints))
    return {url: v for url, v in got if v is not None}


async def _skipped_messages(
    config: BenchConfig, sub_urls: list[str], topic: str, report: SubscriberReport
) -> int:
    """How many offsets of the streams' listed gaps (the first 1,000 of each) hold a message
    in the log, read back from each stream's node: messages a stream skipped (the rest of a
    gap is control records)."""
    skipped = 0
    for i, parts in enumerate(report.deliveries):
        client = HttpClient(
            Endpoint.parse(sub_urls[i % len(sub_urls)]), config.timeout, config.token, config.cacert
        )
        try:
            for d in parts:
                for lo, hi in d.gaps:
                    path = (
                        f"/v1/topics/{quote(topic, safe='')}/messages?partition={d.partition}"
                        f"&from={lo}&limit={min(hi - lo, 1000)}"
                    )
                    resp, body = await client.request("GET", path)
                    if resp.status != 200 or not isinstance(body, dict):
                        raise BenchError(f"cannot read back gap {lo}-{hi - 1}: {resp.error_text()}")
                    skipped += sum(1 for m in body.get("messages", []) if lo <= m.get("offset", -1) < hi)
        finally:
            client.close()
    return skipped


async def _run(config: BenchConfig, progress: ProgressCallback | None) -> BenchResult:
    config.validate()
    endpoints = await _live_endpoints(config)
    admin = HttpClient(endpoints[0], config.timeout, config.token, config.cacert)
    fresh = config.topic is None
    topic = config.topic or f"bench-{uuid.uuid4().hex[:12]}"
    body: dict[str, Any] = {"storage": config.storage}
    if config.partitions is not None:
        body["partitions"] = config.partitions
    if config.replication_factor is not None:
        body["replication_factor"] = config.replication_factor
    path = f"/v1/topics/{quote(topic, safe='')}"
    resp, _ = await admin.request("PUT", path, body)
    if resp.status not in (200, 201) and not (resp.status == 409 and not fresh):
        raise BenchError(f"cannot create topic {topic!r}: {resp.error_text()}")
    resp, desc = await admin.request("GET", path)
    if resp.status != 200:
        raise BenchError(f"cannot describe topic {topic!r}: {resp.error_text()}")
    try:
        shape = TopicDescription.parse(desc)
    except ClientError as exc:
        raise BenchError(f"cannot describe topic {topic!r}: {exc}") from None
    partitions, rf = shape.partitions, shape.replicas_in_use()

    subs: ChildSubscribers | InlineSubscribers | None = None
    clients: list[HttpClient] = []
    views_at_open: dict[str, list[dict[str, Any]]] = {}
    views_at_end: dict[str, list[dict[str, Any]]] = {}
    skipped = 0
    try:
        if config.subscribers:
            sub_urls = [Endpoint.parse(u).url for u in config.subscriber_urls] or [ep.url for ep in endpoints]
            spec = SubscriberSpec(
                urls=sub_urls,
                topic=topic,
                count=config.subscribers,
                expected=config.messages,
                timeout=config.timeout,
                ready_timeout=config.ready_timeout,
                token=config.token,
                cacert=config.cacert,
                format={"lean": "batch", "ndjson": "ndjson"}.get(config.wire, "sse"),
            )
            subs = ChildSubscribers(spec) if config.subscriber_process else InlineSubscribers(spec)
            await subs.open(config.ready_timeout + 30.0)
            views_at_open = await _partition_views(config, endpoints, topic)

        state = _PublishState(config)
        if config.publish == "http":
            clients = [
                HttpClient(endpoints[i % len(endpoints)], config.timeout, config.token, config.cacert)
                for i in range(config.publishers)
            ]
        delivery_target = config.messages * config.subscribers

        def report_progress() -> None:
            # Read the subscribers' progress even when nobody is told: it drains the child's
            # pipe, whose every send blocks the child -- and with it its streams -- once the
            # pipe is full (some 280 reports, ~28 s of them: every message after that was
            # read late, by as long as publishing went on).
            delivered = subs.delivered() if subs is not None else 0
            if progress is not None:
                progress(state.published, config.messages, delivered, delivery_target)

        start_ns = time.time_ns()
        state.start_mono = time.monotonic()
        if config.publish == "ws":
            tasks = [
                asyncio.ensure_future(_ws_publisher(endpoints[i % len(endpoints)].url, topic, state))
                for i in range(config.publishers)
            ]
        else:
            tasks = [asyncio.ensure_future(_publisher(c, topic, state)) for c in clients]
        publishing = asyncio.gather(*tasks)
        try:
            while not publishing.done():
                await asyncio.wait([publishing], timeout=0.2)
                report_progress()
            publishing.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if publishing.done() and not publishing.cancelled():
                publishing.exception()  # retrieved: no "never retrieved" warning
        publish_ns = time.time_ns() - start_ns

        report: SubscriberReport | None = None
        warnings: list[str] = []
        if subs is not None:
            last_delivered, idle_since = -1, time.monotonic()
            while not subs.finished():
                delivered = subs.delivered()
                if delivered >= delivery_target:
                    break
                if delivered != last_delivered:
                    last_delivered, idle_since = delivered, time.monotonic()
                elif time.monotonic() - idle_since > config.drain_timeout:
                    warnings.append(f"no delivery for {config.drain_timeout:g} s; stopped waiting")
                    break
                report_progress()
                await asyncio.sleep(0.05)
            report = await subs.stop()
            subs = None
            report_progress()
            warnings = report.warnings + report.errors + warnings
            views_at_end = await _partition_views(config, endpoints, topic)
            skipped = await _skipped_messages(config, sub_urls, topic, report)
    finally:
        for client in clients:
            client.close()
        if subs is not None:
            subs.kill()
        if fresh and not config.keep_topic:
            try:
                await admin.request("DELETE", path)
            except ClientError:
                pass
        admin.close()

    publish_s = publish_ns / 1e9
    if config.rate and publish_s and state.published / publish_s < 0.9 * config.rate:
        warnings.append(
            f"publishing reached only {state.published / publish_s:,.0f} of --rate "
            f"{config.rate:g} msgs/s: the node is slower, or there are too few --publishers "
            "for its request latency"
        )
    pub_lat = sorted(state.latencies_us)
    delivered = sum(report.counts) if report else 0
    deliver_s = (report.last_ns - start_ns) / 1e9 if report and report.last_ns else 0.0
    payload_mb = config.size / 1e6
    return BenchResult(
        topic=topic,
        messages=config.messages,
        size=config.size,
        batch=config.batch,
        publishers=config.publishers,
        subscribers=config.subscribers,
        acks=config.acks,
        rate=config.rate,
        storage=config.storage,
        partitions=partitions,
        replication_factor=rf,
        published=state.published,
        publish_seconds=publish_s,
        publish_msgs_per_s=state.published / publish_s if publish_s else 0.0,
        publish_mb_per_s=state.published * payload_mb / publish_s if publish_s else 0.0,
        publish_requests=state.requests,
        publish_latency_ms=LatencySummary(
            p50=percentile(pub_lat, 0.5) / 1000,
            p99=percentile(pub_lat, 0.99) / 1000,
            max=percentile(pub_lat, 1.0) / 1000,
        )
        if pub_lat
        else None,
        throttled=state.throttled,
        delivered=delivered,
        delivery_target=config.messages * config.subscribers,
        delivery_seconds=deliver_s,
        delivered_msgs_per_s=delivered / deliver_s if deliver_s > 0 else 0.0,
        delivered_mb_per_s=delivered * payload_mb / deliver_s if deliver_s > 0 else 0.0,
        e2e_latency_ms=histogram_summary(report.hist) if report else None,
        per_subscriber=report.counts if report else [],
        warnings=warnings,
        deliveries=report.deliveries if report else [],
        slowest=report.slowest if report else [],
        skipped_messages=skipped,
        views_at_open=views_at_open,
        views_at_end=views_at_end,
    )


def run_bench(config: BenchConfig, progress: ProgressCallback | None = None) -> BenchResult:
    """Run one benchmark to completion (blocking) and return what it measured.

    ``progress(published, publish_target, delivered, delivery_target)`` is called about five
    times a second. Raises :class:`BenchError` when the run cannot start or a publish fails.
    """
    try:
        return asyncio.run(_run(config, progress))
    except BenchError:
        raise
    except ClientError as exc:  # a connection's failure (sprawl.client.aio)
        raise BenchError(str(exc)) from None
