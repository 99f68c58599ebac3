"""The ASGI request path in one process: an ASGI driver that calls each app with a scope, a
``receive`` and a ``send``, as a server would, and measures it without a server.

bench/inprocess.py and bench/bytecodes.py for the ASGI apps (bench/asgi_apps.py). Each request is
one ``await app(scope, receive, send)`` on one event loop (the scope as uvicorn's h11 protocol
builds it for ``GET /ping``, a ``receive`` that has the empty body, a ``send`` that drops the
messages), so what is measured is the app and its middleware: no sockets, no HTTP parsing, no task
per request (uvicorn's own work, the same for every app). Two measurements:

- ``thread``: ``time.thread_time()`` of the loop's thread per request (the Loki sender's and the
  stdout flusher's CPU not included), variants and switched-off parts alternating round by round,
  so a neighbour's load moves them all alike;
- ``bytecodes``: Python bytecodes executed per request by function, under ``sys.settrace`` with
  opcode events (counted, not timed; see bench/bytecodes.py);
- ``count NAME N``: serve one variant's requests and nothing else, for valgrind to count.

Run by ``python -m bench attribution-asgi`` in a child process (``python -m bench.asgi_inprocess
thread|bytecodes``, JSON on stdout): the apps set up logging and metrics once per process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from functools import partial
from typing import Any

from bench import bytecodes

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

#: name -> (factory in bench.asgi_apps, the parts switched off between rounds).
VARIANTS: dict[str, tuple[str, frozenset[str]]] = {
    "bare FastAPI": ("bare", frozenset()),
    "pass-through middleware": ("passthrough", frozenset()),
    "asgi-correlation-id": ("asgi_correlation_id", frozenset()),
    "floor (bench/asgi_floor.py)": ("floor", frozenset()),
    "floor: edge only": ("floor_edge", frozenset()),
    "ours": ("instrumented", frozenset()),
    "- access line": ("instrumented", frozenset({"access"})),
    "- Loki handler": ("instrumented", frozenset({"loki"})),
    "- stdout": ("instrumented", frozenset({"stdout"})),
    "- metrics": ("instrumented", frozenset({"metrics"})),
    "edge only (no report at all)": ("instrumented", frozenset({"report"})),
}
#: The apps whose bytecodes are counted by function.
BYTECODE_APPS = ("bare FastAPI", "pass-through middleware", "asgi-correlation-id", "floor (bench/asgi_floor.py)",
                 "ours")  # fmt: skip

_HEADERS = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"), (b"accept", b"*/*")]
_REQUEST = {"type": "http.request", "body": b"", "more_body": False}


def new_scope(headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    """The scope uvicorn (h11) gives a ``GET /ping`` from 127.0.0.1, fresh for each request (the
    app and its middleware write into it)."""
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
        "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000), "scheme": "http", "method": "GET",
        "root_path": "", "path": "/ping", "raw_path": b"/ping", "query_string": b"",
        "headers": _HEADERS if headers is None else headers, "state": {},
    }  # fmt: skip


async def _receive() -> Message:
    return _REQUEST


async def _drop(message: Message) -> None:
    pass


async def _requests(app: ASGIApp, count: int) -> None:
    for _ in range(count):
        await app(new_scope(), _receive, _drop)


def serve(app: ASGIApp, count: int) -> float:
    """Serve ``count`` requests; microseconds of this thread's CPU per request."""
    loop = asyncio.get_event_loop()
    started = time.thread_time()
    loop.run_until_complete(_requests(app, count))
    return (time.thread_time() - started) / count * 1e6


def answer(app: ASGIApp, headers: list[tuple[bytes, bytes]] | None = None) -> list[Message]:
    """The messages ``app`` sends for one request (for checks)."""
    sent: list[Message] = []

    async def keep(message: Message) -> None:
        sent.append(message)

    asyncio.get_event_loop().run_until_complete(app(new_scope(headers), _receive, keep))
    return sent


def check(app: ASGIApp) -> None:
    """The app answers ``/ping`` with 200 "ok" (a broken variant must not be measured as a fast one)."""
    sent = answer(app)
    start, body = sent[0], sent[-1]
    if start["status"] != 200 or body.get("body") != b"ok":
        raise RuntimeError(f"/ping answered {sent!r}")


class Switches:
    """The instrumented app's parts, switched off and on again between rounds: the access logger
    disabled, the histogram not observed, the hop's end not reported at all, the Loki or stdout
    handler taken off the root logger."""

    def __init__(self) -> None:
        from correlation import metrics, schema
        from correlation.integrations import asgi
        from correlation.log.stdout import StdoutHandler
        from correlation.loki.handler import LokiHandler

        self.asgi, self.metrics = asgi, metrics
        self.access = logging.getLogger(schema.ACCESS_LOGGER)
        self.observe, self.end = metrics.observe_request, asgi.end_http_hop
        self.root = logging.getLogger()
        self.handlers = list(self.root.handlers)
        self.kinds = {"loki": LokiHandler, "stdout": StdoutHandler}

    def set(self, off: frozenset[str]) -> None:
        self.access.disabled = "access" in off
        setattr(self.metrics, "observe_request", (lambda *a, **k: None) if "metrics" in off else self.observe)
        setattr(self.asgi, "end_http_hop", (lambda *a, **k: None) if "report" in off else self.end)
        removed = tuple(kind for part, kind in self.kinds.items() if part in off)
        self.root.handlers[:] = [h for h in self.handlers if not isinstance(h, removed)]


def _made(names: list[str]) -> dict[str, ASGIApp]:
    from bench import asgi_apps

    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the instrumented app's JSON lines go nowhere
    asyncio.set_event_loop(asyncio.new_event_loop())
    made = {factory: getattr(asgi_apps, factory)() for factory in {VARIANTS[n][0] for n in names}}
    for app in made.values():
        check(app)
    return made


def measure(rounds: int, requests: int, names: list[str]) -> dict[str, list[float]]:
    made = _made(names)
    switches = Switches() if any(VARIANTS[n][0] == "instrumented" for n in names) else None
    results: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up: imports, caches, the sender's connection
        if switches is not None:
            switches.set(VARIANTS[name][1])
        serve(made[VARIANTS[name][0]], min(2_000, requests))
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            factory, off = VARIANTS[name]
            if switches is not None:
                switches.set(off)
            results[name].append(serve(made[factory], requests))
    if switches is not None:
        switches.set(frozenset())
    return results


def count_bytecodes(requests: int, names: list[str]) -> dict[str, dict[str, Any]]:
    """Per app: bytecodes per request by owner (library, floor, logging, framework, stdlib), and
    the library's, the floors' and logging's by function."""
    made = _made(names)
    results = {}
    for name in names:
        app = made[VARIANTS[name][0]]
        serve(app, 300)  # warm-up: first-request work (imports, caches, the sender's connection)
        results[name] = bytecodes.summary(bytecodes.count(partial(serve, app), requests), requests)
    return results


def serve_counted(name: str, requests: int) -> None:
    """Serve 200 warm-up requests, then ``requests`` more, of variant ``name``: what valgrind counts
    (bench/attribution_asgi.py takes the count of 0 requests from that of 1,000)."""
    made = _made([name])
    factory, off = VARIANTS[name]
    if factory == "instrumented":
        Switches().set(off)
    serve(made[factory], 200)
    if requests:
        serve(made[factory], requests)
    logging.shutdown()  # the Loki sender's last push inside the count, as under a server at exit


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "thread"
    out = sys.stdout
    if mode == "count":
        serve_counted(sys.argv[2], int(sys.argv[3]))
        return
    if mode == "thread":
        rounds = int(os.environ.get("BENCH_INPROCESS_ROUNDS", "7"))
        requests = int(os.environ.get("BENCH_INPROCESS_REQUESTS", "5000"))
        names = [n for n in os.environ.get("BENCH_INPROCESS_VARIANTS", "").split(",") if n] or list(VARIANTS)
        result: dict[str, Any] = {"rounds": rounds, "requests": requests, "results": measure(rounds, requests, names)}
    elif mode == "bytecodes":
        requests = int(os.environ.get("BENCH_BYTECODE_REQUESTS", "200"))
        names = [n for n in os.environ.get("BENCH_BYTECODE_APPS", "").split(",") if n] or list(BYTECODE_APPS)
        result = {"requests": requests, "results": count_bytecodes(requests, names)}
    else:
        raise SystemExit(f"usage: python -m bench.asgi_inprocess [thread | bytecodes], not {mode!r}")
    out.write(json.dumps(result))
    out.flush()


if __name__ == "__main__":
    main()
