"""Faults named: what is wrong with a cluster, from what one node observes.  Pure.

A node's observer (:mod:`sprawl.cluster.fault_watch`) fills an
:class:`Observation` -- the gossip state of every member and what a probe of
its peer port found, the Raft voters and leader, the partitions this node
knows (and, for those it leads, each follower's position), this node's disk
use -- and :meth:`Diagnosis.diagnose` turns it into :class:`Fault` s, each
with a stable ``code``, a severity, the node at fault, the partitions it
touches and the operator's likely next step:

=============================  =========  ==============================================
code                           severity   when
=============================  =========  ==============================================
``node_down``                  critical   the node's peer port refuses connections (the
                                          process is gone: killed, crashed), whether or not
                                          gossip has noticed yet
``node_unresponsive``          critical   gossip lost the node, its port accepts connections
                                          but the process says nothing (SIGSTOP, hung)
``node_unreachable``           critical   gossip lost the node, its port cannot be reached
                                          (host down, network partition) or was not probed yet
``raft_no_quorum``             critical   fewer Raft voters alive than a majority
``raft_no_leader``             error      a majority is alive but no leader is known
``disk_budget_exceeded``       critical   a node's LMDB uses more than its hard limit (507s)
``partition_without_leader``   error      a partition's leader is unknown or lost
``partition_under_replicated`` error      a partition led here has fewer in-sync replicas
                                          than it wants
``follower_lagging``           warning    a follower has not reached the high watermark the
                                          leader had :attr:`Diagnosis.lag_window_ms` ago
``peer_version_incompatible``  error      a member's peer protocol range and this node's
                                          do not overlap: the two refuse each other
``node_drained``               warning    the operator drained a node (``sprawlctl cluster
                                          drain``): it takes no new replica or leadership;
                                          says how many leaderships it still holds
=============================  =========  ==============================================

The only state kept between calls is the follower positions' history
(:class:`LagWatch`), bounded by the partitions and followers observed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: Severities, worst first.
SEVERITIES = ("critical", "error", "warning")

#: Gossip states in which a member counts as lost.
LOST = ("suspect", "dead")

#: What the probe of a member's peer port found.
REACH = ("answers", "refused", "silent", "unreachable", "unknown")


@dataclass(frozen=True)
class MemberObs:
    """One gossip member, as this node sees it."""

    node_id: str
    #: The gossip state: ``alive``, ``suspect``, ``dead`` or ``left``.
    state: str
    #: What this node's probe of the member's peer port found (:data:`REACH`):
    #: ``answers`` (the handshake started), ``refused`` (nothing listens),
    #: ``silent`` (a connection was accepted, nothing came), ``unreachable``
    #: (the connection attempt timed out or failed otherwise), ``unknown`` (not probed).
    reach: str = "unknown"
    #: The member gossips that its disk budget is exceeded.
    disk_over: bool = False
    #: The member's peer protocol range ``(min, max)``, or None when it does not say.
    protocol: tuple[int, int] | None = None


@dataclass(frozen=True)
class PartitionObs:
    """One partition of the cluster's placement, as this node knows it."""

    topic: str
    partition: int
    replicas: tuple[str, ...]
    #: The leader the metadata names ("" or None: none).
    leader: str | None
    #: Only for partitions this node leads: replicas holding every committed record.
    in_sync: tuple[str, ...] | None = None
    #: Only for partitions this node leads: how many replicas it should have.
    wanted: int = 0
    #: Only for partitions this node leads: the high watermark and each follower's match.
    high_watermark: int = 0
    followers: tuple[tuple[str, int], ...] = ()

    @property
    def name(self) -> str:
        """``topic/partition``."""
        return f"{self.topic}/{self.partition}"


@dataclass(frozen=True)
class RaftObs:
    """The Raft configuration this node applied."""

    voters: tuple[str, ...]
    leader: str | None


@dataclass(frozen=True)
class DiskObs:
    """This node's LMDB use and the limit past which publishes are refused."""

    used: int
    limit: int


@dataclass(frozen=True)
class Observation:
    """Everything one node observed at ``now_ms``."""

    node_id: str
    now_ms: int
    members: tuple[MemberObs, ...] = ()
    #: None for a lone node (no Raft).
    raft: RaftObs | None = None
    #: The partitions it knows.  An observer may leave out those that touch no
    #: node of interest (none of their replicas lost or past its disk budget),
    #: have a leader and are not led here: they change no fault.
    partitions: tuple[PartitionObs, ...] = ()
    disk: DiskObs | None = None
    #: This node's peer protocol range ``(min, max)``.
    protocol: tuple[int, int] | None = None
    #: The nodes the Raft metadata marks drained (their partitions are observed).
    drained: tuple[str, ...] = ()


@dataclass(frozen=True)
class Fault:
    """One named fault."""

    code: str
    severity: str
    message: str
    next_step: str
    #: The node at fault (None: the cluster as a whole).
    node: str | None = None
    #: Affected partitions, ``topic/partition``, sorted.
    partitions: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The JSON of ``GET /v1/cluster/faults``."""
        return {
            "code": self.code,
            "severity": self.severity,
            "node": self.node,
            "partitions": list(self.partitions),
            "message": self.message,
            "next_step": self.next_step,
        }


def _sorted_parts(names: Iterable[str]) -> tuple[str, ...]:
    def key(n: str) -> tuple[str, int]:
        topic, _, p = n.rpartition("/")
        return (topic, int(p) if p.isdigit() else -1)

    return tuple(sorted(set(names), key=key))


def majority(n: int) -> int:
    """Votes a majority of ``n`` voters needs."""
    return n // 2 + 1


@dataclass
class LagWatch:
    """Which followers are not catching up: a follower is behind when its
    match is below the high watermark its leader had ``window_ms`` ago -- a
    follower that merely trails a busy leader by a few milliseconds of data
    has passed that mark; one that stopped, or moves slower than the leader
    writes, has not.  Keeps one snapshot of the led partitions' high
    watermarks per round, for the last window (at most ``max_rounds``)."""

    window_ms: int = 3000
    max_rounds: int = 64
    _rounds: deque[tuple[int, dict[tuple[str, int], int]]] = field(default_factory=deque)

    def observe(
        self, now_ms: int, partitions: Iterable[PartitionObs]
    ) -> dict[tuple[str, int], dict[str, int]]:
        """Record this round's high watermarks; return, per partition led
        here, the followers not catching up and how far behind they are."""
        led = [p for p in partitions if p.in_sync is not None]
        self._rounds.append((now_ms, {(p.topic, p.partition): p.high_watermark for p in led}))
        while len(self._rounds) > self.max_rounds or (
            len(self._rounds) >= 2 and self._rounds[1][0] <= now_ms - self.window_ms
        ):
            self._rounds.popleft()
        t0, old = self._rounds[0]
        out: dict[tuple[str, int], dict[str, int]] = {}
        if now_ms - t0 < self.window_ms:
            return out  # not watched for a whole window yet
        for p in led:
            hw = p.high_watermark
            for f, m in p.followers:
                if m >= hw:
                    continue  # caught up now (the usual case: nothing more to look at)
                mark = old.get((p.topic, p.partition))
                # (a mark above today's high watermark: the log was truncated or recreated)
                if mark is not None and m < mark <= hw:
                    out.setdefault((p.topic, p.partition), {})[f] = hw - m
        return out


_DOWN_STEP = (
    "restart it (e.g. systemctl start sprawl on its host) and read the end of its log for why it exited; "
    "a node that cannot come back is removed by starting a replacement (docs/operations.md, 'Replacing a node')"
)
_SILENT_STEP = (
    "look at the process on its host: state T (ps -o stat) means it was stopped -- send SIGCONT; "
    "a running process that answers nothing is hung -- take a stack dump (py-spy dump --pid) and restart it"
)
_UNREACHABLE_STEP = (
    "check that its host is up and that this node reaches it (ping, the peer port with nc -z); "
    "a network partition heals on its own once the link is back"
)


@dataclass
class Diagnosis:
    """The fault diagnosis of one node (see the module docstring)."""

    lag_window_ms: int = 3000
    lags: LagWatch = field(init=False)

    def __post_init__(self) -> None:
        self.lags = LagWatch(self.lag_window_ms)

    def diagnose(self, obs: Observation) -> list[Fault]:
        """The faults ``obs`` shows, worst first."""
        faults: list[Fault] = []
        states = {m.node_id: m.state for m in obs.members}
        states[obs.node_id] = "alive"
        # a member whose peer port refuses connections is lost, even before gossip notices
        lost = {
            m.node_id: m
            for m in obs.members
            if (m.state in LOST or (m.state == "alive" and m.reach == "refused")) and m.node_id != obs.node_id
        }
        # the partitions each node of interest (lost, or past its disk budget) holds
        interest = set(lost) | {m.node_id for m in obs.members if m.disk_over}
        if obs.disk is not None and obs.disk.used > obs.disk.limit:
            interest.add(obs.node_id)
        held: dict[str, set[str]] = {}
        if interest:
            for p in obs.partitions:
                for r in p.replicas:
                    if r in interest:
                        held.setdefault(r, set()).add(p.name)
        for m in lost.values():
            faults.append(self._lost_node(m, held.get(m.node_id, set())))
            if states.get(m.node_id) == "alive":
                states[m.node_id] = "refusing"
        faults += self._raft(obs, states)
        faults += self._disk(obs, held)
        faults += self._partitions(obs, states, lost)
        faults += self._versions(obs)
        faults += self._drained(obs)
        order = {s: i for i, s in enumerate(SEVERITIES)}
        faults.sort(key=lambda f: (order.get(f.severity, 9), f.code, f.node or ""))
        return faults

    # -- nodes ------------------------------------------------------------------------------

    @staticmethod
    def _lost_node(m: MemberObs, parts: set[str]) -> Fault:
        gone = (
            f"gossip sees node {m.node_id} as {m.state}"
            if m.state in LOST
            else f"node {m.node_id} (gossip has not noticed yet)"
        )
        held = f"; it holds replicas of {len(parts)} partition(s)" if parts else ""
        if m.reach == "refused":
            return Fault(
                "node_down",
                "critical",
                f"{gone} and its peer port refuses connections: the process is not running "
                f"(killed or crashed){held}",
                f"Restart node {m.node_id}: " + _DOWN_STEP,
                m.node_id,
                _sorted_parts(parts),
            )
        if m.reach == "silent":
            return Fault(
                "node_unresponsive",
                "critical",
                f"{gone}; its peer port accepts connections but the process answers nothing "
                f"(stopped with SIGSTOP, hung, or swapping){held}",
                f"On node {m.node_id}'s host, " + _SILENT_STEP,
                m.node_id,
                _sorted_parts(parts),
            )
        how = {
            "answers": "although its peer port answers (UDP blocked between the nodes?)",
            "unreachable": "and its peer port cannot be reached (host down or network partition)",
        }.get(m.reach, "(its peer port is not probed yet)")
        return Fault(
            "node_unreachable",
            "critical",
            f"{gone} {how}{held}",
            f"For node {m.node_id}: " + _UNREACHABLE_STEP,
            m.node_id,
            _sorted_parts(parts),
        )

    @staticmethod
    def _raft(obs: Observation, states: dict[str, str]) -> list[Fault]:
        raft = obs.raft
        if raft is None or not raft.voters:
            return []
        alive = [v for v in raft.voters if states.get(v) == "alive"]
        need = majority(len(raft.voters))
        down = sorted(set(raft.voters) - set(alive))
        if len(alive) < need:
            return [
                Fault(
                    "raft_no_quorum",
                    "critical",
                    f"only {len(alive)} of {len(raft.voters)} Raft voters are alive ({', '.join(down)} "
                    f"not), a majority needs {need}: no topic changes, no partition failovers, "
                    "no membership changes until a majority is back",
                    "Bring the lost voters back (see their node faults); if a majority is lost for good, "
                    "recover from the survivors with --force-new-cluster (docs/operations.md, "
                    "'Losing a majority')",
                    None,
                )
            ]
        if not raft.leader:
            return [
                Fault(
                    "raft_no_leader",
                    "error",
                    f"{len(alive)} of {len(raft.voters)} Raft voters are alive but this node knows no "
                    "leader (an election in progress, or this node is cut off from the others)",
                    "Wait a few election timeouts; if it lasts, check this node's peer connections "
                    "(its log: 'peer ...') and that every voter runs the same cluster key",
                    obs.node_id,
                )
            ]
        return []

    @staticmethod
    def _disk(obs: Observation, held: dict[str, set[str]]) -> list[Fault]:
        out = []
        over = {m.node_id for m in obs.members if m.disk_over and m.node_id != obs.node_id}
        d = obs.disk
        text: dict[str, str] = {n: f"node {n} gossips that its disk budget is exceeded" for n in over}
        if d is not None and d.used > d.limit:
            over.add(obs.node_id)
            text[obs.node_id] = f"node {obs.node_id}'s LMDB uses {d.used} bytes, over its limit of {d.limit}"
        for n in sorted(over):
            out.append(
                Fault(
                    "disk_budget_exceeded",
                    "critical",
                    f"{text[n]}: publishes to partitions it leads get 507 disk_budget_exceeded",
                    f"On node {n}: shorten the retention of the biggest topics (sprawlctl topics describe), "
                    "raise --disk-budget if the disk has room, or fix the S3 tier if uploads are failing "
                    "(its /readyz and log say)",
                    n,
                    _sorted_parts(held.get(n, set())),
                )
            )
        return out

    def _partitions(
        self, obs: Observation, states: dict[str, str], lost: dict[str, MemberObs]
    ) -> list[Fault]:
        out = []
        leaderless = []
        under: list[str] = []
        under_detail: list[str] = []
        for p in obs.partitions:
            if not p.leader or p.leader in lost or states.get(p.leader) in ("dead", "left"):
                leaderless.append(p.name)
            if p.in_sync is None:
                continue
            # a replica gossip has lost is not in sync, whatever its last position was
            n = len(p.in_sync) if not lost else sum(1 for r in p.in_sync if r not in lost)
            if n < p.wanted:
                under.append(p.name)
                under_detail.append(f"{p.name} {n}/{p.wanted}")
        if leaderless:
            out.append(
                Fault(
                    "partition_without_leader",
                    "error",
                    f"{len(leaderless)} partition(s) have no leader that is alive: publishes to them get "
                    "503 no_leader until the controller fails them over",
                    "Failover is automatic within seconds while Raft has a quorum; if it does not happen, "
                    "see the Raft and node faults, and the placement (sprawlctl cluster placement)",
                    None,
                    _sorted_parts(leaderless),
                )
            )
        if under:
            shown = ", ".join(under_detail[:10]) + (" ..." if len(under_detail) > 10 else "")
            out.append(
                Fault(
                    "partition_under_replicated",
                    "error",
                    f"{len(under)} partition(s) led by {obs.node_id} have fewer in-sync replicas than "
                    f"wanted ({shown}): one more failure may lose acknowledged data or availability",
                    "Bring the missing replicas back (see the node faults); a replica that is up but not "
                    "in sync is named by follower_lagging",
                    None,
                    _sorted_parts(under),
                )
            )
        behind = self.lags.observe(obs.now_ms, obs.partitions)
        by_follower: dict[str, dict[str, int]] = {}
        for (topic, part), fs in behind.items():
            for f, lag in fs.items():
                by_follower.setdefault(f, {})[f"{topic}/{part}"] = lag
        for f, parts in sorted(by_follower.items()):
            worst = max(parts.values())
            cause = f" (node {f} is {lost[f].state}: see its node fault)" if f in lost else ""
            out.append(
                Fault(
                    "follower_lagging",
                    "warning",
                    f"follower {f} has not caught up with leader {obs.node_id} for "
                    f"{self.lag_window_ms / 1000:g} s on {len(parts)} partition(s), up to {worst} "
                    f"records behind{cause}",
                    f"If node {f} is named down or unresponsive, fix that first; else check its disk "
                    "(I/O wait, a full disk), its log for replication errors, and the network between "
                    f"{obs.node_id} and {f}",
                    f,
                    _sorted_parts(parts),
                )
            )
        return out

    @staticmethod
    def _versions(obs: Observation) -> list[Fault]:
        mine = obs.protocol
        if mine is None:
            return []
        out = []
        for m in obs.members:
            if m.protocol is None or m.node_id == obs.node_id or m.state in ("dead", "left"):
                continue
            lo, hi = m.protocol
            if hi < mine[0] or lo > mine[1]:
                older = hi < mine[0]
                out.append(
                    Fault(
                        "peer_version_incompatible",
                        "error",
                        f"node {m.node_id} speaks peer protocol {lo}..{hi}, node {obs.node_id} "
                        f"{mine[0]}..{mine[1]}: they refuse each other's connections",
                        (
                            f"Upgrade node {m.node_id}: it is too old for this cluster"
                            if older
                            else f"Node {m.node_id} is too new for this cluster: upgrade the others "
                            "one release at a time first, or run the release it supersedes on it"
                        )
                        + " (docs/operations.md, 'Versions during an upgrade')",
                        m.node_id,
                    )
                )
        return out

    @staticmethod
    def _drained(obs: Observation) -> list[Fault]:
        """A drained node, and the partitions it still leads (they move to
        in-sync replicas; none left: the work on it can start)."""
        out = []
        for n in sorted(set(obs.drained)):
            led = [p.name for p in obs.partitions if p.leader == n]
            left = (
                f"{len(led)} leadership(s) left (moving to in-sync replicas)"
                if led
                else "no leadership left: the work on it can start"
            )
            out.append(
                Fault(
                    "node_drained",
                    "warning",
                    f"node {n} is drained: {left}; it takes no new replica or leadership",
                    f"When the work on it is done: sprawlctl cluster undrain {n}",
                    n,
                    _sorted_parts(led),
                )
            )
        return out
