"""The two tiny apps of P2: the same ``GET /ping`` -> "ok", bare and fully instrumented.

gunicorn -w 1 -k gthread --threads 4 "bench.apps:bare()"
LOKI_URL=http://127.0.0.1:3100 gunicorn -w 1 -k gthread --threads 4 "bench.apps:instrumented()"

For P2 with two workers (bench/p2_workers.py): ``prometheus_multiprocess()`` is the baseline of
prometheus_client's multiprocess mode. For the attribution (bench/attribution.py): ``floor()`` is
the yardstick of bench/floor.py; ``BENCH_OFF`` switches parts of the instrumented app off from
the bench side, ``BENCH_THREAD_NAMES=1`` names the OS threads (see bench/switches.py).
"""

from __future__ import annotations

import os
from typing import Any

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


def prometheus_multiprocess() -> flask.Flask:
    """Flask with prometheus_client's RED metrics in its multiprocess mode (PROMETHEUS_MULTIPROC_DIR
    set by the bench): the request histogram and the 5xx counter, with the exemplar offered
    (its multiprocess mode drops it). No ID, no logging: metrics only, the baseline of their cost."""
    import time

    from prometheus_client import Counter, Histogram

    app = _ping_app("prometheus_multiprocess")
    labels = ["service", "route", "method", "status"]
    duration = Histogram("http_server_request_duration_seconds", "Request duration.", labels)
    errors = Counter("http_server_errors", "5xx answers.", [*labels, "origin"])

    @app.before_request
    def started() -> None:
        flask.g.started = time.perf_counter()

    @app.after_request
    def observed(response: flask.Response) -> flask.Response:
        request = flask.request
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        status = str(response.status_code)
        exemplar = {"correlation_id": "0190c0a1b2c37d4e8f90a1b2c3d4e5f6"}
        duration.labels("bench", route, request.method, status).observe(time.perf_counter() - flask.g.started, exemplar)
        if response.status_code >= 500:
            errors.labels("bench", route, request.method, status, "self").inc(1, exemplar)
        return response

    return app


def floor() -> flask.Flask:
    """The same route with the guarantees written by hand at their least (bench/floor.py)."""
    return floor_app.install(_ping_app("floor"))


def django_bare() -> Any:
    """Django alone (bench/django_apps.py, for bench/p2_django.py)."""
    from bench import django_apps

    return django_apps.application(instrumented=False)


def django_instrumented() -> Any:
    """Django with the library as docs/integrations.md sets it up (bench/django_apps.py)."""
    from bench import django_apps

    return django_apps.application(instrumented=True)
