"""The LogQL every reader of trails sends, built only from checked input.

An ID or a service name is checked before it is written into a query (ValueError otherwise), so no
input can change a query's meaning; free text (a task's name) goes in as an escaped string literal
(:func:`string_literal`). Names come from ``correlation.schema``.
"""

from __future__ import annotations

import json
import math
import re

from correlation import schema
from correlation.ids import MAX_ID_LENGTH, is_valid_id, printable, rejection_reason, shard_of

#: The metadata ``level`` of error lines (lowercase in metadata, as Grafana's level detection expects).
ERROR_LEVEL = "error"
_SERVICE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # as config.py accepts SERVICE_NAME
#: Longer task names are refused rather than searched for (Celery's own are dotted module paths).
MAX_TASK_NAME_CHARS = 256
#: The ERROR line ``correlation.celery.send_task`` writes for each task the broker did not take:
#: its logger, and the start of its message ``could not publish task <task> (<reason>): <error>``.
PUBLISH_FAILURE_LOGGER = "correlation.celery"
PUBLISH_FAILURE_MESSAGE = "could not publish task"
#: The characters with a meaning of their own in RE2 and in Python's ``re`` (outside classes).
#: A publish failure's reason, as correlation.celery counts it (a metric label value).
_REASON = re.compile(r"[A-Za-z0-9_]{1,64}")
_REGEX_META = frozenset("\\.+*?()|[]{}^$")
#: A peer as a caller names it (``failed_downstream``, the ``downstream`` metric label): its
#: X-Service-Name, else its host[:port] (IPv6 hosts in brackets).
_PEER = re.compile(r"[A-Za-z0-9._:\[\]-]{1,128}")
#: The most peers one search may match (a service's name, its address, ...).
MAX_PEERS = 4


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


def check_task(name: str) -> str:
    """``name`` when it can be searched for as a task's name (any text of 1-256 characters that
    encodes as UTF-8); ValueError (escaped) otherwise. It is written into queries escaped."""
    try:
        name.encode()
    except UnicodeEncodeError:
        raise ValueError(f"task name {printable(name)!r} is not valid text") from None
    if not 0 < len(name) <= MAX_TASK_NAME_CHARS:
        raise ValueError(f"task name {printable(name)!r}: expected 1-{MAX_TASK_NAME_CHARS} characters")
    return name


def check_reason(reason: str) -> str:
    """``reason`` when it can be a publish failure's reason (what ``correlation.celery`` counts it
    by: 1-64 letters, digits or ``_``); ValueError (escaped) otherwise."""
    if not _REASON.fullmatch(reason):
        raise ValueError(f"reason {printable(reason)!r}: expected 1-64 letters, digits or _")
    return reason


def check_peer(name: str) -> str:
    """``name`` when it can name a peer (1-128 characters of ``[A-Za-z0-9._:[]-]``: a service name
    or host[:port]); ValueError (escaped) otherwise."""
    if not _PEER.fullmatch(name):
        raise ValueError(f"peer {printable(name)!r}: expected a service name or host[:port] (1-128 characters)")
    return name


def string_literal(text: str) -> str:
    """``text`` as a LogQL double-quoted string: Loki reads these with Go's escapes, and JSON's
    (quote, backslash, control characters as ``\\n`` or ``\\u0001``) are a subset of them, so no
    text can end the string early. Characters that would not show as themselves where the query is
    printed (bidi overrides, zero-width and other format characters, unassigned code points) are
    written ``\\uXXXX`` or ``\\UXXXXXXXX``, which Go reads back to the same character; every other
    character stands for itself."""
    quoted = json.dumps(text, ensure_ascii=False)
    if quoted.isprintable():
        return quoted
    return "".join(c if c.isprintable() else _go_escape(c) for c in quoted)


def _go_escape(char: str) -> str:
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def regex_literal(text: str) -> str:
    """A regular expression that matches exactly ``text``, read alike by Loki (Go's RE2) and
    Python's ``re``: their metacharacters get a backslash (both read a backslash before a
    punctuation character as that character); every other character stands for itself."""
    return "".join("\\" + c if c in _REGEX_META else c for c in text)


def _selector(service: str | None) -> str:
    if service is None:
        return f'{{{schema.SERVICE_LABEL}=~".+"}}'
    return f'{{{schema.SERVICE_LABEL}="{check_service(service)}"}}'


def trail_query(correlation_id: str) -> str:
    """All lines of one request, across services: structured metadata needs no parser.

    Only the streams of the ID's shard are read (1/16 of them), and the streams without a shard
    label: ``shard=~"7|"`` matches a missing label too, so lines written before the shipper set
    it (or by another shipper) are still found."""
    cid = check_correlation_id(correlation_id)
    selector = f'{{{schema.SERVICE_LABEL}=~".+", {schema.SHARD_LABEL}=~"{shard_of(cid)}|"}}'
    return f'{selector} | {schema.CORRELATION_ID}="{cid}"'


def error_lines_query(service: str) -> str:
    """A service's error lines (metadata ``level``, no parser)."""
    return f'{_selector(service)} | {schema.LEVEL}="{ERROR_LEVEL}"'


def last_error_query(
    service: str | None = None, *, own_only: bool = False, task: str | None = None, peers: tuple[str, ...] = ()
) -> str:
    """Access lines of failed requests (status >= 500), newest first when run backward.

    A failed request is defined by its access line's status, not by ERROR lines: a handled
    error can log at ERROR and answer 200, and a 5xx need not log anything at ERROR. The status
    lives only in the JSON line, so a parser is unavoidable; the cheap line filter on the access
    logger's name drops every other line before ``json`` runs, and ``json`` extracts just the
    fields it needs. ``__error__=""`` drops lines whose JSON or status did not parse (Loki keeps
    those lines, flagged, instead of filtering them out). ``own_only``: only the hop's own
    failures (``origin`` not ``downstream``; lines without an origin, written before it existed
    or by other libraries, count as own). ``task``: only failed runs of that task (its name is
    the ``task`` key of a task run's access line; HTTP access lines have none). ``peers``: only
    failures caused by a call to one of them (``failed_downstream`` is the peer, or the peer with
    a port: a caller names a peer that never answered by its host:port).
    """
    logger, status, origin = schema.LOGGER, schema.STATUS, schema.ORIGIN
    fields = [logger, status]
    filters = [f'{logger}="{schema.ACCESS_LOGGER}"', f"{status} >= 500"]
    if own_only:
        fields.append(origin)
        filters.append(f'{origin}!="{schema.ORIGIN_DOWNSTREAM}"')
    if task is not None:
        fields.append(schema.TASK)
        filters.append(f"{schema.TASK}={string_literal(check_task(task))}")
    line_filters = f'|= "{schema.ACCESS_LOGGER}"'
    if peers:
        if len(peers) > MAX_PEERS:
            raise ValueError(f"at most {MAX_PEERS} peers at once")
        fields.append(schema.FAILED_DOWNSTREAM)
        names = "|".join(regex_literal(check_peer(peer)) for peer in peers)
        filters.append(f"{schema.FAILED_DOWNSTREAM}=~{string_literal(f'(?:{names})(?::[0-9]+)?')}")
        line_filters += f' |= "{schema.FAILED_DOWNSTREAM}"'  # before json: most failed lines name no peer
    extract = ", ".join(f'{name}="{name}"' for name in fields)
    return f'{_selector(service)} {line_filters} | json {extract} | {" | ".join(filters)} | __error__=""'


def publish_failures_query(service: str, task: str | None = None, reason: str | None = None) -> str:
    """A service's lines about tasks it could not queue (``correlation.celery.send_task``), newest
    first when run backward; ``task``, ``reason``: only those of that task, for that reason (both
    are in the message only: ``could not publish task <task> (<reason>): <error>``).

    The line filter on the message's fixed start and the ``level`` metadata drop every other line
    before ``json`` runs; the logger then tells the library's line from an app's look-alike.
    """
    logger, message = schema.LOGGER, schema.MESSAGE
    filters = [f'{logger}="{PUBLISH_FAILURE_LOGGER}"']
    if task is not None or reason is not None:
        named = regex_literal(check_task(task)) if task is not None else "(?s:.+)"
        why = regex_literal(f" ({check_reason(reason)}): ") if reason is not None else regex_literal(" (")
        pattern = regex_literal(f"{PUBLISH_FAILURE_MESSAGE} ") + named + why + "(?s:.*)"
        filters.append(f"{message}=~{string_literal(pattern)}")
    return (
        f'{_selector(service)} |= "{PUBLISH_FAILURE_MESSAGE}" | {schema.LEVEL}="{ERROR_LEVEL}" '
        f'| json {logger}="{logger}", {message}="{message}" | {" | ".join(filters)} | __error__=""'
    )


def _access_lines(service: str, route: str | None, more: tuple[str, ...] = ()) -> str:
    """A service's HTTP access lines (of ``route`` when given), ``duration_ms`` extracted; not task runs."""
    logger, route_key, kind = schema.LOGGER, schema.ROUTE, schema.KIND
    fields = [logger, kind, schema.DURATION_MS] + ([route_key] if route is not None else [])
    filters = [f'{logger}="{schema.ACCESS_LOGGER}"', f'{kind}=""']
    if route is not None:
        filters.append(f"{route_key}={string_literal(check_route(route))}")
    extract = ", ".join(f'{name}="{name}"' for name in fields)
    return f'{_selector(service)} |= "{schema.ACCESS_LOGGER}" | json {extract} | {" | ".join([*filters, *more])}'


#: Longer routes are refused rather than searched for (a URL rule is short).
MAX_ROUTE_CHARS = 256


def check_route(route: str) -> str:
    """``route`` when it can be searched for as a URL rule (1-256 characters of text); ValueError otherwise."""
    if not 0 < len(route) <= MAX_ROUTE_CHARS or not route.isprintable():
        raise ValueError(f"route {printable(route)!r}: expected 1-{MAX_ROUTE_CHARS} printable characters")
    return route


def slowest_duration_query(service: str, route: str | None, range_seconds: int) -> str:
    """The longest ``duration_ms`` of a service's HTTP requests (of ``route``) in the
    ``range_seconds`` before the query's time: one sample, as an instant metric query.

    Grouped by the stream's service in the range aggregation itself, so Loki never holds a series
    per request (structured metadata such as ``correlation_id`` would otherwise make one each).
    """
    if range_seconds <= 0:
        raise ValueError("the range must be at least a second")
    lines = _access_lines(service, route)
    unwrap = f'unwrap {schema.DURATION_MS} | __error__=""'
    return f"max_over_time({lines} | {unwrap} [{range_seconds}s]) by ({schema.SERVICE_LABEL})"


def requests_at_least_query(service: str, route: str | None, duration_ms: float) -> str:
    """A service's HTTP access lines (of ``route``) that took at least ``duration_ms``: with the
    maximum that :func:`slowest_duration_query` found, the slowest request's line. The number is
    written in its shortest round-trip form, which Loki parses back to the same float."""
    if not math.isfinite(duration_ms) or not 0 <= duration_ms < 1e15:
        raise ValueError(f"duration_ms {duration_ms!r} is not a duration in milliseconds")
    return _access_lines(service, route, (f"{schema.DURATION_MS} >= {duration_ms!r}", '__error__=""'))


#: An ``error_type`` as the library writes it (correlation.error_type): searched for only when it is one.
_ERROR_TYPE = re.compile(r"[A-Za-z0-9_.]{1,128}")


def check_error_type(value: str) -> str:
    """``value`` when it can be an ``error_type`` (1-128 characters of ``[A-Za-z0-9_.]``); ValueError otherwise."""
    if not _ERROR_TYPE.fullmatch(value):
        raise ValueError(f"error type {printable(value)!r}: expected 1-128 characters from [A-Za-z0-9_.]")
    return value


def failed_requests_query(service: str, error_type: str | None = None, task: str | None = None) -> str:
    """A service's failed requests (:func:`last_error_query`'s definition: access lines with status
    >= 500), of one ``error_type`` when given (structured metadata: filtered before the parser);
    ``task``: only the failed runs of that task (escaped, as :func:`last_error_query` writes it)."""
    query = last_error_query(service, task=task)
    if error_type is None:
        return query
    selector, _, rest = query.partition("} ")
    return f'{selector}}} | {schema.ERROR_TYPE}="{check_error_type(error_type)}" {rest}'


def failures_by_type_query(
    service: str, range_seconds: int, error_type: str | None = None, task: str | None = None
) -> str:
    """How many requests of a service (runs of ``task``, when given) failed in the ``range_seconds``
    before the query's time, one series per ``error_type`` (none for failures that raised nothing).
    ``keep`` drops every other label first: structured metadata would otherwise make a series per
    request."""
    if range_seconds <= 0:
        raise ValueError("the range must be at least a second")
    failed = failed_requests_query(service, error_type, task)
    kind = schema.ERROR_TYPE
    return f"sum by ({kind}) (count_over_time({failed} | keep {kind} [{range_seconds}s]))"


def requests_count_query(service: str, range_seconds: int, task: str | None = None) -> str:
    """How many requests (HTTP and task runs: access lines) a service answered in the
    ``range_seconds`` before the query's time: one sample. ``task``: only that task's finished runs
    (escaped as in :func:`last_error_query`); an attempt that ended in a retry is no end and is
    left out, as TaskFailures leaves it out of the runs it takes a share of."""
    if range_seconds <= 0:
        raise ValueError("the range must be at least a second")
    logger, label = schema.LOGGER, schema.SERVICE_LABEL
    fields, filters = [logger], [f'{logger}="{schema.ACCESS_LOGGER}"']
    if task is not None:
        fields += [schema.TASK, schema.STATE]
        filters += [f"{schema.TASK}={string_literal(check_task(task))}", f'{schema.STATE}!="{schema.STATE_RETRY}"']
    extract = ", ".join(f'{name}="{name}"' for name in fields)
    lines = (
        f'{_selector(service)} |= "{schema.ACCESS_LOGGER}" | json {extract} '
        f'| {" | ".join(filters)} | __error__="" | keep {label}'
    )
    return f"sum by ({label}) (count_over_time({lines} [{range_seconds}s]))"
