"""P2 request overhead: bare Flask vs fully instrumented, same ``GET /ping`` under the same gunicorn.

gunicorn: 1 worker, gthread, 4 threads, keep-alive 5 s (one worker with threads, as the README
recommends: exemplars need a single process). Instrumented = ``setup_logging`` (JSON to stdout,
here /dev/null, and to a loopback Loki sink) + ``Correlation(app, settings)`` (ID, access line,
RED metrics with exemplars, propagation); "loki only" is the same with ``LOG_STDOUT=false``.
Load: wrk -t2 -c16 for BENCH_P2_SECONDS (10) per round, rounds interleaved (ABBA...).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from bench.load import LoadResult, have_wrk, run_load, wait_http
from bench.sinkproc import SinkProcess
from bench.table import fmt_ratio, median, print_table, targets_table
from tests.fakes import free_port

NAME = "p2"
TITLE = "P2 request overhead"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUNICORN = ["-w", "1", "-k", "gthread", "--threads", "4", "--keep-alive", "5"]


def start_app(factory: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        *GUNICORN,
        "-b",
        f"127.0.0.1:{port}",
        "--chdir",
        ROOT,
        f"bench.apps:{factory}()",
    ]
    return subprocess.Popen(
        command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def stop_app(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run() -> None:
    seconds = float(os.environ.get("BENCH_P2_SECONDS", "10"))
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    connections = 16
    # "instrumented": stdout and Loki; "loki only": LOG_STDOUT=false, Loki gets the lines anyway.
    results: dict[str, list[LoadResult]] = {"bare": [], "instrumented": [], "loki only": []}
    factories = {"bare": "bare", "instrumented": "instrumented", "loki only": "instrumented"}
    with SinkProcess() as sink:
        ports = {name: free_port() for name in results}
        env = {"LOKI_URL": sink.url, "SERVICE_NAME": "bench", "DEPLOY_ENV": "bench", "PYTHONPATH": ROOT}
        procs = {
            name: start_app(
                factories[name], ports[name], {**env, "LOG_STDOUT": "false" if name == "loki only" else "true"}
            )
            for name in results
        }
        try:
            urls = {name: f"http://127.0.0.1:{port}/ping" for name, port in ports.items()}
            for url in urls.values():
                wait_http(url)
                run_load(url, connections=connections, seconds=2)  # warm-up
            for r in range(rounds):
                order = list(results) if r % 2 == 0 else list(reversed(results))
                for name in order:
                    results[name].append(run_load(urls[name], connections=connections, seconds=seconds))
        finally:
            for proc in procs.values():
                stop_app(proc)
        shipped = sink.stats()

    def med(name: str, field: str) -> float:
        return median(getattr(r, field) for r in results[name])

    rows = []
    for name in results:
        rs = results[name]
        rows.append(
            [
                name,
                med(name, "rps"),
                med(name, "p50_ms"),
                med(name, "p99_ms"),
                sum(r.errors for r in rs),
                " / ".join(f"{r.rps:,.0f}" for r in rs),
                fmt_ratio(med(name, "rps") / med("bare", "rps")),
            ]
        )
    tool = results["bare"][0].tool
    notes = [
        f"median of {rounds} interleaved rounds of {seconds:g} s, {connections} connections ({tool}"
        + ("" if have_wrk() else ": Python fallback, install wrk for real figures")
        + ")",
        f"the instrumented apps shipped {shipped['entries']:,} access lines to the sink "
        f"in {shipped['pushes']:,} pushes ({shipped['violations']} refused)",
    ]
    print_table(
        TITLE + " (GET /ping, gunicorn 1 worker gthread x4)",
        ["app", "req/s", "p50 ms", "p99 ms", "errors", "req/s per round", "vs bare"],
        rows,
        notes,
    )
    rps_b, p99_b = med("bare", "rps"), med("bare", "p99_ms")
    rows = []
    for name in ("instrumented", "loki only"):
        rps, p99 = med(name, "rps"), med(name, "p99_ms")
        rows += [
            (f"throughput {name} / bare", rps, rps_b, ">= 0.90x", rps >= 0.9 * rps_b),
            (f"p99 ms {name} / bare", p99, p99_b, "<= 1.20x", p99 <= 1.2 * p99_b),
        ]
    targets_table(f"{TITLE}: targets", rows)
