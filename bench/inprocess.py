"""The request thread's time per request, in one process: what instruction counts cannot show.

The attribution's instruction counts (bench/attribution.py) do not move between runs, but they
are not time: C code (orjson, zlib) runs several instructions a cycle, the interpreter fewer. Here
each app's WSGI callable is called in a loop on one thread, the same environ each time, and
``time.thread_time()`` (this thread's CPU, not the sender's or the flusher's) is divided by the
requests; apps and switched-off parts alternate round by round, so a neighbour's load moves them
all alike. No gunicorn: its ~600 k instructions a request are the same for every app.

Run by ``python -m bench attribution`` in a child process (``python -m bench.inprocess``, JSON on
stdout): the apps set up logging and metrics once per process.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

#: name -> (app, the parts switched off): parts are switched in this process between rounds.
VARIANTS: dict[str, tuple[str, frozenset[str]]] = {
    "bare Flask": ("bare", frozenset()),
    "floor (bench/floor.py)": ("floor", frozenset()),
    "instrumented": ("instrumented", frozenset()),
    "- access line": ("instrumented", frozenset({"access"})),
    "- metrics": ("instrumented", frozenset({"metrics"})),
    "edge only (no report at all)": ("instrumented", frozenset({"report"})),
}

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _environ() -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET", "PATH_INFO": "/ping", "QUERY_STRING": "", "SERVER_NAME": "bench",
        "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "bench",
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr,
    }  # fmt: skip


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
    pass


def _serve(app: WSGIApp, requests: int) -> float:
    """Microseconds of this thread's CPU per request."""
    base = _environ()
    started = time.thread_time()
    for _ in range(requests):
        body = app(dict(base), _start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return (time.thread_time() - started) / requests * 1e6


class _Switches:
    """The instrumented app's parts, switched off and on again between rounds."""

    def __init__(self) -> None:
        from correlation import metrics, schema
        from correlation.integrations import flask as edge

        self.edge, self.metrics = edge, metrics
        self.access = logging.getLogger(schema.ACCESS_LOGGER)
        self.observe, self.report = metrics.observe_request, edge._Edge.report  # noqa: SLF001 - bench-only

    def set(self, off: frozenset[str]) -> None:
        self.access.disabled = "access" in off
        setattr(self.metrics, "observe_request", (lambda *a, **k: None) if "metrics" in off else self.observe)
        setattr(self.edge._Edge, "report", (lambda *a, **k: None) if "report" in off else self.report)  # noqa: SLF001


def measure(rounds: int, requests: int, names: list[str]) -> dict[str, list[float]]:
    from bench import apps

    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the instrumented app's JSON lines go nowhere
    made = {factory: getattr(apps, factory)().wsgi_app for factory in {VARIANTS[n][0] for n in names}}
    switches = _Switches()
    results: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up: imports, caches, the sender's connection
        switches.set(VARIANTS[name][1])
        _serve(made[VARIANTS[name][0]], min(2_000, requests))
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            factory, off = VARIANTS[name]
            switches.set(off)
            results[name].append(_serve(made[factory], requests))
    return results


def main() -> None:
    rounds = int(os.environ.get("BENCH_INPROCESS_ROUNDS", "7"))
    requests = int(os.environ.get("BENCH_INPROCESS_REQUESTS", "5000"))
    names = [n for n in os.environ.get("BENCH_INPROCESS_VARIANTS", "").split(",") if n] or list(VARIANTS)
    out = sys.stdout
    results = measure(rounds, requests, names)
    out.write(json.dumps({"rounds": rounds, "requests": requests, "results": results}))
    out.flush()


if __name__ == "__main__":
    main()
