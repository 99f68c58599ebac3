"""The ASGI edge under real servers: a FastAPI app (tests/support/asgi_app.py) run by uvicorn and
by gunicorn with two uvicorn workers. Every test runs against both.

The ID is echoed and propagated (httpx's AsyncClient, ``requests`` from the threadpool); many
interleaved requests on one event loop each keep their own hop; a streaming response's access line
lasts to its last chunk; hostile IDs are replaced and counted; an unhandled exception is a 500
problem+json with the ID and its ``error_type`` on the access line; a websocket is a hop with its
line at close; lifespan reaches the app; the two workers' metrics are summed."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from websockets.sync.client import connect

from correlation import ids
from correlation.integrations.requests import uninstrument_requests
from fakes import HeaderEcho, LoopbackServer, free_port, raw_request, serving, wait_until
from tests.support import REPO

pytestmark = pytest.mark.process

ROOT = REPO
SERVICE = "asgi-svc"
STREAM_PAUSE = 0.3
GUNICORN_CONF = textwrap.dedent("""
    from correlation.integrations.gunicorn import *  # noqa: F403 - the hooks
    bind = "127.0.0.1:{port}"
    workers = 2
    worker_class = "uvicorn_worker.UvicornWorker"
    accesslog = None
    control_socket_disable = True
    logconfig_dict = gunicorn_logconfig()
""")
OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0"}


@dataclass
class Service:
    server: str
    url: str
    log: Path

    def lines(self) -> list[dict[str, Any]]:
        """Every JSON line the service wrote so far."""
        out = []
        for text in self.log.read_text(errors="replace").splitlines():
            if text.startswith("{"):
                try:
                    out.append(json.loads(text))
                except ValueError:
                    continue
        return out

    def access_lines(self, **match: Any) -> list[dict[str, Any]]:
        return [
            line
            for line in self.lines()
            if line.get("logger") == "correlation.access" and all(line.get(k) == v for k, v in match.items())
        ]

    def wait_access(self, timeout: float = 15, count: int = 1, **match: Any) -> list[dict[str, Any]]:
        found = wait_until(
            lambda: len(lines := self.access_lines(**match)) >= count and lines, timeout, f"access line {match}"
        )
        return found


@pytest.fixture(scope="module")
def downstream() -> Iterator[LoopbackServer]:
    with LoopbackServer(HeaderEcho) as server:
        yield server


def _server_command(server: str, port: int, workdir: Path) -> list[str]:
    """The test app under ``uvicorn``, or ``gunicorn`` with two uvicorn workers and the hooks."""
    if server == "uvicorn":
        command = [sys.executable, "-m", "uvicorn", "tests.support.asgi_app:app", "--host", "127.0.0.1"]
        return [*command, "--port", str(port), "--no-access-log"]
    conf = workdir / "gunicorn_conf.py"
    conf.write_text(GUNICORN_CONF.format(port=port))
    return [sys.executable, "-m", "gunicorn", "--config", str(conf), "tests.support.asgi_app:app"]


@pytest.fixture(scope="module", params=["uvicorn", "gunicorn"])
def service(
    request: pytest.FixtureRequest, downstream: LoopbackServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    workdir = tmp_path_factory.mktemp(request.param)
    port = free_port()
    command = _server_command(request.param, port, workdir)
    env = {
        "PYTHONPATH": f"{ROOT}:{ROOT / 'app'}",
        "SERVICE_NAME": SERVICE,
        "DOWNSTREAM_URL": downstream.url,
        "STREAM_PAUSE_SECONDS": str(STREAM_PAUSE),
        "LOKI_URL": "",
        "METRICS_PORT": "",
    }
    log = workdir / "service.log"
    with serving(command, f"http://127.0.0.1:{port}", "/healthz", env=env, log=log, cwd=ROOT) as url:
        yield Service(request.param, url, log)


def test_lifespan_reaches_the_app(service: Service) -> None:
    assert requests.get(f"{service.url}/healthz", timeout=5).json()["lifespan"] == ["startup"]


@pytest.mark.parametrize("client", ["httpx", "requests"])
def test_the_id_is_echoed_and_propagated(service: Service, client: str) -> None:
    cid = f"cid-{client}-{service.server}"
    response = requests.get(f"{service.url}/call/{client}", headers={"X-Correlation-ID": cid}, timeout=10)
    assert response.status_code == 200
    assert response.headers["X-Correlation-ID"] == cid and response.headers["X-Service-Name"] == SERVICE
    body = response.json()
    sent = body["sent"]  # what the downstream received
    assert sent["x-correlation-id"] == cid and sent["x-caller-service"] == SERVICE
    assert sent["x-parent-request-id"] == body["hop"]["request_id"], "the callee's parent is this hop"
    (line,) = service.wait_access(correlation_id=cid)
    assert line["request_id"] == body["hop"]["request_id"] and line["route"] == f"/call/{client}"
    assert line["status"] == 200 and line["service"] == SERVICE


def test_interleaved_requests_each_keep_their_own_hop(service: Service) -> None:
    count = 60

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            calls = [
                client.get(
                    f"{service.url}/items/{n}",
                    params={"pause": (n % 7) * 0.02},  # finishing in another order than they started
                    headers={"X-Correlation-ID": f"cid-many-{service.server}-{n}"},
                )
                for n in range(count)
            ]
            return await asyncio.gather(*calls)

    responses = asyncio.run(run())
    request_ids = set()
    for n, response in enumerate(responses):
        cid = f"cid-many-{service.server}-{n}"
        body = response.json()
        assert response.headers["X-Correlation-ID"] == cid
        assert body["before"] == body["after"] and body["after"]["correlation_id"] == cid, "the hop kept across awaits"
        request_ids.add(body["after"]["request_id"])
    assert len(request_ids) == count, "a hop of its own for each request"
    for n in range(count):
        cid = f"cid-many-{service.server}-{n}"
        (access,) = service.wait_access(correlation_id=cid)
        app_lines = [line for line in service.lines() if line.get("message") == f"item {n} looked up"]
        assert [(line["correlation_id"], line["request_id"]) for line in app_lines] == [(cid, access["request_id"])]
        assert access["path"] == f"/items/{n}" and access["route"] == "/items/{item_id}", "the template, not the path"


def test_a_streaming_response_is_timed_to_its_last_chunk(service: Service) -> None:
    cid = f"cid-stream-{service.server}"
    response = requests.get(f"{service.url}/stream", headers={"X-Correlation-ID": cid}, timeout=10)
    assert response.text == "chunk 0\nchunk 1\nchunk 2\n" and response.headers["X-Correlation-ID"] == cid
    (line,) = service.wait_access(correlation_id=cid)
    assert line["duration_ms"] >= 2 * STREAM_PAUSE * 1000 * 0.95, line


def test_hostile_ids_are_replaced_and_counted(service: Service) -> None:
    hostile = b"X-Correlation-ID: evil id\x1b[31m<script>"
    status, headers = raw_request(f"{service.url}/items/h", "GET", [hostile])
    fresh = headers["x-correlation-id"]
    assert status == 200 and ids.is_valid_id(fresh) and "evil" not in fresh
    (line,) = service.wait_access(correlation_id=fresh)
    assert line["path"] == "/items/h"
    warnings = [item for item in service.lines() if "rejected inbound X-Correlation-ID" in item.get("message", "")]
    assert any(fresh in item["message"] and "\x1b" not in item["message"] for item in warnings), "logged escaped"

    def counted() -> float:
        text = requests.get(f"{service.url}/metrics", timeout=5).text
        return _sum(text, "correlation_rejected_ids_total", f'service="{SERVICE}"')

    wait_until(lambda: counted() >= 1, 10, "the refusal counted")


def test_an_unhandled_exception_is_a_problem_json_500_with_the_id(service: Service) -> None:
    cid = f"cid-boom-{service.server}"
    response = requests.get(f"{service.url}/boom", headers={"X-Correlation-ID": cid}, timeout=10)
    assert response.status_code == 500 and response.headers["X-Correlation-ID"] == cid
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["correlation_id"] == cid and problem["status"] == 500 and problem["title"]
    assert "secret" not in response.text, "an exception's message stays private"
    (line,) = service.wait_access(correlation_id=cid)
    assert line["status"] == 500 and line["level"] == "ERROR" and line["route"] == "/boom"
    assert line["error_type"] == "RuntimeError" and line["origin"] == "self"
    (logged,) = [item for item in service.lines() if item.get("correlation_id") == cid and item.get("exception")]
    assert "secret detail" in logged["exception"] and logged["request_id"] == line["request_id"], "traceback, once"


def test_a_browser_gets_an_html_500_with_the_id(service: Service) -> None:
    browser = {"Accept": "text/html,*/*;q=0.8", "X-Correlation-ID": f"cid-html-{service.server}"}
    response = requests.get(f"{service.url}/boom", headers=browser, timeout=10)
    assert response.status_code == 500 and response.headers["Content-Type"].startswith("text/html")
    assert f"<code>cid-html-{service.server}</code>" in response.text


def test_a_websocket_is_a_hop_with_its_line_at_close(service: Service) -> None:
    cid = f"cid-ws-{service.server}"
    url = service.url.replace("http://", "ws://") + "/ws/lobby"
    with connect(url, additional_headers={"X-Correlation-ID": cid}, open_timeout=10) as websocket:
        assert websocket.response is not None and websocket.response.headers["X-Correlation-ID"] == cid
        assert not service.access_lines(correlation_id=cid), "no line while it is open"
        websocket.send("hello")
        answer = json.loads(websocket.recv(timeout=10))
    assert answer["echo"] == "hello" and answer["correlation_id"] == cid
    (line,) = service.wait_access(correlation_id=cid)
    assert line["status"] == 101 and line["route"] == "/ws/{room}" and line["path"] == "/ws/lobby"
    assert line["request_id"] == answer["request_id"]


def test_every_workers_requests_are_counted_in_any_scrape(service: Service) -> None:
    labels = (f'service="{SERVICE}"', 'route="/items/{item_id}"', 'method="GET"', 'status="200"')

    def total() -> float:
        text = requests.get(f"{service.url}/metrics", headers=OPENMETRICS, timeout=5).text
        return _sum(text, "http_server_request_duration_seconds_count", *labels)

    before = total()
    pids = set()
    with requests.Session() as session:
        for n in range(40):  # new connections: the kernel spreads them over the workers
            pids.add(session.get(f"{service.url}/healthz", headers={"Connection": "close"}, timeout=5).json()["pid"])
            session.get(f"{service.url}/items/sum-{n}", headers={"Connection": "close"}, timeout=5)
    if service.server == "gunicorn":
        assert len(pids) == 2, "both workers answered"
    for _ in range(6):  # whichever worker answers the scrape: the sum
        assert wait_until(lambda: total() - before == 40 or None, 10, "the sum of both workers' counts")


def _sum(exposition: str, name: str, *labels: str) -> float:
    """The sum of ``name``'s samples that carry every one of ``labels`` (in any order)."""
    total = 0.0
    for found in re.finditer(rf'^{name}\{{((?:[^"}}]|"[^"]*")*)\}} (\S+)', exposition, re.M):
        if all(label in found.group(1).split(",") for label in labels):
            total += float(found.group(2))
    return total


def test_importing_the_library_or_the_middleware_imports_no_framework() -> None:
    code = (
        "import sys, correlation, correlation.integrations, correlation.integrations.asgi;"
        "print(sorted(name for name in ('starlette', 'fastapi', 'uvicorn') if name in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.unit
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_the_docs_fastapi_example_runs(caplog: pytest.LogCaptureFixture) -> None:
    from starlette.testclient import TestClient

    from tests.support.frontends import doc_example

    example = doc_example("FastAPI and ASGI")
    assert len([line for line in example.splitlines() if line.strip()]) <= 12, "the example stays about ten lines"
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    namespace: dict[str, Any] = {}
    try:
        exec(compile(example, "docs/integrations.md", "exec"), namespace)  # noqa: S102 - our doc's example
        with (
            caplog.at_level(logging.INFO, "correlation.access"),
            TestClient(namespace["app"], client=("127.0.0.1", 50000)) as client,
        ):
            response = client.get("/items/7", headers={"X-Correlation-ID": "cid-docs"})
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)
        uninstrument_requests()
    assert response.json() == {"item": "7", "correlation_id": "cid-docs"}
    assert response.headers["X-Correlation-ID"] == "cid-docs" and response.headers["X-Service-Name"] == "inventory"
    (access,) = [record for record in caplog.records if record.name == "correlation.access"]
    assert access.__dict__["route"] == "/items/{item_id}" and access.__dict__["correlation_id"] == "cid-docs"


def test_a_client_that_leaves_before_its_response_gets_a_499_line(service: Service) -> None:
    host, port = service.url.removeprefix("http://").split(":")
    cid = f"cid-left-{service.server}"
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"GET /linger HTTP/1.1\r\nHost: {host}\r\nX-Correlation-ID: {cid}\r\n\r\n".encode())
        time.sleep(0.3)  # the request is in the app, waiting on its client
    (line,) = service.wait_access(correlation_id=cid)
    assert line["status"] == 499 and "client disconnected before any response" in line["message"], line
    assert line["level"] == "INFO", "the client's doing, not a failure of this hop"


def test_metrics_port_serves_metrics_apart_from_the_app(tmp_path: Path) -> None:
    """Under uvicorn the middleware's own listener; under gunicorn the arbiter's (its when_ready hook)."""
    port, metrics_port = free_port(), free_port()
    command = [sys.executable, "-m", "uvicorn", "tests.support.asgi_app:app", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--no-access-log"]
    env = {"PYTHONPATH": f"{ROOT}:{ROOT / 'app'}", "SERVICE_NAME": SERVICE, "LOKI_URL": ""}
    env["METRICS_PORT"] = f"127.0.0.1:{metrics_port}"
    with serving(command, f"http://127.0.0.1:{port}", "/healthz", env=env, log=tmp_path / "log", cwd=ROOT) as url:
        requests.get(f"{url}/items/m", headers={"X-Correlation-ID": "cid-metrics-port"}, timeout=5)
        assert requests.get(f"{url}/metrics", timeout=5).status_code == 404, "not on the application's port"
        scrape = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", headers=OPENMETRICS, timeout=5).text
    assert '# {correlation_id="cid-metrics-port"}' in scrape


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_lines_still_buffered_when_the_server_stops_reach_loki(tmp_path: Path, server: str) -> None:
    """uvicorn, once it has shut down on SIGTERM, raises SIGTERM again with the handler it found:
    the default one (a plain uvicorn process; gunicorn's uvicorn workers reset it), so the process
    ends by the signal, without atexit or logging.shutdown. The edge delivers the shipper's lines
    when the lifespan shuts down, before that: none of them is lost."""
    from fakes import FakeLoki

    port = free_port()
    command = _server_command(server, port, tmp_path)
    with FakeLoki() as loki:
        env = {
            "PYTHONPATH": f"{ROOT}:{ROOT / 'app'}",
            "SERVICE_NAME": SERVICE,
            "LOKI_URL": loki.url,
            "LOKI_BATCH_MAX_WAIT_SECONDS": "60",  # nothing leaves before the stop
            "METRICS_PORT": "",
        }
        cids = [f"stop-{server}-{n}" for n in range(5)]
        with serving(command, f"http://127.0.0.1:{port}", "/healthz", env=env, log=tmp_path / "log", cwd=ROOT) as url:
            for cid in cids:
                assert requests.get(f"{url}/items/1", headers={"X-Correlation-ID": cid}, timeout=10).status_code == 200
            assert not [e for e in loki.entries if e.metadata.get("correlation_id") in cids], "sent before the stop"
        access = [e for e in loki.entries if e.json.get("logger") == "correlation.access"]
        shipped = {e.metadata.get("correlation_id") for e in access}
    assert set(cids) <= shipped, (tmp_path / "log").read_text(errors="replace")[-3000:]
