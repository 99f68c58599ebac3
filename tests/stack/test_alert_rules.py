"""Alert rules: promtool's checks and unit tests, the links they render, and a real Prometheus
evaluating them with the Grafana URL coming from its external label."""

from __future__ import annotations

import glob
import json
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fakes import FakeWebhook, LoopbackServer, QuietHandler, free_port, wait_until
from tests.support import REPO
from tests.support.grafana import (
    check_logql,
    explore_exprs,
    explore_url,
    parse_explore_url,
    provisioned_datasource_uids,
)
from tests.support.stack import (
    alertmanager_server,
    http_get_json,
    instant_query,
    load_yaml,
    local_alertmanager_config,
    prometheus_server,
    require_tool,
    run,
)
from trail.links import trail_page_path

pytestmark = pytest.mark.stack

RULES = "alerts/correlation-demo.rules.yml"
TEST_FILES = sorted(glob.glob(str(REPO / "alerts/tests/*.yml")))
DEFAULT_GRAFANA = "http://localhost:3000"
DEFAULT_RUNBOOKS = "http://localhost:9095"
DEFAULT_TRAIL_WEB = "http://localhost:8090"
URL_KEYS = {"dashboard_url", "logs_url", "trail_url", "trail_page_url", "last_lines_url", "runbook_url"}
#: The annotations of a page that links to the trail of the failure it is about.
WITH_TRAIL = {"summary", "description", "dashboard_url", "logs_url", "trail_url", "trail_page_url", "runbook_url"}
#: A page whose request trail-web finds in Loki when the link is clicked (/go/last-failed, ...).
WITH_REDIRECT = {"summary", "description", "dashboard_url", "logs_url", "trail_page_url", "runbook_url"}
REQUIRED = {  # alert -> annotations it must carry
    "HighErrorRatio": WITH_TRAIL,
    "DownstreamErrors": WITH_REDIRECT,
    "HighLatencyP99": {"summary", "description", "dashboard_url", "logs_url", "trail_page_url"},
    "ServiceDown": {*WITH_REDIRECT, "last_lines_url"},
    "LokiLogsDropped": {"summary", "description", "dashboard_url", "logs_url", "runbook_url"},
    "TaskFailures": WITH_TRAIL,
    "TaskPublishFailures": WITH_REDIRECT,
}
#: Every alert with a request behind it links to one (issue 24).
ALERTS_WITH_A_REQUEST = {name for name, keys in REQUIRED.items() if "trail_page_url" in keys}
#: severity critical pages: every page has a runbook and names the service at fault.
PAGING = {"HighErrorRatio", "DownstreamErrors", "ServiceDown", "TaskFailures", "TaskPublishFailures"}
#: Every alert with a runbook in alerts/runbooks/ links to it.
WITH_RUNBOOK = {name for name, keys in REQUIRED.items() if "runbook_url" in keys}
GRAFANA_BASE = '{{- $grafana := or $externalLabels.grafana_url "http://localhost:3000" -}}'
RUNBOOK_BASE = '{{- $runbooks := or $externalLabels.runbook_base_url "http://localhost:9095" -}}'
TRAIL_WEB_BASE = '{{- $trailweb := or $externalLabels.trail_web_url "http://localhost:8090" -}}'
#: Each link annotation's base: (Go template line, default address); Grafana's for the rest.
BASES = {"runbook_url": (RUNBOOK_BASE, DEFAULT_RUNBOOKS), "trail_page_url": (TRAIL_WEB_BASE, DEFAULT_TRAIL_WEB)}


def rules() -> list[dict[str, Any]]:
    return [r for g in load_yaml(RULES)["groups"] for r in g["rules"]]


def test_promtool_checks_rules() -> None:
    out = run([require_tool("promtool"), "check", "rules", str(REPO / RULES)]).stdout
    assert f"SUCCESS: {len(REQUIRED)} rules found" in out


def test_promtool_unit_tests_pass() -> None:
    assert TEST_FILES, "alerts/tests/*.yml is empty"
    out = run([require_tool("promtool"), "test", "rules", *TEST_FILES]).stdout
    assert "FAILED" not in out and "SUCCESS" in out


def test_every_alert_has_its_annotations() -> None:
    found = {r["alert"]: r for r in rules()}
    assert set(found) == set(REQUIRED)
    for name, rule in found.items():
        assert REQUIRED[name] == set(rule["annotations"]), name
        assert rule["labels"]["severity"] == ("critical" if name in PAGING else "warning"), name


def test_every_page_names_the_service_at_fault() -> None:
    """Alertmanager's inhibit_rules compare labels of one name (alertmanager issue 2254): every
    page carries `cause_service`, set from the alert's own service or, for DownstreamErrors, from
    the failing peer (PromQL label_replace), for TaskPublishFailures `broker` when the broker
    refused (promtool's expectations check the values)."""
    for rule in rules():
        if rule["alert"] in {"HighErrorRatio", "ServiceDown", "TaskFailures"}:
            assert rule["labels"]["cause_service"] == "{{ $labels.service }}", rule["alert"]
        elif rule["alert"] == "DownstreamErrors":
            assert '"cause_service", "$1", "downstream"' in rule["expr"]
        elif rule["alert"] == "TaskPublishFailures":
            assert "broker" in rule["labels"]["cause_service"] and "$labels.service" in rule["labels"]["cause_service"]
    for _, case, alert in expected_alerts():
        if case["alertname"] in PAGING:
            assert alert["exp_labels"]["cause_service"], case


def test_inhibition_uses_cause_service_on_both_sides() -> None:
    am = load_yaml("alerts/alertmanager.yml")
    by_target = {tuple(r["target_matchers"]): r for r in am["inhibit_rules"]}
    downstream = by_target[('alertname="DownstreamErrors"',)]
    assert downstream["equal"] == ["cause_service"]
    assert downstream["source_matchers"] == ['alertname=~"HighErrorRatio|ServiceDown"']


def test_links_share_one_base_each() -> None:
    """One mechanism per address: an external label with the documented default, for Grafana
    (grafana_url), the runbooks (runbook_base_url) and trail-web (trail_web_url)."""
    for rule in rules():
        for key, template in rule["annotations"].items():
            if key.endswith("_url"):
                base = BASES.get(key, (GRAFANA_BASE, DEFAULT_GRAFANA))[0]
                assert template.splitlines()[0] == base, (rule["alert"], key)
                assert "http://" not in template.replace(base, ""), f"literal URL in {rule['alert']}.{key}"


def test_every_page_has_a_runbook_in_the_repository() -> None:
    """runbook_url is the runbook's path in this repository under the base."""
    assert PAGING <= WITH_RUNBOOK
    for rule in rules():
        if rule["alert"] not in WITH_RUNBOOK:
            continue
        path = rule["annotations"]["runbook_url"].splitlines()[1].removeprefix("{{ $runbooks }}/")
        assert path == f"alerts/runbooks/{rule['alert']}.md"
        text = (REPO / path).read_text()
        page = rule["alert"] in PAGING
        assert text.startswith(f"# {rule['alert']} ({'page' if page else 'warning'})"), path
        for part in ("**What it means.**", "**First three things to check**", "\n1. ", "\n2. ", "\n3. "):
            assert part in text, (path, part)
        assert not page or "trail " in text, (path, "a page shows how to follow the failing request")


# --- the exact expectations in alerts/tests: are they the links we mean? ----------------------


def expected_alerts() -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(test group, alert_rule_test entry, one expected alert) for every expected alert."""
    for path in TEST_FILES:
        for group in yaml.safe_load(Path(path).read_text())["tests"]:
            for case in group["alert_rule_test"]:
                for alert in case.get("exp_alerts", []):
                    yield group, case, alert


def failed_request(group: dict[str, Any], service: str, route: str | None = None) -> tuple[str, float] | None:
    """The correlation ID and time of the service's correlation_last_failed_request input, if any
    (of ``route`` only when given: TaskFailures follows a run of its own task); with several (one
    per replica) the newest, as the rule's topk(1) picks it."""
    found = []
    for series in group["input_series"]:
        name = series["series"]
        if route is not None and f'route="{route}"' not in name:
            continue
        if name.startswith("correlation_last_failed_request{") and f'service="{service}"' in name:
            cid = re.search(r'correlation_id="([^"]+)"', series["series"])
            assert cid is not None, name
            found.append((cid.group(1), float(series["values"].split("x")[0])))
    return max(found, key=lambda failure: failure[1], default=None)


def test_unit_tests_cover_every_alert_firing() -> None:
    assert {case["alertname"] for _, case, _ in expected_alerts()} == set(REQUIRED)


def test_expected_links_are_absolute_and_decode_to_valid_explore_queries() -> None:
    uids = provisioned_datasource_uids()
    checked = 0
    for group, case, alert in expected_alerts():
        service = alert["exp_labels"]["service"]
        annotations = alert["exp_annotations"]
        assert REQUIRED[case["alertname"]] == set(annotations), "assert every annotation exactly"
        for key in URL_KEYS & set(annotations):
            url = annotations[key]
            # Grafana linkifies an annotation only when the whole value is one http URL.
            assert re.fullmatch(r"https?://\S+", url), (key, url)
            assert url.startswith(BASES.get(key, (GRAFANA_BASE, DEFAULT_GRAFANA))[1] + "/")
        if "runbook_url" in annotations:
            assert annotations["runbook_url"] == f"{DEFAULT_RUNBOOKS}/alerts/runbooks/{case['alertname']}.md"
        assert annotations["dashboard_url"] == (
            f"{DEFAULT_GRAFANA}/d/service-overview/service-overview?orgId=1&var-service={service}&from=now-1h&to=now"
        )

        logs = parse_explore_url(annotations["logs_url"], uids)
        (logs_expr,) = explore_exprs(logs)
        assert logs_expr == f'{{service_name="{service}"}} | level="error"'
        check_logql(logs_expr)
        start, end = int(logs["logs"]["range"]["from"]), int(logs["logs"]["range"]["to"])
        assert end - start == 30 * 60 * 1000, "+-15 min around the alert's start"
        # Independent encoder: same JSON, same bytes.
        assert annotations["logs_url"] == explore_url(DEFAULT_GRAFANA, "logs", logs_expr, str(start), str(end))

        if annotations.get("trail_page_url", "").startswith(DEFAULT_TRAIL_WEB + "/go/"):
            check_redirect_link(case["alertname"], alert["exp_labels"], annotations, case["eval_time"])
        if "last_lines_url" in annotations:
            lines = parse_explore_url(annotations["last_lines_url"], uids)
            (lines_expr,) = explore_exprs(lines)
            assert lines_expr == f'{{service_name="{service}"}}'
            check_logql(lines_expr)
            active_ms = start + 15 * 60 * 1000  # logs_url's window is +-15 min around the alert's start
            before, after = str(active_ms - 10 * 60 * 1000), str(active_ms + 60 * 1000)
            assert annotations["last_lines_url"] == explore_url(DEFAULT_GRAFANA, "lines", lines_expr, before, after)
        if "trail_url" in annotations:
            failure = failed_request(group, service, alert["exp_labels"].get("task"))
            if failure is None:
                assert annotations["trail_url"] == f"{DEFAULT_GRAFANA}/d/request-trail/request-trail?orgId=1"
                assert annotations["trail_page_url"] == f"{DEFAULT_TRAIL_WEB}/", "trail-web's own form"
            else:
                cid, at = failure
                trail = parse_explore_url(annotations["trail_url"], uids)
                (trail_expr,) = explore_exprs(trail)
                assert trail_expr == f'{{service_name=~".+"}} | correlation_id="{cid}"'
                check_logql(trail_expr)
                window = {"from": str(int(at * 1000 - 60_000)), "to": str(int(at * 1000 + 120_000))}
                assert trail["trail"]["range"] == window
                assert annotations["trail_url"] == explore_url(DEFAULT_GRAFANA, "trail", trail_expr, *window.values())
                assert cid in annotations["description"]
                # The trail page finds the window from the ID itself (trail.links, as the page's own links).
                assert annotations["trail_page_url"] == DEFAULT_TRAIL_WEB + trail_page_path(cid)
        checked += 1
    assert checked >= len(REQUIRED)


def promtool_ms(duration: str) -> int:
    """An eval_time (``10m``, ``90s``) in milliseconds since promtool's clock start."""
    number, unit = re.fullmatch(r"(\d+)([smh])", duration).groups()  # type: ignore[union-attr]
    return int(number) * {"s": 1000, "m": 60_000, "h": 3_600_000}[unit]


#: The trail-web redirect each alert links to, and its parameters from the alert's labels.
REDIRECTS = {
    "DownstreamErrors": (
        "/go/last-failed",
        lambda labels: {"service": [labels["service"]], "peer": [labels["downstream"]]},
    ),
    "ServiceDown": ("/go/last-failed", lambda labels: {"peer": [labels["service"], labels["instance"]]}),
    "TaskPublishFailures": (
        "/go/lost-task",
        lambda labels: {"service": [labels["service"]], "task": [labels["task"]], "reason": [labels["reason"]]},
    ),
    "HighLatencyP99": ("/go/slowest", lambda labels: {"service": [labels["service"]]}),
}


def check_redirect_link(alertname: str, labels: dict[str, str], annotations: dict[str, str], eval_time: str) -> None:
    """trail_page_url is trail-web's redirect for the alert, with the alert's labels and a window
    of minutes ending at the evaluation (the page refuses more than TRAIL_MAX_WINDOW)."""
    path, params_of = REDIRECTS[alertname]
    url = urllib.parse.urlsplit(annotations["trail_page_url"])
    assert url.path == path, annotations["trail_page_url"]
    params = urllib.parse.parse_qs(url.query, strict_parsing=True)
    start, end = int(params.pop("from")[0]), int(params.pop("to")[0])
    assert params == params_of(labels)
    assert end == promtool_ms(eval_time), "up to the evaluation"
    assert 0 < end - start <= 3600 * 1000, "minutes, at most an hour"
    assert "trail_page_url" in annotations["description"], "the description points at it"


# --- a real Prometheus -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus() -> Iterator[str]:
    config = {"global": {"evaluation_interval": "1s"}, "rule_files": [str(REPO / RULES)]}
    with prometheus_server(config) as base:
        yield base


def test_rule_expressions_run_in_prometheus(prometheus: str) -> None:
    for rule in rules():
        instant_query(prometheus, rule["expr"])


def test_prometheus_loads_and_evaluates_the_rules(prometheus: str) -> None:
    def evaluated() -> list[dict[str, Any]]:
        groups = http_get_json(prometheus + "/api/v1/rules")["data"]["groups"]
        loaded = [r for g in groups for r in g["rules"]]
        return loaded if loaded and all(r.get("lastEvaluation", "").startswith("20") for r in loaded) else []

    loaded = wait_until(evaluated, 20, "a first evaluation of every rule")
    assert {r["name"] for r in loaded} == set(REQUIRED)
    assert all(r["health"] == "ok" for r in loaded), [(r["name"], r.get("lastError")) for r in loaded]


class FakeService:
    """A /metrics endpoint for `payments` failing 10% of its requests, with a last failed request."""

    def __init__(self, correlation_id: str, failed_at: int) -> None:
        self.scrapes = 0
        fake = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802
                fake.scrapes += 1
                n = fake.scrapes
                hop = 'service="payments",route="/payments",method="POST"'
                body = (
                    f'http_server_request_duration_seconds_count{{{hop},status="201"}} {90 * n}\n'
                    f'http_server_request_duration_seconds_count{{{hop},status="500"}} {10 * n}\n'
                    f'http_server_errors_total{{{hop},status="500",origin="self"}} {10 * n}\n'
                    f'correlation_last_failed_request{{service="payments",correlation_id="{correlation_id}",'
                    f'route="/payments",status="500"}} {failed_at}\n'
                )
                self.reply(200, body, "text/plain; version=0.0.4")

        self.server = LoopbackServer(Handler)
        self.target = self.server.address


def test_real_prometheus_renders_links_from_the_grafana_url_label(tmp_path: Path) -> None:
    """The rules as written (only `for` shortened to 0 so this takes seconds) in a real Prometheus
    whose prometheus.yml external label reads $GRAFANA_URL: the links use that address, and
    trail_url is built from a scraped correlation_last_failed_request."""
    grafana = "http://grafana.example.test:3000"
    runbooks = "https://git.example.test/team/repo/blob/main"
    trail_web = "http://trail.example.test:8090"
    cid, failed_at = "0192f0c4e2a87abc8def0123456789ab", int(time.time()) - 30
    fake = FakeService(cid, failed_at)
    fake.server.start()

    rule_file = load_yaml(RULES)
    for group in rule_file["groups"]:
        for rule in group["rules"]:
            rule.pop("for", None)
    repo_config = load_yaml("prometheus/prometheus.yml")
    config = {
        "global": {
            "scrape_interval": "1s",
            "evaluation_interval": "1s",
            "external_labels": repo_config["global"]["external_labels"],
        },  # ${GRAFANA_URL}
        "rule_files": ["rules.yml"],
        "scrape_configs": [
            {
                "job_name": "demo-services",
                "honor_labels": True,
                "static_configs": [
                    {"targets": [fake.target], "labels": {"service": "payments"}},
                    {"targets": [f"127.0.0.1:{free_port()}"], "labels": {"service": "inventory"}},
                ],
            }
        ],
    }
    try:
        # Prometheus 3 expands ${VAR} in external labels by default; 2.42 needs the feature flag.
        with prometheus_server(
            config,
            {"rules.yml": yaml.safe_dump(rule_file)},
            env={"GRAFANA_URL": grafana, "RUNBOOK_BASE_URL": runbooks, "TRAIL_WEB_URL": trail_web},
            features=("expand-external-labels",),
        ) as base:

            def firing() -> dict[str, dict[str, Any]]:
                alerts = http_get_json(base + "/api/v1/alerts")["data"]["alerts"]
                found = {a["labels"]["alertname"]: a for a in alerts if a["state"] == "firing"}
                return found if {"HighErrorRatio", "ServiceDown"} <= set(found) else {}

            alerts = wait_until(firing, 60, "HighErrorRatio and ServiceDown to fire", interval=0.5)
    finally:
        fake.server.stop()

    uids = provisioned_datasource_uids()
    errors = alerts["HighErrorRatio"]
    assert errors["labels"]["service"] == "payments"
    annotations = errors["annotations"]
    assert annotations["dashboard_url"] == (
        f"{grafana}/d/service-overview/service-overview?orgId=1&var-service=payments&from=now-1h&to=now"
    )
    trail = parse_explore_url(annotations["trail_url"], uids)
    assert annotations["trail_url"] == explore_url(
        grafana,
        "trail",
        f'{{service_name=~".+"}} | correlation_id="{cid}"',
        str(failed_at * 1000 - 60_000),
        str(failed_at * 1000 + 120_000),
    )
    assert trail["trail"]["range"]["from"] == str(failed_at * 1000 - 60_000)
    logs = parse_explore_url(annotations["logs_url"], uids)
    started = (int(logs["logs"]["range"]["from"]) + 15 * 60 * 1000) / 1000
    assert abs(started - time.time()) < 120, "the logs window centres on the alert's start"
    assert annotations["logs_url"].startswith(grafana + "/explore?")
    assert cid in annotations["description"]
    assert annotations["runbook_url"] == f"{runbooks}/alerts/runbooks/HighErrorRatio.md"
    assert annotations["trail_page_url"] == f"{trail_web}/t/{cid}"
    assert errors["labels"]["cause_service"] == "payments"

    down = alerts["ServiceDown"]
    assert down["labels"]["service"] == "inventory"
    assert down["annotations"]["dashboard_url"].startswith(f"{grafana}/d/service-overview/")
    assert urllib.parse.urlsplit(down["annotations"]["logs_url"]).netloc == "grafana.example.test:3000"
    assert down["annotations"]["runbook_url"] == f"{runbooks}/alerts/runbooks/ServiceDown.md"


# --- a real Alertmanager: which pages get through --------------------------------------------------


def notified(webhook: FakeWebhook) -> list[tuple[str, str, str]]:
    """Every alert Alertmanager notified the webhook of, as (alertname, service, cause)."""
    return [
        (a["labels"]["alertname"], a["labels"]["service"], a["labels"].get("cause_service", ""))
        for body in webhook.bodies
        for a in body["alerts"]
    ]


def test_real_alertmanager_pages_once_per_cause(tmp_path: Path) -> None:
    """alerts/alertmanager.yml as written (only the webhook address changed) in a real
    Alertmanager, given the alerts the rules raise: a cause's own page silences its callers'
    DownstreamErrors about it (equal cause_service), a down service silences its own error alerts
    (equal service; a worker's failed task runs too), and a peer with no page of its own (an
    external API, the broker) still gets one."""

    def alert(name: str, service: str, cause: str, **labels: str) -> dict[str, Any]:
        all_labels = {"alertname": name, "service": service, "cause_service": cause, "severity": "critical", **labels}
        return {"labels": all_labels, "annotations": {"summary": f"{name} {service}"}}

    sent = [
        alert("HighErrorRatio", "payments", "payments"),
        alert("DownstreamErrors", "orders", "payments", downstream="payments"),
        alert("ServiceDown", "inventory", "inventory", job="demo-services", instance="inventory:8083"),
        alert("HighErrorRatio", "inventory", "inventory"),
        alert("DownstreamErrors", "orders", "inventory", downstream="inventory:8083"),
        alert("DownstreamErrors", "gateway", "billing-api", downstream="billing-api:443"),
        alert("ServiceDown", "notifications", "notifications", job="notifications-worker", instance="w:8084"),
        alert("TaskFailures", "notifications", "notifications", task="notifications.send_confirmation"),
        alert("TaskPublishFailures", "orders", "broker", task="notifications.send_confirmation"),
    ]
    capture = FakeWebhook()
    token_file = tmp_path / "notify-token"
    token_file.write_text("the-notifier-token\n")
    config = local_alertmanager_config(capture.server.url + "/alerts", token_file)
    with capture.server, alertmanager_server(config) as am:
        body = json.dumps(sent).encode()
        request = urllib.request.Request(
            am + "/api/v2/alerts", data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200

        def settled() -> list[dict[str, Any]]:
            alerts = http_get_json(am + "/api/v2/alerts")
            return alerts if len(alerts) == len(sent) and len(notified(capture)) >= 5 else []

        states = wait_until(settled, 30, "Alertmanager to notify the pages that get through", interval=0.2)
    suppressed = {
        (a["labels"]["alertname"], a["labels"]["service"], a["labels"]["cause_service"])
        for a in states
        if a["status"]["inhibitedBy"]
    }
    assert suppressed == {
        ("DownstreamErrors", "orders", "payments"),
        ("HighErrorRatio", "inventory", "inventory"),
        ("DownstreamErrors", "orders", "inventory"),
        ("TaskFailures", "notifications", "notifications"),
    }
    assert sorted(notified(capture)) == [
        ("DownstreamErrors", "gateway", "billing-api"),
        ("HighErrorRatio", "payments", "payments"),
        ("ServiceDown", "inventory", "inventory"),
        ("ServiceDown", "notifications", "notifications"),
        ("TaskPublishFailures", "orders", "broker"),
    ]
    # The notifier's token (a file, as compose mounts it), and Alertmanager's content type.
    headers = {(delivery.authorization, delivery.content_type) for delivery in capture.deliveries}
    assert headers == {("Bearer the-notifier-token", "application/json")}
