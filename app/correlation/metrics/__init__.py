"""Prometheus metrics: RED per route with correlation-ID exemplars, outgoing calls per peer, task
runs; exact under any number of gunicorn workers.

- :mod:`~correlation.metrics.library`: the library's metrics and how the edge records them;
- :mod:`~correlation.metrics.histogram`, :mod:`~correlation.metrics.counter`,
  :mod:`~correlation.metrics.gauge` (on :mod:`~correlation.metrics.family`): the metric types,
  in memory, or also written through to the worker's file;
- :mod:`~correlation.metrics.store`: whether this process shares its metrics, and where;
- :mod:`~correlation.metrics.shared`: the per-worker file (memory-mapped, one writer);
- :mod:`~correlation.metrics.merge` and :mod:`~correlation.metrics.archive`: the server's sums
  from every worker's file, dead workers' included;
- :mod:`~correlation.metrics.process`: the server's ``process_*`` and ``python_gc_*`` figures,
  sampled by each worker;
- :mod:`~correlation.metrics.exposition`: the scrape (:func:`render`);
- :mod:`~correlation.metrics.unshared`: a multi-worker server without the shared directory is told so.
"""

from correlation.metrics import process  # noqa: F401 - each worker samples its process figures
from correlation.metrics.exposition import render
from correlation.metrics.library import (
    BUCKETS,
    CLIENT_DURATION,
    IN_FLIGHT,
    LAST_FAILED,
    REJECTED_IDS,
    REQUEST_DURATION,
    SERVER_ERRORS,
    TASK_BUCKETS,
    TASK_DURATION,
    TASK_FAILURES,
    TASK_IN_PROGRESS,
    TASK_PUBLISH_FAILURES,
    TASK_QUEUE_WAIT,
    UNSHARED,
    count_in_flight,
    count_rejected_id,
    count_task_publish_failure,
    observe_outgoing,
    observe_request,
    observe_task,
    record_failure,
)

__all__ = [
    "BUCKETS",
    "CLIENT_DURATION",
    "IN_FLIGHT",
    "LAST_FAILED",
    "REJECTED_IDS",
    "REQUEST_DURATION",
    "SERVER_ERRORS",
    "TASK_BUCKETS",
    "TASK_DURATION",
    "TASK_FAILURES",
    "TASK_IN_PROGRESS",
    "TASK_PUBLISH_FAILURES",
    "TASK_QUEUE_WAIT",
    "UNSHARED",
    "count_in_flight",
    "count_rejected_id",
    "count_task_publish_failure",
    "observe_outgoing",
    "observe_request",
    "observe_task",
    "record_failure",
    "render",
]
