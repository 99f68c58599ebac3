"""``python -m trail.notify``: the alert notifier, an Alertmanager webhook receiver that names the
hop where a failed request broke.

For each firing alert of a webhook call it reads the alerted service's newest failed request from
Loki (as ``trail --last-error --service``), walks the request's hop tree to the deepest failed
hop, and sends one notification: alertname, severity, service, the failed hop (service, route,
status, duration), that hop's first error line, the correlation ID with its ``trail`` command and
the alert's links. A TaskPublishFailures alert, which fails no request, names the newest task the
service could not queue and the request that asked for it instead. Resolved alerts are reported
as resolved. Fields: docs/notifier.md.

- ``POST /alerts``: Alertmanager's webhook. Answered at once (the notifications go out in the
  background), 400 with a reason when the body is not a webhook payload. With credentials set
  (``NOTIFY_AUTH_*``) only requests carrying them are taken; the limits and the reasons for each
  refusal are :mod:`trail.notify.server`'s.
- ``GET /alerts``: the last payloads received; ``GET /notifications``: the last notifications.
- ``GET /alerts/runbooks/<Alert>.md``: the runbooks, from ``NOTIFY_RUNBOOK_DIR`` (the demo's
  default ``runbook_url`` base points here).
- ``GET /healthz``: ``{"status": "ok", "delivery": {...counters}, "intake": {...counters}}``.

A notification links only under the configured Grafana, trail page and runbook addresses
(:mod:`trail.notify.links`).

Settings come from the environment (``NOTIFY_*``, and ``LOKI_*`` as for ``trail``); a bad value
stops it at start with a message naming the variable.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from threading import Lock
from typing import Any, TypeVar

from correlation.settings import ConfigError, LokiSettings
from trail.links import DEFAULT_GRAFANA_URL, DEFAULT_TRAIL_WEB_URL
from trail.loki_query import LokiQueryClient
from trail.notify.auth import NotifyAuth
from trail.notify.delivery import FORMATS, Delivery, DeliverySettings
from trail.notify.finding import DEFAULT_BUDGET_SECONDS, DEFAULT_LOOKBACK_SECONDS, TrailReader
from trail.notify.links import LinkBases
from trail.notify.message import build_notification
from trail.notify.payload import AlertEvent
from trail.notify.server import HttpLimits, Intake, NotifyServer, make_handler

T = TypeVar("T")
DEFAULT_PORT = 9095
#: Where the runbook links point when NOTIFY_RUNBOOK_BASE_URL is not set: this notifier, as the
#: rules' default (alerts/correlation-demo.rules.yml, runbook_base_url).
DEFAULT_RUNBOOK_BASE_URL = "http://localhost:9095"
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
    runbook_base_url: str = DEFAULT_RUNBOOK_BASE_URL
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    auth: NotifyAuth = field(default_factory=NotifyAuth)
    limits: HttpLimits = field(default_factory=HttpLimits)

    @property
    def link_bases(self) -> LinkBases:
        """The addresses a notification may link to."""
        return LinkBases(self.grafana_url, self.trail_web_url, self.runbook_base_url)

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
            runbook_base_url=get("NOTIFY_RUNBOOK_BASE_URL", cls.runbook_base_url, url, "an http(s) URL"),
            delivery=delivery,
            auth=NotifyAuth.from_env(env),
            limits=HttpLimits(
                read_seconds=get("NOTIFY_READ_SECONDS", HttpLimits.read_seconds, float, "seconds > 0"),
                max_alerts=get("NOTIFY_MAX_ALERTS", HttpLimits.max_alerts, int, "an integer > 0"),
            ),
        )


class Notifier:
    """Turns accepted alerts into notifications on a small worker pool."""

    def __init__(self, settings: NotifySettings, reader: TrailReader, delivery: Delivery, workers: int = 4) -> None:
        self.settings = settings
        self.reader = reader
        self.delivery = delivery
        self.payloads: deque[Any] = deque(maxlen=settings.keep)
        self.notifications: deque[dict[str, Any]] = deque(maxlen=settings.keep)
        self.intake = Intake()
        self.links_dropped = 0
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

    def delivery_stats(self) -> dict[str, Any]:
        """What the webhook delivery sent, retried, dropped and has queued."""
        return self.delivery.stats()

    def intake_stats(self) -> dict[str, Any]:
        """What was refused and left out at the door, and the links dropped from notifications."""
        with self._lock:
            links_dropped = self.links_dropped
        return {**self.intake.stats(), "links_dropped": links_dropped}

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
            note = build_notification(
                event, finding, self.settings.grafana_url, self.settings.trail_web_url, self.settings.link_bases
            )
        except Exception as exc:  # noqa: BLE001 - a worker's boundary: say it, never lose it silently
            print(
                f"notify: could not build the notification for {event.alertname}: {type(exc).__name__}: {exc}",
                file=sys.stderr,
                flush=True,
            )
            return
        if note["dropped_links"]:
            print(
                f"notify: {event.alertname}: dropped links not under {', '.join(self.settings.link_bases.urls)}: "
                f"{', '.join(note['dropped_links'])}",
                file=sys.stderr,
                flush=True,
            )
        with self._lock:
            self.notifications.append(note)
            self.links_dropped += len(note["dropped_links"] or ())
        self.delivery.deliver(note)

    def close(self, timeout: float = 5.0) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)
        self.delivery.close(timeout)


def build(settings: NotifySettings, loki: LokiSettings, *, out: Any = None) -> tuple[NotifyServer, Notifier]:
    """A ready-to-serve notifier (port 0 picks a free one): its HTTP server and itself."""
    client = LokiQueryClient(loki) if loki.url else None
    reader = TrailReader(client, lookback_seconds=settings.lookback_seconds, budget_seconds=settings.lookup_seconds)
    notifier = Notifier(settings, reader, Delivery(settings.delivery, out=out))
    handler = make_handler(notifier, settings.auth, settings.limits, notifier.intake, settings.runbook_dir)
    server = NotifyServer((settings.host, settings.port), handler, settings.limits, notifier.intake)
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
    try:
        settings.auth.check_listen(settings.host)
    except ConfigError as exc:
        print(f"notify: {exc}", file=sys.stderr)
        return 2
    server, notifier = build(settings, loki)
    host, port = str(server.server_address[0]), server.server_address[1]
    webhook = settings.delivery.webhook_url or "none, stdout only"
    credentials = "credentials required" if settings.auth.required else "NO credentials required"
    print(
        f"notify: listening on http://{host}:{port}/alerts; Loki {loki.url or 'not set'}; webhook {webhook} "
        f"({settings.delivery.format}); {credentials}",
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
