"""``sprawlctl pipelines``: list, declare (put) and delete derived-topic pipelines."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from sprawl.ctl.root import Output, cli, client_of, json_option, table

ACKS = click.Choice(["quorum", "leader", "none"])


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
        ]
        for p in (answer or {}).get("pipelines", [])
        if isinstance(p, dict)
    ]
    table(["NAME", "SOURCE", "TARGET", "FILTER", "FIELDS", "KEY", "ACKS", "LAG"], rows)


@pipelines.command("put")
@click.argument("name")
@click.option("--source", required=True, help="The topic read (every partition, on its leader).")
@click.option("--target", required=True, help="The topic written (it must exist).")
@click.option("--filter", "filter_", help="Only messages this expression selects (as ?filter=).")
@click.option("--fields", help="Project JSON payloads to these dotted paths (as ?fields=), comma-separated.")
@click.option("--key", help="A JMESPath expression giving the target key (default: the source key).")
@click.option("--acks", type=ACKS, help="Durability of the target writes (default: quorum).")
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
    out: Output,
) -> None:
    """Declare a pipeline (or change one: its source cannot change)."""
    body: dict[str, Any] = {"source": source, "target": target}
    for field, value in (("filter", filter_), ("fields", fields), ("key", key), ("acks", acks)):
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
