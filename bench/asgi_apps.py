"""The apps of the ASGI P2 (bench/p2_asgi.py): the same FastAPI ``GET /ping`` -> "ok", each built
by a factory for ``uvicorn --factory``.

uvicorn --factory bench.asgi_apps:bare
LOKI_URL=http://127.0.0.1:3100 uvicorn --factory bench.asgi_apps:instrumented
uvicorn --factory bench.asgi_apps:opentelemetry
"""

from __future__ import annotations

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
    from correlation import Settings, setup_logging
    from correlation.integrations.asgi import CorrelationMiddleware

    app = _ping_app()
    settings = Settings.from_env(service="bench")
    setup_logging(settings)
    app.add_middleware(CorrelationMiddleware, settings=settings)
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
