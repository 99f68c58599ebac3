"""The LogQL every reader of trails sends, built only from checked input.

An ID or a service name is checked before it is written into a query (ValueError otherwise), so no
input can change a query's meaning. Names come from ``correlation.schema``.
"""

from __future__ import annotations

import re

from correlation import schema
from correlation.ids import MAX_ID_LENGTH, is_valid_id, printable, rejection_reason

#: The metadata ``level`` of error lines (lowercase in metadata, as Grafana's level detection expects).
ERROR_LEVEL = "error"
_SERVICE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # as config.py accepts SERVICE_NAME


def check_correlation_id(value: str) -> str:
    """``value`` when it is a well-formed ID; ValueError (escaped, with the reason) otherwise.
    Every query is built from a checked ID, so no input can change the query's meaning."""
    if not is_valid_id(value):
        raise ValueError(
            f"malformed correlation ID {printable(value)!r} ({rejection_reason(value)}): "
            f"expected 1-{MAX_ID_LENGTH} characters from [A-Za-z0-9._-]"
        )
    return value


def check_service(name: str) -> str:
    """``name`` when it is a valid service name (as SERVICE_NAME accepts); ValueError otherwise."""
    if not _SERVICE_NAME.fullmatch(name):
        raise ValueError(f"{printable(name)!r} is not a service name: expected 1-64 characters from [A-Za-z0-9._-]")
    return name


def _selector(service: str | None) -> str:
    if service is None:
        return f'{{{schema.SERVICE_LABEL}=~".+"}}'
    return f'{{{schema.SERVICE_LABEL}="{check_service(service)}"}}'


def trail_query(correlation_id: str) -> str:
    """All lines of one request, across services: structured metadata needs no parser."""
    return f'{_selector(None)} | {schema.CORRELATION_ID}="{check_correlation_id(correlation_id)}"'


def error_lines_query(service: str) -> str:
    """A service's error lines (metadata ``level``, no parser)."""
    return f'{_selector(service)} | {schema.LEVEL}="{ERROR_LEVEL}"'


def last_error_query(service: str | None = None, *, own_only: bool = False) -> str:
    """Access lines of failed requests (status >= 500), newest first when run backward.

    A failed request is defined by its access line's status, not by ERROR lines: a handled
    error can log at ERROR and answer 200, and a 5xx need not log anything at ERROR. The status
    lives only in the JSON line, so a parser is unavoidable; the cheap line filter on the access
    logger's name drops every other line before ``json`` runs, and ``json`` extracts just the two
    fields it needs. ``__error__=""`` drops lines whose JSON or status did not parse (Loki keeps
    those lines, flagged, instead of filtering them out). ``own_only``: only the hop's own
    failures (``origin`` not ``downstream``).
    """
    logger, status, origin = schema.LOGGER, schema.STATUS, schema.ORIGIN
    if not own_only:
        return (
            f'{_selector(service)} |= "{schema.ACCESS_LOGGER}" | json {logger}="{logger}", {status}="{status}"'
            f' | {logger}="{schema.ACCESS_LOGGER}" | {status} >= 500 | __error__=""'
        )
    # Own failures only: not those the hop answered because a call it made failed first (lines
    # without an origin, written before it existed or by other libraries, count as own).
    return (
        f'{_selector(service)} |= "{schema.ACCESS_LOGGER}"'
        f' | json {logger}="{logger}", {status}="{status}", {origin}="{origin}"'
        f' | {logger}="{schema.ACCESS_LOGGER}" | {status} >= 500 | {origin}!="{schema.ORIGIN_DOWNSTREAM}"'
        f' | __error__=""'
    )
