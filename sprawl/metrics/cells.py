"""Lock-free counters and histograms for the reactor thread, exposed like prometheus_client's.

prometheus_client's ``Counter.inc`` and ``Histogram.observe`` take a lock per value and
check their arguments on every call (a histogram observation: ~7 Python calls and 2 lock
round trips); the node updates its hot-path metrics from its one reactor thread only, so
the locks buy nothing there.  :class:`CounterFamily` and :class:`HistogramFamily` keep
each labelled series as a plain cell (:class:`CounterCell`: one number;
:class:`HistogramCell`: non-cumulative bucket counts and a sum) and build the very
samples prometheus_client's ``Counter`` / ``Histogram`` would (``_total``, ``_bucket``
with the same ``le`` strings, ``_count``, ``_sum``, ``_created``) at scrape time, as a
collector registered on the node's registry.  Same call interface: ``labels(...)``,
``inc(amount)``, ``observe(amount)``, ``remove(...)``.

Not thread-safe: update these from the reactor thread only.  A metric updated from other
threads (the garbage collector's callback runs on whichever thread allocates) stays a
prometheus_client metric.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import INF, floatToGoString


def _created_enabled() -> bool:
    """Whether prometheus_client exposes ``_created`` series now (its switch, read each scrape)."""
    from prometheus_client import metrics

    return bool(metrics._use_created)


class CounterCell:
    """One counter series: ``value``, counted up by :meth:`inc` (or ``cell.value += n``)."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        """Count ``amount`` (non-negative) more."""
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class HistogramCell:
    """One histogram series: per-bucket (not cumulative) counts, by upper bound, and a sum."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        """Record one observation (in the first bucket whose bound is at least ``amount``)."""
        self.sum += amount
        if amount == amount:  # (NaN lands in no bucket, as prometheus_client's)
            self.counts[bisect_left(self.bounds, amount)] += 1


class _Family(Collector):
    """A metric's labelled series (or its one series, unlabelled), a registry collector."""

    type = ""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        #: The series by their label values (strings), in creation order.
        self.children: dict[tuple[str, ...], Any] = {}
        #: The one series of an unlabelled metric (None when labelled).
        self.cell: Any = None if self.labelnames else self._new()
        if registry is not None:
            registry.register(self)

    def _new(self) -> Any:
        raise NotImplementedError

    def labels(self, *values: object, **kwargs: object) -> Any:
        """The series of these label values, made on first use (like prometheus_client's)."""
        if not self.labelnames:
            raise ValueError(f"No label names were set when constructing {self.name}")
        if kwargs:
            if values or sorted(kwargs) != sorted(self.labelnames):
                raise ValueError("Incorrect label names")
            values = tuple(kwargs[n] for n in self.labelnames)
        if len(values) != len(self.labelnames):
            raise ValueError("Incorrect label count")
        key = tuple(str(v) for v in values)
        c = self.children.get(key)
        if c is None:
            c = self.children[key] = self._new()
        return c

    def remove(self, *values: object) -> None:
        """Drop the series of these label values (if any)."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"Incorrect label count (expected {len(self.labelnames)}, got {values})")
        self.children.pop(tuple(str(v) for v in values), None)

    def series(self) -> Iterable[tuple[dict[str, str], Any]]:
        """``(labels, cell)`` of every series, in creation order."""
        if self.cell is not None:
            return [({}, self.cell)]
        names = self.labelnames
        return [(dict(zip(names, key, strict=True)), c) for key, c in list(self.children.items())]

    def describe(self) -> list[Metric]:
        return [Metric(self.name, self.documentation, self.type)]

    def collect(self) -> list[Metric]:
        metric = Metric(self.name, self.documentation, self.type)
        created = _created_enabled()
        for labels, cell in self.series():
            self._samples(metric, labels, cell, created)
        return [metric]

    def _samples(self, metric: Metric, labels: dict[str, str], cell: Any, created: bool) -> None:
        raise NotImplementedError


class CounterFamily(_Family):
    """A counter (``<name>_total`` and ``<name>_created``), like ``prometheus_client.Counter``."""

    type = "counter"

    def _new(self) -> CounterCell:
        return CounterCell()

    def labels(self, *values: object, **kwargs: object) -> CounterCell:
        return super().labels(*values, **kwargs)  # type: ignore[no-any-return]

    def inc(self, amount: float = 1) -> None:
        """Count ``amount`` more (an unlabelled counter)."""
        if self.cell is None:
            raise ValueError("counter metric is missing label values")
        self.cell.inc(amount)

    @property
    def value(self) -> float:
        """An unlabelled counter's value."""
        return float(self.cell.value)

    def _samples(self, metric: Metric, labels: dict[str, str], cell: Any, created: bool) -> None:
        metric.add_sample(self.name + "_total", labels, float(cell.value))
        if created:
            metric.add_sample(self.name + "_created", labels, cell.created)


class HistogramFamily(_Family):
    """A histogram (``_bucket``, ``_count``, ``_sum``, ``_created``), like ``prometheus_client.Histogram``."""

    type = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry | None,
    ) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds):
            raise ValueError("Buckets not in sorted order")
        if bounds and bounds[-1] != INF:
            bounds.append(INF)
        if len(bounds) < 2:
            raise ValueError("Must have at least two buckets")
        self.bounds = tuple(bounds)
        self._le = [floatToGoString(b) for b in self.bounds]
        super().__init__(name, documentation, labelnames, registry)

    def _new(self) -> HistogramCell:
        return HistogramCell(self.bounds)

    def labels(self, *values: object, **kwargs: object) -> HistogramCell:
        return super().labels(*values, **kwargs)  # type: ignore[no-any-return]

    def observe(self, amount: float) -> None:
        """Record one observation (an unlabelled histogram)."""
        if self.cell is None:
            raise ValueError("histogram metric is missing label values")
        self.cell.observe(amount)

    def _samples(self, metric: Metric, labels: dict[str, str], cell: Any, created: bool) -> None:
        acc = 0.0
        name = self.name
        for le, n in zip(self._le, list(cell.counts), strict=True):
            acc += n
            metric.add_sample(name + "_bucket", {**labels, "le": le}, acc)
        metric.add_sample(name + "_count", labels, acc)
        if self.bounds[0] >= 0:
            metric.add_sample(name + "_sum", labels, float(cell.sum))
        if created:
            metric.add_sample(name + "_created", labels, cell.created)
