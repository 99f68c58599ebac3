"""Error responses that carry the correlation ID (RFC 9457 problem details, or the HTML page).

Without this, a 4xx/5xx body says nothing a user can quote to support; the ID is only in a
response header few clients show. With it:

- a client that prefers JSON (an API client sending ``*/*`` or ``application/json``) gets
  ``application/problem+json``: ``type``, ``title``, ``status``, ``detail`` and the extension
  member ``correlation_id``;
- a browser (``text/html`` preferred) gets Werkzeug's usual page plus a line with the ID.

The app's own error handlers win: a handler for a status code, for an exception class, or for
``HTTPException`` registered after ``Correlation`` is found by Flask before this one; one for
``Exception`` is called instead of this one. Unhandled exceptions get the generic 500 text, never
their message. Off with ``CORRELATION_ERROR_BODIES=false``.
"""

from __future__ import annotations

from typing import Any

import flask
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from correlation import context
from correlation.problem import JSON_TYPES, PROBLEM_JSON, id_line_html, problem

__all__ = ["PROBLEM_JSON", "install"]


def install(app: flask.Flask) -> None:
    """Answer errors with the ID, unless the app already handles HTTPException or Exception."""
    existing = app.error_handler_spec.get(None, {}).get(None, {})
    if HTTPException in existing or Exception in existing:
        return
    app.register_error_handler(HTTPException, _answer)


def _answer(error: HTTPException) -> Any:
    handler = _app_handler_for_exception()
    if handler is not None:
        return handler(error)
    if error.response is not None or error.code is None or error.code < 400:
        return error  # abort(response), redirects: not ours to rewrite
    correlation_id = context.correlation_id()
    best = flask.request.accept_mimetypes.best_match([*JSON_TYPES, "text/html"])
    if best in JSON_TYPES:
        response: Response = flask.jsonify(problem(error.code, error.name, error.description, correlation_id))
        response.status_code = error.code
        response.mimetype = PROBLEM_JSON
    else:
        response = error.get_response()
        body = response.get_data(as_text=True)
        response.set_data(body + id_line_html(correlation_id))
    for name, value in error.get_headers():  # Allow on 405, WWW-Authenticate on 401, ...
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def _app_handler_for_exception() -> Any:
    """The app's (or the current blueprint's) handler for ``Exception``, which must win over ours."""
    app = flask.current_app
    for name in (*flask.request.blueprints, None):
        handler = app.error_handler_spec.get(name, {}).get(None, {}).get(Exception)
        if handler is not None:
            return handler
    return None
