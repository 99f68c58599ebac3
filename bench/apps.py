"""The two tiny apps of P2: the same ``GET /ping`` -> "ok", bare and fully instrumented.

gunicorn -w 1 -k gthread --threads 4 "bench.apps:bare()"
LOKI_URL=http://127.0.0.1:3100 gunicorn -w 1 -k gthread --threads 4 "bench.apps:instrumented()"

For the attribution (bench/attribution.py): ``floor()`` is the yardstick of bench/floor.py;
``BENCH_OFF`` switches parts of the instrumented app
off from the bench side, ``BENCH_THREAD_NAMES=1`` names the OS threads (see bench/switches.py).
"""

from __future__ import annotations

import os

import flask

from bench import floor as floor_app
from bench import switches


def _ping_app(name: str) -> flask.Flask:
    if os.environ.get("BENCH_THREAD_NAMES") == "1":
        switches.name_os_threads()
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

    off = switches.off_parts()
    app = _ping_app("instrumented")
    settings = Settings.from_env(service="bench")
    handlers = setup_logging(settings)
    Correlation(app, settings)
    switches.apply(off)
    interval = os.environ.get("BENCH_STDOUT_FLUSH_INTERVAL")
    if interval:  # the attribution under valgrind: stdout written by size, as at full speed
        for handler in handlers:
            if hasattr(handler, "flush_interval"):
                handler.flush_interval = float(interval)
    return app


def floor() -> flask.Flask:
    """The same route with the guarantees written by hand at their least (bench/floor.py)."""
    return floor_app.install(_ping_app("floor"))
