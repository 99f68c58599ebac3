"""The last failed request: the newest request answered with status >= 500, found in Loki's
access lines, then its trail (what ``trail --last-error`` and the alert notifier explain).

- :func:`find_last_failure`: the newest request answered with status >= 500, optionally of one
  service, or one task's newest failed run, in a window;
- :func:`last_error`: that request and its trail (looked up by :mod:`trail.lookup`);
  :meth:`LastError.root_cause` then names the deepest failed hop and its error.

The ID of a failed request comes from log content, so it is validated like any inbound ID before
it is queried. Bad input raises ValueError; Loki's trouble raises ``LokiQueryError``.
``budget_seconds`` bounds the search and the lookup together.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from correlation import schema
from correlation.ids import is_valid_id, time_ms_of
from trail.hops import Trail
from trail.logql import last_error_query
from trail.loki_query import DEFAULT_PAGE_SIZE, LokiQueryClient, QueriedEntry
from trail.lookup import DEFAULT_MAX_LINES, TrailLookup, deadline_after, lookup_trail_until
from trail.root_cause import RootCause, root_cause
from trail.window import DEFAULT_MAX_REQUEST_SECONDS, DEFAULT_SINCE_SECONDS, Window

#: How many recent failed access lines the last-error search reads (the newest usable one wins).
LAST_ERROR_SCAN = 20


@dataclass(frozen=True)
class FailedRequest:
    """The newest failed request found by the last-error search, and where it was searched."""

    correlation_id: str
    #: The failed hop's access line (the newest with status >= 500 and a usable ID).
    access_line: QueriedEntry
    #: The search: the query sent and the window it searched.
    query: str
    window: Window
    #: The failed hop's own request ID (None when its access line did not say).
    request_id: str | None = None

    @property
    def service(self) -> str | None:
        """The service that answered >= 500 (the stream label of its access line)."""
        return self.access_line.label(schema.SERVICE_LABEL)


@dataclass(frozen=True)
class LastError:
    """The newest failed request and its trail."""

    failure: FailedRequest
    lookup: TrailLookup

    @property
    def correlation_id(self) -> str:
        return self.failure.correlation_id

    @property
    def trail(self) -> Trail:
        return self.lookup.trail

    def root_cause(self) -> RootCause | None:
        """Where the failure started: the deepest failed hop reached from the failed request's own
        hop by following failing children (the whole trail's when that hop is not in it)."""
        hop = self.trail.hops.get(self.failure.request_id or "")
        return root_cause(self.trail, below=hop) if hop is not None else root_cause(self.trail)


def find_last_failure(
    client: LokiQueryClient,
    service: str | None = None,
    window: Window | None = None,
    *,
    now_ns: int | None = None,
    budget_seconds: float | None = None,
    task: str | None = None,
    peers: tuple[str, ...] = (),
) -> FailedRequest | None:
    """The newest request answered with status >= 500 in ``window`` (default: the last hour), by
    ``service`` when given (any hop of it, not only the edge), a run of ``task`` when given, one
    that failed because a call to one of ``peers`` failed when given. None when there is none."""
    search = window or Window.last(DEFAULT_SINCE_SECONDS, now_ns)
    return _find_last_failure(client, service, search, deadline_after(budget_seconds), task=task, peers=peers)


def _find_last_failure(
    client: LokiQueryClient,
    service: str | None,
    window: Window,
    deadline: float | None,
    own_only: bool = False,
    task: str | None = None,
    peers: tuple[str, ...] = (),
) -> FailedRequest | None:
    query = last_error_query(service, own_only=own_only, task=task, peers=peers)
    newest_first = client.query_range(
        query, window.start_ns, window.end_ns, limit=LAST_ERROR_SCAN, direction="backward", deadline=deadline
    )
    for entry in newest_first:
        try:
            fields = json.loads(entry.line)
        except (ValueError, RecursionError):  # a line is untrusted: thousands of nested brackets
            fields = None
        candidate = fields.get(schema.CORRELATION_ID) if isinstance(fields, dict) else None
        if not isinstance(candidate, str):
            candidate = entry.label(schema.CORRELATION_ID)
        # The ID comes from log content: validate it like any inbound ID before querying with it.
        if isinstance(candidate, str) and is_valid_id(candidate):
            request_id = fields.get(schema.REQUEST_ID) if isinstance(fields, dict) else None
            if not isinstance(request_id, str):
                request_id = entry.label(schema.REQUEST_ID)
            return FailedRequest(candidate, entry, query, window, request_id)
    return None


def last_error(
    client: LokiQueryClient,
    service: str | None = None,
    window: Window | None = None,
    *,
    max_request_seconds: float = DEFAULT_MAX_REQUEST_SECONDS,
    page_size: int = DEFAULT_PAGE_SIZE,
    now_ns: int | None = None,
    budget_seconds: float | None = None,
    prefer_own: bool = False,
    task: str | None = None,
    max_lines: int = DEFAULT_MAX_LINES,
) -> LastError | None:
    """The newest failed request in ``window`` (default: the last hour) and its trail; None when
    none failed. Our IDs are then looked up around their own time; a foreign ID over the window it
    was found in. ``budget_seconds`` bounds the search and the lookup together. ``prefer_own``:
    the newest of ``service``'s own failures when it has any (an alert on a service's own errors
    must not be explained by a request it only passed on), else any failure. ``task``: only
    failed runs of that task (a worker runs several; an alert on one must name a run of it).
    ``max_lines``: the most lines read for the trail (:func:`trail.lookup.lookup_trail`)."""
    deadline = deadline_after(budget_seconds)
    search = window or Window.last(DEFAULT_SINCE_SECONDS, now_ns)
    failure = _find_last_failure(client, service, search, deadline, True, task) if prefer_own else None
    if failure is None:
        failure = _find_last_failure(client, service, search, deadline, task=task)
    if failure is None:
        return None
    follow = None if time_ms_of(failure.correlation_id) is not None else failure.window
    lookup = lookup_trail_until(
        client,
        failure.correlation_id,
        follow,
        max_request_seconds=max_request_seconds,
        page_size=page_size,
        now_ns=now_ns,
        deadline=deadline,
        max_lines=max_lines,
    )
    return LastError(failure, lookup)
