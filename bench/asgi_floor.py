"""The ASGI floor: what the per-request guarantees cost an ASGI app at the least, written by hand.

The yardstick of the ASGI attribution (bench/attribution_asgi.py), as bench/floor.py is the Flask
one's, and built from the same parts (its stdout batcher, Loki shipper, histogram and time stamp):
one pure ASGI middleware that does, for a fresh ``GET`` and nothing else, what the instrumented app
must do on every request, each part the cheapest way this benchmark knows:

- the edge: a fresh UUIDv7 correlation ID and request ID (it checks that no ID header was sent, as
  the library does), bound to a ContextVar for the request, echoed on the response with the
  service's name (appended to the app's own start message, which it changes in place), the
  request registered while in flight, the request timed to its last body message (a send wrapper:
  any middleware that must see the response end has one), the route template Starlette's router
  left in the scope;
- one access line (the contract's keys in its order, orjson), to stdout by 64 KiB and to Loki;
- the histogram bucket, sum and newest exemplar under one lock.

Left out (the price of being a library and not one route): inbound IDs, trust and refusals,
``logging`` (no app handler, ``caplog`` or Sentry sees the line), websockets and lifespan, errors
and disconnects (no 500 answered, no 499), buffer bounds and drop counts, the error counter.
``BENCH_FLOOR_PARTS`` keeps only some parts, as for bench/floor.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from operator import itemgetter
from typing import Any

import orjson

from bench.floor import SERVICE, _Histogram, _hop, _in_flight, _iso, _Loki, _random, _Stdout, floor_parts

Message = MutableMapping[str, Any]
ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]
#: The headers whose presence means an inbound ID (lower-case, as ASGI servers give them).
INBOUND_NAMES = frozenset({b"x-correlation-id", b"x-request-id", b"x-parent-request-id", b"traceparent",
                           b"x-caller-service"})  # fmt: skip
_name = itemgetter(0)


def wrap(app: ASGIApp, parts: frozenset[str] | None = None) -> ASGIApp:
    """``app`` behind the floor's middleware (Starlette's ``add_middleware(wrap)`` calls it so),
    with ``parts`` of it (default: ``BENCH_FLOOR_PARTS``, else all)."""
    parts = floor_parts() if parts is None else parts
    stdout = _Stdout() if "stdout" in parts else None
    loki_url = os.environ.get("LOKI_URL", "")
    loki = _Loki(loki_url) if loki_url and "loki" in parts else None
    histogram = _Histogram() if "metrics" in parts else None
    edge, line_wanted = "edge" in parts, "line" in parts
    service_header = (b"x-service-name", SERVICE.encode())

    async def floor_edge(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        if not INBOUND_NAMES.isdisjoint(map(_name, scope["headers"])):
            raise NotImplementedError("the floor serves fresh requests only (no inbound ID)")
        rand = _random.getrandbits(74)
        now_ms = time.time_ns() // 1_000_000
        correlation_id = f"{now_ms:012x}7{rand >> 62:03x}{rand & (1 << 62) - 1 | 2 << 62:016x}"
        request_id = f"{_random.getrandbits(64) or 1:016x}"
        token = _hop.set((correlation_id, request_id))
        status, ended = 500, 0.0

        async def echo(message: Message) -> None:
            nonlocal status, ended
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                if edge:
                    message["headers"] = [
                        *message.get("headers", ()), (b"x-correlation-id", correlation_id.encode()), service_header
                    ]  # fmt: skip
                await send(message)
            elif kind == "http.response.body" and not message.get("more_body"):
                await send(message)
                ended = time.perf_counter()
            else:
                await send(message)

        if edge:
            _in_flight[request_id] = (scope, started)  # type: ignore[assignment]
        try:
            await app(scope, receive, echo)
        finally:
            if edge:
                _in_flight.pop(request_id, None)
            seconds = (ended or time.perf_counter()) - started
            if histogram is not None:
                histogram.observe(seconds, correlation_id)
            if line_wanted:
                created = time.time()
                route = getattr(scope.get("route"), "path_format", None) or "<unmatched>"
                method, path, duration_ms = scope["method"], scope["path"], round(seconds * 1000, 3)
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
