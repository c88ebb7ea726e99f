"""The systemd units in docs/systemd/: structure everywhere, ``systemd-analyze
verify`` where systemd is installed, and socket activation with a real node.

``systemd-analyze verify`` checks that ExecStart's binary exists, so it runs
on temp copies whose ``/opt/sprawl/venv`` is replaced by this interpreter's
venv.  It does not need the ``sprawl`` user to exist.  The socket-activation
test hands a listening socket to ``twistd sprawl`` as fd 3 with
``LISTEN_FDS``/``LISTEN_PID``/``LISTEN_FDNAMES`` exactly as systemd does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from harness import READY_MARK, node_environment, require_tools, twistd_command
from harness.paths import DOCS

UNITS = DOCS / "systemd"
SERVICES = ("sprawl.service", "sprawl@.service", "sprawl-http.service")
HARDENING = {
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "NoNewPrivileges": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "LockPersonality": "yes",
    "CapabilityBoundingSet": "",
    "SystemCallFilter": "@system-service",
    "LimitNOFILE": "65536",
    "Restart": "on-failure",
    "KillSignal": "SIGTERM",
    "User": "sprawl",
}


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections → key → values of a unit file (comments dropped, ``\\`` continuations joined)."""
    out: dict[str, dict[str, list[str]]] = {}
    section: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = out.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"{path.name}: key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not key=value: {line}"
        section.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.mark.parametrize("name", SERVICES)
def test_service_structure(name: str) -> None:
    """Each service runs twistd in the foreground with no pid file, as ``sprawl``, hardened."""
    unit = parse_unit(UNITS / name)
    svc = unit["Service"]
    (exec_start,) = svc["ExecStart"]
    argv = exec_start.split()
    assert argv[0].endswith("/bin/twistd") and argv[0].startswith("/"), argv
    assert "--nodaemon" in argv and "--pidfile=" in argv
    assert argv.index("--pidfile=") < argv.index("sprawl"), "twistd options go before the plugin name"
    for key, value in HARDENING.items():
        assert svc.get(key) == [value], f"{name}: {key}={svc.get(key)}"
    assert int(svc["TimeoutStopSec"][0]) >= 30
    state = svc["StateDirectory"][0]
    assert state.startswith("sprawl")
    data_dir = argv[argv.index("--data-dir") + 1]
    assert data_dir == "/var/lib/" + state, (data_dir, state)
    assert "MemoryDenyWriteExecute" not in svc  # see the comment in the unit: cffi
    assert "Install" in unit


def test_template_is_per_instance() -> None:
    """sprawl@.service: the instance name is the node id, its env file and its data dir."""
    svc = parse_unit(UNITS / "sprawl@.service")["Service"]
    assert svc["EnvironmentFile"] == ["/etc/sprawl/%i.env"]
    assert svc["StateDirectory"] == ["sprawl/%i"]
    argv = svc["ExecStart"][0].split()
    assert argv[argv.index("--node-id") + 1] == "%i"


def test_socket_activated_variant() -> None:
    """sprawl-http.socket feeds sprawl-http.service, which adopts fd 0 of LISTEN_FDS."""
    sock = parse_unit(UNITS / "sprawl-http.socket")
    assert sock["Socket"]["ListenStream"] == ["0.0.0.0:8080"]
    assert sock["Socket"]["Service"] == ["sprawl-http.service"]
    svc = parse_unit(UNITS / "sprawl-http.service")
    assert "systemd:domain=INET:index=0" in svc["Service"]["ExecStart"][0].split()
    assert svc["Service"]["Sockets"] == ["sprawl-http.socket"]


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` accepts every unit with no warning (skipped
    without ``systemd-analyze``, except under CI: see :func:`require_tools`)."""
    require_tools([] if shutil.which("systemd-analyze") else ["systemd-analyze"], "apt-get install systemd")
    twistd = Path(sys.executable).parent / "twistd"
    # substituted for /opt/sprawl/venv/bin/twistd
    require_tools([] if twistd.exists() else [f"twistd beside {sys.executable}"], "pip install twisted")
    for unit in UNITS.iterdir():
        text = unit.read_text().replace("/opt/sprawl/venv/bin/twistd", str(twistd))
        (tmp_path / unit.name).write_text(text)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert set(SERVICES) | {"sprawl-http.socket", "sprawl.target"} <= set(names)
    targets = [str(tmp_path / n) for n in names if n != "sprawl@.service"]
    targets.append(str(tmp_path / "sprawl@node1.service"))  # an instance of the template
    r = subprocess.run(
        ["systemd-analyze", "verify", *targets],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, SYSTEMD_LOG_LEVEL="notice"),
    )
    out = (r.stdout + r.stderr).strip()
    assert r.returncode == 0, out
    ours = [line for line in out.splitlines() if str(tmp_path) in line or "sprawl" in line]
    assert not ours, out


def test_socket_activation_real_node(tmp_path: Path) -> None:
    """A node started the way systemd starts sprawl-http.service serves HTTP on the inherited socket."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    data = tmp_path / "data"
    cmd = [
        "/bin/sh",
        "-c",
        'LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=sprawl-http.socket exec "$@"',
        "sh",
        *twistd_command(),
        "--nodaemon",
        "--pidfile=",
        "sprawl",
        "--data-dir",
        str(data),
        "--bind-addr",
        "127.0.0.1",
        "--bind-port",
        "0",
        "--http-endpoint",
        "systemd:domain=INET:index=0",
    ]

    def to_fd3() -> None:
        os.dup2(fd, 3)  # inheritable; Python's own fds are not, so close_fds=False leaks nothing else

    env = node_environment()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        preexec_fn=to_fd3,  # dup2 into fd 3, as systemd does
        close_fds=False,  # close_fds would close fd 3 after preexec_fn
        cwd=str(tmp_path),
    )
    listener.close()  # the child holds it now
    ready = threading.Event()
    lines: list[bytes] = []

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if READY_MARK in line:
                ready.set()
        ready.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert ready.wait(60) and proc.poll() is None, b"".join(lines).decode(errors="replace")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as r:
            assert r.status == 200
        assert json.loads((data / "ports.json").read_text())["http"] == port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        reader.join(10)
    assert b"sprawl node stopped cleanly" in b"".join(lines)


@pytest.mark.parametrize("name", SERVICES)
def test_memory_max_fits_the_memory_budget(name: str) -> None:
    """MemoryMax= leaves room for the node's baseline (100 MB at most) plus 1.3x
    the --memory-budget the unit sets, and MemoryHigh= sits between the two."""
    from sprawl.config import parse_size

    svc = parse_unit(UNITS / name)["Service"]
    env = dict(e.split("=", 1) for e in svc["Environment"])
    budget = parse_size(env["SPRAWL_MEMORY_BUDGET"])
    high, top = (parse_size(svc[k][0] + "iB") for k in ("MemoryHigh", "MemoryMax"))
    assert 100 * 1000**2 + 1.3 * budget <= high < top, (budget, high, top)
