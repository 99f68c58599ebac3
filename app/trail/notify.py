"""``python -m trail.notify``: the alert notifier, an Alertmanager webhook receiver that names the
hop where a failed request broke.

For each firing alert of a webhook call it reads the alerted service's newest failed request from
Loki (as ``trail --last-error --service``), walks the request's hop tree to the deepest failed
hop, and sends one notification: alertname, severity, service, the failed hop (service, route,
status, duration), that hop's first error line, the correlation ID with its ``trail`` command and
the alert's links. A TaskPublishFailures alert, which fails no request, names the newest task the
service could not queue and the request that asked for it instead. Resolved alerts are reported
as resolved. Fields: README.md, "The notifier".

- ``POST /alerts``: Alertmanager's webhook. Answered at once (the notifications go out in the
  background), 400 with a reason when the body is not a webhook payload.
- ``GET /alerts``: the last payloads received; ``GET /notifications``: the last notifications.
- ``GET /alerts/runbooks/<Alert>.md``: the runbooks, from ``NOTIFY_RUNBOOK_DIR`` (the demo's
  default ``runbook_url`` base points here).
- ``GET /healthz``: ``{"status": "ok", "delivery": {...counters}}``.

Settings come from the environment (``NOTIFY_*``, and ``LOKI_*`` as for ``trail``); a bad value
stops it at start with a message naming the variable.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Lock
from typing import Any, TypeVar

from correlation.settings import ConfigError, LokiSettings
from trail.links import DEFAULT_GRAFANA_URL, DEFAULT_TRAIL_WEB_URL
from trail.loki_query import LokiQueryClient
from trail.notify_delivery import FORMATS, Delivery, DeliverySettings
from trail.notify_message import build_notification
from trail.notify_payload import AlertEvent, PayloadError, parse_webhook
from trail.notify_trail import DEFAULT_BUDGET_SECONDS, DEFAULT_LOOKBACK_SECONDS, TrailReader

T = TypeVar("T")
DEFAULT_PORT = 9095
#: Alertmanager's payloads are small; refuse anything absurd rather than buffer it.
MAX_BODY_BYTES = 1024 * 1024
_RUNBOOK = re.compile(r"/alerts/runbooks/([A-Za-z0-9_-]{1,64}\.md)")
#: Alerts remembered to recognise repeats (oldest forgotten first).
_SEEN_MAX = 10_000


@dataclass(frozen=True)
class NotifySettings:
    """The notifier's settings; :meth:`from_env` reads ``NOTIFY_*``."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    grafana_url: str = DEFAULT_GRAFANA_URL
    trail_web_url: str = DEFAULT_TRAIL_WEB_URL
    lookup_seconds: float = DEFAULT_BUDGET_SECONDS
    lookback_seconds: float = DEFAULT_LOOKBACK_SECONDS
    repeat_seconds: float = 3600.0
    keep: int = 50
    runbook_dir: str = ""
    delivery: DeliverySettings = field(default_factory=DeliverySettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> NotifySettings:
        env = os.environ if env is None else env

        def get(name: str, default: T, parse: Callable[[str], T], expected: str) -> T:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = parse(raw)
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not valid: expected {expected}") from None
            if isinstance(value, float | int) and not value > 0:
                raise ConfigError(f"{name}={raw!r} is not valid: expected {expected}")
            return value

        def url(raw: str) -> str:
            if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", raw):
                raise ValueError(raw)
            return raw.rstrip("/")

        def fmt(raw: str) -> str:
            if raw not in FORMATS:
                raise ValueError(raw)
            return raw

        delivery = DeliverySettings(
            webhook_url=get("NOTIFY_WEBHOOK_URL", "", url, "an http(s) URL"),
            format=get("NOTIFY_FORMAT", "json", fmt, " or ".join(FORMATS)),
            attempts=get("NOTIFY_WEBHOOK_ATTEMPTS", DeliverySettings.attempts, int, "an integer > 0"),
            timeout_seconds=get(
                "NOTIFY_WEBHOOK_TIMEOUT_SECONDS", DeliverySettings.timeout_seconds, float, "seconds > 0"
            ),
        )
        return cls(
            host=get("NOTIFY_HOST", cls.host, str, "an address"),
            port=get("NOTIFY_PORT", cls.port, int, "a port number"),
            grafana_url=get("NOTIFY_GRAFANA_URL", cls.grafana_url, url, "an http(s) URL"),
            trail_web_url=get("NOTIFY_TRAIL_WEB_URL", cls.trail_web_url, url, "an http(s) URL"),
            lookup_seconds=get("NOTIFY_LOOKUP_SECONDS", cls.lookup_seconds, float, "seconds > 0"),
            lookback_seconds=get("NOTIFY_LOOKBACK_SECONDS", cls.lookback_seconds, float, "seconds > 0"),
            repeat_seconds=get("NOTIFY_REPEAT_SECONDS", cls.repeat_seconds, float, "seconds > 0"),
            keep=get("NOTIFY_KEEP", cls.keep, int, "an integer > 0"),
            runbook_dir=env.get("NOTIFY_RUNBOOK_DIR", "").strip(),
            delivery=delivery,
        )


class Notifier:
    """Turns accepted alerts into notifications on a small worker pool."""

    def __init__(self, settings: NotifySettings, reader: TrailReader, delivery: Delivery, workers: int = 4) -> None:
        self.settings = settings
        self.reader = reader
        self.delivery = delivery
        self.payloads: deque[Any] = deque(maxlen=settings.keep)
        self.notifications: deque[dict[str, Any]] = deque(maxlen=settings.keep)
        self._seen: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._lock = Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="notify")

    def accept(self, payload: Any, events: list[AlertEvent]) -> dict[str, int]:
        """Queue a notification per new alert state; returns what was done, for the HTTP answer.
        The time budget for Loki starts now, so even alerts that wait for a worker are notified
        within it (with links only when it ran out)."""
        deadline = time.monotonic() + self.settings.lookup_seconds
        fresh = [event for event in events if self._first_time(event)]
        with self._lock:
            self.payloads.append(payload)
        for event in fresh:
            self._pool.submit(self._notify, event, deadline)
        return {"received": len(events), "notifying": len(fresh), "repeats": len(events) - len(fresh)}

    def snapshot(self) -> tuple[list[Any], list[dict[str, Any]]]:
        """The payloads and notifications kept, oldest first (copies: safe to serialise)."""
        with self._lock:
            return list(self.payloads), list(self.notifications)

    def _first_time(self, event: AlertEvent) -> bool:
        """False for a repeat within ``repeat_seconds`` (a group re-sent because another alert of it
        changed, or sent by each of several Alertmanagers)."""
        now = time.monotonic()
        with self._lock:
            last = self._seen.get(event.key)
            if last is not None and now - last < self.settings.repeat_seconds:
                return False
            self._seen[event.key] = now
            self._seen.move_to_end(event.key)
            while len(self._seen) > _SEEN_MAX:
                self._seen.popitem(last=False)
            return True

    def _notify(self, event: AlertEvent, deadline: float) -> None:
        try:
            finding = self.reader.read(event, deadline)
            note = build_notification(event, finding, self.settings.grafana_url, self.settings.trail_web_url)
        except Exception as exc:  # noqa: BLE001 - a worker's boundary: say it, never lose it silently
            print(
                f"notify: could not build the notification for {event.alertname}: {type(exc).__name__}: {exc}",
                file=sys.stderr,
                flush=True,
            )
            return
        with self._lock:
            self.notifications.append(note)
        self.delivery.deliver(note)

    def close(self, timeout: float = 5.0) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)
        self.delivery.close(timeout)


def _handler(notifier: Notifier) -> type[BaseHTTPRequestHandler]:
    runbooks = Path(notifier.settings.runbook_dir) if notifier.settings.runbook_dir else None

    class Handler(BaseHTTPRequestHandler):
        server_version = "trail-notify"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path == "/healthz":
                self._reply(200, {"status": "ok", "delivery": notifier.delivery.stats()})
            elif self.path == "/alerts":
                self._reply(200, notifier.snapshot()[0])
            elif self.path == "/notifications":
                self._reply(200, notifier.snapshot()[1])
            elif (found := _RUNBOOK.fullmatch(self.path)) and runbooks and (runbooks / found.group(1)).is_file():
                self._send(200, (runbooks / found.group(1)).read_bytes(), "text/plain; charset=utf-8")
            else:
                self._reply(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/alerts":
                self._reply(404, {"error": "not found"})
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if not 0 < length <= MAX_BODY_BYTES:
                self._reply(400, {"error": "need a JSON body of at most 1 MiB (with Content-Length)"})
                return
            body = self.rfile.read(length)
            try:
                events = parse_webhook(body)
            except PayloadError as exc:
                self._reply(400, {"error": f"not an Alertmanager webhook payload: {exc}"})
                return
            self._reply(200, notifier.accept(json.loads(body), events))

        def _reply(self, status: int, body: Any) -> None:
            self._send(status, json.dumps(body).encode(), "application/json")

        def _send(self, status: int, data: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            pass  # the notifications are the output; access lines would drown them

    return Handler


def build(settings: NotifySettings, loki: LokiSettings, *, out: Any = None) -> tuple[ThreadingHTTPServer, Notifier]:
    """A ready-to-serve notifier (port 0 picks a free one): its HTTP server and itself."""
    client = LokiQueryClient(loki) if loki.url else None
    reader = TrailReader(client, lookback_seconds=settings.lookback_seconds, budget_seconds=settings.lookup_seconds)
    notifier = Notifier(settings, reader, Delivery(settings.delivery, out=out))
    server = ThreadingHTTPServer((settings.host, settings.port), _handler(notifier))
    server.daemon_threads = True
    return server, notifier


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trail.notify", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--host", help="address to listen on (NOTIFY_HOST; 0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, help=f"port (NOTIFY_PORT, default {DEFAULT_PORT})")
    args = parser.parse_args(argv)
    try:
        settings = NotifySettings.from_env()
        loki = LokiSettings.from_env()
    except ConfigError as exc:
        print(f"notify: {exc}", file=sys.stderr)
        return 2
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = NotifySettings(**{**settings.__dict__, **overrides})
    server, notifier = build(settings, loki)
    host, port = str(server.server_address[0]), server.server_address[1]
    webhook = settings.delivery.webhook_url or "none, stdout only"
    print(
        f"notify: listening on http://{host}:{port}/alerts; Loki {loki.url or 'not set'}; webhook {webhook} "
        f"({settings.delivery.format})",
        file=sys.stderr,
        flush=True,
    )
    # As PID 1 in a container, SIGTERM has no default action: without this `docker stop` waits
    # for its timeout and kills.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        notifier.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
