"""Prometheus metrics: RED per route with correlation-ID exemplars, outgoing calls, the shipper.

Exemplars need two things that shape deployment: OpenMetrics exposition (``render`` negotiates it
from the scraper's Accept header) and single-process metrics. prometheus_client's multiprocess
mode silently drops exemplars, so each service runs one gunicorn worker with threads and scales by
replicas.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from correlation.loki import DROP_REASONS, RETRY_REASONS, LokiHandler

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The exemplar label; with IDs of at most 64 characters it stays inside the 128-character limit.
EXEMPLAR_LABEL = "correlation_id"

REQUEST_DURATION = Histogram(
    "http_server_request_duration_seconds",
    "Time to answer an HTTP request, by route and status.",
    ["service", "route", "method", "status"],
    buckets=BUCKETS,
)
SERVER_ERRORS = Counter(
    "http_server_errors",
    "HTTP requests answered with a 5xx status.",
    ["service", "route", "method", "status"],
)
IN_FLIGHT = Gauge("http_server_requests_in_flight", "HTTP requests being handled now.", ["service"])
CLIENT_DURATION = Histogram(
    "http_client_request_duration_seconds",
    "Time of outgoing HTTP calls, by downstream host:port and status ('error' when no answer).",
    ["service", "downstream", "method", "status"],
    buckets=BUCKETS,
)
LAST_FAILED = Gauge(
    "correlation_last_failed_request",
    "The most recent request answered 5xx: its correlation ID as a label, its Unix time as value.",
    ["service", "correlation_id", "route", "status"],
)
REJECTED_IDS = Counter(
    "correlation_rejected_ids",
    "Inbound correlation IDs refused and replaced by a fresh one, by reason.",
    ["service", "reason"],
)

_last_failed_labels: dict[str, tuple[str, str, str, str]] = {}
_last_failed_lock = threading.Lock()
# Per label set, the histogram child and (for 5xx) the error counter child: label lookups in
# prometheus_client take a lock and validate, and this runs on every request.
_request_children: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}


def observe_request(service: str, route: str, method: str, status: int, seconds: float, correlation_id: str) -> None:
    """Record one answered request; 5xx also counts as an error and becomes the last failure."""
    key = (service, route, method, status)
    children = _request_children.get(key)
    if children is None:
        labels = (service, route, method, str(status))
        errors = SERVER_ERRORS.labels(*labels) if status >= 500 else None
        children = _request_children.setdefault(key, (REQUEST_DURATION.labels(*labels), errors))
    exemplar = {EXEMPLAR_LABEL: correlation_id}
    children[0].observe(seconds, exemplar)
    if children[1] is not None:
        children[1].inc(1, exemplar)
        record_failure(service, correlation_id, route, status)


def record_failure(service: str, correlation_id: str, route: str, status: int) -> None:
    """Keep exactly one ``correlation_last_failed_request`` series for ``service``: the newest."""
    labels = (service, correlation_id, route, str(status))
    with _last_failed_lock:
        previous = _last_failed_labels.get(service)
        if previous is not None and previous != labels:
            LAST_FAILED.remove(*previous)
        LAST_FAILED.labels(*labels).set(time.time())
        _last_failed_labels[service] = labels


def observe_outgoing(service: str, downstream: str, method: str, status: str, seconds: float) -> None:
    CLIENT_DURATION.labels(service, downstream, method, status).observe(seconds)


def count_rejected_id(service: str, reason: str) -> None:
    REJECTED_IDS.labels(service, reason).inc()


class ShipperCollector(Collector):
    """Reads the counters of every :class:`LokiHandler` on the root logger at scrape time."""

    def collect(self) -> Iterator[Metric]:
        sent = CounterMetricFamily("loki_shipper_sent_lines", "Log lines Loki accepted.", labels=["service"])
        batches = CounterMetricFamily("loki_shipper_sent_batches", "Pushes Loki accepted.", labels=["service"])
        truncated = CounterMetricFamily(
            "loki_shipper_truncated_lines", "Lines cut to Loki's maximum line size.", labels=["service"]
        )
        retries = CounterMetricFamily("loki_shipper_retries", "Pushes retried, by reason.", labels=["service", "reason"])
        dropped = CounterMetricFamily(
            "loki_shipper_dropped_lines", "Log lines that never reached Loki, by reason.", labels=["service", "reason"]
        )
        buffered_lines = GaugeMetricFamily("loki_shipper_buffered_lines", "Lines waiting to be sent.", labels=["service"])
        buffered_bytes = GaugeMetricFamily("loki_shipper_buffered_bytes", "Bytes waiting to be sent.", labels=["service"])
        spooled_lines = GaugeMetricFamily("loki_shipper_spooled_lines", "Lines waiting in the disk spool.", labels=["service"])
        spooled_bytes = GaugeMetricFamily("loki_shipper_spooled_bytes", "Disk used by the spool.", labels=["service"])
        for handler in logging.getLogger().handlers:
            if not isinstance(handler, LokiHandler):
                continue
            service = handler.labels.get("service_name", "")
            stats = handler.stats.snapshot()
            lines, size = handler.buffered()
            sent.add_metric([service], stats.sent_lines)
            batches.add_metric([service], stats.sent_batches)
            truncated.add_metric([service], stats.truncated_lines)
            for reason in RETRY_REASONS:  # every reason from the start, so rate() sees the first one
                retries.add_metric([service, reason], stats.retries[reason])
            for reason in DROP_REASONS:
                dropped.add_metric([service, reason], stats.dropped[reason])
            buffered_lines.add_metric([service], lines)
            buffered_bytes.add_metric([service], size)
            lines, size = handler.spooled()
            spooled_lines.add_metric([service], lines)
            spooled_bytes.add_metric([service], size)
        yield from (sent, batches, truncated, retries, dropped, buffered_lines, buffered_bytes, spooled_lines, spooled_bytes)


REGISTRY.register(ShipperCollector())


def render(accept_header: str | None) -> tuple[bytes, str]:
    """The registry in the format the scraper asked for: OpenMetrics (with exemplars) or text."""
    encoder, content_type = choose_encoder(accept_header or "")
    return encoder(REGISTRY), content_type
