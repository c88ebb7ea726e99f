"""A deterministic, seeded discrete-event network simulator for pure cores.

Nodes are protocol cores (gossip membership now, Raft and replication later)
with two methods::

    node.tick(now)                 -> result
    node.receive(src, payload, now) -> result

where ``result`` is either a list of ``(dst, payload)`` datagrams or an object
with a ``datagrams`` attribute holding them (and optionally ``events``, which
the simulator records).  Addresses are any hashable values (``(host, port)``
tuples for gossip, node ids for Raft).

The network between them has a virtual clock and, all drawn from one seeded
``random.Random`` so that the same seed gives the same run:

* per-datagram loss probability, uniform delay range (which reorders), and
  duplication probability;
* partitions: a set of blocked ``(src, dst)`` pairs (so asymmetric ones too);
  :meth:`Simulator.partition` blocks every pair across groups;
* crash (the node object is dropped; datagrams to it vanish) and restart (a
  fresh node object, built by the test from whatever it persisted -- see
  :attr:`Simulator.disk`).

Ticks are periodic per node (``tick_interval``, with a random phase), or, in
``tick_mode="deadline"``, scheduled at the node's ``next_deadline()`` (capped
at ``max_tick_gap``).  Everything is bounded: events per run call, datagrams
in flight, and the event log.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Any

SimAddr = Hashable
#: A node: anything with ``tick(now)`` and ``receive(src, payload, now)``.
SimNode = Any


class SimulationLimit(RuntimeError):
    """A run exceeded one of the simulator's bounds (events, in-flight datagrams)."""


_TICK = 0
_DELIVER = 1


def split_result(result: Any) -> tuple[list[tuple[Any, bytes]], list[Any]]:
    """(datagrams, events) from a node's return value."""
    if result is None:
        return [], []
    if isinstance(result, list | tuple):
        return list(result), []
    return list(getattr(result, "datagrams", [])), list(getattr(result, "events", []))


class Simulator:
    """A virtual network of nodes (see the module docstring).

    ``seed`` (or ``rng``) drives every random choice of the network.  Nodes
    get their own generators from :meth:`node_rng`, derived from the seed.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        rng: random.Random | None = None,
        loss: float = 0.0,
        delay: tuple[float, float] = (0.001, 0.005),
        duplicate: float = 0.0,
        tick_interval: float = 0.1,
        tick_mode: str = "periodic",
        max_tick_gap: float = 1.0,
        max_in_flight: int = 1_000_000,
        max_events_per_run: int = 50_000_000,
        event_log_size: int = 100_000,
        start: float = 0.0,
    ):
        if tick_mode not in ("periodic", "deadline"):
            raise ValueError("tick_mode is 'periodic' or 'deadline'")
        if not (0 <= delay[0] <= delay[1]):
            raise ValueError("delay must be (min, max) with 0 <= min <= max")
        self.rng = rng if rng is not None else random.Random(seed)
        self._node_rng_seed = self.rng.getrandbits(64)
        self.loss = loss
        self.delay = delay
        self.duplicate = duplicate
        self.tick_interval = tick_interval
        self.tick_mode = tick_mode
        self.max_tick_gap = max_tick_gap
        self.max_in_flight = max_in_flight
        self.max_events_per_run = max_events_per_run
        self.now = start
        self.nodes: dict[SimAddr, SimNode] = {}
        self.crashed: set[SimAddr] = set()
        self.blocked: set[tuple[SimAddr, SimAddr]] = set()
        #: Per-address storage that survives crashes, for tests to persist into.
        self.disk: dict[SimAddr, dict[str, Any]] = {}
        #: (time, addr, event) of every event nodes reported (bounded).
        self.events: deque[tuple[float, SimAddr, Any]] = deque(maxlen=event_log_size)
        self.on_event: list[Callable[[float, SimAddr, Any], None]] = []
        #: Called for every datagram handed to the network: (time, src, dst, payload).
        self.on_send: list[Callable[[float, SimAddr, SimAddr, bytes], None]] = []
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "sent",
                "delivered",
                "dropped_loss",
                "dropped_partition",
                "dropped_down",
                "duplicated",
                "ticks",
                "bytes_sent",
            ),
            0,
        )
        self._queue: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self._gen: dict[SimAddr, int] = {}
        self._in_flight = 0

    # ------------------------------------------------------------ topology

    def node_rng(self, addr: SimAddr) -> random.Random:
        """A generator for the node at ``addr``, derived from the seed and the
        address (stable whatever order nodes are created in)."""
        return random.Random(f"{self._node_rng_seed}:{addr!r}")

    def add_node(self, addr: SimAddr, node: SimNode) -> None:
        """Attach a live node at ``addr`` (which must be free)."""
        if addr in self.nodes:
            raise ValueError(f"{addr!r} already has a live node")
        self.crashed.discard(addr)
        self.nodes[addr] = node
        gen = self._gen.get(addr, 0) + 1
        self._gen[addr] = gen
        if self.tick_mode == "periodic":
            first = self.now + self.rng.uniform(0, self.tick_interval)
        else:
            first = self.now
        self._push(first, _TICK, (addr, gen))

    def crash(self, addr: SimAddr) -> SimNode:
        """Stop the node at ``addr``: no more ticks, datagrams to it are lost.
        Returns the dead node object (for inspection only)."""
        node = self.nodes.pop(addr)
        self.crashed.add(addr)
        self._gen[addr] = self._gen.get(addr, 0) + 1
        return node

    def restart(self, addr: SimAddr, node: SimNode | Callable[[float], SimNode]) -> SimNode:
        """Bring a crashed address back with a fresh node (or ``factory(now)``)."""
        if addr not in self.crashed:
            raise ValueError(f"{addr!r} is not crashed")
        if callable(node) and not hasattr(node, "tick"):
            node = node(self.now)
        self.add_node(addr, node)
        return node

    def block(self, src: SimAddr, dst: SimAddr) -> None:
        """Drop every datagram from ``src`` to ``dst`` (one direction)."""
        self.blocked.add((src, dst))

    def unblock(self, src: SimAddr, dst: SimAddr) -> None:
        """Undo :meth:`block` for one direction."""
        self.blocked.discard((src, dst))

    def partition(self, *groups: Iterable[SimAddr]) -> None:
        """Block both directions between every pair of addresses in different groups."""
        sets = [set(g) for g in groups]
        for i, a in enumerate(sets):
            for b in sets[i + 1 :]:
                for x in a:
                    for y in b:
                        self.blocked.add((x, y))
                        self.blocked.add((y, x))

    def heal(self) -> None:
        """Remove every block."""
        self.blocked.clear()

    # -------------------------------------------------------------- driving

    def call(self, addr: SimAddr, fn: Callable[[SimNode, float], Any]) -> Any:
        """Run ``fn(node, now)`` on a live node and route what it returns
        (e.g. ``sim.call(a, lambda n, now: n.join(seeds, now))``)."""
        node = self.nodes[addr]
        result = fn(node, self.now)
        self._route(addr, result)
        if self.tick_mode == "deadline" and addr in self.nodes:
            self._schedule_deadline(addr, node)
        return result

    def inject(self, src: SimAddr, dst: SimAddr, payload: bytes) -> None:
        """Put a datagram on the network as if ``src`` had sent it."""
        self._send(src, dst, payload)

    def run_until(self, t: float) -> None:
        """Process every event up to and including virtual time ``t``."""
        budget = self.max_events_per_run
        queue = self._queue
        while queue and queue[0][0] <= t:
            budget -= 1
            if budget < 0:
                raise SimulationLimit(f"more than {self.max_events_per_run} events before t={t}")
            self._step()
        self.now = max(self.now, t)

    def run_for(self, dt: float) -> None:
        """Advance the virtual clock by ``dt`` seconds."""
        self.run_until(self.now + dt)

    def run_until_true(self, predicate: Callable[[], bool], timeout: float, check_every: float = 0.1) -> bool:
        """Run until ``predicate()`` holds (checked every ``check_every`` virtual
        seconds) or ``timeout`` virtual seconds pass; returns whether it held."""
        end = self.now + timeout
        while True:
            if predicate():
                return True
            if self.now >= end:
                return False
            self.run_until(min(end, self.now + check_every))

    # ------------------------------------------------------------ internals

    def _push(self, t: float, kind: int, data: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (t, self._seq, kind, data))

    def _step(self) -> None:
        t, _, kind, data = heapq.heappop(self._queue)
        self.now = max(self.now, t)
        if kind == _TICK:
            addr, gen = data
            if self._gen.get(addr) != gen:
                return  # stale: the node crashed or a newer tick replaced it
            node = self.nodes[addr]
            self.stats["ticks"] += 1
            self._route(addr, node.tick(self.now))
            if self.tick_mode == "periodic":
                self._push(self.now + self.tick_interval, _TICK, (addr, gen))
            else:
                self._schedule_deadline(addr, node)
        else:
            self._in_flight -= 1
            src, dst, payload = data
            if self.blocked and (src, dst) in self.blocked:
                self.stats["dropped_partition"] += 1
                return
            node = self.nodes.get(dst)
            if node is None:
                self.stats["dropped_down"] += 1
                return
            self.stats["delivered"] += 1
            self._route(dst, node.receive(src, payload, self.now))
            if self.tick_mode == "deadline" and dst in self.nodes:
                self._schedule_deadline(dst, node)

    def _schedule_deadline(self, addr: SimAddr, node: SimNode) -> None:
        """(deadline mode) Replace the node's pending tick with one at its next deadline."""
        gen = self._gen[addr] + 1
        self._gen[addr] = gen
        deadline = node.next_deadline() if hasattr(node, "next_deadline") else self.now + self.tick_interval
        t = min(max(deadline, self.now + 1e-6), self.now + self.max_tick_gap)
        self._push(t, _TICK, (addr, gen))

    def _route(self, src: SimAddr, result: Any) -> None:
        datagrams: Iterable[tuple[Any, bytes]]
        events: Iterable[Any]
        if isinstance(result, list | tuple) or result is None:
            datagrams, events = split_result(result)
        else:  # an Output-like object: its lists as they are, no copies
            datagrams = getattr(result, "datagrams", ())
            events = getattr(result, "events", ())
        for ev in events:
            self.events.append((self.now, src, ev))
            for cb in self.on_event:
                cb(self.now, src, ev)
        for dst, payload in datagrams:
            self._send(src, dst, payload)

    def _send(self, src: SimAddr, dst: SimAddr, payload: bytes) -> None:
        stats = self.stats
        stats["sent"] += 1
        stats["bytes_sent"] += len(payload)
        if self.on_send:
            for cb in self.on_send:
                cb(self.now, src, dst, payload)
        if self.blocked and (src, dst) in self.blocked:
            stats["dropped_partition"] += 1
            return
        copies = 1
        rng = self.rng
        if self.duplicate and rng.random() < self.duplicate:
            copies = 2
            stats["duplicated"] += 1
        lo, hi = self.delay
        for _ in range(copies):
            if self.loss and rng.random() < self.loss:
                stats["dropped_loss"] += 1
                continue
            if self._in_flight >= self.max_in_flight:
                raise SimulationLimit(f"more than {self.max_in_flight} datagrams in flight")
            self._in_flight += 1
            # (random.uniform's own formula, inlined: the same draws, the same delays)
            self._seq += 1
            heapq.heappush(
                self._queue,
                (self.now + (lo + (hi - lo) * rng.random()), self._seq, _DELIVER, (src, dst, payload)),
            )


def schedule_seeds(base: int, n: int, environ: Any = None, long_n: int | None = None) -> list[int]:
    """The seeds of a batch of schedules: ``base .. base+n`` (``base ..
    base+long_n`` with ``SPRAWL_SIM_LONG=1``; ``long_n`` defaults to ten times
    ``n``), or the one seed ``SPRAWL_SIM_SEED`` names."""
    import os

    env = os.environ if environ is None else environ
    if env.get("SPRAWL_SIM_SEED") is not None:
        return [int(env["SPRAWL_SIM_SEED"])]
    long_n = 10 * n if long_n is None else long_n
    return [base + i for i in range(long_n if env.get("SPRAWL_SIM_LONG") == "1" else n)]


def slice_seeds(base: int, n: int, k: int, run_seed: int, long_n: int | None = None) -> list[int]:
    """``k`` seeds of the long batch that the default batch does not run
    (``base+n .. base+long_n``), drawn by ``run_seed``: a different slice of
    the long run on every run seed, the same slice for the same run seed."""
    long_n = 10 * n if long_n is None else long_n
    rng = random.Random(f"slice {run_seed} {base}")
    return sorted(rng.sample(range(base + n, base + long_n), min(k, max(0, long_n - n))))


def run_schedules(seeds: list[int], run: Callable[[int], dict[str, int]], reproduce: str) -> dict[str, int]:
    """Run ``run(seed)`` for every seed and sum the counts it returns; the
    first failure is re-raised with the command that replays that seed alone
    (``SPRAWL_SIM_SEED=<seed> <reproduce>``)."""
    totals: dict[str, int] = {}
    for seed in seeds:
        try:
            stats = run(seed)
        except Exception as exc:
            raise AssertionError(
                f"seed {seed} failed: {exc!r}\nreproduce: SPRAWL_SIM_SEED={seed} {reproduce}"
            ) from exc
        for k, v in stats.items():
            totals[k] = totals.get(k, 0) + v
    return totals
