"""Clusters of real nodes (chaos tests, cluster benchmarks): :class:`NodeCluster`, and the
time to a voter set read from the nodes' own logs."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.nodes import NodeProcess, http_json, partition_views
from harness.waits import poll_until


class NodeCluster:
    """``n`` real ``twistd sprawl`` nodes on loopback forming one cluster, handled by name.

    The first node founds the cluster; the others are seeded from it.  Nodes
    can be killed (SIGKILL), restarted on their own data dir (same node id,
    same ports when they are still free, else new ones from the OS; seeded
    from a node that is up), stopped (SIGSTOP) and continued (SIGCONT).  The
    class keeps no policy about how many nodes may be down at once: that is
    the caller's.  :meth:`close` continues and kills every node; use it in a
    ``finally`` or fixture finalizer.
    """

    def __init__(
        self,
        base: Path | str,
        n: int,
        *extra: str,
        prefix: str = "n",
        startup_timeout: float = 30.0,
        per_node: Callable[[str], list[str]] | None = None,
        env: dict[str, str] | None = None,
        hosts: list[str] | None = None,
    ) -> None:
        self.base = Path(base)
        self.names = [f"{prefix}{i}" for i in range(n)]
        #: Each node's loopback address (default 127.0.0.1 for all; distinct
        #: ones let :mod:`harness.netcut` cut nodes apart).
        self.hosts = dict(zip(self.names, hosts or ["127.0.0.1"] * n, strict=True))
        self.extra = list(extra)
        #: Arguments of one node only (its own certificate, ...), after ``extra``.
        self.per_node = per_node
        self.nodes = {
            nm: NodeProcess(self.base / nm, startup_timeout=startup_timeout, env=env, host=self.hosts[nm])
            for nm in self.names
        }
        self.down: set[str] = set(self.names)  # not running (never started, or killed)
        self.paused: set[str] = set()  # SIGSTOPped
        self.events: list[tuple[float, str]] = []  # (monotonic time, what happened), for reports

    def note(self, what: str) -> None:
        """Record (and print) one thing that happened to the cluster."""
        self.events.append((time.monotonic(), what))
        print(f"[cluster {time.strftime('%H:%M:%S')}] {what}", flush=True)

    # -- starting and stopping ----------------------------------------------------------

    def start(self, form_bound: float = 60.0) -> NodeCluster:
        """Start every node (the first founds the cluster) and wait until it is formed."""
        from concurrent.futures import ThreadPoolExecutor

        first = self.names[0]
        self._launch(first, None)
        seeds = f"{self.hosts[first]}:{self.nodes[first].peer_port}"
        rest = self.names[1:]
        if rest:
            with ThreadPoolExecutor(len(rest)) as pool:
                list(pool.map(lambda nm: self._launch(nm, seeds), rest))
        took = poll_until(self.formed, form_bound)
        if took is None:
            raise RuntimeError(f"the {len(self.names)}-node cluster did not form: {self.raft_views()}")
        self.note(f"{len(self.names)} nodes formed one cluster ({took:.1f} s after the last start)")
        return self

    def _launch(self, name: str, seeds: str | None, ports: tuple[int, int] | None = None) -> None:
        node = self.nodes[name]
        args = ["--node-id", name]
        if seeds:
            args += ["--seeds", seeds]
        if ports:  # after NodeProcess's own "--http-port 0 --bind-port 0": the last one counts
            args += ["--http-port", str(ports[0]), "--bind-port", str(ports[1])]
        node.args = [*args, *self.extra, *(self.per_node(name) if self.per_node else [])]
        node.start()
        self.down.discard(name)

    def close(self) -> None:
        """Continue stopped nodes and kill every node (idempotent)."""
        for name in self.names:
            node = self.nodes[name]
            if name in self.paused:
                node.signal(signal.SIGCONT)
            node.kill()
        self.paused.clear()
        self.down = set(self.names)

    def __enter__(self) -> NodeCluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- faults ---------------------------------------------------------------------------

    def kill(self, name: str) -> None:
        """``kill -9`` one node (continuing it first is unnecessary: SIGKILL works on stopped processes)."""
        self.nodes[name].kill()
        self.down.add(name)
        self.paused.discard(name)
        self.note(f"killed {name}")

    def restart(self, name: str, same_ports: bool = True) -> None:
        """Start a killed node again on its data dir, seeded from a node that is up.

        With ``same_ports`` it asks for its old ports first (URLs stay valid);
        if they are taken meanwhile it takes new ones from the OS.
        """
        node = self.nodes[name]
        assert name in self.down, f"{name} is running"
        seeds = ",".join(f"{self.hosts[o]}:{self.nodes[o].peer_port}" for o in self.up() if o != name)
        old = (node.http_port, node.peer_port)
        if same_ports and old[0] and old[1]:
            try:
                self._launch(name, seeds, old)
                self.note(f"restarted {name} on its ports {old[0]}/{old[1]}")
                return
            except RuntimeError as e:
                self.note(f"{name} could not take its old ports again ({str(e).splitlines()[0]}); new ones")
        self._launch(name, seeds)
        self.note(f"restarted {name} on new ports {node.http_port}/{node.peer_port}")

    def pause(self, name: str) -> None:
        """SIGSTOP one node: it keeps its sockets but answers nothing."""
        self.nodes[name].signal(signal.SIGSTOP)
        self.paused.add(name)
        self.note(f"stopped (SIGSTOP) {name}")

    def resume(self, name: str) -> None:
        """SIGCONT a stopped node."""
        self.nodes[name].signal(signal.SIGCONT)
        self.paused.discard(name)
        self.note(f"continued (SIGCONT) {name}")

    # -- views ----------------------------------------------------------------------------

    def up(self) -> list[str]:
        """Names of the nodes that run and are not stopped."""
        return [n for n in self.names if n not in self.down and n not in self.paused]

    def url(self, name: str) -> str:
        """Base URL of a node (it changes when a restart had to take new ports)."""
        return self.nodes[name].url

    def get(self, name: str, path: str, timeout: float = 5.0) -> tuple[int, Any]:
        """``GET`` on one node; status 0 when it does not answer."""
        return http_json(self.url(name) + path, timeout=timeout)

    def cluster_view(self, name: str) -> dict[str, Any]:
        """The node's ``/v1/cluster`` (empty when it does not answer)."""
        status, body = self.get(name, "/v1/cluster")
        return body if status == 200 and isinstance(body, dict) else {}

    def raft_views(self) -> dict[str, dict[str, Any]]:
        """``raft`` of ``/v1/cluster`` on every node that is up."""
        return {n: self.cluster_view(n).get("raft", {}) for n in self.up()}

    def formed(self, names: list[str] | None = None) -> bool:
        """Every node that is up names the same Raft leader (one that is up), and
        sees all ``names`` (default: every node) as voters and ready."""
        want = sorted(names or self.names)
        views = self.raft_views()
        if not views:
            return False
        leaders = {v.get("leader") for v in views.values()}
        if len(leaders) != 1:
            return False
        leader = leaders.pop()
        if not leader or leader not in self.up():
            return False
        if not all(v.get("voters") == want for v in views.values()):
            return False
        return all(self.get(n, "/readyz", timeout=2.0)[0] == 200 for n in self.up())

    def raft_leader(self) -> str | None:
        """The Raft leader a majority of the running nodes agree on, or None."""
        from collections import Counter

        votes = Counter(v.get("leader") for v in self.raft_views().values() if v.get("leader"))
        if not votes:
            return None
        leader, count = votes.most_common(1)[0]
        return str(leader) if count > len(self.names) // 2 or count == len(self.up()) else None

    def placement(self, via: str | None = None) -> dict[str, Any]:
        """``/v1/cluster/placement`` ``topics`` from ``via`` (default: the first node that answers)."""
        for name in [via] if via else self.up():
            status, body = self.get(name, "/v1/cluster/placement")
            if status == 200 and isinstance(body, dict):
                return dict(body.get("topics", {}))
        return {}

    def partition_leaders(self, topic: str, via: str | None = None) -> dict[int, str | None]:
        """Partition → leader (None while there is none) of one topic, from the placement."""
        parts = self.placement(via).get(topic, {})
        return {int(p): (v.get("leader") or None) for p, v in parts.items()}

    def partition_report(self, topic: str, partition: int) -> dict[str, Any]:
        """Every running node's view of one partition (its ``GET /v1/topics`` entry and its
        placement entry): what a failure message should show."""
        out: dict[str, Any] = {}
        for n in self.up():
            status, desc = self.get(n, f"/v1/topics/{topic}")
            view = next((v for v in partition_views(desc) if v.get("partition") == partition), status)
            if isinstance(view, dict):
                view = {k: v for k, v in view.items() if k not in ("tiers",)}
            out[n] = {"view": view, "placement": self.placement(n).get(topic, {}).get(str(partition))}
        return out

    def replication_problems(self, topics: list[str], replicated: bool = True) -> list[str]:
        """What keeps ``topics`` from being fully replicated; empty when they are.

        Fully replicated: on every node, for every partition it is a replica
        of, ``log_end == high_watermark ==`` the leader's ``log_end``, the
        leader is up, the node's ``role`` (where given) agrees with the
        placement, and ``/v1/cluster`` reports ``partitions.under_replicated
        == 0`` on every node.  With ``replicated=False`` (before partition replication
        is wired every node keeps its own copy of every partition) it checks
        only that each node's ``log_end == high_watermark`` for every partition.
        """
        problems: list[str] = []
        up = self.up()
        if len(up) != len(self.names):
            problems.append(f"nodes not up: {sorted(set(self.names) - set(up))}")
        if replicated:
            for n in up:
                parts = self.cluster_view(n).get("partitions")
                if not isinstance(parts, dict) or parts.get("under_replicated") != 0:
                    problems.append(f"{n}: /v1/cluster partitions = {parts!r}")
        placement = self.placement() if replicated else {}
        views: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for n in up:
            for t in topics:
                status, desc = self.get(n, f"/v1/topics/{t}")
                if status != 200:
                    problems.append(f"{n}: GET /v1/topics/{t} -> {status}")
                views[(n, t)] = partition_views(desc) if status == 200 else []
        for t in topics:
            for n in up:
                for pv in views[(n, t)]:
                    p = pv.get("partition")
                    if not replicated:
                        if pv.get("log_end") != pv.get("high_watermark"):
                            problems.append(
                                f"{n} {t}/{p}: log_end {pv.get('log_end')} != hw {pv.get('high_watermark')}"
                            )
                        continue
                    place = placement.get(t, {}).get(str(p), {})
                    if n not in place.get("replicas", []):
                        continue
                    leader = place.get("leader")
                    if leader not in up:
                        problems.append(f"{t}/{p}: leader {leader!r} is not up")
                        continue
                    lead = next((x for x in views[(leader, t)] if x.get("partition") == p), {})
                    want_role = "leader" if n == leader else "follower"
                    if pv.get("role", want_role) != want_role:
                        problems.append(f"{n} {t}/{p}: role {pv.get('role')!r}, placement says {want_role}")
                    le, hw, lle = pv.get("log_end"), pv.get("high_watermark"), lead.get("log_end")
                    if le is None or not (le == hw == lle):
                        problems.append(f"{n} {t}/{p}: log_end {le}, hw {hw}, leader {leader} log_end {lle}")
        return problems


def time_to_voters(log_paths: list[Path], voters: int) -> float | None:
    """Seconds from the last member's gossip join to a ``voters``-voter Raft
    configuration, from the nodes' own JSON logs (``--log-format json``): the
    first time any node logged the member that joined last, to the first time
    any node logged a configuration of ``voters`` voters applied.  None when
    either is missing."""
    first_seen: dict[str, float] = {}
    reached: list[float] = []
    for path in log_paths:
        for line in path.read_text(errors="replace").splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if not isinstance(ev, dict) or "log_time" not in ev:
                continue
            t = float(ev["log_time"])
            if ev.get("log_namespace") == "sprawl.gossip.udp" and ev.get("change") == "joined":
                m = str(ev.get("node_id"))
                first_seen[m] = min(first_seen.get(m, t), t)
            elif (
                str(ev.get("log_format", "")).startswith("raft: configuration applied")
                and ev.get("voters") == voters
            ):
                reached.append(t)
    if not first_seen or not reached:
        return None
    return min(reached) - max(first_seen.values())
