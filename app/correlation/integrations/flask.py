"""The edge: where a request gets its correlation context, and where that context is reported.

For every request, before any view or other extension runs (a WSGI wrapper around the app):

1. read the hop the caller asks for (:func:`correlation.wire.from_environ`); refused values are
   logged escaped and truncated, counted, and replaced by a fresh ID;
2. bind the hop to the context for the whole request;
3. echo the correlation ID and this service's name on the response, whatever the status,
   unhandled exceptions included;
4. when the response is done: one access log line and RED metrics with the ID as exemplar
   (:func:`correlation.log.access.report_hop`). A 5xx is the hop's own failure (``origin`` = ``self``)
   unless one of its outgoing calls failed first (``downstream``, naming that peer).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from operator import itemgetter
from typing import Any

import flask
import werkzeug.routing
from flask.globals import _cv_request

from correlation import context, metrics, schema, wire
from correlation.context import Hop
from correlation.hops import OPEN_HOPS, OpenHop, end_http_hop, in_flight_counter, log_refused
from correlation.integrations import errors
from correlation.integrations.requests import instrument_requests
from correlation.metrics import listener, unshared
from correlation.settings import Settings

_log = logging.getLogger(schema.EDGE_LOGGER)
_ROUTE_KEY = "correlation.route"
#: The class of the exception the request raised last (handled by the app or not): its
#: ``error_type`` when the request fails. Set only when something raised.
_ERROR_KEY = "correlation.error"

StartResponse = Callable[..., Any]
_header_name = itemgetter(0)
_new_tuple = tuple.__new__  # see bench/README.md, "Why the hot path's code looks as it does"


class _Edge:
    """WSGI wrapper: binds the hop around the whole Flask app, so every hook and error sees it."""

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        settings: Settings,
        quiet_paths: frozenset[str],
        url_map: werkzeug.routing.Map,
    ) -> None:
        self.app = app
        self.url_map = url_map
        self.service = settings.service
        self.quiet_paths = quiet_paths
        self.header = settings.header
        self.trust = settings.trust_inbound
        #: What every response gets: (the ID header's name, the service header, the headers ours replace).
        self._echo = (
            settings.header,
            (schema.SERVICE_HEADER, settings.service),
            frozenset({settings.header.lower(), schema.SERVICE_HEADER.lower()}),
        )
        self._inbound_keys = wire.environ_keys_read(settings.header)
        metrics.count_in_flight(settings.service, in_flight_counter(settings.service))

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        if environ.keys().isdisjoint(self._inbound_keys):
            # Nothing on the wire (a client's first call, a health check): a new trail, and nothing
            # to judge (what wire.from_environ would answer).
            inbound = _new_tuple(wire.Inbound, (Hop.start(), None, (), None))
        else:
            inbound = wire.from_environ(environ, self.header, trusted=self.trust.trusts(environ.get("REMOTE_ADDR")))
        hop = inbound.hop
        token = context.bind(hop)
        if inbound.rejections:
            log_refused(_log, self.service, inbound.rejections, hop, before="inbound ")
        quiet = environ.get("PATH_INFO") in self.quiet_paths
        status = 500  # unless the app starts a response
        header, service_header, replaced = self._echo

        def echo_id(status_line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            nonlocal status
            status = int(status_line[:3])
            # Flask starts the response inside its request context: the rule it matched is at hand.
            flask_context = _cv_request.get(None)
            if flask_context is not None:
                rule = flask_context.request.url_rule
                environ[_ROUTE_KEY] = rule.rule if rule is not None else schema.UNMATCHED_ROUTE
            # The app's own ID or service header gives way to ours.
            if not replaced.isdisjoint(map(str.lower, map(_header_name, headers))):
                headers = [(k, v) for k, v in headers if k.lower() not in replaced]
            return start_response(status_line, [*headers, (header, hop.correlation_id), service_header], exc_info)

        if not quiet:
            OPEN_HOPS[hop.request_id] = _new_tuple(OpenHop, (self, inbound, environ, started))
        try:
            return self.app(environ, echo_id)
        except BaseException as exc:  # let through by Flask (PROPAGATE_EXCEPTIONS): still its failure
            environ.setdefault(_ERROR_KEY, type(exc))
            raise
        finally:
            if not quiet:
                # Absent when a dying worker already wrote this hop's end (hops.end_open_hops).
                if OPEN_HOPS.pop(hop.request_id, None) is not None:
                    self.report(environ, inbound, status, time.perf_counter() - started)
            context.reset(token)

    def route_of(self, environ: dict[str, Any]) -> str:
        """The route of a request that has not started its response: a worker killed mid-request,
        an exception Flask let through. Matched again from the environ; no hook on every request."""
        try:
            rule, _ = self.url_map.bind_to_environ(environ).match(return_rule=True)
        except Exception:  # noqa: BLE001 - 404, 405, a redirect, a broken environ: no rule, still a line
            return schema.UNMATCHED_ROUTE
        return rule.rule

    def report(
        self, environ: dict[str, Any], inbound: wire.Inbound, status: int, seconds: float, *, note: str = ""
    ) -> None:
        """The hop's end: RED metrics and the access line (``note`` is appended to its message)."""
        route = environ.get(_ROUTE_KEY) or self.route_of(environ)
        method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "")
        raised = environ.get(_ERROR_KEY)
        end_http_hop(self.service, inbound, method, route, path, status, seconds, raised, __file__, note=note)


class _FirstCallEdge(_Edge):
    """The edge until its first request, which tells whether the server's workers share their
    metrics (:mod:`correlation.metrics.unshared`); then a plain :class:`_Edge`, at no cost per request."""

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        self.__class__ = _Edge  # type: ignore[assignment]
        unshared.check_server(environ, self.service)
        return _Edge.__call__(self, environ, start_response)


def _noting_exceptions(handle: Callable[[Exception], Any]) -> Callable[[Exception], Any]:
    """``handle`` (Flask's handler of a view's or of an unhandled exception) noting the exception's
    class in the request's environ first. Called only when something raised: a request that
    succeeds pays nothing."""

    def noting(exc: Exception) -> Any:
        request_context = _cv_request.get(None)
        if request_context is not None:
            request_context.request.environ[_ERROR_KEY] = type(exc)
        return handle(exc)

    return noting


def _metrics_view() -> flask.Response:
    body, content_type = metrics.render(flask.request.headers.get("Accept"))
    return flask.Response(body, content_type=content_type)


class Correlation:
    """Flask extension: ``Correlation(app, settings)`` or ``Correlation().init_app(app)``.

    ``settings`` defaults to :meth:`Settings.from_env`. ``metrics_path`` serves Prometheus metrics
    (None: do not). Requests to ``quiet_paths`` keep their correlation ID but write no access
    line and no metrics (health checks and scrapes would drown the rest). ``propagate_requests``
    makes outgoing ``requests`` (and, when installed, ``httpx``) calls carry the hop (see
    :mod:`correlation.integrations.requests`).
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
        context.set_service(settings.service)
        app.extensions["correlation"] = self
        self.edge: _Edge = _FirstCallEdge(app.wsgi_app, settings, self.quiet_paths, app.url_map)
        app.wsgi_app = self.edge  # type: ignore[method-assign]
        # The exception behind a 5xx, for its access line's error_type: the app's own error handler
        # may turn it into the response (the demo's DownstreamError into a 502), so it is noted
        # where Flask hands it to a handler, handled or not.
        for name in ("handle_user_exception", "handle_exception"):
            setattr(app, name, _noting_exceptions(getattr(app, name)))
        if settings.error_bodies:
            errors.install(app)
        if settings.metrics_port:
            # Not on the application's port: the exemplars are other users' correlation IDs.
            # Under gunicorn the arbiter serves it (correlation.integrations.gunicorn.when_ready).
            if not unshared.under_gunicorn():
                listener.serve(settings.metrics_port)
        elif self.metrics_path:
            app.add_url_rule(self.metrics_path, "correlation_metrics", _metrics_view)
        if self.propagate_requests:
            instrument_requests(settings.header)
            try:  # httpx is optional: propagate through it too when it is installed
                from correlation.integrations.httpx import instrument_httpx
            except ImportError:
                pass
            else:
                instrument_httpx()
