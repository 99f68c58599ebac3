"""Shipping faults with real gunicorn processes: SIGTERM flush, --preload, a stalled Loki, the
spool of a recycled or killed worker."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from correlation.schema import ACCESS_LOGGER
from demo.run_local import start_service, wait_healthy
from fakes import FakeLoki, free_port, wait_until
from tests.support import REPO

pytestmark = pytest.mark.process


@pytest.fixture
def start_payments(tmp_path: Path) -> Iterator:
    """Start the payments service under gunicorn with extra env/args; stopped at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str], *extra_args: str) -> tuple[str, subprocess.Popen[bytes]]:
        port = free_port()
        log = (tmp_path / f"payments-{port}.log").open("wb")
        proc = start_service("payments", port, env, stdout=log, extra_args=extra_args)
        started.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc, 20)
        return url, proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _pay(url: str, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        response = requests.post(f"{url}/payments", json={"order_id": "o1"}, timeout=5)
        assert response.status_code == 201
        ids.append(response.headers["X-Correlation-ID"])
    return ids


def _access_ids(sink: FakeLoki) -> set[str]:
    return {e.metadata["correlation_id"] for e in sink.entries if e.json.get("logger") == ACCESS_LOGGER}


def test_sigterm_flushes_buffered_lines_within_the_graceful_timeout(loki_sink: FakeLoki, start_payments) -> None:
    # A 60 s batch delay: without the flush at worker exit these lines would still be in memory.
    url, proc = start_payments({"LOKI_URL": loki_sink.url, "LOKI_BATCH_MAX_WAIT_SECONDS": "60"})
    ids = _pay(url, 30)
    assert _access_ids(loki_sink) == set(), "still buffered"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert _access_ids(loki_sink) == set(ids)


def test_preload_every_worker_ships(loki_sink: FakeLoki, start_payments, tmp_path: Path) -> None:
    # With --preload the app (and its handler, whose sender thread already ran for the startup
    # line and holds its spool directory) is built in the master; each forked worker must start
    # its own sender, with a spool directory of its own.
    env = {"LOKI_URL": loki_sink.url, "LOKI_BATCH_MAX_WAIT_SECONDS": "0.1", "LOKI_SPOOL_DIR": str(tmp_path / "spool")}
    url, _ = start_payments(env, "--preload", "--workers", "2")
    ids = _pay(url, 40)
    loki_sink.wait_for(lambda entries: _access_ids(loki_sink) >= set(ids), timeout=15)
    # Master and two workers, one spool directory each (a sender opens its own as it starts).
    wait_until(lambda: len(list((tmp_path / "spool").iterdir())) == 3, 10, "three spool directories")


def test_a_stalled_loki_does_not_slow_or_fail_requests(loki_sink: FakeLoki, start_payments) -> None:
    loki_sink.default = "stall"  # accepts, reads the push, never answers (for 60 s)
    url, _ = start_payments({"LOKI_URL": loki_sink.url, "LOKI_BATCH_MAX_WAIT_SECONDS": "0.05"})
    slowest = 0.0
    for _ in range(40):
        started = time.monotonic()
        assert requests.post(f"{url}/payments", json={}, timeout=5).status_code == 201
        slowest = max(slowest, time.monotonic() - started)
    assert slowest < 1.0, f"a request took {slowest:.2f} s while Loki stalls for 60 s"

    def buffered() -> float:
        metrics = requests.get(f"{url}/metrics", timeout=5).text
        found = [line for line in metrics.splitlines() if line.startswith("loki_shipper_buffered_lines{")]
        assert found, "loki_shipper_buffered_lines is served"
        return float(found[0].rsplit(" ", 1)[1])

    # Polled: the demo runs 2 workers, and the one not scraped writes its gauge every second.
    wait_until(lambda: buffered() > 0, 10, "the lines waiting in memory, not in the request")


def test_lines_kept_on_disk_at_shutdown_are_sent_by_the_restarted_service(
    loki_sink: FakeLoki, start_payments, tmp_path: Path
) -> None:
    env = {
        "LOKI_URL": loki_sink.url,
        "LOKI_SPOOL_DIR": str(tmp_path / "spool"),
        "LOKI_BATCH_MAX_WAIT_SECONDS": "0.05",
        "LOKI_FLUSH_TIMEOUT_SECONDS": "1",
        "LOKI_BACKOFF_MAX_SECONDS": "0.2",
    }
    loki_sink.default = 503  # Loki down for the whole life of the first process
    url, proc = start_payments(env)
    ids = _pay(url, 20)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert _access_ids(loki_sink) == set() and list((tmp_path / "spool").rglob("*.json.gz"))

    loki_sink.default = 204  # Loki is back; the service restarts on the same spool
    start_payments(env)
    loki_sink.wait_for(lambda entries: _access_ids(loki_sink) >= set(ids), timeout=20)


def _spool_dirs(spool: Path) -> dict[int, Path]:
    """The spool's owner directories (``lokispool-p<pid>-<hex>``) by their owner's pid."""
    return {int(p.name.split("-")[1][1:]): p for p in spool.glob("lokispool-p*-*")}


def _access_ids_on_disk(directory: Path) -> set[str]:
    ids = set()
    for segment in directory.glob("*.json.gz"):
        for value in json.loads(gzip.decompress(segment.read_bytes()))["streams"][0]["values"]:
            if json.loads(value[1]).get("logger") == ACCESS_LOGGER:
                ids.add(value[2]["correlation_id"])
    return ids


def _spool_env(loki_sink: FakeLoki, spool: Path) -> dict[str, str]:
    return {
        "LOKI_URL": loki_sink.url,
        "LOKI_SPOOL_DIR": str(spool),
        "LOKI_BATCH_MAX_WAIT_SECONDS": "0.05",
        "LOKI_FLUSH_TIMEOUT_SECONDS": "1",
        "LOKI_BACKOFF_MAX_SECONDS": "0.2",
    }


def test_a_recycled_workers_spool_is_adopted_by_its_replacement(
    loki_sink: FakeLoki, start_payments, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    loki_sink.default = 503  # each recycled worker leaves its lines on disk
    url, _ = start_payments(_spool_env(loki_sink, spool), "--workers", "2", "--max-requests", "6")
    ids = _pay(url, 20)
    loki_sink.default = 204
    loki_sink.wait_for(lambda entries: _access_ids(loki_sink) >= set(ids), timeout=30)
    boots = [e for e in loki_sink.entries if "Booting worker" in e.json.get("message", "")]
    assert len(boots) >= 3, "a worker was recycled"
    # The master and the two workers alive now; the recycled workers' directories were adopted.
    wait_until(lambda: len(_spool_dirs(spool)) == 3, 15, "three owner directories")
    assert all(p.name.startswith("lokispool-p") for p in spool.iterdir()), sorted(os.listdir(spool))


def test_a_killed_workers_spool_is_adopted_by_the_worker_that_replaces_it(
    loki_sink: FakeLoki, start_payments, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    loki_sink.default = 503
    # A small memory bound: the sender moves memory to disk whenever it is half full.
    env = {**_spool_env(loki_sink, spool), "LOKI_BUFFER_MAX_BYTES": "16384"}
    url, master = start_payments(env, "--workers", "2")
    _pay(url, 40)

    def a_worker_with_lines_on_disk() -> tuple[int, Path, set[str]] | None:
        for pid, directory in _spool_dirs(spool).items():
            ids = _access_ids_on_disk(directory) if pid != master.pid else set()
            if ids:
                return pid, directory, ids
        return None

    pid, directory, on_disk = wait_until(a_worker_with_lines_on_disk, 15, "a worker's lines on disk")
    os.kill(pid, signal.SIGKILL)  # mid-work: no flush, no clean-up
    wait_until(lambda: not directory.exists(), 20, "the dead worker's directory adopted")
    loki_sink.default = 204
    loki_sink.wait_for(lambda entries: _access_ids(loki_sink) >= on_disk, timeout=20)


def test_with_loki_down_the_process_holds_about_the_buffer_bound_not_more() -> None:
    """The byte bound is memory: a process shipping 60,000 lines to a closed port with a 4 MiB
    bound grows by the bound, the one batch the sender keeps retrying (1 MiB) and some slack.
    (The same child as `make bench`'s memory benchmark, smaller. When each entry held orjson's
    4 KiB output buffer, this grew by 37 MiB.)"""
    bound = 4 * 1024 * 1024
    root = REPO
    child = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--child", "ship", "60000", str(bound)],
        cwd=root, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    result = json.loads(child.stdout.strip().splitlines()[-1])
    grew_mib = (result["rss_kib"] - result["rss_before_kib"]) / 1024
    assert result["dropped"].get("buffer_full", 0) > 0, "the bound was reached"
    assert result["buffered_bytes"] <= bound
    assert grew_mib <= bound / 2**20 + 1 + 5, f"grew {grew_mib:.1f} MiB for a {bound // 2**20} MiB bound"
