"""The shipper and the demo chain against a real Loki (runs only when LOKI_URL is set).

What the push sink can only imitate: that Loki accepts our pushes, keeps the correlation ID as
structured metadata (not a label), and answers the trail and error queries the stack uses.
"""

from __future__ import annotations

import json
import logging
import os
import time

import pytest
import requests

from correlation import context
from correlation.ids import new_correlation_id, shard_of
from correlation.loki.buffer import PushEntry
from correlation.loki.handler import LokiHandler
from correlation.loki.push import CONTENT_HEADERS, push_body
from correlation.settings import LokiSettings
from trail.logql import trail_query
from trail.loki_query import LokiQueryClient

pytestmark = [
    pytest.mark.real_loki,
    pytest.mark.skipif(not os.environ.get("LOKI_URL"), reason="needs a real Loki: set LOKI_URL"),
]

NS = 1_000_000_000


def _wait_for(client: LokiQueryClient, query: str, start_ns: int, count: int) -> list:
    deadline = time.monotonic() + 20  # ingested lines become queryable quickly, not instantly
    while True:
        entries = client.query_all(query, start_ns, time.time_ns() + NS)
        if len(entries) >= count or time.monotonic() > deadline:
            return entries
        time.sleep(0.5)


def test_shipped_lines_carry_the_id_as_metadata_not_label() -> None:
    settings = LokiSettings.from_env()
    service = f"real-loki-test-{os.getpid()}"
    handler = LokiHandler(
        LokiSettings(**{**settings.__dict__, "batch_max_wait_seconds": 0.1}), {"service_name": service, "env": "test"}
    )
    logger = logging.getLogger("test.real_loki")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    start = time.time_ns() - NS
    hop = context.Hop.start(new_correlation_id())
    try:
        with context.bound(hop):
            logger.info("first")
            logger.error("second, an error")
        logger.info("outside any request")
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert handler.stats.snapshot().sent_lines == 3 and sum(handler.stats.snapshot().dropped.values()) == 0

    client = LokiQueryClient(settings)
    entries = _wait_for(client, trail_query(hop.correlation_id), start, 2)
    assert sorted(json.loads(e.line)["message"] for e in entries) == ["first", "second, an error"]
    assert all(e.label("request_id") == hop.request_id for e in entries)
    errors = _wait_for(client, f'{{service_name="{service}"}} | level="error"', start, 1)
    assert [e.label("correlation_id") for e in errors] == [hop.correlation_id]

    labels = requests.get(
        settings.url.rstrip("/") + "/loki/api/v1/labels",
        headers=settings.auth_headers(),
        auth=settings.basic_auth,
        verify=settings.tls_verify,
        params={"start": str(start)},
        timeout=10,
    ).json()["data"]
    assert "correlation_id" not in labels and "request_id" not in labels
    assert {"service_name", "env"} <= set(labels)


def test_a_failed_checkout_is_found_and_followed_by_the_trail_cli(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from demo.run_local import start_chain
    from demo.services import SERVICES
    from fakes import free_port
    from trail.cli.main import main

    with (tmp_path / "chain.log").open("wb") as log:
        chain = start_chain(
            {name: free_port() for name in SERVICES},
            {"LOKI_URL": os.environ["LOKI_URL"], "LOKI_BATCH_MAX_WAIT_SECONDS": "0.2", "DEPLOY_ENV": "test"},
            stdout=log,
        )
        try:
            requests.post(f"{chain.urls['payments']}/admin/faults", json={"error_rate": 1.0}, timeout=5)
            failed = requests.post(f"{chain.urls['gateway']}/checkout", timeout=10)
            requests.post(f"{chain.urls['payments']}/admin/faults", json={"error_rate": 0.0}, timeout=5)
        finally:
            assert all(code == 0 for code in chain.stop().values())  # stopping flushes every service
    assert failed.status_code == 502
    cid = failed.headers["X-Correlation-ID"]

    deadline = time.monotonic() + 20
    while True:
        code = main(["--last-error", "--service", "payments", "--since", "5m", "--json"])
        document = json.loads(capsys.readouterr().out or "{}")
        if code == 0 and document.get("correlation_id") == cid or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert code == 0 and document["correlation_id"] == cid and document["complete"]
    hops = {hop["service"]: hop for hop in document["hops"]}
    assert {name: hops[name]["status"] for name in SERVICES} == {
        "gateway": 502,
        "orders": 502,
        "payments": 500,
        "inventory": 201,
    }
    assert hops["payments"]["parent_request_id"] == hops["orders"]["request_id"]


WORKERS_APP = """
import logging, os, time
import flask, correlation

app = flask.Flask("loki_workers")
correlation.Correlation(app)
log = logging.getLogger("loki_workers")

@app.get("/work")
def work():
    time.sleep(0.02)  # a sync worker busy for a moment, so the others take the next connections
    log.info("served by worker %d", os.getpid())
    return str(os.getpid())
"""
WORKERS_CONF = """
from correlation.gunicorn import *  # noqa: F403
logconfig_dict = gunicorn_logconfig()
workers = 3
worker_class = "sync"
timeout = 30
accesslog = None
control_socket_disable = True
"""


def _children(pid: int) -> list[str]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return f.read().split()


def test_every_line_of_a_three_worker_service_reaches_loki_and_trail_finds_each_workers_requests(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    import signal
    import subprocess
    import sys
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    from fakes import free_port, wait_until
    from trail.cli.main import main

    (tmp_path / "loki_workers.py").write_text(WORKERS_APP)
    (tmp_path / "loki_workers_conf.py").write_text(WORKERS_CONF)
    service = f"workers-{uuid.uuid4().hex[:10]}"  # this run's lines only
    environment = {**os.environ, "SERVICE_NAME": service, "DEPLOY_ENV": "test", "PYTHONPATH": str(tmp_path)}
    # Batches wait longer than the test runs: every line reaches Loki by its worker's flush at exit.
    environment.update({"LOG_LEVEL": "INFO", "LOKI_BATCH_MAX_WAIT_SECONDS": "60"})
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    url = f"http://127.0.0.1:{free_port()}"
    start = time.time_ns() - NS
    served: dict[str, int] = {}  # correlation ID -> the pid of the worker that answered
    with (tmp_path / "gunicorn.out").open("wb") as out:
        command = [sys.executable, "-m", "gunicorn", "--config", "python:loki_workers_conf", "--bind", url[7:]]
        command += ["--chdir", str(tmp_path), "loki_workers:app"]
        process = subprocess.Popen(command, env=environment, stdout=out)
    try:

        def one(_: int) -> tuple[str, int] | None:
            try:  # a new connection each: whichever worker is free takes it
                response = requests.get(f"{url}/work", timeout=10)
            except requests.ConnectionError:
                assert process.poll() is None, "gunicorn exited"
                return None
            assert response.status_code == 200
            return response.headers["X-Correlation-ID"], int(response.text)

        wait_until(lambda: one(0), 30, "gunicorn answering")  # not counted: its lines are checked too
        workers = set(wait_until(lambda: len(_children(process.pid)) == 3 and _children(process.pid), 30, "workers"))
        with ThreadPoolExecutor(6) as pool:
            for _ in range(10):  # bounded: until every worker has served some, 60 requests at least
                served.update(answer for answer in pool.map(one, range(30)) if answer)
                if {str(pid) for pid in served.values()} == workers and len(served) >= 60:
                    break
    finally:
        process.send_signal(signal.SIGTERM)  # every worker, then the arbiter, flushes to Loki at exit
        assert process.wait(30) == 0
    assert {str(pid) for pid in served.values()} == workers, "every worker served requests"

    written = [line for line in (tmp_path / "gunicorn.out").read_text().splitlines() if line.startswith("{")]
    client = LokiQueryClient(LokiSettings.from_env())
    entries = _wait_for(client, f'{{service_name="{service}", env="test"}}', start, len(written))
    assert sorted(e.line for e in entries) == sorted(written), "Loki holds exactly the lines written to stdout"
    access = [json.loads(e.line) for e in entries if json.loads(e.line).get("logger") == "correlation.access"]
    assert set(served) <= {line["correlation_id"] for line in access}, "every request's access line is in Loki"

    for pid in sorted(set(served.values())):  # one request served by each worker, followed by the CLI
        cid = next(c for c, p in served.items() if p == pid)
        assert main([cid, "--json"]) == 0
        document = json.loads(capsys.readouterr().out)
        [hop] = document["hops"]
        assert (hop["service"], hop["status"]) == (service, 200)
        assert any(f"served by worker {pid}" in line["message"] for line in hop["lines"]), hop


def test_a_trail_spanning_the_shard_label_is_found_whole() -> None:
    """Lines pushed as before the shard label (one stream, no ``shard``) and lines shipped now
    (the ID's shard's stream): Loki answers the trail query with both."""
    settings = LokiSettings.from_env()
    service = f"real-loki-shard-{os.getpid()}"
    labels = {"service_name": service, "env": "test"}
    hop = context.Hop.start(new_correlation_id())
    start = time.time_ns() - NS
    old = PushEntry.encode(start, json.dumps({"message": "before the label"}), {"correlation_id": hop.correlation_id})
    pushed = requests.post(
        settings.push_url,
        data=push_body([old], labels),
        headers={**CONTENT_HEADERS, **settings.auth_headers()},
        auth=settings.basic_auth,
        verify=settings.tls_verify,
        timeout=10,
    )
    assert pushed.status_code == 204, pushed.text
    handler = LokiHandler(LokiSettings(**{**settings.__dict__, "batch_max_wait_seconds": 0.1}), labels)
    logger = logging.getLogger("test.real_loki.shard")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        with context.bound(hop):
            logger.info("with the label")
    finally:
        logger.removeHandler(handler)
        handler.close()
    client = LokiQueryClient(settings)
    entries = _wait_for(client, trail_query(hop.correlation_id), start, 2)
    assert sorted(json.loads(e.line)["message"] for e in entries) == ["before the label", "with the label"]
    shard = shard_of(hop.correlation_id)
    labelled = _wait_for(client, f'{{service_name="{service}", shard="{shard}"}}', start, 1)
    assert [json.loads(e.line)["message"] for e in labelled] == ["with the label"]
