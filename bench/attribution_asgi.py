"""Where the ASGI request path's time goes: bench/attribution.py for ``CorrelationMiddleware``.

The same FastAPI ``GET /ping`` as the ASGI P2 (bench/asgi_apps.py), bare, with the yardsticks (a
pass-through middleware, asgi-correlation-id, the floor of bench/asgi_floor.py) and ours with each
part switched off in turn, measured four ways (``BENCH_ATTRIBUTION``):

- ``instructions`` (needs valgrind): machine instructions per request, the app driven in process
  (bench/asgi_inprocess.py: a scope, a ``receive``, a ``send``, no server), all threads counted
  (the Loki sender's gzip and pushes, the stdout writes): 1,000 requests after 200 warm-up ones
  minus the 200 alone. Counted, not timed: the figure a loaded machine cannot move.
- ``server`` (needs valgrind): the same under uvicorn (one process, h11), over one keep-alive
  connection: what the server adds (HTTP parsing, the two echoed headers written) and "bare's
  rate", the throughput ratio the ASGI P2 measures, were CPU all that counted.
- ``thread``: this thread's CPU per request in process, variants alternating round by round.
- ``bytecodes``: Python bytecodes per request by function (bench/bytecodes.py's counter).

With ``BENCH_ASGI_BASELINE`` (a git commit; default the one before the ASGI path's cuts, empty:
none) ours also runs from a ``git archive`` of that commit's ``app/``, in the same run: before and
after side by side. Timed rounds alternate the two trees' processes round by round.

``python -m bench attribution-asgi`` (not part of the default run).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from bench.asgi_inprocess import BYTECODE_APPS, VARIANTS
from bench.attribution import SIZE_BOUND_BATCHES, _count_requests, valgrind_count
from bench.baseline import baseline_app, python_path
from bench.load import wait_http
from bench.sinkproc import SinkProcess
from bench.table import median, print_table
from fakes import free_port

NAME = "attribution-asgi"
TITLE = "ASGI request-path attribution"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The commit before this work on the ASGI path (its figures in bench/README.md, "ASGI P2").
BASELINE_REF = os.environ.get("BENCH_ASGI_BASELINE", "8a28085")
#: Variants run from the baseline's tree too: ours and its parts (the yardsticks are not ours).
OURS = tuple(name for name, (factory, _) in VARIANTS.items() if factory == "instrumented")
#: Under uvicorn: the apps compared.
SERVER_APPS = {"bare FastAPI": "bare", "floor (bench/asgi_floor.py)": "floor", "ours": "instrumented"}


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


@contextmanager
def trees() -> Iterator[dict[str, str]]:
    """label -> the directory whose ``correlation`` package runs: this tree's ``app``, and the
    baseline's (left out, with a note, when git cannot make it)."""
    with baseline_app(BASELINE_REF) as baseline:
        found = {"": os.path.join(ROOT, "app")}
        if baseline is not None:
            found[f" @{BASELINE_REF}"] = baseline
        yield found


def _env(app_dir: str, env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **env, "PYTHONPATH": python_path(app_dir)}


def _counted_env(app_dir: str, env: dict[str, str]) -> dict[str, str]:
    # One hash seed: with a random one, dicts and sets lay out differently in every process and
    # two counts of the same code differ by a few thousand instructions a request.
    return {**_env(app_dir, {**env, **SIZE_BOUND_BATCHES}), "PYTHONHASHSEED": "0"}


def _child(app_dir: str, env: dict[str, str], *args: str) -> dict[str, Any]:
    child = subprocess.run([sys.executable, "-m", "bench.asgi_inprocess", *args], env=_env(app_dir, env), cwd=ROOT,
                           capture_output=True, text=True, timeout=1800, check=False)  # fmt: skip
    if child.returncode != 0:
        raise RuntimeError(f"bench.asgi_inprocess {' '.join(args)} failed ({child.returncode}): {child.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(child.stdout)
    return result


# -- instructions, in process and under uvicorn ---------------------------------------------------


def _valgrind(command: list[str], logs: str) -> list[str]:
    return ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
            f"--log-file={logs}/vg.%p", *command]  # fmt: skip


def _in_process_instructions(name: str, app_dir: str, env: dict[str, str], requests: int) -> int:
    with tempfile.TemporaryDirectory() as logs:
        command = [sys.executable, "-m", "bench.asgi_inprocess", "count", name, str(requests)]
        subprocess.run(_valgrind(command, logs), env=_counted_env(app_dir, env), cwd=ROOT,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800, check=True)  # fmt: skip
        return valgrind_count(logs)


def _server_instructions(factory: str, app_dir: str, env: dict[str, str], requests: int) -> int:
    port = free_port()
    with tempfile.TemporaryDirectory() as logs:
        command = [sys.executable, "-m", "uvicorn", "--factory", f"bench.asgi_apps:{factory}", "--host", "127.0.0.1",
                   "--port", str(port), "--no-access-log", "--log-level", "warning", "--app-dir", ROOT]  # fmt: skip
        proc = subprocess.Popen(_valgrind(command, logs), env=_counted_env(app_dir, env), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(url + "/ping", timeout=300)
            _count_requests(url, 200 + requests)  # 200 warm-up requests in both counts
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(300)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return valgrind_count(logs)


def _per_request(measure: Any, *args: Any, requests: int = 1_000) -> float:
    return (measure(*args, requests) - measure(*args, 0)) / requests


def _instructions(found: dict[str, str], env: dict[str, str], names: list[str], server: bool) -> dict[str, float]:
    jobs: list[tuple[str, Callable[..., int], str, str]] = []
    for label, app_dir in found.items():
        if server:
            jobs += [(f"{name}{label}", _server_instructions, factory, app_dir)
                     for name, factory in SERVER_APPS.items() if not label or factory == "instrumented"]  # fmt: skip
        else:
            jobs += [(f"{name}{label}", _in_process_instructions, name, app_dir)
                     for name in names if not label or name in OURS]  # fmt: skip
    with ThreadPoolExecutor(2) as pool:  # counts do not depend on what else runs
        counted = pool.map(lambda job: _per_request(job[1], job[2], job[3], env), jobs)
        return dict(zip([job[0] for job in jobs], counted, strict=True))


def _instructions_table(counted: dict[str, float], server: bool) -> None:
    bare = counted["bare FastAPI"]
    rows = []
    for name, value in counted.items():
        full = counted.get("ours" + name[name.index(" @") :] if " @" in name else "ours")
        part = name.startswith(("-", "edge")) and full is not None
        rows.append([name, value / 1e3, f"{(value - bare) / 1e3:+.1f}", f"{bare / value:.3f}",
                     f"{(full - value) / 1e3:.1f}" if part and full else "-"])  # fmt: skip
    where = "under uvicorn (1 process, h11; one keep-alive connection)" if server else "in process (no server)"
    print_table(
        f"{TITLE}: instructions per request, {where}",
        ["variant", "k instructions", "vs bare (k)", "bare's rate", "saved vs ours (k)"],
        rows,
        [
            "valgrind, counted, not timed: (1,200 requests - 200 warm-up requests) / 1,000; every thread of the "
            "process (the Loki sender's gzip and pushes, the stdout writes; batches by size, as at full speed)",
            "bare's rate = bare / variant: the throughput ratio the ASGI P2 measures, were CPU all that counted; "
            "@<commit>: ours from that commit's tree, in the same run",
        ],
    )  # fmt: skip


# -- the loop's thread, in process ----------------------------------------------------------------


def _thread(found: dict[str, str], env: dict[str, str], names: list[str], rounds: int) -> dict[str, list[float]]:
    """Each tree's child measures one round of its variants; the trees alternate, round by round."""
    results: dict[str, list[float]] = {}
    requests = os.environ.get("BENCH_INPROCESS_REQUESTS", "5000")
    order = list(found.items())
    for r in range(rounds):
        for label, app_dir in order if r % 2 == 0 else order[::-1]:
            wanted = [n for n in names if not label or n in OURS]
            child_env = {**env, "BENCH_INPROCESS_ROUNDS": "1", "BENCH_INPROCESS_REQUESTS": requests,
                         "BENCH_INPROCESS_VARIANTS": ",".join(wanted)}  # fmt: skip
            measured = _child(app_dir, child_env, "thread")["results"]
            for name, values in measured.items():
                results.setdefault(f"{name}{label}", []).extend(values)
    return results


def _thread_table(results: dict[str, list[float]], rounds: int) -> None:
    bare, bare_least = median(results["bare FastAPI"]), min(results["bare FastAPI"])
    rows = []
    for name, values in results.items():
        us, least = median(values), min(values)
        rows.append([name, f"{us:.1f}", f"{us - bare:+.1f}", f"{least:.1f}", f"{least - bare_least:+.1f}",
                     " / ".join(f"{v:.1f}" for v in values)])  # fmt: skip
    print_table(
        f"{TITLE}: the loop thread's CPU per request, in process (bench/asgi_inprocess.py)",
        ["variant", "us (median)", "vs bare", "us (least)", "vs bare", "per round"],
        rows,
        [
            f"{rounds} rounds of {os.environ.get('BENCH_INPROCESS_REQUESTS', '5000')} requests; each round one "
            "process per tree, the trees alternating; time.thread_time() of the loop's thread (the Loki sender's and "
            "the stdout flusher's CPU not included); no server",
            "least: the round least disturbed by other work (on a shared machine, load only ever adds time)",
        ],
    )


# -- bytecodes ----------------------------------------------------------------------------------


def _bytecodes(found: dict[str, str], env: dict[str, str]) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for label, app_dir in found.items():
        child_env = {**env, "BENCH_BYTECODE_APPS": ",".join(BYTECODE_APPS if not label else ("ours",))}
        for name, value in _child(app_dir, child_env, "bytecodes")["results"].items():
            results[f"{name}{label}"] = value
    return results


def _bytecodes_tables(results: dict[str, dict[str, Any]], top: int = 24) -> None:
    bare = sum(results["bare FastAPI"]["per_request"].values())
    rows = []
    for name, result in results.items():
        owners = result["per_request"]
        total = sum(owners.values())
        own = owners.get("library", 0.0) + owners.get("floor", 0.0) + owners.get("logging", 0.0)
        rows.append([name, f"{total:,.0f}", f"{total - bare:+,.0f}", f"{own:,.0f}"])
    print_table(
        f"{TITLE}: Python bytecodes per request (bench/asgi_inprocess.py, bench/bytecodes.py)",
        ["app", "bytecodes", "vs bare", "the library + logging, or the yardstick"],
        rows,
        ["counted with sys.settrace opcode events after a warm-up: not timed"],
    )
    columns = [name for name in results if name.startswith("ours")]
    functions: dict[str, list[float]] = {}
    for index, name in enumerate(columns):
        for function, n in results[name]["functions"].items():
            functions.setdefault(function, [0.0] * len(columns))[index] = n
    ranked = sorted(functions.items(), key=lambda item: -max(item[1]))[:top]
    print_table(
        f"{TITLE}: ours, the busiest functions (the library's and logging's)",
        ["owner and function", *columns],
        [[function, *(f"{n:.0f}" for n in counts)] for function, counts in ranked],
    )


def run() -> None:
    rounds = _int_env("BENCH_ROUNDS", 3) * 2 + 1
    names = [n for n in os.environ.get("BENCH_VARIANTS", "").split(",") if n] or list(VARIANTS)
    parts = os.environ.get("BENCH_ATTRIBUTION", "instructions,server,thread,bytecodes").split(",")
    have_valgrind = shutil.which("valgrind") is not None
    with SinkProcess(default="count") as sink, trees() as found:
        env = {"LOKI_URL": sink.url, "SERVICE_NAME": "bench", "DEPLOY_ENV": "bench"}
        for part in ("instructions", "server"):
            if part in parts and not have_valgrind:
                print(f"  {part}: skipped (install valgrind: apt-get install valgrind)\n")
            elif part in parts:
                _instructions_table(_instructions(found, env, names, part == "server"), part == "server")
        if "thread" in parts:
            _thread_table(_thread(found, env, names, rounds), rounds)
        if "bytecodes" in parts:
            _bytecodes_tables(_bytecodes(found, env))
