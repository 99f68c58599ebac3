"""One log line as read back from Loki: untrusted text, parsed once (keys: ``correlation.schema``).

A line is JSON when it parses to an object; otherwise it is kept as raw text and, when Loki's
structured metadata names its hop (``request_id``), placed on that hop anyway. Fields are read
defensively: a number or object where a string belongs is shown as JSON, never trusted as a value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from correlation import schema

ERROR_LEVELS = frozenset({"ERROR", "CRITICAL"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _text(value: Any) -> str | None:
    """A field as text: lines are untrusted, so a number or object where a string belongs is
    shown as JSON rather than crashing or being mistaken for a real value."""
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else json.dumps(value)


def parse_number(value: Any) -> float | None:
    """A field as a number, or None when it is missing, not a number, or NaN (lines are untrusted)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # NaN is not a number we can show


def parse_time_ns(value: Any) -> int | None:
    """Unix ns of an RFC 3339 time such as ``2024-07-16T10:20:30.123456Z``, or None."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # the contract writes UTC
    # Integer arithmetic: a float timestamp would lose the microseconds.
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


@dataclass
class LogLine:
    """One log line: the JSON object when it parses, the raw text always."""

    ts_ns: int
    raw: str
    fields: dict[str, Any] | None = None
    label_service: str | None = None

    def get(self, name: str) -> str | None:
        return _text(self.fields.get(name)) if self.fields else None

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
    """Parse one line; its own ``time`` wins over Loki's timestamp when it is readable."""
    try:
        fields = json.loads(raw)
    except ValueError:
        fields = None
    if not isinstance(fields, dict):
        known = {
            k: v for k, v in (metadata or {}).items() if isinstance(v, str) and k in (schema.REQUEST_ID, schema.LEVEL)
        }
        if schema.REQUEST_ID not in known:
            return LogLine(ts_ns, raw, None, label_service)
        known[schema.LEVEL] = known.get(schema.LEVEL, "").upper()
        return LogLine(ts_ns, raw, {**known, schema.MESSAGE: raw}, label_service)
    return LogLine(parse_time_ns(fields.get(schema.TIME)) or ts_ns, raw, fields, label_service)
