"""The background thread that pushes batches to Loki, with the retry rules of Promtail and Alloy.

- 2xx: delivered.
- 429, 5xx, connection errors, timeouts: retried with jittered exponential backoff
  (0.5 s doubling, capped at 30 s by default) for up to ``max_retry_seconds``, then dropped and
  counted.
- 413, or Loki's 500 "received message larger than max": no retry can cure it; the batch is
  split in two and each half sent on its own.
- other 4xx: never retried; counted as ``rejected``; Loki's first line of explanation goes to stderr.

With a spool (``LOKI_SPOOL_DIR``) a batch that meets a retryable failure goes to disk at once and
is retried from there, oldest first, before anything newer is sent; while Loki stays away, memory
is moved to disk whenever it is half full, and at close what cannot be sent in time stays on disk
for the next process instead of being dropped. A segment that cannot be read back is moved aside
to the spool's quarantine and counted (``spool_corrupt``), never deleted.

The thread does not die on an unexpected error (a bug, a reader failing on a segment): the
lines it held are counted (``sender_error``), the error goes to stderr, the restart is counted
(``loki_shipper_sender_restarts_total``), and shipping goes on after a pause that doubles while
the errors come one after another.

Every backoff starts again from ``backoff_min_seconds`` once shipping has worked again, that is
once Loki has given a push its final answer (accepted it, or refused it for good): a batch from
memory or a segment replayed from the spool. A long-lived process meets each isolated fault or
outage with the short pause, not the longest one an earlier episode grew. (A batch's own retries
start from the minimum anyway: their delay is the batch's.) All of it happens on the thread:
nothing is added to ``emit``.

The sender never logs through :mod:`logging`: its own trouble goes to stderr, rate-limited, so it
cannot feed itself through the Loki handler.
"""

from __future__ import annotations

import random
import re
import sys
import threading
import time
from collections.abc import Mapping

import urllib3

from correlation.loki.buffer import LineBuffer, PushEntry
from correlation.loki.push import CONTENT_HEADERS, push_body
from correlation.loki.segment import Segment, UnreadableSegment
from correlation.loki.spool import Spool
from correlation.loki.stats import ShipperStats
from correlation.settings import LokiSettings

_REPORT_EVERY_SECONDS = 60.0
_TOO_LARGE = re.compile(r"larger than max|too large", re.IGNORECASE)
_IGNORED = re.compile(r"total ignored: (\d+) out of (\d+)")


class _Outcome:
    SENT, RETRY, SPLIT, REJECT = range(4)


class Sender:
    def __init__(
        self, settings: LokiSettings, labels: Mapping[str, str], buffer: LineBuffer, stats: ShipperStats
    ) -> None:
        self.settings = settings
        self.labels = dict(labels)
        self.buffer = buffer
        self.stats = stats
        self.thread: threading.Thread | None = None
        self.thread_id: int | None = None
        self._start_lock = threading.Lock()
        self._stopping = threading.Event()
        self._deadline = float("inf")
        self._reported: dict[str, float] = {}
        self._headers = {**CONTENT_HEADERS, **settings.auth_headers()}
        if settings.basic_auth:
            self._headers.update(urllib3.make_headers(basic_auth=":".join(settings.basic_auth)))
        self._http: urllib3.PoolManager | None = None
        self.spool: Spool | None = None  # opened by the thread: no disk I/O on the caller
        self._in_flight: list[PushEntry] = []  # taken from the buffer, not yet marked done
        self._replaying: Segment | None = None
        self._finished = False  # the thread ended its work (not on an error)
        self._replay_delay = settings.backoff_min_seconds
        self._answered = 0  # pushes Loki gave its final answer: shipping works (see _shipping_worked)
        self._in_flight_counted = False  # a timed-out close counted the batch in hand (unconfirmed)

    def ensure_started(self) -> None:
        if self.thread is None:
            with self._start_lock:
                if self.thread is None:
                    self.thread = threading.Thread(target=self._run, name="loki-sender", daemon=True)
                    self.thread.start()

    def stop(self, timeout: float) -> bool:
        """Deliver what is buffered within ``timeout`` seconds, then end the thread.

        True if the thread finished its work in that time: every line sent, kept in the spool, or
        counted as dropped. False if it is still running, ended without finishing (it died), or
        failed while flushing: the caller then counts what is left in memory.
        """
        restarts = self.stats.sender_restarts
        self._deadline = time.monotonic() + timeout
        self._stopping.set()  # also cuts a backoff sleep short
        self.buffer.close()
        thread = self.thread
        if thread is None:
            return self.buffer.buffered[0] == 0
        thread.join(timeout + 0.5)
        return not thread.is_alive() and self._finished and self.stats.sender_restarts == restarts

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        """The thread: ship until the buffer is closed and empty. An unexpected error (a bug, a
        segment that breaks the reader) does not end it: what it held is counted, it is reported
        and counted as a restart, and shipping goes on. The pause after it doubles while errors
        follow each other, and is back at the minimum for one that follows a push Loki answered."""
        self.thread_id = threading.get_ident()  # before anything here can log
        delay = self.settings.backoff_min_seconds
        answered_at_last_error = self._answered
        try:
            self.spool = self._open_spool()
            while True:
                try:
                    self._ship()
                except BaseException as exc:  # noqa: BLE001 - nothing may end shipping for the process
                    self._recover(exc)
                    if self._answered != answered_at_last_error:  # shipping worked since: an isolated error
                        delay = self.settings.backoff_min_seconds
                    answered_at_last_error = self._answered
                    if self._stopping.is_set() and time.monotonic() >= self._deadline:
                        return  # out of time: stop() says so, and its caller counts what is left
                    self._pause(delay)  # a bug met on every batch must not spin
                    delay = min(delay * 2, self.settings.backoff_max_seconds)
                else:
                    self._finished = True
                    return
        finally:
            if self.spool is not None:
                self.spool.close()

    def _ship(self) -> None:
        while True:
            # What waits on disk is older than anything in memory: it goes first.
            if self.spool is not None and self.spool.oldest() is not None:
                if not self._replay_oldest():
                    self._spill(everything=True)  # stopping and out of time: keep it on disk
                    return
                continue
            batch = self.buffer.take(self.settings.batch_max_bytes, self.settings.batch_max_wait_seconds)
            if not batch:
                return
            self._in_flight = batch
            self._deliver(batch)
            self._settled_in_flight()

    def unconfirmed(self) -> int:
        """Lines of the batch the thread holds, not yet settled, after a :meth:`stop` that timed
        out: neither sent nor counted yet (Loki may still answer, usually after the process has
        ended). The caller counts them; the thread then counts no drop of its own for them."""
        self._in_flight_counted = bool(self._in_flight)
        return len(self._in_flight)

    def _settled_in_flight(self) -> None:
        count, self._in_flight = len(self._in_flight), []
        self._in_flight_counted = False
        self.buffer.done(count)

    def _recover(self, exc: BaseException) -> None:
        """Account for what the failed pass held: the batch in hand is dropped (counted), and a
        segment being replayed is moved aside, as one that cannot be read."""
        self.stats.restarted()
        lost = len(self._in_flight)
        if lost and not self._in_flight_counted:
            self.stats.drop("sender_error", lost)
            self._settled_in_flight()
        segment, self._replaying = self._replaying, None
        if segment is not None and self.spool is not None:
            self._quarantine(segment, f"the sender failed on it: {exc!r}")
        self._report("crash", f"loki shipper: unexpected error, sender restarted ({lost} lines dropped): {exc!r}")

    def _deliver(self, batch: list[PushEntry]) -> None:
        parts = [batch]
        while parts:
            part = parts.pop()
            started = time.monotonic()
            delay = self.settings.backoff_min_seconds
            while True:
                outcome, reason, detail = self._push(part, self.labels)
                if outcome != _Outcome.RETRY:
                    parts += self._settle(part, outcome, reason, detail)
                    self._shipping_worked()
                    break
                if self.spool is not None:
                    # Retry from disk: memory stays free for new lines while Loki is away.
                    self._to_spool(sorted(part + [e for p in parts for e in p], key=lambda e: e.timestamp_ns))
                    return
                now = time.monotonic()
                if self._stopping.is_set() and now >= self._deadline:
                    if not self._in_flight_counted:  # else the closing handler counted them
                        self.stats.drop("shutdown", len(part) + sum(len(p) for p in parts))
                    return
                if now - started >= self.settings.max_retry_seconds:
                    self.stats.drop("retries_exhausted", len(part))
                    self._report("exhausted", f"loki shipper: gave up on {len(part)} lines after retrying: {detail}")
                    break
                self.stats.retried(reason)
                self._report(reason, f"loki shipper: retrying ({reason}): {detail}")
                self._pause(delay)
                delay = min(delay * 2, self.settings.backoff_max_seconds)

    def _settle(self, part: list[PushEntry], outcome: int, reason: str, detail: str) -> list[list[PushEntry]]:
        """Account for a push that will not be retried as is; return the halves of a split."""
        if outcome == _Outcome.SENT:
            self.stats.sent(len(part))
        elif outcome == _Outcome.SPLIT:
            if len(part) > 1:
                half = len(part) // 2
                return [part[half:], part[:half]]  # popped from the end: first half first
            self.stats.drop("too_large")
            self._report("too_large", f"loki shipper: Loki refuses a single entry as too large: {detail}")
        else:
            rejected = self._rejected_count(detail, len(part))
            self.stats.drop("rejected", rejected)
            if rejected < len(part):
                self.stats.sent(len(part) - rejected)
            self._report("rejected", f"loki shipper: Loki refused {rejected} lines ({reason}): {detail}")
        return []

    def _shipping_worked(self) -> None:
        """Loki gave a push its final answer: the backoffs start again from their minimum."""
        self._answered += 1
        self._replay_delay = self.settings.backoff_min_seconds

    def _pause(self, delay: float) -> None:
        pause = random.uniform(delay / 2, delay)  # jitter: replicas must not retry in step
        if self._stopping.is_set():
            time.sleep(min(pause, max(0.0, self._deadline - time.monotonic())))
        else:
            self._stopping.wait(pause)  # a stop cuts the pause short

    # -- the spool ----------------------------------------------------------------------------

    def _open_spool(self) -> Spool | None:
        if not self.settings.spool_dir:
            return None
        try:
            spool = Spool(self.settings.spool_dir, self.settings.spool_max_bytes)
        except Exception as exc:  # noqa: BLE001 - without a spool, lines still go to Loki from memory
            self._report("spool", f"loki shipper: LOKI_SPOOL_DIR={self.settings.spool_dir!r} unusable, no spool: {exc}")
            return None
        if spool.left_alone:
            shown = ", ".join(spool.left_alone[:10])
            if len(spool.left_alone) > 10:
                shown += f" and {len(spool.left_alone) - 10} more"
            self._report(
                "spool_foreign",
                f"loki shipper: LOKI_SPOOL_DIR={self.settings.spool_dir!r} holds what the spool did not write, "
                f"left alone: {shown}. Give the spool a directory of its own.",
            )
        return spool

    def _replay_oldest(self) -> bool:
        """Try the oldest segment once; back off on failure. False when stopping ran out of time."""
        assert self.spool is not None
        segment = self.spool.oldest()
        assert segment is not None
        try:
            labels, entries = segment.read()
        except UnreadableSegment as exc:
            self._quarantine(segment, str(exc))
            return True
        self._replaying = segment  # if the sender fails on it, it is moved aside
        outcome, reason, detail = self._push(entries, labels)
        if outcome != _Outcome.RETRY:
            for half in self._settle(entries, outcome, reason, detail):  # rare: a smaller batch size now
                self._settle(half, *self._push(half, labels))
            self.spool.remove(segment)
            self._replaying = None
            self._shipping_worked()
            return True
        self._replaying = None
        if self._stopping.is_set() and time.monotonic() >= self._deadline:
            return False
        self.stats.retried(reason)
        self._report(reason, f"loki shipper: retrying from spool ({reason}): {detail}")
        self._wait_spilling(self._replay_delay)
        self._replay_delay = min(self._replay_delay * 2, self.settings.backoff_max_seconds)
        return True

    def _quarantine(self, segment: Segment, why: str) -> None:
        """A segment that cannot be replayed: moved aside (never deleted) and counted."""
        assert self.spool is not None
        moved = self.spool.quarantine(segment)
        self.stats.drop("spool_corrupt", segment.lines)
        where = f"moved to {moved}" if moved else "left in place (could not be moved)"
        self._report("spool_corrupt", f"loki shipper: {segment.lines} lines not replayed, segment {where}: {why}")

    def _wait_spilling(self, delay: float) -> None:
        """Back off before the next replay; meanwhile move memory to disk whenever it fills up."""
        end = time.monotonic() + random.uniform(delay / 2, delay)
        while (remaining := end - time.monotonic()) > 0:
            if self._stopping.is_set():
                self._spill(everything=True)
                self._pause(remaining)
                return
            if self.buffer.wait_fill(self.buffer.max_bytes // 2, remaining):
                self._spill(everything=False)

    def _spill(self, everything: bool) -> None:
        while True:
            batch = self.buffer.take_now(self.settings.batch_max_bytes)
            if not batch:
                return
            self._in_flight = batch
            self._to_spool(batch)
            self._settled_in_flight()
            if not everything and self.buffer.buffered[1] < self.buffer.max_bytes // 2:
                return

    def _to_spool(self, entries: list[PushEntry]) -> None:
        assert self.spool is not None
        try:
            stored = self.spool.write(entries, self.labels)
        except OSError as exc:
            self.stats.drop("spool_error", len(entries))
            self._report("spool_write", f"loki shipper: cannot write the spool, {len(entries)} lines dropped: {exc}")
            return
        if not stored:
            self.stats.drop("spool_full", len(entries))
            self._report("spool_full", f"loki shipper: spool full (LOKI_SPOOL_MAX_BYTES), {len(entries)} lines dropped")

    def _push(self, entries: list[PushEntry], labels: Mapping[str, str]) -> tuple[int, str, str]:
        timeout = self.settings.timeout_seconds
        if self._stopping.is_set():
            timeout = max(0.1, min(timeout, self._deadline - time.monotonic()))
        try:
            response = self._client().request(
                "POST",
                self.settings.push_url,
                body=push_body(entries, labels),
                headers=self._headers,
                timeout=urllib3.Timeout(total=timeout),
                retries=False,
                preload_content=True,
            )
        except Exception as exc:  # noqa: BLE001 - urllib3 raises its own errors for refused, reset, timeout
            return _Outcome.RETRY, "connection_error", f"{self.settings.push_url}: {exc.__class__.__name__}: {exc}"
        status = response.status
        if 200 <= status < 300:
            return _Outcome.SENT, "", ""
        detail = f"HTTP {status}: {response.data[:500].decode('utf-8', 'replace').strip()}"
        if status == 413 or (status == 500 and _TOO_LARGE.search(detail)):
            return _Outcome.SPLIT, "too_large", detail
        if status == 429:
            return _Outcome.RETRY, "rate_limited", detail
        if status >= 500:
            return _Outcome.RETRY, "server_error", detail
        return _Outcome.REJECT, f"HTTP {status}", detail

    def _client(self) -> urllib3.PoolManager:
        if self._http is None:
            verify = self.settings.tls_verify
            kwargs: dict[str, object] = {"maxsize": 1}
            if verify is False:
                kwargs["cert_reqs"] = "CERT_NONE"
                urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
            elif isinstance(verify, str):
                kwargs["ca_certs"] = verify
            self._http = urllib3.PoolManager(**kwargs)  # type: ignore[arg-type]
        return self._http

    @staticmethod
    def _rejected_count(detail: str, total: int) -> int:
        """Loki ingests the valid entries of a 400'd push; its body says how many it ignored."""
        match = _IGNORED.search(detail)
        return min(int(match.group(1)), total) if match else total

    def _report(self, kind: str, message: str) -> None:
        """Write to stderr at most once a minute per kind (first line only): never via logging."""
        now = time.monotonic()
        if now - self._reported.get(kind, -_REPORT_EVERY_SECONDS) >= _REPORT_EVERY_SECONDS:
            self._reported[kind] = now
            first_line = message.splitlines()[0] if message else message
            try:
                print(first_line[:1000], file=sys.stderr, flush=True)
            except (OSError, ValueError):  # stderr closed (at exit) or gone: nowhere left to say it
                pass
