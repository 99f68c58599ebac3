"""How much broke: a service's failed requests in a window, by error type, counted by Loki.

- :func:`count_failures`: per ``error_type`` the number of failed requests (access lines with
  status >= 500, :func:`trail.logql.failed_requests_query`), when the type was first and last
  seen, and the service's requests in the same window (the failures' share);
- :func:`first_and_last_failure`: the oldest and the newest failed request of the window, for
  the trail of each.

Given a ``task``, both count and find the failed runs of that task only (its name is the ``task``
key of a run's access line), over the task's finished runs: a worker runs several tasks, and an
alert about one (TaskFailures) is about that one's runs.

One metric range query answers counts, first and last seen together: ``count_over_time`` with its
range equal to the step tiles the window, so its points add up to the window's count and the first
and last non-empty points bound when the type was seen, to within a step
(:attr:`FailureCounts.step_seconds`). A second, instant query counts the service's requests. Loki
answers from its own counts, never from a page of lines: no number here is cut by a limit, and
when Loki cannot answer the caller gets ``LokiQueryError``, not a smaller number.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from correlation import schema
from correlation.ids import is_valid_id
from trail.logql import failed_requests_query, failures_by_type_query, requests_count_query
from trail.loki_query import LokiQueryClient, QueriedEntry
from trail.window import NS, Window

#: The most points one count asks for: the window's length over this gives the step (the first
#: and last seen resolution), at least :data:`MIN_STEP_SECONDS`.
MAX_POINTS = 180
MIN_STEP_SECONDS = 10
#: Failed access lines read from each end of the window for the first and the last failure (the
#: first with a usable ID wins).
EDGE_SCAN = 20


@dataclass(frozen=True)
class ErrorTypeCount:
    """The failed requests of one error type; ``error_type`` None: failures that raised nothing
    (a 5xx the app returned itself)."""

    error_type: str | None
    count: int
    #: The end of the first and of the last step that held one: it was seen in the step before.
    first_seen_ns: int
    last_seen_ns: int


@dataclass(frozen=True)
class FailureCounts:
    """A service's failed requests in :attr:`window` (the failed runs of :attr:`task` when it is
    set), most frequent type first."""

    service: str
    window: Window
    step_seconds: int
    by_type: tuple[ErrorTypeCount, ...]
    #: Every request the service answered in the window (of :attr:`task`: its finished runs,
    #: retried attempts left out); None: not asked.
    requests: int | None = None
    #: The task whose runs were counted; None: every request of the service.
    task: str | None = None

    @property
    def failed(self) -> int:
        return sum(kind.count for kind in self.by_type)

    @property
    def share(self) -> float | None:
        """Failed over all requests (None when unknown or there were none)."""
        return self.failed / self.requests if self.requests else None


@dataclass(frozen=True)
class FailedRequestAt:
    """One failed request: its correlation ID and its access line's time."""

    correlation_id: str
    ts_ns: int


def count_window(window: Window) -> tuple[Window, int]:
    """``window`` stretched out to the step grid, and the step (seconds): the window
    :func:`count_failures` counts over. Loki puts a range query's points on multiples of its step
    since the epoch, whatever start and end it is given (it moves start back and end on to the
    grid): a window already on the grid is counted as it is, no step more on either side."""
    seconds = max(1, math.ceil((window.end_ns - window.start_ns) / NS))
    step = max(MIN_STEP_SECONDS, math.ceil(seconds / MAX_POINTS))
    step_ns = step * NS
    start_ns = window.start_ns // step_ns * step_ns
    end_ns = -(-window.end_ns // step_ns) * step_ns
    return Window(start_ns, max(end_ns, start_ns + step_ns)), step


def count_failures(
    client: LokiQueryClient,
    service: str,
    window: Window,
    *,
    error_type: str | None = None,
    task: str | None = None,
    with_requests: bool = True,
    deadline: float | None = None,
) -> FailureCounts:
    """The failed requests of ``service`` in ``window`` (stretched by :func:`count_window`) by error
    type (of ``error_type`` only when given), and with ``with_requests`` all its requests there;
    ``task``: the failed and the finished runs of that task only. Raises ``LokiQueryError`` (never
    a partial count) and ValueError for a bad name."""
    counted, step = count_window(window)
    query = failures_by_type_query(service, step, error_type, task)
    series = client.query_matrix(query, counted.start_ns + step * NS, counted.end_ns, step, deadline=deadline)
    by_type = []
    for one in series:
        points = [(at, value) for at, value in one.points if value > 0]
        if not points:
            continue
        kind = one.labels.get(schema.ERROR_TYPE) or None
        by_type.append(ErrorTypeCount(kind, round(sum(v for _, v in points)), points[0][0], points[-1][0]))
    by_type.sort(key=lambda kind: (-kind.count, kind.error_type or ""))
    requests = None
    if with_requests:
        seconds = (counted.end_ns - counted.start_ns) // NS
        query = requests_count_query(service, seconds, task)
        samples = client.query_vector(query, counted.end_ns, deadline=deadline)
        requests = round(sum(sample.value for sample in samples))
    return FailureCounts(service, counted, step, tuple(by_type), requests, task)


def first_and_last_failure(
    client: LokiQueryClient,
    service: str,
    window: Window,
    *,
    task: str | None = None,
    deadline: float | None = None,
) -> tuple[FailedRequestAt | None, FailedRequestAt | None]:
    """The oldest and the newest failed request of ``service`` (failed run of ``task``) in
    ``window`` (None: none there)."""
    query = failed_requests_query(service, task=task)
    ends = []
    for direction in ("forward", "backward"):
        entries = client.query_range(
            query, window.start_ns, window.end_ns, limit=EDGE_SCAN, direction=direction, deadline=deadline
        )
        ends.append(next((found for found in map(_failed_request, entries) if found is not None), None))
    return ends[0], ends[1]


def _failed_request(entry: QueriedEntry) -> FailedRequestAt | None:
    try:
        fields = json.loads(entry.line)
    except (ValueError, RecursionError):  # a line is untrusted: thousands of nested brackets
        fields = None
    candidates = (
        fields.get(schema.CORRELATION_ID) if isinstance(fields, dict) else None,
        entry.label(schema.CORRELATION_ID),
    )
    for candidate in candidates:
        # The ID comes from log content: validate it like any inbound ID before linking to it.
        if isinstance(candidate, str) and is_valid_id(candidate):
            return FailedRequestAt(candidate, entry.ts_ns)
    return None
