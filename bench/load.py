"""HTTP load for P2/P3: wrk when installed (``apt-get install wrk``), else a Python fallback.

Both report requests/s, p50/p99 latency in ms and the error count (socket errors, timeouts and
non-2xx/3xx answers) for a fixed number of connections over a fixed duration, loopback only.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    tool: str


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * _UNITS[unit]


def parse_wrk(output: str) -> LoadResult:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    errors = 0
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socket:
        errors += sum(int(g) for g in socket.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    return LoadResult(total, rps, p50, p99, errors, "wrk")


def run_load(
    url: str,
    *,
    connections: int,
    seconds: float,
    method: str = "GET",
    body: str = "",
    threads: int = 2,
    timeout_s: float = 10.0,
) -> LoadResult:
    if have_wrk():
        return _wrk(url, connections, seconds, method, body, threads, timeout_s)
    return _python_load(url, connections, seconds, method, body, timeout_s)


def _wrk(
    url: str, connections: int, seconds: float, method: str, body: str, threads: int, timeout_s: float
) -> LoadResult:
    args = [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        f"--timeout={timeout_s:g}s",
        "--latency",
    ]
    script = None
    if method != "GET" or body:
        fd, script = tempfile.mkstemp(suffix=".lua")
        with os.fdopen(fd, "w") as f:
            f.write(
                f'wrk.method = "{method}"\nwrk.body = [[{body}]]\nwrk.headers["Content-Type"] = "application/json"\n'
            )
        args += ["-s", script]
    try:
        out = subprocess.run(args + [url], capture_output=True, text=True, timeout=seconds + timeout_s + 30, check=True)
    finally:
        if script:
            os.unlink(script)
    return parse_wrk(out.stdout)


def _python_load(url: str, connections: int, seconds: float, method: str, body: str, timeout_s: float) -> LoadResult:
    """Keep-alive clients in threads. Weaker than wrk: the client shares the GIL and the 2 CPUs."""
    parts = urlsplit(url)
    host, path = parts.hostname, parts.path or "/"
    if host is None:
        raise ValueError(f"no host in {url!r}")
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds
    headers = {"Content-Type": "application/json"} if body else {}

    def client() -> None:
        conn = http.client.HTTPConnection(host, parts.port, timeout=timeout_s)
        mine: list[float] = []
        bad = 0
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                conn.request(method, path, body=body or None, headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status >= 400:
                    bad += 1
            except (OSError, http.client.HTTPException):
                bad += 1
                conn.close()
                conn = http.client.HTTPConnection(host, parts.port, timeout=timeout_s)
                continue
            mine.append(time.perf_counter() - started)
        conn.close()
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    started = time.perf_counter()
    workers = [threading.Thread(target=client) for _ in range(connections)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")

    return LoadResult(len(latencies), len(latencies) / elapsed, pct(0.50), pct(0.99), errors[0], "python")


def wait_http(url: str, timeout: float = 20.0) -> None:
    """Wait until ``url`` answers 200 (RuntimeError after ``timeout`` seconds)."""
    import urllib.request

    from fakes import wait_until

    def answers() -> bool:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)

    try:
        wait_until(answers, timeout, f"{url} to answer 200", interval=0.1)
    except AssertionError as exc:
        raise RuntimeError(str(exc)) from None
