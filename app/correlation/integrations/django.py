"""The Django edge: :class:`CorrelationMiddleware`, the same hop, access line, metrics and error
bodies as the Flask edge (:mod:`correlation.integrations.flask`), for a Django project.

``pip install 'correlation-trail[django]'``, then in ``settings.py``::

    MIDDLEWARE = ["correlation.integrations.django.CorrelationMiddleware", *MIDDLEWARE]  # first
    CORRELATION = {"SERVICE_NAME": "orders"}  # optional: over the environment, same names

and ``path("metrics", correlation.integrations.django.metrics_view)`` in ``urls.py`` (or
``METRICS_PORT``). For every request:

1. the hop the caller asks for is read from the headers (:func:`correlation.wire.from_environ`,
   trusted by ``REMOTE_ADDR``: :mod:`correlation.trust`); refused values are logged escaped and
   counted, and a fresh ID takes their place;
2. the hop is bound for the whole request (every log line carries it, ``requests`` and httpx calls
   carry it on);
3. every response echoes the correlation ID and the service name, errors included;
4. at its end: one access line and RED metrics with the ID as exemplar
   (:func:`correlation.log.access.report_hop`). The route is the URL pattern that matched
   (``/orders/<int:order_id>``), never the path; a request no pattern matched is ``unmatched``. A
   5xx carries the ``error_type`` of the exception behind it and its ``origin``.

Django's default error pages (``DEBUG = False``, no ``handler404`` etc. of the project's own) become
RFC 9457 ``application/problem+json`` with the ID for clients that prefer JSON, or the page with
a line giving the ID (:mod:`correlation.problem`). The project's own handlers and the responses its
views return are left as they are. Off with ``CORRELATION_ERROR_BODIES=false``.

Put the middleware first in ``MIDDLEWARE``: the middleware before it run outside the hop, and an
exception one of them raises is not seen.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

try:
    import django  # noqa: F401 - the check that the extra is installed
except ImportError as error:  # the extra is not installed: say which one to install
    raise ImportError(
        "correlation.integrations.django needs Django: pip install 'correlation-trail[django]'", name="django"
    ) from error

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import got_request_exception
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, HttpResponseNotAllowed
from django.urls import Resolver404, get_resolver, get_urlconf, resolve
from django.utils.log import log_response
from django.views import defaults

from correlation import context, metrics, problem, schema, wire
from correlation.context import Hop
from correlation.hops import OPEN_HOPS, OpenHop, end_http_hop, in_flight_counter, log_refused
from correlation.integrations.requests import instrument_requests
from correlation.metrics import listener, unshared
from correlation.settings import ConfigError, Settings

__all__ = ["CorrelationMiddleware", "DjangoOptions", "load_options", "metrics_view"]

_log = logging.getLogger(schema.EDGE_LOGGER)
#: In the request's environ (``request.META``): the matched route, once the response is there.
_ROUTE_KEY = "correlation.route"
#: The exception behind the response (a view's, or an uncaught one anywhere after this middleware).
_ERROR_KEY = "correlation.error"
_new_tuple = tuple.__new__  # see bench/README.md, "Why the hot path's code looks as it does"

#: The keys of ``settings.CORRELATION`` read as the environment variable of the same name (a value
#: there wins over the environment's); logging (``LOG_*``, ``LOKI_*``) is configured in ``LOGGING``.
SETTINGS_KEYS = (
    "SERVICE_NAME",
    "DEPLOY_ENV",
    "CORRELATION_HEADER",
    "CORRELATION_TRUST_INBOUND",
    "CORRELATION_ERROR_BODIES",
    "METRICS_PORT",
)
#: The keys of ``settings.CORRELATION`` that are the middleware's own options.
OPTION_KEYS = ("QUIET_PATHS", "PROPAGATE_REQUESTS")
#: Django's own error views: a response of theirs says nothing the project chose, so it may carry the ID.
_DEFAULT_ERROR_VIEWS = {
    400: defaults.bad_request,
    403: defaults.permission_denied,
    404: defaults.page_not_found,
    500: defaults.server_error,
}
#: ``detail`` of the problem body: the status's meaning, never the exception's message.
_DETAILS = {
    400: "The request could not be understood by the server.",
    403: "You do not have the permission to access the requested resource.",
    404: "The requested resource was not found on this server.",
    405: "The method is not allowed for the requested URL.",
    500: problem.INTERNAL_ERROR_DETAIL,
}


@dataclass(frozen=True)
class DjangoOptions:
    """What the middleware runs with: the library's :class:`Settings`, the paths that write no
    access line and no metrics, and whether outgoing ``requests`` and httpx calls carry the hop."""

    settings: Settings
    quiet_paths: frozenset[str] = frozenset({"/metrics", "/healthz"})
    propagate_requests: bool = True


def load_options(configured: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> DjangoOptions:
    """The options from ``configured`` (default: ``settings.CORRELATION``, may be absent) over the
    environment (``SERVICE_NAME``, ``CORRELATION_*``, ...: :meth:`Settings.from_env`).

    Every value is checked as its environment variable is; a bad one, or an unknown key, is
    :class:`ImproperlyConfigured` naming it."""
    if configured is None:
        configured = getattr(django_settings, "CORRELATION", None) or {}
    if not isinstance(configured, Mapping):
        raise ImproperlyConfigured(f"settings.CORRELATION must be a dict, not {type(configured).__name__}")
    unknown = sorted(set(configured) - set(SETTINGS_KEYS) - set(OPTION_KEYS))
    if unknown:
        raise ImproperlyConfigured(
            f"settings.CORRELATION: unknown key(s) {', '.join(map(repr, unknown))}: expected some of "
            f"{', '.join((*SETTINGS_KEYS, *OPTION_KEYS))} (logging goes in LOGGING)"
        )
    environment = dict(os.environ if env is None else env)
    for key in SETTINGS_KEYS:
        if key in configured:
            value = configured[key]
            environment[key] = str(value).lower() if isinstance(value, bool) else str(value)
    try:
        settings = Settings.from_env(environment)
    except ConfigError as exc:
        raise ImproperlyConfigured(f"settings.CORRELATION or the environment: {exc}") from None
    quiet = configured.get("QUIET_PATHS", DjangoOptions.quiet_paths)
    if isinstance(quiet, str) or not all(isinstance(p, str) and p.startswith("/") for p in quiet):
        raise ImproperlyConfigured(f"settings.CORRELATION['QUIET_PATHS']={quiet!r}: expected a list of paths (/...)")
    propagate = configured.get("PROPAGATE_REQUESTS", True)
    if not isinstance(propagate, bool):
        raise ImproperlyConfigured(f"settings.CORRELATION['PROPAGATE_REQUESTS']={propagate!r}: expected True or False")
    return DjangoOptions(settings, frozenset(quiet), propagate)


class CorrelationMiddleware:
    """Django middleware: the request's hop, bound around everything after it in ``MIDDLEWARE``,
    its access line and metrics, the ID on every response. Sync (WSGI); Django adapts it under
    ASGI. Configured by :func:`load_options` when Django loads the middleware."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response
        options = load_options()
        settings = options.settings
        self.settings = settings
        self.service = settings.service
        self.header = settings.header
        self.trust = settings.trust_inbound
        self.quiet_paths = options.quiet_paths
        self.error_bodies = settings.error_bodies
        self._inbound_keys = wire.environ_keys_read(settings.header)
        self._first_request = True
        context.set_service(settings.service)
        metrics.count_in_flight(settings.service, in_flight_counter(settings.service))
        got_request_exception.connect(_note_uncaught, dispatch_uid=__name__)
        global _metrics_elsewhere
        _metrics_elsewhere = bool(settings.metrics_port)
        # Not on the application's port: the exemplars are other users' correlation IDs. Under
        # gunicorn the arbiter serves it (correlation.integrations.gunicorn.when_ready).
        if settings.metrics_port and not unshared.under_gunicorn():
            listener.serve(settings.metrics_port)
        if options.propagate_requests:
            instrument_requests(settings.header)
            try:  # httpx is optional: propagate through it too when it is installed
                from correlation.integrations.httpx import instrument_httpx
            except ImportError:
                pass
            else:
                instrument_httpx()

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        environ = request.META
        if self._first_request:  # whether the server's workers share their metrics
            self._first_request = False
            unshared.check_server(environ, self.service)
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
        status = 500  # unless a response comes back
        if not quiet:
            OPEN_HOPS[hop.request_id] = _new_tuple(OpenHop, (self, inbound, environ, started))
        try:
            response = self.get_response(request)
            status = response.status_code
            if status >= 400:
                response = self._failed(request, response)
            # The app's own ID or service header gives way to ours.
            response[self.header] = hop.correlation_id
            response[schema.SERVICE_HEADER] = self.service
            match = request.resolver_match
            environ[_ROUTE_KEY] = "/" + match.route if match is not None else schema.UNMATCHED_ROUTE
            return response
        finally:
            if not quiet:
                # Absent when a dying worker already wrote this hop's end (hops.end_open_hops).
                if OPEN_HOPS.pop(hop.request_id, None) is not None:
                    self.report(environ, inbound, status, time.perf_counter() - started)
            context.reset(token)

    def process_exception(self, request: HttpRequest, exception: Exception) -> None:
        """Note the exception a view raised (its ``error_type`` when the request fails); Django's
        handling of it goes on."""
        request.META[_ERROR_KEY] = exception

    def _failed(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        """A 4xx/5xx response: Django's ``django.request`` line written inside the hop (Django writes
        it after the middleware, without the ID), and Django's default body replaced by one with the ID."""
        if self.error_bodies and _default_error_body(request, response) and request.method != "HEAD":
            _with_id(request, response)  # a default body: an HttpResponse, never streamed
        log_response("%s: %s", response.reason_phrase, request.path, response=response, request=request)
        return response

    def route_of(self, environ: dict[str, Any]) -> str:
        """The route of a request without a response yet (a worker killed mid-request): matched
        again from the environ; no cost on every request."""
        try:
            match = resolve(environ.get("PATH_INFO", "/"))
        except Resolver404:
            return schema.UNMATCHED_ROUTE
        except Exception:  # noqa: BLE001 - a broken urlconf or environ: no route, still a line
            return schema.UNMATCHED_ROUTE
        return "/" + match.route

    def report(
        self, environ: dict[str, Any], inbound: wire.Inbound, status: int, seconds: float, *, note: str = ""
    ) -> None:
        """The hop's end: RED metrics and the access line (``note`` is appended to its message)."""
        route = environ.get(_ROUTE_KEY) or self.route_of(environ)
        method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "")
        raised = environ.get(_ERROR_KEY)
        raised_type = None if raised is None else type(raised)
        end_http_hop(self.service, inbound, method, route, path, status, seconds, raised_type, __file__, note=note)


def _note_uncaught(sender: Any, request: HttpRequest | None = None, **_: Any) -> None:  # noqa: ARG001 - Django's signal
    """Django's ``got_request_exception``: an exception no one handled (raised by a view or by a
    middleware after this one) is about to become a 500; its class is the line's ``error_type``."""
    raised = sys.exception()
    if request is not None and raised is not None:
        request.META.setdefault(_ERROR_KEY, raised)


def _default_error_body(request: HttpRequest, response: HttpResponseBase) -> bool:
    """Whether ``response`` is one of Django's own error answers, which the project did not choose:
    a default error view's answer to an exception (or to a path no pattern matched), or the empty
    405 of a view that does not take the method."""
    if isinstance(response, HttpResponseNotAllowed):
        return not response.content
    default_view = _DEFAULT_ERROR_VIEWS.get(response.status_code)
    if default_view is None or django_settings.DEBUG:  # DEBUG: Django's technical pages, for the developer
        return False
    raised = request.META.get(_ERROR_KEY)
    unmatched = response.status_code == 404 and request.resolver_match is None
    if raised is None and not unmatched:
        return False  # a response the view returned: the project's own
    if raised is not None and response.status_code == 404 and not isinstance(raised, Http404):
        return False
    return bool(get_resolver(get_urlconf()).resolve_error_handler(response.status_code) is default_view)


def _with_id(request: HttpRequest, response: Any) -> None:
    """Replace ``response``'s body by one with the correlation ID, in the type the client prefers."""
    correlation_id = context.correlation_id()
    status = response.status_code
    if not problem.wants_html(request.headers.get("Accept")):
        title = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else response.reason_phrase
        body = problem.problem(status, title, _DETAILS.get(status), correlation_id)
        response.content = json.dumps(body, separators=(",", ":")).encode()
        response["Content-Type"] = problem.PROBLEM_JSON
    else:
        page = response.content.decode(response.charset or "utf-8", "replace")
        line = problem.id_line_html(correlation_id)
        at = page.rfind("</body>")
        page = page[:at] + line + page[at:] if at != -1 else page + line
        response.content = page.encode(response.charset or "utf-8")
        if not response.get("Content-Type", "").startswith("text/html"):
            response["Content-Type"] = f"text/html; charset={response.charset or 'utf-8'}"
    if "Content-Length" in response:  # set by a middleware after this one (CommonMiddleware)
        response["Content-Length"] = str(len(response.content))


#: METRICS_PORT is set: ``/metrics`` is served there only, never on the application's port.
_metrics_elsewhere = False


def metrics_view(request: HttpRequest) -> HttpResponse:
    """``/metrics`` on the application's port: ``path("metrics", metrics_view)`` in ``urls.py``.
    A 404 when ``METRICS_PORT`` is set: the exemplars are other users' correlation IDs."""
    if _metrics_elsewhere:
        raise Http404("metrics are served on METRICS_PORT")
    body, content_type = metrics.render(request.headers.get("Accept"))
    return HttpResponse(body, content_type=content_type)
