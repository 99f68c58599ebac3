"""The demo's own parts: fault settings and `make run-local`'s runner."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from correlation.integrations.requests import uninstrument_requests
from correlation.settings import ConfigError
from demo.faults import Faults, FaultSettings, InjectedFault
from demo.run_local import DEMO_SOURCE_ROOT
from demo.services import SERVICES, create_app


def test_fault_settings_validate_and_keep_unset_keys() -> None:
    base = FaultSettings(0.2, 50)
    assert FaultSettings.parse({"latency_ms": 10}, base) == FaultSettings(0.2, 10)
    bad_settings: list[dict[str, object]] = [
        {"error_rate": 1.5},
        {"error_rate": "x"},
        {"latency_ms": -1},
        {"latency_ms": 1.5},
        {"latency_ms": 10**6},
        {"oops": 1},
    ]
    for bad in bad_settings:
        with pytest.raises(ValueError):
            FaultSettings.parse(bad)
    with pytest.raises(ConfigError, match="FAULT_ERROR_RATE"):
        FaultSettings.from_env({"FAULT_ERROR_RATE": "2"})
    assert FaultSettings.from_env({"FAULT_ERROR_RATE": "0.5", "FAULT_LATENCY_MS": "7"}) == FaultSettings(0.5, 7)


def test_faults_fail_requests_at_the_set_rate() -> None:
    always = Faults(FaultSettings(error_rate=1.0))
    with pytest.raises(InjectedFault):
        always.apply()
    Faults(FaultSettings()).apply()  # no fault: returns


@pytest.fixture
def restore_process_state() -> Iterator[None]:
    """create_app sets up root logging and patches requests: undo both after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)
    uninstrument_requests()


def test_admin_endpoint(restore_process_state: None) -> None:
    app = create_app("payments", env={"FAULT_LATENCY_MS": "1"})
    client = app.test_client()
    assert client.get("/admin/faults").get_json() == {"error_rate": 0.0, "latency_ms": 1}
    assert client.post("/admin/faults", json={"error_rate": 1.0}).get_json() == {"error_rate": 1.0, "latency_ms": 1}
    failed = client.post("/payments", json={})
    assert failed.status_code == 500 and failed.headers["X-Correlation-ID"]
    bad = client.post("/admin/faults", json={"error_rate": 3})
    assert bad.status_code == 400 and "outside [0, 1]" in bad.get_json()["error"]
    assert client.post("/admin/faults", data="nope").status_code == 400
    assert client.post("/admin/faults", json={"error_rate": 0}).status_code == 200
    assert client.post("/payments", json={}).status_code == 201


@pytest.mark.parametrize("service", ["gateway", "payments"])
def test_the_fault_switch_answers_only_this_machine_without_a_token(restore_process_state: None, service: str) -> None:
    """The gateway is the public edge: a peer elsewhere must not make every request fail."""
    client = create_app(service, env={}).test_client()
    for peer in ("172.18.0.1", "203.0.113.9", "::ffff:10.0.0.1"):
        remote = {"REMOTE_ADDR": peer}
        assert client.get("/admin/faults", environ_base=remote).status_code == 403, peer
        assert client.post("/admin/faults", json={"error_rate": 1}, environ_base=remote).status_code == 403, peer
    for peer in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        assert client.get("/admin/faults", environ_base={"REMOTE_ADDR": peer}).status_code == 200, peer
    assert client.get("/admin/faults").get_json()["error_rate"] == 0.0, "nothing was changed from elsewhere"


def test_the_fault_switch_with_a_token_wants_it_from_everyone(restore_process_state: None, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    client = create_app("payments", env={"FAULT_TOKEN_FILE": str(token_file)}).test_client()
    assert client.get("/admin/faults").status_code == 503, "no token written yet: closed, and says why"
    token_file.write_text("t0k3n\n")  # written after the service started (compose's stack-secrets)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "t0k3n"}):
        answer = client.post("/admin/faults", json={"error_rate": 1}, headers=headers)
        assert answer.status_code == 401 and answer.headers["WWW-Authenticate"] == "Bearer", headers
    good = {"Authorization": "Bearer t0k3n"}
    assert client.post("/admin/faults", json={"error_rate": 1}, headers=good).get_json()["error_rate"] == 1.0
    with pytest.raises(ConfigError, match="either FAULT_TOKEN or FAULT_TOKEN_FILE"):
        create_app("payments", env={"FAULT_TOKEN": "a", "FAULT_TOKEN_FILE": str(token_file)})


def test_what_starts_the_worker_imports_without_celery() -> None:
    # make run-local says "Celery is not installed" only if it can get that far without Celery.
    probe = (
        "import sys; sys.modules['celery'] = None\n"  # None: any import of celery raises ImportError
        "from demo.local_worker import LocalBackground\n"
        "print(LocalBackground.start_broker(0).missing or '')"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=DEMO_SOURCE_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "not installed" in done.stdout


def test_unknown_service_is_refused() -> None:
    with pytest.raises(ConfigError, match="SERVICE_NAME"):
        create_app("billing", env={})


def _free_port_run(count: int) -> int:
    """A base port with ``count`` free ports after it (checked now; good enough on loopback)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count > 65535:
            continue
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port range")


@pytest.mark.process  # the rest of this file runs in-process: unit
def test_run_local_starts_the_chain_and_stops_cleanly_on_sigterm(tmp_path) -> None:
    base = _free_port_run(len(SERVICES))
    log = (tmp_path / "run_local.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "demo.run_local", "--base-port", str(base), "--loki-url", ""],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=DEMO_SOURCE_ROOT,  # the demo is not installed: run it from source
    )
    try:
        deadline = time.monotonic() + 40
        while "try: curl" not in (tmp_path / "run_local.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "run_local.log").read_text()
            time.sleep(0.1)
        assert requests.post(f"http://127.0.0.1:{base}/checkout", timeout=10).status_code == 201
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    output = (tmp_path / "run_local.log").read_text()
    assert "stopped: {" in output and "'gateway': 0" in output
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{base}/healthz", timeout=2)


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_inventory_is_fastapi_with_the_same_fault_switch_rules(restore_process_state: None, tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    app = create_app("inventory", env={})
    assert "fastapi" in type(app).__module__
    for peer, status in (("203.0.113.9", 403), ("::ffff:10.0.0.1", 403), ("127.0.0.1", 200), ("::1", 200)):
        with TestClient(app, client=(peer, 50000)) as client:
            assert client.get("/admin/faults").status_code == status, peer
            assert client.post("/admin/faults", json={"error_rate": 0}).status_code == status, peer
    with TestClient(app, client=("127.0.0.1", 50000), raise_server_exceptions=False) as client:
        assert client.post("/admin/faults", json={"error_rate": 3}).json()["error"].endswith("is outside [0, 1]")
        assert client.post("/admin/faults", content=b"nope").status_code == 400
        assert client.post("/admin/faults", json={"error_rate": 1.0}).json() == {"error_rate": 1.0, "latency_ms": 0}
        failed = client.post("/reservations", json={}, headers={"X-Correlation-ID": "cid-inv"})
        assert failed.status_code == 500 and failed.json()["correlation_id"] == "cid-inv"
        client.post("/admin/faults", json={"error_rate": 0})
        assert client.post("/reservations", json={"items": [1]}).status_code == 201
        assert client.get("/reservations/r1").json() == {"reservation_id": "r1", "status": "held"}

    token_file = tmp_path / "token"
    with TestClient(create_app("inventory", env={"FAULT_TOKEN_FILE": str(token_file)})) as client:
        assert client.get("/admin/faults").status_code == 503, "no token written yet: closed, and says why"
        token_file.write_text("t0k3n\n")
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            answer = client.post("/admin/faults", json={"error_rate": 1}, headers=headers)
            assert answer.status_code == 401 and answer.headers["WWW-Authenticate"] == "Bearer", headers
        good = {"Authorization": "Bearer t0k3n"}
        assert client.post("/admin/faults", json={"error_rate": 1}, headers=good).json()["error_rate"] == 1.0
