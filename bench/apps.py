"""The two tiny apps of P2: the same ``GET /ping`` -> "ok", bare and fully instrumented.

    gunicorn -w 1 -k gthread --threads 4 "bench.apps:bare()"
    LOKI_URL=http://127.0.0.1:3100 gunicorn -w 1 -k gthread --threads 4 "bench.apps:instrumented()"
"""

from __future__ import annotations

import flask


def _ping_app(name: str) -> flask.Flask:
    app = flask.Flask(name)

    @app.get("/ping")
    def ping() -> str:
        return "ok"

    return app


def bare() -> flask.Flask:
    """Flask alone: no logging setup, no extension."""
    return _ping_app("bare")


def instrumented() -> flask.Flask:
    """ID at the edge, JSON logs to stdout and Loki (LOKI_URL), access line, metrics, propagation."""
    from correlation import Correlation, Settings, setup_logging

    settings = Settings.from_env(service="bench")
    setup_logging(settings)
    app = _ping_app("instrumented")
    Correlation(app, settings)
    return app
