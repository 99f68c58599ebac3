"""``StdoutHandler``: JSON lines to standard output, written in batches.

Per line, a write and a flush are system calls when stdout is unbuffered (as containers set it,
``PYTHONUNBUFFERED=1``), so lines are written together. They are queued without the handler's
lock (a deque's append is atomic, :class:`~correlation.log.handler.LineHandler`); only the write
itself holds it.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from correlation._forks import rebuild_after_fork
from correlation.log.formatter import JsonFormatter
from correlation.log.handler import LineHandler


class StdoutHandler(LineHandler, logging.StreamHandler, made_lines=True):
    """A StreamHandler that writes lines in batches instead of one write and flush per record.

    Lines (JSON unless another formatter is set) are collected and written together when
    ``flush_interval`` has passed since the last write or ``max_pending`` characters wait, by a
    small timer thread when no line follows, and at flush and close: a line reaches the stream
    within about ``flush_interval``, in the order the lines were queued.
    """

    def __init__(self, stream: Any = None, flush_interval: float = 0.2, max_pending: int = 64 * 1024) -> None:
        super().__init__(stream)
        self.setFormatter(JsonFormatter())
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self._closed = False
        self._after_fork()
        # Threads do not survive fork (gunicorn --preload): start anew in the child, which
        # leaves the lines the parent had queued to the parent.
        rebuild_after_fork(self, StdoutHandler._after_fork)

    def _after_fork(self) -> None:
        self._lines: deque[str] = deque()
        self._pending_chars = 0  # a trigger only: an update lost between threads delays a write a little
        self._last_flush = time.monotonic()
        self._pending = threading.Event()
        threading.Thread(target=self._flusher, name="log-stdout-flush", daemon=True).start()

    def emit_line(self, created: float, levelname: str, line: str, fields: Mapping[str, Any]) -> None:  # noqa: ARG002
        """Queue a line: a formatted record's, or the access line (:mod:`correlation.log.access`)."""
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
            lines = self._lines
            if lines:
                # popleft, not clear(): a line queued meanwhile by another thread stays for the next write
                taken = [lines.popleft() for _ in range(len(lines))]
                text = self.terminator.join(taken) + self.terminator
                self._pending_chars = 0
                try:
                    self.stream.write(text)
                except Exception:  # noqa: BLE001 - a broken stream must not break the logging thread
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
