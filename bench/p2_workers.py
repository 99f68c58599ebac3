"""P2 with two workers: the request overhead, the scaling and the memory of gunicorn ``-w 2``.

The P2 route (``GET /ping`` -> "ok", bench/apps.py) under gunicorn gthread, 4 threads, keep-alive
5 s, as bench/p2_request.py runs it, with its machinery (:func:`bench.p2_request.running` and
:func:`bench.p2_request.interleave`: every app runs for the whole benchmark, the same load driven
at each in turn, the order reversed every round, targets on the median of per-round ratios):

- ``bare -w 2``: Flask alone, 2 workers;
- ``ours -w 2``: the instrumented app (ID, JSON access line to stdout and the loopback sink,
  metrics with exemplars, propagation) with the library's gunicorn hooks
  (bench/gunicorn_hooks.py), so each worker writes its metrics through to the shared directory;
- ``prometheus_client mp -w 2``: Flask with prometheus_client's request histogram and 5xx counter
  in its multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``), metrics only: the baseline of what
  sharing metrics between workers costs a request elsewhere (it drops the exemplars);
- ``ours -w 1`` and ``bare -w 1``: the same with one worker, for the scaling of ``-w 2`` over
  ``-w 1`` (ours with the hooks too: the shared store is on in both).

After the rounds, each worker's memory (RSS and PSS, from /proc) is read while the apps still run:
memory per worker, warmed up by the load, ours with the shared store on against bare Flask.
Targets (issue 21): ours / bare at ``-w 2`` >= 0.90 in req/s, p99 <= 1.2x.
"""

from __future__ import annotations

import os
import tempfile

from bench import p2_request as p2
from bench import procstat
from bench.load import have_wrk
from bench.p2_request import App
from bench.sinkproc import SinkProcess
from bench.table import fmt_ratio, median, print_table, targets_table

NAME = "p2w"
TITLE = "P2 with two workers"
KIB_PER_MIB = 1024


def _gunicorn(workers: int, hooks: bool) -> list[str]:
    options = ["-w", str(workers), "-k", "gthread", "--threads", "4", "--keep-alive", "5"]
    return [*options, "--config", "python:bench.gunicorn_hooks"] if hooks else options


def _apps(prometheus_directory: str) -> dict[str, App]:
    # An empty PROMETHEUS_MULTIPROC_DIR removes it (bench.p2_request.start_app): only the
    # prometheus_client app has it, so ours uses the directory its hooks make.
    return {
        "bare -w 2": App("bare", {"PROMETHEUS_MULTIPROC_DIR": ""}, _gunicorn(2, hooks=False), workers=2),
        "ours -w 2": App("instrumented", {"PROMETHEUS_MULTIPROC_DIR": ""}, _gunicorn(2, hooks=True), workers=2),
        "prometheus_client mp -w 2": App(
            "prometheus_multiprocess",
            {"PROMETHEUS_MULTIPROC_DIR": prometheus_directory},
            _gunicorn(2, hooks=False),
            workers=2,
        ),
        "ours -w 1": App("instrumented", {"PROMETHEUS_MULTIPROC_DIR": ""}, _gunicorn(1, hooks=True), workers=1),
        "bare -w 1": App("bare", {"PROMETHEUS_MULTIPROC_DIR": ""}, _gunicorn(1, hooks=False), workers=1),
    }


def run() -> None:
    seconds = float(os.environ.get("BENCH_P2_SECONDS", "5"))
    rounds = p2.configured_rounds()
    with tempfile.TemporaryDirectory(prefix="bench-p2w-prom-") as prometheus_directory:
        apps = _apps(prometheus_directory)
        with SinkProcess(default="count") as sink:
            env = {"LOKI_URL": sink.url, "SERVICE_NAME": "bench", "DEPLOY_ENV": "bench", "PYTHONPATH": p2.ROOT}
            with p2.running(apps, env) as live:
                measured = p2.interleave(live, rounds, seconds)
                memory = {name: [procstat.memory_kib(pid) for pid in app.workers] for name, app in live.items()}
            shipped = sink.stats()
    results = measured.results

    def vs(name: str, base: str, metric: str = "rps") -> float:
        return median(measured.ratios(name, base, metric))

    bases = {"ours -w 2": "bare -w 2", "prometheus_client mp -w 2": "bare -w 2", "ours -w 1": "bare -w 1"}
    rows = []
    for name in apps:
        rs = results[name]
        base = bases.get(name)
        rows.append(
            [
                name,
                median(r.rps for r in rs),
                median(r.p50_ms for r in rs),
                median(r.p99_ms for r in rs),
                sum(r.errors for r in rs),
                median(measured.cpu[name]),
                " / ".join(f"{r.rps:,.0f}" for r in rs),
                " / ".join(f"{x:.2f}" for x in measured.ratios(name, base)) if base else "-",
                f"{fmt_ratio(vs(name, base))} ({base})" if base else "-",
            ]
        )
    tool = results["bare -w 2"][0].tool
    print_table(
        f"{TITLE} (GET /ping, gunicorn -w 2 vs -w 1, gthread x4, {os.cpu_count()} CPUs)",
        [
            "app",
            "req/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "CPU us/req",
            "req/s per round",
            "ratio per round",
            "vs bare (same -w)",
        ],
        rows,
        [
            f"{rounds} rounds of {seconds:g} s per app, order reversed every round, "
            f"{p2.CONNECTIONS} connections ({tool}"
            + ("" if have_wrk() else ": Python fallback, install wrk for real figures")
            + "); ratios = median of the per-round ratios",
            "CPU us/req = all threads of all the app's workers, per request; ours with the library's gunicorn hooks "
            "(metrics shared through files)",
            "prometheus_client mp: its request histogram + 5xx counter in multiprocess mode, metrics only (no ID, "
            "no logging)",
            f"load average at the end {os.getloadavg()[0]:.1f} (the machine's other work moves every figure)",
            f"ours shipped {shipped['entries']:,} access lines to the sink in {shipped['pushes']:,} pushes "
            f"({shipped['violations']} refused)",
        ],
    )

    def per_worker(name: str, key: str) -> float:
        return median(m[key] / KIB_PER_MIB for m in memory[name])

    print_table(
        f"{TITLE}: memory per worker after the load (MiB)",
        ["app", "workers", "RSS each", "RSS median", "PSS median", "RSS vs bare"],
        [
            [
                name,
                len(memory[name]),
                " / ".join(f"{m['rss'] / KIB_PER_MIB:.1f}" for m in memory[name]),
                per_worker(name, "rss"),
                per_worker(name, "pss"),
                f"{per_worker(name, 'rss') - per_worker(base, 'rss'):+.1f}" if (base := bases.get(name)) else "-",
            ]
            for name in apps
        ],
        ["RSS counts pages shared with the arbiter; PSS divides them among the processes that map them"],
    )
    throughput, p99 = vs("ours -w 2", "bare -w 2"), vs("ours -w 2", "bare -w 2", "p99_ms")

    def rps(name: str) -> float:
        return median(r.rps for r in results[name])

    def p99_ms(name: str) -> float:
        return median(r.p99_ms for r in results[name])

    targets_table(
        f"{TITLE}: targets (ratio = median of the per-round ratios)",
        [
            ("req/s ours -w 2 / bare -w 2", rps("ours -w 2"), rps("bare -w 2"), f">= {p2.THROUGHPUT_TARGET:.2f}x",
             throughput >= p2.THROUGHPUT_TARGET, throughput),
            ("p99 ms ours -w 2 / bare -w 2", p99_ms("ours -w 2"), p99_ms("bare -w 2"), f"<= {p2.P99_TARGET:.2f}x",
             p99 <= p2.P99_TARGET, p99),
            ("req/s prometheus_client mp -w 2 / bare -w 2", rps("prometheus_client mp -w 2"), rps("bare -w 2"),
             "(baseline)", None, vs("prometheus_client mp -w 2", "bare -w 2")),
            ("req/s ours -w 2 / ours -w 1", rps("ours -w 2"), rps("ours -w 1"), "(scaling)", None,
             vs("ours -w 2", "ours -w 1")),
            ("req/s bare -w 2 / bare -w 1", rps("bare -w 2"), rps("bare -w 1"), "(scaling)", None,
             vs("bare -w 2", "bare -w 1")),
        ],
    )  # fmt: skip
