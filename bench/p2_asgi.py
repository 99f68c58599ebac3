"""ASGI P2 request overhead: bare FastAPI vs ours (``CorrelationMiddleware`` + ``setup_logging``)
vs the peer asgi-correlation-id vs OpenTelemetry's ASGI instrumentation vs the floor (the
guarantees by hand, bench/asgi_floor.py), the same ``GET /ping`` under the same uvicorn (one
process, asyncio loop, h11), measured side by side in one run.

The peer does less (no access line, no metrics, no Loki shipping): it is a yardstick of what a
bare ID middleware costs, not a target. OpenTelemetry's ``OpenTelemetryMiddleware`` records a
server span (and its ``http send`` spans) per request into an SDK tracer provider with no span
processor: the cost of tracing in process, without export (bench/asgi_apps.py ``opentelemetry``).

Built as bench/p2_request.py is: every app runs for the whole benchmark, the same load generator
(wrk) drives them in turns, round after round, the order reversed each round; each round's ratio
compares apps measured seconds apart, and the targets are checked on the median of those ratios.

``BENCH_ASGI_BASELINE=<commit>`` adds ``ours @<commit>``: the same app on the library of that commit
(bench/baseline.py), so a change is measured against what it replaced in the same run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from bench import procstat
from bench.baseline import baseline_app, python_path
from bench.load import have_wrk, run_load, wait_http
from bench.p2_request import CONNECTIONS, P99_TARGET, THROUGHPUT_TARGET, Rounds, configured_rounds
from bench.sinkproc import SinkProcess
from bench.table import fmt_ratio, median, print_table, targets_table
from fakes import free_port

NAME = "p2asgi"
TITLE = "ASGI P2 request overhead"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: name -> factory in bench/asgi_apps.py
APPS = {
    "bare": "bare",
    "ours": "instrumented",
    "asgi-correlation-id": "asgi_correlation_id",
    "opentelemetry-asgi": "opentelemetry",
    # The guarantees written by hand at their least (bench/asgi_floor.py): a yardstick, no target.
    "floor": "floor",
}
TARGETED = ("ours",)
#: ``ours`` on an earlier commit's library as well (empty: not run).
BASELINE_REF = os.environ.get("BENCH_ASGI_BASELINE", "")


def start_app(factory: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """uvicorn serving ``bench.asgi_apps:<factory>`` on 127.0.0.1:``port`` (its access log off:
    ours writes its own line, and the others would pay for one they do not have in production)."""
    command = [sys.executable, "-m", "uvicorn", "--factory", f"bench.asgi_apps:{factory}", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--no-access-log", "--log-level", "warning", "--app-dir", ROOT]
    environment = {k: v for k, v in {**os.environ, **env}.items() if v}
    return subprocess.Popen(
        command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


@contextmanager
def running(env: dict[str, str], baseline: str | None = None) -> Iterator[dict[str, tuple[str, int]]]:
    """Every app started and answering: name -> (its /ping URL, its pid); with ``baseline`` (an
    ``app`` directory), ``ours`` on that library too."""
    apps = {name: (factory, env) for name, factory in APPS.items()}
    if baseline is not None:
        apps[f"ours @{BASELINE_REF}"] = ("instrumented", {**env, "PYTHONPATH": python_path(baseline)})
    ports = {name: free_port() for name in apps}
    procs = {name: start_app(factory, ports[name], app_env) for name, (factory, app_env) in apps.items()}
    try:
        live = {}
        for name, proc in procs.items():
            url = f"http://127.0.0.1:{ports[name]}/ping"
            wait_http(url)
            live[name] = (url, proc.pid)
        yield live
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def interleave(live: dict[str, tuple[str, int]], rounds: int, seconds: float) -> Rounds:
    names = list(live)
    out = Rounds({name: [] for name in names}, {name: [] for name in names})
    for url, _ in live.values():
        run_load(url, connections=CONNECTIONS, seconds=2)  # warm-up
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            url, pid = live[name]
            before = procstat.threads(pid)
            result = run_load(url, connections=CONNECTIONS, seconds=seconds)
            used = procstat.per_request(before, procstat.threads(pid), result.requests)
            out.results[name].append(result)
            out.cpu[name].append(used.get("cpu", float("nan")))
    return out


def run() -> None:
    seconds = float(os.environ.get("BENCH_P2_SECONDS", "5"))
    rounds = configured_rounds()
    load_before = os.getloadavg()[0]
    with SinkProcess(default="count") as sink, baseline_app(BASELINE_REF) as baseline:
        env = {"LOKI_URL": sink.url, "SERVICE_NAME": "bench", "DEPLOY_ENV": "bench", "PYTHONPATH": ROOT}
        with running(env, baseline) as live:
            measured = interleave(live, rounds, seconds)
        shipped = sink.stats()
    load_after = os.getloadavg()[0]
    results, cpu = measured.results, measured.cpu
    rows = []
    for name in results:
        rs = results[name]
        per_round = measured.ratios(name, "bare")
        rows.append(
            [
                name,
                median(r.rps for r in rs),
                median(r.p50_ms for r in rs),
                median(r.p99_ms for r in rs),
                sum(r.errors for r in rs),
                median(cpu[name]),
                " / ".join(f"{r.rps:,.0f}" for r in rs),
                " / ".join(f"{x:.2f}" for x in per_round) if name != "bare" else "-",
                fmt_ratio(median(per_round)),
            ]
        )
    tool = results["bare"][0].tool
    notes = [
        f"{rounds} rounds of {seconds:g} s per app, order reversed every round, {CONNECTIONS} connections ({tool}"
        + ("" if have_wrk() else ": Python fallback, install wrk for real figures")
        + "); vs bare = median of the per-round ratios",
        f"uvicorn 1 process (asyncio, h11); load average {load_before:.1f} before, {load_after:.1f} after, on "
        f"{os.cpu_count()} CPUs shared with other work: read the ratios, not the absolute req/s",
        "worker CPU = all of the uvicorn process's threads (event loop, threadpool, Loki sender) per request",
        "asgi-correlation-id: its middleware only (ID read or made, bound, echoed); no access line, metrics or "
        "shipping: a yardstick, no target",
        "opentelemetry-asgi: OpenTelemetryMiddleware, SDK TracerProvider with no span processor (spans recorded, "
        "never exported), no-op meter: a yardstick, no target",
        "floor: bench/asgi_floor.py, the guarantees by hand at their least (a yardstick, no target)",
        f"ours (and the floor, and ours @{BASELINE_REF or '...'} when run) shipped {shipped['entries']:,} access lines "
        f"to the sink in {shipped['pushes']:,} pushes ({shipped['violations']} refused)",
    ]
    if len(results) > len(APPS):
        notes.append(f"ours @{BASELINE_REF}: the same app on the library of commit {BASELINE_REF} (bench/baseline.py)")
    print_table(
        TITLE + " (GET /ping, FastAPI under uvicorn)",
        ["app", "req/s", "p50 ms", "p99 ms", "errors", "worker CPU us/req", "req/s per round", "ratio per round",
         "vs bare"],
        rows,
        notes,
    )  # fmt: skip
    checks = []
    for name in [*TARGETED, *(n for n in results if n.startswith("ours @"))]:
        throughput, p99 = median(measured.ratios(name, "bare")), median(measured.ratios(name, "bare", "p99_ms"))
        rps, rps_bare = median(r.rps for r in results[name]), median(r.rps for r in results["bare"])
        p99_ms, p99_bare = median(r.p99_ms for r in results[name]), median(r.p99_ms for r in results["bare"])
        checks += [
            (f"req/s {name} / bare", rps, rps_bare, f">= {THROUGHPUT_TARGET:.2f}x", throughput >= THROUGHPUT_TARGET,
             throughput),
            (f"p99 ms {name} / bare", p99_ms, p99_bare, f"<= {P99_TARGET:.2f}x", p99 <= P99_TARGET, p99),
        ]  # fmt: skip
    targets_table(f"{TITLE}: targets (ratio = median of the per-round ratios)", checks)
