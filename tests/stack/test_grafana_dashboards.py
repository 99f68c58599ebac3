"""Grafana provisioning and dashboards: fixed UIDs that exist, links that decode to valid Explore
queries, LogQL that parses, and PromQL that a real Prometheus runs.

Grafana itself cannot run here: what Grafana does with these files (rendering, link
interpolation) is not exercised, only their content."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import REPO
from tests.support.grafana import (
    check_logql,
    check_logql_metric,
    dashboard_promql_queries,
    explore_exprs,
    parse_explore_url,
    substitute_grafana_vars,
)
from tests.support.stack import instant_query, load_json, load_yaml, prometheus_server
from trail.links import DEFAULT_TRAIL_WEB_URL

pytestmark = pytest.mark.unit  # the test running a real Prometheus says stack

DASHBOARDS = {
    "service-overview": "grafana/dashboards/service-overview.json",
    "request-trail": "grafana/dashboards/request-trail.json",
}
SAMPLE_ID = "0192f0c4e2a87abc8def0123456789ab"
TRAIL_EXPR = f'{{service_name=~".+"}} | correlation_id="{SAMPLE_ID}"'
# What Grafana puts in place of its link variables, for decoding.
LINK_VARS = {
    "${__value.raw}": SAMPLE_ID,
    "${__from}": "1764079200000",
    "${__to}": "1764082800000",
    "${__url_time_range}": "from=1764079200000&to=1764082800000",
    # The dashboards' trail-web address and ID, as their trail-web links write them.
    "${trail_web_url:raw}": DEFAULT_TRAIL_WEB_URL,
    "${correlation_id:percentencode}": SAMPLE_ID,
    # A series' link (the latency panel's slowest request): the clicked line's service label.
    "${__field.labels.service:percentencode}": "gateway",
}
# Dashboard variables for running queries: every service, a sample ID.
VARS = {"service": ".+", "correlation_id": SAMPLE_ID}


@pytest.fixture(scope="module")
def datasources() -> dict[str, dict[str, Any]]:
    return {ds["uid"]: ds for ds in load_yaml("grafana/provisioning/datasources/datasources.yml")["datasources"]}


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    return {uid: load_json(path) for uid, path in DASHBOARDS.items()}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


def targets(dashboard: dict[str, Any], ds_type: str) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if (target.get("datasource") or panel.get("datasource") or {}).get("type") == ds_type:
                yield panel, target


def links(value: Any) -> Iterator[str]:
    """Every `url` under a `links` list, anywhere in a dashboard."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "links" and isinstance(item, list):
                yield from (link["url"] for link in item if isinstance(link, dict) and "url" in link)
            elif key == "value" and value.get("id") == "links":
                yield from (link["url"] for link in item)
            else:
                yield from links(item)
    elif isinstance(value, list):
        for item in value:
            yield from links(item)


def fill_link_vars(url: str) -> str:
    for name, value in LINK_VARS.items():
        url = url.replace(name, value)
    assert "${" not in url, f"unknown link variable in {url}"
    return url


# --- data sources ------------------------------------------------------------------------------


def test_datasources_have_fixed_uids_and_types(datasources: dict[str, dict[str, Any]]) -> None:
    assert {uid: ds["type"] for uid, ds in datasources.items()} == {
        "prometheus": "prometheus",
        "loki": "loki",
        "alertmanager": "alertmanager",
    }
    assert datasources["alertmanager"]["jsonData"]["implementation"] == "prometheus"
    assert datasources["prometheus"]["url"] == "http://prometheus:9090"
    assert datasources["loki"]["url"] == "http://loki:3100"


def test_provisioning_escapes_dollars() -> None:
    """Grafana expands $VAR in provisioning files: a link variable must be written $${...}."""
    text = (REPO / "grafana/provisioning/datasources/datasources.yml").read_text()
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        assert not re.search(r"(?<!\$)\$\{", line), f"unescaped ${{ in: {line.strip()}"


def test_correlation_id_links_open_the_full_trail(datasources: dict[str, dict[str, Any]]) -> None:
    uids = set(datasources)
    # The 6-hour fallbacks; the time-scoped links through trail-web: tests/trail/web/test_links.py.
    exemplars = datasources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    (exemplar,) = [d for d in exemplars if "/explore?" in d["url"]]
    (derived,) = [d for d in datasources["loki"]["jsonData"]["derivedFields"] if "/explore?" in d["url"]]
    assert exemplar["name"] == "correlation_id" and "datasourceUid" not in exemplar
    assert (derived["name"], derived["matcherType"], derived["matcherRegex"]) == (
        "correlation_id",
        "label",
        "correlation_id",
    )
    assert "datasourceUid" not in derived, "an internal link may only target a tracing data source"
    for link in (exemplar["url"], derived["url"]):
        # In the file $$ stands for $; Grafana then fills ${__value.raw} with the clicked ID.
        url = fill_link_vars(link.replace("$$", "$"))
        panes = parse_explore_url(url, uids)
        assert explore_exprs(panes) == [TRAIL_EXPR]
        check_logql(TRAIL_EXPR)


# --- dashboards --------------------------------------------------------------------------------


def test_dashboards_have_fixed_uids_and_are_provisioned(dashboards: dict[str, dict[str, Any]]) -> None:
    for uid, dashboard in dashboards.items():
        assert dashboard["uid"] == uid
        ids = [p["id"] for p in panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{uid}: duplicate panel ids"
        assert all("gridPos" in p for p in panels(dashboard))
    provider = load_yaml("grafana/provisioning/dashboards/dashboards.yml")["providers"][0]
    assert provider["type"] == "file"


def test_every_datasource_uid_used_is_provisioned(
    dashboards: dict[str, dict[str, Any]], datasources: dict[str, Any]
) -> None:
    def used(value: Any) -> Iterator[dict[str, Any]]:
        if isinstance(value, dict):
            ds = value.get("datasource")
            if isinstance(ds, dict):
                yield ds
            for item in value.values():
                yield from used(item)
        elif isinstance(value, list):
            for item in value:
                yield from used(item)

    for uid, dashboard in dashboards.items():
        refs = list(used(dashboard))
        assert refs, uid
        for ref in refs:
            assert ref["uid"] in datasources, f"{uid} uses unknown data source {ref}"
            assert ref["type"] == datasources[ref["uid"]]["type"], ref


def test_service_variable_works_for_prometheus_and_loki(dashboards: dict[str, dict[str, Any]]) -> None:
    (var,) = [v for v in dashboards["service-overview"]["templating"]["list"] if v["name"] == "service"]
    assert var["name"] == "service" and var["multi"] and var["includeAll"]
    # Loki refuses a selector whose only matcher matches "" ({service_name=~".*"}).
    assert var["allValue"] == ".+"


def test_overview_panels(dashboards: dict[str, dict[str, Any]]) -> None:
    overview = dashboards["service-overview"]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for panel in panels(overview):
        by_type.setdefault(panel["type"], []).append(panel)
    prom = [t for _, t in targets(overview, "prometheus")]
    exprs = " ".join(t["expr"] for t in prom)
    for metric in (
        "http_server_request_duration_seconds_count",
        "http_server_errors_total",
        "http_server_request_duration_seconds_bucket",
        "correlation_last_failed_request",
        "loki_shipper_dropped_lines_total",
    ):
        assert metric in exprs, metric
    assert any(t.get("exemplar") for t in prom), "RED panels show exemplars"
    (logs_panel,) = by_type["logs"]
    assert [t["expr"] for t in logs_panel["targets"]] == ['{service_name=~"$service"} | level="error"']
    assert len(by_type["alertlist"]) == 1
    (failed,) = [p for p in by_type["table"] if "correlation_last_failed_request" in p["targets"][0]["expr"]]
    failed_links = list(links(failed))
    assert any("/d/request-trail/" in url for url in failed_links) and any("/explore?" in url for url in failed_links)


def test_request_trail_dashboard(dashboards: dict[str, dict[str, Any]]) -> None:
    trail = dashboards["request-trail"]
    (var,) = [v for v in trail["templating"]["list"] if v["type"] != "constant"]  # trail_web_url is a constant
    assert (var["name"], var["type"]) == ("correlation_id", "textbox")
    loki = [(p, t) for p, t in targets(trail, "loki")]
    logs = [t for p, t in loki if p["type"] == "logs"]
    assert [t["expr"] for t in logs] == [
        '{service_name=~".+"} | correlation_id="$correlation_id" | correlation_id!=""'
    ], "an empty box shows nothing"
    assert [p["options"]["sortOrder"] for p, _ in loki if p["type"] == "logs"] == ["Ascending"], "time order"
    (hops_panel, hops) = [(p, t) for p, t in loki if p["type"] == "table"][0]
    assert '| json | logger="correlation.access"' in hops["expr"]
    shown = hops_panel["transformations"][1]["options"]["indexByName"]
    for column in ("service", "route", "status", "duration_ms", "request_id", "parent_request_id"):
        assert column in shown and column in hops["expr"]


def test_every_logql_query_parses(dashboards: dict[str, dict[str, Any]]) -> None:
    count = 0
    for dashboard in dashboards.values():
        for _, target in targets(dashboard, "loki"):
            expr = substitute_grafana_vars(target["expr"], {"service": ".+", "correlation_id": SAMPLE_ID})
            (check_logql if expr.startswith("{") else check_logql_metric)(expr)
            count += 1
    assert count >= 3


def test_every_dashboard_link_resolves(dashboards: dict[str, dict[str, Any]], datasources: dict[str, Any]) -> None:
    seen = 0
    for dashboard in dashboards.values():
        for url in links(dashboard):
            seen += 1
            filled = fill_link_vars(url)
            if "/explore?" in filled:
                for expr in explore_exprs(parse_explore_url(filled, set(datasources))):
                    check_logql(expr)
            elif filled.startswith(DEFAULT_TRAIL_WEB_URL + "/go/slowest?"):  # followed in tests/trail/web/test_links.py
                assert filled.endswith("?service=gateway&from=1764079200000&to=1764082800000"), url
            elif filled.startswith(DEFAULT_TRAIL_WEB_URL + "/"):  # checked in tests/trail/web/test_links.py
                assert filled.split("/")[-1] == SAMPLE_ID, url
            else:
                match = re.match(r"/d/([^/?]+)/", filled)
                assert match and match.group(1) in DASHBOARDS, f"link to unknown dashboard: {url}"
    assert seen >= 4


# --- PromQL against a real Prometheus ---------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus() -> Iterator[str]:
    with prometheus_server({"global": {"scrape_interval": "15s"}}) as base:
        yield base


@pytest.mark.stack  # the rest of this file is static: unit
def test_every_promql_query_runs(prometheus: str) -> None:
    queries = list(dashboard_promql_queries())
    assert len(queries) >= 10
    for where, expr in queries:
        try:
            instant_query(prometheus, substitute_grafana_vars(expr, VARS))
        except AssertionError as exc:
            raise AssertionError(f"{where}: {exc}") from None


# --- the LogQL checker itself ------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr",
    [
        '{service_name=~".*"} | level="error"',  # only an empty-compatible matcher
        '{service_name="orders" | level="error"',  # unbalanced brace
        '{service_name="orders"} | level="error',  # unterminated string
        '{service_name="orders"} | levle "error"',  # not a stage
        '{service_name="orders"} | jsn',  # unknown parser
        'service_name="orders"',  # no selector
        "{service_name=orders}",  # unquoted value
    ],
)
def test_logql_checker_rejects_broken_queries(expr: str) -> None:
    with pytest.raises(ValueError):
        check_logql(expr)
