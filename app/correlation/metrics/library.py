"""The library's metrics: RED per route with correlation-ID exemplars, outgoing calls per peer,
task runs, and how the edge records them.

(The Loki shipper's own metrics are collected by the handler itself: :mod:`correlation.loki.collector`.)

Every family here is one of the library's own types (:mod:`correlation.metrics.family`): in one
process they count in memory; under several gunicorn workers each worker also writes them to its
file in the shared directory, and a scrape answers their sum with the newest exemplars
(:mod:`correlation.metrics.store`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from correlation.metrics.counter import ExemplarCounter
from correlation.metrics.gauge import Gauge, NewestGauge
from correlation.metrics.histogram import ExemplarHistogram
from correlation.schema import EXEMPLAR_LABEL

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUEST_DURATION = ExemplarHistogram(
    "http_server_request_duration_seconds",
    "Time to answer an HTTP request, by route and status.",
    ["service", "route", "method", "status"],
    BUCKETS,
    EXEMPLAR_LABEL,
)
SERVER_ERRORS = ExemplarCounter(
    "http_server_errors",
    "HTTP requests answered with a 5xx status; origin: self (own failure) or downstream (a call failed first).",
    ["service", "route", "method", "status", "origin"],
    exemplar_label=EXEMPLAR_LABEL,
)
IN_FLIGHT = Gauge("http_server_requests_in_flight", "HTTP requests being handled now.", ["service"])
CLIENT_DURATION = ExemplarHistogram(
    "http_client_request_duration_seconds",
    "Time of outgoing HTTP calls, by peer service (else host:port) and status ('error': no answer, 'timeout').",
    ["service", "downstream", "method", "status"],
    BUCKETS,
    EXEMPLAR_LABEL,
)
LAST_FAILED = NewestGauge(
    "correlation_last_failed_request",
    "The most recent request answered 5xx: its correlation ID as a label, its Unix time as value.",
    ["service", "correlation_id", "route", "status"],
    key_labels=1,  # one series per service: the newest (across workers too)
)
REJECTED_IDS = ExemplarCounter(
    "correlation_rejected_ids",
    "Inbound correlation IDs refused and replaced by a fresh one, by reason.",
    ["service", "reason"],
)

UNSHARED = Gauge(
    "correlation_metrics_unshared",
    "1: this process runs among several worker processes that do not share their metrics, so a "
    "scrape answers one worker's counts (add correlation.gunicorn's hooks).",
    ["service"],
)
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
        children[1].inc(1, correlation_id)
        record_failure(service, correlation_id, route, status)


def record_failure(service: str, correlation_id: str, route: str, status: int) -> None:
    """Keep exactly one ``correlation_last_failed_request`` series for ``service``: the newest."""
    LAST_FAILED.set((service, correlation_id, route, str(status)), time.time())


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
TASK_DURATION = ExemplarHistogram(
    "task_run_duration_seconds",
    "Time to run a task, by task and end state.",
    ["service", "task", "state"],
    TASK_BUCKETS,
    EXEMPLAR_LABEL,
)
TASK_QUEUE_WAIT = ExemplarHistogram(
    "task_queue_wait_seconds",
    "Time from publish to the start of a run, by task.",
    ["service", "task"],
    TASK_BUCKETS,
    EXEMPLAR_LABEL,
)
TASK_FAILURES = ExemplarCounter(
    "task_failures",
    "Task runs that failed (a retry is not a failure); origin: self or downstream.",
    ["service", "task", "origin"],
    exemplar_label=EXEMPLAR_LABEL,
)
TASK_IN_PROGRESS = Gauge("task_runs_in_progress", "Task runs executing now.", ["service"])
TASK_PUBLISH_FAILURES = ExemplarCounter(
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
    TASK_DURATION.labels(service, task, state).observe(seconds, correlation_id)
    if queue_wait_seconds is not None:
        TASK_QUEUE_WAIT.labels(service, task).observe(queue_wait_seconds, correlation_id)
    if status >= 500:
        TASK_FAILURES.labels(service, task, origin or "self").inc(1, correlation_id)
        record_failure(service, correlation_id, task, status)


def count_task_publish_failure(service: str, task: str, reason: str) -> None:
    TASK_PUBLISH_FAILURES.labels(service, task, reason).inc()
