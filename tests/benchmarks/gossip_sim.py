#!/usr/bin/env python3
"""SWIM/Lifeguard failure detection in simulation: detection time and false positives.

    python -m benchmarks.gossip_sim                # 5, 50, 200 nodes at 0% and 10% loss
    python -m benchmarks.gossip_sim --sizes 5,50 --trials 0.5 --soak 120
    python -m benchmarks.gossip_sim --sizes 5,50,200,1000 --losses 0 --trials 0.3 --soak 60 \
        --json gossip.json --plot docs/img      # the curve against the cluster size
    python -m benchmarks.gossip_sim --sizes 1000 --losses 0.1 --trials 0.3 --soak 60 --json big.json
    python -m benchmarks.gossip_sim --sizes "" --with gossip.json --with big.json --plot docs/img

Runs :class:`sprawl.gossip.Membership` cores on the seeded network simulator
(:mod:`sprawl.sim`, 1-5 ms one-way delay, periodic 0.1 s ticks like the UDP
adapter) with the default :class:`GossipConfig`.  For every size and loss rate:

* **formation**: every node joins through node 0 (one every 2/n s); the time
  until every member holds every node alive;
* **detection**: repeatedly crash a random member at a random moment, measure
  the time until *every* live member holds it dead (0.1 s resolution), then
  restart it with a higher incarnation, let it rejoin (the time until it and
  every member hold each other alive again) and settle; report p50/p99/max
  over the trials;
* **false positives and traffic**: a soak with no crash, ``--soak`` seconds
  or one full-state exchange period (push-pull, which grows with the size)
  if longer: probes that failed against a live member (false suspicions, all
  of which should be refuted) per probe, members declared dead while alive
  per node-hour (this count also covers the detection trials), and the bytes
  and datagrams each node sent per second (UDP payloads).

A step that does not converge stops the run (``SystemExit``) after a bound
derived from the configuration at that size (:class:`Bounds`: two push-pull
periods and a reconnect pass, plus the join backlog or the suspicion
timeouts), never shorter than the protocol's own periods there.

Prints a Markdown table (``--json`` saves the rows, ``--with FILE`` adds rows
an earlier run saved, so rows run apart share one table and plot; ``--plot DIR`` draws
``gossip_scale.png``: detection and convergence times, false suspicions and
bytes per node per second against the number of nodes; needs matplotlib),
and progress lines on stderr.  Everything is virtual time: the wall-clock
cost is CPU only (a few minutes for the default set; the 1,000-node row
of the command above about 4 CPU-minutes and 1.7 GB).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sprawl.gossip import GossipConfig, MemberEvent, Membership
from sprawl.gossip.membership import push_pull_period
from sprawl.gossip.suspicion import suspicion_timeout
from sprawl.sim import Simulator

TRIALS = {5: 200, 50: 60, 200: 20, 1000: 10}


def pct(xs: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of a list."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))] if s else float("nan")


def addr(i: int) -> tuple[str, int]:
    """Node i's peer address."""
    return (f"10.0.{i // 250}.{i % 250 + 1}", 7946)


def meta(i: int) -> dict[str, Any]:
    """HTTP address, version and load figures, as the broker will gossip them."""
    return {
        "http": f"{addr(i)[0]}:8080",
        "v": "0.1.0",
        "load": {"led": 3, "mps": 120.5, "bytes": 10**8, "mem": 0.3},
    }


@dataclass(frozen=True)
class Bounds:
    """How long (virtual seconds) the harness waits before it calls a step
    failed, derived from the configuration at one cluster size -- never
    shorter than the protocol's own periods at that size.

    What gossip's retransmit-limited dissemination misses (a lost datagram,
    a packet dropped for room) is repaired by the anti-entropy paths: every
    member's full-state exchange (push-pull, whose period grows with the
    size: 30 s up to 32 members, 180 s at 1,000) and the reconnect pass to
    dead members and absent seeds.  ``anti_entropy`` gives every member two
    full exchanges and a reconnect pass: a push-pull reply of many chunks
    under loss may miss some, and it is re-asked only twice.
    """

    #: Two push-pull periods and a reconnect pass.
    anti_entropy: float
    #: Every node joined through node 0 and every member holds every node alive:
    #: the joins' window (2 s), node 0's push-pull answers past its burst at
    #: its sustained rate, then anti-entropy.
    formation: float
    #: A crashed node held dead by every live member: the longest suspicion
    #: timeout, then anti-entropy (a member that missed the news hears the
    #: node dead in a push-pull, suspects it and waits out its own timeout),
    #: then that timeout once more.
    detection: float
    #: A restarted node and every member hold each other alive again.
    rejoin: float

    @classmethod
    def of(cls, config: GossipConfig, n: int) -> Bounds:
        """The bounds for ``n`` nodes under ``config``."""
        anti_entropy = 2 * push_pull_period(config.push_pull_interval, n) + config.reconnect_interval
        backlog = (
            max(0, n - 1 - config.push_pull_replies_total_burst) / config.push_pull_replies_total_per_second
        )
        longest_suspicion = (
            suspicion_timeout(config.suspicion_mult, n, config.probe_interval)
            * config.suspicion_max_timeout_mult
        )
        return cls(
            anti_entropy=anti_entropy,
            formation=2.0 + backlog + anti_entropy,
            detection=2 * longest_suspicion + anti_entropy,
            rejoin=anti_entropy,
        )


class Bench:
    """One cluster of ``n`` nodes under one loss rate.

    Convergence ("every live member holds every node alive") is followed from
    the members' events as they happen -- each live node's set of members it
    holds alive, and the count of (node, member) pairs still missing -- so a
    check is one comparison, not a read of every member's view of every
    member (n^2 snapshots: at 1,000 nodes a million per check).
    """

    def __init__(self, n: int, loss: float, seed: int, config: GossipConfig):
        self.n = n
        self.config = config
        self.bounds = Bounds.of(config, n)
        self.check_every = 0.1
        # (the simulator's event log is not read here: keep it short)
        self.sim = Simulator(seed, delay=(0.001, 0.005), event_log_size=1000)
        self.rng = random.Random(seed + 1)
        self.incarnations = [0] * n
        self.victim: str | None = None
        self.false_dead = 0
        #: Per live node: the other members it holds alive; and how many such
        #: (node, member) pairs are missing from a fully converged cluster.
        self.alive_views: dict[Any, set[str]] = {}
        self.missing = 0
        self.sim.on_event.append(self._event)
        for i in range(n):
            self.sim.add_node(addr(i), self._node(i, 0))
        for i in range(1, n):
            self.sim.run_for(2.0 / n)
            self.sim.call(addr(i), lambda m, now: m.join([addr(0)], now))
        if not self.sim.run_until_true(self.converged, self.bounds.formation, self.check_every):
            raise SystemExit(f"{n} nodes did not converge within {self.bounds.formation:.0f} s")
        #: Virtual seconds from the first join until every member held every node alive.
        self.formed = self.sim.now
        self.sim.loss = loss
        self.sim.run_for(10)

    def _node(self, i: int, inc: int) -> Membership:
        a = addr(i)
        self.alive_views[a] = set()
        self.missing += self.n - 1
        return Membership(f"node-{i:03d}", a, meta(i), self.config, self.sim.node_rng(a), self.sim.now, inc)

    def _crash(self, a: Any) -> None:
        self.sim.crash(a)
        self.missing -= self.n - 1 - len(self.alive_views.pop(a))

    def _event(self, t: float, a: Any, ev: MemberEvent) -> None:
        if ev.kind == "dead" and ev.member.node_id != self.victim:
            self.false_dead += 1
        view = self.alive_views.get(a)
        if view is None or ev.kind in ("update", "refuted"):
            return
        name = ev.member.node_id
        if ev.kind in ("join", "alive"):
            if name not in view:
                view.add(name)
                self.missing -= 1
        elif name in view:  # suspect, dead, left
            view.discard(name)
            self.missing += 1

    def converged(self) -> bool:
        """Every live node sees every node alive."""
        return self.missing == 0

    def converged_by_scan(self) -> bool:
        """The same, read from every member's view of every member (n^2: for tests)."""
        return all(
            sum(1 for m in x.members() if m.state == "alive") == self.n for x in self.sim.nodes.values()
        )

    def totals(self) -> dict[str, int]:
        """Counters summed over live nodes."""
        out: dict[str, int] = {}
        for m in self.sim.nodes.values():
            for k, v in m.stats.items():
                out[k] = out.get(k, 0) + v
        return out

    def soak(self, seconds: float) -> dict[str, int]:
        """Run without crashes; the counters' increase (the members', and the
        network's as ``net_sent`` datagrams and ``net_bytes``)."""
        before = self.totals()
        sent, sent_bytes = self.sim.stats["sent"], self.sim.stats["bytes_sent"]
        self.sim.run_for(seconds)
        out = {k: v - before.get(k, 0) for k, v in self.totals().items()}
        out["net_sent"] = self.sim.stats["sent"] - sent
        out["net_bytes"] = self.sim.stats["bytes_sent"] - sent_bytes
        return out

    def push_pull_period(self) -> float:
        """A node's full-state exchange period at this size (the core's own rule)."""
        return next(iter(self.sim.nodes.values()))._push_pull_period()  # type: ignore[no-any-return]

    def trial(self, detected: Callable[[float], None] | None = None) -> tuple[float, float]:
        """Crash a random member, time until all see it dead, restart it;
        (detection time, time until the restarted node and every other member
        hold each other alive again).  ``detected``, if given, is called with
        the detection time as soon as it is measured (a rejoin may take long)."""
        sim = self.sim
        sim.run_for(self.rng.uniform(0, self.config.probe_interval))
        i = self.rng.randrange(self.n)
        a, name = addr(i), f"node-{i:03d}"
        self.victim = name
        self._crash(a)
        t0 = sim.now
        done = sim.run_until_true(
            lambda: all(
                (m.member(name) is None or m.member(name).state == "dead") for m in sim.nodes.values()
            ),
            self.bounds.detection,
        )
        took = sim.now - t0 if done else float("inf")
        if detected is not None:
            detected(took)
        self.incarnations[i] += 1
        sim.restart(a, lambda now: self._node(i, self.incarnations[i]))
        seed = addr(self.rng.choice([j for j in range(self.n) if j != i]))
        sim.call(a, lambda m, now: m.join([seed], now))
        t1 = sim.now
        if not sim.run_until_true(self.converged, self.bounds.rejoin, self.check_every):
            raise SystemExit(f"node {i} did not rejoin within {self.bounds.rejoin:.0f} s")
        rejoin = sim.now - t1
        self.victim = None
        sim.run_for(self.rng.uniform(2, 5))
        return took, rejoin


def peak_rss_mb() -> float:
    """This process's peak resident set so far, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class GcClock:
    """CPU seconds spent in the garbage collector (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.total = 0.0
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.process_time()
        else:
            self.total += time.process_time() - self._start


def progress(what: str, cpu0: float) -> None:
    """A progress line on stderr: what, with the row's CPU so far and the peak RSS."""
    print(
        f"# {what} (CPU {time.process_time() - cpu0:.0f} s, peak RSS {peak_rss_mb():,.0f} MB)",
        file=sys.stderr,
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="5,50,200", help='cluster sizes to run ("": none, only --with)')
    ap.add_argument("--losses", default="0,0.1")
    ap.add_argument("--trials", type=float, default=1.0, help="scale the number of crash trials")
    ap.add_argument("--soak", type=float, default=300.0, help="seconds of crash-free run per row")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, help="save the figures to this file")
    ap.add_argument("--plot", type=Path, help="draw gossip_scale.png in this directory")
    ap.add_argument(
        "--with",
        dest="earlier",
        type=Path,
        action="append",
        default=[],
        help="rows saved by an earlier --json run, added to the table and the plot (repeatable)",
    )
    args = ap.parse_args()
    config = GossipConfig()
    figures: list[dict[str, Any]] = []
    for earlier in args.earlier:
        figures += json.loads(earlier.read_text())
    gc_clock = GcClock()
    for n in (int(x) for x in args.sizes.split(",") if x):
        for loss in (float(x) for x in args.losses.split(",")):
            gc.collect()
            cpu, gc0 = time.process_time(), gc_clock.total
            b = Bench(n, loss, args.seed, config)
            bd = b.bounds
            progress(
                f"{n} nodes, loss {loss:.0%}: formed in {b.formed:.1f} s (bounds: formation "
                f"{bd.formation:.0f} s, detection {bd.detection:.0f} s, rejoin {bd.rejoin:.0f} s)",
                cpu,
            )
            # At least one full-state exchange (push-pull) per node in the soak: at
            # 200 nodes and up their period (scaled with the size) is longer
            # than 60 s, and they are most of the bytes there.
            soak = max(args.soak, b.push_pull_period())
            s = b.soak(soak)
            progress(
                f"  soak of {soak:.0f} s done: {s['net_bytes'] / n / soak:,.0f} bytes sent per node per s, "
                f"false suspicions {s['probe_failures'] / max(1, s['probes_sent']):.2%} of probes, "
                f"{s['refuted']} refuted, {b.false_dead} declared dead while alive",
                cpu,
            )
            trials = max(3, round(TRIALS.get(n, 20) * args.trials))
            results = []
            for k in range(trials):

                def detected(took: float, k: int = k, cpu: float = cpu) -> None:
                    progress(f"  trial {k + 1}: detection {took:.1f} s", cpu)

                results.append(b.trial(detected if n >= 500 else None))
                if n >= 500:
                    progress(
                        f"  trial {k + 1}: detection {results[-1][0]:.1f} s, rejoin {results[-1][1]:.1f} s",
                        cpu,
                    )
            times, rejoins = zip(*results, strict=True)
            sim_hours = n * b.sim.now / 3600
            fig: dict[str, Any] = {
                "nodes": n,
                "loss": loss,
                "trials": trials,
                "formed": b.formed,
                "p50": pct(list(times), 0.5),
                "p99": pct(list(times), 0.99),
                "max": max(times),
                "rejoin_p50": pct(list(rejoins), 0.5),
                "rejoin_max": max(rejoins),
                "false_suspicions": s["probe_failures"] / max(1, s["probes_sent"]),
                "refuted": s["refuted"],
                "false_dead": b.false_dead,
                "false_dead_per_node_hour": b.false_dead / sim_hours,
                "soak_s": soak,
                "bytes_per_node_s": s["net_bytes"] / n / soak,
                "packets_per_node_s": s["net_sent"] / n / soak,
                "push_pulls_per_node_s": s["push_pulls_sent"] / n / soak,
                "virtual_s": b.sim.now,
                "cpu_s": time.process_time() - cpu,
                "gc_cpu_s": gc_clock.total - gc0,
                "peak_rss_mb": peak_rss_mb(),
            }
            figures.append(fig)
            print(json.dumps(fig), file=sys.stderr, flush=True)
            del b
    print(
        "| nodes | loss | crash trials | cluster formed (s) | detection p50 (s) | p99 (s) | max (s) "
        "| suspicion timeout min / max (s) | rejoin p50 / max (s) "
        "| soak (s) | false suspicions per probe in the soak | refuted | declared dead while alive "
        "| bytes sent per node per s (packets) | CPU | peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for fig in sorted(figures, key=lambda f: (f["loss"], f["nodes"])):
        print(table_row(fig, config))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    if args.plot:
        plot(figures, args.plot)


def table_row(fig: dict[str, Any], config: GossipConfig) -> str:
    """One row's figures as a line of the Markdown table."""
    n = fig["nodes"]
    lo = suspicion_timeout(config.suspicion_mult, n, config.probe_interval)
    return (
        f"| {n:,} | {fig['loss']:.0%} | {fig['trials']} | {fig['formed']:.1f} | {fig['p50']:.1f} "
        f"| {fig['p99']:.1f} | {fig['max']:.1f} | {lo:.1f} / {lo * config.suspicion_max_timeout_mult:.1f} "
        f"| {fig['rejoin_p50']:.1f} / {fig['rejoin_max']:.1f} "
        f"| {fig['soak_s']:.0f} | {fig['false_suspicions']:.2%} | {fig['refuted']} "
        f"| {fig['false_dead']} ({fig['false_dead_per_node_hour']:.3f}/node-h) "
        f"| {fig['bytes_per_node_s']:,.0f} ({fig['packets_per_node_s']:.1f} pkts) "
        f"| {fig['cpu_s']:.0f} s | {fig['peak_rss_mb']:,.0f} MB |"
    )


def plot(figures: list[dict[str, Any]], out: Path) -> None:
    """Against the number of nodes, one line per loss rate: detection time
    (p50, p99, max), the time to converge (the cluster's forming through one
    seed, a restarted node's rejoin), false suspicions per probe, and bytes
    sent per node per second."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, (ax1, ax2, ax3, ax4) = plt.subplots(1, 4, figsize=(16, 3.6))
    for loss in sorted({f["loss"] for f in figures}):
        rows = sorted((f for f in figures if f["loss"] == loss), key=lambda f: f["nodes"])
        xs = [f["nodes"] for f in rows]
        for key, style in (("p50", "o-"), ("p99", "s--"), ("max", "^:")):
            ax1.plot(xs, [f[key] for f in rows], style, label=f"{key}, loss {loss:.0%}")
        for key, style, label in (("formed", "o-", "cluster formed"), ("rejoin_p50", "s--", "rejoin p50")):
            if all(key in f for f in rows):
                ax2.plot(xs, [f[key] for f in rows], style, label=f"{label}, loss {loss:.0%}")
        ax3.plot(xs, [100 * f["false_suspicions"] for f in rows], "o-", label=f"loss {loss:.0%}")
        if all("bytes_per_node_s" in f for f in rows):
            ax4.plot(xs, [f["bytes_per_node_s"] for f in rows], "o-", label=f"loss {loss:.0%}")
    ax1.set_title("crash -> every member holds it dead, s", fontsize=9)
    ax2.set_title("until every member holds every node alive, s", fontsize=9)
    ax3.set_title("false suspicions, % of probes (refuted)", fontsize=9)
    ax4.set_title("bytes sent per node per second (no crash)", fontsize=9)
    for ax in (ax1, ax2, ax3, ax4):
        ax.set_xscale("log")
        ax.set_xlabel("nodes (simulated)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "gossip_scale.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
