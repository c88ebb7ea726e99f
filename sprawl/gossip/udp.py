"""The Twisted adapter of the SWIM core: UDP socket, time, disk.

:class:`GossipNode` is a ``DatagramProtocol`` that owns one
:class:`~sprawl.gossip.membership.Membership` and everything the pure core
does not: the socket (it sends every datagram the core returns and feeds it
every datagram received), the clock (the core is ticked at its next
deadline -- :meth:`Membership.next_deadline`, on the 0.1 s grid the node's
other loops tick on -- on an injected ``IReactorTime``), the seeds (joined with capped
exponential backoff until one answers, and afterwards retried while any seed
is not a live member, so a healed partition re-merges), the incarnation
number (kept in ``DATA_DIR/gossip.json``, written atomically whenever it
changes, and restarted at the saved value + 1 so a restarted node always
outranks what the cluster remembers of it) and the node's metadata (its HTTP
and peer addresses, version and load figures, refreshed every few seconds and
re-gossiped only when they changed meaningfully).

:func:`~sprawl.gossip.peer_port.listen_peer` binds the TCP peer listener
and this UDP socket on the same port number, as memberlist does (one peer
address per node); :mod:`sprawl.gossip.incarnation_file` reads and writes
the saved incarnation.  These three are the modules of :mod:`sprawl.gossip`
that import Twisted.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import msgspec
from twisted.internet import defer, task
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from sprawl.gossip.incarnation_file import load_incarnation, save_incarnation
from sprawl.gossip.load import (
    PARTS_BUDGET,
    RATE_WINDOW,
    LoadSample,
    RateWindow,
    encode_parts,
    load_changed,
    rates_between,
    view_rates,
)
from sprawl.gossip.membership import (
    ALIVE,
    DEAD,
    LEFT,
    STAT_KEYS,
    SUSPECT,
    Address,
    GossipConfig,
    Member,
    MemberEvent,
    Membership,
    Output,
)
from sprawl.interfaces import Clock, Delayed
from sprawl.ticks import start_in_phase

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

log = Logger()

#: The grid the core's ticks fall on (seconds): each tick is armed for the
#: first multiple of it at or after the core's next deadline, so it fires in
#: the reactor turn of the node's other 0.1 s loops (:mod:`sprawl.ticks`).
TICK_INTERVAL = 0.1
#: The longest wait between two ticks (seconds), whatever the deadline says.
MAX_TICK_WAIT = 1.0
#: How often load figures are sampled for the metadata.
META_INTERVAL = 5.0
#: How long the leave is gossiped before the socket closes on stop.
LEAVE_GRACE = 0.5
#: Join retry backoff: first retry, cap.
JOIN_BACKOFF = (1.0, 30.0)
#: Drop reasons, from the core's ``dropped_*`` counters and the adapter's own.
DROP_REASONS = (
    "decode",
    "auth",
    "oversize",
    "version",
    "members_cap",
    "absurd",
    "send_failed",
    "not_started",
)
#: Datagrams held at most while the incarnation they carry is being saved.
MAX_HELD = 4096
#: How member events read in the log.
_CHANGES = {
    "join": "joined",
    "alive": "is alive again",
    "suspect": "is suspected",
    "dead": "is declared dead",
    "left": "left",
}
#: Member states, for per-state counts.
STATES = (ALIVE, SUSPECT, DEAD, LEFT)


# ----------------------------------------------------------------- the adapter


class GossipNode(DatagramProtocol):
    """One node's gossip membership on a UDP socket (see the module doc).

    Life cycle: attach it to a socket (``reactor.listenUDP`` or
    :func:`listen_peer`; tests call ``makeConnection`` with a fake transport),
    then :meth:`start` with the advertised address, then :meth:`stop`.
    """

    noisy = False  # no "starting/stopping protocol" log lines

    def __init__(
        self,
        node_id: str,
        config: GossipConfig,
        clock: Clock,
        rng: random.Random,
        data_dir: str,
        seeds: Sequence[Address] = (),
        meta: dict[str, Any] | None = None,
        load: Callable[[], LoadSample] | None = None,
        resolve: Callable[[str], defer.Deferred[str]] | None = None,
        tick_interval: float = TICK_INTERVAL,
        meta_interval: float = META_INTERVAL,
        leave_grace: float = LEAVE_GRACE,
        join_backoff: tuple[float, float] = JOIN_BACKOFF,
        save: Callable[[str, int], defer.Deferred[None]] | None = None,
        rate_window: float = RATE_WINDOW,
    ):
        config.validate()
        self.node_id = node_id
        self.config = config
        self.clock = clock
        self.rng = rng
        self.data_dir = data_dir
        self.seeds = [(str(h), int(p)) for h, p in seeds]
        self.base_meta = dict(meta or {})
        self.load = load
        self.resolve = resolve
        self.tick_interval = tick_interval
        self.meta_interval = meta_interval
        self.leave_grace = leave_grace
        self.join_backoff = join_backoff
        self.membership: Membership | None = None
        #: Writes gossip.json (default: at once, on the calling thread; the node
        #: passes a thread pool so the fsync never blocks the reactor).
        self.save = save or (lambda data_dir, n: defer.maybeDeferred(save_incarnation, data_dir, n))
        #: Datagrams waiting for the incarnation they may carry to be saved.
        self._held: list[tuple[Address, bytes]] = []
        self._saving = False
        self._save_failed: int | None = None
        #: Counters of the adapter itself (the core's are in ``membership.stats``).
        self.adapter_stats: dict[str, int] = {
            "dropped_send_failed": 0,
            "dropped_not_started": 0,
            "join_attempts": 0,
            "meta_updates": 0,
            "incarnation_saves": 0,
        }
        #: Listeners of member events (called with each :class:`MemberEvent`).
        self.listeners: list[Callable[[MemberEvent], None]] = []
        self._saved_incarnation: int | None = None
        #: The core's next tick (armed at its next deadline: :meth:`_schedule`).
        self._tick_call: Delayed | None = None
        #: When :attr:`_tick_call` fires (clock seconds).
        self._tick_at = 0.0
        #: Ticks run (an idle node's count: issue 23).
        self.ticks = 0
        self._meta_loop: task.LoopingCall | None = None
        self._join_call: Delayed | None = None
        self._backoff = join_backoff[0]
        self._resolved: dict[str, str] = {}
        self._load_meta: dict[str, Any] | None = None
        self._last_load: tuple[float, int] | None = None
        self._last_parts: dict[tuple[str, int], tuple[int, int]] = {}
        #: The partition rates gossiped: windowed over ``rate_window`` seconds
        #: (:class:`sprawl.gossip.load.RateWindow`; 0: the last sample alone).
        self._rates = RateWindow(rate_window)
        self._stopping = False
        self._ticking_stopped = False
        self._in_tick = False

    # ------------------------------------------------------------ lifecycle

    def start(self, advertise: Address) -> None:
        """Create the membership at ``advertise`` (the address peers use),
        start ticking and join the seeds.  The incarnation starts one above
        the saved one, and is saved before anything is sent."""
        if self.membership is not None:
            raise RuntimeError("gossip already started")
        saved = load_incarnation(self.data_dir)
        incarnation = 0 if saved is None else saved + 1
        now = self.clock.seconds()
        meta = dict(self.base_meta)
        load = self._sample_load(now)
        if load is not None:
            meta["load"] = load
            self._load_meta = load
        self.membership = Membership(self.node_id, advertise, meta, self.config, self.rng, now, incarnation)
        self._persist()
        self._schedule()
        if self.load is not None:
            self._meta_loop = task.LoopingCall(self._refresh_load)
            self._meta_loop.clock = cast("IReactorTime", self.clock)
            start_in_phase(self._meta_loop, self.meta_interval).addErrback(self._loop_failed, "load")
        log.info(
            "gossip: node {node_id} at {host}:{port}, incarnation {incarnation}, seeds {seeds}",
            node_id=self.node_id,
            host=advertise[0],
            port=advertise[1],
            incarnation=incarnation,
            seeds=",".join(f"{h}:{p}" for h, p in self.seeds) or "none",
        )
        if self.seeds:
            self._join_call = self.clock.callLater(0, self._join_attempt)

    def stop(self) -> defer.Deferred[None]:
        """Leave gracefully: gossip the leave, keep ticking for ``leave_grace``
        seconds (on the clock) so it spreads, then stop and close the socket."""
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._join_call is not None and self._join_call.active():
            self._join_call.cancel()
        self._join_call = None
        if self._meta_loop is not None and self._meta_loop.running:
            self._meta_loop.stop()
        m = self.membership
        if m is not None and not m.left:
            self._apply(m.leave(self.clock.seconds()))
            log.info("gossip: left the cluster (incarnation {incarnation})", incarnation=m.incarnation)
            if self.leave_grace > 0 and not self._ticking_stopped:
                await task.deferLater(cast("IReactorTime", self.clock), self.leave_grace, lambda: None)
        if self._tick_call is not None and self._tick_call.active():
            self._tick_call.cancel()
        self._tick_call = None
        self._ticking_stopped = True
        port: Any = self.transport
        if port is not None and hasattr(port, "stopListening"):
            await defer.maybeDeferred(port.stopListening)

    def _loop_failed(self, failure: Failure, which: str) -> None:
        log.failure("gossip {which} loop failed", failure, which=which)

    # ----------------------------------------------------------- core calls

    def _tick(self) -> None:
        self._tick_call = None
        m = self.membership
        if m is None or self._ticking_stopped:
            return
        self.ticks += 1
        self._in_tick = True
        try:
            self._apply(m.tick(self.clock.seconds()))
        except Exception:  # a bug must not silently end failure detection
            log.failure("gossip tick failed")
        finally:
            self._in_tick = False
        self._schedule(ticked=True)

    def _schedule(self, ticked: bool = False) -> None:
        """Arm the core's next tick: at the first multiple of ``tick_interval``
        at or after its next deadline (the reactor turn of the node's other
        loops), at most :data:`MAX_TICK_WAIT` from now -- sooner than the one
        armed if an input brought the deadline forward.  An idle member
        ticks when a probe, its timeout or a gossip round is due (a few times
        a second), not ten times a second (issue 23).  The core does only
        what is due on any tick, so a tick too early costs nothing but the
        call; none is ever later than the grid point after the deadline, as
        when the core was ticked every ``tick_interval``.  After a tick
        (``ticked``) the next one is on a later grid point."""
        m = self.membership
        if m is None or self._ticking_stopped or self._in_tick:
            return  # (a tick arms the next one when it is done)
        now = self.clock.seconds()
        step = self.tick_interval
        due = min(max(m.next_deadline(), now), now + MAX_TICK_WAIT)
        at = math.ceil(due / step) * step if step > 0 else due
        if at < due:  # (rounding)
            at += step
        if ticked and at <= now:
            at = (math.floor(now / step) + 1) * step if step > 0 else now + MAX_TICK_WAIT
        call = self._tick_call
        if call is not None and call.active():
            if self._tick_at <= at:
                return
            call.cancel()
        self._tick_at = at
        self._tick_call = self.clock.callLater(max(0.0, at - now), self._tick)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """Feed one datagram to the core (which never raises on bad input)."""
        m = self.membership
        if m is None:
            self.adapter_stats["dropped_not_started"] += 1
            return
        self._apply(m.receive((addr[0], addr[1]), datagram, self.clock.seconds()))

    def _apply(self, out: Output) -> None:
        """Send, once the incarnation they may carry is saved, then report events."""
        if out.datagrams:
            self._held.extend(out.datagrams)
            if len(self._held) > MAX_HELD:
                dropped = len(self._held) - MAX_HELD
                del self._held[:dropped]
                self.adapter_stats["dropped_send_failed"] += dropped
        self._persist()
        self._schedule()  # (an input may bring a deadline forward)
        for ev in out.events:
            self._log_event(ev)
            for listener in self.listeners:
                try:
                    listener(ev)
                except Exception:
                    log.failure("gossip event listener failed")

    def _persist(self) -> None:
        """Save a changed incarnation -- one write at a time, each taking the
        latest value (a burst of changes costs one or two fsyncs), off the
        reactor with the node's ``save`` -- and send held datagrams once the
        incarnation they may carry is on disk (or its write failed: logged)."""
        m = self.membership
        if m is None:
            self._send(self._held)
            self._held = []
            return
        inc = m.incarnation
        if inc == self._saved_incarnation or inc == self._save_failed:
            held, self._held = self._held, []
            self._send(held)
            return
        if self._saving:
            return
        self._saving = True
        self.adapter_stats["incarnation_saves"] += 1

        def saved(_: object) -> None:
            self._saving = False
            self._saved_incarnation = inc
            self._save_failed = None
            self._persist()

        def failed(f: Failure) -> None:
            self._saving = False
            self._save_failed = inc
            log.error("gossip: cannot save the incarnation: {error}", error=str(f.value))
            self._persist()

        self.save(self.data_dir, inc).addCallbacks(saved, failed)

    def _send(self, datagrams: list[tuple[Address, bytes]]) -> None:
        transport: Any = self.transport
        for addr, data in datagrams:
            if transport is None:
                self.adapter_stats["dropped_send_failed"] += 1
                continue
            try:
                transport.write(data, addr)
            except Exception as e:  # a bad address or a full buffer must not stop the node
                self.adapter_stats["dropped_send_failed"] += 1
                log.debug("gossip: send to {addr} failed: {error}", addr=addr, error=str(e))

    def _log_event(self, ev: MemberEvent) -> None:
        mem = ev.member
        if ev.kind == "update":
            log.debug(
                "gossip: member {node_id} updated (incarnation {incarnation})",
                node_id=mem.node_id,
                incarnation=mem.incarnation,
            )
        elif ev.kind == "refuted":
            log.info("gossip: refuted a suspicion (incarnation {incarnation})", incarnation=mem.incarnation)
        else:
            log.info(
                "gossip: member {node_id} at {host}:{port} {change} (incarnation {incarnation})",
                node_id=mem.node_id,
                host=mem.addr[0],
                port=mem.addr[1],
                change=_CHANGES.get(ev.kind, ev.kind),
                incarnation=mem.incarnation,
            )

    # ------------------------------------------------------------ joining

    def _join_attempt(self) -> None:
        self._join_call = None
        if self._stopping:
            return
        defer.ensureDeferred(self._join_once()).addErrback(self._loop_failed, "join")

    async def _join_once(self) -> None:
        m = self.membership
        if m is None or m.left or self._stopping:
            return
        seeds = await self._resolved_seeds()
        if self._stopping:
            return
        live = {x.addr for x in m.members() if x.state in (ALIVE, SUSPECT) and x.node_id != m.node_id}
        targets = [s for s in seeds if s != m.addr and (not m.joined or s not in live)]
        if targets:
            self.adapter_stats["join_attempts"] += 1
            self._apply(m.join(targets, self.clock.seconds()))
            delay = self._backoff
            self._backoff = min(self._backoff * 2, self.join_backoff[1])
        else:
            # joined, and every seed is a live member: check again later
            self._backoff = self.join_backoff[0]
            delay = self.join_backoff[1]
        delay *= self.rng.uniform(0.9, 1.1)
        self._join_call = self.clock.callLater(delay, self._join_attempt)

    async def _resolved_seeds(self) -> list[Address]:
        out: list[Address] = []
        for host, port in self.seeds:
            if isIPAddress(host) or isIPv6Address(host):
                out.append((host, port))
                continue
            ip = self._resolved.get(host)
            if ip is None and self.resolve is not None:
                try:
                    ip = await self.resolve(host)
                except Exception as e:
                    log.warn("gossip: cannot resolve seed {host}: {error}", host=host, error=str(e))
                    continue
                self._resolved[host] = ip
            if ip is not None:
                out.append((ip, port))
        return out

    # ------------------------------------------------------------ metadata

    def set_meta(self, **fields: Any) -> None:
        """Change base metadata fields (e.g. ``http`` once HTTP listens) and
        gossip the change."""
        self.base_meta.update(fields)
        self._publish_meta()

    def _publish_meta(self) -> None:
        m = self.membership
        if m is None or m.left:
            return
        meta = dict(self.base_meta)
        if self._load_meta is not None:
            meta["load"] = self._load_meta
        try:
            m.set_meta(meta)
        except ValueError as e:
            log.error("gossip: metadata not accepted: {error}", error=str(e))
            return
        self.adapter_stats["meta_updates"] += 1
        self._persist()
        self._schedule()  # (the new metadata is gossiped at the next round)

    def _sample_load(self, now: float) -> dict[str, Any] | None:
        if self.load is None:
            return None
        s = self.load()
        rate = 0.0
        if self._last_load is not None:
            t0, n0 = self._last_load
            if now > t0:
                rate = max(0.0, (s.published_total - n0) / (now - t0))
        rates = {}
        if s.partial:
            # Only what moved is listed: the others keep their counters (and no rate).
            for key in s.gone:
                self._last_parts.pop(key, None)
            if self._last_load is not None and now > self._last_load[0]:
                rates = rates_between(self._last_parts, s.partitions, now - self._last_load[0])
            self._last_parts.update(s.partitions)
        else:
            if self._last_load is not None and now > self._last_load[0]:
                rates = rates_between(self._last_parts, s.partitions, now - self._last_load[0])
            self._last_parts = dict(s.partitions)
        if self._last_load is not None and now > self._last_load[0]:
            rates = self._rates.update(rates, now - self._last_load[0])
        self._last_load = (now, s.published_total)
        out: dict[str, Any] = {
            "led": int(s.partitions_led),
            "msgs_s": round(rate, 1),
            "bytes": int(s.bytes_stored),
            "mem": int(s.memory_hot_bytes),
        }
        if rates:
            parts = encode_parts(rates, self._parts_budget(out))
            if parts:
                out["parts"] = parts
        return out

    def _parts_budget(self, load: dict[str, Any]) -> int:
        """Bytes left for ``load["parts"]`` under ``max_meta_bytes``."""
        meta = dict(self.base_meta)
        meta["load"] = dict(load, parts=[])
        return min(PARTS_BUDGET, self.config.max_meta_bytes - len(msgspec.msgpack.encode(meta)) - 8)

    def _refresh_load(self) -> None:
        new = self._sample_load(self.clock.seconds())
        if new is None or not load_changed(self._load_meta, new):
            return
        self._load_meta = new
        self._publish_meta()

    # ------------------------------------------------------------- views

    @property
    def incarnation(self) -> int:
        """This node's incarnation (0 before :meth:`start`)."""
        return self.membership.incarnation if self.membership is not None else 0

    @property
    def joined(self) -> bool:
        """True once a seed or member answered (or when there are no seeds)."""
        m = self.membership
        if m is None:
            return False
        return m.joined or not self.seeds

    def members(self) -> list[Member]:
        """Snapshots of every known member, this node included."""
        return self.membership.members() if self.membership is not None else []

    def member_views(self) -> list[dict[str, Any]]:
        """Members as the HTTP API shows them, sorted by id.  ``load`` is the
        member's gossiped load figures, ``partition_rates`` the publish rates
        of the hottest partitions it leads (``[{"topic", "partition",
        "msgs_s", "bytes_s"}]``, see :mod:`sprawl.gossip.load`)."""
        out = []
        for mem in sorted(self.members(), key=lambda x: x.node_id):
            meta = mem.meta
            view: dict[str, Any] = {
                "id": mem.node_id,
                "peer": meta.get("peer") or f"{mem.addr[0]}:{mem.addr[1]}",
                "http": meta.get("http", ""),
                "state": mem.state,
                "incarnation": mem.incarnation,
            }
            if "version" in meta:
                view["version"] = meta["version"]
            if meta.get("cluster"):
                view["cluster"] = meta["cluster"]  # the member's Raft cluster id
            if "protocol" in meta:
                view["protocol"] = meta["protocol"]  # [oldest, newest] peer protocol it speaks
            if "features" in meta:
                view["features"] = meta["features"]
            load = meta.get("load")
            if isinstance(load, dict):
                load = dict(load)
                view["partition_rates"] = view_rates(load.pop("parts", None))
                view["load"] = load
            else:
                view["partition_rates"] = []
            view["self"] = mem.node_id == self.node_id
            out.append(view)
        return out

    def member_states(self) -> list[dict[str, Any]]:
        """Each member's ``id`` and ``state`` and, as :meth:`member_views`
        shows them, the ``cluster``, ``protocol`` and ``features`` of its
        metadata (what says whether it belongs to this cluster): the
        controller's member states, asked ten times a second, without
        copying the members or decoding their partition rates (issue 23)."""
        if self.membership is None:
            return []
        out = []
        for node_id, state, meta in self.membership.states():
            view: dict[str, Any] = {"id": node_id, "state": state}
            if meta.get("cluster"):
                view["cluster"] = meta["cluster"]
            if "protocol" in meta:
                view["protocol"] = meta["protocol"]
            if "features" in meta:
                view["features"] = meta["features"]
            out.append(view)
        return out

    def live_member_ids(self) -> list[str]:
        """Ids of members alive or suspect (suspects still count as live)."""
        return sorted(m.node_id for m in self.members() if m.state in (ALIVE, SUSPECT))

    def state_counts(self) -> dict[str, int]:
        """How many members (this node included) are in each state."""
        counts = dict.fromkeys(STATES, 0)
        for mem in self.members():
            counts[mem.state] = counts.get(mem.state, 0) + 1
        return counts

    @property
    def stats(self) -> dict[str, int]:
        """The core's counters and the adapter's, in one dict."""
        base = dict(self.membership.stats) if self.membership is not None else dict.fromkeys(STAT_KEYS, 0)
        base.update(self.adapter_stats)
        return base

    def dropped(self) -> dict[str, int]:
        """Packets dropped, by reason (see :data:`DROP_REASONS`)."""
        s = self.stats
        return {r: s.get("dropped_" + r, 0) for r in DROP_REASONS}
