"""Alert rules: promtool's checks and unit tests, the links they render, and a real Prometheus
evaluating them with the Grafana URL coming from its external label."""

from __future__ import annotations

import glob
import re
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from stack_tools import (
    REPO, check_logql, explore_exprs, explore_url, free_port, http_get_json, instant_query,
    load_yaml, parse_explore_url, prometheus_server, provisioned_datasource_uids, require_tool,
    run, wait_until,
)

RULES = "alerts/correlation-demo.rules.yml"
TEST_FILES = sorted(glob.glob(str(REPO / "alerts/tests/*.yml")))
DEFAULT_GRAFANA = "http://localhost:3000"
URL_KEYS = {"dashboard_url", "logs_url", "trail_url"}
REQUIRED = {  # alert -> annotations it must carry
    "HighErrorRatio": {"summary", "description", "dashboard_url", "logs_url", "trail_url"},
    "HighLatencyP99": {"summary", "description", "dashboard_url", "logs_url"},
    "ServiceDown": {"summary", "description", "dashboard_url", "logs_url"},
    "LokiLogsDropped": {"summary", "description", "dashboard_url", "logs_url"},
}


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
        assert REQUIRED[name] <= set(rule["annotations"]), name
        assert rule["labels"]["severity"] in {"critical", "warning"}


def test_links_share_one_grafana_base() -> None:
    """One mechanism for Grafana's address: the external label, with the documented default."""
    base = '{{- $grafana := or $externalLabels.grafana_url "http://localhost:3000" -}}'
    for rule in rules():
        for key, template in rule["annotations"].items():
            if key.endswith("_url"):
                assert template.splitlines()[0] == base, (rule["alert"], key)
                assert "http://" not in template.replace(base, ""), f"literal URL in {rule['alert']}.{key}"


# --- the exact expectations in alerts/tests: are they the links we mean? ----------------------

def expected_alerts() -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, str]]]:
    """(test group, alert_rule_test entry, one expected alert) for every expected alert."""
    for path in TEST_FILES:
        for group in yaml.safe_load(Path(path).read_text())["tests"]:
            for case in group["alert_rule_test"]:
                for alert in case.get("exp_alerts", []):
                    yield group, case, alert


def failed_request(group: dict[str, Any], service: str) -> tuple[str, float] | None:
    """The correlation ID and time of the service's correlation_last_failed_request input, if any."""
    for series in group["input_series"]:
        if series["series"].startswith("correlation_last_failed_request{") and f'service="{service}"' in series["series"]:
            cid = re.search(r'correlation_id="([^"]+)"', series["series"]).group(1)
            return cid, float(series["values"].split("x")[0])
    return None


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
            assert url.startswith(DEFAULT_GRAFANA + "/")
        assert annotations["dashboard_url"] == (
            f"{DEFAULT_GRAFANA}/d/service-overview/service-overview?orgId=1&var-service={service}&from=now-1h&to=now")

        logs = parse_explore_url(annotations["logs_url"], uids)
        (logs_expr,) = explore_exprs(logs)
        assert logs_expr == f'{{service_name="{service}"}} | level="error"'
        check_logql(logs_expr)
        start, end = int(logs["logs"]["range"]["from"]), int(logs["logs"]["range"]["to"])
        assert end - start == 30 * 60 * 1000, "+-15 min around the alert's start"
        # Independent encoder: same JSON, same bytes.
        assert annotations["logs_url"] == explore_url(DEFAULT_GRAFANA, "logs", logs_expr, str(start), str(end))

        if "trail_url" in annotations:
            failure = failed_request(group, service)
            if failure is None:
                assert annotations["trail_url"] == f"{DEFAULT_GRAFANA}/d/request-trail/request-trail?orgId=1"
            else:
                cid, at = failure
                trail = parse_explore_url(annotations["trail_url"], uids)
                (trail_expr,) = explore_exprs(trail)
                assert trail_expr == f'{{service_name=~".+"}} | correlation_id="{cid}"'
                check_logql(trail_expr)
                assert trail["trail"]["range"] == {"from": str(int(at * 1000 - 60_000)), "to": str(int(at * 1000 + 120_000))}
                assert annotations["trail_url"] == explore_url(DEFAULT_GRAFANA, "trail", trail_expr, *trail["trail"]["range"].values())
                assert cid in annotations["description"]
        checked += 1
    assert checked >= len(REQUIRED)


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

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                fake.scrapes += 1
                n = fake.scrapes
                body = (
                    f'http_server_request_duration_seconds_count{{service="payments",route="/payments",method="POST",status="201"}} {90 * n}\n'
                    f'http_server_request_duration_seconds_count{{service="payments",route="/payments",method="POST",status="500"}} {10 * n}\n'
                    f'http_server_errors_total{{service="payments",route="/payments",method="POST",status="500"}} {10 * n}\n'
                    f'correlation_last_failed_request{{service="payments",correlation_id="{correlation_id}",route="/payments",status="500"}} {failed_at}\n'
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.target = f"127.0.0.1:{self.server.server_address[1]}"


def test_real_prometheus_renders_links_from_the_grafana_url_label(tmp_path: Path) -> None:
    """The rules as written (only `for` shortened to 0 so this takes seconds) in a real Prometheus
    whose prometheus.yml external label reads $GRAFANA_URL: the links use that address, and
    trail_url is built from a scraped correlation_last_failed_request."""
    grafana = "http://grafana.example.test:3000"
    cid, failed_at = "0192f0c4e2a87abc8def0123456789ab", int(time.time()) - 30
    fake = FakeService(cid, failed_at)
    threading.Thread(target=fake.server.serve_forever, daemon=True).start()

    rule_file = load_yaml(RULES)
    for group in rule_file["groups"]:
        for rule in group["rules"]:
            rule.pop("for", None)
    repo_config = load_yaml("prometheus/prometheus.yml")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                   "external_labels": repo_config["global"]["external_labels"]},  # ${GRAFANA_URL}
        "rule_files": ["rules.yml"],
        "scrape_configs": [{
            "job_name": "demo-services", "honor_labels": True,
            "static_configs": [{"targets": [fake.target], "labels": {"service": "payments"}},
                               {"targets": [f"127.0.0.1:{free_port()}"], "labels": {"service": "inventory"}}],
        }],
    }
    try:
        # Prometheus 3 expands ${VAR} in external labels by default; 2.42 needs the feature flag.
        with prometheus_server(config, {"rules.yml": yaml.safe_dump(rule_file)},
                               env={"GRAFANA_URL": grafana}, features=("expand-external-labels",)) as base:
            def firing() -> dict[str, dict[str, Any]]:
                alerts = http_get_json(base + "/api/v1/alerts")["data"]["alerts"]
                found = {a["labels"]["alertname"]: a for a in alerts if a["state"] == "firing"}
                return found if {"HighErrorRatio", "ServiceDown"} <= set(found) else {}

            alerts = wait_until(firing, 60, "HighErrorRatio and ServiceDown to fire", interval=0.5)
    finally:
        fake.server.shutdown()
        fake.server.server_close()

    uids = provisioned_datasource_uids()
    errors = alerts["HighErrorRatio"]
    assert errors["labels"]["service"] == "payments"
    annotations = errors["annotations"]
    assert annotations["dashboard_url"] == f"{grafana}/d/service-overview/service-overview?orgId=1&var-service=payments&from=now-1h&to=now"
    trail = parse_explore_url(annotations["trail_url"], uids)
    assert annotations["trail_url"] == explore_url(
        grafana, "trail", f'{{service_name=~".+"}} | correlation_id="{cid}"',
        str(failed_at * 1000 - 60_000), str(failed_at * 1000 + 120_000))
    assert trail["trail"]["range"]["from"] == str(failed_at * 1000 - 60_000)
    logs = parse_explore_url(annotations["logs_url"], uids)
    started = (int(logs["logs"]["range"]["from"]) + 15 * 60 * 1000) / 1000
    assert abs(started - time.time()) < 120, "the logs window centres on the alert's start"
    assert annotations["logs_url"].startswith(grafana + "/explore?")
    assert cid in annotations["description"]

    down = alerts["ServiceDown"]
    assert down["labels"]["service"] == "inventory"
    assert down["annotations"]["dashboard_url"].startswith(f"{grafana}/d/service-overview/")
    assert urllib.parse.urlsplit(down["annotations"]["logs_url"]).netloc == "grafana.example.test:3000"
