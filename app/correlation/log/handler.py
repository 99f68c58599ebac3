"""``LineHandler``: the base of the library's handlers (stdout, Loki), which take lines already made.

A record reaches :meth:`LineHandler.emit`, is formatted, and the line goes to :meth:`emit_line`.
The access line (:mod:`correlation.log.access`) can skip ``logging`` and call ``emit_line``
directly, when nothing but such handlers would see the record.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

#: The classes the access line may hand a made line to: those declared ``made_lines=True`` (the
#: library's own), not their subclasses, whose ``emit`` may do more than ``emit_line``.
MADE_LINE_CLASSES: set[type[logging.Handler]] = set()


class LineHandler(logging.Handler):
    """A handler whose output is one line per record: ``emit`` formats, :meth:`emit_line` writes.

    ``handle`` takes no handler-wide lock: every request thread logs through these handlers, and
    the lock ``logging`` takes around ``emit`` would queue them up behind each other's formatting.
    A subclass that needs one takes its own, around the write only.
    """

    def __init_subclass__(cls, *, made_lines: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if made_lines:
            MADE_LINE_CLASSES.add(cls)

    def handle(self, record: logging.LogRecord) -> bool:
        """Filter and emit without the handler-wide lock (see the class's docstring)."""
        if self.filter(record):
            self.emit(record)
            return True
        return False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - logging's rule: a bad record is reported (handleError), never raised
            self.handleError(record)
            return
        self.emit_line(record.created, record.levelname, line, record.__dict__)

    def emit_line(self, created: float, levelname: str, line: str, fields: Mapping[str, Any]) -> None:
        """Write ``line``, made from a record created at ``created`` (Unix seconds) at ``levelname``;
        ``fields`` holds the values it was made from under the record attributes' names."""
        raise NotImplementedError
