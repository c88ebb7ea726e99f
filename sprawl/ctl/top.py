"""``sprawlctl top`` (also ``sprawlctl cluster load``): present and predicted
load per node and per partition, and the traffic anomalies under way, from
``GET /v1/cluster/load``.

Load is the balancer's unit: msgs/s + KiB/s of the partitions a node leads,
as the nodes gossip it; ``predicted`` is the forecast's highest over the
horizon, with its interval.  ``--watch`` refreshes every few seconds until
Ctrl-C.
"""

from __future__ import annotations

import time
from typing import Any

import click

from sprawl.ctl.cluster import cluster
from sprawl.ctl.root import Output, cli, client_of, json_option, table


def _num(v: Any) -> str:
    return "-" if not isinstance(v, int | float) else f"{v:,.1f}"


def _range(row: dict[str, Any]) -> str:
    lo, hi = row.get("predicted_low"), row.get("predicted_high")
    return "-" if lo is None or hi is None else f"{_num(lo)}-{_num(hi)}"


def _top_text(info: Any, topic: str | None, limit: int) -> None:
    if not isinstance(info, dict):
        click.echo(repr(info))
        return
    click.echo(
        f"node {info.get('node_id')}: load in msgs/s + KiB/s; predicted = highest over the next "
        f"{_num(info.get('horizon_s'))}s (predictive balancing {'on' if info.get('predictive') else 'off'})"
    )
    nodes = [n for n in info.get("nodes") or [] if isinstance(n, dict)]
    table(
        ["NODE", "LOAD", "PREDICTED", "INTERVAL"],
        [[n.get("node"), _num(n.get("load")), _num(n.get("predicted")), _range(n)] for n in nodes],
    )
    parts = [
        p
        for p in info.get("partitions") or []
        if isinstance(p, dict) and (topic is None or p.get("topic") == topic)
    ]
    parts.sort(key=lambda p: -max(p.get("load") or 0.0, p.get("predicted") or 0.0))
    click.echo("")
    table(
        ["TOPIC", "PARTITION", "LEADER", "LOAD", "PREDICTED", "INTERVAL"],
        [
            [
                p.get("topic"),
                p.get("partition"),
                p.get("leader"),
                _num(p.get("load")),
                _num(p.get("predicted")),
                _range(p),
            ]
            for p in parts[:limit]
        ],
    )
    if len(parts) > limit:
        click.echo(f"... and {len(parts) - limit} more partitions (--limit)")
    open_ = [a for a in info.get("anomalies") or [] if isinstance(a, dict) and a.get("end") is None]
    if open_:
        click.echo("")
        table(
            ["ANOMALY", "SERIES", "OBSERVED", "EXPECTED"],
            [
                [
                    a.get("kind"),
                    a.get("series"),
                    _num(a.get("observed")),
                    f"{_num(a.get('low'))}-{_num(a.get('high'))}",
                ]
                for a in open_
            ],
        )


@cli.command("top")
@json_option()
@click.option("-t", "--topic", help="Only this topic's partitions.")
@click.option(
    "-n", "--limit", type=click.IntRange(1), default=20, show_default=True, help="Partitions shown."
)
@click.option(
    "-w", "--watch", type=click.FloatRange(1.0), help="Refresh every this many seconds until Ctrl-C."
)
@click.pass_context
def top(ctx: click.Context, out: Output, topic: str | None, limit: int, watch: float | None) -> None:
    """Present and predicted load per node and partition, hottest first, and anomalies under way."""
    client = client_of(ctx)
    while True:
        out.show(client.call("GET", "/v1/cluster/load"), lambda info: _top_text(info, topic, limit))
        if not watch:
            return
        time.sleep(watch)
        click.echo("")


#: ``sprawlctl cluster load`` is the same command.
cluster.add_command(top, name="load")
