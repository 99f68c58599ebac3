"""What the shipper did: lines sent, retries and drops by reason. Read by the metrics module."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

#: Why a line never reached Loki. Every drop is counted under one of these.
DROP_REASONS = (
    "buffer_full",  # memory bound reached while Loki was slow or down
    "rejected",  # Loki answered 4xx other than 429 (bad entries, auth); never retried
    "too_large",  # a single entry Loki refuses even alone in a push
    "retries_exhausted",  # 429/5xx/connection errors for longer than max_retry_seconds
    "shutdown",  # still buffered when the flush timeout at close ran out (and no spool)
    "shutdown_unconfirmed",  # in a push still unanswered when that timeout ran out: may have arrived
    "spool_full",  # Loki down long enough to fill memory and the disk spool
    "spool_error",  # the spool could not be written (disk full, read-only, ...)
    "spool_corrupt",  # a spool segment could not be read back: moved to lokispool-quarantine/
    "sender_error",  # held by the sender thread when an unexpected error (a bug) restarted it
    "format_error",  # the record could not be formatted
    "worker_lost",  # buffered in a worker killed before it closed its shipper (counted by the server)
)
RETRY_REASONS = ("rate_limited", "server_error", "connection_error")


@dataclass
class ShipperStats:
    """Thread-safe counters; :meth:`snapshot` gives a consistent copy."""

    sent_lines: int = 0
    sent_batches: int = 0
    truncated_lines: int = 0
    sender_restarts: int = 0
    retries: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def sent(self, lines: int) -> None:
        with self._lock:
            self.sent_lines += lines
            self.sent_batches += 1

    def retried(self, reason: str) -> None:
        with self._lock:
            self.retries[reason] += 1

    def drop(self, reason: str, lines: int = 1) -> None:
        with self._lock:
            self.dropped[reason] += lines

    def restarted(self) -> None:
        with self._lock:
            self.sender_restarts += 1

    def truncated(self) -> None:
        with self._lock:
            self.truncated_lines += 1

    def snapshot(self) -> ShipperStats:
        with self._lock:
            return ShipperStats(
                sent_lines=self.sent_lines,
                sent_batches=self.sent_batches,
                truncated_lines=self.truncated_lines,
                sender_restarts=self.sender_restarts,
                retries=Counter(self.retries),
                dropped=Counter(self.dropped),
            )
