"""``sprawlctl pipelines``: list, declare (put) and delete derived-topic pipelines."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from sprawl.ctl.root import Output, cli, client_of, json_option, table

ACKS = click.Choice(["quorum", "leader", "none"])
ON_REJECT = click.Choice(["stall", "skip", "dead-letter"])


def _path(name: str) -> str:
    return "/v1/pipelines/" + quote(name, safe="")


@cli.group()
def pipelines() -> None:
    """List, declare and delete pipelines (derived topics run inside the cluster)."""


@pipelines.command("list")
@json_option()
@click.pass_context
def pipelines_list(ctx: click.Context, out: Output) -> None:
    """List the pipelines with their lag (as the node asked sees it)."""
    out.show(client_of(ctx).call("GET", "/v1/pipelines"), _table)


def _table(answer: Any) -> None:
    """The rows of a ``PipelineList`` (docs/openapi.yaml)."""
    rows = [
        [
            p.get("pipeline"),
            p.get("source"),
            p.get("target"),
            p.get("filter") or "",
            p.get("fields") or "",
            p.get("key") or "",
            p.get("acks"),
            "" if p.get("lag") is None else p.get("lag"),
            _on_reject(p),
        ]
        for p in (answer or {}).get("pipelines", [])
        if isinstance(p, dict)
    ]
    table(["NAME", "SOURCE", "TARGET", "FILTER", "FIELDS", "KEY", "ACKS", "LAG", "ON REJECT"], rows)


def _on_reject(p: dict[str, Any]) -> str:
    """What the pipeline does with a record its target can never take, and whether it is
    stalled on one now (as the node asked sees it)."""
    if p.get("stalled"):
        return f"STALLED: {p['stalled']}"
    policy = str(p.get("on_reject") or "stall")
    return f"{policy} -> {p['dead_letter_topic']}" if p.get("dead_letter_topic") else policy


@pipelines.command("put")
@click.argument("name")
@click.option("--source", required=True, help="The topic read (every partition, on its leader).")
@click.option("--target", required=True, help="The topic written (it must exist).")
@click.option("--filter", "filter_", help="Only messages this expression selects (as ?filter=).")
@click.option("--fields", help="Project JSON payloads to these dotted paths (as ?fields=), comma-separated.")
@click.option("--key", help="A JMESPath expression giving the target key (default: the source key).")
@click.option("--acks", type=ACKS, help="Durability of the target writes (default: quorum).")
@click.option(
    "--on-reject",
    type=ON_REJECT,
    help="A record the target can never take (bigger than its max_message_bytes): stall on it "
    "(the default), skip it (counted), or write it to --dead-letter-topic.",
)
@click.option(
    "--dead-letter-topic", help='Where "--on-reject dead-letter" writes such records (it must exist).'
)
@json_option()
@click.pass_context
def pipelines_put(
    ctx: click.Context,
    name: str,
    source: str,
    target: str,
    filter_: str | None,
    fields: str | None,
    key: str | None,
    acks: str | None,
    on_reject: str | None,
    dead_letter_topic: str | None,
    out: Output,
) -> None:
    """Declare a pipeline (or change one: its source cannot change)."""
    body: dict[str, Any] = {"source": source, "target": target}
    options = (
        ("filter", filter_),
        ("fields", fields),
        ("key", key),
        ("acks", acks),
        ("on_reject", on_reject),
        ("dead_letter_topic", dead_letter_topic),
    )
    for field, value in options:
        if value is not None:
            body[field] = value
    reply = client_of(ctx).request("PUT", _path(name), body).check()
    verb = "declared" if reply.status == 201 else "changed"
    out.show(reply.json(), lambda _: click.echo(f"pipeline {name} ({source} -> {target}) {verb}"))


@pipelines.command("delete")
@click.argument("name")
@click.pass_context
def pipelines_delete(ctx: click.Context, name: str) -> None:
    """Delete a pipeline and its position (what it wrote stays in the target)."""
    client_of(ctx).request("DELETE", _path(name)).check()
    click.echo(f"pipeline {name} deleted")
