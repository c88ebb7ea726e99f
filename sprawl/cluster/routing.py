"""Routing on one node: where a publish or a read must go, and the peer RPCs
that answer other nodes' forwarded ones.  An adapter (part of the data plane,
:mod:`sprawl.cluster.dataplane`).

A publish for a partition this node does not lead is forwarded to its leader
over the peer channel (:mod:`sprawl.peer.rpc`, hop limited).  A refusal
(``not_leader``, ``no_leader``, a topic not applied there yet) or a leader
that cannot be reached or does not answer is retried against the freshly
applied placement until :attr:`Router.route_timeout` -- so clients ride
through a failover without seeing it -- then answered 503 ``no_leader``.  A
retry waits a short backoff, or less: until the partition's new placement is
applied here (:meth:`Router.placement_changed`); a node the applied placement
names leader waits briefly (:data:`ASSIGN_WAIT`) for the controller's
assignment to reach its replica rather than refuse -- unless its replica was
fenced for a later epoch (its leadership is being handed off): then it
refuses at once, and the entry node retries on the next placement.  A
holder that has not applied a topic this node knows is asked again (a publish
and a forwarded read alike): read-your-writes for metadata.  Retrying is safe
even when the first attempt was written: this node named every message first,
and the leader (old or new) answers a repeated id with its first copy's
offset.  Reads are served locally by any replica (below its high watermark:
only committed records) and forwarded otherwise.

An ``acks=quorum`` publish an entry node forwards while it follows the
partition is answered from its own replica when that is sooner than the
leader's answer (issue 16, quorum38): the records, named here, are looked
for as this node's replica shows them -- below its high watermark, so on
its own disk and, by the replication rules, on a majority's -- and their
offsets there are the answer.  Only on a publish's first attempt, whose
ids no copy can have yet (a retry's may meet a first copy: the leader says
``duplicates`` then), and only for messages this node named (a client's id
may be a duplicate of an earlier publish).  Otherwise, and whenever the
leader answers first (or fails: the publish is retried as before), the
leader's answer is the answer.

Such a forward asks the leader not to answer a success this node's replica
will show anyway (``quiet``, issue 16, cpu39): a leader that committed the
records while the entry node's copy was durable among them (its follower's
acknowledged end passes them: that node shows them as soon as it learns the
high watermark, which the leader sends it) sends no answer frame -- a third
of the leader's frames at one message a publish.  Every other outcome is
answered as before: an error, duplicates, or records the entry's copy did not
hold yet when they were committed and does not acknowledge within
:data:`QUIET_WAIT` (the leader waits that long for it: issue 16, qlead42).
The entry node forgets the call once its
replica answered; were the high watermark's news lost, the call's timeout
retries the publish, which the leader answers as the duplicate it is.  An
older leader ignores ``quiet`` and answers; its answer is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from twisted.internet import defer, task
from twisted.python.failure import Failure

from sprawl.cluster.replica_sync import ReplicaSync
from sprawl.errors import BadRequest, NotFound, SprawlError, Unavailable
from sprawl.interfaces import Clock, Delayed
from sprawl.log.record import Record, pack_record, unpack_record
from sprawl.peer.frames import BATCH_BYTES
from sprawl.peer.rpc import NO_ANSWER
from sprawl.pubsub import PublishResult
from sprawl.replication.partition import PartitionReplication
from sprawl.replication.replica import NotLeader
from sprawl.storage import timeline

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from sprawl.peer.rpc import PeerRPC
    from sprawl.pubsub import Broker
    from sprawl.topics import Topic

#: Refusals of a leader that has not applied yet what this node applied (a topic
#: created, or given more partitions, a moment ago).  A node that knows the
#: partition waits for the leader to catch up: read-your-writes for metadata
#: from any entry node.
_NOT_APPLIED_THERE = {"topic_not_found", "partition_not_found"}
#: Errors after which a publish is retried (the message ids make a repeat harmless).
_RETRYABLE = {"not_leader", "no_leader", "peer_unreachable", "peer_timeout", "stopping", *_NOT_APPLIED_THERE}

#: Seconds a publish waits for this node's replica to take a leadership the
#: applied placement already gives it (the controller's assignment follows
#: the Raft commit by one message).
ASSIGN_WAIT = 0.25

#: Seconds a leader waits for a quiet forward's entry node to hold the records
#: before it answers (:attr:`Router.quiet_wait`): an entry's own commit follows
#: the other follower's by a few milliseconds; a slow or stuck one costs its
#: publishes this much at most.
QUIET_WAIT = 0.05

#: What a publish answer's ``stored`` can say, the weakest promise first.
_WEAKEST_FIRST = ("pending", "memory", "lmdb", "quorum")


class NotLeaderError(Unavailable):
    """This node does not lead the partition (``hint``: who does, if known)."""

    code = "not_leader"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class Router:
    """Publishes and reads to where their partition is held (see the module
    docstring); answers the ``publish`` and ``fetch`` peer RPCs."""

    def __init__(
        self,
        node_id: str,
        broker: Broker,
        sync: ReplicaSync,
        rpc: PeerRPC,
        reactor: Clock,
        *,
        route_timeout: float = 10.0,
        forward_timeout: float = 5.0,
    ) -> None:
        self.node_id = node_id
        self.broker = broker
        self.sync = sync
        self.rpc = rpc
        self.reactor = reactor
        self.route_timeout = route_timeout
        self.forward_timeout = forward_timeout
        #: Seconds a leader waits, for a ``quiet`` forward committed before the
        #: entry node's copy was durable, for that copy before it answers (none
        #: once the copy is: the entry shows it); 0: answered at once.
        self.quiet_wait = QUIET_WAIT
        self.forwarded = 0
        self.retried = 0
        #: Publishes waiting to retry, by topic: woken when its placement changes.
        self._placement_waiters: dict[str, list[defer.Deferred[bool]]] = {}
        #: Forwarded publishes looked for in this node's replicas, by partition
        #: (:meth:`_when_shown`); and how many were answered so (tests count them).
        self._shown: dict[tuple[str, int], _Shown] = {}
        self.answered_here = 0
        rpc.register("publish", self._rpc_publish)
        rpc.register("fetch", self._rpc_fetch)

    # -- publishing ----------------------------------------------------------------------

    def publish(
        self, topic: Topic, records: list[Record], acks: str, partition: int | None = None
    ) -> defer.Deferred[PublishResult]:
        """Publish ``records`` to ``topic`` through each partition's leader (all of
        them to ``partition`` when given: a pipeline's re-run must meet its first
        copy in the same partition's dedup window)."""
        name = topic.name
        n = len(topic.logs)
        if all(self.sync.is_local(name, p) for p in range(n)):
            if partition is None:
                return self.broker.publish(topic, records, acks)  # type: ignore[no-any-return]
            return self.broker.publish(topic, records, acks, partition)  # type: ignore[no-any-return]
        self.broker.check_message_sizes(records, topic.config.max_message_bytes)
        named: set[str] = set()
        for r in records:
            if r.id is None:
                # Named here, before the first attempt: a publish retried
                # through a failover carries the same id, and the partition's
                # (new) leader answers it with the first copy's offset.
                r.id = self.broker.new_message_id()
                named.add(r.id)
        groups: dict[int, list[int]] = {}
        if partition is not None:
            groups[partition] = list(range(len(records)))
        elif all(r.key is None for r in records):
            # No keys: the whole batch goes to one partition (round robin per
            # batch, Kafka's sticky partitioner) -- one leader, one replication
            # round, instead of a slice for every leader.
            groups[topic.partition_for(None)] = list(range(len(records)))
        else:
            for i, r in enumerate(records):
                groups.setdefault(topic.partition_for(r.key), []).append(i)
        if len(groups) == 1:
            # One partition (the common case: a batch without keys): its answer
            # is the publish's, in the records' order -- no gathering.
            ((p, _idx),) = groups.items()
            here = self._publish_leading(topic, p, records, acks, named)
            if here is not None:
                return here  # (every answer of it names ``p``: no link to say so)
            here = self._forward_first(topic, p, records, acks, named)
            if here is not None:
                return here  # (every answer of it names ``p``: no link to say so)
            return defer.ensureDeferred(
                self._publish_partition(topic, p, records, acks, 0, named)
            ).addCallback(_in_partition, p)
        ds = [
            defer.ensureDeferred(self._publish_partition(topic, p, [records[i] for i in idx], acks, 0, named))
            for p, idx in groups.items()
        ]

        def combine(results: list[PublishResult]) -> PublishResult:
            offsets = [0] * len(records)
            ids = [""] * len(records)
            parts = [0] * len(records)
            dups = [False] * len(records)
            stored = set()
            for (p, idx), res in zip(groups.items(), results, strict=True):
                stored.add(res.stored)
                for j, i in enumerate(idx):
                    offsets[i], ids[i], parts[i], dups[i] = res.offsets[j], res.ids[j], p, res.duplicates[j]
            weakest = next((k for k in _WEAKEST_FIRST if k in stored), "pending")
            return PublishResult(offsets, ids, parts, dups, weakest)

        d = defer.gatherResults(ds, consumeErrors=True)
        d.addErrback(lambda f: f.value.subFailure if isinstance(f.value, defer.FirstError) else f)
        return d.addCallback(combine)

    async def _publish_partition(
        self,
        topic: Topic,
        p: int,
        records: list[Record],
        acks: str,
        hops: int,
        named: set[str],
        deadline: float | None = None,
        failed: BaseException | None = None,
    ) -> PublishResult:
        """Publish to one partition: here when this node leads it, else at its
        leader; retried through failovers until :attr:`route_timeout` (``failed``:
        the first attempt was made, by :meth:`_publish_leading`, and failed so)."""
        if deadline is None:
            deadline = self.reactor.seconds() + self.route_timeout
        last: SprawlError | None = None
        backoff = 0  # retries since the placement last changed here
        for _attempt in range(1000):
            try:
                if failed is not None:
                    e0, failed = failed, None
                    raise e0
                # Checked again before every attempt: a leader answering
                # topic_not_found is retried only while this node knows the topic.
                t = self.broker.topics.get(topic.name)
                if t is None:
                    raise NotFound(f"topic {topic.name!r} does not exist", code="topic_not_found")
                if not 0 <= p < len(t.logs):
                    raise NotFound(f"topic {topic.name!r} has no partition {p}", code="partition_not_found")
                return await self._publish_once(t, p, records, acks, hops, deadline, named, _attempt == 0)
            except SprawlError as e:
                if e.code not in _RETRYABLE:
                    raise
                last = e
            except NotLeader as e:
                last = NotLeaderError(str(e), e.leader)
            if self.reactor.seconds() + 0.05 >= deadline:
                break
            self.retried += 1
            backoff += 1
            if await self._placement_or(topic.name, min(0.02 * backoff, 0.25)):
                backoff = 0  # a new leader: the next refusal is retried soon again
        raise Unavailable(
            f"partition {topic.name}/{p} has no reachable leader now ({last.message if last else 'no route'}); "
            "retry shortly",
            code="no_leader",
        )

    def placement_changed(self, name: str) -> None:
        """A change to ``name``'s placement was applied here: publishes
        waiting to retry go now (to the new leader) instead of at their backoff."""
        for d in self._placement_waiters.pop(name, []):
            if not d.called:
                d.callback(True)

    def _placement_or(self, name: str, seconds: float) -> defer.Deferred[bool]:
        """Fires True when ``name``'s placement changes here, or False after ``seconds``."""
        d: defer.Deferred[bool] = defer.Deferred()
        waiters = self._placement_waiters.setdefault(name, [])
        waiters.append(d)

        def timeout() -> None:
            if not d.called:
                if d in waiters:
                    waiters.remove(d)
                if not waiters and self._placement_waiters.get(name) is waiters:
                    del self._placement_waiters[name]
                d.callback(False)

        timer = self.reactor.callLater(seconds, timeout)

        def disarm(changed: bool) -> bool:
            if timer.active():
                timer.cancel()
            return changed

        d.addCallback(disarm)
        return d

    async def _publish_once(
        self,
        t: Topic,
        p: int,
        records: list[Record],
        acks: str,
        hops: int,
        deadline: float,
        named: set[str],
        first: bool = False,
    ) -> PublishResult:
        """One attempt at the partition's leader (``named``: the ids this
        cluster gave messages that came without one; ``first``: the publish's
        first attempt, which this node's replica may answer -- see the module
        docstring)."""
        name = t.name
        if self.sync.is_local(name, p):
            pl0 = self.sync.placement(name, p)
            if pl0 is not None and pl0["replicas"] and pl0["replicas"] != [self.node_id]:
                raise Unavailable(f"partition {name}/{p} has no replicas", code="no_leader")
            res: PublishResult = await self.broker.publish(t, records, acks, partition=p)
            return res
        r = self.sync.service.replicas.get((name, p))
        pl = self.sync.placement(name, p)
        leader = str(pl["leader"]) if pl else ""
        if r is not None and not r.core.is_leader and leader == self.node_id:
            if pl is not None and r.core.fenced_epoch > int(pl["epoch"]):
                # Fenced for a later epoch than the placement's: the leadership
                # is moving (a hand-off off this node, or a failover), and the
                # next placement may name another node.  Refuse at once: the
                # entry node retries when it applies that placement.
                raise NotLeaderError(f"the leadership of {name}/{p} is moving", None)
            # The placement names this node, whose replica has not had the
            # controller's assignment yet (a moment behind the Raft commit):
            # wait for it briefly rather than send the publish round again.
            await self._until_leader(r, min(ASSIGN_WAIT, deadline - self.reactor.seconds()))
        if r is not None and r.core.is_leader:
            return await self._publish_replicated(t, r, records, acks, named)
        if not leader or leader == self.node_id:
            raise Unavailable(f"partition {name}/{p} is between leaders", code="no_leader")
        if hops >= self.rpc.max_hops:
            raise NotLeaderError(f"this node does not lead {name}/{p}", leader)
        res = await self._forward(t, p, records, acks, hops, deadline, named, first, r, leader)
        return res

    def _forward(
        self,
        t: Topic,
        p: int,
        records: list[Record],
        acks: str,
        hops: int,
        deadline: float,
        named: set[str],
        first: bool,
        r: PartitionReplication | None,
        leader: str,
        retry: Callable[[Failure], Any] | None = None,
    ) -> defer.Deferred[PublishResult]:
        """Forward one attempt to ``leader`` (a plain Deferred): its answer, or --
        a ``quiet`` first attempt while this node's replica ``r`` follows -- this
        replica's, whichever comes first (see the module docstring).  A failure
        goes to ``retry`` when given (what it returns is the outcome)."""
        name = t.name
        self.forwarded += 1
        body = {
            "topic": name,
            "partition": p,
            "acks": acks,
            "records": [pack_record(x) for x in records],
            "named": [x.id for x in records if x.id in named],
        }
        timeout = max(0.1, min(self.forward_timeout, deadline - self.reactor.seconds()))
        here: defer.Deferred[list[int]] | None = None
        if (
            first
            and acks == "quorum"
            and r is not None
            and not r.core.is_leader
            and records
            and all(x.id in named for x in records)
        ):
            here, forget = self._when_shown(t, p, [str(x.id) for x in records])
            body["quiet"] = True  # no answer to a success this replica shows (see the module docstring)
        sent = self.reactor.seconds()
        called, rid = self.rpc.start(leader, "publish", body, hops=hops + 1, timeout=timeout)
        n = len(records)
        if here is None:
            if retry is None:
                return called.addCallback(self._forward_answered, sent, n, p)
            return called.addCallbacks(self._forward_answered, retry, callbackArgs=(sent, n, p))
        # The leader's answer or this replica's, whichever comes first; what comes
        # after is dropped (a late failure of the call included).  One Deferred, no
        # links of its own (issue 16, qlead42).
        out: defer.Deferred[PublishResult] = defer.Deferred()
        done = [False]

        def won(value: Any, which: str) -> None:
            if done[0]:
                return
            done[0] = True
            forget()
            if which == "here":
                # The call is done: forgotten without failing its Deferred (a
                # cancel's Failure, ~22 lines a forward; issue 16, turn44) -- it
                # never fires, and nothing refers to it once dropped.
                self.rpc.drop(rid)
                self.answered_here += 1
                self._forward_timed(sent, value)
                res = PublishResult(list(value), [str(x.id) for x in records], [p] * n, [False] * n, "quorum")
            else:
                try:
                    res = self._forward_answered(value, sent, n, p)
                except Exception:
                    out.errback()
                    return
            out.callback(res)

        def failed(f: Failure) -> None:
            if done[0]:
                return
            done[0] = True
            forget()
            if retry is None:
                out.errback(f)
                return
            again = retry(f)
            if isinstance(again, defer.Deferred):
                again.chainDeferred(out)
            else:
                out.errback(again)

        called.addCallbacks(won, failed, callbackArgs=("leader",))
        here.addCallback(won, "here")
        return out

    def _forward_answered(self, answer: Any, sent: float, n: int, p: int) -> PublishResult:
        """The leader's answer to a forward sent at ``sent`` of ``n`` records to ``p``."""
        self._forward_timed(sent, answer["offsets"])
        return PublishResult(
            list(answer["offsets"]),
            list(answer["ids"]),
            [p] * n,
            list(answer["duplicates"]),
            str(answer["stored"]),
        )

    def _forward_first(
        self, topic: Topic, p: int, records: list[Record], acks: str, named: set[str]
    ) -> defer.Deferred[PublishResult] | None:
        """A publish's first attempt forwarded to the partition's leader without a
        coroutine (:meth:`_forward`; issue 16, qlead42: the entry node's
        ``_publish_partition`` and ``_publish_once`` coroutines were ~50 lines of
        Python a forward), when this node knows the topic, does not lead the
        partition and is not about to (the placement names another node), and
        the placement does not keep it local; a retryable failure goes on to
        :meth:`_publish_partition`'s retries as that first attempt's failure,
        as :meth:`_publish_leading`'s does.  None otherwise (the coroutine's path)."""
        name = topic.name
        t = self.broker.topics.get(name)
        if t is None or not 0 <= p < len(t.logs) or self.rpc.max_hops <= 0 or self.sync.is_local(name, p):
            return None
        r = self.sync.service.replicas.get((name, p))
        if r is not None and r.core.is_leader:
            return None
        pl = self.sync.placement(name, p)
        leader = str(pl["leader"]) if pl else ""
        if not leader or leader == self.node_id:
            return None
        deadline = self.reactor.seconds() + self.route_timeout

        def retry(f: Failure) -> Any:
            e = f.value
            if isinstance(e, NotLeader) or (isinstance(e, SprawlError) and e.code in _RETRYABLE):
                return defer.ensureDeferred(
                    self._publish_partition(topic, p, records, acks, 0, named, deadline, e)
                ).addCallback(_in_partition, p)
            return f

        try:
            return self._forward(t, p, records, acks, 0, deadline, named, True, r, leader, retry)
        except Exception:
            return defer.fail().addErrback(retry)

    def _forward_timed(self, sent: float, offsets: list[int]) -> None:
        """A forwarded publish sent at ``sent`` is answered now (the metrics' hop, the timeline)."""
        metrics = getattr(self.broker, "metrics", None)  # (test fakes of the broker have none)
        if metrics is not None:
            metrics.hop("forward", self.reactor.seconds() - sent)
        tl = timeline.TIMELINE
        if tl is not None and offsets:
            first, last = min(offsets), max(offsets) + 1
            if tl.sampled(first, last):
                tl.mark_at("fwd_sent", sent, first, last)
                tl.mark("fwd_back", first, last)

    def _when_shown(self, t: Topic, p: int, ids: list[str]) -> tuple[defer.Deferred[list[int]], Any]:
        """A Deferred firing with the offsets of the records ``ids`` (each once,
        in order) once this node's replica of ``t``/``p`` shows every one of them
        -- its high watermark passes them: on its own disk and a majority's --
        and a function that stops looking (call it either way)."""
        key = (t.name, p)
        lg = t.logs[p]
        shown = self._shown.get(key)
        if shown is None or shown.log is not lg:
            if shown is not None:
                shown.unwatch()  # (the topic was made again)
            shown = _Shown(lg)
            shown.unwatch = self.broker.watch(t.name, p, lambda: self._look(key))
            self._shown[key] = shown
        want = _Wanted(ids)
        for i in ids:
            shown.waiting[i] = want

        def forget() -> None:
            for i in ids:
                if shown.waiting.get(i) is want:
                    del shown.waiting[i]
            if not shown.waiting and self._shown.get(key) is shown:
                del self._shown[key]
                shown.unwatch()

        return want.d, forget

    def _look(self, key: tuple[str, int]) -> None:
        """The replica's high watermark moved: the records it passed, looked for."""
        shown = self._shown.get(key)
        if shown is None:
            return
        lg = shown.log
        hw = min(lg.high_watermark, lg.next_offset)
        hs = lg.hot_start
        start = max(shown.pos, hs)
        shown.pos = max(shown.pos, hw)
        if start >= hw:
            return
        waiting = shown.waiting
        done: list[_Wanted] = []
        hot = lg.hot
        for i in range(start - hs, hw - hs):
            rec = hot[i]
            want = waiting.pop(rec.id, None) if rec.id is not None else None
            if want is not None and not rec.control:
                want.offsets[rec.id] = rec.offset  # type: ignore[index]
                if len(want.offsets) == len(want.ids):
                    done.append(want)
        for want in done:
            want.d.callback([want.offsets[i] for i in want.ids])

    async def _until_leader(self, r: PartitionReplication, seconds: float) -> None:
        """Wait until the replica leads, at most ``seconds`` (checked every 5 ms)."""
        end = self.reactor.seconds() + seconds
        for _ in range(int(max(seconds, 0.0) / 0.005) + 1):
            if r.core.is_leader or self.reactor.seconds() >= end:
                return
            await task.deferLater(cast("IReactorTime", self.reactor), 0.005, lambda: None)

    def _publish_replicated(
        self, t: Topic, r: PartitionReplication, records: list[Record], acks: str, named: set[str]
    ) -> defer.Deferred[PublishResult]:
        """As the partition's leader: dedup, append, wait for the acks level --
        a plain Deferred chain, no coroutine (lat41: ~43 lines of
        ``_inlineCallbacks`` a message on the leader).  Raises what the append
        refuses with (:class:`NotLeader`, ``Overloaded``, not writable).

        Client ids are remembered for the dedup window; ids this cluster gave
        (``named``) only in the short window of recent ids, which is all a
        retry through a failover needs."""
        b = self.broker
        b.check_writable()
        now = b.now_ms()
        dedup = t.dedup
        recent = t.recent
        n = len(records)
        offsets: list[int] = [0] * n
        dups = [False] * n
        fresh: list[Record] = []
        seen: dict[str, int] = {}
        hits: list[int] = []
        for i, rec in enumerate(records):
            if rec.id is not None:
                hit = dedup.lookup(rec.id, now) or recent.lookup(rec.id, now)
                if hit is not None and hit[0] == r.partition:
                    offsets[i], dups[i] = hit[1], True
                    hits.append(hit[1])
                    continue
                if rec.id in seen:
                    dups[i] = True
                    continue
                seen[rec.id] = i
            fresh.append(rec)
        # Every record named (the entry node names those that came without an id):
        # the waiter fires with the answer itself, no ``_answer`` link (issue 16,
        # qlead42); its offsets are filled in below, before any answer (a publish
        # is never committed in the call that takes it).
        quorum = acks == "quorum" and bool(fresh) and not hits and all(x.id is not None for x in fresh)
        if quorum:
            result = PublishResult(offsets, [str(x.id) for x in records], [r.partition] * n, dups, "quorum")
            d = r.publish(fresh, result)
        else:
            d = r.publish(fresh) if fresh else defer.succeed([])
        for rec in fresh:
            if rec.id in seen:
                (recent if rec.id in named else dedup).remember(rec.id, r.partition, rec.offset, now)
        for i, rec in enumerate(records):
            if dups[i] and rec.id in seen and records[seen[rec.id]] is not rec:
                offsets[i] = records[seen[rec.id]].offset
            elif not dups[i]:
                offsets[i] = rec.offset
        size = sum(x.message_bytes for x in fresh)
        b.published_total += len(fresh)
        b.published_bytes_total += size
        b.deduplicated_total += n - len(fresh)
        if b.metrics is not None:
            b.metrics.published(t.name, len(fresh), size)
        if quorum:
            return d
        ids = [x.id or "" for x in records]
        for i, rec in enumerate(records):
            if dups[i] and rec.id is None:
                ids[i] = ""
        if acks == "quorum":
            result = PublishResult(offsets, ids, [r.partition] * n, dups, "quorum")
            if hits:
                # (the first copies are committed too)
                d.addCallback(lambda _: r.wait_committed(max(hits)))
            return d.addCallback(_answer, result)
        d.addErrback(lambda f: None)  # the answer does not wait for it
        if acks == "leader" and fresh:
            result = PublishResult(offsets, ids, [r.partition] * n, dups, "lmdb")
            return b.wait_stored(t.name, r.partition, max(x.offset for x in fresh)).addCallback(
                _answer, result
            )
        return defer.succeed(PublishResult(offsets, ids, [r.partition] * n, dups, "pending"))

    def _publish_leading(
        self, topic: Topic, p: int, records: list[Record], acks: str, named: set[str]
    ) -> defer.Deferred[PublishResult] | None:
        """A publish's first attempt when this node's replica leads the partition
        (and the placement does not keep it local): :meth:`_publish_replicated`
        with no coroutine on the way; a retryable failure goes on to
        :meth:`_publish_partition`'s retries as its first attempt's would.  None
        when this node does not lead it (the coroutine's path then)."""
        r = self.sync.service.replicas.get((topic.name, p))
        if r is None or not r.core.is_leader:  # (first: an entry node that follows pays one look)
            return None
        t = self.broker.topics.get(topic.name)
        if t is None or not 0 <= p < len(t.logs) or self.sync.is_local(t.name, p):
            return None
        deadline = self.reactor.seconds() + self.route_timeout
        # (what it answers names ``p`` for every record: ``_publish_replicated``'s
        # answers name the replica's partition, the retries are named so here --
        # no ``_in_partition`` link a publish on the leader; issue 16, turn44)
        try:
            d = self._publish_replicated(t, r, records, acks, named)
        except Exception as e:  # (a refusal: retried, or raised, by the loop as its own)
            return defer.ensureDeferred(
                self._publish_partition(topic, p, records, acks, 0, named, deadline, e)
            ).addCallback(_in_partition, p)

        def retry(f: Failure) -> Any:
            e = f.value
            if isinstance(e, NotLeader) or (isinstance(e, SprawlError) and e.code in _RETRYABLE):
                return defer.ensureDeferred(
                    self._publish_partition(topic, p, records, acks, 0, named, deadline, e)
                ).addCallback(_in_partition, p)
            return f

        return d.addErrback(retry)

    def _rpc_publish(self, caller: str, body: Any, hops: int) -> defer.Deferred[dict[str, Any]]:
        if not isinstance(body, dict):
            raise BadRequest("malformed forwarded publish", code="bad_request")
        name, p, acks = str(body["topic"]), int(body["partition"]), str(body["acks"])
        t = self.broker.topics.get(name)
        if t is None:
            raise NotFound(f"topic {name!r} does not exist here yet", code="topic_not_found")
        if not 0 <= p < len(t.logs):
            raise NotFound(f"topic {name!r} has no partition {p}", code="partition_not_found")
        records = [unpack_record(x) for x in body["records"]]
        self.broker.check_message_sizes(records, t.config.max_message_bytes)
        named = {str(x) for x in body.get("named") or ()}
        quiet = bool(body.get("quiet"))
        for rec in records:
            rec.offset, rec.partition, rec.timestamp = -1, p, 0

        def answer(res: PublishResult) -> Any:
            if quiet:
                there = self._quiet_there(caller, name, p, res)
                if there is not None:
                    end = max(res.offsets) + 1
                    if there.core.followers[caller].match >= end:
                        return NO_ANSWER
                    if self.quiet_wait > 0:
                        # Committed before the entry's copy was durable (the other
                        # follower made the majority): left unanswered too once it
                        # is, within ``quiet_wait`` (issue 16, qlead42).
                        return there.when_held(caller, end, self.quiet_wait).addCallback(_held_answer, res)
            return _answer_body(res)

        def not_leader(f: Failure) -> Failure:
            e = f.value
            if isinstance(e, NotLeader):
                raise NotLeaderError(str(e), e.leader)
            return f

        r = self.sync.service.replicas.get((name, p))
        if r is not None and r.core.is_leader and not self.sync.is_local(name, p):
            # (leading: the one attempt :meth:`_publish_once` would make, without a coroutine)
            try:
                d = self._publish_replicated(t, r, records, acks, named)
            except Exception:
                d = defer.fail()
            return d.addCallbacks(answer, not_leader)  # (one link: ``answer`` raises nothing)

        async def run() -> dict[str, Any]:
            res = await self._publish_once(
                t, p, records, acks, hops, self.reactor.seconds() + self.route_timeout, named
            )
            got = answer(res)
            if isinstance(got, defer.Deferred):
                got = await got
            return got  # type: ignore[no-any-return]

        return defer.ensureDeferred(run()).addErrback(not_leader)

    def _quiet_there(self, caller: str, name: str, p: int, res: PublishResult) -> PartitionReplication | None:
        """The replica of ``name``/``p`` this node leads when ``caller`` is one of
        its live followers and ``res`` a committed publish a ``quiet`` forward
        may leave unanswered once the caller holds every record of it durably
        (its acknowledged end passes them): its replica shows them once it
        learns the high watermark (see the module docstring).  None for
        duplicates (a first copy's offset is the leader's to say), for anything
        but ``quorum``, and when this node does not lead: answered."""
        if res.stored != "quorum" or not res.offsets or any(res.duplicates):
            return None
        r = self.sync.service.replicas.get((name, p))
        if r is None or not r.core.is_leader or caller in r.core.dead or caller not in r.core.followers:
            return None
        return r

    # -- reading ---------------------------------------------------------------------

    def read_source(self, topic: str, partition: int) -> str | None:
        """Where to read a partition this node does not hold: its leader (None: read here)."""
        if self.sync.holds(topic, partition):
            return None
        pl = self.sync.placement(topic, partition)
        if pl is None:
            return None
        leader = str(pl["leader"])
        return leader or (str(pl["replicas"][0]) if pl["replicas"] else None)

    def fetch_remote(
        self,
        topic: str,
        partition: int,
        start: str | int | None,
        from_time: int | None,
        limit: int,
        wait_ms: int,
        max_bytes: int | None = None,
    ) -> defer.Deferred[dict[str, Any]]:
        """Read a partition at the node that holds it: fires with
        ``{"records": [Record], "start", "hw"}`` (records may include control
        ones); at most ``limit`` records and ``max_bytes`` bytes (the holder
        caps it at :data:`~sprawl.peer.frames.BATCH_BYTES`), at least one.

        A holder that has not applied the topic (or partition) yet is asked
        again, while this node knows it, until :attr:`route_timeout`."""
        src = self.read_source(topic, partition)
        if src is None:
            return defer.fail(Unavailable(f"no replica of {topic}/{partition} is known", code="no_leader"))
        body = {
            "topic": topic,
            "partition": partition,
            "start": start,
            "from_time": from_time,
            "limit": limit,
            "wait_ms": wait_ms,
            "max_bytes": max_bytes,
        }

        async def fetch(src: str) -> dict[str, Any]:
            deadline = self.reactor.seconds() + self.route_timeout
            for attempt in range(1000):
                try:
                    answer = await self.rpc.call(
                        src, "fetch", body, hops=1, timeout=self.forward_timeout + wait_ms / 1000.0
                    )
                    break
                except SprawlError as e:
                    t = self.broker.topics.get(topic)
                    known = t is not None and partition < len(t.logs)
                    if e.code not in _NOT_APPLIED_THERE or not known:
                        raise
                    if self.reactor.seconds() + 0.05 >= deadline:
                        raise
                self.retried += 1
                await task.deferLater(
                    cast("IReactorTime", self.reactor), min(0.05 * (attempt + 1), 0.25), lambda: None
                )
                src = self.read_source(topic, partition) or src
            else:
                raise Unavailable(f"{topic}/{partition} cannot be read at {src} now", code="no_leader")
            return {
                "records": [unpack_record(x) for x in answer["records"]],
                "start": int(answer["start"]),
                "hw": int(answer["hw"]),
                "log_start": int(answer.get("log_start", 0)),
            }

        return defer.ensureDeferred(fetch(src))

    def _rpc_fetch(self, caller: str, body: Any, hops: int) -> defer.Deferred[dict[str, Any]]:
        if not isinstance(body, dict):
            raise BadRequest("malformed forwarded fetch", code="bad_request")
        name, p = str(body["topic"]), int(body["partition"])
        t = self.broker.get_topic(name)
        if not 0 <= p < len(t.logs):
            raise NotFound(f"topic {name!r} has no partition {p}", code="partition_not_found")
        if not self.sync.holds(name, p):
            raise NotLeaderError(f"this node holds no replica of {name}/{p}", self.read_source(name, p))
        limit = max(1, min(int(body.get("limit") or 100), 10_000))
        # The answer is one peer frame: bounded in bytes whatever the caller asked.
        max_bytes = max(1, min(int(body.get("max_bytes") or BATCH_BYTES), BATCH_BYTES))
        wait = max(0.0, min(int(body.get("wait_ms") or 0), 60_000) / 1000.0)
        lg = t.logs[p]
        spec, from_time = body.get("start"), body.get("from_time")

        async def run() -> dict[str, Any]:
            if from_time is not None:
                start = int(await self.broker.find_time(t, p, int(from_time)))
            else:
                start = lg.resolve_start(spec if spec is not None else "earliest")
            deadline = self.reactor.seconds() + wait
            for _ in range(10_000):
                hw = lg.high_watermark
                got = await self.broker.read(t, p, start, limit, max_bytes=max_bytes) if start < hw else []
                if got or self.reactor.seconds() >= deadline or self.broker.topics.get(name) is not t:
                    break
                await self.changed(name, p, deadline - self.reactor.seconds())
            return {
                "records": [pack_record(x) for x in got],
                "start": start,
                "hw": lg.high_watermark,
                "log_start": lg.log_start,
            }

        return defer.ensureDeferred(run())

    def changed(self, name: str, p: int, seconds: float) -> defer.Deferred[None]:
        """Fires when the partition's high watermark moves, or after ``seconds``."""
        d: defer.Deferred[None] = defer.Deferred()
        timer: Delayed | None = None

        def fire() -> None:
            unwatch()
            if timer is not None and timer.active():
                timer.cancel()
            if not d.called:
                d.callback(None)

        unwatch = self.broker.watch(name, p, fire)
        timer = self.reactor.callLater(max(seconds, 0.0), fire)
        return d


class _Wanted:
    """A forwarded publish's records looked for in this node's replica (:meth:`Router._when_shown`)."""

    __slots__ = ("d", "ids", "offsets")

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids
        self.offsets: dict[str, int] = {}
        self.d: defer.Deferred[list[int]] = defer.Deferred()


class _Shown:
    """One partition's forwarded publishes looked for in this node's replica:
    ``waiting`` by record id, ``pos`` the high watermark looked at so far."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self.pos: int = log.high_watermark
        self.waiting: dict[str, _Wanted] = {}
        self.unwatch: Any = lambda: None


def _answer_body(res: PublishResult) -> dict[str, Any]:
    """A forwarded publish's answer (the ``publish`` peer RPC's body)."""
    return {"offsets": res.offsets, "ids": res.ids, "duplicates": res.duplicates, "stored": res.stored}


def _held_answer(held: bool, res: PublishResult) -> Any:
    """A quiet forward's answer once its entry's copy is durable (``held``: none) or not."""
    return NO_ANSWER if held else _answer_body(res)


def _answer(_: object, result: PublishResult) -> PublishResult:
    """A leader publish's answer, once what it waits for fired."""
    return result


def _in_partition(res: PublishResult, p: int) -> PublishResult:
    """``res`` with every record's partition ``p`` (what the publish routed them to)."""
    if any(x != p for x in res.partitions):
        res.partitions = [p] * len(res.partitions)
    return res
