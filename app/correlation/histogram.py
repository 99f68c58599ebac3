"""A Prometheus histogram for the request path: one lock per observation, the newest exemplar kept
per bucket.

prometheus_client's ``Histogram.observe`` with an exemplar takes three locks (the sum, the bucket,
the exemplar), walks the buckets in Python and validates the exemplar's labels each time: about a
tenth of what the library adds to a request. Here the bucket is found by bisection, the count, sum
and exemplar are updated under one lock, and the exemplar's one label (a correlation ID, at most
64 characters: well inside OpenMetrics' 128) is checked once, by the ID's own validation. The
exposition is prometheus_client's own (``_bucket`` with ``le``, ``_count``, ``_sum``, ``_created``;
exemplars in OpenMetrics), through a collector in its registry; tests/test_histogram.py holds the
two to the same output.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import REGISTRY
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

INF = float("inf")


class HistogramChild:
    """One label set's buckets. ``observe`` is the only call on the request path."""

    __slots__ = ("_bounds", "_counts", "_sum", "_exemplars", "_lock", "created")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._counts = [0] * len(bounds)  # per bucket, not cumulative: one update per observation
        self._sum = 0.0
        self._exemplars: list[tuple[str, float, float] | None] = [None] * len(bounds)
        self._lock = threading.Lock()
        self.created = time.time()

    def observe(self, value: float, exemplar_value: str | None = None) -> None:
        """Count ``value`` (``le`` buckets: a value equal to a bound falls in that bucket); with
        ``exemplar_value``, it becomes its bucket's exemplar."""
        index = bisect_left(self._bounds, value)
        with self._lock:
            self._counts[index] += 1
            self._sum += value
            if exemplar_value is not None:
                self._exemplars[index] = (exemplar_value, value, time.time())

    @property
    def count(self) -> int:
        """Observations so far."""
        return sum(self._counts)

    def snapshot(self) -> tuple[list[int], float, list[tuple[str, float, float] | None]]:
        """(counts per bucket, sum, exemplars), consistent with each other."""
        with self._lock:
            return list(self._counts), self._sum, list(self._exemplars)


class ExemplarHistogram(Collector):
    """``ExemplarHistogram(name, documentation, labelnames, buckets, exemplar_label)``; children
    by label values (``labels(...)``), registered in ``registry`` as a collector."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        exemplar_label: str,
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        bounds = tuple(sorted(float(b) for b in buckets))
        self.bounds = bounds if bounds and bounds[-1] == INF else (*bounds, INF)
        self.exemplar_label = exemplar_label
        self._children: dict[tuple[str, ...], HistogramChild] = {}
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> HistogramChild:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values!r}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.setdefault(key, HistogramChild(self.bounds))
        return child

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            children = list(self._children.items())
        for values, child in children:
            counts, total, exemplars = child.snapshot()
            buckets: list[tuple[str, float] | tuple[str, float, Exemplar]] = []
            cumulative = 0
            for bound, count, exemplar in zip(self.bounds, counts, exemplars, strict=True):
                cumulative += count
                le = floatToGoString(bound)
                if exemplar is None:
                    buckets.append((le, float(cumulative)))
                else:
                    label, value, at = exemplar
                    buckets.append((le, float(cumulative), Exemplar({self.exemplar_label: label}, value, at)))
            family.add_metric(list(values), buckets, total)
            family.add_sample(f"{self.name}_created", dict(zip(self.labelnames, values, strict=True)), child.created)
        yield family
