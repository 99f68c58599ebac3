"""P2 request overhead: bare Flask vs fully instrumented, same ``GET /ping`` under the same gunicorn.

gunicorn: 1 worker, gthread, 4 threads, keep-alive 5 s (one worker with threads, as the README
recommends: exemplars need a single process). Instrumented = ``setup_logging`` (JSON to stdout,
here /dev/null, and to a loopback Loki sink) + ``Correlation(app, settings)`` (ID, access line,
RED metrics with exemplars, propagation); "loki only" is the same with ``LOG_STDOUT=false``;
"floor" is the yardstick of bench/floor.py (the guarantees by hand, without the library). The
sink only counts entries (``SinkProcess(default="count")``): Loki's CPU is not the app's, and on
2 shared cores a validating fake would take it from the apps (P1 checks the pushes' format).

Built not to drift: every app runs for the whole benchmark and the same load generator (wrk
-t2 -c16) drives them in turns, round after round, the order reversed each round (ABC CBA ...).
Each round's ratio compares apps measured seconds apart, so a neighbour's load that comes and
goes moves both sides of a ratio; the target is checked on the median of those ratios. The
worker's CPU per request (from /proc, bench/procstat.py) is shown beside it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from bench import procstat
from bench.load import LoadResult, have_wrk, run_load, wait_http
from bench.sinkproc import SinkProcess
from bench.table import fmt_ratio, median, print_table, targets_table
from tests.fakes import free_port

NAME = "p2"
TITLE = "P2 request overhead"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUNICORN = ["-w", "1", "-k", "gthread", "--threads", "4", "--keep-alive", "5"]
CONNECTIONS = 16
#: name -> (factory in bench/apps.py, environment)
APPS = {
    "bare": ("bare", {}),
    "instrumented": ("instrumented", {}),
    "loki only": ("instrumented", {"LOG_STDOUT": "false"}),
    # The yardstick, not a target: the guarantees written by hand at their least (bench/floor.py).
    "floor": ("floor", {}),
}
TARGETED = ("instrumented", "loki only")
THROUGHPUT_TARGET = 0.90
P99_TARGET = 1.20


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


def _rounds() -> int:
    raw = os.environ.get("BENCH_P2_ROUNDS", "").strip()
    return int(raw) if raw else max(6, 2 * int(os.environ.get("BENCH_ROUNDS", "3")))


def run() -> None:
    seconds = float(os.environ.get("BENCH_P2_SECONDS", "5"))
    rounds = _rounds()
    names = list(APPS)
    results: dict[str, list[LoadResult]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    with SinkProcess(default="count") as sink:
        ports = {name: free_port() for name in names}
        env = {"LOKI_URL": sink.url, "SERVICE_NAME": "bench", "DEPLOY_ENV": "bench", "PYTHONPATH": ROOT}
        procs = {name: start_app(APPS[name][0], ports[name], {**env, **APPS[name][1]}) for name in names}
        try:
            urls = {name: f"http://127.0.0.1:{port}/ping" for name, port in ports.items()}
            workers = {name: procstat.worker_pid(proc.pid) for name, proc in procs.items()}
            for url in urls.values():
                wait_http(url)
                run_load(url, connections=CONNECTIONS, seconds=2)  # warm-up
            for r in range(rounds):
                for name in names if r % 2 == 0 else names[::-1]:
                    before = procstat.threads(workers[name])
                    result = run_load(urls[name], connections=CONNECTIONS, seconds=seconds)
                    used = procstat.per_request(before, procstat.threads(workers[name]), result.requests)
                    results[name].append(result)
                    cpu[name].append(used.get("cpu", float("nan")))
        finally:
            for proc in procs.values():
                stop_app(proc)
        shipped = sink.stats()

    def ratios(name: str, field: str) -> list[float]:
        """This app / bare, round by round (measured seconds apart)."""
        return [getattr(a, field) / getattr(b, field) for a, b in zip(results[name], results["bare"], strict=True)]

    rows = []
    for name in names:
        rs = results[name]
        rows.append(
            [
                name,
                median(r.rps for r in rs),
                median(r.p50_ms for r in rs),
                median(r.p99_ms for r in rs),
                sum(r.errors for r in rs),
                median(cpu[name]),
                " / ".join(f"{r.rps:,.0f}" for r in rs),
                " / ".join(f"{x:.2f}" for x in ratios(name, "rps")) if name != "bare" else "-",
                fmt_ratio(median(ratios(name, "rps"))),
            ]
        )
    tool = results["bare"][0].tool
    notes = [
        f"{rounds} rounds of {seconds:g} s per app, order reversed every round, {CONNECTIONS} connections ({tool}"
        + ("" if have_wrk() else ": Python fallback, install wrk for real figures")
        + "); vs bare = median of the per-round ratios",
        "worker CPU = all the worker's threads (request threads, gunicorn's loop, flusher, sender) per request",
        "floor: the README's per-request guarantees written by hand at their least (bench/floor.py), no target",
        f"the instrumented apps and the floor shipped {shipped['entries']:,} access lines to the sink "
        f"in {shipped['pushes']:,} pushes ({shipped['violations']} refused)",
    ]
    print_table(
        TITLE + " (GET /ping, gunicorn 1 worker gthread x4)",
        ["app", "req/s", "p50 ms", "p99 ms", "errors", "worker CPU us/req", "req/s per round", "ratio per round",
         "vs bare"],
        rows,
        notes,
    )  # fmt: skip
    checks = []
    for name in TARGETED:
        throughput, p99 = median(ratios(name, "rps")), median(ratios(name, "p99_ms"))
        rps, rps_bare = median(r.rps for r in results[name]), median(r.rps for r in results["bare"])
        p99_ms, p99_bare = median(r.p99_ms for r in results[name]), median(r.p99_ms for r in results["bare"])
        checks += [
            (f"req/s {name} / bare", rps, rps_bare, f">= {THROUGHPUT_TARGET:.2f}x", throughput >= THROUGHPUT_TARGET,
             throughput),
            (f"p99 ms {name} / bare", p99_ms, p99_bare, f"<= {P99_TARGET:.2f}x", p99 <= P99_TARGET, p99),
        ]  # fmt: skip
    targets_table(f"{TITLE}: targets (ratio = median of the per-round ratios)", checks)
