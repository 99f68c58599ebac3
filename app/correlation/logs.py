"""Log records that carry the correlation context, written as one JSON object per line.

:class:`CorrelationFilter` copies the current hop onto every record a handler sees;
:class:`JsonFormatter` writes the record; :func:`setup_logging` wires both to stdout and, when
``LOKI_URL`` is set, to the Loki shipper.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from correlation import context
from correlation.config import Settings

#: Attributes every LogRecord has; anything else on a record came from ``extra=`` and is written.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_CONTEXT_FIELDS = ("service", "correlation_id", "request_id", "parent_request_id")

#: The logger of the one access line per request and hop.
ACCESS_LOGGER = "correlation.access"


class CorrelationFilter(logging.Filter):
    """Adds ``service``, ``correlation_id``, ``request_id`` and ``parent_request_id`` to records.

    Attach it to handlers (not loggers) so records of every logger, third-party ones included,
    get the fields. Values already on a record (passed with ``extra=``) are kept.
    """

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "correlation_id"):
            hop = context.current()
            record.correlation_id = hop.correlation_id if hop else None
            record.request_id = hop.request_id if hop else None
            record.parent_request_id = hop.parent_request_id if hop else None
        if not hasattr(record, "service"):
            record.service = self.service
        return True


def _utc_timestamp(created: float) -> str:
    seconds = int(created)
    micros = int((created - seconds) * 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, context fields, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _CONTEXT_FIELDS:
            entry[name] = getattr(record, name, None)
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRS and name not in entry:
                entry[name] = value
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup_logging(settings: Settings, *, stream: Any = None) -> list[logging.Handler]:
    """Send the root logger's records as JSON lines to ``stream`` (stdout) and to Loki.

    Loki shipping is on when ``settings.loki.url`` is set. Returns the handlers it installed
    (replacing earlier ones it installed), so a caller can flush or close them.
    """
    from correlation.loki import LokiHandler  # the shipper is optional; import only when used

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_installed_by_correlation", False)]:
        root.removeHandler(old)
        old.close()

    formatter = JsonFormatter()
    handlers: list[logging.Handler] = [logging.StreamHandler(stream or sys.stdout)]
    if settings.loki.url:
        handlers.append(LokiHandler(settings.loki, labels={"service_name": settings.service, "env": settings.env}))
    for handler in handlers:
        handler.addFilter(CorrelationFilter(settings.service))
        handler.setFormatter(formatter)
        handler._installed_by_correlation = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(settings.log_level)
    return handlers
