"""Alertmanager's webhook payload (version 4), read strictly: the notifier's input.

Alertmanager POSTs one JSON object per notification of a group::

    {"version": "4", "status": "firing", "receiver": "...", "groupLabels": {...},
     "alerts": [{"status": "firing", "labels": {...}, "annotations": {...},
                 "startsAt": "2026-11-25T14:00:00.123456789Z", "endsAt": "0001-01-01T00:00:00Z",
                 "fingerprint": "...", "generatorURL": "..."}, ...], ...}

Anything else is refused with :class:`PayloadError`, whose message says what is wrong and where
(``alerts[2].labels.service: expected a string``): the HTTP server answers it with a 400, so a
sender that is not Alertmanager, or a proxy that mangled the body, learns why instead of being
dropped silently. Values from the payload are untrusted; they are kept as given here and escaped
where they are shown (:mod:`trail.notify.message`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

#: The webhook payload version this reads (Alertmanager 0.16 and later send "4").
SUPPORTED_VERSION = "4"
FIRING, RESOLVED = "firing", "resolved"
#: Severities that page a person; any other severity is a notification that does not page.
PAGE_SEVERITIES = frozenset({"critical"})
#: Alertmanager writes the zero time for "no end yet".
_ZERO_TIME_YEAR = 1


class PayloadError(ValueError):
    """The body is not an Alertmanager webhook payload; the message says why."""


@dataclass(frozen=True)
class AlertEvent:
    """One alert of a webhook payload."""

    status: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: datetime | None
    ends_at: datetime | None
    fingerprint: str

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def severity(self) -> str:
        return self.labels.get("severity", "")

    @property
    def service(self) -> str | None:
        return self.labels.get("service") or None

    @property
    def task(self) -> str | None:
        """The task a task alert is about (TaskFailures carries ``task``); None for others."""
        return self.labels.get("task") or None

    @property
    def reason(self) -> str | None:
        """Why tasks could not be published (TaskPublishFailures carries ``reason``); None for others."""
        return self.labels.get("reason") or None

    @property
    def cause_service(self) -> str | None:
        """The service at fault, as the rules name it (alerts/correlation-demo.rules.yml)."""
        return self.labels.get("cause_service") or None

    @property
    def firing(self) -> bool:
        return self.status == FIRING

    @property
    def page(self) -> bool:
        return self.severity in PAGE_SEVERITIES

    @property
    def key(self) -> tuple[str, str, str]:
        """Same alert, same state, same episode: Alertmanager re-sends a whole group when one of
        its alerts changes, and HA peers may each send; this tells the repeats apart."""
        identity = self.fingerprint or json.dumps(sorted(self.labels.items()))
        started = self.starts_at.isoformat() if self.starts_at else ""
        return identity, self.status, started


@dataclass(frozen=True)
class Webhook:
    """One webhook body, read: the payload as sent, its alerts, and how many alerts Alertmanager
    left out of it (``truncatedAlerts``, when its ``max_alerts`` cut the group)."""

    payload: dict[str, Any]
    events: list[AlertEvent]
    truncated: int = 0


class TooManyAlerts(PayloadError):
    """More alerts in one body than the notifier takes (``NOTIFY_MAX_ALERTS``)."""


def parse_webhook(body: bytes) -> list[AlertEvent]:
    """The alerts of one webhook body, in payload order; PayloadError when it is not one."""
    return read_webhook(body).events


def read_webhook(body: bytes, max_alerts: int | None = None) -> Webhook:
    """One webhook body read strictly; PayloadError says why it is not one, TooManyAlerts when it
    holds more than ``max_alerts``. JSON nested deeper than the parser's recursion limit is a
    PayloadError too, never a RecursionError that would drop the connection unanswered."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise PayloadError("body is not a webhook payload: JSON nested too deeply") from None
    if not isinstance(payload, dict):
        raise PayloadError(f"expected a JSON object, got {type(payload).__name__}")
    version = payload.get("version")
    if version != SUPPORTED_VERSION:
        raise PayloadError(
            f"version: expected {SUPPORTED_VERSION!r} (Alertmanager's webhook payload), got {version!r:.40}"
        )
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        raise PayloadError("alerts: expected a list")
    if max_alerts is not None and len(alerts) > max_alerts:
        raise TooManyAlerts(
            f"alerts: {len(alerts)} in one body, at most {max_alerts} taken (Alertmanager's max_alerts)"
        )
    truncated = payload.get("truncatedAlerts", 0)
    if not isinstance(truncated, int) or isinstance(truncated, bool) or truncated < 0:
        raise PayloadError("truncatedAlerts: expected a count")
    events = [_alert(raw, f"alerts[{index}]") for index, raw in enumerate(alerts)]
    return Webhook(payload, events, truncated)


def _alert(raw: Any, where: str) -> AlertEvent:
    if not isinstance(raw, dict):
        raise PayloadError(f"{where}: expected an object")
    status = raw.get("status")
    if status not in (FIRING, RESOLVED):
        raise PayloadError(f"{where}.status: expected 'firing' or 'resolved', got {status!r:.40}")
    labels = _strings(raw.get("labels"), f"{where}.labels")
    if not labels.get("alertname"):
        raise PayloadError(f"{where}.labels.alertname: missing")
    annotations = _strings(raw.get("annotations", {}), f"{where}.annotations")
    fingerprint = raw.get("fingerprint", "")
    if not isinstance(fingerprint, str):
        raise PayloadError(f"{where}.fingerprint: expected a string")
    return AlertEvent(
        status,
        labels,
        annotations,
        _time(raw.get("startsAt"), f"{where}.startsAt"),
        _time(raw.get("endsAt"), f"{where}.endsAt"),
        fingerprint,
    )


def _strings(raw: Any, where: str) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise PayloadError(f"{where}: expected an object of strings")
    for name, value in raw.items():
        if not isinstance(value, str):
            raise PayloadError(f"{where}.{name:.64}: expected a string, got {type(value).__name__}")
    return dict(raw)


def _time(raw: Any, where: str) -> datetime | None:
    """RFC 3339 as Alertmanager writes it (nanoseconds, ``Z``); None when absent or zero."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise PayloadError(f"{where}: expected an RFC 3339 time")
    try:
        moment = datetime.fromisoformat(raw)  # 3.11 reads "Z" and cuts nanoseconds to micro
    except ValueError:
        raise PayloadError(f"{where}: {raw!r:.64} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise PayloadError(f"{where}: {raw!r:.64} has no time zone")
    return None if moment.year == _ZERO_TIME_YEAR else moment
