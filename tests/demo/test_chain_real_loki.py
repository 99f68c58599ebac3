"""The mixed demo chain against a real Loki (runs only when LOKI_URL is set): gateway, orders and
payments on Flask (gunicorn gthread workers), inventory on FastAPI (gunicorn's uvicorn workers),
and the notifications worker (Celery, on a private redis-server), all shipping to that Loki. One
checkout's trail, as ``trail --json <id>`` reads it back from Loki, has every hop with its parent.

What tests/demo/test_chain.py and test_celery_worker.py (the fake Loki) can only imitate: that
Loki accepts what each kind of process ships, and answers the trail query with every hop.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from correlation import schema
from demo import local_worker, notifications
from demo.run_local import start_chain, wait_healthy
from demo.services import SERVICES
from fakes import free_port
from tests.support.broker import Broker
from tests.support.stack import require_tool
from trail.cli.main import main as trail_main

pytestmark = [
    pytest.mark.real_loki,
    pytest.mark.skipif(not os.environ.get("LOKI_URL"), reason="needs a real Loki: set LOKI_URL"),
]

#: From the checkout's answer until its trail is whole in Loki (batches leave every 0.2 s).
TRAIL_DEADLINE_SECONDS = 30.0
RESERVATION_LOOKUP = "/reservations/{reservation_id}"  # FastAPI's template syntax: the worker's call


def hop_shape(hop: dict[str, Any]) -> tuple[Any, ...]:
    return hop["service"], hop.get("route"), hop.get("status")


def trail_document(cid: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """``trail --json <cid>`` once, reading LOKI_URL: the document, or {} when not found yet."""
    code = trail_main([cid, "--json"])
    out = capsys.readouterr().out
    return json.loads(out) if code == 0 and out else {}


def whole(document: dict[str, Any]) -> bool:
    services = {hop["service"] for hop in document.get("hops", ())}
    routes = {hop.get("route") for hop in document.get("hops", ())}
    return bool(document.get("complete")) and services >= {*SERVICES, "notifications"} and RESERVATION_LOOKUP in routes


def test_a_checkouts_trail_read_back_from_loki_has_every_hop_flask_fastapi_and_the_task(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_tool("redis-server")  # never a skip: `make test` installs it
    env = {
        "LOKI_URL": os.environ["LOKI_URL"],
        "LOKI_BATCH_MAX_WAIT_SECONDS": "0.2",
        "DEPLOY_ENV": "test",
    }
    with (tmp_path / "redis.log").open("wb") as redis_log, (tmp_path / "services.log").open("wb") as log:
        broker = Broker(free_port(), tmp_path, redis_log)
        broker.start()
        worker = None
        chain = None
        try:
            env["CELERY_BROKER_URL"] = broker.url
            chain = start_chain({name: free_port() for name in SERVICES}, env, stdout=log)
            port = free_port()
            worker_env = {**env, "INVENTORY_URL": chain.urls["inventory"]}
            worker = local_worker.start_worker(port, worker_env, stdout=log)
            wait_healthy(f"http://127.0.0.1:{port}", worker, timeout=30)
            assert requests.get(f"{chain.urls['inventory']}/healthz", timeout=5).headers["server"] == "uvicorn"
            response = requests.post(f"{chain.urls['gateway']}/checkout", timeout=10)
            assert response.status_code == 201, response.text
            cid = response.headers[schema.CORRELATION_HEADER]

            document: dict[str, Any] = {}
            deadline = time.monotonic() + TRAIL_DEADLINE_SECONDS
            while not whole(document) and time.monotonic() < deadline:
                time.sleep(0.5)  # ingested lines become queryable quickly, not instantly
                document = trail_document(cid, capsys)
        finally:
            worker_code = local_worker.stop(worker, timeout=20) if worker is not None else 0
            codes = chain.stop() if chain is not None else {}
            broker.stop()
    assert worker_code == 0 and all(code == 0 for code in codes.values()), (worker_code, codes)

    hops = {hop["request_id"]: hop for hop in document.get("hops", ())}
    assert whole(document), f"the trail in Loki by the deadline: {sorted(map(hop_shape, hops.values()))}"
    by_shape = {hop_shape(hop): hop for hop in hops.values()}
    assert sorted(by_shape) == sorted(
        [
            ("gateway", "/checkout", 201),
            ("orders", "/orders", 201),
            ("payments", "/payments", 201),
            ("inventory", "/reservations", 201),
            ("notifications", notifications.TASK_NAME, 200),
            ("inventory", RESERVATION_LOOKUP, 200),
        ]
    ), "one hop each, nothing else"
    gateway, orders = by_shape["gateway", "/checkout", 201], by_shape["orders", "/orders", 201]
    task = by_shape["notifications", notifications.TASK_NAME, 200]
    assert gateway["parent_request_id"] is None and gateway["depth"] == 0
    assert orders["parent_request_id"] == gateway["request_id"]
    for child in (("payments", "/payments", 201), ("inventory", "/reservations", 201)):
        assert by_shape[child]["parent_request_id"] == orders["request_id"], child
    assert (task["parent_request_id"], task["async"], task["state"]) == (orders["request_id"], True, "success")
    assert by_shape["inventory", RESERVATION_LOOKUP, 200]["parent_request_id"] == task["request_id"]
    assert document["unknown_lines"] == []
