"""Python bytecodes executed per request, by function: what the request path's Python costs.

Instruction counts (valgrind) say how much; they do not say where in Python it goes, and the
interpreter's cost is per bytecode, not per line of source. Here each app's WSGI callable serves
``BENCH_BYTECODE_REQUESTS`` requests (after a warm-up) under ``sys.settrace`` with opcode events
on, and every bytecode executed is counted against its function. Counted, not timed: two runs give
the same figures but for what the clock makes due (a stdout flush every 0.2 s: a few bytecodes).
The tracer slows everything alike and is not part of the count.

Run by ``python -m bench attribution`` in a child process (``python -m bench.bytecodes``, JSON on
stdout), like bench/inprocess.py: the apps set up logging and metrics once per process.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Callable
from functools import partial
from types import FrameType
from typing import Any

from bench.inprocess import _serve
from bench.table import print_table

#: The apps compared: name -> factory in bench.apps.
APPS = {"bare Flask": "bare", "floor (bench/floor.py)": "floor", "instrumented": "instrumented"}
#: Where a function's file lives decides whose cost it is: the library, the floor, or the rest.
LIBRARY_MARK = f"{os.sep}correlation{os.sep}"
#: The yardsticks' files (the Flask floor; the ASGI floor and pass-through middleware).
FLOOR_FILES = tuple(f"bench{os.sep}{name}" for name in ("floor.py", "asgi_floor.py", "asgi_apps.py"))
#: The drivers' files: the loop that serves the requests is no one's cost.
HARNESS_FILES = tuple(f"bench{os.sep}{name}" for name in ("inprocess.py", "asgi_inprocess.py"))


def _owner(filename: str) -> str:
    if LIBRARY_MARK in filename:
        return "library"
    if filename.endswith(FLOOR_FILES):
        return "floor"
    if f"{os.sep}logging{os.sep}" in filename:
        return "logging"
    if filename.endswith(HARNESS_FILES):
        return "harness"
    if "site-packages" in filename:
        return "framework"  # Flask, Werkzeug, blinker; FastAPI, Starlette, pydantic
    return "stdlib"  # the standard library's Python, called by either


def _name(filename: str, function: str) -> str:
    parts = filename.split(os.sep)
    return f"{'/'.join(parts[-2:])}:{function}"


def count(serve: Callable[[int], object], requests: int) -> Counter[tuple[str, str]]:
    """(owner, function) -> bytecodes executed while ``serve(requests)`` serves that many requests."""
    counts: Counter[tuple[str, str]] = Counter()

    def local(frame: FrameType, event: str, _arg: Any) -> Any:
        if event == "opcode":
            code = frame.f_code
            counts[(_owner(code.co_filename), _name(code.co_filename, code.co_name))] += 1
        return local

    def enter(frame: FrameType, _event: str, _arg: Any) -> Any:
        frame.f_trace_opcodes = True
        return local

    sys.settrace(enter)
    try:
        serve(requests)
    finally:
        sys.settrace(None)
    return counts


def measure(requests: int) -> dict[str, dict[str, Any]]:
    from bench import apps

    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the instrumented app's JSON lines go nowhere
    results = {}
    for name, factory in APPS.items():
        app = getattr(apps, factory)().wsgi_app
        _serve(app, 300)  # warm-up: first-request work (imports, caches, the sender's connection)
        results[name] = summary(count(partial(_serve, app), requests), requests)
    return results


def summary(counts: Counter[tuple[str, str]], requests: int) -> dict[str, Any]:
    """Per request: bytecodes by owner (the harness left out), and the library's, the floors' and
    logging's by function."""
    owners: Counter[str] = Counter()
    for (owner, _), n in counts.items():
        owners[owner] += n
    functions = {
        f"{owner} {function}": n / requests
        for (owner, function), n in counts.items()
        if owner in ("library", "floor", "logging")
    }
    return {
        "per_request": {owner: n / requests for owner, n in owners.items() if owner != "harness"},
        "functions": functions,
    }


def print_tables(measured: dict[str, Any], top: int = 16) -> None:
    """Per app: bytecodes per request by owner; then the library's and the floor's busiest functions."""
    results: dict[str, dict[str, Any]] = measured["results"]
    bare = sum(results["bare Flask"]["per_request"].values())
    rows = []
    for name, result in results.items():
        owners = result["per_request"]
        total = sum(owners.values())
        own = owners.get("library", 0.0) + owners.get("floor", 0.0) + owners.get("logging", 0.0)
        framework = owners.get("framework", 0.0) + owners.get("stdlib", 0.0)
        rows.append([name, f"{total:,.0f}", f"{total - bare:+,.0f}", f"{framework:,.0f}", f"{own:,.0f}"])
    print_table(
        "Request-path attribution: Python bytecodes executed per request (bench/bytecodes.py)",
        ["app", "bytecodes", "vs bare", "Flask, Werkzeug, the standard library", "the library + logging, or the floor"],
        rows,
        [f"{measured['requests']:,} requests after a warm-up, counted with sys.settrace opcode events: not timed"],
    )
    functions = [
        (name, function, n)
        for name in ("instrumented", "floor (bench/floor.py)")
        for function, n in results[name]["functions"].items()
    ]
    functions.sort(key=lambda item: -item[2])
    print_table(
        "Request-path attribution: the busiest functions of the library (and logging's) and of the floor",
        ["app", "owner and function", "bytecodes per request"],
        [[name.split(" ")[0], function, f"{n:.0f}"] for name, function, n in functions[:top]],
    )


def main() -> None:
    requests = int(os.environ.get("BENCH_BYTECODE_REQUESTS", "200"))
    out = sys.stdout
    out.write(json.dumps({"requests": requests, "results": measure(requests)}))
    out.flush()


if __name__ == "__main__":
    main()
