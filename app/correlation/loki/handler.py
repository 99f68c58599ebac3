"""``LokiHandler``: a logging handler that ships records to Loki without blocking the caller.

``emit`` formats the record and appends it to a memory-bounded buffer: no I/O, no waiting on
Loki. A background thread (:mod:`correlation.loki.sender`) batches and pushes. ``close`` (run by
``logging.shutdown`` at exit, e.g. when gunicorn stops a worker) flushes with a bounded wait.

Neither ``flush`` nor ``close`` waits for the sender while the calling thread holds ``logging``'s
module lock, as a reconfiguration does while it closes the handlers it replaces: the sender may
need that lock to push (see :meth:`LokiHandler.close_within`).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import weakref
from collections.abc import Mapping
from types import FrameType
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.registry import CollectorRegistry

from correlation import context, schema
from correlation._forks import rebuild_after_fork
from correlation.ids import shard_of
from correlation.log.entry import stamp
from correlation.log.formatter import JsonFormatter
from correlation.log.handler import LineHandler
from correlation.loki import collector
from correlation.loki.buffer import LineBuffer, PushEntry
from correlation.loki.sender import Sender
from correlation.loki.stats import ShipperStats
from correlation.settings import ConfigError, LokiSettings

#: Record attributes sent as structured metadata besides ``level`` (queryable with no parser,
#: never labels). ``error_type`` is read from error lines only (:data:`_ERROR_METADATA_ATTRS`).
_METADATA_ATTRS = tuple(
    name
    for name in (*schema.METADATA_FIELDS, *schema.OPTIONAL_METADATA_FIELDS)
    if name not in (schema.LEVEL, schema.ERROR_TYPE)
)
#: Read only from lines at level ERROR: the one failure line of a request, so no other line pays
#: a lookup for it.
_ERROR_METADATA_ATTRS = (schema.ERROR_TYPE,)
#: Structured metadata ``level`` of the standard level names (others: lowercased each time).
_LEVEL_LABELS = {name: name.lower() for name in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")}
_ERROR_LEVEL = _LEVEL_LABELS["ERROR"]
_CORRELATION_ID = schema.CORRELATION_ID
#: Loki's default ``max_line_size`` is 256 KB; longer lines are rejected, so we cut them first.
DEFAULT_MAX_LINE_BYTES = 256 * 1024
TRUNCATION_MARK = " ...[truncated by loki shipper]"

# logging closes every handler at exit (its atexit hook). Registered after logging's own hook,
# so it runs first.
_exiting = False


def _mark_exiting() -> None:
    global _exiting
    _exiting = True


atexit.register(_mark_exiting)


#: Every handler not closed yet: what :func:`flush_every_handler` delivers.
_open: weakref.WeakSet[LokiHandler] = weakref.WeakSet()


def flush_every_handler(seconds: float | None = None) -> None:
    """Deliver what every open Loki handler holds, each within ``seconds`` (default: its flush
    timeout). For a server that ends its process by a signal once its own graceful shutdown is
    done, so that atexit and ``logging.shutdown`` never run: uvicorn raises the signal that
    stopped it again, with the handler it found (the default one). The ASGI edge calls this when
    the lifespan shuts down (:mod:`correlation.integrations.asgi`)."""
    for handler in list(_open):
        handler.flush(seconds)


def _holding_logging_lock() -> bool:
    """Whether this thread holds ``logging``'s module lock: ``dictConfig``, ``fileConfig`` and
    ``basicConfig(force=True)`` hold it while they flush and close the handlers they replace."""
    lock = getattr(logging, "_lock", None)  # not in typeshed; an RLock in CPython 3.11 to 3.13
    is_owned = getattr(lock, "_is_owned", None)  # CPython's RLock, the C one and the Python one
    return bool(is_owned is not None and is_owned())


def _ending_logging() -> bool:
    """Whether the handler is being closed because the program ends its logging: at exit, or in
    a ``logging.shutdown()`` it calls itself (scripts, tests, gunicorn's ``worker_exit``). A
    configuration (``dictConfig``, ``fileConfig``) closes the handlers it replaces through that
    same ``logging.shutdown``, so it is told apart by the ``logging.config`` frame above it."""
    if _exiting:
        return True
    in_shutdown = False
    frame: FrameType | None = sys._getframe(1)  # noqa: SLF001 - the caller's chain; only at close, never per line
    while frame is not None:
        module = frame.f_globals.get("__name__")
        if module == "logging.config":
            return False
        if module == "logging" and frame.f_code.co_name == "shutdown":
            in_shutdown = True
        frame = frame.f_back
    return in_shutdown


class LokiHandler(LineHandler, made_lines=True):
    """Ship formatted records to Loki's push API under a fixed label set.

    ``labels`` default to this process's service (:func:`correlation.context.service`) and
    ``env`` from ``DEPLOY_ENV``. Records that did not pass a :class:`CorrelationFilter` are given
    the correlation context here, so the ID is never lost; lines are JSON (:class:`JsonFormatter`)
    unless another formatter is set. The shipper's counters are reported in ``registry``
    (None: nowhere). Lines longer than ``max_line_bytes`` are cut to that size and end with
    :data:`TRUNCATION_MARK` (counted in ``truncated_lines``); their structured metadata is kept, so
    they still show in the request's trail.
    """

    def __init__(
        self,
        settings: LokiSettings | None = None,
        labels: Mapping[str, str] | None = None,
        *,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        level: int = logging.NOTSET,
        registry: CollectorRegistry | None = REGISTRY,
        **options: Any,
    ) -> None:
        super().__init__(level)
        # dictConfig passes plain values (url="http://loki:3100", batch_max_bytes=1048576, ...):
        # they override the LOKI_* environment, field by field, checked like the environment.
        settings = (settings or LokiSettings.from_env()).with_options(options)
        if not settings.url:
            raise ConfigError("LokiHandler needs url= (or LOKI_URL): where should the lines go?")
        self.settings = settings
        self.labels = dict(labels) if labels is not None else default_labels()
        if schema.SHARD_LABEL in self.labels:
            raise ConfigError(
                f"LokiHandler labels: {schema.SHARD_LABEL!r} is set per line from its correlation ID "
                "(every trail lookup selects by it); give your label another name"
            )
        self.max_line_bytes = max_line_bytes
        self.setFormatter(JsonFormatter())
        self._new_pipeline()
        if registry is not None:
            collector.register(self, registry)
        _open.add(self)
        # After fork the parent's thread is gone and its buffered lines are the parent's to send:
        # the child starts empty and starts its own sender lazily (works with gunicorn --preload).
        rebuild_after_fork(self, LokiHandler._new_pipeline)

    def _new_pipeline(self) -> None:
        inherited = getattr(self, "sender", None)
        if inherited is not None and inherited.spool is not None:
            inherited.spool.release_inherited()  # the parent's spool stays the parent's
        self.stats = ShipperStats()
        self.buffer = LineBuffer(self.settings.buffer_max_bytes)
        self.sender = Sender(self.settings, self.labels, self.buffer, self.stats)

    def emit(self, record: logging.LogRecord) -> None:
        """:meth:`LineHandler.emit`, but the sender's own records are not shipped, the context is
        put on the record for the metadata whatever the formatter, and a failure is counted."""
        # The sender thread's own records (urllib3 warnings, ...) would feed themselves back.
        if threading.get_ident() == self.sender.thread_id:
            return
        stamp(record)
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - any formatting failure is counted, never raised to the caller
            self.stats.drop("format_error")
            self.handleError(record)  # prints to stderr, never logs
            return
        self.emit_line(record.created, record.levelname, line, record.__dict__)

    def emit_line(self, created: float, levelname: str, line: str, fields: Mapping[str, Any]) -> None:
        """Ship a line already made. ``fields`` holds the values it was made from under the record
        attributes' names: a record's ``__dict__``, or the entry :mod:`correlation.log.access` made the
        access line from. The structured metadata is read from it (the context's values are
        strings, or None outside a request); ``level`` comes from ``levelname``.

        One function on purpose: every request's access line takes this path.
        """
        metadata = {}
        for name in _METADATA_ATTRS:
            value = fields.get(name)
            if isinstance(value, str):
                metadata[name] = value
        level = metadata[schema.LEVEL] = _LEVEL_LABELS.get(levelname) or levelname.lower()
        if level is _ERROR_LEVEL:
            for name in _ERROR_METADATA_ATTRS:
                value = fields.get(name)
                if isinstance(value, str):
                    metadata[name] = value
        if len(line) * 4 > self.max_line_bytes:  # cheap pre-check: 4 bytes per char at most
            line = self._fit(line)
        cid = metadata.get(_CORRELATION_ID)
        shard = shard_of(cid) if cid else ""
        if not self.buffer.put(PushEntry.encode(int(created * 1e9), line, metadata, shard)):
            self.stats.drop("shutdown" if self.buffer.closed else "buffer_full")
            return
        if self.sender.thread is None:
            self.sender.ensure_started()

    def _fit(self, line: str) -> str:
        encoded = line.encode("utf-8")
        if len(encoded) <= self.max_line_bytes:
            return line
        self.stats.truncated()
        keep = self.max_line_bytes - len(TRUNCATION_MARK.encode())
        return encoded[:keep].decode("utf-8", "ignore") + TRUNCATION_MARK

    def flush(self, timeout: float | None = None) -> None:
        """Send everything buffered now; wait up to ``timeout`` (default: the flush timeout)
        until nothing waits in memory (with a spool, lines may still wait on disk)."""
        if self.sender.thread is not None:
            if _holding_logging_lock():
                timeout = 0  # asks the sender to send now, without waiting for it: see close_within
            self.buffer.join(self.settings.flush_timeout_seconds if timeout is None else timeout)

    def close(self) -> None:
        """Flush within ``flush_timeout_seconds``; what is still buffered then is counted as dropped
        (with a spool, it stays on disk for the next process). Under a reconfiguration the flush
        goes on after ``close`` returns (see :meth:`close_within`)."""
        if getattr(self, "_installed_by_correlation", False) and not _ending_logging():
            print(
                "correlation: the Loki handler installed by setup_logging was closed by a logging "
                "reconfiguration (logging.config.dictConfig?): lines no longer go to Loki. Add "
                "correlation.LokiHandler to that configuration, or call setup_logging after it.",
                file=sys.stderr,
            )
        self.close_within(self.settings.flush_timeout_seconds)

    def close_within(self, seconds: float) -> None:
        """:meth:`close`, waiting at most ``seconds`` (a worker being killed has about one).

        Called by a thread that holds ``logging``'s module lock (a reconfiguration replacing this
        handler), it does not wait: a thread of its own, ``loki-close``, does the waiting part,
        and ``close`` returns at once. Waiting there would stall the reconfiguration for the
        whole timeout, and the lines with it: the sender thread may need that same lock to push.
        ``logging`` takes it whenever a logger's cached level is missing (any ``setLevel`` clears
        every logger's cache, and urllib3 asks whether its debug lines are on for every push), a
        logger is made, or a module that makes one is imported. Making the sender avoid it
        cannot be kept up (the next ``setLevel`` clears what it warmed, and the HTTP stack's
        logging is not ours), so the rule is on the waiting side. ``loki-close`` is not a daemon
        thread: the interpreter waits for it at exit, as it would have for the close itself. It
        counts what is left and stops reporting the handler's metrics once it is done, as the
        close does. Neither it nor the sender ever logs: their trouble goes to stderr.
        """
        _open.discard(self)
        if self.sender.thread is None and not self.buffer.buffered[0]:
            collector.unregister(self)
        elif not (_holding_logging_lock() and self._hand_over(seconds)):
            self._ship_and_stop(seconds)
        super().close()

    def _hand_over(self, seconds: float) -> bool:
        """Run :meth:`_ship_and_stop` in a thread of its own; False if none can be started."""
        # daemon=False said, not inherited: a reconfiguration run by a daemon thread would pass it on.
        closer = threading.Thread(target=self._ship_and_stop, args=(seconds,), name="loki-close", daemon=False)
        try:
            closer.start()
        except RuntimeError:  # the interpreter is finishing (an atexit hook reconfiguring): wait here
            return False
        return True

    def _ship_and_stop(self, seconds: float) -> None:
        """Deliver what is buffered within ``seconds``, count what is not, stop reporting."""
        self.sender.ensure_started()
        if not self.sender.stop(seconds):
            left = self.buffer.drain()
            if left:
                self.stats.drop("shutdown", left)
            # A push still under way: the process usually ends before its answer. Counted apart,
            # since Loki may have them after all (then they are also counted as sent).
            unconfirmed = self.sender.unconfirmed()
            if unconfirmed:
                self.stats.drop("shutdown_unconfirmed", unconfirmed)
        collector.unregister(self)

    def buffered(self) -> tuple[int, int]:
        """(lines, bytes) waiting in memory."""
        return self.buffer.buffered

    def spooled(self) -> tuple[int, int]:
        """(lines, bytes) waiting in the on-disk spool."""
        spool = self.sender.spool
        return spool.pending if spool is not None else (0, 0)


def default_labels() -> dict[str, str]:
    """The stream labels when none are given: this process's service, and ``DEPLOY_ENV``."""
    env = os.environ.get("DEPLOY_ENV", "").strip() or "local"
    return {schema.SERVICE_LABEL: context.service(), schema.ENV_LABEL: env}
