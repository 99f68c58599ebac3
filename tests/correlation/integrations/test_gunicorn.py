"""With a real gunicorn: logging configured the dictConfig way, gunicorn's own lines shipped, and
the requests of a worker killed for a timeout ending their trail with the reason."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import requests

from fakes import FakeLoki, free_port, wait_until

pytestmark = pytest.mark.process

APP = textwrap.dedent("""
    import time, flask, correlation

    app = flask.Flask("slowpoke")
    correlation.Correlation(app)  # Settings from the environment; logging from logconfig_dict

    @app.get("/slow/<int:seconds>")
    def slow(seconds):
        time.sleep(seconds)
        return "done"

    @app.get("/fast")
    def fast():
        return "ok"
""")

CONF = textwrap.dedent("""
    from correlation.integrations.gunicorn import worker_abort  # noqa: F401 - the hook
    # The team's own dictConfig, with the library's handlers named in it the logging way.
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "correlation.JsonFormatter"}},
        "filters": {"correlation": {"()": "correlation.CorrelationFilter"}},
        "handlers": {
            "stdout": {"class": "correlation.StdoutHandler", "stream": "ext://sys.stdout",
                       "formatter": "json", "filters": ["correlation"]},
            "loki": {"class": "correlation.LokiHandler", "url": "LOKI", "batch_max_wait_seconds": 0.1,
                     "labels": {"service_name": "slowpoke", "env": "test"}},
        },
        "root": {"level": "INFO", "handlers": ["stdout", "loki"]},
        "loggers": {"gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True}},
    }
    workers = 1
    # The sync worker: its heartbeat stops while a request runs, so --timeout kills it. (A gthread
    # worker's heartbeat runs beside its request threads: only a stuck process times out there.)
    worker_class = "sync"
    timeout = 2
    accesslog = None
    control_socket_disable = True
""")


@pytest.fixture
def slowpoke(tmp_path: Path, loki_sink: FakeLoki):
    (tmp_path / "slowpoke_app.py").write_text(APP)
    (tmp_path / "slowpoke_conf.py").write_text(CONF.replace('"LOKI"', repr(loki_sink.url)))
    port = free_port()
    env = {**os.environ, "SERVICE_NAME": "slowpoke", "PYTHONPATH": str(tmp_path)}
    env.pop("LOKI_URL", None)
    log = (tmp_path / "gunicorn.out").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            "python:slowpoke_conf",
            "--bind",
            f"127.0.0.1:{port}",
            "--chdir",
            str(tmp_path),
            "slowpoke_app:app",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url), 20, "gunicorn answering")
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
        log.close()


def _answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/fast", timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


def _lines(loki: FakeLoki) -> list[dict]:
    return [json.loads(e.line) for e in loki.entries]


def test_dictconfig_handlers_ship_app_and_gunicorn_lines(slowpoke: str, loki_sink: FakeLoki) -> None:
    cid = requests.get(f"{slowpoke}/fast", headers={"X-Correlation-ID": "dict-config-1"}, timeout=5).headers[
        "X-Correlation-ID"
    ]
    assert cid == "dict-config-1"
    lines = wait_until(
        lambda: [line for line in _lines(loki_sink) if line.get("correlation_id") == cid] or None,
        10,
        "the access line in Loki",
    )
    assert lines[0]["service"] == "slowpoke" and lines[0]["route"] == "/fast"
    boot = [line for line in _lines(loki_sink) if line["logger"] == "gunicorn.error"]
    assert any("Booting worker" in line["message"] for line in boot), "gunicorn's own lines reach Loki as JSON"
    assert all(line["service"] == "slowpoke" for line in boot)


def test_a_worker_timeout_ends_the_trail_with_the_reason(
    slowpoke: str, loki_sink: FakeLoki, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    try:  # gunicorn may still answer a bare 500 as the worker dies, or just close the connection
        status = requests.get(f"{slowpoke}/slow/30", headers={"X-Correlation-ID": "doomed-1"}, timeout=15).status_code
    except requests.RequestException:
        status = None
    assert status in (500, None)

    def aborted() -> list[dict] | None:
        return [
            line
            for line in _lines(loki_sink)
            if line.get("correlation_id") == "doomed-1" and line["logger"] == "correlation.access"
        ] or None

    (line,) = wait_until(aborted, 15, "the aborted request's access line in Loki")
    assert line["status"] == 500 and line["route"] == "/slow/<int:seconds>" and line["level"] == "ERROR"
    assert "worker timeout" in line["message"] and line["duration_ms"] >= 2000
    timeouts = wait_until(
        lambda: [x for x in _lines(loki_sink) if "WORKER TIMEOUT" in x["message"]] or None,
        10,
        "gunicorn's WORKER TIMEOUT line in Loki",
    )
    assert timeouts[0]["service"] == "slowpoke" and timeouts[0]["level"] == "CRITICAL"
    # ... and `trail --last-error` finds it.
    from trail.cli.main import main as trail

    monkeypatch.setenv("LOKI_URL", loki_sink.url)
    capsys.readouterr()
    assert trail(["--last-error", "--service", "slowpoke", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["correlation_id"] == "doomed-1"
