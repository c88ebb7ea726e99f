"""``--log-format json``: a real node writes one JSON object per line on stdout."""

from __future__ import annotations

import io
import json
import signal
from pathlib import Path

from twisted.application import service
from twisted.logger import ILogObserver, Logger

from harness import NodeProcess
from sprawl.log_observers import LoggingMultiService, json_observer
from sprawl.node.service import peer_plane_protection
from sprawl.tap import build_config


def test_json_observer_writes_one_object_per_line() -> None:
    """Each event becomes one line holding twisted.logger's fields and the formatted text."""
    out = io.StringIO()
    log = Logger(observer=json_observer(out), namespace="test")
    log.info("hello {who}", who="operator")
    log.warn("second {n}", n=2)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["text"] == "hello operator"
    assert first["who"] == "operator" and first["log_format"] == "hello {who}"
    assert first["log_level"]["name"] == "info" and first["log_namespace"] == "test"


def test_top_service_sets_observer_on_application() -> None:
    """With json, attaching to twistd's application sets its ILogObserver component; text leaves it alone."""
    app = service.Application("sprawl")
    LoggingMultiService("json").setServiceParent(app)
    assert app.getComponent(ILogObserver, None) is not None
    plain = service.Application("sprawl")
    LoggingMultiService("text").setServiceParent(plain)
    assert plain.getComponent(ILogObserver, None) is None


def test_log_format_from_environment() -> None:
    """SPRAWL_LOG_FORMAT selects the format; the command line wins."""
    assert build_config({}, {}).log_format == "text"
    assert build_config({}, {"SPRAWL_LOG_FORMAT": "json"}).log_format == "json"
    assert build_config({"log-format": "text"}, {"SPRAWL_LOG_FORMAT": "json"}).log_format == "text"


def test_real_node_logs_json_lines(tmp_path: Path) -> None:
    """Every line a real node prints, start to clean stop, is JSON; the ready event is among them."""
    node = NodeProcess(tmp_path / "node", "--log-format", "json")
    node.start()
    try:
        rc = node.stop()
    finally:
        node.kill()
    assert rc == -signal.SIGTERM
    lines = node.log_text().splitlines()
    events = [json.loads(line) for line in lines]  # every line parses
    texts = [e["text"] for e in events]
    assert any("serving HTTP on" in t for t in texts), texts
    assert "sprawl node stopped cleanly" in texts
    serving = next(e for e in events if "serving HTTP on" in e["text"])
    assert serving["log_namespace"] == "sprawl.tap" and serving["http"].startswith("http://127.0.0.1:")
    plane = [e for e in events if e.get("log_format") == "peer plane on {addr}: {how}"]
    assert [(e["addr"], e["how"]) for e in plane] == [("127.0.0.1", peer_plane_protection(False, False))]


def test_the_start_line_names_how_the_peer_plane_is_protected() -> None:
    """Each of the four settings (key, CA, both, neither) has its own words; an open
    peer plane says so, and only a key is said to tag gossip."""
    said = {(k, ca): peer_plane_protection(k, ca) for k in (False, True) for ca in (False, True)}
    assert len(set(said.values())) == 4
    assert said[(False, False)].startswith("no cluster key or CA")
    assert said[(True, False)].startswith("cluster key") and "CA" not in said[(True, False)]
    assert "gossip is not authenticated" in said[(False, True)]
    assert "cluster key" in said[(True, True)] and "cluster CA" in said[(True, True)]
    assert all("gossip" in said[(True, ca)] and "tagged" in said[(True, ca)] for ca in (False, True))
