"""Log records that carry the correlation context, written as one JSON object per line.

:class:`CorrelationFilter` copies the current hop onto every record a handler sees;
:class:`JsonFormatter` writes the record; :func:`setup_logging` wires both to stdout and, when
``LOKI_URL`` is set, to the Loki shipper.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any

from correlation import context
from correlation.config import Settings
from correlation.forks import rebuild_after_fork

_CONTEXT_FIELDS = ("service", "correlation_id", "request_id", "parent_request_id")
#: Where a JsonFormatter leaves the line it made, so the next handler does not format it again.
_LINE_ATTR = "_correlation_json_line"
#: Attributes every LogRecord has; anything else on a record came from ``extra=`` and is written.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName", _LINE_ATTR}
#: A record with no more attributes than this (context fields aside) carries no extras.
_PLAIN_RECORD_SIZE = len(logging.makeLogRecord({}).__dict__)
_encode = json.JSONEncoder(default=str, ensure_ascii=False).encode

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


_second_cache: tuple[int, str] = (-1, "")


def _utc_timestamp(created: float) -> str:
    global _second_cache
    seconds = int(created)
    cached_second, prefix = _second_cache
    if seconds != cached_second:  # strftime once a second, not once a line
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second_cache = (seconds, prefix)
    return f"{prefix}.{int((created - seconds) * 1_000_000):06d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, context fields, extras, exception.

    The line is kept on the record, so several handlers (stdout and Loki) format it once.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: str | None = record.__dict__.get(_LINE_ATTR)
        if line is None:
            line = self._format(record)
            setattr(record, _LINE_ATTR, line)
        return line

    def _format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _CONTEXT_FIELDS:
            entry[name] = getattr(record, name, None)
        attrs = record.__dict__
        if len(attrs) - sum(name in attrs for name in _CONTEXT_FIELDS) > _PLAIN_RECORD_SIZE:
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
        return _encode(entry)


class StdoutHandler(logging.StreamHandler):
    """A StreamHandler that writes lines in batches instead of one write and flush per record.

    Per line, a write and a flush are system calls when stdout is unbuffered (as containers set
    it, ``PYTHONUNBUFFERED=1``); they were the largest single cost of an access line. Lines are
    collected and written together when ``flush_interval`` has passed since the last write or
    ``max_pending`` characters wait, by a small timer thread when no line follows, and at flush
    and close: a line reaches the stream within about ``flush_interval``.
    """

    def __init__(self, stream: Any = None, flush_interval: float = 0.2, max_pending: int = 64 * 1024) -> None:
        super().__init__(stream)
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self._lines: list[str] = []
        self._pending_chars = 0
        self._last_flush = time.monotonic()
        self._pending = threading.Event()
        self._closed = False
        self._start_flusher()
        # Threads do not survive fork (gunicorn --preload): start anew in the child.
        rebuild_after_fork(self, StdoutHandler._start_flusher)

    def _start_flusher(self) -> None:
        threading.Thread(target=self._flusher, name="log-stdout-flush", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:  # called with self.lock held
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._lines.append(line)
        self._pending_chars += len(line)
        if self._pending_chars >= self.max_pending or time.monotonic() - self._last_flush >= self.flush_interval:
            self.flush()
        elif not self._pending.is_set():  # set() takes a lock and wakes the flusher: once is enough
            self._pending.set()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._last_flush = time.monotonic()
            self._pending.clear()
            if self._lines:
                text = self.terminator.join(self._lines) + self.terminator
                self._lines.clear()
                self._pending_chars = 0
                try:
                    self.stream.write(text)
                except Exception:
                    print("correlation: could not write log lines to the stream", file=sys.stderr)
            super().flush()

    def _flusher(self) -> None:
        while True:
            self._pending.wait()
            time.sleep(self.flush_interval)
            if self._closed:
                return
            if self._pending.is_set():
                self.flush()

    def close(self) -> None:
        self.flush()
        self._closed = True
        self._pending.set()
        super().close()


def setup_logging(settings: Settings, *, stream: Any = None) -> list[logging.Handler]:
    """Send the root logger's records as JSON lines to ``stream`` (stdout) and to Loki.

    Loki shipping is on when ``settings.loki.url`` is set; stdout unless ``settings.log_stdout``
    is False. Returns the handlers it installed
    (replacing earlier ones it installed), so a caller can flush or close them.
    """
    from correlation.loki import LokiHandler  # the shipper is optional; import only when used

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_installed_by_correlation", False)]:
        root.removeHandler(old)
        old.close()

    formatter = JsonFormatter()
    handlers: list[logging.Handler] = [StdoutHandler(stream or sys.stdout)] if settings.log_stdout else []
    if settings.loki.url:
        handlers.append(LokiHandler(settings.loki, labels={"service_name": settings.service, "env": settings.env}))
    for handler in handlers:
        handler.addFilter(CorrelationFilter(settings.service))
        handler.setFormatter(formatter)
        handler._installed_by_correlation = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(settings.log_level)
    return handlers
