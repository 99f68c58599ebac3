"""The scrape: series (this process's, or every worker's merged) as prometheus_client metric
families, in the format the scraper asked for (OpenMetrics, with exemplars, or text).

With a shared directory the answer is the server's: the library's metrics merged from every
worker's file (:mod:`correlation.metrics.merge`), the figures of the server's processes
(``process_*``, ``python_gc_*``: sums, or the largest or smallest, :mod:`correlation.metrics.process`),
plus, when ``PROMETHEUS_MULTIPROC_DIR`` is set, prometheus_client's own multiprocess metrics from
that directory (an application's own counters made the prometheus_client way). The rest of the
default registry (an application's metrics without multiprocess mode) is left out then: one
worker's numbers served as the server's would read as resets at every scrape.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import PLATFORM_COLLECTOR, REGISTRY
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from correlation.metrics import store
from correlation.metrics.merge import FamilyKey, read_directory
from correlation.metrics.shared import COUNTER, HISTOGRAM, LIVE_GAUGES, NEWEST


def metric(family: FamilyKey, series: Mapping[tuple[str, ...], Any]) -> Metric:
    """One family with its series, ``data`` shaped as :func:`shared.read_series` gives it."""
    name, kind, documentation, labelnames, bounds, exemplar_label = family
    if kind == HISTOGRAM:
        histogram = HistogramMetricFamily(name, documentation, labels=labelnames)
        for values, (created, total, counts, exemplars) in series.items():
            buckets: list[tuple[str, float] | tuple[str, float, Exemplar]] = []
            cumulative = 0.0
            for bound, count, exemplar in zip(bounds, counts, exemplars, strict=True):
                cumulative += count
                le = floatToGoString(bound)
                if exemplar is None:
                    buckets.append((le, cumulative))
                else:
                    text, value, at = exemplar
                    buckets.append((le, cumulative, Exemplar({exemplar_label: text}, value, at)))
            histogram.add_metric(list(values), buckets, total)
            histogram.add_sample(f"{name}_created", dict(zip(labelnames, values, strict=True)), created)
        return histogram
    if kind == COUNTER:
        counter = CounterMetricFamily(name, documentation, labels=labelnames)
        for values, (created, value, exemplar) in series.items():
            found = None if exemplar is None else Exemplar({exemplar_label: exemplar[0]}, exemplar[1], exemplar[2])
            counter.add_metric(list(values), value, created=created, exemplar=found)
        return counter
    gauge = GaugeMetricFamily(name, documentation, labels=labelnames)
    if kind in LIVE_GAUGES:
        for values, value in series.items():
            gauge.add_metric(list(values), value)
    elif kind == NEWEST:
        for data in series.values():
            if data is not None:
                gauge.add_metric(list(data[0]), data[1])
    return gauge


class SharedCollector(Collector):
    """Every worker's series in ``directory``, merged at each scrape."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self) -> Iterator[Metric]:
        # Imported here: its families are built on this module (through family.py).
        from correlation.metrics.process import add_server_figures

        merged = read_directory(self.directory)
        add_server_figures(merged)
        for family, series in sorted(merged.families.items()):
            yield metric(family, dict(sorted(series.items())))


def registry_to_serve() -> CollectorRegistry:
    """What a scrape answers: the default registry, or the shared directory's merged view."""
    directory = store.directory
    if directory is None:
        return REGISTRY
    store.sample_now()  # this process's sampled values, fresh
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SharedCollector(directory))
    registry.register(PLATFORM_COLLECTOR)  # python_info: every process runs the same interpreter
    multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    if multiprocess_dir:
        from prometheus_client.multiprocess import MultiProcessCollector

        MultiProcessCollector(registry, multiprocess_dir)
    return registry


def render(accept_header: str | None) -> tuple[bytes, str]:
    """The metrics in the format the scraper asked for: OpenMetrics (with exemplars) or text."""
    encoder, content_type = choose_encoder(accept_header or "")
    return encoder(registry_to_serve()), content_type
