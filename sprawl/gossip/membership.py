"""The SWIM membership core, with the Lifeguard extensions.

A :class:`Membership` is one node's view of the cluster.  It never touches a
socket or a clock: the adapter feeds it datagrams (:meth:`Membership.receive`)
and the passage of time (:meth:`Membership.tick`, with ``now`` in seconds),
and sends the datagrams it returns.  Randomness comes from an injected
``random.Random``, so a seeded run is reproducible.

Protocol (after SWIM, Das et al. 2002, and hashicorp/memberlist):

* **Failure detection.**  Every probe period one member is probed, in a
  randomised round-robin order: :class:`Ping`, and if no :class:`Ack` comes
  within the probe timeout, :class:`PingReq` through ``indirect_checks``
  other members, who relay the ack (or answer :class:`Nack`).  No ack by the
  end of the period: the member becomes *suspect*.
* **Suspicion.**  A suspect that does not refute -- by gossiping an
  :class:`Alive` with a higher incarnation -- within the suspicion timeout is
  declared *dead*.  Every member that hears the suspicion runs its own timer.
* **Dissemination.**  Updates ride on every outgoing packet and on gossip
  rounds (``gossip_nodes`` random members every ``gossip_interval``), each
  transmitted ``retransmit_mult * ceil(log10(N + 1))`` times.
* **Anti-entropy.**  Full state is exchanged (:class:`PushPull`) with the seeds
  on join, with a random member every ``push_pull_interval`` (scaled up past 32
  members), and -- so a healed partition re-merges even after the other side
  was forgotten -- with a dead member or an unreachable seed every
  ``reconnect_interval`` (Serf's reconnect).
* **Graceful leave** is disseminated as *left*, which is not a failure.

Lifeguard (Dadgar et al. 2018):

* **Local health awareness**: a score in ``[0, awareness_max_multiplier)``
  that rises when this node misses acks and nacks it should have received
  (or has to refute a suspicion) and falls with every successful probe; the
  probe interval and timeout are multiplied by ``score + 1``, so a slow node
  accuses others less.
* **Dynamic suspicion timeout** (:mod:`sprawl.gossip.suspicion`): starts at
  the maximum and shrinks as independent confirmations arrive.
* **Buddy system**: a ping to a member we suspect carries the suspicion, so
  it learns of it (and refutes) at once.

Membership is keyed by ``node_id``.  A known node seen at a new address with a
higher incarnation moves there; a restarted node with a higher incarnation is
accepted as alive even if it was held dead.

Why one module of more than a thousand lines: it is one state machine.
Probing, suspicion, dissemination and anti-entropy all read and change the
same member table, incarnations and health score, in one ``tick``/``receive``
step; its self-contained parts already live apart (the wire, the messages,
the broadcast queue, the suspicion timer, the load figures).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec

from sprawl.gossip.broadcast import BroadcastQueue, retransmit_limit
from sprawl.gossip.messages import (
    STATE_ALIVE,
    STATE_DEAD,
    STATE_LEFT,
    STATE_SUSPECT,
    Ack,
    Alive,
    Dead,
    Leave,
    MemberState,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Suspect,
)
from sprawl.gossip.suspicion import Suspicion, confirmations_wanted, suspicion_timeout
from sprawl.gossip.wire import (
    ABSOLUTE_MAX_PACKET,
    DecodeError,
    assemble,
    decode_packet,
    encode_message,
    packet_overhead,
)

Address = tuple[str, int]

ALIVE = "alive"
SUSPECT = "suspect"
DEAD = "dead"
LEFT = "left"

_TO_WIRE = {ALIVE: STATE_ALIVE, SUSPECT: STATE_SUSPECT, DEAD: STATE_DEAD, LEFT: STATE_LEFT}

#: Counters every :class:`Membership` keeps (all start at zero).
STAT_KEYS = (
    "packets_sent",
    "packets_received",
    "messages_received",
    "probes_sent",
    "acks_received",
    "indirect_acks",
    "probe_failures",
    "pings_received",
    "ping_wrong_target",
    "ping_reqs_sent",
    "ping_reqs_received",
    "ping_reqs_dropped",
    "acks_relayed",
    "nacks_sent",
    "nacks_received",
    "stale_acks",
    "suspicions",
    "suspect_recovered",
    "confirmations",
    "refuted",
    "corrections_sent",
    "suspect_checks",
    "dead_declared",
    "dead_seen",
    "left_seen",
    "joins_seen",
    "updates_seen",
    "members_reaped",
    "broadcasts_queued",
    "gossip_packets",
    "push_pulls_sent",
    "push_pulls_received",
    "push_pull_retries",
    "reconnects_sent",
    "dropped_decode",
    "dropped_auth",
    "dropped_oversize",
    "dropped_version",
    "dropped_members_cap",
    "dropped_absurd",
    "push_pulls_limited",
)

_DROP_STAT = {
    "auth": "dropped_auth",
    "oversize": "dropped_oversize",
    "version": "dropped_version",
}

#: An intermediary nacks after this fraction of its probe timeout (Lifeguard),
#: so the nack reaches the requester before its probe period ends.
_NACK_FRACTION = 0.8
#: While a member is suspect, it is pinged (with the suspicion) at these
#: fractions of the minimum suspicion timeout.
_CHECK_FRACTIONS = (0.25, 0.5, 0.75)
#: Direct corrections of stale accusations: burst and sustained rate (per second).
_CORRECTION_BURST = 16
_CORRECTION_RATE = 16.0
#: Bytes a PushPull adds around its members (tag, req, flags, part numbers, array header).
_PUSH_PULL_ENVELOPE = 32
#: Bounded bookkeeping.
_MAX_RELAYS = 1024
_MAX_PP_REPLIED = 256
#: Push-pulls awaiting a complete reply, and how often one is re-asked.
_MAX_EXCHANGES = 64
_PP_RETRIES = 2
#: Chunks of one push-pull request arriving within this window get one answer.
_PP_REPLY_WINDOW = 5.0
_MAX_SEEDS = 64
#: Above this many members the push-pull interval grows (memberlist).
_PUSH_PULL_SCALE_THRESHOLD = 32
#: No node's incarnation goes past this (2**48: a bump a second for nine million
#: years); an update claiming more is absurd and dropped, far below the wire's
#: limit, so a refutation always stays within what every peer takes.
MAX_INCARNATION = 2**48
#: Sources whose push-pull replies are rate-limited at once (oldest forgotten first).
_MAX_PP_SOURCES = 4096


@dataclass
class GossipConfig:
    """Timing and limits (memberlist's LAN defaults; all times in seconds)."""

    probe_interval: float = 1.0
    probe_timeout: float = 0.5
    indirect_checks: int = 3
    suspicion_mult: int = 4
    suspicion_max_timeout_mult: int = 6
    retransmit_mult: int = 4
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    push_pull_interval: float = 30.0
    awareness_max_multiplier: int = 8
    max_packet_bytes: int = 1400
    dead_reclaim_time: float = 30.0
    cluster_key: bytes | None = None
    #: Gossip still goes to members dead for less than this (so a wrongly
    #: declared member hears of it and refutes).
    gossip_to_the_dead_time: float = 30.0
    #: How often a push-pull is tried with a dead member or an unreachable seed.
    reconnect_interval: float = 30.0
    #: Largest encoded metadata a node may carry (room for addresses, version
    #: and load figures with the hottest partitions' rates, see
    #: :mod:`sprawl.gossip.load`; with the 400 bytes of the rest of a member
    #: record it must fit ``max_packet_bytes``).
    max_meta_bytes: int = 896
    #: At most this many members are tracked (more are ignored and counted).
    max_members: int = 10_000
    #: At most this many members are learned from one packet (more are ignored and counted).
    max_new_members_per_packet: int = 64
    #: An update may move a known member's incarnation (or accuse this node) at
    #: most this far ahead of what this node knows; beyond is absurd and dropped.
    max_incarnation_jump: int = 2**32
    #: Push-pull answers per source address: a burst, then this many per second.
    push_pull_replies_burst: int = 4
    push_pull_replies_per_second: float = 1.0
    #: Push-pull answers from this node in all: a burst, then this many per second.
    push_pull_replies_total_burst: int = 256
    push_pull_replies_total_per_second: float = 64.0
    #: At most this many updates wait for dissemination.
    max_broadcasts: int = 4096

    def validate(self) -> None:
        """Raise ``ValueError`` for an inconsistent configuration."""
        if not 0 < self.probe_timeout < self.probe_interval:
            raise ValueError("need 0 < probe_timeout < probe_interval")
        for name in ("gossip_interval", "push_pull_interval", "reconnect_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.dead_reclaim_time < 0 or self.gossip_to_the_dead_time < 0:
            raise ValueError("dead_reclaim_time and gossip_to_the_dead_time must be >= 0")
        for name in (
            "suspicion_mult",
            "suspicion_max_timeout_mult",
            "retransmit_mult",
            "awareness_max_multiplier",
            "max_members",
            "max_broadcasts",
            "max_new_members_per_packet",
            "max_incarnation_jump",
            "push_pull_replies_burst",
            "push_pull_replies_total_burst",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.indirect_checks < 0 or self.gossip_nodes < 0:
            raise ValueError("indirect_checks and gossip_nodes must be >= 0")
        overhead = packet_overhead(self.cluster_key is not None)
        if not 512 <= self.max_packet_bytes <= ABSOLUTE_MAX_PACKET:
            raise ValueError("max_packet_bytes must be within [512, 65507]")
        if self.max_meta_bytes + 400 + overhead > self.max_packet_bytes:
            raise ValueError("max_meta_bytes too large for max_packet_bytes")
        if self.cluster_key is not None and len(self.cluster_key) < 16:
            raise ValueError("cluster_key must be at least 16 bytes")


def push_pull_period(push_pull_interval: float, n_members: int) -> float:
    """How often a member of a cluster of ``n_members`` starts a full-state
    exchange: ``push_pull_interval`` up to 32 members, ``ceil(log2 n - log2
    32) + 1`` times that past them (memberlist's scaling)."""
    if n_members <= _PUSH_PULL_SCALE_THRESHOLD:
        return push_pull_interval
    return push_pull_interval * (math.ceil(math.log2(n_members) - math.log2(_PUSH_PULL_SCALE_THRESHOLD)) + 1)


@dataclass
class Member:
    """One member as this node sees it."""

    node_id: str
    addr: Address
    meta: dict[str, Any]
    state: str  # "alive" | "suspect" | "dead" | "left"
    incarnation: int
    state_since: float

    def copy(self) -> Member:
        """A snapshot (metadata copied one level deep)."""
        return replace(self, meta=dict(self.meta))


@dataclass
class MemberEvent:
    """A change in this node's view.

    ``kind``: ``join`` (first seen), ``alive`` (back from suspect/dead/left),
    ``suspect``, ``dead``, ``left``, ``update`` (address or metadata changed)
    or ``refuted`` (this node refuted a suspicion about itself; ``member`` is
    this node).
    """

    kind: str
    member: Member


@dataclass
class Output:
    """What a call asks the adapter to do: send datagrams, report events."""

    datagrams: list[tuple[Address, bytes]] = field(default_factory=list)
    events: list[MemberEvent] = field(default_factory=list)


@dataclass(slots=True)
class _Probe:
    target: str
    seq: int
    start: float
    direct_deadline: float
    end: float
    indirect: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(slots=True)
class _Exchange:
    """A push-pull we started, waiting for every chunk of the reply."""

    addr: Address
    join: bool
    deadline: float
    attempts: int
    parts: int = 0  # 0: no reply chunk yet
    got: set[int] = field(default_factory=set)


@dataclass(slots=True)
class _Relay:
    requester: Address
    seq: int
    nack_at: float | None  # None: no nack wanted, or already sent
    deadline: float  # forget the relay (late acks are no longer forwarded)


def _addr(a: Iterable[Any]) -> Address:
    """(host, port) from an address tuple (IPv6 4-tuples keep their first two)."""
    host, port = tuple(a)[:2]
    return (str(host), int(port))


class Membership:
    """One node's SWIM/Lifeguard membership state machine (see the module doc).

    Public state: :attr:`incarnation`, :attr:`stats` (counters, see
    :data:`STAT_KEYS`), :attr:`joined`, :attr:`awareness`.
    """

    def __init__(
        self,
        node_id: str,
        addr: Address,
        meta: dict[str, Any],
        config: GossipConfig,
        rng: random.Random,
        now: float,
        incarnation: int = 0,
    ):
        config.validate()
        self.node_id = node_id
        self.addr = _addr(addr)
        self.config = config
        self.rng = rng
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self.joined = False
        self.awareness = 0
        self._left = False
        if not 0 <= incarnation <= MAX_INCARNATION:
            raise ValueError(f"incarnation must be within [0, {MAX_INCARNATION}]")
        self._self = Member(node_id, self.addr, {}, ALIVE, incarnation, now)
        self._self.meta = self._normalised_meta(Alive(incarnation, node_id, self.addr, dict(meta)))
        self._members: dict[str, Member] = {node_id: self._self}
        self._probe_order: list[str] = []  # every member but this one
        self._probe_index = 0
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._suspicions: dict[str, Suspicion] = {}
        self._broadcasts = BroadcastQueue(max_items=config.max_broadcasts)
        self._seq = rng.getrandbits(32)
        self._seeds: list[Address] = []
        self._pp_replied: dict[tuple[Address, int], float] = {}
        self._exchanges: dict[int, _Exchange] = {}
        self._overhead = packet_overhead(config.cluster_key is not None)
        #: Members that went dead or left since the reaper last looked (some
        #: may be back): the reaper walks these, not the whole table.
        self._gone: dict[str, None] = {}
        self._out = Output()
        self._tokens = float(_CORRECTION_BURST)
        self._tokens_at = now
        #: Push-pull reply token buckets: per source address, and all of them.
        self._pp_buckets: dict[Address, tuple[float, float]] = {}
        self._pp_total = (float(config.push_pull_replies_total_burst), now)
        self._learned = 0  # members learned from the packet being handled
        self._next_probe_at = now + rng.uniform(0, config.probe_interval)
        self._next_gossip_at = now + rng.uniform(0, config.gossip_interval)
        self._next_push_pull_at = now + rng.uniform(0.5, 1.0) * config.push_pull_interval
        self._next_reconnect_at = now + rng.uniform(0.5, 1.0) * config.reconnect_interval
        self._next_reap_at = now + config.probe_interval
        self._broadcast(node_id, self._alive_msg())

    # ------------------------------------------------------------------ API

    @property
    def incarnation(self) -> int:
        """This node's current incarnation number."""
        return self._self.incarnation

    @property
    def meta(self) -> dict[str, Any]:
        """This node's metadata (a copy)."""
        return dict(self._self.meta)

    @property
    def left(self) -> bool:
        """True once :meth:`leave` was called."""
        return self._left

    def join(self, seeds: list[Address], now: float) -> Output:
        """Exchange full state with each seed (other than this node).

        Remembers the seeds: while one is not a live member, a reconnect
        push-pull is sent to it every ``reconnect_interval``.  May be called
        again to retry.
        """
        fresh = [_addr(s) for s in seeds]
        for s in fresh:
            if s != self.addr and s not in self._seeds and len(self._seeds) < _MAX_SEEDS:
                self._seeds.append(s)
        for s in dict.fromkeys(fresh):
            if s != self.addr:
                self._send_push_pull(s, now, join=True)
        # A seed answering a join storm knows only the nodes that joined before
        # us; one follow-up exchange with a random member soon after fills the
        # gaps that retransmit-limited gossip may leave.
        follow_up = now + self.rng.uniform(2.0, 4.0) * self.config.probe_interval
        self._next_push_pull_at = min(self._next_push_pull_at, follow_up)
        return self._flush()

    def leave(self, now: float) -> Output:
        """Leave gracefully: stop probing and tell the cluster (``left``, not
        ``dead``).  The returned datagrams carry the leave to several members
        at once; keep ticking a little to gossip it further."""
        if self._left:
            return self._flush()
        self._left = True
        self._probe = None
        self._self.state = LEFT
        self._self.state_since = now
        self._broadcast(self.node_id, Leave(self.incarnation, self.node_id))
        limit = self._limit()
        targets = self._random_members(limit, lambda m: m.state in (ALIVE, SUSPECT))
        budget = self.config.max_packet_bytes - self._overhead
        for m in targets:
            parts = self._broadcasts.take(budget, limit)
            if not parts:
                break
            self._emit_packet(m.addr, parts)
        return self._flush()

    def set_meta(self, meta: dict[str, Any]) -> None:
        """Replace this node's metadata; bumps the incarnation and disseminates
        (not after :meth:`leave`).

        Raises ``ValueError`` if it would not fit on the wire.
        """
        candidate = Alive(self.incarnation + 1, self.node_id, self.addr, dict(meta))
        self._self.meta = self._normalised_meta(candidate)
        if self._left:
            return  # an Alive now would undo the leave
        self._self.incarnation += 1
        self._broadcast(self.node_id, self._alive_msg())

    def members(self) -> list[Member]:
        """Snapshots of every known member, this node included."""
        return [m.copy() for m in self._members.values()]

    def states(self) -> list[tuple[str, str, dict[str, Any]]]:
        """``(node id, state, metadata)`` of every known member, this node
        included, without copies (cheap enough to ask ten times a second;
        the metadata is the member's own: read it, never change it)."""
        return [(m.node_id, m.state, m.meta) for m in self._members.values()]

    def member(self, node_id: str) -> Member | None:
        """A snapshot of one member, or None."""
        m = self._members.get(node_id)
        return m.copy() if m is not None else None

    def tick(self, now: float) -> Output:
        """Advance timers: relayed probes, this node's probe, suspicion
        timeouts, gossip, push-pull, reconnect and reaping.  Call often (every
        0.1 s, or at :meth:`next_deadline`); it does only what is due."""
        self._expire_relays(now)
        self._expire_exchanges(now)
        self._tick_probe(now)
        self._expire_suspicions(now)
        self._tick_gossip(now)
        self._tick_push_pull(now)
        self._tick_reconnect(now)
        self._tick_reap(now)
        return self._flush()

    def receive(self, src: Address, data: bytes, now: float) -> Output:
        """Handle one datagram from ``src``.  Malformed or unauthenticated
        packets are counted (``dropped_*``) and dropped; this never raises."""
        try:
            messages = decode_packet(data, self.config.cluster_key, self.config.max_packet_bytes)
        except DecodeError as e:
            self.stats[_DROP_STAT.get(e.reason, "dropped_decode")] += 1
            return self._flush()
        src = _addr(src)
        self.stats["packets_received"] += 1
        self._learned = 0
        for msg in messages:
            self.stats["messages_received"] += 1
            self._handle(src, msg, now)
        return self._flush()

    def next_deadline(self) -> float:
        """The earliest time :meth:`tick` has work (it may be in the past)."""
        t = min(self._next_push_pull_at, self._next_reconnect_at)
        if not self._left:
            t = min(t, self._next_probe_at)
        p = self._probe
        if p is not None:
            t = min(t, p.end if p.indirect else p.direct_deadline)
        if self._broadcasts:
            t = min(t, self._next_gossip_at)
        if self._gone:
            t = min(t, self._next_reap_at)
        for r in self._relays.values():
            t = min(t, r.deadline if r.nack_at is None else r.nack_at)
        for ex in self._exchanges.values():
            t = min(t, ex.deadline)
        for s in self._suspicions.values():
            t = min(t, s.deadline, s.checks[0]) if s.checks else min(t, s.deadline)
        return t

    def probe_eta(self, node_id: str, now: float) -> float | None:
        """Latest time this node will *start* a probe of ``node_id`` if the
        membership and this node's health stay as they are (None if it will
        not probe it).  Used to compute detection bounds in tests."""
        m = self._members.get(node_id)
        if self._left or m is None or node_id == self.node_id or m.state not in (ALIVE, SUSPECT):
            return None
        if self._probe is not None and self._probe.target == node_id:
            return self._probe.start
        period = self.config.probe_interval * self.multiplier
        order = self._probe_order
        probeable = [self._members[n].state in (ALIVE, SUSPECT) for n in order]
        pos = order.index(node_id)
        start = max(now, self._next_probe_at)
        if self._probe is not None:
            start = max(start, self._probe.end)
        if pos >= self._probe_index:
            steps = sum(probeable[self._probe_index : pos])
        else:
            # already probed this round: worst case it comes last after the reshuffle
            steps = sum(probeable[self._probe_index :]) + sum(probeable) - 1
        return start + steps * period

    @property
    def multiplier(self) -> int:
        """Lifeguard's local health multiplier (1 = healthy)."""
        return self.awareness + 1

    def suspicion_bounds(self, n_members: int | None = None) -> tuple[float, float]:
        """(min, max) suspicion timeout for a cluster of ``n_members`` (default: current)."""
        n = len(self._members) if n_members is None else n_members
        lo = suspicion_timeout(self.config.suspicion_mult, n, self.config.probe_interval)
        return lo, lo * self.config.suspicion_max_timeout_mult

    def retransmit_limit(self) -> int:
        """Transmissions per update at the current cluster size."""
        return self._limit()

    # ------------------------------------------------------------ internals

    def _flush(self) -> Output:
        out, self._out = self._out, Output()
        return out

    def _emit(self, kind: str, m: Member) -> None:
        self._out.events.append(MemberEvent(kind, m.copy()))

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFFFFFFFFFFFFFF
        return self._seq

    def _limit(self) -> int:
        return retransmit_limit(self.config.retransmit_mult, len(self._members))

    def _alive_msg(self) -> Alive:
        s = self._self
        return Alive(s.incarnation, s.node_id, s.addr, s.meta)

    def _normalised_meta(self, msg: Alive) -> dict[str, Any]:
        """Check that ``msg`` (this node's Alive) passes peers' decoders and
        return its metadata as peers will see it (tuples become lists, ...),
        so our own update echoed back compares equal."""
        try:
            decoded = msgspec.msgpack.decode(encode_message(msg), type=Alive)
        except (msgspec.EncodeError, msgspec.ValidationError, TypeError, ValueError, RecursionError) as e:
            raise ValueError(f"node id, address or metadata not encodable: {e}") from None
        meta_size = len(msgspec.msgpack.encode(msg.meta))
        if meta_size > self.config.max_meta_bytes:
            raise ValueError(
                f"metadata is {meta_size} bytes, over max_meta_bytes={self.config.max_meta_bytes}"
            )
        return dict(decoded.meta)

    def _broadcast(self, key: str, msg: Message) -> None:
        self._broadcasts.queue(key, encode_message(msg))
        self.stats["broadcasts_queued"] += 1

    def _send(self, addr: Address, messages: list[Message], piggyback: bool = True) -> None:
        parts = [encode_message(m) for m in messages]
        if piggyback:
            budget = self.config.max_packet_bytes - self._overhead - sum(map(len, parts))
            parts += self._broadcasts.take(budget, self._limit())
        self._emit_packet(addr, parts)

    def _emit_packet(self, addr: Address, parts: list[bytes]) -> None:
        self._out.datagrams.append((addr, assemble(parts, self.config.cluster_key)))
        self.stats["packets_sent"] += 1

    def _random_members(
        self, k: int, pred: Callable[[Member], bool], exclude: frozenset[str] = frozenset()
    ) -> list[Member]:
        """Up to ``k`` distinct random members (never this node) satisfying ``pred``."""
        order = self._probe_order
        n = len(order)
        if k <= 0 or n == 0:
            return []
        picked: list[Member] = []
        seen: set[str] = set()
        for _ in range(3 * n):
            if len(picked) >= k or len(seen) >= n:
                break
            nid = order[self.rng.randrange(n)]
            if nid in seen:
                continue
            seen.add(nid)
            m = self._members[nid]
            if nid not in exclude and pred(m):
                picked.append(m)
        if len(picked) < k and len(seen) < n:
            rest = [
                self._members[nid]
                for nid in order
                if nid not in seen and nid not in exclude and pred(self._members[nid])
            ]
            want = k - len(picked)
            picked.extend(rest if len(rest) <= want else self.rng.sample(rest, want))
        return picked

    def _add_member(self, m: Member) -> None:
        self._members[m.node_id] = m
        order = self._probe_order
        order.append(m.node_id)
        j = self.rng.randrange(len(order))
        order[-1], order[j] = order[j], order[-1]

    def _forget(self, node_id: str) -> None:
        del self._members[node_id]
        pos = self._probe_order.index(node_id)
        del self._probe_order[pos]
        if pos < self._probe_index:
            self._probe_index -= 1
        self._suspicions.pop(node_id, None)
        if self._probe is not None and self._probe.target == node_id:
            self._probe = None
        self.stats["members_reaped"] += 1

    # ------------------------------------------------------------- dispatch

    def _absurd(self, node_id: str, incarnation: int) -> bool:
        """Whether an update claims an incarnation no node could have: past
        :data:`MAX_INCARNATION`, or (about this node, or a member it knows) more
        than ``max_incarnation_jump`` beyond what this node knows.  Counted."""
        if node_id == self.node_id:
            known: int | None = self.incarnation
            ceiling = MAX_INCARNATION - 1  # so that a refutation stays within bounds
        else:
            m = self._members.get(node_id)
            known = m.incarnation if m is not None else None
            ceiling = MAX_INCARNATION
        jump = self.config.max_incarnation_jump
        if incarnation > ceiling or (known is not None and incarnation > known + jump):
            self.stats["dropped_absurd"] += 1
            return True
        return False

    def _handle(self, src: Address, msg: Message, now: float) -> None:
        if isinstance(msg, Alive | Suspect | Dead | Leave) and self._absurd(msg.node_id, msg.incarnation):
            return
        if isinstance(msg, Ping):
            self._on_ping(src, msg)
        elif isinstance(msg, Ack):
            self._on_ack(msg)
        elif isinstance(msg, Nack):
            p = self._probe
            if p is not None and p.seq == msg.seq and p.indirect:
                p.nacks += 1
                self.stats["nacks_received"] += 1
        elif isinstance(msg, PingReq):
            self._on_ping_req(src, msg, now)
        elif isinstance(msg, Alive):
            self._on_alive(msg, now)
        elif isinstance(msg, Suspect):
            self._on_suspect(msg, now, src)
        elif isinstance(msg, Dead):
            left = msg.from_id == msg.node_id
            self._on_dead(msg.node_id, msg.incarnation, msg.from_id, now, left=left, src=src)
        elif isinstance(msg, Leave):
            self._on_dead(msg.node_id, msg.incarnation, msg.node_id, now, left=True, src=src)
        elif isinstance(msg, PushPull):
            self._on_push_pull(src, msg, now)

    def _on_ping(self, src: Address, msg: Ping) -> None:
        self.stats["pings_received"] += 1
        if msg.target and msg.target != self.node_id:
            self.stats["ping_wrong_target"] += 1
            return
        reply: list[Message] = [Ack(msg.seq, self.node_id)]
        # A pinger we hold suspect or dead is told so directly, so it can refute.
        sender = self._members.get(msg.source) if msg.source else None
        if sender is not None and sender is not self._self:
            if sender.state == SUSPECT:
                reply.append(Suspect(sender.incarnation, sender.node_id, self.node_id))
            elif sender.state == DEAD:
                reply.append(Dead(sender.incarnation, sender.node_id, self.node_id))
        self._send(src, reply)

    def _on_ack(self, msg: Ack) -> None:
        p = self._probe
        if p is not None and msg.seq == p.seq:
            self.stats["acks_received"] += 1
            if p.indirect:
                self.stats["indirect_acks"] += 1
            self.joined = True
            self._apply_awareness(-1)
            self._probe = None
            return
        relay = self._relays.pop(msg.seq, None)
        if relay is not None:
            self.stats["acks_relayed"] += 1
            self._send(relay.requester, [Ack(relay.seq, self.node_id)])
            return
        self.stats["stale_acks"] += 1

    def _on_ping_req(self, src: Address, msg: PingReq, now: float) -> None:
        self.stats["ping_reqs_received"] += 1
        if len(self._relays) >= _MAX_RELAYS or msg.target == self.node_id:
            self.stats["ping_reqs_dropped"] += 1
            return
        seq = self._next_seq()
        timeout = self.config.probe_timeout
        nack_at = now + _NACK_FRACTION * timeout if msg.nack else None
        self._relays[seq] = _Relay(src, msg.seq, nack_at, now + timeout)
        self._send(_addr(msg.target_addr), [Ping(seq, msg.target, self.node_id)])

    def _on_alive(self, a: Alive, now: float) -> None:
        addr = _addr(a.addr)
        if a.node_id == self.node_id:
            if self._left or a.incarnation < self.incarnation:
                return
            if a.incarnation == self.incarnation and addr == self.addr and a.meta == self._self.meta:
                return  # our own update, gossiped back
            self._refute(a.incarnation)
            return
        m = self._members.get(a.node_id)
        if m is None:
            if (
                len(self._members) >= self.config.max_members
                or self._learned >= self.config.max_new_members_per_packet
            ):
                self.stats["dropped_members_cap"] += 1
                return
            self._learned += 1
            m = Member(a.node_id, addr, dict(a.meta), ALIVE, a.incarnation, now)
            self._add_member(m)
            self.stats["joins_seen"] += 1
            self._emit("join", m)
            self._broadcast(a.node_id, a)
            return
        if a.incarnation <= m.incarnation:
            return
        changed = m.addr != addr or m.meta != a.meta
        old_state = m.state
        self._suspicions.pop(a.node_id, None)
        m.incarnation = a.incarnation
        m.addr = addr
        m.meta = dict(a.meta)
        if old_state != ALIVE:
            m.state = ALIVE
            m.state_since = now
            if old_state == SUSPECT:
                self.stats["suspect_recovered"] += 1
            self._emit("alive", m)
        elif changed:
            self.stats["updates_seen"] += 1
            self._emit("update", m)
        self._broadcast(a.node_id, a)

    def _on_suspect(self, s: Suspect, now: float, src: Address | None = None) -> None:
        if s.node_id == self.node_id:
            if not self._left:
                if s.incarnation >= self.incarnation:
                    self._refute(s.incarnation)
                if src is not None:
                    self._correct(src, self._self, now)
            return
        m = self._members.get(s.node_id)
        if m is None:
            return
        if s.incarnation < m.incarnation:
            if src is not None and m.state == ALIVE:
                self._correct(src, m, now)
            return
        timer = self._suspicions.get(s.node_id)
        if timer is not None:
            if timer.confirm(s.from_id):
                self.stats["confirmations"] += 1
                self._broadcast(s.node_id, s)
            return
        if m.state != ALIVE:
            return
        self._broadcast(s.node_id, s)
        m.incarnation = s.incarnation
        m.state = SUSPECT
        m.state_since = now
        n = len(self._members)
        lo, hi = self.suspicion_bounds(n)
        k = confirmations_wanted(self.config.suspicion_mult, n)
        timer = Suspicion(s.from_id, s.incarnation, k, lo, hi, now)
        timer.checks = [now + f * lo for f in _CHECK_FRACTIONS]
        self._suspicions[s.node_id] = timer
        self.stats["suspicions"] += 1
        self._emit("suspect", m)

    def _on_dead(
        self, node_id: str, incarnation: int, from_id: str, now: float, left: bool, src: Address | None = None
    ) -> None:
        if node_id == self.node_id:
            if not self._left:
                if incarnation >= self.incarnation:
                    self._refute(incarnation)
                if src is not None:
                    self._correct(src, self._self, now)
            return
        m = self._members.get(node_id)
        if m is None:
            return
        if incarnation < m.incarnation:
            if src is not None and m.state == ALIVE and not left:
                self._correct(src, m, now)
            return
        self._suspicions.pop(node_id, None)
        if m.state == LEFT or (m.state == DEAD and not left):
            return
        # (a leave also upgrades a "dead" record: the node left, it did not fail)
        msg: Message = Leave(incarnation, node_id) if left else Dead(incarnation, node_id, from_id)
        self._broadcast(node_id, msg)
        m.incarnation = incarnation
        m.state = LEFT if left else DEAD
        m.state_since = now
        self._gone[node_id] = None
        self.stats["left_seen" if left else "dead_seen"] += 1
        self._emit(m.state, m)

    def _correct(self, dst: Address, m: Member, now: float) -> None:
        """Send ``dst``, which just gossiped a stale accusation, the newer
        Alive of ``m`` directly (rate-limited).  This catches members that
        missed a refutation before their suspicion timer runs out."""
        self._tokens = min(_CORRECTION_BURST, self._tokens + (now - self._tokens_at) * _CORRECTION_RATE)
        self._tokens_at = now
        if self._tokens < 1:
            return
        self._tokens -= 1
        self.stats["corrections_sent"] += 1
        self._send(dst, [Alive(m.incarnation, m.node_id, m.addr, m.meta)])

    def _refute(self, accused: int) -> None:
        # Just above the accusation (or our own): never higher than needed.
        # (_absurd kept ``accused`` below MAX_INCARNATION.)
        inc = min(max(self.incarnation + 1, accused + 1), MAX_INCARNATION)
        self._self.incarnation = inc
        self._apply_awareness(1)
        self.stats["refuted"] += 1
        self._broadcast(self.node_id, self._alive_msg())
        self._emit("refuted", self._self)

    def _apply_awareness(self, delta: int) -> None:
        top = self.config.awareness_max_multiplier - 1
        self.awareness = min(top, max(0, self.awareness + delta))

    # --------------------------------------------------------------- probing

    def _tick_probe(self, now: float) -> None:
        p = self._probe
        if p is not None:
            target = self._members.get(p.target)
            if target is None or target.state in (DEAD, LEFT):
                self._probe = p = None
            else:
                if not p.indirect and now >= p.direct_deadline:
                    if now >= p.end:  # ticked late: give the indirect phase its full time
                        p.end = now + (p.end - p.direct_deadline)
                    self._start_indirect(p, target, now)
                if now >= p.end:
                    self._probe_failed(p, target, now)
                    self._probe = p = None
        if p is None and not self._left and now >= self._next_probe_at:
            self._start_probe(now)

    def _pick_probe_target(self) -> Member | None:
        order = self._probe_order
        for _ in range(2 * len(order) + 2):
            if self._probe_index >= len(order):
                self.rng.shuffle(order)
                self._probe_index = 0
                if not order:
                    return None
            m = self._members[order[self._probe_index]]
            self._probe_index += 1
            if m.state in (ALIVE, SUSPECT):
                return m
        return None

    def _start_probe(self, now: float) -> None:
        mult = self.multiplier
        self._next_probe_at = now + self.config.probe_interval * mult
        target = self._pick_probe_target()
        if target is None:
            return
        seq = self._next_seq()
        self._probe = _Probe(
            target.node_id,
            seq,
            now,
            now + self.config.probe_timeout * mult,
            now + self.config.probe_interval * mult,
        )
        msgs: list[Message] = [Ping(seq, target.node_id, self.node_id)]
        if target.state == SUSPECT:  # buddy system: tell it directly
            msgs.append(Suspect(target.incarnation, target.node_id, self.node_id))
        self.stats["probes_sent"] += 1
        self._send(target.addr, msgs)

    def _start_indirect(self, p: _Probe, target: Member, now: float) -> None:
        p.indirect = True
        # The intermediaries need a probe timeout of their own, and their nacks
        # a moment to come back: never end the probe before that.
        p.end = max(p.end, now + self.config.probe_timeout * self.multiplier)
        peers = self._random_members(
            self.config.indirect_checks, lambda m: m.state == ALIVE, frozenset((target.node_id,))
        )
        p.expected_nacks = len(peers)
        req = PingReq(p.seq, target.node_id, target.addr, self.node_id, True)
        for peer in peers:
            self.stats["ping_reqs_sent"] += 1
            self._send(peer.addr, [req])

    def _probe_failed(self, p: _Probe, target: Member, now: float) -> None:
        self.stats["probe_failures"] += 1
        # Lifeguard: missing nacks mean *we* may be the problem.
        if p.expected_nacks > 0:
            self._apply_awareness(max(0, p.expected_nacks - p.nacks))
        else:
            self._apply_awareness(1)
        self._on_suspect(Suspect(target.incarnation, target.node_id, self.node_id), now)

    def _expire_relays(self, now: float) -> None:
        if not self._relays:
            return
        for seq, relay in list(self._relays.items()):
            if relay.nack_at is not None and now >= relay.nack_at:
                relay.nack_at = None
                self.stats["nacks_sent"] += 1
                self._send(relay.requester, [Nack(relay.seq)])
            if now >= relay.deadline:
                del self._relays[seq]

    def _expire_suspicions(self, now: float) -> None:
        if not self._suspicions:
            return
        for node_id, timer in self._suspicions.items():
            if timer.checks and now >= timer.checks[0]:
                # Tell the suspect directly (buddy system), a few times during
                # the timeout: it refutes, or re-sends a refutation we missed.
                del timer.checks[0]
                m = self._members[node_id]
                self.stats["suspect_checks"] += 1
                ping = Ping(self._next_seq(), node_id, self.node_id)
                self._send(m.addr, [ping, Suspect(m.incarnation, node_id, self.node_id)])
        for node_id in [n for n, s in self._suspicions.items() if s.expired(now)]:
            self._suspicions.pop(node_id)
            member = self._members.get(node_id)
            if member is not None and member.state == SUSPECT:
                self.stats["dead_declared"] += 1
                self._on_dead(node_id, member.incarnation, self.node_id, now, left=False)

    # ---------------------------------------------------- gossip, push-pull

    def _tick_gossip(self, now: float) -> None:
        if now < self._next_gossip_at:
            return
        self._next_gossip_at = now + self.config.gossip_interval
        if not self._broadcasts:
            return
        ttd = self.config.gossip_to_the_dead_time

        def eligible(m: Member) -> bool:
            return m.state in (ALIVE, SUSPECT) or (m.state == DEAD and now - m.state_since < ttd)

        budget = self.config.max_packet_bytes - self._overhead
        limit = self._limit()
        for m in self._random_members(self.config.gossip_nodes, eligible):
            parts = self._broadcasts.take(budget, limit)
            if not parts:
                break
            self.stats["gossip_packets"] += 1
            self._emit_packet(m.addr, parts)

    def _push_pull_period(self) -> float:
        return push_pull_period(self.config.push_pull_interval, len(self._members))

    def _tick_push_pull(self, now: float) -> None:
        if now < self._next_push_pull_at:
            return
        self._next_push_pull_at = now + self._push_pull_period()
        if self._left:
            return
        peers = self._random_members(1, lambda m: m.state == ALIVE)
        if peers:
            self._send_push_pull(peers[0].addr, now, join=False)

    def _tick_reconnect(self, now: float) -> None:
        if now < self._next_reconnect_at:
            return
        self._next_reconnect_at = now + self.config.reconnect_interval
        if self._left:
            return
        live = {m.addr for m in self._members.values() if m.state in (ALIVE, SUSPECT)}
        candidates = [m.addr for m in self._members.values() if m.state == DEAD]
        candidates += [s for s in self._seeds if s not in live]
        if candidates:
            self.stats["reconnects_sent"] += 1
            self._send_push_pull(self.rng.choice(candidates), now, join=not self.joined)

    def _tick_reap(self, now: float) -> None:
        if now < self._next_reap_at:
            return
        self._next_reap_at = now + self.config.probe_interval
        if not self._gone:
            return
        keep = self.config.dead_reclaim_time
        for node_id in list(self._gone):
            m = self._members.get(node_id)
            if m is None or m.state not in (DEAD, LEFT):
                del self._gone[node_id]  # forgotten, or back
            elif now - m.state_since >= keep:
                del self._gone[node_id]
                self._forget(node_id)

    def _state_chunks(self, req: int, join: bool, reply: bool) -> list[bytes]:
        """This node's full state as encoded PushPull messages, each fitting a packet."""
        budget = self.config.max_packet_bytes - self._overhead - _PUSH_PULL_ENVELOPE
        batches: list[list[MemberState]] = [[]]
        used = 0
        for m in self._members.values():  # this node first: insertion order
            st = MemberState(m.node_id, m.addr, m.meta, _TO_WIRE[m.state], m.incarnation)
            size = len(encode_message(st))
            if batches[-1] and used + size > budget:
                batches.append([])
                used = 0
            batches[-1].append(st)
            used += size
        n = len(batches)
        return [encode_message(PushPull(req, join, reply, i, n, b)) for i, b in enumerate(batches)]

    def _send_push_pull(
        self,
        addr: Address,
        now: float,
        join: bool,
        reply: bool = False,
        req: int | None = None,
        attempts: int = 0,
    ) -> None:
        if req is None:
            req = self._next_seq()
        if not reply:
            self._exchanges[req] = _Exchange(addr, join, now + 2 * self.config.probe_interval, attempts)
            if len(self._exchanges) > _MAX_EXCHANGES:
                del self._exchanges[next(iter(self._exchanges))]
        self.stats["push_pulls_sent"] += 1
        for chunk in self._state_chunks(req, join, reply):
            self._emit_packet(addr, [chunk])

    def _expire_exchanges(self, now: float) -> None:
        """Re-ask (a bounded number of times) when a push-pull reply stayed
        incomplete: over UDP, chunks get lost."""
        if not self._exchanges:
            return
        for req, ex in list(self._exchanges.items()):
            if now < ex.deadline:
                continue
            del self._exchanges[req]
            if ex.attempts < _PP_RETRIES and not self._left:
                self.stats["push_pull_retries"] += 1
                self._send_push_pull(ex.addr, now, ex.join, attempts=ex.attempts + 1)

    def _on_push_pull(self, src: Address, msg: PushPull, now: float) -> None:
        if src == self.addr:
            return
        self.stats["push_pulls_received"] += 1
        refuted_before = self.stats["refuted"]
        for ms in msg.members:
            if self._absurd(ms.node_id, ms.incarnation):
                continue
            if ms.state == STATE_ALIVE:
                self._on_alive(Alive(ms.incarnation, ms.node_id, ms.addr, ms.meta), now)
            elif ms.state == STATE_LEFT:
                self._on_dead(ms.node_id, ms.incarnation, ms.node_id, now, left=True)
            else:
                # Someone else's "dead" may be stale: suspect, do not bury.
                self._on_suspect(Suspect(ms.incarnation, ms.node_id, self.node_id), now)
        if len(self._members) > 1:
            self.joined = True
        if msg.reply:
            ex = self._exchanges.get(msg.req)
            if ex is not None and ex.addr == src and msg.part < msg.parts:
                ex.parts = msg.parts
                ex.got.add(msg.part)
                if len(ex.got) >= ex.parts:
                    del self._exchanges[msg.req]
            if self.stats["refuted"] != refuted_before:
                # The peer holds us suspect/dead: tell it at once that we live.
                self._send(src, [self._alive_msg()])
        else:
            # A request arrives in several chunks: answer it once.
            key = (src, msg.req)
            seen = self._pp_replied.get(key)
            if seen is None or now - seen > _PP_REPLY_WINDOW:
                if not self._may_reply(src, now):
                    self.stats["push_pulls_limited"] += 1
                    return
                self._pp_replied.pop(key, None)
                self._pp_replied[key] = now
                if len(self._pp_replied) > _MAX_PP_REPLIED:
                    del self._pp_replied[next(iter(self._pp_replied))]
                self._send_push_pull(src, now, join=msg.join, reply=True, req=msg.req)

    def _may_reply(self, src: Address, now: float) -> bool:
        """Take a push-pull reply token for ``src`` (and from the node's total):
        a full-state answer is many packets, so a stream of requests -- a new
        ``req`` each, or replayed from a spoofed source -- gets a few answers a
        second, not one per request."""
        c = self.config
        total, t0 = self._pp_total
        total = min(
            float(c.push_pull_replies_total_burst), total + (now - t0) * c.push_pull_replies_total_per_second
        )
        tokens, t1 = self._pp_buckets.pop(src, (float(c.push_pull_replies_burst), now))
        tokens = min(float(c.push_pull_replies_burst), tokens + (now - t1) * c.push_pull_replies_per_second)
        ok = tokens >= 1 and total >= 1
        if ok:
            tokens -= 1
            total -= 1
        self._pp_total = (total, now)
        self._pp_buckets[src] = (tokens, now)  # (re)inserted last: the oldest go first
        if len(self._pp_buckets) > _MAX_PP_SOURCES:
            del self._pp_buckets[next(iter(self._pp_buckets))]
        return ok
