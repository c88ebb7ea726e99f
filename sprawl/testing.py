"""In-memory fakes of Sprawl's seams that the tests share (shipped in the wheel; no process,
no socket, no real time):

* :class:`FakeRequest` -- the parts of a ``twisted.web`` request a streaming answer uses
  (headers, producer, writes, finish), with the SSE frames it was sent;
* :class:`MemoryS3` -- the S3 client over a dict, with failures on demand (it passes the
  S3 client's contract tests, ``tests/unit/storage/test_s3_client.py``);
* :class:`FakeRPC` -- the peer RPC seam: registered handlers, recorded calls answered by a
  function, unreachable peers;
* :class:`FakeBroker` -- a broker as a stream on a node that holds no replica sees it
  (topics, watch/notify), recording publishes.

The process harness (real nodes, clusters, SeaweedFS, the test PKI, waits on real time) is
not here: it lives with the tests, in ``tests/harness/``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from sprawl.errors import Unavailable


class FakeRequest:
    """Just enough of a ``twisted.web`` request for a streaming answer (an SSE stream, the
    dashboard's feed); the test plays the transport (``producer`` is what registered)."""

    def __init__(self) -> None:
        #: Headers set, by lower-cased name.
        self.headers: dict[bytes, bytes] = {}
        self.written: list[bytes] = []
        self.producer: Any = None
        #: How many times ``finish`` was called (a stream finishes once).
        self.finished = 0

    def setHeader(self, name: bytes, value: bytes) -> None:
        """Set a response header."""
        self.headers[name.lower()] = value

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """Register a streaming (push) producer; one at a time."""
        assert streaming
        assert self.producer is None
        self.producer = producer

    def unregisterProducer(self) -> None:
        """Unregister the producer."""
        self.producer = None

    def write(self, data: bytes) -> None:
        """Record written bytes (never after finish)."""
        assert not self.finished, "write after finish"
        self.written.append(data)

    def finish(self) -> None:
        """End the answer (the producer unregistered first)."""
        assert self.producer is None, "finished with the producer still registered"
        self.finished += 1

    def frames(self) -> list[tuple[str, Any]]:
        """(event, data) of every SSE data frame written, the data decoded as JSON."""
        out = []
        for block in b"".join(self.written).decode().split("\n\n"):
            lines = [x for x in block.split("\n") if x and not x.startswith(":")]
            data = [x[6:] for x in lines if x.startswith("data: ")]
            if data:
                kind = next((x[7:] for x in lines if x.startswith("event: ")), "message")
                out.append((kind, json.loads(data[0])))
        return out

    def payloads(self) -> list[str]:
        """The payloads of the messages sent."""
        return [d["payload"] for k, d in self.frames() if k == "message"]

    def offsets(self) -> list[int]:
        """The offsets of the messages sent."""
        return [d["offset"] for k, d in self.frames() if k == "message"]


class FakeRPC:
    """The peer RPC seam (:class:`sprawl.peer.rpc.PeerRPC`) in memory.

    ``register`` keeps handlers in ``handlers``; ``call`` records ``(peer, method, body)`` in
    ``calls`` and is answered by ``answer(peer, method, body)`` (a value or a Deferred; None
    without one); a peer in ``down`` cannot be reached (``Unavailable``, code
    ``peer_unreachable``, as the real one fails)."""

    max_hops = 3

    def __init__(self, answer: Callable[[str, str, Any], Any] | None = None) -> None:
        self.answer = answer
        self.handlers: dict[str, Any] = {}
        self.calls: list[tuple[str, str, Any]] = []
        self.down: set[str] = set()
        #: The calls forgotten (:meth:`drop`), by id.
        self.dropped: list[int] = []

    @property
    def peers(self) -> list[str]:
        """The peers called, in order."""
        return [peer for peer, _, _ in self.calls]

    def register(self, name: str, fn: Any) -> None:
        """Keep a handler of ``name``."""
        self.handlers[name] = fn

    def call(self, peer: str, method: str, body: Any, *, hops: int = 0, timeout: float = 0) -> Any:
        """Record the call; a Deferred of the answer."""
        from twisted.internet import defer

        self.calls.append((peer, method, body))
        if peer in self.down:
            return defer.fail(Unavailable(f"peer {peer} cannot be reached now", code="peer_unreachable"))
        return defer.maybeDeferred(self.answer or (lambda *a: None), peer, method, body)

    def start(self, peer: str, method: str, body: Any, *, hops: int = 0, timeout: float = 0) -> Any:
        """As :meth:`call`, with the call's id (its place in ``calls``, from 1) for :meth:`drop`
        -- 0 when the call failed at once (an unreachable peer), as :meth:`PeerRPC.start`'s."""
        d = self.call(peer, method, body, hops=hops, timeout=timeout)
        return d, 0 if peer in self.down else len(self.calls)

    def drop(self, rid: int) -> None:
        """Forget the call ``rid`` (recorded in ``dropped``)."""
        self.dropped.append(rid)


class FakeBroker:
    """The broker as a stream on a node that holds no replica sees it: one topic ``name``
    with ``partitions`` partitions, watchers by (topic, partition) that ``notify`` calls, no
    metrics; ``publish`` records the records and answers at once."""

    def __init__(self, name: str = "t", partitions: int = 1) -> None:
        from sprawl.config import NodeConfig

        self.config = NodeConfig()
        self.metrics = None
        self.topic = SimpleNamespace(
            name=name, logs=[SimpleNamespace(partition=p) for p in range(partitions)], groups={}
        )
        self.topics = {name: self.topic}
        self.watchers: dict[tuple[str, int], set[Any]] = {}
        self.published: list[Any] = []

    def watch(self, name: str, p: int, fn: Any) -> Any:
        """Call ``fn`` on every ``notify`` of the partition; returns the function that stops it."""
        self.watchers.setdefault((name, p), set()).add(fn)
        return lambda: self.watchers[(name, p)].discard(fn)

    def notify(self, name: str, p: int) -> None:
        """Wake the partition's watchers."""
        for fn in list(self.watchers.get((name, p), ())):
            fn()

    def publish(self, t: Any, records: list[Any], acks: str) -> Any:
        """Record ``records``; a fired Deferred of a publish result (offsets from 0, in LMDB)."""
        from twisted.internet.defer import succeed

        from sprawl.pubsub import PublishResult

        self.published.append(records)
        n = len(records)
        return succeed(PublishResult(list(range(n)), ["i"] * n, [0] * n, [False] * n, "lmdb"))


class MemoryS3:
    """The :class:`~sprawl.storage.s3.S3Client` interface over a dict, with
    failures on demand (``down``, ``lie_about_size``).  The contract tests in
    ``tests/unit/storage/test_s3_client.py`` run it and the real client (against
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
