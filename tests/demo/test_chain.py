"""The real chain under gunicorn on loopback: one checkout, its trail in the Loki sink."""

from __future__ import annotations

import pytest
import requests

from correlation import ids
from correlation.schema import ACCESS_LOGGER
from demo.services import SERVICES
from fakes import FakeLoki, PushedEntry, raw_request

pytestmark = pytest.mark.process

# Through gunicorn: values its HTTP parser lets through reach our edge and are replaced; control
# characters (CR, LF, ESC, NUL) and headers over 8 KB are refused by gunicorn itself (400/431)
# before any app code runs. tests/correlation/integrations/test_flask.py sends all of them straight to the edge as well.
HOSTILE_IDS = [
    b"abc\rdef",
    b"abc\nX-Injected: 1",
    b"\x1b[31mred\x1b[0m",
    b"nul\x00byte",
    b"x" * 10_000,
    b"y" * 5_000,
    b"z" * 65,
    "caf\u00e9-\u2603".encode("utf-8"),
    b"quote\"d'id",
    b'{service_name=~".+"}',
    b"a b",
    b"",
    b"../../etc/passwd",
    b"${jndi:ldap://x}",
]


def _trail(sink: FakeLoki, correlation_id: str, services: int = len(SERVICES)) -> list[PushedEntry]:
    """Wait until an access line from ``services`` distinct services arrived for the ID."""

    def complete(entries: list[PushedEntry]) -> bool:
        access = {
            e.labels["service_name"]
            for e in entries
            if e.metadata.get("correlation_id") == correlation_id and e.json["logger"] == ACCESS_LOGGER
        }
        return len(access) >= services

    entries = sink.wait_for(complete, timeout=15)
    return [e for e in entries if e.metadata.get("correlation_id") == correlation_id]


def test_checkout_leaves_a_trail_from_every_hop(chain, chain_sink: FakeLoki) -> None:
    response = requests.post(
        f"{chain.urls['gateway']}/checkout", json={"items": [{"sku": "a", "quantity": 2}]}, timeout=10
    )
    assert response.status_code == 201
    cid = response.headers["X-Correlation-ID"]
    assert ids.time_of(cid) is not None, "the gateway generates time-carrying IDs"
    assert response.json()["correlation_id"] == cid

    trail = _trail(chain_sink, cid)
    lines = [e.json for e in trail]
    assert {line["service"] for line in lines} == set(SERVICES)
    assert all(line["correlation_id"] == cid for line in lines)
    for entry in trail:
        assert set(entry.labels) == {"service_name", "env", "shard"}, "the ID is never a label, its shard is"
        assert entry.labels == {"service_name": entry.json["service"], "env": "test", "shard": ids.shard_of(cid)}
        assert entry.metadata["request_id"] == entry.json["request_id"]

    # The call tree, rebuilt from the access lines alone.
    access = {line["service"]: line for line in lines if line["logger"] == ACCESS_LOGGER}
    assert access["gateway"]["parent_request_id"] is None
    assert access["orders"]["parent_request_id"] == access["gateway"]["request_id"]
    assert access["payments"]["parent_request_id"] == access["orders"]["request_id"]
    assert access["inventory"]["parent_request_id"] == access["orders"]["request_id"]
    assert access["orders"]["caller"] == "gateway"
    assert access["payments"]["caller"] == "orders"
    assert len({line["request_id"] for line in access.values()}) == len(SERVICES)
    assert access["gateway"]["route"] == "/checkout" and access["gateway"]["status"] == 201
    # Log lines written in orders' thread pool carry the hop too.
    assert any("charging payment" in line["message"] for line in lines if line["service"] == "orders")


def test_inbound_id_is_kept_across_the_chain(chain, chain_sink: FakeLoki) -> None:
    cid = "lb-7f3a.req_0042"
    response = requests.post(f"{chain.urls['gateway']}/checkout", headers={"X-Correlation-ID": cid}, timeout=10)
    assert response.status_code == 201
    assert response.headers["X-Correlation-ID"] == cid
    assert {e.labels["service_name"] for e in _trail(chain_sink, cid)} == set(SERVICES)


def test_hostile_inbound_ids_are_replaced_never_crash(chain, chain_sink: FakeLoki) -> None:
    replaced = 0
    for hostile in HOSTILE_IDS:
        status, headers = raw_request(f"{chain.urls['gateway']}/checkout", "POST", [b"X-Correlation-ID: " + hostile])
        if status in (400, 431):  # refused by gunicorn's parser: never reached the app
            assert any(c in hostile for c in b"\r\n\x00\x1b") or len(hostile) > 8000, (hostile[:40], status)
            continue
        assert status == 201, (hostile[:40], status)
        echoed = headers["x-correlation-id"]
        assert echoed.encode() != hostile and ids.is_valid_id(echoed) and ids.time_of(echoed) is not None
        replaced += 1
    assert replaced >= 8
    text = requests.get(f"{chain.urls['gateway']}/metrics", timeout=5).text
    counted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("correlation_rejected_ids_total{")
    )
    assert counted >= replaced
    # The service still answers normally.
    assert requests.post(f"{chain.urls['gateway']}/checkout", timeout=10).status_code == 201


def test_failure_in_one_service_is_traceable(chain, chain_sink: FakeLoki) -> None:
    payments = chain.urls["payments"]
    assert requests.post(f"{payments}/admin/faults", json={"error_rate": 1.0}, timeout=5).status_code == 200
    try:
        response = requests.post(f"{chain.urls['gateway']}/checkout", timeout=10)
    finally:
        requests.post(f"{payments}/admin/faults", json={"error_rate": 0.0}, timeout=5)
    assert response.status_code == 502
    cid = response.headers["X-Correlation-ID"]
    trail = _trail(chain_sink, cid)
    errors = [e for e in trail if e.metadata["level"] == "error"]
    assert {e.labels["service_name"] for e in errors} >= {"payments", "orders", "gateway"}
    assert any("InjectedFault" in e.json.get("exception", "") for e in errors if e.labels["service_name"] == "payments")
    # Only payments failed on its own; orders and gateway failed because their call did.
    origins = {
        e.labels["service_name"]: (e.json.get("origin"), e.json.get("failed_downstream"))
        for e in trail
        if e.json.get("logger") == ACCESS_LOGGER
    }
    assert origins.pop("inventory", (None, None)) == (None, None), "inventory answered fine"
    assert origins == {
        "payments": ("self", None),
        "orders": ("downstream", "payments"),
        "gateway": ("downstream", "orders"),
    }
    # The last failed request of payments is named in its metrics, for alert annotations.
    text = requests.get(f"{payments}/metrics", timeout=5).text
    last = [line for line in text.splitlines() if line.startswith("correlation_last_failed_request{")]
    assert len(last) == 1 and f'correlation_id="{cid}"' in last[0]


def test_metrics_carry_correlation_id_exemplars(chain) -> None:
    response = requests.post(f"{chain.urls['gateway']}/checkout", timeout=10)
    cid = response.headers["X-Correlation-ID"]
    metrics = requests.get(
        f"{chain.urls['gateway']}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}, timeout=5
    )
    assert metrics.headers["Content-Type"].startswith("application/openmetrics-text")
    assert f'# {{correlation_id="{cid}"}}' in metrics.text
    plain = requests.get(f"{chain.urls['gateway']}/metrics", timeout=5).text
    assert "# {correlation_id=" not in plain, "exemplars only in OpenMetrics"
    assert "loki_shipper_sent_lines_total" in plain


def test_every_response_echoes_the_id(chain) -> None:
    gateway = chain.urls["gateway"]
    for method, path in [
        ("GET", "/no-such-page"),
        ("GET", "/checkout"),
        ("POST", "/admin/faults"),
        ("GET", "/healthz"),
    ]:
        response = requests.request(method, gateway + path, headers={"X-Correlation-ID": "echo-me"}, timeout=5)
        assert response.headers.get("X-Correlation-ID") == "echo-me", (method, path, response.status_code)


def test_inventory_is_a_fastapi_hop_like_any_other(chain, chain_sink: FakeLoki) -> None:
    """The mixed chain: inventory is FastAPI under gunicorn's uvicorn workers; its fault switch
    reaches both workers, and its failure reads in the trail as a Flask hop's does."""
    inventory = chain.urls["inventory"]
    assert requests.get(f"{inventory}/healthz", timeout=5).headers["server"] == "uvicorn"
    assert requests.post(f"{inventory}/admin/faults", json={"error_rate": 1.0}, timeout=5).status_code == 200
    try:
        response = requests.post(f"{chain.urls['gateway']}/checkout", timeout=10)
        close = {"Connection": "close", "Accept": "application/json"}  # new connections: either worker
        direct = [requests.post(f"{inventory}/reservations", json={}, headers=close, timeout=5) for _ in range(6)]
    finally:
        requests.post(f"{inventory}/admin/faults", json={"error_rate": 0.0}, timeout=5)
    assert response.status_code == 502
    for answer in direct:
        assert answer.status_code == 500 and answer.headers["Content-Type"] == "application/problem+json"
        assert answer.json()["correlation_id"] == answer.headers["X-Correlation-ID"]
    cid = response.headers["X-Correlation-ID"]
    trail = _trail(chain_sink, cid)
    access = {e.labels["service_name"]: e.json for e in trail if e.json.get("logger") == ACCESS_LOGGER}
    origins = {name: (line.get("origin"), line.get("failed_downstream")) for name, line in access.items()}
    assert origins == {
        "inventory": ("self", None),
        "orders": ("downstream", "inventory"),
        "gateway": ("downstream", "orders"),
        "payments": (None, None),
    }
    assert access["inventory"]["error_type"] == "demo.faults.InjectedFault"
    assert (access["inventory"]["route"], access["inventory"]["status"]) == ("/reservations", 500)
    assert access["inventory"]["parent_request_id"] == access["orders"]["request_id"]
    inventory_lines = [e for e in trail if e.labels["service_name"] == "inventory"]
    raised = [e for e in inventory_lines if "InjectedFault" in e.json.get("exception", "")]
    assert len(raised) == 1 and raised[0].metadata["level"] == "error", "its traceback, once, with the ID"
