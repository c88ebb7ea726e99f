"""``sprawlctl topics``: list, create, describe and delete topics."""

from __future__ import annotations

from typing import Any

import click

from sprawl.client.blocking import topic_path
from sprawl.client.topics import TopicDescription
from sprawl.ctl.root import STORAGE, Output, cell, cli, client_of, human_bytes, json_option, table


@cli.group()
def topics() -> None:
    """List, create, describe and delete topics."""


@topics.command("list")
@json_option()
@click.pass_context
def topics_list(ctx: click.Context, out: Output) -> None:
    """List topics with their size."""
    out.show(client_of(ctx).call("GET", "/v1/topics"), _topics_table)


def _topics_table(answer: Any) -> None:
    """The rows of a ``TopicList`` (docs/openapi.yaml)."""
    keys = ("name", "partitions", "replication_factor", "storage", "messages")
    rows = [
        [*(t.get(k) for k in keys), human_bytes(t.get("bytes"))]
        for t in (answer or {}).get("topics", [])
        if isinstance(t, dict)
    ]
    table(["NAME", "PARTITIONS", "RF", "STORAGE", "MESSAGES", "BYTES"], rows)


@topics.command("create")
@click.argument("name")
@click.option("--partitions", type=click.IntRange(min=1), help="Number of partitions.")
@click.option("--replication-factor", type=click.IntRange(min=1), help="Replicas per partition.")
@click.option("--storage", type=STORAGE, help="durable (fsynced, default) or ephemeral (memory).")
@click.option("--retention-ms", type=click.IntRange(min=0), help="Delete messages older than this.")
@click.option("--retention-bytes", type=click.IntRange(min=0), help="Keep at most this many bytes.")
@click.option("--max-message-bytes", type=click.IntRange(min=1), help="Largest message accepted.")
@json_option()
@click.pass_context
def topics_create(
    ctx: click.Context,
    name: str,
    partitions: int | None,
    replication_factor: int | None,
    storage: str | None,
    retention_ms: int | None,
    retention_bytes: int | None,
    max_message_bytes: int | None,
    out: Output,
) -> None:
    """Create a topic (or update the settings of an existing one)."""
    body = {
        k: v
        for k, v in {
            "partitions": partitions,
            "replication_factor": replication_factor,
            "storage": storage,
            "retention_ms": retention_ms,
            "retention_bytes": retention_bytes,
            "max_message_bytes": max_message_bytes,
        }.items()
        if v is not None
    }
    reply = client_of(ctx).request("PUT", topic_path(name), body).check()
    verb = "created" if reply.status == 201 else "updated"
    out.show(reply.json(), lambda _: click.echo(f"topic {name} {verb}"))


def _tier_text(name: str, info: Any) -> str:
    if not isinstance(info, dict):
        return f"{name} {cell(info)}"
    if info.get("enabled") is False:
        return f"{name} off"
    if "low" in info and "high" in info:
        if info["low"] is None or info["low"] == info["high"]:
            return f"{name} empty" + _tier_status(info)
        text = f"{name} [{info['low']},{info['high']})"
        if "messages" in info:
            text += f" {info['messages']} msgs"
        if "bytes" in info:
            text += f" {human_bytes(info['bytes'])}"
        return text + _tier_status(info)
    fields = " ".join(f"{k}={human_bytes(v) if k == 'bytes' else cell(v)}" for k, v in info.items())
    return f"{name} {fields}"


def _tier_status(info: dict[str, Any]) -> str:
    """`` FAILING (error)`` for an S3 tier whose uploads fail, `` uploading`` while one runs."""
    if info.get("status") == "failing":
        return f" FAILING ({info.get('last_error') or 'unknown error'})"
    if info.get("uploading"):
        return " uploading"
    return ""


_PARTITION_COLUMNS = ("leader", "epoch", "replicas", "low", "high_watermark")


@topics.command("describe")
@click.argument("name")
@json_option()
@click.pass_context
def topics_describe(ctx: click.Context, name: str, out: Output) -> None:
    """Show a topic's settings and every partition's replicas, offsets and tiers."""
    out.show(client_of(ctx).call("GET", topic_path(name)), _describe_text)


def _describe_text(answer: Any) -> None:
    """A ``TopicDescription`` (docs/openapi.yaml): its settings, then a partition table and
    the partitions' tiers."""
    desc = TopicDescription.parse(answer)
    for key, value in desc.raw.items():
        if key == "partition_details":
            continue
        click.echo(f"{key}: {human_bytes(value) if key == 'bytes' else cell(value)}")
    parts = [(p["partition"], p) for p in desc.partition_details]
    if not parts:
        return
    extra = [k for k in ("log_end", "bytes") if any(k in p for _, p in parts)]
    click.echo("")
    table(
        ["PARTITION", *(c.upper() for c in _PARTITION_COLUMNS), *(c.upper() for c in extra)],
        [
            [
                pid,
                *(p.get(c) for c in _PARTITION_COLUMNS),
                *(human_bytes(p.get(c)) if c == "bytes" else p.get(c) for c in extra),
            ]
            for pid, p in parts
        ],
    )
    if any(isinstance(p.get("tiers"), dict) for _, p in parts):
        click.echo("")
        table(
            ["PARTITION", "TIERS"],
            [
                [pid, "   ".join(_tier_text(k, v) for k, v in (p.get("tiers") or {}).items())]
                for pid, p in parts
            ],
        )


@topics.command("delete")
@click.argument("name")
@click.pass_context
def topics_delete(ctx: click.Context, name: str) -> None:
    """Delete a topic and all its messages."""
    client_of(ctx).request("DELETE", topic_path(name)).check()
    click.echo(f"topic {name} deleted")
