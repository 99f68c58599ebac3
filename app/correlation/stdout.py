"""``StdoutHandler``: JSON lines to standard output, written in batches.

Per line, a write and a flush are system calls when stdout is unbuffered (as containers set it,
``PYTHONUNBUFFERED=1``); they were the largest single cost of an access line.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

from correlation.forks import rebuild_after_fork
from correlation.logs import JsonFormatter


class StdoutHandler(logging.StreamHandler):
    """A StreamHandler that writes lines in batches instead of one write and flush per record.

    Lines (JSON unless another formatter is set) are collected and written together when ``flush_interval`` has passed since the last write or
    ``max_pending`` characters wait, by a small timer thread when no line follows, and at flush
    and close: a line reaches the stream within about ``flush_interval``.
    """

    def __init__(self, stream: Any = None, flush_interval: float = 0.2, max_pending: int = 64 * 1024) -> None:
        super().__init__(stream)
        self.setFormatter(JsonFormatter())
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
