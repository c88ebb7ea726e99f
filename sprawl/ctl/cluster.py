"""``sprawlctl cluster`` (status, members, placement, drain, undrain, keygen) and ``sprawlctl diagnose``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import click

from sprawl.client.blocking import Client, Reply
from sprawl.client.errors import ClientError, error_text
from sprawl.ctl.root import CtlError, Output, cell, cli, client_of, json_option, print_json, table


@cli.group()
def cluster() -> None:
    """Inspect cluster membership, Raft state and partition placement."""


def _members_table(members: Any, leader: Any) -> None:
    rows = [
        [
            m.get("id"),
            m.get("state"),
            m.get("incarnation"),
            m.get("peer"),
            m.get("http"),
            "*" if leader is not None and m.get("id") == leader else "",
        ]
        for m in (members or [])
        if isinstance(m, dict)
    ]
    table(["ID", "STATE", "INCARNATION", "PEER", "HTTP", "LEADER"], rows)


@cluster.command("status")
@json_option()
@click.pass_context
def cluster_status(ctx: click.Context, out: Output) -> None:
    """Show this node's view: id, Raft leader and term, members."""
    out.show(client_of(ctx).call("GET", "/v1/cluster"), _status_text)


def _status_text(info: Any) -> None:
    if not isinstance(info, dict):
        print_json(info)
        return
    click.echo(f"node: {cell(info.get('node_id'))}")
    click.echo(f"leader: {cell(info.get('leader'))}")
    click.echo(f"term: {cell(info.get('term'))}")
    raft = info.get("raft")
    if isinstance(raft, dict):
        click.echo(f"raft role: {cell(raft.get('role'))}")
        click.echo(f"commit/applied: {cell(raft.get('commit_index'))}/{cell(raft.get('applied'))}")
        click.echo(f"voters: {', '.join(map(str, raft.get('voters') or [])) or '-'}")
        click.echo(f"learners: {', '.join(map(str, raft.get('learners') or [])) or '-'}")
        if "target_voters" in raft:
            voters = raft.get("voters") or []
            ft = raft.get("fault_tolerance")
            state = "fault-tolerant" if raft.get("fault_tolerant") else "NOT at full strength"
            click.echo(
                f"fault tolerance: {cell(ft)} voter failure{'' if ft == 1 else 's'} "
                f"({len(voters)} voters, {cell(raft.get('live_voters'))} up, target {cell(raft.get('target_voters'))}; "
                f"{state})"
            )
        for key in (
            "snapshot_index",
            "elections",
            "leader_changes",
            "proposal_ms_p50",
            "cluster_id",
            "forced_new_cluster",
        ):
            if key in raft:
                click.echo(f"{key.replace('_', ' ')}: {cell(raft[key])}")
    parts = info.get("partitions")
    if isinstance(parts, dict):
        click.echo(
            f"partitions led: {cell(parts.get('leading'))}, "
            f"under-replicated: {cell(parts.get('under_replicated'))}, "
            f"replicas here: {cell(parts.get('replicas'))}, "
            f"forwarded publishes: {cell(parts.get('forwarded'))}, "
            f"failovers committed: {cell(parts.get('failovers'))}"
        )
    if isinstance(info.get("drained"), list):
        click.echo(f"drained: {', '.join(map(str, info['drained'])) or '-'}")
    for key, value in info.items():
        if key not in ("node_id", "leader", "term", "raft", "members", "partitions", "drained"):
            click.echo(f"{key}: {cell(value)}")
    click.echo("")
    _members_table(info.get("members"), info.get("leader"))


@cluster.command("members")
@json_option("Print the members as JSON.")
@click.pass_context
def cluster_members(ctx: click.Context, out: Output) -> None:
    """List members with their gossip state and addresses; * marks the Raft leader."""
    info = client_of(ctx).call("GET", "/v1/cluster") or {}
    out.show(info.get("members"), lambda members: _members_table(members, info.get("leader")))


@cluster.command("placement")
@json_option()
@click.option("-t", "--topic", help="Only this topic.")
@click.pass_context
def cluster_placement(ctx: click.Context, out: Output, topic: str | None) -> None:
    """Show which nodes hold each partition, and its leader and epoch."""
    info = client_of(ctx).call("GET", "/v1/cluster/placement") or {}
    out.show(info, lambda answer: _placement_table(answer, topic))


def _placement_table(info: dict[str, Any], topic: str | None) -> None:
    rows = []
    placement = info.get("topics") or {}
    for name in sorted(placement):
        if topic is not None and name != topic:
            continue
        parts = placement[name] or {}
        items = parts.items() if isinstance(parts, dict) else enumerate(parts)
        for pid, p in sorted(items, key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else 0):
            p = p if isinstance(p, dict) else {}
            rows.append([name, pid, p.get("leader"), p.get("epoch"), p.get("replicas")])
    table(["TOPIC", "PARTITION", "LEADER", "EPOCH", "REPLICAS"], rows)


def _drain_text(answer: Any) -> None:
    if not isinstance(answer, dict):
        print_json(answer)
        return
    node, drained = answer.get("node_id"), answer.get("drained")
    state = "drained" if drained else "not drained"
    change = "" if answer.get("changed") else " (it already was)"
    click.echo(f"{cell(node)} is {state}{change}")
    if drained:
        click.echo("its partition leaderships move to in-sync replicas; it gets no new replicas")


@cluster.command("drain")
@json_option()
@click.argument("node")
@click.pass_context
def cluster_drain(ctx: click.Context, out: Output, node: str) -> None:
    """Drain NODE for planned work: move every partition leadership off it and
    place no new replica on it, without stopping it (it stays a follower).
    Kept in the cluster metadata, so it survives restarts until undrained."""
    out.show(client_of(ctx).call("POST", f"/v1/cluster/nodes/{quote(node, safe='')}/drain"), _drain_text)


@cluster.command("undrain")
@json_option()
@click.argument("node")
@click.pass_context
def cluster_undrain(ctx: click.Context, out: Output, node: str) -> None:
    """Undo `cluster drain NODE`: it may lead partitions and take new replicas again."""
    out.show(client_of(ctx).call("POST", f"/v1/cluster/nodes/{quote(node, safe='')}/undrain"), _drain_text)


@cluster.command("keygen")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the key to this file (created with mode 600) instead of printing it.",
)
def cluster_keygen(output: str | None) -> None:
    """Print a new random cluster key (32 bytes) for --cluster-key-file / SPRAWL_CLUSTER_KEY.

    Every node of a cluster needs the same key; it authenticates gossip and
    every frame of the peer channel.  Needs no node.
    """
    from sprawl.config import generate_cluster_key

    key = generate_cluster_key()
    if output is None:
        click.echo(key)
        return
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CtlError(f"{output} exists; not overwriting a cluster key") from None
    except OSError as e:
        raise CtlError(f"cannot create {output}: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")


# --------------------------------------------------------------------------------------------

# --------------------------------------------------------------------------------------------
# diagnose


@dataclass
class NodeReport:
    """What ``diagnose`` learnt about one node."""

    url: str
    up: bool = False
    ready: bool = False
    problem: str | None = None
    health_ms: float | None = None
    ready_reason: str | None = None
    cluster: dict[str, Any] | None = None
    #: The faults the node names (``GET /v1/cluster/faults``), None when it did not answer.
    faults: list[dict[str, Any]] | None = None


def _probe(url: str, timeout: float) -> NodeReport:
    report = NodeReport(url)
    client = Client([url], timeout)
    try:
        health = client.request("GET", "/healthz")
    except ClientError as exc:
        report.problem = str(exc).rsplit(": ", 1)[-1]
        return report
    report.health_ms = health.elapsed * 1000
    report.up = health.status == 200
    if not report.up:
        report.problem = f"unhealthy: {error_text(health.status, health.body)}"
        return report
    try:
        ready = client.request("GET", "/readyz")
        report.ready = ready.status == 200
        if not report.ready:
            report.ready_reason = _ready_reason(ready)
        cluster_reply = client.request("GET", "/v1/cluster")
        if cluster_reply.status == 200:
            info = cluster_reply.json()
            report.cluster = info if isinstance(info, dict) else None
        faults_reply = client.request("GET", "/v1/cluster/faults")
        if faults_reply.status == 200:
            body = faults_reply.json()
            found = body.get("faults") if isinstance(body, dict) else None
            report.faults = [f for f in found if isinstance(f, dict)] if isinstance(found, list) else None
    except ClientError as exc:
        report.up = False
        report.problem = str(exc).rsplit(": ", 1)[-1]
    return report


def _ready_reason(reply: Reply) -> str:
    try:
        body = json.loads(reply.body)
    except ValueError:
        text = reply.body.decode("utf-8", "replace").strip()
        return text.splitlines()[0][:200] if text else f"HTTP {reply.status}"
    if isinstance(body, dict):
        if isinstance(body.get("error"), dict):
            err = body["error"]
            return str(err.get("message") or err.get("code"))
        for key in ("reason", "message", "status"):
            if body.get(key):
                return str(body[key])
    return json.dumps(body)[:200]


def _problems(reports: list[NodeReport]) -> list[str]:
    problems = []
    for r in reports:
        if not r.up:
            problems.append(f"{r.url}: down ({r.problem})")
        elif not r.ready:
            problems.append(f"{r.url}: not ready: {r.ready_reason}")
    views = [(r.url, r.cluster) for r in reports if r.cluster is not None]
    for url, info in views:
        if not info.get("leader"):
            problems.append(f"{url}: knows no Raft leader")
        raft: dict[str, Any] = info["raft"] if isinstance(info.get("raft"), dict) else {}
        if raft.get("fault_tolerant") is False and raft.get("leader"):
            problems.append(
                f"{url}: Raft is not fault-tolerant: {len(raft.get('voters') or [])} voters, "
                f"{cell(raft.get('live_voters'))} up, target {cell(raft.get('target_voters'))} "
                f"(survives {cell(raft.get('fault_tolerance'))} more voter failures)"
            )
        for m in info.get("members") or []:
            if isinstance(m, dict) and m.get("state") not in (None, "alive"):
                problems.append(f"{url}: sees member {m.get('id')} as {m.get('state')}")
    leaders = {str(info.get("leader")) for _, info in views if info.get("leader")}
    if len(leaders) > 1:
        problems.append(
            "nodes disagree on the leader: "
            + ", ".join(f"{url} says {info.get('leader')}" for url, info in views)
        )
    member_sets = {
        url: sorted(
            str(m.get("id"))
            for m in info.get("members") or []
            if isinstance(m, dict) and m.get("state") in (None, "alive")
        )
        for url, info in views
    }
    if len({tuple(v) for v in member_sets.values()}) > 1:
        problems.append(
            "nodes disagree on the alive members: "
            + "; ".join(f"{url} sees {','.join(ids) or 'none'}" for url, ids in member_sets.items())
        )
    ids: dict[str, str] = {}
    for url, info in views:
        node_id = str(info.get("node_id"))
        if node_id in ids:
            problems.append(f"{url} and {ids[node_id]} are the same node {node_id}")
        ids[node_id] = url
    return problems


_SEVERITY = {"critical": 0, "error": 1, "warning": 2}


def merge_faults(reports: list[NodeReport]) -> list[dict[str, Any]]:
    """The faults every node named, once each: the same fault (code and node at
    fault) named by several nodes is one, with the partitions all of them saw
    and ``seen_by`` listing them; worst first."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for r in reports:
        seer = str((r.cluster or {}).get("node_id") or r.url)
        for f in r.faults or []:
            key = (str(f.get("code")), str(f.get("node")))
            m = merged.get(key)
            if m is None:
                m = merged[key] = {**f, "partitions": list(f.get("partitions") or []), "seen_by": []}
            else:
                m["partitions"] = sorted(set(m["partitions"]) | set(f.get("partitions") or []))
            m["seen_by"].append(seer)
    return sorted(
        merged.values(),
        key=lambda f: (_SEVERITY.get(str(f.get("severity")), 9), str(f.get("code")), str(f.get("node"))),
    )


@cli.command()
@json_option("Print the report as JSON.")
@click.pass_context
def diagnose(ctx: click.Context, out: Output) -> None:
    """Check every node given with -n: health, readiness, cluster view, and the
    faults each node names (a node down, stopped or unreachable, Raft without a
    quorum, partitions under-replicated or without a leader, a follower not
    catching up, a disk budget exceeded), with the likely next step.

    Exits 1 when a node is down or not ready, or a critical or error fault is named."""
    client = client_of(ctx)
    reports = [_probe(url, client.timeout) for url in client.urls]
    problems = _problems(reports)
    faults = merge_faults(reports)
    out.show({"nodes": [r.__dict__ for r in reports], "problems": problems, "faults": faults}, _diagnose_text)
    bad = sum(1 for r in reports if not (r.up and r.ready))
    if bad:
        raise CtlError(f"{bad} of {len(reports)} node(s) down or not ready")
    serious = [f for f in faults if f.get("severity") in ("critical", "error")]
    if serious:
        raise CtlError(f"{len(serious)} fault(s) named: " + ", ".join(str(f.get("code")) for f in serious))


def _diagnose_text(answer: dict[str, Any]) -> None:
    reports: list[NodeReport] = [NodeReport(**r) for r in answer["nodes"]]
    problems: list[str] = answer["problems"]
    faults: list[dict[str, Any]] = answer.get("faults") or []
    for r in reports:
        click.echo(r.url)
        if not r.up:
            click.echo(f"  health:  DOWN ({r.problem})")
            continue
        click.echo(f"  health:  ok ({r.health_ms:.1f} ms)")
        click.echo("  ready:   yes" if r.ready else f"  ready:   NO ({r.ready_reason})")
        info = r.cluster
        if info is None:
            click.echo("  cluster: no answer")
            continue
        raft: dict[str, Any] = info["raft"] if isinstance(info.get("raft"), dict) else {}
        members = [m for m in info.get("members") or [] if isinstance(m, dict)]
        states: dict[str, int] = {}
        for m in members:
            states[str(m.get("state"))] = states.get(str(m.get("state")), 0) + 1
        click.echo(
            f"  node:    {cell(info.get('node_id'))} (raft {cell(raft.get('role'))}, "
            f"term {cell(info.get('term', raft.get('term')))})"
        )
        click.echo(f"  leader:  {cell(info.get('leader'))}")
        click.echo(
            f"  members: {len(members)} (" + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ")"
        )
    click.echo("")
    if problems:
        click.echo("problems:")
        for p in problems:
            click.echo(f"  - {p}")
    else:
        click.echo("no problems found")
    if not faults:
        click.echo("no faults named")
        return
    click.echo("faults:")
    for f in faults:
        node = f" {f.get('node')}" if f.get("node") else ""
        click.echo(f"  - {str(f.get('severity')).upper()} {f.get('code')}{node}: {f.get('message')}")
        parts = f.get("partitions") or []
        if parts:
            shown = ", ".join(map(str, parts[:20])) + (
                f" (+{len(parts) - 20} more)" if len(parts) > 20 else ""
            )
            click.echo(f"    partitions: {shown}")
        click.echo(f"    next step: {f.get('next_step')}")
        click.echo(f"    seen by: {', '.join(map(str, f.get('seen_by') or []))}")
