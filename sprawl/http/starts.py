"""Where a read starts: partitions asked, start offsets, topics not created yet.

Shared by fetch (:mod:`sprawl.http.fetch`), SSE and WebSocket feeds
(:mod:`sprawl.http.messages`): a partition held here resolves its start in
the broker, one held by another node at that node (through the data plane's
remote feeds).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.web.server import Request

from sprawl.errors import NotFound
from sprawl.http.codec import cursor, int_arg, unwrap_first_error
from sprawl.interfaces import MessagePlane, MetadataControl
from sprawl.pubsub import Broker, check_topic_name
from sprawl.topics import Topic


def _setter(out: dict[int, int], key: int) -> Callable[[int], None]:
    def set_value(value: int) -> None:
        out[key] = value

    return set_value


class ReadStarts:
    """Resolves where reads of a topic's partitions start (see the module docstring)."""

    def __init__(self, broker: Broker, plane: MessagePlane, control: MetadataControl):
        self.broker = broker
        self.plane = plane
        self.control = control

    def partitions(self, request: Request, t: Topic) -> list[int]:
        """``?partition=``: that partition (404 if the topic lacks it), else all of them."""
        p = int_arg(request, "partition", None, 0, 1023)
        if p is None:
            return [lg.partition for lg in t.logs]
        if p >= len(t.logs):
            raise NotFound(f"topic {t.name!r} has no partition {p}", code="partition_not_found")
        return [p]

    def resolve(
        self, t: Topic, parts: list[int], spec: str | int | None, from_time: int | None, default: str
    ) -> Deferred[dict[int, int]]:
        """Each partition's start offset here (``from_time`` looked up in the log)."""
        out: dict[int, int] = {}
        ds = []
        for p in parts:
            lg = t.logs[p]
            if from_time is not None:
                d: Deferred[Any] = self.broker.find_time(t, p, from_time)
                d.addCallback(_setter(out, p))
                ds.append(d)
            else:
                out[p] = cursor(lg.resolve_start(spec if spec is not None else default), spec)
        if not ds:
            return succeed(out)
        return gatherResults(ds, consumeErrors=True).addCallback(lambda _: out)

    def stream_starts(
        self,
        t: Topic,
        parts: list[int],
        spec: str | int | None,
        from_time: int | None,
        resume: dict[int, int],
    ) -> Deferred[dict[int, int]]:
        """Where an SSE / WebSocket stream starts on each partition (default
        ``latest``; ``resume``, from ``Last-Event-ID``, wins).  A partition
        held by another node is resolved there."""
        plane = self.plane
        remote = [p for p in parts if plane.read_source(t.name, p) is not None]
        local = [p for p in parts if p not in remote]

        def apply(starts: dict[int, int]) -> dict[int, int]:
            for p, off in resume.items():
                if p in starts and p not in remote:
                    starts[p] = cursor(t.logs[p].resolve_start(off + 1), off + 1)
            return starts

        d = self.resolve(t, local, spec, from_time, "latest").addCallback(apply)
        feeds = plane.feeds
        if not remote or feeds is None:
            return d
        out: dict[int, int] = {}
        ds: list[Deferred[Any]] = [d.addCallback(out.update)]
        for p in remote:
            asked = resume[p] + 1 if p in resume else spec
            if p in resume:
                r = feeds.resolve(t.name, p, asked, None)
            else:
                r = feeds.resolve(t.name, p, spec if spec is not None else "latest", from_time)
            if from_time is None or p in resume:
                r.addCallback(cursor, asked)
            ds.append(r.addCallback(_setter(out, p)))
        g = gatherResults(ds, consumeErrors=True).addErrback(unwrap_first_error)
        return g.addCallback(lambda _: {p: out[p] for p in parts})

    def topic_or_wait(self, name: str) -> Topic | None:
        """The topic, or None when it does not exist yet and a subscription
        waits for it (auto-create on: subscribing may come before the first
        publish); 404 ``topic_not_found`` where topics are not auto-created."""
        t = self.broker.topics.get(name)
        if t is not None or not self.broker.config.auto_create_topics:
            return t if t is not None else self.broker.get_topic(name)
        check_topic_name(name)  # a name no topic can have is a 400, not a wait
        return None

    def when_created(self, name: str, partition: int | None) -> Deferred[tuple[Topic, dict[int, int]]]:
        """Fires with ``(topic, cursors)`` once topic ``name`` exists here
        (created here, or on another node and applied here).  A subscription
        made before the topic existed resolved its start against an empty
        topic, so every partition starts at offset 0, the topic's first
        (``from=latest`` included: nothing published after it is missed); a
        ``partition`` the topic lacks fails with 404 ``partition_not_found``.
        Cancel to stop waiting."""
        d: Deferred[Any] = succeed(None) if name in self.broker.topics else self.control.wait_topic(name)

        def found(_: object) -> Any:
            t = self.broker.topics.get(name)
            if t is None:  # deleted again before it was looked at: wait on
                return self.when_created(name, partition)
            if partition is not None and partition >= len(t.logs):
                raise NotFound(f"topic {name!r} has no partition {partition}", code="partition_not_found")
            parts = [partition] if partition is not None else [lg.partition for lg in t.logs]
            return t, dict.fromkeys(parts, 0)

        return d.addCallback(found)
