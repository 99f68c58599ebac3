"""Where notifications go: always one JSON line on stdout, and, with a webhook URL, a POST there.

The POST never holds anything up: notifications wait in a bounded queue and one background
thread sends them in order. Connection errors, timeouts, 429 and 5xx are retried with jittered
exponential backoff (honouring a 429's ``Retry-After``); any other answer is a refusal that no
retry can cure. Every notification that does not reach the webhook is counted by reason
(:data:`DROP_REASONS`) and said on stderr: the stdout line is then the only trace of it.
"""

from __future__ import annotations

import json
import queue
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, TextIO

import requests

from trail.notify.message import slack_message

FORMATS = ("json", "slack")
DROP_REASONS = ("queue_full", "rejected", "retries_exhausted", "shutdown")
_RETRYABLE_STATUS = frozenset({408, 425, 429})


@dataclass(frozen=True)
class DeliverySettings:
    """``webhook_url`` empty: stdout only. ``format``: ``json`` (the notification object) or
    ``slack`` (an incoming-webhook body)."""

    webhook_url: str = ""
    format: str = "json"
    attempts: int = 5
    backoff_min_seconds: float = 0.5
    backoff_max_seconds: float = 8.0
    timeout_seconds: float = 5.0
    queue_max: int = 1000


class Delivery:
    """Writes each notification to ``out`` at once and queues it for the webhook."""

    def __init__(
        self,
        settings: DeliverySettings,
        out: TextIO | None = None,
        err: TextIO | None = None,
        session: requests.Session | None = None,
    ) -> None:
        if settings.format not in FORMATS:
            raise ValueError(f"format {settings.format!r}: expected one of {', '.join(FORMATS)}")
        self.settings = settings
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.session = session or requests.Session()
        self.sent = 0
        self.retries = 0
        self.dropped: Counter[str] = Counter({reason: 0 for reason in DROP_REASONS})
        self._lock = threading.Lock()
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=settings.queue_max)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        if settings.webhook_url:
            self._thread = threading.Thread(target=self._run, name="notify-webhook", daemon=True)
            self._thread.start()

    def deliver(self, note: dict[str, Any]) -> None:
        """One JSON line on stdout now; the webhook POST later, in the background."""
        line = json.dumps(note, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            self.out.write(line + "\n")
            self.out.flush()
        if self._thread is None:
            return
        try:
            self._queue.put_nowait(note)
        except queue.Full:
            self._drop("queue_full", note, f"{self.settings.queue_max} notifications already wait")

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "sent": self.sent,
                "retries": self.retries,
                "dropped": dict(self.dropped),
                "queued": self._queue.qsize(),
            }

    def wait_idle(self, timeout: float) -> bool:
        """True once everything queued was sent or dropped (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.02)
        return self._queue.unfinished_tasks == 0

    def close(self, timeout: float = 5.0) -> None:
        """Send what waits for up to ``timeout``; count the rest as dropped (``shutdown``)."""
        if self._thread is None:
            return
        self.wait_idle(timeout)
        self._stopping.set()
        self._thread.join(timeout=self.settings.timeout_seconds + 1)
        while True:
            try:
                note = self._queue.get_nowait()
            except queue.Empty:
                return
            self._drop("shutdown", note, "the notifier stopped first")
            self._queue.task_done()

    # -- the background sender ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                note = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._send(note)
            finally:
                self._queue.task_done()

    def _body(self, note: dict[str, Any]) -> dict[str, Any]:
        return slack_message(note) if self.settings.format == "slack" else note

    def _send(self, note: dict[str, Any]) -> None:
        body = self._body(note)
        delay = self.settings.backoff_min_seconds
        problem = ""
        for attempt in range(1, self.settings.attempts + 1):
            wait = delay
            try:
                response = self.session.post(
                    self.settings.webhook_url, json=body, timeout=self.settings.timeout_seconds
                )
            except requests.RequestException as exc:
                problem = f"cannot reach the webhook: {type(exc).__name__}"
            else:
                if response.status_code < 300:
                    with self._lock:
                        self.sent += 1
                    return
                problem = f"the webhook answered {response.status_code}: {response.text[:200]!r}"
                if response.status_code < 500 and response.status_code not in _RETRYABLE_STATUS:
                    self._drop("rejected", note, problem)
                    return
                wait = max(delay, _retry_after(response))
            if attempt == self.settings.attempts or self._stopping.wait(
                min(wait, self.settings.backoff_max_seconds) * random.uniform(0.8, 1.0)
            ):
                break
            with self._lock:
                self.retries += 1
            delay = min(delay * 2, self.settings.backoff_max_seconds)
        self._drop("retries_exhausted" if not self._stopping.is_set() else "shutdown", note, problem)

    def _drop(self, reason: str, note: dict[str, Any], why: str) -> None:
        with self._lock:
            self.dropped[reason] += 1
        print(
            f"notify: not delivered to the webhook ({reason}): {note.get('alertname')} "
            f"{note.get('service')} [{note.get('status')}]: {why}",
            file=self.err,
            flush=True,
        )


def _retry_after(response: requests.Response) -> float:
    """Seconds from a numeric ``Retry-After`` header; 0 when absent or not a number."""
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return 0.0
