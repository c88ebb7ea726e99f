"""A blocking loopback reader of a node's SSE stream or WebSocket (tests driving real
processes)."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from sprawl.client.sse import SseParser


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
        self._sse = SseParser()
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
        data, self._buf = self._buf, b""
        for event in self._sse.feed(data):
            ev: dict[str, Any] = {"data": json.loads(event.data)}
            if event.id is not None:
                ev["id"] = event.id
            if event.event != "message":
                ev["event"] = event.event
            with self._lock:
                self.events.append(ev)
                if event.event == "message":
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
