"""Each alert's trail link opens a request that really matches, for real: the demo chain under
gunicorn shipping to the fake Loki, a real Prometheus (the repository's rules, `for` shortened)
and a real Alertmanager, whose copy of the alert (what every receiver gets) holds the link; the
link is then followed into the trail web app reading the same Loki.

- payments fails half its requests while Prometheus does not scrape it ("not monitored here"), and
  inventory answers slowly: DownstreamErrors for orders naming payments links to a checkout that
  failed because its call to payments failed, the newest such; HighLatencyP99 for inventory links
  to the slowest inventory request of the window, checked against every duration sent;
- inventory stops: ServiceDown links to a checkout whose call to inventory got no answer, and to
  the lines inventory wrote last.
(TaskPublishFailures' link is followed in tests/stack/test_task_alerts.py, where the broker stops.)
Service overview's error-type panel, run on the same Loki, counts the failures sent by type.
"""

from __future__ import annotations

import signal
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import flask.testing
import pytest

from correlation import schema
from correlation.settings import LokiSettings
from fakes import FakeLoki, FakeWebhook, wait_until
from tests.support.alerting import (
    TRAIL_WEB,
    Traffic,
    alerting_stack,
    running_notifier,
    set_faults,
)
from tests.support.grafana import (
    check_logql,
    explore_exprs,
    parse_explore_url,
    provisioned_datasource_uids,
    substitute_grafana_vars,
)
from tests.support.stack import http_get_json, load_json
from trail.loki_query import LokiQueryClient
from trail.web.app import TrailWebSettings, create_app

pytestmark = pytest.mark.stack

ALERT_DEADLINE_SECONDS = 90.0
LATENCY_MS = 1200


@dataclass
class Fired:
    downstream: dict[str, Any]  # DownstreamErrors for orders, as Alertmanager holds it
    latency: dict[str, Any]  # HighLatencyP99 for inventory
    down: dict[str, Any]  # ServiceDown for inventory
    traffic: Traffic
    inventory_address: str  # host:port: how callers name a peer that never answered at all


def alertmanager_alert(alertmanager: str, alertname: str, service: str) -> dict[str, Any]:
    """The alert as Alertmanager holds it (what every receiver is sent), or {}."""
    for alert in http_get_json(alertmanager + "/api/v2/alerts"):
        labels = alert["labels"]
        if (labels.get("alertname"), labels.get("service")) == (alertname, service):
            return dict(alert)
    return {}


def wait_alert(alertmanager: str, prometheus: str, alertname: str, service: str) -> dict[str, Any]:
    try:
        return wait_until(
            lambda: alertmanager_alert(alertmanager, alertname, service),
            ALERT_DEADLINE_SECONDS,
            f"{alertname} for {service} at Alertmanager",
            interval=0.5,
        )
    except AssertionError as exc:
        alerts = http_get_json(prometheus + "/api/v1/alerts")["data"]["alerts"]
        raise AssertionError(f"{exc}\nprometheus alerts: {[a['labels'] for a in alerts]}") from None


@pytest.fixture(scope="module")
def fired(chain: Any, chain_sink: FakeLoki) -> Iterator[Fired]:
    chat = FakeWebhook()
    traffic = Traffic(chain.urls["gateway"])
    with chat.server, running_notifier(chain_sink.url, chat.server.url) as run:
        try:
            unscraped = frozenset({"payments"})
            with alerting_stack(chain.urls, run.url, run.token_file, unscraped=unscraped) as (prom, am, _):
                set_faults(chain.urls["payments"], error_rate=0.5)
                set_faults(chain.urls["inventory"], latency_ms=LATENCY_MS)
                traffic.start()
                downstream = wait_alert(am, prom, "DownstreamErrors", "orders")
                latency = wait_alert(am, prom, "HighLatencyP99", "inventory")
                set_faults(chain.urls["payments"], error_rate=0.0)
                set_faults(chain.urls["inventory"], latency_ms=0)

                inventory = chain.processes["inventory"]
                inventory.send_signal(signal.SIGTERM)
                assert inventory.wait(30) == 0, "inventory stopped cleanly"
                down = wait_alert(am, prom, "ServiceDown", "inventory")
                # A checkout that could not reach it, in Loki, before the link is followed.
                address = urllib.parse.urlsplit(chain.urls["inventory"]).netloc
                names = {"inventory", address}  # as it last answered; its address if it never had
                chain_sink.wait_for(
                    lambda entries: any(e.json.get(schema.FAILED_DOWNSTREAM) in names for e in entries), 30
                )
                traffic.stop()
                yield Fired(downstream, latency, down, traffic, address)
        finally:
            traffic.stop_event.set()
            for name in ("payments", "inventory"):
                if chain.processes[name].poll() is None:
                    set_faults(chain.urls[name], error_rate=0.0, latency_ms=0)


@pytest.fixture(scope="module")
def web(chain_sink: FakeLoki) -> flask.testing.FlaskClient:
    return create_app(TrailWebSettings(LokiSettings(url=chain_sink.url))).test_client()


def follow(web: flask.testing.FlaskClient, url: str) -> tuple[str, dict[str, Any], dict[str, list[str]]]:
    """The alert's trail_page_url followed into trail-web: (correlation ID, its trail document,
    the redirect's parameters)."""
    assert url.startswith(TRAIL_WEB + "/go/"), url
    parts = urllib.parse.urlsplit(url)
    response = web.get(f"{parts.path}?{parts.query}")
    assert response.status_code == 302, response.get_data(as_text=True)[:2000]
    page = urllib.parse.urlsplit(response.headers["Location"])
    cid = urllib.parse.unquote(page.path.removeprefix("/t/"))
    document = web.get(f"{page.path}?format=json").get_json()
    assert document["correlation_id"] == cid
    return cid, document, urllib.parse.parse_qs(parts.query)


def window_ns(params: dict[str, list[str]]) -> tuple[int, int]:
    return int(params["from"][0]) * 1_000_000, int(params["to"][0]) * 1_000_000


def access_lines(sink: FakeLoki, service: str) -> list[Any]:
    return [
        e for e in sink.entries if e.labels["service_name"] == service and e.json.get("logger") == schema.ACCESS_LOGGER
    ]


def test_downstream_errors_links_the_callers_newest_request_that_failed_through_that_peer(
    fired: Fired, web: flask.testing.FlaskClient, chain_sink: FakeLoki
) -> None:
    labels = fired.downstream["labels"]
    assert (labels["service"], labels["downstream"], labels["cause_service"]) == ("orders", "payments", "payments")
    cid, document, params = follow(web, fired.downstream["annotations"]["trail_page_url"])
    assert params["service"] == ["orders"] and params["peer"] == ["payments"]
    assert fired.traffic.failed.get(cid) == 502, "a checkout that failed"
    hops = {hop["service"]: hop["status"] for hop in document["hops"]}
    assert hops["orders"] == 502 and hops["payments"] == 500
    start, end = window_ns(params)
    through_payments = [
        e
        for e in access_lines(chain_sink, "orders")
        if e.json.get(schema.FAILED_DOWNSTREAM) == "payments" and start <= e.timestamp_ns < end
    ]
    newest = max(through_payments, key=lambda e: e.timestamp_ns)
    assert newest.json[schema.CORRELATION_ID] == cid, "the newest in the link's window"
    assert newest.json[schema.ERROR_TYPE] == "demo.calls.DownstreamError"


def test_high_latency_links_the_slowest_request_of_the_window(
    fired: Fired, web: flask.testing.FlaskClient, chain_sink: FakeLoki
) -> None:
    cid, document, params = follow(web, fired.latency["annotations"]["trail_page_url"])
    assert params["service"] == ["inventory"]
    start, end = window_ns(params)
    sent = {
        e.json[schema.CORRELATION_ID]: e.json[schema.DURATION_MS]
        for e in access_lines(chain_sink, "inventory")
        if start <= e.timestamp_ns < end
    }
    assert len(sent) > 3 and max(sent.values()) >= LATENCY_MS
    assert sent[cid] == max(sent.values()), f"{cid} took {sent[cid]} ms; the slowest took {max(sent.values())}"
    assert cid in fired.traffic.all_ids()
    assert any(hop["service"] == "inventory" and hop["duration_ms"] == sent[cid] for hop in document["hops"])


def test_service_down_links_a_request_that_could_not_reach_it_and_its_last_lines(
    fired: Fired, web: flask.testing.FlaskClient, chain_sink: FakeLoki
) -> None:
    annotations = fired.down["annotations"]
    assert fired.down["labels"]["instance"] == fired.inventory_address
    cid, document, params = follow(web, annotations["trail_page_url"])
    assert params["peer"] == ["inventory", fired.inventory_address]
    assert fired.traffic.failed.get(cid) == 502
    (orders,) = [e for e in access_lines(chain_sink, "orders") if e.json[schema.CORRELATION_ID] == cid]
    assert orders.json[schema.FAILED_DOWNSTREAM] in ("inventory", fired.inventory_address), "its call got no answer"
    assert orders.json[schema.ERROR_TYPE] == "demo.calls.DownstreamError"
    assert "inventory" not in {hop["service"] for hop in document["hops"]}
    assert "orders" in annotations["description"], "the callers are named"

    lines = parse_explore_url(annotations["last_lines_url"], provisioned_datasource_uids())
    (expr,) = explore_exprs(lines)
    assert expr == '{service_name="inventory"}'
    check_logql(expr)
    start_ms, end_ms = int(lines["lines"]["range"]["from"]), int(lines["lines"]["range"]["to"])
    last_ms = max(e.timestamp_ns for e in chain_sink.entries if e.labels["service_name"] == "inventory") / 1e6
    assert start_ms <= last_ms <= end_ms, "inventory's last line is in the window"
    assert end_ms - start_ms == 11 * 60 * 1000 and end_ms <= time.time() * 1000 + 120_000


def test_the_dashboards_error_type_panel_counts_the_failures_sent_by_type(fired: Fired, chain_sink: FakeLoki) -> None:
    """Service overview's *Failures by error type* query, run on the same Loki over the whole run:
    per service and exception type, exactly the failed access lines that carry one."""
    (expr,) = [
        t["expr"]
        for p in load_json("grafana/dashboards/service-overview.json")["panels"]
        for t in p.get("targets", [])
        if "error_type" in t.get("expr", "")
    ]
    query = substitute_grafana_vars(expr, {"service": ".+"}).replace("[1m]", "[1h]")
    answer = LokiQueryClient(LokiSettings(url=chain_sink.url)).query_vector(query, time.time_ns())
    counted = {(s.labels["service_name"], s.labels["error_type"]): s.value for s in answer}
    sent: dict[tuple[str, str], float] = {}
    for e in chain_sink.entries:
        if e.json.get("logger") == schema.ACCESS_LOGGER and schema.ERROR_TYPE in e.json:
            key = (e.labels["service_name"], e.json[schema.ERROR_TYPE])
            sent[key] = sent.get(key, 0) + 1
    assert counted == sent
    assert {("payments", "demo.faults.InjectedFault"), ("orders", "demo.calls.DownstreamError")} <= set(counted)
