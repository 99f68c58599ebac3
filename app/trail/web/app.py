"""``trail serve``: one request's trail as a web page, and time-scoped links into Grafana.

    GET /t/<id>               the page: waterfall of hops, each hop's lines, the window searched,
                              and "this error, last 15 min: N requests" (its root cause's
                              error_type at its service), linking to them in Explore
    GET /t/<id>?format=json   the ``trail --json`` document
    GET /go/<id>              302 to Grafana Explore on the request's lines over its own window
    GET /go/last-failed       302 to the page of the newest failed request (?service=&task=&peer=)
    GET /go/lost-task         302 to the page of the newest request whose task was not queued
                              (?service=&task=&reason=)
    GET /go/slowest           302 to the page of the slowest request (?service=&route=)
                              (each over ?from=&to= or ?since=, default the last hour: alert links)
    GET /healthz              liveness (does not ask Loki)

Why it exists: Grafana data links cannot compute a time (grafana/grafana issue 82897), so the
exemplar and ``correlation_id`` links could only search a fixed 6 hours, and a Loki search costs
in proportion to its window. This app reads the time inside the ID (``trail.window``) as the CLI
does, so every click lands on a window of seconds, widened once to +-15 min when the trail found
there is incomplete. ``?from=&to=`` (RFC 3339 or Unix s/ms) gives the window for a foreign ID;
without it a foreign ID is searched over the last hour. A window longer than ``TRAIL_MAX_WINDOW``
(24 h) gets a 400 naming it, and at most ``TRAIL_MAX_LINES`` (2000) lines are read and shown for
one trail, the page saying so when it cut: whoever can push to Loki can fill a window under one ID.

Settings (environment): ``LOKI_*`` as for the CLI (``LOKI_TIMEOUT_SECONDS`` also bounds a whole
page: no page waits longer), ``GRAFANA_URL`` and ``TRAIL_WEB_URL``: the addresses a browser uses,
``TRAIL_MAX_WINDOW`` and ``TRAIL_MAX_LINES``: the limits above.
Run under gunicorn (``--config python:trail.web.gunicorn_conf "trail.web.app:create_app()"``), or
``trail serve --port 8090`` for local use.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

import flask
from werkzeug.wrappers import Response as WerkzeugResponse

from correlation import schema
from correlation.settings import ConfigError
from trail.document import render_lookup_json
from trail.failures import count_failures
from trail.links import explore_url, trail_dashboard_url, trail_explore_url, window_ms
from trail.logql import check_error_type, check_service, failed_requests_query
from trail.loki_query import LokiQueryClient, LokiQueryError, display_url
from trail.lookup import TrailLookup, deadline_after, lookup_trail
from trail.root_cause import root_cause
from trail.text import clean
from trail.web.go import add_alert_routes
from trail.web.page import UNKNOWN_TITLE, page_view
from trail.web.request_args import BadRequest, checked_id, requested_window, wants_json, window_args
from trail.web.settings import TrailWebSettings
from trail.window import DEFAULT_SINCE_SECONDS, Window, id_window

#: Defence in depth behind autoescaping: no script may run on the page, whatever a line holds.
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _page_url(correlation_id: str, params: dict[str, str]) -> str:
    path = flask.url_for("trail_page", correlation_id=correlation_id)
    return f"{path}?{urlencode(params)}" if params else path


def create_app(settings: TrailWebSettings | None = None) -> flask.Flask:
    """The WSGI app (gunicorn: ``"trail.web.app:create_app()"``); settings from the environment by default."""
    settings = settings or TrailWebSettings.from_env()
    app = flask.Flask(__name__)
    # Text from log lines the templates show outside page_view (the widening reasons) is escaped
    # like the rest: invisible and bidi characters as well as HTML.
    app.add_template_filter(clean, "clean")
    # One Loki client (one requests.Session) per serving thread: sessions are not thread-safe.
    local = threading.local()

    def client() -> LokiQueryClient:
        if not hasattr(local, "client"):
            local.client = LokiQueryClient(settings.loki)
        found: LokiQueryClient = local.client
        return found

    def page(template: str, status: int, **context: Any) -> flask.Response:
        html = flask.render_template(template, settings=settings, unknown_title=UNKNOWN_TITLE, **context)
        return flask.Response(html, status, content_type="text/html; charset=utf-8")

    def failure(
        status: int, title: str, message: str, as_json: bool, lookup: TrailLookup | None = None
    ) -> flask.Response:
        """An error page (or JSON document) saying what went wrong; with ``lookup``, what was searched."""
        if as_json:
            body: dict[str, Any] = {"error": title, "message": message}
            if lookup is not None:
                body.update(windows=[w.to_dict() for w in lookup.windows], query=lookup.query)
            return flask.Response(json.dumps(body, indent=2) + "\n", status, content_type="application/json")
        links = _links(lookup) if lookup is not None else {}
        return page("error.html", status, title=title, message=message, lookup=lookup, **links)

    def _links(lookup: TrailLookup) -> dict[str, str]:
        return {
            "explore_url": trail_explore_url(settings.grafana_url, lookup.correlation_id, lookup.window),
            "dashboard_url": trail_dashboard_url(settings.grafana_url, lookup.correlation_id, lookup.window),
        }

    def _not_found(lookup: TrailLookup, as_json: bool) -> flask.Response:
        message = f"No log lines for correlation ID {lookup.correlation_id} in the window searched."
        return failure(404, "Nothing found", message, as_json, lookup)

    @app.after_request
    def secure(response: flask.Response) -> flask.Response:
        response.headers.update(_SECURITY_HEADERS)
        return response

    @app.errorhandler(BadRequest)
    def bad_request(exc: BadRequest) -> flask.Response:
        as_json = flask.request.args.get("format") == "json"
        return failure(400, "Bad request", str(exc), as_json)

    @app.errorhandler(404)
    def not_a_page(_exc: Exception) -> flask.Response:
        return failure(
            404, "No such page", "Trail pages are /t/<correlation-id>: paste an ID in the form above.", False
        )

    @app.get("/healthz")
    def healthz() -> flask.Response:
        return flask.jsonify(status="ok", loki=display_url(settings.loki.url))

    @app.get("/")
    def index() -> flask.Response:
        return page("index.html", 200)

    @app.get("/t")
    def from_form() -> WerkzeugResponse:
        correlation_id = checked_id(flask.request.args.get("id", "").strip())
        return flask.redirect(_page_url(correlation_id, window_args("format")), 303)

    @app.get("/t/<path:correlation_id>")
    def trail_page(correlation_id: str) -> flask.Response:
        as_json = wants_json()
        correlation_id = checked_id(correlation_id)
        explicit = requested_window(settings.max_window_seconds)
        timeout = settings.loki.timeout_seconds
        deadline = deadline_after(timeout)  # the page's whole budget: the trail, then the count
        try:
            lookup = lookup_trail(
                client(), correlation_id, explicit, budget_seconds=timeout, max_lines=settings.max_lines
            )
        except LokiQueryError as exc:
            return failure(502, exc.headline(timeout), str(exc), as_json)
        if not lookup.found:
            return _not_found(lookup, as_json)
        if as_json:
            # Exactly what `trail ID --json` prints (trail/cli.py).
            return flask.Response(render_lookup_json(lookup), 200, content_type="application/json")
        same_error = _same_error(client(), settings, lookup, deadline)
        json_url = _page_url(correlation_id, {**window_args(), "format": "json"})
        # The address to share: where browsers reach this app (TRAIL_WEB_URL), not this request's Host.
        share_url = settings.trail_web_url + _page_url(correlation_id, window_args())
        return page(
            "trail.html",
            200,
            lookup=lookup,
            view=page_view(lookup),
            json_url=json_url,
            share_url=share_url,
            same_error=same_error,
            **_links(lookup),
        )

    @app.get("/go/<path:correlation_id>")
    def go(correlation_id: str) -> WerkzeugResponse:
        """Straight to Explore, without asking Loki: the ID's own narrow window (or the given one,
        or the last hour for a foreign ID)."""
        correlation_id = checked_id(correlation_id)
        window = (
            requested_window(settings.max_window_seconds)
            or id_window(correlation_id)
            or Window.last(DEFAULT_SINCE_SECONDS)
        )
        return flask.redirect(trail_explore_url(settings.grafana_url, correlation_id, window), 302)

    add_alert_routes(app, settings, client, failure)
    return app


#: How far back the page counts the requests that failed like this one.
SAME_ERROR_SECONDS = 15 * 60


def _same_error(
    client: LokiQueryClient, settings: TrailWebSettings, lookup: TrailLookup, deadline: float | None
) -> dict[str, Any] | None:
    """ "This error, last 15 min: N requests": the failures of the root-cause hop's service with its
    access line's ``error_type``, and Explore on them. None when the trail names no such type; a
    count Loki could not give says why instead of a number."""
    cause = root_cause(lookup.trail)
    access = cause.hop.access if cause is not None else None
    kind = access.get(schema.ERROR_TYPE) if access is not None else None
    service = cause.hop.service if cause is not None else None
    if not isinstance(kind, str) or not isinstance(service, str):
        return None
    try:
        query = failed_requests_query(check_service(service), check_error_type(kind))
    except ValueError:
        return None  # from a log line: not a name the library writes, so not searched for
    window = Window.last(SAME_ERROR_SECONDS)
    view: dict[str, Any] = {
        "service": service,
        "error_type": kind,
        "explore_url": explore_url(settings.grafana_url, "failures", query, *window_ms(window)),
    }
    try:
        counts = count_failures(client, service, window, error_type=kind, with_requests=False, deadline=deadline)
    except LokiQueryError as exc:
        view["unavailable"] = exc.headline(settings.loki.timeout_seconds)
    else:
        view["count"] = counts.failed
    return view


def build_serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trail serve",
        description="Serve trail pages (/t/<id>) and time-scoped Grafana links (/go/<id>) for local use; "
        "in production run it under gunicorn. Reads LOKI_*, GRAFANA_URL and TRAIL_WEB_URL.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=8090, help="port to listen on (default %(default)s)")
    return parser


def serve_main(argv: Sequence[str] | None = None) -> int:
    """``trail serve``: Werkzeug's threaded server (comes with Flask), no gunicorn needed."""
    from werkzeug.serving import run_simple

    args = build_serve_parser().parse_args(argv)
    try:
        app = create_app()
    except ConfigError as exc:
        print(f"trail serve: {exc}", file=sys.stderr)
        return 2
    print(f"trail serve: http://{args.host}:{args.port}/t/<correlation-id>", file=sys.stderr, flush=True)
    run_simple(args.host, args.port, app, threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(serve_main())
