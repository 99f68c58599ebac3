"""A Prometheus histogram for the request path: one lock per observation, the newest exemplar kept
per bucket.

prometheus_client's ``Histogram.observe`` with an exemplar takes three locks (the sum, the bucket,
the exemplar), walks the buckets in Python and validates the exemplar's labels each time: about a
tenth of what the library adds to a request. Here the bucket is found by bisection, the count, sum
and exemplar are updated under one lock, and the exemplar's one label (a correlation ID, at most
64 characters: well inside OpenMetrics' 128) is checked once, by the ID's own validation. The
exposition is prometheus_client's own (``_bucket`` with ``le``, ``_count``, ``_sum``, ``_created``;
exemplars in OpenMetrics); tests/correlation/metrics/test_histogram.py holds the two to the same output.

With a shared directory each observation is also written to the worker's file: the bucket's count,
the sum, and the exemplar slot (:mod:`correlation.metrics.shared`).
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Sequence

from prometheus_client import REGISTRY
from prometheus_client.registry import CollectorRegistry

from correlation.metrics import shared
from correlation.metrics.family import Child, Family
from correlation.metrics.shared import EXEMPLAR_SLOT, EXEMPLAR_TEXT, HISTOGRAM, Region

INF = float("inf")
_pack_double = shared._DOUBLE.pack_into  # noqa: SLF001 - one attribute lookup less per observation


class HistogramChild(Child):
    """One label set's buckets. ``observe`` is the only call on the request path."""

    __slots__ = ("_bounds", "_counts", "_sum", "_exemplars", "_lock", "created", "_region")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._counts = [0] * len(bounds)  # per bucket, not cumulative: one update per observation
        self._sum = 0.0
        self._exemplars: list[tuple[str, float, float] | None] = [None] * len(bounds)
        self._lock = threading.Lock()
        self.created = time.time()
        self._region: Region | None = None

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

    def data(self) -> tuple[float, float, list[int], list[tuple[str, float, float] | None]]:
        counts, total, exemplars = self.snapshot()
        return self.created, total, counts, exemplars

    def attach(self, region: Region) -> None:
        with self._lock:
            buckets = len(self._bounds)
            self._counts, self._sum, self._exemplars = [0] * buckets, 0.0, [None] * buckets
            self.created = time.time()
            self._region = region
            _pack_double(region.mm, region.offset, self.created)
            self.__class__ = SharedHistogramChild


class SharedHistogramChild(HistogramChild):
    """A child whose observations are also written to this worker's file."""

    __slots__ = ()

    def observe(self, value: float, exemplar_value: str | None = None) -> None:
        index = bisect_left(self._bounds, value)
        mm, at = self._region  # type: ignore[misc]
        with self._lock:
            count = self._counts[index] = self._counts[index] + 1
            total = self._sum = self._sum + value
            _pack_double(mm, at + 16 + 8 * index, count)
            _pack_double(mm, at + 8, total)
            if exemplar_value is not None:
                now = time.time()
                self._exemplars[index] = (exemplar_value, value, now)
                slot = at + 16 + 8 * len(self._bounds) + EXEMPLAR_SLOT * index
                shared.write_slot(mm, slot, exemplar_value.encode()[:EXEMPLAR_TEXT], value, now)


class ExemplarHistogram(Family[HistogramChild]):
    """``ExemplarHistogram(name, documentation, labelnames, buckets, exemplar_label)``; children
    by label values (``labels(...)``), registered in ``registry`` as a collector."""

    kind = HISTOGRAM

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        exemplar_label: str,
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        bounds = tuple(sorted(float(b) for b in buckets))
        bounds = bounds if bounds and bounds[-1] == INF else (*bounds, INF)
        super().__init__(name, documentation, labelnames, registry, bounds, exemplar_label)

    def new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)
