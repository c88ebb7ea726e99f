"""The per-node pipeline loop: runs every declared pipeline (derived topics, issue 17)
for the source partitions this node leads.  An adapter over the pipeline runner
(:mod:`sprawl.pubsub.pipeline_runner`), the cluster metadata and the clock.

* **What runs where.**  Every :attr:`PipelineLoop.interval` the loop reads the declared
  pipelines (the Raft metadata's ``pipelines``) and starts a run for each pipeline whose
  source topic has a partition this node leads (each partition's leader owns its group
  state, so the runner's pulls lease only from those).  A run is a chain of runner
  rounds -- lease, publish the derived records to the target with the definition's
  ``acks``, ack -- each a long-poll of at most :attr:`PipelineLoop.wait_ms`; a round
  that found nothing ends the run, and the next pass starts it again (so a message
  waits at most about ``interval`` after a quiet spell, and no run can spin).
* **Leadership moves.**  A run ends as soon as this node leads none of the source's
  partitions (checked before every round); a round in flight when leadership moved
  publishes ids the new leader's re-run publishes again, and the target's dedup window
  drops the second copy.  A changed or deleted definition ends its run after the round
  in flight; the next pass starts the new one.
* **Bounded.**  One round in flight per pipeline, each leasing at most
  :attr:`PipelineLoop.max_bytes` of source records (at least one): at most
  ``pipelines x max_bytes`` of source data held at once.
* **Never blocks the reactor.**  Rounds are asynchronous (LMDB on its writer thread,
  peers over the network) and a run gives the reactor a turn between rounds, so a
  backlog read from memory with ``acks: none`` cannot starve it.
* **Errors.**  A failed round (target missing, no leader, the group deleted) is counted
  (``sprawl_pipeline_errors_total``) and logged at most once per pipeline per minute;
  its leases run out and the run starts again at the next pass.
* **Records the target can never take** (``on_reject``, :mod:`sprawl.pubsub.pipelines`):
  a stalled pipeline's reason is :meth:`PipelineLoop.stalled` (``GET /v1/pipelines``, the
  dashboard, ``sprawl_pipeline_stalled``); skipped and dead-lettered records are counted
  (``sprawl_pipeline_skipped_total``, ``sprawl_pipeline_dead_lettered_total``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from sprawl.errors import BadRequest
from sprawl.interfaces import Clock, Delayed
from sprawl.log.record import DEFAULT_READ_BYTES
from sprawl.pubsub import Broker
from sprawl.pubsub.pipeline_runner import PipelineRunner, group_name
from sprawl.pubsub.pipelines import PipelineSpec
from sprawl.topics import Topic

log = Logger()

#: Seconds between two log lines about one pipeline's failures.
LOG_EVERY = 60.0


@dataclass
class _Run:
    """One pipeline on this node: its runner and its chain of rounds, if running."""

    definition: dict[str, Any]
    runner: PipelineRunner
    running: defer.Deferred[None] | None = None
    stopping: bool = False
    errors: int = 0
    logged_at: float = field(default=-LOG_EVERY)


class PipelineLoop:
    """Runs the declared pipelines for the source partitions this node leads
    (see the module docstring)."""

    def __init__(
        self,
        broker: Broker,
        declared: Callable[[], Mapping[str, dict[str, Any]]],
        clock: Clock,
        *,
        interval: float = 0.5,
        wait_ms: int = 1000,
        batch: int = 500,
        max_bytes: int = DEFAULT_READ_BYTES,
    ) -> None:
        self.broker = broker
        self.declared = declared
        self.clock = clock
        self.interval = interval
        self.wait_ms = wait_ms
        self.batch = batch
        self.max_bytes = max_bytes
        self._runs: dict[str, _Run] = {}
        #: Failed rounds, per pipeline (kept after a pipeline is deleted: a counter).
        self.errors: dict[str, int] = {}
        #: Records the target could never take, skipped / dead-lettered, per pipeline (counters).
        self.skipped: dict[str, int] = {}
        self.dead_lettered: dict[str, int] = {}
        self._call: Delayed | None = None
        self._stopped = False
        self._ending: list[_Run] = []

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Begin the passes (the first one now)."""
        self._stopped = False
        self._pass()

    def stop(self) -> None:
        """No more passes or rounds: the rounds in flight end by themselves
        (:attr:`idle` once they did)."""
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._ending += [r for r in self._runs.values() if r.running is not None]
        for r in self._runs.values():
            r.stopping = True
        self._runs.clear()

    @property
    def idle(self) -> bool:
        """No round in flight (after :meth:`stop`: all have ended)."""
        runs = [*self._runs.values(), *self._ending]
        return all(r.running is None for r in runs)

    def _pass(self) -> None:
        self._call = None
        if self._stopped:
            return
        try:
            self.sync()
        except Exception:
            log.failure("the pipeline loop's pass failed")
        # At the next multiple of the interval on the clock: in the reactor turn
        # of the node's other periodic loops (sprawl/ticks.py), not a wake-up of
        # its own twice a second (issue 23, idle39).
        now = self.clock.seconds()
        wait = self.interval - now % self.interval if self.interval > 0 else 0.0
        self._call = self.clock.callLater(wait, self._pass)

    # -- one pass ----------------------------------------------------------------------

    def sync(self) -> None:
        """Follow the declared pipelines: end the runs of changed or deleted ones and
        start a run for each one with a source partition led here and none running."""
        declared = self.declared()
        for name in list(self._runs):
            old = self._runs[name]
            if declared.get(name) != old.definition:
                old.stopping = True
                del self._runs[name]
                self._ending.append(old)
        self._ending = [r for r in self._ending if r.running is not None]
        ending = {r.runner.spec.name for r in self._ending}
        for name, definition in sorted(declared.items()):
            if name in ending:
                continue  # its old definition's round is still in flight
            run = self._runs.get(name)
            if run is None:
                try:
                    spec = PipelineSpec.from_body(name, definition)
                except BadRequest:
                    continue  # (the metadata only holds valid ones; a newer rule may differ)
                runner = PipelineRunner(self.broker, spec, batch=self.batch, max_bytes=self.max_bytes)
                run = self._runs[name] = _Run(dict(definition), runner)
            if run.running is None and self._ready(run):
                d = defer.ensureDeferred(self._run(name, run))
                if not d.called:  # (a run that ended at once already cleared ``running``)
                    run.running = d

    def running(self, name: str) -> defer.Deferred[None] | None:
        """The run of pipeline ``name`` in flight (fires when it ends), if any."""
        run = self._runs.get(name)
        return run.running if run is not None else None

    def _ready(self, run: _Run) -> bool:
        """Whether a run may start: its position group is here and this node leads a
        source partition."""
        t = self.broker.topics.get(run.runner.spec.source)
        return t is not None and run.runner.group in t.groups and bool(self._owned(t))

    def led(self, source: str) -> set[int]:
        """The partitions of ``source`` this node leads (owns the group state of)."""
        t = self.broker.topics.get(source)
        if t is None:
            return set()
        return self._owned(t)

    def _owned(self, t: Topic) -> set[int]:
        owner = self.broker.links.group_owner
        mine = owner.owned(t) if owner is not None else None
        return set(range(len(t.logs))) if mine is None else set(mine)

    async def _run(self, name: str, run: _Run) -> None:
        """Rounds of one pipeline while it is current and this node leads a source partition."""
        runner = run.runner
        try:
            while not run.stopping and not self._stopped and self.led(runner.spec.source):
                skipped, dead = runner.skipped_total, runner.dead_lettered_total
                handled = await runner.step(self.wait_ms)
                if runner.skipped_total > skipped:
                    self.skipped[name] = self.skipped.get(name, 0) + runner.skipped_total - skipped
                if runner.dead_lettered_total > dead:
                    self.dead_lettered[name] = (
                        self.dead_lettered.get(name, 0) + runner.dead_lettered_total - dead
                    )
                if not handled:
                    break  # nothing came within wait_ms: the next pass starts it again
                await self._turn()
        except Exception as e:
            run.errors += 1
            self.errors[name] = self.errors.get(name, 0) + 1
            now = self.clock.seconds()
            if now - run.logged_at >= LOG_EVERY:
                run.logged_at = now
                log.warn(
                    "pipeline {pipeline}: a round failed ({err}); it is run again (failed rounds: {n})",
                    pipeline=name,
                    err=str(e)[:300],
                    n=run.errors,
                )
        finally:
            run.running = None

    def _turn(self) -> defer.Deferred[None]:
        """Fires at the reactor's next turn (other work runs in between)."""
        d: defer.Deferred[None] = defer.Deferred()
        self.clock.callLater(0, d.callback, None)
        return d

    # -- views -------------------------------------------------------------------------

    def lag(self, name: str) -> dict[int, int]:
        """Per source partition this node runs the pipeline for: messages not yet handled."""
        run = self._runs.get(name)
        if run is None:
            return {}
        t = self.broker.topics.get(run.runner.spec.source)
        g = t.groups.get(group_name(name)) if t is not None else None
        if t is None or g is None:
            return {}
        hws = t.high_watermarks()
        committed = g.committed()
        return {p: max(0, hws.get(p, 0) - committed.get(p, hws.get(p, 0))) for p in sorted(self._owned(t))}

    def names(self) -> list[str]:
        """The pipelines this node follows now."""
        return sorted(self._runs)

    def stalled(self, name: str) -> str | None:
        """Why pipeline ``name`` is stalled here (a record its target can never take,
        ``on_reject: stall``), or None: not stalled, or not run here."""
        run = self._runs.get(name)
        return run.runner.stalled if run is not None else None


class PipelineCollector:
    """``sprawl_pipeline_lag_messages{pipeline,partition}`` (the source partitions this
    node leads), ``sprawl_pipeline_errors_total{pipeline}``, ``sprawl_pipeline_stalled{pipeline}``,
    ``sprawl_pipeline_skipped_total{pipeline}`` and ``sprawl_pipeline_dead_lettered_total{pipeline}``,
    read at scrape time."""

    def __init__(self, loop: PipelineLoop) -> None:
        self.loop = loop

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        lag = GaugeMetricFamily(
            "sprawl_pipeline_lag_messages",
            "Source messages a pipeline has not handled yet, per source partition this node leads",
            labels=["pipeline", "partition"],
        )
        for name in self.loop.names():
            for p, n in self.loop.lag(name).items():
                lag.add_metric([name, str(p)], n)
        yield lag
        errors = CounterMetricFamily(
            "sprawl_pipeline_errors", "Pipeline rounds that failed on this node (re-run)", labels=["pipeline"]
        )
        for name, n in sorted(self.loop.errors.items()):
            errors.add_metric([name], n)
        yield errors
        stalled = GaugeMetricFamily(
            "sprawl_pipeline_stalled",
            "1 while a pipeline run here is stalled on a record its target can never take",
            labels=["pipeline"],
        )
        for name in self.loop.names():
            stalled.add_metric([name], 1 if self.loop.stalled(name) else 0)
        yield stalled
        for metric, help_text, counts in (
            (
                "sprawl_pipeline_skipped",
                "Records a pipeline left out: its target can never take them",
                self.loop.skipped,
            ),
            (
                "sprawl_pipeline_dead_lettered",
                "Records a pipeline wrote to its dead-letter topic: its target can never take them",
                self.loop.dead_lettered,
            ),
        ):
            family = CounterMetricFamily(metric, help_text, labels=["pipeline"])
            for name, n in sorted(counts.items()):
                family.add_metric([name], n)
            yield family
