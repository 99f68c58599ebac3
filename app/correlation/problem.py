"""Error bodies that carry the correlation ID, whatever the framework: RFC 9457 problem details
for API clients, a line with the ID for browsers.

The Flask edge builds its error responses from these (:mod:`correlation.integrations.errors`),
and so does the ASGI edge (:mod:`correlation.integrations.asgi`) for an exception its app let
through. A body never carries an exception's message: only the status's generic text.
"""

from __future__ import annotations

from html import escape
from typing import Any

PROBLEM_JSON = "application/problem+json"
JSON_TYPES = (PROBLEM_JSON, "application/json")
#: What the client may be answered in, best first when it has no preference.
_OFFERED = (*JSON_TYPES, "text/html")
#: RFC 9110's text for a 500, as Werkzeug words it (the Flask edge's 500 says the same).
INTERNAL_ERROR_TITLE = "Internal Server Error"
INTERNAL_ERROR_DETAIL = (
    "The server encountered an internal error and was unable to complete your request. Either the"
    " server is overloaded or there is an error in the application."
)


def problem(status: int, title: str, detail: str | None, correlation_id: str | None) -> dict[str, Any]:
    """An RFC 9457 problem details object with the extension member ``correlation_id``."""
    return {"type": "about:blank", "title": title, "status": status, "detail": detail, "correlation_id": correlation_id}


def id_line_html(correlation_id: str | None) -> str:
    """The line a browser's error page gets: the ID, escaped."""
    return f"<p>Correlation ID: <code>{escape(correlation_id or '-')}</code></p>\n"


def error_page_html(status: int, title: str, detail: str, correlation_id: str | None) -> str:
    """A whole error page for a browser, ending in :func:`id_line_html`."""
    return (
        f"<!doctype html>\n<html lang=en>\n<title>{status} {escape(title)}</title>\n"
        f"<h1>{escape(title)}</h1>\n<p>{escape(detail)}</p>\n{id_line_html(correlation_id)}"
    )


def wants_html(accept: str | None) -> bool:
    """Whether a client sending ``accept`` prefers ``text/html`` to JSON. No header, ``*/*`` or a
    tie: JSON (an API client), as Werkzeug's ``best_match`` over the same offers answers."""
    if not accept:
        return False
    ranges = []
    for part in accept.split(","):
        media, *params = part.strip().split(";")
        quality = 1.0
        for param in params:
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = max(0.0, min(1.0, float(value)))
                except ValueError:
                    quality = 0.0
        ranges.append((media.strip().lower(), quality))
    best, best_quality = None, 0.0
    for offered in _OFFERED:
        quality = _quality(offered, ranges)
        if quality > best_quality:  # strictly: a tie keeps the earlier (JSON) offer
            best, best_quality = offered, quality
    return best == "text/html"


def _quality(offered: str, ranges: list[tuple[str, float]]) -> float:
    """The quality the most specific matching media range gives ``offered`` (0: not acceptable)."""
    kind = offered.split("/", 1)[0]
    found, specificity = 0.0, -1
    for media, quality in ranges:
        if media == offered:
            rank = 2
        elif media == f"{kind}/*":
            rank = 1
        elif media == "*/*" or media == "*":
            rank = 0
        else:
            continue
        if rank > specificity:
            found, specificity = quality, rank
    return found
