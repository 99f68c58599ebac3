"""The ``trail`` command's text tree: the hops indented under their parents, then each hop's lines.

Colour is only ever added by us, and only when the caller says the output is a terminal; every
text from a line is escaped first (:func:`trail.text.clean`).
"""

from __future__ import annotations

import json

from correlation import schema
from trail.hops import UNKNOWN_HOP, Trail, TrailHop
from trail.labels import async_note, route_text, status_text, unreadable_note
from trail.log_line import LogLine, text_rows
from trail.text import clean, format_ms, format_time

RED = "\x1b[31m"
BOLD_RED = "\x1b[1;31m"
YELLOW = "\x1b[33m"
BOLD = "\x1b[1m"
RESET = "\x1b[0m"

#: Multi-line fields, shown below their line with one indented row per line.
_BLOCK_KEYS = (schema.EXCEPTION, schema.STACK)


class _Painter:
    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, text: str, style: str) -> str:
        return f"{style}{text}{RESET}" if self.color and style else text


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
                format_ms(hop.duration_ms) if hop.duration_ms is not None else "-",
                "+" + format_ms((hop.start_ns - t0) / 1e6),
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
