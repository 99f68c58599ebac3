"""The request behind an alert, found in Loki: what the trail web app's ``/go/...`` redirects open,
so that an alert's annotation (a fixed URL, written when the rule is evaluated) leads to a request.

- :func:`newest_failed`: the newest request that failed (status >= 500), of a service, of a task,
  because a call to a peer failed (DownstreamErrors: that caller and that peer; ServiceDown: any
  caller, the service that is down);
- :func:`newest_lost_task`: the newest request that could not queue its task (TaskPublishFailures);
- :func:`slowest`: the slowest request of a service in a window (HighLatencyP99).

Why Loki and not Prometheus: an alert's template can read only metrics, and no metric names the
request behind these (the last-failed gauge holds one request per service, of any peer). Why not
the latency histogram's exemplars: an exemplar is the latest request of its bucket, not the
slowest; the top bucket reaches to infinity; and a rule's template cannot read exemplars at all.

The slowest request is found in two steps, each one Loki scan of the window's access lines: an
instant ``max_over_time`` of ``duration_ms`` (one sample), then the lines that took at least that
long (usually one). One metric query that named the request (``topk`` over a maximum by
``correlation_id``) would make a series per request, and Loki refuses a query past 500 series
(``max_query_series``); reading every access line and taking the maximum here would move every line
of the window over the network, and be cut short at the line cap on a busy service.

Everything read is log content: a correlation ID is validated like any inbound ID before a link is
built from it. Bad input raises ValueError; Loki's trouble raises ``LokiQueryError``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

from correlation import schema
from correlation.ids import is_valid_id
from trail.last_error import find_last_failure
from trail.logql import publish_failures_query, requests_at_least_query, slowest_duration_query
from trail.loki_query import LokiQueryClient, QueriedEntry
from trail.window import NS, Window

#: How many lines at the maximum duration are read (ties; a line without a usable ID is skipped).
SLOWEST_SCAN = 20
#: How many of the newest lost-task lines are read for one with a usable ID.
LOST_TASK_SCAN = 20


@dataclass(frozen=True)
class FoundRequest:
    """A request an alert points at: its ID, when its line was written, and the window searched."""

    correlation_id: str
    ts_ns: int
    window: Window
    #: The query that found it (shown when nothing is found, and in tests).
    query: str
    #: The slowest request's ``duration_ms``; None for the other searches.
    duration_ms: float | None = None


def newest_failed(
    client: LokiQueryClient,
    window: Window,
    *,
    service: str | None = None,
    peers: tuple[str, ...] = (),
    task: str | None = None,
    deadline: float | None = None,
) -> FoundRequest | None:
    """The newest request in ``window`` answered with status >= 500 (by ``service``; of ``task``;
    because a call to one of ``peers`` failed, each matched with or without a ``:port``)."""
    budget = None if deadline is None else max(0.0, deadline - time.monotonic())
    failure = find_last_failure(client, service, window, budget_seconds=budget, task=task, peers=peers)
    if failure is None:
        return None
    return FoundRequest(failure.correlation_id, failure.access_line.ts_ns, window, failure.query)


def newest_lost_task(
    client: LokiQueryClient,
    window: Window,
    *,
    service: str,
    task: str | None = None,
    reason: str | None = None,
    deadline: float | None = None,
) -> FoundRequest | None:
    """The newest request in ``window`` whose task ``service`` could not queue (of ``task``, for
    ``reason``): the ERROR line ``correlation.celery.send_task`` wrote inside it."""
    query = publish_failures_query(service, task, reason)
    newest_first = client.query_range(
        query, window.start_ns, window.end_ns, limit=LOST_TASK_SCAN, direction="backward", deadline=deadline
    )
    for entry in newest_first:
        found = _usable_id(entry)
        if found is not None:
            return FoundRequest(found, entry.ts_ns, window, query)
    return None


def slowest(
    client: LokiQueryClient,
    window: Window,
    *,
    service: str,
    route: str | None = None,
    deadline: float | None = None,
) -> FoundRequest | None:
    """The slowest HTTP request ``service`` answered in ``window`` (of ``route``), by the
    ``duration_ms`` of its access line; the newest of equally slow ones."""
    seconds = max(1, math.ceil((window.end_ns - window.start_ns) / NS))
    # The instant query looks back whole seconds from the window's end: the line query does too.
    searched = Window(window.end_ns - seconds * NS, window.end_ns)
    samples = client.query_vector(slowest_duration_query(service, route, seconds), searched.end_ns, deadline=deadline)
    if not samples:
        return None
    longest = max(sample.value for sample in samples)
    query = requests_at_least_query(service, route, longest)
    newest_first = client.query_range(
        query, searched.start_ns, searched.end_ns, limit=SLOWEST_SCAN, direction="backward", deadline=deadline
    )
    for entry in newest_first:
        found = _usable_id(entry)
        if found is not None:
            return FoundRequest(found, entry.ts_ns, searched, query, longest)
    return None


def _usable_id(entry: QueriedEntry) -> str | None:
    """The line's correlation ID (its JSON's, else its metadata's) when it is a valid ID."""
    fields = _fields(entry)
    for candidate in (fields.get(schema.CORRELATION_ID), entry.label(schema.CORRELATION_ID)):
        # The ID comes from log content: validate it like any inbound ID before linking to it.
        if isinstance(candidate, str) and is_valid_id(candidate):
            return candidate
    return None


def _fields(entry: QueriedEntry) -> dict[str, Any]:
    try:
        fields = json.loads(entry.line)
    except (ValueError, RecursionError):  # a line is untrusted: thousands of nested brackets
        return {}
    return fields if isinstance(fields, dict) else {}
