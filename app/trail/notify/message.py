"""The notification: one JSON object per alert (a contract, docs/notifier.md), the text a
person reads, and Slack's incoming-webhook shape.

Everything that comes from an alert or a log line is untrusted: control characters are escaped
(a hostile line cannot recolour a terminal or fake a second line) and every value is cut to a
bound, saying so with an ellipsis, so a 256 KB exception message cannot flood a chat channel.
Slack's markup characters (``&``, ``<``, ``>``) are escaped where text goes into mrkdwn.
"""

from __future__ import annotations

import urllib.parse
from datetime import datetime
from typing import Any

from trail.failures import FailedRequestAt, FailureCounts
from trail.links import DEFAULT_TRAIL_WEB_URL, trail_explore_url, trail_page_path
from trail.logql import MAX_TASK_NAME_CHARS
from trail.notify.finding import FOUND, FailedHop, FailureReport, TrailFinding
from trail.notify.links import LinkBases
from trail.notify.lost_task import LostTask
from trail.notify.payload import AlertEvent
from trail.text import clean, format_time
from trail.window import Window, format_duration, id_window

#: Version of the notification object; bumped when a field changes meaning or disappears.
NOTIFICATION_VERSION = 1
#: The links a notification carries, in the order people need them.
LINK_FIELDS = ("trail_url", "trail_page_url", "logs_url", "dashboard_url", "runbook_url")
#: Every field of the notification object, in order (docs/notifier.md documents each).
FIELDS = (
    "version",
    "status",
    "page",
    "alertname",
    "severity",
    "service",
    "cause_service",
    "summary",
    "starts_at",
    "ends_at",
    "duration_seconds",
    "trail",
    "trail_note",
    "trail_caveat",
    "correlation_id",
    "trail_command",
    "root_cause",
    "error",
    "lost_task",
    "failures",
    *LINK_FIELDS,
    "dropped_links",
    "text",
)
MAX_LABEL_CHARS = 128
MAX_ERROR_TYPE_CHARS = 200
MAX_MESSAGE_CHARS = 500
MAX_URL_CHARS = 3000  # Slack refuses longer button URLs; a longer link is surely not ours
#: Error types listed one by one; the rest are summed into ``other_types``.
MAX_ERROR_TYPES = 5
ELLIPSIS = "…"
#: How each link is labelled for people.
_LINK_NAMES = {
    "trail_url": "Trail",
    "trail_page_url": "Trail page",
    "logs_url": "Logs",
    "dashboard_url": "Dashboard",
    "runbook_url": "Runbook",
}
_SLACK_HEADER_CHARS = 150
_SLACK_SECTION_CHARS = 3000


def shown(text: str | None, limit: int) -> str | None:
    """Untrusted ``text`` made safe to show: control characters escaped, cut to ``limit``."""
    if text is None:
        return None
    safe = clean(text)
    return safe if len(safe) <= limit else safe[: limit - 1] + ELLIPSIS


def _link(value: str | None) -> str | None:
    """An annotation's URL when it is one absolute http(s) URL; None otherwise (not shown)."""
    if not value or len(value) > MAX_URL_CHARS:
        return None
    parts = urllib.parse.urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() or ord(c) < 32 for c in value):
        return None
    return value.strip()


def _time(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def build_notification(
    event: AlertEvent,
    finding: TrailFinding,
    default_grafana_url: str,
    default_trail_web_url: str = DEFAULT_TRAIL_WEB_URL,
    bases: LinkBases | None = None,
) -> dict[str, Any]:
    """The notification object for one alert (its fields: :data:`FIELDS`). The alert's links pass
    through; the trail links are rebuilt for the request the notification names (the alert's own
    come from correlation_last_failed_request, which may name another one), on the Grafana and
    trail page the alert's external labels (grafana_url, trail_web_url) point at. Every link, and
    those labels, must lie under ``bases`` (default: the two default URLs); any other is dropped
    and named in ``dropped_links`` (:mod:`trail.notify.links`)."""
    bases = bases or LinkBases(default_grafana_url, default_trail_web_url)
    dropped: list[str] = []

    def allowed(name: str, url: str | None) -> str | None:
        if url is not None and not bases.allows(url):
            dropped.append(name)
            return None
        return url

    links = {name: allowed(name, _link(event.annotations.get(name))) for name in LINK_FIELDS}
    report = finding.failures
    # The alert's Grafana and trail page, checked only when a link is built on them.
    if (finding.correlation_id and finding.trail_window is not None) or (report and (report.first or report.last)):
        grafana = allowed("grafana_url", _link(event.labels.get("grafana_url"))) or default_grafana_url
        trail_web = allowed("trail_web_url", _link(event.labels.get("trail_web_url"))) or default_trail_web_url
    else:
        grafana, trail_web = default_grafana_url, default_trail_web_url
    if finding.correlation_id and finding.trail_window is not None:
        links["trail_url"] = trail_explore_url(grafana, finding.correlation_id, finding.trail_window)
        links["trail_page_url"] = trail_web.rstrip("/") + trail_page_path(finding.correlation_id)
    hop = finding.root_cause
    note = {
        **{name: None for name in FIELDS},
        "version": NOTIFICATION_VERSION,
        "status": event.status,
        "page": event.page and event.firing,
        "alertname": shown(event.alertname, MAX_LABEL_CHARS),
        "severity": shown(event.severity, MAX_LABEL_CHARS) or None,
        "service": shown(event.service, MAX_LABEL_CHARS),
        "cause_service": shown(event.cause_service, MAX_LABEL_CHARS),
        "summary": shown(event.annotations.get("summary"), MAX_MESSAGE_CHARS),
        "starts_at": _time(event.starts_at),
        "ends_at": _time(event.ends_at),
        "duration_seconds": (
            round((event.ends_at - event.starts_at).total_seconds(), 3)
            if not event.firing and event.ends_at and event.starts_at and event.ends_at >= event.starts_at
            else None
        ),
        "trail": finding.state,
        "trail_note": shown(finding.note, MAX_MESSAGE_CHARS),
        "trail_caveat": shown(finding.caveat, MAX_MESSAGE_CHARS),
        "correlation_id": finding.correlation_id,
        "trail_command": f"trail {finding.correlation_id}" if finding.correlation_id else None,
        "root_cause": _hop(hop) if hop else None,
        "error": (
            {
                "type": shown(finding.error_type, MAX_ERROR_TYPE_CHARS),
                "message": shown(finding.error_message, MAX_MESSAGE_CHARS),
            }
            if finding.error_type or finding.error_message
            else None
        ),
        "lost_task": _lost_task(finding.lost_task) if finding.lost_task else None,
        "failures": _failures(report, grafana, trail_web) if report else None,
        **links,
        "dropped_links": dropped or None,
    }
    note["text"] = render_text(note)
    return note


def _hop(hop: FailedHop) -> dict[str, Any]:
    return {
        "service": shown(hop.service, MAX_LABEL_CHARS),
        "method": shown(hop.method, MAX_LABEL_CHARS),
        "route": shown(hop.route, MAX_LABEL_CHARS),
        "status": hop.status,
        "duration_ms": hop.duration_ms,
        "request_id": shown(hop.request_id, MAX_LABEL_CHARS),
    }


def _lost_task(lost: LostTask) -> dict[str, Any]:
    return {
        "task": shown(lost.task, MAX_TASK_NAME_CHARS),
        "reason": shown(lost.reason, MAX_LABEL_CHARS),
        "error": shown(lost.error, MAX_MESSAGE_CHARS),
        "request_id": shown(lost.request_id, MAX_LABEL_CHARS),
        "time": format_time(lost.ts_ns),
        "count": lost.count,
        "count_capped": lost.count_capped,
        "window": {"start": format_time(lost.window.start_ns), "end": format_time(lost.window.end_ns)},
    }


def _failures(report: FailureReport, grafana: str, trail_web: str) -> dict[str, Any]:
    counts = report.counts
    if report.state != FOUND or counts is None:
        return {"state": report.state, "note": shown(report.note, MAX_MESSAGE_CHARS)}
    listed, rest = counts.by_type[:MAX_ERROR_TYPES], counts.by_type[MAX_ERROR_TYPES:]
    return {
        "state": "counted",
        "note": None,
        "service": shown(counts.service, MAX_LABEL_CHARS),
        "task": shown(counts.task, MAX_TASK_NAME_CHARS),
        "window": {"start": format_time(counts.window.start_ns), "end": format_time(counts.window.end_ns)},
        "step_seconds": counts.step_seconds,
        "failed": counts.failed,
        "requests": counts.requests,
        "share": round(counts.share, 4) if counts.share is not None else None,
        "by_type": [
            {
                "error_type": shown(kind.error_type, MAX_ERROR_TYPE_CHARS),
                "count": kind.count,
                "first_seen": format_time(kind.first_seen_ns),
                "last_seen": format_time(kind.last_seen_ns),
            }
            for kind in listed
        ],
        "other_types": {"types": len(rest), "count": sum(kind.count for kind in rest)} if rest else None,
        "first_failure": _failed_request(report.first, counts, grafana, trail_web),
        "last_failure": _failed_request(report.last, counts, grafana, trail_web),
    }


def _failed_request(
    found: FailedRequestAt | None, counts: FailureCounts, grafana: str, trail_web: str
) -> dict[str, Any] | None:
    if found is None:
        return None
    window: Window = id_window(found.correlation_id) or counts.window
    return {
        "correlation_id": found.correlation_id,
        "time": format_time(found.ts_ns),
        "trail_url": trail_explore_url(grafana, found.correlation_id, window),
        "trail_page_url": trail_web.rstrip("/") + trail_page_path(found.correlation_id),
    }


def _headline(note: dict[str, Any]) -> str:
    kind = "page" if note["page"] else "no page"
    who = note["service"] or "-"
    cause = f" (cause: {note['cause_service']})" if note["cause_service"] and note["cause_service"] != who else ""
    return f"[{note['status'].upper()}] {note['alertname']} ({note['severity'] or 'no severity'}, {kind}): {who}{cause}"


def _hop_line(hop: dict[str, Any]) -> str:
    what = " ".join(part for part in (hop["method"], hop["route"]) if part) or "?"
    took = f" in {hop['duration_ms']:.1f} ms" if hop["duration_ms"] is not None else ""
    return f"{hop['service'] or '?'} {what} answered {hop['status']}{took} (request {hop['request_id']})"


def _error_line(error: dict[str, Any] | None) -> str:
    if not error:
        return "no error line logged"
    return ": ".join(part for part in (error["type"], error["message"]) if part)


def _lost_task_lines(note: dict[str, Any]) -> list[str]:
    """How many tasks the service lost in the window, and the newest of them."""
    lost = note["lost_task"]
    count = f"{lost['count']} or more (the search stops there)" if lost["count_capped"] else str(lost["count"])
    request = f", request {lost['request_id']}" if lost["request_id"] else ""
    what = " ".join(part for part in (lost["task"] or "?", f"({lost['reason']})" if lost["reason"] else "") if part)
    return [
        f"Lost tasks: {count} not queued by {note['service']} in {lost['window']['start']} .. {lost['window']['end']}",
        f"Newest: {what} at {lost['time']}{request}: {lost['error'] or 'no error text'}",
    ]


def _failures_lines(note: dict[str, Any]) -> list[str]:
    """How much broke: the count by error type (or why there is none), and for a resolved alert
    how long it lasted and the first and last failure."""
    lines = []
    if note["duration_seconds"] is not None:
        lines.append(f"Lasted {format_duration(note['duration_seconds'])} ({note['starts_at']} .. {note['ends_at']})")
    failures = note["failures"]
    if not failures or failures["state"] == "skipped":
        return lines
    if failures["state"] != "counted":
        return [*lines, f"Failed requests: count unavailable ({failures['note']})"]
    share = f" ({failures['share']:.1%})" if failures["share"] is not None else ""
    of = f" of {failures['requests']}" if failures["requests"] is not None else ""
    where = f"{failures['window']['start']} .. {failures['window']['end']}"
    # An alert about one task counts that task's runs: the line says so.
    what = f"Failed runs of {failures['task']}" if failures["task"] is not None else "Failed requests"
    lines.append(f"{what}: {failures['failed']}{of}{share} at {failures['service']} in {where}")
    for kind in failures["by_type"]:
        lines.append(
            f"  {kind['error_type'] or 'no exception'}: {kind['count']}, first seen {kind['first_seen']}, "
            f"last seen {kind['last_seen']} (within {failures['step_seconds']} s)"
        )
    if failures["other_types"]:
        other = failures["other_types"]
        lines.append(f"  {other['types']} more error types: {other['count']}")
    for name, label in (("first_failure", "First failure"), ("last_failure", "Last failure")):
        if failures[name]:
            lines.append(f"{label}: {failures[name]['time']} {failures[name]['trail_page_url']}")
    return lines


def render_text(note: dict[str, Any]) -> str:
    """The notification as plain text, one fact a line."""
    lines = [_headline(note)]
    if note["summary"]:
        lines.append(note["summary"])
    if note["status"] == "firing":
        if note["trail_caveat"]:
            lines.append(f"Note: {note['trail_caveat']}.")
        if note["root_cause"]:
            lines.append(f"Root cause: {_hop_line(note['root_cause'])}")
            lines.append(f"Error: {_error_line(note['error'])}")
        if note["lost_task"]:
            lines += _lost_task_lines(note)
        if note["correlation_id"]:
            lines.append(f"Correlation ID: {note['correlation_id']}  ->  {note['trail_command']}")
        if note["trail_note"]:
            lines.append(f"Links only: {note['trail_note']}.")
    lines += _failures_lines(note)
    lines += [f"{_LINK_NAMES[name]}: {note[name]}" for name in LINK_FIELDS if note[name]]
    if note["dropped_links"]:
        lines.append(f"Links dropped (not under the configured addresses): {', '.join(note['dropped_links'])}")
    return "\n".join(lines)


def _mrkdwn(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str) -> str:
    """Inline code in mrkdwn; a backtick inside would end it early."""
    return "`" + _mrkdwn(text.replace("`", "'")) + "`"


def _fit(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS


def slack_message(note: dict[str, Any]) -> dict[str, Any]:
    """Slack's incoming-webhook body: ``text`` (the fallback shown in notifications) and ``blocks``."""
    facts = []
    if note["summary"]:
        facts.append(_mrkdwn(note["summary"]))
    if note["status"] == "firing":
        if note["trail_caveat"]:
            facts.append(f"*Note:* {_mrkdwn(note['trail_caveat'])}.")
        if note["root_cause"]:
            facts.append(f"*Root cause:* {_code(_hop_line(note['root_cause']))}")
            facts.append(f"*Error:* {_code(_error_line(note['error']))}")
        if note["lost_task"]:
            counted, newest = _lost_task_lines(note)
            facts.append(f"*{_mrkdwn(counted)}*")
            facts.append(f"*Newest lost task:* {_code(newest.removeprefix('Newest: '))}")
        if note["correlation_id"]:
            facts.append(f"*Correlation ID:* {_code(note['correlation_id'])}: {_code(note['trail_command'])}")
        if note["trail_note"]:
            facts.append(f"*Links only:* {_mrkdwn(note['trail_note'])}.")
    facts += [_mrkdwn(line) for line in _failures_lines(note)]
    if note["dropped_links"]:
        facts.append(f"*Links dropped* (not under the configured addresses): {', '.join(note['dropped_links'])}")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _fit(_headline(note), _SLACK_HEADER_CHARS)}},
    ]
    if facts:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": _fit("\n".join(facts), _SLACK_SECTION_CHARS)}}
        )
    buttons = [
        {
            "type": "button",
            "text": {"type": "plain_text", "text": _LINK_NAMES[name]},
            "url": note[name],
        }
        for name in LINK_FIELDS
        if note[name]
    ]
    if buttons:
        blocks.append({"type": "actions", "elements": buttons})
    return {"text": _mrkdwn(_fit(_headline(note), _SLACK_SECTION_CHARS)), "blocks": blocks}
