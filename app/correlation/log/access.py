"""The access line (one per request and hop): through ``logging`` like any record, or handed
straight to the library's own handlers when they are the only ones that would see it.

Through ``logging`` the line costs a ``LogRecord``, the logger's and each handler's dispatch,
and a generic formatting pass. When nothing
but this library's handlers would receive the record (no handler, filter, record factory or
logger class of the application's on the way, ``Logger.handle`` and ``callHandlers`` not patched
by an SDK), they get the same line, with the same values, directly. Anything else on the way
(``caplog``, Sentry, an application's file handler) sends the line through ``logging`` as
before, so no one who would see it misses it.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from typing import Any

from correlation import context
from correlation.context import Hop
from correlation.log import jsonline, records
from correlation.log.entry import line_entry, stamp
from correlation.log.formatter import LINE_ATTR, JsonFormatter
from correlation.log.handler import MADE_LINE_CLASSES
from correlation.schema import ACCESS_LOGGER, FAILED_DOWNSTREAM, ORIGIN, SERVICE

_HANDLE = logging.Logger.handle
_CALL_HANDLERS = logging.Logger.callHandlers
_MAKE_RECORD = logging.Logger.makeRecord
_LOG_RECORD = logging.LogRecord
_access_log = logging.getLogger(ACCESS_LOGGER)


def report_hop(
    level: int,
    pathname: str,
    msg: str,
    args: tuple[Any, ...],
    hop: Hop,
    failure_origin: str | None,
    fields: dict[str, Any],
    logger: logging.Logger = _access_log,
) -> None:
    """Write ``hop``'s access line, once at its end: ``msg % args`` from ``pathname``, with
    ``fields`` as its keys, then ``origin`` and ``failed_downstream`` when it failed
    (``failure_origin``, :func:`correlation.hops.failure_origin`). The Flask edge and Celery's task
    runs report here; so does a dying gunicorn worker, for each request it abandons.

    ``fields`` must not use a key of :data:`schema.LINE_KEYS`, and hold only what
    :func:`jsonline.plain_line` takes. ``logger``: the access logger (another in tests).
    """
    if not logger.isEnabledFor(level):
        return
    if failure_origin is not None:
        fields[ORIGIN] = failure_origin
        if hop.failed_calls:
            fields[FAILED_DOWNSTREAM] = hop.failed_calls[0]
    handlers = _only_line_handlers(logger, level)
    if handlers is None:
        logger.handle(hop_record(logger, level, pathname, msg, args, hop, fields))
        return
    created = time.time()
    levelname = logging.getLevelName(level)
    # The handlers read what they need besides the line (the Loki metadata: the context's keys,
    # which the record would carry under the same names) from the same dict.
    entry = line_entry(
        created, levelname, logger.name, msg % args,
        context.service(), hop.correlation_id, hop.request_id, hop.parent_request_id, fields,
    )  # fmt: skip
    line = jsonline.plain_line(entry)  # str, int, finite float, None: the hop's fields
    for handler in handlers:
        try:
            handler.emit_line(created, levelname, line, entry)
        except Exception:  # noqa: BLE001 - logging's rule: a handler's failure never reaches the request
            traceback.print_exc(file=sys.stderr)


def hop_record(
    logger: logging.Logger,
    level: int,
    pathname: str,
    msg: str,
    args: tuple[Any, ...],
    hop: Hop,
    fields: dict[str, Any],
) -> logging.LogRecord:
    """The access line as a record: the hop's context stamped, ``fields`` as extras and, when
    :func:`records.new_record` made it, its JSON line made at once (what :class:`JsonFormatter`
    would write, without its generic pass over every attribute)."""
    fast = records.fast_records_apply(logger)
    record = records.new_record(logger, level, pathname, msg, args, fields, fast=fast)
    stamp(record, hop)
    if fast:
        record.__dict__[LINE_ATTR] = jsonline.plain_line(
            line_entry(
                record.created,
                record.levelname,
                record.name,
                record.getMessage(),
                record.__dict__[SERVICE],
                hop.correlation_id,
                hop.request_id,
                hop.parent_request_id,
                fields,
            )  # fmt: skip
        )
    return record


def _only_line_handlers(logger: logging.Logger, level: int) -> list[Any] | None:
    """The handlers a record of ``logger`` at ``level`` would reach, if all take made lines
    (:data:`~correlation.log.handler.MADE_LINE_CLASSES`) with the JSON formatter and no filter,
    and nothing else changes records; else None."""
    cls = type(logger)
    if (
        logger.filters
        or cls.handle is not _HANDLE
        or cls.callHandlers is not _CALL_HANDLERS
        # A record factory or logger class of the application's may add attributes: extras of the line.
        or cls.makeRecord is not _MAKE_RECORD
        or logging.getLogRecordFactory() is not _LOG_RECORD
    ):
        return None
    found = []
    node: logging.Logger | None = logger
    while node is not None:
        for handler in node.handlers:
            if handler.level > level:
                continue  # would not see the record either way
            if (
                type(handler) not in MADE_LINE_CLASSES
                or handler.filters
                or type(handler.formatter) is not JsonFormatter
            ):
                return None
            found.append(handler)
        node = node.parent if node.propagate else None
    return found or None  # none at all: logging's lastResort rules apply
