"""The whole alerting path, for real: the demo chain under gunicorn shipping to the fake Loki, a
real Prometheus scraping it (prometheus/prometheus.yml with 1 s intervals; alerts/*.rules.yml with
only `for` shortened), a real Alertmanager (alerts/alertmanager.yml with only the webhook's
address changed), the notifier (trail.notify) reading the fake Loki, and a fake chat webhook.

One page per root cause, with the hop that broke:
- payments fails half its requests: exactly one page reaches the chat webhook, naming payments
  and InjectedFault, and its correlation ID is a checkout that really failed; the alert's
  trail_url opens such a checkout, whose lines from all four hops reached Loki;
- then Loki stops answering and inventory fails too: one more page, naming inventory, with the
  links only, within 5 s of the notifier getting the alert;
- orders fails on its own (fresh Prometheus and Alertmanager): exactly one page, naming orders.
Each scenario prints its spike-to-notification time (docs/notifier.md, "How fast").
"""

from __future__ import annotations

import copy
import json
import re
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from correlation.ids import time_ms_of
from correlation.settings import LokiSettings
from demo.services import SERVICES
from fakes import FakeLoki, FakeWebhook, PushedEntry, wait_until
from tests.support import REPO
from tests.support.alerting import (
    FOR_SCALE,
    GRAFANA,
    INTERVAL_SECONDS,
    RUNBOOKS,
    TRAIL_WEB,
    LokiGate,
    NotifierRun,
    Traffic,
    alerting_stack,
    critical_alerts,
    for_ms,
    pages,
    running_notifier,
    set_faults,
)
from tests.support.grafana import (
    check_logql,
    dashboard_promql_queries,
    explore_exprs,
    parse_explore_url,
    provisioned_datasource_uids,
    substitute_grafana_vars,
)
from tests.support.stack import http_get_json, instant_query, load_yaml
from trail.links import trail_page_path
from trail.web.app import TrailWebSettings, create_app

pytestmark = pytest.mark.stack

#: Deadlines: generous, other test sessions share this 2-core machine.
ALERT_DEADLINE_SECONDS = 90.0
ERROR_RATE = 0.5  # some checkouts fail, some succeed: "this ID failed" is then a real check
#: The status each hop of a checkout answers when payments fails it.
FAILED_TRAIL_STATUSES = {"gateway": 502, "orders": 502, "payments": 500, "inventory": 201}
#: Dashboard queries on series that exist only after a drop, a retry or a rejected inbound ID; and
#: the task row's, as this chain runs no broker or worker (tests/stack/test_task_alerts.py checks them).
MAY_BE_EMPTY = (
    "loki_shipper_dropped_lines_total",
    "loki_shipper_retries_total",
    "correlation_rejected_ids_total",
    "task_",
)
INJECTED_FAULT = "demo.faults.InjectedFault"
#: How long after a page no second page may follow: past DownstreamErrors' (shortened) `for`
#: and Alertmanager's group_wait, counted from the page.
QUIET_AFTER_PAGE_SECONDS = 6.0
#: docs/notifier.md's goal for spike to page: `for` + 2 evaluation intervals + 5 s.
HER_FOR_SECONDS = for_ms("2m") / FOR_SCALE / 1000
GOAL_SECONDS = HER_FOR_SECONDS + 2 * INTERVAL_SECONDS + 5


def rule_for(name: str) -> str:
    (rule,) = [
        r
        for g in load_yaml("alerts/correlation-demo.rules.yml")["groups"]
        for r in g["rules"]
        if r.get("alert") == name
    ]
    return str(rule["for"])


def without_for(rule_file: dict[str, Any]) -> dict[str, Any]:
    stripped = copy.deepcopy(rule_file)
    for group in stripped["groups"]:
        for rule in group["rules"]:
            rule.pop("for", None)
    return stripped


@dataclass
class Page:
    """A page as the chat webhook got it, and how long it took."""

    body: dict[str, Any]
    spike_to_page: float  # seconds from setting the fault to the page at the chat webhook
    receipt_to_page: float  # seconds from the notifier getting the alert to the page at the webhook


@dataclass
class Stack:
    prometheus: str
    alertmanager: str
    notifier: NotifierRun
    chat: FakeWebhook
    traffic: Traffic
    alert: dict[str, Any]  # HighErrorRatio for payments as Alertmanager sent it
    derived_rules: dict[str, str]  # rules file name -> derived text
    started: float  # Unix seconds when the faults were set
    payments_page: Page
    pages_after_quiet: list[str]  # services named by pages once QUIET_AFTER_PAGE_SECONDS passed
    alerts_after_quiet: set[tuple[str, str, str]]  # paging alerts Prometheus held then
    inventory_page: Page  # with Loki stopped
    all_pages: list[str]


def diagnostics(prometheus: str, alertmanager: str, run: NotifierRun, traffic: Traffic) -> str:
    parts = []
    for name, url in (
        ("prometheus alerts", prometheus + "/api/v1/alerts"),
        ("alertmanager alerts", alertmanager + "/api/v2/alerts"),
    ):
        try:
            parts.append(f"{name}: {json.dumps(http_get_json(url))[:3000]}")
        except Exception as exc:  # noqa: BLE001 - this is only a failure report
            parts.append(f"{name}: {exc!r}")
    parts.append(f"notifier stdout: {run.out.getvalue()[-3000:]}")
    parts.append(
        f"traffic: {len(traffic.failed)} failed, {len(traffic.succeeded)} succeeded, problems {traffic.problems[:5]}"
    )
    return "\n".join(parts)


def wait_for_page(chat: FakeWebhook, run: NotifierRun, service: str, since: float, what: str, explain: Any) -> Page:
    """The first page naming ``service`` at the chat webhook; its timings."""

    def arrived() -> tuple[float, dict[str, Any]] | None:
        return next(((at, body) for at, body in pages(chat) if body["service"] == service), None)

    try:
        at, body = wait_until(arrived, ALERT_DEADLINE_SECONDS, what, interval=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{explain()}") from None
    received = run.received[(body["alertname"], service, "firing")]
    page = Page(body, at - since, at - received)
    print(
        f"\n{what}: spike-to-notification {page.spike_to_page:.1f} s, alert-to-notification "
        f"{page.receipt_to_page:.2f} s (for {HER_FOR_SECONDS:g} s, evaluation interval {INTERVAL_SECONDS:g} s, "
        f"group_wait {load_yaml('alerts/alertmanager.yml')['route']['group_wait']}; goal {GOAL_SECONDS:g} s)"
    )
    print(body["text"])
    return page


def firing_alert(run: NotifierRun, alertname: str, service: str) -> dict[str, Any]:
    for payload in run.notifier.snapshot()[0]:
        for alert in payload["alerts"]:
            labels = alert["labels"]
            if alert["status"] == "firing" and (labels.get("alertname"), labels.get("service")) == (alertname, service):
                return dict(alert)
    raise AssertionError(f"the notifier got no firing {alertname} for {service}")


@pytest.fixture(scope="module")
def stack(chain: Any, chain_sink: FakeLoki) -> Iterator[Stack]:
    chat = FakeWebhook()
    gate = LokiGate(chain_sink.url)
    traffic = Traffic(chain.urls["gateway"])
    with chat.server, gate.server, running_notifier(gate.server.url, chat.server.url) as run:
        try:
            with alerting_stack(chain.urls, run.url, run.token_file) as (prom, am, rules):

                def explain() -> str:
                    return diagnostics(prom, am, run, traffic)

                started, spike = time.time(), time.monotonic()
                assert set_faults(chain.urls["payments"], error_rate=ERROR_RATE)["error_rate"] == ERROR_RATE
                traffic.start()
                payments = wait_for_page(chat, run, "payments", spike, "payments fails", explain)
                # Long enough for any echo of the same cause to page too, if the rules let it.
                time.sleep(QUIET_AFTER_PAGE_SECONDS)  # a deliberate wait: asserting that nothing comes
                after_quiet = [body["service"] for _, body in pages(chat)]
                alerts_after_quiet = critical_alerts(prom)

                gate.stall()  # Loki stops answering the notifier
                spike = time.monotonic()
                set_faults(chain.urls["inventory"], error_rate=ERROR_RATE)
                inventory = wait_for_page(chat, run, "inventory", spike, "inventory fails, Loki stopped", explain)
                traffic.stop()
                for name in ("payments", "inventory"):
                    set_faults(chain.urls[name], error_rate=0.0)
                alert = firing_alert(run, "HighErrorRatio", "payments")
                all_pages = [body["service"] for _, body in pages(chat)]
                yield Stack(
                    prom,
                    am,
                    run,
                    chat,
                    traffic,
                    alert,
                    rules,
                    started,
                    payments,
                    after_quiet,
                    alerts_after_quiet,
                    inventory,
                    all_pages,
                )
        finally:
            traffic.stop_event.set()
            gate.released.set()
            for name in ("payments", "inventory"):
                set_faults(chain.urls[name], error_rate=0.0, latency_ms=0)


# --- the tests ---------------------------------------------------------------------------------


def test_derived_rules_differ_only_in_for(stack: Stack) -> None:
    """The rules Prometheus ran are the repo's: expressions, labels and annotations identical."""
    assert stack.derived_rules, "alerts/*.rules.yml is empty"
    for name, text in stack.derived_rules.items():
        original = yaml.safe_load((REPO / "alerts" / name).read_text())
        derived = yaml.safe_load(text)
        assert without_for(derived) == without_for(original), name
        for group, derived_group in zip(original["groups"], derived["groups"], strict=True):
            for rule, derived_rule in zip(group["rules"], derived_group["rules"], strict=True):
                assert ("for" in rule) == ("for" in derived_rule), rule.get("alert")
                if "for" in rule:
                    assert for_ms(derived_rule["for"]) == for_ms(rule["for"]) // FOR_SCALE


def test_payments_failing_pages_once_naming_payments_and_the_injected_fault(stack: Stack) -> None:
    page = stack.payments_page.body
    assert stack.pages_after_quiet == ["payments"], "orders and gateway answered 502 too, but must not page"
    assert stack.alerts_after_quiet == {("HighErrorRatio", "payments", "firing")}
    assert (page["alertname"], page["severity"], page["service"], page["cause_service"]) == (
        "HighErrorRatio",
        "critical",
        "payments",
        "payments",
    )
    assert page["status"] == "firing" and page["trail"] == "found", page["trail_note"]
    hop = page["root_cause"]
    assert (hop["service"], hop["method"], hop["route"], hop["status"]) == ("payments", "POST", "/payments", 500)
    assert hop["duration_ms"] > 0
    assert page["error"]["type"] == INJECTED_FAULT and "injected fault" in page["error"]["message"]
    cid = page["correlation_id"]
    assert stack.traffic.failed.get(cid) == 502 and cid not in stack.traffic.succeeded, "a checkout that failed"
    assert page["trail_command"] == f"trail {cid}"
    panes = parse_explore_url(page["trail_url"], provisioned_datasource_uids())
    assert page["trail_url"].startswith(GRAFANA + "/explore?") and explore_exprs(panes) == [
        f'{{service_name=~".+", shard=~"{cid[-1]}|"}} | correlation_id="{cid}"'
    ]
    assert page["runbook_url"] == f"{RUNBOOKS}/alerts/runbooks/HighErrorRatio.md"
    assert page["logs_url"] == stack.alert["annotations"]["logs_url"]
    assert page["dashboard_url"] == stack.alert["annotations"]["dashboard_url"]
    assert stack.payments_page.spike_to_page < GOAL_SECONDS * 2, "far from docs/notifier.md's figure"


def test_with_loki_stopped_a_page_still_arrives_within_5_s_with_links_only(stack: Stack) -> None:
    page = stack.inventory_page.body
    assert stack.all_pages == ["payments", "inventory"], "one page per cause, no echo from orders or gateway"
    assert (page["alertname"], page["service"], page["trail"]) == ("HighErrorRatio", "inventory", "unavailable")
    assert page["trail_note"].startswith("the trail could not be read: Loki did not answer within")
    assert page["root_cause"] is None and page["correlation_id"] is None
    assert page["runbook_url"] == f"{RUNBOOKS}/alerts/runbooks/HighErrorRatio.md"
    assert page["trail_url"] and page["logs_url"] and page["dashboard_url"]
    assert "Links only: the trail could not be read" in page["text"]
    assert stack.inventory_page.receipt_to_page < 5.0, stack.inventory_page.receipt_to_page


def test_orders_failing_on_its_own_pages_once_naming_orders(stack: Stack, chain: Any, chain_sink: FakeLoki) -> None:
    """A fresh Prometheus and Alertmanager (so payments' and inventory's failures are not in its
    rates): orders fails before calling anyone; gateway answers 502 for it."""
    chat = FakeWebhook()
    traffic = Traffic(chain.urls["gateway"])
    with chat.server, running_notifier(chain_sink.url, chat.server.url) as run:
        try:
            with alerting_stack(chain.urls, run.url, run.token_file) as (prom, am, _):
                spike = time.monotonic()
                set_faults(chain.urls["orders"], error_rate=ERROR_RATE)
                traffic.start()
                page = wait_for_page(
                    chat, run, "orders", spike, "orders fails on its own", lambda: diagnostics(prom, am, run, traffic)
                )
                time.sleep(QUIET_AFTER_PAGE_SECONDS)  # a deliberate wait: asserting that nothing comes
                paged = [body["service"] for _, body in pages(chat)]
                alerts = critical_alerts(prom)
                traffic.stop()
        finally:
            traffic.stop_event.set()
            set_faults(chain.urls["orders"], error_rate=0.0)
    assert paged == ["orders"] and alerts == {("HighErrorRatio", "orders", "firing")}
    body = page.body
    assert (body["alertname"], body["cause_service"], body["trail"]) == ("HighErrorRatio", "orders", "found")
    hop = body["root_cause"]
    assert (hop["service"], hop["route"], hop["status"]) == ("orders", "/orders", 500)
    assert body["error"]["type"] == INJECTED_FAULT
    assert traffic.failed.get(body["correlation_id"]) == 502


def test_alert_trail_url_leads_to_a_failed_request_whose_every_hop_reached_loki(
    stack: Stack, chain_sink: FakeLoki
) -> None:
    alert = stack.alert
    annotations = alert["annotations"]
    assert alert["labels"]["severity"] == "critical"
    assert alert["labels"].get("grafana_url") == GRAFANA, "the external label travels with the alert"
    uids = provisioned_datasource_uids()

    trail_url = annotations["trail_url"]
    assert trail_url.startswith(GRAFANA + "/explore?"), trail_url
    panes = parse_explore_url(trail_url, uids)
    assert list(panes) == ["trail"]
    pane = panes["trail"]
    assert pane["datasource"] == "loki" and pane["queries"][0]["datasource"] == {"type": "loki", "uid": "loki"}
    (expr,) = explore_exprs(panes)
    check_logql(expr)
    # trail's own links select the ID's shard; the alert rules' templates cannot compute it.
    match = re.fullmatch(r'\{service_name=~"\.\+"(?:, shard=~"[0-9a-f]\|")?\} \| correlation_id="([^"]+)"', expr)
    assert match, f"not the trail query of docs/reference.md: {expr}"
    cid = match.group(1)

    assert not stack.traffic.problems, stack.traffic.problems[:5]
    # A request that really failed (and did not also succeed), answered to our traffic.
    assert cid in stack.traffic.failed, f"{cid} is not among the {len(stack.traffic.failed)} failed checkouts"
    assert cid not in stack.traffic.succeeded
    assert stack.traffic.failed[cid] == FAILED_TRAIL_STATUSES["gateway"]
    assert cid in annotations["description"]

    # The window: strings of epoch ms around the failure, containing the ID's own creation time.
    rng = pane["range"]
    assert re.fullmatch(r"\d{13}", rng["from"]) and re.fullmatch(r"\d{13}", rng["to"]), rng
    start_ms, end_ms = int(rng["from"]), int(rng["to"])
    created_ms = time_ms_of(cid)
    assert created_ms is not None, f"{cid} is not one of our UUIDv7 IDs"
    assert start_ms <= created_ms <= end_ms, (start_ms, created_ms, end_ms)
    assert stack.started * 1000 - 1000 <= created_ms <= time.time() * 1000

    # It is the payments gauge's ID, and the window is computed from the gauge's value.
    series = instant_query(
        stack.prometheus,
        f'last_over_time(correlation_last_failed_request{{service="payments",correlation_id="{cid}"}}[10m])',
    )["result"]
    assert len(series) == 1, series
    failed_at_ms = float(series[0]["value"][1]) * 1000
    assert series[0]["metric"]["route"] == "/payments" and series[0]["metric"]["status"] == "500"
    assert abs(start_ms - (failed_at_ms - 60_000)) <= 1 and abs(end_ms - (failed_at_ms + 120_000)) <= 1
    assert created_ms <= failed_at_ms + 1

    # Every hop's lines reached the sink with the ID as structured metadata.
    def trail(entries: list[PushedEntry]) -> list[PushedEntry]:
        return [e for e in entries if e.metadata.get("correlation_id") == cid]

    def complete(entries: list[PushedEntry]) -> bool:
        access = {
            e.labels["service_name"]: e.json["status"]
            for e in trail(entries)
            if e.json.get("logger") == "correlation.access"
        }
        return access == FAILED_TRAIL_STATUSES

    try:
        entries = trail(chain_sink.wait_for(complete, timeout=30))
    except AssertionError as exc:
        got = sorted({(e.labels["service_name"], e.json.get("logger")) for e in trail(chain_sink.entries)})
        raise AssertionError(f"{exc}; lines of {cid} that arrived: {got}") from None
    assert {e.labels["service_name"] for e in entries} == set(SERVICES)
    assert all(e.json["correlation_id"] == cid for e in entries)
    assert all(e.labels.get("env") == "test" for e in entries)
    assert any(e.labels["service_name"] == "payments" and e.metadata.get("level") == "error" for e in entries), (
        "payments logged the injected fault at level error"
    )

    # trail_page_url: the same request's page on trail-web, which finds it around the ID's own time.
    assert annotations["trail_page_url"] == TRAIL_WEB + trail_page_path(cid)
    web = create_app(TrailWebSettings(LokiSettings(url=chain_sink.url))).test_client()
    document = web.get(trail_page_path(cid) + "?format=json").get_json()
    assert {hop["service"]: hop["status"] for hop in document["hops"]} == FAILED_TRAIL_STATUSES
    assert document["widened"] is False and document["window"]["end_ns"] - document["window"]["start_ns"] <= 60e9


def test_alert_logs_and_dashboard_urls_use_the_grafana_label(stack: Stack) -> None:
    annotations = stack.alert["annotations"]
    assert annotations["dashboard_url"] == (
        f"{GRAFANA}/d/service-overview/service-overview?orgId=1&var-service=payments&from=now-1h&to=now"
    )
    dashboard = urllib.parse.urlsplit(annotations["dashboard_url"])
    assert urllib.parse.parse_qs(dashboard.query, strict_parsing=True)["var-service"] == ["payments"]

    assert annotations["logs_url"].startswith(GRAFANA + "/explore?")
    logs = parse_explore_url(annotations["logs_url"], provisioned_datasource_uids())
    (expr,) = explore_exprs(logs)
    assert expr == '{service_name="payments"} | level="error"'
    check_logql(expr)
    rng = logs["logs"]["range"]
    assert re.fullmatch(r"\d{13}", rng["from"]) and re.fullmatch(r"\d{13}", rng["to"]), rng
    # +-15 minutes around the time the alert went active, which is after the faults were set.
    active_ms = int(rng["from"]) + 15 * 60 * 1000
    assert int(rng["to"]) - int(rng["from"]) == 30 * 60 * 1000
    assert stack.started * 1000 - 2000 <= active_ms <= time.time() * 1000, (stack.started, active_ms)


def test_prometheus_stored_correlation_id_exemplars(stack: Stack) -> None:
    ids = stack.traffic.all_ids()
    start, end = stack.started - 60, time.time() + 60

    def exemplars(query: str) -> list[str]:
        url = (
            stack.prometheus
            + "/api/v1/query_exemplars?"
            + urllib.parse.urlencode({"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}"})
        )
        body = http_get_json(url)
        assert body["status"] == "success", body
        return [e["labels"].get("correlation_id", "") for s in body["data"] for e in s["exemplars"]]

    latency = wait_until(
        lambda: [c for c in exemplars("http_server_request_duration_seconds_bucket") if c in ids],
        30,
        "a latency exemplar carrying one of our correlation IDs",
        interval=0.5,
    )
    assert latency
    # The payments error counter's exemplars are IDs of checkouts that failed.
    errors = wait_until(
        lambda: exemplars('http_server_errors_total{service="payments"}'),
        30,
        "an exemplar on payments' error counter",
        interval=0.5,
    )
    assert set(errors) <= set(stack.traffic.failed), set(errors) - set(stack.traffic.failed)


def test_rules_are_healthy_and_their_expressions_run_on_real_data(stack: Stack) -> None:
    groups = http_get_json(stack.prometheus + "/api/v1/rules")["data"]["groups"]
    loaded = [r for g in groups for r in g["rules"]]
    expected = [r for text in stack.derived_rules.values() for g in yaml.safe_load(text)["groups"] for r in g["rules"]]
    assert sorted(r["name"] for r in loaded) == sorted(r["alert"] for r in expected)
    assert all(r["health"] == "ok" for r in loaded), [(r["name"], r.get("lastError")) for r in loaded]
    for rule in expected:
        instant_query(stack.prometheus, rule["expr"])
    firing = instant_query(stack.prometheus, 'ALERTS{alertname="HighErrorRatio",alertstate="firing"}')["result"]
    assert "payments" in {r["metric"]["service"] for r in firing}


def test_dashboard_promql_runs_on_real_data(stack: Stack) -> None:
    queries = list(dashboard_promql_queries())
    assert len(queries) >= 10
    empty = []
    for where, expr in queries:
        try:
            expr = substitute_grafana_vars(expr, {"service": ".+", "correlation_id": "x"})
            data = instant_query(stack.prometheus, expr)
        except AssertionError as exc:
            raise AssertionError(f"{where}: {exc}") from None
        if not data["result"] and not any(metric in expr for metric in MAY_BE_EMPTY):
            empty.append(where)
    assert not empty, f"dashboard queries with no data although the chain served traffic: {empty}"
