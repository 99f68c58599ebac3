"""Prometheus metrics: RED per route with correlation-ID exemplars, and outgoing calls per peer.

(The Loki shipper's own metrics are collected by the handler itself: :mod:`correlation.loki.collector`.)

Exemplars need two things that shape deployment: OpenMetrics exposition (``render`` negotiates it
from the scraper's Accept header) and single-process metrics. prometheus_client's multiprocess
mode silently drops exemplars, so each service runs one gunicorn worker with threads and scales by
replicas.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from correlation.histogram import ExemplarHistogram
from correlation.schema import EXEMPLAR_LABEL

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUEST_DURATION = ExemplarHistogram(
    "http_server_request_duration_seconds",
    "Time to answer an HTTP request, by route and status.",
    ["service", "route", "method", "status"],
    BUCKETS,
    EXEMPLAR_LABEL,
)
SERVER_ERRORS = Counter(
    "http_server_errors",
    "HTTP requests answered with a 5xx status; origin: self (own failure) or downstream (a call failed first).",
    ["service", "route", "method", "status", "origin"],
)
IN_FLIGHT = Gauge("http_server_requests_in_flight", "HTTP requests being handled now.", ["service"])
CLIENT_DURATION = ExemplarHistogram(
    "http_client_request_duration_seconds",
    "Time of outgoing HTTP calls, by peer service (else host:port) and status ('error': no answer, 'timeout').",
    ["service", "downstream", "method", "status"],
    BUCKETS,
    EXEMPLAR_LABEL,
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
_request_children: dict[tuple[str, str, str, int, str | None], tuple[Any, Any]] = {}


def observe_request(
    service: str, route: str, method: str, status: int, seconds: float, correlation_id: str, origin: str | None = None
) -> None:
    """Record one answered request; 5xx also counts as an error (by ``origin``, default ``self``)
    and becomes the last failure."""
    key = (service, route, method, status, origin)
    children = _request_children.get(key)
    if children is None:
        labels = (service, route, method, str(status))
        errors = SERVER_ERRORS.labels(*labels, origin or "self") if status >= 500 else None
        children = _request_children.setdefault(key, (REQUEST_DURATION.labels(*labels), errors))
    children[0].observe(seconds, correlation_id)
    if children[1] is not None:
        children[1].inc(1, {EXEMPLAR_LABEL: correlation_id})
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


def count_in_flight(service: str, count: Callable[[], float]) -> None:
    """``http_server_requests_in_flight{service}`` is ``count()`` at each scrape."""
    IN_FLIGHT.labels(service).set_function(count)


def observe_outgoing(service: str, peer: str, method: str, status: str, seconds: float) -> None:
    CLIENT_DURATION.labels(service, peer, method, status).observe(seconds)


def count_rejected_id(service: str, reason: str) -> None:
    REJECTED_IDS.labels(service, reason).inc()


# -- Task runs (correlation.celery): the same RED, per task --------------------------------------

#: Queue waits and task runs can last far longer than a request: the request buckets, then minutes.
TASK_BUCKETS = (*BUCKETS, 30.0, 60.0, 300.0)
TASK_DURATION = Histogram(
    "task_run_duration_seconds",
    "Time to run a task, by task and end state.",
    ["service", "task", "state"],
    buckets=TASK_BUCKETS,
)
TASK_QUEUE_WAIT = Histogram(
    "task_queue_wait_seconds",
    "Time from publish to the start of a run, by task.",
    ["service", "task"],
    buckets=TASK_BUCKETS,
)
TASK_FAILURES = Counter(
    "task_failures",
    "Task runs that failed (a retry is not a failure); origin: self or downstream.",
    ["service", "task", "origin"],
)
TASK_IN_PROGRESS = Gauge("task_runs_in_progress", "Task runs executing now.", ["service"])
TASK_PUBLISH_FAILURES = Counter(
    "task_publish_failures", "Tasks that could not be published, by reason.", ["service", "task", "reason"]
)


def observe_task(
    service: str,
    task: str,
    state: str,
    status: int,
    seconds: float,
    queue_wait_seconds: float | None,
    correlation_id: str,
    origin: str | None = None,
) -> None:
    """Record one task run; a failure (status >= 500) is counted and becomes the last failure,
    with the task's name as its route."""
    exemplar = {EXEMPLAR_LABEL: correlation_id}
    TASK_DURATION.labels(service, task, state).observe(seconds, exemplar)
    if queue_wait_seconds is not None:
        TASK_QUEUE_WAIT.labels(service, task).observe(queue_wait_seconds, exemplar)
    if status >= 500:
        TASK_FAILURES.labels(service, task, origin or "self").inc(1, exemplar)
        record_failure(service, correlation_id, task, status)


def count_task_publish_failure(service: str, task: str, reason: str) -> None:
    TASK_PUBLISH_FAILURES.labels(service, task, reason).inc()


def render(accept_header: str | None) -> tuple[bytes, str]:
    """The registry in the format the scraper asked for: OpenMetrics (with exemplars) or text."""
    encoder, content_type = choose_encoder(accept_header or "")
    return encoder(REGISTRY), content_type
