"""``sprawlctl groups``: create, describe, delete consumer groups; pull, ack, nack and
extend leases."""

from __future__ import annotations

from typing import Any

import click

from sprawl.client.blocking import topic_path
from sprawl.ctl.messages import message_bytes
from sprawl.ctl.root import START, CtlError, Output, cell, cli, client_of, json_option, print_json


@cli.group()
def groups() -> None:
    """Create, inspect and consume through consumer groups."""


@groups.command("create")
@click.argument("topic")
@click.argument("group")
@click.option("--start", type=START, help="Where a new group starts (default: server's).")
@click.option("--ack-deadline-ms", type=click.IntRange(min=1), help="Lease time of a message.")
@click.option("--max-deliveries", type=click.IntRange(min=1), help="Attempts before dead-letter.")
@click.option("--dead-letter-topic", help="Where messages go after --max-deliveries attempts.")
@json_option()
@click.pass_context
def groups_create(
    ctx: click.Context,
    topic: str,
    group: str,
    start: str | None,
    ack_deadline_ms: int | None,
    max_deliveries: int | None,
    dead_letter_topic: str | None,
    out: Output,
) -> None:
    """Create a consumer group on a topic (or update its settings)."""
    body = {
        k: v
        for k, v in {
            "start": start,
            "ack_deadline_ms": ack_deadline_ms,
            "max_deliveries": max_deliveries,
            "dead_letter_topic": dead_letter_topic,
        }.items()
        if v is not None
    }
    reply = client_of(ctx).request("PUT", topic_path(topic, "groups", group), body).check()
    verb = "created" if reply.status == 201 else "ready"
    out.show(reply.json(), lambda _: click.echo(f"group {group} on {topic} {verb}"))


@groups.command("describe")
@click.argument("topic")
@click.argument("group")
@json_option()
@click.pass_context
def groups_describe(ctx: click.Context, topic: str, group: str, out: Output) -> None:
    """Show a group's committed offsets, lag, in-flight and dead-lettered counts."""
    out.show(client_of(ctx).call("GET", topic_path(topic, "groups", group)), _fields)


def _fields(desc: Any) -> None:
    if not isinstance(desc, dict):
        print_json(desc)
        return
    for key, value in desc.items():
        click.echo(f"{key}: {cell(value)}")


@groups.command("delete")
@click.argument("topic")
@click.argument("group")
@click.pass_context
def groups_delete(ctx: click.Context, topic: str, group: str) -> None:
    """Delete a consumer group (its offsets and leases)."""
    client_of(ctx).request("DELETE", topic_path(topic, "groups", group)).check()
    click.echo(f"group {group} on {topic} deleted")


@groups.command("pull")
@click.argument("topic")
@click.argument("group")
@click.option(
    "--max", "max_", type=click.IntRange(min=1), default=10, show_default=True, help="Most messages to lease."
)
@click.option(
    "--wait-ms",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Long-poll this long when nothing is available.",
)
@json_option("Print each message as JSON.")
@click.pass_context
def groups_pull(ctx: click.Context, topic: str, group: str, max_: int, wait_ms: int, out: Output) -> None:
    """Lease messages; prints ack_id, attempt, partition, offset and payload of each."""
    client = client_of(ctx)
    answer = client.call(
        "POST",
        topic_path(topic, "groups", group, "pull"),
        {"max": max_, "wait_ms": wait_ms},
        timeout=client.timeout + wait_ms / 1000,
    )
    for msg in (answer or {}).get("messages") or []:
        out.show(msg, _leased_line)


def _leased_line(msg: Any) -> None:
    payload = message_bytes(msg).decode("utf-8", "replace")
    click.echo(
        f"ack_id={msg.get('ack_id')} attempt={cell(msg.get('delivery_attempt'))} "
        f"partition={cell(msg.get('partition'))} offset={cell(msg.get('offset'))} "
        f"payload={payload}"
    )


def _settle(ctx: click.Context, verb: str, topic: str, group: str, body: dict[str, Any]) -> None:
    answer = client_of(ctx).call("POST", topic_path(topic, "groups", group, verb), body)
    done_key = {"ack": "acked", "nack": "nacked", "extend": "extended"}[verb]
    done = (answer or {}).get(done_key)
    wanted = len(body["ack_ids"])
    click.echo(f"{done_key} {cell(done)}")
    if isinstance(done, int) and done < wanted:
        refused = (answer or {}).get("refused")
        if isinstance(refused, dict) and refused:
            why = ", ".join(f"{k} ({v})" for k, v in refused.items())
        elif isinstance(refused, list) and refused:
            why = ", ".join(map(str, refused))
        else:
            why = "expired or unknown"
        raise CtlError(f"{verb} refused for {wanted - done} of {wanted} ack ids: {why}")


@groups.command("ack")
@click.argument("topic")
@click.argument("group")
@click.argument("ack_ids", nargs=-1, required=True)
@click.pass_context
def groups_ack(ctx: click.Context, topic: str, group: str, ack_ids: tuple[str, ...]) -> None:
    """Acknowledge leased messages (fails when a lease has expired)."""
    _settle(ctx, "ack", topic, group, {"ack_ids": list(ack_ids)})


@groups.command("nack")
@click.argument("topic")
@click.argument("group")
@click.argument("ack_ids", nargs=-1, required=True)
@click.option("--delay-ms", type=click.IntRange(min=0), help="Redeliver after this delay.")
@click.pass_context
def groups_nack(
    ctx: click.Context, topic: str, group: str, ack_ids: tuple[str, ...], delay_ms: int | None
) -> None:
    """Give leased messages back for redelivery."""
    body: dict[str, Any] = {"ack_ids": list(ack_ids)}
    if delay_ms is not None:
        body["delay_ms"] = delay_ms
    _settle(ctx, "nack", topic, group, body)


@groups.command("extend")
@click.argument("topic")
@click.argument("group")
@click.argument("ack_ids", nargs=-1, required=True)
@click.option(
    "--extend-ms",
    type=click.IntRange(min=1, max=43_200_000),
    help="The leases end this long from now [default: the group's ack deadline].",
)
@click.pass_context
def groups_extend(
    ctx: click.Context, topic: str, group: str, ack_ids: tuple[str, ...], extend_ms: int | None
) -> None:
    """Extend leases of messages still being worked on (fails when a lease has expired)."""
    body: dict[str, Any] = {"ack_ids": list(ack_ids)}
    if extend_ms is not None:
        body["extend_ms"] = extend_ms
    _settle(ctx, "extend", topic, group, body)
