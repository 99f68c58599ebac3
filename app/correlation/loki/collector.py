"""The shipper's own Prometheus metrics, read from each handler at scrape time.

A :class:`LokiHandler` registers itself here when it is built (``registry=`` as prometheus_client's
collectors take it) and leaves when it is closed. One collector per registry serves every handler
registered with it: two collectors yielding the same metric names would be refused by the
registry.

Under several workers sharing their metrics (:mod:`correlation.metrics.store`), the collector of
the default registry is also sampled: its totals are written into families of the library's own
types, which every worker's file carries and a scrape sums (counters never go down there: a handler
closed in a live worker keeps its counts).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from correlation import schema
from correlation.loki.stats import DROP_REASONS, RETRY_REASONS, ShipperStats
from correlation.metrics import store
from correlation.metrics.counter import ExemplarCounter
from correlation.metrics.gauge import Gauge


class Reporting(Protocol):
    """What a handler shows the collector (the Loki handler; a protocol, so this module does not
    import the handler that registers with it)."""

    @property
    def labels(self) -> Mapping[str, str]: ...

    @property
    def stats(self) -> ShipperStats: ...

    def buffered(self) -> tuple[int, int]: ...

    def spooled(self) -> tuple[int, int]: ...


_collectors: weakref.WeakKeyDictionary[CollectorRegistry, ShipperCollector] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def register(handler: Reporting, registry: CollectorRegistry) -> None:
    """Report ``handler``'s counters in ``registry`` from now on."""
    with _lock:
        collector = _collectors.get(registry)
        if collector is None:
            collector = _collectors[registry] = ShipperCollector()
            registry.register(collector)
            if registry is REGISTRY:
                store.add_sampler(collector.sample)
    collector.handlers.add(handler)


def unregister(handler: Reporting) -> None:
    """Stop reporting ``handler`` (it was closed) in every registry. Shared, its last figures are
    written first: a worker's file then says what its shipper ended with (nothing buffered, or the
    rest counted), and a worker whose file still shows buffered lines did not close it: it was
    killed, and the server counts them (``worker_lost``, :mod:`correlation.metrics.archive`)."""
    with _lock:
        for registry, collector in _collectors.items():
            if handler in collector.handlers and registry is REGISTRY and store.file is not None:
                collector.sample()
            collector.handlers.discard(handler)


class ShipperCollector(Collector):
    """Reads the counters of its handlers (held weakly) at scrape time."""

    def __init__(self) -> None:
        self.handlers: weakref.WeakSet[Reporting] = weakref.WeakSet()

    def totals(self) -> dict[tuple[str, str, str], int]:
        """(metric, service, reason) -> value, summed over the handlers of each service."""
        # Summed per service: two handlers of one service (say, one per test, or a second one
        # added by dictConfig) must not give a scrape duplicate series.
        totals: dict[tuple[str, str, str], int] = {}
        for handler in list(self.handlers):
            service = handler.labels.get(schema.SERVICE_LABEL, "")
            stats = handler.stats.snapshot()
            samples = [
                ("sent_lines", "", stats.sent_lines),
                ("sent_batches", "", stats.sent_batches),
                ("truncated_lines", "", stats.truncated_lines),
                ("sender_restarts", "", stats.sender_restarts),
            ]
            samples += [("retries", reason, stats.retries[reason]) for reason in RETRY_REASONS]
            samples += [("dropped_lines", reason, stats.dropped[reason]) for reason in DROP_REASONS]
            (buffered_lines, buffered_bytes), (spooled_lines, spooled_bytes) = handler.buffered(), handler.spooled()
            samples += [
                ("buffered_lines", "", buffered_lines),
                ("buffered_bytes", "", buffered_bytes),
                ("spooled_lines", "", spooled_lines),
                ("spooled_bytes", "", spooled_bytes),
            ]
            for name, reason, value in samples:
                key = (name, service, reason)
                totals[key] = totals.get(key, 0) + value
        return totals

    def sample(self) -> None:
        """Write the totals into the shared families (this worker's file)."""
        for (name, service, reason), total in self.totals().items():
            family = _SHARED[name]
            values = (service, reason) if reason else (service,)
            if isinstance(family, Gauge):
                family.labels(*values).set(total)
            else:
                family.labels(*values).set_total(total)

    def collect(self) -> Iterator[Metric]:
        totals = self.totals()
        for name, kind, doc, by_reason in _FAMILIES:
            family_type = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family = family_type(
                f"loki_shipper_{name}", doc, labels=["service", "reason"] if by_reason else ["service"]
            )
            for (sample, owner, reason), total in sorted(totals.items()):
                if sample == name:
                    family.add_metric([owner, reason] if by_reason else [owner], total)
            yield family


#: (name, type, help, labelled by reason): every reason is reported from the start, so that
#: rate() sees the first retry or drop.
_FAMILIES = (
    ("sent_lines", "counter", "Log lines Loki accepted.", False),
    ("sent_batches", "counter", "Pushes Loki accepted.", False),
    ("truncated_lines", "counter", "Lines cut to Loki's maximum line size.", False),
    ("sender_restarts", "counter", "Times the sender thread met an unexpected error and went on.", False),
    ("retries", "counter", "Pushes retried, by reason.", True),
    ("dropped_lines", "counter", "Log lines that never reached Loki, by reason.", True),
    ("buffered_lines", "gauge", "Lines waiting to be sent.", False),
    ("buffered_bytes", "gauge", "Bytes waiting to be sent.", False),
    ("spooled_lines", "gauge", "Lines waiting in the disk spool.", False),
    ("spooled_bytes", "gauge", "Disk used by the spool.", False),
)


def _shared_family(name: str, kind: str, documentation: str, by_reason: bool) -> ExemplarCounter | Gauge:
    family_type = ExemplarCounter if kind == "counter" else Gauge
    labels = ["service", "reason"] if by_reason else ["service"]
    return family_type(f"loki_shipper_{name}", documentation, labels, registry=None)


#: The same families as the library's own types: what a worker writes to its file when shared.
_SHARED = {name: _shared_family(name, kind, doc, by_reason) for name, kind, doc, by_reason in _FAMILIES}
