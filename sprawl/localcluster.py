"""``bin/sprawl-cluster [N]``: N real nodes on loopback, one command, Ctrl-C stops all.

Node 1 listens on ``--base-http-port`` / ``--base-peer-port`` (8080 / 7946),
node K on the ports K-1 above (or ports chosen by the OS with
``--ports-auto``); every other node is seeded from node 1.  Data dirs are
``DATA_DIR/nodeK`` and each node's output goes to ``DATA_DIR/nodeK.log``.
The script waits until every node sees all N members alive in
``/v1/cluster`` *and* answers ``/readyz?fault_tolerant=1`` (the Raft voter
target -- 1, 3 or 5 voters -- is reached with every voter up, so the cluster
survives what its size allows: with 3 nodes, any one of them dying), prints
each node's URL, the dashboard URL and a ``cluster ready`` line with the
voters and the fault tolerance, then waits for SIGINT or SIGTERM and stops
every node with SIGTERM (SIGKILL after ``--stop-timeout``).  Exit status 0 when
every node stopped cleanly.

The nodes share a cluster key, made once in ``DATA_DIR/cluster.key`` (mode
600) and kept for later runs, so gossip and the peer channel are
authenticated even on loopback; a key or CA given after ``--`` (or in
``SPRAWL_CLUSTER_KEY``) is used instead.

A plain script (no reactor; HTTP through :mod:`sprawl.client.blocking`): it supervises processes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sprawl.client.blocking import Client
from sprawl.client.errors import ClientError


@dataclass
class Node:
    """One node process of the local cluster."""

    name: str
    data_dir: Path
    http_port: int
    peer_port: int
    proc: subprocess.Popen[bytes] | None = None
    log: Any = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The node's HTTP base URL."""
        return f"http://127.0.0.1:{self.http_port}"


def twistd() -> list[str]:
    """The twistd beside this interpreter."""
    exe = Path(sys.executable).parent / "twistd"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        prog="sprawl-cluster",
        description="Start N Sprawl nodes on 127.0.0.1 that form one cluster; Ctrl-C stops them all.",
    )
    p.add_argument("nodes", nargs="?", type=int, default=3, help="number of nodes [3]")
    p.add_argument(
        "--base-http-port", type=int, default=8080, help="HTTP port of node 1; node K adds K-1 [8080]"
    )
    p.add_argument(
        "--base-peer-port", type=int, default=7946, help="peer port of node 1; node K adds K-1 [7946]"
    )
    p.add_argument(
        "--ports-auto", action="store_true", help="let the OS choose every port (read from ports.json)"
    )
    p.add_argument(
        "--data-dir", default="./sprawl-cluster", help="parent of the nodes' data dirs [./sprawl-cluster]"
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the cluster to form [60]")
    p.add_argument(
        "--stop-timeout", type=float, default=30.0, help="seconds to wait for each node to stop [30]"
    )
    p.epilog = "Arguments after -- go to every node's `twistd sprawl` (e.g. -- --partitions 4)."
    node_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, node_args = argv[:i], argv[i + 1 :]
    a = p.parse_args(argv)
    a.node_args = node_args
    if a.nodes < 1 or a.nodes > 64:
        p.error("nodes must be 1..64")
    return a


def _get_json(url: str, path: str) -> Any:
    """The JSON answer of a GET (None when the node does not answer 200 with JSON)."""
    try:
        reply = Client([url], timeout=2).request_once("GET", path)
        return reply.json() if reply.status == 200 else None
    except ClientError:
        return None


def _status(url: str, path: str) -> int:
    """The HTTP status of a GET (0 when the node does not answer)."""
    try:
        return Client([url], timeout=2).request_once("GET", path).status
    except ClientError:
        return 0


class LocalCluster:
    """Starts, watches and stops the nodes."""

    def __init__(self, args: argparse.Namespace, out: TextIO = sys.stdout) -> None:
        self.args = args
        self.out = out
        self.base = Path(args.data_dir).resolve()
        self.nodes: list[Node] = []
        self.stop_requested = threading.Event()

    def say(self, text: str) -> None:
        """Print one line, flushed (tests and pipes read it as it comes)."""
        print(text, file=self.out, flush=True)

    def key_args(self) -> list[str]:
        """``--cluster-key-file`` of the cluster's key file, made on first use
        (none when the node arguments or the environment bring their own)."""
        own = ("--cluster-key", "--cluster-key-file", "--cluster-ca")
        if any(arg.split("=", 1)[0] in own for arg in self.args.node_args):
            return []
        if os.environ.get("SPRAWL_CLUSTER_KEY") or os.environ.get("SPRAWL_CLUSTER_KEY_FILE"):
            return []
        path = self.base / "cluster.key"
        if not path.exists():
            import base64
            import secrets

            self.base.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write("base64:" + base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
        return ["--cluster-key-file", str(path)]

    def start_node(self, k: int, seeds: str | None) -> Node:
        """Start node *k* (1-based) and wait (bounded) until its ports.json names its ports."""
        a = self.args
        data = self.base / f"node{k}"
        data.mkdir(parents=True, exist_ok=True)
        ports_file = data / "ports.json"
        if ports_file.exists():
            ports_file.unlink()
        http = 0 if a.ports_auto else a.base_http_port + k - 1
        peer = 0 if a.ports_auto else a.base_peer_port + k - 1
        node = Node(f"node{k}", data, http, peer)
        cmd = [
            *twistd(),
            "--nodaemon",
            "--pidfile=",
            "sprawl",
            "--node-id",
            node.name,
            "--data-dir",
            str(data),
            "--http-addr",
            "127.0.0.1",
            "--http-port",
            str(http),
            "--bind-addr",
            "127.0.0.1",
            "--bind-port",
            str(peer),
            *(["--seeds", seeds] if seeds else []),
            *self.key_args(),
            *a.node_args,
        ]
        node.log = open(self.base / f"{node.name}.log", "ab")
        node.proc = subprocess.Popen(
            cmd,
            stdout=node.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(self.base),
            start_new_session=True,  # Ctrl-C reaches this script only; it stops the nodes in order
        )
        self.nodes.append(node)
        deadline = time.monotonic() + a.timeout
        while time.monotonic() < deadline and not self.stop_requested.is_set():
            if node.proc.poll() is not None:
                raise RuntimeError(
                    f"{node.name} exited with {node.proc.returncode}; see {self.base}/{node.name}.log"
                )
            try:
                ports = json.loads(ports_file.read_text())
            except (OSError, ValueError):
                self.stop_requested.wait(0.05)
                continue
            node.http_port, node.peer_port = int(ports["http"]), int(ports["peer"])
            return node
        raise RuntimeError(
            f"{node.name} did not start within {a.timeout:g}s; see {self.base}/{node.name}.log"
        )

    def alive_members(self, node: Node) -> int:
        """How many members *node* sees alive (0 when it does not answer)."""
        view = _get_json(node.url, "/v1/cluster")
        if not isinstance(view, dict):
            return 0
        return sum(1 for m in view.get("members", []) if m.get("state") == "alive")

    def fault_tolerant(self, node: Node) -> bool:
        """Whether *node* says the Raft voter target is reached with every voter up."""
        return _status(node.url, "/readyz?fault_tolerant=1") == 200

    def wait_formed(self) -> None:
        """Wait (bounded) until every node sees all N members alive and the
        voter target is reached (``/readyz?fault_tolerant=1`` on every node)."""
        n = self.args.nodes
        deadline = time.monotonic() + self.args.timeout
        while time.monotonic() < deadline and not self.stop_requested.is_set():
            self.check_running()
            if all(self.alive_members(node) == n for node in self.nodes) and all(
                self.fault_tolerant(node) for node in self.nodes
            ):
                return
            self.stop_requested.wait(0.1)
        if not self.stop_requested.is_set():
            raise RuntimeError(
                f"the cluster did not form (all members alive, voter target reached) within {self.args.timeout:g}s"
            )

    def check_running(self) -> None:
        """Raise when a node exited on its own."""
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is not None:
                raise RuntimeError(
                    f"{node.name} exited with {node.proc.returncode}; see {self.base}/{node.name}.log"
                )

    def start(self) -> None:
        """Start every node, the first one as the seed of the others, and wait for the cluster."""
        first = self.start_node(1, None)
        for k in range(2, self.args.nodes + 1):
            if self.stop_requested.is_set():
                return
            self.start_node(k, f"127.0.0.1:{first.peer_port}")
        self.wait_formed()
        if self.stop_requested.is_set():
            return
        for node in self.nodes:
            pid = node.proc.pid if node.proc is not None else 0
            self.say(
                f"{node.name}: {node.url}  (peer 127.0.0.1:{node.peer_port}, pid {pid}, data {node.data_dir})"
            )
        self.say(f"dashboard: {first.url}/")
        raft = (_get_json(first.url, "/v1/cluster") or {}).get("raft") or {}
        ft = raft.get("fault_tolerance", 0)
        self.say(
            f"cluster ready: {len(self.nodes)} nodes, {len(raft.get('voters') or [])} Raft voters "
            f"(survives {ft} node failure{'' if ft == 1 else 's'}); Ctrl-C stops them all"
        )

    def stop(self) -> bool:
        """SIGTERM every node, wait, SIGKILL stragglers; report.  True when all stopped cleanly."""
        clean = True
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in reversed(self.nodes):
            p = node.proc
            if p is None:
                continue
            try:
                p.wait(self.args.stop_timeout)
                ok = p.returncode in (0, -signal.SIGTERM)
                how = "stopped cleanly" if ok else f"exited with {p.returncode}"
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
                ok, how = False, f"killed after {self.args.stop_timeout:g}s"
            clean = clean and ok
            if node.log is not None:
                node.log.close()
            self.say(f"{node.name}: {how}")
        return clean


def main(argv: list[str] | None = None) -> int:
    """Run the local cluster until SIGINT/SIGTERM; the exit status tells whether it stopped cleanly."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cluster = LocalCluster(args)

    def on_signal(signum: int, frame: Any) -> None:
        cluster.stop_requested.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    status = 0
    try:
        cluster.start()
        while not cluster.stop_requested.wait(0.5):
            cluster.check_running()
    except RuntimeError as e:
        cluster.say(f"error: {e}")
        status = 1
    cluster.say(f"stopping {len(cluster.nodes)} nodes")
    if not cluster.stop():
        status = 1
    return status


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
