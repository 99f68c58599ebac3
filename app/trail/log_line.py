"""One log line as read back from Loki: untrusted text, parsed once (keys: ``correlation.schema``).

A line is JSON when it parses to an object; otherwise it is kept as raw text and, when Loki's
structured metadata names its hop (``request_id``), placed on that hop anyway. Fields are read
defensively: a number or object where a string belongs is shown as JSON, never trusted as a value;
a number or time that cannot be true (``"Infinity"``, ``1e300`` ms, status 7, year 9999) reads as
None (unknown) and is listed by :meth:`LogLine.unreadable`, never raised. Anyone who can push to
Loki can write a line under any ID (``auth_enabled: false``), so nothing here may throw.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from correlation import schema

ERROR_LEVELS = frozenset({"ERROR", "CRITICAL"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: HTTP status codes are three digits, 100..599 (RFC 9110, section 15); anything else is unknown.
STATUS_RANGE = range(100, 600)
#: The longest duration or queue wait read as true: a task held back by a countdown may wait
#: days, but a month is a corrupt or hostile value, and it would stretch the waterfall to nothing.
MAX_DURATION_MS = 31 * 86400 * 1000.0
#: Loki's timestamps are int64 Unix nanoseconds (until 2262); a ``time`` outside them is unknown.
MAX_TIME_NS = 2**63
#: A line nested deeper than this is kept as text: no log line of ours nests past a few levels,
#: and printing a deep one again as JSON could exhaust Python's recursion limit.
MAX_JSON_DEPTH = 32


def _text(value: Any) -> str | None:
    """A field as text: lines are untrusted, so a number or object where a string belongs is
    shown as JSON rather than crashing or being mistaken for a real value."""
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else json.dumps(value)


def text_rows(text: str | None) -> list[str]:
    """The rows of a multi-line field (a traceback), split at ``\\n`` (and ``\\r\\n``) only:
    ``str.splitlines`` also splits at U+2028, U+0085, form feeds..., which would let a line fake a
    traceback row (its exception type, even); those stay in their row, to be escaped when shown."""
    if not text:
        return []
    rows = re.split(r"\r?\n", text)
    return rows[:-1] if rows[-1] == "" else rows


def parse_number(value: Any) -> float | None:
    """A field as a finite number (a numeric string counts: foreign loggers write them), or None
    when it is missing, not a number, a boolean, NaN or infinite (lines are untrusted)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):  # OverflowError: an integer of 400 digits
        return None
    return number if math.isfinite(number) else None


def parse_status(value: Any) -> int | None:
    """An HTTP status (a whole number in 100..599), or None."""
    number = parse_number(value)
    if number is None or not number.is_integer() or int(number) not in STATUS_RANGE:
        return None
    return int(number)


def parse_duration_ms(value: Any) -> float | None:
    """A duration in ms from 0 up to :data:`MAX_DURATION_MS`, or None."""
    number = parse_number(value)
    return number if number is not None and 0.0 <= number <= MAX_DURATION_MS else None


def parse_time_ns(value: Any) -> int | None:
    """Unix ns of an RFC 3339 time such as ``2024-07-16T10:20:30.123456Z``, or None (also for a
    time before 1970 or past Loki's int64 nanoseconds, e.g. year 9999 with any offset)."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)  # the contract writes UTC
        # Integer arithmetic: a float timestamp would lose the microseconds.
        ns = (moment - _EPOCH) // timedelta(microseconds=1) * 1000
    except (ValueError, OverflowError):
        return None
    return ns if 0 <= ns < MAX_TIME_NS else None


#: The numeric fields and how each is read; a field present but unreadable is listed by
#: :meth:`LogLine.unreadable`.
NUMBER_READERS: dict[str, Callable[[Any], float | int | None]] = {
    schema.STATUS: parse_status,
    schema.DURATION_MS: parse_duration_ms,
    schema.QUEUE_WAIT_MS: parse_duration_ms,
}


def _nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether JSON ``value`` nests more than ``limit`` levels (iteratively: no recursion)."""
    stack = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, dict | list):
            if depth > limit:
                return True
            children = current.values() if isinstance(current, dict) else current
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


@dataclass
class LogLine:
    """One log line: the JSON object when it parses, the raw text always."""

    ts_ns: int
    raw: str
    fields: dict[str, Any] | None = None
    label_service: str | None = None
    #: The line's own ``time`` was there but unreadable: ``ts_ns`` is Loki's timestamp instead.
    time_unreadable: bool = field(default=False, kw_only=True)

    def get(self, name: str) -> str | None:
        return _text(self.fields.get(name)) if self.fields else None

    def number(self, name: str) -> float | int | None:
        """A numeric field (:data:`NUMBER_READERS`: status, duration_ms, queue_wait_ms) as its
        reader reads it; None when missing or unreadable."""
        return NUMBER_READERS[name](self.fields.get(name)) if self.fields else None

    def unreadable(self) -> tuple[str, ...]:
        """Fields present in the line but unreadable, shown as unknown: ``time`` and the numbers."""
        found: tuple[str, ...] = (schema.TIME,) if self.time_unreadable else ()
        if self.fields:
            found += tuple(
                name
                for name, read in NUMBER_READERS.items()
                if self.fields.get(name) is not None and read(self.fields.get(name)) is None
            )
        return found

    @property
    def level(self) -> str:
        return (self.get(schema.LEVEL) or "").upper()

    @property
    def service(self) -> str | None:
        return self.get(schema.SERVICE) or self.label_service

    @property
    def is_access(self) -> bool:
        return self.get(schema.LOGGER) == schema.ACCESS_LOGGER

    @property
    def is_error(self) -> bool:
        return self.level in ERROR_LEVELS


def parse_line(
    ts_ns: int, raw: str, label_service: str | None = None, metadata: Mapping[str, str | None] | None = None
) -> LogLine:
    """Parse one line; its own ``time`` wins over Loki's timestamp when it is readable. Never
    raises: a line that is not a JSON object (or nests past :data:`MAX_JSON_DEPTH`) is text."""
    try:
        fields = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: thousands of nested brackets
        fields = None
    if isinstance(fields, dict) and _nested_deeper_than(fields, MAX_JSON_DEPTH):
        fields = None
    if not isinstance(fields, dict):
        known = {
            k: v for k, v in (metadata or {}).items() if isinstance(v, str) and k in (schema.REQUEST_ID, schema.LEVEL)
        }
        if schema.REQUEST_ID not in known:
            return LogLine(ts_ns, raw, None, label_service)
        known[schema.LEVEL] = known.get(schema.LEVEL, "").upper()
        return LogLine(ts_ns, raw, {**known, schema.MESSAGE: raw}, label_service)
    own_time = fields.get(schema.TIME)
    own_ns = parse_time_ns(own_time)
    unreadable = own_time is not None and own_ns is None
    return LogLine(own_ns if own_ns is not None else ts_ns, raw, fields, label_service, time_unreadable=unreadable)
