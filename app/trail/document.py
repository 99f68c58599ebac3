"""The JSON document of a trail: what ``trail --json`` prints and the page's ``?format=json``
sends, byte for byte. Strict JSON: a value a line wrote as ``Infinity`` or ``NaN`` becomes a string.
"""

from __future__ import annotations

import json
import math
from typing import Any

from correlation import schema
from trail.hops import Trail, TrailHop
from trail.log_line import LogLine
from trail.lookup import TrailLookup
from trail.text import format_time

#: Version of the ``--json`` document; bump it when a key changes meaning or disappears.
JSON_SCHEMA_VERSION = 1


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
