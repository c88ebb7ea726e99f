"""``sprawlctl`` against a real single-node broker (the ``sprawl_node`` fixture).

Every command runs in-process through :class:`click.testing.CliRunner` except the Ctrl-C test,
which needs a real process to signal. Subscriptions always pass ``-c`` and ``--idle-timeout``
so a missing message fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import re
import selectors
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from harness import node_environment, scaled
from harness.paths import ROOT
from sprawl.client.sse import SseParser, sse_events
from sprawl.ctl import cli, parse_urls

pytestmark = pytest.mark.integration


def idle(seconds: float = 10.0) -> str:
    """``--idle-timeout`` for a subscription that must get its messages: how
    long it may wait for one before the test fails, stretched by the load
    measured now (a busy machine delays the first message, not the result)."""
    return f"{scaled(seconds):.1f}"


def ctl(url: str, *args: str, input: str | bytes | None = None, env: dict[str, str] | None = None) -> Result:
    """Run ``sprawlctl -n URL ARGS...`` in-process."""
    runner = CliRunner()
    return runner.invoke(
        cli, ["-n", url, "--timeout", "10", *args], input=input, env=env, catch_exceptions=False
    )


def ok(result: Result) -> str:
    """Assert success and return stdout."""
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.stderr}"
    return result.stdout


def one_line_error(result: Result) -> str:
    """Assert failure with exactly one ``sprawlctl: error:`` line on stderr; return it."""
    assert result.exit_code != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sprawlctl: error: ")
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def dead_url() -> Iterator[str]:
    """A loopback URL whose port is bound but not listening: connections are refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def make_topic(url: str, name: str, *opts: str) -> None:
    ok(ctl(url, "topics", "create", name, "--partitions", "1", *opts))


# --------------------------------------------------------------------------------------------
# publish / subscribe


def test_publish_then_subscribe_prints_payloads_in_order(sprawl_node: Any) -> None:
    url = sprawl_node.url
    make_topic(url, "orders")
    sent = [f"message {i}" for i in range(20)]
    for text in sent:
        out = ok(ctl(url, "publish", "-t", "orders", "-m", text))
        assert re.fullmatch(r"offset=\d+ partition=0 id=\S+\n", out)
    out = ok(
        ctl(url, "subscribe", "-t", "orders", "--from", "earliest", "-c", "20", "--idle-timeout", idle())
    )
    assert out.splitlines() == sent


def test_subscribe_to_a_missing_topic_waits_then_gives_up_after_idle_timeout(sprawl_node: Any) -> None:
    """A subscriber may start before the first publish: it says it is waiting for the
    topic (the node's stream waits for it), and with --idle-timeout the wait is bounded and
    ends in a clear error."""
    result = ctl(sprawl_node.url, "subscribe", "-t", "not-yet", "-c", "1", "--idle-timeout", "1")
    assert result.exit_code != 0
    lines = result.stderr.splitlines()
    assert lines[0] == "waiting for topic 'not-yet' to be created ...", lines
    assert lines[-1] == "sprawlctl: error: received 0 of 1 messages within --idle-timeout", lines


def test_subscribe_started_before_the_first_publish_gets_it(sprawl_node: Any) -> None:
    """``subscribe --from latest`` started before the topic exists waits (the node holds the
    stream open) and prints the first publish, which created the topic, and the next."""
    import threading
    import urllib.request

    from harness import http_json, poll_until

    url = sprawl_node.url
    results: list[Result] = []
    sub = threading.Thread(
        target=lambda: results.append(
            ctl(url, "subscribe", "-t", "fresh", "--from", "latest", "-c", "2", "--idle-timeout", idle())
        ),
        daemon=True,
    )
    sub.start()

    def waiting() -> bool:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            return "sprawl_topic_waiting_subscribers 1.0" in r.read().decode()

    assert poll_until(waiting, 20) is not None, "the subscriber never waited for its topic"
    for text in ("first", "second"):  # the publishes run here, not through a second CliRunner
        status, body = http_json(f"{url}/v1/topics/fresh/messages", "POST", {"messages": [{"payload": text}]})
        assert status == 200, body
    sub.join(scaled(30))
    assert not sub.is_alive() and results, "the subscriber did not finish"
    assert ok(results[0]).splitlines() == ["first", "second"]
    assert results[0].stderr.splitlines() == ["waiting for topic 'fresh' to be created ..."]


def test_publish_prints_offset_partition_id_per_message(sprawl_node: Any) -> None:
    url = sprawl_node.url
    make_topic(url, "counted")
    out = ok(ctl(url, "publish", "-t", "counted", "-p", "x", "-c", "3", "-k", "k1"))
    offsets = [int(m.group(1)) for m in re.finditer(r"^offset=(\d+) partition=0 id=\S+$", out, re.M)]
    assert offsets == [0, 1, 2]
    answer = json.loads(ok(ctl(url, "publish", "-t", "counted", "-m", "y", "--acks", "leader", "--json")))
    assert answer["offsets"] == [3] and answer["partitions"] == [0] and len(answer["ids"]) == 1
    out = ok(
        ctl(
            url,
            "subscribe",
            "-t",
            "counted",
            "--from",
            "1",
            "--partition",
            "0",
            "-c",
            "3",
            "--json",
            "--idle-timeout",
            idle(),
        )
    )
    msgs = [json.loads(line) for line in out.splitlines()]
    assert [(m["offset"], m["payload"]) for m in msgs] == [(1, "x"), (2, "x"), (3, "y")]
    assert msgs[0]["key"] == "k1"


def test_publish_with_id_is_idempotent(sprawl_node: Any) -> None:
    url = sprawl_node.url
    make_topic(url, "idem")
    first = ok(ctl(url, "publish", "-t", "idem", "-m", "once", "--id", "order-7"))
    again = ok(ctl(url, "publish", "-t", "idem", "-m", "once", "--id", "order-7"))
    assert first == again
    assert "id=order-7" in first


def test_publish_stdin_lines_one_message_each_in_batches(sprawl_node: Any) -> None:
    url = sprawl_node.url
    make_topic(url, "lines")
    lines = [f"line-{i}" for i in range(1203)]  # three requests of at most 500
    out = ok(ctl(url, "publish", "-t", "lines", "-m", "-", input="\n".join(lines) + "\n"))
    assert len(out.splitlines()) == len(lines)
    ok(ctl(url, "publish", "-t", "lines", "-f", "-", input="from-f-dash\r\n"))
    out = ok(
        ctl(
            url,
            "subscribe",
            "-t",
            "lines",
            "--from",
            "earliest",
            "-c",
            str(len(lines) + 1),
            "--idle-timeout",
            idle(),
        )
    )
    assert out.splitlines() == [*lines, "from-f-dash"]


def test_publish_file_sends_its_bytes_as_one_message(sprawl_node: Any, tmp_path: Path) -> None:
    url = sprawl_node.url
    make_topic(url, "files")
    data = bytes(range(256)) * 3
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    out = ok(ctl(url, "publish", "-t", "files", "-f", str(path)))
    assert len(out.splitlines()) == 1
    ok(ctl(url, "publish", "-t", "files", "-f", str(path), "-k", "with-key"))  # JSON + payload_b64 form
    result = ctl(url, "subscribe", "-t", "files", "--from", "earliest", "-c", "2", "--idle-timeout", idle())
    ok(result)
    assert result.stdout_bytes == (data + b"\n") * 2


def test_subscribe_group_pulls_prints_and_acks(sprawl_node: Any) -> None:
    url = sprawl_node.url
    make_topic(url, "jobs")
    ok(ctl(url, "publish", "-t", "jobs", "-m", "-", input="j1\nj2\nj3\n"))
    out = ok(
        ctl(
            url,
            "subscribe",
            "-t",
            "jobs",
            "--group",
            "workers",
            "--from",
            "earliest",
            "-c",
            "3",
            "--idle-timeout",
            idle(),
        )
    )
    assert out.splitlines() == ["j1", "j2", "j3"]
    desc = json.loads(ok(ctl(url, "groups", "describe", "jobs", "workers", "--json")))
    assert desc["lag"] == 0 and desc["in_flight"] == 0


def test_subscribe_with_too_few_messages_fails_after_idle_timeout(sprawl_node: Any) -> None:
    url = sprawl_node.url
    make_topic(url, "quiet")
    ok(ctl(url, "publish", "-t", "quiet", "-m", "only"))
    # the one message comes first; then nothing more within the idle timeout
    result = ctl(url, "subscribe", "-t", "quiet", "--from", "earliest", "-c", "2", "--idle-timeout", idle(2))
    assert result.stdout == "only\n"
    assert "received 1 of 2" in one_line_error(result)


def test_subscribe_ctrl_c_exits_zero_without_traceback(sprawl_node: Any) -> None:
    url = sprawl_node.url
    make_topic(url, "live")
    ok(ctl(url, "publish", "-t", "live", "-m", "first"))
    env = node_environment()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bin" / "sprawlctl"),
            "-n",
            url,
            "subscribe",
            "-t",
            "live",
            "--from",
            "earliest",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        # Ctrl-C reaches a shell's foreground job with SIGINT at its default; a
        # suite started from a background job inherits it ignored (SIG_IGN),
        # and Python then installs no KeyboardInterrupt handler.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(timeout=scaled(20)), "no message within 20 s (scaled)"
        assert proc.stdout.readline() == b"first\n"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=scaled(20))
        assert proc.returncode == 0, err
        assert b"Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


# --------------------------------------------------------------------------------------------
# topics and groups


def test_topics_create_list_describe_delete(sprawl_node: Any) -> None:
    url = sprawl_node.url
    out = ok(
        ctl(
            url,
            "topics",
            "create",
            "metrics",
            "--partitions",
            "3",
            "--replication-factor",
            "1",
            "--storage",
            "ephemeral",
            "--retention-ms",
            "60000",
            "--retention-bytes",
            "1000000",
        )
    )
    assert out == "topic metrics created\n"
    assert ok(ctl(url, "topics", "create", "metrics", "--partitions", "3")) == "topic metrics updated\n"
    ok(ctl(url, "publish", "-t", "metrics", "-m", "m", "-c", "5"))

    table = ok(ctl(url, "topics", "list")).splitlines()
    assert table[0].split()[:2] == ["NAME", "PARTITIONS"]
    row = next(line.split() for line in table[1:] if line.split()[0] == "metrics")
    assert row[1] == "3"
    listed = json.loads(ok(ctl(url, "topics", "list", "--json")))
    assert [t["messages"] for t in listed["topics"] if t["name"] == "metrics"] == [5]

    text = ok(ctl(url, "topics", "describe", "metrics"))
    assert "partitions: 3" in text and "storage: ephemeral" in text and "retention_ms: 60000" in text
    assert re.search(r"^PARTITION\s+LEADER\s+EPOCH\s+REPLICAS\s+LOW\s+HIGH_WATERMARK", text, re.M)
    assert re.search(r"^PARTITION\s+TIERS", text, re.M) and "memory" in text
    desc = json.loads(ok(ctl(url, "topics", "describe", "metrics", "--json")))
    assert desc["name"] == "metrics"

    assert ok(ctl(url, "topics", "delete", "metrics")) == "topic metrics deleted\n"
    assert "metrics" not in [
        t["name"] for t in json.loads(ok(ctl(url, "topics", "list", "--json")))["topics"]
    ]
    line = one_line_error(ctl(url, "topics", "describe", "metrics"))
    assert "metrics" in line and "not" in line


def test_groups_create_pull_ack_nack_extend_describe(sprawl_node: Any) -> None:
    url = sprawl_node.url
    make_topic(url, "tasks")
    ok(ctl(url, "publish", "-t", "tasks", "-m", "-", input="t1\nt2\nt3\n"))
    assert "created" in ok(
        ctl(
            url,
            "groups",
            "create",
            "tasks",
            "g",
            "--start",
            "earliest",
            "--ack-deadline-ms",
            "60000",
            "--max-deliveries",
            "5",
        )
    )

    pulled = ok(ctl(url, "groups", "pull", "tasks", "g", "--max", "10")).splitlines()
    found = [
        re.match(r"ack_id=(\S+) attempt=(\d+) partition=0 offset=(\d+) payload=(.*)$", line)
        for line in pulled
    ]
    assert all(found), pulled
    assert [(m.group(2), m.group(4)) for m in found if m] == [("1", "t1"), ("1", "t2"), ("1", "t3")]
    ack_ids = [m.group(1) for m in found if m]

    extended = ctl(url, "groups", "extend", "tasks", "g", ack_ids[0], "--extend-ms", "120000")
    assert ok(extended) == "extended 1\n"
    assert ok(ctl(url, "groups", "ack", "tasks", "g", *ack_ids[:2])) == "acked 2\n"
    assert "lease_not_found" in one_line_error(ctl(url, "groups", "extend", "tasks", "g", ack_ids[0]))
    assert ok(ctl(url, "groups", "nack", "tasks", "g", ack_ids[2], "--delay-ms", "0")) == "nacked 1\n"
    again = [
        json.loads(line)
        for line in ok(ctl(url, "groups", "pull", "tasks", "g", "--json", "--wait-ms", "5000")).splitlines()
    ]
    assert [(m["payload"], m["delivery_attempt"]) for m in again] == [("t3", 2)]
    ok(ctl(url, "groups", "ack", "tasks", "g", again[0]["ack_id"]))

    desc = ok(ctl(url, "groups", "describe", "tasks", "g"))
    assert re.search(r"^lag: 0$", desc, re.M) and re.search(r"^in_flight: 0$", desc, re.M)
    # Acking twice is refused: the message is no longer leased.
    result = ctl(url, "groups", "ack", "tasks", "g", ack_ids[0])
    assert "ack refused" in one_line_error(result)
    assert ok(ctl(url, "groups", "delete", "tasks", "g")) == "group g on tasks deleted\n"
    one_line_error(ctl(url, "groups", "describe", "tasks", "g"))


# --------------------------------------------------------------------------------------------
# errors and node selection


def test_bad_topic_name_is_a_one_line_error(sprawl_node: Any) -> None:
    line = one_line_error(ctl(sprawl_node.url, "publish", "-t", "bad name!", "-m", "x"))
    assert "topic" in line


def test_usage_error_is_one_line(sprawl_node: Any) -> None:
    result = ctl(sprawl_node.url, "publish", "-t", "x")
    assert result.exit_code == 2
    one_line_error(result)


def test_dead_url_first_then_live_one_works(sprawl_node: Any, dead_url: str) -> None:
    make_topic(sprawl_node.url, "failover")
    out = ok(ctl(f"{dead_url},{sprawl_node.url}", "publish", "-t", "failover", "-m", "hi"))
    assert out.startswith("offset=0 ")
    assert "failover" in ok(ctl(f"{dead_url},{sprawl_node.url}", "topics", "list"))
    out = ok(
        ctl(
            f"{dead_url},{sprawl_node.url}",
            "subscribe",
            "-t",
            "failover",
            "--from",
            "earliest",
            "-c",
            "1",
            "--idle-timeout",
            idle(),
        )
    )
    assert out == "hi\n"


def test_all_urls_down_is_a_one_line_error(dead_url: str) -> None:
    line = one_line_error(ctl(dead_url, "topics", "list"))
    assert "cannot reach" in line and "connection refused" in line


def test_sprawl_url_environment_variable(sprawl_node: Any) -> None:
    result = CliRunner().invoke(cli, ["cluster", "status"], env={"SPRAWL_URL": sprawl_node.url})
    assert "leader:" in ok(result)


def test_cluster_status_members_placement(sprawl_node: Any) -> None:
    url = sprawl_node.url
    make_topic(url, "placed")
    info = json.loads(ok(ctl(url, "cluster", "status", "--json")))
    node_id = info["node_id"]
    status = ok(ctl(url, "cluster", "status"))
    assert f"node: {node_id}" in status and "ID" in status
    # a real node runs Raft: alone, it is the one voter and the leader
    assert info["raft"]["role"] == "leader" and info["raft"]["voters"] == [node_id]
    assert "raft role: leader" in status and f"voters: {node_id}" in status
    assert f"leader: {node_id}" in status
    # how many failures it survives: none, and that is all a lone node can (its target is 1)
    assert "fault tolerance: 0 voter failures (1 voters, 1 up, target 1; fault-tolerant)" in status, status
    members = ok(ctl(url, "cluster", "members")).splitlines()
    assert members[0].split()[:2] == ["ID", "STATE"]
    assert any(line.split()[:2] == [node_id, "alive"] for line in members[1:])
    placement = ok(ctl(url, "cluster", "placement")).splitlines()
    assert ["placed", "0", node_id] == next(
        line.split()[:3] for line in placement if line.startswith("placed")
    )


def test_diagnose_healthy_node(sprawl_node: Any) -> None:
    out = ok(ctl(sprawl_node.url, "diagnose"))
    assert "health:  ok" in out and "ready:   yes" in out and "no problems found" in out


def test_diagnose_fails_when_a_node_is_down(sprawl_node: Any, dead_url: str) -> None:
    result = ctl(f"{dead_url},{sprawl_node.url}", "diagnose")
    line = one_line_error(result)
    assert "1 of 2" in line
    assert f"{dead_url}\n  health:  DOWN (connection refused)" in result.stdout
    assert "ready:   yes" in result.stdout  # the live node is still reported
    report = json.loads(ctl(f"{dead_url},{sprawl_node.url}", "diagnose", "--json").stdout)
    assert [n["up"] for n in report["nodes"]] == [False, True]


def test_diagnose_names_a_cluster_that_is_not_fault_tolerant() -> None:
    """A node whose Raft configuration is below its target (or has a voter down) is
    a problem diagnose names, with the figures; a fault-tolerant one is not."""
    from sprawl.ctl.cluster import NodeReport, _problems

    def report(raft: dict[str, Any]) -> NodeReport:
        info = {"node_id": "a", "leader": "a", "members": [{"id": "a", "state": "alive"}], "raft": raft}
        return NodeReport("http://a", up=True, ready=True, cluster=info)

    weak = {"leader": "a", "voters": ["a"], "live_voters": 1, "target_voters": 3, "fault_tolerance": 0}
    problems = _problems([report({**weak, "fault_tolerant": False})])
    assert problems == [
        "http://a: Raft is not fault-tolerant: 1 voters, 1 up, target 3 (survives 0 more voter failures)"
    ]
    assert _problems([report({**weak, "fault_tolerant": True})]) == []


# --------------------------------------------------------------------------------------------
# pure helpers


def test_parse_urls() -> None:
    assert parse_urls([]) == ["http://localhost:8080"]
    assert parse_urls(["a:1,http://b:2/", "a:1"]) == ["http://a:1", "http://b:2"]


def test_sse_events_parsing() -> None:
    raw = [
        b": hello\n",
        b"retry: 1000\n",
        b"\n",
        b"id: 0:5\n",
        b'data: {"a":\n',
        b"data: 1}\n",
        b"\n",
        b"event: error\n",
        b"data: x\n",
        b"\n",
    ]
    events = list(sse_events(raw))
    assert [(e.event, e.id, e.data) for e in events] == [
        ("message", "0:5", '{"a":\n1}'),
        ("error", None, "x"),
    ]


def test_sse_parser_gives_the_same_events_for_any_split() -> None:
    """The incremental parser (the test harness's stream reader) reads a stream cut anywhere
    as the line parser (sprawlctl's) reads it whole, CRLF line ends included."""
    wire = b': hi\r\n\r\nid: 1\r\ndata: {"a":1}\r\n\r\nevent: error\ndata: x\n\n'
    whole = [(e.event, e.id, e.data) for e in sse_events(wire.splitlines(keepends=True))]
    assert whole == [("message", "1", '{"a":1}'), ("error", None, "x")]
    for cut in range(len(wire) + 1):
        parser = SseParser()
        got = parser.feed(wire[:cut]) + parser.feed(wire[cut:])
        assert [(e.event, e.id, e.data) for e in got] == whole, cut
    with pytest.raises(ValueError):
        SseParser(max_line=8).feed(b"data: " + b"x" * 20)


def test_sse_parser_keeps_the_retry_and_on_request_the_comments() -> None:
    """A ``retry`` field is no event; the parser keeps the last one (the dashboard sends
    2000), and the comments when asked to (the test harness waits for keepalives)."""
    parser = SseParser()
    assert parser.retry is None and parser.comments is None
    assert parser.feed(b": dashboard\nretry: 2000\n\ndata: 1\n\n")[0].data == "1"
    assert parser.retry == "2000" and parser.comments is None
    keeping = SseParser(keep_comments=True)
    assert keeping.feed(b": sprawl stream\n:  keepalive\n\n") == []
    assert keeping.comments == ["sprawl stream", "keepalive"]


def test_tier_text_shows_s3_ranges_and_failures() -> None:
    """``topics describe`` prints each tier's range, and an S3 tier whose uploads fail says so."""
    from sprawl.ctl.topics import _tier_text

    assert _tier_text("s3", {"enabled": False, "low": None, "high": None}) == "s3 off"
    ok = {"enabled": True, "low": 0, "high": 50, "messages": 50, "bytes": 2048, "status": "ok"}
    assert _tier_text("s3", ok).startswith("s3 [0,50) 50 msgs")
    bad = dict(ok, status="failing", last_error="S3Failure: timeout")
    assert _tier_text("s3", bad).endswith("FAILING (S3Failure: timeout)")
    assert "FAILING" in _tier_text("s3", dict(bad, low=None, high=None))


def test_cluster_keygen(tmp_path: Path) -> None:
    """`cluster keygen` needs no node: it prints a new 32-byte key the node accepts,
    or writes it to a new file of mode 600 (never over an existing one)."""
    from sprawl.config import parse_cluster_key, read_cluster_key_file

    runner = CliRunner()
    first = runner.invoke(cli, ["cluster", "keygen"])
    second = runner.invoke(cli, ["cluster", "keygen"])
    assert first.exit_code == 0 and second.exit_code == 0
    assert first.output != second.output
    assert len(parse_cluster_key(first.output.strip())) == 32
    path = tmp_path / "cluster.key"
    assert runner.invoke(cli, ["cluster", "keygen", "-o", str(path)]).exit_code == 0
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(read_cluster_key_file(str(path))) == 32
    again = runner.invoke(cli, ["cluster", "keygen", "-o", str(path)])
    assert again.exit_code != 0 and "exists" in again.output


def test_diagnose_merges_the_faults_every_node_names() -> None:
    """The same fault (code and node at fault) named by two nodes is one, with the
    partitions both saw and who saw it; worst first; the text shows the next step."""
    from sprawl.ctl.cluster import NodeReport, _diagnose_text, merge_faults

    def fault(code: str, severity: str, node: str | None, parts: list[str]) -> dict[str, Any]:
        return {
            "code": code,
            "severity": severity,
            "node": node,
            "partitions": parts,
            "message": "m " + code,
            "next_step": "do " + code,
        }

    a = NodeReport(
        "http://a",
        up=True,
        ready=True,
        cluster={"node_id": "a"},
        faults=[
            fault("follower_lagging", "warning", "c", ["t/0"]),
            fault("node_down", "critical", "c", ["t/0", "t/1"]),
        ],
    )
    b = NodeReport(
        "http://b",
        up=True,
        ready=True,
        cluster={"node_id": "b"},
        faults=[fault("follower_lagging", "warning", "c", ["t/2"])],
    )
    merged = merge_faults([a, b])
    assert [(f["code"], f["seen_by"]) for f in merged] == [
        ("node_down", ["a"]),
        ("follower_lagging", ["a", "b"]),
    ]
    assert merged[1]["partitions"] == ["t/0", "t/2"]
    runner = CliRunner()
    with runner.isolation() as (out, _err, *_):
        _diagnose_text({"nodes": [], "problems": [], "faults": merged})
        text = out.getvalue().decode()
    assert "CRITICAL node_down c: m node_down" in text and "next step: do node_down" in text
    assert "partitions: t/0, t/2" in text and "seen by: a, b" in text


def test_publish_over_the_lean_wire_stores_what_json_does(sprawl_node: Any, tmp_path: Path) -> None:
    """``--wire lean`` (msgpack bodies): the same messages, offsets and output as JSON; binary
    file bytes and stdin lines included."""
    url = sprawl_node.url
    make_topic(url, "leanctl")
    data = bytes(range(256))
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    for wire in ("json", "lean"):
        ok(ctl(url, "publish", "--wire", wire, "-t", "leanctl", "-f", str(path), "-k", "k", "-H", "a=b"))
        out = ok(ctl(url, "publish", "--wire", wire, "-t", "leanctl", "-m", "-", input="l1\nl2\n"))
        assert len(out.splitlines()) == 2
    result = ctl(
        url, "subscribe", "-t", "leanctl", "--from", "earliest", "-c", "6", "--json", "--idle-timeout", idle()
    )
    msgs = [json.loads(line) for line in ok(result).splitlines()]
    assert [m["offset"] for m in msgs] == list(range(6))
    shapes = [{k: v for k, v in m.items() if k not in ("offset", "id", "timestamp")} for m in msgs]
    assert shapes[:3] == shapes[3:] and shapes[0]["headers"] == {"a": "b"} and "payload_b64" in shapes[0]
