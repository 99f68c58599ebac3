"""Show a :class:`~trail.hops.Trail` as a text tree for people or as JSON for scripts.

Log lines are untrusted input: control and invisible characters are escaped in text output
(:func:`clean`) so a hostile line cannot move the cursor, recolour the terminal, start a new line
or reorder what is shown. Colour is only ever added by us, and only when the caller says the
output is a terminal.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from correlation import schema
from trail.hops import UNKNOWN_HOP, Trail, TrailHop
from trail.log_line import LogLine, text_rows

if TYPE_CHECKING:
    from trail.lookup import TrailLookup

#: Version of the ``--json`` document; bump it when a key changes meaning or disappears.
JSON_SCHEMA_VERSION = 1

RED = "\x1b[31m"
BOLD_RED = "\x1b[1;31m"
YELLOW = "\x1b[33m"
BOLD = "\x1b[1m"
RESET = "\x1b[0m"

#: Multi-line fields, shown below their line with one indented row per line.
_BLOCK_KEYS = (schema.EXCEPTION, schema.STACK)
#: What :func:`clean` escapes: every character of Unicode's categories Cc (controls: ANSI escapes,
#: newlines), Cf (format: bidi embeddings, overrides and isolates U+202A-U+202E, U+2066-U+2069,
#: marks U+200E/U+200F/U+061C, zero-width U+200B-U+200D, U+2060, U+FEFF, soft hyphen, tags
#: U+E0000-U+E007F), Zl/Zp (U+2028, U+2029: a new line in chat and many terminals) and Cs (lone
#: surrogates, which cannot even be encoded). They either do something to the text around them or
#: are invisible, so a line could fake a row, hide text or reorder what is read. Listed as ranges
#: (a regex is fast on the hot path of a page); tests check it against ``unicodedata``.
_CONTROL = re.compile(
    "[\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e"
    "\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ud800-\udfff\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0001\U000e0020-\U000e007f]"
)


def clean(text: str) -> str:
    """Escape control and invisible characters of untrusted text (``\\x1b``, ``\\n``,
    ``\\u202e``, ...): what is left shows as it reads, on one line, left to right."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def format_time(ts_ns: int, *, date: bool = True) -> str:
    """RFC 3339 UTC with microseconds (``date=False``: time of day only); a time no calendar
    holds (past year 9999) as its nanoseconds, never an exception."""
    try:
        moment = datetime.fromtimestamp(ts_ns // 1_000_000_000, tz=UTC)
    except (ValueError, OverflowError, OSError):
        return f"{ts_ns} ns"
    text = moment.strftime("%Y-%m-%dT%H:%M:%S" if date else "%H:%M:%S")
    return f"{text}.{ts_ns // 1000 % 1_000_000:06d}" + ("Z" if date else "")


def json_safe(value: Any) -> Any:
    """``value`` (parsed from an untrusted line) with NaN and infinities written as strings, so a
    document holding it is strict JSON (``Infinity`` is not JSON; many readers refuse it)."""
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)  # "Infinity", "-Infinity", "NaN": as the line wrote it
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_safe(item) for item in value]
    return value


def _ms(value: float) -> str:
    return f"{value:.1f} ms"


class _Painter:
    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, text: str, style: str) -> str:
        return f"{style}{text}{RESET}" if self.color and style else text


def route_text(hop: TrailHop) -> str:
    """``METHOD route``, or ``task <name>`` for a task run; ``-`` when the hop never ended."""
    if hop.open:
        return "-"
    if hop.is_task:
        return clean(f"task {hop.task or '?'}")
    return clean(" ".join(part for part in (hop.method, hop.route) if part) or "-")


def status_text(hop: TrailHop) -> str:
    """The status column: a task run's state (success, retry, failure) says more than its status."""
    if hop.open:
        return "open"
    if hop.is_task and hop.state:
        return clean(hop.state)
    return str(hop.status if hop.status is not None else "?")


def async_note(hop: TrailHop) -> str:
    """How a task run is marked: asynchronous, and how long it waited in the queue."""
    waited = f"queued {_ms(hop.queue_wait_ms)}" if hop.queue_wait_ms is not None else "queue wait unknown"
    return f"async: {waited}"


def unreadable_note(names: tuple[str, ...]) -> str:
    """How fields a line had but no one could read (``Infinity``, year 9999) are marked."""
    return f"unreadable: {', '.join(names)} (shown as unknown)"


def line_cap_note(lookup: TrailLookup) -> str:
    """What the CLI and the page say when a trail had more lines than they read."""
    return (
        f"only the first {lookup.max_lines} lines were read: the window holds more "
        "(the cap is --max-lines / TRAIL_MAX_LINES); narrow the window to see the rest"
    )


def _notes(hop: TrailHop) -> str:
    notes = [async_note(hop)] if hop.is_task else []
    if hop.open:
        notes.append("open: no access line")
    if hop.orphan:
        notes.append(f"orphan: parent {clean(hop.parent_request_id or '?')} not in the logs")
    if hop.unreadable:
        notes.append(unreadable_note(hop.unreadable))
    return "; ".join(notes)


def render_text(
    trail: Trail, *, window: tuple[int, int] | None = None, color: bool = False, note: str | None = None
) -> str:
    """The hop tree (children indented under parents), then each hop's lines in time order;
    ``note`` (e.g. :func:`line_cap_note`) goes under the heading."""
    paint = _Painter(color)
    t0 = trail.start_ns or 0
    hops = list(trail.walk())
    heading = f"Trail {clean(trail.correlation_id)}: {len(hops)} hops, {trail.line_count} lines"
    out = [paint(f"{heading}, started {format_time(t0)}", BOLD)]
    if window:
        out.append(f"Loki window {format_time(window[0])} .. {format_time(window[1])}")
    if note:
        out.append(paint(f"Note: {clean(note)}", YELLOW))
    out.append("")

    rows = [("HOP", "ROUTE", "STATUS", "DURATION", "START", "REQUEST_ID", "")]
    styles = [""]
    for hop in hops:
        rows.append(
            (
                "  " * hop.depth + clean(hop.service or "?"),
                route_text(hop),
                status_text(hop),
                _ms(hop.duration_ms) if hop.duration_ms is not None else "-",
                "+" + _ms((hop.start_ns - t0) / 1e6),
                clean(hop.request_id),
                _notes(hop),
            )
        )
        styles.append(BOLD_RED if hop.failed else YELLOW if (hop.open or hop.orphan or hop.state == "retry") else "")
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    for row, style in zip(rows, styles, strict=True):
        text = "  ".join(
            (
                row[0].ljust(widths[0]),
                row[1].ljust(widths[1]),
                row[2].rjust(widths[2]),
                row[3].rjust(widths[3]),
                row[4].rjust(widths[4]),
                row[5].ljust(widths[5]),
                row[6],
            )
        ).rstrip()
        out.append(paint(text, style))

    for hop in hops:
        out.append("")
        title = f"== {clean(hop.service or '?')} {'(open)' if hop.open else route_text(hop)} [{clean(hop.request_id)}]"
        out.append(paint(title, BOLD_RED if hop.failed else BOLD))
        out.extend(_render_line(line, paint) for line in hop.lines)
    if trail.unknown:
        out.append("")
        out.append(paint(f"== {UNKNOWN_HOP} hop (lines that are not JSON or name no request_id)", YELLOW))
        out.extend(_render_line(line, paint) for line in trail.unknown)
    return "\n".join(out) + "\n"


def _render_line(line: LogLine, paint: _Painter) -> str:
    when = format_time(line.ts_ns, date=False)
    if line.fields is None:
        service = f"[{clean(line.service)}] " if line.service else ""
        return f"  {when} {service}{clean(line.raw)}"
    extras = "".join(
        f" {clean(str(key))}={clean(json.dumps(value) if not isinstance(value, str) else value)}"
        for key, value in line.fields.items()
        # The contract's keys are shown in the tree, the hop's title or in place; the app's extras here.
        if key not in schema.STANDARD_KEYS
    )
    logger, message = clean(line.get(schema.LOGGER) or "-"), clean(line.get(schema.MESSAGE) or "")
    text = f"  {when} {clean(line.level or '-'):<8} {logger}: {message}{extras}"
    if line.unreadable():
        text += f"  [{unreadable_note(line.unreadable())}]"
    for key in _BLOCK_KEYS:
        # Tracebacks keep their shape: one indented row per line, each escaped on its own.
        text += "".join(f"\n      {clean(row)}" for row in text_rows(line.get(key)))
    return paint(text, RED if line.is_error else "")


def trail_to_dict(trail: Trail) -> dict[str, Any]:
    """The ``--json`` document minus query details: hops flat in tree order, linked by id."""
    t0 = trail.start_ns or 0
    return {
        "correlation_id": trail.correlation_id,
        "start": format_time(t0) if trail.start_ns is not None else None,
        "complete": trail.complete,
        "problems": trail.problems(),
        "roots": [hop.request_id for hop in trail.roots],
        "hops": [_hop_to_dict(hop, t0) for hop in trail.walk()],
        "unknown_lines": [_line_to_dict(line) for line in trail.unknown],
    }


def render_json(trail: Trail, **context: Any) -> str:
    """``trail_to_dict`` plus whatever the caller adds (window, query, widened), as strict JSON."""
    document = {"schema_version": JSON_SCHEMA_VERSION, **context, **trail_to_dict(trail)}
    return json.dumps(document, indent=2, allow_nan=False) + "\n"


def render_lookup_json(lookup: TrailLookup) -> str:
    """The ``trail --json`` document of a lookup, the same bytes the page's ``?format=json`` sends:
    the trail, the query and window, whether it widened and why, and whether the line cap cut it."""
    return render_json(
        lookup.trail,
        query=lookup.query,
        window=lookup.window.to_dict(),
        widened=lookup.widened,
        widened_because=list(lookup.widened_because),
        max_lines=lookup.max_lines,
        lines_capped=lookup.lines_capped,
    )


def _hop_to_dict(hop: TrailHop, t0: int) -> dict[str, Any]:
    return {
        "request_id": hop.request_id,
        "parent_request_id": hop.parent_request_id,
        "depth": hop.depth,
        "children": [child.request_id for child in hop.children],
        "service": hop.service,
        "method": hop.method,
        "route": hop.route,
        "path": hop.path,
        "caller": hop.caller,
        "status": hop.status,
        # A task run (asynchronous: starts at its publish, may end after its parent answered).
        "async": hop.is_task,
        "task": hop.task,
        "state": hop.state,
        "queue_wait_ms": hop.queue_wait_ms,
        "duration_ms": hop.duration_ms,
        "start": format_time(hop.start_ns),
        "start_offset_ms": round((hop.start_ns - t0) / 1e6, 3),
        "open": hop.open,
        "orphan": hop.orphan,
        "error": hop.failed or hop.has_error_lines,
        # Access-line fields present but unreadable: their keys above are null ("unknown").
        "unreadable": list(hop.unreadable),
        "lines": [_line_to_dict(line) for line in hop.lines],
    }


def _line_to_dict(line: LogLine) -> dict[str, Any]:
    return {
        "time": format_time(line.ts_ns),
        "level": line.level or None,
        "logger": line.get(schema.LOGGER),
        "message": line.get(schema.MESSAGE),
        "error": line.is_error,
        "unreadable": list(line.unreadable()),
        "fields": json_safe(line.fields),
        "raw": None if line.fields is not None else line.raw,
    }
