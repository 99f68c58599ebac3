"""The records the library makes itself (the access line's, :mod:`correlation.log.access`): what
``makeRecord`` would make, cheaper.

Kept, not replaced by ``makeRecord``: ``LogRecord.__init__`` splits the file name and looks up the
process on every record, the access line's largest cost when it goes through ``logging``; here the
file name is split once per path. The result is the same record (same attributes, same values;
a test holds the two to it). Whenever they could differ (a record factory or logger class of the
application's, logging's ``logThreads``/``logProcesses``/``logMultiprocessing`` off, a Python
whose records carry other attributes) ``makeRecord`` makes it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

_LogRecord = logging.LogRecord
_make_record = logging.Logger.makeRecord
_new_object = object.__new__
#: What every record's ``relativeCreated`` counts from (logging's import time).
_start_time: float = getattr(logging, "_startTime")  # noqa: B009 - private to logging, unknown to its stubs
_pid = os.getpid()


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_refresh_pid)


@lru_cache(maxsize=64)
def _file_parts(pathname: str) -> tuple[str, str]:
    filename = os.path.basename(pathname)
    return filename, os.path.splitext(filename)[0]


def fast_records_apply(logger: logging.Logger) -> bool:
    """Whether :func:`new_record` makes ``logger``'s records itself (else ``makeRecord`` does)."""
    return (
        _FAST_RECORDS
        and logging.getLogRecordFactory() is _LogRecord
        and type(logger).makeRecord is _make_record
        and bool(logging.logThreads and logging.logProcesses and logging.logMultiprocessing)
    )


def new_record(
    logger: logging.Logger,
    level: int,
    pathname: str,
    msg: str,
    args: tuple[Any, ...],
    extra: dict[str, Any],
    *,
    fast: bool | None = None,
) -> logging.LogRecord:
    """What ``logger.makeRecord(logger.name, level, pathname, 0, msg, args, None, extra=extra)``
    returns. ``extra`` must not name a record attribute (``makeRecord`` would refuse it)."""
    if fast is None:
        fast = fast_records_apply(logger)
    if not fast:
        return logger.makeRecord(logger.name, level, pathname, 0, msg, args, None, extra=extra)
    record_args: Any = args
    if args and len(args) == 1 and isinstance(args[0], Mapping) and args[0]:
        record_args = args[0]  # as LogRecord does: log("%(key)s", {"key": ...})
    created = time.time()
    process_name = "MainProcess"
    multiprocessing = sys.modules.get("multiprocessing")
    if multiprocessing is not None:
        try:
            process_name = multiprocessing.current_process().name
        except Exception:  # noqa: BLE001 - as LogRecord does: the name is a nicety, never an error
            pass
    filename, module = _file_parts(pathname)
    record = _new_object(_LogRecord)
    record.__dict__.update(
        name=logger.name, msg=msg, args=record_args, levelname=logging.getLevelName(level), levelno=level,
        pathname=pathname, filename=filename, module=module, exc_info=None, exc_text=None,
        stack_info=None, lineno=0, funcName=None, created=created,
        msecs=int((created - int(created)) * 1000) + 0.0, relativeCreated=(created - _start_time) * 1000,
        thread=threading.get_ident(), threadName=threading.current_thread().name,
        processName=process_name, process=_pid,
    )  # fmt: skip
    record.__dict__.update(extra)
    return record


def _record_attributes() -> frozenset[str]:
    return frozenset(new_record(logging.Logger("probe"), logging.INFO, __file__, "", (), {}, fast=True).__dict__)


#: False on a Python whose LogRecord carries attributes that :func:`new_record` does not set
#: (3.12 added ``taskName``): there every record is made by ``makeRecord``.
_FAST_RECORDS = _record_attributes() == frozenset(_LogRecord("x", 0, __file__, 0, "", (), None).__dict__)
