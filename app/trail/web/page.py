"""What the trail page shows, computed once in Python so the template only lays it out.

- the waterfall: one bar per hop, placed by its start and sized by its duration on a common time
  axis, indented by depth in the call tree, with a state that picks its colour;
- each hop's log lines, in time order, error lines marked so the page shows them expanded.

All text here is still raw: the template escapes every value (Jinja2 autoescape). Control
characters are escaped too (:func:`trail.text.clean`), as the CLI does, so a hostile line cannot
smuggle invisible text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from correlation import schema
from trail.hops import UNKNOWN_HOP, Trail, TrailHop
from trail.labels import async_note, route_text, status_text, unreadable_note
from trail.log_line import LogLine, text_rows
from trail.lookup import TrailLookup
from trail.root_cause import RootCause, root_cause
from trail.text import clean, format_time, line_cap_note

#: The narrowest bar drawn, in percent of the axis: a 0.1 ms hop must stay visible and clickable.
MIN_BAR_PERCENT = 0.6
#: Past this end (in percent) a bar's duration is written before it, so it stays on the page.
LABEL_BEFORE_PERCENT = 85.0
#: Tick marks on the time axis (0 %, 25 %, ... 100 %).
AXIS_TICKS = 4
_BLOCK_KEYS = (schema.EXCEPTION, schema.STACK)


@dataclass(frozen=True)
class LineView:
    """One log line as the page shows it."""

    time: str
    level: str
    logger: str
    message: str
    error: bool
    #: The app's own fields (``extra=``), shown after the message.
    extras: tuple[tuple[str, str], ...] = ()
    #: Multi-line fields (traceback, stack), one row per line.
    block: tuple[str, ...] = ()
    #: The whole line as received when it is not JSON.
    raw: str | None = None
    #: Fields the line had but no one could read (shown as unknown), e.g. a time in year 9999.
    note: str | None = None


@dataclass(frozen=True)
class HopView:
    """One hop: its bar in the waterfall and its lines."""

    anchor: str
    request_id: str
    depth: int
    service: str
    route: str
    status: str
    #: ``failed`` (>= 500), ``client-error`` (4xx), ``retry`` (a task run to be retried), ``open``
    #: (no access line), ``ok``.
    state: str
    duration: str
    offset: str
    left_percent: float
    width_percent: float
    #: A task run's wait in the queue, as a share (percent) of its bar: drawn apart from the run.
    queued_percent: float
    notes: tuple[str, ...]
    #: Write the duration before the bar, not after it, when the bar ends near the right edge.
    label_before: bool
    root_cause: bool
    lines: tuple[LineView, ...] = field(default=())


@dataclass(frozen=True)
class PageView:
    """Everything the trail template shows besides links."""

    correlation_id: str
    started: str | None
    hop_count: int
    line_count: int
    span: str
    ticks: tuple[str, ...]
    hops: tuple[HopView, ...]
    unknown: tuple[LineView, ...]
    root_cause: str | None
    problems: tuple[str, ...]
    #: Said when the window held more lines than the cap read (the trail shown is cut).
    line_cap: str | None = None


def _ms(value_ns: float) -> str:
    return f"{value_ns / 1e6:.1f} ms"


def _hop_end(hop: TrailHop) -> int:
    """The hop's end: its access line, else its last line (an open hop is drawn up to there)."""
    return hop.end_ns if hop.end_ns is not None else max(line.ts_ns for line in hop.lines)


def _state(hop: TrailHop) -> str:
    if hop.open:
        return "open"
    if hop.failed:
        return "failed"
    if hop.status is not None and 400 <= hop.status < 500:
        return "client-error"
    if hop.is_task and hop.state == schema.STATE_RETRY:
        return "retry"
    return "ok"


def _queued_percent(hop: TrailHop) -> float:
    wait, run = hop.queue_wait_ms, hop.duration_ms
    if not hop.is_task or not wait or run is None or wait + run <= 0:
        return 0.0
    return round(wait / (wait + run) * 100, 3)


def line_view(line: LogLine) -> LineView:
    """One line, every field made safe to show on one row (blocks keep one row per line)."""
    when = format_time(line.ts_ns, date=False)
    if line.fields is None:
        return LineView(when, line.level or "-", "", "", line.is_error, raw=clean(line.raw))
    extras = tuple(
        (clean(str(key)), clean(value if isinstance(value, str) else json.dumps(value)))
        for key, value in line.fields.items()
        if key not in schema.STANDARD_KEYS
    )
    block = tuple(clean(row) for key in _BLOCK_KEYS for row in text_rows(line.get(key)))
    return LineView(
        when,
        clean(line.level or "-"),
        clean(line.get(schema.LOGGER) or "-"),
        clean(line.get(schema.MESSAGE) or ""),
        line.is_error,
        extras,
        block,
        note=unreadable_note(line.unreadable()) if line.unreadable() else None,
    )


def _notes(hop: TrailHop) -> tuple[str, ...]:
    notes = [clean(async_note(hop))] if hop.is_task else []
    if hop.open:
        notes.append("open: no access line in the window")
    if hop.orphan:
        notes.append(f"orphan: parent {clean(hop.parent_request_id or '?')} not in the logs")
    if hop.unreadable:
        notes.append(unreadable_note(hop.unreadable))
    return tuple(notes)


def page_view(lookup: TrailLookup) -> PageView:
    """The page's content for a lookup that found lines."""
    trail: Trail = lookup.trail
    hops = list(trail.walk())
    t0 = trail.start_ns or 0
    ends = [_hop_end(hop) for hop in hops] + [line.ts_ns for line in trail.unknown]
    span = max(max(ends, default=t0) - t0, 1_000_000)  # at least 1 ms, so bars have an axis
    cause = root_cause(lookup.trail)
    views = []
    for hop in hops:
        start, end = hop.start_ns - t0, _hop_end(hop) - t0
        left = min(max(start / span * 100, 0.0), 100.0 - MIN_BAR_PERCENT)
        width = min(max((end - start) / span * 100, MIN_BAR_PERCENT), 100.0 - left)
        views.append(
            HopView(
                anchor=f"hop-{clean(hop.request_id)}",
                request_id=clean(hop.request_id),
                depth=hop.depth,
                service=clean(hop.service or "?"),
                route=route_text(hop),
                status=status_text(hop),
                state=_state(hop),
                duration=f"{hop.duration_ms:.1f} ms" if hop.duration_ms is not None else "-",
                offset="+" + _ms(start),
                left_percent=round(left, 3),
                width_percent=round(width, 3),
                queued_percent=_queued_percent(hop),
                notes=_notes(hop),
                label_before=left + width > LABEL_BEFORE_PERCENT,
                root_cause=cause is not None and cause.hop is hop,
                lines=tuple(line_view(line) for line in hop.lines),
            )
        )
    return PageView(
        correlation_id=trail.correlation_id,
        started=format_time(t0) if trail.start_ns is not None else None,
        hop_count=len(hops),
        line_count=trail.line_count,
        span=_ms(span),
        ticks=tuple(_ms(span * i / AXIS_TICKS) for i in range(AXIS_TICKS + 1)),
        hops=tuple(views),
        unknown=tuple(line_view(line) for line in trail.unknown),
        root_cause=_root_cause_text(cause),
        problems=tuple(clean(problem) for problem in trail.problems()),
        line_cap=line_cap_note(lookup.max_lines) if lookup.lines_capped else None,
    )


def _root_cause_text(cause: RootCause | None) -> str | None:
    if cause is None:
        return None
    hop = cause.hop
    status = hop.status if hop.status is not None else "an unreadable status"
    return clean(f"{hop.service or '?'} [{hop.request_id}] answered {status}: {cause.summary}")


#: Shown as the unknown hop's title: lines that are not JSON or name no hop.
UNKNOWN_TITLE = f"{UNKNOWN_HOP} hop (lines that are not JSON or name no request_id)"
