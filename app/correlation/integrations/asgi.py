"""The edge for ASGI applications (Starlette, FastAPI, Litestar, Quart, plain ASGI 3): the same
hop as the Flask edge's, read, bound, echoed and reported by the same core.

``pip install 'correlation-trail[asgi]'`` (the pinned Starlette, FastAPI and uvicorn; the
middleware itself needs none of them)::

    app = FastAPI()
    app.add_middleware(CorrelationMiddleware, settings=settings)
    # or, outermost, so that Starlette's own 500 (or an Exception handler) gets the ID header:
    app = CorrelationMiddleware(app, settings)

For every ``http`` and ``websocket`` connection (``lifespan`` passes through untouched):

1. the hop the caller asks for is read from the headers (:func:`correlation.wire.read`); the
   peer judged by ``CORRELATION_TRUST_INBOUND`` is the socket's (``scope["client"]``); refused
   values are logged escaped, counted, and replaced by a fresh ID;
2. the hop is bound to the context of the connection's own task: concurrent requests on one
   event loop never share it, and tasks and threads started from the request
   (``asyncio.create_task``, Starlette's ``run_in_threadpool``) copy it;
3. the response carries the correlation ID and this service's name, whatever its status;
4. at the end, one access line (:func:`correlation.log.access.report_hop`) and the RED metrics
   with the ID as exemplar. A streaming response is timed to its last body message
   (``more_body`` false), not to its first. A websocket's line is written when it closes (status
   101 once accepted, its duration the connection's); it stays out of the request-duration
   histogram, whose quantiles a connection's lifetime would distort.

An exception the application lets through is logged once, with its traceback and the hop's IDs,
and answered with a 500 carrying the ID (RFC 9457 problem+json, or an HTML page for a browser:
:mod:`correlation.problem`; plain text with ``CORRELATION_ERROR_BODIES=false``). Its class is
the access line's ``error_type``. If the response had already started, the client's response is
cut and the line says so. A client that goes away before its response ends gets a line too:
status 499 (nginx's "client closed request") when nothing was sent yet.

The route label is the template of the route Starlette matched (``scope["route"]``, FastAPI's and
Starlette's routers set it); otherwise ``route_of(scope)`` when given, else ``unmatched``: never
the raw path, which would make the metric's series unbounded.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from operator import itemgetter
from time import perf_counter
from typing import Any

import orjson

from correlation import context, metrics, problem, schema, wire
from correlation.context import Hop, bind, reset
from correlation.error_type import error_type
from correlation.hops import OPEN_HOPS, OpenHop, end_http_hop, in_flight_counter, log_refused
from correlation.integrations.requests import instrument_requests
from correlation.loki.handler import flush_every_handler
from correlation.metrics import listener, store, unshared
from correlation.settings import Settings

__all__ = ["CLIENT_CLOSED_REQUEST", "CorrelationMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The access line's status of a request whose client left before any response was sent.
CLIENT_CLOSED_REQUEST = 499

_log = logging.getLogger(schema.EDGE_LOGGER)
#: The class of the exception the application let through, for the access line's ``error_type``.
_ERROR_KEY = "correlation.error"
_new_tuple = tuple.__new__  # see bench/README.md, "Why the hot path's code looks as it does"
_Inbound = wire.Inbound
#: A header's name: mapped over a message's headers in C (the scope's names are lower-case, as inbound reads them).
_name_of = itemgetter(0)


def _is_http(scope: MutableMapping[str, Any]) -> bool:
    """An HTTP request's scope: websockets are connections, not requests, for the in-flight gauge."""
    return scope.get("type") == "http"


class CorrelationMiddleware:
    """ASGI middleware: ``CorrelationMiddleware(app, settings)`` or Starlette's
    ``app.add_middleware(CorrelationMiddleware, settings=...)``.

    ``settings`` defaults to :meth:`Settings.from_env`. ``metrics_path`` serves Prometheus metrics
    (None: do not; with ``METRICS_PORT`` set they are served there instead). Requests to
    ``quiet_paths`` keep their correlation ID but write no access line and no metrics.
    ``propagate_requests`` makes outgoing ``requests`` (and, when installed, ``httpx``) calls carry
    the hop. ``route_of`` names the route of a request no Starlette router matched (None:
    ``unmatched``); it must return a bounded set of names.
    """

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings | None = None,
        *,
        metrics_path: str | None = "/metrics",
        quiet_paths: Iterable[str] = ("/metrics", "/healthz"),
        propagate_requests: bool = True,
        route_of: Callable[[Scope], str | None] | None = None,
    ) -> None:
        self.app = app
        settings = settings or Settings.from_env()
        self.settings = settings
        self.service = settings.service
        self.header = settings.header
        self.trust = settings.trust_inbound
        self.quiet_paths = frozenset(quiet_paths)
        self.route_of = route_of
        self.error_bodies = settings.error_bodies
        self._wanted = frozenset(name.encode("latin-1") for name in wire.names_read(settings.header))
        self._header_name = settings.header.lower().encode("latin-1")
        self._service_header = (schema.SERVICE_HEADER.lower().encode("latin-1"), settings.service.encode("latin-1"))
        self._replaced = frozenset({self._header_name, self._service_header[0]})
        context.set_service(settings.service)
        metrics.count_in_flight(settings.service, in_flight_counter(settings.service, _is_http))
        # Whether this server's workers share their metrics is known at the first request
        # (correlation.metrics.unshared), once a process.
        self._workers_unchecked = True
        self.metrics_path: str | None = None
        if settings.metrics_port:
            # Not on the application's port: the exemplars are other users' correlation IDs.
            # Under gunicorn the arbiter serves it (correlation.integrations.gunicorn.when_ready).
            if not unshared.under_gunicorn():
                listener.serve(settings.metrics_port)
        else:
            self.metrics_path = metrics_path
        if propagate_requests:
            instrument_requests(settings.header)
            try:  # httpx is optional: propagate through it too when it is installed
                from correlation.integrations.httpx import instrument_httpx
            except ImportError:
                pass
            else:
                instrument_httpx()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # An HTTP request is served here, in one coroutine: its hop, its send wrapper and its end
        # are not methods of their own, each of which would be one more frame (or one more
        # coroutine) on every request. Why each step looks as it does: bench/README.md, "ASGI P2".
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await self._websocket(scope, receive, send)
            elif scope["type"] == "lifespan":  # the app's; the shipper's lines delivered before shutdown completes
                await self.app(scope, receive, _delivering_at_shutdown(send))
            else:  # any extension: not ours
                await self.app(scope, receive, send)
            return
        if self._workers_unchecked:
            self._workers_unchecked = False
            unshared.check_process(self.service)
        started = perf_counter()
        if self._wanted.isdisjoint(map(_name_of, scope["headers"])):
            # None of the headers read was sent (a client's first call, a health check): a new
            # trail, and nothing to judge, what self.inbound would answer. Looked for in C.
            inbound = _new_tuple(_Inbound, (Hop.start(), None, (), None))
        else:
            inbound = self.inbound(scope)
        hop = inbound.hop
        token = bind(hop)
        if inbound.rejections:
            log_refused(_log, self.service, inbound.rejections, hop, before="inbound ")
        path = scope.get("path", "")
        quiet = path in self.quiet_paths
        app = self._serve_metrics if path == self.metrics_path else self.app
        status = 0  # no response started yet
        ended = 0.0  # when the response's last body message was sent
        left = -1  # the status sent when the client went away (0: none yet); -1: it did not
        raised: type[BaseException] | None = None

        async def noting_receive() -> Message:
            nonlocal left
            message = await receive()
            if message["type"] == "http.disconnect" and not ended and left < 0:
                left = status
            return message

        async def echoing_send(message: Message) -> None:
            nonlocal status, ended
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                # A new message, not the app's changed: an app may send the same dict every time.
                message = {**message, "headers": self._echo(message.get("headers", ()), hop.correlation_id)}
                await send(message)
            elif kind == "http.response.body":
                await send(message)
                if not message.get("more_body", False):
                    ended = perf_counter()  # timed to the last byte, not to the first
            elif kind == "http.response.pathsend":  # the whole file in one message (ASGI extension)
                await send(message)
                ended = perf_counter()
            else:
                await send(message)

        if not quiet:
            OPEN_HOPS[hop.request_id] = _new_tuple(OpenHop, (self, inbound, scope, started))
        note = ""
        try:
            await app(scope, noting_receive, echoing_send)
        except Exception as exc:  # noqa: BLE001 - the edge is where an unhandled exception is answered
            raised = scope[_ERROR_KEY] = type(exc)
            _log.error("unhandled %s in %s %s", error_type(raised), scope.get("method"), path, exc_info=exc)
            if ended:
                note = f" (raised after its {status} response was sent)"
            elif status:
                note = f" (raised after its response started with {status}: the response was cut)"
            else:
                await self._answer_error(scope, send, hop.correlation_id)
            status, ended = 500, ended or perf_counter()
        finally:
            if not quiet and OPEN_HOPS.pop(hop.request_id, None) is not None:
                # Absent when a dying worker already wrote this hop's end (hops.end_open_hops).
                if (left >= 0 or not ended) and raised is None:  # an exception's 500 says more
                    note, status = self._unfinished(status, left)
                # self.report, inline: the route Starlette's router matched, else self.route's rules.
                template = getattr(scope.get("route"), "path_format", None)
                end_http_hop(
                    self.service, inbound, scope.get("method", "GET"),
                    template if type(template) is str and template else self.route(scope), path, status,
                    (ended or perf_counter()) - started, raised, __file__, note=note,
                )  # fmt: skip
            reset(token)

    def inbound(self, scope: Scope) -> wire.Inbound:
        """The hop a connection asks for (a fresh one when it sends none of the headers read)."""
        wanted = self._wanted
        found: dict[str, str] | None = None
        for name, value in scope["headers"]:
            if name in wanted:
                if found is None:
                    found = {}
                key, text = name.decode("latin-1"), value.decode("latin-1")
                # Repeated, they are joined as a WSGI server joins them: a list is no valid ID.
                found[key] = f"{found[key]},{text}" if key in found else text
        if found is None:
            return _new_tuple(_Inbound, (Hop.start(), None, (), None))
        client = scope.get("client")
        trusted = self.trust.trusts(client[0] if client else None)
        return wire.read(lambda header: found.get(header.lower()), self.header, trusted=trusted)

    def _echo(self, headers: Iterable[tuple[bytes, bytes]], correlation_id: str) -> list[tuple[bytes, bytes]]:
        """``headers`` with ours added (the application's own ID or service header gives way)."""
        replaced = self._replaced
        # Whether the app set one is asked in C over the names of a list (what frameworks send);
        # any other iterable (a generator: read once) takes the loop.
        if type(headers) is not list or not replaced.isdisjoint(map(bytes.lower, map(_name_of, headers))):
            headers = [item for item in headers if item[0].lower() not in replaced]
        return [*headers, (self._header_name, correlation_id.encode("latin-1")), self._service_header]

    def _begin(self, scope: Scope) -> tuple[float, wire.Inbound, Hop, contextvars.Token[Hop | None]]:
        """A connection's hop starts: when, what it was sent, the hop bound to this task (the
        token resets it), refused values logged and counted."""
        started = perf_counter()
        inbound = self.inbound(scope)
        hop = inbound.hop
        token = bind(hop)
        if inbound.rejections:
            log_refused(_log, self.service, inbound.rejections, hop, before="inbound ")
        return started, inbound, hop, token

    @staticmethod
    def _unfinished(status: int, left: int) -> tuple[str, int]:
        """The note and status of a response the client did not get whole: it went away when
        ``left`` had been sent (0: nothing; -1: it did not go, the application stopped short)."""
        if left > 0:
            return f" (client disconnected before the response ended; {left} was sent)", status
        if left == 0:
            return " (client disconnected before any response)", CLIENT_CLOSED_REQUEST
        if status:
            return " (the application returned before its response ended)", status
        return " (the application returned no response)", 500

    async def _answer_error(self, scope: Scope, send: Send, correlation_id: str) -> None:
        """Answer a 500 with the ID; a connection already gone is left alone."""
        accept = None
        for name, value in scope["headers"]:
            if name == b"accept":
                accept = value.decode("latin-1")
                break
        title, detail = problem.INTERNAL_ERROR_TITLE, problem.INTERNAL_ERROR_DETAIL
        if not self.error_bodies:
            content_type, body = b"text/plain; charset=utf-8", title.encode()
        elif problem.wants_html(accept):
            content_type = b"text/html; charset=utf-8"
            body = problem.error_page_html(500, title, detail, correlation_id).encode()
        else:
            content_type = problem.PROBLEM_JSON.encode()
            body = orjson.dumps(problem.problem(500, title, detail, correlation_id))
        headers = self._echo([(b"content-type", content_type), (b"content-length", b"%d" % len(body))], correlation_id)
        try:
            await send({"type": "http.response.start", "status": 500, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        except Exception:  # noqa: BLE001 - the client is gone: the access line still says 500
            pass

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        started, inbound, hop, token = self._begin(scope)
        status = 0

        async def echoing_send(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind == "websocket.accept":
                status = 101
                message = {**message, "headers": self._echo(message.get("headers", ()), hop.correlation_id)}
            elif kind == "websocket.http.response.start":  # a denial with a body (ASGI extension)
                status = message["status"]
                message = {**message, "headers": self._echo(message.get("headers", ()), hop.correlation_id)}
            elif kind == "websocket.close" and not status:
                status = 403  # closed before the handshake: the server refuses it with a 403
            await send(message)

        quiet = scope.get("path", "") in self.quiet_paths
        if not quiet:
            OPEN_HOPS[hop.request_id] = _new_tuple(OpenHop, (self, inbound, scope, started))
        note = ""
        try:
            await self.app(scope, receive, echoing_send)
        except Exception as exc:  # noqa: BLE001 - the edge is where an unhandled exception is answered
            scope[_ERROR_KEY] = type(exc)
            _log.error("unhandled %s in websocket %s", error_type(type(exc)), scope.get("path"), exc_info=exc)
            note = f" (raised after the handshake, status {status})" if status else ""
            try:  # 1011: the server met an unexpected condition (RFC 6455); before accept, a 403
                await send({"type": "websocket.close", "code": 1011})
            except Exception:  # noqa: BLE001 - the connection is gone already
                pass
            status = 500
        finally:
            if not quiet and OPEN_HOPS.pop(hop.request_id, None) is not None:
                self.report(scope, inbound, status or 403, perf_counter() - started, note=note)
            reset(token)

    def route(self, scope: Scope) -> str:
        """The route template of a request: Starlette's matched route, ``route_of``, or ``unmatched``."""
        matched = scope.get("route")
        if matched is not None:
            template = getattr(matched, "path_format", None)  # Starlette's Route, WebSocketRoute, Mount
            if isinstance(template, str) and template:
                return template
        if self.route_of is not None:
            try:
                named = self.route_of(scope)
            except Exception:  # noqa: BLE001 - a broken route_of must not lose the line
                named = None
            if named:
                return named
        return schema.UNMATCHED_ROUTE

    def report(
        self, environ: MutableMapping[str, Any], inbound: wire.Inbound, status: int, seconds: float, *, note: str = ""
    ) -> None:
        """The hop's end: RED metrics (HTTP only) and the access line (``note`` is appended to its
        message). ``environ`` is the connection's ASGI scope (the name is the open-hop registry's)."""
        scope = environ
        method = scope.get("method", "GET")  # a websocket's handshake is a GET
        end_http_hop(
            self.service, inbound, method, self.route(scope), scope.get("path", ""), status, seconds,
            scope.get(_ERROR_KEY), __file__, note=note, metered=scope.get("type") == "http",
        )  # fmt: skip

    async def _serve_metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        unshared.check_process(self.service)  # a worker started after the first request, say
        accept = None
        for name, value in scope["headers"]:
            if name == b"accept":
                accept = value.decode("latin-1")
                break
        body, content_type = metrics.render(accept)
        headers = [(b"content-type", content_type.encode("latin-1")), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _delivering_at_shutdown(send: Send) -> Send:
    """The lifespan's ``send``: before the server hears that shutdown is complete, every Loki
    handler delivers what it holds and this process's metrics are sampled. uvicorn, once shut down
    on SIGTERM, raises SIGTERM again with the handler it found, which is the default one for a
    plain uvicorn process and under gunicorn's uvicorn workers: the process then ends by the
    signal, without atexit or ``logging.shutdown``, and what the shipper still held was lost,
    uncounted. Every request has ended by then (uvicorn waits for them first)."""

    async def sending(message: Message) -> None:
        if message.get("type") in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            await asyncio.to_thread(_deliver_everything)  # off the loop: it waits on the network
        await send(message)

    return sending


def _deliver_everything() -> None:
    flush_every_handler()
    store.sample_now()  # the last figures in this worker's file (its buffered lines: none left)
