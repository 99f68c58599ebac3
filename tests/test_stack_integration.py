"""The whole alerting path, for real: the demo chain under gunicorn shipping to the Loki push sink,
a real Prometheus scraping it (config derived from prometheus/prometheus.yml, rules from
alerts/*.rules.yml with only `for:` shortened), a real Alertmanager (config derived from
alerts/alertmanager.yml) and the demo alert receiver.

payments is made to fail half of its requests; the HighErrorRatio alert for payments must reach
the receiver with a trail_url whose LogQL names the correlation ID of a checkout that really
failed, whose lines from all four hops reached the sink. Everything listens on 127.0.0.1 on free
ports; every wait is a poll with a deadline; every process started here is stopped here.
"""

from __future__ import annotations

import copy
import glob
import json
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
import yaml

from correlation.ids import time_ms_of
from demo.alert_receiver import AlertStore, make_server
from demo.services import SERVICES
from loki_sink import LokiSink, PushedEntry
from stack_tools import (
    REPO, alertmanager_server, check_logql, dashboard_promql_queries, explore_exprs, http_get_json,
    instant_query, load_yaml, parse_explore_url, prometheus_server, provisioned_datasource_uids,
    substitute_grafana_vars, wait_until,
)

GRAFANA = "http://grafana.integration.test:3000"
RULE_FILES = sorted(glob.glob(str(REPO / "alerts/*.rules.yml")))
SHORT_FOR = "5s"
#: Deadlines: generous, other test sessions share this 2-core machine.
TRAFFIC_MAX_SECONDS = 120.0
ALERT_DEADLINE_SECONDS = 120.0
REQUEST_PERIOD_SECONDS = 0.2  # pacing of the traffic loop (a few checkouts a second), not a sync
FAILING_SERVICE = "payments"
ERROR_RATE = 0.5  # some checkouts fail, some succeed: "this ID failed" is then a real check
#: The status each hop of a checkout answers when payments fails it.
FAILED_TRAIL_STATUSES = {"gateway": 502, "orders": 502, "payments": 500, "inventory": 201}
#: Dashboard queries on series that exist only after a drop, a retry or a rejected inbound ID.
MAY_BE_EMPTY = ("loki_shipper_dropped_lines_total", "loki_shipper_retries_total", "correlation_rejected_ids_total")


# --- derived configs -------------------------------------------------------------------------------

def shorten_for(text: str) -> str:
    """The rules file with every rule's `for:` set to SHORT_FOR; every other byte unchanged."""
    return re.sub(r"^(\s+for:[ \t]*)\S+[ \t]*$", rf"\g<1>{SHORT_FOR}", text, flags=re.MULTILINE)


def without_for(rule_file: dict[str, Any]) -> dict[str, Any]:
    stripped = copy.deepcopy(rule_file)
    for group in stripped["groups"]:
        for rule in group["rules"]:
            rule.pop("for", None)
    return stripped


def derived_prometheus_config(targets: dict[str, str], rule_names: list[str], alertmanager: str) -> dict[str, Any]:
    """prometheus/prometheus.yml with the demo job pointed at the local chain (same `service`
    labels), 1 s intervals, the derived rule files and the local Alertmanager."""
    repo = load_yaml("prometheus/prometheus.yml")
    (job,) = [copy.deepcopy(j) for j in repo["scrape_configs"] if j["job_name"] == "demo-services"]
    assert job.get("honor_labels") is True, "the app's own `service` label must win"
    seen = set()
    for static in job["static_configs"]:
        service = static["labels"]["service"]
        (target,) = static["targets"]
        assert target.split(":")[0] == service, f"compose target {target} for service {service}"
        static["targets"] = [targets[service]]
        seen.add(service)
    assert seen == set(SERVICES), f"prometheus.yml scrapes {sorted(seen)}, the chain is {SERVICES}"
    assert repo["rule_files"] == ["/etc/prometheus/alerts/*.rules.yml"], "the derived config mirrors this glob"
    (repo_am,) = repo["alerting"]["alertmanagers"]
    alerting = copy.deepcopy(repo["alerting"])
    alerting["alertmanagers"][0]["static_configs"] = [{"targets": [alertmanager]}]
    assert len(repo_am["static_configs"]) == 1
    return {
        "global": {
            "scrape_interval": "1s",
            "evaluation_interval": "1s",
            # `grafana_url: ${GRAFANA_URL}` as written; expanded from the environment.
            "external_labels": repo["global"]["external_labels"],
            # scrape_protocols is left out: Prometheus 2.42 does not know it (exemplar-storage
            # makes 2.42 ask for OpenMetrics anyway).
        },
        "rule_files": rule_names,
        "alerting": alerting,
        "scrape_configs": [job],
    }


def derived_alertmanager_config(webhook_url: str) -> dict[str, Any]:
    """alerts/alertmanager.yml with the webhook pointed at the local receiver and short waits."""
    config = load_yaml("alerts/alertmanager.yml")
    config["route"]["group_wait"] = "1s"
    config["route"]["group_interval"] = "1s"
    webhooks = [w for r in config["receivers"] for w in r.get("webhook_configs", [])]
    assert len(webhooks) == 1, webhooks
    assert urllib.parse.urlsplit(webhooks[0]["url"]).path == "/alerts", "the receiver listens on /alerts"
    webhooks[0]["url"] = webhook_url
    return config


# --- traffic -----------------------------------------------------------------------------------

@dataclass
class Traffic:
    """A bounded loop of POST /checkout in a thread, recording each answer's correlation ID."""

    gateway: str
    failed: dict[str, int] = field(default_factory=dict)  # correlation ID -> status (>= 500)
    succeeded: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="checkout-traffic", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + TRAFFIC_MAX_SECONDS
        with requests.Session() as session:
            while not self.stop_event.is_set() and time.monotonic() < deadline:
                try:
                    response = session.post(f"{self.gateway}/checkout", json={}, timeout=10)
                    cid = response.headers.get("X-Correlation-ID", "")
                    with self.lock:
                        if not cid:
                            self.problems.append(f"answer {response.status_code} without X-Correlation-ID")
                        elif response.status_code >= 500:
                            self.failed[cid] = response.status_code
                        else:
                            self.succeeded[cid] = response.status_code
                except requests.RequestException as exc:
                    with self.lock:
                        self.problems.append(repr(exc))
                self.stop_event.wait(REQUEST_PERIOD_SECONDS)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the traffic thread did not stop"

    def all_ids(self) -> set[str]:
        with self.lock:
            return set(self.failed) | set(self.succeeded)


# --- the stack ---------------------------------------------------------------------------------

@dataclass
class Stack:
    prometheus: str
    alertmanager: str
    receiver: AlertStore
    traffic: Traffic
    alert: dict[str, Any]  # the first firing HighErrorRatio alert for payments the receiver got
    derived_rules: dict[str, str]  # rules file name -> derived text
    started: float  # Unix seconds when the faults were set


def set_faults(base: str, **values: Any) -> dict[str, Any]:
    response = requests.post(f"{base}/admin/faults", json=values, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def receiver_alert(store: AlertStore, alertname: str, service: str) -> dict[str, Any] | None:
    for payload in store.snapshot():
        for alert in payload["alerts"]:
            labels = alert["labels"]
            if alert["status"] == "firing" and labels.get("alertname") == alertname and labels.get("service") == service:
                return alert
    return None


def diagnostics(prometheus: str, alertmanager: str, store: AlertStore, traffic: Traffic) -> str:
    parts = []
    for name, url in (("prometheus alerts", prometheus + "/api/v1/alerts"),
                      ("prometheus targets", prometheus + "/api/v1/targets?state=active"),
                      ("alertmanager alerts", alertmanager + "/api/v2/alerts")):
        try:
            parts.append(f"{name}: {json.dumps(http_get_json(url))[:3000]}")
        except Exception as exc:  # noqa: BLE001 - this is only a failure report
            parts.append(f"{name}: {exc!r}")
    parts.append(f"receiver payloads: {len(store.snapshot())}")
    parts.append(f"traffic: {len(traffic.failed)} failed, {len(traffic.succeeded)} succeeded, problems {traffic.problems[:5]}")
    return "\n".join(parts)


@pytest.fixture(scope="module")
def stack(chain: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    out = (tmp_path_factory.mktemp("receiver") / "alerts.log").open("w")
    server, store = make_server("127.0.0.1", 0, out=out)
    threading.Thread(target=server.serve_forever, name="alert-receiver", daemon=True).start()
    receiver_url = f"http://127.0.0.1:{server.server_address[1]}"
    traffic = Traffic(chain.urls["gateway"])
    failing = chain.urls[FAILING_SERVICE]
    try:
        wait_until(lambda: requests.get(receiver_url + "/healthz", timeout=2).status_code == 200, 10, "the alert receiver")
        derived_rules = {Path(path).name: shorten_for(Path(path).read_text()) for path in RULE_FILES}
        with alertmanager_server(derived_alertmanager_config(receiver_url + "/alerts")) as am:
            targets = {name: urllib.parse.urlsplit(url).netloc for name, url in chain.urls.items()}
            config = derived_prometheus_config(targets, sorted(derived_rules), urllib.parse.urlsplit(am).netloc)
            # Prometheus 2.42 expands ${GRAFANA_URL} in external labels only with this feature.
            with prometheus_server(config, derived_rules, env={"GRAFANA_URL": GRAFANA},
                                   features=("expand-external-labels",)) as prom:
                def all_up() -> bool:
                    result = instant_query(prom, 'up{job="demo-services"} == 1')["result"]
                    return {r["metric"].get("service") for r in result} == set(SERVICES)

                wait_until(all_up, 60, "Prometheus to scrape all four services", interval=0.5)
                started = time.time()
                assert set_faults(failing, error_rate=ERROR_RATE)["error_rate"] == ERROR_RATE
                traffic.start()
                try:
                    alert = wait_until(lambda: receiver_alert(store, "HighErrorRatio", FAILING_SERVICE),
                                       ALERT_DEADLINE_SECONDS, "HighErrorRatio for payments at the receiver",
                                       interval=0.5)
                except AssertionError as exc:
                    raise AssertionError(f"{exc}\n{diagnostics(prom, am, store, traffic)}") from None
                finally:
                    traffic.stop()
                yield Stack(prom, am, store, traffic, alert, derived_rules, started)
    finally:
        traffic.stop_event.set()
        try:
            set_faults(failing, error_rate=0.0, latency_ms=0)
        finally:
            server.shutdown()
            server.server_close()
            out.close()


# --- the tests ---------------------------------------------------------------------------------

def test_derived_rules_differ_only_in_for(stack: Stack) -> None:
    """The rules Prometheus ran are the repo's: expressions, labels and annotations identical."""
    assert stack.derived_rules, "alerts/*.rules.yml is empty"
    for name, text in stack.derived_rules.items():
        original = yaml.safe_load((REPO / "alerts" / name).read_text())
        derived = yaml.safe_load(text)
        assert without_for(derived) == without_for(original), name
        for group, derived_group in zip(original["groups"], derived["groups"]):
            for rule, derived_rule in zip(group["rules"], derived_group["rules"]):
                assert ("for" in rule) == ("for" in derived_rule), rule.get("alert")
                if "for" in rule:
                    assert derived_rule["for"] == SHORT_FOR


def test_alert_trail_url_leads_to_a_failed_request_whose_every_hop_reached_loki(stack: Stack, chain_sink: LokiSink) -> None:
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
    match = re.fullmatch(r'\{service_name=~"\.\+"\} \| correlation_id="([^"]+)"', expr)
    assert match, f"not the trail query of README.md, Reference: {expr}"
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
    series = instant_query(stack.prometheus,
                           f'last_over_time(correlation_last_failed_request{{service="payments",correlation_id="{cid}"}}[10m])')["result"]
    assert len(series) == 1, series
    failed_at_ms = float(series[0]["value"][1]) * 1000
    assert series[0]["metric"]["route"] == "/payments" and series[0]["metric"]["status"] == "500"
    assert abs(start_ms - (failed_at_ms - 60_000)) <= 1 and abs(end_ms - (failed_at_ms + 120_000)) <= 1
    assert created_ms <= failed_at_ms + 1

    # Every hop's lines reached the sink with the ID as structured metadata.
    def trail(entries: list[PushedEntry]) -> list[PushedEntry]:
        return [e for e in entries if e.metadata.get("correlation_id") == cid]

    def complete(entries: list[PushedEntry]) -> bool:
        access = {e.labels["service_name"]: e.json["status"] for e in trail(entries) if e.json.get("logger") == "correlation.access"}
        return access == FAILED_TRAIL_STATUSES

    try:
        entries = trail(chain_sink.wait_for(complete, timeout=30))
    except AssertionError as exc:
        got = sorted({(e.labels["service_name"], e.json.get("logger")) for e in trail(chain_sink.entries)})
        raise AssertionError(f"{exc}; lines of {cid} that arrived: {got}") from None
    assert {e.labels["service_name"] for e in entries} == set(SERVICES)
    assert all(e.json["correlation_id"] == cid for e in entries)
    assert all(e.labels.get("env") == "test" for e in entries)
    assert any(e.labels["service_name"] == "payments" and e.metadata.get("level") == "error" for e in entries), \
        "payments logged the injected fault at level error"


def test_alert_logs_and_dashboard_urls_use_the_grafana_label(stack: Stack) -> None:
    annotations = stack.alert["annotations"]
    assert annotations["dashboard_url"] == (
        f"{GRAFANA}/d/service-overview/service-overview?orgId=1&var-service=payments&from=now-1h&to=now")
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
        url = stack.prometheus + "/api/v1/query_exemplars?" + urllib.parse.urlencode(
            {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}"})
        body = http_get_json(url)
        assert body["status"] == "success", body
        return [e["labels"].get("correlation_id", "") for s in body["data"] for e in s["exemplars"]]

    latency = wait_until(lambda: [c for c in exemplars("http_server_request_duration_seconds_bucket") if c in ids],
                         30, "a latency exemplar carrying one of our correlation IDs", interval=0.5)
    assert latency
    # The payments error counter's exemplars are IDs of checkouts that failed.
    errors = wait_until(lambda: exemplars('http_server_errors_total{service="payments"}'), 30,
                        "an exemplar on payments' error counter", interval=0.5)
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
            data = instant_query(stack.prometheus, substitute_grafana_vars(expr, {"service": ".+", "correlation_id": "x"}))
        except AssertionError as exc:
            raise AssertionError(f"{where}: {exc}") from None
        if not data["result"] and not any(metric in expr for metric in MAY_BE_EMPTY):
            empty.append(where)
    assert not empty, f"dashboard queries with no data although the chain served traffic: {empty}"
