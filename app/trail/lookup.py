"""Find requests in Loki and build their trails: one lookup per request, the trail built once.

The ``trail`` CLI, bench, the alert notifier and the trail page all look up through here, so they
search the same windows (:mod:`trail.window`) with the same queries (:mod:`trail.logql`); both are
re-exported, so ``from trail.lookup import ...`` is all a reader needs.

- :func:`lookup_trail`: one ID's lines and trail (narrow window, widened once if incomplete);
- :func:`find_last_failure`: the newest request answered with status >= 500, optionally of one
  service, or one task's newest failed run, in a window;
- :func:`last_error`: that request and its trail; :meth:`TrailLookup.root_cause` then names the
  deepest failed hop and its error.

Bad input raises ValueError; Loki's trouble raises ``LokiQueryError``. ``budget_seconds`` bounds a
whole lookup (every page of every window), for callers that must answer in time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from correlation import schema
from correlation.ids import is_valid_id, time_ms_of
from trail.hops import Trail, build_trail
from trail.logql import (
    ERROR_LEVEL,
    check_correlation_id,
    check_service,
    check_task,
    error_lines_query,
    last_error_query,
    trail_query,
)
from trail.loki_query import DEFAULT_PAGE_SIZE, LokiQueryClient, LokiQueryError, QueriedEntry
from trail.root_cause import RootCause, root_cause
from trail.window import (
    DEFAULT_MAX_REQUEST_SECONDS,
    DEFAULT_SINCE_SECONDS,
    MARGIN_SECONDS,
    WIDE_SECONDS,
    Window,
    explicit_window,
    id_window,
    parse_duration,
    parse_time,
    widened_window,
)

__all__ = [
    "DEFAULT_MAX_REQUEST_SECONDS",
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_SINCE_SECONDS",
    "ERROR_LEVEL",
    "LAST_ERROR_SCAN",
    "MARGIN_SECONDS",
    "WIDE_SECONDS",
    "FailedRequest",
    "LastError",
    "LokiQueryClient",
    "LokiQueryError",
    "QueriedEntry",
    "RootCause",
    "TrailLookup",
    "Window",
    "check_correlation_id",
    "check_service",
    "check_task",
    "error_lines_query",
    "explicit_window",
    "find_last_failure",
    "id_window",
    "last_error",
    "last_error_query",
    "lookup_trail",
    "parse_duration",
    "parse_time",
    "trail_from_entries",
    "trail_query",
    "widened_window",
]

#: How many recent failed access lines the last-error search reads (the newest usable one wins).
LAST_ERROR_SCAN = 20


def trail_from_entries(correlation_id: str, entries: Sequence[QueriedEntry]) -> Trail:
    """The hop tree of Loki's answer; labels and metadata place lines that are not JSON."""
    return build_trail(
        correlation_id,
        (
            (
                e.ts_ns,
                e.line,
                e.label(schema.SERVICE_LABEL),
                {schema.REQUEST_ID: e.label(schema.REQUEST_ID), schema.LEVEL: e.label(schema.LEVEL)},
            )
            for e in entries
        ),
    )


@dataclass(frozen=True)
class TrailLookup:
    """What was asked of Loki for one ID, what came back, and the trail built from it (once)."""

    correlation_id: str
    query: str
    #: The windows searched, in order; the trail comes from the last one's entries.
    windows: tuple[Window, ...]
    entries: tuple[QueriedEntry, ...]
    trail: Trail
    #: Why the first window's trail looked incomplete, when the lookup widened; else empty.
    widened_because: tuple[str, ...] = field(default=())

    @property
    def window(self) -> Window:
        return self.windows[-1]

    @property
    def widened(self) -> bool:
        return len(self.windows) > 1

    @property
    def found(self) -> bool:
        return bool(self.entries)

    def root_cause(self) -> RootCause | None:
        """The deepest failed hop and its first error line (None: no hop answered >= 500)."""
        return root_cause(self.trail)


def _deadline(budget_seconds: float | None) -> float | None:
    return None if budget_seconds is None else time.monotonic() + budget_seconds


def lookup_trail(
    client: LokiQueryClient,
    correlation_id: str,
    window: Window | None = None,
    *,
    max_request_seconds: float = DEFAULT_MAX_REQUEST_SECONDS,
    page_size: int = DEFAULT_PAGE_SIZE,
    now_ns: int | None = None,
    budget_seconds: float | None = None,
) -> TrailLookup:
    """All lines of one request and its trail. ``window`` (e.g. a user's) is searched as given;
    without one an ID of ours is searched around its own time, widened once when the trail found
    there is incomplete, and a foreign ID over the last hour. ``budget_seconds`` bounds the whole
    lookup, every page of both windows (each request is bounded by LOKI_TIMEOUT_SECONDS anyway).
    """
    return _lookup(
        client,
        check_correlation_id(correlation_id),
        window,
        max_request_seconds=max_request_seconds,
        page_size=page_size,
        now_ns=now_ns,
        deadline=_deadline(budget_seconds),
    )


def _lookup(
    client: LokiQueryClient,
    correlation_id: str,
    window: Window | None,
    *,
    max_request_seconds: float,
    page_size: int,
    now_ns: int | None,
    deadline: float | None,
) -> TrailLookup:
    query = trail_query(correlation_id)

    def search(searched: Window) -> tuple[QueriedEntry, ...]:
        return tuple(
            client.query_all(query, searched.start_ns, searched.end_ns, page_size=page_size, deadline=deadline)
        )

    narrow = id_window(correlation_id, max_request_seconds)
    wide = widened_window(correlation_id, max_request_seconds)
    if window is not None or narrow is None or wide is None:
        first = window or Window.last(DEFAULT_SINCE_SECONDS, now_ns)
        entries = search(first)
        return TrailLookup(correlation_id, query, (first,), entries, trail_from_entries(correlation_id, entries))
    entries = search(narrow)
    trail = trail_from_entries(correlation_id, entries)
    problems = trail.problems() if entries else ["no lines"]
    if not problems:
        return TrailLookup(correlation_id, query, (narrow,), entries, trail)
    entries = search(wide)
    return TrailLookup(
        correlation_id, query, (narrow, wide), entries, trail_from_entries(correlation_id, entries), tuple(problems)
    )


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
        return root_cause(self.trail, below=hop) if hop is not None else self.lookup.root_cause()


def find_last_failure(
    client: LokiQueryClient,
    service: str | None = None,
    window: Window | None = None,
    *,
    now_ns: int | None = None,
    budget_seconds: float | None = None,
    task: str | None = None,
) -> FailedRequest | None:
    """The newest request answered with status >= 500 in ``window`` (default: the last hour), by
    ``service`` when given (any hop of it, not only the edge), a run of ``task`` when given. None
    when there is none."""
    return _find_last_failure(
        client, service, window or Window.last(DEFAULT_SINCE_SECONDS, now_ns), _deadline(budget_seconds), task=task
    )


def _find_last_failure(
    client: LokiQueryClient,
    service: str | None,
    window: Window,
    deadline: float | None,
    own_only: bool = False,
    task: str | None = None,
) -> FailedRequest | None:
    query = last_error_query(service, own_only=own_only, task=task)
    newest_first = client.query_range(
        query, window.start_ns, window.end_ns, limit=LAST_ERROR_SCAN, direction="backward", deadline=deadline
    )
    for entry in newest_first:
        try:
            fields = json.loads(entry.line)
        except ValueError:
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
) -> LastError | None:
    """The newest failed request in ``window`` (default: the last hour) and its trail; None when
    none failed. Our IDs are then looked up around their own time; a foreign ID over the window it
    was found in. ``budget_seconds`` bounds the search and the lookup together. ``prefer_own``:
    the newest of ``service``'s own failures when it has any (an alert on a service's own errors
    must not be explained by a request it only passed on), else any failure. ``task``: only
    failed runs of that task (a worker runs several; an alert on one must name a run of it)."""
    deadline = _deadline(budget_seconds)
    search = window or Window.last(DEFAULT_SINCE_SECONDS, now_ns)
    failure = _find_last_failure(client, service, search, deadline, True, task) if prefer_own else None
    if failure is None:
        failure = _find_last_failure(client, service, search, deadline, task=task)
    if failure is None:
        return None
    follow = None if time_ms_of(failure.correlation_id) is not None else failure.window
    lookup = _lookup(
        client,
        failure.correlation_id,
        follow,
        max_request_seconds=max_request_seconds,
        page_size=page_size,
        now_ns=now_ns,
        deadline=deadline,
    )
    return LastError(failure, lookup)
