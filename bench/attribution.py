"""Where the request path's time goes: bare vs instrumented with each part switched off in turn.

Two measurements, each variant in its own process, rounds interleaved, medians shown:

- ``in-process``: the app's WSGI callable called in a loop on one thread (no server, no socket):
  CPU per request of the calling thread (``time.thread_time``) and of the whole process
  (``time.process_time``: the stdout flusher and the Loki sender included). Contention-free and
  steady even on a busy machine: the part's own cost.
- ``under load``: the P2 apps under gunicorn (1 worker, gthread x4) and the same load generator;
  besides req/s and p99, the worker's threads are read from ``/proc/<pid>/task/*/schedstat``
  before and after each round: on-CPU time per request by thread (request threads, gunicorn's
  main thread, stdout flusher, Loki sender), time spent runnable but waiting for a CPU, and
  context switches per request (what background wake-ups and lock hand-offs cost).

``python -m bench attribution`` (not part of the default run). Variants: bench/switches.py.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench import switches
from bench.load import run_load, wait_http
from bench.p2_request import ROOT, start_app, stop_app
from bench.sinkproc import SinkProcess
from bench.table import median, print_table
from tests.fakes import free_port

NAME = "attribution"
TITLE = "Request-path attribution"

#: name -> (factory, environment): each part switched off in turn, then everything but the edge.
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "bare Flask": ("bare", {}),
    "instrumented": ("instrumented", {}),
    **{f"- {part}": ("instrumented", {"BENCH_OFF": part}) for part in switches.PATCHED_PARTS},
    **{f"- {part}": ("instrumented", env) for part, (env, _) in switches.ENV_PARTS.items()},
    "edge only": ("instrumented", {"BENCH_OFF": "access,metrics,inflight", "LOKI_URL": ""}),
}
#: OS thread name prefix (set by switches.name_os_threads, 15 bytes) -> column.
THREAD_GROUPS = (("ThreadPoolExecu", "request"), ("log-stdout-flus", "flusher"), ("loki-sender", "sender"))
#: Loki batches of 256 KiB (~600 access lines), whatever the time: see _inprocess_child.
SIZE_BOUND_BATCHES = {"LOKI_BATCH_MAX_WAIT_SECONDS": "3600", "LOKI_BATCH_MAX_BYTES": "262144"}
#: tid -> (group, on-CPU ns, runnable-waiting ns, context switches)
Threads = dict[int, tuple[str, int, int, int]]


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


# -- in-process ---------------------------------------------------------------------------------


def _environ() -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET", "PATH_INFO": "/ping", "SCRIPT_NAME": "", "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1:8000", "HTTP_USER_AGENT": "bench",
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False, "wsgi.version": (1, 0),
    }  # fmt: skip


def _inprocess_child(factory: str, requests: int, chunks: int, result_path: str) -> None:
    """In the child: build the app, call it ``chunks`` x ``requests`` times, write the CPU figures."""
    from bench import apps

    app = getattr(apps, factory)()
    base = _environ()

    def start_response(*_: Any) -> None:
        return None

    def one() -> None:
        body = app(dict(base), start_response)
        for _ in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()

    for _ in range(300 if chunks == 0 else 2_000):
        one()
    if chunks == 0:  # counted by valgrind: just the requests, then out without clean-up
        # Batches by size, not by time: under valgrind a second holds ~50x fewer lines, so
        # time-bound batches would charge each line ~50x its share of a write or a push.
        for handler in logging.getLogger().handlers:
            if hasattr(handler, "flush_interval"):
                handler.flush_interval = 3600.0  # StdoutHandler: writes every 64 KiB instead
        for _ in range(requests):
            one()
        os._exit(0)
    thread_us, process_us = [], []
    for _ in range(chunks):
        t0, p0 = time.thread_time(), time.process_time()
        for _ in range(requests):
            one()
        thread_us.append((time.thread_time() - t0) / requests * 1e6)
        process_us.append((time.process_time() - p0) / requests * 1e6)
    with open(result_path, "w") as f:
        json.dump({"thread_us": min(thread_us), "process_us": min(process_us)}, f)


def _instructions(name: str, env: dict[str, str], requests: int) -> float | None:
    """Instructions per request of the whole process (valgrind), or None without valgrind.

    Counted, not timed: the one figure here that other processes on the machine cannot move.
    The difference between ``requests`` requests and none, so start-up does not count.
    """
    if shutil.which("valgrind") is None:
        return None
    factory, extra = VARIANTS[name]
    counts = []
    for n in (0, requests):
        out = subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
             sys.executable, "-m", "bench.attribution", factory, str(n), "0", os.devnull],
            env={**os.environ, **env, **SIZE_BOUND_BATCHES, **extra, "PYTHONPATH": ROOT},
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=True, timeout=900,
        )  # fmt: skip
        found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
        if found is None:
            raise RuntimeError(f"valgrind printed no instruction count: {out.stderr[-500:]}")
        counts.append(int(found.group(1).replace(",", "")))
    return (counts[1] - counts[0]) / requests


def _inprocess(name: str, env: dict[str, str], requests: int) -> dict[str, float]:
    factory, extra = VARIANTS[name]
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        subprocess.run(
            [sys.executable, "-m", "bench.attribution", factory, str(requests), "5", result.name],
            env={**os.environ, **env, **extra, "PYTHONPATH": ROOT},
            cwd=ROOT, stdout=subprocess.DEVNULL, check=True, timeout=600,
        )  # fmt: skip
        with open(result.name) as f:
            return dict(json.load(f))


# -- under load ---------------------------------------------------------------------------------


def _worker_pid(master: int) -> int:
    from tests.fakes import wait_until

    def child() -> int:
        with open(f"/proc/{master}/task/{master}/children") as f:
            pids = f.read().split()
        return int(pids[0]) if pids else 0

    return wait_until(child, 20, "the gunicorn worker")


def _threads(pid: int) -> Threads:
    """tid -> (group, on-CPU ns, runnable-waiting ns, context switches), for every thread of ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            base = f"/proc/{pid}/task/{tid}"
            with open(f"{base}/comm") as f:
                comm = f.read().strip()
            with open(f"{base}/schedstat") as f:
                run_ns, wait_ns, _ = (int(x) for x in f.read().split())
            with open(f"{base}/status") as f:
                switches_ = sum(int(line.split()[1]) for line in f if "ctxt_switches:" in line)
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
        group = "main" if int(tid) == pid else next((g for p, g in THREAD_GROUPS if comm.startswith(p)), "other")
        out[int(tid)] = (group, run_ns, wait_ns, switches_)
    return out


def _delta(before: Threads, after: Threads) -> dict[str, float]:
    sums: dict[str, float] = {}
    for tid, (group, run_ns, wait_ns, ctx) in after.items():
        _, run0, wait0, ctx0 = before.get(tid, (group, 0, 0, 0))
        sums[group] = sums.get(group, 0.0) + (run_ns - run0)
        sums["wait"] = sums.get("wait", 0.0) + (wait_ns - wait0)
        sums["ctx"] = sums.get("ctx", 0.0) + (ctx - ctx0)
    return sums


def _under_load(sink: SinkProcess, names: list[str], rounds: int, seconds: float) -> dict[str, list[dict[str, float]]]:
    env = {"LOKI_URL": sink.url, "SERVICE_NAME": "bench", "DEPLOY_ENV": "bench", "BENCH_THREAD_NAMES": "1"}
    ports = {name: free_port() for name in names}
    procs = {name: start_app(VARIANTS[name][0], ports[name], {**env, **VARIANTS[name][1]}) for name in names}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    try:
        urls = {name: f"http://127.0.0.1:{port}/ping" for name, port in ports.items()}
        workers = {name: _worker_pid(proc.pid) for name, proc in procs.items()}
        for url in urls.values():
            wait_http(url)
            run_load(url, connections=16, seconds=1)  # warm-up
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                before = _threads(workers[name])
                load = run_load(urls[name], connections=16, seconds=seconds)
                used = _delta(before, _threads(workers[name]))
                count = max(1, load.requests)
                row = {"rps": load.rps, "p99_ms": load.p99_ms, "errors": float(load.errors)}
                # ns in all -> us per request; context switches per request
                row.update({key: value / count / (1 if key == "ctx" else 1e3) for key, value in used.items()})
                results[name].append(row)
    finally:
        for proc in procs.values():
            stop_app(proc)
    return results


def run() -> None:
    rounds = _int_env("BENCH_ROUNDS", 3)
    seconds = float(os.environ.get("BENCH_P2_SECONDS", "5"))
    requests = _int_env("BENCH_ATTRIBUTION_REQUESTS", 4_000)
    names = [n for n in os.environ.get("BENCH_VARIANTS", "").split(",") if n] or list(VARIANTS)
    parts = os.environ.get("BENCH_ATTRIBUTION", "instructions,inprocess,load").split(",")
    with SinkProcess() as sink:
        env = {"LOKI_URL": sink.url, "SERVICE_NAME": "bench", "DEPLOY_ENV": "bench"}
        if "instructions" in parts:
            with ThreadPoolExecutor(2) as pool:  # counts do not depend on what else runs
                counted = dict(zip(names, pool.map(lambda n: _instructions(n, env, 1_000), names), strict=True))
            _instructions_table(names, counted)
        if "inprocess" in parts:
            cpu: dict[str, list[dict[str, float]]] = {name: [] for name in names}
            for r in range(rounds):
                for name in names if r % 2 == 0 else names[::-1]:
                    cpu[name].append(_inprocess(name, env, requests))
            _inprocess_table(names, cpu, rounds, requests)
        if "load" in parts:
            _load_table(names, _under_load(sink, names, rounds, seconds), rounds, seconds)


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
        rows.append([name, value / 1e3, f"{value / bare:.2f}", (full - value) / 1e3, _share(value, full, bare)])
    print_table(
        f"{TITLE}: instructions per request (valgrind, whole process, WSGI call on one thread)",
        ["variant", "k instructions", "vs bare", "saved vs instrumented (k)", "share of overhead"],
        rows,
        [
            "counted, not timed: (1,000 requests - 0 requests) / 1,000 after a warm-up; the stdout flusher "
            "and the Loki sender included"
        ],
    )


def _inprocess_table(names: list[str], cpu: dict[str, list[dict[str, float]]], rounds: int, requests: int) -> None:
    full, bare = _med(cpu, "instrumented", "thread_us"), _med(cpu, "bare Flask", "thread_us")
    rows = []
    for name in names:
        thread_us, process_us = _med(cpu, name, "thread_us"), _med(cpu, name, "process_us")
        rows.append([name, thread_us, process_us, process_us - thread_us, full - thread_us,
                     _share(thread_us, full, bare)])  # fmt: skip
    print_table(
        f"{TITLE}: in-process CPU per request (WSGI call on one thread, no server)",
        ["variant", "thread us", "process us", "background us", "saved vs instrumented", "share of overhead"],
        rows,
        [
            f"median over {rounds} interleaved rounds of the fastest of 5 chunks of {requests:,} requests, each "
            "variant in its own process; CPU time on a shared VM still moves with the neighbours' load"
        ],
    )


def _load_table(names: list[str], load: dict[str, list[dict[str, float]]], rounds: int, seconds: float) -> None:
    rps_bare = _med(load, "bare Flask", "rps")
    rows = []
    for name in names:
        rows.append([
            name, _med(load, name, "rps"), f"{_med(load, name, 'rps') / rps_bare:.2f}", _med(load, name, "p99_ms"),
            sum(_med(load, name, g) for g in ("request", "main", "flusher", "sender", "other")),
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


if __name__ == "__main__":
    _inprocess_child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
