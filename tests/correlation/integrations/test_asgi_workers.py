"""ASGI servers with several worker processes, for real: ``uvicorn --workers 2`` and gunicorn's
uvicorn workers without the hooks are told that their metrics are not shared (stderr, and
``correlation_metrics_unshared 1`` in every scrape); a shared directory no server manages is
warned about; one uvicorn process, ``uvicorn --reload`` and gunicorn with the hooks are not."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import requests

from fakes import free_port, serving
from tests.support import REPO

pytestmark = pytest.mark.process

SERVICE = "asgi-workers"
UNSHARED = f'correlation_metrics_unshared{{service="{SERVICE}"}} 1.0'
NOT_SHARED = "their metrics are not shared"
UNMANAGED = "but no server process manages it"
GUNICORN_CONF = textwrap.dedent("""
    {hooks}
    bind = "127.0.0.1:{port}"
    workers = 2
    worker_class = "uvicorn_worker.UvicornWorker"
    accesslog = None
    control_socket_disable = True
""")
HOOKS = "from correlation.integrations.gunicorn import *  # noqa: F403"


def _run(tmp_path: Path, server: str, env: dict[str, str] | None = None) -> tuple[str, list[str]]:
    """Start ``server``, send requests on new connections and scrape; (its output, the last scrape)."""
    port = free_port()
    if server.startswith("gunicorn"):
        conf = tmp_path / "gunicorn_conf.py"
        conf.write_text(GUNICORN_CONF.format(port=port, hooks=HOOKS if server == "gunicorn-hooks" else ""))
        command = [sys.executable, "-m", "gunicorn", "--config", str(conf), "tests.support.asgi_app:app"]
    else:
        command = [sys.executable, "-m", "uvicorn", "tests.support.asgi_app:app", "--host", "127.0.0.1"]
        command += ["--port", str(port), "--no-access-log"]
        command += {"uvicorn": [], "uvicorn-workers": ["--workers", "2"]}.get(server) or [
            "--reload", "--reload-dir", str(tmp_path)
        ]  # fmt: skip
    environment = {"PYTHONPATH": f"{REPO}:{REPO / 'app'}", "SERVICE_NAME": SERVICE, "LOKI_URL": "", "METRICS_PORT": ""}
    log = tmp_path / "server.log"
    with serving(
        command, f"http://127.0.0.1:{port}", "/healthz", env={**environment, **(env or {})}, log=log, cwd=REPO
    ) as url:
        for _ in range(20):  # new connections: spread over the workers
            assert requests.get(f"{url}/items/1", timeout=10).status_code == 200
        scrapes = [requests.get(f"{url}/metrics", timeout=10).text for _ in range(6)]
    return log.read_text(errors="replace"), scrapes


@pytest.mark.parametrize("server", ["uvicorn-workers", "gunicorn-without-hooks"])
def test_several_workers_that_do_not_share_their_metrics_say_so(tmp_path: Path, server: str) -> None:
    output, scrapes = _run(tmp_path, server)
    warnings = [line for line in output.splitlines() if NOT_SHARED in line]
    assert warnings and "2 worker processes" in warnings[0], output[-3000:]
    assert all(UNSHARED in scrape for scrape in scrapes), "whichever worker answers, the scrape says so"


@pytest.mark.parametrize("server", ["uvicorn", "uvicorn-reload", "gunicorn-hooks"])
def test_one_process_or_shared_metrics_are_not_warned_about(tmp_path: Path, server: str) -> None:
    output, scrapes = _run(tmp_path, server)
    assert server != "uvicorn-reload" or "Started reloader process" in output, "a reloader parent and its child"
    assert "correlation:" not in output and NOT_SHARED not in output, output[-3000:]
    assert not any("correlation_metrics_unshared{" in scrape for scrape in scrapes)
    assert all('http_server_request_duration_seconds_count{method="GET",route="/items/{item_id}"' in s for s in scrapes)


def test_a_shared_directory_no_server_manages_is_warned_about(tmp_path: Path) -> None:
    """uvicorn --workers with PROMETHEUS_MULTIPROC_DIR: the counts are summed, but no arbiter archives
    an exited worker (its gauges would stay) nor cleans an earlier run's files."""
    output, scrapes = _run(tmp_path, "uvicorn-workers", {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "shared")})
    assert UNMANAGED in output and NOT_SHARED not in output, output[-3000:]
    counted = [
        line for line in scrapes[-1].splitlines() if line.startswith("http_server_request_duration_seconds_count")
    ]
    assert any(line.endswith(" 20.0") for line in counted), "the workers' counts are summed"


def test_metrics_port_under_several_uvicorn_workers_never_fails_a_request(tmp_path: Path) -> None:
    """Each worker builds the app, and only the first can bind METRICS_PORT: the others say so
    and go on serving (raising there failed every request of theirs with a 500)."""
    metrics_port = free_port()
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "tests.support.asgi_app:app", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--no-access-log", "--workers", "2"]
    env = {
        "PYTHONPATH": f"{REPO}:{REPO / 'app'}",
        "SERVICE_NAME": SERVICE,
        "LOKI_URL": "",
        "METRICS_PORT": f"127.0.0.1:{metrics_port}",
    }
    log = tmp_path / "server.log"
    with serving(command, f"http://127.0.0.1:{port}", "/healthz", env=env, log=log, cwd=REPO) as url:
        statuses = [requests.get(f"{url}/items/1", timeout=10).status_code for _ in range(30)]
        scrape = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
    output = log.read_text(errors="replace")
    assert statuses == [200] * 30, output[-3000:]
    assert f"METRICS_PORT=127.0.0.1:{metrics_port}: cannot listen" in output, output[-3000:]
    assert scrape.status_code == 200 and UNSHARED in scrape.text, "the one that listens says it is not the sum"
