"""A memory-bounded buffer between the logging threads and the sender thread.

``put`` never blocks on I/O: it appends under a lock or refuses when the byte bound is reached.
``take`` hands the sender a batch when enough bytes wait or the oldest line has waited long enough.
``join`` waits until everything put has been delivered or given up (for flush and close).
"""

from __future__ import annotations

import json
import threading
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Mapping
from itertools import accumulate, islice, repeat
from operator import add, itemgetter
from typing import NamedTuple

from correlation.log import jsonline

#: Memory an entry takes besides its fragment's bytes: the tuple, the int, the bytes object's
#: header and the deque slot (the shard is a one-character string CPython shares). With it the
#: byte bound is the memory really held, not a guess.
ENTRY_OVERHEAD = 144


_new_tuple = tuple.__new__  # one PushEntry a line: see bench/README.md, "Why the hot path's code looks as it does"


class PushEntry(NamedTuple):
    """One log line on its way to Loki, already in the form it takes in the push body.

    ``fragment`` is the JSON of ``["<unix ns>", "<line>", {structured metadata}]``: encoded once,
    on the logging thread, held compactly, and joined into the body by the sender as it is.
    ``shard``: the value of the stream's ``shard`` label (``correlation.ids.shard_of`` of the
    line's correlation ID), or "" for a line that goes to the stream without it.
    """

    timestamp_ns: int
    fragment: bytes
    shard: str = ""

    @classmethod
    def encode(
        cls, timestamp_ns: int, line: str, metadata: Mapping[str, str] | None = None, shard: str = ""
    ) -> PushEntry:
        # ASCII JSON: any str, lone surrogates included, is safe in the push body.
        return _new_tuple(cls, (timestamp_ns, jsonline.ascii_entry(str(timestamp_ns), line, metadata), shard))

    def decode(self) -> tuple[str, dict[str, str]]:
        """(line, metadata): for tests and for reading the spool back."""
        value = json.loads(self.fragment)
        return value[1], value[2] if len(value) > 2 else {}

    @property
    def size(self) -> int:
        return len(self.fragment) + ENTRY_OVERHEAD


_FRAGMENT = itemgetter(1)  # PushEntry.fragment


class LineBuffer:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: deque[PushEntry] = deque()
        self._bytes = 0
        self._unfinished = 0  # put but not yet marked done: waiting here or in flight
        self._oldest_at = 0.0
        self._flushing = False
        self._closed = False
        self._notify_at = max_bytes // 2  # the spill watermark (see Sender)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)

    def put(self, entry: PushEntry) -> bool:
        """Append ``entry``; False (and nothing stored) past the byte bound or once closed."""
        size = len(entry.fragment) + ENTRY_OVERHEAD
        # The Condition's own lock, taken directly: the Condition's __enter__ is a Python call.
        with self._lock:
            if self._bytes + size > self.max_bytes or self._closed:
                return False
            if not self._entries:
                self._oldest_at = time.monotonic()
                self._cond.notify_all()  # the sender starts its batch clock
            self._entries.append(entry)
            self._bytes += size
            self._unfinished += 1
            if self._bytes >= self._notify_at:
                self._cond.notify_all()  # a sender waiting to spill to disk
            return True

    def take(self, max_bytes: int, max_wait: float) -> list[PushEntry]:
        """Block until a batch is due, then remove and return it (at most ``max_bytes``).

        Returns an empty list only once the buffer is closed and empty.
        """
        with self._cond:
            while True:
                if self._entries:
                    waited = time.monotonic() - self._oldest_at
                    if self._bytes >= max_bytes or waited >= max_wait or self._flushing or self._closed:
                        break
                    self._cond.wait(max_wait - waited)
                elif self._closed:
                    return []
                else:
                    self._cond.wait()
            return self._pop_batch(max_bytes)

    def take_now(self, max_bytes: int) -> list[PushEntry]:
        """Remove and return up to ``max_bytes`` of the oldest entries without waiting."""
        with self._cond:
            return self._pop_batch(max_bytes)

    def _pop_batch(self, max_bytes: int) -> list[PushEntry]:
        if self._bytes <= max_bytes:  # all of it (the usual batch, due by time): one C-level copy
            batch = list(self._entries)
            self._entries.clear()
            self._bytes = 0
            self._oldest_at = time.monotonic()
            return batch
        # The oldest entries that fit (at least one), without a Python step per entry: this runs
        # under the lock every logging thread takes. No more entries than
        # max_bytes // ENTRY_OVERHEAD can fit, so no more are summed.
        oldest = islice(self._entries, max_bytes // ENTRY_OVERHEAD + 1)
        totals = list(accumulate(map(add, map(len, map(_FRAGMENT, oldest)), repeat(ENTRY_OVERHEAD))))
        count = bisect_right(totals, max_bytes) or 1
        batch = list(islice(self._entries, count))
        self._entries = deque(islice(self._entries, count, None))
        self._bytes -= totals[count - 1]
        self._oldest_at = time.monotonic()
        return batch

    def wait_fill(self, threshold_bytes: int, timeout: float) -> bool:
        """Wait up to ``timeout`` until at least ``threshold_bytes`` wait here. True if they do."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._bytes < threshold_bytes and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return self._bytes >= threshold_bytes

    def done(self, count: int) -> None:
        """Mark ``count`` taken entries as finished (sent or dropped)."""
        with self._cond:
            self._unfinished -= count
            if self._unfinished <= 0:
                self._flushing = False
                self._cond.notify_all()

    def join(self, timeout: float) -> bool:
        """Ask for everything to be sent now; wait up to ``timeout``. True if all finished."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flushing = True
            self._cond.notify_all()
            while self._unfinished > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def close(self) -> None:
        """No more batching delay: ``take`` returns what is left, then an empty list."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def drain(self) -> int:
        """Remove everything still waiting; return how many entries that was."""
        with self._cond:
            count = len(self._entries)
            self._entries.clear()
            self._bytes = 0
            self._unfinished -= count
            self._cond.notify_all()
            return count

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def buffered(self) -> tuple[int, int]:
        """(lines, bytes) waiting to be taken."""
        with self._cond:
            return len(self._entries), self._bytes
