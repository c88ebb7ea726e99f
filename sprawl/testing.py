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
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import sprawl

READY_MARK = b"serving HTTP on"


def twistd_command() -> list[str]:
    """The twistd of the running interpreter."""
    exe = Path(sys.executable).parent / "twistd"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def _pythonpath() -> str:
    """Where the ``sprawl`` package (and its twisted/plugins beside it) was imported from."""
    root = str(Path(sprawl.__file__).resolve().parent.parent)
    old = os.environ.get("PYTHONPATH")
    return root + (os.pathsep + old if old else "")


class NodeProcess:
    """A real ``twistd -n sprawl`` process on 127.0.0.1."""

    def __init__(self, data_dir: Path | str, *args: str, startup_timeout: float = 30.0):
        self.data_dir = Path(data_dir)
        self.args = list(args)
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
            "--bind-addr",
            "127.0.0.1",
            "--bind-port",
            "0",
            *self.args,
        ]
        env = dict(os.environ, PYTHONPATH=_pythonpath(), PYTHONUNBUFFERED="1")
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
        if not ready.wait(self.startup_timeout) or self.proc.poll() is not None:
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
