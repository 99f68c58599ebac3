"""The edge: where a request gets its correlation context, and where that context is reported.

For every request, before any view or other extension runs (a WSGI wrapper around the app):

1. pick the correlation ID from the configured header (``X-Correlation-ID``), else
   ``X-Request-ID``, else the trace-id of a W3C ``traceparent``; refuse values that are not
   1-64 characters of ``[A-Za-z0-9._-]`` (logged escaped and truncated, counted) and generate a
   fresh ID instead;
2. start this hop with its own request ID and its parent's (``X-Parent-Request-ID``, else the
   ``traceparent`` parent-id) and bind it to the context;
3. echo the correlation ID on the response, whatever the status, unhandled exceptions included;
4. when the response is done: one access log line, RED metrics with the ID as exemplar.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable

import flask

from correlation import context, ids, metrics, propagation, traceparent
from correlation.config import Settings
from correlation.logs import ACCESS_LOGGER

_log = logging.getLogger("correlation.edge")
_access_log = logging.getLogger(ACCESS_LOGGER)
_ROUTE_KEY = "correlation.route"
# The method is the client's to choose: as a metric label anything else would be unbounded.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})

StartResponse = Callable[..., Any]


def _environ_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


class _Edge:
    """WSGI wrapper: binds the hop around the whole Flask app, so every hook and error sees it."""

    def __init__(self, app: Callable[..., Iterable[bytes]], settings: Settings, quiet_paths: frozenset[str]) -> None:
        self.app = app
        self.settings = settings
        self.quiet_paths = quiet_paths
        self.header = settings.header
        self._header_lower = settings.header.lower()
        self._id_sources = [(h, _environ_key(h)) for h in dict.fromkeys((settings.header, "X-Request-ID"))]
        self._in_flight = metrics.IN_FLIGHT.labels(settings.service)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        hop, rejections = self._inbound_hop(environ)
        token = context.bind(hop)
        for header, reason, value in rejections:
            metrics.count_rejected_id(self.settings.service, reason)
            _log.warning(
                "rejected inbound %s (%s): %s; using %s", header, reason, ids.printable(value), hop.correlation_id
            )
        quiet = environ.get("PATH_INFO") in self.quiet_paths
        status = 500  # unless the app starts a response

        def echo_id(status_line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            nonlocal status
            status = int(status_line[:3])
            headers = [(k, v) for k, v in headers if k.lower() != self._header_lower]
            headers.append((self.header, hop.correlation_id))
            return start_response(status_line, headers, exc_info)

        if not quiet:
            self._in_flight.inc()
        try:
            return self.app(environ, echo_id)
        finally:
            if not quiet:
                self._in_flight.dec()
                self._report(environ, hop, status, time.perf_counter() - started)
            context.reset(token)

    def _inbound_hop(self, environ: dict[str, Any]) -> tuple[context.Hop, list[tuple[str, str, str]]]:
        rejections: list[tuple[str, str, str]] = []
        correlation_id: str | None = None
        for header, key in self._id_sources:
            value = environ.get(key)
            if value is None:
                continue
            reason = ids.rejection_reason(value)
            if reason:
                rejections.append((header, reason, value))
            else:
                correlation_id = value
            break
        parent = environ.get("HTTP_X_PARENT_REQUEST_ID")
        if parent is not None and not ids.is_valid_id(parent):
            rejections.append((propagation.PARENT_HEADER, ids.rejection_reason(parent) or "bad_characters", parent))
            parent = None
        raw_tp = environ.get("HTTP_TRACEPARENT")
        if raw_tp is not None and not rejections and (correlation_id is None or parent is None):
            tp = traceparent.parse(raw_tp)
            if tp is None:
                rejections.append(("traceparent", "bad_traceparent", raw_tp))
            elif correlation_id is None or correlation_id == tp.trace_id:
                correlation_id = tp.trace_id
                parent = parent or tp.parent_id
        return context.Hop.start(correlation_id, parent), rejections

    def _report(self, environ: dict[str, Any], hop: context.Hop, status: int, seconds: float) -> None:
        route = environ.get(_ROUTE_KEY, "unmatched")
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        metric_method = method if method in _METHODS else "other"
        metrics.observe_request(self.settings.service, route, metric_method, status, seconds, hop.correlation_id)
        level = logging.ERROR if status >= 500 else logging.INFO
        if not _access_log.isEnabledFor(level):
            return
        caller = environ.get("HTTP_X_CALLER_SERVICE")
        duration_ms = round(seconds * 1000, 3)
        fields = {
            "method": method,
            "route": route,
            "path": path,
            "status": status,
            "duration_ms": duration_ms,
            "caller": caller if caller and ids.is_valid_id(caller) else None,
        }
        # makeRecord + handle, not .log(): the caller's file and line (a stack walk) say nothing here.
        args = (method, path, status, duration_ms)
        _access_log.handle(_access_log.makeRecord(ACCESS_LOGGER, level, __file__, 0, "%s %s %d %.1fms", args, None, extra=fields))


def _remember_route() -> None:
    rule = flask.request.url_rule
    flask.request.environ[_ROUTE_KEY] = rule.rule if rule is not None else "unmatched"


def _metrics_view() -> flask.Response:
    body, content_type = metrics.render(flask.request.headers.get("Accept"))
    return flask.Response(body, content_type=content_type)


class Correlation:
    """Flask extension: ``Correlation(app, settings)`` or ``Correlation().init_app(app)``.

    ``settings`` defaults to :meth:`Settings.from_env`. ``metrics_path`` serves Prometheus metrics
    (None: do not). Requests to ``quiet_paths`` keep their correlation ID but write no access
    line and no metrics (health checks and scrapes would drown the rest). ``propagate_requests``
    makes outgoing ``requests`` calls carry the hop (see :mod:`correlation.propagation`).
    """

    def __init__(
        self,
        app: flask.Flask | None = None,
        settings: Settings | None = None,
        *,
        metrics_path: str | None = "/metrics",
        quiet_paths: Iterable[str] = ("/metrics", "/healthz"),
        propagate_requests: bool = True,
    ) -> None:
        self.settings = settings
        self.metrics_path = metrics_path
        self.quiet_paths = frozenset(quiet_paths)
        self.propagate_requests = propagate_requests
        if app is not None:
            self.init_app(app)

    def init_app(self, app: flask.Flask, settings: Settings | None = None) -> None:
        settings = settings or self.settings or Settings.from_env()
        self.settings = settings
        app.extensions["correlation"] = self
        app.wsgi_app = _Edge(app.wsgi_app, settings, self.quiet_paths)  # type: ignore[method-assign]
        app.before_request(_remember_route)
        if self.metrics_path:
            app.add_url_rule(self.metrics_path, "correlation_metrics", _metrics_view)
        if self.propagate_requests:
            propagation.instrument_requests(settings.service, settings.header)
