"""Real ``twistd sprawl`` processes on loopback with OS-chosen ports, and the blocking HTTP
helpers of the tests that drive them.

Each :class:`NodeProcess` owns one process; readiness is the node's own "serving HTTP" log
line (no polling sleeps), its output goes to a log file next to its data dir, and
:meth:`NodeProcess.stop` / :meth:`NodeProcess.kill` always reap it.  A node runs the
``sprawl`` package this process imported (the source tree in the dev venv, the installed
wheel under tox): its directory goes first on the node's ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import sprawl
from harness.waits import scaled
from sprawl.client.blocking import Client
from sprawl.client.errors import ClientError
from sprawl.client.topics import TopicDescription

READY_MARK = b"serving HTTP on"


def twistd_command() -> list[str]:
    """The twistd of the running interpreter."""
    exe = Path(sys.executable).parent / "twistd"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


#: Variables that configure a node (``SPRAWL_*``, the seed's ``MINIO_*``) or
#: its S3 client (``AWS_*``): a node started by the tests never inherits them,
#: it gets only the ones its test gives (``env=``).
NODE_CONFIG_PREFIXES = ("SPRAWL_", "MINIO_", "AWS_")


def node_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a node started by the tests: this process's, less
    every variable of :data:`NODE_CONFIG_PREFIXES`, plus the source tree on
    ``PYTHONPATH``, unbuffered output and ``extra`` (what the test sets)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(NODE_CONFIG_PREFIXES)}
    env.update(PYTHONPATH=node_pythonpath(), PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


def in_ci(environ: Any = None) -> bool:
    """True when ``CI`` is set to anything but an empty or false value
    (``0``, ``false``, ``no``, ``off``): CI installs every tool the tests need."""
    value = (os.environ if environ is None else environ).get("CI", "")
    return value.strip().lower() not in ("", "0", "false", "no", "off")


def require_tools(missing: list[str], install: str) -> None:
    """The one rule for tests that need something outside Python (a browser,
    ``systemd-analyze``, SeaweedFS' ``weed``): with nothing ``missing`` it
    returns; else the test is skipped, or fails under CI (:func:`in_ci`), which
    must have installed it.  ``install`` says how to install what is missing."""
    if not missing:
        return
    import pytest

    msg = f"needs {', '.join(missing)} ({install})"
    if in_ci():
        pytest.fail(f"CI must provide what this test {msg}", pytrace=False)
    pytest.skip(msg)


def node_pythonpath() -> str:
    """Where the ``sprawl`` package (and its twisted/plugins beside it) was imported from."""
    root = str(Path(sprawl.__file__).resolve().parent.parent)
    old = os.environ.get("PYTHONPATH")
    return root + (os.pathsep + old if old else "")


class NodeProcess:
    """A real ``twistd -n sprawl`` process on 127.0.0.1 (or another loopback ``host``)."""

    def __init__(
        self,
        data_dir: Path | str,
        *args: str,
        startup_timeout: float = 30.0,
        loopback_peer: bool = True,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
    ):
        self.data_dir = Path(data_dir)
        #: The loopback address the node's HTTP and peer ports listen on (and its
        #: peer connections leave from): one per node lets a test cut two nodes
        #: apart (:mod:`harness.netcut`).
        self.host = host
        self.args = list(args)
        #: Pass ``--bind-addr 127.0.0.1`` (False: leave the peer address to the node's default).
        self.loopback_peer = loopback_peer
        #: Environment variables of the node beyond the cleaned ones (see :func:`node_environment`).
        self.env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / (self.data_dir.name + ".log")
        self.http_port = 0
        self.peer_port = 0
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The node's HTTP base URL."""
        return f"http://{self.host}:{self.http_port}"

    def start(self) -> NodeProcess:
        """Start the process and wait (bounded) until it serves HTTP."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports = self.data_dir / "ports.json"
        if ports.exists():
            ports.unlink()
        cmd = [
            *twistd_command(),
            "-n",
            "--pidfile=",
            "sprawl",
            "--data-dir",
            str(self.data_dir),
            "--http-addr",
            self.host,
            "--http-port",
            "0",
            *(["--bind-addr", self.host] if self.loopback_peer else []),
            "--bind-port",
            "0",
            *self.args,
        ]
        env = node_environment(self.env)
        self.proc = subprocess.Popen(
            cmd,
            cwd=str(self.data_dir.parent),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        ready = threading.Event()
        self._reader = threading.Thread(target=self._drain, args=(self.proc, ready), daemon=True)
        self._reader.start()
        # The bound stretches with the load measured when it runs out (a node
        # with thousands of partitions took 30 s to start at load 28).
        t0 = time.monotonic()
        started = ready.wait(self.startup_timeout)
        bound = self.startup_timeout if started else scaled(self.startup_timeout)
        if not started:
            started = ready.wait(max(0.0, bound - (time.monotonic() - t0)))
        if not started or self.proc.poll() is not None or not ports.exists():
            # (The output can end -- the process exiting -- before it is reaped.)
            out = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            self.kill()
            raise RuntimeError(f"sprawl node did not start within {bound:.0f}s (load-scaled):\n{out[-4000:]}")
        data = json.loads(ports.read_text())
        self.http_port, self.peer_port = int(data["http"]), int(data["peer"])
        return self

    def _drain(self, proc: subprocess.Popen[bytes], ready: threading.Event) -> None:
        assert proc.stdout is not None
        with open(self.log_path, "ab") as log:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if READY_MARK in line:
                    ready.set()
        ready.set()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not stop in time.  Returns the exit code."""
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        self._join()
        return p.returncode

    def kill(self) -> None:
        """SIGKILL (a crash) and reap."""
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            p.kill()
        p.wait(10)
        self._join()

    def _join(self) -> None:
        if self._reader is not None:
            self._reader.join(10)
            self._reader = None
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def signal(self, sig: int) -> None:
        """Send a signal (e.g. SIGSTOP / SIGCONT)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def log_text(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 the OS says is free now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(url: str, method: str = "GET", body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    """One JSON request (:class:`sprawl.client.blocking.Client`, sent once): ``(status,
    decoded body)``; the body is None when it is empty or not JSON.

    Status 0 (body None) when there is no HTTP answer at all: connection
    refused or reset, or no answer within ``timeout`` (a killed or stopped node).
    """
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}"
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        reply = Client([base], timeout=timeout).request_once(method, target, body)
    except ClientError:
        return 0, None
    try:
        return reply.status, reply.json()
    except ClientError:
        return reply.status, None


def key_for_partition(partition: int, partitions: int, prefix: str = "k") -> str:
    """A message key the broker maps to ``partition`` (CRC-32 of the key modulo the partition count)."""
    import zlib

    for i in range(100_000):
        key = f"{prefix}{i}"
        if zlib.crc32(key.encode()) % partitions == partition:
            return key
    raise ValueError(f"no key for partition {partition} of {partitions}")


def partition_views(topic_desc: Any) -> list[dict[str, Any]]:
    """The per-partition entries (``partition_details``) of a ``GET /v1/topics/{topic}``
    answer; none when it is not a topic description (a node that did not answer 200)."""
    try:
        return TopicDescription.parse(topic_desc).partition_details
    except ClientError:
        return []


def metrics_text(url: str, timeout: float = 10.0) -> str:
    """A node's ``/metrics`` exposition, as text."""
    return Client([url], timeout=timeout).request("GET", "/metrics").check().body.decode()


def metric_value(url: str, name: str, **labels: str) -> float:
    """One sample of a node's ``/metrics`` (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = metrics_text(url)
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0
