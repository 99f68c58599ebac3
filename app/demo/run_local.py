"""Run the whole demo chain on 127.0.0.1 under gunicorn, without Docker (``make run-local``).

gateway http://127.0.0.1:8080, orders :8081, payments :8082, inventory :8083. Logs go to stdout
and to ``$LOKI_URL`` (default http://127.0.0.1:3100). When ``redis-server`` and Celery are
installed, a private redis-server (:6390) and the notifications worker (control :8084) run too;
when not, it says so and the HTTP chain runs alone. Ctrl-C or SIGTERM stops every service
gracefully (each flushes its buffered log lines first).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO

from demo.services import DEFAULT_PORTS, SERVICES

#: How long a service may take to answer /healthz after start, and to stop after SIGTERM.
START_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 35.0  # gunicorn's graceful_timeout (30 s) plus a margin
#: The directory holding the `demo` package. The demo is not installed with the library, so each
#: gunicorn child finds it (and its `--config python:demo.gunicorn_conf`) through PYTHONPATH.
DEMO_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Chain:
    """The running services: their processes and base URLs."""

    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> dict[str, int | None]:
        """SIGTERM every service, wait up to ``timeout``, SIGKILL the stragglers. Returns exit codes."""
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes: dict[str, int | None] = {}
        for name, proc in self.processes.items():
            try:
                codes[name] = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        return codes


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll `url`/healthz until it answers 200; RuntimeError if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with code {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url}/healthz did not answer 200 within {timeout} s")


def start_service(
    name: str,
    port: int,
    env: Mapping[str, str],
    *,
    host: str = "127.0.0.1",
    stdout: IO[bytes] | int | None = None,
    extra_args: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """Start one service under gunicorn (not waiting for it to be healthy)."""
    service_env = {**os.environ, **env, "SERVICE_NAME": name, "PORT": str(port), "BIND_HOST": host}
    inherited = service_env.get("PYTHONPATH")
    service_env["PYTHONPATH"] = f"{DEMO_SOURCE_ROOT}{os.pathsep}{inherited}" if inherited else DEMO_SOURCE_ROOT
    command = [sys.executable, "-m", "gunicorn", "--config", "python:demo.gunicorn_conf", *extra_args]
    command.append("demo.services:create_app()")
    # Own session: a Ctrl-C reaches only us, and we stop the services gracefully.
    return subprocess.Popen(command, env=service_env, stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True)


def start_chain(
    ports: Mapping[str, int] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    host: str = "127.0.0.1",
    stdout: IO[bytes] | int | None = None,
    extra_args: tuple[str, ...] = (),
) -> Chain:
    """Start every service (leaves first) and wait until each answers /healthz."""
    ports = {**DEFAULT_PORTS, **(ports or {})}
    urls = {name: f"http://{host}:{ports[name]}" for name in SERVICES}
    downstream = {f"{other.upper()}_URL": url for other, url in urls.items()}
    chain = Chain(urls=urls)
    try:
        for name in reversed(SERVICES):  # leaves first, so callers find them up
            service_env = {**(env or {}), **downstream}
            chain.processes[name] = start_service(
                name, ports[name], service_env, host=host, stdout=stdout, extra_args=extra_args
            )
        for name in SERVICES:
            wait_healthy(urls[name], chain.processes[name], START_TIMEOUT_SECONDS)
    except BaseException:
        chain.stop(timeout=5)
        raise
    return chain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loki-url", default=os.environ.get("LOKI_URL", "http://127.0.0.1:3100"))
    parser.add_argument(
        "--base-port", type=int, default=DEFAULT_PORTS["gateway"], help="gateway port; the others follow"
    )
    parser.add_argument("--redis-port", type=int, default=6390, help="the private redis-server (Celery broker)")
    args = parser.parse_args(argv)
    ports = {name: args.base_port + n for n, name in enumerate(SERVICES)}

    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    # The notifications worker needs redis-server and Celery; without them the HTTP chain runs alone.
    from demo.local_worker import LocalBackground

    background = LocalBackground.start_broker(args.redis_port)
    broker = {"CELERY_BROKER_URL": background.broker_url} if background.broker_url else {}
    try:
        chain = start_chain(ports, env={"LOKI_URL": args.loki_url, **broker})
    except BaseException:
        background.stop(timeout=5)
        raise
    try:
        worker_url = background.start_worker(
            args.base_port + len(SERVICES), {"LOKI_URL": args.loki_url}, chain.urls["inventory"], START_TIMEOUT_SECONDS
        )
    except BaseException:
        background.stop(timeout=5)
        chain.stop(timeout=5)
        raise
    for name, url in chain.urls.items():
        print(f"{name:<10} {url}", flush=True)
    if worker_url:
        print(f"{'worker':<10} {worker_url} (notifications; broker {background.broker_url})", flush=True)
    else:
        print(f"notifications worker: not started: {background.missing}", file=sys.stderr, flush=True)
    print(
        f"logs -> {args.loki_url or 'stdout only'}; try: curl -si -X POST {chain.urls['gateway']}/checkout", flush=True
    )
    while not stopping.wait(0.5):
        running = {**chain.processes, **background.processes}
        dead = [name for name, proc in running.items() if proc.poll() is not None]
        if dead:
            print(f"stopping: {', '.join(dead)} exited", file=sys.stderr, flush=True)
            break
    codes: dict[str, int | None] = {**background.stop(STOP_TIMEOUT_SECONDS)}
    codes.update(chain.stop())
    print(f"stopped: {codes}", flush=True)
    return 0 if all(code == 0 for code in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
