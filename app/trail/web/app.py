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
import os
import re
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import flask
from werkzeug.wrappers import Response as WerkzeugResponse

from correlation import schema
from correlation.settings import ConfigError, LokiSettings
from trail.alert_requests import FoundRequest, newest_failed, newest_lost_task, slowest
from trail.document import render_lookup_json
from trail.failures import count_failures
from trail.links import (
    DEFAULT_GRAFANA_URL,
    DEFAULT_TRAIL_WEB_URL,
    explore_url,
    trail_dashboard_url,
    trail_explore_url,
    trail_page_path,
    window_ms,
)
from trail.logql import (
    MAX_PEERS,
    check_correlation_id,
    check_error_type,
    check_peer,
    check_reason,
    check_route,
    check_service,
    check_task,
    failed_requests_query,
)
from trail.loki_query import LokiQueryClient, LokiQueryError, display_url
from trail.lookup import DEFAULT_MAX_LINES, TrailLookup, deadline_after, lookup_trail, max_lines_from_env
from trail.root_cause import root_cause
from trail.text import clean
from trail.web.page import UNKNOWN_TITLE, page_view
from trail.window import (
    DEFAULT_MAX_WINDOW_SECONDS,
    DEFAULT_SINCE_SECONDS,
    MAX_WINDOW_ENV,
    Window,
    WindowTooLong,
    explicit_window,
    id_window,
    max_window_from_env,
    parse_duration,
    parse_time,
)

_BASE_URL = re.compile(r"https?://[^/\s?#]+(/[^\s?#]*)?")
#: Longest query parameter read: times and durations are short; anything longer is refused.
_MAX_PARAM = 64
#: Defence in depth behind autoescaping: no script may run on the page, whatever a line holds.
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class TrailWebSettings:
    """Where Loki is, and the addresses a browser uses for Grafana and for this app."""

    loki: LokiSettings
    grafana_url: str = DEFAULT_GRAFANA_URL
    trail_web_url: str = DEFAULT_TRAIL_WEB_URL
    #: The longest ``?since=`` / ``?from=&to=`` window (TRAIL_MAX_WINDOW).
    max_window_seconds: float = DEFAULT_MAX_WINDOW_SECONDS
    #: The most lines read and shown for one trail (TRAIL_MAX_LINES).
    max_lines: int = DEFAULT_MAX_LINES

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TrailWebSettings:
        env = os.environ if env is None else env
        loki = LokiSettings.from_env(env)
        if not loki.url:
            raise ConfigError("LOKI_URL is not set: the trail pages read Loki (e.g. LOKI_URL=http://localhost:3100)")
        return cls(
            loki,
            _base_url(env, "GRAFANA_URL", DEFAULT_GRAFANA_URL),
            _base_url(env, "TRAIL_WEB_URL", DEFAULT_TRAIL_WEB_URL),
            max_window_from_env(env),
            max_lines_from_env(env),
        )


def _base_url(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip() or default
    if not _BASE_URL.fullmatch(value):
        raise ConfigError(f"{name}={value!r} is not valid: expected http(s)://host[:port][/path]")
    return value.rstrip("/")


class _BadRequest(ValueError):
    """Input the page refuses, with the reason shown to the user."""


def _param(name: str) -> str | None:
    value = flask.request.args.get(name, "").strip()
    if len(value) > _MAX_PARAM:
        raise _BadRequest(f"{name}: longer than {_MAX_PARAM} characters")
    return value or None


def _explicit_window(max_seconds: float) -> Window | None:
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
        raise _BadRequest(f"bad time window: {exc} (this server's {MAX_WINDOW_ENV}); nothing was queried") from None
    except ValueError as exc:
        raise _BadRequest(f"bad time window: {exc}") from None


def _window_args(*more: str) -> dict[str, str]:
    """The request's non-empty window parameters (and ``more``), to carry on to another URL."""
    return {k: v for k, v in flask.request.args.items() if k in ("from", "to", "since", *more) and v}


def _page_url(correlation_id: str, params: dict[str, str]) -> str:
    path = flask.url_for("trail_page", correlation_id=correlation_id)
    return f"{path}?{urlencode(params)}" if params else path


def _checked_id(correlation_id: str) -> str:
    try:
        return check_correlation_id(correlation_id)
    except ValueError as exc:
        raise _BadRequest(f"refusing {exc}; nothing was queried") from None


def _wants_json() -> bool:
    requested = flask.request.args.get("format", "html")
    if requested not in ("html", "json"):
        raise _BadRequest("format: expected html or json")
    return requested == "json"


def _loki_problem(exc: LokiQueryError, timeout_seconds: float) -> str:
    if exc.status is not None:
        return f"Loki answered an error (HTTP {exc.status})"
    if "budget" in exc.message or "timed out" in exc.message.lower():
        return f"Loki did not answer within LOKI_TIMEOUT_SECONDS ({timeout_seconds:g} s)"
    return "Loki could not be reached"


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

    @app.errorhandler(_BadRequest)
    def bad_request(exc: _BadRequest) -> flask.Response:
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
        correlation_id = _checked_id(flask.request.args.get("id", "").strip())
        return flask.redirect(_page_url(correlation_id, _window_args("format")), 303)

    @app.get("/t/<path:correlation_id>")
    def trail_page(correlation_id: str) -> flask.Response:
        as_json = _wants_json()
        correlation_id = _checked_id(correlation_id)
        explicit = _explicit_window(settings.max_window_seconds)
        timeout = settings.loki.timeout_seconds
        deadline = deadline_after(timeout)  # the page's whole budget: the trail, then the count
        try:
            lookup = lookup_trail(
                client(), correlation_id, explicit, budget_seconds=timeout, max_lines=settings.max_lines
            )
        except LokiQueryError as exc:
            return failure(502, _loki_problem(exc, timeout), str(exc), as_json)
        if not lookup.found:
            return _not_found(lookup, as_json)
        if as_json:
            # Exactly what `trail ID --json` prints (trail/cli.py).
            return flask.Response(render_lookup_json(lookup), 200, content_type="application/json")
        same_error = _same_error(client(), settings, lookup, deadline)
        json_url = _page_url(correlation_id, {**_window_args(), "format": "json"})
        # The address to share: where browsers reach this app (TRAIL_WEB_URL), not this request's Host.
        share_url = settings.trail_web_url + _page_url(correlation_id, _window_args())
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
        correlation_id = _checked_id(correlation_id)
        window = (
            _explicit_window(settings.max_window_seconds)
            or id_window(correlation_id)
            or Window.last(DEFAULT_SINCE_SECONDS)
        )
        return flask.redirect(trail_explore_url(settings.grafana_url, correlation_id, window), 302)

    _add_alert_routes(app, settings, client, failure)
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
        view["unavailable"] = _loki_problem(exc, settings.loki.timeout_seconds)
    else:
        view["count"] = counts.failed
    return view


# -- /go/last-failed, /go/lost-task, /go/slowest: the request behind an alert (trail.alert_requests)
# Alert annotations are written when the rule is evaluated and can read only metrics: they link
# here with the alert's labels and window, and these find the request in Loki and redirect to its
# trail page. Their names take precedence over /go/<id> for an ID spelled the same (/t/<id> opens it).

#: The longest value of a name parameter: a task's name is a dotted path, a route a URL rule.
_MAX_NAME_PARAM = 256


def _name_param(name: str, check: Any, *, required: bool = False) -> str | None:
    """One checked query parameter (``check`` raises ValueError), or None when absent."""
    value = flask.request.args.get(name, "").strip()
    if not value:
        if required:
            raise _BadRequest(f"{name}: required")
        return None
    if len(value) > _MAX_NAME_PARAM:
        raise _BadRequest(f"{name}: longer than {_MAX_NAME_PARAM} characters")
    try:
        checked: str = check(value)
    except ValueError as exc:
        raise _BadRequest(f"{name}: {exc}") from None
    return checked


def _peers_param() -> tuple[str, ...]:
    values = [v.strip() for v in flask.request.args.getlist("peer") if v.strip()]
    if len(values) > MAX_PEERS:
        raise _BadRequest(f"peer: at most {MAX_PEERS} values")
    try:
        return tuple(check_peer(v) for v in values)
    except ValueError as exc:
        raise _BadRequest(f"peer: {exc}") from None


def _add_alert_routes(app: flask.Flask, settings: TrailWebSettings, client: Any, failure: Any) -> None:
    def window() -> Window:
        return _explicit_window(settings.max_window_seconds) or Window.last(DEFAULT_SINCE_SECONDS)

    def redirect(find: Any, what: str, searched: Window) -> WerkzeugResponse:
        timeout = settings.loki.timeout_seconds
        try:
            found: FoundRequest | None = find(deadline_after(timeout))
        except LokiQueryError as exc:
            return failure(502, _loki_problem(exc, timeout), str(exc), False)
        except ValueError as exc:
            raise _BadRequest(str(exc)) from None
        if found is None:
            return failure(404, "Nothing found", f"No {what} in {searched}.", False)
        # Our IDs carry their time, and the page finds their window; a foreign ID's is where it was found.
        around = None if id_window(found.correlation_id) is not None else found.window
        return flask.redirect(trail_page_path(found.correlation_id, around), 302)

    @app.get("/go/last-failed")
    def go_last_failed() -> WerkzeugResponse:
        """The newest failed request (``service``, ``task``, ``peer``: failed because a call to it failed)."""
        service, task = _name_param("service", check_service), _name_param("task", check_task)
        peers, searched = _peers_param(), window()
        what = "failed request" + (f" of {service}" if service else "") + (f", task {task}" if task else "")
        what += f" after a failed call to {' or '.join(peers)}" if peers else ""

        def find(deadline: float) -> FoundRequest | None:
            return newest_failed(client(), searched, service=service, peers=peers, task=task, deadline=deadline)

        return redirect(find, what, searched)

    @app.get("/go/lost-task")
    def go_lost_task() -> WerkzeugResponse:
        """The newest request whose task ``service`` could not queue (``task``, ``reason``)."""
        service = _name_param("service", check_service, required=True)
        task, reason = _name_param("task", check_task), _name_param("reason", check_reason)
        searched = window()

        def find(deadline: float) -> FoundRequest | None:
            assert service is not None
            return newest_lost_task(client(), searched, service=service, task=task, reason=reason, deadline=deadline)

        return redirect(find, f"task {service} could not queue" + (f" ({task})" if task else ""), searched)

    @app.get("/go/slowest")
    def go_slowest() -> WerkzeugResponse:
        """The slowest request ``service`` answered in the window (``route``)."""
        service = _name_param("service", check_service, required=True)
        route, searched = _name_param("route", check_route), window()

        def find(deadline: float) -> FoundRequest | None:
            assert service is not None
            return slowest(client(), searched, service=service, route=route, deadline=deadline)

        return redirect(find, f"request of {service}" + (f" on {route}" if route else ""), searched)


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
