"""``sprawlctl bench``: publish and delivery throughput and latency, measured by the engine
of :mod:`sprawl.client.bench`."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from sprawl.client.bench import BenchConfig, BenchError, BenchResult, run_bench
from sprawl.ctl.root import ACKS, STORAGE, CtlError, Output, cell, cli, client_of, json_option


class _ProgressLine:
    """A cheap one-line progress display on stderr, redrawn at most 5 times a second."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._last = 0.0
        self._shown = False

    def __call__(self, published: int, pub_total: int, delivered: int, del_total: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < 0.2:
            return
        self._last = now
        width = 30
        done = published / pub_total if pub_total else 1.0
        bar = "#" * int(done * width)
        line = f"\r[{bar:<{width}}] published {published}/{pub_total}"
        if del_total:
            line += f"  delivered {delivered}/{del_total}"
        click.echo(line, nl=False, err=True)
        self._shown = True

    def close(self) -> None:
        """Erase the line."""
        if self._shown:
            click.echo("\r\x1b[2K", nl=False, err=True)


def _ms(summary: Any) -> str:
    if summary is None:
        return "n/a"
    return f"p50 {summary.p50:.2f}  p99 {summary.p99:.2f}  max {summary.max:.2f}"


@cli.command()
@click.option("--topic", help="Topic to use (default: a fresh one, deleted afterwards).")
@click.option(
    "--messages", type=click.IntRange(min=1), default=100_000, show_default=True, help="Messages to publish."
)
@click.option(
    "--size",
    type=click.IntRange(min=19),
    default=100,
    show_default=True,
    help="Payload bytes per message (at least 19: the send timestamp).",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Messages per publish request.",
)
@click.option(
    "--publishers",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Concurrent publishing connections.",
)
@click.option(
    "--subscribers",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="SSE subscribers reading from latest.",
)
@click.option("--acks", type=ACKS, default="quorum", show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="Total msgs/s to publish at (0 = as fast as possible).",
)
@click.option(
    "--storage", type=STORAGE, default="durable", show_default=True, help="Storage of the created topic."
)
@click.option("--partitions", type=click.IntRange(min=1), help="Partitions of the created topic.")
@click.option(
    "--replication-factor", type=click.IntRange(min=1), help="Replication factor of the created topic."
)
@click.option(
    "--wire",
    type=click.Choice(["json", "lean", "ndjson"]),
    default="json",
    show_default=True,
    help="json: JSON batches and one SSE event per message; lean: msgpack batches and one SSE event "
    "per batch; ndjson: msgpack batches and an NDJSON stream (one line per batch).",
)
@click.option("--keep-topic", is_flag=True, help="Do not delete the fresh topic afterwards.")
@click.option(
    "--inline-subscribers", is_flag=True, help="Run subscribers in this process instead of a child process."
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Stop waiting for deliveries after this many seconds without one.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a progress line on stderr (default: when stderr is a terminal).",
)
@json_option("Print the results as one JSON object.")
@click.pass_context
def bench(
    ctx: click.Context,
    topic: str | None,
    messages: int,
    size: int,
    batch: int,
    publishers: int,
    subscribers: int,
    acks: str,
    rate: float,
    storage: str,
    partitions: int | None,
    replication_factor: int | None,
    wire: str,
    keep_topic: bool,
    inline_subscribers: bool,
    drain_timeout: float,
    progress: bool | None,
    out: Output,
) -> None:
    """Measure publish and delivery throughput and latency."""
    client = client_of(ctx)
    config = BenchConfig(
        urls=list(client.urls),
        topic=topic,
        messages=messages,
        size=size,
        batch=batch,
        publishers=publishers,
        subscribers=subscribers,
        acks=acks,
        rate=rate,
        storage=storage,
        partitions=partitions,
        replication_factor=replication_factor,
        keep_topic=keep_topic,
        wire=wire,
        subscriber_process=not inline_subscribers,
        timeout=max(client.timeout, 30.0),
        drain_timeout=drain_timeout,
        token=client.token,
        cacert=client.cacert,
    )
    if progress is None:
        progress = sys.stderr.isatty()
    line = _ProgressLine(progress)
    try:
        result = run_bench(config, line)
    except BenchError as exc:
        raise CtlError(str(exc)) from None
    finally:
        line.close()
    out.show(result.to_dict(), lambda _: _result_text(result))
    breach = result.breach()
    if breach is not None:
        raise CtlError(breach)
    if not result.complete:
        raise CtlError(f"subscribers received {result.delivered} of {result.delivery_target} messages")


def _result_text(r: BenchResult) -> None:
    click.echo(
        f"publish:   {r.published} msgs in {r.publish_seconds:.2f} s = "
        f"{r.publish_msgs_per_s:,.0f} msgs/s, {r.publish_mb_per_s:.2f} MB/s"
        + (f" ({r.throttled} throttled requests)" if r.throttled else "")
    )
    click.echo(f"publish request latency ms: {_ms(r.publish_latency_ms)}")
    if r.subscribers:
        click.echo(
            f"delivered: {r.delivered}/{r.delivery_target} msgs in {r.delivery_seconds:.2f} s"
            f" = {r.delivered_msgs_per_s:,.0f} msgs/s, {r.delivered_mb_per_s:.2f} MB/s"
            f" (total of {r.subscribers} subscriber{'s' if r.subscribers != 1 else ''})"
        )
        click.echo(f"end-to-end latency ms: {_ms(r.e2e_latency_ms)}")
    click.echo(
        f"payload {r.size} B, acks {r.acks}, batch {r.batch}, publishers {r.publishers}, "
        f"subscribers {r.subscribers}, replication {cell(r.replication_factor)}, "
        f"partitions {cell(r.partitions)}, storage {r.storage}"
        + (f", rate {r.rate:g} msgs/s" if r.rate else "")
        + f", topic {r.topic}"
    )
    for warning in r.warnings:
        click.echo(f"warning: {warning}", err=True)
