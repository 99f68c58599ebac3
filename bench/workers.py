"""Several workers: what sharing the metrics costs, beside prometheus_client's multiprocess mode.

- *observe*: one request's metrics (the histogram with its exemplar; plus the error counter with
  its exemplar for a 5xx), in ns, by: ours in one process (memory only), ours shared (written
  through to the worker's file), prometheus_client's ``Histogram`` + ``Counter`` with exemplars
  in one process, and the same in its multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``; it drops
  the exemplars). Each in a child process of its own, median of 5 rounds.
- *scrape*: 8 worker files of 20 routes x 4 statuses each (the histogram, the error counter for
  the 5xx), written by 8 child processes; the time to render one OpenMetrics scrape of the
  directory, ours (sums and exemplars; also as a worker's ``/metrics`` serves it, with its own
  process figures sampled first and the server process's read from ``/proc``) and
  prometheus_client's ``MultiProcessCollector`` over the same series. Goal: ours < 50 ms.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from bench.table import fmt, print_table, targets_table

NAME = "workers"
TITLE = "Several workers: metrics shared through files"
OBSERVATIONS = int(os.environ.get("BENCH_WORKERS_OBSERVATIONS", "50000"))
WORKERS, ROUTES, STATUSES = 8, 20, (200, 404, 500, 503)
SCRAPE_GOAL_MS = 50.0

_OBSERVE = r"""
import json, os, sys, time, tempfile
mode, n = sys.argv[1], int(sys.argv[2])
if mode == "ours-shared":
    from pathlib import Path
    from correlation.metrics import store
    store.use_directory(Path(tempfile.mkdtemp()))
    store.activate()
if mode.startswith("ours"):
    from correlation.metrics.library import observe_request
    def one(i):
        status = 500 if i % 10 == 0 else 200
        observe_request("svc", "/items/<int:id>", "GET", status, 0.012, "0190c0a1b2c37d4e8f90a1b2c3d4e5f6")
else:
    from prometheus_client import CollectorRegistry, Counter, Histogram
    registry = CollectorRegistry()
    h = Histogram("req_seconds", "t", ["service", "route", "method", "status"], registry=registry,
                  buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
    c = Counter("errors", "e", ["service", "route", "method", "status", "origin"], registry=registry)
    hs = {s: h.labels("svc", "/items/<int:id>", "GET", str(s)) for s in (200, 500)}
    err = c.labels("svc", "/items/<int:id>", "GET", "500", "self")
    ex = {"correlation_id": "0190c0a1b2c37d4e8f90a1b2c3d4e5f6"}
    def one(i):
        s = 500 if i % 10 == 0 else 200
        hs[s].observe(0.012, ex)
        if s == 500:
            err.inc(1, ex)
for i in range(1000):
    one(i)
rounds = []
for _ in range(5):
    t = time.perf_counter_ns()
    for i in range(n):
        one(i)
    rounds.append((time.perf_counter_ns() - t) / n)
print(json.dumps(sorted(rounds)[2]))
"""

_WRITE = r"""
import os, sys
mode, directory = sys.argv[1], sys.argv[2]
routes, statuses = int(sys.argv[3]), [int(s) for s in sys.argv[4].split(",")]
if mode == "ours":
    from pathlib import Path
    from correlation.metrics import store
    store.use_directory(Path(directory))
    store.activate()
    from correlation.metrics.library import observe_request
    for r in range(routes):
        for s in statuses:
            for k in range(3):
                cid = f"id{os.getpid()}x{r}x{s}x{k}"
                observe_request("svc", f"/route/{r}", "GET", s, 0.004 * (k + 1) * (r + 1), cid)
else:
    from prometheus_client import Counter, Histogram
    h = Histogram("http_server_request_duration_seconds", "t", ["service", "route", "method", "status"],
                  buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
    c = Counter("http_server_errors", "e", ["service", "route", "method", "status", "origin"])
    for r in range(routes):
        for s in statuses:
            for k in range(3):
                h.labels("svc", f"/route/{r}", "GET", str(s)).observe(0.004 * (k + 1) * (r + 1))
                if s >= 500:
                    c.labels("svc", f"/route/{r}", "GET", str(s), "self").inc()
"""

_SCRAPE = r"""
import json, sys, time
mode, directory = sys.argv[1], sys.argv[2]
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest
registry = CollectorRegistry(auto_describe=False)
scrape = lambda: generate_latest(registry)
if mode == "ours":
    from pathlib import Path
    from correlation.metrics.exposition import SharedCollector
    registry.register(SharedCollector(Path(directory)))
elif mode == "ours-served":  # what a worker answers: its own figures sampled, the server's read from /proc
    import os
    from pathlib import Path
    from correlation.metrics import render, store
    store.use_directory(Path(directory), server=os.getppid())
    store.activate()
    scrape = lambda: render("application/openmetrics-text; version=1.0.0")[0]
else:
    from prometheus_client.multiprocess import MultiProcessCollector
    MultiProcessCollector(registry, directory)
body = scrape()
times = []
for _ in range(15):
    t = time.perf_counter()
    scrape()
    times.append((time.perf_counter() - t) * 1000)
print(json.dumps({"ms": sorted(times)[7], "bytes": len(body), "exemplars": body.count(b" # {")}))
"""


def _environment(extra: dict[str, str]) -> dict[str, str]:
    """This environment with ``extra``; an empty value removes the variable (prometheus_client
    takes an empty PROMETHEUS_MULTIPROC_DIR as set: its files would land in the current directory)."""
    merged = {**os.environ, **extra}
    return {k: v for k, v in merged.items() if v}


def _python(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code, *args], env=_environment(env or {}), capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return result.stdout


def _observe(mode: str) -> float:
    env = {}
    if mode == "prometheus_client-multiprocess":
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bench-prom-")
    else:
        env["PROMETHEUS_MULTIPROC_DIR"] = ""
    return float(json.loads(_python(_OBSERVE, mode, str(OBSERVATIONS), env=env)))


def _scrape(mode: str) -> dict[str, float]:
    directory = tempfile.mkdtemp(prefix=f"bench-scrape-{mode}-")
    env = {"PROMETHEUS_MULTIPROC_DIR": directory if mode == "prometheus_client" else ""}
    statuses = ",".join(str(s) for s in STATUSES)
    writer_mode = "ours" if mode.startswith("ours") else mode
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITE, writer_mode, directory, str(ROUTES), statuses], env=_environment(env)
        )
        for _ in range(WORKERS)
    ]
    for writer in writers:
        if writer.wait() != 0:
            raise RuntimeError(f"a {mode} writer failed")
    return json.loads(_python(_SCRAPE, mode, directory, env={"PROMETHEUS_MULTIPROC_DIR": ""}))


def run() -> None:
    modes = ["ours-single", "ours-shared", "prometheus_client", "prometheus_client-multiprocess"]
    observe = {mode: _observe(mode) for mode in modes}
    print_table(
        f"{TITLE}: one request's metrics (ns, median of 5 rounds of {OBSERVATIONS:,}; 1 in 10 a 5xx)",
        ["", "ns", "x ours-single"],
        [[mode, fmt(observe[mode], 0), fmt(observe[mode] / observe["ours-single"], 2)] for mode in modes],
        ["prometheus_client's multiprocess mode drops the exemplars; ours-shared keeps them."],
    )
    scrapes = {mode: _scrape(mode) for mode in ("ours", "ours-served", "prometheus_client")}
    print_table(
        f"{TITLE}: one scrape of {WORKERS} workers x {ROUTES} routes x {len(STATUSES)} statuses",
        ["", "ms", "bytes", "exemplars"],
        [[mode, fmt(s["ms"], 1), fmt(int(s["bytes"])), fmt(int(s["exemplars"]))] for mode, s in scrapes.items()],
        [
            "ours: the files merged (the library's series and each worker's process_* and python_gc_*); "
            "ours-served: what a worker's /metrics renders (its own figures sampled first, the server "
            "process's read from /proc, python_info)."
        ],
    )
    ours_ms = scrapes["ours"]["ms"]
    targets_table(TITLE, [("scrape, ours (ms)", ours_ms, None, f"< {SCRAPE_GOAL_MS:.0f}", ours_ms < SCRAPE_GOAL_MS)])
