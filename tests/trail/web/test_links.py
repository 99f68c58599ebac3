"""Every link a user clicks to see one request goes through trail-web and lands on a window of
seconds: the exemplar and ``correlation_id`` links (Grafana provisioning), the dashboards' links
and the alert's ``trail_page_url``. The plain Explore links over Grafana's own range remain, each
labelled as the fallback for a Grafana without trail-web. One address, TRAIL_WEB_URL, everywhere.

Grafana is not run here: its substitutions ($VAR in provisioning, ${__value.raw} and ${var:raw}
in links) are applied by hand, then each link is followed into the trail web app itself."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import flask.testing
import pytest
import yaml

from correlation.ids import time_ms_of
from correlation.settings import LokiSettings
from fakes import FakeLoki
from fakes.trail_lines import checkout_lines, push_all
from tests.support import REPO
from tests.support.grafana import explore_exprs, parse_explore_url, provisioned_datasource_uids
from tests.support.stack import load_json, load_yaml
from trail.links import DEFAULT_TRAIL_WEB_URL, go_path, trail_page_path
from trail.logql import trail_query
from trail.web.app import TrailWebSettings, create_app

pytestmark = pytest.mark.unit

SAMPLE_ID = "0192f0c4e2a87abc8def0123456789ab"  # a UUIDv7 of ours: its time is in it
MS = 1_000_000
#: Longest window a click may search (the ID's narrow window is 40 s; widened once, 30 min).
MINUTES = 30 * 60 * 1000
COMPOSE_DEFAULT = "${TRAIL_WEB_URL:-" + DEFAULT_TRAIL_WEB_URL + "}"


def grafana_provisioning_expand(text: str, env: dict[str, str]) -> str:
    """What Grafana does to a provisioning value: $$ is a literal $, $NAME and ${NAME} are env."""
    parts = text.split("$$")
    expanded = [re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), p) for p in parts]
    return "$".join(expanded)


def datasource_links() -> Iterator[tuple[str, str, str]]:
    """(kind, label, URL as Grafana holds it after provisioning) of every correlation_id link."""
    sources = {ds["uid"]: ds for ds in load_yaml("grafana/provisioning/datasources/datasources.yml")["datasources"]}
    env = {"TRAIL_WEB_URL": DEFAULT_TRAIL_WEB_URL}
    for link in sources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]:
        yield "exemplar", link["urlDisplayLabel"], grafana_provisioning_expand(link["url"], env)
    for link in sources["loki"]["jsonData"]["derivedFields"]:
        assert (link["name"], link["matcherType"], link["matcherRegex"]) == (
            "correlation_id",
            "label",
            "correlation_id",
        )
        yield "derived field", link["urlDisplayLabel"], grafana_provisioning_expand(link["url"], env)


def dashboard_links() -> Iterator[tuple[str, str, str]]:
    """(dashboard, title, URL) of every link in the dashboards, with the trail-web constant."""
    for path in sorted((REPO / "grafana/dashboards").glob("*.json")):
        dashboard = load_json(str(path.relative_to(REPO)))
        (constant,) = [v for v in dashboard["templating"]["list"] if v["name"] == "trail_web_url"]
        assert constant["type"] == "constant" and constant["query"] == DEFAULT_TRAIL_WEB_URL
        for link in _links(dashboard):
            yield dashboard["uid"], link["title"], link["url"].replace("${trail_web_url:raw}", constant["query"])


def _links(value: Any) -> Iterator[dict[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "links" and isinstance(item, list):
                yield from (link for link in item if isinstance(link, dict) and "url" in link)
            elif key == "value" and value.get("id") == "links":
                yield from item
            else:
                yield from _links(item)
    elif isinstance(value, list):
        for item in value:
            yield from _links(item)


def alert_page_links() -> Iterator[str]:
    """Every trail_page_url the promtool tests expect."""
    for path in sorted((REPO / "alerts/tests").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group["alert_rule_test"]:
                for alert in case.get("exp_alerts", []):
                    if "trail_page_url" in alert["exp_annotations"]:
                        yield alert["exp_annotations"]["trail_page_url"]


def clicked(url: str) -> str:
    """The URL after Grafana fills in the clicked ID."""
    for variable in ("${__value.raw}", "${correlation_id:percentencode}"):
        url = url.replace(variable, SAMPLE_ID)
    # A series' link: the clicked line's service, the dashboard's range (ms) around the sample.
    ms = time_ms_of(SAMPLE_ID)
    assert ms is not None
    for variable, value in (("${__field.labels.service:percentencode}", "payments"), ("${__from}", str(ms - 60_000))):
        url = url.replace(variable, value)
    url = url.replace("${__to}", str(ms + 60_000))
    assert "$" not in url, url
    return url


# -- the links ---------------------------------------------------------------------------------------
def test_id_links_open_trail_web_first_and_keep_the_6_hour_explore_link_as_labelled_fallback() -> None:
    for kind in ("exemplar", "derived field"):
        links = [(label, clicked(url)) for k, label, url in datasource_links() if k == kind]
        assert [url for _, url in links[:2]] == [
            DEFAULT_TRAIL_WEB_URL + trail_page_path(SAMPLE_ID),
            DEFAULT_TRAIL_WEB_URL + go_path(SAMPLE_ID),
        ], kind
        assert all("trail-web" in label for label, _ in links[:2])
        ((label, fallback),) = links[2:]
        assert "fallback" in label and "6 h" in label
        panes = parse_explore_url(fallback, provisioned_datasource_uids())
        # Grafana cannot compute an ID's shard from ${__value.raw}: the fallback reads every
        # stream (it finds lines with the shard label and without it alike).
        unsharded = f'{{service_name=~".+"}} | correlation_id="{SAMPLE_ID}"'
        assert explore_exprs(panes) == [unsharded] and "shard" not in trail_query(SAMPLE_ID).split("|")[-1]
        assert panes["trail"]["range"] == {"from": "now-6h", "to": "now"}


def test_dashboard_links_to_one_request_go_through_trail_web_or_say_whose_range_they_use() -> None:
    by_title = {(uid, title): url for uid, title, url in dashboard_links()}
    slowest = {key: url for key, url in by_title.items() if url.startswith(DEFAULT_TRAIL_WEB_URL + "/go/slowest?")}
    assert [uid for uid, _ in slowest] == ["service-overview"], "the latency panel's lines"
    trail_web = {
        key: url for key, url in by_title.items() if url.startswith(DEFAULT_TRAIL_WEB_URL + "/") and key not in slowest
    }
    assert {clicked(url) for url in trail_web.values()} == {
        DEFAULT_TRAIL_WEB_URL + trail_page_path(SAMPLE_ID),
        DEFAULT_TRAIL_WEB_URL + go_path(SAMPLE_ID),
    }
    assert {uid for uid, _ in trail_web} == {"service-overview", "request-trail"}
    for (uid, title), url in by_title.items():
        if (uid, title) not in trail_web and ("/explore?" in url or "correlation_id" in url):
            assert "time range" in title, (uid, title, url)


def test_alert_page_links_are_trail_pages_of_the_failed_request() -> None:
    links = list(alert_page_links())
    assert links and all(url.startswith(DEFAULT_TRAIL_WEB_URL + "/") for url in links)
    assert DEFAULT_TRAIL_WEB_URL + trail_page_path(SAMPLE_ID) in links


# -- each link followed into the app --------------------------------------------------------------------
@pytest.fixture
def loki_with_the_sample(loki: FakeLoki) -> FakeLoki:
    ms = time_ms_of(SAMPLE_ID)
    assert ms is not None
    push_all(loki, checkout_lines(SAMPLE_ID, ms * MS))
    return loki


@pytest.fixture
def web(loki_with_the_sample: FakeLoki) -> flask.testing.FlaskClient:
    settings = TrailWebSettings(LokiSettings(url=loki_with_the_sample.url, timeout_seconds=5))
    return create_app(settings).test_client()


def every_trail_web_link() -> list[str]:
    links = [url for _, _, url in datasource_links()] + [url for _, _, url in dashboard_links()]
    links += alert_page_links()
    trail_web = [clicked(url) for url in links if url.startswith(DEFAULT_TRAIL_WEB_URL + "/") and url.count("/") > 3]
    return [url for url in trail_web if url.endswith("/" + SAMPLE_ID)]  # the request staged below


def test_every_trail_web_link_lands_on_a_window_of_minutes(
    web: flask.testing.FlaskClient, loki_with_the_sample: FakeLoki
) -> None:
    links = every_trail_web_link()
    assert len(links) >= 7  # 2 exemplar, 2 derived field, 2 dashboard, 1+ alert
    for url in links:
        path = urlsplit(url).path
        response = web.get(path)
        if path.startswith("/go/"):
            assert response.status_code == 302, url
            rng = parse_explore_url(response.headers["Location"], provisioned_datasource_uids())["trail"]["range"]
            assert 0 < int(rng["to"]) - int(rng["from"]) <= MINUTES, (url, rng)
        else:
            assert response.status_code == 200, (url, response.get_data(as_text=True)[-500:])
            assert 'data-request-id="c000000000000003" data-state="failed"' in response.get_data(as_text=True)
    # The latency panel's line link: the slowest request of the clicked service in the range.
    (slowest,) = [clicked(url) for _, _, url in dashboard_links() if "/go/slowest?" in url]
    parts = urlsplit(slowest)
    response = web.get(f"{parts.path}?{parts.query}")
    assert response.status_code == 302 and response.headers["Location"] == trail_page_path(SAMPLE_ID), slowest
    assert loki_with_the_sample.queries, "the pages asked Loki"
    assert all(q.end - q.start <= MINUTES * MS for q in loki_with_the_sample.queries)


# -- one address ---------------------------------------------------------------------------------------
def test_one_trail_web_address_for_every_user_of_it() -> None:
    compose = load_yaml("docker-compose.yml")["services"]
    web = compose["trail-web"]
    assert web["command"] == ["gunicorn", "--config", "python:trail.web.gunicorn_conf", "trail.web.app:create_app()"]
    assert web["ports"] == ["127.0.0.1:8090:8090"] and web["environment"]["TRAIL_WEB_BIND"] == "0.0.0.0:8090"
    assert urlsplit(DEFAULT_TRAIL_WEB_URL).port == 8090
    assert web["environment"]["LOKI_URL"] == "http://loki:3100" and "LOKI_TIMEOUT_SECONDS" in web["environment"]
    assert web["depends_on"] == {"loki": {"condition": "service_healthy"}}
    # Grafana expands it in provisioning; Prometheus in its external label; trail-web links to itself.
    for name in ("trail-web", "grafana", "prometheus"):
        assert compose[name]["environment"]["TRAIL_WEB_URL"] == COMPOSE_DEFAULT, name
    # The notifier's Trail page link, too.
    assert compose["alert-receiver"]["environment"]["NOTIFY_TRAIL_WEB_URL"] == COMPOSE_DEFAULT
    assert load_yaml("prometheus/prometheus.yml")["global"]["external_labels"]["trail_web_url"] == "${TRAIL_WEB_URL}"
    rules = (REPO / "alerts/correlation-demo.rules.yml").read_text()
    assert f'or $externalLabels.trail_web_url "{DEFAULT_TRAIL_WEB_URL}"' in rules


def test_the_templates_ship_with_the_package() -> None:
    import tomllib

    pyproject = tomllib.loads((REPO / "app/pyproject.toml").read_text())
    assert pyproject["tool"]["setuptools"]["package-data"]["trail.web"] == ["templates/*.html"]
    assert sorted(p.name for p in (REPO / "app/trail/web/templates").iterdir()) == [
        "_lines.html",
        "_window.html",
        "base.html",
        "error.html",
        "index.html",
        "trail.html",
    ]


def test_the_trail_page_doc_states_every_click_path() -> None:
    """docs/trail.md, "Every click path and the window it searches", names each link by its label."""
    page = (REPO / "docs" / "trail.md").read_text()
    section = page[page.index("\n## Every click path and the window it searches\n") :]
    section = section[: (section + "\n## ").index("\n## ", 1)]
    labels = [label for _, label, _ in datasource_links()] + [title for _, title, _ in dashboard_links()]
    for label in labels:
        assert label.split(" (")[0] in section, label
    for annotation in ("trail_page_url", "trail_url", "logs_url"):
        assert f"`{annotation}`" in section
    assert "fallback without trail-web" in section and "last 6 hours" in section
