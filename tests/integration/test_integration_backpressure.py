"""A real ``twistd sprawl`` process under a fast publisher and a client that
never reads: the node's resident memory stays bounded, the slow client is cut
off with a reason, and every acknowledged message is readable.

RSS is read from ``/proc/PID/status`` (VmRSS and RssAnon) after every publish.
Every wait is bounded; the node is stopped by the fixture.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status"),
]

MB = 1000**2


def rss(pid: int) -> dict[str, int]:
    """VmRSS and RssAnon of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon"):
            out[name] = int(value.split()[0]) * 1024
    return out


def post(port: int, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body, {"content-type": "application/json"})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def open_stalled_sse(port: int, path: str) -> socket.socket:
    """An SSE client with a tiny receive buffer that reads the response head, then stops reading."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        assert chunk, "stream closed before its head"
        head += chunk
    assert head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.0 200"), head
    return s


def read_to_end(s: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes (bounded by ``deadline``, monotonic)."""
    data = []
    while time.monotonic() < deadline:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            chunk = s.recv(1 << 16)
        except ConnectionResetError:
            return b"".join(data)  # an aborted WebSocket after its close frame
        except TimeoutError:
            tail = b"".join(data)[-300:]
            raise AssertionError(f"no end of stream; {sum(map(len, data))} bytes, ending {tail!r}") from None
        if not chunk:
            return b"".join(data)
        data.append(chunk)
    raise AssertionError("the node never closed the slow client's stream")


def wait_cut_off(port: int, deadline: float) -> None:
    """Poll /metrics (bounded) until the node reports a slow consumer disconnected."""
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        if "sprawl_slow_consumers_disconnected_total 1.0" in text:
            return
        select.select([], [], [], 0.1)  # poll interval, bounded by the deadline
    raise AssertionError("the stalled client was never cut off")


def open_stalled_ws(port: int, path: str) -> socket.socket:
    """A WebSocket client with a tiny receive buffer that completes the handshake, then stops reading."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        assert chunk, "closed before the handshake answer"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_slow_consumer_does_not_grow_the_node_and_is_cut_off(sprawl_nodes: Any, transport: str) -> None:
    """With --memory-budget 16MB, 120MB published while an SSE or WebSocket client never
    reads: the node's RSS grows by far less than what was published, the stalled client
    ends with a ``slow_consumer`` error event (SSE) or close frame 4008 (WebSocket) naming
    its cursor, and every acknowledged message reads back."""
    node = sprawl_nodes("--memory-budget", "16MB", "--slow-consumer-timeout", "3s")
    port, pid = node.http_port, node.proc.pid
    status, _, _ = post(port, "/v1/topics/big/messages", b'{"messages":[{"payload":"warm"}]}')
    assert status == 200
    if transport == "sse":
        slow = open_stalled_sse(port, "/v1/topics/big/stream?from=earliest")
    else:
        slow = open_stalled_ws(port, "/v1/topics/big/ws?from=earliest")
    try:
        batch = json.dumps(
            {"messages": [{"payload": f"{i:06d}" + "x" * 10_000} for i in range(100)]}
        ).encode()
        acked = 1
        samples = []
        throttled = 0
        for i in range(120):
            for _attempt in range(50):
                status, headers, body = post(port, "/v1/topics/big/messages", batch)
                if status != 429:
                    break
                throttled += 1
                select.select([], [], [], min(float(headers.get("Retry-After", "1")), 1.0))  # bounded
            assert status == 200, body
            acked += len(json.loads(body)["offsets"])
            samples.append(rss(pid))
            if i == 9:
                base = samples[-1]
        peak_vm = max(s["VmRSS"] for s in samples[10:])
        peak_anon = max(s["RssAnon"] for s in samples[10:])
        print(
            f"\nbaseline VmRSS {base['VmRSS'] / MB:.1f}MB RssAnon {base['RssAnon'] / MB:.1f}MB; "
            f"peak VmRSS {peak_vm / MB:.1f}MB RssAnon {peak_anon / MB:.1f}MB; "
            f"published {110 * len(batch) / MB:.0f}MB after the baseline; {throttled} throttled"
        )
        # 110MB went through after the baseline; the anonymous memory (message buffers, the
        # stalled client's transport buffer) stays within the budget plus slack.
        assert peak_anon - base["RssAnon"] < 40 * MB
        assert peak_vm - base["VmRSS"] < 60 * MB
        # The client still has not read a byte: the node cuts it off once the timeout passes.
        wait_cut_off(port, time.monotonic() + 30)
        text = read_to_end(slow, time.monotonic() + 30)
    finally:
        slow.close()
    if transport == "ws":
        # The close frame: 0x88, length, code 4008 (0x0fa8), then the reason with the cursor.
        i = text.find(b"\x0f\xa8slow_consumer")
        assert i > 0 and text[i - 2] == 0x88, text[-200:]
        reason = text[i + 2 :].decode("utf-8", "replace")
        cursor = int(reason.split("0:")[1].split()[0])
        assert 0 < cursor < acked, "the stalled client was sent everything: no pause happened"
        assert_all_readable(port, acked)
        return
    events = text.decode("utf-8", "replace").split("\n\n")
    last = [e for e in events if e.strip()][-1]
    assert last.startswith("event: error"), last[:200]
    err = json.loads(last.split("data: ", 1)[1])
    assert err["code"] == "slow_consumer" and "0" in err["cursors"]
    assert err["cursors"]["0"] < acked, "the stalled client was sent everything: no pause happened"
    assert_all_readable(port, acked)


def assert_all_readable(port: int, acked: int) -> None:
    """Every acknowledged message is readable, in order."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        seen = 0
        nxt = 0
        for _ in range(1000):
            conn.request("GET", f"/v1/topics/big/messages?from={nxt}&limit=1000")
            page = json.loads(conn.getresponse().read())
            if not page["messages"]:
                break
            assert [m["offset"] for m in page["messages"]] == list(range(nxt, nxt + len(page["messages"])))
            seen += len(page["messages"])
            nxt = page["next"]
        assert seen == acked
    finally:
        conn.close()


def test_overload_answers_429_and_loses_no_acked_message(sprawl_nodes: Any) -> None:
    """16 concurrent publishers against ``--partition-backlog 64KB``: some publishes get 429
    ``backpressure`` with Retry-After; every acknowledged message is stored exactly once, and
    nothing from a refused publish is."""
    import threading

    node = sprawl_nodes("--partition-backlog", "64KB")
    port = node.http_port
    acked: list[str] = []
    refused: list[str] = []
    other: list[int] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        for i in range(15):
            ids = [f"t{t}-{i}-{j}" for j in range(30)]
            body = json.dumps({"messages": [{"payload": "p" * 2000, "id": x} for x in ids]}).encode()
            status, headers, answer = post(port, "/v1/topics/over/messages", body)
            with lock:
                if status == 200:
                    acked.extend(ids)
                elif (
                    status == 429
                    and json.loads(answer)["error"]["code"] == "backpressure"
                    and int(headers.get("Retry-After", "0")) >= 1
                ):
                    refused.extend(ids)
                else:
                    other.append(status)

    status, _, _ = post(port, "/v1/topics/over/messages", b'{"messages":[{"payload":"w","id":"warm"}]}')
    assert status == 200
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not any(th.is_alive() for th in threads)
    assert other == []
    assert refused, "the node was never overloaded: the test proves nothing"
    assert acked
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    stored: list[str] = []
    try:
        nxt = 0
        for _ in range(1000):
            conn.request("GET", f"/v1/topics/over/messages?from={nxt}&limit=1000")
            page = json.loads(conn.getresponse().read())
            if not page["messages"]:
                break
            stored.extend(m["id"] for m in page["messages"])
            nxt = page["next"]
    finally:
        conn.close()
    print(f"\n{len(acked)} acked, {len(refused)} refused with 429")
    assert sorted(stored) == sorted(["warm", *acked])
