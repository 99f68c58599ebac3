"""The notifier's HTTP side: Python's ``http.server`` with the limits a receiver on a network needs.

Why not Flask under gunicorn, like the trail page: the notifier is one process whose state must
not be split between workers (the repeat filter, the delivery queue and its order, the payloads
kept for ``GET /alerts``), it has five routes, and its answers are JSON it writes itself. What a
production server would add is done here, explicitly, and tested (tests/trail/notify/test_server.py):

- one deadline for reading a whole request, request line, headers and body
  (``NOTIFY_READ_SECONDS``): a client that sends slowly, or nothing, is cut off and counted;
- at most ``max_connections`` requests served at once; more are closed unanswered and counted;
- ``POST /alerts`` needs the configured credentials (:mod:`trail.notify.auth`),
  ``Content-Type: application/json`` (so a browser's form or ``text/plain`` POST from any web page
  is refused: those need no CORS preflight), a ``Content-Length`` of at most 1 MiB, at most
  ``NOTIFY_MAX_ALERTS`` alerts, and JSON of sane depth; each refusal is answered with its reason;
- ``GET /alerts`` and ``GET /notifications`` (what was received and sent) need the credentials too;
  ``GET /healthz`` and the runbooks do not (a health check and a browser have no token).

Every refusal is counted by reason (``GET /healthz``, ``refused``) and said on stderr, at most
once per reason every 10 s so a flood cannot flood the log too.
"""

from __future__ import annotations

import io
import json
import re
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol, TextIO

from trail.notify.auth import NotifyAuth
from trail.notify.payload import AlertEvent, PayloadError, TooManyAlerts, read_webhook

#: Alertmanager's payloads are small (``max_alerts`` bounds them); refuse anything absurd unread.
MAX_BODY_BYTES = 1024 * 1024
REFUSAL_REASONS = (
    "unauthorized",
    "content_type",
    "no_length",
    "too_large",
    "too_many_alerts",
    "bad_payload",
    "timeout",
    "busy",
)
_RUNBOOK = re.compile(r"/alerts/runbooks/([A-Za-z0-9_-]{1,64}\.md)")
_SAY_EVERY_SECONDS = 10.0


@dataclass(frozen=True)
class HttpLimits:
    """Bounds on what one client can make the notifier hold."""

    read_seconds: float = 10.0
    max_alerts: int = 50
    max_body_bytes: int = MAX_BODY_BYTES
    max_connections: int = 64


class Intake:
    """Counts of what was refused, by reason, and of alerts Alertmanager left out of a body."""

    def __init__(self, err: TextIO | None = None) -> None:
        self.err = err or sys.stderr
        self.refused: Counter[str] = Counter({reason: 0 for reason in REFUSAL_REASONS})
        self.truncated_alerts = 0
        self._said: dict[str, float] = {}
        self._lock = threading.Lock()

    def refuse(self, reason: str, why: str, peer: str) -> None:
        now = time.monotonic()
        with self._lock:
            self.refused[reason] += 1
            count = self.refused[reason]
            quiet = now - self._said.get(reason, -_SAY_EVERY_SECONDS) < _SAY_EVERY_SECONDS
            if not quiet:
                self._said[reason] = now
        if not quiet:
            print(f"notify: refused a request from {peer} ({reason}, {count} so far): {why}", file=self.err, flush=True)

    def truncated(self, count: int) -> None:
        """Alertmanager cut a group to ``max_alerts``: those alerts were never sent here."""
        with self._lock:
            self.truncated_alerts += count
        print(f"notify: Alertmanager left {count} alert(s) out of a body (max_alerts)", file=self.err, flush=True)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"refused": dict(self.refused), "truncated_alerts": self.truncated_alerts}


class _DeadlineReader(io.RawIOBase):
    """The socket as a raw stream that gives up at one deadline for the whole request: each read
    waits only for the time left, so trickling a byte at a time does not extend it."""

    def __init__(self, sock: socket.socket, deadline: float, on_timeout: Callable[[], None]) -> None:
        self._sock = sock
        self._deadline = deadline
        self._on_timeout = on_timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError("request not read in time")
            self._sock.settimeout(left)
            return self._sock.recv_into(buffer)
        except TimeoutError:
            self._on_timeout()
            raise


class NotifyServer(ThreadingHTTPServer):
    """A thread per request, at most ``max_connections`` at once."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], limits: HttpLimits, intake: Intake
    ) -> None:
        self._slots = threading.BoundedSemaphore(limits.max_connections)
        self.intake = intake
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.intake.refuse("busy", "too many requests at once", str(client_address[0]))
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class AlertReceiver(Protocol):
    """What the HTTP side hands accepted alerts to and reads its answers from: the notifier."""

    def accept(self, payload: Any, events: list[AlertEvent]) -> dict[str, int]: ...

    def snapshot(self) -> tuple[list[Any], list[dict[str, Any]]]: ...

    def intake_stats(self) -> dict[str, Any]: ...

    def delivery_stats(self) -> dict[str, Any]: ...


def make_handler(
    notifier: AlertReceiver, auth: NotifyAuth, limits: HttpLimits, intake: Intake, runbook_dir: str
) -> type[BaseHTTPRequestHandler]:
    runbooks = Path(runbook_dir) if runbook_dir else None

    class Handler(BaseHTTPRequestHandler):
        server_version = "trail-notify"
        timeout = limits.read_seconds  # also bounds each write to a client that stops reading

        def setup(self) -> None:
            super().setup()
            self._timed_out = False
            deadline = time.monotonic() + limits.read_seconds
            self.rfile.close()  # socketserver's reader, replaced by one that keeps the deadline
            self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline, self._timeout))

        def _timeout(self) -> None:
            if not self._timed_out:
                self._timed_out = True
                intake.refuse("timeout", f"request not read within {limits.read_seconds:g} s", self._peer())

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path == "/healthz":
                health = {"status": "ok", "delivery": notifier.delivery_stats(), "intake": notifier.intake_stats()}
                self._reply(200, health)
            elif self.path in ("/alerts", "/notifications"):
                if self._authorized():
                    payloads, notifications = notifier.snapshot()
                    self._reply(200, payloads if self.path == "/alerts" else notifications)
            elif (found := _RUNBOOK.fullmatch(self.path)) and runbooks and (runbooks / found.group(1)).is_file():
                self._send(200, (runbooks / found.group(1)).read_bytes(), "text/plain; charset=utf-8")
            else:
                self._reply(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/alerts":
                self._reply(404, {"error": "not found"})
                return
            body = self._body()
            if body is None or not self._authorized():
                return
            media_type = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
            if media_type != "application/json":
                self._refuse(415, "content_type", f"need Content-Type: application/json, got {media_type[:60]!r}")
                return
            try:
                webhook = read_webhook(body, limits.max_alerts)
            except TooManyAlerts as exc:
                self._refuse(413, "too_many_alerts", str(exc))
                return
            except PayloadError as exc:
                self._refuse(400, "bad_payload", f"not an Alertmanager webhook payload: {exc}")
                return
            if webhook.truncated:
                intake.truncated(webhook.truncated)
            self._reply(200, notifier.accept(webhook.payload, webhook.events))

        def _body(self) -> bytes | None:
            """The whole body, read before anything is answered (a reply with the request unread
            makes the kernel reset the connection, and the client may never see the answer);
            None when refused."""
            raw = self.headers.get("Content-Length")
            if raw is None or not raw.strip().isdigit():
                self._refuse(411, "no_length", "need a Content-Length (Alertmanager sends one)")
                return None
            length = int(raw)
            if length > limits.max_body_bytes:
                self._refuse(413, "too_large", f"body of {length} bytes, at most {limits.max_body_bytes}")
                return None
            try:
                body = self.rfile.read(length)
            except TimeoutError:
                self._reply(408, {"error": f"request not read within {limits.read_seconds:g} s"})
                return None
            if len(body) < length:
                self.close_connection = True  # the client went away mid-body: nobody to answer
                return None
            return body

        def _authorized(self) -> bool:
            if auth.allows(self.headers.get("Authorization")):
                return True
            self._refuse(401, "unauthorized", "missing or wrong credentials", {"WWW-Authenticate": auth.challenge})
            return False

        def _refuse(self, status: int, reason: str, why: str, headers: dict[str, str] | None = None) -> None:
            intake.refuse(reason, why, self._peer())
            self._reply(status, {"error": why}, headers)

        def _peer(self) -> str:
            return str(self.client_address[0])

        def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(body).encode(), "application/json", headers)

        def _send(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
            self.connection.settimeout(limits.read_seconds)  # reads may have left it at the time remaining
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            pass  # the notifications are the output; refusals are said by Intake

    return Handler
