"""demo.alert_receiver: takes Alertmanager v4 webhooks, prints one line per alert, serves them back."""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request
from typing import Any, Iterator

import pytest

from demo import alert_receiver
from stack_tools import load_yaml

TRAIL = "http://localhost:3000/explore?schemaVersion=1&orgId=1&panes=%7B%22trail%22%7D"


def payload(status: str = "firing", service: str = "payments") -> dict[str, Any]:
    """A webhook body as Alertmanager 0.25+ sends it (version 4)."""
    alert = {
        "status": status,
        "labels": {"alertname": "HighErrorRatio", "service": service, "severity": "critical",
                   "grafana_url": "http://localhost:3000"},
        "annotations": {
            "summary": f"{service}: 10% of requests fail",
            "description": "...",
            "dashboard_url": "http://localhost:3000/d/service-overview/service-overview?orgId=1&var-service=" + service,
            "logs_url": "http://localhost:3000/explore?schemaVersion=1&orgId=1&panes=%7B%7D",
            "trail_url": TRAIL,
        },
        "startsAt": "2026-11-25T14:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://localhost:9090/graph?g0.expr=x", "fingerprint": "0123456789abcdef",
    }
    return {
        "version": "4", "receiver": "demo-webhook", "status": status, "alerts": [alert],
        "groupLabels": {"alertname": "HighErrorRatio", "service": service},
        "commonLabels": alert["labels"], "commonAnnotations": alert["annotations"],
        "externalURL": "http://localhost:9093", "groupKey": '{}:{alertname="HighErrorRatio"}', "truncatedAlerts": 0,
    }


class Receiver:
    def __init__(self, keep: int) -> None:
        self.out = io.StringIO()
        self.server, self.store = alert_receiver.make_server("127.0.0.1", 0, keep=keep, out=self.out)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(keep=2)
    thread = threading.Thread(target=r.server.serve_forever, daemon=True)
    thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()
    thread.join(timeout=5)


def test_post_prints_each_alert_and_get_reads_it_back(receiver: Receiver) -> None:
    status, body = receiver.request("POST", "/alerts", json.dumps(payload()).encode())
    assert (status, body) == (200, {"received": 1})
    line = receiver.out.getvalue().strip()
    assert line.startswith("[firing] HighErrorRatio service=payments ")
    for key in ("dashboard_url", "logs_url", "trail_url"):
        assert f"{key}=http://localhost:3000/" in line
    assert f"trail_url={TRAIL}" in line
    assert "summary" not in line, "only the links are printed"
    status, stored = receiver.request("GET", "/alerts")
    assert status == 200 and stored == [payload()]


def test_keeps_only_the_last_payloads(receiver: Receiver) -> None:
    for service in ("gateway", "orders", "payments"):
        receiver.request("POST", "/alerts", json.dumps(payload("resolved", service)).encode())
    _, stored = receiver.request("GET", "/alerts")
    assert [p["groupLabels"]["service"] for p in stored] == ["orders", "payments"]
    assert receiver.out.getvalue().splitlines()[-1].startswith("[resolved] HighErrorRatio service=payments")


@pytest.mark.parametrize("body", [b"not json", b'{"status": "firing"}', b'{"alerts": {}}'])
def test_rejects_what_is_not_a_webhook_payload(receiver: Receiver, body: bytes) -> None:
    status, reply = receiver.request("POST", "/alerts", body)
    assert status == 400 and "error" in reply
    assert receiver.store.snapshot() == []


def test_healthz_and_unknown_paths(receiver: Receiver) -> None:
    assert receiver.request("GET", "/healthz") == (200, {"status": "ok"})
    assert receiver.request("GET", "/nope")[0] == 404
    assert receiver.request("POST", "/nope", b"{}")[0] == 404


def test_alertmanager_and_compose_agree_on_the_receiver_address() -> None:
    am = load_yaml("alerts/alertmanager.yml")
    urls = [w["url"] for r in am["receivers"] for w in r.get("webhook_configs", [])]
    assert urls == ["http://alert-receiver:9095/alerts"]
    svc = load_yaml("docker-compose.yml")["services"]["alert-receiver"]
    assert svc["command"][:3] == ["python", "-m", "demo.alert_receiver"]
    assert svc["command"][svc["command"].index("--port") + 1] == "9095" == str(alert_receiver.DEFAULT_PORT)
    assert svc["command"][svc["command"].index("--host") + 1] == "0.0.0.0", "reachable from alertmanager"
