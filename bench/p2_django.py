"""Django P2: the request overhead of the Django edge, ours / bare Django under the same gunicorn.

The P2 route (``GET /ping`` -> "ok") in Django (bench/django_apps.py), gunicorn ``-w 2`` gthread,
4 threads, keep-alive 5 s, with the machinery of bench/p2_request.py (every app runs for the
whole benchmark, the same load driven at each in turn, the order reversed every round, the target
on the median of per-round ratios):

- ``bare django``: Django with ``CommonMiddleware``, no logging set up;
- ``ours django``: the docs' Django example as written (the middleware, ``LOGGING`` with JSON to
  stdout and the loopback sink as Loki) with the library's gunicorn hooks (bench/gunicorn_hooks.py):
  ID, access line, metrics shared between the workers with exemplars, propagation.

Target (issue 25): ours / bare >= 0.90 in req/s.
"""

from __future__ import annotations

import os

from bench import p2_request as p2
from bench.load import have_wrk
from bench.p2_request import App
from bench.sinkproc import SinkProcess
from bench.table import fmt_ratio, median, print_table, targets_table

NAME = "p2django"
TITLE = "Django P2 request overhead"
GUNICORN = ["-w", "2", "-k", "gthread", "--threads", "4", "--keep-alive", "5"]
APPS = {
    "bare django": App("django_bare", {}, GUNICORN, workers=2),
    "ours django": App("django_instrumented", {}, [*GUNICORN, "--config", "python:bench.gunicorn_hooks"], workers=2),
}


def run() -> None:
    seconds = float(os.environ.get("BENCH_P2_SECONDS", "5"))
    rounds = p2.configured_rounds()
    with SinkProcess(default="count") as sink:
        env = {"LOKI_URL": sink.url, "SERVICE_NAME": "bench", "DEPLOY_ENV": "bench", "PYTHONPATH": p2.ROOT}
        env["PROMETHEUS_MULTIPROC_DIR"] = ""  # the hooks make the shared directory
        with p2.running(APPS, env) as live:
            measured = p2.interleave(live, rounds, seconds)
        shipped = sink.stats()
    results = measured.results
    ratios = measured.ratios("ours django", "bare django")
    rows = [
        [
            name,
            median(r.rps for r in results[name]),
            median(r.p50_ms for r in results[name]),
            median(r.p99_ms for r in results[name]),
            sum(r.errors for r in results[name]),
            median(measured.cpu[name]),
            " / ".join(f"{r.rps:,.0f}" for r in results[name]),
            " / ".join(f"{x:.2f}" for x in ratios) if name == "ours django" else "-",
            fmt_ratio(median(ratios)) if name == "ours django" else "-",
        ]
        for name in APPS
    ]
    tool = results["bare django"][0].tool
    print_table(
        f"{TITLE} (GET /ping, gunicorn -w 2 gthread x4, {os.cpu_count()} CPUs)",
        ["app", "req/s", "p50 ms", "p99 ms", "errors", "CPU us/req", "req/s per round", "ratio per round",
         "vs bare"],
        rows,
        [
            f"{rounds} rounds of {seconds:g} s per app, order reversed every round, {p2.CONNECTIONS} connections "
            f"({tool}" + ("" if have_wrk() else ": Python fallback, install wrk for real figures")
            + "); vs bare = median of the per-round ratios",
            "CPU us/req = all threads of both workers, per request; ours with the library's gunicorn hooks",
            f"load average at the end {os.getloadavg()[0]:.1f} (the machine's other work moves every figure)",
            f"ours shipped {shipped['entries']:,} access lines to the sink in {shipped['pushes']:,} pushes "
            f"({shipped['violations']} refused)",
        ],
    )  # fmt: skip

    def rps(name: str) -> float:
        return median(r.rps for r in results[name])

    def p99_ms(name: str) -> float:
        return median(r.p99_ms for r in results[name])

    throughput = median(ratios)
    p99 = median(measured.ratios("ours django", "bare django", "p99_ms"))
    targets_table(
        f"{TITLE}: targets (ratio = median of the per-round ratios)",
        [
            ("req/s ours / bare Django", rps("ours django"), rps("bare django"), f">= {p2.THROUGHPUT_TARGET:.2f}x",
             throughput >= p2.THROUGHPUT_TARGET, throughput),
            ("p99 ms ours / bare Django", p99_ms("ours django"), p99_ms("bare django"), "(shown)", None, p99),
        ],
    )  # fmt: skip
