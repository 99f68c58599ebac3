"""Error bodies that carry the correlation ID, whatever the framework: RFC 9457 problem details
for clients that prefer JSON, a line with the ID for an HTML page.

The framework edges (:mod:`correlation.integrations.errors` for Flask,
:mod:`correlation.integrations.django`) decide which errors get a body and negotiate the type with
:data:`OFFERED`; the body is built here, so every framework answers with the same members.
"""

from __future__ import annotations

import html
from typing import Any

PROBLEM_JSON = "application/problem+json"
#: The types a client may prefer to get :func:`problem` (RFC 9457 section 3: ``application/json``
#: clients read it too).
JSON_TYPES = (PROBLEM_JSON, "application/json")
#: What an error response is offered as, in order: the first wins when the client states no preference.
OFFERED = (*JSON_TYPES, "text/html")


def problem(status: int, title: str, detail: str | None, correlation_id: str | None) -> dict[str, Any]:
    """The problem details object: ``type`` (``about:blank``: the status says it all), ``title``,
    ``status``, ``detail`` and the extension member ``correlation_id``."""
    return {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "correlation_id": correlation_id,
    }


def html_id_line(correlation_id: str | None) -> str:
    """The line an HTML error page gets, the ID escaped (``-`` outside a request)."""
    return f"<p>Correlation ID: <code>{html.escape(correlation_id or '-')}</code></p>\n"
