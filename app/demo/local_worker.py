"""The notifications worker and its broker as local child processes, next to the chain.

``make run-local`` and the tests run the worker (``python -m demo.notifications``) from source
beside a private ``redis-server`` on 127.0.0.1 that appends every write to disk, so queued
messages survive a restart. :class:`LocalBackground` is ``make run-local``'s pair of them;
:func:`start_redis`, :func:`wait_redis`, :func:`start_worker` and :func:`stop` are the parts the
tests use one by one. The worker itself (its Celery app, task and control endpoint) is
:mod:`demo.notifications`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO

from demo.calls import WORKER_SERVICE as SERVICE

#: The directory holding the `demo` package (it runs from source, not installed).
DEMO_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def redis_available() -> bool:
    return shutil.which("redis-server") is not None


def start_redis(port: int, data_dir: str, *, stdout: IO[bytes] | int | None = None) -> subprocess.Popen[bytes]:
    """A private redis-server on 127.0.0.1:``port``, appending every write to ``data_dir`` (fsync
    each write), so queued messages survive a restart. Not waited for: see :func:`wait_redis`."""
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", data_dir, "--save", ""]
    command += ["--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "yes"]
    return subprocess.Popen(command, stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True)


def wait_redis(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Until redis answers PING; RuntimeError if it exits or ``timeout`` passes."""
    import redis  # the broker's client, with celery

    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server on port {port} exited with code {proc.returncode}")
        try:
            if client.ping():
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"redis-server on port {port} did not answer PING within {timeout} s")


def start_worker(
    port: int, env: Mapping[str, str], *, stdout: IO[bytes] | int | None = None
) -> subprocess.Popen[bytes]:
    """``python -m demo.notifications`` with ``env`` (not waited for: poll its /healthz). The demo
    is not installed: the child finds it through PYTHONPATH, as the chain's gunicorns do."""
    worker_env = {**os.environ, **env, "PORT": str(port), "BIND_HOST": "127.0.0.1"}
    inherited = worker_env.get("PYTHONPATH")
    worker_env["PYTHONPATH"] = f"{DEMO_SOURCE_ROOT}{os.pathsep}{inherited}" if inherited else DEMO_SOURCE_ROOT
    command = [sys.executable, "-m", "demo.notifications"]
    return subprocess.Popen(command, env=worker_env, stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True)


@dataclass
class LocalBackground:
    """``make run-local``'s broker and worker: a private redis-server, then the worker; or, when
    redis-server or Celery is not installed, nothing, and :attr:`missing` says what to install."""

    missing: str | None = None
    broker_url: str | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    data_dir: str | None = None

    @classmethod
    def start_broker(cls, port: int) -> LocalBackground:
        if not redis_available():
            return cls(missing="redis-server is not installed (Debian: apt-get install redis-server)")
        if importlib.util.find_spec("celery") is None:
            return cls(missing="Celery is not installed (pip install -e 'app[demo]')")
        data_dir = tempfile.mkdtemp(prefix="run-local-redis-")
        redis = start_redis(port, data_dir, stdout=subprocess.DEVNULL)
        try:
            wait_redis(port, redis, 10)
        except RuntimeError as exc:  # e.g. the port is taken: run without the worker, and say why
            stop(redis, 5)
            shutil.rmtree(data_dir, ignore_errors=True)
            return cls(missing=f"{exc} (another port: --redis-port)")
        return cls(broker_url=f"redis://127.0.0.1:{port}/0", processes={"redis": redis}, data_dir=data_dir)

    def start_worker(self, port: int, env: Mapping[str, str], inventory_url: str, timeout: float) -> str | None:
        """Start the worker and wait for its /healthz; its URL, or None without a broker."""
        if self.broker_url is None:
            return None
        worker_env = {**env, "CELERY_BROKER_URL": self.broker_url, "INVENTORY_URL": inventory_url}
        self.processes[SERVICE] = proc = start_worker(port, worker_env)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
                    if response.status == 200:
                        return url
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the notifications worker did not become healthy at {url} within {timeout} s")

    def stop(self, timeout: float) -> dict[str, int]:
        """The worker first (its running tasks finish), then redis; the exit codes."""
        codes = {name: stop(proc, timeout) for name, proc in reversed(self.processes.items())}
        if self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        return codes


def stop(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM (a worker finishes its running tasks and flushes its log lines), then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
