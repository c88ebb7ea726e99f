"""The cluster metadata applied on one node, and the broker made to match it.
An adapter (part of :class:`~sprawl.cluster.control.ClusterControl`).

Every node applies the same Raft log to its
:class:`~sprawl.cluster.metadata.Metadata` and materialises topics and groups
in its broker; a snapshot from the leader replaces the state and reconciles
the broker with it.  A broker write that is refused is logged and never stops
the log.  After a topic (or its placement) changed here, broker included, the
topic listeners hear its name (the data plane follows the placement with it),
and subscribers waiting for the topic to be created are woken.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from sprawl.cluster.metadata import TOPIC_FIELDS, Metadata, decode_command
from sprawl.delivery.topic_waiters import TopicWaiters
from sprawl.raft.messages import Entry, Snapshot

if TYPE_CHECKING:
    from sprawl.cluster.control import ClusterControl
    from sprawl.pubsub import Broker

log = Logger()

#: Topics of a ``set_partitions`` batch whose placement is followed per reactor turn.
TOPICS_PER_TURN = 200

#: Seconds the writes of a create or delete applied here wait for this node's next Raft
#: append to commit with (:meth:`LmdbStore.hold <sprawl.storage.lmdb.LmdbStore.hold>`).
HOLD_SECONDS = 0.005

#: Commands whose proposer is answered once they are applied in memory here
#: (the broker's change made, its write queued) rather than once that write is
#: durable: the Raft entry already is (see :meth:`MetadataApply.apply`).
ANSWERED_AT_APPLY = frozenset({"put_topic", "delete_topic"})


class MetadataApply:
    """Applies committed metadata commands here and keeps the broker matching
    (see the module docstring)."""

    def __init__(
        self, control: ClusterControl, broker: Broker, new_topics: TopicWaiters | None = None
    ) -> None:
        self.control = control
        self.broker = broker
        #: Raft entries that were not metadata commands (skipped).
        self.bad_entries = 0
        #: Subscribers waiting for a topic to be created (see :meth:`wait_topic`).
        self.new_topics = new_topics if new_topics is not None else TopicWaiters()
        self._topic_listeners: list[Callable[[str], None]] = []

    def watch_topics(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(name)`` after each change to a topic (or its
        placement) is applied here, broker included."""
        self._topic_listeners.append(listener)

    def metadata_snapshot(self) -> bytes:
        """The state machine's snapshot bytes (the driver stores them)."""
        return self.control.metadata.snapshot()

    def apply(self, e: Entry) -> Any:
        cmd = decode_command(e.data)
        if cmd is None:
            self.bad_entries += 1
            log.warn("raft entry {index} is not a metadata command; skipped", index=e.index)
            return None
        result = self.control.metadata.apply(e.index, cmd)
        if cmd.get("op") == "put_node" and "error" not in result:
            self.control.names[int(cmd["raft_id"])] = cmd["node_id"]
        if cmd.get("op") in ANSWERED_AT_APPLY and "error" not in result:
            # What this create or delete writes here (the broker's record, the
            # replicas', the commit index) joins this node's next Raft append --
            # the client's next create -- instead of a commit of its own in that
            # append's way (issue 23, create38).
            self.broker.store.hold(HOLD_SECONDS)
        d = self._materialise(cmd) if "error" not in result else defer.succeed(None)
        if "error" not in result and cmd.get("op") == "put_topic":
            # The broker made the change in memory already (its write is
            # queued): the replicas follow it in this same reactor turn, so
            # their records (a new replica's epoch) join the broker's write
            # and the commit index in one group commit instead of a commit
            # of their own after it (issue 23).  Nothing is lost by not
            # waiting: the writer commits in order, so a replica's records
            # are never on disk without the topic's, and the Raft log applies
            # the entry again after a crash.
            self._topic_changed(None, str(cmd["name"]))
        elif "error" not in result and cmd.get("op") in ("delete_topic", "set_partition"):
            d.addCallback(self._topic_changed, str(cmd.get("topic") or cmd.get("name")))

        def answer(_: object) -> None:
            self.control.answer(str(cmd.get("req", "")), result)

        if cmd.get("op") in ANSWERED_AT_APPLY:
            # Answered at commit + in-memory apply, not after the broker's
            # write is on disk (issue 23): the entry is committed (on disk on
            # a majority, this node's log included), a restart applies it
            # again, and everything a client may do next here is ordered
            # after that write by the single writer's FIFO (see
            # docs/architecture.md, "A create's fsyncs").  The Ready still
            # waits for the write before it advances.
            answer(None)
            return d

        if "error" not in result and cmd.get("op") == "set_partitions":
            names = _batch_topics(cmd, result, self.control.node_id)
            if len(names) > TOPICS_PER_TURN:
                # A dead node's thousands of failovers: the placement is
                # followed a slice per reactor turn, and the command answered
                # once all are (issue 23).  Held in one turn for seconds, the
                # node sent no beat meanwhile, and the controller failed this
                # live node's partitions over as well.  Raft goes on meanwhile
                # (each slice reads the placement as it is then).  The topics
                # this node now leads go first (their new leaders write the
                # epoch's control record, which the followers must hold
                # before a publish is taken; a follower learns the epoch from
                # those appends as well), and the proposal made here no
                # longer times out: it is committed and applied.
                self.control.applied_here(str(cmd.get("req", "")))
                followed: defer.Deferred[None] = defer.Deferred()
                d.addCallback(lambda _: self._follow_in_turns(names, followed))
                followed.addCallback(answer)
                return d
            for name in names:
                d.addCallback(self._topic_changed, name)

        return d.addCallback(answer)

    def _follow_in_turns(self, names: list[str], done: defer.Deferred[None], start: int = 0) -> None:
        """Tell the topic listeners of ``names[start:]``, :data:`TOPICS_PER_TURN`
        a reactor turn; fire ``done`` after the last."""
        for name in names[start : start + TOPICS_PER_TURN]:
            self._topic_changed(None, name)
        nxt = start + TOPICS_PER_TURN
        if nxt < len(names):
            self.control.reactor.callLater(0, self._follow_in_turns, names, done, nxt)
        else:
            done.callback(None)

    def _materialise(self, cmd: dict[str, Any]) -> defer.Deferred[Any]:
        """Make the broker match the metadata for what ``cmd`` touched."""
        op = cmd["op"]
        if op == "put_topic":
            return self._ensure_broker_topic(cmd["name"])
        if op == "delete_topic":
            return self._drop_broker_topic(cmd["name"])
        if op == "put_group":
            return self._ensure_broker_group(cmd["topic"], cmd["group"])
        if op == "delete_group":
            t = self.broker.topics.get(cmd["topic"])
            if t is not None and cmd["group"] in t.groups:
                return self._quietly(self.broker.delete_group, t, cmd["group"])
        if op in ("remote_add", "remote_trim"):
            # The partition's shared remote list changed: its log follows
            # (the S3 tier; see sprawl.cluster.shared_tier).
            t = self.broker.topics.get(cmd["topic"])
            p = int(cmd["partition"])
            if t is not None and 0 <= p < len(t.logs):
                return self._quietly(self.broker.follow_remote, t, p)
        if op == "put_pipeline":
            spec = self.control.metadata.pipelines.get(cmd["name"])
            if spec is not None:
                return self._ensure_broker_group(spec["source"], f"pipeline.{cmd['name']}")
        if op == "delete_pipeline":
            # Its position goes with it: the group left the source's metadata.
            group = f"pipeline.{cmd['name']}"
            for name, t in list(self.broker.topics.items()):
                mt = self.control.metadata.topics.get(name)
                if group in t.groups and (mt is None or group not in mt["groups"]):
                    return self._quietly(self.broker.delete_group, t, group)
        return defer.succeed(None)

    def _topic_changed(self, _: object, name: str) -> None:
        for listener in self._topic_listeners:
            try:
                listener(name)
            except Exception:
                log.failure("following the placement of {topic} failed", topic=name)
        if name in self.broker.topics:
            self.new_topics.fire(name)

    def wait_topic(self, name: str) -> defer.Deferred[None]:
        """Fires once a topic ``name`` is created here: its creation applied,
        broker and data plane included (it may have been made on any node);
        cancel to stop waiting."""
        return self.new_topics.wait(name)

    def _quietly(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """Run a broker write; a refusal is logged, never stops the log."""

        def failed(f: Failure) -> None:
            log.warn("applying cluster metadata to the broker failed: {err}", err=str(f.value))

        return defer.maybeDeferred(fn, *args).addErrback(failed)

    def _ensure_broker_topic(self, name: str) -> defer.Deferred[Any]:
        t = self.control.metadata.topics.get(name)
        if t is None:
            return defer.succeed(None)
        config = t["config"]
        existing = self.broker.topics.get(name)
        if existing is not None:
            current = {k: getattr(existing.config, k) for k in TOPIC_FIELDS}
            if current == config or existing.config.partitions > config.get("partitions", 1):
                return defer.succeed(None)
        return self._quietly(self.broker.put_topic, name, dict(config))

    def _drop_broker_topic(self, name: str) -> defer.Deferred[Any]:
        if name not in self.broker.topics:
            return defer.succeed(None)
        return self._quietly(self.broker.delete_topic, name)

    def _ensure_broker_group(self, topic: str, group: str) -> defer.Deferred[Any]:
        t = self.broker.topics.get(topic)
        mt = self.control.metadata.topics.get(topic)
        if t is None or mt is None or group not in mt["groups"]:
            return defer.succeed(None)
        config = dict(mt["groups"][group])
        g = t.groups.get(group)
        if g is not None and g.config.to_dict() == config:
            return defer.succeed(None)
        if g is not None:
            config.pop("start", None)  # where a group starts is fixed at creation
        return self._quietly(self.broker.put_group, t, group, config)

    def restore(self, snap: Snapshot) -> defer.Deferred[Any]:
        """Install a leader's snapshot: replace the metadata, reconcile the broker."""
        self.control.install_metadata(Metadata.restore(snap.data))
        log.info("raft: installed snapshot at index {index}", index=snap.meta.index)
        return self.reconcile()

    def reconcile(self) -> defer.Deferred[Any]:
        """Make the broker match the whole metadata (topics, groups) and tell
        the data plane about every topic."""

        async def reconcile() -> None:
            for name in list(self.broker.topics):
                if name not in self.control.metadata.topics:
                    await self._drop_broker_topic(name)
            for name, t in self.control.metadata.topics.items():
                await self._ensure_broker_topic(name)
                bt = self.broker.topics.get(name)
                for g in list(bt.groups) if bt is not None else []:
                    if g not in t["groups"]:
                        await self._quietly(self.broker.delete_group, bt, g)
                for g in t["groups"]:
                    await self._ensure_broker_group(name, g)
                for p in range(len(bt.logs) if bt is not None else 0):
                    await self._quietly(self.broker.follow_remote, bt, p)
            for name in sorted(set(self.control.metadata.placement) | set(self.broker.topics)):
                self._topic_changed(None, name)

        return defer.ensureDeferred(reconcile())


def _batch_topics(cmd: dict[str, Any], result: dict[str, Any], me: str) -> list[str]:
    """The topics a ``set_partitions`` command changed (its items applied
    without error), each once: first those with a partition node ``me`` now
    leads, then the others, each group in the order of the items."""
    led: dict[str, None] = {}
    seen: dict[str, None] = {}
    for item, r in zip(cmd["items"], result["results"], strict=True):
        if "error" not in r:
            name = str(item["topic"])
            (led if item.get("leader") == me else seen)[name] = None
    return [*led, *(name for name in seen if name not in led)]
