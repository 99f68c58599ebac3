"""Where the request path's time goes: bare vs instrumented with each part switched off in turn.

Four measurements: two with each variant in its own gunicorn (1 worker, gthread x4; variants in
bench/switches.py), as in P2, and two in a single process:

- ``instructions`` (needs valgrind): machine instructions per request of the gunicorn worker,
  the difference between 1,000 requests and none over one keep-alive connection. Counted, not
  timed: other processes on a shared machine cannot move it, so it attributes even small parts.
  Under valgrind a second holds ~50x fewer requests, so batches are made by size, not time
  (Loki: 256 KiB; stdout: 64 KiB), as they are at full speed: each line pays its real share of
  a write, a gzip and a push.
- ``load``: req/s and p99 under the P2 load generator (wrk -c16), and the worker's threads read
  from ``/proc/<pid>/task/*`` before and after each round (bench/procstat.py): on-CPU time per
  request by thread (request threads, gunicorn's main thread, stdout flusher, Loki sender), time
  spent runnable but waiting for a CPU, and context switches per request (lock hand-offs and
  background wake-ups). Timed, so as noisy as P2; rounds interleaved, medians shown.
- ``thread``: the request thread's CPU per request with the apps' WSGI callables called in a loop
  in one process (bench/inprocess.py): time, which instruction counts are not (C code runs more
  instructions a cycle than the interpreter), without gunicorn's noise.
- ``bytecodes``: Python bytecodes executed per request, by function, the same apps in one process
  (bench/bytecodes.py): where in Python the library's share goes. Counted, not timed.

``python -m bench attribution`` (not part of the default run); ``BENCH_ATTRIBUTION=instructions``,
``thread``, ``bytecodes`` or ``load`` runs some of them, ``BENCH_VARIANTS`` (comma-separated names) some variants
of the first and the last.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench import bytecodes, procstat, switches
from bench.load import run_load, wait_http
from bench.p2_request import GUNICORN, ROOT, start_app, stop_app
from bench.sinkproc import SinkProcess
from bench.table import median, print_table
from fakes import free_port

NAME = "attribution"
TITLE = "Request-path attribution"

#: name -> (factory, environment): each part switched off in turn, then everything but the edge.
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "bare Flask": ("bare", {}),
    "instrumented": ("instrumented", {}),
    **{f"- {part}": ("instrumented", {"BENCH_OFF": part}) for part in switches.PATCHED_PARTS},
    **{f"- {part}": ("instrumented", env) for part, (env, _) in switches.ENV_PARTS.items()},
    "edge only": ("instrumented", {"BENCH_OFF": "access,metrics", "LOKI_URL": ""}),
    # Yardsticks: what an access log costs in gunicorn itself, and the guarantees by hand.
    "bare Flask + gunicorn access log": ("bare", {"GUNICORN_CMD_ARGS": "--access-logfile -"}),
    "floor (bench/floor.py)": ("floor", {}),
    "floor: edge only": ("floor", {"BENCH_FLOOR_PARTS": "edge"}),
}
#: Batches by size whatever the time (see the module's docstring): Loki 256 KiB (~600 access
#: lines), stdout 64 KiB (StdoutHandler's max_pending).
SIZE_BOUND_BATCHES = {
    "LOKI_BATCH_MAX_WAIT_SECONDS": "3600",
    "LOKI_BATCH_MAX_BYTES": "262144",
    "BENCH_STDOUT_FLUSH_INTERVAL": "3600",
}


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


# -- instructions -------------------------------------------------------------------------------


def _count_requests(url: str, count: int) -> None:
    connection = http.client.HTTPConnection(url.split("//")[1].split(":")[0], int(url.rsplit(":", 1)[1]), timeout=120)
    try:
        for _ in range(count):
            connection.request("GET", "/ping")
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"/ping answered {response.status}")
    finally:
        connection.close()


def _worker_instructions(factory: str, env: dict[str, str], requests: int) -> int:
    """Instructions the gunicorn worker executed in all, having served 200 + ``requests``."""
    port = free_port()
    with tempfile.TemporaryDirectory() as logs:
        command = [
            "valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
            f"--log-file={logs}/vg.%p", sys.executable, "-m", "gunicorn", *GUNICORN, "--timeout", "600",
            "-b", f"127.0.0.1:{port}", "--chdir", ROOT, f"bench.apps:{factory}()",
        ]  # fmt: skip
        proc = subprocess.Popen(command, env={**os.environ, **env, "PYTHONPATH": ROOT}, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(url + "/ping", timeout=300)
            _count_requests(url, 200 + requests)  # 200 warm-up requests in both counts
        finally:
            stop_app(proc)
        return valgrind_count(logs)  # the arbiter's and the worker's: the worker did far more


def valgrind_count(logs: str) -> int:
    """The largest instruction count valgrind wrote into ``logs`` (one file a process)."""
    counts = []
    for name in os.listdir(logs):
        with open(os.path.join(logs, name)) as f:
            found = re.search(r"I\s+refs:\s+([\d,]+)", f.read())
        if found:
            counts.append(int(found.group(1).replace(",", "")))
    if not counts:
        raise RuntimeError("valgrind printed no instruction count")
    return max(counts)


def _instructions(name: str, env: dict[str, str], requests: int) -> float | None:
    """Instructions per request of the worker (valgrind), or None without valgrind."""
    if shutil.which("valgrind") is None:
        return None
    factory, extra = VARIANTS[name]
    env = {**env, **SIZE_BOUND_BATCHES, **extra}
    return (_worker_instructions(factory, env, requests) - _worker_instructions(factory, env, 0)) / requests


# -- under load ---------------------------------------------------------------------------------


def _under_load(sink: SinkProcess, names: list[str], rounds: int, seconds: float) -> dict[str, list[dict[str, float]]]:
    env = {"LOKI_URL": sink.url, "SERVICE_NAME": "bench", "DEPLOY_ENV": "bench", "BENCH_THREAD_NAMES": "1"}
    ports = {name: free_port() for name in names}
    procs = {name: start_app(VARIANTS[name][0], ports[name], {**env, **VARIANTS[name][1]}) for name in names}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    try:
        urls = {name: f"http://127.0.0.1:{port}/ping" for name, port in ports.items()}
        workers = {name: procstat.worker_pid(proc.pid) for name, proc in procs.items()}
        for url in urls.values():
            wait_http(url)
            run_load(url, connections=16, seconds=1)  # warm-up
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                before = procstat.threads(workers[name])
                load = run_load(urls[name], connections=16, seconds=seconds)
                row = {"rps": load.rps, "p99_ms": load.p99_ms, "errors": float(load.errors)}
                row.update(procstat.per_request(before, procstat.threads(workers[name]), load.requests))
                results[name].append(row)
    finally:
        for proc in procs.values():
            stop_app(proc)
    return results


def run() -> None:
    rounds = _int_env("BENCH_ROUNDS", 3)
    seconds = float(os.environ.get("BENCH_P2_SECONDS", "5"))
    names = [n for n in os.environ.get("BENCH_VARIANTS", "").split(",") if n] or list(VARIANTS)
    parts = os.environ.get("BENCH_ATTRIBUTION", "instructions,thread,bytecodes,load").split(",")
    with SinkProcess(default="count") as sink:
        env = {"LOKI_URL": sink.url, "SERVICE_NAME": "bench", "DEPLOY_ENV": "bench"}
        if "instructions" in parts:
            with ThreadPoolExecutor(2) as pool:  # counts do not depend on what else runs
                counted = dict(zip(names, pool.map(lambda n: _instructions(n, env, 1_000), names), strict=True))
            _instructions_table(names, counted)
        if "thread" in parts:
            _thread_table(_in_process("bench.inprocess", env))
        if "bytecodes" in parts:
            bytecodes.print_tables(_in_process("bench.bytecodes", env))
        if "load" in parts:
            _load_table(names, _under_load(sink, names, rounds, seconds), rounds, seconds)


# -- the request thread, in one process (bench/inprocess.py) ------------------------------------


def _in_process(module: str, env: dict[str, str]) -> dict[str, Any]:
    child = subprocess.run(
        [sys.executable, "-m", module], env={**os.environ, **env, "PYTHONPATH": os.pathsep.join(
            [ROOT, os.path.join(ROOT, "app")])}, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if child.returncode != 0:
        raise RuntimeError(f"{module} failed ({child.returncode}): {child.stderr[-2000:]}")
    return json.loads(child.stdout)


def _thread_table(measured: dict[str, Any]) -> None:
    results: dict[str, list[float]] = measured["results"]
    bare = median(results["bare Flask"])
    full = median(results["instrumented"]) if "instrumented" in results else None
    rows = []
    for name, values in results.items():
        us = median(values)
        rows.append([
            name, f"{us:.1f}", f"{us - bare:+.1f}", f"{us / bare:.2f}",
            f"{full - us:.1f}" if full is not None and name.startswith(("-", "edge")) else "-",
            " / ".join(f"{v:.1f}" for v in values),
        ])  # fmt: skip
    print_table(
        f"{TITLE}: the request thread's CPU per request, in one process (bench/inprocess.py)",
        ["variant", "us", "vs bare (us)", "vs bare", "saved vs instrumented (us)", "per round"],
        rows,
        [
            f"median of {measured['rounds']} interleaved rounds of {measured['requests']:,} requests; the WSGI app "
            "called in a loop, time.thread_time() of that thread (the sender's and flusher's CPU not included); "
            "no gunicorn (its own cost is the same for every app)"
        ],
    )  # fmt: skip


def _med(data: dict[str, list[dict[str, float]]], name: str, key: str) -> float:
    return median(r.get(key, 0.0) for r in data[name])


def _share(value: float, full: float, bare: float) -> str:
    return f"{(full - value) / (full - bare) * 100:.0f}%" if full != bare else "-"


def _instructions_table(names: list[str], counted: dict[str, float | None]) -> None:
    full, bare = counted.get("instrumented"), counted.get("bare Flask")
    if full is None or bare is None:
        print("  instructions: skipped (install valgrind: apt-get install valgrind)\n")
        return
    rows = []
    for name in names:
        value = counted[name] or 0.0
        subset = VARIANTS[name][0] == "instrumented"  # a part of the instrumented app switched off
        rows.append([
            name, value / 1e3, f"{value / bare:.2f}", f"{bare / value:.3f}",
            (full - value) / 1e3 if subset else "-", _share(value, full, bare) if subset else "-",
        ])  # fmt: skip
    print_table(
        f"{TITLE}: instructions per request (valgrind, the gunicorn worker, one keep-alive connection)",
        ["variant", "k instructions", "vs bare", "bare's rate (P2 target >= 0.90)", "saved vs instrumented (k)",
         "share of overhead"],
        rows,
        [
            "counted, not timed: (1,000 requests - 0 requests) / 1,000 after 200 warm-up requests; all the "
            "worker's threads (gunicorn, the stdout flusher, the Loki sender: gzip and push) included",
            "bare's rate = bare / variant: the throughput ratio P2 measures, were the CPU per request all that "
            "counted; the floor is the README's guarantees written by hand at their least (bench/floor.py)",
        ],
    )  # fmt: skip


def _load_table(names: list[str], load: dict[str, list[dict[str, float]]], rounds: int, seconds: float) -> None:
    rps_bare = _med(load, "bare Flask", "rps")
    rows = []
    for name in names:
        rows.append([
            name, _med(load, name, "rps"), f"{_med(load, name, 'rps') / rps_bare:.2f}", _med(load, name, "p99_ms"),
            _med(load, name, "cpu"),
            _med(load, name, "request"), _med(load, name, "main"),
            _med(load, name, "flusher") + _med(load, name, "sender"),
            _med(load, name, "wait"), _med(load, name, "ctx"),
            " / ".join(f"{r['rps']:,.0f}" for r in load[name]),
        ])  # fmt: skip
    print_table(
        f"{TITLE}: under load (gunicorn 1 worker gthread x4, 16 connections), per request",
        ["variant", "req/s", "vs bare", "p99 ms", "worker CPU us", "request thr us", "main thr us",
         "flusher+sender us", "runnable-waiting us", "ctx switches", "req/s per round"],
        rows,
        [f"median of {rounds} interleaved rounds of {seconds:g} s; CPU from /proc/<worker>/task/*/schedstat"],
    )  # fmt: skip
