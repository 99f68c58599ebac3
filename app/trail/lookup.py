"""Find one request in Loki and build its trail: one lookup per request, the trail built once.

The ``trail`` CLI, bench, the alert notifier and the trail page all look up through here, so they
search the same windows (:mod:`trail.window`) with the same queries (:mod:`trail.logql`).

- :func:`lookup_trail`: one ID's lines and trail (the ID's own seconds, the rest of the narrow
  window if the trail there is incomplete, widened once if it still is);
  :func:`trail.root_cause.root_cause` of its trail then names the deepest failed hop and its error.

Which request failed last, and its trail, is :mod:`trail.last_error` (built on this lookup).

Bad input raises ValueError; Loki's trouble raises ``LokiQueryError``. ``budget_seconds`` bounds a
whole lookup (every page of every window), for callers that must answer in time; ``max_lines``
bounds the lines read for one trail (:attr:`TrailLookup.lines_capped` says when it cut).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from correlation import schema
from correlation.settings import ConfigError
from trail.hops import Trail, build_trail
from trail.logql import (
    check_correlation_id,
    trail_query,
)
from trail.loki_query import DEFAULT_PAGE_SIZE, LokiQueryClient, QueriedEntry
from trail.window import (
    DEFAULT_MAX_REQUEST_SECONDS,
    DEFAULT_SINCE_SECONDS,
    Window,
    first_window,
    id_window,
    rest_of,
    widened_window,
)

#: The most lines read and shown for one trail: a request writes tens; a window stuffed with
#: lines under one ID (anyone who can push can) must not hold a page's thread or fill its memory.
DEFAULT_MAX_LINES = 2000
#: The environment variable that sets it, for the page and the CLI (``--max-lines`` wins there).
MAX_LINES_ENV = "TRAIL_MAX_LINES"
#: The largest cap that may be set: past it a page is too large for a browser anyway.
MAX_LINES_LIMIT = 100_000


def check_max_lines(value: int) -> int:
    """``value`` when it is a usable line cap (1..MAX_LINES_LIMIT); ValueError otherwise."""
    if not 1 <= value <= MAX_LINES_LIMIT:
        raise ValueError(f"{value} lines: the cap must be between 1 and {MAX_LINES_LIMIT}")
    return value


def max_lines_from_env(env: Mapping[str, str]) -> int:
    """``TRAIL_MAX_LINES`` or the default."""
    raw = env.get(MAX_LINES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_LINES
    try:
        return check_max_lines(int(raw))
    except ValueError as exc:
        raise ConfigError(f"{MAX_LINES_ENV}={raw!r} is not valid: {exc}") from None


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
    #: The windows searched, in order; the trail comes from the last one's entries. The first is
    #: the ID's own seconds when the trail was complete there, else the whole narrow window.
    windows: tuple[Window, ...]
    entries: tuple[QueriedEntry, ...]
    trail: Trail
    #: Why the first window's trail looked incomplete, when the lookup widened; else empty.
    widened_because: tuple[str, ...] = field(default=())
    #: The most lines read for the trail, and whether the window held more (the trail is cut).
    max_lines: int = DEFAULT_MAX_LINES
    lines_capped: bool = False
    #: Every window queried, in order (the narrow window in parts: its first seconds, the rest).
    queried: tuple[Window, ...] = field(default=())

    @property
    def window(self) -> Window:
        return self.windows[-1]

    @property
    def widened(self) -> bool:
        return len(self.windows) > 1

    @property
    def found(self) -> bool:
        return bool(self.entries)


def deadline_after(budget_seconds: float | None) -> float | None:
    """The ``time.monotonic()`` by which a lookup given ``budget_seconds`` must be done (None: no bound)."""
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
    max_lines: int = DEFAULT_MAX_LINES,
) -> TrailLookup:
    """All lines of one request and its trail. ``window`` (e.g. a user's) is searched as given;
    without one an ID of ours is searched around its own time, widened once when the trail found
    there is incomplete, and a foreign ID over the last hour. ``budget_seconds`` bounds the whole
    lookup, every page of both windows (each request is bounded by LOKI_TIMEOUT_SECONDS anyway);
    ``max_lines`` the lines read (the oldest are kept; ``lines_capped`` says so).
    """
    return lookup_trail_until(
        client,
        check_correlation_id(correlation_id),
        window,
        max_request_seconds=max_request_seconds,
        page_size=page_size,
        now_ns=now_ns,
        deadline=deadline_after(budget_seconds),
        max_lines=max_lines,
    )


def lookup_trail_until(
    client: LokiQueryClient,
    correlation_id: str,
    window: Window | None,
    *,
    max_request_seconds: float,
    page_size: int,
    now_ns: int | None,
    deadline: float | None,
    max_lines: int = DEFAULT_MAX_LINES,
) -> TrailLookup:
    """:func:`lookup_trail` of an already checked ID, bounded by ``deadline`` (``time.monotonic()``,
    from :func:`deadline_after`) rather than a budget: for a caller whose one budget also covers
    other queries (:func:`trail.last_error.last_error`: the search, then this lookup)."""
    query = trail_query(correlation_id)
    check_max_lines(max_lines)

    queried: list[Window] = []

    def search(*windows: Window) -> tuple[tuple[QueriedEntry, ...], bool]:
        """The oldest ``max_lines`` entries of these windows (disjoint, oldest first), and whether
        they held more."""
        found: list[QueriedEntry] = []
        for searched in windows:
            # One more than the cap: tells "exactly the cap" from "more than the cap".
            found += client.query_all(
                query,
                searched.start_ns,
                searched.end_ns,
                page_size=page_size,
                deadline=deadline,
                max_entries=max_lines + 1 - len(found),
            )
            queried.append(searched)
            if len(found) > max_lines:
                break
        return tuple(found[:max_lines]), len(found) > max_lines

    def done(
        windows: tuple[Window, ...],
        entries: tuple[QueriedEntry, ...],
        capped: bool,
        trail: Trail | None = None,
        widened_because: tuple[str, ...] = (),
    ) -> TrailLookup:
        built = trail_from_entries(correlation_id, entries) if trail is None else trail
        return TrailLookup(
            correlation_id, query, windows, entries, built, widened_because, max_lines, capped, tuple(queried)
        )

    def incomplete(entries: tuple[QueriedEntry, ...], trail: Trail) -> list[str]:
        return trail.problems() if entries else ["no lines"]

    narrow = id_window(correlation_id, max_request_seconds)
    first = first_window(correlation_id, max_request_seconds)
    wide = widened_window(correlation_id, max_request_seconds)
    if window is not None or narrow is None or first is None or wide is None:
        searched = window or Window.last(DEFAULT_SINCE_SECONDS, now_ns)
        return done((searched,), *search(searched))
    # The ID's own seconds first: Loki scans every line in a window, so a request that ended
    # within them costs a few seconds of lines, not the longest request's.
    entries, capped = search(first)
    trail = trail_from_entries(correlation_id, entries)
    # A task run in the trail is asynchronous work that may go on (a retry, a task it queued)
    # after the request's own seconds, and nothing in the parent's lines says so: read on then.
    has_tasks = any(hop.is_task for hop in trail.hops.values())
    if capped or not (has_tasks or incomplete(entries, trail)):  # more lines than the cap: a wider window adds none
        return done((first,), entries, capped, trail)
    # Then the rest of the narrow window: the same lines a search of all of it finds, the first
    # seconds not read twice.
    rest = rest_of(narrow, first)
    older, older_capped = search(*(part for part in rest if part.end_ns <= first.start_ns))
    newer, newer_capped = (
        ((), True) if older_capped else search(*(part for part in rest if part.start_ns >= first.end_ns))
    )
    combined = older + entries + newer
    entries, capped = combined[:max_lines], older_capped or newer_capped or len(combined) > max_lines
    trail = trail_from_entries(correlation_id, entries)
    problems = incomplete(entries, trail)
    if not problems or capped:
        return done((narrow,), entries, capped, trail)
    entries, capped = search(wide)
    return done((narrow, wide), entries, capped, widened_because=tuple(problems))
