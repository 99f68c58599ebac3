"""What a trail-web request asks, checked: its window, the ID, the names an alert link carries.
Anything refused raises :class:`BadRequest` with the reason shown to the user (a 400)."""

from __future__ import annotations

from typing import Any

import flask

from trail.logql import MAX_PEERS, check_correlation_id, check_peer
from trail.window import MAX_WINDOW_ENV, Window, WindowTooLong, explicit_window, parse_duration, parse_time

#: Longest query parameter read: times and durations are short; anything longer is refused.
_MAX_PARAM = 64


class BadRequest(ValueError):
    """Input the page refuses, with the reason shown to the user."""


def _param(name: str) -> str | None:
    value = flask.request.args.get(name, "").strip()
    if len(value) > _MAX_PARAM:
        raise BadRequest(f"{name}: longer than {_MAX_PARAM} characters")
    return value or None


def requested_window(max_seconds: float) -> Window | None:
    """``?from=&to=`` (or ``?since=``) when given; None lets the ID's own time decide. Longer
    than ``max_seconds``: refused (400) before any query, naming the limit."""
    try:
        since, start, end = _param("since"), _param("from"), _param("to")
        return explicit_window(
            since_seconds=parse_duration(since) if since else None,
            from_ns=parse_time(start) if start else None,
            to_ns=parse_time(end) if end else None,
            max_seconds=max_seconds,
        )
    except WindowTooLong as exc:
        raise BadRequest(f"bad time window: {exc} (this server's {MAX_WINDOW_ENV}); nothing was queried") from None
    except ValueError as exc:
        raise BadRequest(f"bad time window: {exc}") from None


def window_args(*more: str) -> dict[str, str]:
    """The request's non-empty window parameters (and ``more``), to carry on to another URL."""
    return {k: v for k, v in flask.request.args.items() if k in ("from", "to", "since", *more) and v}


def checked_id(correlation_id: str) -> str:
    try:
        return check_correlation_id(correlation_id)
    except ValueError as exc:
        raise BadRequest(f"refusing {exc}; nothing was queried") from None


def wants_json() -> bool:
    requested = flask.request.args.get("format", "html")
    if requested not in ("html", "json"):
        raise BadRequest("format: expected html or json")
    return requested == "json"


#: The longest value of a name parameter: a task's name is a dotted path, a route a URL rule.
_MAX_NAME_PARAM = 256


def name_param(name: str, check: Any, *, required: bool = False) -> str | None:
    """One checked query parameter (``check`` raises ValueError), or None when absent."""
    value = flask.request.args.get(name, "").strip()
    if not value:
        if required:
            raise BadRequest(f"{name}: required")
        return None
    if len(value) > _MAX_NAME_PARAM:
        raise BadRequest(f"{name}: longer than {_MAX_NAME_PARAM} characters")
    try:
        checked: str = check(value)
    except ValueError as exc:
        raise BadRequest(f"{name}: {exc}") from None
    return checked


def peers_param() -> tuple[str, ...]:
    values = [v.strip() for v in flask.request.args.getlist("peer") if v.strip()]
    if len(values) > MAX_PEERS:
        raise BadRequest(f"peer: at most {MAX_PEERS} values")
    try:
        return tuple(check_peer(v) for v in values)
    except ValueError as exc:
        raise BadRequest(f"peer: {exc}") from None
