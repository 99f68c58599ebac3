"""The floor: what the README's per-request guarantees cost at the least, written by hand.

A yardstick for the attribution (bench/attribution.py), not a library: one WSGI wrapper that does,
for ``GET /ping`` and nothing else, what the instrumented app must do on every request, each part
the cheapest way this benchmark knows, with none of the library's generality:

- the edge: a fresh UUIDv7 correlation ID and request ID (no inbound header: it checks that none
  was sent, as the library does), bound to a ContextVar for the request, echoed on the response
  with the service's name (``X-Correlation-ID``, ``X-Service-Name``), the route read from Flask's
  request context, the request registered while in flight (what a worker timeout reports);
- one access line: the contract's keys in its order, ISO time, compact JSON (orjson);
- stdout: lines joined and written by 64 KiB;
- Loki: the entry ``[ns, line, metadata]`` (orjson) into a locked deque, a thread that pushes
  it by ``LOKI_BATCH_MAX_BYTES`` or ``LOKI_BATCH_MAX_WAIT_SECONDS`` with gzip level 1 (urllib3);
- metrics: a histogram bucket, sum and newest exemplar under one lock.

What it leaves out, because the library's rare paths and options cost nothing per request here or
because they are the price of being a library and not one route: inbound IDs, trust, refusals;
``logging`` (so no app handler, ``caplog`` or Sentry sees the line); buffer bounds, drop counts,
retries, spool, fork safety, truncation, the error counter. ``BENCH_FLOOR_PARTS`` (comma-separated,
default all) keeps only some parts: ``edge``, ``line``, ``stdout``, ``loki``, ``metrics``.
"""

from __future__ import annotations

import bisect
import contextvars
import os
import random
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import flask
import orjson
import urllib3
from flask.globals import _cv_request

ALL_PARTS = ("edge", "line", "stdout", "loki", "metrics")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))
INBOUND_KEYS = ("HTTP_X_CORRELATION_ID", "HTTP_X_REQUEST_ID", "HTTP_X_PARENT_REQUEST_ID", "HTTP_TRACEPARENT",
                "HTTP_X_CALLER_SERVICE")  # fmt: skip
SERVICE = "bench"

_random = random.Random(os.urandom(32))
_hop: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("floor_hop", default=None)
_in_flight: dict[str, tuple[dict[str, Any], float]] = {}
_second: list[Any] = [-1, ""]


def _iso(created: float) -> str:
    seconds = int(created)
    if seconds != _second[0]:
        _second[:] = [seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))]
    return "%s.%06dZ" % (_second[1], (created - seconds) * 1_000_000)  # noqa: UP031 - as correlation.log.formatter


class _Stdout:
    def __init__(self) -> None:
        self.lines: deque[str] = deque()
        self.chars = 0
        self.lock = threading.Lock()

    def put(self, line: str) -> None:
        self.lines.append(line)
        self.chars += len(line)
        if self.chars >= 64 * 1024:
            with self.lock:
                taken = [self.lines.popleft() for _ in range(len(self.lines))]
                self.chars = 0
                sys.stdout.write("\n".join(taken) + "\n")


class _Loki:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/") + "/loki/api/v1/push"
        self.max_bytes = int(os.environ.get("LOKI_BATCH_MAX_BYTES", str(1024 * 1024)))
        self.max_wait = float(os.environ.get("LOKI_BATCH_MAX_WAIT_SECONDS", "1"))
        self.entries: deque[bytes] = deque()
        self.bytes = 0
        self.ready = threading.Condition(threading.Lock())
        threading.Thread(target=self._send, name="floor-sender", daemon=True).start()

    def put(self, created: float, line: str, metadata: dict[str, str]) -> None:
        entry = orjson.dumps([str(int(created * 1e9)), line, metadata])
        with self.ready:
            self.entries.append(entry)
            self.bytes += len(entry)
            if self.bytes >= self.max_bytes:
                self.ready.notify()

    def _send(self) -> None:
        http = urllib3.PoolManager()
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        while True:
            with self.ready:
                self.ready.wait(self.max_wait)  # or until a put finds the batch full
                batch = list(self.entries)
                self.entries.clear()
                self.bytes = 0
            if batch:
                body = b'{"streams":[{"stream":{"service_name":"%s","env":"bench"},"values":[%s]}]}' % (
                    SERVICE.encode(), b",".join(batch))  # fmt: skip
                http.request("POST", self.url, body=zlib.compress(body, 1, wbits=31), headers=headers)


class _Histogram:
    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)
        self.sum = 0.0
        self.exemplars: list[tuple[str, float, float] | None] = [None] * len(BUCKETS)
        self.lock = threading.Lock()

    def observe(self, seconds: float, correlation_id: str) -> None:
        index = bisect.bisect_left(BUCKETS, seconds)
        with self.lock:
            self.counts[index] += 1
            self.sum += seconds
            self.exemplars[index] = (correlation_id, seconds, time.time())


def wrap(app: Callable[..., Iterable[bytes]], parts: frozenset[str]) -> Callable[..., Iterable[bytes]]:
    stdout = _Stdout() if "stdout" in parts else None
    loki_url = os.environ.get("LOKI_URL", "")
    loki = _Loki(loki_url) if loki_url and "loki" in parts else None
    histogram = _Histogram() if "metrics" in parts else None
    edge, line_wanted = "edge" in parts, "line" in parts

    def floor_edge(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        if not environ.keys().isdisjoint(INBOUND_KEYS):
            raise NotImplementedError("the floor serves fresh requests only (no inbound ID)")
        rand = _random.getrandbits(74)
        now_ms = time.time_ns() // 1_000_000
        correlation_id = f"{now_ms:012x}7{rand >> 62:03x}{rand & (1 << 62) - 1 | 2 << 62:016x}"
        request_id = f"{_random.getrandbits(64) or 1:016x}"
        token = _hop.set((correlation_id, request_id))
        status, route = 500, "<unmatched>"

        def echo(status_line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            nonlocal status, route
            status = int(status_line[:3])
            if edge:
                context = _cv_request.get(None)
                if context is not None and context.request.url_rule is not None:
                    route = context.request.url_rule.rule
                headers = [*headers, ("X-Correlation-ID", correlation_id), ("X-Service-Name", SERVICE)]
            return start_response(status_line, headers, exc_info)

        if edge:
            _in_flight[request_id] = (environ, started)
        try:
            return app(environ, echo)
        finally:
            if edge:
                _in_flight.pop(request_id, None)
            seconds = time.perf_counter() - started
            if histogram is not None:
                histogram.observe(seconds, correlation_id)
            if line_wanted:
                created = time.time()
                method, path, duration_ms = environ["REQUEST_METHOD"], environ["PATH_INFO"], round(seconds * 1000, 3)
                line = orjson.dumps({
                    "time": _iso(created), "level": "INFO", "logger": "correlation.access",
                    "message": f"{method} {path} {status} {duration_ms:.1f}ms", "service": SERVICE,
                    "correlation_id": correlation_id, "request_id": request_id, "parent_request_id": None,
                    "method": method, "route": route, "path": path, "status": status, "duration_ms": duration_ms,
                    "caller": None,
                }).decode()  # fmt: skip
                if stdout is not None:
                    stdout.put(line)
                if loki is not None:
                    metadata = {"correlation_id": correlation_id, "request_id": request_id, "level": "info"}
                    loki.put(created, line, metadata)
            _hop.reset(token)

    return floor_edge


def floor_parts() -> frozenset[str]:
    raw = os.environ.get("BENCH_FLOOR_PARTS", "").strip()
    parts = frozenset(p.strip() for p in raw.split(",") if p.strip()) if raw else frozenset(ALL_PARTS)
    unknown = parts - set(ALL_PARTS)
    if unknown:
        raise ValueError(f"BENCH_FLOOR_PARTS: unknown parts {sorted(unknown)}; known: {list(ALL_PARTS)}")
    return parts


def install(app: flask.Flask) -> flask.Flask:
    app.wsgi_app = wrap(app.wsgi_app, floor_parts())  # type: ignore[method-assign]
    return app
