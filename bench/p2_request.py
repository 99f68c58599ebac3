"""P2 request overhead: bare Flask vs fully instrumented, same ``GET /ping`` under the same gunicorn.

gunicorn: 1 worker, gthread, 4 threads, keep-alive 5 s (bench/p2_workers.py runs the same with 2
workers and the library's gunicorn hooks). Instrumented = ``setup_logging`` (JSON to stdout,
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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from bench import procstat
from bench.load import LoadResult, have_wrk, run_load, wait_http
from bench.sinkproc import SinkProcess
from bench.table import fmt_ratio, median, print_table, targets_table
from fakes import free_port

NAME = "p2"
TITLE = "P2 request overhead"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUNICORN = ("-w", "1", "-k", "gthread", "--threads", "4", "--keep-alive", "5")
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


def start_app(
    factory: str, port: int, env: dict[str, str], gunicorn: Sequence[str] = GUNICORN
) -> subprocess.Popen[bytes]:
    """gunicorn serving ``bench.apps:<factory>()`` on 127.0.0.1:``port``; in ``env``, an empty value
    removes the variable (prometheus_client reads an empty PROMETHEUS_MULTIPROC_DIR as set)."""
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        *gunicorn,
        "-b",
        f"127.0.0.1:{port}",
        "--chdir",
        ROOT,
        f"bench.apps:{factory}()",
    ]
    environment = {k: v for k, v in {**os.environ, **env}.items() if v}
    return subprocess.Popen(
        command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def stop_app(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def configured_rounds() -> int:
    raw = os.environ.get("BENCH_P2_ROUNDS", "").strip()
    return int(raw) if raw else max(6, 2 * int(os.environ.get("BENCH_ROUNDS", "3")))


@dataclass
class App:
    """One app of an interleaved run: its factory in bench/apps.py, environment and gunicorn options."""

    factory: str
    env: dict[str, str] = field(default_factory=dict)
    gunicorn: Sequence[str] = GUNICORN
    workers: int = 1


@dataclass
class Live:
    """A running app: where it answers, and its workers' pids."""

    url: str
    workers: list[int]


@contextmanager
def running(apps: dict[str, App], env: dict[str, str]) -> Iterator[dict[str, Live]]:
    """Start every app (``env`` under each one's own), wait until each answers, stop them at the end."""
    ports = {name: free_port() for name in apps}
    procs = {name: start_app(app.factory, ports[name], {**env, **app.env}, app.gunicorn) for name, app in apps.items()}
    try:
        live = {}
        for name, proc in procs.items():
            url = f"http://127.0.0.1:{ports[name]}/ping"
            wait_http(url)
            live[name] = Live(url, procstat.worker_pids(proc.pid, apps[name].workers))
        yield live
    finally:
        for proc in procs.values():
            stop_app(proc)


@dataclass
class Rounds:
    """Each app's load results and worker CPU per request, round by round."""

    results: dict[str, list[LoadResult]]
    cpu: dict[str, list[float]]

    def ratios(self, name: str, base: str, metric: str = "rps") -> list[float]:
        """``name`` / ``base``, round by round (measured seconds apart)."""
        pairs = zip(self.results[name], self.results[base], strict=True)
        return [getattr(a, metric) / getattr(b, metric) for a, b in pairs]


def interleave(live: dict[str, Live], rounds: int, seconds: float) -> Rounds:
    """Warm every app up, then load each in turn for ``rounds`` rounds, the order reversed every round."""
    names = list(live)
    out = Rounds({name: [] for name in names}, {name: [] for name in names})
    for app in live.values():
        run_load(app.url, connections=CONNECTIONS, seconds=2)  # warm-up
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            before = {pid: procstat.threads(pid) for pid in live[name].workers}
            result = run_load(live[name].url, connections=CONNECTIONS, seconds=seconds)
            used = [procstat.per_request(before[pid], procstat.threads(pid), result.requests) for pid in before]
            out.results[name].append(result)
            out.cpu[name].append(sum(u.get("cpu", float("nan")) for u in used))
    return out


def run() -> None:
    seconds = float(os.environ.get("BENCH_P2_SECONDS", "5"))
    rounds = configured_rounds()
    names = list(APPS)
    with SinkProcess(default="count") as sink:
        env = {"LOKI_URL": sink.url, "SERVICE_NAME": "bench", "DEPLOY_ENV": "bench", "PYTHONPATH": ROOT}
        apps = {name: App(factory, extra) for name, (factory, extra) in APPS.items()}
        with running(apps, env) as live:
            measured = interleave(live, rounds, seconds)
        shipped = sink.stats()
    results, cpu = measured.results, measured.cpu

    def ratios(name: str, metric: str) -> list[float]:
        return measured.ratios(name, "bare", metric)

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
