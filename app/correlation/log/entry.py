"""What a line holds, and in which order: the one place the keys of :mod:`correlation.schema` are
laid out, and the one place the correlation context is put on a record.

Every line the library writes (a formatted record, :mod:`correlation.log.formatter`; the access
line, :mod:`correlation.log.access`) starts from :func:`line_entry`: time, level, logger,
message, then the context, then the extras.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from correlation import context, schema
from correlation.context import Hop

_second_cache: tuple[int, str] = (-1, "")


def utc_timestamp(created: float) -> str:
    """``created`` (Unix seconds) as the ``time`` key writes it: RFC 3339 UTC, microseconds, ``Z``."""
    global _second_cache
    seconds = int(created)
    cached_second, prefix = _second_cache
    if seconds != cached_second:  # strftime once a second, not once a line
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second_cache = (seconds, prefix)
    return "%s.%06dZ" % (prefix, (created - seconds) * 1_000_000)  # noqa: UP031 - %d truncates, as int() would


def line_entry(
    created: float,
    levelname: str,
    logger: str,
    message: str,
    service: Any,
    correlation_id: Any,
    request_id: Any,
    parent_request_id: Any,
    extras: dict[str, Any],
) -> dict[str, Any]:
    """A line's keys in the order every line has them (:data:`schema.LINE_KEYS`), then ``extras``
    (which must not use a line key). ``exception`` and ``stack`` are the caller's to append."""
    return {
        schema.TIME: utc_timestamp(created),
        schema.LEVEL: levelname,
        schema.LOGGER: logger,
        schema.MESSAGE: message,
        schema.SERVICE: service,
        schema.CORRELATION_ID: correlation_id,
        schema.REQUEST_ID: request_id,
        schema.PARENT_REQUEST_ID: parent_request_id,
        **extras,
    }


def stamp(record: logging.LogRecord, hop: Hop | None = None) -> None:
    """Put the service and ``hop`` (default: the current one) on ``record``, unless it carries
    them already (values passed with ``extra=`` win)."""
    if not hasattr(record, schema.CORRELATION_ID):
        hop = hop or context.current()
        record.correlation_id = hop.correlation_id if hop else None
        record.request_id = hop.request_id if hop else None
        record.parent_request_id = hop.parent_request_id if hop else None
    if not hasattr(record, schema.SERVICE):
        record.service = context.service()
