"""The apps of the ASGI P2 (bench/p2_asgi.py): the same FastAPI ``GET /ping`` -> "ok", each built
by a factory for ``uvicorn --factory``.

uvicorn --factory bench.asgi_apps:bare
LOKI_URL=http://127.0.0.1:3100 uvicorn --factory bench.asgi_apps:instrumented
uvicorn --factory bench.asgi_apps:opentelemetry

For the ASGI attribution (bench/attribution_asgi.py, bench/asgi_inprocess.py): ``passthrough()``
and ``floor()`` are its yardsticks; ``BENCH_OFF`` switches parts of the instrumented app off from
the bench side and ``BENCH_STDOUT_FLUSH_INTERVAL`` writes stdout by size, as for bench/apps.py.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse


def _ping_app() -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/ping", response_class=PlainTextResponse)
    async def ping() -> str:
        return "ok"

    return app


def bare() -> FastAPI:
    """FastAPI alone: no logging setup, no middleware."""
    return _ping_app()


def instrumented() -> FastAPI:
    """Ours: ID at the edge, JSON logs to stdout and Loki (LOKI_URL), access line, metrics, propagation."""
    import os

    from bench import switches
    from correlation import Settings, setup_logging
    from correlation.integrations.asgi import CorrelationMiddleware

    off = switches.off_parts()
    app = _ping_app()
    settings = Settings.from_env(service="bench")
    handlers = setup_logging(settings)
    app.add_middleware(CorrelationMiddleware, settings=settings)
    switches.apply(off)
    interval = os.environ.get("BENCH_STDOUT_FLUSH_INTERVAL")
    if interval:  # the attribution under valgrind: stdout written by size, as at full speed
        for handler in handlers:
            if hasattr(handler, "flush_interval"):
                handler.flush_interval = float(interval)
    return app


def asgi_correlation_id() -> FastAPI:
    """The peer, as its README sets it up: ``CorrelationIdMiddleware`` (reads or makes the
    ``X-Request-ID``, binds it, echoes it). No access line, no metrics, no shipping."""
    from asgi_correlation_id import CorrelationIdMiddleware

    app = _ping_app()
    app.add_middleware(CorrelationIdMiddleware)
    return app


def opentelemetry() -> FastAPI:
    """OpenTelemetry's ASGI instrumentation as its docs set it up: ``OpenTelemetryMiddleware`` around
    the app (a server span per request, plus an ``http send`` span per message sent, W3C context
    read and written), with an SDK ``TracerProvider`` that has no span processor: every span is
    sampled, recorded and ended, then goes nowhere (no exporter, no batching thread). Its metrics go
    to the default no-op meter. So it costs what tracing costs in process, without export or logs."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.sdk.trace import TracerProvider

    app = _ping_app()
    app.add_middleware(OpenTelemetryMiddleware, tracer_provider=TracerProvider())
    return app


def passthrough() -> FastAPI:
    """A yardstick: the least any middleware that times a response to its last byte pays (a
    coroutine around the app and a wrapper around every ``send``, noting the status and the time of
    the last body message), and nothing else: no ID, no line, no metrics."""
    import time

    app = _ping_app()

    def timing(inner: Any) -> Any:
        async def middleware(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await inner(scope, receive, send)
                return
            started, status, ended = time.perf_counter(), 0, 0.0

            async def noting_send(message: Any) -> None:
                nonlocal status, ended
                kind = message["type"]
                if kind == "http.response.start":
                    status = message["status"]
                    await send(message)
                elif kind == "http.response.body" and not message.get("more_body"):
                    await send(message)
                    ended = time.perf_counter()
                else:
                    await send(message)

            await inner(scope, receive, noting_send)
            scope["bench.timed"] = (status, (ended or time.perf_counter()) - started)

        return middleware

    app.add_middleware(timing)
    return app


def floor() -> FastAPI:
    """The same route with the guarantees written by hand at their least (bench/asgi_floor.py)."""
    from bench import asgi_floor

    app = _ping_app()
    app.add_middleware(asgi_floor.wrap)
    return app


def floor_edge() -> FastAPI:
    """The floor's edge alone: ID, context, echoed headers, in-flight registry, timing; no line, no metrics."""
    from bench import asgi_floor

    app = _ping_app()
    app.add_middleware(asgi_floor.wrap, parts=frozenset({"edge"}))
    return app
