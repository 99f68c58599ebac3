"""loguru messages as the library's lines: the correlation fields in loguru's records, and a sink
that hands each message to ``logging``'s handlers (stdout JSON, Loki) as a record of its own.

Optional: ``pip install 'correlation-trail[loguru]'``.

- :func:`add_correlation`, a patcher (``logger.configure(patcher=add_correlation)``): puts
  ``service``, ``correlation_id``, ``request_id`` and ``parent_request_id`` in ``record["extra"]``
  when the message is logged, in the caller's thread: the hop is the one bound at the call, even
  when the sink runs later on loguru's own thread (``enqueue=True``).
- :class:`LoggingSink` (``logger.add(LoggingSink())``): each message becomes a ``LogRecord``
  with loguru's level, logger name (the module), message, exception, time, thread and process,
  its ``extra`` as the record's extras; it is handled by ``logging`` (the logger's handlers up to
  the root: what :func:`correlation.setup_logging` installed) or by the handlers given (a
  :class:`correlation.LokiHandler`, say).
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from collections.abc import Mapping
from typing import Any

try:
    import loguru  # noqa: F401 - imported to fail here, naming the extra, rather than at the first message
except ImportError as error:  # the extra is not installed: say which one to install
    raise ImportError(
        "correlation.integrations.loguru needs loguru: pip install 'correlation-trail[loguru]'",
        name="loguru",
    ) from error

from correlation import context, schema
from correlation.log.formatter import event_extra

#: A loguru record without a module name (``record["name"]`` is None) is logged under this name.
DEFAULT_LOGGER = "loguru"
_start_time: float = getattr(logging, "_startTime")  # noqa: B009 - what every record's relativeCreated counts from
_CONTEXT_FIELDS = schema.CONTEXT_FIELDS
_UNKNOWN_HOP = dict.fromkeys((schema.CORRELATION_ID, schema.REQUEST_ID, schema.PARENT_REQUEST_ID))


def add_correlation(record: Mapping[str, Any]) -> None:
    """loguru patcher: add the service and the current hop's IDs (None outside a request) to
    ``record["extra"]``, unless they are there already (``logger.bind`` values win)."""
    extra = record["extra"]
    if schema.CORRELATION_ID not in extra:
        hop = context.current()
        extra[schema.CORRELATION_ID] = hop.correlation_id if hop else None
        extra.setdefault(schema.REQUEST_ID, hop.request_id if hop else None)
        extra.setdefault(schema.PARENT_REQUEST_ID, hop.parent_request_id if hop else None)
    extra.setdefault(schema.SERVICE, context.service())


class LoggingSink:
    """A loguru sink that writes each message through ``logging``'s handlers, as a record.

    Without ``handlers``, the record goes to the ``logging`` logger of loguru's module name, if
    that logger is enabled for the level, and so up to the root's handlers (stdout JSON and Loki
    after :func:`correlation.setup_logging`). With ``handlers``, to those alone (each by its own
    level). A failure is printed to stderr and never raised into the code that logged, nor logged
    again (it could loop back here). Do not also route ``logging`` into loguru (loguru's
    ``InterceptHandler``) on the loggers this sink writes to: each would feed the other.

    The correlation fields are the ones :func:`add_correlation` put in ``extra`` at the call;
    without that patcher, the hop of the thread the sink runs in, which is the caller's unless the
    sink was added with ``enqueue=True``: then the fields are null, and a warning says so once.
    """

    def __init__(self, *handlers: logging.Handler) -> None:
        self.handlers = handlers
        self._warned_enqueue = False

    def __call__(self, message: Any) -> None:
        try:
            record = self.make_record(message.record)
            if not self.handlers:
                logger = logging.getLogger(record.name)
                if logger.isEnabledFor(record.levelno):
                    logger.handle(record)
                return
        except Exception:  # noqa: BLE001 - a sink's failure must not reach the caller, nor be logged (it could loop)
            _report_failure()
            return
        for handler in self.handlers:
            if record.levelno >= handler.level:
                try:
                    handler.handle(record)
                except Exception:  # noqa: BLE001 - as above; the other handlers still get the line
                    _report_failure()

    def make_record(self, loguru_record: Mapping[str, Any]) -> logging.LogRecord:
        """The ``LogRecord`` of a loguru record: its level (loguru's name, ``SUCCESS`` too), module
        as logger name, message, exception, time, file, thread and process; ``extra`` as fields."""
        level = loguru_record["level"]
        file = loguru_record["file"]
        exception = loguru_record["exception"]
        exc_info = (exception.type, exception.value, exception.traceback) if exception else None
        record = logging.LogRecord(
            loguru_record["name"] or DEFAULT_LOGGER,
            level.no,
            file.path,
            loguru_record["line"],
            loguru_record["message"],
            None,
            exc_info,  # loguru's exception tuple: its traceback is None after enqueue=True
            loguru_record["function"],
        )
        record.levelname = level.name
        created = loguru_record["time"].timestamp()
        record.created = created
        record.msecs = int((created - int(created)) * 1000) + 0.0
        record.relativeCreated = (created - _start_time) * 1000
        # The caller's thread and process, not the sink's (loguru's own thread with enqueue=True).
        thread, process = loguru_record["thread"], loguru_record["process"]
        record.thread, record.threadName = thread.id, thread.name
        record.process, record.processName = process.id, process.name
        extra = loguru_record["extra"]
        if schema.CORRELATION_ID not in extra and thread.id != threading.get_ident():
            # Run on another thread than the call (enqueue=True) and no patcher: the caller's hop
            # is unknown here, and this thread's is not it.
            self._warn_enqueue_without_patcher()
            extra = {**_UNKNOWN_HOP, **extra}
        record.__dict__.update(event_extra(extra))
        return record

    def _warn_enqueue_without_patcher(self) -> None:
        if not self._warned_enqueue:
            self._warned_enqueue = True
            print(
                "correlation: a loguru message reached LoggingSink on another thread than its call "
                "(enqueue=True?) without the correlation fields: its correlation_id is null. Add "
                "logger.configure(patcher=correlation.integrations.loguru.add_correlation).",
                file=sys.stderr,
            )


def _report_failure() -> None:
    print("correlation: the loguru sink could not write a message:", file=sys.stderr)
    traceback.print_exc(file=sys.stderr)


__all__ = ["DEFAULT_LOGGER", "LoggingSink", "add_correlation"]
