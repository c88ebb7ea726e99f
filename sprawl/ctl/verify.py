"""``sprawlctl verify`` (a stopped node's data dir, or a running node's damaged ranges) and
``sprawlctl damage`` (list, skip)."""

from __future__ import annotations

import os
import time
from typing import Any

import click

from sprawl.client.blocking import topic_path
from sprawl.ctl.root import CtlError, Output, cli, client_of, json_option, table


def _ranges_table(rows: list[dict[str, Any]]) -> None:
    table(
        ["TOPIC", "PARTITION", "OFFSETS", "TIER", "STATE", "REASON"],
        [
            (
                r["topic"],
                r["partition"],
                f"{r['first_offset']}-{r['last_offset']}",
                r["tier"],
                r.get("state", "damaged"),
                r["reason"],
            )
            for r in rows
        ],
    )


def _s3_for_verify(endpoint: str | None, bucket: str | None, region: str) -> Any:
    """A boto3 client and bucket for ``verify --s3-*`` (None without an endpoint)."""
    endpoint = endpoint or os.environ.get("SPRAWL_S3_ENDPOINT") or os.environ.get("MINIO_ENDPOINT")
    bucket = bucket or os.environ.get("SPRAWL_S3_BUCKET") or os.environ.get("MINIO_BUCKET")
    if not endpoint:
        return None
    if not bucket:
        raise CtlError("--s3-endpoint needs --s3-bucket (or SPRAWL_S3_BUCKET)")
    from sprawl.config import normalize_endpoint_url
    from sprawl.storage.s3 import S3Settings, boto_client

    settings = S3Settings(
        endpoint=normalize_endpoint_url(endpoint),
        bucket=bucket,
        region=region,
        access_key=os.environ.get("SPRAWL_S3_ACCESS_KEY") or os.environ.get("MINIO_ACCESS_KEY"),
        secret_key=os.environ.get("SPRAWL_S3_SECRET_KEY") or os.environ.get("MINIO_SECRET_KEY"),
    )
    return boto_client(settings), bucket


@cli.command()
@click.argument("data_dir", required=False, type=click.Path(exists=True, file_okay=False))
@click.option("--s3-endpoint", help="Also check the S3 objects the manifests name (env SPRAWL_S3_ENDPOINT).")
@click.option("--s3-bucket", help="Bucket of --s3-endpoint (env SPRAWL_S3_BUCKET).")
@click.option("--s3-region", default="us-east-1", show_default=True, help="Region of --s3-endpoint.")
@click.option(
    "--scrub",
    is_flag=True,
    help="Online: start a scrub pass of every stored record now, wait for it, then report.",
)
@click.option(
    "--wait-timeout",
    type=click.FloatRange(min=0),
    default=3600.0,
    show_default=True,
    help="Online: seconds --scrub waits at most.",
)
@json_option("Print the report as JSON.")
@click.pass_context
def verify(
    ctx: click.Context,
    data_dir: str | None,
    s3_endpoint: str | None,
    s3_bucket: str | None,
    s3_region: str,
    scrub: bool,
    wait_timeout: float,
    out: Output,
) -> None:
    """Print every damaged range of stored messages.

    With DATA_DIR (the node stopped): open its LMDB read-only and check every
    stored record (checksums, keys, gaps) -- and with --s3-endpoint every S3
    object its manifests name.  Without DATA_DIR: ask the node (--nodes) for
    what its reads and its background scrub found (--scrub: scrub everything
    now first).  Exits 1 when anything is damaged.
    """
    if data_dir is not None:
        from sprawl.storage.offline import verify_data_dir

        try:
            report = verify_data_dir(data_dir, _s3_for_verify(s3_endpoint, s3_bucket, s3_region))
        except Exception as e:  # an environment LMDB cannot open, a store that cannot be reached
            raise CtlError(f"cannot verify {data_dir}: {type(e).__name__}: {e}") from None
        out.show(report.to_dict(), lambda _: _offline_text(report))
        if report.findings or report.errors:
            ctx.exit(1)
        return
    client = client_of(ctx)
    if scrub:
        target = int(client.call("POST", "/v1/damage/scrub")["pass"])
        deadline = time.monotonic() + wait_timeout
        for _ in range(int(wait_timeout * 4) + 2):
            answer = client.call("GET", "/v1/damage")
            if int(answer["scrub"]["passes"]) >= target:
                break
            if time.monotonic() > deadline:
                raise CtlError(f"the scrub pass did not finish within {wait_timeout:g}s")
            time.sleep(0.25)
    answer = client.call("GET", "/v1/damage")
    out.show(answer, _online_text)
    if answer["damaged"]:
        ctx.exit(1)


def _offline_text(report: Any) -> None:
    if report.findings:
        _ranges_table([f.to_dict() for f in report.findings])
    if report.skipped:
        click.echo(f"{len(report.skipped)} range(s) skipped earlier by an operator")
    for err in report.errors:
        click.echo(f"error: {err}", err=True)
    click.echo(
        f"{report.partitions} partition(s): {report.lmdb_bytes} bytes of records in LMDB"
        + (f", {report.s3_objects} S3 object(s) ({report.s3_bytes} bytes)" if report.s3_objects else "")
        + f" checked; {len(report.findings)} damaged range(s)"
    )


def _online_text(answer: dict[str, Any]) -> None:
    rows = answer["ranges"]
    if rows:
        _ranges_table(rows)
    sc = answer["scrub"]
    if sc.get("enabled"):
        click.echo(
            f"scrub: {sc['passes']} pass(es) done, {'running ' + format(sc['progress'], '.0%') if sc['running'] else 'idle'}"
            f", {sc['scanned_bytes']} bytes checked at {sc['rate_bytes_per_s']} bytes/s"
        )
    else:
        click.echo("scrub: off")
    click.echo(f"{answer['damaged']} damaged range(s), {answer['skipped']} skipped")


@cli.group()
def damage() -> None:
    """Damaged ranges of stored messages on a node."""


@damage.command("list")
@json_option()
@click.pass_context
def damage_list(ctx: click.Context, out: Output) -> None:
    """The node's damaged and skipped ranges and its scrub's progress."""
    ctx.invoke(verify, as_json=out.as_json)


@damage.command("skip")
@click.argument("topic")
@click.argument("partition", type=click.IntRange(min=0))
@click.argument("first", type=click.IntRange(min=0))
@click.argument("last", type=click.IntRange(min=0))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option()
@click.pass_context
def damage_skip(
    ctx: click.Context, topic: str, partition: int, first: int, last: int, yes: bool, out: Output
) -> None:
    """Give up the damaged range meeting offsets FIRST..LAST of TOPIC/PARTITION on the
    node (--nodes): readers pass over it from now on.  For a node that has no healthy
    replica to repair the range from; the messages in it are lost."""
    if not yes:
        click.confirm(
            f"Skip the damaged range of {topic}/{partition} meeting offsets {first}-{last}? "
            "Its messages will never be delivered",
            abort=True,
        )
    answer = client_of(ctx).call(
        "POST",
        topic_path(topic, "damage", "skip"),
        {"partition": partition, "first_offset": first, "last_offset": last},
    )

    def text(answer: Any) -> None:
        r = answer["skipped"]
        click.echo(
            f"skipped {topic}/{partition} offsets {r['first_offset']}-{r['last_offset']} ({r['reason']})"
        )

    out.show(answer, text)
