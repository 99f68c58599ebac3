"""The trail web app's alert redirects (/go/last-failed, /go/lost-task, /go/slowest): each finds
the request an alert is about in Loki (the fake, staged with lines in the library's shape) and
redirects to its trail page; bad input is a 400 naming the parameter, nothing found a 404."""

from __future__ import annotations

import random
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import flask.testing
import pytest

from correlation import schema
from correlation.ids import new_correlation_id
from correlation.settings import LokiSettings
from fakes import FakeLoki, closed_port_url
from fakes.loki_metric import MAX_QUERY_SERIES
from fakes.trail_lines import access_line, log_line
from trail.links import trail_page_path
from trail.web.app import TrailWebSettings, create_app

pytestmark = pytest.mark.unit

MS = 1_000_000
S = 1000 * MS
T0 = 1_750_000_000_000 * MS
#: The alert's window: [T0, T0 + 10 min).
WINDOW = {"from": str(T0 // MS), "to": str((T0 + 600 * S) // MS)}


@pytest.fixture
def web(loki: FakeLoki) -> flask.testing.FlaskClient:
    return create_app(TrailWebSettings(LokiSettings(url=loki.url, timeout_seconds=5))).test_client()


def cid_at(ts_ns: int) -> str:
    return new_correlation_id(now_ms=ts_ns // MS)


def failed(
    loki: FakeLoki, service: str, at_ns: int, peer: str | None, status: int = 502, error_type: str = "DownstreamError"
) -> str:
    """A failed hop of ``service`` at ``at_ns``: after a failed call to ``peer``, or on its own."""
    cid = cid_at(at_ns)
    ts, line = access_line(cid, "r" + cid[-12:], None, service, at_ns, 20.0, "POST", "/orders", status)
    line[schema.ORIGIN] = "downstream" if peer else "self"
    if peer:
        line[schema.FAILED_DOWNSTREAM] = peer
    line[schema.ERROR_TYPE] = error_type
    loki.push(ts, line)
    return cid


def go(web: flask.testing.FlaskClient, redirect: str, **params: Any) -> Any:
    query = urlencode({**WINDOW, **params}, doseq=True)
    return web.get(f"/go/{redirect}?{query}")


def redirected_to(response: Any) -> str:
    assert response.status_code == 302, response.get_data(as_text=True)
    return str(response.headers["Location"])


# --- /go/last-failed ---------------------------------------------------------------------------


def test_last_failed_through_a_peer_is_the_callers_newest_failure_because_of_it(
    web: flask.testing.FlaskClient, loki: FakeLoki
) -> None:
    via_inventory = failed(loki, "orders", T0 + 60 * S, "inventory")
    newer_via_payments = failed(loki, "orders", T0 + 120 * S, "payments")
    newest_own = failed(loki, "orders", T0 + 180 * S, None, status=500)
    failed(loki, "gateway", T0 + 200 * S, "inventory")  # another caller
    failed(loki, "orders", T0 + 700 * S, "inventory")  # after the window
    found = redirected_to(go(web, "last-failed", service="orders", peer="inventory"))
    assert found == trail_page_path(via_inventory), "the ID's own time finds its window on the page"
    assert redirected_to(go(web, "last-failed", service="orders", peer="payments")) == trail_page_path(
        newer_via_payments
    )
    assert redirected_to(go(web, "last-failed", service="orders")) == trail_page_path(newest_own)
    # A peer is matched by its name, or by its name with a port (a peer that never answered).
    no_answer = failed(loki, "orders", T0 + 300 * S, "inventory:8083")
    assert redirected_to(go(web, "last-failed", service="orders", peer="inventory")) == trail_page_path(no_answer)
    assert 'failed_downstream=~"(?:inventory)(?::[0-9]+)?"' in loki.queries[-1].query


def test_service_down_the_newest_caller_that_could_not_reach_it(web: flask.testing.FlaskClient, loki: FakeLoki) -> None:
    """ServiceDown's link: any caller; the down service named as it answered, or by its address."""
    failed(loki, "orders", T0 + 60 * S, "inventory")
    by_address = failed(loki, "gateway", T0 + 90 * S, "10.0.0.7:8083")
    failed(loki, "gateway", T0 + 100 * S, "inventory-two:8083")  # not it: a name is matched whole
    failed(loki, "orders", T0 + 110 * S, "payments")
    found = redirected_to(go(web, "last-failed", peer=["inventory", "10.0.0.7:8083"]))
    assert found == trail_page_path(by_address)
    with_port = failed(loki, "orders", T0 + 120 * S, "inventory:8083")
    assert redirected_to(go(web, "last-failed", peer="inventory")) == trail_page_path(with_port)


def test_a_foreign_id_is_opened_over_the_window_it_was_found_in(web: flask.testing.FlaskClient, loki: FakeLoki) -> None:
    ts, line = access_line("ticket-4711", "r1", None, "orders", T0 + 60 * S, 5.0, "POST", "/orders", 500)
    loki.push(ts, line)
    location = urlsplit(redirected_to(go(web, "last-failed", service="orders")))
    assert location.path == "/t/ticket-4711"
    assert parse_qs(location.query) == {"from": [WINDOW["from"]], "to": [WINDOW["to"]]}


# --- /go/lost-task -----------------------------------------------------------------------------


def lost(loki: FakeLoki, at_ns: int, task: str, reason: str = "broker_unavailable") -> str:
    cid = cid_at(at_ns)
    message = f"could not publish task {task} ({reason}): ConnectionError('refused')"
    loki.push(*log_line(cid, "r" + cid[-12:], None, "orders", at_ns, message, "ERROR", "correlation.celery"))
    return cid


def test_lost_task_is_the_newest_request_that_could_not_queue_it(
    web: flask.testing.FlaskClient, loki: FakeLoki
) -> None:
    older = lost(loki, T0 + 60 * S, "notifications.send_confirmation")
    invoice_lost = lost(loki, T0 + 90 * S, "notifications.send_invoice", "error")
    newest = lost(loki, T0 + 120 * S, "notifications.send_confirmation")
    lost(loki, T0 + 610 * S, "notifications.send_confirmation")  # after the window
    task = "notifications.send_confirmation"
    assert redirected_to(go(web, "lost-task", service="orders", task=task)) == trail_page_path(newest)
    invoice = go(web, "lost-task", service="orders", task="notifications.send_invoice", reason="error")
    assert redirected_to(invoice) == trail_page_path(invoice_lost)
    before = {**WINDOW, "to": str((T0 + 100 * S) // MS)}
    assert redirected_to(web.get(f"/go/lost-task?{urlencode({**before, 'service': 'orders', 'task': task})}")) == (
        trail_page_path(older)
    )
    assert redirected_to(go(web, "lost-task", service="orders", task=task, reason="broker_unavailable")) == (
        trail_page_path(newest)
    )
    assert go(web, "lost-task", service="gateway").status_code == 404


# --- /go/slowest -------------------------------------------------------------------------------


def test_slowest_is_the_longest_request_of_the_window_checked_against_the_durations_sent(
    web: flask.testing.FlaskClient, loki: FakeLoki
) -> None:
    rng = random.Random(24)
    sent: dict[str, tuple[str, float]] = {}
    for n in range(MAX_QUERY_SERIES + 100):  # more requests than Loki's series limit: no series per request
        at = T0 + n * 900 * MS
        cid = cid_at(at)
        route = "/checkout" if n % 3 else "/cart"
        duration = round(rng.uniform(5, 3000), 3)
        sent[cid] = (route, duration)
        loki.push(*access_line(cid, f"r{n:015d}", None, "gateway", at, duration, "POST", route, 201))
    # Slower, but not the service's HTTP requests in the window: another service, a task run, later.
    loki.push(*access_line(cid_at(T0), "x1", None, "orders", T0, 99_000.0, "POST", "/orders", 201))
    ts, task_run = access_line(cid_at(T0), "x2", None, "gateway", T0 + S, 98_000.0, "POST", "t", 200)
    loki.push(ts, {**task_run, schema.KIND: schema.KIND_TASK})
    loki.push(*access_line(cid_at(T0 + 700 * S), "x3", None, "gateway", T0 + 700 * S, 97_000.0, "POST", "/cart", 201))

    slowest_id = max(sent, key=lambda c: sent[c][1])
    assert redirected_to(go(web, "slowest", service="gateway")) == trail_page_path(slowest_id)
    cart = max((c for c in sent if sent[c][0] == "/cart"), key=lambda c: sent[c][1])
    assert redirected_to(go(web, "slowest", service="gateway", route="/cart")) == trail_page_path(cart)
    # Two queries: the maximum (one sample), then the line(s) that took that long.
    instant = [r for r in loki.requests if r.path == "/loki/api/v1/query"]
    assert len(instant) == 2 and "max_over_time(" in instant[-1].query and "by (service_name)" in instant[-1].query
    assert f"duration_ms >= {sent[cart][1]!r}" in loki.queries[-1].query


def test_slowest_of_a_quiet_service_is_a_404(web: flask.testing.FlaskClient, loki: FakeLoki) -> None:
    response = go(web, "slowest", service="payments")
    assert response.status_code == 404 and "No request of payments in" in response.get_data(as_text=True)


# --- refused input, Loki's trouble --------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "params", "named"),
    [
        ("last-failed", {"service": "orders\u202e"}, "service: "),
        ("last-failed", {"peer": 'inventory"} |= "'}, "peer: "),
        ("last-failed", {"peer": ["a", "b", "c", "d", "e"]}, "peer: at most 4"),
        ("last-failed", {"task": "x" * 300}, "task: longer than 256"),
        ("last-failed", {"from": "1", "to": str(3 * 86400)}, "bad time window"),
        ("lost-task", {}, "service: required"),
        ("lost-task", {"service": "orders", "reason": "no reason"}, "reason: "),
        ("slowest", {}, "service: required"),
        ("slowest", {"service": "gateway", "route": "/a\nb"}, "route: "),
    ],
)
def test_bad_input_is_a_400_naming_it_and_nothing_is_queried(
    web: flask.testing.FlaskClient, loki: FakeLoki, route: str, params: dict[str, Any], named: str
) -> None:
    query = urlencode({**({} if "from" in params else WINDOW), **params}, doseq=True)
    response = web.get(f"/go/{route}?{query}")
    assert response.status_code == 400
    assert named in response.get_data(as_text=True)
    assert not loki.requests, "nothing was queried"


def test_loki_unreachable_is_a_502() -> None:
    web = create_app(TrailWebSettings(LokiSettings(url=closed_port_url(), timeout_seconds=1))).test_client()
    response = go(web, "slowest", service="gateway")
    assert response.status_code == 502 and "Loki could not be reached" in response.get_data(as_text=True)
